"""``OllamaDouble``: the public face of the double — its models, the script of replies, the recordings — and the
routes and scheduler simulation of an Ollama server. Every method meant for the test thread is thread-safe."""

from __future__ import annotations

import asyncio
import contextlib
import http
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

import orjson

from . import validation
from .catalogue import ModelSpec, default_models, name_key, show_body, tags_body, valid_model_name
from .responses import JSON_TYPE, ChatContext, Streamer, single_reply, stream_reply
from .scheduler import Scheduler, Ticket, ps_body
from .script import ChatStream, RecordedRequest, Reply
from .server import BackgroundServer, ClientGone, HttpConnection, HttpRequest
from .validation import ChatError
from .wire import Json, bare_done, estimate_prompt_tokens

Responder = Callable[[Json], Reply]

_DEFAULT_VERSION = "0.33.0"
# Ollama picks num_ctx from free VRAM when neither the request nor the Modelfile sets it; 4096 is the (<24 GiB) value.
_DEFAULT_NUM_CTX = 4096
_TEXT_TYPE = "text/plain; charset=utf-8"
_ROUTES: dict[str, tuple[str, ...]] = {
    "/": ("GET", "HEAD"),
    "/api/version": ("GET", "HEAD"),
    "/api/tags": ("GET", "HEAD"),
    "/api/ps": ("GET",),
    "/api/show": ("POST",),
    "/api/chat": ("POST",),
}


@dataclass
class _Queued:
    reply: Reply
    model_key: str | None


