"""Relaying one Ollama answer to one client: raw bytes → Rust translator → ASGI `send`.

The per-chunk path does no Python JSON or text work: each chunk httpx reads is handed to the Rust
`StreamTranslator`, which returns ready SSE frames (or accumulates the message for a non-streaming client).

Around that path three watchers run for the life of the request:
- the client: an `http.disconnect` (Esc in Claude Code, a closed socket) cancels the upstream request at once, so
  Ollama stops generating for nobody;
- silence: `ping` events keep the client's connection alive while Ollama loads the model or reads the prompt;
- the idle limit: an upstream that sends nothing for too long ends the stream with an `error` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from ccop._core import StreamTranslator, encode_sse
from ccop._types import Receive, Send
from ccop.errors import ProxyError, error_event

__all__ = ["ClientGone", "RelayOutcome", "SseStream", "drain", "idle_watchdog", "relay", "watch_disconnect"]

PING_FRAME = encode_sse("ping", b'{"type":"ping"}')


class ClientGone(Exception):
    """The client disconnected; nothing more can be sent to it."""


@dataclass
class RelayOutcome:
    """What happened, for the request log and the calibration."""

    completed: bool = False
    error: tuple[str, str] | None = None
    first_chunk_at: float | None = None
    # Starts at the upstream request, so the idle limit also covers model load and prompt processing.
    last_chunk_at: float = field(default_factory=time.monotonic)
    # What is left of a finished upstream body (its chunked terminator), for `drain`.
    rest: AsyncIterator[bytes] | None = None


async def drain(outcome: RelayOutcome, timeout: float = 1.0) -> None:
    """Read the end of a finished upstream body, so the transport can keep the connection for the next request.

    Closing it unread instead would make every request open (and Ollama accept) a new TCP connection.
    """
    if outcome.rest is None:
        return
    with contextlib.suppress(httpx.HTTPError, TimeoutError, asyncio.TimeoutError):
        await asyncio.wait_for(_exhaust(outcome.rest), timeout)


async def _exhaust(chunks: AsyncIterator[bytes]) -> None:
    async for _ in chunks:
        pass


async def watch_disconnect(receive: Receive) -> None:
    """Returns when the client disconnects; Granian reports it only through `receive()`."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class SseStream:
    """An open `text/event-stream` response: one writer task, batched frames, keep-alive pings.

    The relay hands frames over without waiting for the client. A single writer task sends them, and whatever
    piles up while a send is in flight goes out together with the next one: each ASGI `send` crosses into
    Granian's I/O thread, so fewer sends for the same frames is most of the proxy's per-token cost. The first
    frames after a quiet spell go out at once, so batching never delays a first token. Being the only sender,
    the writer also keeps pings and frames whole and in order without a lock.
    """

    # Past this many unsent bytes the relay waits for the client (a slow reader must not fill memory).
    HIGH_WATER = 1 << 20

    def __init__(self, send: Send, request_id: str, ping_interval: float) -> None:
        self._send = send
        self._request_id = request_id
        self._ping_interval = ping_interval
        self._pending = bytearray()
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._last_send = time.monotonic()
        self._writer: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._failure: ClientGone | None = None
        self._first_handed_over = False
        self.started = False
        self.closed = False

    async def start(self, first_frames: bytes, *, with_first_content: bool = False) -> None:
        """Send the response head and `first_frames` (message_start).

        `with_first_content`: Ollama has already answered, so its first content is about to be relayed; the
        first frames then wait for it and both leave in one send (one thread hand-off fewer before the first
        token). Otherwise (Ollama still loading) they go out now, so the client knows the request was accepted.
        """
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"request-id", self._request_id.encode()),
            # Reverse proxies such as nginx would otherwise buffer the whole answer.
            (b"x-accel-buffering", b"no"),
        ]
        await self._guarded(self._send({"type": "http.response.start", "status": 200, "headers": headers}))
        self.started = True
        if with_first_content:
            self._pending += first_frames
        elif first_frames:
            await self._guarded(self._send({"type": "http.response.body", "body": first_frames, "more_body": True}))
        self._writer = asyncio.create_task(self._write_loop())
        self._pinger = asyncio.create_task(self._ping_loop())

    async def write(self, frames: bytes) -> None:
        """Queue frames for the client; waits only when the client is far behind."""
        if self._failure is not None:
            raise self._failure
        if not frames or self.closed:
            return
        self._pending += frames
        self._wake.set()
        if not self._first_handed_over:
            # The first content: let the writer send it right away. Without this turn the relay could read a
            # whole fast answer from its socket buffer before the first token left. Later frames need no turn:
            # they accumulate while a send is in flight and leave with the next one.
            self._first_handed_over = True
            await asyncio.sleep(0)
        if len(self._pending) > self.HIGH_WATER:
            self._drained.clear()
            await self._drained.wait()
            if self._failure is not None:
                raise self._failure

    async def close(self, final_frames: bytes = b"") -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ClientGone):
                await self._writer
        if self.closed:
            return
        self.closed = True
        body = bytes(self._pending) + final_frames
        self._pending.clear()
        if self._failure is None:
            await self._guarded(self._send({"type": "http.response.body", "body": body, "more_body": False}))

    async def fail(self, error: ProxyError) -> None:
        await self.close(error_event(error.error_type, error.message, self._request_id))

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                continue
            frames = bytes(self._pending)
            self._pending.clear()
            try:
                await self._guarded(self._send({"type": "http.response.body", "body": frames, "more_body": True}))
            except ClientGone as gone:
                self._failure = gone
                self._drained.set()
                return
            self._last_send = time.monotonic()
            if not self._pending:
                self._drained.set()

    async def _ping_loop(self) -> None:
        while not self.closed and self._failure is None:
            delay = self._last_send + self._ping_interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            if self._pending:
                self._wake.set()  # something is waiting (say, a deferred message_start): send it instead
            else:
                await self.write(PING_FRAME)
            # Until the writer has sent something, the deadline has not moved: wait a full interval again.
            self._last_send = max(self._last_send, time.monotonic())

    async def _guarded(self, sending: Awaitable[None]) -> None:
        try:
            await sending
        except (OSError, RuntimeError) as exc:
            # Granian raises once the peer is gone; from here on the request is only cleanup.
            self.closed = True
            raise ClientGone from exc


async def relay(
    response: httpx.Response,
    translator: StreamTranslator,
    write: Callable[[bytes], Awaitable[None]] | None,
    outcome: RelayOutcome,
) -> bytes:
    """Feed the upstream body through the translator; returns the frames that end the stream.

    `write` is None for a non-streaming client: the translator then only accumulates the message.
    """
    chunks = response.aiter_raw()
    async for chunk in chunks:
        outcome.last_chunk_at = time.monotonic()
        if outcome.first_chunk_at is None:
            outcome.first_chunk_at = outcome.last_chunk_at
        frames = translator.feed(chunk)
        if write is not None and frames:
            await write(frames)
        if translator.stopped or translator.error is not None:
            # Ollama may still be generating: the caller closes the connection, which stops it.
            break
        if translator.done:
            # Only the chunked terminator is left; `drain` reads it after the client has its answer.
            outcome.rest = chunks
            break
    tail = translator.finish()
    outcome.error = translator.error
    outcome.completed = translator.error is None
    return tail


async def idle_watchdog(outcome: RelayOutcome, idle_timeout: float) -> None:
    """Returns once the upstream has been silent for `idle_timeout` seconds (model load time included)."""
    while True:
        remaining = outcome.last_chunk_at + idle_timeout - time.monotonic()
        if remaining <= 0:
            return
        await asyncio.sleep(remaining)
