"""The Rust core through its Python binding, including property tests over arbitrary input."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ccop import _core

# -- shared strategies ----------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    pieces, previous = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[previous:point])
        previous = point
    return pieces


# -- SSE encoding ----------------------------------------------------------------------------------------------------


@given(event=st.from_regex(r"[a-z_]{1,20}", fullmatch=True), value=json_values)
def test_sse_frames_parse_back_to_what_was_encoded(event: str, value: Any) -> None:
    frame = _core.encode_sse(event, orjson.dumps(value)).decode()
    assert frame.endswith("\n\n")
    lines = frame[:-2].split("\n")
    assert lines[0] == f"event: {event}"
    data = "\n".join(line.removeprefix("data: ") for line in lines[1:])
    assert json.loads(data) == value


def test_sse_rejects_bad_event_names() -> None:
    with pytest.raises(_core.CoreError):
        _core.encode_sse("", b"{}")
    with pytest.raises(_core.CoreError):
        _core.encode_sse("a\nb", b"{}")


# -- tool-argument healing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "expected", "kind"),
    [
        ('{"path": "a", "n": 1}', {"path": "a", "n": 1}, "parsed_string"),
        ('"{\\"path\\": \\"a\\"}"', {"path": "a"}, "unescaped"),
        ('{\\"path\\": \\"a\\"}', {"path": "a"}, "unescaped"),
        ('```json\n{"path": "a"}\n```', {"path": "a"}, "unescaped"),
        ("", {}, "parsed_string"),
        ("not json", {"raw": "not json"}, "raw"),
        ("[1, 2]", {"raw": "[1, 2]"}, "raw"),
    ],
)
def test_healing_steps(arguments: str, expected: dict[str, Any], kind: str) -> None:
    healed, applied = _core.heal_tool_arguments(arguments)
    assert orjson.loads(healed) == expected
    assert applied == kind


def test_healing_keeps_key_order() -> None:
    healed, _ = _core.heal_tool_arguments('{"z": 1, "a": 2, "m": 3}')
    assert list(orjson.loads(healed)) == ["z", "a", "m"]


@given(data=st.binary(max_size=500))
def test_healing_arbitrary_bytes_always_gives_an_object(data: bytes) -> None:
    healed, kind = _core.heal_tool_arguments(data)
    assert isinstance(orjson.loads(healed), dict)
    assert kind in ("unchanged", "parsed_string", "unescaped", "raw")


@given(value=st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_healing_valid_objects_round_trip(value: dict[str, Any]) -> None:
    healed, _ = _core.heal_tool_arguments(orjson.dumps(value))
    assert orjson.loads(healed) == value


# -- token counting ----------------------------------------------------------------------------------------------


@given(text=st.text())
def test_count_tokens_matches_the_rule(text: str) -> None:
    # Python's str.split() also splits on the ASCII separators U+001C–U+001F, which are not Unicode whitespace.
    words = text.translate({code: "x" for code in range(0x1C, 0x20)}).split()
    assert _core.count_tokens(text) == sum(max(1, -(-len(word) // 4)) for word in words)


@given(data=st.binary(max_size=1000))
def test_arbitrary_bytes_never_crash_the_request_counter(data: bytes) -> None:
    try:
        assert _core.count_request_tokens(data) >= 0
    except _core.InvalidJsonError:
        pass


# -- stream translator -------------------------------------------------------------------------------------------


def chunk(content: str = "", *, done: bool = False, **extra: Any) -> bytes:
    line: dict[str, Any] = {"model": "m", "message": {"role": "assistant", "content": content}, "done": done, **extra}
    return orjson.dumps(line) + b"\n"


def translator(**kwargs: Any) -> _core.StreamTranslator:
    options: dict[str, Any] = {
        "message_id": "msg_1",
        "model": "claude-x",
        "input_tokens_estimate": 10,
        "max_tokens": 100,
    }
    options.update(kwargs)
    return _core.StreamTranslator(**options)


def events(frames: bytes) -> list[tuple[str, dict[str, Any]]]:
    parsed = []
    for frame in frames.decode().split("\n\n")[:-1]:
        event, data = frame.split("\n", 1)
        parsed.append((event.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return parsed


@given(cuts=st.lists(st.integers(0, 10_000), max_size=10))
def test_translator_result_does_not_depend_on_chunking(cuts: list[int]) -> None:
    stream = b"".join(chunk(word) for word in ["Grüße ", "aus ", "日本 ", "🎉"]) + chunk(
        done=True, done_reason="stop", prompt_eval_count=5, eval_count=4
    )
    whole = translator(emit_sse=False)
    whole.feed(stream)
    whole.finish()
    pieces = translator()
    frames = pieces.start()
    for piece in split_at(stream, cuts):
        frames += pieces.feed(piece)
    frames += pieces.finish()
    assert orjson.loads(pieces.message()) == orjson.loads(whole.message())
    text = "".join(data["delta"]["text"] for name, data in events(frames) if name == "content_block_delta")
    assert text == "Grüße aus 日本 🎉"
    assert [name for name, _ in events(frames)][-2:] == ["message_delta", "message_stop"]


@given(data=st.binary(max_size=2000))
def test_translator_survives_arbitrary_upstream_bytes(data: bytes) -> None:
    subject = translator()
    frames = subject.start() + subject.feed(data) + subject.finish()
    assert frames.endswith(b"\n\n")
    assert orjson.loads(subject.message())["type"] == "message"


def test_translator_reports_an_upstream_error() -> None:
    subject = translator()
    frames = subject.feed(chunk("partial") + b'{"error":"model runner has unexpectedly stopped"}\n')
    assert subject.error == ("api_error", "Ollama reported an error: model runner has unexpectedly stopped")
    assert events(frames)[-1][0] == "error"
