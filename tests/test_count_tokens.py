"""Token counting: the Python API, the endpoint, and per-model self-calibration."""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

import ccop
from conftest import Spawn
from ollama_double import OllamaDouble, Reply

DATA = Path(__file__).parent / "data"
IMAGE_TOKENS = 1600


def test_count_tokens_rule() -> None:
    assert ccop.count_tokens("hello world") == 4  # "hello" is 5 chars → 2, "world" → 2
    assert ccop.count_tokens("abcdefghij") == 3
    assert ccop.count_tokens("") == 0
    assert ccop.count_tokens("   \n\t ") == 0
    assert ccop.count_tokens("a bb ccc dddd") == 4
    assert ccop.count_tokens("ééééé") == 2  # characters, not bytes
    assert ccop.count_tokens("日本語のテキスト") == 2
    assert ccop.count_tokens("one\u00a0two") == 2  # any Unicode whitespace separates words


def test_count_request_tokens_accepts_bytes_str_and_dict() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hello world"}]}
    as_bytes = json.dumps(body).encode()
    assert ccop.count_request_tokens(body) == ccop.count_request_tokens(as_bytes)
    assert ccop.count_request_tokens(as_bytes.decode()) == ccop.count_request_tokens(as_bytes)
    assert ccop.count_request_tokens(body) == 4


def test_count_request_tokens_rejects_non_json() -> None:
    with pytest.raises(ValueError):
        ccop.count_request_tokens(b"{not json")
    with pytest.raises(ValueError):
        ccop.count_request_tokens(b"[1, 2]")


def test_every_part_of_a_request_is_counted() -> None:
    schema = {"type": "object", "properties": {"path": {"type": "string"}}}
    body = {
        "model": "m",
        "system": [{"type": "text", "text": "system words here"}],
        "tools": [{"name": "Read", "description": "Reads a file", "input_schema": schema}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "please read"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should read", "signature": "s"},
                    {"type": "tool_use", "id": "t1", "name": "Read", "input": {"path": "a.txt"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "file body"}]},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                ],
            },
            {"role": "system", "content": "reminder text"},
        ],
    }
    compact_schema = json.dumps(schema, separators=(",", ":"))
    expected = (
        ccop.count_tokens("system words here")
        + ccop.count_tokens("Read")
        + ccop.count_tokens("Reads a file")
        + ccop.count_tokens(compact_schema)
        + ccop.count_tokens("please read")
        + ccop.count_tokens("I should read")
        + ccop.count_tokens("Read")
        + ccop.count_tokens(json.dumps({"path": "a.txt"}, separators=(",", ":")))
        + ccop.count_tokens("file body")
        + IMAGE_TOKENS
        + ccop.count_tokens("reminder text")
    )
    assert ccop.count_request_tokens(body) == expected


def test_claude_code_tools_are_counted() -> None:
    body = json.loads((DATA / "cc2.1.330-print-first-request.json").read_text())["body"]
    without_tools = {key: value for key, value in body.items() if key != "tools"}
    tools_only = ccop.count_request_tokens(body) - ccop.count_request_tokens(without_tools)
    schema_bytes = len(json.dumps(body["tools"]))
    assert tools_only > schema_bytes / 8  # thousands of tokens, not a rounding error


def test_large_body_is_counted() -> None:
    text = "word " * 200_000
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    assert ccop.count_request_tokens(body) == 200_000


# -- the endpoint ----------------------------------------------------------------------------------------------------


def test_endpoint_matches_the_python_api(client: anthropic.Anthropic, ollama: OllamaDouble) -> None:
    kwargs: dict[str, Any] = {
        "model": "never-used-model",
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "count these words please"}],
        "tools": [{"name": "Bash", "description": "Run", "input_schema": {"type": "object", "properties": {}}}],
    }
    result = client.messages.count_tokens(**kwargs)
    assert result.input_tokens == ccop.count_request_tokens(kwargs)
    # Answered locally: Ollama is never asked about the model, let alone to generate.
    assert not ollama.chat_requests()
    assert not [r for r in ollama.requests if r.json and r.json.get("model") == "never-used-model"]


