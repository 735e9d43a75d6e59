"""``OllamaDouble``: the public face of the double — its models, the script of replies, the recordings — and the
routes and scheduler simulation of an Ollama server. Every method meant for the test thread is thread-safe."""

from __future__ import annotations

import asyncio
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

    ``num_parallel`` limits how many chat responses are produced at once (``OLLAMA_NUM_PARALLEL``); further requests
    wait for a free slot, as Ollama's scheduler queues them. ``None`` is no limit.
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
    ) -> None:
        self.version = version
        self.default_num_ctx = default_num_ctx
        self.num_parallel = num_parallel
        self._host = host
        self._server = BackgroundServer(self._handle, host, port)
        self._cond = threading.Condition()
        self._models = {name_key(spec.name): spec for spec in (default_models() if models is None else models)}
        self._queue: list[_Queued] = []
        self._responder: Responder | None = None
        self._requests: list[RecordedRequest] = []
        self._streams: list[ChatStream] = []
        self._loaded: dict[str, tuple[str, int]] = {}
        self._loads: list[tuple[str, int]] = []
        self._internal_errors: list[str] = []
        self._active = 0
        self._max_active = 0

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    def start(self) -> OllamaDouble:
        """Bind and serve in a background thread; returns once the port accepts connections."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Close every connection (hanging streams included), stop the loop and join the thread."""
        self._server.stop()

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

    # -- configuration (thread-safe) ---------------------------------------------------------------------------------

    def add_model(self, spec: ModelSpec) -> None:
        """Install (or replace) a model."""
        with self._cond:
            self._models[name_key(spec.name)] = spec

    def remove_model(self, name: str) -> None:
        with self._cond:
            self._models.pop(name_key(name), None)
            self._loaded.pop(name_key(name), None)

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
        """Forget queued replies, the responder, recordings, loaded models and counters (installed models stay)."""
        with self._cond:
            self._queue.clear()
            self._responder = None
            self._requests.clear()
            self._streams.clear()
            self._loaded.clear()
            self._loads.clear()
            self._internal_errors.clear()
            self._max_active = self._active
            self._cond.notify_all()

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
            return self._cond.wait_for(lambda: self._active == 0, timeout)

    @property
    def active_streams(self) -> int:
        """Chat responses being produced right now (streaming or not)."""
        with self._cond:
            return self._active

    @property
    def max_active_streams(self) -> int:
        """The highest ``active_streams`` seen since start or the last ``reset()``."""
        with self._cond:
            return self._max_active

    def wait_for_active_streams(self, n: int, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._active >= n, timeout)

    @property
    def loaded_models(self) -> dict[str, int]:
        """The models with a (simulated) runner: model name → the ``num_ctx`` it was loaded with."""
        with self._cond:
            return dict(self._loaded.values())

    @property
    def model_loads(self) -> list[tuple[str, int]]:
        """Each simulated (re)load as ``(model, num_ctx)``: a new entry per change of ``num_ctx``, as Ollama reloads."""
        with self._cond:
            return list(self._loads)

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

    def _prepare_chat(self, raw: bytes) -> tuple[Json, int | None]:
        """ChatHandler's checks and the scheduling, in its order: the request, and the load time of its model
        (``None`` when the request has no messages, which only loads the model)."""
        data = validation.decode_object(raw)
        validation.check_request(data)
        name: str = data["model"]
        if not valid_model_name(name):
            raise ChatError(400, "invalid model name")
        spec = self.get_model(name)
        if spec is None:
            raise ChatError(404, f"model '{name}' not found")
        validation.check_capabilities(data, spec)
        options = data.get("options") or {}
        validation.check_options(options)
        num_ctx = self._effective_num_ctx(spec, options)
        load_ns = self._load(spec, num_ctx)
        if not any(m is not None for m in data.get("messages") or []):
            return data, None
        validation.check_prompt(data, estimate_prompt_tokens(data), num_ctx)
        return data, load_ns

    def _effective_num_ctx(self, spec: ModelSpec, options: Json) -> int:
        """Request option > Modelfile parameter > server default, capped at the training context."""
        requested = options.get("num_ctx")
        if requested is not None:
            num_ctx = int(requested)  # Go truncates integer options sent as floats
        else:
            num_ctx = spec.num_ctx if spec.num_ctx is not None else self.default_num_ctx
        return min(num_ctx, spec.context_length) if spec.context_length > 0 else num_ctx

    def _load(self, spec: ModelSpec, num_ctx: int) -> int:
        """Simulate the scheduler: (re)load when the runner is missing or its num_ctx differs; returns load ns."""
        key = name_key(spec.name)
        with self._cond:
            reloaded = self._loaded.get(key) != (spec.name, num_ctx)
            if reloaded:
                self._loads.append((spec.name, num_ctx))
            self._loaded[key] = (spec.name, num_ctx)
        return 1_500_000_000 if reloaded else 21_000_000

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
            data, load_ns = self._prepare_chat(req.body)
        except ChatError as exc:
            await conn.answer(exc.status, JSON_TYPE, orjson.dumps({"error": exc.message}))
            return
        if load_ns is None:
            await conn.answer(200, JSON_TYPE, orjson.dumps(bare_done(data["model"], "load")))
            return
        reply = self._next_reply(data)
        record = ChatStream(request_index, data["model"], data.get("stream") is not False, time.monotonic())
        conn.start_watching()
        try:
            await self._generate(conn, record, reply, ChatContext(data["model"], data, load_ns))
        finally:
            await conn.stop_watching()

    async def _generate(self, conn: HttpConnection, record: ChatStream, reply: Reply, ctx: ChatContext) -> None:
        """Produce the response in a slot, keeping ``record`` and the active-stream count true whatever happens."""
        with self._cond:
            self._streams.append(record)
        try:
            async with _Slot(self, conn) as slot:

                def finish() -> None:
                    # Also called just before the write that completes the response: the client may act on those
                    # bytes (and a test inspect the records) before this thread runs again.
                    with self._cond:
                        if not record.client_disconnected and record.finished_at is None:
                            record.completed = True
                            record.finished_at = time.monotonic()
                    slot.release()

                write_reply = stream_reply if record.stream else single_reply
                await write_reply(Streamer(conn, record, self._cond, finish), reply, ctx)
                finish()
        except ClientGone:
            with self._cond:
                record.completed = False
                record.client_disconnected = True
                record.disconnected_at = record.finished_at = time.monotonic()
                self._cond.notify_all()
            raise


class _Slot:
    """One of the runner's parallel slots, held while a chat response is produced.

    Counted in ``active_streams`` while held; with ``num_parallel`` set, a request waits (noticing its client
    leaving) until one is free. The slot is given back exactly once, whether the response completed, its client left
    or ``stop()`` cancelled it.
    """

    def __init__(self, double: OllamaDouble, conn: HttpConnection) -> None:
        self.double = double
        self.conn = conn
        self.held = False

    def _take(self) -> bool:
        double = self.double
        if double.num_parallel is not None and double._active >= double.num_parallel:
            return False
        double._active += 1
        double._max_active = max(double._max_active, double._active)
        double._cond.notify_all()
        self.held = True
        return True

    async def __aenter__(self) -> _Slot:
        while True:
            with self.double._cond:
                if self._take():
                    return self
            if self.conn.gone:
                raise ClientGone
            await asyncio.sleep(0.01)

    def release(self) -> None:
        with self.double._cond:
            if self.held:
                self.held = False
                self.double._active -= 1
                self.double._cond.notify_all()

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()
