"""Bad input never reaches a 500: every malformed body is a 400 naming the field, on both message endpoints.

One proxy for the whole module, whose log must never show a traceback: each test ends by checking it. The last test
is a property test that sends arbitrary bodies of Anthropic's shape (some with a value of the wrong type) to that
proxy and checks every answer is Anthropic-shaped and never an internal error.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ProxyProcess, start_proxy
from ollama_double import OllamaDouble

ENDPOINTS = [("/v1/messages", False), ("/v1/messages", True), ("/v1/messages/count_tokens", False)]
ENDPOINT_IDS = ["messages", "messages-stream", "count_tokens"]
JSON = {"content-type": "application/json"}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
# The documented nesting limit (docs/API.md), counting the body itself.
MAX_NESTING = 128


@pytest.fixture(scope="module")
def guarded(ollama: OllamaDouble, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    process = start_proxy(
        ollama.url, tmp_path_factory.mktemp("bad-input"), "--default-model", "llama3.1", "-m", "thinker=qwen3:8b"
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def web(guarded: ProxyProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=guarded.url, timeout=30.0, trust_env=False) as session:
        yield session


# The first line of a logged traceback. Only a whole line counts: the log quotes what clients send (a block of type
# "Traceback" is noted as such), and Hypothesis draws strings from the constants of this very file.
TRACEBACK = re.compile(r"^Traceback \(most recent call last\):$", re.MULTILINE)


@pytest.fixture(autouse=True)
def _no_traceback(guarded: ProxyProcess) -> Iterator[None]:
    """The proxy logs no traceback while the test runs (an internal error would)."""
    start = len(guarded.log())
    yield
    written = guarded.log()[start:]
    assert not TRACEBACK.search(written), written[-4000:]


def post(web: httpx.Client, path: str, body: dict[str, Any], stream: bool = False) -> httpx.Response:
    if path == "/v1/messages":
        body = {"max_tokens": 64, **body, "stream": stream}
    return web.post(path, content=orjson.dumps(body), headers=JSON)


def assert_invalid(response: httpx.Response, *fragments: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    for fragment in fragments:
        assert fragment in error["error"]["message"], error["error"]["message"]


def user(*blocks: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(blocks)}]


def in_tool_result(*blocks: Any) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": "look it up"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "search", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": list(blocks)}]},
    ]


def document(source: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "document", "source": source, **extra}


def search_result(content: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "search_result", "source": "https://example.com", "title": "Example", "content": content, **extra}


def nested(levels: int) -> dict[str, Any]:
    """An object `levels` deep: `{"a": {"a": … {"a": 1}}}`."""
    value: Any = 1
    for _ in range(levels):
        value = {"a": value}
    result: dict[str, Any] = value
    return result


def nested_text(levels: int) -> bytes:
    """`nested(levels)` as JSON text (json and orjson refuse to write very deep values)."""
    return b'{"a":' * levels + b"1" + b"}" * levels


# -- malformed documents and search results --------------------------------------------------------------------------

BAD_BLOCKS = [
    (document({"type": "content", "content": [5, None]}), "source.content.0: expected a content block object"),
    (document({"type": "content", "content": [{"type": "text", "text": 5}]}), "source.content.0.text: expected"),
    (
        document({"type": "content", "content": [{"type": "tool_use", "id": "x", "name": "f"}]}),
        "source.content.0.type:",
    ),
    (document({"type": "content", "content": 7}), "source.content: expected a string or an array"),
    (document({"type": "content"}), "source.content: field required"),
    (document("just text"), "source: expected an object, got string"),
    ({"type": "document"}, "source: field required"),
    (document({"type": "text", "data": 42}), "source.data: expected a string"),
    (document({"type": "url"}), "source.url: field required"),
    (document({"type": "carrier-pigeon"}), "source.type: expected one of"),
    (document({"type": "text", "data": "x"}, title=5), "title: expected a string"),
    (search_result(5), "content: expected an array of text blocks, got number"),
    (search_result(None), "content: expected an array of text blocks, got null"),
    (search_result("flat text"), "content: expected an array of text blocks, got string"),
    (search_result([{"type": "text", "text": None}]), "content.0.text: expected a string"),
    (search_result([{"type": "image", "source": {}}]), "content.0.type: a search result holds only text"),
    ({"type": "search_result", "title": "t", "content": []}, "source: field required"),
]


@pytest.mark.parametrize(("path", "stream"), ENDPOINTS, ids=ENDPOINT_IDS)
@pytest.mark.parametrize(("block", "field"), BAD_BLOCKS)
def test_malformed_documents_and_search_results_are_400s(
    web: httpx.Client, ollama: OllamaDouble, path: str, stream: bool, block: Any, field: str
) -> None:
    body = {"model": "llama3.1", "messages": user({"type": "text", "text": "read this"}, block)}
    assert_invalid(post(web, path, body, stream), f"messages.0.content.1.{field}")
    # The same block inside a tool result.
    body = {"model": "llama3.1", "messages": in_tool_result(block)}
    assert_invalid(post(web, path, body, stream), f"messages.2.content.0.content.0.{field}")
    assert not ollama.chat_requests()


@pytest.mark.parametrize(("path", "stream"), ENDPOINTS, ids=ENDPOINT_IDS)
@pytest.mark.parametrize("model", ["thinker", "gpt-oss:20b"])
@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"output_config": "high"}, "output_config: expected an object, got string"),
        ({"output_config": 3}, "output_config: expected an object, got number"),
        ({"output_config": ["high"]}, "output_config: expected an object, got array"),
        ({"output_config": ""}, "output_config: expected an object, got string"),
        ({"output_config": {"effort": 9}}, "output_config.effort: expected a string"),
        ({"metadata": "me"}, "metadata: expected an object"),
        ({"metadata": {"user_id": 5}}, "metadata.user_id: expected a string"),
        ({"tool_choice": {"type": "auto", "disable_parallel_tool_use": "yes"}}, "tool_choice.disable_parallel"),
    ],
)
def test_malformed_request_options_are_400s_with_thinking_on(
    web: httpx.Client, path: str, stream: bool, model: str, extra: dict[str, Any], field: str
) -> None:
    body = {
        "model": model,
        "messages": user({"type": "text", "text": "hi"}),
        "thinking": {"type": "enabled", "budget_tokens": 2048},
        **extra,
    }
    assert_invalid(post(web, path, body, stream), field)


# -- well-formed documents and search results become text for Ollama --------------------------------------------


def test_documents_of_every_source_become_text_or_a_note(web: httpx.Client, ollama: OllamaDouble) -> None:
    blocks = [
        document({"type": "text", "media_type": "text/plain", "data": "plain text doc"}, title="a.txt"),
        document({"type": "content", "content": "content as a string"}, context="from the wiki"),
        document(
            {
                "type": "content",
                "content": [
                    {"type": "text", "text": "first part"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    {"type": "text", "text": "second part"},
                ],
            },
            title="mixed",
        ),
        document({"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}, title="r.pdf"),
        document({"type": "url", "url": "https://example.com/spec.pdf"}, title=None),
        document({"type": "file", "file_id": "file_011"}),
    ]
    response = post(web, "/v1/messages", {"model": "llama3.1", "messages": user(*blocks)})
    assert response.status_code == 200, response.text
    text = ollama.chat_requests()[-1]["messages"][-1]["content"]
    assert "[document: a.txt]\nplain text doc" in text
    assert "[document]\nfrom the wiki\ncontent as a string" in text
    assert "[document: mixed]\nfirst part\n[image omitted" in text and "second part" in text
    assert "[document: r.pdf] [the document's base64 content cannot be passed" in text
    assert "https://example.com/spec.pdf" in text
    assert "file content cannot be passed" in text
    counted = post(web, "/v1/messages/count_tokens", {"model": "llama3.1", "messages": user(*blocks)})
    assert counted.status_code == 200 and counted.json()["input_tokens"] > 0


def test_search_results_become_text_also_inside_tool_results(web: httpx.Client, ollama: OllamaDouble) -> None:
    result = search_result([{"type": "text", "text": "Paris is the capital."}, {"type": "text", "text": "Since 508."}])
    for messages in (user(result), in_tool_result(result)):
        response = post(web, "/v1/messages", {"model": "llama3.1", "messages": messages}, stream=True)
        assert response.status_code == 200, response.text
        assert "event: error" not in response.text
        sent = ollama.chat_requests()[-1]["messages"][-1]
        assert sent["content"] == "[search result: Example (https://example.com)]\nParis is the capital.\nSince 508."


def test_a_block_type_cannot_forge_a_log_line(web: httpx.Client, ollama: OllamaDouble) -> None:
    # The note about the unknown block names its type; the autouse check fails if this starts a line of its own.
    forged = "x\nTraceback (most recent call last):\n  y"
    response = post(web, "/v1/messages", {"model": "llama3.1", "messages": user({"type": forged})})
    assert response.status_code == 200, response.text
    assert f"[{forged} block omitted" in ollama.chat_requests()[-1]["messages"][-1]["content"]


# -- nesting -----------------------------------------------------------------------------------------------------


def tool_use_with_input(input_json: bytes) -> bytes:
    """A body whose tool_use input sits 5 levels deep (body, messages, message, content, block)."""
    return (
        b'{"model":"llama3.1","max_tokens":64,"messages":[{"role":"user","content":"q"},'
        b'{"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"f","input":'
        + input_json
        + b'}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"ok"}]}]'
    )


def tool_with_schema(schema_json: bytes) -> bytes:
    """A body whose tool input_schema sits 3 levels deep (body, tools, tool)."""
    return (
        b'{"model":"llama3.1","max_tokens":64,"messages":[{"role":"user","content":"q"}],'
        b'"tools":[{"name":"f","input_schema":' + schema_json + b"}]"
    )


def send_raw(web: httpx.Client, path: str, stream: bool, body_without_end: bytes) -> httpx.Response:
    end = b',"stream":true}' if stream else b"}"
    return web.post(path, content=body_without_end + end, headers=JSON)


@pytest.mark.parametrize(("path", "stream"), ENDPOINTS, ids=ENDPOINT_IDS)
def test_nesting_up_to_the_limit_works(web: httpx.Client, ollama: OllamaDouble, path: str, stream: bool) -> None:
    for body in (tool_use_with_input(nested_text(MAX_NESTING - 5)), tool_with_schema(nested_text(MAX_NESTING - 3))):
        response = send_raw(web, path, stream, body)
        assert response.status_code == 200, response.text
        assert "event: error" not in response.text
    if path == "/v1/messages":
        assert len(ollama.chat_requests()) == 2


@pytest.mark.parametrize(("path", "stream"), ENDPOINTS, ids=ENDPOINT_IDS)
@pytest.mark.parametrize("extra", [1, 72, 1000])
def test_nesting_past_the_limit_is_a_400_naming_it(
    web: httpx.Client, ollama: OllamaDouble, path: str, stream: bool, extra: int
) -> None:
    limit = f"nested more than {MAX_NESTING} levels deep"
    # orjson itself parses at most 1024 levels; past that the body has no fields to name.
    unparsed = extra == 1000
    response = send_raw(web, path, stream, tool_use_with_input(nested_text(MAX_NESTING - 5 + extra)))
    where = "request body" if unparsed else "messages.1.content.0.input.a.…"
    assert_invalid(response, f"{where}: {limit}", f"at most {MAX_NESTING} levels")
    response = send_raw(web, path, stream, tool_with_schema(nested_text(MAX_NESTING - 3 + extra)))
    where = "request body" if unparsed else "tools.0.input_schema.a.a.a.…"
    assert_invalid(response, f"{where}: {limit}")
    assert not ollama.chat_requests()


# -- arbitrary bodies of Anthropic's shape ------------------------------------------------------------------------
#
# Each body is a well-formed request (every block type, tools, options, documents of each source, values around and
# past the nesting limit), and half of them then get one fault: a value replaced by one of another JSON type, or a
# field removed. One fault at a time is what reaches the code behind validation: a body with several faults stops at
# the first one the validator meets.

text = st.text(max_size=12)
junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=5,
)
# Around the nesting limit and past it, up to where orjson's serialiser (254 levels) used to fail.
deep = st.integers(100, 300).map(nested)
json_object = st.dictionaries(text, junk, max_size=3) | deep


def obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(required, optional=optional or {})


text_block = obj({"type": st.just("text"), "text": text})
image_source = st.sampled_from(
    [
        {"type": "base64", "media_type": "image/png", "data": PNG},
        {"type": "base64", "media_type": "image/png", "data": "not base64!"},
        {"type": "url", "url": "https://example.com/cat.png"},
    ]
)
image_block = obj({"type": st.just("image"), "source": image_source})
document_source = st.one_of(
    obj({"type": st.just("text"), "media_type": st.just("text/plain"), "data": text}),
    obj({"type": st.just("base64"), "media_type": st.just("application/pdf"), "data": st.just("JVBERi0=")}),
    obj({"type": st.just("content"), "content": text | st.lists(text_block | image_block, max_size=2)}),
    obj({"type": st.just("url"), "url": text}),
    obj({"type": st.just("file"), "file_id": text}),
)
leaf_block = st.one_of(
    text_block,
    image_block,
    obj({"type": st.just("document"), "source": document_source}, {"title": text, "context": text}),
    obj({"type": st.just("search_result"), "source": text, "title": text, "content": st.lists(text_block, max_size=2)}),
    obj({"type": st.just("tool_reference"), "tool_name": text}),
    obj({"type": st.just("thinking"), "thinking": text, "signature": text}),
    obj({"type": st.just("redacted_thinking"), "data": text}),
    obj({"type": text}),
)
tool_use = obj({"type": st.just("tool_use"), "id": st.just("t1"), "name": st.just("f"), "input": json_object | text})
tool_result = obj(
    {"type": st.just("tool_result"), "tool_use_id": st.just("t1")},
    {"content": text | st.lists(leaf_block, max_size=3), "is_error": st.booleans()},
)


def message(role: str, content: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return obj({"role": st.just(role), "content": content})


def then(first: st.SearchStrategy[list[Any]], last: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.tuples(first, last).map(lambda pair: [*pair[0], pair[1]])


# A conversation with a tool round trip, so the tool result answers a call (else validation stops at that).
conversation = st.tuples(
    message("user", text | st.lists(leaf_block, max_size=3)),
    message("assistant", then(st.lists(leaf_block, max_size=2), tool_use)),
    message("user", then(st.lists(leaf_block, max_size=2), tool_result)),
    st.lists(message("system", text | st.lists(text_block, max_size=1)), max_size=1),
).map(lambda parts: [*parts[:3], *parts[3]])
schema = st.sampled_from([{"type": "object", "properties": {"q": {"type": "string"}}}, {}]) | json_object
tool = obj({"name": st.sampled_from(["f", "search"])}, {"description": text, "input_schema": schema})
clean_request = obj(
    {
        "model": st.sampled_from(["llama3.1", "thinker", "gpt-oss:20b", "qwen2.5vl:7b", "gemma2", "no-such-model"]),
        "max_tokens": st.integers(1, 100_000),
        "messages": conversation | st.lists(message("user", text | st.lists(leaf_block, max_size=3)), min_size=1),
    },
    {
        "system": text | st.lists(text_block, max_size=2),
        "tools": st.lists(tool, max_size=2),
        "tool_choice": obj(
            {"type": st.sampled_from(["auto", "any", "none"])}, {"disable_parallel_tool_use": st.booleans()}
        ),
        "thinking": obj(
            {"type": st.sampled_from(["enabled", "disabled", "adaptive"])}, {"budget_tokens": st.integers(0, 50_000)}
        ),
        "output_config": obj(
            {},
            {
                "effort": st.sampled_from(["low", "medium", "high", "max"]),
                "format": obj({"type": st.just("json_schema"), "schema": schema}),
            },
        ),
        "metadata": obj({}, {"user_id": text}),
        "stop_sequences": st.lists(text.filter(bool), max_size=2),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "top_k": st.integers(0, 1000),
        "stream": st.booleans(),
    },
)


def _places(value: Any, depth: int = 0) -> Iterator[tuple[Any, Any]]:
    """Every (container, key) of a body down to 8 levels (not into the deep values, which would crowd out the rest)."""
    if depth > 8:
        return
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield value, key
        yield from _places(child, depth + 1)


@st.composite
def request(draw: st.DrawFn) -> dict[str, Any]:
    # A copy: the strategies share some values between examples (`sampled_from` constants), and the fault must not
    # leak into later examples.
    body: dict[str, Any] = json.loads(json.dumps(draw(clean_request)))
    if draw(st.booleans()):
        container, key = draw(st.sampled_from(list(_places(body))))
        if isinstance(container, dict) and draw(st.booleans()):
            del container[key]
        else:
            container[key] = draw(junk)
    return body


def assert_anthropic_answer(response: httpx.Response, path: str) -> None:
    assert response.status_code != 500, response.text
    assert "internal proxy error" not in response.text, response.text
    if response.status_code >= 400:
        error = response.json()
        assert error["type"] == "error", error
        assert isinstance(error["error"]["type"], str) and isinstance(error["error"]["message"], str), error
    elif response.headers["content-type"].startswith("text/event-stream"):
        events = [line for line in response.text.splitlines() if line.startswith("event: ")]
        assert events[0] == "event: message_start", response.text
        assert events[-1] in ("event: message_stop", "event: error"), response.text
    elif path.endswith("count_tokens"):
        assert isinstance(response.json()["input_tokens"], int), response.text
    else:
        assert response.json()["type"] == "message", response.text


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(body=request())
def test_any_anthropic_shaped_body_gets_an_anthropic_answer(web: httpx.Client, body: dict[str, Any]) -> None:
    # The standard library's encoder, because orjson refuses integers beyond 64 bits (which clients can send).
    raw = json.dumps(body).encode()
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        assert_anthropic_answer(web.post(path, content=raw, headers=JSON), path)
    assert web.get("/health").status_code == 200
