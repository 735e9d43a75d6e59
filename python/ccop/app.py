"""The ASGI application: routing, the worker's lifespan, and one log line per request.

`create_app()` is the factory Granian calls in every worker process. The worker's pool of Ollama hosts (one
`httpx.AsyncClient` each) is opened in the ASGI lifespan and closed with it, so connections to Ollama are pooled
across requests.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import httpx
import orjson

from ccop import __version__, metrics
from ccop._types import Receive, Scope, Send
from ccop.calibration import Calibration
from ccop.dispatch import Dispatcher
from ccop.errors import InvalidRequest, MethodNotAllowed, ModelNotFound, NotFound, ProxyError, UpstreamError
from ccop.hosts import HostPool, OllamaHost
from ccop.logs import configure_logging, printable
from ccop.messages import MessagesService, RequestRecord
from ccop.model_facts import InstalledModel, ModelCatalog
from ccop.models_endpoint import find_entry, list_page, model_entries
from ccop.responses import ClientDisconnected, read_body, send_bytes, send_error, send_json
from ccop.scheduler_service import worker_scheduler
from ccop.security import (
    check_api_key,
    check_host,
    check_origin,
    cors_headers,
    header,
    is_loopback,
    preflight_headers,
    require_json,
    with_cors,
)
from ccop.settings import Settings, model_key, redacted_url
from ccop.streaming import watch_shutdown
from ccop.upstream import transport_failure, unreachable

__all__ = ["ProxyApp", "create_app"]

logger = logging.getLogger("ccop.access")

Handler = Callable[["ProxyApp", Scope, Receive, Send, str, RequestRecord], Awaitable[None]]


class ProxyApp:
    """One worker's application; an ASGI 3 callable."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.calibration = Calibration(enabled=settings.token_counting == "calibrated")
        self._hosts: HostPool | None = None
        self._messages: MessagesService | None = None
        self._catalog: ModelCatalog | None = None
        # On loopback only a page's DNS rebinding brings a foreign Host; a user who binds beyond it chose the network.
        self._check_host = is_loopback(settings.host)
        # Ollama models the configuration names: a request for one is counted under its name even when it failed.
        self._known_models = frozenset(
            name for name in (settings.default_model, settings.thinking_model, *settings.model_map.values()) if name
        )

    # -- lifespan ------------------------------------------------------------------------------------------------

    async def startup(self) -> None:
        self._open()
        # Only in a served worker (the lifespan runs): SIGTERM then gives running answers their grace period.
        watch_shutdown(self.settings.shutdown_grace)

    def _open(self) -> HostPool:
        pool = HostPool.from_settings(self.settings)
        self._hosts = pool
        self._catalog = pool.primary.catalog
        dispatcher = Dispatcher(pool, worker_scheduler(self.settings))
        self._messages = MessagesService(self.settings, dispatcher, self.calibration)
        return pool

    async def shutdown(self) -> None:
        if self._hosts is not None:
            await self._hosts.aclose()
            self._hosts = None

    @property
    def hosts(self) -> HostPool:
        if self._hosts is None:
            # Servers without lifespan support (or a test calling the app directly) still get working clients.
            return self._open()
        return self._hosts

    @property
    def client(self) -> httpx.AsyncClient:
        """The primary host's client."""
        return self.hosts.primary.client

    @property
    def catalog(self) -> ModelCatalog:
        _ = self.hosts
        assert self._catalog is not None
        return self._catalog

    @property
    def messages(self) -> MessagesService:
        _ = self.hosts
        assert self._messages is not None
        return self._messages

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # pragma: no cover - reported to the server, which stops the worker
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- requests ------------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.monotonic()
        request_id = "req_" + secrets.token_hex(12)
        method: str = scope["method"]
        path: str = scope["path"]
        record = RequestRecord(
            request_class=_request_class(scope),
            session=_claude_code_id(scope, b"x-claude-code-session-id"),
            agent=_claude_code_id(scope, b"x-claude-code-agent-id"),
        )
        status = 200
        head = method == "HEAD"
        cors = cors_headers(scope, self.settings.cors_origins)
        if cors:
            send = with_cors(send, cors)
            if method == "OPTIONS" and header(scope, b"access-control-request-method"):
                await send_bytes(send, 204, b"", headers=preflight_headers(scope))
                self._finished(request_id, method, path, 204, record, started)
                return
        try:
            self._admit(scope, path)
            handler = self._route(method, path)
            await handler(self, scope, receive, send, request_id, record)
        except ProxyError as raised:
            error = _for_client(raised, scope)
            status = error.status
            record.failed(raised)
            record.outcome = error.message
            await send_error(send, error, request_id, head=head)
            # `error` may be `raised`, whose traceback holds this frame: without this, every error answered would
            # leave a reference cycle (with the request's parsed body in it) for the garbage collector.
            del error
        except ClientDisconnected:
            status = 499
            record.outcome = "client disconnected while sending the request"
        except Exception:
            logger.exception("%s %s %s failed", request_id, method, path)
            status = 500
            record.outcome, record.error_kind = "internal error", "internal_error"
            internal = ProxyError(f"internal proxy error ({request_id}); the proxy log has the details")
            try:
                await send_error(send, internal, request_id, head=head)
            except Exception:
                pass
        finally:
            self._finished(request_id, method, path, status, record, started)

    def _admit(self, scope: Scope, path: str) -> None:
        """The checks before any handler runs: the Host (DNS rebinding), the web origin, the API key."""
        if self._check_host:
            check_host(scope, self.settings.allowed_hosts)
        check_origin(scope, self.settings.cors_origins)
        if self.settings.api_key and _canonical_path(path) != "/health":
            check_api_key(scope, self.settings.api_key)

    def _route(self, method: str, path: str) -> Handler:
        path = _canonical_path(path)
        methods = ROUTES.get(path)
        if methods is None and path.startswith("/v1/models/"):
            methods = {"GET": _model}
        if methods is None:
            raise NotFound(
                f"no route for {method} {path}; this proxy serves /v1/messages and /v1/messages/count_tokens"
            )
        handler = methods.get(method)
        if handler is None and method == "HEAD":
            handler = methods.get("GET")
        if handler is None:
            allowed = ", ".join(sorted(methods))
            raise MethodNotAllowed(
                f"method {method} is not allowed on {path}; use {allowed}", headers=((b"allow", allowed.encode()),)
            )
        return handler

    def _finished(
        self, request_id: str, method: str, path: str, status: int, record: RequestRecord, started: float
    ) -> None:
        """A request is over: its access log line and its metrics."""
        self._log(request_id, method, path, status, record, started)
        metrics.observe_request(record, _endpoint(path), status, started, self._known_models)

    def _log(self, request_id: str, method: str, path: str, status: int, record: RequestRecord, started: float) -> None:
        if not logger.isEnabledFor(logging.INFO):
            return
        elapsed_ms = (time.monotonic() - started) * 1000
        tokens = ""
        if record.input_tokens is not None or record.output_tokens is not None:
            tokens = f" in={record.input_tokens if record.input_tokens is not None else '-'}"
            tokens += f" out={record.output_tokens if record.output_tokens is not None else '-'}"
        model = (
            f" model={printable(record.model, 200)}->{printable(record.ollama_model, 200)}"
            if record.model != "-"
            else ""
        )
        outcome = f" ({record.outcome})" if record.outcome != "ok" else ""
        label = f" class={record.request_class}" if record.request_class != "-" else ""
        if len(self.settings.ollama_urls) > 1 and record.host != "-":
            label += f" host={redacted_url(record.host)}"
        if record.waited >= 0.001:
            label += f" queued={record.waited * 1000:.0f}ms"
        attributes = record.log_attributes(request_id)
        attributes.update(
            method=method, path=path, status=status, duration_ms=round(elapsed_ms), outcome=record.outcome
        )
        if record.host != "-":
            attributes.update(host=redacted_url(record.host), queued_ms=round(record.waited * 1000))
        if record.input_tokens is not None or record.output_tokens is not None:
            attributes.update(input_tokens=record.input_tokens, output_tokens=record.output_tokens)
        logger.info(
            "%s %s %s %d%s%s%s %.0fms%s",
            request_id,
            method,
            path,
            status,
            label,
            model,
            tokens,
            elapsed_ms,
            outcome,
            extra=attributes,
        )


