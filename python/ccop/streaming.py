"""Relaying one Ollama answer to one client: raw bytes → Rust translator → ASGI `send`.

The per-chunk path does no Python JSON or text work: each chunk httpx reads is handed to the Rust
`StreamTranslator`, which returns ready SSE frames (or accumulates the message for a non-streaming client).

Around that path its watchers run, with it, as one structured group (`run_watched`; nothing outlives the request):
- the client: an `http.disconnect` (Esc in Claude Code, a closed socket) cancels the upstream request at once, so
  Ollama stops generating for nobody;
- silence: `ping` events keep the client's connection alive while Ollama loads the model or reads the prompt;
- the idle limit: an upstream that sends nothing for too long ends the stream with an `error` event; a client that
  stops reading is told apart from it (the relay then waits for the client, not for Ollama);
- the stream's writer: a client it can no longer reach ends the exchange too.

On SIGTERM / Ctrl-C the worker lets running answers go on for `--shutdown-grace` seconds (`watch_shutdown`); the
answers still running then end with an `error` event saying the proxy is shutting down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import httpx

from ccop._core import StreamTranslator, encode_sse
from ccop._types import Receive, Send
from ccop.errors import ProxyError, UpstreamError, error_event
from ccop.output_limit import OutputLimit

__all__ = [
    "ClientGone",
    "ClientStalled",
    "RelayOutcome",
    "ShuttingDown",
    "SseStream",
    "drain",
    "is_transport_closed",
    "idle_watchdog",
    "relay",
    "run_watched",
    "watch_disconnect",
    "watch_shutdown",
]

logger = logging.getLogger("ccop.shutdown")

T = TypeVar("T")

PING_FRAME = encode_sse("ping", b'{"type":"ping"}')
# When Ollama's response head came at once, `message_start` waits this long for the first token to leave with it;
# a first token that takes longer (a long prompt to read) must not keep the client waiting for a ping interval.
FIRST_FRAMES_WAIT = 0.25
# After the grace period, how long the running answers get to send their error event before the worker goes on.
_END_WAIT = 2.0


# What Granian's ASGI `send` raises (a RuntimeError: "ASGI flow error: Transport not initialized or closed") once the
# response can no longer be written. Any other RuntimeError is a bug, and must not pass for a client that left.
_TRANSPORT_CLOSED = "Transport not initialized or closed"


def is_transport_closed(exc: BaseException) -> bool:
    """Whether `exc` is Granian saying the response's transport is gone (the client disconnected)."""
    return isinstance(exc, RuntimeError) and _TRANSPORT_CLOSED in str(exc)


class ClientGone(Exception):
    """The client disconnected; nothing more can be sent to it."""


class ClientStalled(ProxyError):
    """The client stopped reading the stream; the answer is abandoned without blaming Ollama."""

    status = 408


class ShuttingDown(ProxyError):
    """The worker is stopping and the grace period is over."""

    status = 503


@dataclass
class RelayOutcome:
    """What happened, for the request log and the calibration."""

    # Starts at the upstream request, so the idle limit also covers model load and prompt processing.
    last_chunk_at: float = field(default_factory=time.monotonic)
    # What is left of a finished upstream body (its chunked terminator), for `drain`.
    rest: AsyncIterator[bytes] | None = None
    # Ollama went on past `max_tokens` and the proxy ended the answer (`output_limit.py`).
    capped: bool = False


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


