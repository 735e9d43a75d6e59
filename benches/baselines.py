"""Pure-Python baselines for the micro benchmarks, and the fixture data they run on.

Each baseline does the same job as a function of the Rust core (``ccop._core``) and is written the way a careful
Python programmer would write it: ``orjson`` for JSON, ``bytes.split`` for lines, ``str.split`` for words. They exist
only to be measured against; ``test_bench_core.py`` asserts once per benchmark that a baseline gives the same
result as the Rust path, so the comparison is between equivalent work.

Scope: each baseline covers what its fixture exercises, with the Rust core's semantics there:

- :class:`PyStreamTranslator`: text content, tool calls, the ``done`` chunk, upstream error lines, an early end of
  stream and the line-length limit. No thinking blocks (the Rust signature is a byte-wise FNV-1a hash, whose pure-
  Python cost would dominate and say nothing about JSON or framing) and no stop sequences. Error *messages* for
  malformed lines are not the Rust core's wording (``serde_json``'s message is quoted there).
- :func:`py_count_text` splits with ``str.split()``, which also treats U+001C–U+001F as whitespace (Rust's
  ``char::is_whitespace`` does not); the fixtures contain none.
- :func:`py_count_json` re-serialises with ``orjson``; it equals the Rust raw-text scan for JSON whose numbers are
  written canonically (integers, shortest floats) and without duplicate keys, which holds for the fixtures.

Fixture data is generated here, deterministically (fixed seeds), so nothing large is committed.
"""

from __future__ import annotations

import random
import re
import string
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "PyStreamTranslator",
    "build_request_body",
    "build_stream",
    "cut_pieces",
    "heal_inputs",
    "py_count_json",
    "py_count_request",
    "py_count_text",
    "py_encode_sse",
    "py_heal_tool_arguments",
]

# --------------------------------------------------------------------------------------------------------------------
# SSE framing
# --------------------------------------------------------------------------------------------------------------------


def py_encode_sse(event: bytes, data: bytes) -> bytes:
    """``event: <event>\\ndata: <data>\\n\\n`` for single-line data (what the translator always produces)."""
    return b"event: " + event + b"\ndata: " + data + b"\n\n"


_EV_MESSAGE_START = b"event: message_start\ndata: "
_EV_BLOCK_START = b"event: content_block_start\ndata: "
_EV_BLOCK_DELTA = b"event: content_block_delta\ndata: "
_EV_BLOCK_STOP = b"event: content_block_stop\ndata: "
_EV_MESSAGE_DELTA = b"event: message_delta\ndata: "
_EV_MESSAGE_STOP = b"event: message_stop\ndata: "
_EV_ERROR = b"event: error\ndata: "
_END = b"\n\n"

# --------------------------------------------------------------------------------------------------------------------
# NDJSON splitting
# --------------------------------------------------------------------------------------------------------------------


class LineTooLong(Exception):
    """A line passed the limit (the Python twin of the Rust splitter's ``CoreError::LineTooLong``)."""


class _LineSplitter:
    """Incremental NDJSON splitter of the stream baseline, with the Rust ``LineSplitter`` rules for well-formed input.

    Lines end at ``\\n`` (one ``\\r`` before it is dropped), blank lines are skipped; an unterminated tail longer
    than the limit raises :class:`LineTooLong` (the Rust splitter's recovery after that is not modelled).
    """

    __slots__ = ("_buf", "_max")

    def __init__(self, max_line_bytes: int = 16_777_216) -> None:
        self._buf = b""
        self._max = max_line_bytes

    def feed(self, chunk: bytes) -> list[bytes]:
        """Return the complete non-blank lines that ``chunk`` completes."""
        if self._buf:
            chunk = self._buf + chunk
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if len(tail) > self._max + 1:
            self._buf = b""
            raise LineTooLong(self._max)
        self._buf = tail
        out = []
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            if len(line) > self._max:
                raise LineTooLong(self._max)
            if line and not line.isspace():
                out.append(line)
        return out

    def finish(self) -> list[bytes]:
        """Return the last line if it had no newline."""
        tail, self._buf = self._buf, b""
        if tail[-1:] == b"\r":
            tail = tail[:-1]
        return [tail] if tail and not tail.isspace() else []