# -- handlers ------------------------------------------------------------------------------------------------------


async def _root(app: ProxyApp, scope: Scope, receive: Receive, send: Send, request_id: str, _: RequestRecord) -> None:
    urls = ", ".join(redacted_url(url) for url in app.settings.ollama_urls)
    body = f"ccop {__version__} is running; Anthropic Messages API -> Ollama at {urls}\n"
    await send_bytes(
        send, 200, body.encode(), content_type=b"text/plain; charset=utf-8", head=scope["method"] == "HEAD"
    )


async def _health(app: ProxyApp, scope: Scope, receive: Receive, send: Send, request_id: str, _: RequestRecord) -> None:
    head = scope["method"] == "HEAD"
    if app.settings.api_key and not _has_api_key(scope, app.settings.api_key):
        # Open without the key, so monitors can watch it, but then it tells nothing about the set-up.
        await send_json(send, 200, {"status": "ok"}, head=head)
        return
    hosts = list(await asyncio.gather(*(_host_health(host) for host in app.hosts.hosts)))
    # `ollama` is the primary host, as before there were several; `hosts` has every one.
    ollama = hosts[0]
    body: dict[str, object] = {
        "status": "ok",
        "version": __version__,
        "pid": os.getpid(),
        "ollama": ollama,
        "hosts": hosts,
        # What `ccop claude` compares before reusing this proxy: the window Claude Code is told must be the one sent.
        "settings": {
            "ollama_url": ollama["url"],
            "ollama_urls": [host["url"] for host in hosts],
            "default_model": app.settings.default_model,
            "num_ctx": app.settings.num_ctx,
            "model_num_ctx": dict(app.settings.model_num_ctx),
        },
        "calibration": app.calibration.snapshot(),
        # How often the models' tool calls needed repair, per kind ("unchanged": arguments arrived as an object).
        "tool_calls": dict(sorted(app.messages.tool_calls.items())),
        "queue": await _queue(app),
    }
    if not any(host["reachable"] for host in hosts):
        # Still a working proxy (requests get a clear 502), but not one that can answer them.
        body["status"] = "degraded"
        body["reason"] = "; ".join(f"Ollama is not reachable at {host['url']} ({host['error']})" for host in hosts)
    await send_json(send, 200, body, head=head)


