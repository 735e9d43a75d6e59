"""The real Claude Code CLI, headless, through a real `ccop`, against the Ollama double; and the `ccop claude` launcher.

The CLI is the pinned npm package in `tests/claude-code/` (the README's test command installs it). Without it these
tests are skipped with a loud reason; CI sets CCOP_REQUIRE_CLAUDE=1 so that a missing CLI fails instead.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ProxyProcess, ccop_command, free_port, start_proxy
from ollama_double import OllamaDouble, Reply, tool_call

PINNED_CLI = Path(__file__).parent / "claude-code" / "node_modules" / ".bin" / "claude"


def find_claude() -> str | None:
    explicit = os.environ.get("CCOP_CLAUDE_BIN")
    if explicit:
        return explicit
    if PINNED_CLI.exists():
        return str(PINNED_CLI)
    return shutil.which("claude")


@pytest.fixture(scope="module")
def claude_bin() -> str:
    found = find_claude()
    if found is None:
        reason = (
            "THE REAL CLAUDE CODE CLI IS NOT INSTALLED, so the end-to-end Claude Code tests did not run. "
            "Install it with `npm install --prefix tests/claude-code` (the README's test command does)."
        )
        if os.environ.get("CCOP_REQUIRE_CLAUDE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


@pytest.fixture(scope="module")
def cc_proxy(ollama: OllamaDouble, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    proxy = start_proxy(ollama.url, tmp_path_factory.mktemp("cc-proxy"), "--default-model", "llama3.1")
    yield proxy
    proxy.stop()


class Claude:
    """Runs `claude -p … --output-format json` in a fresh HOME and working directory."""

    def __init__(self, binary: str, base_url: str, root: Path) -> None:
        self.binary = binary
        self.base_url = base_url
        self.home = root / "home"
        self.cwd = root / "work"
        self.home.mkdir()
        self.cwd.mkdir()

    def environment(self, **extra: str) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "ANTHROPIC_BASE_URL": self.base_url,
            "ANTHROPIC_API_KEY": "sk-ccop-test",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            # Errors are asserted, not waited out: Claude Code would otherwise retry 5xx for minutes.
            "CLAUDE_CODE_MAX_RETRIES": "0",
            **extra,
        }

    def run(self, prompt: str, *args: str) -> dict[str, Any]:
        completed = subprocess.run(
            [self.binary, "-p", prompt, "--output-format", "json", *args],
            cwd=self.cwd,
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=180,
            stdin=subprocess.DEVNULL,
        )
        assert completed.stdout.strip(), f"no output (exit {completed.returncode}):\n{completed.stderr}"
        result: dict[str, Any] = json.loads(completed.stdout)
        result["exit_code"] = completed.returncode
        return result


@pytest.fixture
def claude(claude_bin: str, cc_proxy: ProxyProcess, tmp_path: Path) -> Claude:
    return Claude(claude_bin, cc_proxy.url, tmp_path)


def test_plain_answer(claude: Claude, ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(content="Hello from a local model, through ccop."))
    result = claude.run("say hi")
    assert result["is_error"] is False, result
    assert result["result"] == "Hello from a local model, through ccop."
    chat = ollama.chat_requests()[-1]
    assert chat["model"] == "llama3.1"  # Claude Code's default claude-* model → the default model
    assert chat["think"] is False  # llama3.1 cannot think: adaptive thinking stays off
    assert chat["options"]["num_ctx"] == 32768
    assert chat["truncate"] is False


def test_tool_loop_writes_a_file(claude: Claude, ollama: OllamaDouble) -> None:
    target = claude.cwd / "hello.txt"

    def responder(request: dict[str, Any]) -> Reply:
        if any(message["role"] == "tool" for message in request["messages"]):
            return Reply(content="I wrote hello.txt.")
        call = tool_call("Write", {"file_path": str(target), "content": "written by the local model\nline 2\n"})
        return Reply(content="Writing the file.", tool_calls=[call])

    ollama.set_responder(responder)
    result = claude.run("create hello.txt", "--permission-mode", "acceptEdits")
    assert result["is_error"] is False, result
    assert result["result"] == "I wrote hello.txt."
    assert target.read_text() == "written by the local model\nline 2\n"
    follow_up = ollama.chat_requests()[-1]
    tool_messages = [message for message in follow_up["messages"] if message["role"] == "tool"]
    assert tool_messages and tool_messages[0]["tool_name"] == "Write"


def test_thinking_model(claude: Claude, ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(thinking="Two plus two is four.", content="4"))
    result = claude.run("what is 2+2?", "--model", "qwen3:8b")
    assert result["is_error"] is False, result
    assert result["result"] == "4"
    chat = ollama.chat_requests()[-1]
    assert chat["model"] == "qwen3:8b"  # a name Claude Code does not know passes through
    assert chat["think"] is True  # Claude Code's adaptive thinking, on a model that can think


def test_claude_model_name_goes_to_the_default_model(claude: Claude, ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(content="mapped"))
    result = claude.run("hi", "--model", "claude-haiku-4-5-20251001")
    assert result["result"] == "mapped"
    assert ollama.chat_requests()[-1]["model"] == "llama3.1"


def test_unknown_model_error_reaches_the_user(claude: Claude, ollama: OllamaDouble) -> None:
    result = claude.run("hi", "--model", "ghost-model:1b")
    assert result["is_error"] is True
    assert "ghost-model:1b" in result["result"]
    assert "ollama pull ghost-model:1b" in result["result"]  # the proxy's own message, with the fix
    assert not ollama.chat_requests()


def test_ollama_failure_reaches_the_user(claude: Claude, ollama: OllamaDouble) -> None:
    ollama.enqueue(*[Reply(status=500, error="model runner has unexpectedly stopped") for _ in range(3)])
    result = claude.run("hi")
    assert result["is_error"] is True
    assert "model runner has unexpectedly stopped" in result["result"]


def test_non_streaming_fallback_request(cc_proxy: ProxyProcess, ollama: OllamaDouble) -> None:
    """Claude Code's fallback after a broken stream: the same request with stream:false and max_tokens 64000."""
    body = json.loads((Path(__file__).parent / "data" / "cc2.1.330-print-first-request.json").read_text())["body"]
    body.update(stream=False, max_tokens=64000)
    ollama.enqueue(Reply(content="fallback answer"))
    response = httpx.post(f"{cc_proxy.url}/v1/messages?beta=true", json=body, timeout=30, trust_env=False)
    assert response.status_code == 200
    assert response.json()["content"] == [{"type": "text", "text": "fallback answer"}]
    # 64000 output tokens cannot fit a 32768-token window: num_predict is clamped to it.
    assert ollama.chat_requests()[-1]["options"]["num_predict"] == 32768


