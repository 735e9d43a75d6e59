"""Checks of Anthropic request bodies, before anything is translated.

Each failure is an `InvalidRequest` whose message names the field with a JSON-path-like location
(`messages.2.content.0.text`), so a client author can find the problem without reading our code. Beyond shapes: a
`thread` is refused, because the proxy keeps no conversations.
"""

from __future__ import annotations

from typing import Any

from ccop.errors import InvalidRequest, ThreadUnsupported

__all__ = ["validate_count_tokens_request", "validate_messages_request"]

_ROLES = ("user", "assistant", "system")
_THINKING_TYPES = ("enabled", "disabled", "adaptive")
_TOOL_CHOICE_TYPES = ("auto", "any", "tool", "none")
# Go's int64 options overflow above this; nothing sensible needs more.
_MAX_INT_OPTION = 2**31 - 1


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _fail(field: str, expected: str, value: object) -> InvalidRequest:
    return InvalidRequest(f"{field}: expected {expected}, got {_type_name(value)}")


def _require_str(obj: dict[str, Any], key: str, where: str, *, allow_empty: bool = True) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        if key not in obj:
            raise InvalidRequest(f"{where}{key}: field required")
        raise _fail(f"{where}{key}", "a string", value)
    if not allow_empty and not value:
        raise InvalidRequest(f"{where}{key}: must not be empty")
    return value


def _missing(field: str) -> Any:
    raise InvalidRequest(f"{field}: field required")


def _check_int(value: object, field: str, *, minimum: int, maximum: int = _MAX_INT_OPTION) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(field, "an integer", value)
    if not minimum <= value <= maximum:
        raise InvalidRequest(f"{field}: must be between {minimum} and {maximum}, got {value}")


