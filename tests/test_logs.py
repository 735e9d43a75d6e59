"""Logs: the start and end line of a request, the model-loading line, JSON lines, levels, the log file and its
rotation, --quiet, and prompt text only at debug level. Through the real proxy, except the handler's rotation and
the JSON formatter's details, which are checked on the objects themselves."""

from __future__ import annotations

import logging
import logging.handlers
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ccop.logs import LOG_FILE_BACKUPS, LOG_FILE_MAX_BYTES, LOG_VALUE_LIMIT, JsonFormatter, log_handler
from ccop.settings import ConfigError, Settings
from conftest import ProxyProcess, Spawn, ccop_command, free_port
from ollama_double import OllamaDouble, Reply

PROMPT = "PROMPT-TEXT-7f3a never to be logged below debug"
SESSION = "session-4b1d"


def ask(proxy: ProxyProcess, *, stream: bool = False, thinking: bool = False) -> httpx.Response:
    body: dict[str, Any] = {
        "model": "claude-sonnet-5-5",
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    if thinking:
        body["thinking"] = {"type": "enabled", "budget_tokens": 1024}
    headers = {"x-claude-code-session-id": SESSION, "x-claude-code-request-class": "main"}
    response = httpx.post(f"{proxy.url}/v1/messages", json=body, headers=headers, trust_env=False, timeout=30.0)
    assert response.status_code == 200, response.text
    return response


def wait_for(read: Callable[[], str], wanted: str) -> str:
    """The text `read` returns once it holds `wanted` (lines are written just after the answer left)."""
    deadline = time.monotonic() + 10
    while wanted not in (text := read()):
        assert time.monotonic() < deadline, f"{wanted!r} never appeared in:\n{text}"
        time.sleep(0.05)
    return text


def json_lines(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


# -- through the proxy ---------------------------------------------------------------------------------------------


def test_json_lines_in_the_log_file_carry_the_request_and_session(
    ollama: OllamaDouble, spawn: Spawn, tmp_path: Path
) -> None:
    log_file = tmp_path / "ccop.jsonl"
    proxy = spawn("--log-format", "json", "--log-file", str(log_file))
    ollama.enqueue(Reply(content="Hi!"))
    request_id = ask(proxy).headers["request-id"]
    text = wait_for(log_file.read_text, f"{request_id} POST /v1/messages 200")
    lines = json_lines(text)  # every line is one JSON object
    for line in lines:
        assert set(line) == {"timestamp", "severity", "body", "attributes"}, line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["timestamp"]), line
        assert isinstance(line["attributes"]["pid"], int) and line["attributes"]["logger"]
    mine = [line for line in lines if line["attributes"].get("request_id") == request_id]
    start = next(line for line in mine if " start " in line["body"])
    end = next(line for line in mine if line["attributes"]["logger"] == "ccop.access")
    assert mines_before(mine, start, end)
    for line in (start, end):
        assert line["severity"] == "INFO"
        assert line["attributes"]["session_id"] == SESSION
        assert line["attributes"]["request_class"] == "main"
        assert line["attributes"]["model"] == "claude-sonnet-5-5"
        assert line["attributes"]["ollama_model"] == "llama3.1"
    assert start["attributes"]["prompt_tokens"] > 0
    assert start["attributes"]["stream"] is False
    assert end["attributes"]["status"] == 200
    assert end["attributes"]["path"] == "/v1/messages"
    assert isinstance(end["attributes"]["duration_ms"], int)
    assert PROMPT not in text and "Hi!" not in text
    # The terminal got the banner and nothing of the log.
    assert "listening on" in proxy.log() and request_id not in proxy.log()


def mines_before(lines: list[dict[str, Any]], first: dict[str, Any], then: dict[str, Any]) -> bool:
    return lines.index(first) < lines.index(then)


def test_a_model_load_is_told_with_its_wait(ollama: OllamaDouble, spawn: Spawn) -> None:
    proxy = spawn()
    ollama.load_seconds = 0.6  # over the header grace (0.25 s): the head waits for the load
    try:
        ollama.enqueue(Reply(content="loaded now"))
        first = ask(proxy, stream=True).headers["request-id"]
    finally:
        ollama.load_seconds = 0.0
    text = wait_for(proxy.log, f"{first} POST /v1/messages 200")
    assert f"{first} waiting for Ollama: llama3.1 is not loaded, Ollama is loading it" in text
    answered = re.search(rf"{first} Ollama answered after (\d+\.\d) s; llama3.1 was loading", text)
    assert answered is not None, text
    assert float(answered[1]) >= 0.5
    # Loaded now: the next request says nothing about loading.
    ollama.enqueue(Reply(content="again"))
    second = ask(proxy, stream=True).headers["request-id"]
    text = wait_for(proxy.log, f"{second} POST /v1/messages 200")
    assert f"{second} start class=main session={SESSION} model=claude-sonnet-5-5->llama3.1" in text
    assert f"{second} waiting" not in text and f"{second} Ollama answered" not in text


def test_warning_level_hides_the_request_lines(ollama: OllamaDouble, spawn: Spawn) -> None:
    proxy = spawn("--log-level", "warning")
    ollama.enqueue(Reply(content="Hi!"))
    request_id = ask(proxy, thinking=True).headers["request-id"]
    # A warning still shows (thinking asked of a model that cannot think is dropped, and said so)…
    text = wait_for(proxy.log, f"{request_id} thinking dropped")
    # …but neither the start nor the end line, which come before and after it.
    assert f"{request_id} start" not in text and f"{request_id} POST" not in text
    assert "listening on" in text


def test_quiet_shows_warnings_only_and_no_banner(ollama: OllamaDouble, spawn: Spawn) -> None:
    proxy = spawn("--quiet")
    ollama.enqueue(Reply(content="Hi!"))
    request_id = ask(proxy, thinking=True).headers["request-id"]
    text = wait_for(proxy.log, f"{request_id} thinking dropped")
    assert "listening on" not in text and "default model" not in text  # neither the banner nor the summary
    assert f"{request_id} POST" not in text and PROMPT not in text


def test_prompt_text_only_at_debug_level(ollama: OllamaDouble, spawn: Spawn, tmp_path: Path) -> None:
    info = spawn()
    ollama.enqueue(Reply(content="Hi!"))
    request_id = ask(info).headers["request-id"]
    assert PROMPT not in wait_for(info.log, f"{request_id} POST /v1/messages 200")
    log_file = tmp_path / "debug.jsonl"
    debug = spawn("--log-level", "debug", "--log-format", "json", "--log-file", str(log_file))
    ollama.enqueue(Reply(content="Hi!"))
    request_id = ask(debug).headers["request-id"]
    lines = json_lines(wait_for(log_file.read_text, f"{request_id} POST /v1/messages 200"))
    assert any(PROMPT in line["body"] for line in lines if line["severity"] == "DEBUG")
    # Granian's own records (shown from debug on) take the same format and file.
    assert any(line["attributes"]["logger"] == "_granian" for line in lines), lines


def test_an_unwritable_log_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = subprocess.run(
        [*ccop_command(), "--port", str(free_port()), "--log-file", str(tmp_path / "missing" / "ccop.log")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "cannot write the log file" in result.stderr and "Traceback" not in result.stderr


# -- the settings --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "threshold"),
    [
        (Settings(), "info"),
        (Settings(log_level="error"), "error"),
        (Settings(verbose=True), "debug"),  # --verbose is --log-level debug
        (Settings(quiet=True), "warning"),
        (Settings(quiet=True, log_level="debug"), "warning"),  # quiet means warnings and errors only
        (Settings(quiet=True, log_level="error"), "error"),
    ],
)
def test_the_level_logs_are_written_from(settings: Settings, threshold: str) -> None:
    assert settings.log_threshold == threshold


def test_log_settings_from_the_environment_and_their_checks() -> None:
    env = {"CCOP_LOG_LEVEL": "warning", "CCOP_LOG_FORMAT": "json", "CCOP_LOG_FILE": "/tmp/x.log", "CCOP_QUIET": "1"}
    settings = Settings.resolve({}, env, cwd=Path("/nonexistent"))
    assert (settings.log_level, settings.log_format, settings.log_file, settings.quiet) == (
        "warning",
        "json",
        "/tmp/x.log",
        True,
    )
    with pytest.raises(ConfigError, match="CCOP_LOG_LEVEL: expected one of debug, info, warning, error"):
        Settings.resolve({}, {"CCOP_LOG_LEVEL": "loud"}, cwd=Path("/nonexistent"))
    with pytest.raises(ConfigError, match="CCOP_LOG_FORMAT: expected one of text, json"):
        Settings.resolve({}, {"CCOP_LOG_FORMAT": "xml"}, cwd=Path("/nonexistent"))


# -- the handler and the formatter ---------------------------------------------------------------------------------


def record(message: str, *args: object, level: int = logging.INFO, **extra: Any) -> logging.LogRecord:
    made = logging.LogRecord("ccop.test", level, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_the_log_file_rotates_by_size_and_keeps_five(tmp_path: Path) -> None:
    path = tmp_path / "ccop.log"
    handler = log_handler("json", str(path))
    try:
        assert isinstance(handler, logging.handlers.RotatingFileHandler)
        assert (handler.maxBytes, handler.backupCount) == (LOG_FILE_MAX_BYTES, LOG_FILE_BACKUPS) == (10 << 20, 5)
        handler.maxBytes = 400  # the configured size, made small enough to pass in a test
        for number in range(40):
            handler.handle(record("line %d", number))
    finally:
        handler.close()
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == ["ccop.log", *(f"ccop.log.{n}" for n in range(1, 6))]
    newest = json_lines(path.read_text())
    assert newest[-1]["body"] == "line 39"
    assert all(p.stat().st_size <= 400 for p in tmp_path.iterdir())


def test_without_a_file_the_handler_writes_to_standard_error() -> None:
    handler = log_handler()
    assert isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr


def test_json_lines_escape_what_text_lines_escape_and_cut_long_values() -> None:
    handler = log_handler("json")
    made = record("model %s", "evil\nINFO forged line\x1b[2J", model="x" * 5000)
    assert handler.filter(made)
    line = handler.format(made)
    assert "\n" not in line and "\x1b" not in line  # one record, one line, no terminal control
    parsed = orjson.loads(line)
    assert parsed["body"] == "model evil\nINFO forged line\x1b[2J"  # JSON carries the text exactly
    assert parsed["attributes"]["model"].startswith("x" * LOG_VALUE_LIMIT + "…[4000 more characters]")
    text_handler = log_handler("text")
    made = record("model %s", "evil\nINFO forged line")
    assert text_handler.filter(made)
    assert "evil\\x0aINFO forged line" in text_handler.format(made)


def test_json_severity_names_and_exceptions() -> None:
    formatter = JsonFormatter()
    assert orjson.loads(formatter.format(record("careful", level=logging.WARNING)))["severity"] == "WARN"
    try:
        raise ValueError("broken")
    except ValueError:
        failed = record("it failed", level=logging.ERROR)
        failed.exc_info = sys.exc_info()
    parsed = orjson.loads(formatter.format(failed))
    assert parsed["severity"] == "ERROR"
    assert parsed["attributes"]["exception.type"] == "ValueError"
    assert parsed["attributes"]["exception.message"] == "broken"
    assert "Traceback" in parsed["attributes"]["exception.stacktrace"]
