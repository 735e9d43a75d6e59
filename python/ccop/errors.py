"""Errors the proxy answers with, each mapped to Anthropic's error shape.

Every error a client sees is `{"type": "error", "error": {"type": ..., "message": ...}, "request_id": ...}` with an
HTTP status, or the same object in an SSE `event: error` once a stream has begun. An error that a client recognises
by code rather than by wording also carries `error.details` (`{"error_code": ...}`), as Anthropic's errors do.

Messages quote what the client sent (a model name, a field's value), and clients show them on a terminal: every
message has its control characters escaped and any run of over 256 characters without a space cut, so a quoted
string can neither drive the terminal nor make the answer as large as the request.

    ProxyError                      api_error, 500
    ├── InvalidRequest              invalid_request_error, 400 (names the offending field)
    │   └── ThreadUnsupported       a `thread` field: the proxy keeps no conversations (details.error_code)
    ├── AuthenticationFailed        authentication_error, 401
    ├── PermissionDenied            permission_error, 403
    ├── NotFound                    not_found_error, 404
    │   └── ModelNotFound           the model is not installed (400 for Claude Code, which hides 404 texts)
    ├── MethodNotAllowed            invalid_request_error, 405
    ├── RequestTooLarge             request_too_large, 413
    ├── Overloaded                  overloaded_error, 529
    └── UpstreamError               api_error, 502 (Ollama unreachable or misbehaving)
"""

from __future__ import annotations

import re
from typing import ClassVar

import orjson

from ccop._core import encode_sse
from ccop.logs import printable

__all__ = [
    "AuthenticationFailed",
    "InvalidRequest",
    "MethodNotAllowed",
    "ModelNotFound",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "ProxyError",
    "RequestTooLarge",
    "ThreadUnsupported",
    "UpstreamError",
    "error_body",
    "error_event",
    "safe_message",
]


# The longest run without a space an error message keeps (no model name, path or URL of ours is longer), and the
# longest message.
_RUN_LIMIT = 256
_MESSAGE_LIMIT = 16384
_LONG_RUN = re.compile(rf"\S{{{_RUN_LIMIT + 1},}}")


def safe_message(message: str) -> str:
    """`message` made safe to show: control characters escaped, long runs of characters (quoted input) cut."""
    shortened = _LONG_RUN.sub(lambda run: printable(run[0], _RUN_LIMIT), message)
    return printable(shortened, _MESSAGE_LIMIT)


class ProxyError(Exception):
    """Base of every error the proxy reports to its client."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "api_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_type: str | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
        details: dict[str, object] | None = None,
    ) -> None:
        message = safe_message(message)
        super().__init__(message)
        self.message = message
        # `error.details` of the body: the machine-readable part the official SDKs act on (e.g. `error_code`).
        self.details = details
        if error_type is not None:
            self.error_type = error_type  # type: ignore[misc]
        # Extra response headers, e.g. `allow` on a 405 or `retry-after` on an overload.
        self.headers = headers
        if status is not None:
            self.status = status  # type: ignore[misc]


class InvalidRequest(ProxyError):
    status = 400
    error_type = "invalid_request_error"


class ThreadUnsupported(InvalidRequest):
    """A request with a `thread` field (the message-threads beta): the proxy keeps no conversation between requests.

    The official SDKs' tool runners start every conversation with `"thread": {"type": "create"}`, and on exactly this
    `error_code` they resend the turn, and every later one, with the full history and no `thread` (they check
    `error.details.error_code == "thread_unsupported_request"`, nothing else).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, details={"error_code": "thread_unsupported_request"})


class AuthenticationFailed(ProxyError):
    status = 401
    error_type = "authentication_error"


class PermissionDenied(ProxyError):
    status = 403
    error_type = "permission_error"


class NotFound(ProxyError):
    status = 404
    error_type = "not_found_error"


class ModelNotFound(NotFound):
    """The requested model is not installed in Ollama."""


class MethodNotAllowed(ProxyError):
    status = 405
    error_type = "invalid_request_error"


class RequestTooLarge(ProxyError):
    status = 413
    error_type = "request_too_large"


class Overloaded(ProxyError):
    # 529 is Anthropic's status for overload; Claude Code retries it with backoff.
    status = 529
    error_type = "overloaded_error"


class UpstreamError(ProxyError):
    status = 502
    error_type = "api_error"


def error_body(
    error_type: str, message: str, request_id: str | None = None, *, details: dict[str, object] | None = None
) -> bytes:
    error: dict[str, object] = {"type": error_type, "message": message}
    if details:
        error["details"] = details
    body: dict[str, object] = {"type": "error", "error": error}
    if request_id:
        body["request_id"] = request_id
    return orjson.dumps(body)


def error_event(error_type: str, message: str, request_id: str | None = None) -> bytes:
    """An SSE `error` frame, for failures after the stream has begun."""
    return encode_sse("error", error_body(error_type, message, request_id))