async def _host_health(host: OllamaHost) -> dict[str, object]:
    """One host's line in `/health`: reachable now (asked), its version, and whether requests are sent to it."""
    state: dict[str, object] = {"url": host.display_url, "reachable": False}
    try:
        response = await host.client.get("/api/version", timeout=2.0)
        state["reachable"] = response.status_code == 200
        if response.status_code == 200:
            state["version"] = orjson.loads(response.content).get("version")
        else:
            state["error"] = f"/api/version answered HTTP {response.status_code}"
    except (httpx.HTTPError, orjson.JSONDecodeError, AttributeError) as exc:
        state["error"] = transport_failure(exc)
    state["healthy"] = host.healthy
    if not host.healthy:
        state["out_for_seconds"] = round(host.out_for, 1)
        state["last_error"] = host.last_error
    return state


def _has_api_key(scope: Scope, api_key: str) -> bool:
    try:
        check_api_key(scope, api_key)
    except ProxyError:
        return False
    return True


async def _queue(app: ProxyApp) -> dict[str, object]:
    """The scheduler's counts (shared by all workers with --workers N): requests running at Ollama and waiting, by
    class. No session ids: /health is for monitors."""
    try:
        snapshot = app.messages.dispatcher.scheduler.snapshot()
        if inspect.isawaitable(snapshot):
            snapshot = await snapshot
    except ProxyError as error:
        return {"error": error.message}
    waiting = Counter(entry["class"] for entry in snapshot["waiting"])
    return {
        "in_flight": snapshot["totals"]["in_flight"],
        "waiting": snapshot["totals"]["waiting"],
        "waiting_by_class": dict(sorted(waiting.items())),
        "max_queue": snapshot["totals"]["max_queue"],
    }


async def _metrics(
    app: ProxyApp, scope: Scope, receive: Receive, send: Send, request_id: str, _: RequestRecord
) -> None:
    """Prometheus exposition, all workers together; the queue is read from the scheduler at each scrape."""
    queue = await _queue(app)
    in_flight, waiting = queue.get("in_flight"), queue.get("waiting_by_class")
    if isinstance(in_flight, int) and isinstance(waiting, dict):  # else the scheduler did not answer
        metrics.observe_queue(in_flight, waiting)
    body = await asyncio.to_thread(metrics.render)
    await send_bytes(send, 200, body, content_type=metrics.CONTENT_TYPE.encode(), head=scope["method"] == "HEAD")


def _endpoint(path: str) -> str:
    """The route a path was served by, as a metrics label: never the path itself, which the client chose."""
    path = _canonical_path(path)
    if path in ROUTES:
        return path
    return "/v1/models/{model_id}" if path.startswith("/v1/models/") else "other"


def _claude_code_id(scope: Scope, name: bytes) -> str:
    """A session or agent id Claude Code sent, as an opaque key: bounded, printable, or "" when absent or odd."""
    raw = header(scope, name)
    if not raw or len(raw) > 128:
        return ""
    value = unquote(raw.decode("latin-1")).strip()
    return value if value.isprintable() else ""


