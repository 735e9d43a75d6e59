"""`ccop claude`: run Claude Code on the local models, checked first, with the proxy started (or reused).

Claude Code needs more than the base URL to work well behind the proxy: which model names to send, how big the
context window really is (it assumes a million tokens for model names it does not know, and never compacts), and a
permission mode that does not wait for a server-side safety check no local model provides. And it should not start
at all when Ollama is down or the model is missing: it would retry silently for minutes.
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson

from ccop.diagnostics import Report, best_report, preload, probe_hosts
from ccop.launch_args import LaunchArgs, permission_mode_chosen
from ccop.settings import DEFAULT_NUM_CTX, SETTINGS_ENV, Settings, redacted_url

__all__ = ["claude_environment", "launch", "proxy_url"]

# What Claude Code sends as its key when the proxy needs none: any non-empty value will do.
PLACEHOLDER_KEY = "ccop"
CLAUDE_INSTALL = "npm install -g @anthropic-ai/claude-code"
START_TIMEOUT = 30.0
# Without a server-side safety check (no local model has one), auto mode stops the first risky action on a
# full-screen notice, and with CLAUDE_CODE_AUTO_MODE_SERVER=0 it asks the local model to judge every action with a
# ~140 KB prompt. acceptEdits is auto mode's nearest predictable neighbour: edits in the project run, commands ask.
DEFAULT_PERMISSION_MODE = "acceptEdits"


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


def _roles(settings: Settings, small_model: str | None) -> dict[str, str]:
    return {"main": settings.default_model, "fast": small_model or _tier(settings, "haiku")}


def _window(settings: Settings, report: Report) -> int:
    """The num_ctx the proxy will send for the main model: the same rule the proxy applies, on the same answer."""
    main = report.models[0] if report.models else None
    if main is not None and main.num_ctx:
        return main.num_ctx
    return settings.model_num_ctx.get(settings.default_model) or settings.num_ctx or DEFAULT_NUM_CTX


def claude_environment(settings: Settings, window: int, small_model: str | None = None) -> dict[str, str]:
    """The variables that make Claude Code use the proxy and fit its local context window."""
    fast = _roles(settings, small_model)["fast"]
    return {
        "ANTHROPIC_BASE_URL": proxy_url(settings),
        # A bearer token does not trigger Claude Code's "use this API key?" prompt; the empty key keeps a key
        # from the user's own environment from being sent instead.
        "ANTHROPIC_AUTH_TOKEN": settings.api_key or PLACEHOLDER_KEY,
        "ANTHROPIC_API_KEY": "",
        "ANTHROPIC_MODEL": settings.default_model,
        "ANTHROPIC_DEFAULT_OPUS_MODEL": _tier(settings, "opus"),
        "ANTHROPIC_DEFAULT_SONNET_MODEL": _tier(settings, "sonnet"),
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": fast,
        "ANTHROPIC_SMALL_FAST_MODEL": fast,
        "CLAUDE_CODE_SUBAGENT_MODEL": _tier(settings, "sonnet"),
        # The window Claude Code compacts by, and shows in /context: exactly the num_ctx the proxy sends. (Its other
        # knob, CLAUDE_CODE_AUTO_COMPACT_WINDOW, is clamped to 100k and warns on every start, so it is not set.)
        "CLAUDE_CODE_MAX_CONTEXT_TOKENS": str(window),
        # Each request says what it is (main, subagent, compaction, auxiliary): the proxy logs it and fits an
        # oversized compaction request into the window instead of failing the session.
        "CLAUDE_CODE_GATEWAY_HINT_HEADERS": "1",
        # No calls to Anthropic's servers for telemetry, updates or feedback; this also skips the start-up
        # connectivity check that otherwise stops a first run at "Unable to connect to Anthropic services".
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }


def _health(url: str, api_key: str | None) -> dict[str, Any] | None | bool:
    """The health document of a ccop at `url`; False: something else answers there; None: nothing listens.

    A proxy with an API key shows its document only to a request with that key (without it `/health` says only
    `{"status": "ok"}`, returned as it is, so the caller can tell a proxy with another key from something else).
    """
    headers = {"x-api-key": api_key} if api_key else {}
    try:
        response = httpx.get(f"{url}/health", headers=headers, timeout=2.0, trust_env=False)
    except httpx.HTTPError:
        return None
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return False
    # "degraded": a ccop whose Ollama is down right now; still a ccop, and the pre-flight says what is wrong.
    if isinstance(body, dict) and body.get("status") in ("ok", "degraded") and ("ollama" in body or len(body) == 1):
        return body
    return False


def _differences(settings: Settings, health: Mapping[str, Any]) -> list[str]:
    """What a running proxy does differently from what this launch asks for, where Claude Code would notice."""
    running = health.get("settings")
    if not isinstance(running, dict):
        return []
    urls = [redacted_url(url) for url in settings.ollama_urls]
    wanted: dict[str, Any] = {"Ollama URL": urls[0], "num_ctx": settings.num_ctx}
    wanted["per-model num_ctx"] = dict(settings.model_num_ctx)
    keys = {"Ollama URL": "ollama_url", "num_ctx": "num_ctx", "per-model num_ctx": "model_num_ctx"}
    if "ollama_urls" in running or len(urls) > 1:
        # A proxy from before there could be several Ollamas reports only the one.
        wanted["Ollama URLs"] = urls
        keys["Ollama URLs"] = "ollama_urls"
    return [
        f"{label} {running.get(keys[label])!r} instead of {value!r}"
        for label, value in wanted.items()
        if running.get(keys[label]) != value
    ]


def _start_proxy(settings: Settings) -> tuple[subprocess.Popen[bytes], Path]:
    log_path = Path(tempfile.gettempdir()) / f"ccop-{settings.port}.log"
    environment = {**os.environ, SETTINGS_ENV: settings.to_json().decode()}
    with log_path.open("wb") as log:
        # The proxy's own output goes to a file: Claude Code owns the terminal.
        process = subprocess.Popen(
            [sys.executable, "-m", "ccop.server"], env=environment, stdout=log, stderr=subprocess.STDOUT
        )
    return process, log_path


def _wait_until_up(process: subprocess.Popen[bytes], url: str, log_path: Path, api_key: str | None) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            print(f"ccop: the proxy exited with code {process.returncode}:\n{tail}", file=sys.stderr)
            return False
        if isinstance(_health(url, api_key), dict):
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


def _say(text: str) -> None:
    print(f"ccop: {text}", file=sys.stderr, flush=True)


def _preflight_failed(report: Report) -> bool:
    """Print every failed check with its fix, and every note once; True when Claude Code must not start."""
    failed = False
    for check in report.checks:
        if check.ok or check.doctor_only:
            continue
        failed = failed or not check.warning
        _say(f"{'note' if check.warning else 'cannot start Claude Code'}: {check.text}")
        if check.fix:
            print(f"      fix: {check.fix}", file=sys.stderr)
    return failed


def _choose_model(report: Report) -> str | None:
    """Ask, on the terminal, which installed tool-capable model to use; None when there is none or no answer."""
    choices = sorted(report.tool_models)
    if not choices:
        return None
    print("No model is configured for Claude Code. Installed models that can call tools:", file=sys.stderr)
    for number, name in enumerate(choices, start=1):
        trained = report.tool_contexts.get(name)
        context = f"context {trained}" if trained else "context unknown"
        print(f"  {number:>2}. {name}  ({context})", file=sys.stderr)
    while True:
        print(f"Choose a model [1-{len(choices)}] (or q to quit): ", end="", file=sys.stderr, flush=True)
        try:
            answer = input().strip()
        except EOFError:
            return None
        if answer.lower() in ("q", "quit"):
            return None
        if answer.isdigit() and 1 <= int(answer) <= len(choices):
            chosen = choices[int(answer) - 1]
            print(f"Using {chosen}; next time: ccop claude --model {chosen}", file=sys.stderr)
            return chosen


def _with_model(settings: Settings, model: str) -> Settings:
    data = orjson.loads(settings.to_json())
    data["default_model"] = model
    data["configured"] = [*data["configured"], "default_model"]
    return Settings.from_json(orjson.dumps(data))


def _check(settings: Settings, args: LaunchArgs) -> tuple[Settings, Report] | None:
    """Run the doctor's checks (and offer a model when none is configured); None when Claude Code must not start."""
    also = [("fast model", args.small_model)] if args.small_model else []
    report = _probe(settings, also)
    interactive = not args.headless and sys.stdin.isatty() and sys.stderr.isatty()
    if report.reachable and "default_model" not in settings.configured and interactive:
        chosen = _choose_model(report)
        if chosen is None:
            return None
        settings = _with_model(settings, chosen)
        report = _probe(settings, also)
    if _preflight_failed(report) and not args.skip_checks:
        _say("fix the above and run `ccop claude` again (`ccop doctor` shows every check; --skip-checks starts anyway)")
        return None
    return settings, report


