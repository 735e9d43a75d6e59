"""The real Claude Code CLI, headless, through a real `ccop`, against the Ollama double; and the `ccop claude` launcher.

The CLI is the pinned npm package in `tests/claude-code/` (the README's test command installs it). Without it these
tests are skipped with a loud reason; CI sets CCOP_REQUIRE_CLAUDE=1 so that a missing CLI fails instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ProxyProcess, start_proxy
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
    assert chat["options"]["num_ctx"] == 65536  # the Claude Code floor; llama3.1 was trained for 131072
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
    body.update(stream=False, max_tokens=128000)
    ollama.enqueue(Reply(content="fallback answer"))
    response = httpx.post(f"{cc_proxy.url}/v1/messages?beta=true", json=body, timeout=30, trust_env=False)
    assert response.status_code == 200
    assert response.json()["content"] == [{"type": "text", "text": "fallback answer"}]
    # 128000 output tokens cannot fit a 65536-token window: num_predict is clamped to it.
    assert ollama.chat_requests()[-1]["options"]["num_predict"] == 65536


def test_max_tokens_only_when_the_clients_limit_is_reached(cc_proxy: ProxyProcess, ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(content="long", done_reason="length", eval_count=65536))
    body = {"model": "llama3.1", "max_tokens": 128000, "messages": [{"role": "user", "content": "go"}]}
    response = httpx.post(f"{cc_proxy.url}/v1/messages", json=body, timeout=30, trust_env=False)
    # The clamped num_predict (the window) ran out, not the client's 128000: no false "continue" loop.
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
