"""`POST /v1/messages` and `POST /v1/messages/count_tokens`: from a request body to a finished answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from ccop._core import InvalidJsonError, StreamTranslator, count_request_tokens
from ccop._types import Receive, Send
from ccop.calibration import Calibration
from ccop.compaction import SUMMARY_ROOM, fit_compaction
from ccop.dispatch import Dispatcher, Opened
from ccop.errors import InvalidRequest, ProxyError, UpstreamError
from ccop.hosts import HostPool
from ccop.metrics import error_kind, error_kind_of_type, observe_tool_repairs, stream_in_flight
from ccop.model_facts import ModelCatalog, ModelInfo, not_installed
from ccop.model_names import map_model
from ccop.output_limit import OutputLimit
from ccop.responses import send_bytes, send_json
from ccop.scheduler import Admission
from ccop.settings import Settings, model_key
from ccop.streaming import (
    ClientGone,
    RelayOutcome,
    SseStream,
    drain,
    idle_watchdog,
    relay,
    run_watched,
    watch_disconnect,
)
from ccop.translate import ChatPlan, ModelTraits, build_chat_request
from ccop.upstream import error_from_response, read_error_body
from ccop.validation import parse_request_body, validate_count_tokens_request, validate_messages_request

__all__ = ["MessagesService", "RequestRecord"]

logger = logging.getLogger("ccop.messages")

# How much of a request body a --verbose log line shows.
_DEBUG_BYTES = 20_000
# Counting a body this large is worth moving off the event loop (the Rust counter releases the interpreter).
OFF_LOOP_BYTES = 1 << 20
# Bodies from this size on are prepared one at a time per worker (see `MessagesService.create`).
LARGE_BODY_BYTES = 1 << 20
# How long a request may wait for `/api/ps` before it leaves (Ollama answers it in a millisecond or two, loading or
# not); a slower answer is not waited for, and the request's log lines then claim no load.
_PS_WAIT = 0.1
# Ollama has no data for these; everything else about the answer is in the translator.
_ERROR_STATUS = {"invalid_request_error": 400, "overloaded_error": 529, "not_found_error": 404}


@dataclass
class RequestRecord:
    """What the access log line says about one request."""

    model: str = "-"
    ollama_model: str = "-"
    input_tokens: int | None = None
    output_tokens: int | None = None
    outcome: str = "ok"
    # Claude Code's label for the request (`x-claude-code-request-class`: main, subagent, compaction, …), or "-".
    request_class: str = "-"
    # Claude Code's session and agent ids (`x-claude-code-session-id`, `x-claude-code-agent-id`), or "".
    session: str = ""
    agent: str = ""
    # The Ollama host that served the request, and how long it waited for a slot there.
    host: str = "-"
    waited: float = 0.0
    # For the metrics (metrics.py): a streamed answer; when Ollama's answer began (`time.monotonic()`); how the
    # request failed (one of metrics.OUTCOMES, "" if it did not) and, when Ollama failed, how.
    streamed: bool = False
    first_token_at: float | None = None
    error_kind: str = ""
    upstream_error: str = ""

    def log_attributes(self, request_id: str) -> dict[str, Any]:
        """Who asked for what, as a JSON log line's attributes: only what is known (no "-" placeholders)."""
        attributes: dict[str, Any] = {"request_id": request_id}
        if self.session:
            attributes["session_id"] = self.session
        if self.agent:
            attributes["agent_id"] = self.agent
        if self.request_class != "-":
            attributes["request_class"] = self.request_class
        if self.model != "-":
            attributes.update(model=self.model, ollama_model=self.ollama_model)
        return attributes

    def failed(self, error: ProxyError) -> None:
        """The request ends with `error`."""
        self.outcome = error.message
        self.error_kind = error_kind(error)
        if isinstance(error, UpstreamError) and not self.upstream_error:
            self.upstream_error = "other"


@dataclass
class _Prepared:
    """A request ready for Ollama: what `_run` and the bookkeeping after it need, and nothing of the parsed body."""

    plan: ChatPlan
    translator: StreamTranslator
    ollama_model: str
    raw_estimate: int
    request_id: str
    # The prompt's size as the proxy estimates it (calibrated), for the start line.
    prompt_tokens: int


async def _count(body: bytes) -> int:
    try:
        if len(body) >= OFF_LOOP_BYTES:
            return await asyncio.to_thread(count_request_tokens, body)
        return count_request_tokens(body)
    except InvalidJsonError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


