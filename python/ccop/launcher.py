"""`ccop claude`: run Claude Code on the local models, with the proxy started (or reused) and the environment set.

Claude Code needs to know more than the base URL to work well behind the proxy: which model names to send, and how
big the context window really is, so it compacts the conversation before the local window overflows instead of
believing it has the million tokens it assumes for unknown models.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from ccop.diagnostics import probe
from ccop.settings import DEFAULT_NUM_CTX, SETTINGS_ENV, Settings

__all__ = ["claude_environment", "launch", "proxy_url"]

# What Claude Code sends as its key when the proxy needs none: any non-empty value will do.
PLACEHOLDER_KEY = "ccop"
CLAUDE_INSTALL = "npm install -g @anthropic-ai/claude-code"
START_TIMEOUT = 30.0


def proxy_url(settings: Settings) -> str:
    # A proxy bound to every interface is still reached over loopback from this machine.
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def _tier(settings: Settings, family: str) -> str:
    """The Ollama model the map gives a Claude family (opus, sonnet, haiku), else the default model."""
    for alias, target in sorted(settings.model_map.items()):
        if family in alias.lower():
            return target
    return settings.default_model


def context_window(settings: Settings) -> int:
    """The num_ctx the proxy will send for the default model (asks Ollama for the trained length)."""
    report = probe(settings, timeout=3.0)
    if report.models and report.models[0].num_ctx:
        return report.models[0].num_ctx
    return settings.model_num_ctx.get(settings.default_model) or settings.num_ctx or DEFAULT_NUM_CTX


def claude_environment(settings: Settings, window: int) -> dict[str, str]:
    """The variables that make Claude Code use the proxy and fit its local context window."""
    return {
        "ANTHROPIC_BASE_URL": proxy_url(settings),
        # A bearer token does not trigger Claude Code's "use this API key?" prompt; the empty key keeps a key
        # from the user's own environment from being sent instead.
        "ANTHROPIC_AUTH_TOKEN": settings.api_key or PLACEHOLDER_KEY,
        "ANTHROPIC_API_KEY": "",
        "ANTHROPIC_MODEL": settings.default_model,
        "ANTHROPIC_DEFAULT_OPUS_MODEL": _tier(settings, "opus"),
        "ANTHROPIC_DEFAULT_SONNET_MODEL": _tier(settings, "sonnet"),
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": _tier(settings, "haiku"),
        "ANTHROPIC_SMALL_FAST_MODEL": _tier(settings, "haiku"),
        "CLAUDE_CODE_SUBAGENT_MODEL": _tier(settings, "sonnet"),
        # Compact before the local window overflows: Claude Code otherwise assumes 1M tokens for unknown models.
        "CLAUDE_CODE_MAX_CONTEXT_TOKENS": str(window),
        "CLAUDE_CODE_AUTO_COMPACT_WINDOW": str(window),
        # No calls to Anthropic's servers for telemetry, updates or feedback.
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }


def _is_ccop(url: str) -> bool | None:
    # /health answers without the API key, so this works whatever the proxy's key.
    """True: a ccop answers there; False: something else does; None: nothing listens."""
    try:
        response = httpx.get(f"{url}/health", timeout=2.0, trust_env=False)
    except httpx.HTTPError:
        return None
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and body.get("status") == "ok" and "ollama" in body


def _start_proxy(settings: Settings) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = Path(tempfile.gettempdir()) / f"ccop-{settings.port}.log"
    environment = {**os.environ, SETTINGS_ENV: settings.to_json().decode()}
    with log_path.open("wb") as log:
        # The proxy's own output goes to a file: Claude Code owns the terminal.
        process = subprocess.Popen(
            [sys.executable, "-m", "ccop.server"], env=environment, stdout=log, stderr=subprocess.STDOUT
        )
    return process, log_path


def _wait_until_up(process: subprocess.Popen[bytes], url: str, log_path: Path) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            print(f"ccop: the proxy exited with code {process.returncode}:\n{tail}", file=sys.stderr)
            return False
        if _is_ccop(url):
            return True
        time.sleep(0.1)
    print(f"ccop: the proxy did not answer at {url} within {START_TIMEOUT:g} s (log: {log_path})", file=sys.stderr)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def launch(settings: Settings, claude_args: list[str], *, print_env: bool = False) -> int:
    """Run `claude` behind the proxy; returns Claude Code's exit code."""
    environment = claude_environment(settings, context_window(settings))
    if print_env:
        for name, value in environment.items():
            print(f"export {name}={shlex.quote(value)}")
        return 0
    claude = shutil.which("claude")
    if claude is None:
        print(
            f"ccop: the `claude` command is not installed; install Claude Code with `{CLAUDE_INSTALL}`", file=sys.stderr
        )
        return 127
    url = proxy_url(settings)
    state = _is_ccop(url)
    if state is False:
        print(f"ccop: something other than ccop answers at {url}; choose another port with PORT=…", file=sys.stderr)
        return 1
    process = None
    if state is None:
        process, log_path = _start_proxy(settings)
        if not _wait_until_up(process, url, log_path):
            _stop(process)
            return 1
        print(f"ccop: proxy started at {url} (log: {log_path})", file=sys.stderr)
    else:
        print(f"ccop: using the proxy already running at {url}", file=sys.stderr)
    # Ctrl-C belongs to Claude Code (it interrupts the current turn); the launcher only waits for it to exit. A
    # no-op handler rather than SIG_IGN: an ignored signal would stay ignored in Claude Code after exec.
    previous = signal.signal(signal.SIGINT, lambda _signum, _frame: None)
    try:
        return subprocess.call([claude, *claude_args], env={**os.environ, **environment})
    finally:
        signal.signal(signal.SIGINT, previous)
        if process is not None:
            _stop(process)
