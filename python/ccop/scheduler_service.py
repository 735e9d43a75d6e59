"""One scheduler for all worker processes: a small process the proxy starts, spoken to over a Unix socket.

Granian's workers are separate processes, and the slot limits must hold across all of them; a worker that dies must
not keep its slots. So the main process starts `python -m ccop.scheduler_service` (`start_scheduler_process`), which
holds the one `Scheduler`; each worker opens one connection to it (`RemoteScheduler`), shared by all its requests.
When a connection closes, the service releases every slot it held and drops its waiters. The service exits when
its stdin reaches end of file, i.e. when the proxy that started it is gone, however it went.

The protocol is orjson lines, one object per line, each carrying the `id` of the acquire it belongs to:

    worker → service   {"op": "acquire", "id": 1, "admission": {"model": ..., "hosts": [...], ...}}
                       {"op": "cancel", "id": 1}     the request left: leave the queue, or give back its grant
                       {"op": "release", "id": 1}    the request is done with its grant
                       {"op": "snapshot", "id": 2}
                       {"op": "forget_host", "id": 0, "host": ...}   sessions stop preferring a failed host
    service → worker   {"id": 1, "queued": 3}        it waits, 3rd in line
                       {"id": 1, "grant": {"host": ..., "model": ..., "waited": 0.5, "ahead": 2}}
                       {"id": 1, "error": {"type": "overloaded_error", "status": 529, "message": ...}}
                       {"id": 2, "snapshot": {...}}

Slots come from the settings (`Settings.slots_for`: --slots, --model-slots, per host and model in the file), which
the service reads as the workers do, from `CCOP_SETTINGS`. A worker finds the service through `CCOP_SCHEDULER`
(`worker_scheduler`); without it (one worker) the worker schedules in its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ccop.errors import Overloaded, ProxyError
from ccop.scheduler import Admission, Grant, Scheduler
from ccop.settings import SETTINGS_ENV, Settings

__all__ = [
    "SCHEDULER_ENV",
    "RemoteScheduler",
    "SchedulerProcess",
    "serve_scheduler",
    "start_scheduler_process",
    "worker_scheduler",
]

logger = logging.getLogger("ccop.scheduler")

# Where a worker finds the shared scheduler's socket (set by the proxy's main process for --workers 2 and more).
SCHEDULER_ENV = "CCOP_SCHEDULER"
# A line is one small object; anything longer is not from ccop.
_LINE_LIMIT = 1 << 20
_START_TIMEOUT = 20.0
_CONNECT_TIMEOUT = 5.0


def _admission(fields: dict[str, Any]) -> Admission:
    return Admission(
        model=str(fields["model"]),
        hosts=tuple(str(host) for host in fields["hosts"]),
        request_class=str(fields.get("request_class", "main")),
        session=str(fields.get("session", "")),
        agent=str(fields.get("agent", "")),
        request_id=str(fields.get("request_id", "")),
    )


class _Connection:
    """One worker's connection: its acquires in progress and the grants it holds, all given back when it closes."""

    def __init__(self, scheduler: Scheduler, writer: asyncio.StreamWriter) -> None:
        self.scheduler = scheduler
        self.writer = writer
        self.pending: dict[int, asyncio.Task[None]] = {}
        self.grants: dict[int, Grant] = {}

    def send(self, message: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(orjson.dumps(message) + b"\n")

    def handle(self, message: dict[str, Any]) -> None:
        op, request = message["op"], int(message["id"])
        if op == "acquire":
            admission = _admission(message["admission"])
            self.pending[request] = asyncio.create_task(self._acquire(request, admission))
        elif op == "release":
            grant = self.grants.pop(request, None)
            if grant is not None:
                self.scheduler.release(grant)
        elif op == "cancel":
            self._cancel(request)
        elif op == "snapshot":
            self.send({"id": request, "snapshot": self.scheduler.snapshot()})
        elif op == "forget_host":
            self.scheduler.forget_host(str(message["host"]))
        else:
            raise ValueError(f"unknown op {op!r}")

    async def _acquire(self, request: int, admission: Admission) -> None:
        try:
            grant = await self.scheduler.acquire(
                admission, lambda position: self.send({"id": request, "queued": position})
            )
        except ProxyError as error:
            self.send(
                {"id": request, "error": {"type": error.error_type, "status": error.status, "message": error.message}}
            )
        else:
            self.grants[request] = grant
            self.send(
                {
                    "id": request,
                    "grant": {"host": grant.host, "model": grant.model, "waited": grant.waited, "ahead": grant.ahead},
                }
            )
        finally:
            self.pending.pop(request, None)

    def _cancel(self, request: int) -> None:
        # Cancelling the task leaves the queue (the scheduler gives back a grant that raced in); a grant already
        # sent, which the worker will ignore, is given back here.
        task = self.pending.pop(request, None)
        if task is not None:
            task.cancel()
        grant = self.grants.pop(request, None)
        if grant is not None:
            self.scheduler.release(grant)

    def close(self) -> None:
        for request in list(self.pending) + list(self.grants):
            self._cancel(request)


async def _serve_connection(scheduler: Scheduler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    connection = _Connection(scheduler, writer)
    try:
        while line := await reader.readline():
            connection.handle(orjson.loads(line))
    except (ValueError, KeyError, TypeError, ConnectionError) as error:
        # Only ccop's workers connect (the socket sits in a private directory); a bad line is a bug, logged.
        logger.error("scheduler: closing a worker's connection: %r", error)
    finally:
        connection.close()
        writer.close()


async def serve_scheduler(path: str, scheduler: Scheduler) -> None:
    """Serve `scheduler` on the Unix socket `path` until cancelled."""
    connections: set[asyncio.Task[None]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        try:
            await _serve_connection(scheduler, reader, writer)
        finally:
            connections.discard(task)

    server = await asyncio.start_unix_server(on_connect, path=path, limit=_LINE_LIMIT)
    os.chmod(path, 0o600)
    try:
        async with server:
            await asyncio.Future()  # until cancelled
    finally:
        for task in list(connections):
            task.cancel()


# The worker's side.


class _Link:
    """One open connection to the service and the replies awaited on it, by id (with the acquire's `on_queued`)."""

    def __init__(self, path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.path = path
        self.writer = writer
        self.ids = itertools.count(1)
        self.waiting: dict[int, tuple[asyncio.Future[dict[str, Any]], Callable[[int], None] | None]] = {}
        self.listener = asyncio.create_task(self._listen(reader))

    @property
    def open(self) -> bool:
        return not self.writer.is_closing()

    def write(self, message: dict[str, Any]) -> None:
        if self.open:
            self.writer.write(orjson.dumps(message) + b"\n")

    def ask(
        self, op: str, fields: dict[str, Any], on_queued: Callable[[int], None] | None
    ) -> tuple[int, asyncio.Future[dict[str, Any]]]:
        if not self.open:
            raise _unreachable(self.path, ConnectionResetError("the connection is closed"))
        request = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[request] = (future, on_queued)
        self.write({"op": op, "id": request, **fields})
        return request, future

    async def _listen(self, reader: asyncio.StreamReader) -> None:
        """Hand each reply to its waiter; when the connection ends, fail every waiter rather than leave it hanging."""
        reason: BaseException = ConnectionResetError("the scheduler closed the connection")
        try:
            while line := await reader.readline():
                self._deliver(orjson.loads(line))
        except (OSError, ValueError) as error:
            reason = error
        finally:
            self.writer.close()
            for future, _ in self.waiting.values():
                if not future.done():
                    future.set_exception(_unreachable(self.path, reason))
            self.waiting.clear()

    def _deliver(self, reply: dict[str, Any]) -> None:
        request = int(reply["id"])
        if "queued" in reply:
            on_queued = self.waiting.get(request, (None, None))[1]
            if on_queued is not None:
                on_queued(int(reply["queued"]))
            return
        future, _ = self.waiting.pop(request, (None, None))
        if future is not None and not future.done():
            future.set_result(reply)


class RemoteScheduler:
    """`Scheduler`'s acquire/release/snapshot over the service's socket; one connection per worker, opened lazily.

    If the connection breaks, waiting acquires fail with a `ProxyError` (the service has given back every slot of
    that connection) and the next acquire connects again.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._link: _Link | None = None
        self._connecting: asyncio.Lock | None = None
        # Grants held, by identity: the connection they came on and their id there.
        self._grants: dict[int, tuple[Grant, _Link, int]] = {}

    async def acquire(self, admission: Admission, on_queued: Callable[[int], None] | None = None) -> Grant:
        fields = {
            "model": admission.model,
            "hosts": list(admission.hosts),
            "request_class": admission.request_class,
            "session": admission.session,
            "agent": admission.agent,
            "request_id": admission.request_id,
        }
        link = await self._connection()
        request, future = link.ask("acquire", {"admission": fields}, on_queued)
        try:
            reply = await future
        except asyncio.CancelledError:
            # The service leaves the queue, or gives back the grant if one is already on its way here.
            link.waiting.pop(request, None)
            link.write({"op": "cancel", "id": request})
            raise
        if "error" in reply:
            error = reply["error"]
            kind = Overloaded if error["type"] == Overloaded.error_type else ProxyError
            raise kind(error["message"], status=error["status"], error_type=error["type"])
        granted = reply["grant"]
        grant = Grant(host=granted["host"], model=granted["model"], waited=granted["waited"], ahead=granted["ahead"])
        self._grants[id(grant)] = (grant, link, request)
        return grant

    def release(self, grant: Grant) -> None:
        """Give the slot back (sent without waiting, in order). A grant of a lost connection is already free."""
        held = self._grants.pop(id(grant), None)
        if held is not None:
            _, link, request = held
            link.write({"op": "release", "id": request})

    def forget_host(self, host: str) -> None:
        """Drop the sessions' affinity to a host that failed (sent without waiting; lost with a lost connection)."""
        link = self._link
        if link is not None and link.open:
            link.write({"op": "forget_host", "id": 0, "host": host})

    async def snapshot(self) -> dict[str, Any]:
        link = await self._connection()
        _, future = link.ask("snapshot", {}, None)
        snapshot: dict[str, Any] = (await future)["snapshot"]
        return snapshot

    async def aclose(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.writer.close()
            with contextlib.suppress(ConnectionError):
                await link.writer.wait_closed()
            await link.listener
        self._grants.clear()

    async def _connection(self) -> _Link:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._link is None or not self._link.open:
                self._grants = {key: held for key, held in self._grants.items() if held[1].open}
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_unix_connection(self.path, limit=_LINE_LIMIT), _CONNECT_TIMEOUT
                    )
                except (OSError, asyncio.TimeoutError) as error:
                    raise _unreachable(self.path, error) from error
                self._link = _Link(self.path, reader, writer)
            return self._link


def _unreachable(path: str, reason: BaseException) -> ProxyError:
    return ProxyError(
        f"ccop's scheduler (the process that shares Ollama's slots between workers, at {path}) is unreachable: "
        f"{reason}. Restart ccop."
    )


# The process.


@dataclass
class SchedulerProcess:
    """The running service: its socket `path`; `stop()` ends it and removes its directory."""

    path: str
    process: subprocess.Popen[bytes]

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()  # end of file: the service exits by itself
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(Path(self.path).parent, ignore_errors=True)


def start_scheduler_process(settings: Settings) -> SchedulerProcess:
    """Start the service (a new interpreter, not a fork) and return once its socket accepts connections.

    The socket lives in a new private directory (mode 0700). The service's stdin is a pipe from this process: when
    this process ends, however it ends, the pipe closes and the service exits.
    """
    directory = tempfile.mkdtemp(prefix="ccop-scheduler-")
    path = os.path.join(directory, "scheduler.sock")
    # The settings travel as they do to the workers: in the environment, not on a command line others can read.
    environment = {**os.environ, SETTINGS_ENV: settings.to_json().decode()}
    process = subprocess.Popen(
        [sys.executable, "-m", "ccop.scheduler_service", "--socket", path], stdin=subprocess.PIPE, env=environment
    )
    service = SchedulerProcess(path, process)
    deadline = time.monotonic() + _START_TIMEOUT
    while not _accepts(path):
        if process.poll() is not None or time.monotonic() > deadline:
            service.stop()
            raise RuntimeError(f"ccop's scheduler did not start (exit status {process.returncode})")
        time.sleep(0.02)
    return service


def _accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def local_scheduler(settings: Settings) -> Scheduler:
    return Scheduler(settings.slots_for, max_queue=settings.max_queue, max_wait=settings.max_queue_wait)


def worker_scheduler(settings: Settings) -> Scheduler | RemoteScheduler:
    """The scheduler a worker uses: the shared service when the proxy started one, else one in this process."""
    path = os.environ.get(SCHEDULER_ENV)
    return RemoteScheduler(path) if path else local_scheduler(settings)


async def _run(path: str, settings: Settings) -> None:
    scheduler = local_scheduler(settings)
    loop = asyncio.get_running_loop()
    parent = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(parent), sys.stdin)
    serving = asyncio.create_task(serve_scheduler(path, scheduler))
    parent_gone = asyncio.create_task(parent.read())  # the parent never writes: this ends at end of file
    try:
        await asyncio.wait({serving, parent_gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        serving.cancel()
        parent_gone.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(path))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m ccop.scheduler_service")
    parser.add_argument("--socket", required=True)
    arguments = parser.parse_args()
    # Ctrl-C reaches the whole process group; the proxy decides when this process ends, by closing its stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_run(arguments.socket, Settings.for_worker()))


if __name__ == "__main__":
    main()
