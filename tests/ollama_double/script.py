"""What a test scripts and what it reads back: ``Reply`` (one answer to ``/api/chat``), Ollama-shaped tool calls,
and the records of requests and chat responses."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any

import orjson

Json = dict[str, Any]


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
    """What happened to the response of one ``/api/chat`` call that passed validation and will generate.

    ``phase`` tells where the double was (when the client went away, where it left): ``queued`` (waiting for the
    scheduler or a slot), ``loading`` (waiting for its model to load), ``first_byte_delay``, ``streaming`` (writing
    or pausing between lines), ``hold`` (waiting for ``hold_until``) or ``hang``. ``chunks_sent`` counts the body
    writes that went out (one per NDJSON line, or one per piece with ``split_every``). Times are
    ``time.monotonic()``: ``received_at`` when the request arrived, ``started_at`` when it got its slot (``None``
    while it waits), so their order shows the scheduler's order. ``headers`` and ``request`` are the request's.
    """

    request_index: int
    model: str
    stream: bool
    received_at: float
    started_at: float | None = None
    finished_at: float | None = None
    completed: bool = False
    client_disconnected: bool = False
    disconnected_at: float | None = None
    phase: str = "first_byte_delay"
    chunks_sent: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    request: Json = field(default_factory=dict)