def test_max_tokens_only_when_the_clients_limit_is_reached(cc_proxy: ProxyProcess, ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(content="long", done_reason="length", eval_count=32768))
    body = {"model": "llama3.1", "max_tokens": 64000, "messages": [{"role": "user", "content": "go"}]}
    response = httpx.post(f"{cc_proxy.url}/v1/messages", json=body, timeout=30, trust_env=False)
    # The clamped num_predict (the window) ran out, not the client's 64000: no false "continue" loop.
    assert response.json()["stop_reason"] == "model_context_window_exceeded"


@pytest.mark.parametrize(
    "extra",
    [
        {"context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}},
        {"metadata": {"user_id": '{"device_id":"x","session_id":"y"}'}},
        {"safeguards": [{"type": "dangerous_tool_use", "classifier_context": {"cwd": "/x"}}]},
        {"thinking": {"type": "adaptive", "display": "omitted"}, "output_config": {"effort": "medium"}},
        {
            "tools": [
                {"name": "Deferred", "defer_loading": True, "description": "d", "input_schema": {"type": "object"}}
            ]
        },
    ],
)
def test_claude_code_fields_are_accepted(cc_proxy: ProxyProcess, ollama: OllamaDouble, extra: dict[str, Any]) -> None:
    body = {
        "model": "claude-opus-5-5",
        "max_tokens": 128000,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}
        ],
        **extra,
    }
    response = httpx.post(f"{cc_proxy.url}/v1/messages?beta=true", json=body, timeout=30, trust_env=False)
    assert response.status_code == 200, response.text


def test_adaptive_thinking_can_be_switched_off(ollama: OllamaDouble, tmp_path: Path) -> None:
    proxy = start_proxy(ollama.url, tmp_path, "--adaptive-thinking", "off")
    try:
        body = {
            "model": "qwen3:8b",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "hi"}],
            "thinking": {"type": "adaptive"},
        }
        assert httpx.post(f"{proxy.url}/v1/messages", json=body, trust_env=False).status_code == 200
        assert ollama.chat_requests()[-1]["think"] is False
        body["thinking"] = {"type": "enabled", "budget_tokens": 4000}
        assert httpx.post(f"{proxy.url}/v1/messages", json=body, trust_env=False).status_code == 200
        assert ollama.chat_requests()[-1]["think"] is True
    finally:
        proxy.stop()


# -- the launcher ------------------------------------------------------------------------------------------------


