"""Running the app under Granian: the only module that imports it."""

from __future__ import annotations

import math
import os
import resource

from ccop.settings import SETTINGS_ENV, Settings

__all__ = ["connection_limit", "serve"]

# File descriptors each worker keeps for itself (its connections to Ollama, logs, libraries) beyond client connections.
_FD_RESERVE = 512
# Never ask for more open files than this, even when the hard limit allows it.
_FD_CEILING = 65536


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


def serve(settings: Settings) -> None:
    """Serve until interrupted, with `settings.workers` worker processes on one port."""
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    # Workers are separate processes that import the app afresh: the resolved settings reach them here.
    os.environ[SETTINGS_ENV] = settings.to_json().decode()
    Granian(
        # The app behind the request guard: body size, stalled and broken bodies (request_guard.py).
        "ccop.request_guard:create_app",
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
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
        log_level=LogLevels.debug if settings.verbose else LogLevels.warning,
        log_access=False,
        # SIGTERM lets running answers finish; after the grace period the workers are stopped, which closes their
        # connections to Ollama, so it stops generating.
        workers_kill_timeout=math.ceil(settings.shutdown_grace),
    ).serve()


if __name__ == "__main__":
    # `ccop claude` starts the proxy this way, with the resolved settings in CCOP_SETTINGS.
    serve(Settings.for_worker())
