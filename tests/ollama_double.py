"""A faithful stand-in for an Ollama server, speaking its native wire format over real TCP.

Ollama cannot run on the test machines, so the proxy's tests talk to this double instead. It follows Ollama's
source and documentation: the request validation Ollama does (with its exact error texts and statuses), the field
order and ``omitempty`` rules of its JSON, NDJSON streaming with one HTTP chunk per line, and the two tool-call modes
(mid-stream chunks in "rendered" mode, everything in the final chunk in native llama-server mode).

The HTTP/1.1 server is written on raw ``asyncio`` streams on purpose: a web framework would buffer or coalesce writes,
and the tests need to control exactly which bytes leave in which TCP write (``Reply.split_every``), when the headers
go out (``Reply.first_byte_delay``) and to notice a client that goes away while nothing is being written.

The server runs its own event loop in a background thread, so synchronous tests (httpx, subprocesses, a real CLI)
can use it; every method meant for the test thread is thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http
import json
import re
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from types import TracebackType
from typing import Any

import orjson

__all__ = [
    "ChatStream",
    "ModelSpec",
    "OllamaDouble",
    "RecordedRequest",
    "Reply",
    "default_models",
    "estimate_prompt_tokens",
    "go_base64_error_offset",
    "make_tool_call",
    "tool_call",
]

Json = dict[str, Any]
Responder = Callable[[Json], "Reply"]

# Limits for the HTTP parser: generous, but bounded so a broken client cannot make the double eat the machine.
_MAX_LINE = 64 * 1024
_MAX_HEADERS = 200
_MAX_BODY = 256 * 1024 * 1024
# How much unread input the disconnect watcher buffers (e.g. a pipelined request) before it stops reading.
_MAX_PUSHBACK = 1024 * 1024

_DEFAULT_VERSION = "0.33.0"
# Ollama picks num_ctx from free VRAM when neither the request nor the Modelfile sets it; 4096 is the (<24 GiB) value.
_DEFAULT_NUM_CTX = 4096
_DEFAULT_KEEP_ALIVE_S = 300.0
_REGISTRY = "registry.ollama.ai"
_NAMESPACE = "library"

# Capabilities that tags/show may list [src types/model/capability.go].
CAPABILITIES = ("completion", "tools", "insert", "vision", "embedding", "thinking", "image", "audio")


# --------------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ModelSpec:
    """One installed model, as ``/api/tags``, ``/api/show`` and ``/api/chat`` see it.

    ``context_length`` is the *training* context (``model_info["<arch>.context_length"]``); ``num_ctx`` is the
    Modelfile ``PARAMETER num_ctx`` (``None`` when the Modelfile does not set one). ``parameters`` holds any other
    Modelfile parameters; a list value is printed as repeated lines, as Ollama does for ``stop``.
    """

    name: str
    capabilities: list[str] = field(default_factory=lambda: ["completion", "tools"])
    context_length: int = 32768
    architecture: str = "qwen3"
    num_ctx: int | None = None
    family: str | None = None
    parameter_size: str = "8.2B"
    quantization_level: str = "Q4_K_M"
    size: int = 5_225_375_744
    digest: str | None = None
    embedding_length: int = 4096
    parameters: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    modified_at: str = "2026-07-01T09:00:00Z"

    @property
    def effective_family(self) -> str:
        """The family reported in ``details``; Ollama derives it from the architecture unless told otherwise."""
        return self.family or self.architecture

    @property
    def effective_digest(self) -> str:
        """A stable fake sha256 digest, so tests can compare it across endpoints."""
        return self.digest or hashlib.sha256(self.name.encode()).hexdigest()

    @property
    def effective_template(self) -> str:
        """A Go template string shaped like the capabilities (Ollama detects tools/thinking from template markers)."""
        if self.template is not None:
            return self.template
        parts = ["{{- if .System }}{{ .System }}{{ end }}"]
        if "tools" in self.capabilities:
            parts.append("{{- if .Tools }}{{ range .Tools }}{{ . }}{{ end }}{{ end }}")
        if "thinking" in self.capabilities:
            parts.append("{{- if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}")
        parts.append("{{ range .Messages }}{{ .Content }}{{ end }}")
        return "".join(parts)


def default_models() -> list[ModelSpec]:
    """The models a fresh double has installed: one per capability combination the proxy must handle."""
    return [
        ModelSpec(
            "llama3.1:latest",
            ["completion", "tools"],
            context_length=131072,
            architecture="llama",
            parameter_size="8.0B",
            size=4_920_753_328,
            parameters={"stop": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]},
        ),
        ModelSpec(
            "qwen3:8b",
            ["completion", "tools", "thinking"],
            context_length=40960,
            architecture="qwen3",
            parameter_size="8.2B",
            parameters={"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.6, "top_k": 20, "top_p": 0.95},
        ),
        ModelSpec(
            "qwen3-coder:30b",
            ["completion", "tools"],
            context_length=262144,
            architecture="qwen3moe",
            parameter_size="30.5B",
            size=18_556_688_736,
            embedding_length=2048,
            parameters={"stop": ["<|im_end|>"], "temperature": 0.7},
        ),
        ModelSpec(
            "gemma2:latest",
            ["completion"],
            context_length=8192,
            architecture="gemma2",
            parameter_size="9.2B",
            size=5_443_152_417,
            embedding_length=3584,
            parameters={"stop": ["<start_of_turn>", "<end_of_turn>"]},
        ),
        ModelSpec(
            "llava:latest",
            ["completion", "vision"],
            context_length=32768,
            architecture="llama",
            parameter_size="7B",
            quantization_level="Q4_0",
            size=4_733_363_377,
            parameters={"stop": ["[INST]", "[/INST]"]},
        ),
    ]


_NAME_CHARS = re.compile(r"^[A-Za-z0-9_.\-/:@]+$")


def _full_name(name: str) -> str:
    """Expand ``[host/][namespace/]model[:tag]`` with Ollama's defaults (registry.ollama.ai, library, latest)."""
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        path, tag = name[:colon], name[colon + 1 :]
    else:
        path, tag = name, "latest"
    parts = path.split("/")
    if len(parts) == 1:
        parts = [_REGISTRY, _NAMESPACE, parts[0]]
    elif len(parts) == 2:
        parts = [_REGISTRY, *parts]
    return "/".join(parts) + ":" + tag


def _name_key(name: str) -> str:
    """The lookup key: the expanded name, lower-cased, because Ollama's name lookup ignores case [src]."""
    return _full_name(name).lower()


def _valid_model_name(name: str) -> bool:
    """A coarse version of ``model.ParseName(...).IsValid()``: allowed characters and non-empty parts."""
    if not _NAME_CHARS.match(name):
        return False
    full = _full_name(name)
    path, _, tag = full.rpartition(":")
    return bool(tag) and all(path.split("/")) and len(path.split("/")) == 3


# --------------------------------------------------------------------------------------------------------------------
# Go-compatible decoding: errors must carry the texts Ollama's Go JSON decoder would produce.
# --------------------------------------------------------------------------------------------------------------------


class _GoDecodeError(Exception):
    """A request body that Go's ``encoding/json`` would reject; the message is Go's error text."""


class _ConstantRejected(ValueError):
    """Python's json accepts NaN/Infinity; Go does not, so they are turned into a syntax error."""

    def __init__(self, literal: str) -> None:
        super().__init__(literal)
        self.literal = literal