async def watch_disconnect(receive: Receive) -> ClientGone:
    """Returns when the client disconnects (Granian reports it only through `receive()`), as the reason to stop."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return ClientGone("the client disconnected")


async def run_watched(work: Awaitable[T], watchers: Iterable[Callable[[], Awaitable[BaseException]]]) -> T:
    """`work`'s result, with its watchers running beside it as one structured group.

    A watcher returns the reason to give up (a client that left, Ollama's silence, a shutdown): `work` is then
    cancelled and that reason raised. Once `work` ends, by result or exception, the watchers are cancelled. Every
    task started here has ended when the call returns, and cancelling `work` closes the upstream connection it held.
    (A plain asyncio group: anyio's task group, measured here, cost about 0.2 ms per request before the first
    token, and asyncio.TaskGroup needs Python 3.11.)
    """
    working = asyncio.ensure_future(work)
    watching = [asyncio.ensure_future(watcher()) for watcher in watchers]
    tasks = [working, *watching]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        # Also when this call itself is cancelled: the group ends only once every member has.
        await asyncio.gather(*tasks, return_exceptions=True)
    if working in done:
        return working.result()  # the work's own exception, if it failed
    for task in watching:
        if task in done:
            failure = task.exception()
            raise failure if failure is not None else task.result()
    raise AssertionError("unreachable: asyncio.wait returned with a member done")


class SseStream:
    """An open `text/event-stream` response: one writer, batched frames, keep-alive pings.

    The writer and the ping timer (`watchers()`) run in the exchange's task group beside the relay; they wait for
    `start` and end with the group, and a client that can no longer be written to ends the exchange.

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
        self._begun = asyncio.Event()
        self._failure: ClientGone | None = None
        self._first_handed_over = False
        self.started = False
        self.closed = False
        # Since when the relay has been waiting for the client to read (None: it is not waiting).
        self.waiting_since: float | None = None
        self._shutdown: _Shutdown | None = None

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
            # The ping timer sends them on their own if the first token is slow to come.
            self._last_send = time.monotonic() - self._ping_interval + FIRST_FRAMES_WAIT
        elif first_frames:
            await self._guarded(self._send({"type": "http.response.body", "body": first_frames, "more_body": True}))
        self._shutdown = _shutdown()
        self._shutdown.running += 1  # a running answer from here, for the shutdown's grace period
        self._begun.set()

    def watchers(self) -> tuple[Callable[[], Awaitable[BaseException]], ...]:
        """The writer and the ping timer, for `run_watched`: each returns only when the client is gone."""
        return (self._write_loop, self._ping_loop)

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
            self.waiting_since = time.monotonic()
            try:
                await self._drained.wait()
            finally:
                self.waiting_since = None
            if self._failure is not None:
                raise self._failure

    async def close(self, final_frames: bytes = b"") -> None:
        """Send what is still pending and `final_frames`, and end the response; after the exchange's group."""
        self._release()
        if self.closed:
            return
        self.closed = True
        self.waiting_since = None
        body = bytes(self._pending) + final_frames
        self._pending.clear()
        if self._failure is None:
            await self._guarded(self._send({"type": "http.response.body", "body": body, "more_body": False}))

    async def fail(self, error: ProxyError) -> None:
        if isinstance(error, ClientStalled):
            # Nothing more can reach a client that does not read: stop without another send, which would only wait.
            self._failure = ClientGone(error.message)
        await self.close(error_event(error.error_type, error.message, self._request_id))

    async def _write_loop(self) -> ClientGone:
        await self._begun.wait()
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
                return gone
            self._last_send = time.monotonic()
            if not self._pending:
                self._drained.set()

    async def _ping_loop(self) -> ClientGone:
        # At shutdown the exchange's idle watchdog ends the stream; pings only keep a quiet connection alive.
        await self._begun.wait()
        while self._failure is None:
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
        return self._failure

    def _release(self) -> None:
        """This answer no longer runs, as far as the shutdown's grace period is concerned (once only)."""
        if self._shutdown is not None:
            self._shutdown.finished()
            self._shutdown = None

    async def _guarded(self, sending: Awaitable[None]) -> None:
        try:
            await sending
        except RuntimeError as exc:
            if not is_transport_closed(exc):
                raise  # a bug (say, a message out of ASGI order) is not a client that left
            # Granian raises this once the response's transport is gone; from here on the request is only cleanup.
            self.closed = True
            self._release()
            raise ClientGone from exc


async def relay(
    response: httpx.Response,
    translator: StreamTranslator,
    write: Callable[[bytes], Awaitable[None]] | None,
    outcome: RelayOutcome,
    limit: OutputLimit | None = None,
) -> bytes:
    """Feed the upstream body through the translator; returns the frames that end the stream.

    `write` is None for a non-streaming client: the translator then only accumulates the message. `limit` ends an
    answer that runs past `max_tokens`.
    """
    chunks = response.aiter_raw()
    async for chunk in chunks:
        outcome.last_chunk_at = time.monotonic()
        if limit is not None and limit.exceeded(chunk):
            # Ollama ignored num_predict: its whole lines up to here, then the done chunk it should have sent.
            chunk = limit.cut(chunk)
            outcome.capped = True
        frames = translator.feed(chunk)
        if write is not None and frames:
            await write(frames)
            # Ollama's silence counts from when the relay can read again: a slow client is not Ollama's fault.
            outcome.last_chunk_at = time.monotonic()
        if translator.stopped or translator.error is not None or outcome.capped:
            # Ollama may still be generating: the caller closes the connection, which stops it.
            break
        if translator.done:
            # Only the chunked terminator is left; `drain` reads it after the client has its answer.
            outcome.rest = chunks
            break
    return translator.finish()


async def idle_watchdog(outcome: RelayOutcome, idle_timeout: float, stream: SseStream | None = None) -> ProxyError:
    """Returns why the answer must be abandoned, once it must: the error to log and, if it can, tell the client.

    - Ollama has sent nothing for `idle_timeout` seconds (model load time included);
    - the client has read nothing for `idle_timeout` seconds while the relay waited for it (`stream.waiting_since`):
      that silence is the client's, and Ollama is not blamed for it;
    - the worker is shutting down and the grace period is over.
    """
    shutdown = _shutdown()
    if stream is None:
        shutdown.running += 1  # a stream counts as running from its start (see SseStream.start)
    try:
        while True:
            now = time.monotonic()
            waiting_since = stream.waiting_since if stream is not None else None
            if waiting_since is not None:
                remaining = waiting_since + idle_timeout - now
                if remaining <= 0:
                    return ClientStalled(f"the client read nothing for {idle_timeout:g} s; the answer was abandoned")
            else:
                remaining = outcome.last_chunk_at + idle_timeout - now
                if remaining <= 0:
                    return UpstreamError(
                        f"Ollama sent nothing for {idle_timeout:g} s; the answer was abandoned "
                        "(raise --idle-timeout if the model needs longer to load)"
                    )
            if await shutdown.wait_for_end(remaining):
                return shutdown.error()
    finally:
        if stream is None:
            shutdown.finished()


class _Shutdown:
    """The worker's shutdown: running answers get `grace` seconds, then every watchdog ends its answer."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.grace = 0.0
        self.running = 0
        self.started = False
        # Set when the grace period is over; every running answer then ends.
        self.over = asyncio.Event()
        # Set whenever an answer finishes, so the shutdown sees the count fall.
        self.changed = asyncio.Event()

    def finished(self) -> None:
        """One running answer is done."""
        self.running -= 1
        self.changed.set()

    def error(self) -> ShuttingDown:
        return ShuttingDown(
            f"the proxy is shutting down and this answer did not finish within its {self.grace:g} s grace period; "
            "send the request again once the proxy is back"
        )

    async def wait_for_end(self, timeout: float) -> bool:
        """Waits at most `timeout` seconds; True when the grace period is over."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.over.wait(), timeout)
        return self.over.is_set()

    async def run(self) -> None:
        deadline = time.monotonic() + self.grace
        if self.running:
            logger.warning(
                "shutting down: waiting up to %g s for %d running answer(s) to finish", self.grace, self.running
            )
        while self.running and (left := deadline - time.monotonic()) > 0:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        if not self.running:
            return
        logger.warning("shutting down: ending %d answer(s) still running after %g s", self.running, self.grace)
        self.over.set()
        ended = time.monotonic() + _END_WAIT
        while self.running and (left := ended - time.monotonic()) > 0:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        # Let Granian write the last frames out before the worker exits.
        await asyncio.sleep(0.1)


_current: _Shutdown | None = None


def _shutdown() -> _Shutdown:
    """The shutdown state of the running event loop (one per worker; asyncio events belong to one loop)."""
    global _current
    loop = asyncio.get_running_loop()
    if _current is None or _current.loop is not loop:
        _current = _Shutdown(loop)
    return _current


def watch_shutdown(grace: float) -> None:
    """In a worker: on SIGTERM or SIGINT, give running answers `grace` seconds, then end them with an error event.

    Granian's own handlers (through the event loop's signal wake-up) still run and stop accepting connections;
    this Python-level handler only adds the grace period. Granian waits for running requests before it stops the
    worker, so without it a stream that outlives the grace period would be cut by the kill, with no error frame.
    """
    if threading.current_thread() is not threading.main_thread():
        return  # signals reach only the main thread; an app served some other way keeps the server's handling
    shutdown = _shutdown()
    shutdown.grace = grace

    def begin() -> None:
        if not shutdown.started:
            shutdown.started = True
            task = shutdown.loop.create_task(shutdown.run())
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)

    def on_signal(signum: int, frame: object) -> None:
        # A signal handler may interrupt the loop anywhere: it only schedules the shutdown.
        shutdown.loop.call_soon_threadsafe(begin)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)


# Tasks are weakly referenced by the loop: this keeps the shutdown task alive until it is done.
_BACKGROUND: set[asyncio.Task[None]] = set()
