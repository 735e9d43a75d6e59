"""Ollama → Anthropic: the answers clients receive, non-streaming and streaming, through the `anthropic` SDK."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from ollama_double import OllamaDouble, Reply, tool_call

QUESTION: list[Any] = [{"role": "user", "content": "hello"}]
READ_TOOL: list[Any] = [
    {
        "name": "Read",
        "description": "Read a file",
        "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    },
    {
        "name": "Write",
        "description": "Write a file",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
        },
    },
]


def ask(client: anthropic.Anthropic, stream: bool, **kwargs: Any) -> anthropic.types.Message:
    kwargs.setdefault("model", "claude-sonnet-5-5")
    kwargs.setdefault("max_tokens", 256)
    kwargs.setdefault("messages", QUESTION)
    if stream:
        with client.messages.stream(**kwargs) as events:
            return events.get_final_message()
    message: anthropic.types.Message = client.messages.create(**kwargs)
    return message


both_modes = pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])


@both_modes
def test_plain_text_answer(client: anthropic.Anthropic, ollama: OllamaDouble, stream: bool) -> None:
    ollama.enqueue(Reply(content="Hi there, ünïcødé ✓ and 🎉.", prompt_eval_count=42, eval_count=9))
    message = ask(client, stream)
    assert message.id.startswith("msg_")
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == "claude-sonnet-5-5"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Hi there, ünïcødé ✓ and 🎉."  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert message.usage.input_tokens == 42
    assert message.usage.output_tokens == 9


@both_modes
def test_text_split_across_arbitrary_byte_boundaries(
    client: anthropic.Anthropic, ollama: OllamaDouble, stream: bool
) -> None:
    text = "Grüße aus Köln — 日本語のテキスト 🎉🎉 end."
    ollama.enqueue(Reply(content=text, chunk_size=1, split_every=3))
    message = ask(client, stream)
    assert message.content[0].text == text  # type: ignore[union-attr]


@both_modes
def test_thinking_then_text(client: anthropic.Anthropic, ollama: OllamaDouble, stream: bool) -> None:
    ollama.enqueue(Reply(thinking="Let me think about this.", content="The answer."))
    message = ask(client, stream, model="qwen3:8b", thinking={"type": "enabled", "budget_tokens": 2048})
    assert [block.type for block in message.content] == ["thinking", "text"]
    thinking = message.content[0]
    assert thinking.thinking == "Let me think about this."  # type: ignore[union-attr]
    assert thinking.signature  # type: ignore[union-attr]
    assert message.content[1].text == "The answer."  # type: ignore[union-attr]


@both_modes
@pytest.mark.parametrize("in_final", [False, True], ids=["mid-stream", "final-chunk"])
def test_tool_calls(client: anthropic.Anthropic, ollama: OllamaDouble, stream: bool, in_final: bool) -> None:
    ollama.enqueue(
        Reply(
            content="Reading both.",
            tool_calls=[
                tool_call("Read", {"path": "a.txt"}, call_id="call_abc12345"),
                tool_call("Write", {"path": "b.txt", "content": "x"}, call_id=""),
            ],
            tool_calls_in_final=in_final,
        )
    )
    message = ask(client, stream, tools=READ_TOOL)
    assert [block.type for block in message.content] == ["text", "tool_use", "tool_use"]
    first, second = message.content[1], message.content[2]
    assert first.type == "tool_use" and second.type == "tool_use"
    assert first.id == "call_abc12345"  # Ollama's own id is kept: the next turn's tool_result refers to it
    assert first.name == "Read"
    assert first.input == {"path": "a.txt"}
    assert second.id.startswith("toolu_") and len(second.id) > 10  # generated where Ollama gave none
    assert second.input == {"path": "b.txt", "content": "x"}
    assert message.stop_reason == "tool_use"


@both_modes
def test_string_arguments_are_healed(client: anthropic.Anthropic, ollama: OllamaDouble, stream: bool) -> None:
    ollama.enqueue(
        Reply(
            tool_calls=[
                tool_call("Read", '{"path": "a.txt"}'),
                tool_call("Read", '"{\\"path\\": \\"b.txt\\"}"'),
                tool_call("Read", "not json at all"),
            ]
        )
    )
    message = ask(client, stream, tools=READ_TOOL)
    inputs = [block.input for block in message.content if block.type == "tool_use"]
    assert inputs == [{"path": "a.txt"}, {"path": "b.txt"}, {"raw": "not json at all"}]
    ids = [block.id for block in message.content if block.type == "tool_use"]
    assert len(set(ids)) == 3


@both_modes
def test_content_in_the_final_chunk_is_kept(client: anthropic.Anthropic, ollama: OllamaDouble, stream: bool) -> None:
    ollama.enqueue(Reply(content="Start, ", content_in_final="and the end."))
    message = ask(client, stream)
    assert message.content[0].text == "Start, and the end."  # type: ignore[union-attr]


@both_modes
def test_length_at_max_tokens_is_max_tokens(client: anthropic.Anthropic, ollama: OllamaDouble, stream: bool) -> None:
    ollama.enqueue(Reply(content="cut", done_reason="length", eval_count=16))
    assert ask(client, stream, max_tokens=16).stop_reason == "max_tokens"


@both_modes
def test_length_below_max_tokens_is_a_full_context(
    client: anthropic.Anthropic, ollama: OllamaDouble, stream: bool
) -> None:
    ollama.enqueue(Reply(content="cut", done_reason="length", eval_count=3))
    assert ask(client, stream, max_tokens=32000).stop_reason == "model_context_window_exceeded"


@both_modes
def test_stop_sequence_is_reported(client: anthropic.Anthropic, ollama: OllamaDouble, stream: bool) -> None:
    ollama.enqueue(Reply(content="one two STOP three four", chunk_size=2))
    message = ask(client, stream, stop_sequences=["never", "STOP"])
    assert message.content[0].text == "one two "  # type: ignore[union-attr]
    assert message.stop_reason == "stop_sequence"
    assert message.stop_sequence == "STOP"


@both_modes
def test_unmatched_stop_sequence_prefix_is_not_lost(
    client: anthropic.Anthropic, ollama: OllamaDouble, stream: bool
) -> None:
    ollama.enqueue(Reply(content="ends with ST", chunk_size=3))
    message = ask(client, stream, stop_sequences=["STOP"])
    assert message.content[0].text == "ends with ST"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"


def test_cached_prompt_tokens_are_reported(client: anthropic.Anthropic, ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(content="ok", prompt_eval_count=1000, prompt_eval_cached_count=900))
    message = ask(client, False)
    # Anthropic counts cached prompt tokens apart from input_tokens; Ollama's count includes them.
    assert message.usage.input_tokens == 100
    assert message.usage.cache_read_input_tokens == 900
