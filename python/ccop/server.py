"""Running the app under Granian: the only module that imports it."""

from __future__ import annotations

import math
import os

from ccop.settings import SETTINGS_ENV, Settings

__all__ = ["serve"]


def serve(settings: Settings) -> None:
    """Serve until interrupted, with `settings.workers` worker processes on one port."""
    from granian import Granian
    from granian.constants import Interfaces, Loops
    from granian.log import LogLevels

    # Workers are separate processes that import the app afresh: the resolved settings reach them here.
    os.environ[SETTINGS_ENV] = settings.to_json().decode()
    Granian(
        "ccop.app:create_app",
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        loop=Loops.auto,
        # Every open SSE stream holds one slot; many agents mean many long-lived streams per worker.
        backlog=2048,
        log_level=LogLevels.debug if settings.verbose else LogLevels.warning,
        log_access=False,
        # SIGTERM lets running answers finish; after the grace period the workers are stopped, which closes their
        # connections to Ollama, so it stops generating.
        workers_kill_timeout=math.ceil(settings.shutdown_grace),
    ).serve()


if __name__ == "__main__":
    # `ccop claude` starts the proxy this way, with the resolved settings in CCOP_SETTINGS.
    serve(Settings.for_worker())
