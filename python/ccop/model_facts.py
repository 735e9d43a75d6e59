"""What each Ollama model can do, asked of Ollama once and cached per worker.

`/api/show` answers from model metadata without loading the model, so asking is cheap; the answer is cached for
`TTL` seconds, and forgotten at once when Ollama says the model is gone (a 404 from `/api/chat`).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from ccop.errors import ModelNotFound
from ccop.model_names import takes_think_levels, thinks_by_name
from ccop.settings import DEFAULT_NUM_CTX

__all__ = ["TTL", "InstalledModel", "ModelCatalog", "ModelInfo", "not_installed", "parse_show"]

TTL = 300.0
# `/api/tags` is asked for error messages and suggestions; a short cache spares Ollama a burst of identical calls.
TAGS_TTL = 10.0
_PARAMETER_LINE = re.compile(r"^(\S+)\s+(.*)$")


@dataclass(frozen=True)
class ModelInfo:
    """One model's capabilities and context lengths, as `/api/show` reports them."""

    name: str
    # None when the server does not report capabilities (Ollama before 0.30): fall back to name rules.
    capabilities: frozenset[str] | None
    # The context the model was trained for: the ceiling for num_ctx.
    context_length: int | None = None
    # A `PARAMETER num_ctx` from the Modelfile: the model's own default window.
    modelfile_num_ctx: int | None = None

    @property
    def thinks(self) -> bool:
        if self.capabilities is None:
            return thinks_by_name(self.name)
        return "thinking" in self.capabilities

    @property
    def takes_think_levels(self) -> bool:
        return takes_think_levels(self.name)

    @property
    def tools(self) -> bool:
        return self.capabilities is None or "tools" in self.capabilities

    @property
    def vision(self) -> bool:
        return self.capabilities is None or "vision" in self.capabilities

    def num_ctx(self, configured: int | None, per_model: Mapping[str, int]) -> int | None:
        """The window to send: per-model setting > global setting > default, capped at training.

        The default is DEFAULT_NUM_CTX, the smallest window Claude Code works in, or the Modelfile's num_ctx when that
        is larger: a Modelfile's smaller window (often a leftover from chat use) would make Claude Code compact on
        every turn, while a larger one is the owner's choice. Stable for a model as long as the configuration is:
        Ollama reloads a model whenever num_ctx changes. None means "send nothing, let Ollama decide" (a configured 0).
        """
        value = per_model.get(self.name)
        if value is None:
            value = configured
        if value is None:
            value = max(self.modelfile_num_ctx or 0, DEFAULT_NUM_CTX)
        if value == 0:
            return None
        if self.context_length:
            value = min(value, self.context_length)
        return value


@dataclass(frozen=True)
class InstalledModel:
    name: str
    capabilities: frozenset[str] | None
    modified_at: str | None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _capabilities(value: Any) -> frozenset[str] | None:
    return frozenset(str(item) for item in value) if isinstance(value, list) else None


def parse_show(name: str, body: Mapping[str, Any]) -> ModelInfo:
    """Read what matters from an `/api/show` answer."""
    capabilities = _capabilities(body.get("capabilities"))
    model_info = body.get("model_info") if isinstance(body.get("model_info"), dict) else {}
    assert isinstance(model_info, dict)
    architecture = model_info.get("general.architecture")
    context_length = _int(model_info.get(f"{architecture}.context_length")) if architecture else None
    if context_length is None:
        # Cloud and some converted models only have `<family>.context_length` under another prefix.
        context_length = next(
            (_int(value) for key, value in model_info.items() if key.endswith(".context_length") and _int(value)),
            None,
        )
    modelfile_num_ctx = None
    parameters = body.get("parameters")
    if isinstance(parameters, str):
        for line in parameters.splitlines():
            match = _PARAMETER_LINE.match(line.strip())
            if match and match.group(1) == "num_ctx":
                try:
                    modelfile_num_ctx = int(match.group(2).strip().strip('"'))
                except ValueError:
                    pass
    return ModelInfo(name, capabilities, context_length, modelfile_num_ctx)


def not_installed(model: str, installed: list[InstalledModel] | None, requested: str | None = None) -> ModelNotFound:
    listing = ", ".join(item.name for item in installed) if installed else "none"
    alias = f" (requested as {requested!r})" if requested and requested != model else ""
    return ModelNotFound(
        f"model {model!r}{alias} is not installed in Ollama. Installed models: {listing}. "
        f"Pull it with `ollama pull {model}` or map the name to an installed model with --model-map / --default-model."
    )


class ModelCatalog:
    """Per-worker cache of `/api/show` and `/api/tags` answers."""

    def __init__(self, client: httpx.AsyncClient, *, ttl: float = TTL) -> None:
        self._client = client
        self._ttl = ttl
        self._infos: dict[str, tuple[float, ModelInfo]] = {}
        self._pending: dict[str, asyncio.Task[ModelInfo | None]] = {}
        self._tags: tuple[float, list[InstalledModel]] | None = None

    def forget(self, model: str) -> None:
        self._infos.pop(model, None)
        self._tags = None

    async def info(self, model: str, *, requested: str | None = None) -> ModelInfo | None:
        """The model's info; None when Ollama cannot be asked (the request then fails or succeeds on its own).

        Raises:
            NotFound: Ollama does not have the model.
        """
        cached = self._infos.get(model)
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            return cached[1]
        lookup = self._pending.get(model)
        if lookup is None:
            # Many agents starting at once ask about the same model: one `/api/show` serves them all, and a caller
            # that goes away (shield) does not cancel it for the others.
            lookup = asyncio.create_task(self._show(model, requested))
            self._pending[model] = lookup
            lookup.add_done_callback(lambda done: self._lookup_done(model, done))
        return await asyncio.shield(lookup)

    def _lookup_done(self, model: str, lookup: asyncio.Task[ModelInfo | None]) -> None:
        self._pending.pop(model, None)
        if not lookup.cancelled():
            lookup.exception()  # marks a NotFound as seen even when every caller has gone

    async def _show(self, model: str, requested: str | None) -> ModelInfo | None:
        try:
            response = await self._client.post("/api/show", content=orjson.dumps({"model": model}), timeout=10.0)
        except httpx.HTTPError:
            return None
        if response.status_code == 404:
            raise not_installed(model, await self.installed(), requested)
        if response.status_code != 200:
            return None
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(body, dict):
            return None
        info = parse_show(model, body)
        self._infos[model] = (time.monotonic(), info)
        return info

    async def installed(self) -> list[InstalledModel] | None:
        """The installed models from `/api/tags`, or None when Ollama cannot say."""
        if self._tags is not None and time.monotonic() - self._tags[0] < TAGS_TTL:
            return self._tags[1]
        try:
            response = await self._client.get("/api/tags", timeout=5.0)
            response.raise_for_status()
            models = orjson.loads(response.content).get("models", [])
            installed = [
                InstalledModel(
                    name=str(item["name"]),
                    capabilities=_capabilities(item.get("capabilities")),
                    modified_at=item.get("modified_at"),
                )
                for item in models
            ]
        except (httpx.HTTPError, orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return None
        self._tags = (time.monotonic(), installed)
        return installed

    async def with_tools(self) -> list[str]:
        """Installed models that can call tools, for suggestions in error messages."""
        installed = await self.installed() or []
        return [item.name for item in installed if item.capabilities is not None and "tools" in item.capabilities]