class OllamaDouble:
    """An Ollama server double on 127.0.0.1, started in a background thread.

    Usage::

        with OllamaDouble() as ollama:
            ollama.enqueue(Reply(content="Hi!"))
            ... point the proxy at ollama.url ...
            assert ollama.chat_requests()[0]["model"] == "qwen3:8b"

    The scheduler is Ollama's (see ``scheduler``): ``num_parallel`` is ``OLLAMA_NUM_PARALLEL``, the slots of each
    loaded model, with further requests served strictly in arrival order (``None``: no limit);
    ``max_loaded_models`` is ``OLLAMA_MAX_LOADED_MODELS`` (``None``: no limit); ``load_seconds`` is how long a load
    holds back the response head; ``default_keep_alive`` (seconds) is ``OLLAMA_KEEP_ALIVE``.
    """

    def __init__(
        self,
        models: Iterable[ModelSpec] | None = None,
        *,
        version: str = _DEFAULT_VERSION,
        default_num_ctx: int = _DEFAULT_NUM_CTX,
        host: str = "127.0.0.1",
        port: int = 0,
        num_parallel: int | None = None,
        max_loaded_models: int | None = None,
        load_seconds: float = 0.0,
        default_keep_alive: float = 300.0,
    ) -> None:
        self.version = version
        self.default_num_ctx = default_num_ctx
        self.default_keep_alive = default_keep_alive
        self._host = host
        self._server = BackgroundServer(self._handle, host, port)
        self._cond = threading.Condition()
        self._sched = Scheduler(self._cond.notify_all)
        self.num_parallel = num_parallel
        self.max_loaded_models = max_loaded_models
        self.load_seconds = load_seconds
        self._models = {name_key(spec.name): spec for spec in (default_models() if models is None else models)}
        self._queue: list[_Queued] = []
        self._responder: Responder | None = None
        self._requests: list[RecordedRequest] = []
        self._streams: list[ChatStream] = []
        self._internal_errors: list[str] = []
        self._failure: tuple[int, str] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    def start(self) -> OllamaDouble:
        """Bind and serve in a background thread; returns once the port accepts connections.

        After a ``stop()``, starting again binds the same port: a host that went down and came back.
        """
        self._server.start()
        return self

    def stop(self) -> None:
        """Close every connection (hanging streams included), stop the loop and join the thread.

        Connections are refused until ``start()``; like a restarted Ollama, the double then has no model loaded.
        """
        self._server.stop()
        with self._cond:
            self._sched.clear()
            self._cond.notify_all()

    def __enter__(self) -> OllamaDouble:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server.port is None:
            raise RuntimeError("OllamaDouble is not running")
        return self._server.port

    @property
    def url(self) -> str:
        """Base URL to give the proxy, e.g. ``http://127.0.0.1:43121`` (no trailing slash)."""
        return f"http://{self._host}:{self.port}"

    # -- scheduler settings and runners (thread-safe) ----------------------------------------------------------------

    @property
    def num_parallel(self) -> int | None:
        return self._sched.num_parallel

    @num_parallel.setter
    def num_parallel(self, value: int | None) -> None:
        with self._cond:
            self._sched.num_parallel = value
        self._kick()

    @property
    def max_loaded_models(self) -> int | None:
        return self._sched.max_loaded_models

    @max_loaded_models.setter
    def max_loaded_models(self, value: int | None) -> None:
        with self._cond:
            self._sched.max_loaded_models = value
        self._kick()

    @property
    def load_seconds(self) -> float:
        return self._sched.load_seconds

    @load_seconds.setter
    def load_seconds(self, value: float) -> None:
        with self._cond:
            self._sched.load_seconds = value

    def load(self, name: str, *, num_ctx: int | None = None, keep_alive: float | str | None = None) -> None:
        """Have ``name`` loaded now, without load time, as if an earlier request had loaded it (it counts in
        ``model_loads``). Makes room like Ollama; ``RuntimeError`` if the room (or the model's own runner, for a
        different ``num_ctx``) is in use."""
        spec = self.get_model(name)
        if spec is None:
            raise KeyError(name)
        ctx = self._effective_num_ctx(spec, {} if num_ctx is None else {"num_ctx": num_ctx})
        keep_ns = validation.keep_alive_ns(keep_alive, self._default_keep_alive_ns)
        with self._cond:
            self._sched.sweep()
            runner = self._sched.runners.get(name_key(spec.name))
            if runner is None or runner.num_ctx != ctx:
                runner = self._sched.load(spec, ctx, keep_ns, ready=True)
                if runner is None:
                    raise RuntimeError(f"cannot load {spec.name}: the runners it would replace are in use")
            runner.keep_alive_ns = keep_ns
            if runner.refs == 0:
                self._sched.idle(runner)
            self._cond.notify_all()
        self._kick()

    def unload(self, name: str) -> None:
        """Unload ``name`` as ``keep_alive:0`` does: now if idle, else once its last request is done."""
        with self._cond:
            self._sched.unload(name_key(name))
            self._cond.notify_all()
        self._kick()

    def ps(self) -> Json:
        """The body ``GET /api/ps`` would answer now."""
        with self._cond:
            self._sched.sweep()
            return ps_body(list(self._sched.runners.values()))

    def fail_with(self, status: int | None, message: str | None = None) -> None:
        """Answer every request with ``status`` and ``{"error": message}`` (a host failing before any token);
        ``None`` restores normal service. ``reset()`` also restores it."""
        with self._cond:
            if status is None:
                self._failure = None
            else:
                self._failure = (status, message if message is not None else http.HTTPStatus(status).phrase.lower())

    def _kick(self) -> None:
        """Let the scheduler act on a change made from the test thread (on the loop, where its futures live)."""
        loop = self._server.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is closing: nothing is waiting any more
                loop.call_soon_threadsafe(self._dispatch)

    def _dispatch(self) -> None:
        with self._cond:
            self._sched.dispatch()

    @property
    def _default_keep_alive_ns(self) -> int:
        return validation.keep_alive_ns(self.default_keep_alive, 0)

    # -- configuration (thread-safe) ---------------------------------------------------------------------------------

    def add_model(self, spec: ModelSpec) -> None:
        """Install (or replace) a model."""
        with self._cond:
            self._models[name_key(spec.name)] = spec

    def remove_model(self, name: str) -> None:
        with self._cond:
            self._models.pop(name_key(name), None)
            self._sched.forget(name_key(name))

    def get_model(self, name: str) -> ModelSpec | None:
        """Look a model up as Ollama does (case-insensitive, ``:latest`` implied)."""
        with self._cond:
            return self._models.get(name_key(name))

    @property
    def models(self) -> list[ModelSpec]:
        with self._cond:
            return list(self._models.values())

    def enqueue(self, *replies: Reply, model: str | None = None) -> None:
        """Queue replies for the next ``/api/chat`` calls (FIFO).

        With ``model``, the replies are kept for requests naming that model; a request takes the oldest queued reply
        that is either unkeyed or keyed to its model. Requests that fail validation or only load a model consume none.
        """
        key = name_key(model) if model is not None else None
        with self._cond:
            self._queue.extend(_Queued(reply, key) for reply in replies)

    def pending_replies(self) -> int:
        with self._cond:
            return len(self._queue)

    def set_responder(self, responder: Responder | None) -> None:
        """Answer requests that find nothing queued with ``responder(request_json)``; ``None`` restores the default.

        The responder runs on the double's event-loop thread; it must not block for long.
        """
        with self._cond:
            self._responder = responder

    def reset(self) -> None:
        """Forget queued replies, the responder, recordings, loaded models, counters and ``fail_with`` (installed
        models and scheduler settings stay)."""
        with self._cond:
            self._queue.clear()
            self._responder = None
            self._requests.clear()
            self._streams.clear()
            self._internal_errors.clear()
            self._failure = None
            self._sched.forget()
            self._sched.loads.clear()
            self._sched.max_active = self._sched.active
            self._sched.max_active_per_model = dict(self._sched.active_per_model)
            self._cond.notify_all()
        self._kick()

    # -- recordings (thread-safe snapshots) --------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, in arrival order (a snapshot)."""
        with self._cond:
            return list(self._requests)

    def chat_requests(self) -> list[Any]:
        """The decoded JSON bodies of the ``/api/chat`` calls, in arrival order."""
        with self._cond:
            return [r.json for r in self._requests if r.path == "/api/chat" and r.json is not None]

    def wait_for_requests(self, n: int, timeout: float = 5.0, *, path: str | None = None) -> bool:
        """Block until at least ``n`` requests (to ``path`` if given) have arrived; ``False`` on timeout."""

        def enough() -> bool:
            return sum(1 for r in self._requests if path is None or r.path == path) >= n

        with self._cond:
            return self._cond.wait_for(enough, timeout)

    @property
    def chat_streams(self) -> list[ChatStream]:
        """One record per ``/api/chat`` response that reached generation (copies)."""
        with self._cond:
            return [replace(s) for s in self._streams]

    @property
    def client_disconnects(self) -> list[ChatStream]:
        """The chat responses whose client closed the connection before the response was finished."""
        with self._cond:
            return [replace(s) for s in self._streams if s.client_disconnected]

    def wait_for_disconnect(self, timeout: float = 5.0, count: int = 1) -> bool:
        """Block until ``count`` chat responses were cut off by their client; ``False`` on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: sum(1 for s in self._streams if s.client_disconnected) >= count, timeout)

    def wait_for_streams_finished(self, timeout: float = 5.0) -> bool:
        """Block until no chat response is in progress."""
        with self._cond:
            return self._cond.wait_for(lambda: self._sched.active == 0, timeout)

    @property
    def active_streams(self) -> int:
        """Chat responses holding a slot right now (streaming or not)."""
        with self._cond:
            return self._sched.active

    @property
    def max_active_streams(self) -> int:
        """The highest ``active_streams`` seen since start or the last ``reset()``."""
        with self._cond:
            return self._sched.max_active

    def max_active_streams_per_model(self) -> dict[str, int]:
        """Per model, the most responses that held a slot at once since start or the last ``reset()``."""
        with self._cond:
            return dict(self._sched.max_active_per_model)

    def wait_for_active_streams(self, n: int, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._sched.active >= n, timeout)

    def queued_requests(self) -> int:
        """Chat requests waiting for a runner, for its load, or for a slot."""
        with self._cond:
            waiting_for_runner = sum(len(r.queue) for r in [*self._sched.runners.values(), *self._sched.retired])
            return len(self._sched.pending) + waiting_for_runner

    def wait_for_queued(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least ``n`` chat requests are waiting in the scheduler; ``False`` on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.queued_requests() >= n, timeout)

    @property
    def loaded_models(self) -> dict[str, int]:
        """The models with a (simulated) runner: model name → the ``num_ctx`` it was loaded with."""
        with self._cond:
            self._sched.sweep()
            return {runner.spec.name: runner.num_ctx for runner in self._sched.runners.values()}

    @property
    def model_loads(self) -> list[tuple[str, int]]:
        """Each simulated (re)load as ``(model, num_ctx)``: a new entry per change of ``num_ctx``, as Ollama reloads."""
        with self._cond:
            return list(self._sched.loads)

    def keep_alives(self) -> list[Any]:
        """The ``keep_alive`` each ``/api/chat`` request sent, as sent (``None`` when absent), in arrival order."""
        with self._cond:
            chats = [r.json for r in self._requests if r.path == "/api/chat" and isinstance(r.json, dict)]
        return [body.get("keep_alive") for body in chats]

    @property
    def internal_errors(self) -> list[str]:
        """Tracebacks of bugs in the double or a responder (answered 500); tests may assert this stays empty."""
        with self._cond:
            return list(self._internal_errors)

    # -- routing -----------------------------------------------------------------------------------------------------

    def _record(self, req: HttpRequest) -> int:
        try:
            parsed = orjson.loads(req.body) if req.body else None
        except orjson.JSONDecodeError:
            parsed = None
        recorded = RecordedRequest(
            req.method, req.path, req.query, dict(req.headers), req.body, parsed, time.monotonic(), peer=req.peer
        )
        with self._cond:
            self._requests.append(recorded)
            self._cond.notify_all()
            return len(self._requests) - 1

    async def _handle(self, conn: HttpConnection, req: HttpRequest) -> bool:
        """Serve one request; returns whether the connection may carry another one."""
        request_index = self._record(req)
        with self._cond:
            failure = self._failure
        if failure is not None:
            await conn.answer(failure[0], JSON_TYPE, orjson.dumps({"error": failure[1]}))
            return True
        allowed = _ROUTES.get(req.path)
        if allowed is None or req.method not in allowed:
            # Ollama's gin router has HandleMethodNotAllowed on.
            status, text = (404, "404 page not found") if allowed is None else (405, "405 method not allowed")
            await conn.answer(status, _TEXT_TYPE, text.encode())
            return True
        try:
            await self._route(conn, req, request_index)
        except (ClientGone, asyncio.CancelledError):
            raise
        except Exception:
            # A bug in the double or a responder: answer like Ollama's 500 and keep the traceback for the test.
            text = traceback.format_exc()
            with self._cond:
                self._internal_errors.append(text)
            if not conn.gone and not conn.response_started:
                error = {"error": f"ollama double internal error: {text.splitlines()[-1]}"}
                await conn.answer(500, JSON_TYPE, orjson.dumps(error))
            return False
        return True

    async def _route(self, conn: HttpConnection, req: HttpRequest, request_index: int) -> None:
        is_head = req.method == "HEAD"
        if req.path == "/":
            await conn.answer(200, _TEXT_TYPE, b"Ollama is running", is_head=is_head)
        elif req.path == "/api/version":
            await conn.answer(200, JSON_TYPE, orjson.dumps({"version": self.version}), is_head=is_head)
        elif req.path == "/api/tags":
            body = tags_body(self.models, self.version)
            await conn.answer(200, JSON_TYPE, orjson.dumps(body), is_head=is_head)
        elif req.path == "/api/ps":
            await conn.answer(200, JSON_TYPE, orjson.dumps(self.ps()))
        elif req.path == "/api/show":
            status, body = self._show(req.body)
            await conn.answer(status, JSON_TYPE, orjson.dumps(body))
        else:
            await self._chat(conn, req, request_index)

    def _show(self, raw: bytes) -> tuple[int, Json]:
        try:
            data = validation.decode_object(raw)
        except ChatError as exc:
            return exc.status, {"error": exc.message}
        name = data.get("model") or data.get("name") or ""
        if not isinstance(name, str) or not name:
            return 400, {"error": "model is required"}
        spec = self.get_model(name)
        if spec is None:
            return 404, {"error": f"model '{name}' not found"}
        return 200, show_body(spec, self.version)

    # -- /api/chat ---------------------------------------------------------------------------------------------------

    def _check_chat(self, raw: bytes) -> _ChatPlan:
        """ChatHandler's checks before scheduling, in its order; the prompt check, which Ollama makes only once the
        model is loaded, is kept for later."""
        data = validation.decode_object(raw)
        validation.check_request(data)
        name: str = data["model"]
        if not valid_model_name(name):
            raise ChatError(400, "invalid model name")
        keep_alive_ns = validation.keep_alive_ns(data.get("keep_alive"), self._default_keep_alive_ns)
        spec = self.get_model(name)
        if spec is None:
            raise ChatError(404, f"model '{name}' not found")
        validation.check_capabilities(data, spec)
        options = data.get("options") or {}
        validation.check_options(options)
        num_ctx = self._effective_num_ctx(spec, options)
        plan = _ChatPlan(data, spec, num_ctx, keep_alive_ns, any(m is not None for m in data.get("messages") or []))
        if plan.has_messages:
            try:
                validation.check_prompt(data, estimate_prompt_tokens(data), num_ctx)
            except ChatError as exc:
                plan.prompt_error = exc
        return plan

    def _effective_num_ctx(self, spec: ModelSpec, options: Json) -> int:
        """Request option > Modelfile parameter > server default, capped at the training context."""
        requested = options.get("num_ctx")
        if requested is not None:
            num_ctx = int(requested)  # Go truncates integer options sent as floats
        else:
            num_ctx = spec.num_ctx if spec.num_ctx is not None else self.default_num_ctx
        return min(num_ctx, spec.context_length) if spec.context_length > 0 else num_ctx

    def _next_reply(self, data: Json) -> Reply:
        key = name_key(data["model"])
        with self._cond:
            for position, queued in enumerate(self._queue):
                if queued.model_key is None or queued.model_key == key:
                    del self._queue[position]
                    return queued.reply
            responder = self._responder
        if responder is not None:
            return responder(data)
        return Reply(content=f"Hello from {data['model']}.")

    async def _chat(self, conn: HttpConnection, req: HttpRequest, request_index: int) -> None:
        try:
            plan = self._check_chat(req.body)
        except ChatError as exc:
            await conn.answer(exc.status, JSON_TYPE, orjson.dumps({"error": exc.message}))
            return
        model = plan.data["model"]
        if not plan.has_messages and plan.keep_alive_ns == 0:
            # Unloading does not schedule the model; it expires the runner (once idle) and answers at once.
            with self._cond:
                self._sched.unload(name_key(plan.spec.name))
                self._sched.dispatch()
            await conn.answer(200, JSON_TYPE, orjson.dumps(bare_done(model, "unload")))
            return
        generates = plan.has_messages and plan.prompt_error is None
        record = None
        if generates:
            record = ChatStream(
                request_index, model, plan.data.get("stream") is not False, time.monotonic(), phase="queued"
            )
            record.headers, record.request = dict(req.headers), plan.data
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ticket = Ticket(plan.spec, plan.num_ctx, plan.keep_alive_ns, generates, future, record)
        conn.start_watching()
        try:
            await self._serve_ticket(conn, plan, ticket)
        except ClientGone:
            if record is not None:
                with self._cond:
                    record.completed = False
                    record.client_disconnected = True
                    record.disconnected_at = record.finished_at = time.monotonic()
                    self._cond.notify_all()
            raise
        finally:
            with self._cond:
                self._sched.release(ticket)
            await conn.stop_watching()

    async def _serve_ticket(self, conn: HttpConnection, plan: _ChatPlan, ticket: Ticket) -> None:
        """Wait for the scheduler (model loaded, and a slot if generating), then answer."""
        with self._cond:
            if ticket.record is not None:
                self._streams.append(ticket.record)
            self._sched.submit(ticket)
        if not ticket.future.done():
            assert conn.watcher is not None
            done, _ = await asyncio.wait({ticket.future, conn.watcher}, return_when=asyncio.FIRST_COMPLETED)
            if ticket.future not in done:
                raise ClientGone
        model = plan.data["model"]
        if not plan.has_messages:
            await conn.answer(200, JSON_TYPE, orjson.dumps(bare_done(model, "load")))
        elif plan.prompt_error is not None:
            error = plan.prompt_error
            await conn.answer(error.status, JSON_TYPE, orjson.dumps({"error": error.message}))
        else:
            assert ticket.record is not None
            reply = self._next_reply(plan.data)
            await self._generate(conn, ticket, reply, ChatContext(model, plan.data, ticket.load_ns))

    async def _generate(self, conn: HttpConnection, ticket: Ticket, reply: Reply, ctx: ChatContext) -> None:
        """Produce the response in the ticket's slot."""
        record = ticket.record
        assert record is not None

        def finish() -> None:
            # Also called just before the write that completes the response: the client may act on those bytes (and
            # a test inspect the records) before this thread runs again.
            with self._cond:
                if not record.client_disconnected and record.finished_at is None:
                    record.completed = True
                    record.finished_at = time.monotonic()
                self._sched.release(ticket)

        write_reply = stream_reply if record.stream else single_reply
        await write_reply(Streamer(conn, record, self._cond, finish), reply, ctx)
        finish()


@dataclass
class _ChatPlan:
    """A checked chat request: what to schedule, and the prompt error to answer once the model is loaded."""

    data: Json
    spec: ModelSpec
    num_ctx: int
    keep_alive_ns: int
    has_messages: bool
    prompt_error: ChatError | None = None
