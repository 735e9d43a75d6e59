"""Rust core of claude-code-ollama-proxy (hand-written stub, checked with ``python -m mypy.stubtest ccop._core``).

SSE encoding, tool-argument healing, token counting and the Ollama-to-Anthropic stream translator. Exceptions::

    ValueError
    └── CoreError
        └── InvalidJsonError
"""

from collections.abc import Sequence
from typing import final

__all__ = [
    "CoreError",
    "InvalidJsonError",
    "StreamTranslator",
    "count_request_tokens",
    "count_tokens",
    "encode_sse",
    "heal_tool_arguments",
    "json_nesting_depth",
    "__version__",
]

__version__: str

class CoreError(ValueError):
    """Base class of the errors raised by ``ccop._core``."""

class InvalidJsonError(CoreError):
    """The input is not valid JSON, or not the expected shape."""

def count_tokens(text: str, /) -> int:
    """Estimate the tokens in ``text``.

    Text is split on Unicode whitespace; a word of up to 4 characters is 1 token, a longer word
    ``ceil(chars / 4)``.

    Args:
        text: Any text.

    Returns:
        The estimate, e.g. 4 for ``"hello world"`` and 0 for ``""``.
    """

def count_request_tokens(body: bytes, /) -> int:
    """Estimate the prompt tokens of an Anthropic ``/v1/messages`` or ``count_tokens`` request body.

    Counts ``system``, every message's content (text, thinking, tool use and results, a fixed 1600 per image,
    documents, any other block as its compact JSON) and every tool's name, description and input schema.
    Bodies over 64 KiB are counted with the interpreter released.

    Args:
        body: The raw JSON request body.

    Returns:
        The estimate.

    Raises:
        InvalidJsonError: The body is not valid JSON, not an object, or has ``messages``/``tools`` of the wrong
            kind.
    """

def json_nesting_depth(json: bytes, /) -> int:
    """How deeply a JSON text nests its arrays and objects.

    Brackets inside strings do not count; the text is not validated (for text that is not JSON the result is still
    a number). Texts over 64 KiB are scanned with the interpreter released.

    Args:
        json: The raw JSON text, e.g. a request body.

    Returns:
        The deepest nesting: 0 for a scalar, 1 for ``{}`` or ``[1, 2]``, 2 for ``{"a": []}``.
    """

def heal_tool_arguments(arguments: str | bytes, /) -> tuple[bytes, str]:
    """Turn tool-call arguments into a JSON object.

    A string holding object JSON is parsed; a double-encoded, backslash-escaped or code-fenced string is
    cleaned up and parsed; an empty string or ``null`` becomes ``{}``; anything else becomes
    ``{"raw": <original text>}``. Key order is kept.

    Args:
        arguments: The arguments as text (or UTF-8 bytes).

    Returns:
        The compact JSON object as bytes, and which step applied: ``"unchanged"``, ``"parsed_string"``,
        ``"unescaped"`` or ``"raw"``.
    """

def encode_sse(event: str, data: bytes, /) -> bytes:
    """Encode one server-sent event: ``event: <event>\\ndata: <data>\\n\\n``.

    Args:
        event: The event name.
        data: Normally one line of JSON; line breaks in it start further ``data:`` lines.

    Returns:
        The frame.

    Raises:
        CoreError: ``event`` is empty or contains a line break.
    """

@final
class StreamTranslator:
    """Translate an Ollama ``/api/chat`` NDJSON stream into Anthropic Messages SSE, or one JSON message.

    Thinking, text and tool calls become content blocks (a tool call is one block with one
    ``input_json_delta`` holding its healed arguments); stop sequences are matched here; upstream errors,
    malformed lines and an early end of stream become an ``error`` event.

    Given the request's ``tools``, the translator also repairs each call's arguments by the tool's
    ``input_schema`` (``"5"`` for an integer becomes ``5``, ``"true"`` a boolean, a JSON-encoded array or object
    string the array or object, a single value where an array is expected a one-element array, and a ``null``
    for an optional property is dropped), and turns tool calls the model wrote as text (``<tool_call>{…}</tool_call>``,
    a fenced ```` ```json ```` block or a bare ``{"name": …, "arguments": …}`` line, ``<function=NAME>
    <parameter=KEY>…</parameter></function>``) into ``tool_use`` blocks. Text that could still be such a call is
    held back until it is decided, so streamed text is never withdrawn.
    """

    def __new__(
        cls,
        *,
        message_id: str,
        model: str,
        input_tokens_estimate: int,
        max_tokens: int,
        stop_sequences: Sequence[str] = ...,
        emit_sse: bool = True,
        max_line_bytes: int = 16777216,
        tools: bytes | None = None,
    ) -> StreamTranslator:
        """Create a translator for one message.

        Args:
            message_id: The Anthropic message id (``msg_...``).
            model: The model name the client sent.
            input_tokens_estimate: Prompt estimate for ``message_start`` and when Ollama reports no count.
            max_tokens: The client's ``max_tokens``; tells ``max_tokens`` from a full context window.
            stop_sequences: The client's stop sequences (empty strings are ignored). Do not also send them to
                Ollama, which strips a match so it could not be seen here.
            emit_sse: ``False`` for non-streaming requests: nothing is written, only ``message()`` is built.
            max_line_bytes: Longest upstream NDJSON line accepted.
            tools: The request's Anthropic tool definitions as a JSON array (``[{"name", "description"?,
                "input_schema"?}, …]``), when they were sent to Ollama; ``None`` otherwise. Tools without an
                ``input_schema`` (server tools) are ignored. Enables the schema repair and the recovery of tool
                calls written as text, for these tools only.

        Raises:
            InvalidJsonError: ``tools`` is not a JSON array.
        """

    def start(self) -> bytes:
        """Return the ``message_start`` frame (``b""`` if already sent or ``emit_sse`` is off)."""

    def feed(self, chunk: bytes, /) -> bytes:
        """Feed raw upstream bytes.

        Args:
            chunk: Bytes exactly as received.

        Returns:
            The SSE frames they complete, ``b""`` when none. Ignored after the message finished or failed.
        """

    def finish(self) -> bytes:
        """Signal upstream EOF.

        Returns:
            Frames for a trailing unterminated line, or an ``error`` event if the stream ended before the
            answer was complete.
        """

    def message(self) -> bytes:
        """Return the complete non-streaming Anthropic message as JSON bytes."""

    @property
    def done(self) -> bool:
        """The message finished: the done chunk arrived or a stop sequence matched."""

    @property
    def stopped(self) -> bool:
        """A stop sequence matched: the caller should close the upstream request."""

    @property
    def error(self) -> tuple[str, str] | None:
        """``(Anthropic error type, message)`` of the reported error, or ``None``."""

    @property
    def prompt_eval_count(self) -> int | None:
        """Ollama's ``prompt_eval_count``, once the done chunk arrived."""

    @property
    def eval_count(self) -> int | None:
        """Ollama's ``eval_count``, once the done chunk arrived."""

    @property
    def heal_counts(self) -> dict[str, int]:
        """Tool-call counters, every key always present.

        ``unchanged``, ``parsed_string``, ``unescaped`` and ``raw`` count calls by how their arguments were
        decoded (each call counts once); ``coerced``, ``wrapped_in_array`` and ``dropped_null`` count fields fixed
        by the schema repair; ``text_call`` counts calls recovered from the answer text.
        """