# --------------------------------------------------------------------------------------------------------------------
# Token counting
# --------------------------------------------------------------------------------------------------------------------

IMAGE_TOKENS = 1600
DOCUMENT_TOKENS = 3000
MAX_BLOCK_DEPTH = 32
_STRING_FIELDS = ("type", "text", "thinking", "data", "name", "title", "context")


def py_count_text(text: str) -> int:
    """Per whitespace-separated word, ``ceil(chars / 4)``."""
    return sum((len(word) + 3) // 4 for word in text.split())


def py_count_json(value: Any) -> int:
    """Tokens of ``value`` written as compact JSON."""
    return py_count_text(orjson.dumps(value).decode())


def _count_content(content: Any, depth: int) -> int:
    if isinstance(content, str):
        return py_count_text(content)
    if isinstance(content, list):
        return sum(_count_block(block, depth) for block in content)
    return 0


def _text_of(value: str | None) -> int:
    return 0 if value is None else py_count_text(value)


def _count_block(block: Any, depth: int) -> int:
    if depth >= MAX_BLOCK_DEPTH or not isinstance(block, dict):
        return py_count_json(block)
    source = block.get("source")
    # Rust parses the known fields with fixed types; a block where one has another type is counted as its JSON.
    if any(not isinstance(block.get(key), (str, type(None))) for key in _STRING_FIELDS) or not isinstance(
        source, (dict, type(None))
    ):
        return py_count_json(block)
    if source is not None and any(not isinstance(source.get(key), (str, type(None))) for key in ("type", "data")):
        return py_count_json(block)
    kind = block.get("type")
    if kind == "text":
        return _text_of(block.get("text"))
    if kind == "thinking":
        return _text_of(block.get("thinking"))
    if kind == "redacted_thinking":
        return _text_of(block.get("data"))
    if kind == "tool_use":
        value = block.get("input")
        return _text_of(block.get("name")) + (0 if value is None else py_count_json(value))
    if kind == "tool_result":
        return _count_content(block.get("content"), depth + 1)
    if kind == "image":
        return IMAGE_TOKENS
    if kind == "document":
        return _text_of(block.get("title")) + _text_of(block.get("context")) + _count_document_source(source, depth)
    return py_count_json(block)


def _count_document_source(source: dict[str, Any] | None, depth: int) -> int:
    if source is not None and source.get("type") == "text":
        return _text_of(source.get("data"))
    if source is not None and source.get("type") == "content":
        return _count_content(source.get("content"), depth + 1)
    return DOCUMENT_TOKENS


def py_count_request(body: bytes) -> int:
    """The pure-Python twin of ``ccop._core.count_request_tokens``: ``orjson.loads`` plus the same walk."""
    request = orjson.loads(body)
    if not isinstance(request, dict):
        raise ValueError("the request body must be a JSON object")
    total = _count_content(request.get("system"), 0)
    messages = request.get("messages")
    if messages is not None:
        if not isinstance(messages, list):
            raise ValueError("messages must be an array")
        for message in messages:
            if not isinstance(message, dict):
                raise ValueError("a message must be an object")
            total += _count_content(message.get("content"), 0)
    tools = request.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise ValueError("tools must be an array")
        for tool in tools:
            if not isinstance(tool, dict):
                raise ValueError("a tool must be an object")
            for key in ("name", "description"):
                value = tool.get(key)
                if value is not None and not isinstance(value, str):
                    raise ValueError(f"tool {key} must be a string")
                total += _text_of(value)
            schema = tool.get("input_schema")
            if schema is not None:
                total += py_count_json(schema)
    return total


# --------------------------------------------------------------------------------------------------------------------
# Tool-argument healing
# --------------------------------------------------------------------------------------------------------------------

MAX_UNWRAP = 4
_ESCAPE = re.compile(r'\\(?:u([0-9a-fA-F]{4})(?:\\u([dD][c-fC-F][0-9a-fA-F]{2}))?|(["\\/nrtbf]))')
_SIMPLE = {'"': '"', "\\": "\\", "/": "/", "n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}
_FENCE_TAG = _ALPHANUMERIC = string.ascii_letters + string.digits
_EMPTY = b"{}"


def _decode_unit(unit: int) -> str:
    return "\ufffd" if 0xD800 <= unit < 0xE000 else chr(unit)


def _unescape_match(match: re.Match[str]) -> str:
    hex1, hex2, simple = match.groups()
    if simple is not None:
        return _SIMPLE[simple]
    unit = int(hex1, 16)
    if hex2 is None:
        return _decode_unit(unit)
    low = int(hex2, 16)
    if 0xD800 <= unit < 0xDC00:
        return chr(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))
    return _decode_unit(unit) + _decode_unit(low)


def _strip_fence(text: str) -> str:
    if not text.startswith("```"):
        return text
    body = text[3:].lstrip(_FENCE_TAG)
    if body.endswith("```"):
        body = body[:-3]
    return body.strip()


def _unwrap(text: str, depth: int) -> dict[str, Any] | None:
    if depth > MAX_UNWRAP:
        return None
    text = _strip_fence(text.strip())
    if not text:
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    else:
        if isinstance(value, dict):
            return value
        if value is None:
            return {}
        if isinstance(value, str):
            return _unwrap(value, depth + 1)
        return None
    if "\\" not in text:
        return None
    inner = text[1:-1] if len(text) > 2 and text[0] == '"' and text[-1] == '"' else text
    return _unwrap(_ESCAPE.sub(_unescape_match, inner), depth + 1)


def py_heal_tool_arguments(text: str) -> tuple[bytes, str]:
    """The four healing steps of ``ccop._core.heal_tool_arguments`` for ``str`` input."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    else:
        if isinstance(value, dict):
            return orjson.dumps(value), "parsed_string"
        if value is None:
            return _EMPTY, "parsed_string"
        if isinstance(value, str):
            healed = _unwrap(value, 1)
            if healed is None:
                return orjson.dumps({"raw": text}), "raw"
            return orjson.dumps(healed), "unescaped"
        return orjson.dumps({"raw": text}), "raw"
    if not text.strip():
        return _EMPTY, "parsed_string"
    healed = _unwrap(text, 0)
    if healed is None:
        return orjson.dumps({"raw": text}), "raw"
    return orjson.dumps(healed), "unescaped"


def heal_inputs() -> list[str]:
    """A mix of tool-call arguments as models produce them, covering all four healing steps."""
    read = {"file_path": "/home/user/project/src/ccop/streaming.py", "offset": 120, "limit": 80}
    bash = {
        "command": 'grep -rn "größe" src/ | sort -u | head -20',
        "description": "Search for the German word “größe” in the sources",
        "timeout": 120000,
    }
    edit = {
        "file_path": "/home/user/project/README.md",
        "old_string": "## Install\n\npip install ccop\n",
        "new_string": "## Install\n\n```sh\npip install claude-code-ollama-proxy\n```\n",
        "replace_all": False,
    }
    as_text = orjson.dumps(bash).decode()
    return [
        orjson.dumps(read).decode(),  # (b) object JSON text
        as_text,  # (b) with non-ASCII
        orjson.dumps(edit, option=orjson.OPT_INDENT_2).decode(),  # (b) pretty-printed
        orjson.dumps(as_text).decode(),  # (c) double-encoded: a JSON string of a JSON object
        orjson.dumps(orjson.dumps(orjson.dumps(read).decode()).decode()).decode(),  # (c) triple-encoded
        orjson.dumps(read).decode().replace('"', '\\"'),  # (c) escaped quotes, no outer quotes
        "```json\n" + orjson.dumps(edit).decode() + "\n```",  # (c) code fence
        "",  # (b) empty: no arguments
        "null",  # (b) null: no arguments
        "Read the file /etc/hosts and tell me what it says",  # (d) garbage
        '{"file_path": "/home/user/project/src/ccop/stre',  # (d) truncated object
        "[1, 2, 3]",  # (d) valid JSON, not an object
    ]


# --------------------------------------------------------------------------------------------------------------------
# Stream translation
# --------------------------------------------------------------------------------------------------------------------

_STREAMING, _FINISHED, _FAILED = 0, 1, 2
EARLY_EOF_MESSAGE = "Ollama closed the stream before the answer was complete"


def _classify_error(text: str) -> str:
    lower = text.lower()
    if "server busy" in lower or "overloaded" in lower:
        return "overloaded_error"
    needles = (
        "exceeds the available context size",
        "exceed_context_size",
        "context window",
        "context length",
        "context size",
        "context overflow",
        "prompt is too long",
    )
    if any(needle in lower for needle in needles):
        return "invalid_request_error"
    return "api_error"


class PyStreamTranslator:
    """Ollama ``/api/chat`` NDJSON bytes in, Anthropic SSE bytes out: the Python twin of ``StreamTranslator``.

    Same framing, same JSON layout (``orjson`` writes the dicts in the same key order), and the same coalescing:
    consecutive text within one :meth:`feed` becomes one ``text_delta``. See the module docs for the scope.
    """

    def __init__(self, *, message_id: str, model: str, input_tokens_estimate: int, max_tokens: int) -> None:
        self._message_id = message_id
        self._model = model
        self._estimate = input_tokens_estimate
        self._max_tokens = max_tokens
        self._splitter = _LineSplitter()
        # (kind, parts): a text block keeps its text as a list of parts, a tool_use block [name, input JSON].
        self._blocks: list[tuple[str, list[str]]] = []
        self._tool_ids: set[str] = set()
        self._open = False
        self._pending: list[str] = []
        self._started = False
        self._phase = _STREAMING
        self._prompt_eval_count: int | None = None
        self._cached_count: int | None = None
        self._eval_count: int | None = None
        self.error: tuple[str, str] | None = None

    # -- public API, mirroring StreamTranslator ----------------------------------------------------------------------

    def start(self) -> bytes:
        out: list[bytes] = []
        self._start(out)
        return b"".join(out)

    def feed(self, chunk: bytes) -> bytes:
        if self._phase != _STREAMING:
            return b""
        out: list[bytes] = []
        try:
            lines = self._splitter.feed(chunk)
        except LineTooLong as exc:
            lines = []
            self._fail("api_error", f"Ollama sent a line longer than {exc.args[0]} bytes", out)
        for line in lines:
            if self._phase != _STREAMING:
                break
            self._on_line(line, out)
        self._flush_pending(out)
        return b"".join(out)

    def finish(self) -> bytes:
        out: list[bytes] = []
        if self._phase == _STREAMING:
            for line in self._splitter.finish():
                self._on_line(line, out)
        if self._phase == _STREAMING:
            self._fail("api_error", EARLY_EOF_MESSAGE, out)
        self._flush_pending(out)
        return b"".join(out)

    # -- internals ---------------------------------------------------------------------------------------------------

    def _start(self, out: list[bytes]) -> None:
        if self._started:
            return
        self._started = True
        message = {
            "type": "message_start",
            "message": {
                "id": self._message_id,
                "type": "message",
                "role": "assistant",
                "model": self._model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": self._estimate, "output_tokens": 0},
            },
        }
        out.append(_EV_MESSAGE_START + orjson.dumps(message) + _END)

    def _on_line(self, line: bytes, out: list[bytes]) -> None:
        try:
            chunk = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            self._fail("api_error", f"Ollama sent a malformed line ({exc})", out)
            return
        if not isinstance(chunk, dict):
            self._fail("api_error", "Ollama sent a malformed line (expected a JSON object)", out)
            return
        error = chunk.get("error")
        if error is not None:
            text = error if isinstance(error, str) else orjson.dumps(error).decode()
            self._fail(_classify_error(text), f"Ollama reported an error: {text}", out)
            return
        message = chunk.get("message")
        if message:
            content = message.get("content")
            if content:
                self._emit_text(content, out)
            for call in message.get("tool_calls") or ():
                self._on_tool_call(call, out)
        count = chunk.get("prompt_eval_count")
        if count is not None:
            self._prompt_eval_count = count
        count = chunk.get("prompt_eval_cached_count")
        if count is not None:
            self._cached_count = count
        count = chunk.get("eval_count")
        if count is not None:
            self._eval_count = count
        if chunk.get("done"):
            self._finish_message(self._map_done_reason(chunk.get("done_reason")), out)

    def _emit_text(self, text: str, out: list[bytes]) -> None:
        if not (self._open and self._blocks[-1][0] == "text"):
            self._close_open_block(out)
            self._open_text_block(out)
        self._blocks[-1][1].append(text)
        self._pending.append(text)

    def _open_text_block(self, out: list[bytes]) -> None:
        index = len(self._blocks)
        self._start(out)
        start = {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}
        out.append(_EV_BLOCK_START + orjson.dumps(start) + _END)
        self._blocks.append(("text", []))
        self._open = True
        self._pending = []

    def _flush_pending(self, out: list[bytes]) -> None:
        if not (self._open and self._pending):
            return
        text = "".join(self._pending)
        self._pending = []
        delta = {
            "type": "content_block_delta",
            "index": len(self._blocks) - 1,
            "delta": {"type": "text_delta", "text": text},
        }
        out.append(_EV_BLOCK_DELTA + orjson.dumps(delta) + _END)

    def _close_open_block(self, out: list[bytes]) -> None:
        if not self._open:
            return
        self._flush_pending(out)
        self._open = False
        stop = {"type": "content_block_stop", "index": len(self._blocks) - 1}
        out.append(_EV_BLOCK_STOP + orjson.dumps(stop) + _END)

    def _on_tool_call(self, call: dict[str, Any], out: list[bytes]) -> None:
        self._close_open_block(out)
        function = call.get("function") or {}
        name = function.get("name") or ""
        arguments = function.get("arguments")
        if isinstance(arguments, dict):
            input_json = orjson.dumps(arguments)
        elif arguments is None:
            input_json = _EMPTY
        elif isinstance(arguments, str):
            input_json = py_heal_tool_arguments(arguments)[0]
        else:
            input_json = orjson.dumps({"raw": orjson.dumps(arguments).decode()})
        call_id = call.get("id")
        if not call_id or call_id in self._tool_ids:
            call_id = "toolu_" + "".join(random.choices(_ALPHANUMERIC, k=24))
        self._tool_ids.add(call_id)
        index = len(self._blocks)
        self._start(out)
        start = {
            "type": "content_block_start",
            "index": index,
            "content_block": {"type": "tool_use", "id": call_id, "name": name, "input": {}},
        }
        delta = {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "input_json_delta", "partial_json": input_json.decode()},
        }
        stop = {"type": "content_block_stop", "index": index}
        out.append(_EV_BLOCK_START + orjson.dumps(start) + _END)
        out.append(_EV_BLOCK_DELTA + orjson.dumps(delta) + _END)
        out.append(_EV_BLOCK_STOP + orjson.dumps(stop) + _END)
        self._blocks.append(("tool_use", [name, input_json.decode()]))

    def _output_estimate(self) -> int:
        total = 0
        for kind, parts in self._blocks:
            if kind == "text":
                total += py_count_text("".join(parts))
            else:
                total += py_count_text(parts[0]) + py_count_json(orjson.loads(parts[1]))
        return total

    def _map_done_reason(self, done_reason: str | None) -> str:
        if any(kind == "tool_use" for kind, _ in self._blocks):
            return "tool_use"
        if done_reason == "length":
            generated = self._eval_count if self._eval_count is not None else self._output_estimate()
            return "max_tokens" if generated >= self._max_tokens else "model_context_window_exceeded"
        return "end_turn"

    def _usage(self) -> dict[str, int]:
        cached = self._cached_count
        if self._prompt_eval_count is not None:
            input_tokens = max(self._prompt_eval_count - (cached or 0), 0)
        else:
            input_tokens = self._estimate
        usage = {"input_tokens": input_tokens}
        if cached is not None:
            usage["cache_read_input_tokens"] = cached
        usage["output_tokens"] = self._eval_count if self._eval_count is not None else self._output_estimate()
        return usage

    def _finish_message(self, stop_reason: str, out: list[bytes]) -> None:
        self._close_open_block(out)
        self._phase = _FINISHED
        self._start(out)
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": self._usage(),
        }
        out.append(_EV_MESSAGE_DELTA + orjson.dumps(delta) + _END)
        out.append(_EV_MESSAGE_STOP + b'{"type":"message_stop"}' + _END)

    def _fail(self, kind: str, message: str, out: list[bytes]) -> None:
        self._flush_pending(out)
        event = {"type": "error", "error": {"type": kind, "message": message}}
        out.append(_EV_ERROR + orjson.dumps(event) + _END)
        self.error = (kind, message)
        self._phase = _FAILED


# --------------------------------------------------------------------------------------------------------------------
# Fixture data
# --------------------------------------------------------------------------------------------------------------------

# Words and pieces as a code assistant streams them: prose, identifiers, punctuation, quotes, non-ASCII.
_WORDS = tuple(
    "the file| function| returns| a| list| of| lines|.|\n\n|I'll| read| `src/|streaming|.py`| first|,| then| update"
    "| the| tests|:|\n- |`NdjsonSplitter`| keeps| the| tail| between| calls| — |naïve| café| größer| 日本語|のテキスト"
    '| →| ✓| 😀| "quoted"| back\\slash|\tindented| résumé| Ελληνικά| code:| `x = 1`'.split("|")
)


def build_stream(content_chunks: int = 500, *, seed: int = 20261124) -> list[bytes]:
    """Ollama ``/api/chat`` lines (each with its ``\\n``): content chunks, one tool call, the done chunk.

    Shaped like Ollama's own chunks: ``model``, ``created_at`` (RFC 3339 with nanoseconds), ``message{role,content}``,
    ``done:false``; the tool call comes in its own ``done:false`` chunk (rendered mode) and the done chunk carries
    the metrics.
    """
    rng = random.Random(seed)
    model = "qwen3-coder:30b"
    lines = []
    nanos = 100_000_000
    for _ in range(content_chunks):
        nanos += rng.randrange(15_000_000, 40_000_000)
        text = "".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
        chunk = {
            "model": model,
            "created_at": f"2026-11-24T10:00:{nanos // 1_000_000_000:02d}.{nanos % 1_000_000_000:09d}Z",
            "message": {"role": "assistant", "content": text},
            "done": False,
        }
        lines.append(orjson.dumps(chunk) + b"\n")
    call = {
        "model": model,
        "created_at": "2026-11-24T10:00:30.000000001Z",
        "message": {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_k3j9x0qa",
                    "function": {
                        "index": 0,
                        "name": "Edit",
                        "arguments": {
                            "file_path": "/home/user/project/src/ccop/streaming.py",
                            "old_string": "    return b''\n",
                            "new_string": "    return b''.join(frames)  # größer\n",
                        },
                    },
                }
            ],
        },
        "done": False,
    }
    done = {
        "model": model,
        "created_at": "2026-11-24T10:00:30.100000000Z",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
        "total_duration": 31_043_000_000,
        "load_duration": 21_000_000,
        "prompt_eval_count": 18234,
        "prompt_eval_duration": 512_000_000,
        "eval_count": 1057,
        "eval_duration": 30_498_000_000,
    }
    lines.append(orjson.dumps(call) + b"\n")
    lines.append(orjson.dumps(done) + b"\n")
    return lines


def cut_pieces(data: bytes, low: int = 1024, high: int = 4096, *, seed: int = 7) -> list[bytes]:
    """Cut ``data`` into socket-read-sized pieces of ``low``–``high`` bytes at arbitrary byte offsets."""
    rng = random.Random(seed)
    pieces = []
    pos = 0
    while pos < len(data):
        size = rng.randint(low, high)
        pieces.append(data[pos : pos + size])
        pos += size
    return pieces


_DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "cc2.1.330-print-first-request.json"

_CODE_LINES = (
    "from __future__ import annotations",
    "",
    "import asyncio",
    "from collections.abc import AsyncIterator",
    "",
    "async def relay(upstream: AsyncIterator[bytes], send: Send) -> None:",
    '    """Forward Ollama\'s NDJSON as Anthropic SSE — größer als nötig?"""',
    "    translator = StreamTranslator(message_id=mid, model=model, input_tokens_estimate=n, max_tokens=m)",
    '    await send({"type": "http.response.body", "body": translator.start(), "more_body": True})',
    "    async for chunk in upstream:",
    "        frames = translator.feed(chunk)",
    "        if frames:",
    '            await send({"type": "http.response.body", "body": frames, "more_body": True})',
    "    # 日本語のコメント: ストリームの終わり",
    '    await send({"type": "http.response.body", "body": translator.finish(), "more_body": False})',
)


