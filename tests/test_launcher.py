"""`ccop claude` as a user runs it: arguments, pre-flight checks, the environment Claude Code gets, the proxy's life.

A stand-in `claude` on PATH records its arguments and environment (and that the proxy answered while it ran); the
tests in test_claude_code_session.py run the real Claude Code CLI through the launcher.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ccop.launch_args import LaunchUsageError, parse_launch_args
from conftest import ccop_command, free_port, start_proxy
from ollama_double import ModelSpec, OllamaDouble

RECORDER = """\
import json, os, sys, urllib.request
health = urllib.request.urlopen(os.environ['ANTHROPIC_BASE_URL'] + '/health').status
json.dump({{'args': sys.argv[1:], 'env': dict(os.environ), 'health': health}}, open({record!r}, 'w'))
sys.exit(7)
"""


def launcher_env(ollama_url: str, port: int, path: str, **extra: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("CCOP_", "ANTHROPIC_", "CLAUDE_"))}
    environment.update(
        PORT=str(port),
        OLLAMA_URL=ollama_url,
        DEFAULT_MODEL="qwen3-coder:30b",
        CCOP_MODEL_MAP="claude-haiku-5-5=qwen3:8b,claude-sonnet-5-5=qwen3-coder:30b",
        PATH=path,
    )
    environment.update(extra)
    return environment


class Launcher:
    """Runs `ccop claude …` with a recording `claude` first on PATH, in a fresh HOME and working directory."""

    def __init__(self, ollama: OllamaDouble, root: Path) -> None:
        self.ollama = ollama
        self.bin = root / "bin"
        self.home = root / "home"
        self.cwd = root / "work"
        for directory in (self.bin, self.home, self.cwd):
            directory.mkdir()
        self.record_path = root / "record.json"
        script = self.bin / "claude"
        script.write_text(f"#!{sys.executable}\n" + RECORDER.format(record=str(self.record_path)))
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
        self.port = free_port()

    def env(self, **extra: str) -> dict[str, str]:
        path = f"{self.bin}{os.pathsep}{os.environ['PATH']}"
        return launcher_env(self.ollama.url, self.port, path, HOME=str(self.home), **extra)

    def run(self, *args: str, url: str | None = None, **extra: str) -> subprocess.CompletedProcess[str]:
        environment = self.env(**extra)
        if url is not None:
            environment["OLLAMA_URL"] = url
        return subprocess.run(
            [*ccop_command(), "claude", *args],
            env=environment,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    @property
    def ran_claude(self) -> bool:
        return self.record_path.exists()

    def record(self) -> dict[str, Any]:
        recorded: dict[str, Any] = json.loads(self.record_path.read_text())
        return recorded


@pytest.fixture
def launcher(ollama: OllamaDouble, tmp_path: Path) -> Launcher:
    return Launcher(ollama, tmp_path)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


# -- the environment and the proxy's life ------------------------------------------------------------------------


def test_starts_the_proxy_runs_claude_and_stops(launcher: Launcher) -> None:
    completed = launcher.run("-p", "hello world", "--output-format", "json")
    assert completed.returncode == 7, completed.stderr  # Claude Code's own exit code
    seen = launcher.record()
    # The launcher's permission mode first, then the user's arguments exactly as given.
    assert seen["args"] == ["--permission-mode", "acceptEdits", "-p", "hello world", "--output-format", "json"]
    assert seen["health"] == 200  # the proxy was up while Claude Code ran
    env = seen["env"]
    assert env["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{launcher.port}"
    assert env["ANTHROPIC_AUTH_TOKEN"] and env["ANTHROPIC_API_KEY"] == ""
    assert env["ANTHROPIC_MODEL"] == "qwen3-coder:30b"
    assert env["ANTHROPIC_DEFAULT_SONNET_MODEL"] == env["ANTHROPIC_DEFAULT_OPUS_MODEL"] == "qwen3-coder:30b"
    assert env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == env["ANTHROPIC_SMALL_FAST_MODEL"] == "qwen3:8b"
    assert env["CLAUDE_CODE_SUBAGENT_MODEL"] == "qwen3-coder:30b"
    assert env["CLAUDE_CODE_MAX_CONTEXT_TOKENS"] == "65536"  # the floor; qwen3-coder was trained for 262144
    assert "CLAUDE_CODE_AUTO_COMPACT_WINDOW" not in env  # clamped to 100k by Claude Code, and warns
    assert env["CLAUDE_CODE_GATEWAY_HINT_HEADERS"] == "1"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    # One short line on a headless run, and nothing else.
    assert completed.stderr.splitlines() == [
        f"ccop: Claude Code → http://127.0.0.1:{launcher.port} (log {Path(os.environ.get('TMPDIR', '/tmp'))}"
        f"/ccop-{launcher.port}.log) · main qwen3-coder:30b · fast qwen3:8b · window 65536"
    ]
    assert completed.stdout == ""
    assert port_is_free(launcher.port)  # the launcher stopped the proxy it started


def test_reuses_a_running_proxy(launcher: Launcher, ollama: OllamaDouble, tmp_path: Path) -> None:
    proxy = start_proxy(ollama.url, tmp_path)
    launcher.port = proxy.port
    try:
        completed = launcher.run()
        assert completed.returncode == 7, completed.stderr
        assert "(running)" in completed.stderr
        assert launcher.record()["health"] == 200
        assert proxy.process.poll() is None  # not the launcher's to stop
    finally:
        proxy.stop()


def test_refuses_a_running_proxy_with_another_window(launcher: Launcher, ollama: OllamaDouble, tmp_path: Path) -> None:
    proxy = start_proxy(ollama.url, tmp_path, "--num-ctx", "32768")
    launcher.port = proxy.port
    try:
        completed = launcher.run()
        assert completed.returncode == 1
        assert "num_ctx 32768 instead of None" in completed.stderr and "--port" in completed.stderr
        assert not launcher.ran_claude  # Claude Code would be told a window the proxy does not send
    finally:
        proxy.stop()


def test_print_env_follows_the_model(launcher: Launcher) -> None:
    completed = launcher.run("--print-env", "--model", "gemma2")
    assert completed.returncode == 0
    lines = completed.stdout.splitlines()
    assert "export CLAUDE_CODE_MAX_CONTEXT_TOKENS=8192" in lines  # gemma2 was trained for 8192
    assert "export ANTHROPIC_MODEL=gemma2" in lines
    assert "export ANTHROPIC_API_KEY=''" in lines
    assert "export CLAUDE_CODE_GATEWAY_HINT_HEADERS=1" in lines
    assert all(line.startswith("export ") for line in lines)
    assert not launcher.ran_claude


def test_without_claude_says_how_to_install_it(launcher: Launcher, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    completed = launcher.run("-p", "hi", PATH=str(empty))
    assert completed.returncode == 127
    assert "npm install -g @anthropic-ai/claude-code" in completed.stderr


# -- pre-flight checks --------------------------------------------------------------------------------------------


def test_ollama_down_stops_before_claude_starts(launcher: Launcher) -> None:
    completed = launcher.run("-p", "hi", url=f"http://127.0.0.1:{free_port()}")
    assert completed.returncode == 1
    assert "cannot start Claude Code: Ollama is not reachable" in completed.stderr
    assert "fix: start it with `ollama serve`" in completed.stderr
    assert not launcher.ran_claude
    assert port_is_free(launcher.port)  # no proxy left behind


def test_missing_model_stops_before_claude_starts(launcher: Launcher) -> None:
    completed = launcher.run("--model", "ghost:7b", "-p", "hi")
    assert completed.returncode == 1
    assert "default model ghost:7b: not installed" in completed.stderr
    assert "fix: ollama pull ghost:7b" in completed.stderr
    assert not launcher.ran_claude


def test_missing_small_model_is_checked_too(launcher: Launcher) -> None:
    completed = launcher.run("--small-model", "ghost:1b", "-p", "hi")
    assert completed.returncode == 1
    assert "fast model ghost:1b: not installed" in completed.stderr
    assert not launcher.ran_claude


def test_model_without_tools_stops_before_claude_starts(launcher: Launcher) -> None:
    completed = launcher.run("--model", "llava", "-p", "hi")
    assert completed.returncode == 1
    assert "cannot call tools" in completed.stderr and "fix: map it to a model with tools" in completed.stderr
    assert not launcher.ran_claude


def test_skip_checks_starts_anyway(launcher: Launcher) -> None:
    completed = launcher.run("--skip-checks", "--model", "ghost:7b", "-p", "hi")
    assert completed.returncode == 7
    assert "not installed" in completed.stderr  # still said
    assert launcher.record()["env"]["ANTHROPIC_MODEL"] == "ghost:7b"


def test_a_window_below_the_floor_is_said_once(launcher: Launcher) -> None:
    completed = launcher.run("--model", "qwen3:8b", "-p", "hi")  # trained for 40960
    assert completed.returncode == 7, completed.stderr
    notes = [line for line in completed.stderr.splitlines() if "below the 65536" in line]
    assert len(notes) == 1, completed.stderr
    assert "ccop: note: default model qwen3:8b: a context of 40960 tokens" in notes[0]
    assert "fix: use a model trained for 65536 tokens or more, e.g. llama3.1" in completed.stderr
    assert launcher.record()["env"]["CLAUDE_CODE_MAX_CONTEXT_TOKENS"] == "40960"


def test_num_ctx_reaches_the_proxy_and_claude_code(launcher: Launcher, ollama: OllamaDouble) -> None:
    ollama.add_model(ModelSpec("big:32b", context_length=131072))
    completed = launcher.run("--model", "big:32b", "--num-ctx=98304", "-p", "hi")
    assert completed.returncode == 7, completed.stderr
    assert launcher.record()["env"]["CLAUDE_CODE_MAX_CONTEXT_TOKENS"] == "98304"
    assert "window 98304" in completed.stderr
    assert "note" not in completed.stderr


# -- arguments ------------------------------------------------------------------------------------------------


def test_launcher_options_and_claude_arguments(launcher: Launcher) -> None:
    completed = launcher.run("--model", "qwen3:8b", "-p", "hi", "--continue", "--", "--model", "sonnet", "-d")
    assert completed.returncode == 7, completed.stderr
    seen = launcher.record()
    assert seen["env"]["ANTHROPIC_MODEL"] == "qwen3:8b"
    # After `--` everything is Claude Code's, its own --model and -d included; the `--` itself is not passed.
    assert seen["args"] == ["--permission-mode", "acceptEdits", "-p", "hi", "--continue", "--model", "sonnet", "-d"]


def test_double_dash_first_still_runs_print_mode(launcher: Launcher) -> None:
    completed = launcher.run("--", "-p", "hi")
    assert completed.returncode == 7, completed.stderr
    assert launcher.record()["args"][-2:] == ["-p", "hi"]


def test_resume_passes_through(launcher: Launcher) -> None:
    completed = launcher.run("--resume", "5f3c2b7e-0000-4000-8000-000000000000")
    assert completed.returncode == 7, completed.stderr
    assert launcher.record()["args"][-2:] == ["--resume", "5f3c2b7e-0000-4000-8000-000000000000"]


def test_the_users_permission_mode_wins(launcher: Launcher) -> None:
    completed = launcher.run("--permission-mode", "auto", "-p", "hi")
    assert completed.returncode == 7
    assert launcher.record()["args"] == ["--permission-mode", "auto", "-p", "hi"]


def test_a_default_mode_in_claude_settings_wins(launcher: Launcher) -> None:
    settings = launcher.cwd / ".claude" / "settings.json"
    settings.parent.mkdir()
    settings.write_text(json.dumps({"permissions": {"defaultMode": "auto"}}))
    completed = launcher.run("-p", "hi")
    assert completed.returncode == 7
    assert launcher.record()["args"] == ["-p", "hi"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-d", "qwen3:8b"], "-d is ambiguous here: use --model MODEL"),
        (["--model"], "--model needs a value"),
        (["--num-ctx", "lots"], "--num-ctx takes a whole number"),
        (["--port", "70000"], "--port takes a whole number between 1 and 65535"),
        (["--print-env=yes"], "--print-env takes no value"),
    ],
)
def test_bad_launcher_arguments(launcher: Launcher, args: list[str], message: str) -> None:
    completed = launcher.run(*args)
    assert completed.returncode == 2
    assert message in completed.stderr and "ccop claude --help" in completed.stderr
    assert not launcher.ran_claude


def test_help_is_the_launchers(launcher: Launcher) -> None:
    completed = launcher.run("--help")
    assert completed.returncode == 0
    assert "usage: ccop claude" in completed.stdout and "ccop claude -- --help" in completed.stdout
    assert not launcher.ran_claude


def test_parse_keeps_claude_arguments_in_order() -> None:
    parsed = parse_launch_args(["-p", "x", "--port", "4000", "--verbose", "--model=m:1", "--", "--port", "5"])
    assert parsed.flags == {"port": 4000, "default_model": "m:1"}
    assert parsed.claude_args == ["-p", "x", "--verbose", "--port", "5"]
    assert parsed.headless
    with pytest.raises(LaunchUsageError):
        parse_launch_args(["--ollama-url"])
