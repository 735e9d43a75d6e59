"""Logging set-up shared by the CLI and the workers, and text made safe to show.

Without `--verbose`, logs carry request ids, models, statuses, token counts and durations, but never prompt or
response text: those stay on the user's machine and out of shared terminals and log collectors.

What a client sends (a model name, a path, a header) reaches log lines and error messages. A newline in it would
forge a separate log line, an ESC byte would drive the terminal that shows the log, and a 10 MiB string would be
written out whole; so control characters are escaped and long strings cut, here for every log record and in
`ccop.errors` for every error message.
"""

from __future__ import annotations

import logging
import re
import sys

__all__ = ["configure_logging", "printable"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
# Control characters (C0, DEL, C1) and the Unicode line and paragraph separators: each one becomes an escape.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# The most of one value (a model name, a path, an error message) a log line shows. Debug records (only with
# --verbose, which asks for the request bodies) are cut only by the message limit.
LOG_VALUE_LIMIT = 1000
# The most of one whole log message (more than the 20 kB of a request body --verbose logs).
LOG_MESSAGE_LIMIT = 32768


def _escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, limit: int | None = None) -> str:
    """`text` with control characters escaped (`\\n` → `\\x0a`), and cut after `limit` characters if longer."""
    cut = ""
    if limit is not None and len(text) > limit:
        cut = f"…[{len(text) - limit} more characters]"
        text = text[:limit]
    return _UNPRINTABLE.sub(_escape, text) + cut


class _Printable(logging.Filter):
    """Escapes and cuts every record's message on its way to the terminal or log file: one record, one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.levelno > logging.DEBUG:
            record.args = tuple(printable(arg, LOG_VALUE_LIMIT) if isinstance(arg, str) else arg for arg in record.args)
        record.msg = printable(record.getMessage(), LOG_MESSAGE_LIMIT)
        record.args = None
        return True


def configure_logging(verbose: bool) -> None:
    root = logging.getLogger("ccop")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not any(getattr(handler, "_ccop", False) for handler in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S"))
        handler.addFilter(_Printable())
        handler._ccop = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.propagate = False
