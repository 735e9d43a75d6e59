"""The connection to Ollama: one `httpx.AsyncClient` per worker, opening chat answers (with their retries and the
header grace window), and Ollama's errors in Anthropic's terms."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

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

__all__ = [
    "CONNECT_TIMEOUT",
    "HEADER_GRACE",
    "OllamaChat",
    "create_client",
    "error_from_response",
    "ollama_endpoint",
    "read_error_body",
    "transport_failure",
    "unreachable",
    "with_grace",
]

logger = logging.getLogger("ccop.upstream")

T = TypeVar("T")

# Ollama runs next to the proxy: if it does not accept a connection within seconds it is not running.
CONNECT_TIMEOUT = 5.0
# How much of an error answer's body is read: Ollama's message is a short JSON object, and the rest of a huge (or
# endless) body from a misbehaving server must cost neither memory nor time. The connection is closed, not drained.
ERROR_BODY_LIMIT = 8192
# The longest Ollama error message passed on to the client.
_MESSAGE_CHARS = 2000
# How long to wait for Ollama's response headers before committing to a 200 event stream. Ollama rejects unknown
# models and bad requests within milliseconds, so those still get a real HTTP status; a model that is loading
# answers much later, and the client gets `message_start` and pings meanwhile.
HEADER_GRACE = 0.25
# Waits before retrying a refused connection or a 503 from Ollama: bounded, about 1.75 s in all.
RETRY_DELAYS = (0.25, 0.5, 1.0)
_CONTEXT_OVERFLOW = re.compile(r"request \((\d+) tokens\) exceeds the available context size \((\d+) tokens\)")


def ollama_endpoint(ollama_url: str, api_key: str | None = None) -> tuple[httpx.URL, dict[str, str]]:
    """The base URL to reach Ollama at, and the credentials every request to it carries, as a header.

    Credentials in the URL (`http://user:pass@host`) become Basic authentication and `api_key` a Bearer token (it
    wins over the URL's). As a default header of the client they go on every request, and they stay out of the URL
    that errors and logs show.
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


# Connections to Ollama per worker: far more than Ollama serves at once (OLLAMA_NUM_PARALLEL, then its queue of
# OLLAMA_MAX_QUEUE, 512 by default), so the cap only bounds a worker's sockets; a request past it waits for a
# connection, watched for its client's disconnect and the idle limit like any other wait for Ollama.
MAX_CONNECTIONS = 1024
# How long a finished answer's connection is kept for the next request. aiohttp keeps every released connection
# (within the cap above) and ignores httpx's `max_keepalive_connections`, so only the expiry is set.
IDLE_EXPIRY = 30.0


def create_client(ollama_url: str, api_key: str | None = None) -> httpx.AsyncClient:
    """The worker's client to Ollama: httpx's API over aiohttp's connection pool and C HTTP parser."""
    # No read timeout: loading a model and reading a long prompt can take minutes, and the stream's own idle
    # watchdog decides when silence means failure. `trust_env=False` keeps HTTP(S)_PROXY settings meant for the
    # internet from rerouting a local Ollama.
    timeout = httpx.Timeout(connect=CONNECT_TIMEOUT, read=None, write=60.0, pool=None)
    limits = httpx.Limits(max_connections=MAX_CONNECTIONS, keepalive_expiry=IDLE_EXPIRY)
    # Why aiohttp's transport rather than httpx's own (h11): docs/ARCHITECTURE.md, "The client to Ollama".
    transport = AiohttpTransport(limits=limits, trust_env=False)
    # The answer is relayed as the raw bytes Ollama sent: a compressing reverse proxy in front of Ollama must not
    # compress it.
    base_url, credentials = ollama_endpoint(ollama_url, api_key)
    headers = {"accept-encoding": "identity", "user-agent": f"ccop/{__version__}", **credentials}
    return httpx.AsyncClient(base_url=base_url, timeout=timeout, transport=transport, headers=headers, trust_env=False)


class OllamaChat:
    """Opens `/api/chat` answers over the worker's client, retrying what a retry cannot make visible.

    Waiting for Ollama's response headers covers model loading and prompt reading, which can take minutes: the
    caller runs `open` under its watchers (client disconnect, idle limit), and cancelling it closes the connection,
    so Ollama stops working on the request.
    """

    def __init__(self, client: httpx.AsyncClient, ollama_url: str) -> None:
        self._client = client
        self._ollama_url = ollama_url
        # Joined once: merging a relative URL with the client's base on every request is a measurable share of it.
        self._url = client.base_url.join("/api/chat")
        self._headers = httpx.Headers({"content-type": "application/json", "accept": "*/*"})

    async def open(
        self,
        body: bytes,
        *,
        on_slow_headers: Callable[[], Awaitable[None]] | None = None,
        may_retry: Callable[[], bool] = lambda: True,
    ) -> httpx.Response:
        """Ollama's streamed response, its headers read (any status: the caller maps errors).

        `on_slow_headers` runs once the headers have taken `HEADER_GRACE` seconds (a streaming answer starts then).
        A refused connection or a 503 "server busy" is retried with backoff while `may_retry()` (the client has
        received nothing: once bytes reached it, a retry could no longer be invisible).
        """
        request = self._client.build_request("POST", self._url, content=body, headers=self._headers)
        for delay in (*RETRY_DELAYS, None):
            try:
                response = await self._send(request, on_slow_headers)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if delay is None or not may_retry():
                    raise unreachable(self._ollama_url, exc) from None
                reason = f"refused the connection ({transport_failure(exc)})"
            except httpx.TransportError as exc:
                raise unreachable(self._ollama_url, exc) from None
            else:
                if response.status_code != 503 or delay is None or not may_retry():
                    return response
                await response.aclose()
                reason = "answered 503"
            logger.info("Ollama %s; retrying in %g s", reason, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt always returns or raises")

    async def _send(
        self, request: httpx.Request, on_slow_headers: Callable[[], Awaitable[None]] | None
    ) -> httpx.Response:
        # Cancelled (or failed) while waiting: cancelling the send closes its connection, so Ollama stops; a response
        # that made it anyway is closed too.
        return await with_grace(self._client.send(request, stream=True), on_slow_headers, _close_unclaimed)


async def with_grace(
    waiting: Awaitable[T],
    on_slow: Callable[[], Awaitable[None]] | None,
    abandoned: Callable[[asyncio.Future[T]], None] | None = None,
) -> T:
    """Await `waiting`; once it has taken `HEADER_GRACE`, run `on_slow` (a stream starts) and go on waiting.

    If the wait is cancelled or fails, `waiting` is cancelled, and `abandoned` sees its outcome once it is settled (a
    result that raced in, which the caller must not leak).
    """
    task = asyncio.ensure_future(waiting)
    try:
        if on_slow is not None:
            done, _ = await asyncio.wait({task}, timeout=HEADER_GRACE)
            if not done:
                await on_slow()
        return await task
    except BaseException:
        task.cancel()
        if abandoned is not None:
            task.add_done_callback(abandoned)
        raise


def _close_unclaimed(sending: asyncio.Future[httpx.Response]) -> None:
    """A response that arrived after its request was abandoned: close it, which closes its connection."""
    if not sending.cancelled() and sending.exception() is None:
        task = asyncio.ensure_future(sending.result().aclose())
        _CLOSING.add(task)
        task.add_done_callback(_CLOSING.discard)


# Tasks are weakly referenced by the loop: this keeps the closing tasks alive until they are done.
_CLOSING: set[asyncio.Future[None]] = set()


def transport_failure(exc: Exception) -> str:
    """Why a request to Ollama failed, in the operating system's words when there are some.

    aiohttp wraps a refused connection as "Cannot connect to host … ssl:default [Connect call failed …]"; the
    socket error underneath is what tells the user something.
    """
    innermost: BaseException = exc
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and str(cause):
            innermost = cause  # aiohttp's connector error is an OSError too: the one underneath it says more
        cause = cause.__cause__ or cause.__context__
    return str(innermost) or type(exc).__name__


def unreachable(ollama_url: str, exc: Exception) -> UpstreamError:
    reason = transport_failure(exc)
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
