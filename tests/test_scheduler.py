"""The proxy's queue in front of Ollama (`ccop.scheduler`), and the one process that shares it between workers
(`ccop.scheduler_service`). Ordering is driven by the tests' own steps, never by timing."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccop.errors import Overloaded, ProxyError
from ccop.scheduler import Admission, Grant, Scheduler, class_rank
from ccop.scheduler_service import RemoteScheduler, SchedulerProcess, start_scheduler_process
from ccop.settings import Settings

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
A, B = "http://a:11434", "http://b:11434"


def _run(main: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(main(), 30)

    return asyncio.run(bounded())


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Let the loop run until `condition` holds (a few turns normally); fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    turns = 0
    while not condition():
        assert loop.time() < deadline, "the condition never held"
        # In process a few turns of the loop suffice; across processes, give the other side time.
        await asyncio.sleep(0 if turns < 100 else 0.01)
        turns += 1


def _waiting(scheduler: Scheduler) -> int:
    return int(scheduler.snapshot()["totals"]["waiting"])


def _scheduler(slots: int = 1, *, max_queue: int = 100, max_wait: float = 60.0) -> Scheduler:
    return Scheduler(lambda host, model: slots, max_queue=max_queue, max_wait=max_wait)


def _ask(model: str = "m", hosts: tuple[str, ...] = (A,), **labels: str) -> Admission:
    return Admission(model=model, hosts=hosts, **labels)


def test_class_ranks_put_the_users_turn_first_and_background_work_last() -> None:
    assert [class_rank(name) for name in ("main", None, "", "something-new")] == [0, 0, 0, 0]
    assert [class_rank(name) for name in ("subagent", "workflow", "compaction", "auxiliary")] == [1, 1, 2, 3]


def test_a_free_slot_is_granted_at_once_without_queueing() -> None:
    async def main() -> None:
        scheduler = _scheduler(2)
        queued: list[int] = []
        grant = await scheduler.acquire(_ask(), queued.append)
        assert grant == Grant(host=A, model="m", waited=0.0, ahead=0)
        assert queued == []
        assert scheduler.snapshot()["in_flight"] == [{"host": A, "model": "m", "in_flight": 1, "slots": 2}]

    _run(main)


def test_a_main_request_is_granted_before_twelve_waiting_subagents() -> None:
    async def main() -> None:
        scheduler = _scheduler(2)
        held = [await scheduler.acquire(_ask(session="s1")) for _ in range(2)]
        subagents = [
            asyncio.create_task(scheduler.acquire(_ask(request_class="subagent", session="s1", agent=f"a{n}")))
            for n in range(12)
        ]
        await _until(lambda: _waiting(scheduler) == 12)
        positions: list[int] = []
        turn = asyncio.create_task(scheduler.acquire(_ask(request_class="main", session="s1"), positions.append))
        await _until(lambda: _waiting(scheduler) == 13)
        assert positions == [1]  # it went to the front of the line
        scheduler.release(held[0])
        grant = await turn
        assert grant.ahead == 0
        assert not any(task.done() for task in subagents)
        scheduler.release(held[1])
        scheduler.release(grant)
        await _until(lambda: sum(task.done() for task in subagents) == 2)
        assert [task.done() for task in subagents[:3]] == [True, True, False]  # then the subagents, in order
        for task in subagents:
            task.cancel()
        await asyncio.gather(*subagents, return_exceptions=True)

    _run(main)


def test_two_sessions_waiting_for_one_slot_take_turns() -> None:
    async def main() -> None:
        scheduler = _scheduler(1)
        first = await scheduler.acquire(_ask(session="A"))
        order: list[str] = []

        async def request(session: str, n: int) -> None:
            grant = await scheduler.acquire(_ask(request_class="subagent", session=session))
            order.append(f"{session}{n}")
            await asyncio.sleep(0)
            scheduler.release(grant)

        # Session A's three subagents arrive before any of B's.
        tasks = [asyncio.create_task(request("A", n)) for n in range(3)]
        await _until(lambda: _waiting(scheduler) == 3)
        tasks += [asyncio.create_task(request("B", n)) for n in range(3)]
        await _until(lambda: _waiting(scheduler) == 6)
        scheduler.release(first)
        await asyncio.gather(*tasks)
        assert order == ["B0", "A0", "B1", "A1", "B2", "A2"]

    _run(main)


def test_the_session_holding_fewer_slots_anywhere_goes_first() -> None:
    async def main() -> None:
        scheduler = _scheduler(1)
        busy_elsewhere = await scheduler.acquire(_ask(model="other", hosts=(B,), session="A"))
        # B was served more recently than A, so only the slots held now can put B first.
        scheduler.release(await scheduler.acquire(_ask(session="B")))
        blocker = await scheduler.acquire(_ask(session="C"))
        a = asyncio.create_task(scheduler.acquire(_ask(session="A")))  # arrives first, but A holds a slot on B
        await _until(lambda: _waiting(scheduler) == 1)
        b = asyncio.create_task(scheduler.acquire(_ask(session="B")))
        await _until(lambda: _waiting(scheduler) == 2)
        scheduler.release(blocker)
        grant = await b
        assert not a.done()
        scheduler.release(busy_elsewhere)
        scheduler.release(grant)
        await a

    _run(main)


def test_a_full_queue_refuses_with_529_saying_how_many_wait_and_for_what() -> None:
    async def main() -> None:
        scheduler = _scheduler(1, max_queue=2)
        await scheduler.acquire(_ask(model="qwen3:8b"))
        waiters = [asyncio.create_task(scheduler.acquire(_ask(model="qwen3:8b"))) for _ in range(2)]
        await _until(lambda: _waiting(scheduler) == 2)
        with pytest.raises(Overloaded) as refused:
            await scheduler.acquire(_ask(model="qwen3:8b"))
        assert refused.value.status == 529
        assert refused.value.error_type == "overloaded_error"
        message = refused.value.message
        assert "2 requests wait" in message and "2 for qwen3:8b" in message
        assert "--max-queue" in message and "--slots" in message and "Retry" in message
        for task in waiters:
            task.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)

    _run(main)


def test_waiting_longer_than_max_wait_is_an_overload_and_leaves_the_queue() -> None:
    async def main() -> None:
        scheduler = _scheduler(1, max_wait=0.05)
        await scheduler.acquire(_ask(model="qwen3:8b"))
        with pytest.raises(Overloaded) as refused:
            await scheduler.acquire(_ask(model="qwen3:8b"))
        assert refused.value.status == 529
        assert "waited 0.05 s for a free slot for qwen3:8b" in refused.value.message
        assert "--max-wait" in refused.value.message
        assert _waiting(scheduler) == 0

    _run(main)


def test_a_cancelled_waiter_leaves_at_once_and_the_next_one_gets_the_slot() -> None:
    async def main() -> None:
        scheduler = _scheduler(1)
        held = await scheduler.acquire(_ask())
        leaving = asyncio.create_task(scheduler.acquire(_ask(session="gone")))
        staying = asyncio.create_task(scheduler.acquire(_ask(session="stays")))
        await _until(lambda: _waiting(scheduler) == 2)
        leaving.cancel()
        await asyncio.gather(leaving, return_exceptions=True)
        assert [entry["session"] for entry in scheduler.snapshot()["waiting"]] == ["stays"]
        scheduler.release(held)
        assert (await staying).host == A

    _run(main)


def test_a_grant_that_races_a_cancellation_is_given_back() -> None:
    async def main() -> None:
        scheduler = _scheduler(1)
        held = await scheduler.acquire(_ask())
        racing = asyncio.create_task(scheduler.acquire(_ask(session="racing")))
        next_one = asyncio.create_task(scheduler.acquire(_ask(session="next")))
        await _until(lambda: _waiting(scheduler) == 2)
        scheduler.release(held)  # grants `racing` ...
        racing.cancel()  # ... which is cancelled before it could run
        await asyncio.gather(racing, return_exceptions=True)
        assert racing.cancelled()
        grant = await next_one
        assert scheduler.snapshot()["totals"]["in_flight"] == 1
        scheduler.release(grant)

    _run(main)


def test_releasing_a_grant_twice_does_not_free_a_second_slot() -> None:
    async def main() -> None:
        scheduler = _scheduler(1)
        grant = await scheduler.acquire(_ask())
        other = await scheduler.acquire(_ask(hosts=(B,)))
        scheduler.release(grant)
        scheduler.release(grant)
        assert scheduler.snapshot()["in_flight"] == [{"host": B, "model": "m", "in_flight": 1, "slots": 1}]
        scheduler.release(other)
        assert scheduler.snapshot()["totals"]["in_flight"] == 0

    _run(main)


def test_the_position_told_counts_the_requests_ahead_for_the_same_model() -> None:
    async def main() -> None:
        scheduler = _scheduler(1)
        await scheduler.acquire(_ask())
        await scheduler.acquire(_ask(model="y"))
        positions: list[int] = []
        tasks = [asyncio.create_task(scheduler.acquire(_ask(session=f"s{n}"), positions.append)) for n in range(2)]
        tasks.append(asyncio.create_task(scheduler.acquire(_ask(model="y"), positions.append)))
        await _until(lambda: _waiting(scheduler) == 3)
        assert positions == [1, 2, 1]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    _run(main)


def test_a_session_goes_back_to_the_host_it_used_last() -> None:
    async def main() -> None:
        scheduler = _scheduler(1)
        elsewhere = await scheduler.acquire(_ask(hosts=(A,), session="other"))
        first = await scheduler.acquire(_ask(hosts=(A, B), session="S", agent="x"))
        assert first.host == B  # A was full
        scheduler.release(elsewhere)
        scheduler.release(first)
        again = await scheduler.acquire(_ask(hosts=(A, B), session="S", agent="x"))
        assert again.host == B  # both free: its KV cache is on B
        newcomer = await scheduler.acquire(_ask(hosts=(A, B), session="new"))
        assert newcomer.host == A  # no history: the caller's order
        scheduler.release(again)
        scheduler.release(newcomer)
        scheduler.forget_host(B)  # B failed
        assert (await scheduler.acquire(_ask(hosts=(A, B), session="S", agent="x"))).host == A

    _run(main)


def test_a_waiter_for_a_full_host_or_model_blocks_nobody_else() -> None:
    async def main() -> None:
        scheduler = _scheduler(1)
        await scheduler.acquire(_ask(hosts=(A,)))
        main_turn = asyncio.create_task(scheduler.acquire(_ask(hosts=(A,), request_class="main")))
        await _until(lambda: _waiting(scheduler) == 1)
        # Background work that can run elsewhere, or on another model, does not wait behind it.
        assert (await scheduler.acquire(_ask(hosts=(B,), request_class="auxiliary"))).host == B
        assert (await scheduler.acquire(_ask(model="y", hosts=(A,), request_class="auxiliary"))).model == "y"
        assert not main_turn.done()
        main_turn.cancel()
        await asyncio.gather(main_turn, return_exceptions=True)

    _run(main)


_HOSTS = (A, B, "http://c:11434")
_MODELS = ("m", "y")
_LIMITS = Settings(ollama_urls=_HOSTS, slots=2, model_slots={"y": 1, A: {"m": 3}}).slots_for

_operation = st.one_of(
    st.tuples(
        st.just("acquire"),
        st.sampled_from(_MODELS),
        st.lists(st.sampled_from(_HOSTS), min_size=1, max_size=3, unique=True),
        st.sampled_from(("main", "subagent", "compaction", "auxiliary")),
        st.sampled_from(("", "s1", "s2", "s3")),
    ),
    st.tuples(st.just("release"), st.integers(0, 50)),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_operation, max_size=60))
def test_no_host_ever_runs_more_than_its_slots_and_every_waiter_is_served(operations: list[Any]) -> None:
    async def main() -> None:
        scheduler = Scheduler(_LIMITS, max_queue=1000, max_wait=60.0)
        tasks: list[asyncio.Task[Grant]] = []
        released: set[int] = set()

        def check() -> None:
            held = Counter((task.result().host, task.result().model) for task in _granted(tasks, released))
            for (host, model), count in held.items():
                assert count <= _LIMITS(host, model)
            in_flight = {(row["host"], row["model"]): row["in_flight"] for row in scheduler.snapshot()["in_flight"]}
            assert in_flight == dict(held)

        for operation in operations:
            if operation[0] == "acquire":
                _, model, hosts, request_class, session = operation
                admission = Admission(model, tuple(hosts), request_class, session)
                tasks.append(asyncio.create_task(scheduler.acquire(admission)))
            elif tasks:
                task = tasks[operation[1] % len(tasks)]
                if operation[0] == "cancel":
                    task.cancel()
                elif task.done() and not task.cancelled() and id(task) not in released:
                    released.add(id(task))
                    scheduler.release(task.result())
            for _ in range(3):
                await asyncio.sleep(0)
            check()
        # Releasing everything serves every waiter that stayed.
        while not all(task.done() for task in tasks):
            for task in list(_granted(tasks, released)):
                released.add(id(task))
                scheduler.release(task.result())
            await asyncio.sleep(0)
            check()
        assert scheduler.snapshot()["totals"]["waiting"] == 0

    _run(main)


def _granted(tasks: list[asyncio.Task[Grant]], released: set[int]) -> Iterator[asyncio.Task[Grant]]:
    return (task for task in tasks if task.done() and not task.cancelled() and id(task) not in released)


# The service, in its own process, with two workers' connections.


@pytest.fixture
def service() -> Iterator[SchedulerProcess]:
    started = start_scheduler_process(Settings(slots=1, max_queue=10, max_queue_wait=30.0))
    try:
        yield started
    finally:
        started.stop()


def test_the_socket_is_private(service: SchedulerProcess) -> None:
    assert os.stat(Path(service.path).parent).st_mode & 0o777 == 0o700


def test_two_workers_share_one_limit(service: SchedulerProcess) -> None:
    async def main() -> None:
        first, second = RemoteScheduler(service.path), RemoteScheduler(service.path)
        grant = await first.acquire(_ask(model="qwen3:8b"))
        queued = asyncio.Event()
        waiting = asyncio.create_task(second.acquire(_ask(model="qwen3:8b"), lambda position: queued.set()))
        await asyncio.wait_for(queued.wait(), 10)
        snapshot = await first.snapshot()
        assert snapshot["totals"] == {"in_flight": 1, "waiting": 1, "max_queue": 10, "max_wait": 30.0}
        first.release(grant)
        assert (await waiting).model == "qwen3:8b"
        await first.aclose()
        await second.aclose()

    _run(main)


def test_a_worker_whose_connection_closes_frees_its_slots_and_its_place(service: SchedulerProcess) -> None:
    async def main() -> None:
        dying, living = RemoteScheduler(service.path), RemoteScheduler(service.path)
        await dying.acquire(_ask())
        queued = asyncio.Event()
        stranded = asyncio.create_task(dying.acquire(_ask(), lambda position: queued.set()))
        await asyncio.wait_for(queued.wait(), 10)
        await dying.aclose()  # as when the worker process dies: its socket closes
        with pytest.raises(ProxyError, match="unreachable"):
            await stranded
        grant = await living.acquire(_ask())
        assert (await living.snapshot())["totals"]["waiting"] == 0
        living.release(grant)
        await living.aclose()

    _run(main)


def test_a_cancelled_remote_acquire_gives_its_place_or_its_slot_back(service: SchedulerProcess) -> None:
    async def main() -> None:
        first, second = RemoteScheduler(service.path), RemoteScheduler(service.path)
        grant = await first.acquire(_ask())
        queued = asyncio.Event()
        leaving = asyncio.create_task(second.acquire(_ask(), lambda position: queued.set()))
        await asyncio.wait_for(queued.wait(), 10)
        leaving.cancel()
        await asyncio.gather(leaving, return_exceptions=True)
        first.release(grant)
        # The slot is free again for anyone: the cancelled request neither waits nor holds it.
        again = await second.acquire(_ask())
        snapshot = await second.snapshot()
        assert snapshot["totals"]["in_flight"] == 1 and snapshot["totals"]["waiting"] == 0
        second.release(again)
        await first.aclose()
        await second.aclose()

    _run(main)


def test_the_services_refusals_arrive_as_overloaded() -> None:
    service = start_scheduler_process(Settings(slots=1, max_queue=1, max_queue_wait=30.0))
    try:

        async def main() -> None:
            remote = RemoteScheduler(service.path)
            await remote.acquire(_ask())
            queued = asyncio.Event()
            waiting = asyncio.create_task(remote.acquire(_ask(), lambda position: queued.set()))
            await asyncio.wait_for(queued.wait(), 10)  # the queue (of one) is full now
            with pytest.raises(Overloaded, match="queue is full") as refused:
                await remote.acquire(_ask())
            assert refused.value.status == 529
            waiting.cancel()
            await remote.aclose()

        _run(main)
    finally:
        service.stop()


def test_an_unreachable_service_is_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    async def main() -> None:
        remote = RemoteScheduler(str(tmp_path / "missing.sock"))
        with pytest.raises(ProxyError, match="scheduler .* is unreachable") as failed:
            await remote.acquire(_ask())
        assert failed.value.status == 500

    _run(main)


def test_a_service_that_dies_fails_the_waiting_requests() -> None:
    service = start_scheduler_process(Settings(slots=1, max_queue=10, max_queue_wait=30.0))
    try:

        async def main() -> None:
            remote = RemoteScheduler(service.path)
            await remote.acquire(_ask())
            queued = asyncio.Event()
            waiting = asyncio.create_task(remote.acquire(_ask(), lambda position: queued.set()))
            await asyncio.wait_for(queued.wait(), 10)
            service.process.kill()
            with pytest.raises(ProxyError, match="unreachable"):
                await waiting
            await remote.aclose()

        _run(main)
    finally:
        service.stop()


def test_the_service_exits_when_its_parents_pipe_closes() -> None:
    service = start_scheduler_process(Settings(slots=1, max_queue=10, max_queue_wait=30.0))
    try:
        assert service.process.stdin is not None
        service.process.stdin.close()  # what the kernel does when the proxy dies, however it dies
        assert service.process.wait(timeout=20) == 0
        assert not Path(service.path).parent.exists()  # it cleaned up its socket and directory
    finally:
        if service.process.poll() is None:
            service.process.kill()
        service.stop()


def test_stop_ends_the_service_and_removes_its_directory(service: SchedulerProcess) -> None:
    service.stop()
    assert service.process.returncode == 0
    assert not Path(service.path).parent.exists()
    service.stop()  # the fixture's second stop is harmless
