"""The Ollama servers a worker spreads requests over: one `OllamaHost` per `--ollama-url`, gathered in a `HostPool`.

Each host has its own client, model catalog and chat opener, a health state (taken out for a while after a failure,
longer while it keeps failing) and a short-lived view of the models it has loaded (`/api/ps`). The pool answers
"which hosts can serve this model, best first"; choosing among them and queueing is the scheduler's business.

With one host the pool asks Ollama nothing beyond what a request does anyway: `candidates()` is the one host.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import httpx
import orjson

from ccop.model_facts import ModelCatalog
from ccop.settings import Settings, model_key, redacted_url
from ccop.upstream import OllamaChat, create_client, transport_failure

__all__ = ["FIRST_BACKOFF", "LOADED_TTL", "MAX_BACKOFF", "HostPool", "OllamaHost"]

logger = logging.getLogger("ccop.hosts")

# A failed host sits out this long, twice as long after each further failure, up to MAX_BACKOFF: long enough not to
# send every request into a dead server's connect timeout, short enough to notice it is back within a minute.
FIRST_BACKOFF = 5.0
MAX_BACKOFF = 60.0
# `/api/ps` changes when a model loads or unloads (seconds at least); a burst of requests needs one answer, not many.
LOADED_TTL = 2.0


class OllamaHost:
    """One Ollama server: its client, catalog and chat opener, whether it is usable now, and what it has loaded."""

    def __init__(
        self,
        url: str,
        client: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.client = client
        self.catalog = ModelCatalog(client)
        self.chat = OllamaChat(client, url)
        self._clock = clock
        self._failures = 0
        self._out_until = 0.0
        self.last_error: str | None = None
        self._loaded: tuple[float, dict[str, int | None]] | None = None
        self._loading: asyncio.Task[dict[str, int | None]] | None = None

    @classmethod
    def connect(
        cls, url: str, api_key: str | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> OllamaHost:
        return cls(url, create_client(url, api_key), clock=clock)

    @property
    def display_url(self) -> str:
        """The URL with its password masked, for logs, errors and `/health`."""
        return redacted_url(self.url)

    # -- health ------------------------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._clock() >= self._out_until

    @property
    def out_for(self) -> float:
        """Seconds until a failed host is tried again (0 when healthy)."""
        return max(0.0, self._out_until - self._clock())

    def mark_failed(self, reason: str) -> None:
        """Take the host out for a while: FIRST_BACKOFF, doubling with each failure in a row up to MAX_BACKOFF."""
        pause = min(FIRST_BACKOFF * 2.0**self._failures, MAX_BACKOFF)
        self._failures += 1
        self._out_until = self._clock() + pause
        self.last_error = reason
        self._loaded = None
        logger.warning("Ollama at %s failed (%s); not used for %g s", self.display_url, reason, pause)

    def mark_ok(self) -> None:
        if self._failures:
            logger.info("Ollama at %s answers again", self.display_url)
        self._failures = 0
        self._out_until = 0.0
        self.last_error = None

    # -- loaded models -----------------------------------------------------------------------------------------

    async def loaded_models(self) -> dict[str, int | None]:
        """Models loaded in this Ollama now (`/api/ps`): name -> context length; empty when Ollama cannot say."""
        if self._loaded is not None and self._clock() - self._loaded[0] < LOADED_TTL:
            return self._loaded[1]
        if self._loading is None:
            # Concurrent callers share one request; shielded, so one caller going away does not cancel it for all.
            self._loading = asyncio.ensure_future(self._ask_loaded())
            self._loading.add_done_callback(self._loading_done)
        return await asyncio.shield(self._loading)

    def _loading_done(self, _: asyncio.Task[dict[str, int | None]]) -> None:
        self._loading = None

    async def _ask_loaded(self) -> dict[str, int | None]:
        try:
            response = await self.client.get("/api/ps", timeout=5.0)
            response.raise_for_status()
            loaded = parse_ps(orjson.loads(response.content))
        except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
            # An Ollama without /api/ps, or one that is down: nothing counts as loaded, and the answer is not kept.
            logger.debug("GET /api/ps from %s failed: %s", self.display_url, transport_failure(exc))
            return {}
        self._loaded = (self._clock(), loaded)
        return loaded

    async def has_model(self, model: str) -> bool | None:
        """Is the model installed here (`/api/tags`, cached)? None when Ollama cannot say."""
        installed = await self.catalog.installed()
        if installed is None:
            return None
        wanted = model_key(model)
        return any(model_key(item.name) == wanted for item in installed)

    async def aclose(self) -> None:
        if self._loading is not None:
            self._loading.cancel()
        await self.client.aclose()


def parse_ps(body: object) -> dict[str, int | None]:
    """`/api/ps`'s models as name -> context length (None when this Ollama does not report it)."""
    models = body.get("models") if isinstance(body, dict) else None
    loaded: dict[str, int | None] = {}
    for item in models if isinstance(models, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("name") or item.get("model"), str):
            continue
        length = item.get("context_length")
        valid = isinstance(length, int) and not isinstance(length, bool) and length > 0
        loaded[str(item.get("name") or item.get("model"))] = length if valid else None
    return loaded


