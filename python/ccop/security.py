"""Who may use the proxy: the optional API key, CORS for browser origins (none unless configured), and the checks
that keep web pages away from a proxy on loopback.

A proxy in front of a local GPU is an open door by default; these checks keep other machines (with a key) and web
pages the user happens to open from driving the model and reading its answers. A page can reach loopback in two
ways: through a name of its own that it re-points at 127.0.0.1 (DNS rebinding: the browser then sends that name as
`Host`), and with a cross-site request the browser sends without asking first (a form-like POST, `text/plain`).
The first is refused by the `Host` check, the second by requiring JSON and refusing origins CORS does not allow.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence

from ccop._types import Message, Scope, Send
from ccop.errors import AuthenticationFailed, InvalidRequest, PermissionDenied
from ccop.logs import printable

__all__ = [
    "check_api_key",
    "check_host",
    "check_origin",
    "cors_headers",
    "header",
    "is_loopback",
    "preflight_headers",
    "require_json",
    "with_cors",
]

# Headers the Anthropic SDKs send from a browser, allowed on preflight when the client does not list them.
_ALLOWED_HEADERS = b"content-type, x-api-key, authorization, anthropic-version, anthropic-beta"
_ALLOWED_METHODS = b"GET, POST, HEAD, OPTIONS"


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def check_api_key(scope: Scope, expected: str) -> None:
    """Accept `x-api-key: KEY` or `Authorization: Bearer KEY`; compared in constant time."""
    presented = header(scope, b"x-api-key")
    if presented is None:
        authorization = header(scope, b"authorization") or b""
        scheme, _, token = authorization.partition(b" ")
        presented = token.strip() if scheme.lower() == b"bearer" else None
    # compare_digest takes as long for a wrong key as for a right one, so timing cannot reveal the key.
    if presented is None or not hmac.compare_digest(presented, expected.encode()):
        raise AuthenticationFailed(
            "this proxy requires an API key: send the key it was started with (--api-key / CCOP_API_KEY) as "
            "x-api-key or Authorization: Bearer"
        )


def is_loopback(host: str) -> bool:
    """Whether an address (a bind address, or the name part of a Host header) is this machine's loopback."""
    host = host.strip().lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str:
    """The name part of a Host header value: `[::1]:3000` → `[::1]`, `localhost:3000` → `localhost`."""
    value = value.strip().lower().rstrip(".")
    if value.startswith("["):
        return value.partition("]")[0] + "]"
    return value.rpartition(":")[0] if value.count(":") == 1 else value


def check_host(scope: Scope, allowed: Sequence[str]) -> None:
    """On a loopback bind, only loopback names (and the configured ones) in `Host`: no DNS rebinding.

    A web page that re-points its own name at 127.0.0.1 reaches the proxy as same-origin, but its requests still
    carry that name. A request without a Host header cannot come from a browser.
    """
    raw = header(scope, b"host")
    if raw is None:
        return
    value = raw.decode("latin-1")
    names = {entry.strip().lower().rstrip(".") for entry in allowed}
    if is_loopback(_host_name(value)) or _host_name(value) in names or value.strip().lower() in names:
        return
    raise PermissionDenied(
        f"host {printable(value)!r} is not allowed: this proxy listens on loopback and answers only to localhost, "
        "127.0.0.1 and [::1]. To reach it under another name, start it with --allowed-host NAME."
    )


def check_origin(scope: Scope, allowed: Sequence[str]) -> None:
    """Refuse browser requests from origins CORS does not allow, before they can start any work.

    Without CORS headers a page cannot read the answer, but a request the browser sends without a preflight would
    still run the model; this check stops it before it does.
    """
    origin = header(scope, b"origin")
    if origin is None or "*" in allowed or origin.decode("latin-1") in allowed:
        return
    raise PermissionDenied(
        f"requests from the web origin {printable(origin.decode('latin-1'))!r} are not allowed; to let a web page "
        "use this proxy, start it with --cors-origin ORIGIN"
    )


def require_json(scope: Scope) -> None:
    """A JSON body, and said so: browsers send `text/plain` and form bodies cross-site without asking first."""
    content_type = header(scope, b"content-type")
    media = (content_type or b"").split(b";", 1)[0].strip().lower()
    if not media.endswith(b"json"):
        got = f"got {printable(content_type.decode('latin-1'))!r}" if content_type else "none was sent"
        raise InvalidRequest(f"content-type must be application/json; {got}")


def cors_headers(scope: Scope, allowed: Sequence[str]) -> list[tuple[bytes, bytes]]:
    """CORS response headers for an allowed `Origin`, or none."""
    origin = header(scope, b"origin")
    if not allowed or origin is None:
        return []
    if "*" not in allowed and origin.decode("latin-1") not in allowed:
        return []
    return [(b"access-control-allow-origin", origin), (b"vary", b"origin")]


def preflight_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    requested = header(scope, b"access-control-request-headers")
    return [
        (b"access-control-allow-methods", _ALLOWED_METHODS),
        (b"access-control-allow-headers", requested or _ALLOWED_HEADERS),
        (b"access-control-max-age", b"600"),
    ]


def with_cors(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    """`send`, with the CORS headers added to the response start."""

    async def send_with_cors(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), *extra]
        await send(message)

    return send_with_cors
