"""Claude Code's interactive TUI, in a real pseudo-terminal, as a new user sees it on the first run.

A fresh HOME means the whole first-run path: theme, security notes, trusting the folder, then the prompt. The
screen is read through a terminal emulator (tests/terminal.py), so the assertions are about what a person sees.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import ProxyProcess, ccop_command, free_port, start_proxy
from ollama_double import OllamaDouble, Reply, tool_call
from terminal import Terminal
from test_claude_code import claude_bin  # noqa: F401  (fixture)
from test_launcher import RECORDER

README = Path(__file__).parent.parent / "README.md"
MAIN_MODEL = "qwen3-coder:30b"
ANSWER = "Hello from the local model."
DOWN, ENTER = "\x1b[B", "\r"
# Not a file edit, so "accept edits" mode (which also lets rm, mkdir, mv … in the project run) must ask first.
PUSH = "git push --force origin main"


def clean_environment(**extra: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("CCOP_", "ANTHROPIC_", "CLAUDE_"))}
    environment.update(extra)
    return environment


def pass_first_run(terminal: Terminal) -> None:
    """Claude Code's first-run screens in a fresh HOME: text style, security notes, trusting the folder."""
    terminal.wait_for("Choose the text style", timeout=60)
    terminal.send(ENTER)
    terminal.wait_for("Press Enter to continue")
    terminal.send(ENTER)
    terminal.wait_for("Yes, I trust this folder")
    terminal.send(DOWN)
    terminal.pump(0.5)
    terminal.send(ENTER)
    terminal.wait_for("accept edits on")  # the prompt, in the permission mode asked for


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, Path]:
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    return home, work


@pytest.fixture
def running_proxy(ollama: OllamaDouble, tmp_path: Path) -> Iterator[ProxyProcess]:
    proxy = start_proxy(ollama.url, tmp_path, "--default-model", MAIN_MODEL)
    yield proxy
    proxy.stop()


def by_hand_recipe(port: int) -> str:
    """The README's by-hand set-up, pointed at the test's proxy."""
    text = README.read_text()
    block = text.split("<!-- by-hand-start -->", 1)[1].split("<!-- by-hand-end -->", 1)[0]
    script = block.split("```bash", 1)[1].split("```", 1)[0]
    assert "127.0.0.1:3000" in script
    return script.replace("127.0.0.1:3000", f"127.0.0.1:{port}")


def test_the_readme_by_hand_recipe_gives_a_working_first_session(
    claude_bin: str,  # noqa: F811
    ollama: OllamaDouble,
    running_proxy: ProxyProcess,
    project: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    ollama.set_responder(lambda request: Reply(content=ANSWER))
    home, work = project
    script = tmp_path / "by-hand.sh"
    script.write_text(by_hand_recipe(running_proxy.port))
    # A user's own key in the environment must not be what Claude Code sends (the recipe empties it).
    environment = clean_environment(
        HOME=str(home),
        PATH=f"{Path(claude_bin).parent}{os.pathsep}{os.environ['PATH']}",
        ANTHROPIC_API_KEY="sk-ant-the-users-own-key",
    )
    terminal = Terminal("bash", [str(script)], env=environment, cwd=work)
    try:
        pass_first_run(terminal)
        terminal.type_line("say hello")
        terminal.wait_for(ANSWER, timeout=60)
        assert "API key" not in terminal.transcript  # no "use this API key?" question
        terminal.type_line("/context")
        terminal.wait_for("/65.5k tokens")
    finally:
        terminal.close()
    first = ollama.chat_requests()[0]
    assert first["model"] == MAIN_MODEL and first["options"]["num_ctx"] == 65536
    assert "class=main" in running_proxy.log()


def test_ccop_claude_interactive_session(
    claude_bin: str,  # noqa: F811
    ollama: OllamaDouble,
    project: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """`ccop claude` on a terminal: the first run, an answer, the real window in /context, and a risky command
    that asks for approval the normal way (never auto mode's "can't check actions" notice)."""
    home, work = project

    def respond(request: dict[str, Any]) -> Reply:
        """Answer the greeting; for the push, ask to run the command once, then report on the result."""
        messages = request["messages"]
        asked = [i for i, message in enumerate(messages) if "push my work" in str(message.get("content"))]
        if not asked:
            return Reply(content=ANSWER)
        if any(message["role"] == "tool" for message in messages[asked[-1] :]):
            return Reply(content="Done.")
        return Reply(content="Pushing it.", tool_calls=[tool_call("Bash", {"command": PUSH})])

    ollama.set_responder(respond)
    port = free_port()
    environment = clean_environment(
        HOME=str(home),
        TMPDIR=str(tmp_path),
        PATH=f"{Path(claude_bin).parent}{os.pathsep}{os.environ['PATH']}",
        PORT=str(port),
        OLLAMA_URL=ollama.url,
        DEFAULT_MODEL=MAIN_MODEL,
    )
    command, *args = ccop_command()
    terminal = Terminal(command, [*args, "claude"], env=environment, cwd=work)
    try:
        pass_first_run(terminal)
        assert f"ccop: Claude Code → http://127.0.0.1:{port}" in terminal.transcript
        terminal.type_line("say hello")
        terminal.wait_for(ANSWER, timeout=60)
        terminal.type_line("/context")
        screen = terminal.wait_for("/65.5k tokens")
        assert screen
        terminal.type_line("push my work")
        terminal.wait_for("Do you want to proceed?", timeout=60)
        assert PUSH in terminal.text()
        assert "Auto mode" not in terminal.transcript
        # Nothing ran without the user's yes: no tool result has gone back to the model.
        assert not any(message["role"] == "tool" for message in ollama.chat_requests()[-1]["messages"])
    finally:
        terminal.close()


def test_without_a_model_the_launcher_offers_the_installed_ones(
    ollama: OllamaDouble, project: tuple[Path, Path], tmp_path: Path
) -> None:
    """No model configured, on a terminal: the tool-capable models are listed with their context, one is chosen."""
    home, work = project
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "record.json"
    claude = bin_dir / "claude"
    claude.write_text(f"#!{sys.executable}\n" + RECORDER.format(record=str(record)))
    claude.chmod(0o755)
    environment = clean_environment(
        HOME=str(home),
        TMPDIR=str(tmp_path),
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        PORT=str(free_port()),
        OLLAMA_URL=ollama.url,
    )
    command, *args = ccop_command()
    terminal = Terminal(command, [*args, "claude"], env=environment, cwd=work)
    try:
        terminal.wait_for("Choose a model")
        listed = re.findall(r"^\s+(\d+)\. (\S+)\s+\(context (\d+)\)", terminal.text(), re.MULTILINE)
        names = [name for _, name, _ in listed]
        assert "qwen3-coder:30b" in names and "qwen3:8b" in names
        assert "llava:latest" not in names and "gemma2:latest" not in names  # no tools
        number = next(number for number, name, _ in listed if name == "qwen3-coder:30b")
        assert dict((name, context) for _, name, context in listed)["qwen3-coder:30b"] == "262144"
        terminal.type_line(number)
        terminal.wait_for("Using qwen3-coder:30b; next time: ccop claude --model qwen3-coder:30b")
        assert terminal.wait_exit() == 7  # the stand-in claude's exit code, passed on
    finally:
        terminal.close()
    seen = json.loads(record.read_text())
    assert seen["env"]["ANTHROPIC_MODEL"] == "qwen3-coder:30b"
    assert seen["env"]["CLAUDE_CODE_MAX_CONTEXT_TOKENS"] == "65536"
