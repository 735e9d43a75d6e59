"""Shared fixtures: the Ollama test double and real `ccop` processes on free ports.

The proxy under test is always the real one: the installed `ccop` command, started as a subprocess and reached over
HTTP. Only Ollama is replaced, by `ollama_double.OllamaDouble`, which speaks Ollama's wire format.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from hypothesis import HealthCheck, settings

from ollama_double import ModelSpec, OllamaDouble

settings.register_profile("fast", max_examples=60, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ccop_command() -> list[str]:
    """The installed console script, or the module when the script's directory is not on PATH."""
    script = shutil.which("ccop")
    return [script] if script else [sys.executable, "-m", "ccop"]


def run_ccop(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The `ccop` command as a user runs it, with none of this machine's ccop or Ollama settings leaking in."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CCOP_")}
    for key in ("PORT", "HOST", "OLLAMA_URL", "OLLAMA_HOST", "OLLAMA_API_KEY", "DEFAULT_MODEL"):
        clean.pop(key, None)
    clean.update(env or {})
    return subprocess.run([*ccop_command(), *args], cwd=cwd, env=clean, capture_output=True, text=True, timeout=60)


def printed_config(*args: str, cwd: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """What `ccop … --print-config` says is in effect."""
    result = run_ccop(*args, "--print-config", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    shown: dict[str, Any] = json.loads(result.stdout)
    return shown


@dataclass
class ProxyProcess:
    """A running `ccop` and what it printed."""

    process: subprocess.Popen[str]
    port: int
    log_path: Path
    host: str = "127.0.0.1"
    pids: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_proxy(
    ollama_url: str,
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> ProxyProcess:
    """Start `ccop` on a free port and wait until `/health` answers."""
    port = free_port()
    log_path = tmp_path / f"ccop-{port}.log"
    command = [*ccop_command(), "--port", str(port), "--ollama-url", ollama_url, *args]
    process_env = {key: value for key, value in os.environ.items() if not key.startswith("CCOP_")}
    for key in ("PORT", "HOST", "OLLAMA_URL", "OLLAMA_HOST", "OLLAMA_API_KEY", "DEFAULT_MODEL"):
        process_env.pop(key, None)
    process_env.update(env or {})
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=process_env, cwd=tmp_path, text=True
        )
    proxy = ProxyProcess(process, port, log_path)
    if wait:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"ccop exited with {process.returncode}:\n{proxy.log()}")
            try:
                httpx.get(f"{proxy.url}/health", timeout=1.0, trust_env=False)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    proxy.stop()
                    raise RuntimeError(f"ccop did not start within 30 s:\n{proxy.log()}") from None
                time.sleep(0.05)
    return proxy


@pytest.fixture(scope="session")
def ollama() -> Iterator[OllamaDouble]:
    double = OllamaDouble()
    # A harmony-format model: it thinks in levels (low/medium/high) rather than on/off.
    double.add_model(ModelSpec("gpt-oss:20b", capabilities=["completion", "tools", "thinking"], architecture="gptoss"))
    double.add_model(ModelSpec("qwen2.5vl:7b", capabilities=["completion", "tools", "vision"], architecture="qwen25vl"))
    double.start()
    yield double
    double.stop()


@pytest.fixture(autouse=True)
def _fresh_ollama(request: pytest.FixtureRequest) -> None:
    # Every test starts from an empty script and recording; only tests that use the double pay for it.
    if "ollama" in request.fixturenames:
        double: OllamaDouble = request.getfixturevalue("ollama")
        double.reset()


@pytest.fixture(scope="session")
def proxy(ollama: OllamaDouble, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """One shared proxy (1 worker) with a small model map, for tests that need no special settings."""
    directory = tmp_path_factory.mktemp("proxy")
    process = start_proxy(
        ollama.url,
        directory,
        "--default-model",
        "llama3.1",
        "-m",
        "claude-haiku-5-5=qwen3:8b",
        "-m",
        "thinker=qwen3:8b",
        # The double runs any number of requests at once, and so may this proxy: the scheduler's limits and order
        # are tested with proxies of their own (test_scheduling.py).
        "--slots",
        "256",
    )
    yield process
    process.stop()


Spawn = Callable[..., ProxyProcess]


def child_processes(pid: int) -> dict[int, tuple[str, str]]:
    """The child processes of `pid`: {pid: (state, command line)}."""
    found: dict[int, tuple[str, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found[int(entry.name)] = (fields[0], command)
    return found


def worker_pids(proxy: ProxyProcess) -> set[int]:
    """The Granian workers: forked children, so they carry the main process's command line."""
    main = (Path(f"/proc/{proxy.process.pid}/cmdline")).read_bytes().replace(b"\0", b" ").decode().strip()
    return {
        pid for pid, (state, command) in child_processes(proxy.process.pid).items() if command == main and state != "Z"
    }


@pytest.fixture
def spawn(ollama: OllamaDouble, tmp_path: Path) -> Iterator[Spawn]:
    """Start proxies with a test's own flags (`spawn("--num-ctx", "0")`, `url=` for another upstream).

    Every proxy started this way is stopped when the test ends, whatever happened.
    """
    started: list[ProxyProcess] = []

    def start(*args: str, url: str | None = None, env: dict[str, str] | None = None) -> ProxyProcess:
        proxy = start_proxy(url or ollama.url, tmp_path, *args, env=env)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def client(proxy: ProxyProcess) -> Iterator[anthropic.Anthropic]:
    """The official Anthropic SDK pointed at the shared proxy; retries off so failures show as they are."""
    with anthropic.Anthropic(base_url=proxy.url, api_key="test-key", max_retries=0, timeout=30.0) as sdk:
        yield sdk


@pytest.fixture
def http(proxy: ProxyProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.url, timeout=30.0, trust_env=False) as session:
        yield session
