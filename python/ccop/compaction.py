"""Fit Claude Code's compaction request into the model's window when the conversation has outgrown it.

Claude Code compacts a conversation by sending all of it, plus an instruction to summarise, as one request. When a
single turn adds more than the window can take (several large tool results at once), that request is itself too
long: every retry gets `prompt is too long` and the session dies with "Prompt is too long", although a summary of a
shortened conversation is all that is needed. So for requests Claude Code labels `compaction` (the
`x-claude-code-request-class` hint header), the proxy shortens the largest tool results (and then the largest
texts), keeping the beginning and end of each and saying in place what was left out, until the request fits with
room for the summary. The instruction itself, at the end of the last message, is never touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["SUMMARY_ROOM", "Shortened", "fit_compaction"]

# Tokens of the window kept free for the summary Claude Code asks for (Ollama's num_ctx holds prompt and answer).
SUMMARY_ROOM = 8192
# Text shorter than this is never shortened: it is not where the window went.
_MIN_CUT_CHARS = 2048
# Rounds of measure-and-cut; each one cuts by the measured excess, so two nearly always suffice.
_ROUNDS = 4


@dataclass(frozen=True)
class Shortened:
    """The request that fits, and what was done to it (for the log)."""

    body: bytes
    tokens: int
    blocks: int
    characters: int


class _Spot:
    """One string in the request that may be shortened: a tool result's text or a message's text block."""

    def __init__(self, holder: dict[str, Any] | list[Any], key: str | int, kind: str) -> None:
        self.holder = holder
        self.key = key
        self.kind = kind
        self.original = len(self.text)

    @property
    def text(self) -> str:
        value = self.holder[self.key]  # type: ignore[index]
        return value if isinstance(value, str) else ""

    def cut_to(self, keep: int) -> int:
        """Keep about `keep` characters (head and tail); returns how many were removed."""
        text = self.text
        if len(text) <= keep:
            return 0
        removed = len(text) - keep
        head = keep * 2 // 3
        tail = keep - head
        note = (
            f"\n[… {removed} characters of this {self.kind} were left out by ccop so that the conversation "
            "summary fits the model's context window …]\n"
        )
        self.holder[self.key] = text[:head] + note + (text[-tail:] if tail else "")  # type: ignore[index]
        return removed


def _spots(request: dict[str, Any]) -> list[_Spot]:
    """Every shortenable string, tool results first; the instruction (the last text of the last user or assistant
    message: Claude Code may put a `role: system` message after it) is left out."""
    results: list[_Spot] = []
    texts: list[_Spot] = []
    messages = request.get("messages") or []
    instruction_at = max((i for i, m in enumerate(messages) if m.get("role") != "system"), default=-1)
    for index, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            continue
        last_text = max((i for i, b in enumerate(content) if b.get("type") == "text"), default=-1)
        for position, block in enumerate(content):
            kind = block.get("type")
            if kind == "tool_result":
                inner = block.get("content")
                if isinstance(inner, str):
                    results.append(_Spot(block, "content", "tool result"))
                elif isinstance(inner, list):
                    results += [_Spot(part, "text", "tool result") for part in inner if part.get("type") == "text"]
            elif kind == "text" and not (index == instruction_at and position == last_text):
                texts.append(_Spot(block, "text", "message"))
    return [spot for spot in results + texts if spot.original >= _MIN_CUT_CHARS]


def _cap_for(lengths: list[int], to_remove: int) -> int:
    """The largest length cap that removes at least `to_remove` characters when longer texts are cut to it."""
    low, high = 0, max(lengths)
    while low < high:
        cap = (low + high + 1) // 2
        if sum(max(length - cap, 0) for length in lengths) >= to_remove:
            low = cap
        else:
            high = cap - 1
    return low


def fit_compaction(request: dict[str, Any], budget: int, count: Callable[[bytes], int]) -> Shortened | None:
    """Shorten `request` (changed in place) until `count` says it is within `budget` tokens; None if it cannot be.

    `count` is the proxy's own token estimate of a request body, the same one that judged it too long.
    """
    spots = _spots(request)
    if not spots:
        return None
    body = orjson.dumps(request)
    tokens = count(body)
    for _ in range(_ROUNDS):
        if tokens <= budget:
            break
        # Characters per token of this request, to turn the excess into characters to remove (with 10 % to spare).
        per_token = len(body) / max(tokens, 1)
        to_remove = int((tokens - budget) * per_token * 1.1) + 1
        lengths = [len(spot.text) for spot in spots]
        cap = max(_cap_for(lengths, to_remove), _MIN_CUT_CHARS // 2)
        # Every spot is cut in the same round (a generator inside any() would stop at the first).
        removed = [spot.cut_to(cap) for spot in spots]
        if not any(removed):
            return None  # everything shortenable is already as short as it gets
        body = orjson.dumps(request)
        tokens = count(body)
    if tokens > budget:
        return None
    shortened = [spot for spot in spots if len(spot.text) < spot.original]
    characters = sum(spot.original - len(spot.text) for spot in shortened)
    return Shortened(body, tokens, len(shortened), characters)
