"""The double's HTTP/1.1 server: asyncio streams for the socket, h11 for the protocol, a background thread for the
loop.

Why not a server library: the tests decide which bytes leave in which TCP write (``Reply.split_every`` splits bodies
anywhere, even inside a UTF-8 character), when the response head goes out (``first_byte_delay``,
``first_line_after``), and must notice a client that goes away while nothing is being written. An ASGI server
(Granian, uvicorn) decides itself how body messages become chunks and writes; aiohttp holds the head back until the
first body write and reports a vanished client only by cancelling the handler, an option that is off by default. h11
(python-hyper's sans-IO HTTP/1.1, installed with httpx) parses the requests and frames the responses, chunked or
close-delimited for HTTP/1.0, and leaves every write to us.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate

import h11

# How much unread input the disconnect watcher buffers (e.g. a pipelined request) before it stops reading.
_MAX_PUSHBACK = 1024 * 1024
_READ_SIZE = 65536


class ClientGone(Exception):
    """The peer closed its side (EOF or a failed write) while the double was serving it."""


@dataclass
class HttpRequest:
    method: str
    path: str
    query: str
    # Names lower-cased; a repeated header is joined with ", ".
    headers: dict[str, str]
    body: bytes
    peer: str


def date_header() -> tuple[str, str]:
    return ("Date", formatdate(usegmt=True))


class HttpConnection:
    """One client connection: h11 parses its requests and frames every response; each ``write`` is one TCP write."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.SERVER)
        self.eof = False
        self.watcher: asyncio.Task[None] | None = None
        self.peer = str(writer.get_extra_info("peername"))

    async def _receive(self) -> None:
        try:
            data = await self.reader.read(_READ_SIZE)
        except (ConnectionError, OSError):
            data = b""
        self.eof = not data
        self.h11.receive_data(data)

    async def _next_event(self) -> h11.Event:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                assert not isinstance(event, type)  # PAUSED cannot happen: each cycle ends before the next read
                return event
            if self.h11.they_are_waiting_for_100_continue:
                await self.write(self.h11.send(h11.InformationalResponse(status_code=100, headers=[])))
            await self._receive()

    async def next_request(self) -> HttpRequest | None:
        """The next whole request, or ``None`` once the client has closed; ``h11.RemoteProtocolError`` if broken."""
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            return None
        assert isinstance(event, h11.Request)
        headers: dict[str, str] = {}
        for name, value in event.headers:
            key, text = name.decode("latin-1"), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        target = event.target.decode("latin-1")
        path, _, query = target.partition("?")
        body = bytearray()
        while not isinstance(part := await self._next_event(), h11.EndOfMessage):
            if isinstance(part, h11.Data):
                body += part.data
        return HttpRequest(event.method.decode("ascii"), path, query, headers, bytes(body), self.peer)

    def next_cycle(self) -> bool:
        """After a complete response: whether the connection may carry another request (keep-alive)."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return True
        return False

    @property
    def response_started(self) -> bool:
        return self.h11.our_state is not h11.SEND_RESPONSE

    def head(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Status"
        return self.h11.send(h11.Response(status_code=status, headers=[*headers, date_header()], reason=reason))

    def frame(self, data: bytes, *, end: bool = False) -> bytes:
        """Body bytes as they go on the wire (one HTTP chunk, unless the client speaks HTTP/1.0), with the end of the
        body in the same bytes if ``end``; h11 never frames empty data, which would end a chunked body."""
        framed = self.h11.send(h11.Data(data=data)) if data else b""
        return framed + self.h11.send(h11.EndOfMessage()) if end else framed

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        try:
            await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            raise ClientGone from exc

    async def answer(self, status: int, content_type: str, body: bytes, *, is_head: bool = False) -> None:
        """A whole response with a ``Content-Length``, in one write."""
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        await self.write(self.head(status, headers) + self.frame(b"" if is_head else body, end=True))

    # -- noticing a client that goes away while a response is being produced --------------------------------------

    def start_watching(self) -> None:
        """Read the socket while the response is produced, so EOF or a reset is noticed between writes."""
        if self.watcher is None:
            self.watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while not self.eof and len(self.h11.trailing_data[0]) < _MAX_PUSHBACK:
            await self._receive()
        if not self.eof:
            # Too much pipelined input: stop reading but do not report a disconnect.
            await asyncio.get_running_loop().create_future()

    async def stop_watching(self) -> None:
        watcher, self.watcher = self.watcher, None
        if watcher is not None and not watcher.done():
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    @property
    def gone(self) -> bool:
        return self.eof or self.writer.is_closing() or (self.watcher is not None and self.watcher.done())


Handler = Callable[[HttpConnection, HttpRequest], Awaitable[bool]]


class BackgroundServer:
    """An asyncio server on its own loop in a daemon thread, so synchronous tests can use the double."""

    def __init__(self, handler: Handler, host: str, port: int) -> None:
        self.handler = handler
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Bind and serve; returns once the port accepts connections (or raises what binding raised)."""
        if self._thread is not None:
            return
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(ready, failure), name="ollama-double", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]

    def stop(self) -> None:
        """Close every connection (hanging streams included), stop the loop and join the thread."""
        thread, loop = self._thread, self.loop
        if thread is None or loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        with contextlib.suppress(Exception):
            future.result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = self.loop = self.port = None

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            # SO_REUSEADDR: a restart rebinds the port at once, though the last run's connections are in TIME_WAIT.
            serving = asyncio.start_server(self._serve, self.host, self.requested_port, reuse_address=True)
            self._server = loop.run_until_complete(serving)
        except BaseException as exc:  # handed to start(), which re-raises it in the test thread
            failure.append(exc)
            loop.close()
            ready.set()
            return
        self.port = self._server.sockets[0].getsockname()[1]
        # Once bound, the port sticks: stop() then start() is the same host going down and coming back.
        self.requested_port = self.port
        self.loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _shutdown(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        await asyncio.sleep(0)  # let the transports run their close callbacks before the loop stops

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with contextlib.suppress(OSError):
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = HttpConnection(reader, writer)
        try:
            await self._requests(conn)
        except (ClientGone, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            # stop() cancels handlers on purpose. Ending normally matters on 3.11: the stream protocol's done
            # callback calls task.exception(), which would raise (and log) for a task that ends cancelled.
            pass
        finally:
            self._tasks.discard(task)
            await conn.stop_watching()
            writer.close()

    async def _requests(self, conn: HttpConnection) -> None:
        while True:
            try:
                request = await conn.next_request()
            except h11.RemoteProtocolError as exc:
                body = f"{exc.error_status_hint} Bad Request: {exc}".encode()
                await conn.answer(exc.error_status_hint, "text/plain; charset=utf-8", body)
                return
            if request is None or not await self.handler(conn, request) or not conn.next_cycle():
                return
