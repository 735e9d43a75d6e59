"""The `ccop` command line: resolve the settings, print a banner, serve."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import orjson

from ccop import __version__
from ccop.diagnostics import Report, probe_hosts
from ccop.launch_args import LAUNCHER_HELP, LaunchUsageError, parse_launch_args
from ccop.launcher import launch
from ccop.security import is_loopback
from ccop.settings import (
    CONFIG_FILE_NAME,
    DEFAULTS,
    OPTIONS,
    SETTINGS_ENV,
    ConfigError,
    Option,
    Settings,
    config_document,
    default_config_document,
    redacted_url,
)

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line that names the problem, instead of argparse's usage dump.
        self.exit(2, f"ccop: {message} (see ccop --help)\n")


def _flag_type(option: Option) -> Callable[[str], Any]:
    """The flag's parser: the setting's own rule from the option table, its error in argparse's words."""

    def parse(raw: str) -> Any:
        try:
            return option.parse_flag(raw)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{option.long_flag}: ")) from None

    return parse


def _shown_default(option: Option) -> str | None:
    if option.default_text:
        return option.default_text
    value = getattr(DEFAULTS, option.name)
    if isinstance(value, bool) or value is None or value == {} or value == ():
        return None  # off, or nothing: the help already says what giving it does
    return f"{value:g}" if isinstance(value, float) else str(value)


def _flag_help(option: Option) -> str:
    """The row's help, plus where else the setting can come from and its default (the text docs/CLI.md expands)."""
    source = f"env {option.env}"
    if option.fallback_env:
        source += f", else Ollama's {option.fallback_env}"
    if option.repeatable:
        source += ", comma separated"
    default = _shown_default(option)
    if default is not None:
        source += f"; default {default}"
    return f"{option.help}{'; repeatable' if option.repeatable else ''} ({source})"


def _add_option(parser: argparse.ArgumentParser, option: Option) -> None:
    names = [option.short, option.long_flag] if option.short else [option.long_flag]
    settings: dict[str, Any] = {"dest": option.name, "help": _flag_help(option)}
    if option.kind == "bool":
        settings.update(action=argparse.BooleanOptionalAction, default=None)
    elif option.kind == "choice":
        settings.update(choices=option.choices)
    else:
        settings.update(type=_flag_type(option), metavar=option.metavar)
        if option.repeatable:
            settings.update(action="append")
    parser.add_argument(*names, **settings)


def build_parser(prog: str = "ccop") -> argparse.ArgumentParser:
    """The command line: the settings' flags from the option table, and the flags that are actions, not settings."""
    parser = _Parser(
        prog=prog,
        description="Serve the Anthropic Messages API (Claude Code's API) on top of a local Ollama. "
        "`ccop doctor` checks the Ollama side of the set-up instead; `ccop claude [args…]` runs Claude Code "
        "behind the proxy (`ccop claude --print-env` prints the environment it sets).",
        epilog="Precedence: flag > environment variable > config file > default. See docs/CLI.md.",
    )
    add = parser.add_argument
    add(
        "-c",
        "--config",
        metavar="FILE",
        help=f"config file (default: ./{CONFIG_FILE_NAME} if present; env CCOP_CONFIG)",
    )
    add(
        "--init",
        action="store_true",
        help=f"write a {CONFIG_FILE_NAME} (mode 0600) with the defaults and the other flags given, and exit",
    )
    add("--force", action="store_true", help="with --init: overwrite an existing file")
    for option in OPTIONS:
        _add_option(parser, option)
    add(
        "--print-config",
        action="store_true",
        help="print the resolved configuration as a config file (secrets masked) and exit",
    )
    add("--version", action="version", version=f"ccop {__version__}")
    return parser


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """The flags in Settings.resolve's form: None where not given; a repeated flag's entries as one map or list."""
    flags: dict[str, Any] = {}
    for option in OPTIONS:
        value = getattr(args, option.name)
        if value is not None and option.repeatable:
            value = option.collect(value)
        flags[option.name] = value
    return flags