def _timing_first_write(
    write: Callable[[bytes], Awaitable[None]], record: RequestRecord
) -> Callable[[bytes], Awaitable[None]]:
    """`write`, noting on `record` when the first token's frames were handed to the client (for the metrics). One
    comparison per chunk: nothing else is done per token."""

    async def timed(frames: bytes) -> None:
        if record.first_token_at is None:
            record.first_token_at = time.monotonic()
        await write(frames)

    return timed


def _log_start(prepared: _Prepared, record: RequestRecord) -> None:
    """The line that says a request is on its way to Ollama (the access line says when it is over)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    attributes = record.log_attributes(prepared.request_id)
    attributes.update(prompt_tokens=prepared.prompt_tokens, stream=prepared.plan.stream)
    label = f" class={record.request_class}" if record.request_class != "-" else ""
    session = f" session={record.session}" if record.session else ""
    logger.info(
        "%s start%s%s model=%s->%s prompt=%d tokens%s",
        prepared.request_id,
        label,
        session,
        record.model,
        record.ollama_model,
        prepared.prompt_tokens,
        " (streaming)" if prepared.plan.stream else "",
        extra=attributes,
    )


class _SlowStart:
    """A request whose answer is slow to begin (no slot, or no response head from Ollama, within the header grace):
    noted once, with whether Ollama is loading the model (it was in no host's `/api/ps` as the request left), and
    when the answer begins, how long the wait was. A load is worth an info line (the user wonders why nothing
    happens); a loaded model slow to answer (a long prompt being read) only a debug line: that is most long prompts.

    `/api/ps` is asked before the request leaves (`looked_up`): asked once the answer is late, Ollama would already
    list the model it is loading for this very request.
    """

    def __init__(self, model: str, request_id: str, loaded: bool | None) -> None:
        self._model = model
        self._request_id = request_id
        self._since = time.monotonic()
        self._noted = False
        self._loading = loaded is False
        self._loaded = loaded

    @classmethod
    async def looked_up(cls, hosts: HostPool, model: str, request_id: str) -> _SlowStart:
        """Whether `model` is loaded on some host now: the pool's cached `/api/ps` (asked at most every two seconds,
        as several hosts' candidates already are), waited for only briefly; None when Ollama cannot say that fast."""
        try:
            loaded = await asyncio.wait_for(hosts.loaded_anywhere(), _PS_WAIT)
        except asyncio.TimeoutError:
            return cls(model, request_id, None)
        wanted = model_key(model)
        return cls(model, request_id, any(model_key(name) == wanted for name in loaded))

    def hook(self, then: Callable[[], Awaitable[None]] | None) -> Callable[[], Awaitable[None]]:
        """The `on_slow` hook: `then` (a stream's `message_start`), then the note, once."""

        async def slow() -> None:
            if then is not None:
                await then()
            if self._noted:
                return
            self._noted = True
            if self._loading:
                logger.info(
                    "%s waiting for Ollama: %s is not loaded, Ollama is loading it",
                    self._request_id,
                    self._model,
                    extra={"request_id": self._request_id, "ollama_model": self._model, "loading": True},
                )
            else:
                state = "is loaded" if self._loaded else "may be loading: /api/ps did not answer in time"
                logger.debug("%s waiting for Ollama's answer (%s %s)", self._request_id, self._model, state)

        return slow

    def answered(self) -> None:
        if not self._noted:
            return
        waited = time.monotonic() - self._since
        level = logging.INFO if self._loading else logging.DEBUG
        cause = f"; {self._model} was loading" if self._loading else ""
        logger.log(
            level,
            "%s Ollama answered after %.1f s%s",
            self._request_id,
            waited,
            cause,
            extra={"request_id": self._request_id, "ollama_model": self._model, "wait_ms": round(waited * 1000)},
        )


def _new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


class MessagesService:
    """The two message endpoints of one worker, sharing its Ollama client and calibration."""

    def __init__(self, settings: Settings, dispatcher: Dispatcher, calibration: Calibration) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.hosts: HostPool = dispatcher.hosts
        self.calibration = calibration
        # Tool calls seen by this worker, by how they had to be repaired ("unchanged": not at all), for /health.
        self.tool_calls: Counter[str] = Counter()
        # Held while a large body is parsed and prepared (see `create`).
        self._large_bodies = asyncio.Semaphore(1)

    async def _catalog(self, model: str) -> ModelCatalog:
        """What the first host that has the model knows about it (every host's copy of a model is the same model)."""
        candidates = await self.hosts.candidates(model)
        return (candidates[0] if candidates else self.hosts.primary).catalog

    async def _choose_model(
        self, request: dict[str, Any], record: RequestRecord, request_id: str
    ) -> tuple[str, ModelInfo]:
        """The Ollama model that serves the request, and what it can do; unknown models fail here, before streaming."""
        requested = request["model"]
        model = map_model(requested, self.settings.model_map, self.settings.default_model)
        if record.request_class in self.settings.substitute_classes:
            model = await self._loaded_instead(model, request, record.request_class, request_id)
        info = await (await self._catalog(model)).info(model, requested=requested)
        if info is None:
            # Ollama could not be asked; go on with what the name tells, and let `/api/chat` have the last word.
            info = ModelInfo(model, capabilities=None)
        wants_thinking = (request.get("thinking") or {}).get("type") == "enabled"
        thinking_model = self.settings.thinking_model
        if wants_thinking and not info.thinks and thinking_model and thinking_model != model:
            logger.info("thinking requested: %s cannot think, using %s", model, thinking_model)
            model = thinking_model
            info = await (await self._catalog(model)).info(model, requested=requested) or ModelInfo(
                model, capabilities=None
            )
        return model, info

    async def _loaded_instead(self, model: str, request: dict[str, Any], request_class: str, request_id: str) -> str:
        """A model already in memory instead of `model`, when `model` is not and serving it would load it (a light
        request such as a title must not evict the model the session works with)."""
        loaded = await self.hosts.loaded_anywhere()
        if not loaded or model_key(model) in {model_key(name) for name in loaded}:
            return model
        # A model the configuration names is the likeliest to be the session's own.
        configured = {model_key(name) for name in (self.settings.default_model, *self.settings.model_map.values())}
        ranked = sorted(loaded, key=lambda name: model_key(name) not in configured)
        chosen = ranked[0]
        if request.get("tools"):
            info = await (await self._catalog(chosen)).info(chosen)
            if info is not None and not info.tools:
                return model  # it could not call the tools this request offers
        logger.info(
            "%s %s request for %s served by %s, which is loaded: loading %s would unload it",
            request_id,
            request_class,
            model,
            chosen,
            model,
        )
        return chosen

    async def _check_tools(self, plan: ChatPlan, info: ModelInfo) -> None:
        if "tools" not in plan.body or info.tools:
            return
        capable = await (await self._catalog(info.name)).with_tools()
        hint = f" Models here that can: {', '.join(capable[:5])}." if capable else ""
        raise InvalidRequest(
            f"model {info.name!r} cannot call tools, and this request offers tools.{hint} Map the request to a "
            "model with the `tools` capability (--model-map / --default-model)."
        )

    async def count_tokens(self, body: bytes, send: Send, request_id: str, record: RequestRecord) -> None:
        # Only the model name is kept: the parsed body (many times its size) is gone before the counting awaits.
        record.model = validate_count_tokens_request(parse_request_body(body))["model"]
        # No Ollama call here: count_tokens must stay fast, and a model that is not installed still has a count.
        record.ollama_model = map_model(record.model, self.settings.model_map, self.settings.default_model)
        raw = await _count(body)
        record.input_tokens = self.calibration.apply(record.ollama_model, raw)
        await send_json(
            send, 200, {"input_tokens": record.input_tokens}, headers=[(b"request-id", request_id.encode())]
        )

    async def create(self, body: bytes, receive: Receive, send: Send, request_id: str, record: RequestRecord) -> None:
        # Parsed, a body costs many times its size (32 MiB of tiny blocks: half a GiB), and preparing it waits on
        # Ollama and on the counter thread, where other requests would parse theirs meanwhile. So large bodies are
        # prepared one at a time per worker, and only the translated request outlives `_prepare`.
        async with self._large_bodies if len(body) >= LARGE_BODY_BYTES else contextlib.nullcontext():
            try:
                prepared = await self._prepare(body, request_id, record)
            except ProxyError as error:
                # Without its traceback: `_prepare`'s frame, and the parsed body in it, would live on in it (and
                # the handler's reference cycle) while the next large body is already being parsed.
                raise error.with_traceback(None) from None
        _log_start(prepared, record)
        translator = prepared.translator
        try:
            if prepared.plan.stream:
                record.streamed = True
                with stream_in_flight():
                    await self._stream(prepared, receive, send, request_id, record)
            else:
                await self._answer(prepared, receive, send, request_id, record)
        finally:
            self._count_tool_calls(translator, request_id)
            self.calibration.observe(prepared.ollama_model, prepared.raw_estimate, translator.prompt_eval_count)
            record.input_tokens = translator.prompt_eval_count
            record.output_tokens = translator.eval_count

    async def _prepare(self, body: bytes, request_id: str, record: RequestRecord) -> _Prepared:
        """Validate, map, translate and count: everything before Ollama is asked."""
        request = validate_messages_request(parse_request_body(body))
        record.model = request["model"]
        ollama_model, info = await self._choose_model(request, record, request_id)
        record.ollama_model = ollama_model
        num_ctx = info.num_ctx(self.settings.num_ctx, self.settings.model_num_ctx)
        traits = ModelTraits(
            thinks=info.thinks, takes_think_levels=info.takes_think_levels, vision=info.vision, num_ctx=num_ctx
        )
        plan = self._plan(request, ollama_model, traits)
        await self._check_tools(plan, info)
        if self.settings.keep_alive is not None:
            plan.body["keep_alive"] = self.settings.keep_alive_value
        for note in plan.notes:
            logger.warning("%s %s", request_id, note)
        if logger.isEnabledFor(logging.DEBUG):
            # Only with --verbose: prompts stay out of logs otherwise.
            sent = orjson.dumps(plan.body)
            logger.debug(
                "%s request to Ollama (%d bytes): %s",
                request_id,
                len(sent),
                sent[:_DEBUG_BYTES].decode(errors="replace"),
            )
        raw_estimate = await _count(body)
        estimate = self.calibration.apply(ollama_model, raw_estimate)
        if num_ctx is not None and estimate > num_ctx:
            fitted = self._fit_compaction(request, ollama_model, num_ctx, record, request_id)
            if fitted is None:
                # Claude Code compacts the conversation when it reads exactly this wording.
                raise InvalidRequest(f"prompt is too long: {estimate} tokens > {num_ctx} maximum")
            request, body = fitted
            plan = self._plan(request, ollama_model, traits)
            raw_estimate = await _count(body)
            estimate = self.calibration.apply(ollama_model, raw_estimate)
        translator = StreamTranslator(
            message_id=_new_message_id(),
            model=request["model"],
            input_tokens_estimate=estimate,
            max_tokens=plan.max_tokens,
            stop_sequences=plan.stop_sequences,
            emit_sse=plan.stream,
            # Only tools the model was told about: they enable schema repair and recovering calls written as text.
            tools=orjson.dumps(plan.offered_tools) if plan.offered_tools else None,
        )
        return _Prepared(plan, translator, ollama_model, raw_estimate, request_id, estimate)

    def _plan(self, request: dict[str, Any], ollama_model: str, traits: ModelTraits) -> ChatPlan:
        return build_chat_request(
            request,
            ollama_model=ollama_model,
            traits=traits,
            strict_thinking=self.settings.strict_thinking,
            adaptive_thinking=self.settings.adaptive_thinking == "auto",
        )

    def _fit_compaction(
        self, request: dict[str, Any], ollama_model: str, num_ctx: int, record: RequestRecord, request_id: str
    ) -> tuple[dict[str, Any], bytes] | None:
        """A compaction request that outgrew the window, shortened to fit with room for the summary; else None."""
        if record.request_class != "compaction" or num_ctx <= SUMMARY_ROOM:
            return None
        budget = num_ctx - SUMMARY_ROOM

        def count(candidate: bytes) -> int:
            return self.calibration.apply(ollama_model, count_request_tokens(candidate))

        shortened = fit_compaction(request, budget, count)
        if shortened is None:
            return None
        logger.warning(
            "%s compaction request over the %d-token window: %d large blocks shortened by %d characters to %d tokens",
            request_id,
            num_ctx,
            shortened.blocks,
            shortened.characters,
            shortened.tokens,
        )
        return request, shortened.body

    def _count_tool_calls(self, translator: StreamTranslator, request_id: str) -> None:
        counts = {kind: count for kind, count in translator.heal_counts.items() if count}
        self.tool_calls.update(counts)
        observe_tool_repairs(counts)
        repairs = {kind: count for kind, count in counts.items() if kind != "unchanged"}
        if repairs:
            logger.debug("%s tool calls repaired: %s", request_id, repairs)

    async def _stream(
        self, prepared: _Prepared, receive: Receive, send: Send, request_id: str, record: RequestRecord
    ) -> None:
        """The streaming path: an SSE response, begun early when Ollama is slow to answer, ended by an error event
        once it has begun."""
        sse = SseStream(send, request_id, self.settings.ping_interval)
        translator = prepared.translator

        async def begin() -> None:
            if not sse.started:
                await sse.start(translator.start())

        async def answered() -> None:
            if not sse.started:
                await sse.start(translator.start(), with_first_content=True)

        try:
            tail = await self._exchange(prepared, receive, record, sse, begin=begin, answered=answered)
            if tail is not None:
                await sse.close(tail)
        except ClientGone:
            record.outcome = "client disconnected mid-answer"
        except ProxyError as error:
            record.failed(error)
            if not sse.started:
                raise
            with contextlib.suppress(ClientGone):
                await sse.fail(error)
        finally:
            if sse.started and not sse.closed:
                with contextlib.suppress(ClientGone):
                    await sse.close()

    async def _answer(
        self, prepared: _Prepared, receive: Receive, send: Send, request_id: str, record: RequestRecord
    ) -> None:
        """The JSON path: the translator accumulates the whole answer, sent as one message (or one error)."""
        if await self._exchange(prepared, receive, record) is None:
            return
        translator = prepared.translator
        if translator.error is not None:
            kind, message = translator.error
            raise ProxyError(message, status=_ERROR_STATUS.get(kind, 500), error_type=kind)
        await send_bytes(send, 200, translator.message(), headers=[(b"request-id", request_id.encode())])

    async def _exchange(
        self,
        prepared: _Prepared,
        receive: Receive,
        record: RequestRecord,
        sse: SseStream | None = None,
        *,
        begin: Callable[[], Awaitable[None]] | None = None,
        answered: Callable[[], Awaitable[None]] | None = None,
    ) -> bytes | None:
        """Ask Ollama and feed its answer through the translator, in one structured group with the watchers: the
        client leaving, silence (Ollama's or a stalled client's), and for a stream its writer and pings.

        Returns the frames that end the stream, or None when the client left. `begin` runs when Ollama is slow to
        send its response headers, `answered` once they came with a 200.
        """
        plan, translator = prepared.plan, prepared.translator
        outcome = RelayOutcome()
        opened: list[Opened] = []

        async def work() -> bytes:
            admission = Admission(
                model=plan.ollama_model,
                hosts=(),
                # Unlabelled requests (other clients, or Claude Code without hint headers) are someone's own turn.
                request_class=record.request_class if record.request_class != "-" else "main",
                session=record.session,
                agent=record.agent,
                request_id=prepared.request_id,
            )
            slow_start = await _SlowStart.looked_up(self.hosts, plan.ollama_model, prepared.request_id)
            ready = await self.dispatcher.open(
                admission,
                orjson.dumps(plan.body),
                on_slow=slow_start.hook(begin),
                may_retry=lambda: sse is None or not sse.started,
            )
            opened.append(ready)
            slow_start.answered()
            record.host, record.waited = ready.host.url, ready.grant.waited
            response = ready.response
            await self._check_status(ready, plan, record)
            if answered is not None:
                await answered()
            write = _timing_first_write(sse.write, record) if sse is not None else None
            return await relay(response, translator, write, outcome, OutputLimit(plan.max_tokens))

        watchers: tuple[Callable[[], Awaitable[BaseException]], ...] = (
            lambda: watch_disconnect(receive),
            lambda: idle_watchdog(outcome, self.settings.idle_timeout, sse),
        )
        if sse is not None:
            watchers += sse.watchers()  # its writer and pings
        try:
            tail = await run_watched(work(), watchers)
        except ClientGone:
            record.outcome = "client disconnected " + ("mid-answer" if opened else "before Ollama answered")
            return None
        except httpx.TransportError as exc:
            record.upstream_error = "connection_broken"
            raise UpstreamError(f"the connection to Ollama broke mid-answer ({exc or type(exc).__name__})") from None
        finally:
            if opened:
                # A finished answer's connection goes back to the pool; any other is closed, and Ollama notices the
                # closed connection and stops generating. Then its slot is free for the next request.
                await drain(outcome)
                await opened[0].response.aclose()
                self.dispatcher.release(opened[0].grant)
        if translator.error is not None:
            record.outcome = f"upstream error: {translator.error[1]}"
            record.error_kind, record.upstream_error = error_kind_of_type(translator.error[0]), "stream_error"
        elif translator.stopped:
            record.outcome = "stop sequence"
        elif outcome.capped:
            record.outcome = f"Ollama went on past max_tokens ({plan.max_tokens}); the proxy ended the answer"
        return tail

    async def _check_status(self, ready: Opened, plan: ChatPlan, record: RequestRecord) -> None:
        response = ready.response
        if response.status_code == 404:
            # The model went away since it was looked up (ollama rm): forget it and say what is installed.
            catalog = ready.host.catalog
            catalog.forget(plan.ollama_model)
            raise not_installed(plan.ollama_model, await catalog.installed(), record.model)
        if response.status_code != 200:
            record.upstream_error = "http_status"
            raise error_from_response(response.status_code, await read_error_body(response), plan.ollama_model)
