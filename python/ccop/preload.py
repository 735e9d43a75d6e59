"""Loading the configured models before the first request needs them (`--preload`), so a session's first turn does
not pay for the load.

A model is loaded by an `/api/chat` request with no messages (Ollama answers `done_reason: "load"`). It must carry the
same `num_ctx` the proxy will send with every request for that model, or the first real request reloads the model
with another window; and `keep_alive`, when configured, so the load lasts as long as the user asked.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import httpx
import orjson

__all__ = ["Load", "load_models", "load_request"]

logger = logging.getLogger("ccop.preload")

# Loading a large model from disk takes minutes on a slow disk; the start-up check waits for it in the background.
LOAD_TIMEOUT = 600.0


@dataclass(frozen=True)
class Load:
    """One model to load, with the window the proxy sends for it (None: Ollama's own)."""

    model: str
    num_ctx: int | None


def load_request(load: Load, keep_alive: str | float | None) -> bytes:
    """The `/api/chat` body that loads a model: `keep_alive` as `Settings.keep_alive_value` gives it."""
    body: dict[str, object] = {"model": load.model, "messages": [], "stream": False}
    if load.num_ctx is not None:
        body["options"] = {"num_ctx": load.num_ctx}
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    return orjson.dumps(body)


def load_models(client: httpx.Client, loads: Iterable[Load], keep_alive: str | float | None) -> list[str]:
    """Load each model on the host `client` talks to; one line per model saying how it went."""
    lines = []
    for load in loads:
        try:
            response = client.post("/api/chat", content=load_request(load, keep_alive), timeout=LOAD_TIMEOUT)
        except httpx.HTTPError as exc:
            lines.append(f"could not load {load.model}: {exc or type(exc).__name__}")
            continue
        if response.status_code == 200:
            window = f" with a {load.num_ctx}-token window" if load.num_ctx else ""
            lines.append(f"loaded {load.model}{window}")
        else:
            lines.append(f"could not load {load.model}: Ollama answered HTTP {response.status_code}")
    return lines
