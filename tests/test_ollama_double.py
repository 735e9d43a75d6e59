"""Tests of the Ollama double itself: if it drifts from Ollama's wire format, every proxy test built on it lies.

The double is driven with httpx (and a raw socket where the HTTP framing itself is under test). Waits are generous
and event-driven, so nothing here depends on the machine being fast.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ollama_double import (
    ModelSpec,
    OllamaDouble,
    Reply,
    estimate_prompt_tokens,
    make_tool_call,
)
from ollama_double.validation import keep_alive_ns

RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
FINAL_KEYS = [
    "model",
    "created_at",
    "message",
    "done",
    "done_reason",
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
]
USER = [{"role": "user", "content": "Hello there, model."}]


@pytest.fixture
def ollama() -> Iterator[OllamaDouble]:
    with OllamaDouble() as double:
        yield double
        # A bug in the double shows up as a 500; make sure no test passes on top of one.
        assert double.internal_errors == []


@pytest.fixture
def client(ollama: OllamaDouble) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=ollama.url, timeout=10.0) as http_client:
        yield http_client


def chat_body(model: str = "qwen3:8b", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": USER, **extra}


def stream_lines(client: httpx.Client, body: dict[str, Any]) -> tuple[httpx.Response, list[dict[str, Any]]]:
    response = client.post("/api/chat", json=body)
    lines = [json.loads(line) for line in response.text.splitlines()]
    return response, lines


def raw_exchange(url: str, payload: bytes) -> bytes:
    """Send raw bytes and read until the server closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(payload)
        received = bytearray()
        while chunk := sock.recv(65536):
            received += chunk
    return bytes(received)


# --------------------------------------------------------------------------------------------------------------------
# Simple endpoints
# --------------------------------------------------------------------------------------------------------------------


def test_root_and_version(ollama: OllamaDouble, client: httpx.Client) -> None:
    root = client.get("/")
    assert root.status_code == 200
    assert root.text == "Ollama is running"
    assert root.headers["content-type"] == "text/plain; charset=utf-8"
    head = client.head("/")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len("Ollama is running"))

    version = client.get("/api/version")
    assert version.json() == {"version": "0.33.0"}
    assert version.headers["content-type"] == "application/json; charset=utf-8"
    assert client.head("/api/version").status_code == 200
    ollama.version = "0.14.2"
    assert client.get("/api/version").json() == {"version": "0.14.2"}


def test_unknown_route_and_method(client: httpx.Client) -> None:
    missing = client.get("/api/nope")
    assert (missing.status_code, missing.text) == (404, "404 page not found")
    wrong = client.get("/api/chat")
    assert (wrong.status_code, wrong.text) == (405, "405 method not allowed")


def test_tags_shape(ollama: OllamaDouble, client: httpx.Client) -> None:
    tags = client.get("/api/tags").json()
    by_name = {m["name"]: m for m in tags["models"]}
    assert {"llama3.1:latest", "qwen3:8b", "qwen3-coder:30b", "gemma2:latest", "llava:latest"} <= set(by_name)
    coder = by_name["qwen3-coder:30b"]
    assert list(coder) == ["name", "model", "modified_at", "size", "digest", "details", "capabilities"]
    assert coder["model"] == "qwen3-coder:30b"
    assert coder["capabilities"] == ["completion", "tools"]
    assert coder["details"]["context_length"] == 262144
    assert coder["details"]["family"] == "qwen3moe"
    assert coder["details"]["families"] == ["qwen3moe"]
    assert re.fullmatch(r"[0-9a-f]{64}", coder["digest"])
    assert by_name["qwen3:8b"]["capabilities"] == ["completion", "tools", "thinking"]
    assert by_name["gemma2:latest"]["capabilities"] == ["completion"]
    assert by_name["llava:latest"]["capabilities"] == ["completion", "vision"]
    assert client.head("/api/tags").status_code == 200

    # Before v0.30 the list carried neither capabilities nor the training context.
    ollama.version = "0.29.3"
    old = client.get("/api/tags").json()["models"][0]
    assert "capabilities" not in old
    assert "context_length" not in old["details"]


def test_show_shape(ollama: OllamaDouble, client: httpx.Client) -> None:
    ollama.add_model(
        ModelSpec(
            "custom-coder:7b",
            ["completion", "tools", "thinking"],
            context_length=131072,
            architecture="qwen2",
            num_ctx=65536,
            parameters={"stop": ["<|im_end|>", "<|endoftext|>"], "temperature": 0.7},
        )
    )
    show = client.post("/api/show", json={"model": "custom-coder:7b"})
    assert show.status_code == 200
    body = show.json()
    assert list(body) == [
        "modelfile",
        "parameters",
        "template",
        "details",
        "model_info",
        "capabilities",
        "modified_at",
    ]
    assert body["capabilities"] == ["completion", "tools", "thinking"]
    assert body["model_info"]["general.architecture"] == "qwen2"
    assert body["model_info"]["qwen2.context_length"] == 131072
    assert body["parameters"] == (
        'num_ctx                        65536\nstop                           "<|im_end|>"\n'
        'stop                           "<|endoftext|>"\ntemperature                    0.7'
    )
    for line in body["parameters"].splitlines():
        assert re.match(r"^(\S+)\s+(.*)$", line)
        assert line[30] == " " and line[31] != " "  # key padded to 30 characters, then one space
    assert body["details"]["family"] == "qwen2"
    assert "context_length" not in body["details"]
    assert "PARAMETER num_ctx 65536" in body["modelfile"]
    assert isinstance(body["template"], str) and body["template"]


