"""Logging set-up shared by the CLI and the workers.

Without `--verbose`, logs carry request ids, models, statuses, token counts and durations, but never prompt or
response text: those stay on the user's machine and out of shared terminals and log collectors.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["configure_logging"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"


def configure_logging(verbose: bool) -> None:
    root = logging.getLogger("ccop")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(getattr(handler, "_ccop", False) for handler in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S"))
        handler._ccop = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.propagate = False