def _probe(settings: Settings, also: list[tuple[str, str]]) -> Report:
    """The doctor's checks of the Ollama to go by: with several, the first that passes them."""
    return best_report(probe_hosts(settings, timeout=3.0, also=also, contexts=True))


def _ensure_proxy(settings: Settings) -> tuple[subprocess.Popen[bytes] | None, str] | None:
    """A ccop answering at the configured port: reused, or started here. None (after saying why) on failure."""
    url = proxy_url(settings)
    health = _health(url, settings.api_key)
    if health is False:
        _say(f"something other than ccop answers at {url}; choose another port with --port")
        return None
    if isinstance(health, dict) and "ollama" not in health:
        _say(f"the ccop already running at {url} needs a different API key; stop it, or use another port with --port")
        return None
    if isinstance(health, dict):
        differences = _differences(settings, health)
        if differences:
            _say(
                f"the ccop already running at {url} uses {'; '.join(differences)}; stop it, or use another port "
                "with --port"
            )
            return None
        return None, "running"
    process, log_path = _start_proxy(settings)
    if not _wait_until_up(process, url, log_path, settings.api_key):
        _stop(process)
        return None
    return process, f"log {log_path}"


def _claude_arguments(args: LaunchArgs) -> list[str]:
    if permission_mode_chosen(args.claude_args, Path.cwd()):
        return list(args.claude_args)
    return ["--permission-mode", DEFAULT_PERMISSION_MODE, *args.claude_args]


