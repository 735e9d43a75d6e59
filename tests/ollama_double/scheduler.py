"""Ollama's scheduler (``server/sched.go``), simulated: runners per model, a FIFO of pending requests, parallel slots,
load time, ``keep_alive`` expiry and eviction under ``OLLAMA_MAX_LOADED_MODELS``.

A chat request becomes a ``Ticket``. It waits in one FIFO until it can be given a runner (Ollama's ``processPending``
handles one request at a time, so a request that waits for an eviction or a reload holds up everyone behind it), then
in its runner's FIFO until the runner is loaded and, if it generates, one of the ``num_parallel`` slots is free
(``OLLAMA_NUM_PARALLEL``, a FIFO semaphore in the runner). Grants happen only in ``dispatch``, in queue order, so the
order of ``ChatStream.started_at`` is the order of arrival. A runner in use is never unloaded: a reload (another
``num_ctx``) or an eviction waits until its last request is done. Among idle runners Ollama evicts the one with the
shortest ``keep_alive`` and breaks ties by blob path (arbitrary to a client); the double breaks them by least recent
use.

Everything here runs under the double's lock; futures are only touched on the double's event-loop thread.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .catalogue import ModelSpec, model_details, name_key
from .script import ChatStream
from .validation import FOREVER_NS
from .wire import Json, rfc3339_nano

# What the double reports as a load's load_duration when no load time is configured (as it always did).
_DEFAULT_LOAD_NS = 1_500_000_000
_WARM_LOAD_NS = 21_000_000
# A stand-in for the KV cache in /api/ps sizes: about what an 8B model's f16 cache costs per token of num_ctx.
_KV_BYTES_PER_TOKEN = 131_072


@dataclass(eq=False)
class Runner:
    """One loaded (or loading) model with its ``num_ctx``."""

    spec: ModelSpec
    num_ctx: int
    keep_alive_ns: int
    ready: bool
    last_used: float
    # Requests attached to this runner (waiting for it or a slot, or generating): Ollama's refCount.
    refs: int = 0
    active: int = 0
    queue: deque[Ticket] = field(default_factory=deque)
    # Monotonic time the idle runner expires at; None while in use or when kept forever.
    deadline: float | None = None

    @property
    def size(self) -> int:
        return self.spec.size + self.num_ctx * _KV_BYTES_PER_TOKEN

    def expires_at_ns(self) -> int:
        """Wall-clock expiry as /api/ps shows it; a runner in use reports now + its keep_alive, as Ollama does."""
        if self.deadline is not None:
            return time.time_ns() + int((self.deadline - time.monotonic()) * 1e9)
        return min(time.time_ns() + self.keep_alive_ns, FOREVER_NS)


@dataclass(eq=False)
class Ticket:
    """One request's place in the scheduler; ``future`` completes when it may proceed."""

    spec: ModelSpec
    num_ctx: int
    keep_alive_ns: int
    needs_slot: bool
    future: asyncio.Future[None]
    record: ChatStream | None = None
    runner: Runner | None = None
    # The load_duration this request reports: a warm runner's unless it caused the load.
    load_ns: int = _WARM_LOAD_NS
    has_slot: bool = False
    released: bool = False

    @property
    def key(self) -> str:
        return name_key(self.spec.name)