def test_show_lookup_and_errors(client: httpx.Client) -> None:
    # Case is ignored and the tag defaults to latest; the deprecated "name" alias works too.
    for name in ("LLAMA3.1", "llama3.1:latest", "registry.ollama.ai/library/llama3.1:latest"):
        assert client.post("/api/show", json={"model": name}).status_code == 200
    assert client.post("/api/show", json={"name": "gemma2"}).json()["capabilities"] == ["completion"]

    missing = client.post("/api/show", json={})
    assert (missing.status_code, missing.json()) == (400, {"error": "model is required"})
    unknown = client.post("/api/show", json={"model": "nope:1b"})
    assert (unknown.status_code, unknown.json()) == (404, {"error": "model 'nope:1b' not found"})
    empty = client.post("/api/show", content=b"")
    assert (empty.status_code, empty.json()) == (400, {"error": "missing request body"})


def test_loads_track_num_ctx(ollama: OllamaDouble, client: httpx.Client) -> None:
    assert ollama.loaded_models == {}
    client.post("/api/chat", json=chat_body(options={"num_ctx": 8192}))
    assert ollama.loaded_models == {"qwen3:8b": 8192}
    client.post("/api/chat", json=chat_body(options={"num_ctx": 8192}))
    assert ollama.model_loads == [("qwen3:8b", 8192)]  # same num_ctx: no reload
    client.post("/api/chat", json=chat_body(options={"num_ctx": 16384.0}))
    assert ollama.model_loads == [("qwen3:8b", 8192), ("qwen3:8b", 16384)]
    # num_ctx is capped at the model's training context (gemma2: 8192).
    client.post("/api/chat", json=chat_body("gemma2", options={"num_ctx": 65536}))
    assert ollama.loaded_models["gemma2:latest"] == 8192


# --------------------------------------------------------------------------------------------------------------------
# /api/chat validation
# --------------------------------------------------------------------------------------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "Read",
            "description": "Read a file",
            "parameters": {
                "type": "object",
                "required": ["file_path"],
                "properties": {"file_path": {"type": "string"}},
            },
        },
    }
]

