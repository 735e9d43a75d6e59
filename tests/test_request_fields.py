"""Request fields of the 2026 SDKs: `thread`, `output_config.format`, and the pairing of tool results with calls.

Each feature is driven end to end by a real client: the official `anthropic` Python SDK, the official TypeScript SDK
(`tests/sdk-ts/`, run with `node`), through a real `ccop`, against the Ollama double.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import pydantic
import pytest
from anthropic import beta_tool
from hypothesis import given
from hypothesis import strategies as st

from ccop.errors import InvalidRequest
from ccop.translate import ModelTraits, build_chat_request
from ccop.validation import validate_messages_request
from conftest import ProxyProcess
from ollama_double import OllamaDouble, Reply, _check_format, tool_call

SDK_TS = Path(__file__).parent / "sdk-ts"


def post(http: httpx.Client, body: dict[str, Any], path: str = "/v1/messages") -> httpx.Response:
    return http.post(path, json=body)


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "qwen3:8b", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], **fields}


def assert_invalid(response: httpx.Response, *needles: str) -> str:
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["request_id"] == response.headers["request-id"]
    message: str = error["error"]["message"]
    for needle in needles:
        assert needle in message, message
    return message


class Recorder:
    """An HTTP client for the SDK (which uses `httpx2`) that remembers every request body it sent and its status."""

    def __init__(self) -> None:
        self.exchanges: list[tuple[dict[str, Any], int]] = []
        self.client = httpx2.Client(event_hooks={"response": [self._record]}, trust_env=False, timeout=30)

    def _record(self, response: httpx2.Response) -> None:
        self.exchanges.append((json.loads(response.request.content), response.status_code))


@pytest.fixture
def recorder(proxy: ProxyProcess) -> Iterator[tuple[anthropic.Anthropic, Recorder]]:
    recorder = Recorder()
    with anthropic.Anthropic(base_url=proxy.url, api_key="k", max_retries=0, http_client=recorder.client) as sdk:
        yield sdk, recorder


# -- thread: the message-threads beta ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "thread",
    [{"type": "create"}, {"type": "continue", "previous_message_id": "msg_0123"}],
)
def test_a_thread_is_refused_with_the_code_the_sdks_act_on(
    http: httpx.Client, ollama: OllamaDouble, thread: dict[str, Any]
) -> None:
    # A continue turn carries only the newest messages: a tool result whose call the server was meant to hold. The
    # thread refusal must still win, or the SDKs would not fall back.
    orphan = [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_held", "content": "x"}]}]
    response = http.post(
        "/v1/messages",
        json=body(thread=thread, messages=orphan),
        headers={"anthropic-beta": "message-threads-2026-08-12"},
    )
    message = assert_invalid(response, "thread", "without `thread`")
    assert response.json()["error"]["details"] == {"error_code": "thread_unsupported_request"}
    assert message.startswith("thread: ")
    assert not ollama.chat_requests()


def test_other_errors_carry_no_details(http: httpx.Client) -> None:
    response = post(http, {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert_invalid(response, "max_tokens: field required")
    assert "details" not in response.json()["error"]


def test_a_null_thread_is_no_thread(http: httpx.Client, ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(content="ok"))
    assert post(http, body(thread=None)).status_code == 200


@beta_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def weather_responder(request: dict[str, Any]) -> Reply:
    results = [message["content"] for message in request["messages"] if message["role"] == "tool"]
    if results:
        return Reply(content=f"Paris: {results[0]}.")
    return Reply(tool_calls=[tool_call("get_weather", {"city": "Paris"})])


def assert_full_history_reached_ollama(ollama: OllamaDouble) -> None:
    first, second = ollama.chat_requests()  # the refused thread request never reached Ollama
    assert [m["role"] for m in first["messages"]] == ["user"]
    user, assistant, tool = second["messages"]
    assert user == {"role": "user", "content": "What is the weather in Paris?"}
    assert assistant["tool_calls"][0]["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}
    assert tool["role"] == "tool"
    assert tool["content"] == "sunny in Paris"
    assert tool["tool_name"] == "get_weather"


def assert_thread_then_fallback(exchanges: list[tuple[dict[str, Any], int]]) -> None:
    (created, created_status), *rest = exchanges
    assert created["thread"] == {"type": "create"}
    assert created_status == 400
    assert rest and all("thread" not in sent and status == 200 for sent, status in rest)
    assert len(rest[-1][0]["messages"]) == 3  # the last turn resent the whole conversation


@pytest.mark.parametrize("stream", [False, True])
def test_python_tool_runner_falls_back_to_full_history(
    recorder: tuple[anthropic.Anthropic, Recorder], ollama: OllamaDouble, stream: bool
) -> None:
    client, record = recorder
    ollama.set_responder(weather_responder)
    messages: list[anthropic.types.beta.BetaMessageParam] = [
        {"role": "user", "content": "What is the weather in Paris?"}
    ]
    if stream:
        runner = client.beta.messages.tool_runner(
            model="qwen3:8b", max_tokens=200, tools=[get_weather], messages=messages, stream=True
        )
        replies = [events.get_final_message() for events in runner]
    else:
        replies = list(
            client.beta.messages.tool_runner(model="qwen3:8b", max_tokens=200, tools=[get_weather], messages=messages)
        )
    final = replies[-1].content[-1]
    assert final.type == "text"
    assert final.text == "Paris: sunny in Paris."
    assert_full_history_reached_ollama(ollama)
    assert_thread_then_fallback(record.exchanges)


def run_sdk_ts(scenario: str, proxy: ProxyProcess) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not (SDK_TS / "node_modules" / "@anthropic-ai" / "sdk").exists():
        reason = (
            "THE TYPESCRIPT SDK IS NOT INSTALLED, so its end-to-end tests did not run. Install it with "
            "`npm ci --prefix tests/sdk-ts --no-audit --no-fund` (Node 20 or later)."
        )
        if os.environ.get("CCOP_REQUIRE_CLAUDE") == "1":  # CI's switch: every real client must be there
            pytest.fail(reason)
        pytest.skip(reason)
    completed = subprocess.run(
        [node, str(SDK_TS / "sdk.mjs"), scenario, proxy.url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=SDK_TS,
        stdin=subprocess.DEVNULL,
    )
    assert completed.stdout.strip(), f"no output (exit {completed.returncode}):\n{completed.stderr}"
    result: dict[str, Any] = json.loads(completed.stdout)
    assert completed.returncode == 0, result
    return result


def test_typescript_tool_runner_falls_back_to_full_history(proxy: ProxyProcess, ollama: OllamaDouble) -> None:
    ollama.set_responder(weather_responder)
    result = run_sdk_ts("tool-runner", proxy)
    assert result["replies"][-1] == [{"type": "text", "text": "Paris: sunny in Paris."}]
    assert_full_history_reached_ollama(ollama)
    assert_thread_then_fallback([(sent["body"], sent["status"]) for sent in result["sent"]])


# -- output_config.format: structured outputs ----------------------------------------------------------------------


class City(pydantic.BaseModel):
    name: str
    population: int
    landmarks: list[str]


def test_python_parse_sends_the_schema_as_ollamas_format(
    recorder: tuple[anthropic.Anthropic, Recorder], ollama: OllamaDouble
) -> None:
    client, record = recorder
    ollama.enqueue(Reply(content='{"name": "Paris", "population": 2100000, "landmarks": ["Louvre"]}'))
    message = client.messages.parse(
        model="qwen3:8b",
        max_tokens=200,
        messages=[{"role": "user", "content": "Describe Paris."}],
        output_format=City,
    )
    assert message.parsed_output == City(name="Paris", population=2100000, landmarks=["Louvre"])
    (sent, _status), *_ = record.exchanges
    schema = sent["output_config"]["format"]["schema"]
    assert schema["properties"]["landmarks"]["type"] == "array"
    assert ollama.chat_requests()[-1]["format"] == schema


def test_typescript_parse(proxy: ProxyProcess, ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(content='{"city": "Paris", "population": 2100000}'))
    result = run_sdk_ts("parse", proxy)
    assert result["parsed"] == {"city": "Paris", "population": 2100000}
    assert ollama.chat_requests()[-1]["format"] == result["sent"][0]["body"]["output_config"]["format"]["schema"]


SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}


def test_effort_still_sets_the_thinking_level_beside_a_format(http: httpx.Client, ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(thinking="hmm", content='{"answer": 4}'))
    fields = {
        "model": "gpt-oss:20b",
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "output_config": {"effort": "high", "format": {"type": "json_schema", "schema": SCHEMA}},
    }
    assert post(http, body(**fields)).status_code == 200
    chat = ollama.chat_requests()[-1]
    assert chat["think"] == "high"
    assert chat["format"] == SCHEMA


def test_a_format_streams_like_any_answer(http: httpx.Client, ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(content='{"answer": 4}'))
    fields = {"stream": True, "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}}
    with http.stream("POST", "/v1/messages", json=body(**fields)) as response:
        assert response.status_code == 200
        text = response.read().decode()
    assert '"text_delta"' in text
    assert ollama.chat_requests()[-1]["format"] == SCHEMA


def test_the_deprecated_top_level_output_format_is_the_same(http: httpx.Client, ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(content='{"answer": 4}'))
    assert post(http, body(output_format={"type": "json_schema", "schema": SCHEMA})).status_code == 200
    assert ollama.chat_requests()[-1]["format"] == SCHEMA


def test_no_format_sends_none(http: httpx.Client, ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(content="ok"), Reply(content="ok"))
    assert post(http, body(output_config={"effort": "low"})).status_code == 200
    assert post(http, body(output_config={"format": None})).status_code == 200
    assert all("format" not in chat for chat in ollama.chat_requests())


def fmt(schema: Any) -> dict[str, Any]:
    return {"output_config": {"format": {"type": "json_schema", "schema": schema}}}


@pytest.mark.parametrize(
    ("fields", "needles"),
    [
        ({"output_config": "json"}, ["output_config: expected an object, got string"]),
        ({"output_config": {"format": "json"}}, ["output_config.format: expected an object"]),
        ({"output_config": {"format": {"type": "json"}}}, ["output_config.format.type", "'json_schema'", "'json'"]),
        ({"output_config": {"format": {"type": "json_schema"}}}, ["output_config.format.schema: field required"]),
        (fmt([{"type": "object"}]), ["output_config.format.schema: expected a JSON Schema object, got array"]),
        (
            {"output_format": {"type": "json_schema", "schema": SCHEMA}, **fmt(SCHEMA)},
            ["output_format", "send only `output_config.format`"],
        ),
        (fmt({"$ref": "https://example.com/city.json"}), ["output_config.format.schema.$ref", "is not supported"]),
        (
            fmt({"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}}),
            ["output_config.format.schema.properties.a.$ref", "points to nothing", "'$defs' not found"],
        ),
        (
            fmt({"type": "object", "properties": {"a": {"description": "anything"}}}),
            ["output_config.format.schema.properties.a: Ollama cannot use", "give it a `type`"],
        ),
        (fmt({"type": "object", "properties": {"a": True}}), ["properties.a", "expected a schema object, got boolean"]),
        (fmt({"type": "dict"}), ["output_config.format.schema.type", "unknown type 'dict'"]),
        (fmt({"type": "string", "pattern": "[a-z]+"}), ["schema.pattern", "must start with '^' and end with '$'"]),
        (fmt({"type": "string", "pattern": "^a]$"}), ["schema.pattern", "unbalanced ']'"]),
        (fmt({"type": "string", "pattern": "^*a$"}), ["schema.pattern", "nothing to repeat before '*'"]),
        (fmt({"type": "string", "pattern": "^a{x}$"}), ["schema.pattern", "invalid number in curly brackets"]),
        (fmt({"type": "string", "format": 5}), ["output_config.format.schema.format: expected a string, got number"]),
        (fmt({"type": "array", "items": {"type": "string"}, "minItems": "1"}), ["schema.minItems: expected a number"]),
        (fmt({"anyOf": {"type": "string"}}), ["output_config.format.schema.anyOf: expected an array of schemas"]),
        (
            fmt({"allOf": [{"$ref": "#/$defs/A"}], "$defs": {"A": {"$ref": "#/$defs/A"}}}),
            ["refers back to itself"],
        ),
    ],
)
def test_formats_ollama_cannot_take_are_400(
    http: httpx.Client, ollama: OllamaDouble, fields: dict[str, Any], needles: list[str]
) -> None:
    assert_invalid(post(http, body(**fields)), *needles)
    assert not ollama.chat_requests()


@pytest.mark.parametrize(
    "schema",
    [
        # What the Python SDK generates for nested models: local references, a recursive one included.
        {
            "type": "object",
            "properties": {"root": {"$ref": "#/$defs/Node"}},
            "$defs": {
                "Node": {
                    "type": "object",
                    "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}},
                    "additionalProperties": False,
                }
            },
        },
        {"type": "object", "properties": {"tag": {"enum": ["a", "b"]}, "n": {"type": ["integer", "null"]}}},
        {"type": "object", "properties": {"when": {"type": "string", "format": "date-time"}}},
        {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{2}\\d{3}(-[a-z]+)?$"}}},
        {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 10}}},
        {"allOf": [{"properties": {"a": {"type": "string"}}}, {"anyOf": [{"properties": {"b": {"type": "number"}}}]}]},
        {},
    ],
)
def test_schemas_ollama_takes_pass(http: httpx.Client, ollama: OllamaDouble, schema: dict[str, Any]) -> None:
    ollama.enqueue(Reply(content="{}"))
    assert post(http, body(**fmt(schema))).status_code == 200, schema
    assert ollama.chat_requests()[-1]["format"] == schema


def test_the_double_checks_format_like_ollama(ollama: OllamaDouble) -> None:
    """Straight to the double: Ollama checks `format` when the model runs, and answers 500 (no status of its own)."""
    chat = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    with httpx.Client(base_url=ollama.url, trust_env=False, timeout=10) as session:
        wrong = session.post("/api/chat", json={**chat, "format": "xml"})
        assert wrong.status_code == 500
        assert wrong.json() == {"error": 'invalid format: "\\"xml\\""; expected "json" or a valid JSON Schema object'}
        ollama.enqueue(Reply(content="{}"))
        any_object = session.post("/api/chat", json={**chat, "format": {"type": "object", "properties": {"a": {}}}})
        assert any_object.status_code == 200  # `{}` is "any object" to the converter
        unknown = session.post("/api/chat", json={**chat, "format": {"description": "no type"}})
        assert (unknown.status_code, unknown.json()) == (500, {"error": "invalid JSON schema in format"})
        for accepted in ("json", "", None, SCHEMA):
            ollama.enqueue(Reply(content="{}"))
            assert session.post("/api/chat", json={**chat, "format": accepted}).status_code == 200, accepted


# Schema-shaped values, some valid and many not, to hold the proxy's check against the double's (Ollama's) one.
_names = st.sampled_from(["a", "b", "$defs", "A", "type", "items"])
_schema = st.recursive(
    st.one_of(
        st.fixed_dictionaries({"type": st.sampled_from(["string", "integer", "object", "array", "bogus", "null"])}),
        st.fixed_dictionaries({"$ref": st.sampled_from(["#/$defs/A", "#/nope", "x.json", "#/$defs"])}),
        st.fixed_dictionaries({"type": st.just("string"), "pattern": st.sampled_from(["^a$", "a", "^[a$", "^a]$"])}),
        st.fixed_dictionaries({"description": st.just("d")}),
        st.just({}),
        st.booleans(),
    ),
    lambda inner: st.one_of(
        st.fixed_dictionaries({"type": st.just("object"), "properties": st.dictionaries(_names, inner, max_size=3)}),
        st.fixed_dictionaries({"type": st.just("array"), "items": inner}),
        st.fixed_dictionaries({"anyOf": st.lists(inner, max_size=3)}),
        st.fixed_dictionaries({"type": st.just("object"), "$defs": st.fixed_dictionaries({"A": inner})}),
    ),
    max_leaves=8,
)


@given(schema=_schema)
def test_every_schema_the_proxy_accepts_ollama_takes(schema: Any) -> None:
    request = body(**fmt(schema))
    try:
        validate_messages_request(request)
    except InvalidRequest as error:
        assert error.status == 400
        return
    assert _check_format(schema) is None, schema


# -- tool results without their tool use ---------------------------------------------------------------------------


def call(tool_id: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "tool_use", "id": tool_id, "name": "Read", "input": {}}]}


def result(tool_id: str, **extra: Any) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": "x"}], **extra}


USER = {"role": "user", "content": "go"}


@pytest.mark.parametrize(
    ("messages", "where", "tool_id"),
    [
        ([result("toolu_ghost")], "messages.0.content.0", "toolu_ghost"),
        ([USER, call("toolu_a"), result("toolu_b")], "messages.2.content.0", "toolu_b"),
        # Anthropic pairs a result with the assistant message just before it, not with any earlier one.
        (
            [USER, call("toolu_a"), result("toolu_a"), call("toolu_b"), result("toolu_a")],
            "messages.4.content.0",
            "toolu_a",
        ),
    ],
)
def test_a_tool_result_without_its_tool_use_is_400(
    http: httpx.Client, ollama: OllamaDouble, messages: list[dict[str, Any]], where: str, tool_id: str
) -> None:
    message = assert_invalid(post(http, body(messages=messages)))
    assert message == (
        f"{where}: unexpected `tool_use_id` found in `tool_result` blocks: {tool_id}. Each `tool_result` block must "
        "have a corresponding `tool_use` block in the previous message."
    )
    assert not ollama.chat_requests()


@pytest.mark.parametrize(
    "messages",
    [
        # Claude Code puts `role: "system"` messages between turns.
        [USER, call("toolu_a"), {"role": "system", "content": "deferred tools: NotebookEdit"}, result("toolu_a")],
        # Consecutive messages of one role are one turn, as on Anthropic's side.
        [USER, call("toolu_a"), {"role": "assistant", "content": "and"}, result("toolu_a")],
        [USER, call("toolu_a"), {"role": "user", "content": "wait"}, result("toolu_a")],
        [USER, call("toolu_a"), result("toolu_a"), {"role": "user", "content": "more"}],
    ],
)
def test_tool_results_paired_across_system_messages_and_merged_turns_pass(
    http: httpx.Client, ollama: OllamaDouble, messages: list[dict[str, Any]]
) -> None:
    ollama.enqueue(Reply(content="ok"))
    assert post(http, body(messages=messages)).status_code == 200


def test_count_tokens_counts_an_unpaired_tool_result(http: httpx.Client) -> None:
    """A count is an estimate: Claude Code's /context counts parts of a conversation, which need not pair up."""
    counted = http.post("/v1/messages/count_tokens", json={"model": "m", "messages": [result("toolu_ghost")]})
    assert counted.status_code == 200


