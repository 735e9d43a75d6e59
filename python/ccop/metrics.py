"""Prometheus metrics for `GET /metrics`: every metric the proxy exports, and the few calls that feed them.

With `--workers N` each worker is its own process, so the numbers live in `prometheus_client`'s multiprocess mode:
`server.py` gives the workers a fresh directory in `PROMETHEUS_MULTIPROC_DIR` before they start (the library picks
its storage when it is first imported, so the variable must be set by then), every worker writes its own files there,
and a scrape, whichever worker answers it, sums them all. Without the variable (a test calling the app directly)
the numbers are this process's own.

Labels have bounded values only: endpoints from the route table, models the proxy was configured with or sent to
Ollama, classes from a fixed list, outcomes and error kinds from small enums; never text a client chose.

Cost: a handful of counter increments per request and per stream, never per token.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from ccop.errors import (
    AuthenticationFailed,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    Overloaded,
    PermissionDenied,
    ProxyError,
    RequestTooLarge,
    UpstreamError,
)
from ccop.settings import REQUEST_CLASSES

if TYPE_CHECKING:
    from ccop.messages import RequestRecord

__all__ = [
    "CONTENT_TYPE",
    "MULTIPROC_ENV",
    "OUTCOMES",
    "UPSTREAM_ERROR_KINDS",
    "error_kind",
    "error_kind_of_type",
    "observe_queue",
    "observe_request",
    "observe_tool_repairs",
    "render",
    "stream_in_flight",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# How a request ended. `error_kind` maps the proxy's errors onto these; anything unforeseen is "error".
OUTCOMES = (
    "ok",
    "client_disconnected",
    "invalid_request",
    "unauthorized",
    "not_found",
    "overloaded",
    "upstream_error",
    "internal_error",
    "error",
)
# What went wrong at Ollama: it answered an HTTP error, reported an error inside its stream, the connection broke
# mid-answer, or anything else (unreachable on every host, silent past --idle-timeout).
UPSTREAM_ERROR_KINDS = ("http_status", "stream_error", "connection_broken", "other")

# Seconds. A first token takes from a tenth of a second (a warm model) to minutes (a load and a long prompt).
_FIRST_TOKEN_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
_STREAM_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1280.0)
_QUEUE_BUCKETS = (0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

REQUESTS = Counter(
    "ccop_requests",
    "Requests answered, by endpoint, Ollama model, Claude Code request class and outcome.",
    ["endpoint", "model", "request_class", "outcome"],
)
STREAMS_IN_FLIGHT = Gauge(
    "ccop_streams_in_flight",
    "Streaming /v1/messages answers running now, all workers together.",
    multiprocess_mode="livesum",
)
QUEUE_WAIT = Histogram(
    "ccop_queue_wait_seconds",
    "How long requests waited for a slot at Ollama, by request class.",
    ["request_class"],
    buckets=_QUEUE_BUCKETS,
)
# Read from the scheduler at each scrape. With --workers 2+ every worker asks the one shared scheduler, so the most
# recent reading is the whole proxy's.
QUEUE_WAITING = Gauge(
    "ccop_queue_waiting",
    "Requests waiting for a slot at the time of the scrape, by request class.",
    ["request_class"],
    multiprocess_mode="livemostrecent",
)
SLOTS_IN_USE = Gauge(
    "ccop_slots_in_use",
    "Requests running at Ollama (holding a slot) at the time of the scrape.",
    multiprocess_mode="livemostrecent",
)
FIRST_TOKEN = Histogram(
    "ccop_time_to_first_token_seconds",
    "From a streaming request's arrival to its first token's frames being handed to the client, queue wait, model "
    "load and prompt evaluation included.",
    ["model", "request_class"],
    buckets=_FIRST_TOKEN_BUCKETS,
)
STREAM_DURATION = Histogram(
    "ccop_stream_duration_seconds",
    "From the request's arrival to the end of a streaming /v1/messages answer.",
    ["model", "request_class"],
    buckets=_STREAM_BUCKETS,
)
INPUT_TOKENS = Counter(
    "ccop_input_tokens",
    "Prompt tokens of /v1/messages answers: Ollama's prompt_eval_count, or the proxy's estimate without one.",
    ["model", "request_class"],
)
OUTPUT_TOKENS = Counter(
    "ccop_output_tokens",
    "Tokens Ollama generated for /v1/messages answers (its eval_count).",
    ["model", "request_class"],
)
TOOL_CALL_REPAIRS = Counter(
    "ccop_tool_call_repairs",
    "Repairs made to the models' tool calls, by kind (see /health's tool_calls).",
    ["kind"],
)
UPSTREAM_ERRORS = Counter(
    "ccop_upstream_errors",
    "Requests that failed because of Ollama, by kind.",
    ["kind"],
)

_CLASSES = frozenset(REQUEST_CLASSES)


def _class_label(request_class: str) -> str:
    if request_class == "-":
        return "unlabelled"
    return request_class if request_class in _CLASSES else "other"


def _model_label(record: RequestRecord, known_models: Iterable[str]) -> str:
    """The Ollama model when Ollama served the request or the configuration names it; else a name the client chose,
    which must not become a label (every typo would be a new time series)."""
    if record.ollama_model == "-":
        return "none" if record.model == "-" else "other"  # no model asked for, or one that could not be served
    if record.host != "-" or record.ollama_model in known_models:
        return record.ollama_model
    return "other"


def error_kind(error: ProxyError) -> str:
    """The outcome (one of `OUTCOMES`) a request that ended with `error` is counted under."""
    if isinstance(error, Overloaded):
        return "overloaded"
    if isinstance(error, UpstreamError):
        return "upstream_error"
    if isinstance(error, NotFound):
        return "not_found"
    if isinstance(error, AuthenticationFailed | PermissionDenied):
        return "unauthorized"
    if isinstance(error, InvalidRequest | MethodNotAllowed | RequestTooLarge):
        return "invalid_request"
    # Errors Ollama reported are built by type (upstream.py, the translator's error event).
    return _BY_TYPE.get(error.error_type, "error")


# Anthropic error types (an error raised as a plain ProxyError, or one Ollama reported inside its stream).
_BY_TYPE = {
    "invalid_request_error": "invalid_request",
    "not_found_error": "not_found",
    "overloaded_error": "overloaded",
    "api_error": "upstream_error",
    "authentication_error": "unauthorized",
    "permission_error": "unauthorized",
}


def error_kind_of_type(error_type: str) -> str:
    """The outcome for an Anthropic error type (what the translator reports for an error inside Ollama's stream)."""
    return _BY_TYPE.get(error_type, "error")


def _outcome(record: RequestRecord, status: int) -> str:
    if record.error_kind:
        return record.error_kind
    if status == 499 or record.outcome.startswith("client disconnected"):
        return "client_disconnected"
    return "ok" if status < 400 else "error"


def observe_request(
    record: RequestRecord, endpoint: str, status: int, started: float, known_models: Iterable[str] = ()
) -> None:
    """Count one finished request. `endpoint` is a route (or "other"), `started` its `time.monotonic()` on arrival,
    `known_models` the Ollama models the configuration names."""
    model = _model_label(record, known_models)
    request_class = _class_label(record.request_class)
    if record.upstream_error:
        UPSTREAM_ERRORS.labels(record.upstream_error).inc()
    if endpoint == "/v1/messages":
        _observe_answer(record, model, request_class, started)
    # Last: once a request is counted, everything else about it is (a scrape may come in between).
    REQUESTS.labels(endpoint, model, request_class, _outcome(record, status)).inc()


def _observe_answer(record: RequestRecord, model: str, request_class: str, started: float) -> None:
    if record.host != "-":
        QUEUE_WAIT.labels(request_class).observe(record.waited)
    if record.first_token_at is not None:
        FIRST_TOKEN.labels(model, request_class).observe(record.first_token_at - started)
    if record.streamed:
        STREAM_DURATION.labels(model, request_class).observe(time.monotonic() - started)
    if record.input_tokens:
        INPUT_TOKENS.labels(model, request_class).inc(record.input_tokens)
    if record.output_tokens:
        OUTPUT_TOKENS.labels(model, request_class).inc(record.output_tokens)


def observe_tool_repairs(counts: Mapping[str, int]) -> None:
    """Count one answer's tool-call repairs (`StreamTranslator.heal_counts`; "unchanged" calls needed none)."""
    for kind, count in counts.items():
        if count and kind != "unchanged":
            TOOL_CALL_REPAIRS.labels(kind).inc(count)


def observe_queue(in_flight: int, waiting_by_class: Mapping[str, int]) -> None:
    """Record the scheduler's state at a scrape; every class is set, so one that emptied reads 0."""
    SLOTS_IN_USE.set(in_flight)
    by_label: dict[str, int] = dict.fromkeys(("unlabelled", "other", *REQUEST_CLASSES), 0)
    for request_class, count in waiting_by_class.items():
        # The scheduler files unlabelled requests under "main".
        by_label[_class_label(request_class)] += count
    for label, count in by_label.items():
        QUEUE_WAITING.labels(label).set(count)


@contextmanager
def stream_in_flight() -> Iterator[None]:
    """Counts a streaming answer as in flight while the block runs."""
    STREAMS_IN_FLIGHT.inc()
    try:
        yield
    finally:
        STREAMS_IN_FLIGHT.dec()


def render() -> bytes:
    """The exposition text: every worker's numbers with --workers N, this process's otherwise."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
