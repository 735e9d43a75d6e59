"""The load generator of `load.py`: N keep-alive HTTP/1.1 clients on raw asyncio sockets, M requests each.

Each response is read to its own end (the chunked terminator `0\\r\\n\\r\\n`, or `Content-Length`), never to the
server closing the connection, and the per-byte work is the least that still measures correctly:

- chunked framing is walked with offsets, without copying the data;
- tokens are counted as occurrences of `TOKEN_MARK` in the chunk data (one per upstream token, wherever the proxy
  put it), which is one C-level `bytes.count` per read;
- time to first token is the arrival of the first read that holds a token: the first `text_delta` through a proxy,
  the first content chunk straight from the upstream.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["LoadResult", "RequestResult", "fetch_body", "percentile", "run_load"]

_HEAD_LIMIT = 64 * 1024
_TAIL = 256


@dataclass
class RequestResult:
    ok: bool
    # Seconds from writing the request; None when no token arrived.
    ttft: float | None
    total: float
    tokens: int
    error: str | None = None
    # perf_counter() when the request was written and when the first token arrived.
    sent_at: float = 0.0
    first_at: float | None = None


@dataclass
class LoadResult:
    concurrency: int
    requests_per_client: int
    results: list[RequestResult] = field(default_factory=list)
    # perf_counter() of the first request written and of the last response finished.
    started: float = 0.0
    finished: float = 0.0
    # True when the time cap stopped clients before their M requests.
    capped: bool = False

    @property
    def wall(self) -> float:
        return max(self.finished - self.started, 1e-9)

    @property
    def tokens(self) -> int:
        return sum(result.tokens for result in self.results)

    @property
    def completed(self) -> int:
        return sum(1 for result in self.results if result.ok)

    @property
    def errors(self) -> int:
        return sum(1 for result in self.results if not result.ok)

    def error_kinds(self) -> dict[str, int]:
        return dict(Counter(result.error or "?" for result in self.results if not result.ok))


def percentile(values: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class _Connection(asyncio.Protocol):
    """One client connection; one response in flight at a time."""

    def __init__(self, mark: bytes, end_marker: bytes, expected_tokens: int, *, keep_body: bool = False) -> None:
        self.mark = mark
        self.end_marker = end_marker
        self.expected_tokens = expected_tokens
        self.keep_body = keep_body
        self.body = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._future: asyncio.Future[RequestResult] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self._sent = 0.0
        self._first: float | None = None
        self._in_head = True
        self._head = bytearray()
        self._status = 0
        self._keep_alive = True
        # "chunked", "length" or "eof"
        self._mode = "eof"
        self._remaining = 0
        # Chunked state: bytes left in the current chunk's data, in its trailing CRLF, and a partial size line.
        self._chunk_left = 0
        self._crlf_left = 0
        self._line = b""
        self._in_trailers = False
        self._tokens = 0
        self._tail = b""

    # -- asyncio callbacks -------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._future is not None and not self._future.done():
            if self._mode == "eof" and not self._in_head:
                self._finish(time.perf_counter())
            else:
                self._fail("connection closed mid-response" if not self._in_head or self._head else "connection closed")

    def data_received(self, data: bytes) -> None:
        if self._future is None or self._future.done():
            return
        now = time.perf_counter()
        if self._in_head:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > _HEAD_LIMIT:
                    self._fail("response head too large")
                return
            if not self._parse_head(bytes(self._head[:end])):
                return
            data = bytes(self._head[end + 4 :])
            self._head.clear()
            self._in_head = False
        before = self._tokens
        if self._mode == "chunked":
            done = self._walk_chunks(data, 0)
        elif self._mode == "length":
            take = min(self._remaining, len(data))
            self._count(data, 0, take)
            self._remaining -= take
            done = self._remaining == 0
        else:
            self._count(data, 0, len(data))
            done = False
        if self._first is None and self._tokens > before:
            self._first = now
        self._tail = (self._tail + data[-_TAIL:])[-_TAIL:]
        if done:
            self._finish(now)

    # -- parsing -----------------------------------------------------------------------------------------------------

    def _parse_head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        try:
            self._status = int(parts[1])
        except (IndexError, ValueError):
            self._fail("malformed status line")
            return False
        length: int | None = None
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == b"transfer-encoding" and b"chunked" in value:
                chunked = True
            elif name == b"content-length":
                length = int(value)
            elif name == b"connection" and b"close" in value:
                self._keep_alive = False
        if parts[0] == b"HTTP/1.0":
            self._keep_alive = False
        if chunked:
            self._mode = "chunked"
        elif length is not None:
            self._mode = "length"
            self._remaining = length
            if length == 0:
                self._finish(time.perf_counter())
                return False
        else:
            self._mode = "eof"
            self._keep_alive = False
        return True

    def _count(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self._tokens += data.count(self.mark, start, end)
            if self.keep_body:
                self.body += data[start:end]

    def _walk_chunks(self, data: bytes, position: int) -> bool:
        """Advance over chunked framing; True once the terminating chunk and its trailers are read."""
        size = len(data)
        while position < size:
            if self._chunk_left:
                take = min(self._chunk_left, size - position)
                self._count(data, position, position + take)
                position += take
                self._chunk_left -= take
                if not self._chunk_left:
                    self._crlf_left = 2
                continue
            if self._crlf_left:
                take = min(self._crlf_left, size - position)
                position += take
                self._crlf_left -= take
                continue
            newline = data.find(b"\n", position)
            if newline < 0:
                self._line += data[position:]
                return False
            line = (self._line + data[position:newline]).strip()
            self._line = b""
            position = newline + 1
            if self._in_trailers:
                if not line:
                    return True
                continue
            chunk_size = int(line.split(b";", 1)[0], 16)
            if chunk_size == 0:
                self._in_trailers = True
            else:
                self._chunk_left = chunk_size
        return False

    # -- results -----------------------------------------------------------------------------------------------------

    def _finish(self, now: float) -> None:
        future = self._future
        if future is None or future.done():
            return
        ttft = self._first - self._sent if self._first is not None else None
        error: str | None = None
        if self._status != 200:
            error = f"HTTP {self._status}"
        elif self._tokens != self.expected_tokens:
            error = f"{self._tokens}/{self.expected_tokens} tokens" + (
                " (error event)" if b"error" in self._tail else ""
            )
        elif self.end_marker not in self._tail:
            error = "stream did not end properly"
        future.set_result(
            RequestResult(error is None, ttft, now - self._sent, self._tokens, error, self._sent, self._first)
        )
        if not self._keep_alive and self.transport is not None:
            self.transport.close()
            self.closed = True

    def _fail(self, reason: str) -> None:
        future = self._future
        if future is not None and not future.done():
            now = time.perf_counter()
            ttft = self._first - self._sent if self._first is not None else None
            future.set_result(
                RequestResult(False, ttft, now - self._sent, self._tokens, reason, self._sent, self._first)
            )
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    def timeout(self) -> None:
        self._fail("timeout")

    async def request(self, payload: bytes, timeout: float) -> RequestResult:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self._reset()
        future: asyncio.Future[RequestResult] = loop.create_future()
        self._future = future
        timer = loop.call_later(timeout, self.timeout)
        self._sent = time.perf_counter()
        self.transport.write(payload)
        try:
            return await future
        finally:
            timer.cancel()
            self._future = None


async def _connect(
    host: str, port: int, mark: bytes, end_marker: bytes, expected_tokens: int, *, keep_body: bool = False
) -> _Connection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(
        lambda: _Connection(mark, end_marker, expected_tokens, keep_body=keep_body), host, port
    )
    return protocol


async def _client(
    host: str,
    port: int,
    payload: bytes,
    requests: int,
    mark: bytes,
    end_marker: bytes,
    expected_tokens: int,
    deadline: float,
    timeout: float,
    load: LoadResult,
) -> None:
    connection: _Connection | None = None
    try:
        for _ in range(requests):
            if time.perf_counter() > deadline:
                load.capped = True
                return
            if connection is None or connection.closed:
                started = time.perf_counter()
                try:
                    connection = await asyncio.wait_for(
                        _connect(host, port, mark, end_marker, expected_tokens), timeout=timeout
                    )
                except (OSError, asyncio.TimeoutError) as exc:
                    failed = RequestResult(False, None, time.perf_counter() - started, 0, f"connect: {exc!r}"[:80])
                    load.results.append(failed)
                    load.finished = max(load.finished, time.perf_counter())
                    connection = None
                    await asyncio.sleep(0.01)
                    continue
            result = await connection.request(payload, timeout)
            load.results.append(result)
            load.finished = max(load.finished, time.perf_counter())
    finally:
        if connection is not None and connection.transport is not None:
            connection.transport.close()


async def run_load(
    host: str,
    port: int,
    payload: bytes,
    *,
    concurrency: int,
    requests_per_client: int,
    mark: bytes,
    end_marker: bytes,
    expected_tokens: int,
    max_seconds: float,
    timeout: float,
) -> LoadResult:
    """`concurrency` clients, each on its own keep-alive connection, each sending `requests_per_client` requests in
    sequence; no client starts a request after `max_seconds`."""
    load = LoadResult(concurrency, requests_per_client)
    load.started = time.perf_counter()
    load.finished = load.started
    deadline = load.started + max_seconds
    await asyncio.gather(
        *(
            _client(
                host,
                port,
                payload,
                requests_per_client,
                mark,
                end_marker,
                expected_tokens,
                deadline,
                timeout,
                load,
            )
            for _ in range(concurrency)
        )
    )
    return load


async def fetch_body(
    host: str, port: int, payload: bytes, *, mark: bytes, end_marker: bytes, expected_tokens: int, timeout: float
) -> tuple[RequestResult, bytes]:
    """One request; the result and the de-chunked body, for checking the content itself."""
    connection = await _connect(host, port, mark, end_marker, expected_tokens, keep_body=True)
    try:
        result = await connection.request(payload, timeout)
    finally:
        if connection.transport is not None:
            connection.transport.close()
    return result, bytes(connection.body)