def _check_number(value: object, field: str, *, minimum: float, maximum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(field, "a number", value)
    if not minimum <= value <= maximum:
        raise InvalidRequest(f"{field}: must be between {minimum} and {maximum}, got {value}")


def _check_text_blocks(blocks: list[Any], where: str) -> None:
    for index, block in enumerate(blocks):
        field = f"{where}.{index}"
        if not isinstance(block, dict):
            raise _fail(field, "an object", block)
        _require_str(block, "type", f"{field}.")
        if block["type"] == "text":
            _require_str(block, "text", f"{field}.")


def _check_block(block: object, where: str) -> None:
    if not isinstance(block, dict):
        raise _fail(where, "a content block object", block)
    kind = _require_str(block, "type", f"{where}.")
    prefix = f"{where}."
    if kind == "text":
        _require_str(block, "text", prefix)
    elif kind == "thinking":
        _require_str(block, "thinking", prefix)
    elif kind == "image":
        source = block.get("source")
        if not isinstance(source, dict):
            raise _fail(f"{prefix}source", "an object", source)
        source_type = _require_str(source, "type", f"{prefix}source.")
        if source_type == "base64":
            _require_str(source, "data", f"{prefix}source.", allow_empty=False)
        elif source_type == "url":
            _require_str(source, "url", f"{prefix}source.")
    elif kind == "tool_use":
        _require_str(block, "id", prefix)
        _require_str(block, "name", prefix, allow_empty=False)
        if "input" in block and not isinstance(block["input"], (dict, str)):
            raise _fail(f"{prefix}input", "an object", block["input"])
    elif kind == "tool_result":
        _require_str(block, "tool_use_id", prefix)
        content = block.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise _fail(f"{prefix}content", "a string or an array of content blocks", content)
        if isinstance(content, list):
            for index, inner in enumerate(content):
                _check_block(inner, f"{prefix}content.{index}")
        if "is_error" in block and not isinstance(block["is_error"], bool):
            raise _fail(f"{prefix}is_error", "a boolean", block["is_error"])


def _check_messages(messages: object) -> None:
    if not isinstance(messages, list):
        if messages is None:
            _missing("messages")
        raise _fail("messages", "an array of messages", messages)
    if not messages:
        raise InvalidRequest("messages: at least one message is required")
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise _fail(where, "a message object", message)
        role = _require_str(message, "role", f"{where}.")
        if role not in _ROLES:
            raise InvalidRequest(f"{where}.role: expected one of {', '.join(_ROLES)}, got {role!r}")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            if "content" not in message:
                _missing(f"{where}.content")
            raise _fail(f"{where}.content", "a string or an array of content blocks", content)
        for block_index, block in enumerate(content):
            _check_block(block, f"{where}.content.{block_index}")


def _check_common(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest(f"request body: expected a JSON object, got {_type_name(body)}")
    _require_str(body, "model", "", allow_empty=False)
    _check_messages(body.get("messages"))
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list):
            raise _fail("system", "a string or an array of text blocks", system)
        _check_text_blocks(system, "system")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _fail("tools", "an array of tool definitions", tools)
        for index, tool in enumerate(tools):
            if not isinstance(tool, dict):
                raise _fail(f"tools.{index}", "a tool object", tool)
            _require_str(tool, "name", f"tools.{index}.", allow_empty=False)
            if "input_schema" in tool and not isinstance(tool["input_schema"], dict):
                raise _fail(f"tools.{index}.input_schema", "a JSON Schema object", tool["input_schema"])
            if "description" in tool and not isinstance(tool["description"], str):
                raise _fail(f"tools.{index}.description", "a string", tool["description"])
    tool_choice = body.get("tool_choice")
    if tool_choice is not None:
        if not isinstance(tool_choice, dict):
            raise _fail("tool_choice", "an object", tool_choice)
        choice = _require_str(tool_choice, "type", "tool_choice.")
        if choice not in _TOOL_CHOICE_TYPES:
            raise InvalidRequest(f"tool_choice.type: expected one of {', '.join(_TOOL_CHOICE_TYPES)}, got {choice!r}")
        if choice == "tool":
            _require_str(tool_choice, "name", "tool_choice.", allow_empty=False)
    thinking = body.get("thinking")
    if thinking is not None:
        if not isinstance(thinking, dict):
            raise _fail("thinking", "an object", thinking)
        kind = _require_str(thinking, "type", "thinking.")
        if kind not in _THINKING_TYPES:
            raise InvalidRequest(f"thinking.type: expected one of {', '.join(_THINKING_TYPES)}, got {kind!r}")
        if "budget_tokens" in thinking:
            _check_int(thinking["budget_tokens"], "thinking.budget_tokens", minimum=0)
    return body


def validate_messages_request(body: object) -> dict[str, Any]:
    """Check a `/v1/messages` body; returns it typed as a dict."""
    if isinstance(body, dict) and body.get("thread") is not None:
        # Checked first: a thread's `continue` turn carries only the newest messages, which would fail other
        # checks (a tool result without its call), and only this error makes the SDKs resend the full history.
        raise ThreadUnsupported(
            "thread: this server keeps no conversation between requests, so message threads are not supported; "
            "send the whole conversation in `messages` without `thread`"
        )
    checked = _check_common(body)
    if "max_tokens" not in checked:
        _missing("max_tokens")
    _check_int(checked["max_tokens"], "max_tokens", minimum=1)
    if "stream" in checked and not isinstance(checked["stream"], bool):
        raise _fail("stream", "a boolean", checked["stream"])
    if checked.get("temperature") is not None:
        _check_number(checked["temperature"], "temperature", minimum=0.0, maximum=2.0)
    if checked.get("top_p") is not None:
        _check_number(checked["top_p"], "top_p", minimum=0.0, maximum=1.0)
    if checked.get("top_k") is not None:
        _check_int(checked["top_k"], "top_k", minimum=0, maximum=100_000)
    stop = checked.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(item, str) and item for item in stop):
            raise _fail("stop_sequences", "an array of non-empty strings", stop)
    return checked


def validate_count_tokens_request(body: object) -> dict[str, Any]:
    """Check a `/v1/messages/count_tokens` body (the messages body without `max_tokens`)."""
    return _check_common(body)