def test_endpoint_tolerates_query_and_recorded_claude_code_body(http: httpx.Client) -> None:
    recording = json.loads((DATA / "cc2.1.330-count-tokens-request.json").read_text())
    # A model no other test generates with: the endpoint applies the model's learned real/estimate ratio, and the
    # session's proxy has learned one for the default model from earlier tests.
    body = {**recording["body"], "model": "count-tokens-only-model"}
    response = http.post("/v1/messages/count_tokens?beta=true", json=body)
    assert response.status_code == 200
    assert response.json() == {"input_tokens": ccop.count_request_tokens(body)}


def test_endpoint_counts_images(http: httpx.Client) -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(b"x").decode()},
    }
    body = {"model": "m", "messages": [{"role": "user", "content": [image]}]}
    assert http.post("/v1/messages/count_tokens", json=body).json() == {"input_tokens": IMAGE_TOKENS}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content.0.text"),
    ],
)
def test_endpoint_validation_errors(http: httpx.Client, body: dict[str, Any], fragment: str) -> None:
    response = http.post("/v1/messages/count_tokens", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert fragment in response.json()["error"]["message"]


# -- calibration -----------------------------------------------------------------------------------------------------


def _calibrate(url: str, ollama: OllamaDouble, factor: float, rounds: int) -> dict[str, Any]:
    body = {
        "model": "qwen3-coder:30b",
        "max_tokens": 32,
        "system": "You are a coding agent. " * 40,
        "messages": [{"role": "user", "content": "Please refactor the module. " * 20}],
    }
    estimate = ccop.count_request_tokens(body)
    for _ in range(rounds):
        ollama.enqueue(Reply(content="ok", prompt_eval_count=round(estimate * factor)))
        assert httpx.post(f"{url}/v1/messages", json=body, trust_env=False).status_code == 200
    counted = httpx.post(f"{url}/v1/messages/count_tokens", json=body, trust_env=False).json()["input_tokens"]
    health = httpx.get(f"{url}/health", trust_env=False).json()
    return {"estimate": estimate, "counted": counted, "health": health}


def test_calibration_converges_to_the_models_ratio(ollama: OllamaDouble, spawn: Spawn) -> None:
    proxy = spawn()
    result = _calibrate(proxy.url, ollama, factor=1.5, rounds=12)
    assert result["health"]["calibration"]["qwen3-coder:30b"] == pytest.approx(1.5, abs=0.02)
    assert result["counted"] == pytest.approx(result["estimate"] * 1.5, rel=0.02)
    # Another model is untouched.
    other = {"model": "llama3.1", "messages": [{"role": "user", "content": "hello world"}]}
    assert httpx.post(f"{proxy.url}/v1/messages/count_tokens", json=other, trust_env=False).json() == {
        "input_tokens": 4
    }


def test_calibration_is_bounded(ollama: OllamaDouble, spawn: Spawn) -> None:
    proxy = spawn()
    result = _calibrate(proxy.url, ollama, factor=10.0, rounds=3)
    assert result["health"]["calibration"]["qwen3-coder:30b"] == 2.0
    assert result["counted"] == math.ceil(result["estimate"] * 2.0)


def test_heuristic_mode_ignores_ollama_counts(ollama: OllamaDouble, spawn: Spawn) -> None:
    proxy = spawn("--token-counting", "heuristic")
    result = _calibrate(proxy.url, ollama, factor=1.5, rounds=3)
    assert result["counted"] == result["estimate"]


def test_message_start_uses_the_calibrated_estimate(ollama: OllamaDouble, spawn: Spawn) -> None:
    proxy = spawn()
    result = _calibrate(proxy.url, ollama, factor=1.5, rounds=12)
    body = {
        "model": "qwen3-coder:30b",
        "max_tokens": 32,
        "stream": True,
        "system": "You are a coding agent. " * 40,
        "messages": [{"role": "user", "content": "Please refactor the module. " * 20}],
    }
    ollama.enqueue(Reply(content="ok"))
    with httpx.stream("POST", f"{proxy.url}/v1/messages", json=body, trust_env=False) as response:
        lines = response.iter_lines()
        assert next(lines) == "event: message_start"
        start = json.loads(next(lines).removeprefix("data: "))
    assert start["message"]["usage"]["input_tokens"] == result["counted"]
