"""The limits a client's request body must keep while it is read, in front of the app.

Granian (hyper) parses HTTP and closes a connection that stays silent before or between requests for
`--connection-timeout` (server.py sets its header read timeout). What it cannot know or do:

- the proxy's body size limit: a declared `Content-Length` over it is a 413 before a single body byte is read. That
  is also what keeps `Expect: 100-continue` honest, since hyper answers `100 Continue` on the first body read;
- a body that stalls half-way: hyper has no body read timeout, so each read here waits at most `--connection-timeout`;
- a body that breaks (malformed chunked framing, or a client that closes mid-body): Granian reports either as
  `http.disconnect`, to which the app would answer nothing, and Granian then sends its own plain-text 500.

Each of these is raised from `receive` as a `ProxyError`, so the app answers it like any other error (request id,
CORS headers, the log line). Once the body is complete, `receive` is passed through untouched: a client reading a
long streamed answer sends nothing, and nothing here times it out. When a request with a large body ends, the
garbage it may have left in reference cycles is collected at once (its parsed form can be half a GiB).
"""

from __future__ import annotations

import asyncio
import gc

from ccop._types import ASGIApp, Message, Receive, Scope, Send
from ccop.app import ProxyApp
from ccop.app import create_app as create_proxy_app
from ccop.errors import InvalidRequest, ProxyError
from ccop.messages import LARGE_BODY_BYTES
from ccop.responses import body_too_large

__all__ = ["RequestGuard", "create_app"]


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # hyper rejects a malformed length before the app sees the request
    return None


class _GuardedReceive:
    """`receive` for one request: the body's limits apply until its last part has arrived."""

    def __init__(self, receive: Receive, declared: int | None, limit: int, timeout: float) -> None:
        self._receive = receive
        self._declared = declared
        self._limit = limit
        self._timeout = timeout
        self._complete = False
        self.received = 0

    async def __call__(self) -> Message:
        if self._complete:
            return await self._receive()
        if self._declared is not None and self._declared > self._limit:
            raise body_too_large(self._limit)
        reading = asyncio.ensure_future(self._receive())
        done, _ = await asyncio.wait({reading}, timeout=self._timeout)
        if not done:
            # Cancelling the read is safe in Granian; answering while the body is unread makes hyper close the
            # connection after the response.
            reading.cancel()
            raise ProxyError(
                f"the request body stalled: nothing arrived for {self._timeout:g} s; send the whole body without "
                "pausing (the proxy's --connection-timeout)",
                status=408,
                error_type="invalid_request_error",
            )
        message = reading.result()
        if message["type"] == "http.disconnect":
            # A client that really left never sees this answer; one whose chunked framing broke does.
            raise InvalidRequest(
                "the request body ended before it was complete, or its chunked transfer encoding is malformed; "
                "send the body whole, with a correct Content-Length or valid chunked framing"
            )
        self.received += len(message.get("body", b""))
        if not message.get("more_body", False):
            self._complete = True
        return message


class RequestGuard:
    """ASGI middleware: wraps every HTTP request's `receive` in the body limits above."""

    def __init__(self, app: ASGIApp, *, max_body_size: int, connection_timeout: float) -> None:
        self.app = app
        self.max_body_size = max_body_size
        self.connection_timeout = connection_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guarded = _GuardedReceive(receive, _declared_length(scope), self.max_body_size, self.connection_timeout)
        try:
            await self.app(scope, guarded, send)
        finally:
            if guarded.received >= LARGE_BODY_BYTES:
                # A large body's parsed form (many times its size) can outlive the request in a reference cycle:
                # an error's traceback holds the frames that held it. Its untracked dicts and lists barely count
                # towards the collector's thresholds, so without this it stays until some full collection.
                gc.collect()


def create_app() -> RequestGuard:
    """The factory Granian calls in every worker: the proxy app behind the request guard."""
    app: ProxyApp = create_proxy_app()
    return RequestGuard(
        app, max_body_size=app.settings.max_body_size, connection_timeout=app.settings.connection_timeout
    )
