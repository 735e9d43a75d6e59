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
        """Count the lines `chunk` ends; true once they are more than allowed (then `chunk` ends at least one)."""
        self.lines += chunk.count(b"\n")
        return self.lines > self.allowed

    def cut(self, chunk: bytes) -> bytes:
        """What of `chunk` to feed instead: its complete lines, then the done chunk Ollama should have sent."""
        done = {
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "length",
            "eval_count": max(self.lines, self.max_tokens),
        }
        return chunk[: chunk.rfind(b"\n") + 1] + orjson.dumps(done) + b"\n"