class Scheduler:
    """The runners and queues of one double. Callers hold the double's lock; ``on_change`` (which notifies the
    double's waiters) is called after every dispatch."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self.on_change = on_change
        self.num_parallel: int | None = None
        self.max_loaded_models: int | None = None
        self.load_seconds = 0.0
        self.runners: dict[str, Runner] = {}
        # Runners dropped by reset()/remove_model() while requests still use them: served until their last one ends.
        self.retired: list[Runner] = []
        self.pending: deque[Ticket] = deque()
        self.loads: list[tuple[str, int]] = []
        self.active = 0
        self.max_active = 0
        self.active_per_model: dict[str, int] = {}
        self.max_active_per_model: dict[str, int] = {}

    # -- runner table ------------------------------------------------------------------------------------------------

    def sweep(self) -> None:
        """Drop idle runners whose keep_alive ran out (lazily, whenever the table is looked at)."""
        now = time.monotonic()
        for key, runner in list(self.runners.items()):
            if runner.refs == 0 and runner.deadline is not None and runner.deadline <= now:
                del self.runners[key]

    def load(self, spec: ModelSpec, num_ctx: int, keep_alive_ns: int, *, ready: bool) -> Runner | None:
        """A new runner for ``spec``, after making room; ``None`` while the room is still in use."""
        key = name_key(spec.name)
        current = self.runners.get(key)
        if current is not None:
            if current.refs:
                return None  # a reload waits until the old runner is idle
            del self.runners[key]
        elif self.max_loaded_models is not None and len(self.runners) >= self.max_loaded_models:
            victim = self._victim()
            if victim is None:
                return None
            del self.runners[name_key(victim.spec.name)]
        runner = Runner(spec, num_ctx, keep_alive_ns, ready, time.monotonic())
        self.runners[key] = runner
        self.loads.append((spec.name, num_ctx))
        return runner

    def _victim(self) -> Runner | None:
        idle = [r for r in self.runners.values() if r.refs == 0]
        # Go compares durations as uint64, so "forever" (negative → MaxInt64) sorts last.
        return min(idle, key=lambda r: (r.keep_alive_ns, r.last_used), default=None)

    def unload(self, key: str) -> None:
        """Ollama's expireRunner: unload now if idle, else as soon as the last request is done."""
        runner = self.runners.get(key)
        if runner is None:
            return
        runner.keep_alive_ns = 0
        if runner.refs == 0:
            del self.runners[key]

    def forget(self, key: str | None = None) -> None:
        """Drop one runner (or all) from the table; runners still in use keep serving their requests."""
        keys = list(self.runners) if key is None else [key]
        for k in keys:
            runner = self.runners.pop(k, None)
            if runner is not None and runner.refs:
                self.retired.append(runner)

    # -- tickets -----------------------------------------------------------------------------------------------------

    def submit(self, ticket: Ticket) -> None:
        self.pending.append(ticket)
        self.dispatch()

    def dispatch(self) -> None:
        """Place pending tickets in arrival order, then grant slots on every ready runner in queue order."""
        self.sweep()
        while self.pending and self._place(self.pending[0]):
            self.pending.popleft()
        for runner in [*self.runners.values(), *self.retired]:
            if runner.ready:
                self._grant(runner)
        self.on_change()

    def _place(self, ticket: Ticket) -> bool:
        runner = self.runners.get(ticket.key)
        if runner is None or runner.num_ctx != ticket.num_ctx:
            runner = self.load(ticket.spec, ticket.num_ctx, ticket.keep_alive_ns, ready=self.load_seconds <= 0)
            if runner is None:
                return False
            ticket.load_ns = int(self.load_seconds * 1e9) if self.load_seconds > 0 else _DEFAULT_LOAD_NS
            if self.load_seconds > 0:
                asyncio.get_running_loop().call_later(self.load_seconds, self._loaded, runner)
        runner.refs += 1
        runner.keep_alive_ns = ticket.keep_alive_ns
        runner.deadline = None
        runner.last_used = time.monotonic()
        runner.queue.append(ticket)
        ticket.runner = runner
        if ticket.record is not None and not runner.ready:
            ticket.record.phase = "loading"
        return True

    def _loaded(self, runner: Runner) -> None:
        runner.ready = True
        self.dispatch()

    def _grant(self, runner: Runner) -> None:
        for ticket in list(runner.queue):
            if ticket.needs_slot:
                if self.num_parallel is not None and runner.active >= self.num_parallel:
                    continue  # later tickets needing a slot cannot pass this one: FIFO
                self._take_slot(runner, ticket)
            runner.queue.remove(ticket)
            if not ticket.future.done():
                ticket.future.set_result(None)

    def _take_slot(self, runner: Runner, ticket: Ticket) -> None:
        runner.active += 1
        ticket.has_slot = True
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        name = runner.spec.name
        self.active_per_model[name] = self.active_per_model.get(name, 0) + 1
        self.max_active_per_model[name] = max(self.max_active_per_model.get(name, 0), self.active_per_model[name])
        if ticket.record is not None:
            ticket.record.started_at = time.monotonic()
            ticket.record.phase = "first_byte_delay"

    def release(self, ticket: Ticket) -> None:
        """The request is done, failed or its client left: give back its slot and its reference, exactly once."""
        if ticket.released:
            return
        ticket.released = True
        runner = ticket.runner
        if runner is None:
            if ticket in self.pending:
                self.pending.remove(ticket)
            self.dispatch()
            return
        if ticket in runner.queue:
            runner.queue.remove(ticket)
        if ticket.has_slot:
            runner.active -= 1
            self.active -= 1
            self.active_per_model[runner.spec.name] -= 1
        runner.refs -= 1
        runner.last_used = time.monotonic()
        if runner.refs == 0:
            self.idle(runner)
        self.dispatch()

    def idle(self, runner: Runner) -> None:
        """The last request is done: unload at once for keep_alive 0, else start the keep_alive clock."""
        if runner in self.retired:
            self.retired.remove(runner)
            return
        if runner.keep_alive_ns == 0:
            if self.runners.get(name_key(runner.spec.name)) is runner:
                del self.runners[name_key(runner.spec.name)]
        elif runner.keep_alive_ns < FOREVER_NS:
            runner.deadline = time.monotonic() + runner.keep_alive_ns / 1e9

    def clear(self) -> None:
        """A restarted server: nothing loaded, nothing queued (the requests' tasks are cancelled with the loop)."""
        self.runners.clear()
        self.retired.clear()
        self.pending.clear()


def ps_body(runners: list[Runner]) -> Json:
    """``/api/ps``: ``api.ProcessModelResponse`` per runner, the longest time left first; ``context_length`` is the
    runner's ``num_ctx``. Every runner is reported fully in VRAM."""
    models = []
    expiring = sorted(((runner.expires_at_ns(), runner) for runner in runners), key=lambda item: item[0], reverse=True)
    for expires_at_ns, runner in expiring:
        spec = runner.spec
        models.append(
            {
                "name": spec.name,
                "model": spec.name,
                "size": runner.size,
                "digest": spec.effective_digest,
                "details": model_details(spec),
                "expires_at": rfc3339_nano(expires_at_ns),
                "size_vram": runner.size,
                "context_length": runner.num_ctx,
            }
        )
    return {"models": models}
