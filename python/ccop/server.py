"""Running the app under Granian: the only module that imports it.

Besides starting Granian, this module owns what happens around the workers:
- the address: a host name such as `localhost` is resolved here, and a port that is already in use (by another
  `ccop` too: Granian binds with SO_REUSEPORT, which would let two proxies share a port and alternate answers) is
  refused before anything is printed as "listening";
- worker deaths: a worker killed by the OOM killer or `kill -9` is replaced, the others keep serving;
- the metrics' directory: every worker writes its numbers there, and `GET /metrics` sums them (metrics.py);
- stopping: the first Ctrl-C / SIGTERM lets running answers finish for `--shutdown-grace` seconds (the workers
  then end what is left with an SSE error, see `streaming.py`); a second one stops at once.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import resource
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ccop.logs import granian_log_config
from ccop.scheduler_service import SCHEDULER_ENV, start_scheduler_process
from ccop.settings import SETTINGS_ENV, Settings

__all__ = ["BindError", "bind_address", "connection_limit", "port_holder", "serve"]

# How long after `--shutdown-grace` the main process waits before killing a worker: the worker ends its remaining
# streams with an error event when the grace period is over, and needs a moment to send those frames.
_KILL_MARGIN = 3
# Where prometheus_client's multiprocess mode keeps every process's numbers (the library's own variable). Not imported
# from ccop.metrics: that would import prometheus_client here, before the variable is set.
_METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# TCP states in /proc/net/tcp: 0A is LISTEN.
_LISTEN = "0A"
# File descriptors each worker keeps for itself (its connections to Ollama, logs, libraries) beyond client connections.
_FD_RESERVE = 512
# Never ask for more open files than this, even when the hard limit allows it.
_FD_CEILING = 65536


class BindError(Exception):
    """The proxy cannot listen where it was asked to; the message is one line that says what to change."""


def _resolve(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    """The address family and IP to bind for `host`, which may be a name (`localhost`) or an IP (`::1`, `[::1]`)."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindError(f"cannot resolve --host {host} ({exc.strerror}); use an IP address such as 127.0.0.1") from None
    # IPv4 first: `localhost` often resolves to ::1 and 127.0.0.1, and clients reach 127.0.0.1 either way.
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, _, _, _, address = infos[0]
    return family, str(address[0])


def _socket_inodes(port: int) -> set[str]:
    """Inodes of the listening sockets on `port`, from the kernel's socket tables."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


def port_holder(port: int) -> tuple[int, str] | None:
    """The process listening on `port` (pid and command line), when /proc lets us see it.

    A Granian worker holds the socket, but its parent is the process to stop: forked workers share their parent's
    command line, so the walk goes up while the command line stays the same.
    """
    inodes = {f"socket:[{inode}]" for inode in _socket_inodes(port)}
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
        except OSError:
            continue  # gone, or another user's process
        if links & inodes:
            pid = int(entry.name)
            command = _command_line(pid)
            while (parent := _parent(pid)) > 1 and _command_line(parent) == command:
                pid = parent
            return pid, command
    return None


def bind_address(settings: Settings) -> str:
    """The IP Granian should bind, after checking that nothing listens there yet; raises `BindError`."""
    family, address = _resolve(settings.host, settings.port)
    # A plain bind (no SO_REUSEPORT) fails when any socket listens on the port, a second ccop's included.
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connections in TIME_WAIT do not count
        probe.bind((address, settings.port))
    except OSError as exc:
        raise BindError(_bind_failure(settings, address, exc)) from None
    finally:
        probe.close()
    return address


def _bind_failure(settings: Settings, address: str, exc: OSError) -> str:
    where = f"{address}:{settings.port}" if settings.host == address else f"{settings.host} ({address}):{settings.port}"
    if exc.errno == errno.EADDRINUSE:
        holder = port_holder(settings.port)
        by = f" by pid {holder[0]} ({_shortened(holder[1])})" if holder else ""
        return f"port {settings.port} is already in use{by}; stop that process, or choose another port with --port"
    if exc.errno == errno.EACCES:
        return f"no permission to listen on {where}; choose a port above 1023 with --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{address} is not an address of this machine; change --host (127.0.0.1 for this machine only)"
    return f"cannot listen on {where} ({exc.strerror or exc}); change --host or --port"


def connection_limit() -> int:
    """How many client connections one worker may hold open: what its open-file limit allows.

    The soft limit is raised to the hard one first (the workers inherit it). Granian's default cap, backlog/workers
    (2048), let about 2,050 idle connections from one client lock everyone else out; now only the kernel's limit
    does, and silent connections are closed after --connection-timeout.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _FD_CEILING if hard == resource.RLIM_INFINITY else min(hard, _FD_CEILING)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (OSError, ValueError):
            pass
    usable = _FD_CEILING if soft == resource.RLIM_INFINITY else soft
    return max(64, usable - _FD_RESERVE)


def _shortened(command: str, limit: int = 80) -> str:
    return command if len(command) <= limit else command[: limit - 1] + "…"


def _say(text: str) -> None:
    print(f"ccop: {text}", file=sys.stderr, flush=True)


