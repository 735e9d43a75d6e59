"""Anthropic → Ollama: what the proxy sends to Ollama for each kind of request content.

Each test sends a real request through the `anthropic` SDK to the real proxy and inspects the `/api/chat` body the
Ollama double received.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from conftest import ProxyProcess, start_proxy
from ollama_double import OllamaDouble

DATA = Path(__file__).parent / "data"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()


def last_chat(ollama: OllamaDouble) -> dict[str, Any]:
    requests = ollama.chat_requests()
    assert requests, "the proxy sent nothing to Ollama"
    last: dict[str, Any] = requests[-1]
    return last


def send(client: anthropic.Anthropic, **kwargs: Any) -> anthropic.types.Message:
    kwargs.setdefault("model", "claude-sonnet-5-5")
    kwargs.setdefault("max_tokens", 256)
    message: anthropic.types.Message = client.messages.create(**kwargs)
    return message


# -- model mapping -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("claude-haiku-5-5", "qwen3:8b"),  # exact map entry
        ("claude-opus-5-5", "llama3.1"),  # any other claude* name → default model
        ("qwen3-coder:30b", "qwen3-coder:30b"),  # anything else passes through
    ],
)
def test_model_mapping(client: anthropic.Anthropic, ollama: OllamaDouble, requested: str, expected: str) -> None:
    message = send(client, model=requested, messages=[{"role": "user", "content": "hi"}])
    assert last_chat(ollama)["model"] == expected
    assert message.model == requested  # the client sees the name it asked for


# -- system prompt -------------------------------------------------------------------------------------------------


def test_system_string(client: anthropic.Anthropic, ollama: OllamaDouble) -> None:
    send(client, system="Be brief.", messages=[{"role": "user", "content": "hi"}])
    messages = last_chat(ollama)["messages"]
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1] == {"role": "user", "content": "hi"}


def test_system_blocks_joined_with_newline_and_billing_header_removed(
    client: anthropic.Anthropic, ollama: OllamaDouble
) -> None:
    system = [
        {
            "type": "text",
            "text": "x-anthropic-billing-header: cc_version=2.1.330.440; cc_entrypoint=sdk-cli; cch=ab12f;",
        },
        {"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Main prompt."},
    ]
    send(client, system=system, messages=[{"role": "user", "content": "hi"}])
    first = last_chat(ollama)["messages"][0]
    assert first == {"role": "system", "content": "You are an agent.\nMain prompt."}


def test_system_prefix_is_identical_across_turns(client: anthropic.Anthropic, ollama: OllamaDouble) -> None:
    for nonce in ("aaaaa", "bbbbb"):
        system = [
            {"type": "text", "text": f"x-anthropic-billing-header: cc_version=2.1.330.{nonce}; cch={nonce};"},
            {"type": "text", "text": "Stable prompt."},
        ]
        send(client, system=system, messages=[{"role": "user", "content": "hi"}])
    first, second = ollama.chat_requests()[-2:]
    assert first["messages"][0] == second["messages"][0]


# -- content blocks ------------------------------------------------------------------------------------------------


def test_text_blocks_and_base64_images(client: anthropic.Anthropic, ollama: OllamaDouble) -> None:
    send(
        client,
        model="llava",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    {"type": "text", "text": "in this picture?"},
                ],
            }
        ],
    )
    user = last_chat(ollama)["messages"][-1]
    assert user["role"] == "user"
    assert user["content"] == "What is\nin this picture?"
    assert user["images"] == [PNG]


def test_data_url_prefix_is_stripped_from_images(client: anthropic.Anthropic, ollama: OllamaDouble) -> None:
    source = {"type": "base64", "media_type": "image/png", "data": f"data:image/png;base64,{PNG}"}
    send(client, model="llava", messages=[{"role": "user", "content": [{"type": "image", "source": source}]}])
    assert last_chat(ollama)["messages"][-1]["images"] == [PNG]


def test_url_image_is_a_clear_400(client: anthropic.Anthropic, ollama: OllamaDouble) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        send(
            client,
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}],
                }
            ],
        )
    assert "messages.0.content.0.source.type" in str(caught.value)
    assert "base64" in str(caught.value)
    assert not ollama.chat_requests()


def test_tool_round_trip_translation(client: anthropic.Anthropic, ollama: OllamaDouble) -> None:
    send(
        client,
        model="qwen2.5vl:7b",
        tools=[
            {
                "name": "Read",
                "description": "Read a file",
                "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
            }
        ],
        messages=[
            {"role": "user", "content": "read a.txt and b.txt"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "First thought.", "signature": "sig1"},
                    {"type": "thinking", "thinking": "Second thought.", "signature": "sig2"},
                    {"type": "text", "text": "Reading both."},
                    {"type": "tool_use", "id": "toolu_a", "name": "Read", "input": {"path": "a.txt", "n": 1}},
                    {"type": "tool_use", "id": "call_b", "name": "Read", "input": {"path": "b.txt"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_a", "content": "alpha"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "call_b",
                        "is_error": True,
                        "content": [
                            {"type": "text", "text": "no such file"},
                            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                        ],
                    },
                    {"type": "text", "text": "<system-reminder>keep going</system-reminder>"},
                    {"type": "text", "text": "also check c.txt"},
                ],
            },
        ],
    )
    body = last_chat(ollama)
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "Read",
                "description": "Read a file",
                "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
            },
        }
    ]
    user, assistant, first_result, second_result, trailing = body["messages"]
    assert user == {"role": "user", "content": "read a.txt and b.txt"}
    assert assistant["role"] == "assistant"
    assert assistant["content"] == "Reading both."
    assert assistant["thinking"] == "First thought.\nSecond thought."
    assert assistant["tool_calls"] == [
        {"id": "toolu_a", "function": {"index": 0, "name": "Read", "arguments": {"path": "a.txt", "n": 1}}},
        {"id": "call_b", "function": {"index": 1, "name": "Read", "arguments": {"path": "b.txt"}}},
    ]
    assert list(assistant["tool_calls"][0]["function"]["arguments"]) == ["path", "n"]  # key order kept
    assert first_result == {"role": "tool", "content": "alpha", "tool_call_id": "toolu_a", "tool_name": "Read"}
    assert second_result["role"] == "tool"
    assert second_result["tool_call_id"] == "call_b"
    assert second_result["tool_name"] == "Read"
    assert second_result["content"] == "Error: no such file"
    assert second_result["images"] == [PNG]
    assert trailing == {"role": "user", "content": "<system-reminder>keep going</system-reminder>\nalso check c.txt"}


def test_string_tool_input_is_healed_into_an_object(http: httpx.Client, ollama: OllamaDouble) -> None:
    body = {
        "model": "llama3.1",
        "max_tokens": 64,
        "messages": [
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": '{"command": "ls"}'}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "a\nb"}]},
        ],
    }
    assert http.post("/v1/messages", json=body).status_code == 200
    call = last_chat(ollama)["messages"][1]["tool_calls"][0]
    assert call["function"]["arguments"] == {"command": "ls"}


def test_unrepresentable_blocks_are_kept_as_text_or_notes(http: httpx.Client, ollama: OllamaDouble) -> None:
    body = {
        "model": "llama3.1",
        "max_tokens": 64,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "title": "notes.txt",
                        "source": {"type": "text", "media_type": "text/plain", "data": "The secret is 42."},
                    },
                    {
                        "type": "document",
                        "title": "report.pdf",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="},
                    },
                    {"type": "future_block", "text": "future text survives"},
                    {"type": "mystery_block", "payload": 1},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "ok"},
                ],
            },
            {"role": "user", "content": "next"},
        ],
    }
    assert http.post("/v1/messages", json=body).status_code == 200
    user, assistant, _ = last_chat(ollama)["messages"]
    assert "The secret is 42." in user["content"]
    assert "notes.txt" in user["content"]
    assert "report.pdf" in user["content"] and "cannot be passed" in user["content"]
    assert "future text survives" in user["content"]
    assert "[mystery_block block omitted" in user["content"]
    assert assistant["thinking"] == "[redacted thinking]"
    assert assistant["content"] == "ok"


@pytest.mark.parametrize(
    "system_message",
    [
        {
            "role": "system",
            "content": [{"type": "text", "text": "<env>cwd=/x</env>"}],
            "output_config": {"effort": "high"},
        },
        {"role": "system", "content": "<env>cwd=/x</env>"},
    ],
)
def test_system_messages_inside_messages_stay_in_place(
    http: httpx.Client, ollama: OllamaDouble, system_message: dict[str, Any]
) -> None:
    body = {
        "model": "llama3.1",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}, system_message],
    }
    assert http.post("/v1/messages?beta=true", json=body).status_code == 200
    assert last_chat(ollama)["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "user", "content": "<env>cwd=/x</env>"},
    ]


def test_empty_system_message_is_accepted(http: httpx.Client, ollama: OllamaDouble) -> None:
    body = {
        "model": "llama3.1",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": [], "output_config": {}}],
    }
    assert http.post("/v1/messages", json=body).status_code == 200
    assert last_chat(ollama)["messages"] == [{"role": "user", "content": "hi"}]


# -- tools, options, thinking --------------------------------------------------------------------------------------

TOOLS: list[dict[str, Any]] = [
    {"name": "Read", "description": "Read", "input_schema": {"type": "object", "properties": {}}},
    {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
]


def test_server_tools_without_schema_are_left_out(http: httpx.Client, ollama: OllamaDouble) -> None:
    body = {"model": "llama3.1", "max_tokens": 64, "tools": TOOLS, "messages": [{"role": "user", "content": "hi"}]}
    assert http.post("/v1/messages", json=body).status_code == 200
    assert [tool["function"]["name"] for tool in last_chat(ollama)["tools"]] == ["Read"]


@pytest.mark.parametrize(
    ("choice", "tools_sent", "instruction"),
    [
        ({"type": "auto"}, True, None),
        ({"type": "none"}, False, None),
        ({"type": "any"}, True, "calling one or more of the available tools"),
        ({"type": "tool", "name": "Read"}, True, "calling the tool named 'Read'"),
    ],
)
def test_tool_choice(
    http: httpx.Client, ollama: OllamaDouble, choice: dict[str, Any], tools_sent: bool, instruction: str | None
) -> None:
    body = {
        "model": "llama3.1",
        "max_tokens": 64,
        "system": "Base.",
        "tools": TOOLS[:1],
        "tool_choice": choice,
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert http.post("/v1/messages", json=body).status_code == 200
    sent = last_chat(ollama)
    assert ("tools" in sent) is tools_sent
    system = sent["messages"][0]["content"]
    if instruction:
        assert system.startswith("Base.\n\n") and instruction in system
    else:
        assert system == "Base."


def test_sampling_options_and_explicit_stream(client: anthropic.Anthropic, ollama: OllamaDouble) -> None:
    # This SDK version no longer types the sampling parameters; older clients and Claude Code 1.x send them.
    send(
        client,
        max_tokens=321,
        extra_body={"temperature": 0.2, "top_p": 0.9, "top_k": 20},
        messages=[{"role": "user", "content": "hi"}],
    )
    body = last_chat(ollama)
    assert body["options"]["num_predict"] == 321
    assert body["options"]["temperature"] == 0.2
    assert body["options"]["top_p"] == 0.9
    assert body["options"]["top_k"] == 20
    assert body["stream"] is True


@pytest.mark.parametrize(
    ("model", "thinking", "expected"),
    [
        ("qwen3:8b", {"type": "enabled", "budget_tokens": 2048}, True),
        ("qwen3:8b", {"type": "adaptive"}, True),
        ("qwen3:8b", {"type": "disabled"}, False),
        ("qwen3:8b", None, False),  # absent → explicitly off: Ollama would otherwise think by default
        ("llama3.1", {"type": "enabled", "budget_tokens": 2048}, False),  # cannot think → dropped
        ("qwen3-coder:30b", {"type": "adaptive"}, False),
        ("gpt-oss:20b", {"type": "enabled", "budget_tokens": 2048}, "low"),
        ("gpt-oss:20b", {"type": "enabled", "budget_tokens": 8000}, "medium"),
        ("gpt-oss:20b", {"type": "enabled", "budget_tokens": 32000}, "high"),
    ],
)
def test_think_is_always_explicit(
    http: httpx.Client, ollama: OllamaDouble, model: str, thinking: dict[str, Any] | None, expected: object
) -> None:
    body: dict[str, Any] = {"model": model, "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    if thinking:
        body["thinking"] = thinking
    assert http.post("/v1/messages", json=body).status_code == 200, http.post("/v1/messages", json=body).text
    assert last_chat(ollama)["think"] == expected


def test_effort_sets_the_level_for_level_models(http: httpx.Client, ollama: OllamaDouble) -> None:
    body = {
        "model": "gpt-oss:20b",
        "max_tokens": 64,
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "messages": [{"role": "user", "content": "hi"}],
    }
    assert http.post("/v1/messages", json=body).status_code == 200
    assert last_chat(ollama)["think"] == "high"


def test_strict_thinking_rejects_models_that_cannot_think(ollama: OllamaDouble, tmp_path: Path) -> None:
    proxy = start_proxy(ollama.url, tmp_path, "--strict-thinking")
    try:
        body = {
            "model": "llama3.1",
            "max_tokens": 64,
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "messages": [{"role": "user", "content": "hi"}],
        }
        response = httpx.post(f"{proxy.url}/v1/messages", json=body, trust_env=False)
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert "cannot think" in response.json()["error"]["message"]
        assert not ollama.chat_requests()
    finally:
        proxy.stop()


# -- recorded Claude Code requests ---------------------------------------------------------------------------------


def _texts(value: Any) -> list[str]:
    """Every prose string in a request: text, thinking and tool_result strings, system texts."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in ("text", "thinking") and isinstance(inner, str):
                found.append(inner)
            elif key == "content" and isinstance(inner, str):
                found.append(inner)
            else:
                found.extend(_texts(inner))
    elif isinstance(value, list):
        for inner in value:
            found.extend(_texts(inner))
    return found


