"""The command line of `ccop claude`: a few long options of the launcher's own, everything else for Claude Code.

`ccop claude --model qwen3-coder:30b -p "hi"` takes `--model` for itself and hands `-p "hi"` to Claude Code unchanged;
after a `--` everything goes to Claude Code, so `ccop claude -- --model sonnet` reaches Claude Code's own `--model`.
The launcher's options are long only: Claude Code owns the short ones (`-p`, `-c`, `-r`, `-d`, …).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LAUNCHER_HELP", "LaunchArgs", "LaunchUsageError", "parse_launch_args", "permission_mode_chosen"]

# Launcher option → (settings flag name or None for launcher-only options, takes a value).
_OPTIONS: dict[str, tuple[str | None, bool]] = {
    "--model": ("default_model", True),
    "--default-model": ("default_model", True),
    "--small-model": (None, True),
    "--num-ctx": ("num_ctx", True),
    "--port": ("port", True),
    "--ollama-url": ("ollama_urls", True),
    "--config": (None, True),
    "--print-env": (None, False),
    "--skip-checks": (None, False),
    "--help": (None, False),
}

LAUNCHER_HELP = """\
usage: ccop claude [launcher options] [Claude Code arguments…] [-- Claude Code arguments…]

Runs Claude Code on your local Ollama models: checks Ollama and the models first, starts the proxy (or reuses one
already running on the port), runs `claude` with everything set, and stops the proxy again when Claude Code exits.

launcher options (everything else, and everything after `--`, goes to Claude Code unchanged):
  --model MODEL        the Ollama model for the main loop and subagents (alias --default-model);
                       with none configured and a terminal, you are offered the installed models to choose from
  --small-model MODEL  the Ollama model for quick background work (titles, summaries); default: the model map's
                       haiku target, else the main model
  --num-ctx TOKENS     the context window, for the proxy and for Claude Code alike (default: 65536, or what the
                       model was trained for if less)
  --port PORT          the proxy's port (default 3000)
  --ollama-url URL     Ollama's base URL (default http://localhost:11434); repeat it for several Ollama servers
  --config FILE        the proxy's config file (default ./proxy.config.json)
  --print-env          print the environment as export lines instead of running Claude Code
  --skip-checks        start Claude Code even when the pre-flight checks fail
  --help               this help; Claude Code's own: ccop claude -- --help

Examples:
  ccop claude --model qwen3-coder:30b
  ccop claude -p "explain this repo" --output-format json
  ccop claude --resume 5f3c…        (the id Claude Code prints at exit)
"""


class LaunchUsageError(ValueError):
    """The launcher's own arguments are wrong; the message says how to write them."""


@dataclass
class LaunchArgs:
    # Settings layers from the launcher's options, in Settings.resolve's flag form (None: not given).
    flags: dict[str, Any] = field(default_factory=dict)
    small_model: str | None = None
    config: str | None = None
    print_env: bool = False
    skip_checks: bool = False
    help: bool = False
    claude_args: list[str] = field(default_factory=list)

    @property
    def headless(self) -> bool:
        """Claude Code's print mode: no terminal conversation, only the answer on stdout."""
        return any(arg in ("-p", "--print") for arg in self.claude_args)


def _number(option: str, raw: str, low: int, high: int | None = None) -> int:
    if not raw.isdigit() or int(raw) < low or (high is not None and int(raw) > high):
        limit = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise LaunchUsageError(f"{option} takes a whole number {limit}, got {raw!r}")
    return int(raw)


def _store(args: LaunchArgs, option: str, value: str | None) -> None:
    target, _ = _OPTIONS[option]
    if option == "--print-env":
        args.print_env = True
    elif option == "--skip-checks":
        args.skip_checks = True
    elif option == "--help":
        args.help = True
    elif not value:
        raise LaunchUsageError(f"{option} needs a value, e.g. {option}={_EXAMPLES[option]}")
    elif option == "--small-model":
        args.small_model = value
    elif option == "--config":
        args.config = value
    elif option == "--num-ctx":
        args.flags["num_ctx"] = _number(option, value, 0)
    elif option == "--port":
        args.flags["port"] = _number(option, value, 1, 65535)
    elif option == "--ollama-url":
        args.flags["ollama_urls"] = (*args.flags.get("ollama_urls", ()), value)
    else:
        assert target is not None
        args.flags[target] = value


_EXAMPLES = {
    "--model": "qwen3-coder:30b",
    "--default-model": "qwen3-coder:30b",
    "--small-model": "qwen3:8b",
    "--num-ctx": "65536",
    "--port": "3000",
    "--ollama-url": "http://localhost:11434",
    "--config": "proxy.config.json",
}


def parse_launch_args(argv: Sequence[str]) -> LaunchArgs:
    """Split `ccop claude`'s arguments into the launcher's options and Claude Code's arguments (order kept)."""
    args = LaunchArgs()
    position = 0
    while position < len(argv):
        arg = argv[position]
        position += 1
        if arg == "--":
            args.claude_args += argv[position:]
            break
        if arg == "-d":
            # `ccop -d MODEL` is the proxy's --default-model; to Claude Code `-d` is --debug. Guessing would be silent.
            raise LaunchUsageError(
                "-d is ambiguous here: use --model MODEL to choose the model, or `ccop claude -- -d` for Claude "
                "Code's --debug"
            )
        name, equals, inline = arg.partition("=")
        if name not in _OPTIONS:
            args.claude_args.append(arg)
            continue
        takes_value = _OPTIONS[name][1]
        if not takes_value:
            if equals:
                raise LaunchUsageError(f"{name} takes no value")
            _store(args, name, None)
        elif equals:
            _store(args, name, inline)
        elif position < len(argv):
            _store(args, name, argv[position])
            position += 1
        else:
            _store(args, name, None)
    return args


def _settings_files(cwd: Path, environ: Mapping[str, str]) -> list[Path]:
    user_dir = Path(environ["CLAUDE_CONFIG_DIR"]) if environ.get("CLAUDE_CONFIG_DIR") else Path.home() / ".claude"
    return [
        user_dir / "settings.json",
        cwd / ".claude" / "settings.json",
        cwd / ".claude" / "settings.local.json",
    ]


def permission_mode_chosen(claude_args: Sequence[str], cwd: Path, environ: Mapping[str, str] = os.environ) -> bool:
    """Has the user chosen Claude Code's permission mode, on the command line or in a settings file?"""
    chosen_on_command_line = any(
        arg.partition("=")[0]
        in ("--permission-mode", "--dangerously-skip-permissions", "--allow-dangerously-skip-permissions")
        for arg in claude_args
    )
    if chosen_on_command_line:
        return True
    for path in _settings_files(cwd, environ):
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        permissions = document.get("permissions") if isinstance(document, dict) else None
        if isinstance(permissions, dict) and permissions.get("defaultMode"):
            return True
    return False