def launcher_env(ollama: OllamaDouble, port: int, path: str, **extra: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("CCOP_", "ANTHROPIC_", "CLAUDE_CODE_"))}
    environment.update(
        PORT=str(port),
        OLLAMA_URL=ollama.url,
        DEFAULT_MODEL="qwen3-coder:30b",
        CCOP_MODEL_MAP="claude-haiku-5-5=qwen3:8b,claude-sonnet-5-5=qwen3-coder:30b",
        PATH=path,
    )
    environment.update(extra)
    return environment


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in `claude` that records its arguments and environment, and checks the proxy answers."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "record.json"
    script = bin_dir / "claude"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys, urllib.request\n"
        "health = urllib.request.urlopen(os.environ['ANTHROPIC_BASE_URL'] + '/health').status\n"
        f"json.dump({{'args': sys.argv[1:], 'env': dict(os.environ), 'health': health}}, open({str(record)!r}, 'w'))\n"
        "sys.exit(7)\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return bin_dir, record


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_launcher_starts_the_proxy_runs_claude_and_stops(
    ollama: OllamaDouble, recorder: tuple[Path, Path], tmp_path: Path
) -> None:
    bin_dir, record = recorder
    port = free_port()
    environment = launcher_env(ollama, port, f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    completed = subprocess.run(
        [*ccop_command(), "claude", "-p", "hello world", "--permission-mode", "acceptEdits"],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 7, completed.stderr  # Claude Code's own exit code
    seen = json.loads(record.read_text())
    assert seen["args"] == ["-p", "hello world", "--permission-mode", "acceptEdits"]
    assert seen["health"] == 200  # the proxy was up while Claude Code ran
    env = seen["env"]
    assert env["ANTHROPIC_BASE_URL"] == f"http://127.0.0.1:{port}"
    assert env["ANTHROPIC_AUTH_TOKEN"]
    assert env["ANTHROPIC_MODEL"] == "qwen3-coder:30b"
    assert env["ANTHROPIC_DEFAULT_SONNET_MODEL"] == "qwen3-coder:30b"
    assert env["ANTHROPIC_DEFAULT_OPUS_MODEL"] == "qwen3-coder:30b"
    assert env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "qwen3:8b"
    assert env["ANTHROPIC_SMALL_FAST_MODEL"] == "qwen3:8b"
    assert env["CLAUDE_CODE_SUBAGENT_MODEL"] == "qwen3-coder:30b"
    assert env["CLAUDE_CODE_MAX_CONTEXT_TOKENS"] == "32768"
    assert env["CLAUDE_CODE_AUTO_COMPACT_WINDOW"] == "32768"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert port_is_free(port)  # the launcher stopped the proxy it started


def test_launcher_reuses_a_running_proxy(ollama: OllamaDouble, recorder: tuple[Path, Path], tmp_path: Path) -> None:
    bin_dir, record = recorder
    proxy = start_proxy(ollama.url, tmp_path)
    try:
        environment = launcher_env(ollama, proxy.port, f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        completed = subprocess.run(
            [*ccop_command(), "claude"], env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert completed.returncode == 7
        assert "already running" in completed.stderr
        assert json.loads(record.read_text())["health"] == 200
        assert proxy.process.poll() is None  # not the launcher's to stop
    finally:
        proxy.stop()


def test_launcher_context_follows_the_model(ollama: OllamaDouble, tmp_path: Path) -> None:
    environment = launcher_env(ollama, free_port(), os.environ["PATH"], DEFAULT_MODEL="gemma2")
    completed = subprocess.run(
        [*ccop_command(), "claude", "--print-env"], env=environment, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0
    lines = completed.stdout.splitlines()
    assert "export CLAUDE_CODE_MAX_CONTEXT_TOKENS=8192" in lines  # gemma2 was trained for 8192
    assert "export ANTHROPIC_MODEL=gemma2" in lines
    assert "export ANTHROPIC_API_KEY=''" in lines
    assert all(line.startswith("export ") for line in lines)


def test_launcher_without_claude_says_how_to_install_it(ollama: OllamaDouble, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    environment = launcher_env(ollama, free_port(), str(empty))
    completed = subprocess.run(
        [*ccop_command(), "claude", "-p", "hi"], env=environment, capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 127
    assert "npm install -g @anthropic-ai/claude-code" in completed.stderr


def test_launcher_with_the_real_claude_code(claude_bin: str, ollama: OllamaDouble, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "claude").symlink_to(Path(claude_bin).resolve())
    home = tmp_path / "home"
    home.mkdir()
    environment = launcher_env(ollama, free_port(), f"{bin_dir}{os.pathsep}{os.environ['PATH']}", HOME=str(home))
    ollama.enqueue(Reply(content="launched and answered"))
    completed = subprocess.run(
        [*ccop_command(), "claude", "-p", "say hi", "--output-format", "json"],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert json.loads(completed.stdout)["result"] == "launched and answered"
    assert ollama.chat_requests()[-1]["model"] == "qwen3-coder:30b"