class HostPool:
    """Every configured Ollama, in the order given; the first is the primary."""

    def __init__(self, hosts: Sequence[OllamaHost]) -> None:
        if not hosts:
            raise ValueError("a host pool needs at least one Ollama")
        self.hosts: tuple[OllamaHost, ...] = tuple(hosts)

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> HostPool:
        return cls([OllamaHost.connect(url, settings.ollama_api_key, clock=clock) for url in settings.ollama_urls])

    @property
    def primary(self) -> OllamaHost:
        return self.hosts[0]

    def by_url(self, url: str) -> OllamaHost | None:
        """The host configured with this URL (as normalised in the settings, or as shown with its password masked)."""
        return next((host for host in self.hosts if url in (host.url, host.display_url)), None)

    async def candidates(self, model: str) -> list[OllamaHost]:
        """The hosts to try for `model`, best first: those that have it, healthy ones, ones with it loaded first.

        Unhealthy hosts are left out unless no host that has the model is healthy: then all of them come back, so a
        request can still try and report the real error. When no host lists the model (or none can say), every
        host comes back, healthy first, and Ollama's own answer (a 404, a refused connection) reaches the caller.
        One host is simply returned, without asking Ollama anything.
        """
        if len(self.hosts) == 1:
            return [self.primary]
        answers = await asyncio.gather(*(host.has_model(model) for host in self.hosts))
        having = [host for host, has in zip(self.hosts, answers, strict=True) if has]
        if not having:
            return sorted(self.hosts, key=lambda host: not host.healthy)
        usable = [host for host in having if host.healthy] or having
        if len(usable) == 1:
            return usable
        wanted = model_key(model)
        loaded = await asyncio.gather(*(host.loaded_models() for host in usable))
        # Stable sort: loaded first, otherwise the configured order.
        ready = {
            host.url for host, names in zip(usable, loaded, strict=True) if any(model_key(n) == wanted for n in names)
        }
        return sorted(usable, key=lambda host: host.url not in ready)

    async def loaded_anywhere(self) -> dict[str, set[str]]:
        """Every loaded model -> the URLs of the hosts that have it loaded now (unhealthy hosts not asked)."""
        healthy = [host for host in self.hosts if host.healthy]
        answers = await asyncio.gather(*(host.loaded_models() for host in healthy))
        where: dict[str, set[str]] = {}
        for host, loaded in zip(healthy, answers, strict=True):
            for name in loaded:
                where.setdefault(name, set()).add(host.url)
        return where

    async def aclose(self) -> None:
        await asyncio.gather(*(host.aclose() for host in self.hosts), return_exceptions=True)
