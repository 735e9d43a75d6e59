"""Tool calls from small local models: schema-aware repair, calls written as text, parallel calls, counters.

The Ollama double emits each broken form; the assertions are on the `tool_use` blocks the `anthropic` SDK receives.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest

from conftest import ProxyProcess
from ollama_double import OllamaDouble, Reply, tool_call

TOOLS: list[Any] = [
    {
        "name": "Read",
        "description": "Read a file",
        "input_schema": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "limit": {"type": "integer"},
                "offset": {"type": "integer"},
            },
            "required": ["path"],
        },
    },
    {
        "name": "Bash",
        "description": "Run a command",
        "input_schema": {
            "type": "object",
            "properties": {
                "command": {"type": "string"},
                "timeout": {"type": "number"},
                "run_in_background": {"type": "boolean"},
            },
            "required": ["command"],
        },
    },
    {
        "name": "MultiRead",
        "description": "Read several files",
        "input_schema": {
            "type": "object",
            "properties": {
                "paths": {"type": "array", "items": {"type": "string"}},
                "options": {"type": "object"},
            },
            "required": ["paths"],
        },
    },
]
QUESTION: list[Any] = [{"role": "user", "content": "do it"}]

both_modes = pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])


def ask(client: anthropic.Anthropic, stream: bool, tools: list[Any] | None = TOOLS) -> anthropic.types.Message:
    kwargs: dict[str, Any] = {"model": "llama3.1", "max_tokens": 512, "messages": QUESTION}
    if tools is not None:
        kwargs["tools"] = tools
    if stream:
        with client.messages.stream(**kwargs) as events:
            return events.get_final_message()
    message: anthropic.types.Message = client.messages.create(**kwargs)
    return message


def calls(message: anthropic.types.Message) -> list[tuple[str, Any]]:
    return [(block.name, block.input) for block in message.content if block.type == "tool_use"]


def text_of(message: anthropic.types.Message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


# -- schema-aware repair -----------------------------------------------------------------------------------------


@both_modes
@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        ("Read", {"path": "a.txt", "limit": "5"}, {"path": "a.txt", "limit": 5}),
        ("Read", {"path": "a.txt", "limit": "5x"}, {"path": "a.txt", "limit": "5x"}),  # not a number: left alone
        ("Read", {"path": "a.txt", "offset": None}, {"path": "a.txt"}),  # null for an optional field: dropped
        ("Read", {"path": None}, {"path": None}),  # a required value is never invented
        (
            "Bash",
            {"command": "ls", "run_in_background": "true", "timeout": "1.5"},
            {"command": "ls", "run_in_background": True, "timeout": 1.5},
        ),
        ("MultiRead", {"paths": '["a", "b"]'}, {"paths": ["a", "b"]}),  # a JSON-encoded array given as a string
        ("MultiRead", {"paths": "a"}, {"paths": ["a"]}),  # a single value where an array is required
        ("MultiRead", {"paths": ["a"], "options": '{"x": 1}'}, {"paths": ["a"], "options": {"x": 1}}),
        ("Read", {"file": "a.txt"}, {"file": "a.txt"}),  # unknown names are never renamed by guesswork
    ],
)
def test_schema_aware_repair(
    client: anthropic.Anthropic, ollama: OllamaDouble, stream: bool, name: str, arguments: Any, expected: Any
) -> None:
    ollama.enqueue(Reply(tool_calls=[tool_call(name, arguments)]))
    assert calls(ask(client, stream)) == [(name, expected)]


@both_modes
def test_string_arguments_are_healed_then_repaired(
    client: anthropic.Anthropic, ollama: OllamaDouble, stream: bool
) -> None:
    ollama.enqueue(Reply(tool_calls=[tool_call("Read", '"{\\"path\\": \\"a.txt\\", \\"limit\\": \\"10\\"}"')]))
    assert calls(ask(client, stream)) == [("Read", {"path": "a.txt", "limit": 10})]


# -- tool calls written as text ----------------------------------------------------------------------------------

TEXT_CALLS = {
    "tool_call_tag": 'Let me read it.\n<tool_call>\n{"name": "Read", "arguments": {"path": "a.txt"}}\n</tool_call>',
    "fenced_json": 'Let me read it.\n```json\n{"name": "Read", "arguments": {"path": "a.txt"}}\n```',
    "bare_json_parameters": 'Let me read it.\n{"name": "Read", "parameters": {"path": "a.txt"}}',
    "qwen_xml": "Let me read it.\n<tool_call>\n<function=Read>\n<parameter=path>\na.txt\n</parameter>\n</function>\n"
    "</tool_call>",
    "bare_function_xml": "Let me read it.\n<function=Read>\n<parameter=path>\na.txt\n</parameter>\n</function>",
}


@both_modes
@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
@pytest.mark.parametrize("form", sorted(TEXT_CALLS))
def test_tool_calls_written_as_text_become_tool_use(
    client: anthropic.Anthropic, ollama: OllamaDouble, stream: bool, chunk_size: int, form: str
) -> None:
    ollama.enqueue(Reply(content=TEXT_CALLS[form], chunk_size=chunk_size))
    message = ask(client, stream)
    assert calls(message) == [("Read", {"path": "a.txt"})]
    assert text_of(message).strip() == "Let me read it."
    assert message.stop_reason == "tool_use"


@pytest.mark.parametrize("form", sorted(TEXT_CALLS))
def test_text_calls_are_never_streamed_and_then_retracted(proxy: ProxyProcess, ollama: OllamaDouble, form: str) -> None:
    ollama.enqueue(Reply(content=TEXT_CALLS[form], chunk_size=1))
    body = {"model": "llama3.1", "max_tokens": 512, "stream": True, "messages": QUESTION, "tools": TOOLS}
    response = httpx.post(f"{proxy.url}/v1/messages", json=body, timeout=30, trust_env=False)
    deltas = [
        json.loads(line[len("data: ") :])["delta"]
        for line in response.text.splitlines()
        if line.startswith("data: ") and "text_delta" in line
    ]
    streamed = "".join(delta["text"] for delta in deltas)
    assert "Read" not in streamed and "a.txt" not in streamed
    assert streamed.strip() == "Let me read it."


@both_modes
def test_xml_parameters_follow_the_schema(client: anthropic.Anthropic, ollama: OllamaDouble, stream: bool) -> None:
    text = "<tool_call>\n<function=Read>\n<parameter=path>\nb.txt\n</parameter>\n<parameter=limit>\n20\n</parameter>\n"
    ollama.enqueue(Reply(content=text + "</function>\n</tool_call>", chunk_size=2))
    assert calls(ask(client, stream)) == [("Read", {"path": "b.txt", "limit": 20})]


@both_modes
def test_several_text_calls_keep_their_order(client: anthropic.Anthropic, ollama: OllamaDouble, stream: bool) -> None:
    text = (
        '<tool_call>{"name": "Read", "arguments": {"path": "1"}}</tool_call>\n'
        '<tool_call>{"name": "Bash", "arguments": {"command": "ls"}}</tool_call>'
    )
    ollama.enqueue(Reply(content=text, chunk_size=4))
    message = ask(client, stream)
    assert calls(message) == [("Read", {"path": "1"}), ("Bash", {"command": "ls"})]
    ids = [block.id for block in message.content if block.type == "tool_use"]
    assert len(set(ids)) == 2 and all(ids)


@both_modes
@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>{"name": "Delete", "arguments": {"path": "/"}}</tool_call>',  # not an offered tool
        'Here is JSON: {"name": "Read", "arguments": {"path": "a"}} inside a sentence.',  # mid-line: prose
        "```python\nprint({'name': 'Read'})\n```",  # ordinary code
        "Use <b>bold</b> and {braces} freely.",
    ],
)
def test_ordinary_text_is_left_alone(
    client: anthropic.Anthropic, ollama: OllamaDouble, stream: bool, text: str
) -> None:
    ollama.enqueue(Reply(content=text, chunk_size=3))
    message = ask(client, stream)
    assert calls(message) == []
    assert text_of(message) == text
    assert message.stop_reason == "end_turn"


@both_modes
def test_text_calls_need_tools_in_the_request(client: anthropic.Anthropic, ollama: OllamaDouble, stream: bool) -> None:
    text = '<tool_call>{"name": "Read", "arguments": {"path": "a"}}</tool_call>'
    ollama.enqueue(Reply(content=text))
    message = ask(client, stream, tools=None)
    assert calls(message) == []
    assert text_of(message) == text


# -- parallel calls and counters ---------------------------------------------------------------------------------


@both_modes
def test_parallel_calls_keep_order_and_get_distinct_ids(
    client: anthropic.Anthropic, ollama: OllamaDouble, stream: bool
) -> None:
    ollama.enqueue(
        Reply(
            tool_calls=[
                tool_call("Read", {"path": "1"}, call_id=""),
                tool_call("Read", {"path": "2"}, call_id=""),
                tool_call("Bash", {"command": "ls"}, call_id="call_same"),
                tool_call("Bash", {"command": "pwd"}, call_id="call_same"),
            ]
        )
    )
    message = ask(client, stream)
    assert calls(message) == [
        ("Read", {"path": "1"}),
        ("Read", {"path": "2"}),
        ("Bash", {"command": "ls"}),
        ("Bash", {"command": "pwd"}),
    ]
    ids = [block.id for block in message.content if block.type == "tool_use"]
    assert len(set(ids)) == 4
    assert ids[0].startswith("toolu_") and ids[2] == "call_same"


def test_repairs_are_counted_in_health(client: anthropic.Anthropic, http: httpx.Client, ollama: OllamaDouble) -> None:
    before = http.get("/health").json()["tool_calls"]
    ollama.enqueue(Reply(tool_calls=[tool_call("Read", {"path": "a", "limit": "5"})]))
    ask(client, False)
    ollama.enqueue(Reply(content='<tool_call>{"name": "Read", "arguments": {"path": "a"}}</tool_call>'))
    ask(client, False)
    ollama.enqueue(Reply(tool_calls=[tool_call("Read", '{"path": "a"}')]))
    ask(client, False)
    after = http.get("/health").json()["tool_calls"]

    def grew(kind: str) -> int:
        return int(after.get(kind, 0)) - int(before.get(kind, 0))

    assert grew("coerced") == 1
    assert grew("text_call") == 1
    assert grew("parsed_string") == 1
