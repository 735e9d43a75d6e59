"""`OllamaTransport` over real sockets, against a server whose every byte the test chooses.

Each test starts an asyncio server on a free port of 127.0.0.1 with a handler that reads requests and answers with
raw bytes, so framing, timing and connection lifetimes are exactly what the test says they are. The transport is
used through `httpx.AsyncClient`, as the proxy uses it, or directly through `handle_async_request`. Whether a
connection was reused or closed is judged from the server's side: how many connections it accepted, which requests
arrived on which, and which connections the client closed.

No pytest-asyncio: every test is a plain function that runs its scenario with `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

import httpx
import pytest
import trustme

from ccop.transport import READ_HIGH_WATER, OllamaTransport, _ResponseBody

# A bound on waits that end at once when the transport behaves: it only runs out when a test is failing, so it can
# be generous without slowing the suite down.
PATIENCE = 2.0
# The timeout the timeout tests wait out.
SHORT = 0.2
# The most one socket read hands a protocol (asyncio's selector transports read at most 256 KiB at a time).
MAX_SOCKET_READ = 256 * 1024

CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunked(*pieces: bytes, trailer: bytes = b"") -> bytes:
    """`pieces` in chunked transfer coding, each piece one chunk."""
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n" + trailer + b"\r\n"


def with_length(body: bytes, *, status: bytes = b"200 OK", headers: bytes = b"") -> bytes:
    """A whole HTTP/1.1 response framed by Content-Length; `headers` are extra `Name: value\\r\\n` lines."""
    return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n%s\r\n%s" % (status, len(body), headers, body)


# -- the server --------------------------------------------------------------------------------------------------


@dataclass
class ReceivedRequest:
    """One request as the server read it off the wire."""

    method: str
    target: str
    headers: dict[str, str]  # names lower-cased
    body: bytes  # de-chunked when it came chunked
    raw_body: bytes  # exactly the bytes after the head


class Peer:
    """The server's side of one accepted connection."""

    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.index = index
        self.reader = reader
        self.writer = writer
        self.requests: list[ReceivedRequest] = []
        self.finished = asyncio.Event()  # the handler is done and the connection closed
        self.saw_eof = False  # the client closed the connection while the server was reading

    async def read_request(self) -> ReceivedRequest | None:
        """The next request, or None when the client closed the connection between requests."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise AssertionError(f"the client stopped in the middle of a request head: {exc.partial!r}") from None
            self.saw_eof = True
            return None
        except ConnectionResetError:
            self.saw_eof = True
            return None
        request_line, *lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ")
        assert version == "HTTP/1.1"
        headers: dict[str, str] = {}
        for line in lines:
            name, colon, value = line.partition(":")
            assert colon and name == name.strip(), f"a malformed request header line: {line!r}"
            headers[name.lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            body, raw = bytearray(), bytearray()
            while True:
                size_line = await self.reader.readuntil(b"\r\n")
                size = int(size_line[:-2], 16)
                data = await self.reader.readexactly(size + 2)
                assert data.endswith(b"\r\n"), f"a chunk not followed by CRLF: {data[-10:]!r}"
                raw += size_line + data
                if size == 0:
                    break
                body += data[:-2]
            request = ReceivedRequest(method, target, headers, bytes(body), bytes(raw))
        else:
            data = await self.reader.readexactly(int(headers.get("content-length", "0")))
            request = ReceivedRequest(method, target, headers, data, data)
        self.requests.append(request)
        return request

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_byte_by_byte(self, data: bytes) -> None:
        for index in range(len(data)):
            self.writer.write(data[index : index + 1])
            await self.writer.drain()
            await asyncio.sleep(0)  # give the client's protocol a turn to receive this byte on its own

    async def read_until_eof(self) -> bytes:
        """Whatever the client still sends, until it closes the connection."""
        received = bytearray()
        with contextlib.suppress(ConnectionResetError):
            while data := await self.reader.read(1 << 16):
                received += data
        self.saw_eof = True
        return bytes(received)


Handler = Callable[[Peer], Awaitable[None]]


class RawServer:
    """An asyncio server on a free port; each accepted connection is handed to `handler` as a `Peer`.

    A handler's exception fails the test: it is raised again when the `async with` block ends.
    """

    def __init__(
        self, handler: Handler, *, tls: ssl.SSLContext | None = None, receive_buffer: int | None = None
    ) -> None:
        self._handler = handler
        self._tls = tls
        self._receive_buffer = receive_buffer
        self.peers: list[Peer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._errors: list[Exception] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        return len(self.peers)

    async def __aenter__(self) -> RawServer:
        listener = socket.socket()
        if self._receive_buffer is not None:
            # Set before listen() so accepted sockets inherit it and the kernel cannot absorb much of an upload.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._receive_buffer)
        listener.bind(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        self._server = await asyncio.start_server(self._serve, sock=listener, ssl=self._tls)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()  # handlers still waiting on a client that is gone or on an event nobody will set
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        if self._errors and exc_type is None:
            raise self._errors[0]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(len(self.peers), reader, writer)
        self.peers.append(peer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.append(task)
        try:
            await self._handler(peer)
        except Exception as exc:
            self._errors.append(exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            peer.finished.set()

    async def peer(self, index: int) -> Peer:
        """The `index`-th accepted connection, once the server has accepted it."""
        await eventually(lambda: len(self.peers) > index, f"connection {index} to arrive")
        return self.peers[index]

    async def closed_by_client(self, index: int) -> None:
        """Wait until the client has closed the server's `index`-th connection."""
        peer = await self.peer(index)
        await asyncio.wait_for(peer.finished.wait(), PATIENCE)
        assert peer.saw_eof, f"connection {index} ended without the client closing it"


