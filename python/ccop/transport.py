"""The wire under httpx: an HTTP/1.1 transport made for one nearby server, Ollama.

httpx's default transport spends about two thousand Python calls on each request, and hands a streamed body over
one HTTP chunk at a time. Ollama writes every NDJSON line of an answer as its own chunk, so both costs land on the
proxy's hot path: the first before every first token, the second on every token. This transport keeps httpx's
interface (requests, responses, timeouts, exception types) and does the wire work in an asyncio `Protocol`. The
response head and the chunked framing are parsed as bytes arrive. Each body read returns everything that arrived
since the last read, so the relay makes one pass per socket read rather than one per line.

Scope: HTTP/1.1 over TCP or TLS, keep-alive pooling, bodies framed by Content-Length, by chunked encoding or by the
connection closing. Not here: HTTP/2, HTTP proxies (the client ignores proxy settings anyway), `Expect:
100-continue`, upgrades.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx

from ccop._core import ChunkedDecoder, CoreError

__all__ = ["OllamaTransport"]

# The parts of a response we read before its body. Real heads are a few hundred bytes; a much larger one means the
# peer is not speaking HTTP to us.
MAX_HEAD_BYTES = 64 * 1024
# Unread body bytes past this pause the socket until the reader catches up (a slow client must not fill memory).
READ_HIGH_WATER = 1 << 20
_NO_BODY_STATUSES = frozenset((204, 304))
_DEFAULT_PORTS = {b"http": 80, b"https": 443}

# Body framing, decided by the response head.
_LENGTH, _CHUNKED, _UNTIL_CLOSE, _EMPTY = range(4)


class _Disconnected(Exception):
    """The server closed the connection before sending any of the response."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection, carrying one request at a time."""

    def __init__(self, origin: tuple[bytes, bytes, int]) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._write_ready: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._error: Exception | None = None
        self._begin(request_method=b"")
        self._in_request = False

    def _begin(self, request_method: bytes) -> None:
        self._in_request = True
        self._method = request_method
        self._head = b""
        # Any byte of an answer (even an interim 1xx) proves the request reached the server: no silent retry then.
        self._answered = False
        self.head_received = False
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.reusable = False
        self._framing = _EMPTY
        self._remaining = 0
        self._decoder: ChunkedDecoder | None = None
        self._parts: list[bytes] = []
        self._buffered = 0
        self.complete = False

    # -- asyncio.Protocol ----------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports (Granian runs on uvloop when it is installed) are not asyncio.Transport subclasses.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._in_request and not self.complete and self._error is None:
            if not self._answered:
                self._error = _Disconnected()
            elif self.head_received and self._framing == _UNTIL_CLOSE and exc is None:
                self.complete = True
            else:
                where = "the response head" if not self.head_received else "the response body"
                self._error = httpx.RemoteProtocolError(f"Ollama closed the connection in the middle of {where}")
        self._wake()
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost reports what it means

    def pause_writing(self) -> None:
        if self._write_ready is None or self._write_ready.done():
            self._write_ready = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)

    def data_received(self, data: bytes) -> None:
        if not self._in_request or self.complete or self._error is not None:
            # Bytes nobody asked for: the connection's framing can no longer be trusted.
            self.close()
            return
        self._answered = True
        try:
            if not self.head_received:
                data = self._receive_head(data)
                if not self.head_received:
                    return
            if data:
                self._receive_body(data)
        except httpx.RemoteProtocolError as exc:
            self._error = exc
            self.close()
        if self._buffered > READ_HIGH_WATER and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    # -- parsing -------------------------------------------------------------------------------------------------

    def _receive_head(self, data: bytes) -> bytes:
        """Parse the head once it is complete; returns the body bytes that came with it."""
        if self._head:
            data = self._head + data
        start = 0
        while True:
            end = data.find(b"\r\n\r\n", start)
            if end < 0:
                # Usually the head arrives whole, with the start of the body; only a split head is kept.
                self._head = data[start:]
                if len(self._head) > MAX_HEAD_BYTES:
                    raise httpx.RemoteProtocolError("Ollama's response head is too large")
                return b""
            self._parse_head(data[start:end])
            start = end + 4
            if self.head_received:
                self._head = b""
                return data[start:]
            # An interim 1xx response: the real one follows.

    def _parse_head(self, head: bytes) -> None:
        status_line, *header_lines = head.split(b"\r\n")
        version, _, rest = status_line.partition(b" ")
        code, _, reason = rest.partition(b" ")
        if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise httpx.RemoteProtocolError(f"Ollama sent an invalid status line: {status_line[:100]!r}")
        status = int(code)
        headers: list[tuple[bytes, bytes]] = []
        for line in header_lines:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise httpx.RemoteProtocolError(f"Ollama sent an invalid header line: {line[:100]!r}")
            headers.append((name, value.strip()))
        if 100 <= status < 200:
            return
        self.status, self.reason, self.headers = status, reason, headers
        self.head_received = True
        connection = b""
        transfer_encoding = b""
        lengths: set[bytes] = set()
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"connection":
                connection += b"," + value.lower()
            elif lowered == b"transfer-encoding":
                transfer_encoding += b"," + value.lower()
            elif lowered == b"content-length":
                lengths.add(value)
        keep_alive = version == b"HTTP/1.1" and b"close" not in [t.strip() for t in connection.split(b",")]
        if self._method == b"HEAD" or status in _NO_BODY_STATUSES:
            self._framing = _EMPTY
        elif transfer_encoding:
            codings = [t.strip() for t in transfer_encoding.split(b",") if t.strip()]
            self._framing = _CHUNKED if codings and codings[-1] == b"chunked" else _UNTIL_CLOSE
            if self._framing == _CHUNKED:
                self._decoder = ChunkedDecoder()
        elif lengths:
            if len(lengths) > 1 or not next(iter(lengths)).isdigit():
                raise httpx.RemoteProtocolError(f"Ollama sent an invalid Content-Length: {sorted(lengths)}")
            self._framing = _LENGTH
            self._remaining = int(next(iter(lengths)))
        else:
            self._framing = _UNTIL_CLOSE
        self.reusable = keep_alive and self._framing != _UNTIL_CLOSE
        if self._framing == _EMPTY or (self._framing == _LENGTH and self._remaining == 0):
            self.complete = True

    def _receive_body(self, data: bytes) -> None:
        if self.complete:
            # More than the framing announced: the next response on this connection would start mid-stream.
            self.reusable = False
            return
        if self._framing == _CHUNKED:
            self._receive_chunked(data)
        elif self._framing == _LENGTH:
            if len(data) >= self._remaining:
                if len(data) > self._remaining:
                    self.reusable = False
                data = data[: self._remaining]
                self.complete = True
            self._remaining -= len(data)
            self._keep(data)
        else:
            self._keep(data)

    def _keep(self, data: bytes) -> None:
        if data:
            self._parts.append(data)
            self._buffered += len(data)

    def _receive_chunked(self, data: bytes) -> None:
        decoder = self._decoder
        assert decoder is not None
        try:
            self._keep(decoder.feed(data))
        except CoreError as exc:
            raise httpx.RemoteProtocolError(f"Ollama broke the response framing: {exc}") from None
        if decoder.done:
            self.complete = True
            if decoder.excess:
                self.reusable = False

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the request's side ----------------------------------------------------------------------------------------

    async def _wait(self, timeout: float | None, timeout_error: type[httpx.TimeoutException], what: str) -> None:
        waiter = self._waiter = self._loop.create_future()
        try:
            if timeout is None:
                await waiter
            else:
                await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            self.close()
            raise timeout_error(f"Ollama sent nothing for {timeout:g} s while {what}") from None
        finally:
            self._waiter = None

    async def send(self, request: httpx.Request, body: bytes | None, timeouts: dict[str, Any]) -> None:
        """Write the request: `body` when the request's content has been read, else its stream."""
        assert self.transport is not None
        self._begin(request.method.encode("ascii"))
        lines = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
        chunked = False
        for name, value in request.headers.raw:
            if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
                raise httpx.LocalProtocolError(f"header {name!r} holds a line break")
            if name.lower() == b"transfer-encoding" and value.lower().endswith(b"chunked"):
                chunked = True
            lines += (name, b": ", value, b"\r\n")
        lines.append(b"\r\n")
        write_timeout = timeouts.get("write")
        head = b"".join(lines)
        if body is not None:
            if not chunked:
                self.transport.writelines((head, body))
            elif body:
                self.transport.writelines((head, b"%x\r\n" % len(body), body, b"\r\n0\r\n\r\n"))
            else:
                self.transport.writelines((head, b"0\r\n\r\n"))
            await self._drain(write_timeout)
            return
        self.transport.write(head)
        async for part in request.stream:  # type: ignore[union-attr]
            if part:
                self.transport.writelines((b"%x\r\n" % len(part), part, b"\r\n") if chunked else (part,))
                await self._drain(write_timeout)
        if chunked:
            self.transport.write(b"0\r\n\r\n")
        await self._drain(write_timeout)

    async def _drain(self, timeout: float | None) -> None:
        if self.closed:
            raise _Disconnected
        ready = self._write_ready
        if ready is None or ready.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(ready), timeout)
        except asyncio.TimeoutError:
            self.close()
            raise httpx.WriteTimeout(f"Ollama did not take the request within {timeout:g} s") from None
        if self.closed:
            raise _Disconnected

    async def receive_head(self, timeout: float | None) -> None:
        while not self.head_received:
            if self._error is not None:
                raise self._error
            if self.closed:
                raise httpx.RemoteProtocolError("Ollama closed the connection before answering")
            await self._wait(timeout, httpx.ReadTimeout, "the proxy waited for its answer")

    async def receive_body(self, timeout: float | None) -> bytes:
        """Every body byte that has arrived since the last call; b"" once the body is complete."""
        while True:
            parts = self._parts
            if parts:
                data = parts[0] if len(parts) == 1 else b"".join(parts)
                parts.clear()
                self._buffered = 0
                if self._reading_paused and self.transport is not None:
                    self._reading_paused = False
                    self.transport.resume_reading()
                return data
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            if self.closed:
                raise httpx.RemoteProtocolError("Ollama closed the connection in the middle of the response body")
            await self._wait(timeout, httpx.ReadTimeout, "the proxy read the answer")

    def finish(self) -> bool:
        """End the current exchange; True if the connection can carry another request."""
        self._in_request = False
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return self.complete and self.reusable and not self.closed

    def close(self) -> None:
        self.closed = True
        transport = self.transport
        if transport is not None:
            # A request abandoned mid-upload (timeout, cancel) must not keep sending: drop what is still buffered.
            if transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()