# -- any mix of these fields is translated or a clean 400 ----------------------------------------------------------

_anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_fields = st.fixed_dictionaries(
    {},
    optional={
        "thread": _anything,
        "output_config": _anything
        | st.fixed_dictionaries(
            {
                "effort": _anything,
                "format": _anything
                | st.fixed_dictionaries({"type": st.just("json_schema"), "schema": _schema | _anything}),
            }
        ),
        "output_format": _anything,
        "tools": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["Read", "Later"])},
                optional={"input_schema": st.just({"type": "object"}), "defer_loading": _anything, "type": _anything},
            ),
            max_size=3,
        ),
    },
)
_reference = st.fixed_dictionaries({"type": st.just("tool_reference"), "tool_name": _anything})


@given(fields=_fields, reference=_reference, tool_id=st.sampled_from(["t1", "t2"]))
def test_any_mix_of_these_fields_is_translated_or_a_clean_400(
    fields: dict[str, Any], reference: dict[str, Any], tool_id: str
) -> None:
    messages = [
        USER,
        call("t1"),
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": [reference]}]},
    ]
    try:
        checked = validate_messages_request(body(messages=messages, **fields))
        plan = build_chat_request(checked, ollama_model="m", traits=ModelTraits(thinks=True), strict_thinking=False)
    except InvalidRequest as error:
        assert error.status == 400
        assert error.message
        return
    assert all(
        tool["function"]["name"] in {t["name"] for t in plan.offered_tools} for tool in plan.body.get("tools", [])
    )
    assert "format" not in plan.body or isinstance(plan.body["format"], dict)
