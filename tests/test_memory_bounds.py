"""The worker's memory stays bounded whatever Ollama sends and however large the request bodies are.

Each test starts its own proxy, so the worker's peak resident memory (`VmHWM` in /proc/<pid>/status, the pid from
`/health`) starts low and measures exactly what the test made it do. The bounds are generous (several times what
the proxy needs now) yet far below what the same traffic cost before the bounds existed.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import orjson

from conftest import ProxyProcess, Spawn
from ollama_double import OllamaDouble, Reply

MIB = 1 << 20


def worker_pid(proxy: ProxyProcess) -> int:
    pid: int = httpx.get(f"{proxy.url}/health", trust_env=False, timeout=10.0).json()["pid"]
    return pid


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def peak_rss(pid: int) -> int:
    """The worker's peak resident memory so far, in bytes."""
    return _status_kib(pid, "VmHWM")


def rss(pid: int) -> int:
    """The worker's resident memory now, in bytes."""
    return _status_kib(pid, "VmRSS")


def settles_below(pid: int, limit: int, timeout: float = 10.0) -> bool:
    """Whether the worker's resident memory drops below `limit` within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while rss(pid) >= limit:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def message(stream: bool = False, max_tokens: int = 64) -> dict[str, object]:
    return {
        "model": "llama3.1",
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    }


def post(proxy: ProxyProcess, body: dict[str, object] | bytes, timeout: float = 30.0) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"content-type": "application/json"}
    return httpx.post(f"{proxy.url}/v1/messages", content=content, headers=headers, timeout=timeout, trust_env=False)


def test_a_100_mb_error_body_is_not_read_nor_forwarded(spawn: Spawn, ollama: OllamaDouble) -> None:
    proxy = spawn("--default-model", "llama3.1")
    pid = worker_pid(proxy)
    before = peak_rss(pid)
    ollama.enqueue(Reply(status=500, error="the runner crashed", error_body_size=100 * MIB))
    response = post(proxy, message())
    assert response.status_code == 500
    assert len(response.content) < 16 * 1024
    assert "the runner crashed" in response.json()["error"]["message"]
    assert peak_rss(pid) - before < 48 * MIB


def test_an_endless_error_body_is_answered_and_its_connection_closed(spawn: Spawn, ollama: OllamaDouble) -> None:
    proxy = spawn("--default-model", "llama3.1")
    pid = worker_pid(proxy)
    before = peak_rss(pid)
    # 503 is retried; every attempt meets the same endless body.
    ollama.set_responder(lambda _: Reply(status=503, error="busy forever", endless_error_body=True))
    response = post(proxy, message())
    assert response.status_code == 529
    assert "busy forever" in response.json()["error"]["message"]
    assert ollama.wait_for_disconnect(timeout=10.0)
    assert peak_rss(pid) - before < 48 * MIB


def test_a_model_that_never_stops_is_ended_at_max_tokens(spawn: Spawn, ollama: OllamaDouble) -> None:
    proxy = spawn("--default-model", "llama3.1")
    pid = worker_pid(proxy)
    before = peak_rss(pid)
    ollama.enqueue(Reply(content="again ", endless=True))
    response = post(proxy, message(max_tokens=2000))
    assert response.status_code == 200
    answer = response.json()
    assert answer["stop_reason"] == "max_tokens"
    assert answer["usage"]["output_tokens"] >= 2000
    text = answer["content"][0]["text"]
    assert text.startswith("again again ")
    assert len(text) < 6 * 3000
    # The upstream request was closed, so Ollama stops generating.
    assert ollama.wait_for_disconnect(timeout=10.0)
    assert peak_rss(pid) - before < 48 * MIB


def test_a_streamed_answer_that_never_stops_is_ended_at_max_tokens(spawn: Spawn, ollama: OllamaDouble) -> None:
    proxy = spawn("--default-model", "llama3.1")
    ollama.enqueue(Reply(content="again ", endless=True))
    with httpx.stream(
        "POST", f"{proxy.url}/v1/messages", json=message(stream=True, max_tokens=500), timeout=30.0, trust_env=False
    ) as response:
        assert response.status_code == 200
        lines = response.read().decode().splitlines()
    events = [orjson.loads(line[6:]) for line in lines if line.startswith("data: ")]
    delta = next(event for event in events if event["type"] == "message_delta")
    assert delta["delta"]["stop_reason"] == "max_tokens"
    assert events[-1]["type"] == "message_stop"
    assert ollama.wait_for_disconnect(timeout=10.0)


def test_an_endless_answer_read_in_pieces_is_ended_at_max_tokens(spawn: Spawn, ollama: OllamaDouble) -> None:
    # Reads that end in the middle of a line: the answer is still cut at a line boundary, with whole text.
    proxy = spawn("--default-model", "llama3.1")
    ollama.enqueue(Reply(content="piece ", endless=True, split_every=50, split_pause=0.001))
    response = post(proxy, message(max_tokens=100))
    assert response.status_code == 200
    answer = response.json()
    assert answer["stop_reason"] == "max_tokens"
    text = answer["content"][0]["text"]
    assert text == "piece " * (len(text) // 6)
    assert ollama.wait_for_disconnect(timeout=10.0)


def tiny_blocks_body(blocks: int) -> bytes:
    """A valid body of `blocks` one-letter text blocks: small on the wire, large once parsed."""
    content = b",".join([b'{"type":"text","text":"a"}'] * blocks)
    return b'{"model":"llama3.1","max_tokens":100,"messages":[{"role":"user","content":[' + content + b"]}]}"


def test_eight_large_bodies_at_once_stay_within_a_bounded_memory(spawn: Spawn) -> None:
    # 1.2 million blocks in 31 MiB: parsed, one costs about half a GiB. Eight received at once plus one parsed at a
    # time stay under the bound; eight held parsed at the same time (as before) went far past it, and most of it
    # stayed held afterwards.
    body = tiny_blocks_body(1_200_000)
    assert len(body) < 32 * MIB
    proxy = spawn("--default-model", "llama3.1")
    pid = worker_pid(proxy)
    before = peak_rss(pid)
    statuses: list[int] = []

    def send() -> None:
        statuses.append(post(proxy, body, timeout=120.0).status_code)

    senders = [threading.Thread(target=send) for _ in range(8)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    # Each is an answer, not a crash: the window is far too small for a million blocks.
    assert statuses == [400] * 8
    assert peak_rss(pid) - before < 1200 * MIB
    assert settles_below(pid, before + 400 * MIB)
