"""The public token-counting API, backed by the Rust core.

The rule (the same for every model, calibrated per model by the server): split the text on whitespace; a word of up
to 4 characters is 1 token, a longer word is one token per 4 characters, rounded up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ccop import _core

__all__ = ["count_request_tokens", "count_tokens"]


def count_tokens(text: str) -> int:
    """Estimate the tokens in `text`.

    >>> count_tokens("hello world"), count_tokens("abcdefghij"), count_tokens("")
    (4, 3, 0)
    """
    return _core.count_tokens(text)


def count_request_tokens(body: bytes | str | Mapping[str, Any]) -> int:
    """Estimate the input tokens of a whole Anthropic Messages request body.

    Counts the system prompt, every message's text, thinking, tool calls and tool results, a fixed estimate per
    image, and every tool definition (name, description and JSON schema). The walk over the body happens in Rust;
    large bodies are counted without holding the interpreter lock.

    Raises:
        ValueError: the body is not a JSON object (`ccop._core.InvalidJsonError`).
    """
    if isinstance(body, bytes):
        return _core.count_request_tokens(body)
    if isinstance(body, str):
        return _core.count_request_tokens(body.encode())
    return _core.count_request_tokens(orjson.dumps(body))
