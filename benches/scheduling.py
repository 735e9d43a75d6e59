"""Many agents on few GPU slots: the main session's time to first token while subagents stream, with the scheduler
and without it, and what the scheduler costs a request nobody competes with.

    python benches/scheduling.py                 # a markdown report on stdout
    python benches/scheduling.py --json out.json # also the raw numbers

The upstream is the Ollama test double (tests/ollama_double) with 2 parallel slots per model and its own FIFO queue,
as Ollama has, answering every request with `--tokens` tokens, one every `--token-interval` seconds (20 ms: a
mid-range GPU). For each count of subagent streams (0, 10 and 20 by default) the subagents are started first, and
once the double has seen every one of them (running or queued), one `main` request is sent and its time to first
`text_delta` measured. Two proxies are compared, each started on a free port:

- `scheduler`: `ccop --slots 2`, matching the double, so the proxy holds the queue and serves `main` first;
- `no scheduler`: `ccop --slots 1000`, so every request goes straight to Ollama's own first-come, first-served queue.

The scheduler's own cost is timed in-process: `acquire` + `release` of a free slot, in one worker's scheduler and
through the shared scheduler process that `--workers N` uses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from ccop.scheduler import Admission  # noqa: E402
from ccop.scheduler_service import RemoteScheduler, local_scheduler, start_scheduler_process  # noqa: E402
from ccop.settings import Settings  # noqa: E402
from conftest import ProxyProcess, start_proxy  # noqa: E402
from ollama_double import OllamaDouble, Reply  # noqa: E402

MODEL = "qwen3:8b"
SESSION = "bench-session"
# Seconds for requests already sent to reach the proxy's queue (they are on loopback: milliseconds suffice).
SETTLE = 0.3


def _body(text: str) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 512, "stream": True, "messages": [{"role": "user", "content": text}]}


def _headers(request_class: str, agent: str = "") -> dict[str, str]:
    headers = {"x-claude-code-request-class": request_class, "x-claude-code-session-id": SESSION}
    if agent:
        headers["x-claude-code-agent-id"] = agent
    return headers


async def _stream(client: httpx.AsyncClient, url: str, request_class: str, agent: str = "") -> float:
    """Seconds from sending to the first text_delta; the stream is read to its end."""
    started = time.perf_counter()
    first: float | None = None
    async with client.stream(
        "POST", f"{url}/v1/messages", json=_body(f"{request_class} {agent}"), headers=_headers(request_class, agent)
    ) as response:
        response.raise_for_status()
        async for chunk in response.aiter_bytes():
            if first is None and b"text_delta" in chunk:
                first = time.perf_counter()
    if first is None:
        raise RuntimeError(f"{request_class} request ended without text")
    return first - started


async def _main_ttft(url: str, ollama: OllamaDouble, subagents: int, held_by_proxy: bool) -> float:
    limits = httpx.Limits(max_connections=subagents + 8)
    async with httpx.AsyncClient(timeout=600, limits=limits, trust_env=False) as client:
        before = len(ollama.chat_requests())
        background = [asyncio.create_task(_stream(client, url, "subagent", f"agent-{i}")) for i in range(subagents)]
        # Every subagent is in line before the main request arrives: at Ollama (all of them without the scheduler,
        # the two it runs with it), and the rest of them at the proxy, which they reach within the settling time.
        expected = min(subagents, 2) if held_by_proxy else subagents
        deadline = time.monotonic() + 30
        while len(ollama.chat_requests()) - before < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {subagents} subagent requests did not reach Ollama")
            await asyncio.sleep(0.005)
        await asyncio.sleep(SETTLE)
        ttft = await _stream(client, url, "main")
        await asyncio.gather(*background)
        return ttft


def _scheduler_cost(rounds: int) -> dict[str, float]:
    """Microseconds for acquire + release of a free slot: in one worker, and through the shared process."""

    async def local() -> float:
        scheduler = local_scheduler(Settings(slots=2))
        admission = Admission(model=MODEL, hosts=("http://127.0.0.1:11434",), request_class="main", session="s")
        started = time.perf_counter()
        for _ in range(rounds):
            scheduler.release(await scheduler.acquire(admission))
        return (time.perf_counter() - started) / rounds * 1e6

    async def shared() -> float:
        process = start_scheduler_process(Settings(slots=2))
        try:
            remote = RemoteScheduler(process.path)
            admission = Admission(model=MODEL, hosts=("http://127.0.0.1:11434",), request_class="main", session="s")
            remote.release(await remote.acquire(admission))  # connect outside the timing
            started = time.perf_counter()
            for _ in range(rounds):
                remote.release(await remote.acquire(admission))
            elapsed = (time.perf_counter() - started) / rounds * 1e6
            await remote.aclose()
            return elapsed
        finally:
            process.stop()

    return {"in_worker_us": asyncio.run(local()), "shared_process_us": asyncio.run(shared())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subagents", default="0,10,20", help="comma-separated counts of concurrent subagent streams")
    parser.add_argument("--tokens", type=int, default=25, help="tokens per answer")
    parser.add_argument("--token-interval", type=float, default=0.02, help="seconds between tokens")
    parser.add_argument("--repeat", type=int, default=3, help="main requests measured per point (median reported)")
    parser.add_argument("--json", help="also write the raw numbers here")
    args = parser.parse_args(argv)
    counts = [int(part) for part in args.subagents.split(",") if part]
    answer_seconds = args.tokens * args.token_interval

    def reply(_: dict[str, Any]) -> Reply:
        return Reply(content="tok " * args.tokens, chunk_size=4, delay_between=args.token_interval)

    results: dict[str, Any] = {"answer_seconds": answer_seconds, "points": []}
    with OllamaDouble(num_parallel=2) as ollama, tempfile.TemporaryDirectory() as tmp:
        ollama.set_responder(reply)
        for label, slots in (("scheduler", "2"), ("no scheduler", "1000")):
            proxy: ProxyProcess = start_proxy(ollama.url, Path(tmp), "--slots", slots, "--default-model", MODEL)
            try:
                for count in counts:
                    samples = [
                        asyncio.run(_main_ttft(proxy.url, ollama, count, held_by_proxy=slots == "2"))
                        for _ in range(args.repeat)
                    ]
                    results["points"].append({"proxy": label, "subagents": count, "main_ttft_s": samples})
            finally:
                proxy.stop()
    results["scheduler_cost"] = _scheduler_cost(2000)
    _report(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _report(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} · {platform.processor() or platform.machine()} · "
        f"{os.cpu_count()} CPUs · Python {platform.python_version()}"
    )
    print(
        f"\nMain session's time to first token; upstream: 2 slots, {args.tokens} tokens every "
        f"{args.token_interval * 1000:.0f} ms ({results['answer_seconds']:.2f} s per answer); median of {args.repeat}\n"
    )
    print("| subagent streams | with the scheduler (s) | without (s) |")
    print("|---:|---:|---:|")
    by_point = {(p["proxy"], p["subagents"]): statistics.median(p["main_ttft_s"]) for p in results["points"]}
    for count in sorted({p["subagents"] for p in results["points"]}):
        print(f"| {count} | {by_point[('scheduler', count)]:.3f} | {by_point[('no scheduler', count)]:.3f} |")
    cost = results["scheduler_cost"]
    print(
        f"\nScheduler cost of an uncontended request (acquire + release): {cost['in_worker_us']:.1f} µs in one "
        f"worker, {cost['shared_process_us']:.1f} µs through the shared scheduler process (--workers N)."
    )


if __name__ == "__main__":
    sys.exit(main())
