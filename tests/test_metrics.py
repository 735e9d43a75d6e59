"""GET /metrics: Prometheus counts of known traffic, summed over every worker, behind the API key."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import httpx
from prometheus_client.parser import text_string_to_metric_families

from conftest import Spawn
from ollama_double import OllamaDouble, Reply, tool_call

READ_TOOL = {
    "name": "Read",
    "description": "Read a file",
    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, headers: Mapping[str, str] | None = None) -> Samples:
    response = httpx.get(f"{url}/metrics", headers=headers, trust_env=False, timeout=10.0)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape_once_counted(url: str, requests: int, headers: Mapping[str, str] | None = None, **labels: str) -> Samples:
    """A scrape taken once `requests` requests matching `labels` are counted: a worker counts a request just after
    its answer left, so the client can be a moment ahead of the count."""
    deadline = time.monotonic() + 10
    while total(samples := scrape(url, headers), "ccop_requests_total", **labels) < requests:
        assert time.monotonic() < deadline, f"fewer than {requests} requests {labels} were counted"
        time.sleep(0.05)
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when the series does not exist (nothing was counted under those labels)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (sample, found), v in samples.items() if sample == name and wanted <= found)


def post(url: str, body: dict[str, object], request_class: str | None = None) -> httpx.Response:
    # A new connection each time, so the kernel hands the requests to both workers.
    headers = {"x-claude-code-request-class": request_class} if request_class else {}
    with httpx.Client(trust_env=False, timeout=30.0) as fresh:
        return fresh.post(f"{url}/v1/messages", json=body, headers=headers)


def health_until_both_workers(url: str) -> int:
    """Ask /health over fresh connections until two worker pids answered; returns how many requests that took."""
    pids: set[int] = set()
    asked = 0
    while len(pids) < 2:
        assert asked < 400, f"only worker {pids} answered"
        with httpx.Client(trust_env=False) as fresh:
            pids.add(fresh.get(f"{url}/health").json()["pid"])
        asked += 1
    return asked


def message(*, stream: bool, model: str = "claude-sonnet-4-5", tools: bool = False) -> dict[str, object]:
    body: dict[str, object] = {
        "model": model,
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": "hello"}],
    }
    if tools:
        body["tools"] = [READ_TOOL]
    return body


def test_a_scrape_counts_known_traffic_across_two_workers(spawn: Spawn, ollama: OllamaDouble) -> None:
    proxy = spawn("--workers", "2", "--default-model", "llama3.1")
    # The one /health that told `spawn` the proxy was up, then enough that both workers answered some.
    health_requests = 1 + health_until_both_workers(proxy.url)

    for _ in range(3):
        ollama.enqueue(Reply(content="Hi there.", prompt_eval_count=11, eval_count=5))
        assert post(proxy.url, message(stream=False), "main").status_code == 200
    # Streams: one plain, one whose tool call arrives double-encoded (an "unescaped" repair).
    ollama.enqueue(Reply(content="Streaming.", prompt_eval_count=7, eval_count=3))
    ollama.enqueue(
        Reply(tool_calls=[tool_call("Read", '"{\\"path\\": \\"a.txt\\"}"')], prompt_eval_count=7, eval_count=3)
    )
    for tools in (False, True):
        streamed = post(proxy.url, message(stream=True, tools=tools), "subagent")
        assert streamed.status_code == 200 and "message_stop" in streamed.text, streamed.text
    assert "tool_use" in streamed.text
    missing = post(proxy.url, message(stream=False, model="no-such-model:1b"))
    assert missing.status_code == 404, missing.text

    samples = scrape_once_counted(proxy.url, 6, endpoint="/v1/messages")

    requests = "ccop_requests_total"
    assert value(samples, requests, endpoint="/health", model="none", request_class="unlabelled", outcome="ok") == (
        health_requests
    )
    main = {"model": "llama3.1", "request_class": "main"}
    subagent = {"model": "llama3.1", "request_class": "subagent"}
    assert value(samples, requests, endpoint="/v1/messages", outcome="ok", **main) == 3
    assert value(samples, requests, endpoint="/v1/messages", outcome="ok", **subagent) == 2
    # The unknown name is the client's: counted, but not under its own label.
    assert (
        value(
            samples, requests, endpoint="/v1/messages", model="other", request_class="unlabelled", outcome="not_found"
        )
        == 1
    )
    assert total(samples, requests, endpoint="/v1/messages") == 6
    assert total(samples, requests) == health_requests + 6

    assert value(samples, "ccop_input_tokens_total", **main) == 33
    assert value(samples, "ccop_output_tokens_total", **main) == 15
    assert value(samples, "ccop_input_tokens_total", **subagent) == 14
    assert value(samples, "ccop_output_tokens_total", **subagent) == 6
    assert value(samples, "ccop_tool_call_repairs_total", kind="unescaped") == 1
    assert total(samples, "ccop_tool_call_repairs_total") == 1
    assert total(samples, "ccop_upstream_errors_total") == 0

    # Only streams have a first token and a stream duration; every request that reached Ollama waited (0 s) once.
    assert value(samples, "ccop_time_to_first_token_seconds_count", **subagent) == 2
    assert total(samples, "ccop_time_to_first_token_seconds_count") == 2
    assert value(samples, "ccop_stream_duration_seconds_count", **subagent) == 2
    assert total(samples, "ccop_stream_duration_seconds_count") == 2
    assert value(samples, "ccop_queue_wait_seconds_count", request_class="main") == 3
    assert value(samples, "ccop_queue_wait_seconds_count", request_class="subagent") == 2
    assert value(samples, "ccop_streams_in_flight") == 0
    assert value(samples, "ccop_slots_in_use") == 0
    assert total(samples, "ccop_queue_waiting") == 0


def test_upstream_errors_are_counted_by_kind(spawn: Spawn, ollama: OllamaDouble) -> None:
    proxy = spawn("--default-model", "llama3.1")
    ollama.enqueue(Reply(status=500, error="out of memory"))
    failed = post(proxy.url, message(stream=False))
    assert failed.status_code == 500, failed.text
    ollama.enqueue(Reply(content="Half an answer", mid_stream_error="the runner crashed"))
    broken = post(proxy.url, message(stream=True))
    assert broken.status_code == 200 and "event: error" in broken.text, broken.text

    samples = scrape_once_counted(proxy.url, 2, endpoint="/v1/messages")

    assert value(samples, "ccop_upstream_errors_total", kind="http_status") == 1
    assert value(samples, "ccop_upstream_errors_total", kind="stream_error") == 1
    assert total(samples, "ccop_upstream_errors_total") == 2
    labels = {"endpoint": "/v1/messages", "model": "llama3.1", "request_class": "unlabelled"}
    assert value(samples, "ccop_requests_total", outcome="upstream_error", **labels) == 2


def test_metrics_need_the_api_key_when_one_is_set(spawn: Spawn) -> None:
    proxy = spawn("--api-key", "s3cret")
    refused = httpx.get(f"{proxy.url}/metrics", trust_env=False)
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"
    samples = scrape_once_counted(proxy.url, 1, {"x-api-key": "s3cret"}, endpoint="/metrics")
    # The refused scrape was itself counted, under a bounded outcome.
    assert (
        value(
            samples,
            "ccop_requests_total",
            endpoint="/metrics",
            model="none",
            request_class="unlabelled",
            outcome="unauthorized",
        )
        == 1
    )


def test_a_running_stream_is_in_flight_until_it_ends(spawn: Spawn, ollama: OllamaDouble) -> None:
    proxy = spawn("--workers", "2", "--default-model", "llama3.1")
    release = threading.Event()
    ollama.enqueue(Reply(content="Held until released.", hold_until=release))
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(post, proxy.url, message(stream=True), "subagent")
        try:
            assert ollama.wait_for_active_streams(1, timeout=10.0)
            running = scrape(proxy.url)
        finally:
            release.set()
        assert answer.result(timeout=30).status_code == 200
    assert value(running, "ccop_streams_in_flight") == 1
    assert value(running, "ccop_slots_in_use") == 1
    # The worker counts the stream out just after its last frame left: wait for it rather than race it.
    deadline = time.monotonic() + 10
    while value(scrape(proxy.url), "ccop_streams_in_flight") != 0:
        assert time.monotonic() < deadline, "the ended stream is still counted as in flight"
        time.sleep(0.05)