def launch(settings: Settings, args: LaunchArgs) -> int:
    """Check, start or reuse the proxy, run `claude`; returns Claude Code's exit code (1/127 when it did not run)."""
    if args.print_env:
        report = best_report(probe_hosts(settings, timeout=3.0))
        environment = claude_environment(settings, _window(settings, report), args.small_model)
        for name, value in environment.items():
            print(f"export {name}={shlex.quote(value)}")
        return 0
    claude = shutil.which("claude")
    if claude is None:
        _say(f"the `claude` command is not installed; install Claude Code with `{CLAUDE_INSTALL}`")
        return 127
    checked = _check(settings, args)
    if checked is None:
        return 1
    settings, report = checked
    started = _ensure_proxy(settings)
    if started is None:
        return 1
    process, proxy_state = started
    if settings.preload:
        _say("loading the configured models (--preload)…")
        for line in preload(settings, probe_hosts(settings, timeout=3.0)):
            _say(line)
    window = _window(settings, report)
    environment = claude_environment(settings, window, args.small_model)
    roles = _roles(settings, args.small_model)
    _say(
        f"Claude Code → {proxy_url(settings)} ({proxy_state}) · main {roles['main']} · fast {roles['fast']}"
        f" · window {window}"
    )
    # Ctrl-C belongs to Claude Code (it interrupts the current turn); the launcher only waits for it to exit. A
    # no-op handler rather than SIG_IGN: an ignored signal would stay ignored in Claude Code after exec.
    previous = signal.signal(signal.SIGINT, lambda _signum, _frame: None)
    try:
        return subprocess.call([claude, *_claude_arguments(args)], env={**os.environ, **environment})
    finally:
        signal.signal(signal.SIGINT, previous)
        if process is not None:
            _stop(process)
