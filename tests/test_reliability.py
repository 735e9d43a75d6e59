"""Faults, load and bad input: nothing hangs, nothing leaks, nothing is lost."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ProxyProcess, Spawn, ccop_command, free_port, start_proxy
from ollama_double import OllamaDouble, Reply

QUESTION = [{"role": "user", "content": "hello"}]


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "llama3.1", "max_tokens": 64, "messages": QUESTION, **extra}


def answer_text(response: httpx.Response) -> str:
    """The text of a JSON message or of an SSE stream's text deltas."""
    if response.headers["content-type"].startswith("text/event-stream"):
        deltas = [
            json.loads(line[len("data: ") :])["delta"] for line in response.text.splitlines() if "text_delta" in line
        ]
        return "".join(delta["text"] for delta in deltas)
    return "".join(block["text"] for block in response.json()["content"] if block["type"] == "text")


# -- the client goes away → Ollama stops -------------------------------------------------------------------------


def _disconnect_latency(ollama: OllamaDouble, closed_at: float) -> float:
    assert ollama.wait_for_disconnect(timeout=5.0), "the proxy never closed its connection to Ollama"
    stream = ollama.client_disconnects[-1]
    assert stream.disconnected_at is not None
    return stream.disconnected_at - closed_at


def test_disconnect_while_ollama_loads_the_model(proxy: ProxyProcess, ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(content="too late", first_byte_delay=30))
    with httpx.stream("POST", f"{proxy.url}/v1/messages", json=body(stream=True), trust_env=False) as response:
        lines = response.iter_lines()
        assert next(lines) == "event: message_start"  # the stream is open, Ollama has sent nothing yet
        assert ollama.wait_for_active_streams(1)
    closed_at = time.monotonic()
    assert _disconnect_latency(ollama, closed_at) < 1.0


def test_disconnect_of_a_non_streaming_client_while_waiting(proxy: ProxyProcess, ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(content="too late", first_byte_delay=30))

    def request() -> None:
        try:
            httpx.post(f"{proxy.url}/v1/messages", json=body(), timeout=1.0, trust_env=False)
        except httpx.TimeoutException:
            pass

    thread = threading.Thread(target=request)
    thread.start()
    thread.join()
    closed_at = time.monotonic()
    assert _disconnect_latency(ollama, closed_at) < 1.0


def test_disconnect_mid_stream(proxy: ProxyProcess, ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(content="some words then silence", chunk_size=4, hang_after_chunks=True))
    with httpx.stream("POST", f"{proxy.url}/v1/messages", json=body(stream=True), trust_env=False) as response:
        for line in response.iter_lines():
            if "text_delta" in line:
                break
    closed_at = time.monotonic()
    assert _disconnect_latency(ollama, closed_at) < 1.0


# -- timeouts and retries ----------------------------------------------------------------------------------------


def test_idle_timeout_mid_stream(ollama: OllamaDouble, spawn: Spawn) -> None:
    proxy = spawn("--idle-timeout", "1")
    ollama.enqueue(Reply(content="first words", hang_after_chunks=True))
    with httpx.stream("POST", f"{proxy.url}/v1/messages", json=body(stream=True), trust_env=False) as response:
        text = response.read().decode()
    assert "event: error" in text
    assert "Ollama sent nothing for 1 s" in text
    assert ollama.wait_for_disconnect(timeout=5.0)  # and the upstream request was closed


def test_idle_timeout_before_the_first_byte(ollama: OllamaDouble, spawn: Spawn) -> None:
    proxy = spawn("--idle-timeout", "1")
    ollama.enqueue(Reply(content="never", first_byte_delay=30))
    response = httpx.post(f"{proxy.url}/v1/messages", json=body(), timeout=30, trust_env=False)
    assert response.status_code == 502
    assert "Ollama sent nothing for 1 s" in response.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_server_busy_is_retried_invisibly(http: httpx.Client, ollama: OllamaDouble, stream: bool) -> None:
    busy = "server busy, please try again.  maximum pending requests exceeded"
    ollama.enqueue(Reply(status=503, error=busy), Reply(status=503, error=busy), Reply(content="third time lucky"))
    response = http.post("/v1/messages", json=body(stream=stream))
    assert response.status_code == 200
    assert answer_text(response) == "third time lucky"
    assert len(ollama.chat_requests()) == 3


