"""What Ollama refuses before generating, in ChatHandler's order.

ccop never sends a malformed request, so the shape of a body is checked simply: anything Go's decoder would reject
(a wrong JSON type where ccop's tests would notice, such as a content array, tool arguments sent as a string, a
``data:`` URL in ``images``, tool ``properties`` that are not an object) is one 400 naming the field. The texts ccop
reads or its tests assert are Ollama's own: unknown model (404), missing capabilities, the context overflow with
``truncate:false``, and the 500s of options and ``format`` that Ollama only finds once the model is scheduled.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from typing import Any

import orjson

from .catalogue import ModelSpec, full_name
from .grammar import check_format

Json = dict[str, Any]

THINK_LEVELS = ("high", "medium", "low", "max")
# Go's time.ParseDuration: a signed sequence of decimal numbers with units, or a bare "0".
_DURATION = re.compile(r"[-+]?(?:0|(?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|μs|ms|s|m|h))+)")
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
# api.Duration maps any negative keep_alive to math.MaxInt64 nanoseconds ("forever").
FOREVER_NS = 2**63 - 1
_MESSAGE_STRINGS = ("role", "content", "thinking", "tool_name", "tool_call_id")
_REQUEST_BOOLS = ("stream", "truncate", "shift", "logprobs")
# Types of the options Ollama knows [src api.Options]; FromMap checks them when the runner is scheduled.
_OPTION_TYPES: dict[str, str] = {
    **dict.fromkeys(
        ("num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "num_ctx", "num_batch", "num_gpu"), "integer"
    ),
    **dict.fromkeys(("main_gpu", "num_thread"), "integer"),
    **dict.fromkeys(
        ("top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty", "frequency_penalty"),
        "float32",
    ),
    "use_mmap": "boolean",
    "stop": "array",
}


class ChatError(Exception):
    """A request Ollama refuses: answered ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_object(raw: bytes) -> Json:
    """The JSON object of a request body; an empty, broken or non-object body is a 400."""
    if not raw.strip():
        raise ChatError(400, "missing request body")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ChatError(400, f"invalid JSON body: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ChatError(400, "invalid request body: not a JSON object")
    return data


def _is_int(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def _is_base64(text: str) -> bool:
    """Go's ``base64.StdEncoding``, which Ollama decodes ``images`` with: padding required, line breaks skipped."""
    try:
        base64.b64decode(text.replace("\r", "").replace("\n", ""), validate=True)
    except binascii.Error:
        return False
    return True


def _wrong(where: str, expected: str) -> str:
    return f"invalid request: {where} must be {expected}"


def _tool_call_problems(call: Any, where: str) -> Iterator[str]:
    if not isinstance(call, dict):
        yield _wrong(where, "an object")
        return
    function = call.get("function")
    if "id" in call and not isinstance(call["id"], (str, type(None))):
        yield _wrong(f"{where}.id", "a string")
    if function is None:
        return
    if not isinstance(function, dict):
        yield _wrong(f"{where}.function", "an object")
        return
    if not isinstance(function.get("name", ""), (str, type(None))):
        yield _wrong(f"{where}.function.name", "a string")
    if function.get("index") is not None and not _is_int(function["index"]):
        yield _wrong(f"{where}.function.index", "an integer")
    if not isinstance(function.get("arguments", {}), (dict, type(None))):
        yield _wrong(f"{where}.function.arguments", "an object")


def _message_problems(msg: Any, where: str) -> Iterator[str]:
    if not isinstance(msg, dict):
        yield _wrong(where, "an object")
        return
    for key in _MESSAGE_STRINGS:
        if not isinstance(msg.get(key, ""), (str, type(None))):
            yield _wrong(f"{where}.{key}", "a string")
    images = msg.get("images") or []
    if not isinstance(images, list):
        yield _wrong(f"{where}.images", "an array")
        return
    for position, image in enumerate(images):
        if not isinstance(image, str) or not _is_base64(image):
            yield f"illegal base64 data in {where}.images[{position}]"
    calls = msg.get("tool_calls") or []
    if not isinstance(calls, list):
        yield _wrong(f"{where}.tool_calls", "an array")
        return
    for position, call in enumerate(calls):
        yield from _tool_call_problems(call, f"{where}.tool_calls[{position}]")


def _tool_problems(tool: Any, where: str) -> Iterator[str]:
    if not isinstance(tool, dict):
        yield _wrong(where, "an object")
        return
    # Each level may be absent (null), but what is there must be an object.
    node: Any = tool
    for path in ("function", "function.parameters", "function.parameters.properties"):
        node = node.get(path.rpartition(".")[2])
        if node is None:
            return
        if not isinstance(node, dict):
            yield _wrong(f"{where}.{path}", "an object")
            return


def _list_problems(data: Json, key: str, check: Any) -> Iterator[str]:
    items = data.get(key) or []
    if not isinstance(items, list):
        yield _wrong(key, "an array")
        return
    for position, item in enumerate(items):
        if item is not None:
            yield from check(item, f"{key}[{position}]")


def _shape_problems(data: Json) -> Iterator[str]:
    """Everything Go's decoder would refuse in a ``ChatRequest`` that matters here."""
    if not isinstance(data.get("model", ""), (str, type(None))):
        yield _wrong("model", "a string")
    yield from _list_problems(data, "messages", _message_problems)
    yield from _list_problems(data, "tools", _tool_problems)
    if not isinstance(data.get("options") or {}, dict):
        yield _wrong("options", "an object")
    for key in _REQUEST_BOOLS:
        if not isinstance(data.get(key, False), (bool, type(None))):
            yield _wrong(key, "a boolean")
    think = data.get("think")
    if think is not None and not isinstance(think, bool) and think not in THINK_LEVELS:
        yield _wrong("think", '"high", "medium", "low", "max", true or false')
    keep_alive = data.get("keep_alive")
    if isinstance(keep_alive, bool) or not isinstance(keep_alive, (int, float, str, type(None))):
        yield _wrong("keep_alive", "a number of seconds or a duration")


def check_request(data: Json) -> None:
    """The decoder's checks, then the model name; ``ChatError`` on the first problem."""
    problem = next(_shape_problems(data), None)
    if problem is not None:
        raise ChatError(400, problem)
    if not data.get("model"):
        raise ChatError(400, "model is required")


def check_capabilities(data: Json, spec: ModelSpec) -> None:
    """Thinking, chat and tools support, with Ollama's texts (ccop passes them on when it could not tell first)."""
    name: str = data["model"]
    think = data.get("think")
    if "thinking" not in spec.capabilities and think is not None and think is not False:
        raise ChatError(400, f"{json.dumps(name)} does not support thinking")
    if "completion" not in spec.capabilities:
        raise ChatError(400, f"{json.dumps(name)} does not support chat")
    if data.get("tools") and "tools" not in spec.capabilities:
        raise ChatError(400, f"{full_name(name)} does not support tools")


def check_options(options: Json) -> None:
    """``api.Options.FromMap``: a wrongly typed known option fails scheduling, which Ollama answers with a 500."""
    for key, value in options.items():
        kind = _OPTION_TYPES.get(key)
        if kind is None or value is None:
            continue
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        fits = {
            "integer": is_number,
            "float32": is_number,
            "boolean": isinstance(value, bool),
            "array": isinstance(value, list) and all(isinstance(item, str) for item in value),
        }[kind]
        if not fits:
            raise ChatError(500, f'option "{key}" must be of type {kind}')


def check_prompt(data: Json, tokens: int, num_ctx: int) -> None:
    """With ``truncate:false`` a prompt over the context is a 400 (ccop reads the numbers out of this text), and a
    ``format`` the grammar converter refuses fails the completion with a 500."""
    if data.get("truncate") is False and tokens > num_ctx:
        raise ChatError(
            400, f"request ({tokens} tokens) exceeds the available context size ({num_ctx} tokens), try increasing it"
        )
    problem = check_format(data.get("format"))
    if problem is not None:
        raise ChatError(500, problem)


def keep_alive_ns(value: Any, default_ns: int) -> int:
    """``api.Duration``: seconds as a number or a Go duration string; negative is forever, absent the default."""
    if value is None:
        return default_ns
    if isinstance(value, (int, float)):
        ns = int(value * 1e9)
    elif _DURATION.fullmatch(value):
        ns = sum(int(float(number) * _UNIT_NS[unit]) for number, unit in _DURATION_PART.findall(value))
        ns = -ns if value.startswith("-") else ns
    elif re.fullmatch(r"[-+]?[\d.]+", value):
        raise ChatError(400, f"time: missing unit in duration {json.dumps(value)}")
    else:
        raise ChatError(400, f"time: invalid duration {json.dumps(value)}")
    return FOREVER_NS if ns < 0 else ns
