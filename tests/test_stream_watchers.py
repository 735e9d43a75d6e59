"""The stream's structure, in process: its watchers as one group (`streaming.run_watched`), and which errors from
the server's `send` mean the client left (`SseStream`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from ccop._types import Message
from ccop.streaming import ClientGone, SseStream, run_watched

pytestmark = pytest.mark.timeout(30)


def _failing_send(error: BaseException) -> Callable[[Message], Awaitable[None]]:
    async def send(message: Message) -> None:
        raise error

    return send


def test_granian_transport_closed_means_the_client_left() -> None:
    granian_closed = RuntimeError("ASGI flow error: Transport not initialized or closed")
    stream = SseStream(_failing_send(granian_closed), "req_1", ping_interval=10.0)
    with pytest.raises(ClientGone):
        asyncio.run(stream.start(b""))
    assert stream.closed


def test_any_other_runtime_error_from_send_is_not_taken_for_a_disconnect() -> None:
    # A bug, such as a message out of ASGI order, must surface (the app answers it as an internal error).
    bug = RuntimeError("ASGI flow error: Response already started")
    stream = SseStream(_failing_send(bug), "req_1", ping_interval=10.0)
    with pytest.raises(RuntimeError, match="already started"):
        asyncio.run(stream.start(b""))
    assert not stream.closed


def test_the_first_watcher_to_fire_ends_the_work_with_its_reason() -> None:
    work_cancelled = asyncio.Event()
    slow_watcher_cancelled = asyncio.Event()

    async def work() -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            work_cancelled.set()
            raise
        return "unreachable"

    async def fires() -> BaseException:
        await asyncio.sleep(0)
        return ClientGone("the client disconnected")

    async def never() -> BaseException:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            slow_watcher_cancelled.set()
            raise
        return RuntimeError("unreachable")

    async def main() -> None:
        with pytest.raises(ClientGone, match="disconnected"):
            await run_watched(work(), [fires, never])
        # Nothing outlives the call.
        assert work_cancelled.is_set()
        assert slow_watcher_cancelled.is_set()

    asyncio.run(main())


def test_the_work_s_result_or_own_error_ends_the_watchers() -> None:
    cancelled: list[str] = []

    async def watcher() -> BaseException:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append("watcher")
            raise
        return RuntimeError("unreachable")

    async def answer() -> str:
        await asyncio.sleep(0)
        return "answer"

    async def broken() -> str:
        await asyncio.sleep(0)
        raise ValueError("Ollama broke")

    async def main() -> None:
        assert await run_watched(answer(), [watcher]) == "answer"
        # The work's own exception comes out as itself, not wrapped in an exception group.
        with pytest.raises(ValueError, match="Ollama broke"):
            await run_watched(broken(), [watcher])

    asyncio.run(main())
    assert cancelled == ["watcher", "watcher"]


def test_a_stream_whose_client_is_gone_ends_the_exchange() -> None:
    # The stream's writer runs in the exchange's group: once Granian says the transport is closed, the relay (here
    # an answer that would take a minute) is cancelled instead of going on for nobody.
    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            raise RuntimeError("ASGI flow error: Transport not initialized or closed")

    async def main() -> None:
        stream = SseStream(send, "req_1", ping_interval=10.0)

        async def work() -> None:
            await stream.start(b"")
            await stream.write(b"event: ping\ndata: {}\n\n")
            await asyncio.sleep(60)

        with pytest.raises(ClientGone):
            await run_watched(work(), stream.watchers())

    asyncio.run(main())
