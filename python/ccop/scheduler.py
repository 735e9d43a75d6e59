"""The proxy's own queue in front of Ollama: slots per host and model, ordered by Claude Code's request class.

Each Ollama server answers `OLLAMA_NUM_PARALLEL` requests per model at a time and queues the rest in arrival order,
blind to what they are. So the proxy sends no more than that and holds the rest itself, in this order (applied every
time a slot frees or a request arrives):

1. the request class (`x-claude-code-request-class`): the user's own turn first, background work last;
2. fairness across sessions: the waiter whose session holds the fewest slots right now, and among equals the session
   served least recently, so one session's twenty subagents cannot starve another session;
3. arrival order.

A waiter takes a free slot on any of its hosts, so a request never waits behind one that wants a different, full
host or model. Among free hosts it prefers the one its session (and agent) last used, where Ollama's KV cache still
holds the conversation, then the caller's order (hosts with the model loaded first). Pure asyncio, no I/O:
`scheduler_service` shares one instance between worker processes.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ccop.errors import Overloaded

__all__ = ["REQUEST_CLASSES", "Admission", "Grant", "Scheduler", "class_rank"]

REQUEST_CLASSES = ("main", "subagent", "workflow", "compaction", "auxiliary")

# Subagents and workflows do work the user is waiting for, one step removed; a compaction blocks the next turn but is
# long and rare; auxiliary requests (titles, summaries, suggestions) can always wait.
_RANKS = {"main": 0, "subagent": 1, "workflow": 1, "compaction": 2, "auxiliary": 3}

# Sessions (with agent and model) whose last host is remembered for KV-cache affinity, and sessions whose last grant
# is remembered for the fairness tie-break: enough for every live agent of a busy machine, bounded whatever clients
# send as session ids.
_MEMORY = 4096


def class_rank(request_class: str | None) -> int:
    """0 for `main`, an unlabelled or unknown class; 1 subagent, workflow; 2 compaction; 3 auxiliary."""
    return _RANKS.get(request_class or "main", 0)


@dataclass(frozen=True)
class Admission:
    """What a request needs: a model on one of the given hosts, and who it is for."""

    model: str
    # Base URLs of healthy hosts that have the model, in the caller's preference order (loaded first).
    hosts: tuple[str, ...]
    request_class: str = "main"
    # `x-claude-code-session-id`; "" when absent, and then the request is its own session.
    session: str = ""
    agent: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class Grant:
    """A slot: where to send the request. Give it back with `release` exactly once."""

    host: str
    model: str
    waited: float
    # Requests ahead of it (for the same model on a shared host) when it was queued; 0 if it never queued.
    ahead: int


@dataclass(eq=False)
class _Waiter:
    admission: Admission
    session: str
    rank: int
    seq: int
    queued_at: float
    ahead: int
    future: asyncio.Future[Grant]


class _Bounded(OrderedDict[Any, Any]):
    """A mapping that forgets its least recently set key past `limit` entries."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