async def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + PATIENCE
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


def answer_each(respond: Callable[[ReceivedRequest], bytes]) -> Handler:
    """A keep-alive server: every request on a connection gets `respond(request)`, until the client leaves."""

    async def handler(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            await peer.send(respond(request))

    return handler


def echo(request: ReceivedRequest) -> bytes:
    """Answer with what the server received, as JSON, so the client side can check it."""
    received = {"method": request.method, "target": request.target, "body": request.body.decode("latin-1")}
    return with_length(json.dumps(received).encode(), headers=b"Content-Type: application/json\r\n")


def first_connection_then_echo(first: Handler) -> Handler:
    """A server whose first connection is handled by `first`, and every later one by `answer_each(echo)`."""
    echo_each = answer_each(echo)

    async def handler(peer: Peer) -> None:
        await (first if peer.index == 0 else echo_each)(peer)

    return handler


async def first_connection_closed_and_replaced(server: RawServer, client: httpx.AsyncClient) -> None:
    """Assert that the client closed the server's first connection and sends its next request on a new one."""
    await server.closed_by_client(0)
    assert (await client.get("/next")).json()["target"] == "/next"
    assert server.connections == 2


def client_for(
    server: RawServer, transport: OllamaTransport | None = None, *, read: float | None = PATIENCE
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=transport or OllamaTransport(),
        base_url=server.url,
        timeout=httpx.Timeout(PATIENCE, read=read),
        trust_env=False,
    )


def free_port() -> int:
    """A port nobody listens on: bound, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- body framing --------------------------------------------------------------------------------------------------


def test_chunked_body_sent_byte_by_byte_decodes_exactly_and_the_connection_is_reused() -> None:
    # Chunk sizes in hex, a chunk extension and a trailer: every part of the framing arrives split at every byte.
    wire = CHUNKED_HEAD + b'f;name=value\r\n{"message":"hel\r\n' + b"1a\r\n" + b"lo wide world, in a chunk}\r\n"
    wire += b"0\r\nX-Trailer: done\r\n\r\n"
    expected = b'{"message":"hello wide world, in a chunk}'

    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send_byte_by_byte(wire)

    async def main() -> None:
        async with RawServer(handler) as server, client_for(server) as client:
            first = await client.get("/api/chat")
            second = await client.get("/api/chat")
            assert (first.status_code, first.content) == (200, expected)
            assert (second.status_code, second.content) == (200, expected)
            assert server.connections == 1
            assert len(server.peers[0].requests) == 2

    asyncio.run(main())


def test_content_length_empty_head_204_and_304_bodies_keep_one_connection() -> None:
    answers = {
        "GET /text": with_length(b"hello world", headers=b"Content-Type: text/plain\r\n"),
        "GET /empty": with_length(b""),
        # A HEAD answer announces the length of a body it does not send.
        "HEAD /text": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\n",
        "DELETE /api/delete": b"HTTP/1.1 204 No Content\r\n\r\n",
        "GET /cached": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
        # Both framings: chunked wins (RFC 9112, 6.3), or the 3-byte body would leave the rest as a next answer.
        "GET /both": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"hello"),
    }

    async def main() -> None:
        server_handler = answer_each(lambda request: answers[f"{request.method} {request.target}"])
        # A short read timeout: waiting for a body that is not coming would fail fast instead of hanging.
        async with RawServer(server_handler) as server, client_for(server, read=SHORT) as client:
            text = await client.get("/text")
            assert (text.status_code, text.content, text.headers["content-type"]) == (200, b"hello world", "text/plain")
            empty = await client.get("/empty")
            assert (empty.status_code, empty.content) == (200, b"")
            head = await client.head("/text")
            assert (head.status_code, head.content, head.headers["content-length"]) == (200, b"", "11")
            deleted = await client.delete("/api/delete")
            assert (deleted.status_code, deleted.content) == (204, b"")
            cached = await client.get("/cached")
            assert (cached.status_code, cached.content) == (304, b"")
            both = await client.get("/both")
            assert (both.status_code, both.content) == (200, b"hello")
            again = await client.get("/text")
            assert again.content == b"hello world"
            assert server.connections == 1
            assert len(server.peers[0].requests) == 7

    asyncio.run(main())


@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n"],
    ids=["no-framing-headers", "transfer-encoding-not-chunked"],
)
def test_body_delimited_by_close_is_read_whole_and_the_connection_is_not_reused(head: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(head + b"first part, ")
        await asyncio.sleep(0.01)
        await peer.send(b"second part")
        # Returning closes the connection: that is the end of the body.

    async def main() -> None:
        async with RawServer(handler) as server, client_for(server) as client:
            first = await client.get("/")
            second = await client.get("/")
            assert first.content == second.content == b"first part, second part"
            assert server.connections == 2
            assert [len(peer.requests) for peer in server.peers] == [1, 1]

    asyncio.run(main())


@pytest.mark.parametrize(
    ("status_line", "extra_headers"),
    [
        (b"HTTP/1.1 200 OK", b"Connection: close\r\n"),
        (b"HTTP/1.1 200 OK", b"Connection: Keep-Alive, Close\r\n"),
        (b"HTTP/1.1 200 OK", b"Connection: keep-alive\r\nConnection: close\r\n"),
        (b"HTTP/1.0 200 OK", b""),  # HTTP/1.0 closes unless told otherwise; the transport never keeps those
    ],
    ids=["close", "close-in-a-list", "close-in-a-second-header", "http-1.0"],
)
def test_response_that_asks_to_close_is_not_reused(status_line: bytes, extra_headers: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(status_line + b"\r\nContent-Length: 3\r\n" + extra_headers + b"\r\nbye")
        leftover = await peer.read_until_eof()
        assert leftover == b"", "the client sent another request on a connection it was told to close"

    async def main() -> None:
        async with RawServer(handler) as server, client_for(server) as client:
            first = await client.get("/")
            assert first.content == b"bye"
            await server.closed_by_client(0)
            second = await client.get("/")
            assert second.content == b"bye"
            assert server.connections == 2

    asyncio.run(main())


@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["one-write", "byte-by-byte"])
def test_interim_1xx_responses_are_skipped(byte_by_byte: bool) -> None:
    wire = b"HTTP/1.1 100 Continue\r\n\r\n" + b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
    wire += with_length(b"done", status=b"201 Created", headers=b"X-Final: yes\r\n")

    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await (peer.send_byte_by_byte(wire) if byte_by_byte else peer.send(wire))

    async def main() -> None:
        async with RawServer(handler) as server, client_for(server) as client:
            for _ in range(2):
                response = await client.post("/api/pull", content=b"{}")
                assert (response.status_code, response.reason_phrase, response.content) == (201, "Created", b"done")
                assert response.headers["x-final"] == "yes"
                assert "link" not in response.headers  # the interim response's headers are not the answer's
            assert server.connections == 1

    asyncio.run(main())


# -- stale and broken connections ------------------------------------------------------------------------------


def test_idle_connection_the_server_closed_is_replaced_transparently() -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(with_length(b"answer %d" % peer.index))
        # Returning closes the connection while the client holds it idle in its pool.

    async def main() -> None:
        async with RawServer(handler) as server, client_for(server) as client:
            assert (await client.get("/")).content == b"answer 0"
            await asyncio.wait_for(server.peers[0].finished.wait(), PATIENCE)
            assert (await client.get("/")).content == b"answer 1"
            assert server.connections == 2

    asyncio.run(main())


def test_request_that_crosses_the_servers_close_is_retried_on_a_new_connection() -> None:
    # The server's close of an idle connection and the client's next request pass each other on the wire: the
    # request reaches a connection that closes without answering. It never got an answer, so sending it again on a
    # new connection is safe, and the caller should not see the failure.
    async def first_connection(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(with_length(b"first"))
        await peer.read_request()  # the second request arrives, and the connection closes unanswered

    async def main() -> None:
        async with RawServer(first_connection_then_echo(first_connection)) as server, client_for(server) as client:
            assert (await client.get("/first")).content == b"first"
            second = await client.post("/api/chat", content=b'{"again": true}')
            assert second.status_code == 200
            assert second.json() == {"method": "POST", "target": "/api/chat", "body": '{"again": true}'}
            assert server.connections == 2
            assert [request.target for request in server.peers[0].requests] == ["/first", "/api/chat"]

    asyncio.run(main())


def test_streamed_request_body_is_not_replayed_when_the_kept_alive_connection_dies() -> None:
    # A streamed body is consumed as it is sent, so it cannot be sent again: the failure must reach the caller.
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(with_length(b"first"))
        await peer.read_request()

    async def upload() -> AsyncIterator[bytes]:
        yield b"once only"

    async def main() -> None:
        async with RawServer(handler) as server, client_for(server) as client:
            assert (await client.get("/")).content == b"first"
            with pytest.raises(httpx.RemoteProtocolError, match="without answering"):
                await client.post("/api/chat", content=upload())
            assert server.connections == 1
            assert server.peers[0].requests[1].body == b"once only"

    asyncio.run(main())


def test_request_the_server_acknowledged_with_an_interim_response_is_not_replayed() -> None:
    async def first_connection(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(with_length(b"first"))
        await peer.read_request()
        await peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")  # the request arrived; then the server goes away

    async def main() -> None:
        async with RawServer(first_connection_then_echo(first_connection)) as server, client_for(server) as client:
            assert (await client.get("/first")).content == b"first"
            with pytest.raises(httpx.RemoteProtocolError):
                await client.post("/api/create", content=b'{"model": "new"}')
            assert server.connections == 1

    asyncio.run(main())


@pytest.mark.parametrize(
    ("sent", "message"),
    [(b"", "without answering"), (b"HTTP/1.1 200 OK\r\nContent-Le", "response head")],
    ids=["nothing", "part-of-the-head"],
)
def test_fresh_connection_closed_before_the_answer_is_a_remote_protocol_error(sent: bytes, message: str) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(sent)

    async def main() -> None:
        async with RawServer(handler) as server, client_for(server) as client:
            with pytest.raises(httpx.RemoteProtocolError, match=message):
                await client.get("/")
            assert server.connections == 1  # a connection that was never used before is not retried

    asyncio.run(main())


@pytest.mark.parametrize(
    "partial",
    [CHUNKED_HEAD + b"5\r\nhello\r\n5\r\nwor", with_length(b"hello world")[:-6], CHUNKED_HEAD + b"5\r\nhello\r\n"],
    ids=["chunked", "content-length", "chunked-between-chunks"],
)
def test_connection_closed_in_the_middle_of_the_body_is_a_remote_protocol_error(partial: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(partial)

    async def main() -> None:
        async with RawServer(handler) as server, client_for(server) as client:
            async with client.stream("GET", "/") as response:
                assert response.status_code == 200  # the head arrived whole
                with pytest.raises(httpx.RemoteProtocolError, match="response body"):
                    await response.aread()

    asyncio.run(main())


@pytest.mark.parametrize(
    "broken",
    [b"zz\r\nhello\r\n0\r\n\r\n", b"5\r\nhello world\r\n0\r\n\r\n", b"5\nhello\r\n0\r\n\r\n"],
    ids=["size-not-hex", "chunk-longer-than-its-size", "bare-newline"],
)
def test_broken_chunked_framing_is_a_remote_protocol_error_and_closes_the_connection(broken: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(CHUNKED_HEAD + broken)
        await peer.read_until_eof()

    async def main() -> None:
        async with RawServer(handler) as server, client_for(server) as client:
            async with client.stream("GET", "/") as response:
                with pytest.raises(httpx.RemoteProtocolError, match="framing"):
                    await response.aread()
            await server.closed_by_client(0)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"HTTP/2 200 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "status line"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "header line"),
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded: 2\r\n\r\n", "header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (70 * 1024), "too large"),
    ],
    ids=["http-2", "two-digit-status", "not-http", "no-colon", "folded", "two-lengths", "negative-length", "huge"],
)
def test_malformed_response_head_is_a_remote_protocol_error(wire: bytes, message: str) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        with contextlib.suppress(ConnectionError):  # the client may hang up while a huge head is still going out
            await peer.send(wire)
        await peer.read_until_eof()

    async def main() -> None:
        async with RawServer(handler) as server, client_for(server) as client:
            with pytest.raises(httpx.RemoteProtocolError, match=message):
                await client.get("/")
            await server.closed_by_client(0)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("wire", "body"),
    [
        (with_length(b"hello") + b"HTTP/1.1 200 OK\r\n", b"hello"),
        (CHUNKED_HEAD + chunked(b"hello") + b"junk", b"hello"),
        (b"HTTP/1.1 204 No Content\r\n\r\njunk", b""),
        (with_length(b"") + b"junk", b""),
    ],
    ids=["content-length", "chunked", "204", "empty-content-length"],
)
def test_bytes_after_a_complete_body_keep_the_connection_out_of_the_pool(wire: bytes, body: bytes) -> None:
    # Bytes nobody asked for mean the connection's framing cannot be trusted: the next answer would start mid-stream.
    async def first_connection(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(wire)
        await peer.read_until_eof()

    async def main() -> None:
        async with RawServer(first_connection_then_echo(first_connection)) as server, client_for(server) as client:
            first = await client.get("/first")
            assert first.content == body
            second = await client.get("/second")
            assert second.json()["target"] == "/second"
            assert server.connections == 2
            await server.closed_by_client(0)
            assert len(server.peers[0].requests) == 1

    asyncio.run(main())


def test_bytes_arriving_on_an_idle_pooled_connection_close_it() -> None:
    first_answer_read = asyncio.Event()

    async def first_connection(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(with_length(b"hello"))
        await first_answer_read.wait()
        await peer.send(b"HTTP/1.1 200 OK\r\n")  # while the connection sits in the pool
        await peer.read_until_eof()

    async def main() -> None:
        async with RawServer(first_connection_then_echo(first_connection)) as server, client_for(server) as client:
            assert (await client.get("/first")).content == b"hello"
            first_answer_read.set()
            await first_connection_closed_and_replaced(server, client)

    asyncio.run(main())


# -- errors and timeouts -------------------------------------------------------------------------------------------


def test_refused_connection_is_a_connect_error() -> None:
    async def main() -> None:
        async with httpx.AsyncClient(transport=OllamaTransport(), base_url=f"http://127.0.0.1:{free_port()}") as client:
            with pytest.raises(httpx.ConnectError):
                await client.get("/api/tags")

    asyncio.run(main())


def test_unsupported_scheme_and_closed_transport() -> None:
    async def main() -> None:
        transport = OllamaTransport()
        with pytest.raises(httpx.UnsupportedProtocol, match="ftp"):
            await transport.handle_async_request(httpx.Request("GET", "ftp://127.0.0.1/file"))
        await transport.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await transport.handle_async_request(httpx.Request("GET", f"http://127.0.0.1:{free_port()}/"))

    asyncio.run(main())


@pytest.mark.parametrize(
    "sent", [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab"], ids=["no-head", "head-then-silence"]
)
def test_silent_server_is_a_read_timeout_and_the_connection_is_closed(sent: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(sent)
        await peer.read_until_eof()

    async def main() -> None:
        async with RawServer(handler) as server, client_for(server, read=SHORT) as client:
            started = asyncio.get_running_loop().time()
            with pytest.raises(httpx.ReadTimeout):
                await client.get("/")
            assert asyncio.get_running_loop().time() - started >= SHORT * 0.9
            await server.closed_by_client(0)

    asyncio.run(main())


def test_read_timeout_in_the_body_closes_the_connection_before_the_response_is_closed() -> None:
    # The caller may drop a failed response without closing it; the server must not be left waiting regardless.
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")
        await peer.read_until_eof()

    async def main() -> None:
        async with RawServer(handler) as server:
            transport = OllamaTransport()
            try:
                request = httpx.Request("GET", f"{server.url}/", extensions={"timeout": {"read": SHORT}})
                response = await transport.handle_async_request(request)
                with pytest.raises(httpx.ReadTimeout):
                    async for _ in response.aiter_raw():
                        pass
                await server.closed_by_client(0)
            finally:
                await transport.aclose()

    asyncio.run(main())


def test_read_timeout_is_per_read_not_for_the_whole_answer() -> None:
    # Four gaps of 0.08 s add up to more than the 0.2 s read timeout, but none of them alone reaches it.
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(CHUNKED_HEAD)
        for piece in (b"one ", b"two ", b"three ", b"four"):
            await asyncio.sleep(0.08)
            await peer.send(chunked(piece)[: -len(b"0\r\n\r\n")])
        await peer.send(b"0\r\n\r\n")
        await peer.read_until_eof()

    async def main() -> None:
        async with RawServer(handler) as server, client_for(server, read=SHORT) as client:
            response = await client.get("/")
            assert response.content == b"one two three four"

    asyncio.run(main())


def test_server_that_stops_reading_an_upload_is_a_write_timeout() -> None:
    stop_waiting = asyncio.Event()
    upload = b"x" * (16 << 20)  # far more than the kernel buffers between the two sockets can hold

    async def handler(peer: Peer) -> None:
        await peer.reader.readuntil(b"\r\n\r\n")  # the head, and then not one byte of the body
        await stop_waiting.wait()
        await peer.read_until_eof()

    async def main() -> None:
        async with RawServer(handler, receive_buffer=64 * 1024) as server:
            timeout = httpx.Timeout(PATIENCE, write=SHORT)
            async with httpx.AsyncClient(transport=OllamaTransport(), base_url=server.url, timeout=timeout) as client:
                with pytest.raises(httpx.WriteTimeout):
                    await client.post("/api/chat", content=upload)
                stop_waiting.set()
                await server.closed_by_client(0)

    asyncio.run(main())


def test_upload_abandoned_by_a_write_timeout_is_not_sent_on() -> None:
    gave_up = asyncio.Event()
    upload = b"x" * (16 << 20)
    received_after_timeout: list[int] = []

    async def handler(peer: Peer) -> None:
        await peer.reader.readuntil(b"\r\n\r\n")
        await gave_up.wait()
        received_after_timeout.append(len(await peer.read_until_eof()))

    async def main() -> None:
        async with RawServer(handler, receive_buffer=64 * 1024) as server:
            timeout = httpx.Timeout(PATIENCE, write=SHORT)
            async with httpx.AsyncClient(transport=OllamaTransport(), base_url=server.url, timeout=timeout) as client:
                with pytest.raises(httpx.WriteTimeout):
                    await client.post("/api/chat", content=upload)
                gave_up.set()
                await server.closed_by_client(0)
        # What the kernel buffers already held may still arrive; the megabytes the transport still had must not.
        assert received_after_timeout[0] < len(upload) // 2

    asyncio.run(main())


def test_cancelling_a_request_waiting_for_its_answer_closes_the_connection() -> None:
    request_arrived = asyncio.Event()

    async def first_connection(peer: Peer) -> None:
        await peer.read_request()
        request_arrived.set()
        await peer.read_until_eof()  # never answers; the client's close is what ends this

    async def main() -> None:
        async with RawServer(first_connection_then_echo(first_connection)) as server, client_for(server) as client:
            waiting = asyncio.create_task(client.post("/api/chat", content=b"{}"))
            await asyncio.wait_for(request_arrived.wait(), PATIENCE)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await first_connection_closed_and_replaced(server, client)

    asyncio.run(main())


def test_cancelling_a_request_reading_its_body_closes_the_connection() -> None:
    async def first_connection(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(CHUNKED_HEAD + b"5\r\nfirst\r\n")
        await peer.read_until_eof()

    async def main() -> None:
        first_piece = asyncio.Event()

        async def read_stream() -> None:
            async with client.stream("GET", "/stream") as response:
                async for _ in response.aiter_raw():
                    first_piece.set()

        async with RawServer(first_connection_then_echo(first_connection)) as server, client_for(server) as client:
            reading = asyncio.create_task(read_stream())
            await asyncio.wait_for(first_piece.wait(), PATIENCE)
            reading.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reading
            await first_connection_closed_and_replaced(server, client)

    asyncio.run(main())


def test_line_break_in_a_header_is_a_local_protocol_error_and_nothing_is_sent() -> None:
    async def main() -> None:
        async with RawServer(answer_each(echo)) as server:
            async with client_for(server) as client:
                with pytest.raises(httpx.LocalProtocolError, match="line break"):
                    await client.get("/evil", headers={"X-Note": "a\r\nInjected: yes"})
                assert (await client.get("/good")).json()["target"] == "/good"
            # Whatever connections were opened, the only request that reached the server is the good one; a
            # partial head would have failed the server's handler.
            await eventually(lambda: all(peer.finished.is_set() for peer in server.peers), "the client to hang up")
            received = [(request.target, request.headers) for peer in server.peers for request in peer.requests]
            assert [target for target, _ in received] == ["/good"]
            assert "injected" not in received[0][1]

    asyncio.run(main())


# -- the pool ------------------------------------------------------------------------------------------------------


def test_closing_a_response_before_reading_its_body_closes_the_connection() -> None:
    async def first_connection(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(with_length(b"0123456789")[:-7])  # the head and 3 of the 10 body bytes
        await peer.read_until_eof()

    async def main() -> None:
        async with RawServer(first_connection_then_echo(first_connection)) as server, client_for(server) as client:
            response = await client.send(client.build_request("GET", "/partial"), stream=True)
            assert response.status_code == 200
            await response.aclose()
            await first_connection_closed_and_replaced(server, client)

    asyncio.run(main())


def test_reading_the_whole_body_then_closing_pools_the_connection() -> None:
    async def main() -> None:
        async with RawServer(answer_each(echo)) as server, client_for(server) as client:
            for target in ("/one", "/two", "/three"):
                async with client.stream("GET", target) as response:
                    await response.aread()
                assert response.json()["target"] == target
            assert server.connections == 1
            assert not server.peers[0].finished.is_set()

    asyncio.run(main())


def test_response_open_when_the_transport_closes_is_read_whole_and_its_connection_closed() -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(CHUNKED_HEAD + b"6\r\nbefore\r\n")
        await asyncio.sleep(0.01)
        await peer.send(b"5\r\nafter\r\n0\r\n\r\n")
        await peer.read_until_eof()

    async def main() -> None:
        async with RawServer(handler) as server:
            transport = OllamaTransport()
            response = await transport.handle_async_request(httpx.Request("GET", f"{server.url}/"))
            await transport.aclose()
            assert await response.aread() == b"beforeafter"
            await server.closed_by_client(0)  # a closed transport keeps no connection
            assert server.connections == 1

    asyncio.run(main())


def test_concurrent_requests_get_their_own_connections_and_answers() -> None:
    async def slow_echo(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            # Later requests are answered sooner, so answers cross if they could be mixed up.
            await asyncio.sleep(0.01 * (5 - int(request.target.strip("/"))))
            await peer.send(echo(request))

    async def main() -> None:
        async with RawServer(slow_echo) as server, client_for(server) as client:
            for _ in range(2):
                answers = await asyncio.gather(*(client.get(f"/{index}") for index in range(5)))
                assert [answer.json()["target"] for answer in answers] == [f"/{index}" for index in range(5)]
            assert server.connections == 5  # the second round reused the first round's connections

    asyncio.run(main())


def test_max_idle_limits_the_pool_and_aclose_closes_idle_connections() -> None:
    arrived = 0
    both_arrived = asyncio.Event()

    async def handler(peer: Peer) -> None:
        nonlocal arrived
        while (request := await peer.read_request()) is not None:
            arrived += 1
            if arrived == 2:
                both_arrived.set()
            await both_arrived.wait()  # the first two requests are in flight at once, on two connections
            await peer.send(echo(request))

    async def main() -> None:
        transport = OllamaTransport(max_idle=1)
        async with RawServer(handler) as server:
            async with client_for(server, transport) as client:
                answers = await asyncio.gather(client.get("/a"), client.get("/b"))
                assert [answer.json()["target"] for answer in answers] == ["/a", "/b"]
                assert server.connections == 2
                # One connection is kept; the other, past max_idle, is closed.
                await eventually(lambda: sum(peer.finished.is_set() for peer in server.peers) == 1, "one close")
                kept = next(peer for peer in server.peers if not peer.finished.is_set())
                assert (await client.get("/c")).json()["target"] == "/c"
                assert server.connections == 2
                assert kept.requests[-1].target == "/c"
            # Leaving the client closes the transport, which closes the idle connection it kept.
            await server.closed_by_client(kept.index)

    asyncio.run(main())


def test_expired_idle_connection_is_not_reused() -> None:
    async def main() -> None:
        transport = OllamaTransport(idle_expiry=0.0)
        async with RawServer(answer_each(echo)) as server, client_for(server, transport) as client:
            assert (await client.get("/one")).json()["target"] == "/one"
            assert (await client.get("/two")).json()["target"] == "/two"
            assert server.connections == 2
            await server.closed_by_client(0)

    asyncio.run(main())


# -- request bodies ------------------------------------------------------------------------------------------------


def test_request_head_and_body_reach_the_server_as_sent() -> None:
    async def main() -> None:
        async with RawServer(answer_each(echo)) as server, client_for(server) as client:
            response = await client.post(
                "/api/chat?stream=true", content=b'{"model": "m"}', headers={"X-Custom": "value"}
            )
            assert response.json() == {"method": "POST", "target": "/api/chat?stream=true", "body": '{"model": "m"}'}
            request = server.peers[0].requests[0]
            assert request.headers["host"] == f"127.0.0.1:{server.port}"
            assert request.headers["content-length"] == "14"
            assert request.headers["x-custom"] == "value"
            assert "transfer-encoding" not in request.headers

    asyncio.run(main())


def test_streamed_request_body_is_sent_chunked() -> None:
    async def upload() -> AsyncIterator[bytes]:
        yield b"hello "
        yield b""  # an empty piece must not be sent as a chunk: a zero-size chunk would end the body here
        await asyncio.sleep(0)
        yield b"world"

    async def main() -> None:
        async with RawServer(answer_each(echo)) as server, client_for(server) as client:
            response = await client.post("/api/chat", content=upload())
            assert response.json()["body"] == "hello world"
            request = server.peers[0].requests[0]
            assert request.headers["transfer-encoding"] == "chunked"
            assert "content-length" not in request.headers
            assert request.raw_body == b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
            # The body ended where the framing said, so the connection still carries requests.
            assert (await client.get("/after")).json()["target"] == "/after"
            assert server.connections == 1

    asyncio.run(main())


def test_streamed_request_read_before_sending_is_still_sent_chunked() -> None:
    async def upload() -> AsyncIterator[bytes]:
        yield b"hello "
        yield b"world"

    async def main() -> None:
        async with RawServer(answer_each(echo)) as server:
            transport = OllamaTransport()
            request = httpx.Request(
                "POST", f"{server.url}/api/chat", content=upload(), extensions={"timeout": {"read": SHORT}}
            )
            await request.aread()
            assert request.headers["transfer-encoding"] == "chunked"
            try:
                response = await transport.handle_async_request(request)
                await response.aread()
            finally:
                await transport.aclose()
            assert json.loads(response.content)["body"] == "hello world"

    asyncio.run(main())


def test_large_upload_to_a_slow_reader_arrives_intact() -> None:
    upload = random.Random(15).randbytes(8 << 20)

    async def slow_reader(peer: Peer) -> None:
        head = await peer.reader.readuntil(b"\r\n\r\n")
        assert b"Content-Length: %d" % len(upload) in head.title()
        received = bytearray()
        while len(received) < len(upload):
            received += await peer.reader.read(1 << 16)
            await asyncio.sleep(0)
        assert received == upload
        await peer.send(with_length(b"got it"))
        await peer.read_until_eof()

    async def main() -> None:
        async with RawServer(slow_reader, receive_buffer=64 * 1024) as server, client_for(server) as client:
            response = await client.post("/api/create", content=upload)
            assert response.content == b"got it"

    asyncio.run(main())


# -- large bodies and flow control ---------------------------------------------------------------------------------


def big_chunked_sender(body: bytes, piece_size: int = 1 << 16) -> Handler:
    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(CHUNKED_HEAD)
            for start in range(0, len(body), piece_size):
                await peer.send(chunked(body[start : start + piece_size])[: -len(b"0\r\n\r\n")])
            await peer.send(b"0\r\n\r\n")

    return handler


def test_large_chunked_body_read_slowly_pauses_the_socket_and_arrives_intact() -> None:
    body = random.Random(18).randbytes(8 << 20)

    async def main() -> None:
        async with RawServer(big_chunked_sender(body)) as server:
            transport = OllamaTransport()
            try:
                response = await transport.handle_async_request(httpx.Request("GET", f"{server.url}/big"))
                # Read nothing for a while: the server writes as fast as the client lets it.
                await asyncio.sleep(SHORT)
                # White-box: the connection stopped reading the socket once a megabyte was waiting, instead of
                # holding the whole body in memory.
                assert isinstance(response.stream, _ResponseBody)
                connection = response.stream._connection
                assert connection.transport is not None
                assert not connection.transport.is_reading()
                assert READ_HIGH_WATER < connection._buffered <= READ_HIGH_WATER + MAX_SOCKET_READ
                pieces = []
                async for piece in response.aiter_raw():
                    pieces.append(piece)
                    await asyncio.sleep(0)
                assert b"".join(pieces) == body
                assert max(len(piece) for piece in pieces) <= READ_HIGH_WATER + MAX_SOCKET_READ
                # Flow control left the connection in good order: it carries the next request.
                again = await transport.handle_async_request(httpx.Request("GET", f"{server.url}/big"))
                assert await again.aread() == body
                assert server.connections == 1
            finally:
                await transport.aclose()

    asyncio.run(main())


# -- TLS -----------------------------------------------------------------------------------------------------------


@dataclass
class Tls:
    server: ssl.SSLContext
    client: ssl.SSLContext


def tls_contexts() -> Tls:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return Tls(server_context, client_context)


def test_https_request_to_a_trusted_server() -> None:
    tls = tls_contexts()
    wire = with_length(b'{"ok":true}', status=b"201 Created", headers=b"X-Thing: a\r\nX-Thing: b\r\n")

    async def main() -> None:
        async with RawServer(answer_each(lambda _: wire), tls=tls.server) as server:
            assert server.url.startswith("https://")
            async with client_for(server, OllamaTransport(ssl_context=tls.client)) as client:
                for _ in range(2):
                    response = await client.get("/api/version")
                    assert response.status_code == 201
                    assert response.reason_phrase == "Created"
                    assert response.http_version == "HTTP/1.1"
                    assert response.extensions["http_version"] == b"HTTP/1.1"
                    assert response.headers.get_list("x-thing") == ["a", "b"]
                    assert response.json() == {"ok": True}
                assert server.connections == 1

    asyncio.run(main())


def test_https_large_chunked_body_read_slowly_arrives_intact() -> None:
    tls = tls_contexts()
    body = random.Random(19).randbytes(4 << 20)

    async def main() -> None:
        async with RawServer(big_chunked_sender(body), tls=tls.server) as server:
            async with client_for(server, OllamaTransport(ssl_context=tls.client)) as client:
                async with client.stream("GET", "/big") as response:
                    await asyncio.sleep(0.05)  # let more than the high-water mark pile up before reading
                    received = bytearray()
                    async for piece in response.aiter_raw():
                        received += piece
                        await asyncio.sleep(0)
                assert received == body
                assert (await client.get("/big")).content == body
                assert server.connections == 1

    asyncio.run(main())


def test_https_server_with_an_untrusted_certificate_is_a_connect_error() -> None:
    tls = tls_contexts()

    async def main() -> None:
        async with RawServer(answer_each(echo), tls=tls.server) as server:
            # The default context trusts the usual certificate authorities, not this test's own.
            async with client_for(server, OllamaTransport()) as client:
                with pytest.raises(httpx.ConnectError, match="certificate"):
                    await client.get("/")

    asyncio.run(main())


# -- through httpx.AsyncClient ---------------------------------------------------------------------------------


def test_json_after_aread_and_aiter_raw_through_the_client() -> None:
    pieces = [b'{"model":"m","message":{"content":"hi"},"done":false}\n', b'{"model":"m","done":true}\n']

    async def handler(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            if request.target == "/api/show":
                await peer.send(echo(request))
                continue
            await peer.send(CHUNKED_HEAD)
            for piece in pieces:
                await asyncio.sleep(0.01)  # each NDJSON line as its own chunk, as Ollama writes them
                await peer.send(chunked(piece)[: -len(b"0\r\n\r\n")])
            await peer.send(b"0\r\n\r\n")

    async def main() -> None:
        async with RawServer(handler) as server, client_for(server) as client:
            request = client.build_request("POST", "/api/show", json={"model": "m"})
            response = await client.send(request, stream=True)
            await response.aread()
            assert response.json() == {"method": "POST", "target": "/api/show", "body": '{"model":"m"}'}
            async with client.stream("POST", "/api/chat", json={"stream": True}) as streamed:
                raw = [piece async for piece in streamed.aiter_raw()]
            assert b"".join(raw) == b"".join(pieces)
            assert all(raw)
            assert server.connections == 1

    asyncio.run(main())
