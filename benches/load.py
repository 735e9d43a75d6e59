"""Proxy overhead, end to end: the same streaming load straight at a fast Ollama stand-in and through `ccop`.

    python benches/load.py                      # all paths and scenarios, a markdown report on stdout
    python benches/load.py --json results.json  # also the raw numbers
    python benches/load.py --peer litellm       # also LiteLLM's proxy over the same upstream

Three processes take part besides the proxies: the upstream (`load_upstream.py`, a fast stand-in for Ollama's
`/api/chat`), this script (the load generator, `load_client.py`) and the proxy under test. Everything stays on
loopback; every run is bounded in requests and in time, and every process started here is stopped here.

Paths, measured in the same run against the same upstream:
- `direct`: the clients read the upstream's NDJSON themselves (the baseline);
- `ccop-1`: through `ccop` with one worker; `ccop-N`: through `ccop --workers N`;
- `litellm` (with `--peer litellm`): through LiteLLM's proxy, model `ollama_chat/bench`, its `/v1/messages`.

Scenarios: `latency` (one client, requests in sequence: time to first token), `throughput` (20 concurrent streams),
`burst` (500 concurrent streams). The idle RSS of each worker is read before its first request.

With two or more CPUs the load generator and the upstream are pinned to the first CPU and the proxy to the others
(`--pin none` to let the scheduler place everything), so the proxy never competes with its own load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from load_client import LoadResult, fetch_body, percentile, run_load
from load_upstream import TOKEN_MARK, expected_text

HOST = "127.0.0.1"
MODEL = "bench"
DEFAULT_LITELLM = "/tmp/litellm-venv/bin/litellm"
LITELLM_INSTALL = "python -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROMPT = "Tell me a story about a lighthouse keeper."
# A throwaway key for the peer (LiteLLM will not start without one); loopback only, new every run.
API_KEY = "sk-bench-" + secrets.token_hex(16)

# The floors of issue 18 for this benchmark.
TARGET_TOKENS_PER_S = 100_000
TARGET_ADDED_TTFT_MS = 1.0
TARGET_IDLE_RSS_MB = 50.0
# With `--upstream-delay` (a token every 2 ms per stream, as a GPU would), the proxy's CPU per streamed token.
TARGET_CPU_US_PER_TOKEN = 60.0


# -- processes -------------------------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after the last ")".
    return raw[raw.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """Live (non-zombie) direct children of `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and fields[1] == str(pid) and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    queue = [pid]
    while queue:
        below = children(queue.pop())
        found += below
        queue += below
    return sorted(found)


def status_kb(pid: int, key: str) -> int | None:
    """A `VmRSS`/`VmHWM`-style line of /proc/<pid>/status, in kB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float:
    fields = _stat_fields(pid)
    if not fields:
        return 0.0
    # utime and stime are fields 14 and 15 of stat; fields[0] is field 3.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def mb(kb: int | None) -> float | None:
    return None if kb is None else kb * 1024 / 1e6


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    if not cpus:
        return None

    def pin() -> None:
        os.sched_setaffinity(0, cpus)

    return pin


@dataclass
class Service:
    """A process started here: the upstream, a proxy or a peer."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def workers(self) -> list[int]:
        """The processes that serve requests: Granian's workers are the live children of `ccop`; a peer without
        children serves in its main process."""
        below = children(self.pid)
        return below or [self.pid]

    def all_pids(self) -> list[int]:
        return [self.pid, *descendants(self.pid)]

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.all_pids())

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CCOP_")}
    for key in ("PORT", "HOST", "OLLAMA_URL", "DEFAULT_MODEL", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy"):
        env.pop(key, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra or {})
    return env


def _spawn(
    name: str, command: list[str], port: int, logdir: Path, cpus: set[int] | None, env: dict[str, str] | None = None
) -> Service:
    log_path = logdir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=logdir,
            env=_clean_env(env),
            preexec_fn=_pinned(cpus),
        )
    return Service(name, process, port, log_path)


def _wait_http(service: Service, path: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    url = f"http://{HOST}:{service.port}{path}"
    while True:
        if service.process.poll() is not None:
            raise RuntimeError(f"{service.name} exited with {service.process.returncode}:\n{service.log_tail()}")
        try:
            if httpx.get(url, timeout=2.0, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{service.name} did not answer {path} within {seconds:g} s:\n{service.log_tail()}")
        time.sleep(0.1)


def start_upstream(logdir: Path, cpus: set[int] | None, tokens: int, delay: float, chunking: str) -> Service:
    port = free_port()
    here = Path(__file__).resolve().parent
    command = [sys.executable, str(here / "load_upstream.py"), "--host", HOST, "--port", str(port)]
    command += ["--tokens", str(tokens), "--delay", str(delay), "--chunking", chunking]
    service = _spawn("upstream", command, port, logdir, cpus)
    _wait_http(service, "/api/version", 20)
    return service


def ccop_command(override: str | None = None) -> list[str]:
    if override:
        return shlex.split(override)
    script = shutil.which("ccop")
    return [script] if script else [sys.executable, "-m", "ccop"]


def start_ccop(
    name: str, workers: int, upstream: Service, logdir: Path, cpus: set[int] | None, command_override: str | None
) -> Service:
    port = free_port()
    command = [*ccop_command(command_override), "--port", str(port), "--ollama-url", f"http://{HOST}:{upstream.port}"]
    command += ["--default-model", MODEL, "--workers", str(workers)]
    service = _spawn(name, command, port, logdir, cpus)
    _wait_http(service, "/health", 60)
    # /health answers as soon as one worker is up; wait for all of them, and for the short-lived start-up check
    # (also a child) to be gone, so the worker list is exactly the workers.
    deadline = time.monotonic() + 30
    stable_since: float | None = None
    while time.monotonic() < deadline:
        if len(children(service.pid)) == workers:
            stable_since = stable_since or time.monotonic()
            if time.monotonic() - stable_since >= 0.5:
                break
        else:
            stable_since = None
        time.sleep(0.05)
    return service


def start_litellm(binary: str, upstream: Service, logdir: Path, cpus: set[int] | None) -> Service:
    port = free_port()
    config = logdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: ollama_chat/{MODEL}\n"
        f"      api_base: http://{HOST}:{upstream.port}\n"
    )
    command = [binary, "--config", str(config), "--host", HOST, "--port", str(port), "--num_workers", "1"]
    # No network but loopback: the cost map ships inside the package; no telemetry.
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MASTER_KEY": API_KEY,
    }
    service = _spawn("litellm", command, port, logdir, cpus, env)
    _wait_http(service, "/health/liveliness", 180)
    return service


# -- requests --------------------------------------------------------------------------------------------------------


def _http_request(path: str, port: int, body: bytes, extra_headers: str = "") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n{extra_headers}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def anthropic_request(port: int) -> bytes:
    body = orjson.dumps(
        {"model": MODEL, "max_tokens": 4096, "stream": True, "messages": [{"role": "user", "content": PROMPT}]}
    )
    # ccop runs without a key here and ignores these; LiteLLM refuses to start without a master key.
    headers = (
        f"Accept: text/event-stream\r\nanthropic-version: 2023-06-01\r\nx-api-key: {API_KEY}\r\n"
        f"Authorization: Bearer {API_KEY}\r\n"
    )
    return _http_request("/v1/messages", port, body, headers)


def ollama_request(port: int) -> bytes:
    body = orjson.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": PROMPT}],
            "stream": True,
            "options": {"num_ctx": 32768, "num_predict": 4096},
        }
    )
    return _http_request("/api/chat", port, body)


def streamed_text(body: bytes, direct: bool) -> tuple[str, list[str]]:
    """The text a client reads from a whole response, and the event (or `done`) sequence, for checking content."""
    text: list[str] = []
    events: list[str] = []
    for line in body.split(b"\n"):
        if direct:
            if line.strip():
                chunk = orjson.loads(line)
                text.append(chunk["message"]["content"])
                events.append("done" if chunk["done"] else "chunk")
        elif line.startswith(b"data: ") or line.startswith(b"data:"):
            data = orjson.loads(line.split(b":", 1)[1])
            events.append(data.get("type", "?"))
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                text.append(delta["text"])
    return "".join(text), events


# -- the run ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    concurrency: int
    requests: int
    note: str


@dataclass
class PathSpec:
    name: str
    kind: str  # "direct", "ccop" or "litellm"
    workers: int = 0


@dataclass
class PathRun:
    """Everything measured for one path."""

    path: str
    kind: str
    workers: int
    pids: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    verified: str = ""
    scenarios: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: str = ""
    profile: dict[str, Any] = field(default_factory=dict)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 4)


def summarise(load: LoadResult) -> dict[str, Any]:
    ttfts = [r.ttft for r in load.results if r.ok and r.ttft is not None]
    totals = [r.total for r in load.results if r.ok]
    return {
        "concurrency": load.concurrency,
        "requests_per_client": load.requests_per_client,
        "sent": len(load.results),
        "completed": load.completed,
        "errors": load.errors,
        "error_kinds": load.error_kinds(),
        "capped_by_time": load.capped,
        "tokens": load.tokens,
        "wall_s": round(load.wall, 4),
        "tokens_per_s": round(load.tokens / load.wall, 1),
        "ttft_ms": {
            "p50": _ms(percentile(ttfts, 0.5)),
            "p99": _ms(percentile(ttfts, 0.99)),
            "mean": _ms(sum(ttfts) / len(ttfts)) if ttfts else None,
            "max": _ms(max(ttfts)) if ttfts else None,
        },
        "stream_ms": {"p50": _ms(percentile(totals, 0.5)), "p99": _ms(percentile(totals, 0.99))},
        "samples_ms": {"ttft": [_ms(value) for value in ttfts], "stream": [_ms(value) for value in totals]},
    }


def ttft_split(load: LoadResult, arrivals: list[float]) -> dict[str, Any]:
    """For one client in sequence: request written → upstream got `/api/chat`, and that → first token at the client.

    Both clocks are CLOCK_MONOTONIC (`perf_counter`), in different processes on the same machine.
    """
    inbound = [arrival - result.sent_at for result, arrival in zip(load.results, arrivals, strict=True)]
    outbound = [
        result.first_at - arrival
        for result, arrival in zip(load.results, arrivals, strict=True)
        if result.first_at is not None
    ]
    return {
        "to_upstream": {"p50": _ms(percentile(inbound, 0.5)), "p99": _ms(percentile(inbound, 0.99))},
        "upstream_to_first_token": {"p50": _ms(percentile(outbound, 0.5)), "p99": _ms(percentile(outbound, 0.99))},
    }


def memory_of(service: Service) -> dict[str, Any]:
    workers = service.workers()
    return {
        "main_rss_mb": mb(status_kb(service.pid, "VmRSS")) if workers != [service.pid] else None,
        "workers_rss_mb": [mb(status_kb(pid, "VmRSS")) for pid in workers],
        "workers_hwm_mb": [mb(status_kb(pid, "VmHWM")) for pid in workers],
    }


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.began = time.monotonic()
        self.logdir = Path(tempfile.mkdtemp(prefix="ccop-load-"))
        self.tool_cpus: set[int] | None = None
        self.proxy_cpus: set[int] | None = None
        available = sorted(os.sched_getaffinity(0))
        if args.pin == "auto" and len(available) >= 2:
            self.tool_cpus = {available[0]}
            self.proxy_cpus = set(available[1:])
            os.sched_setaffinity(0, self.tool_cpus)
        self.upstream: Service | None = None
        self.services: list[Service] = []
        self.scenarios = self._scenarios()

    def _scenarios(self) -> list[Scenario]:
        args = self.args
        table = {
            "latency": Scenario("latency", 1, args.latency_requests, "one client, requests in sequence"),
            "throughput": Scenario(
                "throughput", args.concurrency, args.requests, f"{args.concurrency} concurrent streams"
            ),
            "burst": Scenario(
                "burst", args.burst_concurrency, args.burst_requests, f"{args.burst_concurrency} concurrent streams"
            ),
        }
        return [table[name] for name in args.scenarios.split(",") if name]

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def paths(self) -> list[PathSpec]:
        paths = []
        for name in self.args.paths.split(","):
            if name == "direct":
                paths.append(PathSpec("direct", "direct"))
            elif name.startswith("ccop-"):
                paths.append(PathSpec(name, "ccop", int(name.removeprefix("ccop-"))))
            elif name:
                raise SystemExit(f"unknown path {name!r}: use direct, ccop-<workers>")
        if self.args.peer == "litellm":
            paths.append(PathSpec("litellm", "litellm", 1))
        return paths

    def stop_all(self) -> None:
        for service in reversed(self.services):
            with contextlib.suppress(Exception):
                service.stop()

    async def _load(self, port: int, payload: bytes, end_marker: bytes, scenario: Scenario, cap: float) -> LoadResult:
        return await run_load(
            HOST,
            port,
            payload,
            concurrency=scenario.concurrency,
            requests_per_client=scenario.requests,
            mark=TOKEN_MARK,
            end_marker=end_marker,
            expected_tokens=self.args.tokens,
            max_seconds=cap,
            timeout=self.args.request_timeout,
        )

    def run_path(self, spec: PathSpec) -> PathRun:
        assert self.upstream is not None
        run = PathRun(spec.name, spec.kind, spec.workers)
        service: Service | None = None
        if spec.kind == "ccop":
            service = start_ccop(
                spec.name, spec.workers, self.upstream, self.logdir, self.proxy_cpus, self.args.ccop_command
            )
        elif spec.kind == "litellm":
            binary = self.args.litellm_bin
            if not Path(binary).exists() and not shutil.which(binary):
                run.skipped = f"LiteLLM is not installed at {binary}; install it with: {LITELLM_INSTALL}"
                return run
            try:
                service = start_litellm(binary, self.upstream, self.logdir, self.proxy_cpus)
            except RuntimeError as exc:
                run.skipped = f"LiteLLM did not start: {str(exc)[:2000]}"
                return run
        if service is not None:
            self.services.append(service)
            time.sleep(1.0)  # let start-up settle before reading the idle footprint
            run.pids = {"main": service.pid, "workers": service.workers()}
            run.memory["idle"] = memory_of(service)
        try:
            port = service.port if service is not None else self.upstream.port
            direct = spec.kind == "direct"
            payload = ollama_request(port) if direct else anthropic_request(port)
            end_marker = b'"done":true' if direct else b"message_stop"
            run.verified = asyncio.run(self._verify(port, payload, end_marker, direct))
            asyncio.run(self._warm_up(port, payload, end_marker))
            for scenario in self.scenarios:
                if scenario.name == "burst" and spec.kind == "litellm" and not self.args.peer_burst:
                    run.scenarios[scenario.name] = {"skipped": "not run for the peer (see --peer-burst)"}
                    continue
                if self.elapsed() > self.args.max_total_seconds:
                    run.scenarios[scenario.name] = {"skipped": f"time budget ({self.args.max_total_seconds:g} s) spent"}
                    continue
                run.scenarios[scenario.name] = self._measure(service, port, payload, end_marker, scenario)
                print(f"  {spec.name:8} {scenario.name:10} {_short(run.scenarios[scenario.name])}", file=sys.stderr)
            if service is not None:
                run.memory["after"] = memory_of(service)
                if self.args.py_spy and spec.kind == "ccop" and spec.workers == 1:
                    run.profile = self._profile(service, port, payload, end_marker)
        finally:
            if service is not None:
                service.stop()
        return run

    def _measure(
        self, service: Service | None, port: int, payload: bytes, end_marker: bytes, scenario: Scenario
    ) -> dict[str, Any]:
        assert self.upstream is not None
        upstream = self.upstream
        self._upstream_stats()  # starts its counters afresh
        before: list[float] = []
        after: list[float] = []

        def cpu_now() -> list[float]:
            return [service.cpu() if service is not None else 0.0, upstream.cpu(), self_cpu_seconds()]

        async def measured() -> LoadResult:
            before.extend(cpu_now())
            load = await self._load(port, payload, end_marker, scenario, self.args.scenario_seconds)
            after.extend(cpu_now())
            return load

        load = asyncio.run(measured())
        stats = self._upstream_stats()
        summary = summarise(load)
        # The stats request's own connection is not the load's.
        connections = max(0, stats["connections"] - 1)
        summary["upstream"] = {"connections": connections, "chats": stats["chats"]}
        if scenario.concurrency == 1 and stats["chats"] == len(load.results):
            summary["ttft_split_ms"] = ttft_split(load, stats["chat_arrivals"])
        shares = [round((end - start) / load.wall, 3) for start, end in zip(before, after, strict=True)]
        summary["cpu_core_share"] = {
            "proxy": shares[0] if service is not None else None,
            "upstream": shares[1],
            "client": shares[2],
        }
        if service is not None:
            summary["workers_hwm_mb"] = memory_of(service)["workers_hwm_mb"]
        return summary

    def _upstream_stats(self) -> dict[str, Any]:
        assert self.upstream is not None
        response = httpx.get(f"http://{HOST}:{self.upstream.port}/_bench/stats", timeout=10.0, trust_env=False)
        stats: dict[str, Any] = response.json()
        return stats

    async def _verify(self, port: int, payload: bytes, end_marker: bytes, direct: bool) -> str:
        result, body = await fetch_body(
            HOST,
            port,
            payload,
            mark=TOKEN_MARK,
            end_marker=end_marker,
            expected_tokens=self.args.tokens,
            timeout=self.args.request_timeout,
        )
        if not result.ok:
            return f"FAILED: {result.error}; body starts {body[:300]!r}"
        text, events = streamed_text(body, direct)
        if text != expected_text(self.args.tokens):
            return f"FAILED: the streamed text differs from the upstream's ({len(text)} characters)"
        counts = Counter(events)
        if direct:
            return f"ok: {counts['chunk']} content chunks, text identical"
        deltas = counts["content_block_delta"]
        return f"ok: text identical, {deltas} text_delta events for {self.args.tokens} upstream chunks"

    async def _warm_up(self, port: int, payload: bytes, end_marker: bytes) -> None:
        """Connections, the model lookup in every worker, caches: nothing here is measured."""
        warm = Scenario("warm-up", min(8, self.args.concurrency), max(1, self.args.warmup // 8), "")
        await self._load(port, payload, end_marker, warm, 30)

    def _profile(self, service: Service, port: int, payload: bytes, end_marker: bytes) -> dict[str, Any]:
        """A separate, unmeasured throughput run with py-spy sampling the worker; the top frames by self time."""
        worker = service.workers()[0]
        output = self.logdir / f"py-spy-{service.name}.txt"
        command = [self.args.py_spy, "record", "--pid", str(worker), "--rate", "500", "--format", "raw"]
        command += ["--output", str(output)]
        # Native stacks need the worker paused for each sample; Python-only sampling does not.
        command.append("--native" if self.args.py_spy_native else "--nonblocking")
        spy = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_pinned(self.tool_cpus),
        )
        time.sleep(1.0)
        wanted = self.args.py_spy_scenario
        scenario = next((s for s in self.scenarios if s.name == wanted), None)
        if scenario is None:
            return {"error": f"--py-spy-scenario {wanted} is not among the scenarios run"}
        asyncio.run(self._load(port, payload, end_marker, scenario, self.args.scenario_seconds))
        spy.send_signal(signal.SIGINT)
        try:
            _, errors = spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, errors = spy.communicate()
        if not output.exists():
            return {"error": f"py-spy wrote nothing: {errors.decode(errors='replace')[-500:]}"}
        frames = top_frames(output.read_text(errors="replace"), self.args.py_spy_top)
        return frames | {"raw": str(output), "scenario": scenario.name}


def top_frames(raw: str, top: int) -> dict[str, Any]:
    """Self and inclusive shares per frame from py-spy's collapsed stacks (`frame;frame;… count`)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(frame) for frame in stack.split(";")]
        # py-spy puts the thread name first; skip it for the frames.
        if frames and frames[0].startswith(("process ", "thread ")):
            frames = frames[1:]
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            if not _is_scaffolding(frame):
                inclusive[frame] += count
    share = 100.0 / total if total else 0.0
    return {
        "samples": total,
        "self_percent": [(frame, round(count * share, 1)) for frame, count in own.most_common(top)],
        "inclusive_percent": [(frame, round(count * share, 1)) for frame, count in inclusive.most_common(top)],
    }


# Frames every sample of the worker's main thread passes through (process start, the event loop's run methods):
# left out of the inclusive list, where they would only fill the top rows with ~100 %.
_SCAFFOLDING = (
    "(multiprocessing/",
    "(granian/server/",
    "(ccop/cli.py)",
    "(ccop/server.py)",
    "<module>",
    "run_forever (",
    "run_until_complete (",
    "_run_once (",
    "Handle._run (",
)


def _is_scaffolding(frame: str) -> bool:
    return any(marker in frame for marker in _SCAFFOLDING)


def _frame_name(frame: str) -> str:
    """`relay (ccop/streaming.py:140)` → `relay (ccop/streaming.py)`: lines vary, functions do not."""
    name, _, where = frame.partition(" (")
    if not where:
        return frame
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def _short(summary: dict[str, Any]) -> str:
    if "skipped" in summary:
        return str(summary["skipped"])
    ttft = summary["ttft_ms"]["p50"]
    return (
        f"{summary['completed']}/{summary['sent']} ok, {summary['errors']} errors, "
        f"{summary['tokens_per_s']:,.0f} tokens/s, TTFT p50 {ttft:.3f} ms"
    )


# -- the report ------------------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:
        return "–"
    return f"{value:,.{digits}f}"


def _added(value: float | None, base: float | None) -> str:
    if value is None or base is None or value != value or base != base:
        return "–"
    return f"{value - base:+.3f}"


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str] = {}
    for package in ("ccop", "granian", "httpx", "orjson"):
        with contextlib.suppress(Exception):
            module = __import__(package)
            versions[package] = str(getattr(module, "__version__", "?"))
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        here = Path(__file__).resolve().parent
        found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "python"], cwd=here.parent, capture_output=True)
        commit = found.stdout.strip() + (" (python/ modified)" if dirty.stdout.strip() else "")
    return {
        "commit": commit,
        "cpu": model,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
    }


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def report(results: dict[str, Any]) -> str:
    out: list[str] = []
    out += _report_header(results)
    for scenario in results["scenarios"]:
        out += _report_scenario(results, scenario)
    out += _report_memory(results["paths"])
    out.append("**content check** (one request per path, whole body parsed before the load)")
    out.append("")
    for run in results["paths"]:
        out.append(f"- {run['path']}: {run.get('skipped') or run['verified']}")
    out.append("")
    out += _report_targets(results.get("targets", []))
    for run in results["paths"]:
        out += _report_profile(run)
    return "\n".join(out)


def _report_header(results: dict[str, Any]) -> list[str]:
    config = results["config"]
    machine = results["machine"]
    versions = ", ".join(f"{name} {version}" for name, version in machine["versions"].items())
    return [
        f"{results['date']} · {machine['cpu']} · {machine['cpus']} CPUs · Linux {machine['kernel']} · "
        f"Python {machine['python']} · {versions} · commit {machine['commit'] or '?'}",
        "",
        f"Proxy overhead, {config['tokens']} tokens per stream, upstream delay {config['upstream_delay']} s, "
        f"chunking {config['upstream_chunking']}; CPUs: tools {results['placement']['tools']}, "
        f"proxies {results['placement']['proxies']}; load average before {results['load_average_before']}, "
        f"after {results['load_average_after']}.",
        "",
    ]


def _report_scenario(results: dict[str, Any], scenario: dict[str, Any]) -> list[str]:
    runs: list[dict[str, Any]] = results["paths"]
    config = results["config"]
    name = scenario["name"]
    out = [
        f"**{name}**: {scenario['note']}, up to {scenario['requests']} requests each "
        f"(no new request after {config['scenario_seconds']:g} s)",
        "",
        "| path | streams ok / sent | errors | tokens/s | TTFT p50 (ms) | TTFT p99 (ms) | added TTFT p50 (ms) "
        "| added TTFT p99 (ms) | stream p50 (ms) | stream p99 (ms) | CPU: proxy / upstream / client (cores) "
        "| upstream connections |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    by_name = {run["path"]: run for run in runs}
    base_ttft = by_name.get("direct", {}).get("scenarios", {}).get(name, {}).get("ttft_ms", {})
    for run in runs:
        summary = run["scenarios"].get(name)
        skipped = run.get("skipped") or (summary or {}).get("skipped")
        if skipped:
            out.append(f"| {run['path']} | {skipped} |||||||||")
        elif summary is not None:
            out.append(_report_row(run["path"], summary, base_ttft))
    out.append("")
    splits = [(run["path"], run["scenarios"].get(name, {}).get("ttft_split_ms")) for run in runs]
    out += _report_ttft_splits([(path, split) for path, split in splits if split])
    return out


def _report_row(path: str, summary: dict[str, Any], base_ttft: dict[str, Any]) -> str:
    ttft = summary["ttft_ms"]
    cpu = summary["cpu_core_share"]
    errors = str(summary["errors"])
    if summary["error_kinds"]:
        errors += " (" + ", ".join(f"{kind}: {count}" for kind, count in summary["error_kinds"].items()) + ")"
    direct = path == "direct"
    return (
        f"| {path} | {summary['completed']} / {summary['sent']} | {errors} "
        f"| {summary['tokens_per_s']:,.0f} | {_fmt(ttft['p50'], 3)} | {_fmt(ttft['p99'], 3)} "
        f"| {'–' if direct else _added(ttft['p50'], base_ttft.get('p50'))} "
        f"| {'–' if direct else _added(ttft['p99'], base_ttft.get('p99'))} "
        f"| {_fmt(summary['stream_ms']['p50'])} | {_fmt(summary['stream_ms']['p99'])} "
        f"| {_fmt(cpu['proxy'])} / {_fmt(cpu['upstream'])} / {_fmt(cpu['client'])} "
        f"| {summary.get('upstream', {}).get('connections', '–')} |"
    )


def _report_ttft_splits(splits: list[tuple[str, dict[str, Any]]]) -> list[str]:
    if not splits:
        return []
    out = [
        "Time to first token, split at the upstream (one client, so each request pairs with one `/api/chat`):",
        "",
        "| path | request written → upstream has `/api/chat` p50 / p99 (ms) "
        "| upstream answers → first token at client p50 / p99 (ms) |",
        "|---|---:|---:|",
    ]
    for path, split in splits:
        inbound, outbound = split["to_upstream"], split["upstream_to_first_token"]
        out.append(
            f"| {path} | {_fmt(inbound['p50'], 3)} / {_fmt(inbound['p99'], 3)} "
            f"| {_fmt(outbound['p50'], 3)} / {_fmt(outbound['p99'], 3)} |"
        )
    out.append("")
    return out


def _report_memory(runs: list[dict[str, Any]]) -> list[str]:
    out = [
        "**memory** (MB = 10^6 bytes; per worker process, `VmRSS` idle before the first request, `VmHWM` peak)",
        "",
        "| path | workers | idle RSS per worker | peak RSS per worker | main process RSS (idle) |",
        "|---|---:|---|---|---:|",
    ]
    for run in runs:
        if run["kind"] == "direct" or run.get("skipped") or "idle" not in run["memory"]:
            continue
        idle = run["memory"]["idle"]
        after = run["memory"].get("after", idle)
        out.append(
            f"| {run['path']} | {len(idle['workers_rss_mb'])} "
            f"| {', '.join(_fmt(value, 1) for value in idle['workers_rss_mb'])} "
            f"| {', '.join(_fmt(value, 1) for value in after['workers_hwm_mb'])} | {_fmt(idle['main_rss_mb'], 1)} |"
        )
    out.append("")
    return out


def _report_targets(targets: list[dict[str, Any]]) -> list[str]:
    if not targets:
        return []
    out = ["**targets**", "", "| target | measured | met? |", "|---|---|---|"]
    for target in targets:
        out.append(f"| {target['target']} | {target['measured']} | {target['met']} |")
    out.append("")
    return out


def _report_profile(run: dict[str, Any]) -> list[str]:
    profile = run.get("profile") or {}
    if profile.get("error") and not profile.get("self_percent"):
        return [f"py-spy: {profile['error']}"]
    if not profile.get("self_percent"):
        return []
    out = [
        f"**py-spy, {run['path']} worker during an extra, unmeasured {profile['scenario']} run** "
        f"({profile['samples']} samples)",
        "",
        "| self % | frame | | inclusive % | frame |",
        "|---:|---|---|---:|---|",
    ]
    for (own, own_share), (inc, inc_share) in zip(profile["self_percent"], profile["inclusive_percent"], strict=False):
        out.append(f"| {own_share} | `{own}` | | {inc_share} | `{inc}` |")
    out.append("")
    return out


def _throughput_target(throughput: dict[str, Any]) -> dict[str, str]:
    rate = throughput["tokens_per_s"]
    return {
        "target": f"≥ {TARGET_TOKENS_PER_S:,} streamed tokens/s, {throughput['concurrency']} streams, 1 worker",
        "measured": f"{rate:,.0f} tokens/s, {throughput['errors']} errors",
        "met": "met" if rate >= TARGET_TOKENS_PER_S and throughput["errors"] == 0 else "**missed**",
    }


def _cpu_per_token_target(throughput: dict[str, Any]) -> dict[str, str]:
    """With a paced upstream every token is its own read, feed and send: what the proxy spends on one."""
    rate = throughput["tokens_per_s"]
    cores = throughput["cpu_core_share"]["proxy"]
    per_token = cores / rate * 1e6 if rate else float("inf")
    return {
        "target": f"≤ {TARGET_CPU_US_PER_TOKEN:g} µs of proxy CPU per streamed token, paced upstream, 1 worker",
        "measured": f"{per_token:.1f} µs ({cores:.2f} cores for {rate:,.0f} tokens/s, {throughput['errors']} errors)",
        "met": "met" if per_token <= TARGET_CPU_US_PER_TOKEN and throughput["errors"] == 0 else "**missed**",
    }


def evaluate(results: dict[str, Any], workers: int) -> list[dict[str, str]]:
    by_name = {run["path"]: run for run in results["paths"]}

    def scenario(path: str, name: str) -> dict[str, Any] | None:
        found = by_name.get(path, {}).get("scenarios", {}).get(name)
        return found if found and "skipped" not in found else None

    targets = []
    throughput = scenario("ccop-1", "throughput")
    if throughput:
        paced = results["config"]["upstream_delay"] > 0
        targets.append(_cpu_per_token_target(throughput) if paced else _throughput_target(throughput))
    latency, base = scenario("ccop-1", "latency"), scenario("direct", "latency")
    if latency and base:
        added = latency["ttft_ms"]["p50"] - base["ttft_ms"]["p50"]
        targets.append(
            {
                "target": f"added TTFT p50 ≤ {TARGET_ADDED_TTFT_MS:g} ms at concurrency 1 (1 worker)",
                "measured": f"{added:+.3f} ms",
                "met": "met" if added <= TARGET_ADDED_TTFT_MS else "**missed**",
            }
        )
    burst = scenario(f"ccop-{workers}", "burst")
    if burst:
        targets.append(
            {
                "target": f"0 errors, {burst['concurrency']} concurrent streams, --workers {workers}",
                "measured": f"{burst['errors']} errors, {burst['completed']} / {burst['sent']} streams complete",
                "met": "met" if burst["errors"] == 0 and burst["completed"] == burst["sent"] else "**missed**",
            }
        )
    idle = [
        value
        for run in results["paths"]
        if run["kind"] == "ccop" and "idle" in run["memory"]
        for value in run["memory"]["idle"]["workers_rss_mb"]
        if value is not None
    ]
    if idle:
        worst = max(idle)
        targets.append(
            {
                "target": f"idle RSS ≤ {TARGET_IDLE_RSS_MB:g} MB per worker",
                "measured": f"{min(idle):.1f}–{worst:.1f} MB",
                "met": "met" if worst <= TARGET_IDLE_RSS_MB else "**missed**",
            }
        )
    return targets


# -- entry point -----------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Proxy overhead end to end: streaming load straight at a fast Ollama stand-in and through ccop "
        "(and optionally a peer proxy), on loopback. Prints a markdown report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--tokens", type=int, default=500, help="upstream tokens (content chunks) per stream")
    parser.add_argument("--concurrency", type=int, default=20, help="concurrent streams in the throughput scenario")
    parser.add_argument("--requests", type=int, default=25, help="requests per client in the throughput scenario")
    parser.add_argument("--latency-requests", type=int, default=300, help="sequential requests, latency scenario")
    parser.add_argument("--burst-concurrency", type=int, default=500, help="concurrent streams, burst scenario")
    parser.add_argument("--burst-requests", type=int, default=2, help="requests per client, burst scenario")
    parser.add_argument("--workers", type=int, default=4, help="workers of the multi-worker ccop path")
    parser.add_argument(
        "--paths",
        default=None,
        help="comma-separated: direct, ccop-1, ccop-<N> (default: direct,ccop-1,ccop-<workers>)",
    )
    parser.add_argument("--scenarios", default="latency,throughput,burst", help="comma-separated scenarios to run")
    parser.add_argument("--warmup", type=int, default=40, help="unmeasured requests per path before measuring")
    parser.add_argument("--upstream-delay", type=float, default=0.0, help="seconds between upstream chunks")
    parser.add_argument(
        "--upstream-chunking",
        choices=("line", "bulk"),
        default="line",
        help="line: one HTTP chunk per NDJSON line, as Ollama sends; bulk: the whole body in one chunk",
    )
    parser.add_argument("--pin", choices=("auto", "none"), default="auto", help="CPU placement (see the module doc)")
    parser.add_argument("--scenario-seconds", type=float, default=30.0, help="no new request after this, per scenario")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="seconds before a stream counts as failed")
    parser.add_argument("--max-total-seconds", type=float, default=420.0, help="skip scenarios once this is spent")
    parser.add_argument(
        "--ccop-command",
        default=None,
        metavar="CMD",
        help="how to start ccop, e.g. '/tmp/venv/bin/python -m ccop' (default: the `ccop` on PATH)",
    )
    parser.add_argument("--peer", choices=("litellm",), default=None, help="also measure a peer proxy")
    parser.add_argument("--litellm-bin", default=DEFAULT_LITELLM, help="the `litellm` command of a throwaway venv")
    parser.add_argument("--peer-burst", action="store_true", help="also run the burst scenario through the peer")
    parser.add_argument("--py-spy", default=None, metavar="PATH", help="py-spy binary: profile the 1-worker ccop")
    parser.add_argument("--py-spy-native", action="store_true", help="with --py-spy: include native frames")
    parser.add_argument("--py-spy-top", type=int, default=25, help="frames to list from the profile")
    parser.add_argument("--py-spy-scenario", default="throughput", help="the scenario the profiled run repeats")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the raw results here")
    args = parser.parse_args(argv)
    if args.paths is None:
        args.paths = f"direct,ccop-1,ccop-{args.workers}" if args.workers != 1 else "direct,ccop-1"
    return args


@contextlib.contextmanager
def _terminated_cleanly() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every started process is stopped."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runner = Runner(args)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if argv is None else "",
        "config": {
            "tokens": args.tokens,
            "upstream_delay": args.upstream_delay,
            "upstream_chunking": args.upstream_chunking,
            "scenario_seconds": args.scenario_seconds,
            "request_timeout": args.request_timeout,
            "warmup": args.warmup,
        },
        "placement": {
            "pin": args.pin,
            "tools": sorted(runner.tool_cpus) if runner.tool_cpus else "any",
            "proxies": sorted(runner.proxy_cpus) if runner.proxy_cpus else "any",
        },
        "scenarios": [vars(scenario) for scenario in runner.scenarios],
        "load_average_before": load_average(),
        "logs": str(runner.logdir),
        "paths": [],
    }
    print(f"logs in {runner.logdir}; load average {results['load_average_before']}", file=sys.stderr)
    with _terminated_cleanly():
        try:
            runner.upstream = start_upstream(
                runner.logdir, runner.tool_cpus, args.tokens, args.upstream_delay, args.upstream_chunking
            )
            runner.services.append(runner.upstream)
            for spec in runner.paths():
                print(f"{spec.name}:", file=sys.stderr)
                run = runner.run_path(spec)
                results["paths"].append(vars(run))
        except KeyboardInterrupt:
            print("interrupted; stopping what was started", file=sys.stderr)
            return 130
        finally:
            runner.stop_all()
    results["load_average_after"] = load_average()
    results["targets"] = evaluate(results, args.workers)
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