def _init(path: Path, force: bool, given: dict[str, Any]) -> int:
    """Write the config file: readable by its owner only (it may hold keys), and never through a symbolic link."""
    if path.is_symlink():
        print(
            f"ccop: {path} is a symbolic link; --init writes only a regular file, so remove the link", file=sys.stderr
        )
        return 1
    if path.exists() and not force:
        print(f"ccop: {path} already exists; use --init --force to overwrite it", file=sys.stderr)
        return 1
    try:
        document = default_config_document(given)
    except ConfigError as exc:
        print(f"ccop: {exc}", file=sys.stderr)
        return 2
    # O_NOFOLLOW: a link put in place after the check above still fails here instead of being followed.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    try:
        descriptor = os.open(path, flags, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), 0o600)  # an existing file (--force) keeps its mode otherwise
            file.write(document)
    except OSError as exc:
        print(f"ccop: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"wrote {path}; edit defaultModel and modelMap, then run `ccop`")
    return 0


def _shown_config(settings: Settings) -> dict[str, Any]:
    """`--print-config`: the settings under the config file's own keys, so the output can be saved as one."""
    shown: dict[str, Any] = {}
    if settings.config_path:
        shown["$configFile"] = settings.config_path  # a comment key: where the file layer came from
    shown.update(config_document(settings))
    for secret in ("apiKey", "ollamaApiKey"):
        if shown[secret]:
            shown[secret] = "********"  # configured, but not for the screen
    urls = shown["ollamaUrl"]
    shown["ollamaUrl"] = redacted_url(urls) if isinstance(urls, str) else [redacted_url(url) for url in urls]
    return shown


def banner(settings: Settings) -> str:
    workers = f"{settings.workers} worker" + ("s" if settings.workers != 1 else "")
    source = f" · config {settings.config_path}" if settings.config_path else ""
    ollama = ", ".join(redacted_url(url) for url in settings.ollama_urls)
    # An IPv6 address takes brackets in a URL (http://[::1]:3000).
    host = f"[{settings.host}]" if ":" in settings.host and not settings.host.startswith("[") else settings.host
    return (
        f"ccop {__version__} listening on http://{host}:{settings.port} → Ollama {ollama}"
        f" · default model {settings.default_model} · {workers}{source}"
    )


def _settings(args: argparse.Namespace) -> Settings | None:
    try:
        return Settings.resolve(_flags(args), os.environ, config_path=args.config)
    except ConfigError as exc:
        print(f"ccop: {exc}", file=sys.stderr)
        return None


def doctor(argv: Sequence[str]) -> int:
    """`ccop doctor`: check Ollama and every configured model; exit 1 when something needs fixing."""
    settings = _settings(build_parser("ccop doctor").parse_args(argv))
    if settings is None:
        return 2
    reports = probe_hosts(settings, contexts=True)
    print(f"ccop {__version__} doctor: Ollama at {', '.join(report.url for report in reports)}")
    for report in reports:
        if len(reports) > 1:
            print(f"{report.url}:")
        _print_checks(report)
    failing = [report.url for report in reports if not report.healthy]
    if not failing:
        print("all good")
        return 0
    if len(failing) < len(reports):
        # The proxy sends requests to the hosts that work: a warning, not a failure.
        print(f"warning: problems on {', '.join(failing)}; the other Ollama servers work. Apply the fixes above.")
        return 0
    print("problems found: apply the fixes above, then run `ccop doctor` again")
    return 1


def _print_checks(report: Report) -> None:
    for check in report.checks:
        mark = "ok  " if check.ok else ("note" if check.warning else "FAIL")
        print(f"  {mark} {check.text}")
        if check.fix and not check.ok:
            print(f"       fix: {check.fix}")


def claude(argv: Sequence[str]) -> int:
    """`ccop claude [launcher options] [claude arguments…]`: Claude Code behind the proxy, checked before it starts."""
    try:
        args = parse_launch_args(argv)
    except LaunchUsageError as exc:
        print(f"ccop claude: {exc} (see ccop claude --help)", file=sys.stderr)
        return 2
    if args.help:
        print(LAUNCHER_HELP, end="")
        return 0
    try:
        settings = Settings.resolve(args.flags, os.environ, config_path=args.config)
    except ConfigError as exc:
        print(f"ccop: {exc}", file=sys.stderr)
        return 2
    return launch(settings, args)


def _check_log_file(path: str | None) -> None:
    """A --log-file that cannot be written is one line and exit 1 here, not a traceback from every worker."""
    if path is None:
        return
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise OSError(f"cannot write the log file {path}: {exc.strerror or exc}") from None


def _report_ollama_in_background(settings: Settings) -> subprocess.Popen[bytes]:
    """The start-up summary, so a slow or absent Ollama never delays serving.

    It runs in a child process, not a thread: Granian forks its workers, and a thread holding a lock (stdout's,
    the connection pool's) at that moment would leave the lock held forever in the worker.
    """
    environment = {**os.environ, SETTINGS_ENV: settings.to_json().decode()}
    # In its own session: a Ctrl-C in the terminal is for the proxy, and must not end the check with a traceback.
    # --quiet: the check still runs (it does --preload's loading), but its summary is not shown.
    child = subprocess.Popen(
        [sys.executable, "-m", "ccop.diagnostics"],
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL if settings.quiet else None,
        start_new_session=True,
    )
    # Reaped when it ends, so it does not linger as a zombie for the life of the proxy. This thread only waits
    # (no output, no shared locks), so it is harmless in the forked workers.
    threading.Thread(target=child.wait, name="ccop-startup-check", daemon=True).start()
    return child


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["doctor"]:
        return doctor(arguments[1:])
    if arguments[:1] == ["claude"]:
        return claude(arguments[1:])
    args = build_parser().parse_args(arguments)
    if args.init:
        return _init(Path(args.config or CONFIG_FILE_NAME), args.force, _flags(args))
    settings = _settings(args)
    if settings is None:
        return 2
    if args.print_config:
        print(orjson.dumps(_shown_config(settings), option=orjson.OPT_INDENT_2).decode())
        return 0
    from ccop.server import BindError, bind_address, serve

    try:
        # Checked before the banner: a port in use (by another ccop too) is one line and exit 1, never "listening".
        address = bind_address(settings)
        _check_log_file(settings.log_file)
    except (BindError, OSError) as exc:
        print(f"ccop: {exc}", file=sys.stderr)
        return 1
    if not settings.quiet:
        print(banner(settings), flush=True)
    if not is_loopback(settings.host) and not settings.api_key:
        print(
            f"WARNING: listening on {settings.host} without an API key: anyone who can reach this machine can use "
            "your GPU and read the answers. Set --api-key (or CCOP_API_KEY), or keep --host 127.0.0.1.",
            flush=True,
        )
    check = _report_ollama_in_background(settings)
    try:
        serve(settings, address)
    except KeyboardInterrupt:
        pass
    finally:
        check.terminate()  # a check still waiting for Ollama has nothing left to report once the proxy stopped
    return 0