def _file_listing(rng: random.Random, lines: int) -> str:
    """A Read tool result as Claude Code formats it: right-aligned line numbers, a tab, the line."""
    start = rng.randrange(1, 400)
    return "\n".join(f"{start + i:>6}\t{rng.choice(_CODE_LINES)}" for i in range(lines))


def build_request_body(target_bytes: int = 200_000, *, seed: int = 42) -> bytes:
    """A Claude-Code-sized ``/v1/messages`` body of about ``target_bytes``, compact JSON as Claude Code sends it.

    Starts from the recorded body in ``tests/data/cc2.1.330-print-first-request.json`` (system blocks, 12 tools,
    the first user turn) and appends turns of the agent loop until the size is reached: assistant thinking + text
    + ``tool_use``, user ``tool_result`` with a file listing (string content or text blocks), now and then an
    image or a text document.
    """
    body: dict[str, Any] = orjson.loads(_DATA.read_bytes())["body"]
    messages: list[dict[str, Any]] = list(body["messages"])
    rng = random.Random(seed)
    turn = 0
    while len(orjson.dumps(body | {"messages": messages})) < target_bytes:
        turn += 1
        tool_id = f"toolu_01{turn:022d}"
        path = f"/home/user/project/src/ccop/module_{turn}.py"
        thinking = " ".join(rng.choice(_WORDS).strip() or "ok" for _ in range(rng.randint(20, 60)))
        messages.append(
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": thinking, "signature": f"ccop.{rng.getrandbits(64):016x}"},
                    {"type": "text", "text": f"Let me read `{path}` — then I'll make the change."},
                    {"type": "tool_use", "id": tool_id, "name": "Read", "input": {"file_path": path, "limit": 2000}},
                ],
            }
        )
        listing = _file_listing(rng, rng.randint(30, 90))
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_id}
        if turn % 3:
            result["content"] = listing
        else:
            result["content"] = [{"type": "text", "text": listing}, {"type": "text", "text": "(file truncated)"}]
        content: list[dict[str, Any]] = [result]
        if turn % 7 == 0:
            content.append(
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo" * 90}}
            )
        if turn % 11 == 0:
            content.append(
                {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": listing[:2000]},
                    "title": "notes.txt",
                    "context": "Design notes for the streaming relay",
                }
            )
        messages.append({"role": "user", "content": content})
    body["messages"] = messages
    return orjson.dumps(body)
