"""Who may use the proxy: the optional API key, and CORS for browser origins (none unless configured).

A proxy in front of a local GPU is an open door by default; these checks keep other machines (with a key) and web
pages the user happens to open (without CORS) from driving the model and reading its answers.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from ccop._types import Message, Scope, Send
from ccop.errors import AuthenticationFailed

__all__ = ["check_api_key", "cors_headers", "header", "preflight_headers", "with_cors"]

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
