"""Property tests of request validation and translation: any body is either translated or a clean 400."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ccop.errors import InvalidRequest
from ccop.translate import ModelTraits, build_chat_request
from ccop.validation import validate_count_tokens_request, validate_messages_request

text = st.text(max_size=20)
anything = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)
image_source = st.one_of(
    st.fixed_dictionaries({"type": st.just("base64"), "media_type": st.just("image/png"), "data": st.just("AAAA")}),
    st.fixed_dictionaries({"type": st.just("url"), "url": text}),
    anything,
)
block = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": text | anything}),
    st.fixed_dictionaries({"type": st.just("image"), "source": image_source}),
    st.fixed_dictionaries({"type": st.just("thinking"), "thinking": text, "signature": text}),
    st.fixed_dictionaries({"type": st.just("redacted_thinking"), "data": text}),
    st.fixed_dictionaries(
        {"type": st.just("tool_use"), "id": text, "name": text, "input": st.dictionaries(text, anything) | text}
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("tool_result"),
            "tool_use_id": text,
            "content": text | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": text}), max_size=2),
            "is_error": st.booleans(),
        }
    ),
    st.fixed_dictionaries({"type": st.just("document"), "source": anything, "title": text}),
    st.fixed_dictionaries({"type": text}),
    anything,
)
message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "robot"]),
        "content": text | st.lists(block, max_size=4) | anything,
    }
)
request = st.fixed_dictionaries(
    {
        "model": text | anything,
        "max_tokens": st.integers(-5, 200_000) | anything,
        "messages": st.lists(message, max_size=4),
    },
    optional={
        "system": text
        | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": text}), max_size=2)
        | anything,
        "tools": st.lists(
            st.fixed_dictionaries({"name": text}, optional={"input_schema": anything, "description": text}), max_size=2
        )
        | anything,
        "tool_choice": st.fixed_dictionaries({"type": st.sampled_from(["auto", "any", "tool", "none"]), "name": text})
        | anything,
        "thinking": st.fixed_dictionaries(
            {"type": st.sampled_from(["enabled", "disabled", "adaptive"]), "budget_tokens": st.integers(0, 50_000)}
        )
        | anything,
        "temperature": st.floats(-1, 3, allow_nan=False) | anything,
        "top_k": st.integers(-5, 10**9) | anything,
        "stop_sequences": st.lists(text, max_size=3) | anything,
        "stream": st.booleans() | anything,
    },
)


@given(body=request, thinks=st.booleans(), vision=st.booleans(), strict=st.booleans())
def test_any_body_is_translated_or_a_clean_400(body: dict[str, Any], thinks: bool, vision: bool, strict: bool) -> None:
    try:
        checked = validate_messages_request(body)
        plan = build_chat_request(
            checked,
            ollama_model="m",
            traits=ModelTraits(thinks=thinks, vision=vision, num_ctx=4096),
            strict_thinking=strict,
        )
    except InvalidRequest as error:
        assert error.status == 400
        assert error.message
        return
    assert plan.body["stream"] is True
    for sent in plan.body["messages"]:
        assert isinstance(sent["content"], str)  # Ollama rejects anything else
        for call in sent.get("tool_calls", ()):
            assert isinstance(call["function"]["arguments"], dict)
    assert plan.body["options"]["num_predict"] <= 4096


@given(body=anything | request)
def test_count_tokens_validation_never_raises_anything_else(body: Any) -> None:
    try:
        validate_count_tokens_request(body)
    except InvalidRequest as error:
        assert error.status == 400