def _go_strconv_quote(text: str) -> str:
    """``strconv.Quote``: used wherever Go prints a string with ``%q``/``%#v``."""
    out = ['"']
    escapes = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\a": "\\a", "\b": "\\b"}
    escapes |= {"\f": "\\f", "\v": "\\v"}
    for ch in text:
        if ch in escapes:
            out.append(escapes[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def _go_quote_char(ch: str) -> str:
    """``encoding/json``'s ``quoteChar``: Go reports the offending *byte*, printed as a single-quoted rune."""
    byte = ch.encode("utf-8", errors="replace")[0] if ch else 0
    as_rune = chr(byte)
    if as_rune == "'":
        return "'\\''"
    if as_rune == '"':
        return "'\"'"
    return "'" + _go_strconv_quote(as_rune)[1:-1] + "'"


def _innermost_container(text: str, pos: int) -> str:
    """Whether ``pos`` lies inside an object or an array; Go's ``,``-error text differs between the two."""
    stack: list[str] = []
    in_string = escaped = False
    for ch in text[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _go_syntax_message(text: str, exc: json.JSONDecodeError) -> str:
    """Map a Python ``JSONDecodeError`` onto the message Go's scanner gives for the same input."""
    pos = exc.pos
    msg = exc.msg
    if pos >= len(text) or msg.startswith("Unterminated string"):
        # Go's Decoder reports a value cut short as io.ErrUnexpectedEOF.
        return "unexpected EOF"
    ch = text[pos]
    if msg == "Expecting value":
        if ch == "-":
            nxt = text[pos + 1 : pos + 2]
            return f"invalid character {_go_quote_char(nxt)} in numeric literal" if nxt else "unexpected EOF"
        return f"invalid character {_go_quote_char(ch)} looking for beginning of value"
    if msg.startswith("Expecting property name"):
        return f"invalid character {_go_quote_char(ch)} looking for beginning of object key string"
    if msg == "Expecting ':' delimiter":
        return f"invalid character {_go_quote_char(ch)} after object key"
    if msg == "Expecting ',' delimiter":
        where = "after object key:value pair" if _innermost_container(text, pos) == "{" else "after array element"
        return f"invalid character {_go_quote_char(ch)} {where}"
    if msg.startswith("Invalid control character"):
        return f"invalid character {_go_quote_char(ch)} in string literal"
    if msg.startswith("Invalid \\uXXXX"):
        bad = next((c for c in text[pos + 2 : pos + 6] if c not in "0123456789abcdefABCDEF"), ch)
        return f"invalid character {_go_quote_char(bad)} in \\u hexadecimal character escape"
    if msg.startswith("Invalid \\escape"):
        return f"invalid character {_go_quote_char(text[pos + 1 : pos + 2])} in string escape code"
    return f"invalid character {_go_quote_char(ch)} looking for beginning of value"


def _reject_constant(literal: str) -> Any:
    raise _ConstantRejected(literal)


class _MissingBody(Exception):
    """Go's decoder returned io.EOF: the body was empty or only whitespace."""


def _go_decode(raw: bytes) -> Any:
    """Decode a body the way gin's ``ShouldBindJSON`` does: first value only, trailing bytes ignored."""
    # Go replaces invalid UTF-8 inside strings with U+FFFD; outside strings the replacement char is a syntax error.
    text = raw.decode("utf-8", errors="replace")
    stripped = text.lstrip(" \t\r\n")
    if not stripped:
        raise _MissingBody
    decoder = json.JSONDecoder(parse_constant=_reject_constant)
    try:
        value, _end = decoder.raw_decode(stripped)
    except _ConstantRejected as exc:
        first = exc.literal[1] if exc.literal.startswith("-") else exc.literal[0]
        where = "in numeric literal" if exc.literal.startswith("-") else "looking for beginning of value"
        raise _GoDecodeError(f"invalid character {_go_quote_char(first)} {where}") from None
    except json.JSONDecodeError as exc:
        raise _GoDecodeError(_go_syntax_message(stripped, exc)) from None
    return value


def _go_kind(value: Any) -> str:
    """The JSON kind word Go puts in ``cannot unmarshal <kind> into ...``."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _type_error(value: Any, where: str, go_type: str) -> str:
    return f"json: cannot unmarshal {_go_kind(value)} into Go struct field {where} of type {go_type}"


def _check_string(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return None
    return _type_error(value, where, "string")


def _check_int(value: Any, where: str) -> str | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return None
    if isinstance(value, float) and value.is_integer():
        return None
    if isinstance(value, float):
        # Go quotes the literal of a non-integral number: "cannot unmarshal number 1.5 into ...".
        return f"json: cannot unmarshal number {value!r} into Go struct field {where} of type int"
    return _type_error(value, where, "int")


def _check_bool(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    return _type_error(value, where, "bool")


_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def go_base64_error_offset(data: bytes) -> int | None:
    """Where Go's ``base64.StdEncoding`` rejects ``data``, or ``None`` if it decodes.

    A port of ``decodeQuantum`` from Go's ``encoding/base64``, because Ollama decodes ``images`` as ``[]byte`` and
    its 400 reads ``illegal base64 data at input byte N`` with Go's N. Newlines are skipped, padding is required.
    """
    si = 0
    n = len(data)
    while True:
        j = 0
        while j < 4:
            if si == n:
                if j == 0:
                    return None
                # StdEncoding has a pad character, so any short final quantum is corrupt.
                return si - j
            c = data[si]
            si += 1
            if c in _B64_ALPHABET:
                j += 1
                continue
            if c in (0x0A, 0x0D):
                continue
            if c != 0x3D:  # not '='
                return si - 1
            if j in (0, 1):
                return si - 1
            if j == 2:
                while si < n and data[si] in (0x0A, 0x0D):
                    si += 1
                if si == n:
                    return n
                if data[si] != 0x3D:
                    return si - 1
                si += 1
            while si < n and data[si] in (0x0A, 0x0D):
                si += 1
            return si if si < n else None


_THINK_LEVELS = ("high", "medium", "low", "max")
_THINK_HELP = '("high", "medium", "low", "max", true, or false)'


def _check_think(value: Any) -> str | None:
    """``api.ThinkValue.UnmarshalJSON``: a bool or one of the level strings."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        if value in _THINK_LEVELS:
            return None
        return f"invalid think value: {_go_strconv_quote(value)} (must be {_THINK_HELP[1:-1]})"
    return f"think must be a boolean or string {_THINK_HELP}"


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_NUMBER = re.compile(r"(\d*)(?:\.(\d*))?")
_DURATION_UNIT = re.compile(r"[^0-9.]*")


def _go_parse_duration(text: str) -> float:
    """``time.ParseDuration`` returning seconds; raises ``ValueError`` with Go's message."""
    quoted = _go_strconv_quote(text)
    rest = text
    negative = False
    if rest[:1] in ("+", "-"):
        negative = rest[0] == "-"
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f"time: invalid duration {quoted}")
    total = 0.0
    while rest:
        number = _DURATION_NUMBER.match(rest)
        assert number is not None  # the pattern matches the empty string
        whole, frac = number.group(1), number.group(2)
        if not whole and not frac:
            raise ValueError(f"time: invalid duration {quoted}")
        rest = rest[number.end() :]
        unit_match = _DURATION_UNIT.match(rest)
        unit = unit_match.group(0) if unit_match else ""
        if not unit:
            raise ValueError(f"time: missing unit in duration {quoted}")
        if unit not in _DURATION_UNITS:
            raise ValueError(f"time: unknown unit {_go_strconv_quote(unit)} in duration {quoted}")
        rest = rest[len(unit) :]
        total += float(f"{whole or '0'}.{frac or '0'}") * _DURATION_UNITS[unit]
    return -total if negative else total


def _keep_alive_seconds(value: Any) -> float | None:
    """``api.Duration.UnmarshalJSON``: seconds as a number, or a Go duration string; negative means forever."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        go_type = {"array": "[]interface {}", "object": "map[string]interface {}", "bool": "bool"}[_go_kind(value)]
        raise ValueError(f"Unsupported type: '{go_type}'")
    if isinstance(value, str):
        return _go_parse_duration(value)
    return float(value)


def _check_message(msg: Any) -> str | None:
    """Validate one ``api.Message`` the way decoding it would; the first problem in document order wins."""
    if msg is None:
        return None
    if not isinstance(msg, dict):
        return _type_error(msg, "ChatRequest.messages", "api.Message")
    for key, value in msg.items():
        where = f"Message.messages.{key}"
        if key in ("role", "content", "thinking", "tool_name", "tool_call_id"):
            err = _check_string(value, where)
        elif key == "images":
            err = _check_images(value)
        elif key == "tool_calls":
            err = _check_tool_calls(value)
        else:
            err = None  # unknown keys are ignored by Go
        if err:
            return err
    return None


def _check_images(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, list):
        return _type_error(value, "Message.messages.images", "[]api.ImageData")
    for image in value:
        if image is None:
            continue
        if not isinstance(image, str):
            return _type_error(image, "Message.messages.images", "api.ImageData")
        offset = go_base64_error_offset(image.encode("utf-8"))
        if offset is not None:
            return f"illegal base64 data at input byte {offset}"
    return None


def _check_tool_calls(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, list):
        return _type_error(value, "Message.messages.tool_calls", "[]api.ToolCall")
    for call in value:
        if call is None:
            continue
        if not isinstance(call, dict):
            return _type_error(call, "Message.messages.tool_calls", "api.ToolCall")
        for key, item in call.items():
            err: str | None = None
            if key == "id":
                err = _check_string(item, "ToolCall.messages.tool_calls.id")
            elif key == "function":
                err = _check_tool_call_function(item)
            if err:
                return err
    return None


def _check_tool_call_function(fn: Any) -> str | None:
    if fn is None:
        return None
    if not isinstance(fn, dict):
        return _type_error(fn, "ToolCall.messages.tool_calls.function", "api.ToolCallFunction")
    for key, item in fn.items():
        where = f"ToolCallFunction.messages.tool_calls.function.{key}"
        err: str | None = None
        if key == "index":
            err = _check_int(item, where)
        elif key == "name":
            err = _check_string(item, where)
        elif key == "arguments" and item is not None and not isinstance(item, dict):
            # The text is the one documented for Ollama (its own struct prefix, not the innermost one).
            err = _type_error(
                item, "ChatRequest.messages.tool_calls.function.arguments", "api.ToolCallFunctionArguments"
            )
        if err:
            return err
    return None


def _check_tools(value: Any) -> str | None:
    """Only the failures that matter for a proxy: wrong container types and ``properties`` not being an object."""
    if value is None:
        return None
    if not isinstance(value, list):
        return _type_error(value, "ChatRequest.tools", "api.Tools")
    for tool in value:
        if tool is None:
            continue
        if not isinstance(tool, dict):
            return _type_error(tool, "ChatRequest.tools", "api.Tool")
        fn = tool.get("function")
        if fn is not None and not isinstance(fn, dict):
            return _type_error(fn, "Tool.tools.function", "api.ToolFunction")
        params = fn.get("parameters") if isinstance(fn, dict) else None
        if params is not None and not isinstance(params, dict):
            return _type_error(params, "ToolFunction.tools.function.parameters", "api.ToolFunctionParameters")
        props = params.get("properties") if isinstance(params, dict) else None
        if props is not None and not isinstance(props, dict):
            return _type_error(
                props, "ToolFunctionParameters.tools.function.parameters.properties", "map[string]api.ToolProperty"
            )
    return None


def _check_chat_request(data: Json) -> str | None:
    """Validate a decoded ``api.ChatRequest``.

    Go's decoder keeps going after a plain type mismatch and reports the first one at the end, but an error from a
    custom ``UnmarshalJSON`` (messages, tools, think, keep_alive) aborts at once and wins. Both are mirrored here.
    """
    saved: str | None = None
    for key, value in data.items():
        aborting: str | None = None
        plain: str | None = None
        if key == "model":
            plain = _check_string(value, "ChatRequest.model")
        elif key == "messages":
            if value is not None and not isinstance(value, list):
                plain = _type_error(value, "ChatRequest.messages", "[]api.Message")
            else:
                for msg in value or []:
                    aborting = _check_message(msg)
                    if aborting:
                        break
        elif key == "tools":
            aborting = _check_tools(value)
        elif key == "options":
            if value is not None and not isinstance(value, dict):
                plain = _type_error(value, "ChatRequest.options", "map[string]interface {}")
        elif key in ("stream", "truncate", "shift", "logprobs", "_debug_render_only"):
            plain = _check_bool(value, f"ChatRequest.{key}")
        elif key == "top_logprobs":
            plain = _check_int(value, "ChatRequest.top_logprobs")
        elif key == "think":
            aborting = _check_think(value)
        elif key == "keep_alive":
            try:
                _keep_alive_seconds(value)
            except ValueError as exc:
                aborting = str(exc)
        if aborting:
            return aborting
        if plain and saved is None:
            saved = plain
    return saved


# Types of the options Ollama knows [src api.Options]; FromMap checks them when the runner is scheduled.
_OPTION_TYPES: dict[str, str] = {
    "num_keep": "int",
    "seed": "int",
    "num_predict": "int",
    "top_k": "int",
    "top_p": "float",
    "min_p": "float",
    "typical_p": "float",
    "repeat_last_n": "int",
    "temperature": "float",
    "repeat_penalty": "float",
    "presence_penalty": "float",
    "frequency_penalty": "float",
    "stop": "array",
    "num_ctx": "int",
    "num_batch": "int",
    "num_gpu": "int",
    "main_gpu": "int",
    "use_mmap": "bool",
    "num_thread": "int",
}


def _check_options(options: Json) -> str | None:
    """``api.Options.FromMap``: the first wrongly typed known option (unknown keys are only logged)."""
    for key, value in options.items():
        kind = _OPTION_TYPES.get(key)
        if kind is None or value is None:
            continue
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind == "int" and not is_number:
            return f'option "{key}" must be of type integer'
        if kind == "float" and not is_number:
            return f'option "{key}" must be of type float32'
        if kind == "bool" and not isinstance(value, bool):
            return f'option "{key}" must be of type boolean'
        if kind == "array":
            if not isinstance(value, list):
                return f'option "{key}" must be of type array'
            if not all(isinstance(item, str) for item in value):
                return f'option "{key}" must be of an array of strings'
    return None


# JSON schema types llama.cpp's json-schema-to-grammar has a rule for (its PRIMITIVE_RULES).
_GRAMMAR_TYPES = frozenset(
    ("boolean", "number", "integer", "string", "null", "object", "array", "value", "uuid", "char")
    + ("decimal-part", "integral-part")
)


def _schema_converts(root: Json) -> bool:
    """Whether llama.cpp's json-schema-to-grammar turns ``root`` into a grammar (its main failure conditions).

    Those are: a ``$ref`` that is not ``#/…`` or points to nothing, a non-string ``format``, ``oneOf``/``anyOf`` that
    is not an array, a pattern not anchored with ``^…$``, and a schema with neither a known ``type`` nor anything
    else to go by (``{"description": "x"}``, ``true``). Ollama reports all of them alike.
    """
    refs: dict[str, Any] = {}

    def resolve(node: Any) -> bool:
        if isinstance(node, list):
            return all(resolve(item) for item in node)
        if not isinstance(node, dict):
            return True
        if "$ref" not in node:
            return all(resolve(value) for value in node.values())
        ref = node["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            return False
        target: Any = root
        for token in ref[2:].split("/"):
            if not isinstance(target, dict) or token not in target:
                return False
            target = target[token]
        refs[ref] = target
        return True

    seen: set[str] = set()

    def visit(schema: Any) -> bool:
        if not isinstance(schema, dict):
            return schema is None or schema == []
        if "format" in schema and not isinstance(schema["format"], str):
            return False
        kind = schema.get("type")
        if "$ref" in schema:
            ref = schema["$ref"]
            if ref in seen:
                return True
            seen.add(ref)
            return visit(refs.get(ref))
        if "oneOf" in schema or "anyOf" in schema:
            options = schema["oneOf"] if "oneOf" in schema else schema["anyOf"]
            return isinstance(options, list) and all(visit(option) for option in options)
        if isinstance(kind, list):
            return all(visit({**schema, "type": option}) for option in kind)
        if "const" in schema or "enum" in schema:
            return True
        if kind in (None, "object") and isinstance(schema.get("properties"), dict):
            extra = schema.get("additionalProperties")
            return all(visit(value) for value in schema["properties"].values()) and (
                not isinstance(extra, dict) or visit(extra)
            )
        if kind in (None, "array") and ("items" in schema or "prefixItems" in schema):
            items = schema["items"] if "items" in schema else schema["prefixItems"]
            return all(visit(item) for item in items) if isinstance(items, list) else visit(items)
        if kind in (None, "string") and "pattern" in schema:
            pattern = schema["pattern"]
            return isinstance(pattern, str) and len(pattern) >= 2 and pattern[0] == "^" and pattern[-1] == "$"
        if not schema or kind == "object" or "allOf" in schema or "additionalProperties" in schema:
            return True
        return isinstance(kind, str) and kind in _GRAMMAR_TYPES

    return resolve(root) and visit(root)


def _check_format(value: Any) -> str | None:
    """``llmServer.Completion``'s check of ``format`` (a raw JSON value), made once the model is scheduled."""
    if value is None or value in ("", "json"):
        return None
    if not isinstance(value, dict):
        raw = orjson.dumps(value).decode()
        return f'invalid format: {_go_strconv_quote(raw)}; expected "json" or a valid JSON Schema object'
    if not _schema_converts(value):
        return "invalid JSON schema in format"
    return None


def estimate_prompt_tokens(request: Json) -> int:
    """The double's prompt size in tokens: the characters Ollama renders into the prompt, divided by 4.

    That is every message's ``content`` and ``thinking``, its tool calls, and the ``tools`` (Ollama's templates
    write each tool's JSON into the prompt, which is why Claude Code's ~12 tool schemas cost thousands of tokens).
    It drives both the ``truncate:false`` overflow check and the default ``prompt_eval_count``, so tests can predict
    either from the request they send, and a client that decides by usage (Claude Code's auto-compaction) sees sizes
    close to a real model's.
    """
    chars = 0
    for msg in request.get("messages") or []:
        if not isinstance(msg, dict):
            continue
        for key in ("content", "thinking"):
            if isinstance(msg.get(key), str):
                chars += len(msg[key])
        if msg.get("tool_calls"):
            chars += len(orjson.dumps(msg["tool_calls"]))
    if request.get("tools"):
        chars += len(orjson.dumps(request["tools"]))
    return chars // 4


# --------------------------------------------------------------------------------------------------------------------
# Scripted replies
# --------------------------------------------------------------------------------------------------------------------


def _stable_call_id(name: str, arguments: Any, index: int | None) -> str:
    """``call_`` + 8 chars of [a-z0-9], like Ollama's rendered mode, but derived from the call so tests are stable."""
    seed = orjson.dumps([name, arguments, index], option=orjson.OPT_SORT_KEYS)
    number = int.from_bytes(hashlib.sha256(seed).digest()[:8], "big")
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    chars = []
    for _ in range(8):
        number, rem = divmod(number, 36)
        chars.append(alphabet[rem])
    return "call_" + "".join(chars)


def make_tool_call(name: str, arguments: Any = None, *, index: int | None = None, call_id: str | None = None) -> Json:
    """Build a tool call in Ollama's shape: ``{"id", "function": {"index", "name", "arguments"}}``.

    ``arguments`` is normally a dict (``None`` means ``{}``). Any other JSON value is sent as given, to imitate
    servers or models that put a serialised string there (real Ollama always sends an object).
    ``call_id=None`` generates a stable ``call_xxxxxxxx`` id from name, arguments and index; pass ``""`` to send a
    call without an id (``omitempty`` in Ollama). ``index=None`` lets the double number a reply's calls from 0.
    """
    args: Any = {} if arguments is None else arguments
    if isinstance(args, dict):
        args = dict(args)
    function: Json = {}
    if index is not None:
        function["index"] = index
    function["name"] = name
    function["arguments"] = args
    call: Json = {}
    generated = _stable_call_id(name, args, index) if call_id is None else call_id
    if generated:
        call["id"] = generated
    call["function"] = function
    return call


# The shorter name the proxy's tests use.
tool_call = make_tool_call


@dataclass
class Reply:
    """What the double answers to one ``/api/chat`` request.

    By default the reply is streamed in rendered mode: thinking chunks, content chunks, one chunk per tool call, then
    a ``done:true`` chunk with ``done_reason`` and metrics. The other fields reshape that stream to reproduce the
    behaviours (and failures) the proxy has to cope with; the comment above each field says what it does.
    """

    content: str = ""
    thinking: str = ""
    # Ollama-shaped calls (see make_tool_call); a missing function.index is filled with the call's position.
    tool_calls: list[Json] = field(default_factory=list)
    # Native llama-server mode: every call arrives only in the done:true chunk.
    tool_calls_in_final: bool = False
    # Content carried by the done:true chunk itself (Ollama allows it; proxies must not drop it).
    content_in_final: str = ""
    # Characters per content/thinking chunk; 0 or less sends each text in one chunk.
    chunk_size: int = 4
    # None leaves done_reason out of the final chunk.
    done_reason: str | None = "stop"
    # None = the double's estimate of the request (estimate_prompt_tokens, at least 1); 0 omits it (omitempty).
    prompt_eval_count: int | None = None
    # None = number of content + thinking chunks; 0 omits it.
    eval_count: int | None = None
    # The newer cached-prompt metric; None leaves it out.
    prompt_eval_cached_count: int | None = None
    # A status other than 200, or an error text, answers {"error": ...} with that status before any byte of body
    # (error with status 200 becomes a 500; status without error gets a generic text).
    status: int = 200
    error: str | None = None
    # After the chunks, one more NDJSON line {"error": ...}; the stream then ends without a done chunk.
    mid_stream_error: str | None = None
    # Send exactly these bytes as the stream body (no newline added): non-JSON, invalid UTF-8, a truncated line...
    raw_lines: list[bytes] | None = None
    # Send the chunks and end the body cleanly, but without a done:true chunk.
    end_without_done: bool = False
    # Write the encoded body in pieces of this many bytes, each its own TCP write and HTTP chunk.
    split_every: int | None = None
    # Pause between the pieces of split_every, so they really arrive separately.
    split_pause: float = 0.002
    # Seconds before the response headers are sent (the client's disconnect is still noticed meanwhile).
    first_byte_delay: float = 0.0
    # Seconds between NDJSON lines.
    delay_between: float = 0.0
    # Send the chunks, then never finish (until the client goes away or the double stops).
    hang_after_chunks: bool = False
    # If set, hold the done:true chunk until this event is set: lets concurrency tests keep streams open.
    hold_until: threading.Event | None = None
    # With an error status (streaming only): pad the {"error": ...} body with trailing spaces to this many bytes.
    error_body_size: int | None = None
    # With an error status (streaming only): a chunked error body that never ends (spaces after the JSON).
    endless_error_body: bool = False
    # A model that ignores num_predict and never stops (streaming only): `content` again and again, no done chunk.
    endless: bool = False
    # If set (streaming only), send the response head at once but the first NDJSON line only once this event is
    # set: Ollama answers the request at once, then reads a long prompt before its first token.
    first_line_after: threading.Event | None = None


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP request as the double received it. Header names are lower-cased; repeated headers are joined."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    json: Any | None
    received_at: float
    # The client's address and port: requests sharing it came over one kept-alive connection.
    peer: str = ""


@dataclass
class ChatStream:
    """What happened to the response of one ``/api/chat`` call that reached generation.

    ``phase`` tells where the double was when the client went away: ``first_byte_delay``, ``streaming`` (writing or
    pausing between lines), ``hold`` (waiting for ``hold_until``) or ``hang``. ``chunks_sent`` counts the body
    writes that went out (one per NDJSON line, or one per piece with ``split_every``). Times are ``time.monotonic()``.
    """

    request_index: int
    model: str
    stream: bool
    started_at: float
    finished_at: float | None = None
    completed: bool = False
    client_disconnected: bool = False
    disconnected_at: float | None = None
    phase: str = "first_byte_delay"
    chunks_sent: int = 0


# --------------------------------------------------------------------------------------------------------------------
# Response bodies
# --------------------------------------------------------------------------------------------------------------------


def _rfc3339_nano(ns: int) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: trailing zeros of the fraction are trimmed, and a zero fraction vanishes."""
    seconds, frac = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def _now() -> str:
    return _rfc3339_nano(time.time_ns())


def _pieces(text: str, size: int) -> list[str]:
    if not text:
        return []
    if size <= 0:
        return [text]
    return [text[i : i + size] for i in range(0, len(text), size)]


def _normalize_tool_calls(calls: list[Json]) -> list[Json]:
    """Put calls in Ollama's serialisation order, numbering ``function.index`` from 0 where it is missing."""
    out: list[Json] = []
    for position, call in enumerate(calls):
        function = dict(call.get("function") or {})
        ordered_fn: Json = {
            "index": function.pop("index", position),
            "name": function.pop("name", ""),
            "arguments": function.pop("arguments", {}),
        }
        ordered_fn.update(function)
        ordered: Json = {}
        if call.get("id"):
            ordered["id"] = call["id"]
        ordered["function"] = ordered_fn
        ordered.update({k: v for k, v in call.items() if k not in ("id", "function")})
        out.append(ordered)
    return out


def _message(content: str, thinking: str = "", tool_calls: list[Json] | None = None) -> Json:
    """``api.Message`` as Ollama serialises it: ``content`` always, the rest only when non-empty."""
    msg: Json = {"role": "assistant", "content": content}
    if thinking:
        msg["thinking"] = thinking
    if tool_calls:
        msg["tool_calls"] = tool_calls
    return msg


@dataclass
class _Plan:
    """The chunks of one reply, before encoding: shared by the streaming and the aggregated answer."""

    chunks: list[Json]
    final: Json


def _plan_reply(reply: Reply, model: str, request: Json, load_ns: int) -> _Plan:
    calls = _normalize_tool_calls(reply.tool_calls)
    chunks: list[Json] = []
    for piece in _pieces(reply.thinking, reply.chunk_size):
        chunks.append({"model": model, "created_at": _now(), "message": _message("", piece), "done": False})
    for piece in _pieces(reply.content, reply.chunk_size):
        chunks.append({"model": model, "created_at": _now(), "message": _message(piece), "done": False})
    text_chunks = len(chunks)
    if not reply.tool_calls_in_final:
        for call in calls:
            msg = _message("", tool_calls=[call])
            chunks.append({"model": model, "created_at": _now(), "message": msg, "done": False})
    prompt_tokens = reply.prompt_eval_count
    if prompt_tokens is None:
        prompt_tokens = max(1, estimate_prompt_tokens(request))
    eval_count = text_chunks if reply.eval_count is None else reply.eval_count
    prompt_ns = prompt_tokens * 250_000
    eval_ns = eval_count * 12_500_000
    final: Json = {
        "model": model,
        "created_at": _now(),
        "message": _message(reply.content_in_final, tool_calls=calls if reply.tool_calls_in_final else None),
        "done": True,
    }
    if reply.done_reason:
        final["done_reason"] = reply.done_reason
    metrics: list[tuple[str, int | None]] = [
        ("total_duration", load_ns + prompt_ns + eval_ns + 1_000_000),
        ("load_duration", load_ns),
        ("prompt_eval_count", prompt_tokens),
        ("prompt_eval_cached_count", reply.prompt_eval_cached_count),
        ("prompt_eval_duration", prompt_ns),
        ("eval_count", eval_count),
        ("eval_duration", eval_ns),
    ]
    for key, value in metrics:
        if value:  # every metric is omitempty in Go
            final[key] = value
    return _Plan(chunks, final)


def _aggregate(plan: _Plan, with_final: bool) -> Json:
    """The ``stream:false`` answer: thinking and content concatenated, tool calls gathered, metrics from the end."""
    thinking = content = ""
    calls: list[Json] = []
    last = plan.final if with_final else None
    for chunk in [*plan.chunks, *([plan.final] if with_final else [])]:
        msg = chunk["message"]
        thinking += msg.get("thinking", "")
        content += msg.get("content", "")
        calls.extend(msg.get("tool_calls", []))
    model = plan.final["model"]
    out: Json = {"model": model, "created_at": _now(), "message": _message(content, thinking, calls)}
    if last is None:
        out["done"] = False
        return out
    out.update({k: v for k, v in last.items() if k not in ("model", "created_at", "message")})
    return out


def _go_sharp_v(value: Any) -> str:
    """Go's ``%#v`` for the value types a Modelfile parameter can have."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return _go_strconv_quote(str(value))


def _parameter_items(spec: ModelSpec) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    if spec.num_ctx is not None:
        items.append(("num_ctx", spec.num_ctx))
    for key, value in spec.parameters.items():
        values = value if isinstance(value, list) else [value]
        items.extend((key, item) for item in values)
    return items


def _details(spec: ModelSpec, *, with_context: bool) -> Json:
    family = spec.effective_family
    details: Json = {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": spec.parameter_size,
        "quantization_level": spec.quantization_level,
    }
    if with_context:
        details["context_length"] = spec.context_length
        details["embedding_length"] = spec.embedding_length
    return details


def _parameter_count(parameter_size: str) -> int:
    match = re.match(r"^([\d.]+)([BM])$", parameter_size)
    if not match:
        return 0
    scale = 1_000_000_000 if match.group(2) == "B" else 1_000_000
    return int(float(match.group(1)) * scale)


def _show_body(spec: ModelSpec) -> Json:
    params = _parameter_items(spec)
    modelfile_lines = [
        '# Modelfile generated by "ollama show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {spec.name}",
        "",
        f"FROM /root/.ollama/models/blobs/sha256-{spec.effective_digest}",
        f'TEMPLATE """{spec.effective_template}"""',
        *(f"PARAMETER {key} {_go_sharp_v(value)}" for key, value in params),
    ]
    body: Json = {"modelfile": "\n".join(modelfile_lines) + "\n"}
    if params:
        # fmt.Sprintf("%-*s %#v", 30, k, v) per value, joined with newlines [src ShowHandler].
        body["parameters"] = "\n".join(f"{key:<30} {_go_sharp_v(value)}" for key, value in params)
    arch = spec.architecture
    body["template"] = spec.effective_template
    body["details"] = _details(spec, with_context=False)
    body["model_info"] = {
        "general.architecture": arch,
        "general.parameter_count": _parameter_count(spec.parameter_size),
        f"{arch}.context_length": spec.context_length,
        f"{arch}.embedding_length": spec.embedding_length,
    }
    body["capabilities"] = list(spec.capabilities)
    body["modified_at"] = spec.modified_at
    return body


def _version_tuple(version: str) -> tuple[int, ...]:
    numbers = re.findall(r"\d+", version.split("-")[0])
    return tuple(int(n) for n in numbers[:3])


# --------------------------------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------------------------------


class _ClientGone(Exception):
    """The peer closed its side (EOF or a failed write) while the double was serving it."""


class _BadRequest(Exception):
    """A request the HTTP parser cannot accept; the connection is answered 400 and closed."""


class _ChatError(Exception):
    """A request Ollama would refuse before generating: answered ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _HttpRequest:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""


class _Connection:
    """A buffered reader over the socket with a push-back buffer.

    The disconnect watcher reads the socket while a response is being produced; anything it reads (a pipelined
    request) must stay available to the request parser afterwards, which ``asyncio.StreamReader`` cannot un-read.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = bytearray()
        self.eof = False
        self.watcher: asyncio.Task[None] | None = None
        # Set once any byte of the current response is written: after that an error can only close the connection.
        self.response_started = False

    async def _fill(self) -> None:
        try:
            data = await self.reader.read(65536)
        except (ConnectionError, OSError):
            data = b""
        if data:
            self.buffer += data
        else:
            self.eof = True

    async def readline(self) -> bytes | None:
        """One line including its terminator, or ``None`` if the peer closed before a full line."""
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[: end + 1])
                del self.buffer[: end + 1]
                return line
            if len(self.buffer) > _MAX_LINE:
                raise _BadRequest("line too long")
            if self.eof:
                return None
            await self._fill()

    async def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if self.eof:
                raise _ClientGone
            await self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def start_watching(self) -> None:
        """Notice the client going away while the response is produced (EOF or reset on the read side)."""
        if self.watcher is None:
            self.watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while not self.eof and len(self.buffer) < _MAX_PUSHBACK:
            await self._fill()
        if not self.eof:
            # Too much pipelined input: stop reading but do not report a disconnect.
            await asyncio.get_running_loop().create_future()

    async def stop_watching(self) -> None:
        watcher, self.watcher = self.watcher, None
        if watcher is not None and not watcher.done():
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    @property
    def gone(self) -> bool:
        return self.eof or self.writer.is_closing()


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Status"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [_status_line(status)]
    lines.extend(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers)
    lines.append(b"\r\n")
    return b"".join(lines)


def _connection_headers(req: _HttpRequest) -> list[tuple[str, str]]:
    if not req.keep_alive:
        return [("Connection", "close")]
    if req.version == "HTTP/1.0":
        return [("Connection", "keep-alive")]
    return []


class _Streamer:
    """Writes one chat response and turns every sign of a vanished client into ``_ClientGone``."""

    def __init__(
        self, conn: _Connection, record: ChatStream, lock: threading.Condition, on_finish: Callable[[], None]
    ) -> None:
        self.conn = conn
        self.record = record
        self.lock = lock
        self.on_finish = on_finish

    def set_phase(self, phase: str) -> None:
        with self.lock:
            self.record.phase = phase

    def _check(self) -> None:
        watcher = self.conn.watcher
        if self.conn.gone or (watcher is not None and watcher.done()):
            raise _ClientGone

    async def write(self, data: bytes, *, counts: bool = False, final: bool = False) -> None:
        """Write and drain; ``final`` marks the write that completes the response.

        The response is recorded as finished *before* that write, because the client may act on the last bytes
        (and a test may inspect the records) before this thread runs again. A failing final write undoes it.
        """
        self._check()
        if final:
            self.on_finish()
        self.conn.response_started = True
        self.conn.writer.write(data)
        try:
            await self.conn.writer.drain()
        except (ConnectionError, OSError) as exc:
            raise _ClientGone from exc
        if counts:
            with self.lock:
                self.record.chunks_sent += 1

    async def pause(self, seconds: float, phase: str | None = None) -> None:
        """Sleep, but wake up at once (and raise) if the client disconnects meanwhile."""
        if phase:
            self.set_phase(phase)
        self._check()
        if seconds <= 0:
            return
        watcher = self.conn.watcher
        if watcher is None:
            await asyncio.sleep(seconds)
            return
        done, _ = await asyncio.wait({watcher}, timeout=seconds)
        if done:
            raise _ClientGone

    async def hang(self) -> None:
        self.set_phase("hang")
        self._check()
        watcher = self.conn.watcher
        assert watcher is not None
        await asyncio.wait({watcher})
        raise _ClientGone


# --------------------------------------------------------------------------------------------------------------------
# The double
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Queued:
    reply: Reply
    model_key: str | None


@dataclass
class _Loaded:
    spec: ModelSpec
    num_ctx: int
    expires_at_ns: int


class OllamaDouble:
    """An Ollama server double on 127.0.0.1, started in a background thread.

    Usage::

        with OllamaDouble() as ollama:
            ollama.enqueue(Reply(content="Hi!"))
            ... point the proxy at ollama.url ...
            assert ollama.chat_requests()[0]["model"] == "qwen3:8b"
    """

    def __init__(
        self,
        models: Iterable[ModelSpec] | None = None,
        *,
        version: str = _DEFAULT_VERSION,
        default_num_ctx: int = _DEFAULT_NUM_CTX,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.version = version
        self.default_num_ctx = default_num_ctx
        self._host = host
        self._requested_port = port
        self._cond = threading.Condition()
        self._models: dict[str, ModelSpec] = {}
        for spec in default_models() if models is None else models:
            self._models[_name_key(spec.name)] = spec
        self._queue: list[_Queued] = []
        self._responder: Responder | None = None
        self._requests: list[RecordedRequest] = []
        self._streams: list[ChatStream] = []
        self._loaded: dict[str, _Loaded] = {}
        self._loads: list[tuple[str, int]] = []
        self._internal_errors: list[str] = []
        self._active = 0
        self._max_active = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._conn_tasks: set[asyncio.Task[Any]] = set()
        self._port: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    def start(self) -> OllamaDouble:
        """Bind and serve in a background thread; returns once the port accepts connections."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(ready, failure), name="ollama-double", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        """Close every connection (hanging streams included), stop the loop and join the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        with contextlib.suppress(Exception):
            future.result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None
        self._loop = None
        self._port = None

    def __enter__(self) -> OllamaDouble:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("OllamaDouble is not running")
        return self._port

    @property
    def url(self) -> str:
        """Base URL to give the proxy, e.g. ``http://127.0.0.1:43121`` (no trailing slash)."""
        return f"http://{self._host}:{self.port}"

    def _run(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            server = loop.run_until_complete(
                asyncio.start_server(self._serve_connection, self._host, self._requested_port, limit=_MAX_LINE)
            )
        except BaseException as exc:  # handed to start(), which re-raises it in the test thread
            failure.append(exc)
            loop.close()
            ready.set()
            return
        self._server = server
        self._port = server.sockets[0].getsockname()[1]
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _shutdown(self) -> None:
        server = self._server
        if server is not None:
            server.close()
        tasks = list(self._conn_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        self._server = None
        # Let the transports run their close callbacks before the loop stops.
        await asyncio.sleep(0)

    # -- configuration (thread-safe) ---------------------------------------------------------------------------------

    def add_model(self, spec: ModelSpec) -> None:
        """Install (or replace) a model."""
        with self._cond:
            self._models[_name_key(spec.name)] = spec

    def remove_model(self, name: str) -> None:
        with self._cond:
            self._models.pop(_name_key(name), None)
            self._loaded.pop(_name_key(name), None)

    def get_model(self, name: str) -> ModelSpec | None:
        """Look a model up as Ollama does (case-insensitive, ``:latest`` implied)."""
        with self._cond:
            return self._models.get(_name_key(name))

    @property
    def models(self) -> list[ModelSpec]:
        with self._cond:
            return list(self._models.values())

    def enqueue(self, *replies: Reply, model: str | None = None) -> None:
        """Queue replies for the next ``/api/chat`` calls (FIFO).

        With ``model``, the replies are kept for requests naming that model; a request takes the oldest queued reply
        that is either unkeyed or keyed to its model. Requests that fail validation or only load a model consume none.
        """
        key = _name_key(model) if model is not None else None
        with self._cond:
            self._queue.extend(_Queued(reply, key) for reply in replies)

    def pending_replies(self) -> int:
        with self._cond:
            return len(self._queue)

    def set_responder(self, responder: Responder | None) -> None:
        """Answer requests that find nothing queued with ``responder(request_json)``; ``None`` restores the default.

        The responder runs on the double's event-loop thread; it must not block for long.
        """
        with self._cond:
            self._responder = responder

    def reset(self) -> None:
        """Forget queued replies, the responder, recordings, loaded models and counters (installed models stay)."""
        with self._cond:
            self._queue.clear()
            self._responder = None
            self._requests.clear()
            self._streams.clear()
            self._loaded.clear()
            self._loads.clear()
            self._internal_errors.clear()
            self._max_active = self._active
            self._cond.notify_all()

    # -- recordings (thread-safe snapshots) --------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, in arrival order (a snapshot)."""
        with self._cond:
            return list(self._requests)

    def chat_requests(self) -> list[Any]:
        """The decoded JSON bodies of the ``/api/chat`` calls, in arrival order."""
        with self._cond:
            return [r.json for r in self._requests if r.path == "/api/chat" and r.json is not None]

    def wait_for_requests(self, n: int, timeout: float = 5.0, *, path: str | None = None) -> bool:
        """Block until at least ``n`` requests (to ``path`` if given) have arrived; ``False`` on timeout."""

        def enough() -> bool:
            return sum(1 for r in self._requests if path is None or r.path == path) >= n

        with self._cond:
            return self._cond.wait_for(enough, timeout)

    @property
    def chat_streams(self) -> list[ChatStream]:
        """One record per ``/api/chat`` response that reached generation (copies)."""
        with self._cond:
            return [replace(s) for s in self._streams]

    @property
    def client_disconnects(self) -> list[ChatStream]:
        """The chat responses whose client closed the connection before the response was finished."""
        with self._cond:
            return [replace(s) for s in self._streams if s.client_disconnected]

    def wait_for_disconnect(self, timeout: float = 5.0, count: int = 1) -> bool:
        """Block until ``count`` chat responses were cut off by their client; ``False`` on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: sum(1 for s in self._streams if s.client_disconnected) >= count, timeout)

    def wait_for_streams_finished(self, timeout: float = 5.0) -> bool:
        """Block until no chat response is in progress."""
        with self._cond:
            return self._cond.wait_for(lambda: self._active == 0, timeout)

    @property
    def active_streams(self) -> int:
        """Chat responses being produced right now (streaming or not)."""
        with self._cond:
            return self._active

    @property
    def max_active_streams(self) -> int:
        """The highest ``active_streams`` seen since start or the last ``reset()``."""
        with self._cond:
            return self._max_active

    def wait_for_active_streams(self, n: int, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._active >= n, timeout)

    @property
    def loaded_models(self) -> dict[str, int]:
        """What ``/api/ps`` would list: model name → ``num_ctx`` of its (simulated) runner."""
        with self._cond:
            return {entry.spec.name: entry.num_ctx for entry in self._loaded.values()}

    @property
    def model_loads(self) -> list[tuple[str, int]]:
        """Each simulated (re)load as ``(model, num_ctx)``: a new entry per change of ``num_ctx``, as Ollama reloads."""
        with self._cond:
            return list(self._loads)

    @property
    def internal_errors(self) -> list[str]:
        """Tracebacks of bugs in the double or a responder (answered 500); tests may assert this stays empty."""
        with self._cond:
            return list(self._internal_errors)

    # -- connection handling -----------------------------------------------------------------------------------------

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._conn_tasks.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(reader, writer)
        try:
            while True:
                try:
                    req = await self._read_request(conn)
                except _BadRequest as exc:
                    body = f"400 Bad Request: {exc}".encode()
                    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Connection", "close")]
                    headers.append(("Content-Length", str(len(body))))
                    writer.write(_head(400, headers) + body)
                    with contextlib.suppress(ConnectionError, OSError):
                        await writer.drain()
                    break
                if req is None:
                    break
                if not await self._dispatch(conn, req):
                    break
        except (_ClientGone, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            # stop() cancels handlers on purpose. Ending normally matters on 3.11: the stream protocol's done
            # callback calls task.exception(), which would raise (and log) for a task that ends cancelled.
            pass
        finally:
            if task is not None:
                self._conn_tasks.discard(task)
            if conn.watcher is not None:
                conn.watcher.cancel()
            writer.close()

    async def _read_request(self, conn: _Connection) -> _HttpRequest | None:
        line = await conn.readline()
        # RFC 9112 §2.2: a server should ignore empty lines received before the request line.
        while line in (b"\r\n", b"\n"):
            line = await conn.readline()
        if line is None:
            return None
        parts = line.decode("latin-1").rstrip("\r\n").split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _BadRequest("malformed request line")
        method, target, version = parts
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS):
            header_line = await conn.readline()
            if header_line is None:
                raise _ClientGone
            if header_line in (b"\r\n", b"\n"):
                break
            name, sep, value = header_line.decode("latin-1").partition(":")
            if not sep or not name or name != name.strip():
                raise _BadRequest("malformed header")
            key = name.lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        else:
            raise _BadRequest("too many headers")

        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        keep_alive = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens

        if headers.get("expect", "").lower() == "100-continue":
            conn.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await conn.writer.drain()

        if "transfer-encoding" in headers:
            codings = [c.strip().lower() for c in headers["transfer-encoding"].split(",")]
            if codings[-1] != "chunked":
                raise _BadRequest("unsupported transfer-encoding")
            body = await self._read_chunked(conn)
        elif "content-length" in headers:
            values = {v.strip() for v in headers["content-length"].split(",")}
            if len(values) != 1 or not next(iter(values)).isdigit():
                raise _BadRequest("bad content-length")
            length = int(next(iter(values)))
            if length > _MAX_BODY:
                raise _BadRequest("body too large")
            body = await conn.read_exactly(length)
        else:
            body = b""
        return _HttpRequest(method, target, version, headers, body, keep_alive)

    async def _read_chunked(self, conn: _Connection) -> bytes:
        body = bytearray()
        while True:
            size_line = await conn.readline()
            if size_line is None:
                raise _ClientGone
            size_text = size_line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _BadRequest("bad chunk size") from None
            if size == 0:
                while True:  # trailer section, ignored
                    trailer = await conn.readline()
                    if trailer is None:
                        raise _ClientGone
                    if trailer in (b"\r\n", b"\n"):
                        return bytes(body)
            if len(body) + size > _MAX_BODY:
                raise _BadRequest("body too large")
            body += await conn.read_exactly(size)
            if await conn.readline() not in (b"\r\n", b"\n"):
                raise _BadRequest("bad chunk terminator")

    # -- routing -----------------------------------------------------------------------------------------------------

    _ROUTES: dict[str, tuple[str, ...]] = {
        "/": ("GET", "HEAD"),
        "/api/version": ("GET", "HEAD"),
        "/api/tags": ("GET", "HEAD"),
        "/api/ps": ("GET",),
        "/api/show": ("POST",),
        "/api/chat": ("POST",),
    }

    async def _dispatch(self, conn: _Connection, req: _HttpRequest) -> bool:
        """Serve one request; returns whether the connection may carry another one."""
        conn.response_started = False
        parsed: Any | None
        try:
            parsed = orjson.loads(req.body) if req.body else None
        except orjson.JSONDecodeError:
            parsed = None
        with self._cond:
            self._requests.append(
                RecordedRequest(
                    req.method,
                    req.path,
                    req.query,
                    dict(req.headers),
                    req.body,
                    parsed,
                    time.monotonic(),
                    peer=str(conn.writer.get_extra_info("peername")),
                )
            )
            request_index = len(self._requests) - 1
            self._cond.notify_all()

        allowed = self._ROUTES.get(req.path)
        if allowed is None:
            await self._send_text(conn, req, 404, "404 page not found")
            return req.keep_alive
        if req.method not in allowed:
            # Ollama's gin router has HandleMethodNotAllowed on [inf].
            await self._send_text(conn, req, 405, "405 method not allowed")
            return req.keep_alive
        try:
            if req.path == "/":
                await self._send_text(conn, req, 200, "Ollama is running")
            elif req.path == "/api/version":
                await self._send_json(conn, req, 200, {"version": self.version})
            elif req.path == "/api/tags":
                await self._send_json(conn, req, 200, self._tags_body())
            elif req.path == "/api/ps":
                await self._send_json(conn, req, 200, self._ps_body())
            elif req.path == "/api/show":
                status, body = self._show(req.body)
                await self._send_json(conn, req, status, body)
            else:
                await self._chat(conn, req, request_index)
        except (_ClientGone, asyncio.CancelledError):
            raise
        except Exception:
            # A bug in the double or a responder: answer like Ollama's 500 and keep the traceback for the test.
            text = traceback.format_exc()
            with self._cond:
                self._internal_errors.append(text)
            if conn.gone or conn.response_started:
                return False
            await self._send_json(conn, req, 500, {"error": f"ollama double internal error: {text.splitlines()[-1]}"})
            return False
        return req.keep_alive

    async def _send_text(self, conn: _Connection, req: _HttpRequest, status: int, text: str) -> None:
        await self._send_body(conn, req, status, "text/plain; charset=utf-8", text.encode())

    async def _send_json(self, conn: _Connection, req: _HttpRequest, status: int, body: Json) -> None:
        await self._send_body(conn, req, status, "application/json; charset=utf-8", orjson.dumps(body))

    async def _send_body(
        self,
        conn: _Connection,
        req: _HttpRequest,
        status: int,
        content_type: str,
        body: bytes,
        streamer: _Streamer | None = None,
        split_every: int | None = None,
        split_pause: float = 0.0,
    ) -> None:
        headers = [("Content-Type", content_type), ("Date", formatdate(usegmt=True))]
        headers.append(("Content-Length", str(len(body))))
        headers.extend(_connection_headers(req))
        head = _head(status, headers)
        if req.method == "HEAD":
            body = b""
        if streamer is None:
            conn.response_started = True
            conn.writer.write(head + body)
            try:
                await conn.writer.drain()
            except (ConnectionError, OSError) as exc:
                raise _ClientGone from exc
            return
        if not split_every or split_every <= 0 or not body:
            await streamer.write(head + body, final=True)
            return
        await streamer.write(head)
        for start in range(0, len(body), split_every):
            if start:
                await streamer.pause(split_pause)
            await streamer.write(body[start : start + split_every], final=start + split_every >= len(body))

    # -- model endpoints ---------------------------------------------------------------------------------------------

    def _tags_body(self) -> Json:
        version = _version_tuple(self.version)
        # capabilities and details.context_length exist only from v0.30 on (dev builds report 0.0.0).
        modern = version >= (0, 30) or version == (0, 0, 0)
        with self._cond:
            specs = list(self._models.values())
        # Ollama lists the most recently modified first; the sort is stable for equal timestamps.
        specs.sort(key=lambda s: s.modified_at, reverse=True)
        models = []
        for spec in specs:
            entry: Json = {
                "name": spec.name,
                "model": spec.name,
                "modified_at": spec.modified_at,
                "size": spec.size,
                "digest": spec.effective_digest,
                "details": _details(spec, with_context=modern),
            }
            if modern:
                entry["capabilities"] = list(spec.capabilities)
            models.append(entry)
        return {"models": models}

    def _ps_body(self) -> Json:
        with self._cond:
            loaded = sorted(self._loaded.values(), key=lambda e: e.expires_at_ns)
        models = []
        for entry in loaded:
            spec = entry.spec
            models.append(
                {
                    "name": spec.name,
                    "model": spec.name,
                    "size": spec.size,
                    "digest": spec.effective_digest,
                    "details": _details(spec, with_context=False),
                    "expires_at": _rfc3339_nano(entry.expires_at_ns),
                    "size_vram": spec.size,
                    "context_length": entry.num_ctx,
                }
            )
        return {"models": models}

    def _show(self, raw: bytes) -> tuple[int, Json]:
        try:
            data = _go_decode(raw)
        except _MissingBody:
            return 400, {"error": "missing request body"}
        except _GoDecodeError as exc:
            return 400, {"error": str(exc)}
        if data is None:
            data = {}
        if not isinstance(data, dict):
            return 400, {"error": f"json: cannot unmarshal {_go_kind(data)} into Go value of type api.ShowRequest"}
        for key in ("model", "name", "system", "template"):
            err = _check_string(data.get(key), f"ShowRequest.{key}")
            if err:
                return 400, {"error": err}
        name = data.get("model") or data.get("name") or ""
        if not name:
            return 400, {"error": "model is required"}
        spec = self.get_model(name)
        if spec is None:
            return 404, {"error": f"model '{name}' not found"}
        body = _show_body(spec)
        version = _version_tuple(self.version)
        if version < (0, 6, 4) and version != (0, 0, 0):
            # `capabilities` joined /api/show in 0.6.4; older servers leave clients to guess.
            del body["capabilities"]
        return 200, body

    # -- /api/chat ---------------------------------------------------------------------------------------------------

    def _validate_chat(self, raw: bytes) -> tuple[Json, ModelSpec]:
        """The checks ChatHandler makes before scheduling, in its order; raises ``_ChatError`` on failure."""
        try:
            data = _go_decode(raw)
        except _MissingBody:
            raise _ChatError(400, "missing request body") from None
        except _GoDecodeError as exc:
            raise _ChatError(400, str(exc)) from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise _ChatError(400, f"json: cannot unmarshal {_go_kind(data)} into Go value of type api.ChatRequest")
        err = _check_chat_request(data)
        if err:
            raise _ChatError(400, err)
        top = data.get("top_logprobs")
        if top is not None and not 0 <= top <= 20:
            raise _ChatError(400, "top_logprobs must be between 0 and 20")
        name = data.get("model") or ""
        if not name:
            raise _ChatError(400, "model is required")
        if not _valid_model_name(name):
            raise _ChatError(400, "invalid model name")
        spec = self.get_model(name)
        if spec is None:
            raise _ChatError(404, f"model '{name}' not found")
        return data, spec

    def _check_capabilities(self, data: Json, spec: ModelSpec) -> None:
        """Thinking, chat and tools support, checked as ChatHandler and the scheduler do."""
        name: str = data["model"]
        think = data.get("think")
        if "thinking" not in spec.capabilities and think is not None and think is not False:
            raise _ChatError(400, f"{_go_strconv_quote(name)} does not support thinking")
        if "completion" not in spec.capabilities:
            raise _ChatError(400, f"{_go_strconv_quote(name)} does not support chat")
        if data.get("tools") and "tools" not in spec.capabilities:
            raise _ChatError(400, f"{_full_name(name)} does not support tools")

    async def _chat(self, conn: _Connection, req: _HttpRequest, request_index: int) -> None:
        try:
            data, spec = self._validate_chat(req.body)
            name: str = data["model"]
            key = _name_key(name)
            messages = [m for m in data.get("messages") or [] if m is not None]
            keep_alive = _keep_alive_seconds(data.get("keep_alive"))
            if not messages and keep_alive == 0:
                with self._cond:
                    self._loaded.pop(key, None)
                await self._send_json(conn, req, 200, self._bare_done(name, "unload"))
                return
            self._check_capabilities(data, spec)
            options = data.get("options") or {}
            err = _check_options(options)
            if err:
                # scheduleRunner fails, and handleScheduleError's default branch answers 500.
                raise _ChatError(500, err)
            num_ctx = self._effective_num_ctx(spec, options)
            load_ns = self._load(key, spec, num_ctx, keep_alive)
            if not messages:
                await self._send_json(conn, req, 200, self._bare_done(name, "load"))
                return
            tokens = estimate_prompt_tokens(data)
            if data.get("truncate") is False and tokens > num_ctx:
                raise _ChatError(
                    400,
                    f"request ({tokens} tokens) exceeds the available context size ({num_ctx} tokens), "
                    "try increasing it",
                )
            err = _check_format(data.get("format"))
            if err:
                # Completion fails before generating; the error carries no status, so streamResponse answers 500.
                raise _ChatError(500, err)
        except _ChatError as exc:
            await self._send_json(conn, req, exc.status, {"error": exc.message})
            return

        reply = self._next_reply(key, data)
        stream = data.get("stream") is not False
        record = ChatStream(request_index, name, stream, time.monotonic())
        holds_slot = True

        def release_slot() -> None:
            # Called with the lock held; the active-stream slot is given back exactly once.
            nonlocal holds_slot
            if holds_slot:
                holds_slot = False
                self._active -= 1
                if keep_alive == 0:
                    self._loaded.pop(key, None)  # keep_alive 0 unloads the model once the request is done
                self._cond.notify_all()

        def finish() -> None:
            with self._cond:
                if not record.client_disconnected:
                    record.completed = True
                    record.finished_at = time.monotonic()
                release_slot()

        with self._cond:
            self._streams.append(record)
            self._active += 1
            self._max_active = max(self._max_active, self._active)
            self._cond.notify_all()
        conn.start_watching()
        streamer = _Streamer(conn, record, self._cond, finish)
        try:
            if stream:
                await self._stream_reply(req, streamer, reply, name, data, load_ns)
            else:
                await self._single_reply(req, streamer, reply, name, data, load_ns)
            finish()
        except _ClientGone:
            with self._cond:
                record.completed = False
                record.client_disconnected = True
                record.disconnected_at = record.finished_at = time.monotonic()
                release_slot()
            raise
        finally:
            with self._cond:
                release_slot()  # cancelled by stop(): neither completed nor disconnected
            await conn.stop_watching()

    def _bare_done(self, name: str, reason: str) -> Json:
        return {"model": name, "created_at": _now(), "message": _message(""), "done": True, "done_reason": reason}

    def _effective_num_ctx(self, spec: ModelSpec, options: Json) -> int:
        """Request option > Modelfile parameter > server default, capped at the training context [src]."""
        requested = options.get("num_ctx")
        if requested is not None:
            num_ctx = int(requested)  # Go truncates integer options sent as floats
        elif spec.num_ctx is not None:
            num_ctx = spec.num_ctx
        else:
            num_ctx = self.default_num_ctx
        if spec.context_length > 0:
            num_ctx = min(num_ctx, spec.context_length)
        return num_ctx

    def _load(self, key: str, spec: ModelSpec, num_ctx: int, keep_alive: float | None) -> int:
        """Simulate the scheduler: (re)load when the runner is missing or its num_ctx differs; returns load ns."""
        seconds = _DEFAULT_KEEP_ALIVE_S if keep_alive is None else keep_alive
        if seconds < 0:
            seconds = 10 * 365 * 24 * 3600.0  # "forever"
        expires = time.time_ns() + int(seconds * 1e9)
        with self._cond:
            current = self._loaded.get(key)
            reloaded = current is None or current.num_ctx != num_ctx
            if reloaded:
                self._loads.append((spec.name, num_ctx))
            self._loaded[key] = _Loaded(spec, num_ctx, expires)
        return 1_500_000_000 if reloaded else 21_000_000

    def _next_reply(self, key: str, data: Json) -> Reply:
        with self._cond:
            for position, queued in enumerate(self._queue):
                if queued.model_key is None or queued.model_key == key:
                    del self._queue[position]
                    return queued.reply
            responder = self._responder
        if responder is not None:
            return responder(data)
        return Reply(content=f"Hello from {data['model']}.")

    @staticmethod
    def _error_of(reply: Reply) -> tuple[int, str] | None:
        if reply.status == 200 and reply.error is None:
            return None
        status = 500 if reply.status == 200 else reply.status
        return status, reply.error if reply.error is not None else http.HTTPStatus(status).phrase.lower()

    async def _stream_reply(
        self, req: _HttpRequest, streamer: _Streamer, reply: Reply, name: str, data: Json, load_ns: int
    ) -> None:
        await streamer.pause(reply.first_byte_delay, "first_byte_delay")
        failure = self._error_of(reply)
        if failure is not None and (reply.error_body_size is not None or reply.endless_error_body):
            await self._large_error(req, streamer, failure, reply.error_body_size)
            return
        if failure is not None:
            body = orjson.dumps({"error": failure[1]})
            await self._send_body(streamer.conn, req, failure[0], "application/json; charset=utf-8", body, streamer)
            return
        if reply.endless:
            await self._endless_stream(req, streamer, reply, name)
            return

        plan = _plan_reply(reply, name, data, load_ns)
        items: list[Json | bytes]
        if reply.raw_lines is not None:
            items = list(reply.raw_lines)
        else:
            items = list(plan.chunks)
            if reply.mid_stream_error is not None:
                items.append({"error": reply.mid_stream_error})
            elif not reply.end_without_done and not reply.hang_after_chunks:
                items.append(plan.final)
        # hold_until delays the done chunk only, so a test can keep a normal stream open.
        hold = reply.hold_until if items and items[-1] is plan.final else None

        chunked = req.version == "HTTP/1.1"
        headers = [("Content-Type", "application/x-ndjson"), ("Date", formatdate(usegmt=True))]
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
            headers.extend(_connection_headers(req))
        else:
            # HTTP/1.0 has no chunked coding: the body ends when the connection closes.
            req.keep_alive = False
            headers.append(("Connection", "close"))
        streamer.set_phase("streaming")
        await streamer.write(_head(200, headers))
        if reply.first_line_after is not None:
            await self._hold(streamer, reply.first_line_after)

        def encode(item: Json | bytes) -> bytes:
            if isinstance(item, bytes):
                return item
            if "created_at" in item:
                item["created_at"] = _now()  # stamped when sent, as Ollama does; keeps the key's position
            return orjson.dumps(item) + b"\n"

        terminator = b"0\r\n\r\n" if chunked else b""

        async def emit(payload: bytes, *, last: bool) -> None:
            """Write one encoded part; the last one carries the end of the body in the same TCP write.

            A client that closes right after reading ``done:true`` must not be recorded as a disconnect just because
            the chunked terminator was still to come in a separate write.
            """
            split = reply.split_every if reply.split_every and reply.split_every > 0 else max(len(payload), 1)
            starts = range(0, len(payload), split)
            if last and not starts:
                await streamer.write(terminator, final=True)
            for start in starts:
                if start:
                    await streamer.pause(reply.split_pause)
                piece = payload[start : start + split]
                # A zero-length HTTP chunk would end the body, so empty pieces are never framed.
                framed = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
                final = last and start + split >= len(payload)
                if final:
                    framed += terminator
                await streamer.write(framed, counts=True, final=final)

        ends = not reply.hang_after_chunks
        if reply.split_every and reply.split_every > 0:
            # Split the joined body rather than each line, so piece boundaries fall inside lines and characters.
            before = items[:-1] if hold is not None else items
            await emit(b"".join(encode(item) for item in before), last=ends and hold is None)
            if hold is not None:
                await self._hold(streamer, hold)
                await emit(encode(items[-1]), last=ends)
        elif not items:
            await emit(b"", last=ends)
        else:
            for position, item in enumerate(items):
                if position and reply.delay_between > 0:
                    await streamer.pause(reply.delay_between, "streaming")
                if hold is not None and position == len(items) - 1:
                    await self._hold(streamer, hold)
                await emit(encode(item), last=ends and position == len(items) - 1)
        if reply.hang_after_chunks:
            await streamer.hang()

    async def _large_error(
        self, req: _HttpRequest, streamer: _Streamer, failure: tuple[int, str], size: int | None
    ) -> None:
        """An error answer of `size` bytes (None: endless, chunked), written 1 MiB at a time until the client leaves."""
        status, message = failure
        start = orjson.dumps({"error": message})
        headers = [("Content-Type", "application/json; charset=utf-8"), ("Date", formatdate(usegmt=True))]
        if size is None:
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            headers.append(("Content-Length", str(max(size, len(start)))))
        streamer.set_phase("streaming")
        await streamer.write(_head(status, headers))
        piece = b" " * (1 << 20)
        framed_piece = b"%x\r\n%s\r\n" % (len(piece), piece)
        await streamer.write(b"%x\r\n%s\r\n" % (len(start), start) if size is None else start)
        left = None if size is None else size - len(start)
        while left is None or left > 0:
            if left is None:
                await streamer.write(framed_piece, counts=True)
                continue
            await streamer.write(piece[:left], counts=True, final=left <= len(piece))
            left -= min(left, len(piece))

    async def _endless_stream(self, req: _HttpRequest, streamer: _Streamer, reply: Reply, name: str) -> None:
        """Content chunks forever (a model ignoring num_predict), 64 lines per TCP write, until the client leaves."""
        headers = [("Content-Type", "application/x-ndjson"), ("Date", formatdate(usegmt=True))]
        headers.append(("Transfer-Encoding", "chunked"))
        streamer.set_phase("streaming")
        await streamer.write(_head(200, headers))
        text = reply.content or "again "
        while True:
            batch = bytearray()
            for _ in range(64):
                line = (
                    orjson.dumps({"model": name, "created_at": _now(), "message": _message(text), "done": False})
                    + b"\n"
                )
                batch += b"%x\r\n%s\r\n" % (len(line), line)
            # With split_every, in TCP writes of that many bytes: reads then end in the middle of lines.
            step = reply.split_every if reply.split_every and reply.split_every > 0 else len(batch)
            for start in range(0, len(batch), step):
                if start:
                    await streamer.pause(reply.split_pause)
                await streamer.write(bytes(batch[start : start + step]), counts=True)
            await streamer.pause(reply.delay_between)

    async def _hold(self, streamer: _Streamer, event: threading.Event) -> None:
        streamer.set_phase("hold")
        while not event.is_set():
            await streamer.pause(0.02)
        streamer.set_phase("streaming")

    async def _single_reply(
        self, req: _HttpRequest, streamer: _Streamer, reply: Reply, name: str, data: Json, load_ns: int
    ) -> None:
        await streamer.pause(reply.first_byte_delay, "first_byte_delay")
        status = 200
        failure = self._error_of(reply)
        if failure is not None:
            status, body = failure[0], orjson.dumps({"error": failure[1]})
        elif reply.raw_lines is not None:
            body = b"".join(reply.raw_lines)
        elif reply.mid_stream_error is not None:
            # Without streaming, an error from the runner becomes a 500 with the same text.
            status, body = 500, orjson.dumps({"error": reply.mid_stream_error})
        else:
            if reply.hang_after_chunks:
                # Nothing is sent until generation ends, and it never does.
                await streamer.hang()
            if reply.hold_until is not None:
                await self._hold(streamer, reply.hold_until)
            plan = _plan_reply(reply, name, data, load_ns)
            body = orjson.dumps(_aggregate(plan, with_final=not reply.end_without_done))
        streamer.set_phase("streaming")
        await self._send_body(
            streamer.conn,
            req,
            status,
            "application/json; charset=utf-8",
            body,
            streamer,
            reply.split_every,
            reply.split_pause,
        )