def test_connection_refused_is_quick_and_clear(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proxy = start_proxy(url, tmp_path)
    try:
        started = time.monotonic()
        response = httpx.post(f"{proxy.url}/v1/messages", json=body(), timeout=60, trust_env=False)
        assert time.monotonic() - started < 5  # a few quick retries, not a long wait
        assert response.status_code == 502
        assert f"Ollama is not reachable at {url}" in response.json()["error"]["message"]
    finally:
        proxy.stop()


# -- bad input ---------------------------------------------------------------------------------------------------


def test_oversized_body_is_413(ollama: OllamaDouble, spawn: Spawn) -> None:
    proxy = spawn("--max-body-size", "2000")
    large = body(messages=[{"role": "user", "content": "x" * 5000}])
    response = httpx.post(f"{proxy.url}/v1/messages", json=large, trust_env=False)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"
    assert "--max-body-size" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ([{"text": "no type"}], "messages.0.content.0.type"),
        ([{"type": 5}], "messages.0.content.0.type"),
        (["a bare string"], "messages.0.content.0"),
        ([{"type": "image", "source": "nope"}], "messages.0.content.0.source"),
        ([{"type": "tool_result", "tool_use_id": "x", "content": 5}], "messages.0.content.0.content"),
        ([{"type": "tool_use", "id": "x", "name": "", "input": {}}], "messages.0.content.0.name"),
    ],
)
def test_malformed_blocks_are_400(http: httpx.Client, content: list[Any], field: str) -> None:
    response = http.post("/v1/messages", json=body(messages=[{"role": "user", "content": content}]))
    assert response.status_code == 400
    assert field in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "lines",
    [
        [b'{"model":"m","message":{"role":"assistant","content":"ok"},"done":false}\n', b'{"model":"m","mess'],
        [b'{"model":"m","message":{"role":"assistant","content":"\xff\xfe"},"done":false}\n'],
        [b'{"model":"m","message":{"role":"assistant","content":"ok"},"done":false}\n'],
    ],
    ids=["truncated-last-line", "invalid-utf8", "no-done"],
)
@pytest.mark.parametrize("stream", [False, True])
def test_malformed_upstream_ends_cleanly(
    http: httpx.Client, ollama: OllamaDouble, lines: list[bytes], stream: bool
) -> None:
    ollama.enqueue(Reply(raw_lines=lines))
    response = http.post("/v1/messages", json=body(stream=stream))
    if stream:
        assert response.status_code == 200
        assert response.text.endswith("\n\n")
        assert "event: error" in response.text
    else:
        assert response.status_code == 500
        assert response.json()["error"]["type"] == "api_error"


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_connections_are_reused(http: httpx.Client, ollama: OllamaDouble, stream: bool) -> None:
    for index in range(5):
        ollama.enqueue(Reply(content=f"answer {index}"))
        assert http.post("/v1/messages", json=body(stream=stream)).status_code == 200
    peers = {request.peer for request in ollama.requests if request.path == "/api/chat"}
    # One kept-alive connection serves them all: no new TCP connection (and Ollama handshake) per request.
    assert len(peers) == 1


# -- concurrency -------------------------------------------------------------------------------------------------


def test_a_hundred_concurrent_streams_through_one_worker(proxy: ProxyProcess, ollama: OllamaDouble) -> None:
    def responder(request: dict[str, Any]) -> Reply:
        question = request["messages"][-1]["content"]
        return Reply(content=f"answer to {question}: " + "word " * 30, chunk_size=5, delay_between=0.01)

    ollama.set_responder(responder)

    async def one(client: httpx.AsyncClient, index: int) -> str:
        request = body(stream=True, messages=[{"role": "user", "content": f"question {index}"}])
        async with client.stream("POST", "/v1/messages", json=request) as response:
            assert response.status_code == 200
            text = ""
            async for line in response.aiter_lines():
                if line.startswith("data: ") and '"text_delta"' in line:
                    text += json.loads(line[len("data: ") :])["delta"]["text"]
            return text

    async def run_all() -> list[str]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=proxy.url, limits=limits, timeout=60, trust_env=False) as client:
            return await asyncio.gather(*(one(client, index) for index in range(100)))

    answers = asyncio.run(run_all())
    for index, answer in enumerate(answers):
        assert answer == f"answer to question {index}: " + "word " * 30
    assert ollama.max_active_streams >= 50  # they really ran at the same time


# -- security ----------------------------------------------------------------------------------------------------


def test_api_key(ollama: OllamaDouble, spawn: Spawn) -> None:
    proxy = spawn("--api-key", "s3cret-key")
    url = f"{proxy.url}/v1/messages"
    missing = httpx.post(url, json=body(), trust_env=False)
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    assert httpx.post(url, json=body(), headers={"x-api-key": "wrong"}, trust_env=False).status_code == 401
    assert httpx.post(url, json=body(), headers={"authorization": "Bearer wrong"}, trust_env=False).status_code == 401
    assert httpx.post(url, json=body(), headers={"x-api-key": "s3cret-key"}, trust_env=False).status_code == 200
    bearer = {"authorization": "Bearer s3cret-key"}
    assert httpx.post(url, json=body(), headers=bearer, trust_env=False).status_code == 200
    assert httpx.get(f"{proxy.url}/health", trust_env=False).status_code == 200  # stays open
    assert httpx.get(f"{proxy.url}/v1/models", trust_env=False).status_code == 401
    assert "s3cret-key" not in proxy.log()


