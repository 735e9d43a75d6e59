"""The `ccop` command line: resolve the settings, print a banner, serve."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import orjson

from ccop import __version__
from ccop.diagnostics import probe
from ccop.launch_args import LAUNCHER_HELP, LaunchUsageError, parse_launch_args
from ccop.launcher import launch
from ccop.security import is_loopback
from ccop.settings import (
    CONFIG_FILE_NAME,
    DEFAULTS,
    SETTINGS_ENV,
    ConfigError,
    Settings,
    config_document,
    default_config_document,
    parse_model_map_entry,
    redacted_url,
)

__all__ = ["build_parser", "main"]


def _port(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {raw!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 1 and 65535, got {value}")
    return value


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {raw!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _map_entry(raw: str) -> tuple[str, str]:
    try:
        return parse_model_map_entry(raw)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--model-map: ")) from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line that names the problem, instead of argparse's usage dump.
        self.exit(2, f"ccop: {message} (see ccop --help)\n")


def _model_num_ctx(raw: str) -> tuple[str, int]:
    model, sep, value = raw.rpartition("=")
    if not sep or not model or not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected MODEL=TOKENS, got {raw!r}")
    return model, int(value)


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {raw}")
    return value


def _non_negative_int(raw: str) -> int:
    if not raw.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {raw!r}")
    return int(raw)


def build_parser(prog: str = "ccop") -> argparse.ArgumentParser:
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
    add("-p", "--port", type=_port, help=f"port to listen on (env PORT, default {DEFAULTS.port})")
    add("--host", help=f"address to bind (env HOST, default {DEFAULTS.host})")
    add(
        "-u",
        "--ollama-url",
        metavar="URL",
        help="Ollama's address; http:// and port 11434 are assumed when left out; user:password@ in it is sent as "
        f"Basic authentication (env OLLAMA_URL, else Ollama's OLLAMA_HOST; default {DEFAULTS.ollama_url})",
    )
    add(
        "-m",
        "--model-map",
        metavar="CLAUDE=OLLAMA",
        type=_map_entry,
        action="append",
        help="map a model name to an Ollama model; repeatable (env CCOP_MODEL_MAP, comma separated)",
    )
    add(
        "-d",
        "--default-model",
        metavar="MODEL",
        help=f"Ollama model for every other claude-* name (env DEFAULT_MODEL, default {DEFAULTS.default_model})",
    )
    add(
        "--strict-thinking",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="answer 400 when thinking is asked of a model that cannot think, instead of dropping it "
        "(env CCOP_STRICT_THINKING)",
    )
    add(
        "-v",
        "--verbose",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="debug logging, including prompt and response text (env CCOP_VERBOSE)",
    )
    add("--workers", type=_positive_int, metavar="N", help="worker processes (env CCOP_WORKERS, default 1)")
    add(
        "--num-ctx",
        type=_non_negative_int,
        metavar="TOKENS",
        help="context window sent to Ollama for every model, capped at the model's trained length; 0 lets Ollama "
        "decide (env CCOP_NUM_CTX; default 65536, the least Claude Code works well in, or the Modelfile's num_ctx "
        "when larger)",
    )
    add(
        "--model-num-ctx",
        type=_model_num_ctx,
        action="append",
        metavar="MODEL=TOKENS",
        help="context window for one Ollama model; repeatable (env CCOP_MODEL_NUM_CTX, comma separated)",
    )
    add(
        "--thinking-model",
        metavar="MODEL",
        help="Ollama model for requests that ask for thinking when the mapped model cannot think "
        "(env CCOP_THINKING_MODEL)",
    )
    add(
        "--adaptive-thinking",
        choices=("auto", "off"),
        help="auto: Claude Code's adaptive thinking thinks when the model can; off: only explicit thinking requests "
        "think (env CCOP_ADAPTIVE_THINKING, default auto)",
    )
    add(
        "--token-counting",
        choices=("calibrated", "heuristic"),
        help="calibrated: learn each model's ratio from Ollama's counts; heuristic: the plain word rule "
        "(env CCOP_TOKEN_COUNTING, default calibrated)",
    )
    add(
        "--api-key",
        metavar="KEY",
        help="require this key from clients, as x-api-key or Authorization: Bearer; /health stays open "
        "(env CCOP_API_KEY)",
    )
    add(
        "--idle-timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="abandon an answer when Ollama sends nothing for this long, model load included "
        "(env CCOP_IDLE_TIMEOUT, default 600)",
    )
    add(
        "--max-body-size",
        type=_positive_int,
        metavar="BYTES",
        help="largest accepted request body (env CCOP_MAX_BODY_SIZE, default 33554432 = 32 MiB)",
    )
    add(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="allow browser requests from this origin (`*` for any); repeatable; none by default "
        "(env CCOP_CORS_ORIGINS, comma separated)",
    )
    add(
        "--shutdown-grace",
        type=_positive_float,
        metavar="SECONDS",
        help="on SIGTERM, how long running answers may finish before the workers stop (env CCOP_SHUTDOWN_GRACE, "
        "default 30)",
    )
    add(
        "--allowed-host",
        action="append",
        metavar="NAME",
        help="accept this Host header name besides localhost, 127.0.0.1 and [::1] on a loopback bind; repeatable "
        "(env CCOP_ALLOWED_HOSTS, comma separated)",
    )
    add(
        "--ollama-api-key",
        metavar="TOKEN",
        help="send this bearer token to Ollama, for an Ollama behind an authenticating reverse proxy "
        "(env OLLAMA_API_KEY)",
    )
    add(
        "--connection-timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="close a client connection that sends nothing, or stalls mid-request, for this long "
        "(env CCOP_CONNECTION_TIMEOUT, default 30)",
    )
    add(
        "--print-config",
        action="store_true",
        help="print the resolved configuration as a config file (secrets masked) and exit",
    )
    add("--version", action="version", version=f"ccop {__version__}")
    return parser


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "port": args.port,
        "host": args.host,
        "ollama_url": args.ollama_url,
        "default_model": args.default_model,
        "model_map": dict(args.model_map) if args.model_map else None,
        "strict_thinking": args.strict_thinking,
        "verbose": args.verbose,
        "workers": args.workers,
        "num_ctx": args.num_ctx,
        "model_num_ctx": dict(args.model_num_ctx) if args.model_num_ctx else None,
        "thinking_model": args.thinking_model,
        "token_counting": args.token_counting,
        "adaptive_thinking": args.adaptive_thinking,
        "api_key": args.api_key,
        "idle_timeout": args.idle_timeout,
        "max_body_size": args.max_body_size,
        "cors_origins": tuple(args.cors_origin) if args.cors_origin else None,
        "shutdown_grace": args.shutdown_grace,
        "allowed_hosts": tuple(args.allowed_host) if args.allowed_host else None,
        "ollama_api_key": args.ollama_api_key,
        "connection_timeout": args.connection_timeout,
    }


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
    shown["ollamaUrl"] = redacted_url(shown["ollamaUrl"])
    return shown


def banner(settings: Settings) -> str:
    workers = f"{settings.workers} worker" + ("s" if settings.workers != 1 else "")
    source = f" · config {settings.config_path}" if settings.config_path else ""
    ollama = redacted_url(settings.ollama_url)
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
    report = probe(settings, contexts=True)
    print(f"ccop {__version__} doctor: Ollama at {redacted_url(settings.ollama_url)}")
    for check in report.checks:
        mark = "ok  " if check.ok else ("note" if check.warning else "FAIL")
        print(f"  {mark} {check.text}")
        if check.fix and not check.ok:
            print(f"       fix: {check.fix}")
    print("all good" if report.healthy else "problems found: apply the fixes above, then run `ccop doctor` again")
    return 0 if report.healthy else 1


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


def _report_ollama_in_background(settings: Settings) -> subprocess.Popen[bytes]:
    """The start-up summary, so a slow or absent Ollama never delays serving.

    It runs in a child process, not a thread: Granian forks its workers, and a thread holding a lock (stdout's,
    the connection pool's) at that moment would leave the lock held forever in the worker.
    """
    environment = {**os.environ, SETTINGS_ENV: settings.to_json().decode()}
    # In its own session: a Ctrl-C in the terminal is for the proxy, and must not end the check with a traceback.
    child = subprocess.Popen(
        [sys.executable, "-m", "ccop.diagnostics"], env=environment, stdin=subprocess.DEVNULL, start_new_session=True
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
    except BindError as exc:
        print(f"ccop: {exc}", file=sys.stderr)
        return 1
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