class _ResponseBody(httpx.AsyncByteStream):
    def __init__(self, connection: _Connection, pool: OllamaTransport, read_timeout: float | None) -> None:
        self._connection = connection
        self._pool = pool
        self._read_timeout = read_timeout
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            data = await self._connection.receive_body(self._read_timeout)
            if not data:
                return
            yield data

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool._release(self._connection)


class OllamaTransport(httpx.AsyncBaseTransport):
    """An `httpx.AsyncBaseTransport` with a keep-alive pool: unlimited connections, `max_idle` kept per server."""

    def __init__(
        self, *, max_idle: int = 256, idle_expiry: float = 30.0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._max_idle = max_idle
        self._idle_expiry = idle_expiry
        self._ssl_context = ssl_context
        self._idle: dict[tuple[bytes, bytes, int], list[_Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the transport to Ollama is closed")
        url = request.url
        scheme = url.raw_scheme
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r} for Ollama (use http or https)")
        origin = (scheme, url.raw_host, url.port or _DEFAULT_PORTS[scheme])
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        try:
            body: bytes | None = request.content
        except httpx.RequestNotRead:
            body = None  # a stream not read yet: sent as it comes, and not replayable
        while True:
            connection = self._take_idle(origin)
            reused = connection is not None
            if connection is None:
                connection = await self._connect(origin, timeouts.get("connect"))
            try:
                await connection.send(request, body, timeouts)
                await connection.receive_head(timeouts.get("read"))
            except _Disconnected:
                connection.close()
                if reused and body is not None:
                    # A kept-alive connection the server had already closed; the request never reached it.
                    continue
                raise httpx.RemoteProtocolError("Ollama closed the connection without answering") from None
            except BaseException:
                # Cancelled or failed mid-request: the connection's state is unknown, and closing it tells Ollama
                # to stop working on the request.
                connection.close()
                raise
            return httpx.Response(
                connection.status,
                headers=connection.headers,
                stream=_ResponseBody(connection, self, timeouts.get("read")),
                extensions={"http_version": b"HTTP/1.1", "reason_phrase": connection.reason},
            )

    def _take_idle(self, origin: tuple[bytes, bytes, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < self._idle_expiry:
                return connection
            connection.close()
        return None

    async def _connect(self, origin: tuple[bytes, bytes, int], timeout: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if scheme == b"https":
            if self._ssl_context is None:
                self._ssl_context = httpx.create_ssl_context()
            tls = self._ssl_context
        host_text = host.decode("ascii")
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(origin), host_text, port, ssl=tls, server_hostname=host_text if tls else None
                ),
                timeout,
            )
        except asyncio.TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {host_text}:{port} within {timeout:g} s") from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        return connection

    def _release(self, connection: _Connection) -> None:
        if not connection.finish() or self._closed:
            connection.close()
            return
        idle = self._idle.setdefault(connection.origin, [])
        if len(idle) >= self._max_idle:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
