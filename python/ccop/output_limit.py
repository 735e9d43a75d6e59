"""Ending an answer at `max_tokens` when Ollama does not.

Ollama is told `num_predict` (at most the client's `max_tokens`) and normally stops there with `done_reason:
"length"`. A model or server that ignores it generates forever: a streaming client waits without end, and a
non-streaming one has the whole answer accumulated in the worker's memory, without bound. Ollama sends one NDJSON
line per generated token, so once clearly more lines than `max_tokens` allows have arrived, the relay feeds the
translator the done chunk Ollama should have sent (`length`, which becomes `stop_reason: "max_tokens"`) and the
upstream connection is closed, which stops the generation.
"""

from __future__ import annotations

import orjson

__all__ = ["OutputLimit"]


class OutputLimit:
    """Counts the lines of one upstream answer against the client's `max_tokens`."""

    # Headroom for lines that are not one token each (the done chunk, tool calls), so an answer Ollama would have
    # ended itself is never cut here.
    SLACK_LINES = 64
    SLACK_RATIO = 0.1

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.allowed = max_tokens + int(max_tokens * self.SLACK_RATIO) + self.SLACK_LINES
        self.lines = 0

    def exceeded(self, chunk: bytes) -> bool:
        """Count the lines `chunk` ends; true once past the limit at a line boundary (a done line can follow)."""
        self.lines += chunk.count(b"\n")
        return self.lines > self.allowed and chunk.endswith(b"\n")

    def done_line(self) -> bytes:
        """The done chunk Ollama should have sent at `num_predict`."""
        done = {
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "length",
            "eval_count": max(self.lines, self.max_tokens),
        }
        return orjson.dumps(done) + b"\n"
