"""Every error a client sees is Anthropic-shaped, with a status and a message that says what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from conftest import free_port, start_proxy
from ollama_double import OllamaDouble, Reply

VALID: dict[str, Any] = {"model": "llama3.1", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}


def assert_error(response: httpx.Response, status: int, error_type: str, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert body["request_id"] == response.headers["request-id"]
    for fragment in fragments:
        assert fragment in body["error"]["message"], body["error"]["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}, "model: field required"),
        ({"model": 7, "max_tokens": 5, "messages": []}, "model: expected a string"),
        ({"model": "m", "messages": [{"role": "user", "content": "hi"}]}, "max_tokens: field required"),
        ({"model": "m", "max_tokens": "5", "messages": [{"role": "user", "content": "hi"}]}, "max_tokens: expected"),
        ({"model": "m", "max_tokens": -1, "messages": [{"role": "user", "content": "hi"}]}, "max_tokens: must be"),
        ({"model": "m", "max_tokens": 5}, "messages: field required"),
        ({"model": "m", "max_tokens": 5, "messages": {}}, "messages: expected an array"),
        ({"model": "m", "max_tokens": 5, "messages": []}, "at least one message"),
        ({**VALID, "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({**VALID, "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({**VALID, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "content.0.text"),
        ({**VALID, "temperature": "hot"}, "temperature"),
        ({**VALID, "top_k": 10**12}, "top_k"),
        ({**VALID, "stop_sequences": "STOP"}, "stop_sequences"),
        ({**VALID, "thinking": {"type": "sometimes"}}, "thinking.type"),
        ({**VALID, "tools": [{"description": "no name"}]}, "tools.0.name"),
        ({**VALID, "tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({**VALID, "system": 5}, "system"),
    ],
)
def test_invalid_requests_name_the_field(http: httpx.Client, ollama: OllamaDouble, body: Any, field: str) -> None:
    assert_error(http.post("/v1/messages", json=body), 400, "invalid_request_error", field)
    assert not ollama.chat_requests()


def test_invalid_json_and_wrong_content_type(http: httpx.Client) -> None:
    assert_error(
        http.post("/v1/messages", content=b"{not json", headers={"content-type": "application/json"}),
        400,
        "invalid_request_error",
        "not valid JSON",
    )
    assert_error(
        http.post("/v1/messages", content=b"", headers={"content-type": "application/json"}),
        400,
        "invalid_request_error",
        "empty",
    )
    assert_error(
        http.post("/v1/messages", content=b"model=x", headers={"content-type": "application/x-www-form-urlencoded"}),
        400,
        "invalid_request_error",
        "content-type",
    )


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_404_listing_installed_models(http: httpx.Client, stream: bool) -> None:
    response = http.post("/v1/messages", json={**VALID, "model": "no-such-model:7b", "stream": stream})
    assert_error(response, 404, "not_found_error", "no-such-model:7b", "llama3.1:latest", "ollama pull")


@pytest.mark.parametrize(
    ("status", "message", "expected_status", "expected_type"),
    [
        (400, "something Ollama disliked", 400, "invalid_request_error"),
        (500, "model runner has unexpectedly stopped", 500, "api_error"),
        (503, "server busy, please try again.  maximum pending requests exceeded", 529, "overloaded_error"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_ollama_errors_before_streaming_keep_a_real_status(
    http: httpx.Client,
    ollama: OllamaDouble,
    status: int,
    message: str,
    expected_status: int,
    expected_type: str,
    stream: bool,
) -> None:
    # Four times: a 503 is retried three times before the client hears of it.
    ollama.enqueue(*[Reply(status=status, error=message) for _ in range(4)])
    response = http.post("/v1/messages", json={**VALID, "stream": stream})
    assert_error(response, expected_status, expected_type, message.split(".")[0])


def test_ollama_context_overflow_becomes_prompt_too_long(http: httpx.Client, ollama: OllamaDouble) -> None:
    ollama.enqueue(
        Reply(
            status=400,
            error="request (40000 tokens) exceeds the available context size (32768 tokens), try increasing it",
        )
    )
    response = http.post("/v1/messages", json=VALID)
    assert_error(response, 400, "invalid_request_error", "prompt is too long: 40000 tokens > 32768 maximum")


@pytest.mark.parametrize("stream", [False, True])
def test_unreachable_ollama_is_a_clear_502(tmp_path: Path, stream: bool) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proxy = start_proxy(url, tmp_path)
    try:
        response = httpx.post(f"{proxy.url}/v1/messages", json={**VALID, "stream": stream}, trust_env=False)
        assert_error(response, 502, "api_error", f"Ollama is not reachable at {url}", "ollama serve")
    finally:
        proxy.stop()


def test_sdk_surfaces_the_proxy_message(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="missing-model", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert "missing-model" in str(caught.value)


def test_mid_stream_error_becomes_an_error_event(client: anthropic.Anthropic, ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(content="partial answer", mid_stream_error="model runner has unexpectedly stopped"))
    with pytest.raises(anthropic.APIStatusError) as caught:
        with client.messages.stream(model="llama3.1", max_tokens=64, messages=VALID["messages"]) as stream:
            for _ in stream:
                pass
    assert "model runner has unexpectedly stopped" in str(caught.value)


def test_mid_stream_error_without_streaming_is_an_http_error(http: httpx.Client, ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(content="partial", mid_stream_error="model runner has unexpectedly stopped"))
    response = http.post("/v1/messages", json=VALID)
    assert_error(response, 500, "api_error", "model runner has unexpectedly stopped")
