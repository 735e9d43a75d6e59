"""The connection to Ollama: one `httpx.AsyncClient` per worker, and Ollama's errors in Anthropic's terms."""

from __future__ import annotations

import base64
import re

import httpx
import orjson

from ccop._core import __version__
from ccop.errors import (
    AuthenticationFailed,
    InvalidRequest,
    Overloaded,
    PermissionDenied,
    ProxyError,
    UpstreamError,
)
from ccop.settings import redacted_url
from ccop.transport import OllamaTransport

__all__ = [
    "CONNECT_TIMEOUT",
    "ChatSender",
    "create_client",
    "error_from_response",
    "ollama_endpoint",
    "read_error_body",
    "unreachable",
]

# Ollama runs next to the proxy: if it does not accept a connection within seconds it is not running.
CONNECT_TIMEOUT = 5.0
# How much of an error answer's body is read: Ollama's message is a short JSON object, and the rest of a huge (or
# endless) body from a misbehaving server must cost neither memory nor time. The connection is closed, not drained.
ERROR_BODY_LIMIT = 8192
# The longest Ollama error message passed on to the client.
_MESSAGE_CHARS = 2000
_CONTEXT_OVERFLOW = re.compile(r"request \((\d+) tokens\) exceeds the available context size \((\d+) tokens\)")


def ollama_endpoint(ollama_url: str, api_key: str | None = None) -> tuple[httpx.URL, dict[str, str]]:
    """The base URL to reach Ollama at, and the credentials every request to it carries, as a header.

    Credentials in the URL (`http://user:pass@host`) become Basic authentication and `api_key` a Bearer token (it
    wins over the URL's). As a default header of the client they go on every request, including the chat requests
    `ChatSender` sends past httpx's own authentication step, and they stay out of the URL that errors and logs show.
    """
    url = httpx.URL(ollama_url)
    headers: dict[str, str] = {}
    if url.username or url.password:
        pair = f"{url.username}:{url.password}".encode()
        headers["authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        url = url.copy_with(username=None, password=None)
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
    return url, headers


def create_client(ollama_url: str, api_key: str | None = None) -> tuple[httpx.AsyncClient, OllamaTransport]:
    """The worker's client to Ollama, and its transport (the connection pool) for `ChatSender`."""
    # No read timeout: loading a model and reading a long prompt can take minutes, and the stream's own idle
    # watchdog decides when silence means failure. `trust_env=False` keeps HTTP(S)_PROXY settings meant for the
    # internet from rerouting a local Ollama.
    timeout = httpx.Timeout(connect=CONNECT_TIMEOUT, read=None, write=60.0, pool=None)
    transport = OllamaTransport(max_idle=256, idle_expiry=30.0)
    # The answer is relayed as the raw bytes Ollama sent: a compressing reverse proxy in front of Ollama must not
    # compress it.
    base_url, credentials = ollama_endpoint(ollama_url, api_key)
    headers = {"accept-encoding": "identity", "user-agent": f"ccop/{__version__}", **credentials}
    client = httpx.AsyncClient(
        base_url=base_url, timeout=timeout, transport=transport, headers=headers, trust_env=False
    )
    return client, transport


class ChatSender:
    """Sends `/api/chat` requests straight through the client's connection pool.

    Chat requests need none of what `AsyncClient.send` adds around the transport (authentication, redirects,
    cookies, event hooks), and skipping it takes a noticeable share of the proxy's added time to first token.
    The request itself is still built by the client, so URL, headers (the credentials to Ollama among them, see
    `ollama_endpoint`) and timeouts are the client's.
    """

    def __init__(self, client: httpx.AsyncClient, transport: httpx.AsyncBaseTransport) -> None:
        self._client = client
        self._transport = transport
        self._url = client.base_url.join("/api/chat")
        self._headers = httpx.Headers({"content-type": "application/json", "accept": "*/*"})

    def request(self, body: bytes) -> httpx.Request:
        return self._client.build_request("POST", self._url, content=body, headers=self._headers)

    async def send(self, request: httpx.Request) -> httpx.Response:
        response = await self._transport.handle_async_request(request)
        response.request = request
        return response


def unreachable(ollama_url: str, exc: Exception) -> UpstreamError:
    reason = str(exc) or type(exc).__name__
    return UpstreamError(
        f"Ollama is not reachable at {redacted_url(ollama_url)} ({reason}). Start it with `ollama serve`, or point the "
        "proxy at the right server with --ollama-url."
    )


async def read_error_body(response: httpx.Response, limit: int = ERROR_BODY_LIMIT) -> bytes:
    """At most `limit` bytes of an error answer's body; the caller then closes the response and its connection."""
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk[: limit - len(body)]
        if len(body) >= limit:
            break
    return bytes(body)


def _ollama_message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace").strip()[:500] or "no details"
    if isinstance(data, dict) and "error" in data:
        error = data["error"]
        return error[:_MESSAGE_CHARS] if isinstance(error, str) else orjson.dumps(error).decode()[:_MESSAGE_CHARS]
    return body.decode("utf-8", "replace")[:500]


def error_from_response(status: int, body: bytes, ollama_model: str) -> ProxyError:
    """Map an Ollama error reply (sent before any stream byte) to the error the client sees.

    A 404 (model not found) is left to the caller, which knows the installed models.
    """
    message = _ollama_message(body)
    overflow = _CONTEXT_OVERFLOW.search(message)
    if overflow:
        # The wording Claude Code reacts to by compacting the conversation.
        return InvalidRequest(f"prompt is too long: {overflow.group(1)} tokens > {overflow.group(2)} maximum")
    if status == 400:
        return InvalidRequest(f"Ollama rejected the request for {ollama_model!r}: {message}")
    if status == 401:
        return AuthenticationFailed(f"Ollama refused the request (401): {message}")
    if status == 403:
        return PermissionDenied(f"Ollama refused the request (403): {message}")
    if status in (429, 503):
        return Overloaded(f"Ollama is busy: {message}. Try again shortly, or raise OLLAMA_MAX_QUEUE.")
    return UpstreamError(f"Ollama failed with HTTP {status}: {message}", status=500 if status >= 500 else 502)