def _request_class(scope: Scope) -> str:
    """Claude Code's label for the request (with CLAUDE_CODE_GATEWAY_HINT_HEADERS=1), made safe for a log line."""
    raw = header(scope, b"x-claude-code-request-class")
    if not raw:
        return "-"
    value = unquote(raw.decode("latin-1")).strip().lower()
    # An open list: unknown labels are logged as they are, but only as a short plain word.
    return value if value and len(value) <= 32 and all(c.isalnum() or c in "-_" for c in value) else "other"


async def _messages(
    app: ProxyApp, scope: Scope, receive: Receive, send: Send, request_id: str, record: RequestRecord
) -> None:
    require_json(scope)
    body = await read_body(receive, app.settings.max_body_size)
    await app.messages.create(body, receive, send, request_id, record)


async def _count_tokens(
    app: ProxyApp, scope: Scope, receive: Receive, send: Send, request_id: str, record: RequestRecord
) -> None:
    require_json(scope)
    body = await read_body(receive, app.settings.max_body_size)
    await app.messages.count_tokens(body, send, request_id, record)


async def _installed_entries(app: ProxyApp) -> list[dict[str, Any]]:
    """The models of every host, each once (first host first), behind the model map's names."""
    hosts = app.hosts.hosts
    answers = await asyncio.gather(*(host.catalog.installed() for host in hosts))
    if all(answer is None for answer in answers):
        if len(hosts) == 1:
            raise unreachable(app.settings.ollama_url, ConnectionError("/api/tags did not answer"))
        urls = ", ".join(host.display_url for host in hosts)
        raise UpstreamError(f"no Ollama answered /api/tags ({urls}). Start them with `ollama serve`.")
    union: dict[str, InstalledModel] = {}
    for installed in answers:
        for model in installed or ():
            union.setdefault(model_key(model.name), model)
    return model_entries(list(union.values()), app.settings.model_map)


async def _models(app: ProxyApp, scope: Scope, receive: Receive, send: Send, request_id: str, _: RequestRecord) -> None:
    page = list_page(await _installed_entries(app), scope.get("query_string", b""))
    await send_json(send, 200, page, head=scope["method"] == "HEAD")


async def _model(app: ProxyApp, scope: Scope, receive: Receive, send: Send, request_id: str, _: RequestRecord) -> None:
    model_id = unquote(_canonical_path(scope["path"]).removeprefix("/v1/models/"))
    entry = find_entry(await _installed_entries(app), model_id)
    await send_json(send, 200, entry, head=scope["method"] == "HEAD")


async def _accepted(
    app: ProxyApp, scope: Scope, receive: Receive, send: Send, request_id: str, _: RequestRecord
) -> None:
    """Telemetry and probes Claude Code sends to its base URL: answered, so they do not turn into 404 floods."""
    await read_body(receive, app.settings.max_body_size)
    await send_json(send, 200, {}, head=scope["method"] == "HEAD")


def _is_claude_code(scope: Scope) -> bool:
    return header(scope, b"x-app") == b"cli" or (header(scope, b"user-agent") or b"").startswith(b"claude-cli/")


def _for_client(error: ProxyError, scope: Scope) -> ProxyError:
    """Adapt an error to what the client will actually show its user.

    Claude Code replaces the message of every 404 with its own generic "There's an issue with the selected model"
    text, which would hide the installed models and the `ollama pull` command; as a 400 it shows our message.
    """
    if isinstance(error, ModelNotFound) and _is_claude_code(scope):
        return InvalidRequest(error.message)
    return error


def _canonical_path(path: str) -> str:
    """Forgive the common base-URL mistakes: `…/v1` as the base (`/v1/v1/messages`) or no `/v1` (`/messages`)."""
    path = path.rstrip("/") or "/"
    if path.startswith("/v1/v1/"):
        return path[3:]
    if path.startswith("/messages"):
        return "/v1" + path
    return path


ROUTES: dict[str, dict[str, Handler]] = {
    "/": {"GET": _root},
    "/health": {"GET": _health},
    "/metrics": {"GET": _metrics},
    "/v1/messages": {"POST": _messages},
    "/v1/messages/count_tokens": {"POST": _count_tokens},
    "/v1/models": {"GET": _models},
    "/api/hello": {"GET": _accepted},
    "/api/event_logging/batch": {"POST": _accepted},
}


def create_app(settings: Settings | None = None) -> ProxyApp:
    """The ASGI app for one worker; without arguments it reads the settings the CLI handed to the workers."""
    resolved = settings or Settings.for_worker()
    configure_logging(resolved.log_threshold, resolved.log_format, resolved.log_file)
    return ProxyApp(resolved)
