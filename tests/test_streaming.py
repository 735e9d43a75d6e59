"""The raw SSE event sequence, read off the wire (the SDK tests cover the parsed result)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from conftest import ProxyProcess, start_proxy
from ollama_double import OllamaDouble, Reply, tool_call

REQUEST: dict[str, Any] = {
    "model": "qwen3:8b",
    "max_tokens": 256,
    "stream": True,
    "messages": [{"role": "user", "content": "hello"}],
}


def read_events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """Parse an SSE body strictly: every frame is `event:` + one `data:` line + a blank line."""
    text = response.read().decode()
    assert text.endswith("\n\n")
    events = []
    for frame in text.split("\n\n")[:-1]:
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ")
        assert data_line.startswith("data: ")
        data = json.loads(data_line[len("data: ") :])
        assert data["type"] == event_line[len("event: ") :]
        events.append((event_line[len("event: ") :], data))
    return events


def post_stream(url: str, body: dict[str, Any], path: str = "/v1/messages") -> list[tuple[str, dict[str, Any]]]:
    with httpx.stream("POST", url + path, json=body, timeout=30, trust_env=False) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["request-id"].startswith("req_")
        return read_events(response)


def test_exact_sequence_for_thinking_text_and_tools(proxy: ProxyProcess, ollama: OllamaDouble) -> None:
    ollama.enqueue(
        Reply(
            thinking="Think.",
            content="Text.",
            tool_calls=[tool_call("Read", {"path": "a"}), tool_call("Read", {"path": "b"})],
            chunk_size=100,
            prompt_eval_count=50,
            eval_count=7,
        )
    )
    body = {**REQUEST, "thinking": {"type": "enabled", "budget_tokens": 1024}}
    events = post_stream(proxy.url, body, "/v1/messages?beta=true")
    names = [name for name, _ in events if name != "ping"]
    assert names == [
        "message_start",
        "content_block_start",  # 0 thinking
        "content_block_delta",
        "content_block_delta",  # signature_delta
        "content_block_stop",
        "content_block_start",  # 1 text
        "content_block_delta",
        "content_block_stop",
        "content_block_start",  # 2 tool_use
        "content_block_delta",
        "content_block_stop",
        "content_block_start",  # 3 tool_use
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    data = [payload for name, payload in events if name != "ping"]
    start = data[0]["message"]
    assert start["id"].startswith("msg_")
    assert start["model"] == "qwen3:8b"
    assert start["content"] == []
    assert start["usage"]["input_tokens"] > 0  # an estimate, before Ollama has said anything
    assert data[1]["content_block"]["type"] == "thinking"
    assert data[2]["delta"] == {"type": "thinking_delta", "thinking": "Think."}
    assert data[3]["delta"]["type"] == "signature_delta" and data[3]["delta"]["signature"]
    assert data[5]["content_block"] == {"type": "text", "text": ""}
    assert data[6]["delta"] == {"type": "text_delta", "text": "Text."}
    assert data[8]["content_block"]["type"] == "tool_use"
    assert data[8]["content_block"]["input"] == {}
    assert json.loads(data[9]["delta"]["partial_json"]) == {"path": "a"}
    assert json.loads(data[12]["delta"]["partial_json"]) == {"path": "b"}
    indices = [payload["index"] for payload in data if "index" in payload]
    assert indices == sorted(indices)
    assert sorted(set(indices)) == [0, 1, 2, 3]
    assert data[-2]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert data[-2]["usage"]["input_tokens"] == 50
    assert data[-2]["usage"]["output_tokens"] == 7


def test_message_start_and_pings_flow_before_ollama_answers(ollama: OllamaDouble, tmp_path: Path) -> None:
    proxy = start_proxy(ollama.url, tmp_path, env={"CCOP_PING_INTERVAL": "0.2"})
    try:
        ollama.enqueue(Reply(content="late", first_byte_delay=1.5))
        started = time.monotonic()
        with httpx.stream("POST", proxy.url + "/v1/messages", json=REQUEST, timeout=30, trust_env=False) as response:
            lines = response.iter_lines()
            assert next(lines) == "event: message_start"
            first_event_after = time.monotonic() - started
            events = [line for line in lines if line.startswith("event: ")]
        assert first_event_after < 1.0  # message_start did not wait for the model
        assert events.count("event: ping") >= 3
        assert events[-1] == "event: message_stop"
    finally:
        proxy.stop()


def test_mid_stream_error_event_ends_the_stream(proxy: ProxyProcess, ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(content="partial", mid_stream_error="an error was encountered while running the model"))
    events = post_stream(proxy.url, REQUEST)
    name, payload = events[-1]
    assert name == "error"
    assert payload["error"]["type"] == "api_error"
    assert "an error was encountered while running the model" in payload["error"]["message"]
    assert "message_stop" not in [event for event, _ in events]


def test_stream_that_ends_without_done_gets_an_error(proxy: ProxyProcess, ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(content="cut off", end_without_done=True))
    name, payload = post_stream(proxy.url, REQUEST)[-1]
    assert name == "error"
    assert "before the answer was complete" in payload["error"]["message"]


def test_malformed_upstream_line_gets_an_error(proxy: ProxyProcess, ollama: OllamaDouble) -> None:
    ollama.enqueue(
        Reply(
            raw_lines=[
                b'{"model":"m","message":{"role":"assistant","content":"ok"},"done":false}\n',
                b"this is not json\n",
            ]
        )
    )
    events = post_stream(proxy.url, REQUEST)
    assert events[-1][0] == "error"
    assert any(name == "content_block_delta" for name, _ in events)


def test_tool_calls_only_in_the_final_chunk(proxy: ProxyProcess, ollama: OllamaDouble) -> None:
    ollama.enqueue(
        Reply(content="Let me look.", tool_calls=[tool_call("Read", {"path": "x"})], tool_calls_in_final=True)
    )
    events = [(name, data) for name, data in post_stream(proxy.url, REQUEST) if name != "ping"]
    starts = [data["content_block"]["type"] for name, data in events if name == "content_block_start"]
    assert starts == ["text", "tool_use"]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