class Scheduler:
    """Slots per (host, model) and a queue ordered by class, session fairness and arrival."""

    def __init__(
        self,
        slots: Callable[[str, str], int],
        *,
        max_queue: int,
        max_wait: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._slots = slots
        self._max_queue = max_queue
        self._max_wait = max_wait
        self._clock = clock
        self._in_flight: Counter[tuple[str, str]] = Counter()
        self._held_by_session: Counter[str] = Counter()
        # Grants handed out and not yet released, by identity: the session each one counts against.
        self._grants: dict[int, tuple[Grant, str]] = {}
        self._waiters: list[_Waiter] = []
        self._arrivals = itertools.count()
        self._affinity = _Bounded(_MEMORY)
        self._last_served = _Bounded(_MEMORY)

    async def acquire(self, admission: Admission, on_queued: Callable[[int], None] | None = None) -> Grant:
        """A slot for `admission`: at once if one is free, else after queueing (`on_queued(position)`, 1-based).

        Raises `Overloaded` when the queue is full or after `max_wait` seconds in it. Cancelling the caller leaves
        the queue at once; a slot granted in the same instant is given back.
        """
        if not admission.hosts:
            raise ValueError(f"no host to schedule {admission.model} on: the caller answers that itself")
        seq = next(self._arrivals)
        session = admission.session or f"\0{seq}"
        host = self._free_host(admission)
        if host is not None:
            return self._grant(admission, session, host, waited=0.0, ahead=0)
        queue = self._ordered()
        if len(queue) >= self._max_queue:
            raise Overloaded(f"ccop's queue is full: {self._describe_queue()}. {self._advice('--max-queue')}")
        loop = asyncio.get_running_loop()
        rank = class_rank(admission.request_class)
        waiter = _Waiter(admission, session, rank, seq, self._clock(), 0, loop.create_future())
        waiter.ahead = sum(
            1 for other in queue if self._order_key(other) < self._order_key(waiter) and _competes(other, waiter)
        )
        self._waiters.append(waiter)
        timer = loop.call_later(self._max_wait, self._expire, waiter)
        try:
            if on_queued is not None:
                on_queued(waiter.ahead + 1)
            return await waiter.future
        except BaseException:
            self._leave(waiter)
            raise
        finally:
            timer.cancel()

    def release(self, grant: Grant) -> None:
        """Give a grant's slot back and hand it on. A second release of the same grant changes nothing."""
        held = self._grants.pop(id(grant), None)
        if held is None:
            return
        _, session = held
        key = (grant.host, grant.model)
        self._in_flight[key] -= 1
        if self._in_flight[key] <= 0:
            del self._in_flight[key]
        self._held_by_session[session] -= 1
        if self._held_by_session[session] <= 0:
            del self._held_by_session[session]
        self._dispatch()

    def forget_host(self, host: str) -> None:
        """Drop session affinity to `host` (it failed), so sessions spread to the others."""
        for key in [key for key, value in self._affinity.items() if value == host]:
            del self._affinity[key]

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state for a status page: slots in use, waiting requests in queue order, totals."""
        now = self._clock()
        in_flight = [
            {"host": host, "model": model, "in_flight": count, "slots": self._slots(host, model)}
            for (host, model), count in sorted(self._in_flight.items())
        ]
        waiting = [
            {
                "position": position,
                "request_id": waiter.admission.request_id,
                "class": waiter.admission.request_class,
                "session": waiter.admission.session,
                "agent": waiter.admission.agent,
                "model": waiter.admission.model,
                "hosts": list(waiter.admission.hosts),
                "waited": round(now - waiter.queued_at, 3),
            }
            for position, waiter in enumerate(self._ordered(), start=1)
        ]
        totals = {
            "in_flight": sum(self._in_flight.values()),
            "waiting": len(waiting),
            "max_queue": self._max_queue,
            "max_wait": self._max_wait,
        }
        return {"in_flight": in_flight, "waiting": waiting, "totals": totals}

    # The queue.

    def _order_key(self, waiter: _Waiter) -> tuple[int, int, int, int]:
        session = waiter.session
        return (waiter.rank, self._held_by_session[session], self._last_served.get(session, -1), waiter.seq)

    def _ordered(self) -> list[_Waiter]:
        """The live waiters in queue order. A waiter whose task was just cancelled (its future cancelled, its own
        clean-up not yet run) is dropped here, so it is neither granted nor counted."""
        self._waiters = [waiter for waiter in self._waiters if not waiter.future.done()]
        return sorted(self._waiters, key=self._order_key)

    def _dispatch(self) -> None:
        """Grant free slots to waiters in queue order until no waiter can use one.

        The order is recomputed after each grant: the session that just got a slot holds one more, which can move
        another session's waiter ahead of its next one.
        """
        while True:
            for waiter in self._ordered():
                host = self._free_host(waiter.admission)
                if host is not None:
                    self._waiters.remove(waiter)
                    waited = max(0.0, self._clock() - waiter.queued_at)
                    grant = self._grant(waiter.admission, waiter.session, host, waited=waited, ahead=waiter.ahead)
                    waiter.future.set_result(grant)
                    break
            else:
                return

    def _leave(self, waiter: _Waiter) -> None:
        """The waiter's task was cancelled: leave the queue, or give back a slot granted in the same instant."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        elif waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
            self.release(waiter.future.result())

    def _expire(self, waiter: _Waiter) -> None:
        if waiter not in self._waiters or waiter.future.done():
            return
        self._waiters.remove(waiter)
        hosts = ", ".join(waiter.admission.hosts)
        waiter.future.set_exception(
            Overloaded(
                f"waited {self._max_wait:g} s for a free slot for {waiter.admission.model} at {hosts}, while "
                f"{self._describe_queue()}. {self._advice('--max-wait')}"
            )
        )

    # Slots and hosts.

    def _free_host(self, admission: Admission) -> str | None:
        """The host to use for `admission` now, or None when all of its hosts are full for its model."""
        free = [host for host in dict.fromkeys(admission.hosts) if self._has_room(host, admission.model)]
        if not free:
            return None
        last = self._affinity.get(self._affinity_key(admission))
        if last in free:
            return str(last)
        # Then the caller's order (hosts with the model loaded first): `free` keeps it.
        return free[0]

    def _has_room(self, host: str, model: str) -> bool:
        return self._in_flight[(host, model)] < max(1, self._slots(host, model))

    @staticmethod
    def _affinity_key(admission: Admission) -> tuple[str, str, str] | None:
        # A request without a session has nothing to come back to. The model is part of the key: Ollama's KV cache
        # is per model.
        return (admission.session, admission.agent, admission.model) if admission.session else None

    def _grant(self, admission: Admission, session: str, host: str, *, waited: float, ahead: int) -> Grant:
        grant = Grant(host=host, model=admission.model, waited=waited, ahead=ahead)
        self._in_flight[(host, admission.model)] += 1
        self._held_by_session[session] += 1
        self._grants[id(grant)] = (grant, session)
        self._last_served.put(session, next(self._arrivals))
        key = self._affinity_key(admission)
        if key is not None:
            self._affinity.put(key, host)
        return grant

    # Messages.

    def _describe_queue(self) -> str:
        by_model = Counter(waiter.admission.model for waiter in self._waiters)
        return f"{len(self._waiters)} requests wait for a slot ({_listing(by_model.most_common())})"

    def _advice(self, limit_flag: str) -> str:
        return f"Retry shortly, or raise {limit_flag} or --slots (how many requests each Ollama server runs at once)."


def _competes(first: _Waiter, second: _Waiter) -> bool:
    """Whether `first` wants a slot `second` could take: the same model on a shared host."""
    same_model = first.admission.model == second.admission.model
    return same_model and not set(first.admission.hosts).isdisjoint(second.admission.hosts)


def _listing(counts: Iterable[tuple[str, int]]) -> str:
    parts = [f"{count} for {model}" for model, count in counts]
    return ", ".join(parts) if parts else "none"
