"""Small helpers to read a request body and send whole responses over raw ASGI."""

from __future__ import annotations

from collections.abc import Iterable

import orjson

from ccop._types import Receive, Send
from ccop.errors import ProxyError, RequestTooLarge, error_body

__all__ = ["ClientDisconnected", "body_too_large", "read_body", "send_bytes", "send_error", "send_json"]

_JSON = b"application/json"


class ClientDisconnected(Exception):
    """The client went away before the request body was complete."""


def body_too_large(limit: int) -> RequestTooLarge:
    return RequestTooLarge(
        f"request body is larger than the proxy's limit of {limit} bytes; raise it with --max-body-size"
    )


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body; more than `limit` bytes is a 413."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise body_too_large(limit)
            parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: bytes = _JSON,
    headers: Iterable[tuple[bytes, bytes]] = (),
    head: bool = False,
) -> None:
    all_headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def send_json(
    send: Send, status: int, data: object, *, headers: Iterable[tuple[bytes, bytes]] = (), head: bool = False
) -> None:
    await send_bytes(send, status, orjson.dumps(data), headers=headers, head=head)


async def send_error(send: Send, error: ProxyError, request_id: str, *, head: bool = False) -> None:
    headers = [(b"request-id", request_id.encode()), *error.headers]
    body = error_body(error.error_type, error.message, request_id, details=error.details)
    await send_bytes(send, error.status, body, headers=headers, head=head)
