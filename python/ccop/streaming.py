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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from ccop._core import StreamTranslator, encode_sse
from ccop._types import Receive, Send
from ccop.errors import ProxyError, error_event

__all__ = ["ClientGone", "RelayOutcome", "SseStream", "idle_watchdog", "relay", "watch_disconnect"]

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


async def watch_disconnect(receive: Receive) -> None:
    """Returns when the client disconnects; Granian reports it only through `receive()`."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class SseStream:
    """An open `text/event-stream` response with serialised sends and keep-alive pings."""

    def __init__(self, send: Send, request_id: str, ping_interval: float) -> None:
        self._send = send
        self._request_id = request_id
        self._ping_interval = ping_interval
        self._lock = asyncio.Lock()
        self._last_send = time.monotonic()
        self._pinger: asyncio.Task[None] | None = None
        self.started = False
        self.closed = False

    async def start(self, first_frames: bytes) -> None:
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"request-id", self._request_id.encode()),
            # Reverse proxies such as nginx would otherwise buffer the whole answer.
            (b"x-accel-buffering", b"no"),
        ]
        await self._guarded(self._send({"type": "http.response.start", "status": 200, "headers": headers}))
        self.started = True
        await self.write(first_frames)
        self._pinger = asyncio.create_task(self._ping_loop())

    async def write(self, frames: bytes) -> None:
        if not frames or self.closed:
            return
        # The pinger and the relay share the connection; the lock keeps frames whole and in order.
        async with self._lock:
            await self._guarded(self._send({"type": "http.response.body", "body": frames, "more_body": True}))
            self._last_send = time.monotonic()

    async def close(self, final_frames: bytes = b"") -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
        if self.closed:
            return
        async with self._lock:
            self.closed = True
            await self._guarded(self._send({"type": "http.response.body", "body": final_frames, "more_body": False}))

    async def fail(self, error: ProxyError) -> None:
        await self.close(error_event(error.error_type, error.message, self._request_id))

    async def _ping_loop(self) -> None:
        while not self.closed:
            delay = self._last_send + self._ping_interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            try:
                await self.write(PING_FRAME)
            except ClientGone:
                return

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
    async for chunk in response.aiter_raw():
        outcome.last_chunk_at = time.monotonic()
        if outcome.first_chunk_at is None:
            outcome.first_chunk_at = outcome.last_chunk_at
        frames = translator.feed(chunk)
        if write is not None and frames:
            await write(frames)
        if translator.done or translator.stopped or translator.error is not None:
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
