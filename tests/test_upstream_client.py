"""The worker's client to Ollama (`upstream.create_client`) on a real socket: what it guarantees beyond the tests
through a running proxy, which see only one Ollama stand-in and few connections at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from ccop import upstream

pytestmark = pytest.mark.timeout(30)

T = TypeVar("T")


class _HeldServer:
    """An HTTP/1.1 server that answers each request only once `release` is set, counting its connections."""

    def __init__(self) -> None:
        self.open = 0
        self.peak = 0
        self.release = asyncio.Event()
        self.connected = asyncio.Condition()
        self.heads: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.peak = max(self.peak, self.open)
        async with self.connected:
            self.connected.notify_all()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                await reader.readexactly(length)
                await self.release.wait()
                body = b'{"done":true}\n'
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            writer.close()


async def _with_server(test: Callable[[_HeldServer, str], Awaitable[T]]) -> T:
    held = _HeldServer()
    server = await asyncio.start_server(held.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await test(held, f"http://127.0.0.1:{port}")
    finally:
        server.close()


def test_connections_to_ollama_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream, "MAX_CONNECTIONS", 3)

    async def test(held: _HeldServer, url: str) -> int:
        client = upstream.create_client(url)
        try:
            requests = [asyncio.ensure_future(client.post("/api/chat", content=b"{}")) for _ in range(5)]
            async with held.connected:
                await held.connected.wait_for(lambda: held.open >= 3)
            # More requests than the cap are waiting now; give any extra connection the time to show up.
            await asyncio.sleep(0.3)
            held.release.set()
            for response in await asyncio.gather(*requests):
                assert response.status_code == 200
            return held.peak
        finally:
            await client.aclose()

    assert asyncio.run(_with_server(test)) == 3


def test_credentials_and_identity_encoding_go_on_chat_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy setting meant for the internet must not reroute a local Ollama.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")

    async def test(held: _HeldServer, url: str) -> bytes:
        held.release.set()
        client = upstream.create_client(url.replace("http://", "http://alice:secret@"))
        try:
            chat = upstream.OllamaChat(client, url)
            response = await chat.open(b"{}")
            await response.aclose()
            return held.heads[0].lower()
        finally:
            await client.aclose()

    head = asyncio.run(_with_server(test))
    assert head.startswith(b"post /api/chat http/1.1")
    assert b"authorization: basic ywxpy2u6c2vjcmv0" in head  # alice:secret
    assert b"accept-encoding: identity" in head