def test_launcher_passes_the_api_key(ollama: OllamaDouble) -> None:
    environment = {"PATH": "/usr/bin:/bin", "OLLAMA_URL": ollama.url, "CCOP_API_KEY": "k-123", "PORT": "3999"}
    completed = subprocess.run(
        [*ccop_command(), "claude", "--print-env"], env=environment, capture_output=True, text=True, timeout=60
    )
    assert "export ANTHROPIC_AUTH_TOKEN=k-123" in completed.stdout.splitlines()


def test_print_config_hides_the_key(tmp_path: Path) -> None:
    completed = subprocess.run(
        [*ccop_command(), "--api-key", "hidden-value", "--print-config"], capture_output=True, text=True, cwd=tmp_path
    )
    assert "hidden-value" not in completed.stdout
    assert json.loads(completed.stdout)["apiKey"] == "********"


def test_binding_beyond_loopback_without_a_key_warns(ollama: OllamaDouble, tmp_path: Path) -> None:
    port = free_port()
    command = [*ccop_command(), "--host", "0.0.0.0", "--port", str(port), "--ollama-url", ollama.url]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path
    ) as process:
        try:
            assert process.stdout is not None
            lines = [process.stdout.readline(), process.stdout.readline()]
        finally:
            process.terminate()
            process.wait(timeout=20)
    assert any(line.startswith("WARNING: listening on 0.0.0.0 without an API key") for line in lines)


def test_no_cors_unless_configured(http: httpx.Client, ollama: OllamaDouble, spawn: Spawn) -> None:
    response = http.post("/v1/messages", json=body(), headers={"origin": "http://evil.example"})
    assert "access-control-allow-origin" not in response.headers
    # An origin CORS does not allow is refused outright (test_desktop_safety.py), preflight or not.
    assert http.options("/v1/messages", headers={"origin": "http://evil.example"}).status_code == 403

    proxy = spawn("--cors-origin", "http://app.local")
    allowed = httpx.post(
        f"{proxy.url}/v1/messages", json=body(), headers={"origin": "http://app.local"}, trust_env=False
    )
    assert allowed.headers["access-control-allow-origin"] == "http://app.local"
    preflight = httpx.options(
        f"{proxy.url}/v1/messages",
        headers={
            "origin": "http://app.local",
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, x-api-key",
        },
        trust_env=False,
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-headers"] == "content-type, x-api-key"
    other = httpx.post(
        f"{proxy.url}/v1/messages", json=body(), headers={"origin": "http://evil.example"}, trust_env=False
    )
    assert "access-control-allow-origin" not in other.headers


def test_logs_say_what_happened_but_not_what_was_said(proxy: ProxyProcess, ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(content="the reply mentions PURPLE-OCTOPUS", prompt_eval_count=12, eval_count=5))
    secret = body(messages=[{"role": "user", "content": "my password is TANGERINE-42"}])
    response = httpx.post(f"{proxy.url}/v1/messages", json=secret, trust_env=False)
    request_id = response.headers["request-id"]
    deadline = time.monotonic() + 5
    # The request's end line (its start line comes first, without status or counts).
    while f"{request_id} POST" not in proxy.log():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    log = proxy.log()
    line = next(line for line in log.splitlines() if f"{request_id} POST" in line)
    assert "POST /v1/messages 200 model=llama3.1->llama3.1 in=12 out=5" in line
    assert line.rstrip().endswith("ms") or "ms (" in line
    assert "TANGERINE-42" not in log and "PURPLE-OCTOPUS" not in log


# -- graceful shutdown -------------------------------------------------------------------------------------------


def test_sigterm_lets_running_streams_finish(ollama: OllamaDouble, tmp_path: Path) -> None:
    proxy = start_proxy(ollama.url, tmp_path)
    ollama.enqueue(Reply(content="x" * 30, chunk_size=1, delay_between=0.05))
    with httpx.stream("POST", f"{proxy.url}/v1/messages", json=body(stream=True), trust_env=False) as response:
        lines = response.iter_lines()
        next(lines)
        proxy.process.send_signal(signal.SIGTERM)
        rest = list(lines)
    assert "event: message_stop" in rest
    assert proxy.process.wait(timeout=20) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{proxy.url}/health", trust_env=False)


def test_sigterm_grace_is_bounded_and_closes_upstream(ollama: OllamaDouble, tmp_path: Path) -> None:
    proxy = start_proxy(ollama.url, tmp_path, "--shutdown-grace", "1")
    ollama.enqueue(Reply(content="then nothing", hang_after_chunks=True))
    with httpx.stream("POST", f"{proxy.url}/v1/messages", json=body(stream=True), trust_env=False) as response:
        for line in response.iter_lines():
            if "text_delta" in line:
                break
        started = time.monotonic()
        proxy.process.send_signal(signal.SIGTERM)
        proxy.process.wait(timeout=20)
        assert time.monotonic() - started < 10
    assert ollama.wait_for_disconnect(timeout=5.0)
