"""Where a chat request runs: a slot from the scheduler on a host that has the model, the request opened there, and
another host tried when that one fails before answering.

The scheduler decides when and on which host (priority, fairness, session affinity, slots); the host pool knows
which hosts are healthy and have the model. Failing over is invisible to the client: it happens before Ollama has
answered, so nothing of the answer has been relayed yet (at most `message_start` and pings, which carry no content).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import httpx

from ccop.errors import ProxyError, UpstreamError
from ccop.hosts import HostPool, OllamaHost
from ccop.scheduler import Admission, Grant
from ccop.settings import redacted_url
from ccop.upstream import with_grace

__all__ = ["Dispatcher", "Opened", "SchedulerLike"]

logger = logging.getLogger("ccop.dispatch")

T = TypeVar("T")

# A wait for a slot this long is worth a log line: the user wonders why the answer is slow to start.
_NOTABLE_WAIT = 1.0


class SchedulerLike(Protocol):
    """The scheduler in this process (`Scheduler`) or the one all workers share (`RemoteScheduler`)."""

    async def acquire(self, admission: Admission, on_queued: Callable[[int], None] | None = None) -> Grant: ...

    def release(self, grant: Grant) -> None: ...

    def forget_host(self, host: str) -> None: ...

    def snapshot(self) -> Any: ...  # a dict, or (shared scheduler) an awaitable of one


@dataclass
class Opened:
    """A chat answer whose response head has arrived, the host it runs on, and the slot it holds there."""

    response: httpx.Response
    host: OllamaHost
    grant: Grant


class Dispatcher:
    """Opens chat answers on the worker's hosts under the scheduler's slots."""

    def __init__(self, hosts: HostPool, scheduler: SchedulerLike) -> None:
        self.hosts = hosts
        self.scheduler = scheduler

    async def open(
        self,
        admission: Admission,
        body: bytes,
        *,
        on_slow: Callable[[], Awaitable[None]] | None = None,
        may_retry: Callable[[], bool] = lambda: True,
    ) -> Opened:
        """Wait for a slot, open `/api/chat` on the granted host, and fail over to another host while one is left.

        `admission.hosts` is ignored: the candidates are worked out here, without the hosts that already failed this
        request. `on_slow` runs once the wait (for a slot or for Ollama's response head) has taken `HEADER_GRACE`.
        The caller releases the grant (`release`) once the answer is over, whatever happened.
        """
        failed: list[str] = []
        last_error: ProxyError | None = None
        while True:
            candidates = [host for host in await self.hosts.candidates(admission.model) if host.url not in failed]
            if not candidates:
                raise last_error or UpstreamError(f"no Ollama host can serve {admission.model!r} right now")
            grant = await with_grace(self.scheduler.acquire(_for(admission, candidates), _queued(admission)), on_slow)
            _log_wait(admission, grant)
            host = self.hosts.by_url(grant.host)
            if host is None:  # a scheduler shared with workers configured differently: a bug, not a client's doing
                self.release(grant)
                raise UpstreamError(f"the scheduler granted a slot on an unknown host {redacted_url(grant.host)}")
            # With another host to go to, a refused connection fails over at once instead of being retried here.
            retry = may_retry if len(candidates) == 1 else _never
            try:
                response = await host.chat.open(body, on_slow_headers=on_slow, may_retry=retry)
            except UpstreamError as error:
                self.release(grant)
                if len(candidates) == 1:
                    raise
                last_error = error
            except BaseException:
                self.release(grant)
                raise
            else:
                if response.status_code < 500 or len(candidates) == 1:
                    host.mark_ok()
                    return Opened(response, host, grant)
                self.release(grant)
                last_error = await _server_error(host, response)
            self._take_out(host, last_error, admission.request_id)
            failed.append(host.url)

    def _take_out(self, host: OllamaHost, error: ProxyError, request_id: str) -> None:
        host.mark_failed(error.message)
        self.scheduler.forget_host(host.url)
        logger.warning(
            "%s Ollama at %s failed before answering (%s); trying another host",
            request_id,
            redacted_url(host.url),
            error.message,
        )

    def release(self, grant: Grant) -> None:
        self.scheduler.release(grant)


def _never() -> bool:
    return False


async def _server_error(host: OllamaHost, response: httpx.Response) -> ProxyError:
    with contextlib.suppress(httpx.HTTPError):
        await response.aclose()
    return UpstreamError(f"Ollama at {redacted_url(host.url)} failed with HTTP {response.status_code}")


def _for(admission: Admission, candidates: list[OllamaHost]) -> Admission:
    return Admission(
        model=admission.model,
        hosts=tuple(host.url for host in candidates),
        request_class=admission.request_class,
        session=admission.session,
        agent=admission.agent,
        request_id=admission.request_id,
    )


def _queued(admission: Admission) -> Callable[[int], None]:
    def note(ahead: int) -> None:
        logger.debug(
            "%s queued for a slot (%s, %s): %d ahead",
            admission.request_id,
            admission.model,
            admission.request_class,
            ahead,
        )

    return note


def _log_wait(admission: Admission, grant: Grant) -> None:
    if grant.waited >= _NOTABLE_WAIT:
        logger.info(
            "%s waited %.1f s for a slot for %s on %s (%s request, %d were ahead)",
            admission.request_id,
            grant.waited,
            admission.model,
            redacted_url(grant.host),
            admission.request_class,
            grant.ahead,
        )
