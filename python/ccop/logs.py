"""Logging set-up shared by the CLI and the workers, and text made safe to show.

Below debug level, logs carry request ids, sessions, models, statuses, token counts and durations, but never prompt
or response text: those stay on the user's machine and out of shared terminals and log collectors.

Two formats: text (one readable line per record, the default) and JSON (one object per line, with the
OpenTelemetry log data model's names: `timestamp`, `severity`, `body`, `attributes`). Both go to standard error, or
to `--log-file`, which is rotated by size. Granian's own records (worker start and exit) take the same path, through
`granian_log_config`.

What a client sends (a model name, a path, a header) reaches log lines and error messages. A newline in it would
forge a separate log line, an ESC byte would drive the terminal that shows the log, and a 10 MiB string would be
written out whole; so in text lines control characters are escaped (JSON escapes them itself) and in both formats
long strings are cut, here for every log record and in `ccop.errors` for every error message.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
import time
from typing import Any, Literal

import orjson

__all__ = [
    "LEVELS",
    "LOG_FILE_BACKUPS",
    "LOG_FILE_MAX_BYTES",
    "JsonFormatter",
    "LogFormat",
    "configure_logging",
    "granian_log_config",
    "log_handler",
    "printable",
]

LogFormat = Literal["text", "json"]
# The levels --log-level takes, quietest last.
LEVELS = ("debug", "info", "warning", "error")

_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
# Control characters (C0, DEL, C1) and the Unicode line and paragraph separators: each one becomes an escape.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# The most of one value (a model name, a path, an error message) a log line shows. Debug records (which carry the
# request bodies) are cut only by the message limit.
LOG_VALUE_LIMIT = 1000
# The most of one whole log message (more than the 20 kB of a request body a debug record shows).
LOG_MESSAGE_LIMIT = 32768
# --log-file is rotated when it would pass this size, keeping this many old files (`ccop.log.1` … `.5`): 60 MB at
# most on disk, about 200,000 access lines before the oldest go.
LOG_FILE_MAX_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 5
# The OpenTelemetry short names for Python's levels (SeverityText).
_SEVERITY = {"DEBUG": "DEBUG", "INFO": "INFO", "WARNING": "WARN", "ERROR": "ERROR", "CRITICAL": "FATAL"}
# What every LogRecord has: anything else on a record came from `extra=` and becomes an attribute.
_RECORD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _cut(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    return f"{text[:limit]}…[{len(text) - limit} more characters]"


def printable(text: str, limit: int | None = None) -> str:
    """`text` with control characters escaped (`\\n` → `\\x0a`), and cut after `limit` characters if longer."""
    cut = ""
    if limit is not None and len(text) > limit:
        cut = f"…[{len(text) - limit} more characters]"
        text = text[:limit]
    return _UNPRINTABLE.sub(_escape, text) + cut


class _Bounded(logging.Filter):
    """Cuts every record's values and message on their way out, and for text lines escapes control characters too:
    one record, one line."""

    def __init__(self, escape: bool) -> None:
        super().__init__()
        self._clean = printable if escape else _cut

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_ccop_bounded", False):
            return True  # one record can pass two handlers (tests add their own): its message is already clean
        if isinstance(record.args, tuple) and record.levelno > logging.DEBUG:
            record.args = tuple(
                self._clean(arg, LOG_VALUE_LIMIT) if isinstance(arg, str) else arg for arg in record.args
            )
        record.msg = self._clean(record.getMessage(), LOG_MESSAGE_LIMIT)
        record.args = None
        record._ccop_bounded = True
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: `timestamp` (UTC, ms), `severity`, `body`, and `attributes` (the logger, the
    process, and whatever the call passed as `extra=`: request id, session id, model, …)."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.gmtime(record.created)
        attributes: dict[str, Any] = {"logger": record.name, "pid": record.process}
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and not key.startswith("_") and value is not None:
                attributes[key] = _cut(value, LOG_VALUE_LIMIT) if isinstance(value, str) else value
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            attributes["exception.type"] = type(error).__qualname__
            attributes["exception.message"] = _cut(str(error), LOG_VALUE_LIMIT)
            attributes["exception.stacktrace"] = self.formatException(record.exc_info)
        line = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", seconds) + f".{int(record.msecs):03d}Z",
            "severity": _SEVERITY.get(record.levelname, record.levelname),
            "body": record.getMessage(),
            "attributes": attributes,
        }
        # `default=str`: an attribute orjson cannot write (a Path, an enum) is written as its text, not lost.
        return orjson.dumps(line, default=str).decode()


def log_handler(log_format: LogFormat = "text", log_file: str | None = None) -> logging.Handler:
    """A handler writing `log_format` lines to `log_file` (rotated by size) or, without one, to standard error.

    Every process (the main one and each worker) opens the file itself, in append mode, so lines from all of them
    land whole (O_APPEND) in one file. Rotation is decided by each process on its own: after one rotates, the others
    keep writing to the renamed file until they too find it over the limit; the size bound then holds per process,
    and no line is lost (docs/DEPLOYMENT.md, Logs).
    """
    handler: logging.Handler
    if log_file:
        handler = logging.handlers.RotatingFileHandler(
            log_file, maxBytes=LOG_FILE_MAX_BYTES, backupCount=LOG_FILE_BACKUPS, encoding="utf-8"
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S"))
    handler.addFilter(_Bounded(escape=log_format != "json"))
    return handler


# The handler of this process, by the process id that made it: a forked worker must open the file itself.
_handlers: dict[tuple[int, str, str | None], logging.Handler] = {}


def _process_handler(log_format: LogFormat, log_file: str | None) -> logging.Handler:
    key = (os.getpid(), log_format, log_file)
    if key not in _handlers:
        _handlers[key] = log_handler(log_format, log_file)
    return _handlers[key]


def configure_logging(level: str = "info", log_format: LogFormat = "text", log_file: str | None = None) -> None:
    """Send the `ccop.*` loggers' records at `level` and above to this process's handler; idempotent."""
    root = logging.getLogger("ccop")
    root.setLevel(level.upper())
    handler = _process_handler(log_format, log_file)
    for old in [old for old in root.handlers if getattr(old, "_ccop", False) and old is not handler]:
        root.removeHandler(old)
    if handler not in root.handlers:
        handler._ccop = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.propagate = False


def granian_handler(log_format: LogFormat = "text", log_file: str | None = None) -> logging.Handler:
    """The factory Granian's logging configuration names: this process's handler, shared with `ccop.*`."""
    return _process_handler(log_format, log_file)


def granian_log_config(log_format: LogFormat = "text", log_file: str | None = None) -> dict[str, Any]:
    """Granian's `log_dictconfig`: its records go through the same handler (format, file) as ccop's own."""
    return {
        "formatters": {},
        "handlers": {
            "ccop": {"()": f"{__name__}.granian_handler", "log_format": log_format, "log_file": log_file},
        },
        "loggers": {
            "_granian": {"handlers": ["ccop"], "propagate": False},
            # The access log is off (the app writes its own line per request); kept on our handler all the same.
            "granian.access": {"handlers": ["ccop"], "level": "INFO", "propagate": False},
        },
    }