@pytest.mark.parametrize(
    "sample",
    [
        "cc2.0.77-topic-detection-request.json",
        "cc2.1.330-bare-request.json",
        "cc2.1.330-print-first-request.json",
        "cc2.1.330-tool-result-followup-request.json",
    ],
)
def test_recorded_claude_code_requests_translate_without_loss(
    proxy: ProxyProcess, ollama: OllamaDouble, sample: str
) -> None:
    recording = json.loads((DATA / sample).read_text())
    body = recording["body"]
    headers = {k: v for k, v in recording["headers"].items() if k.lower() in ("anthropic-version", "anthropic-beta")}
    response = httpx.post(
        f"{proxy.url}{recording['path']}?beta=true", json=body, headers=headers, timeout=30, trust_env=False
    )
    assert response.status_code == 200, response.text
    sent = json.dumps(last_chat(ollama), ensure_ascii=False)
    for text in _texts({"messages": body["messages"], "system": body.get("system", [])}):
        for line in text.splitlines():
            if line.strip() and not line.startswith("x-anthropic-billing-header:"):
                assert json.dumps(line, ensure_ascii=False)[1:-1] in sent, line[:80]
    # Deferred tools no tool search has loaded yet (Claude Code's DeferredToolPlaceholder) stay hidden from the model.
    offered = [t for t in body["tools"] if "input_schema" in t and not t.get("defer_loading")]
    assert len(last_chat(ollama).get("tools", [])) == len(offered)