# Ollama's own texts where ccop reads them or passes them on (unknown model, capabilities, the context overflow,
# options and format); the rest of what Go's decoder refuses is one plain 400 naming the field.
VALIDATION_CASES: list[tuple[str, Any, int, str]] = [
    ("empty body", b"", 400, "missing request body"),
    ("whitespace body", b" \r\n ", 400, "missing request body"),
    ("bad json", b"{not json", 400, "invalid JSON body"),
    ("truncated", b'{"model":"qwen3:8b",', 400, "invalid JSON body"),
    ("not an object", b"[1]", 400, "invalid request body: not a JSON object"),
    (
        "content array",
        {"model": "qwen3:8b", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        400,
        "invalid request: messages[0].content must be a string",
    ),
    (
        "arguments string",
        {
            "model": "qwen3:8b",
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "Read", "arguments": '{"file_path":"/a"}'}}],
                },
            ],
        },
        400,
        "invalid request: messages[1].tool_calls[0].function.arguments must be an object",
    ),
    ("model not a string", {"model": 3, "messages": USER}, 400, "invalid request: model must be a string"),
    ("model empty", {"model": "", "messages": USER}, 400, "model is required"),
    ("model missing", {"messages": USER}, 400, "model is required"),
    ("model invalid", {"model": "bad name!", "messages": USER}, 400, "invalid model name"),
    ("model unknown", {"model": "nope:1b", "messages": USER}, 404, "model 'nope:1b' not found"),
    (
        "tools unsupported",
        {"model": "gemma2", "messages": USER, "tools": TOOLS},
        400,
        "registry.ollama.ai/library/gemma2:latest does not support tools",
    ),
    (
        "think unsupported",
        {"model": "Gemma2:latest", "messages": USER, "think": True},
        400,
        '"Gemma2:latest" does not support thinking',
    ),
    (
        "think level unsupported",
        {"model": "gemma2", "messages": USER, "think": "high"},
        400,
        '"gemma2" does not support thinking',
    ),
    ("think bad level", {"model": "qwen3:8b", "messages": USER, "think": "extreme"}, 400, "invalid request: think"),
    (
        "image with data prefix",
        {"model": "llava", "messages": [{"role": "user", "content": "x", "images": ["data:image/png;base64,iVBO"]}]},
        400,
        "illegal base64 data in messages[0].images[0]",
    ),
    (
        "image missing padding",
        {"model": "llava", "messages": [{"role": "user", "content": "x", "images": ["iVBORw0KGgo"]}]},
        400,
        "illegal base64 data in messages[0].images[0]",
    ),
    ("keep_alive not a duration", chat_body(keep_alive=[5]), 400, "invalid request: keep_alive"),
    ("stop not an array", chat_body(options={"stop": "x"}), 500, 'option "stop" must be of type array'),
    ("num_ctx not a number", chat_body(options={"num_ctx": "8k"}), 500, 'option "num_ctx" must be of type integer'),
    (
        "temperature not a number",
        chat_body(options={"temperature": "hot"}),
        500,
        'option "temperature" must be of type float32',
    ),
    (
        "prompt over default context",
        {"model": "qwen3:8b", "truncate": False, "messages": [{"role": "user", "content": "x" * 20000}]},
        400,
        "request (5000 tokens) exceeds the available context size (4096 tokens), try increasing it",
    ),
    (
        "prompt over num_ctx",
        {
            "model": "qwen3:8b",
            "truncate": False,
            "options": {"num_ctx": 2048},
            "messages": [{"role": "system", "content": "s" * 4000}, {"role": "user", "content": "u" * 4400}],
        },
        400,
        "request (2100 tokens) exceeds the available context size (2048 tokens), try increasing it",
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "error"), [c[1:] for c in VALIDATION_CASES], ids=[c[0] for c in VALIDATION_CASES]
)
def test_chat_validation(ollama: OllamaDouble, client: httpx.Client, body: Any, status: int, error: str) -> None:
    ollama.enqueue(Reply(content="must not be used"))
    if isinstance(body, bytes):
        response = client.post("/api/chat", content=body)
    else:
        response = client.post("/api/chat", json=body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.json()["error"].startswith(error)
    # A refused request consumes no scripted reply and produces no stream.
    assert ollama.pending_replies() == 1
    assert ollama.chat_streams == []


def test_tool_schema_properties_array_is_refused(client: httpx.Client) -> None:
    tools = [{"type": "function", "function": {"name": "X", "parameters": {"type": "object", "properties": []}}}]
    response = client.post("/api/chat", json=chat_body(tools=tools))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid request: tools[0].function.parameters.properties must be an object"


@pytest.mark.parametrize(
    "body",
    [
        chat_body("gemma2", think=False),
        chat_body("qwen3:8b", think="max", tools=TOOLS),
        chat_body("qwen3:8b", truncate=True, messages=[{"role": "user", "content": "x" * 20000}]),
        chat_body(
            "qwen3:8b", truncate=False, options={"num_ctx": 8192}, messages=[{"role": "user", "content": "x" * 20000}]
        ),
        chat_body(
            "llava", messages=[{"role": "user", "content": "x", "images": [base64.b64encode(b"\x89PNG").decode()]}]
        ),
        chat_body("qwen3:8b", options=None, keep_alive="1h30m", stream=True, format={"type": "object"}),
        chat_body("qwen3:8b", options={"stop": ["</s>"], "num_ctx": 8192.0, "unknown_option": "ignored"}),
    ],
)
def test_chat_accepts_valid_requests(client: httpx.Client, body: dict[str, Any]) -> None:
    response, lines = stream_lines(client, body)
    assert response.status_code == 200, response.text
    assert lines[-1]["done"] is True


def test_empty_messages_loads_the_model(client: httpx.Client) -> None:
    response = client.post("/api/chat", json={"model": "qwen3:8b", "messages": []})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    body = response.json()
    assert list(body) == ["model", "created_at", "message", "done", "done_reason"]
    assert body["message"] == {"role": "assistant", "content": ""}
    assert (body["done"], body["done_reason"]) == (True, "load")


# --------------------------------------------------------------------------------------------------------------------
# Streaming shape
# --------------------------------------------------------------------------------------------------------------------


def test_default_reply_stream_shape(client: httpx.Client) -> None:
    response, lines = stream_lines(client, chat_body("QWEN3:8b"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["transfer-encoding"] == "chunked"
    assert "".join(line["message"]["content"] for line in lines) == "Hello from QWEN3:8b."
    for line in lines[:-1]:
        assert list(line) == ["model", "created_at", "message", "done"]
        assert line["done"] is False
        assert line["model"] == "QWEN3:8b"  # the name as requested
        assert RFC3339_NANO.match(line["created_at"])
        assert list(line["message"]) == ["role", "content"]
        assert len(line["message"]["content"]) <= 4
    final = lines[-1]
    assert list(final) == FINAL_KEYS
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}
    assert final["prompt_eval_count"] == estimate_prompt_tokens(chat_body())
    assert final["eval_count"] == len(lines) - 1
    assert all(isinstance(final[k], int) and final[k] > 0 for k in FINAL_KEYS[5:])


def test_each_line_is_its_own_http_chunk(ollama: OllamaDouble, client: httpx.Client) -> None:
    ollama.enqueue(Reply(content="abcdefghij", chunk_size=3))
    with client.stream("POST", "/api/chat", json=chat_body()) as response:
        pieces = list(response.iter_raw())
    assert all(piece.endswith(b"\n") and piece.count(b"\n") == 1 for piece in pieces)
    assert [json.loads(p)["message"]["content"] for p in pieces] == ["abc", "def", "ghi", "j", ""]


def test_thinking_then_content(ollama: OllamaDouble, client: httpx.Client) -> None:
    ollama.enqueue(Reply(thinking="Let me think.", content="Answer.", chunk_size=5, eval_count=42))
    _, lines = stream_lines(client, chat_body())
    thinking = [line for line in lines if "thinking" in line["message"]]
    assert "".join(line["message"]["thinking"] for line in thinking) == "Let me think."
    assert all(line["message"]["content"] == "" for line in thinking)
    assert lines.index(thinking[-1]) < min(i for i, line in enumerate(lines) if line["message"]["content"])
    assert "".join(line["message"]["content"] for line in lines) == "Answer."
    assert lines[-1]["eval_count"] == 42


def test_tool_calls_mid_stream(ollama: OllamaDouble, client: httpx.Client) -> None:
    calls = [make_tool_call("Read", {"file_path": "/a"}), make_tool_call("Bash", {"command": "ls", "timeout": 5})]
    ollama.enqueue(Reply(content="Reading.", tool_calls=calls))
    _, lines = stream_lines(client, chat_body(tools=TOOLS))
    with_calls = [line for line in lines if "tool_calls" in line["message"]]
    assert len(with_calls) == 2
    for index, line in enumerate(with_calls):
        assert line["done"] is False
        assert line["message"]["content"] == ""
        (call,) = line["message"]["tool_calls"]
        assert list(call) == ["id", "function"]
        assert re.fullmatch(r"call_[a-z0-9]{8}", call["id"])
        assert list(call["function"]) == ["index", "name", "arguments"]
        assert call["function"]["index"] == index
    assert list(with_calls[1]["message"]["tool_calls"][0]["function"]["arguments"]) == ["command", "timeout"]
    assert "tool_calls" not in lines[-1]["message"]
    assert lines[-1]["done"] is True


def test_tool_calls_only_in_final_chunk(ollama: OllamaDouble, client: httpx.Client) -> None:
    calls = [make_tool_call("Read", {"file_path": "/a"}, call_id="llama-1"), make_tool_call("Read", {}, call_id="")]
    ollama.enqueue(Reply(content="x", tool_calls=calls, tool_calls_in_final=True, content_in_final=" tail"))
    _, lines = stream_lines(client, chat_body(tools=TOOLS))
    assert all("tool_calls" not in line["message"] for line in lines[:-1])
    final = lines[-1]
    assert final["done"] is True
    assert final["message"]["content"] == " tail"
    assert final["message"]["tool_calls"] == [
        {"id": "llama-1", "function": {"index": 0, "name": "Read", "arguments": {"file_path": "/a"}}},
        {"function": {"index": 1, "name": "Read", "arguments": {}}},  # an empty id is omitted
    ]


def test_metrics_overrides_and_omitempty(ollama: OllamaDouble, client: httpx.Client) -> None:
    ollama.enqueue(
        Reply(content="hi", prompt_eval_count=1234, prompt_eval_cached_count=1000, done_reason="length"),
        Reply(content="", prompt_eval_count=0, done_reason=None),
    )
    _, lines = stream_lines(client, chat_body())
    final = lines[-1]
    assert (final["prompt_eval_count"], final["prompt_eval_cached_count"]) == (1234, 1000)
    assert final["done_reason"] == "length"
    _, lines = stream_lines(client, chat_body())
    assert len(lines) == 1
    assert "prompt_eval_count" not in lines[0] and "eval_count" not in lines[0] and "done_reason" not in lines[0]


def test_split_every_splits_inside_utf8(ollama: OllamaDouble, client: httpx.Client) -> None:
    # A long run of 4-byte characters: of any two consecutive 7-byte boundaries inside it, one is mid-character.
    content = "\U0001f600" * 20 + " héllo wörld"
    ollama.enqueue(Reply(content=content, chunk_size=20, split_every=7))
    with client.stream("POST", "/api/chat", json=chat_body()) as response:
        pieces = list(response.iter_raw())
    assert len(pieces) > 10
    assert all(0 < len(piece) <= 7 for piece in pieces)

    def decodes(piece: bytes) -> bool:
        try:
            piece.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True

    assert not all(decodes(piece) for piece in pieces)
    assert any(b"\n" in piece and not piece.endswith(b"\n") for piece in pieces)  # a piece spans two lines
    lines = [json.loads(line) for line in b"".join(pieces).splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == content
    assert lines[-1]["done"] is True


def test_mid_stream_error(ollama: OllamaDouble, client: httpx.Client) -> None:
    error = "an error was encountered while running the model: unexpected EOF"
    ollama.enqueue(Reply(content="partial", mid_stream_error=error))
    response, lines = stream_lines(client, chat_body())
    assert response.status_code == 200
    assert lines[-1] == {"error": error}
    assert all(line.get("done") is False for line in lines[:-1])
    assert "".join(line["message"]["content"] for line in lines[:-1]) == "partial"


def test_error_before_first_byte(ollama: OllamaDouble, client: httpx.Client) -> None:
    busy = "server busy, please try again.  maximum pending requests exceeded"
    ollama.enqueue(Reply(status=503, error=busy), Reply(error="model runner has unexpectedly stopped"))
    response = client.post("/api/chat", json=chat_body())
    assert (response.status_code, response.json()) == (503, {"error": busy})
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    response = client.post("/api/chat", json=chat_body(stream=False))
    assert (response.status_code, response.json()) == (500, {"error": "model runner has unexpectedly stopped"})


def test_raw_lines_and_end_without_done(ollama: OllamaDouble, client: httpx.Client) -> None:
    raw = [b'{"model":"qwen3:8b","message":{"role":"assistant","content":"ok"},"done":false}\n', b"\xff\xfe\n", b'{"tr']
    ollama.enqueue(Reply(raw_lines=raw), Reply(content="abc", end_without_done=True))
    with client.stream("POST", "/api/chat", json=chat_body()) as response:
        assert b"".join(response.iter_raw()) == b"".join(raw)
    _, lines = stream_lines(client, chat_body())
    assert [line["done"] for line in lines] == [False]


# --------------------------------------------------------------------------------------------------------------------
# Non-streaming
# --------------------------------------------------------------------------------------------------------------------


def test_non_stream_aggregates(ollama: OllamaDouble, client: httpx.Client) -> None:
    calls = [make_tool_call("Read", {"file_path": "/a"}), make_tool_call("Glob", {"pattern": "*.py"})]
    ollama.enqueue(Reply(thinking="Think.", content="Done", content_in_final=".", tool_calls=calls, eval_count=7))
    response = client.post("/api/chat", json=chat_body(stream=False, tools=TOOLS))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert "content-length" in response.headers
    body = response.json()
    assert list(body) == FINAL_KEYS
    assert body["message"]["content"] == "Done."
    assert body["message"]["thinking"] == "Think."
    assert [c["function"]["name"] for c in body["message"]["tool_calls"]] == ["Read", "Glob"]
    assert [c["function"]["index"] for c in body["message"]["tool_calls"]] == [0, 1]
    assert body["done"] is True and body["eval_count"] == 7


def test_non_stream_mid_stream_error_is_500(ollama: OllamaDouble, client: httpx.Client) -> None:
    ollama.enqueue(Reply(content="x", mid_stream_error="boom"))
    response = client.post("/api/chat", json=chat_body(stream=False))
    assert (response.status_code, response.json()) == (500, {"error": "boom"})


# --------------------------------------------------------------------------------------------------------------------
# Scripting and recording
# --------------------------------------------------------------------------------------------------------------------


def test_queue_is_fifo_and_keyed_by_model(ollama: OllamaDouble, client: httpx.Client) -> None:
    ollama.enqueue(Reply(content="for llama"), model="LLAMA3.1")
    ollama.enqueue(Reply(content="first"), Reply(content="second"))

    def text(model: str) -> str:
        _, lines = stream_lines(client, chat_body(model))
        return "".join(line["message"]["content"] for line in lines)

    assert text("qwen3:8b") == "first"
    assert text("llama3.1:latest") == "for llama"
    assert text("llama3.1") == "second"
    assert text("qwen3:8b") == "Hello from qwen3:8b."


def test_responder_scripts_from_the_request(ollama: OllamaDouble, client: httpx.Client) -> None:
    seen: list[dict[str, Any]] = []

    def responder(request: dict[str, Any]) -> Reply:
        seen.append(request)
        return Reply(content=f"echo: {request['messages'][-1]['content']}")

    ollama.set_responder(responder)
    _, lines = stream_lines(client, chat_body())
    assert "".join(line["message"]["content"] for line in lines) == "echo: Hello there, model."
    assert seen[0]["model"] == "qwen3:8b"
    ollama.reset()
    _, lines = stream_lines(client, chat_body())
    assert "".join(line["message"]["content"] for line in lines) == "Hello from qwen3:8b."


def test_responder_failure_is_a_500(ollama: OllamaDouble, client: httpx.Client) -> None:
    def responder(request: dict[str, Any]) -> Reply:
        raise RuntimeError("scripted failure")

    ollama.set_responder(responder)
    response = client.post("/api/chat", json=chat_body())
    assert response.status_code == 500
    assert "scripted failure" in response.json()["error"]
    assert len(ollama.internal_errors) == 1
    ollama.reset()


def test_recording(ollama: OllamaDouble, client: httpx.Client) -> None:
    client.get("/api/tags?x=1")
    client.post("/api/chat", json=chat_body(), headers={"X-Trace": "abc"})
    client.post("/api/chat", content=b"{bad")
    assert ollama.wait_for_requests(3, timeout=5)
    assert ollama.wait_for_requests(2, timeout=5, path="/api/chat")
    tags, chat, bad = ollama.requests
    assert (tags.method, tags.path, tags.query, tags.json) == ("GET", "/api/tags", "x=1", None)
    assert chat.headers["x-trace"] == "abc"
    assert chat.headers["content-type"] == "application/json"
    assert json.loads(chat.body) == chat.json == chat_body()
    assert (bad.json, bad.body) == (None, b"{bad")
    assert ollama.chat_requests() == [chat_body()]
    assert not ollama.wait_for_requests(4, timeout=0.05)
    ollama.reset()
    assert ollama.requests == []


# --------------------------------------------------------------------------------------------------------------------
# HTTP framing
# --------------------------------------------------------------------------------------------------------------------


def test_keep_alive_and_connection_close(ollama: OllamaDouble) -> None:
    request = b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n"
    closing = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    # Three requests pipelined on one connection: all answered in order, then closed because the last asked so.
    received = raw_exchange(ollama.url, request + request + closing)
    assert received.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert received.count(b'{"version":"0.33.0"}') == 2
    assert received.endswith(b"Ollama is running")
    last_head = received.rsplit(b"HTTP/1.1 200 OK\r\n", 1)[1].split(b"\r\n\r\n", 1)[0].lower()
    assert b"connection: close" in last_head
    assert len(ollama.requests) == 3


def test_chunked_request_body(ollama: OllamaDouble, client: httpx.Client) -> None:
    def parts() -> Iterator[bytes]:
        yield b'{"model":'
        yield b'"qwen3:8b","messages":[{"role":"user","content":"hi"}],'
        yield b'"stream":false}'

    response = client.post("/api/chat", content=parts())
    assert response.status_code == 200
    assert response.json()["message"]["content"] == "Hello from qwen3:8b."
    recorded = ollama.requests[-1]
    assert recorded.headers["transfer-encoding"] == "chunked"
    assert recorded.json == {"model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def test_http10_stream_ends_by_close(ollama: OllamaDouble) -> None:
    body = json.dumps(chat_body()).encode()
    request = b"POST /api/chat HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    received = raw_exchange(ollama.url, request)
    head, payload = received.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding" not in head.lower()
    assert json.loads(payload.splitlines()[-1])["done"] is True


# --------------------------------------------------------------------------------------------------------------------
# Disconnects and concurrency
# --------------------------------------------------------------------------------------------------------------------


def test_disconnect_while_hanging(ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(content="abcdefgh", hang_after_chunks=True))
    with httpx.Client(base_url=ollama.url, timeout=10.0) as http_client:
        with http_client.stream("POST", "/api/chat", json=chat_body()) as response:
            lines = response.iter_lines()
            assert json.loads(next(lines))["message"]["content"] == "abcd"
            assert json.loads(next(lines))["message"]["content"] == "efgh"
            assert ollama.active_streams == 1
            assert ollama.client_disconnects == []
    # Leaving the block closes the half-read response, and with it the connection.
    assert ollama.wait_for_disconnect(timeout=1.0)
    (record,) = ollama.client_disconnects
    assert record.phase == "hang"
    assert record.chunks_sent == 2
    assert not record.completed
    assert ollama.wait_for_streams_finished(timeout=5)
    assert ollama.active_streams == 0


def test_disconnect_before_first_byte(ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(content="late", first_byte_delay=60.0))
    timeout = httpx.Timeout(10.0, read=0.3)
    with httpx.Client(base_url=ollama.url, timeout=timeout) as http_client, pytest.raises(httpx.ReadTimeout):
        http_client.post("/api/chat", json=chat_body())
    assert ollama.wait_for_disconnect(timeout=1.0)
    (record,) = ollama.client_disconnects
    assert (record.phase, record.chunks_sent, record.stream) == ("first_byte_delay", 0, True)


def test_completed_stream_is_not_a_disconnect(ollama: OllamaDouble, client: httpx.Client) -> None:
    stream_lines(client, chat_body())
    (record,) = ollama.chat_streams
    assert record.completed and not record.client_disconnected
    assert record.started_at is not None and record.finished_at is not None
    assert record.finished_at >= record.started_at >= record.received_at


def test_active_streams_with_held_replies(ollama: OllamaDouble) -> None:
    release = threading.Event()
    ollama.enqueue(*(Reply(content=f"stream {i}", hold_until=release) for i in range(3)))
    clients = [httpx.Client(base_url=ollama.url, timeout=10.0) for _ in range(3)]
    try:
        streams = [c.stream("POST", "/api/chat", json=chat_body()) for c in clients]
        responses = [s.__enter__() for s in streams]
        assert ollama.wait_for_active_streams(3, timeout=5)
        assert ollama.active_streams == 3
        release.set()
        texts = sorted("".join(json.loads(line)["message"]["content"] for line in r.iter_lines()) for r in responses)
        assert texts == ["stream 0", "stream 1", "stream 2"]
        for s in streams:
            s.__exit__(None, None, None)
    finally:
        for c in clients:
            c.close()
    assert ollama.wait_for_streams_finished(timeout=5)
    assert ollama.max_active_streams == 3
    assert all(record.completed for record in ollama.chat_streams)


def test_stop_releases_hanging_streams() -> None:
    double = OllamaDouble().start()
    double.enqueue(Reply(content="x", hang_after_chunks=True))
    with httpx.Client(base_url=double.url, timeout=10.0) as http_client:
        with http_client.stream("POST", "/api/chat", json=chat_body()) as response:
            lines = response.iter_lines()
            next(lines)
            double.stop()
            # The double closes the connection mid-body: the client sees an incomplete chunked body.
            with pytest.raises(httpx.RemoteProtocolError):
                list(lines)
    with pytest.raises(RuntimeError):
        _ = double.url


def test_parallel_slots_queue_requests() -> None:
    release = threading.Event()
    with OllamaDouble(num_parallel=1) as double:
        double.enqueue(*(Reply(content=f"stream {i}", hold_until=release) for i in range(2)))
        clients = [httpx.Client(base_url=double.url, timeout=10.0) for _ in range(2)]
        try:
            streams = [c.stream("POST", "/api/chat", json=chat_body()) for c in clients]
            # The first holds the only slot (and sends its head); the second waits for the slot, head unsent.
            first = streams[0].__enter__()
            assert double.wait_for_active_streams(1, timeout=5)
            waiting = threading.Thread(target=streams[1].__enter__)
            waiting.start()
            assert double.wait_for_requests(2, timeout=5, path="/api/chat")
            assert not double.wait_for_active_streams(2, timeout=0.2)
            release.set()
            assert "".join(json.loads(line)["message"]["content"] for line in first.iter_lines()) == "stream 0"
            waiting.join(timeout=5)
            assert double.wait_for_streams_finished(timeout=5)
            for s in streams:
                s.__exit__(None, None, None)
        finally:
            for c in clients:
                c.close()
        assert double.max_active_streams == 1
        assert [record.completed for record in double.chat_streams] == [True, True]
        assert double.internal_errors == []


# --------------------------------------------------------------------------------------------------------------------
# Scheduler: FIFO slots, load time, eviction, keep_alive, /api/ps
# --------------------------------------------------------------------------------------------------------------------


def tagged_body(tag: str, model: str = "qwen3:8b", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": tag}], **extra}


def post_in_thread(url: str, body: dict[str, Any], results: dict[str, httpx.Response]) -> threading.Thread:
    """POST ``body`` from another thread; the response lands in ``results`` under the first message's text."""

    def run() -> None:
        with httpx.Client(base_url=url, timeout=10.0) as http_client:
            results[body["messages"][0]["content"]] = http_client.post("/api/chat", json=body)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def raw_chat_request(body: dict[str, Any]) -> bytes:
    payload = json.dumps(body).encode()
    return b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload)


def test_waiters_get_the_slot_in_arrival_order() -> None:
    release = threading.Event()
    results: dict[str, httpx.Response] = {}
    with OllamaDouble(num_parallel=1) as double:
        double.enqueue(Reply(content="first", hold_until=release))
        threads = [post_in_thread(double.url, tagged_body("holder"), results)]
        assert double.wait_for_active_streams(1)
        for position, tag in enumerate(["w1", "w2", "w3"], start=1):
            threads.append(post_in_thread(double.url, tagged_body(tag), results))
            assert double.wait_for_queued(position)  # arrived and waiting, so the next one is behind it
        assert double.active_streams == 1
        release.set()
        for thread in threads:
            thread.join(timeout=10)
        assert all(response.status_code == 200 for response in results.values())
        records = double.chat_streams
        started = sorted(records, key=lambda r: r.started_at or 0.0)
        assert [r.request["messages"][0]["content"] for r in started] == ["holder", "w1", "w2", "w3"]
        assert all(r.headers["content-type"] == "application/json" for r in records)
        assert double.max_active_streams_per_model() == {"qwen3:8b": 1}
        assert double.max_active_streams == 1
        assert double.internal_errors == []


def test_slots_are_per_model() -> None:
    release = threading.Event()
    results: dict[str, httpx.Response] = {}
    with OllamaDouble(num_parallel=1) as double:
        double.enqueue(*(Reply(content="held", hold_until=release) for _ in range(2)))
        threads = [post_in_thread(double.url, tagged_body(m, model=m), results) for m in ("qwen3:8b", "gemma2")]
        assert double.wait_for_active_streams(2)  # one slot each
        release.set()
        for thread in threads:
            thread.join(timeout=10)
        assert double.max_active_streams_per_model() == {"qwen3:8b": 1, "gemma2:latest": 1}


def test_a_waiter_that_leaves_frees_its_place() -> None:
    release = threading.Event()
    results: dict[str, httpx.Response] = {}
    with OllamaDouble(num_parallel=1) as double:
        double.enqueue(Reply(content="first", hold_until=release))
        holder = post_in_thread(double.url, tagged_body("holder"), results)
        assert double.wait_for_active_streams(1)
        with socket.create_connection(("127.0.0.1", double.port), timeout=10) as sock:
            sock.sendall(raw_chat_request(tagged_body("leaver")))
            assert double.wait_for_queued(1)
            stayer = post_in_thread(double.url, tagged_body("stayer"), results)
            assert double.wait_for_queued(2)
        assert double.wait_for_disconnect()
        assert double.queued_requests() == 1
        release.set()
        holder.join(timeout=10)
        stayer.join(timeout=10)
        assert results["stayer"].status_code == 200
        leaver = next(r for r in double.chat_streams if r.request["messages"][0]["content"] == "leaver")
        assert (leaver.started_at, leaver.phase, leaver.client_disconnected) == (None, "queued", True)
        assert double.max_active_streams == 1
        assert double.internal_errors == []


def test_load_time_delays_the_head_once() -> None:
    with (
        OllamaDouble(load_seconds=0.2) as double,
        httpx.Client(base_url=double.url, timeout=10.0) as http_client,
    ):
        _, lines = stream_lines(http_client, chat_body())
        first = double.chat_streams[0]
        # The slot, and so the response head, came only after the load.
        assert first.started_at is not None and first.started_at - first.received_at >= 0.2
        assert lines[-1]["load_duration"] == 200_000_000
        _, again = stream_lines(http_client, chat_body())
        assert again[-1]["load_duration"] == 21_000_000  # warm: no second load
        assert double.model_loads == [("qwen3:8b", 4096)]
        _, reloaded = stream_lines(http_client, chat_body(options={"num_ctx": 8192}))
        assert reloaded[-1]["load_duration"] == 200_000_000
        assert double.model_loads == [("qwen3:8b", 4096), ("qwen3:8b", 8192)]


def test_a_client_can_leave_during_the_load() -> None:
    with OllamaDouble(load_seconds=30.0) as double:
        with socket.create_connection(("127.0.0.1", double.port), timeout=10) as sock:
            sock.sendall(raw_chat_request(chat_body()))
            assert double.wait_for_queued(1)
            assert [r.phase for r in double.chat_streams] == ["loading"]
        assert double.wait_for_disconnect()
        assert double.queued_requests() == 0
        assert double.loaded_models == {"qwen3:8b": 4096}  # the load itself goes on


def test_preloaded_model_needs_no_load() -> None:
    with (
        OllamaDouble(load_seconds=30.0) as double,
        httpx.Client(base_url=double.url, timeout=10.0) as http_client,
    ):
        double.load("qwen3:8b", num_ctx=8192)
        _, lines = stream_lines(http_client, chat_body(options={"num_ctx": 8192}))
        assert lines[-1]["load_duration"] == 21_000_000
        assert double.model_loads == [("qwen3:8b", 8192)]


def test_eviction_with_max_loaded_models(ollama: OllamaDouble, client: httpx.Client) -> None:
    ollama.max_loaded_models = 1
    stream_lines(client, chat_body("qwen3:8b"))
    stream_lines(client, chat_body("gemma2"))
    assert ollama.loaded_models == {"gemma2:latest": 4096}
    assert [name for name, _ in ollama.model_loads] == ["qwen3:8b", "gemma2:latest"]


def test_eviction_waits_for_the_busy_model(ollama: OllamaDouble) -> None:
    ollama.max_loaded_models = 1
    release = threading.Event()
    results: dict[str, httpx.Response] = {}
    ollama.enqueue(Reply(content="busy", hold_until=release))
    busy = post_in_thread(ollama.url, tagged_body("busy"), results)
    assert ollama.wait_for_active_streams(1)
    waiting = post_in_thread(ollama.url, tagged_body("other", model="gemma2"), results)
    assert ollama.wait_for_queued(1)
    assert ollama.loaded_models == {"qwen3:8b": 4096}  # not evicted while streaming
    release.set()
    busy.join(timeout=10)
    waiting.join(timeout=10)
    assert results["other"].status_code == 200
    assert ollama.loaded_models == {"gemma2:latest": 4096}


def test_api_ps_shape(ollama: OllamaDouble, client: httpx.Client) -> None:
    assert client.get("/api/ps").json() == {"models": []}
    assert client.post("/api/ps").status_code == 405
    ollama.load("qwen3-coder:30b", num_ctx=65536, keep_alive=-1)
    ollama.load("qwen3:8b", num_ctx=8192)
    response = client.get("/api/ps")
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    coder, qwen = response.json()["models"]  # the longest time left first: "forever" before 5 minutes
    assert list(qwen) == [
        "name",
        "model",
        "size",
        "digest",
        "details",
        "expires_at",
        "size_vram",
        "context_length",
    ]
    assert (qwen["name"], qwen["model"], qwen["context_length"]) == ("qwen3:8b", "qwen3:8b", 8192)
    assert list(qwen["details"]) == [
        "parent_model",
        "format",
        "family",
        "families",
        "parameter_size",
        "quantization_level",
    ]
    tags = {m["name"]: m for m in client.get("/api/tags").json()["models"]}
    assert qwen["digest"] == tags["qwen3:8b"]["digest"]
    assert qwen["size"] == qwen["size_vram"] > tags["qwen3:8b"]["size"]  # weights plus the KV cache
    assert RFC3339_NANO.match(qwen["expires_at"]) and RFC3339_NANO.match(coder["expires_at"])
    assert coder["expires_at"] > "2200" and qwen["expires_at"] < "2200"
    assert coder["context_length"] == 65536


def test_keep_alive_load_and_unload(ollama: OllamaDouble, client: httpx.Client) -> None:
    loaded = client.post("/api/chat", json={"model": "qwen3:8b", "messages": [], "keep_alive": "10m"}).json()
    assert loaded["done_reason"] == "load"
    assert ollama.loaded_models == {"qwen3:8b": 4096}
    unloaded = client.post("/api/chat", json={"model": "qwen3:8b", "messages": [], "keep_alive": 0})
    assert unloaded.status_code == 200
    assert list(unloaded.json()) == ["model", "created_at", "message", "done", "done_reason"]
    assert unloaded.json()["done_reason"] == "unload"
    assert ollama.loaded_models == {}
    # keep_alive 0 on a chat unloads the model once the response is done.
    stream_lines(client, chat_body(keep_alive=0))
    assert ollama.loaded_models == {}
    assert ollama.model_loads == [("qwen3:8b", 4096), ("qwen3:8b", 4096)]
    assert ollama.keep_alives() == ["10m", 0, 0]


def test_keep_alive_expiry_and_unload_helper(ollama: OllamaDouble, client: httpx.Client) -> None:
    stream_lines(client, chat_body(keep_alive="50ms"))
    for _ in range(200):  # expiry is observed lazily: poll it, bounded
        if not ollama.loaded_models:
            break
        time.sleep(0.025)
    assert ollama.loaded_models == {}
    ollama.load("gemma2")
    ollama.unload("gemma2")
    assert ollama.loaded_models == {}


@pytest.mark.parametrize(
    ("keep_alive", "error"),
    [
        ("300", 'time: missing unit in duration "300"'),
        ("5 minutes", 'time: invalid duration "5 minutes"'),
        (True, "invalid request: keep_alive must be a number of seconds or a duration"),
    ],
)
def test_keep_alive_errors(client: httpx.Client, keep_alive: Any, error: str) -> None:
    response = client.post("/api/chat", json=chat_body(keep_alive=keep_alive))
    assert (response.status_code, response.json()) == (400, {"error": error})


@pytest.mark.parametrize(
    ("value", "ns"),
    [
        (None, 7),
        (1.5, 1_500_000_000),
        ("1h30m", 5_400_000_000_000),
        ("250ms", 250_000_000),
        ("0", 0),
        ("-1m", 2**63 - 1),
        (-1, 2**63 - 1),
    ],
)
def test_keep_alive_durations(value: Any, ns: int) -> None:
    assert keep_alive_ns(value, 7) == ns


def test_stop_and_start_on_the_same_port() -> None:
    with OllamaDouble() as double:
        url = double.url
        double.load("qwen3:8b")
        double.stop()
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/", timeout=5.0)
        double.start()
        assert double.url == url
        assert httpx.get(url + "/", timeout=5.0).text == "Ollama is running"
        assert double.loaded_models == {}  # a restarted server has nothing loaded


def test_fail_with_answers_every_request(ollama: OllamaDouble, client: httpx.Client) -> None:
    ollama.fail_with(500)
    chat = client.post("/api/chat", json=chat_body())
    assert (chat.status_code, chat.json()) == (500, {"error": "internal server error"})
    ollama.fail_with(503, "server busy, please try again.  maximum pending requests exceeded")
    assert client.get("/api/tags").status_code == 503
    assert ollama.chat_streams == [] and len(ollama.requests) == 2
    ollama.fail_with(None)
    assert client.post("/api/chat", json=chat_body()).status_code == 200
