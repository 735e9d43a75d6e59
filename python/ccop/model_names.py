"""Which Ollama model serves a request, and what that model can do.

Capabilities come from a name table here; it is the fallback for servers whose `/api/show` says nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

__all__ = ["ThinkLevel", "budget_to_level", "map_model", "takes_think_levels", "thinks_by_name"]

ThinkLevel = Literal["low", "medium", "high"]

# Families that can think, matched on the name without namespace and tag.
_THINKING_PREFIXES = ("qwen3", "deepseek-r1", "magistral", "nemotron", "glm4", "qwq", "gpt-oss")
# Same-prefix families that cannot think: qwen3-coder is a qwen3 but Ollama answers 400 to `think` for it.
_NOT_THINKING_PREFIXES = ("qwen3-coder",)
# Harmony-format models take a level instead of a boolean.
_LEVEL_PREFIXES = ("gpt-oss",)


def map_model(requested: str, model_map: Mapping[str, str], default_model: str) -> str:
    """An exact map entry wins; any other `claude*` name goes to the default; anything else passes through."""
    mapped = model_map.get(requested)
    if mapped is not None:
        return mapped
    if requested.lower().startswith("claude"):
        return default_model
    return requested


def _base_name(model: str) -> str:
    name = model.rsplit("/", 1)[-1]
    return name.split(":", 1)[0].lower()


def thinks_by_name(model: str) -> bool:
    base = _base_name(model)
    if base.startswith(_NOT_THINKING_PREFIXES):
        return False
    return base.startswith(_THINKING_PREFIXES)


def takes_think_levels(model: str) -> bool:
    return _base_name(model).startswith(_LEVEL_PREFIXES)


def budget_to_level(budget_tokens: int) -> ThinkLevel:
    """Anthropic's thinking budget mapped onto Ollama's three levels."""
    if budget_tokens < 4096:
        return "low"
    if budget_tokens < 16384:
        return "medium"
    return "high"
