"""A whole Claude Code session on a local window, with the real CLI: `ccop claude` headless, turn after turn.

What is checked is what a user lives with: Claude Code compacts only when the conversation is really full, a
conversation that outgrows the window is summarised and goes on (whether Claude Code notices first or the proxy's
`prompt is too long` tells it), the window Claude Code reports is the num_ctx Ollama gets, and `--resume` carries a
session on. Which requests were compactions is read from the proxy's log, where each request carries the class
Claude Code gave it (`x-claude-code-request-class`).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ProxyProcess, ccop_command, start_proxy
from ollama_double import OllamaDouble, Reply, tool_call
from test_claude_code import claude_bin  # noqa: F401  (fixture)

MAIN_MODEL = "qwen3-coder:30b"  # trained for 262144 tokens: the launcher gives it the 65536 floor
WINDOW = 65536
# The last words of Claude Code 2.1.330's summary instruction, in the compaction request's last user message.
SUMMARY_INSTRUCTION = "Respond with TEXT ONLY"
SUMMARY_TEXT = "The user asked for the part files to be read; all of them were read."
SUMMARY = f"<summary>{SUMMARY_TEXT}</summary>"


class Session:
    """`ccop claude -p … --output-format json` in a fresh HOME and project, with the real CLI first on PATH."""

    def __init__(self, claude: str, ollama: OllamaDouble, proxy: ProxyProcess, root: Path) -> None:
        self.proxy = proxy
        self.home = root / "home"
        self.cwd = root / "work"
        self.home.mkdir()
        self.cwd.mkdir()
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("CCOP_", "ANTHROPIC_", "CLAUDE_"))}
        environment.update(
            HOME=str(self.home),
            PATH=f"{Path(claude).parent}{os.pathsep}{environment.get('PATH', '')}",
            # The launcher finds the proxy this test started (same settings), so one log holds every turn.
            PORT=str(proxy.port),
            OLLAMA_URL=ollama.url,
            DEFAULT_MODEL=MAIN_MODEL,
        )
        self.environment = environment

    def run(self, *args: str) -> dict[str, Any]:
        completed = subprocess.run(
            [*ccop_command(), "claude", *args, "--output-format", "json"],
            cwd=self.cwd,
            env=self.environment,
            capture_output=True,
            text=True,
            timeout=240,
            stdin=subprocess.DEVNULL,
        )
        assert completed.returncode == 0, f"exit {completed.returncode}\n{completed.stderr}\n{completed.stdout}"
        assert "(running)" in completed.stderr  # the launcher reused the test's proxy
        result: dict[str, Any] = json.loads(completed.stdout)
        return result

    def request_classes(self) -> list[tuple[str, str]]:
        """(class, status) of every /v1/messages request the proxy answered, in order."""
        found = []
        for line in self.proxy.log().splitlines():
            if "POST /v1/messages " not in line:
                continue
            fields = line.split("POST /v1/messages ", 1)[1].split()
            status = fields[0]
            label = next((field.split("=", 1)[1] for field in fields if field.startswith("class=")), "-")
            found.append((label, status))
        return found


@pytest.fixture
def session_proxy(ollama: OllamaDouble, tmp_path: Path) -> Iterator[ProxyProcess]:
    # The settings the launcher would start the proxy with: no flags beyond the default model.
    proxy = start_proxy(ollama.url, tmp_path, "--default-model", MAIN_MODEL)
    yield proxy
    proxy.stop()


@pytest.fixture
def session(claude_bin: str, ollama: OllamaDouble, session_proxy: ProxyProcess, tmp_path: Path) -> Session:  # noqa: F811
    return Session(claude_bin, ollama, session_proxy, tmp_path)


def is_compaction(request: dict[str, Any]) -> bool:
    return SUMMARY_INSTRUCTION in json.dumps(request["messages"][-3:])


def write_part_files(directory: Path, count: int) -> list[Path]:
    """Files of ~25k tokens each (what one Read returns at most): `count` of them outgrow a 65536 window."""
    paths = []
    for number in range(count):
        path = directory / f"part{number}.txt"
        path.write_text("".join(f"line {i:05d} of part {number}: the quick brown fox jumps\n" for i in range(1900)))
        paths.append(path)
    return paths


def reading_responder(paths: list[Path]) -> Any:
    """The model reads every part file in one turn, summarises when asked, and otherwise answers in a sentence."""

    def respond(request: dict[str, Any]) -> Reply:
        if is_compaction(request):
            return Reply(content=SUMMARY)
        messages = request["messages"]
        asked = "read the part files" in json.dumps(messages)
        if asked and not any(message["role"] == "tool" for message in messages):
            calls = [tool_call("Read", {"file_path": str(path)}) for path in paths]
            return Reply(content="Reading them.", tool_calls=calls)
        return Reply(content="All the part files are read.")

    return respond


def test_short_turns_never_compact_and_the_window_is_num_ctx(session: Session, ollama: OllamaDouble) -> None:
    """Four short turns (one session, continued) make no compaction request; at 32768 the same turns made six."""
    ollama.set_responder(lambda request: Reply(content="Sure."))
    first = session.run("-p", "hello")
    for prompt in ("and again", "a third time", "a fourth time"):
        later = session.run("--continue", "-p", prompt)
        assert later["session_id"] == first["session_id"] and later["is_error"] is False, later
    classes = session.request_classes()
    assert classes and all(status == "200" for _, status in classes), classes
    assert [label for label, _ in classes if label == "compaction"] == []
    assert not any(is_compaction(request) for request in ollama.chat_requests())
    # The window Claude Code works with (and shows in /context) is exactly what Ollama is asked for.
    assert first["modelUsage"][MAIN_MODEL]["contextWindow"] == WINDOW
    assert {request["options"]["num_ctx"] for request in ollama.chat_requests()} == {WINDOW}


def test_a_conversation_that_outgrows_the_window_is_compacted_and_goes_on(
    session: Session, ollama: OllamaDouble
) -> None:
    """Six 25k-token reads in one turn: Claude Code compacts, the proxy fits that request, and the session goes on."""
    paths = write_part_files(session.cwd, 6)
    ollama.set_responder(reading_responder(paths))
    first = session.run("-p", "read the part files")
    assert first["is_error"] is False and first["result"] == "All the part files are read.", first
    compactions = [status for label, status in session.request_classes() if label == "compaction"]
    assert compactions == ["200"], session.proxy.log()
    assert "compaction request over the 65536-token window: 6 large blocks shortened" in session.proxy.log()
    summarised = next(request for request in ollama.chat_requests() if is_compaction(request))
    # The instruction itself was kept whole, and what was cut says so in place.
    assert "left out by ccop so that the conversation summary fits" in json.dumps(summarised, ensure_ascii=False)
    # The next turn starts from the summary, well inside the window.
    later = session.run("--continue", "-p", "what did you read?")
    assert later["is_error"] is False and later["session_id"] == first["session_id"], later
    last = ollama.chat_requests()[-1]
    assert SUMMARY_TEXT in json.dumps(last["messages"]) and "what did you read?" in json.dumps(last["messages"])


def test_prompt_is_too_long_makes_claude_code_compact(
    claude_bin: str,  # noqa: F811
    ollama: OllamaDouble,
    session_proxy: ProxyProcess,
    tmp_path: Path,
) -> None:
    """Claude Code not told the window (it assumes a million tokens) sends the oversized turn; the proxy's 400 in
    Anthropic's wording makes it compact and retry instead of ending the session."""
    project = tmp_path / "project"
    project.mkdir()
    ollama.set_responder(reading_responder(write_part_files(project, 6)))
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("CCOP_", "ANTHROPIC_", "CLAUDE_"))}
    environment.update(
        HOME=str(tmp_path),
        ANTHROPIC_BASE_URL=session_proxy.url,
        ANTHROPIC_AUTH_TOKEN="ccop",
        ANTHROPIC_MODEL=MAIN_MODEL,
        CLAUDE_CODE_GATEWAY_HINT_HEADERS="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
    )
    completed = subprocess.run(
        [claude_bin, "--permission-mode", "acceptEdits", "-p", "read the part files", "--output-format", "json"],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    result = json.loads(completed.stdout)
    assert result["is_error"] is False and result["result"] == "All the part files are read.", result
    log = session_proxy.log()
    refused = [line for line in log.splitlines() if "POST /v1/messages 400 class=main" in line]
    assert len(refused) == 1 and "(prompt is too long: " in refused[0] and " tokens > 65536 maximum)" in refused[0]
    assert "POST /v1/messages 200 class=compaction" in log


def test_resume_carries_the_session_on(session: Session, ollama: OllamaDouble) -> None:
    ollama.set_responder(lambda request: Reply(content="Noted."))
    first = session.run("-p", "remember the word marmalade")
    resumed = session.run("--resume", first["session_id"], "-p", "which word?")
    assert resumed["is_error"] is False, resumed
    history = json.dumps(ollama.chat_requests()[-1]["messages"])
    assert "remember the word marmalade" in history and "which word?" in history