def _server_class() -> type[Any]:
    """Granian's server, with ccop's messages on worker deaths and the second Ctrl-C."""
    from granian import Granian

    class Server(Granian):  # type: ignore[misc,valid-type]
        grace: float = 0.0

        def signal_handler_interrupt(self, *args: Any, **kwargs: Any) -> None:
            if self.interrupt_signal:
                # The second Ctrl-C (a terminal sends SIGINT to the workers too, so only the main process counts).
                _say("stopping now")
                for worker in list(self.wrks):
                    worker.kill()
                return
            _say(f"shutting down: running answers have {self.grace:g} s to finish (press Ctrl-C again to stop at once)")
            super().signal_handler_interrupt(*args, **kwargs)

        def _respawn_workers(self, workers: list[int], *args: Any, **kwargs: Any) -> None:
            for index in workers:
                worker = self.wrks[index]
                code = worker.inner.exitcode
                if code is None:
                    continue  # a planned respawn of a live worker
                how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                _say(f"worker {index + 1} (pid {worker.inner.pid}) {how}; starting a replacement")
                _forget_metrics_of(worker.inner.pid)
            super()._respawn_workers(workers, *args, **kwargs)

    return Server


def serve(settings: Settings, address: str | None = None) -> None:
    """Serve until interrupted, with `settings.workers` worker processes on one port.

    `address` is what `bind_address` returned; without it the check is made here (raises `BindError`).
    """
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    granian_levels = {
        "debug": LogLevels.debug,
        "info": LogLevels.warning,
        "warning": LogLevels.warning,
        "error": LogLevels.error,
    }
    if address is None:
        address = bind_address(settings)
    # Workers are separate processes that import the app afresh: the resolved settings reach them here.
    os.environ[SETTINGS_ENV] = settings.to_json().decode()
    server = _server_class()(
        # The app behind the request guard: body size, stalled and broken bodies (request_guard.py).
        "ccop.request_guard:create_app",
        factory=True,
        address=address,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        # uvloop where it is installed (a dependency everywhere but Windows), else asyncio's own loop.
        loop=Loops.auto,
        # HTTP/1.1 only: with "auto", hyper waits for the first bytes to tell HTTP/1 from HTTP/2 with no timeout at
        # all, so a connection that never sends anything was never closed. Clients of this API speak HTTP/1.1.
        http=HTTPModes.http1,
        # A connection silent before its request's headers are complete (a new one, or a kept-alive one between
        # requests) is closed after --connection-timeout. A connection reading a streamed answer is not reading
        # headers, so it is never closed for its silence.
        http1_settings=HTTP1Settings(header_read_timeout=max(1, round(settings.connection_timeout * 1000))),
        # The kernel's queue of connections not yet accepted.
        backlog=2048,
        # Connections each worker holds at once (each open SSE stream holds one).
        backpressure=connection_limit(),
        # Granian's level follows --log-level, except that its info lines (starting, listening, spawning each
        # worker) repeat the banner: they show from debug on. Its records take ccop's format and file (logs.py).
        log_level=granian_levels[settings.log_threshold],
        log_dictconfig=granian_log_config(settings.log_format, settings.log_file),
        log_access=False,
        # A worker that dies (the OOM killer, kill -9) is replaced; the others serve on meanwhile. Granian still
        # gives up when the same worker dies again within seconds of its replacement (a crash loop).
        respawn_failed_workers=True,
        # SIGTERM lets running answers finish; after the grace period the workers end the rest with an error event
        # (streaming.py) and stop; one that still has not stopped a little later is killed, which closes its
        # connections to Ollama, so it stops generating.
        workers_kill_timeout=math.ceil(settings.shutdown_grace) + _KILL_MARGIN,
    )
    server.grace = settings.shutdown_grace
    with _metrics_dir(), _shared_scheduler(settings):
        server.serve()
    if not settings.quiet:
        _say("stopped")


@contextlib.contextmanager
def _metrics_dir() -> Iterator[None]:
    """A fresh private directory for the workers' metrics, for as long as they serve.

    Fresh, so numbers from an earlier run are never summed in; set before any worker imports prometheus_client,
    which picks its multiprocess storage on import. The workers find it through the environment they inherit.
    """
    path = tempfile.mkdtemp(prefix="ccop-metrics-")  # mode 0700: the numbers are this user's
    os.environ[_METRICS_DIR_ENV] = path
    try:
        yield
    finally:
        os.environ.pop(_METRICS_DIR_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def _forget_metrics_of(pid: int | None) -> None:
    """A dead worker's in-flight streams stop counting (its counters stay: what it served was served)."""
    path = os.environ.get(_METRICS_DIR_ENV)
    if pid is None or not path:
        return
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def _shared_scheduler(settings: Settings) -> Iterator[None]:
    """With two workers or more, one scheduler process for all of them (scheduler_service.py), for as long as they
    serve; the workers find it through the environment they inherit. One worker schedules in its own process."""
    if settings.workers < 2:
        os.environ.pop(SCHEDULER_ENV, None)
        yield
        return
    service = start_scheduler_process(settings)
    os.environ[SCHEDULER_ENV] = service.path
    try:
        yield
    finally:
        os.environ.pop(SCHEDULER_ENV, None)
        service.stop()


def _main() -> int:
    # `ccop claude` starts the proxy this way, with the resolved settings in CCOP_SETTINGS.
    try:
        serve(Settings.for_worker())
    except BindError as exc:
        _say(str(exc))
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(_main())
