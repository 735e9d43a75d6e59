"""The proxy's configuration: one frozen `Settings`, resolved from four layers.

Precedence, highest first: command-line flag > environment variable > `proxy.config.json` > built-in default.

The resolved settings travel to Granian's worker processes as one JSON document in the `CCOP_SETTINGS`
environment variable, so every worker serves with exactly what the command line resolved, without parsing
anything again.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import orjson

from ccop.logs import LEVELS

__all__ = [
    "CONFIG_FILE_NAME",
    "DEFAULT_NUM_CTX",
    "DEFAULTS",
    "OPTIONS",
    "SETTINGS_ENV",
    "ConfigError",
    "Option",
    "Settings",
    "config_document",
    "default_config_document",
    "model_key",
    "normalize_ollama_url",
    "parse_model_map_entry",
    "redacted_url",
    "without_credentials",
]

CONFIG_FILE_NAME = "proxy.config.json"
# The smallest window Claude Code can live in, measured with the real CLI (2.1.330; docs/CLAUDE_CODE.md): it keeps
# 33k tokens free for compaction and its own prompt takes about 13.4k, so 65536 leaves about 19k for the work itself
# (no compaction over 6 short turns, the first after 3 turns that each read a 5k-token file), while 49152 leaves under
# 3k and below about 48k it compacts on every request. The default window, unless the Modelfile asks for more or the
# model was trained for less.
DEFAULT_NUM_CTX = 65536
# Carries the fully resolved settings from the CLI to Granian's worker processes.
SETTINGS_ENV = "CCOP_SETTINGS"
# Ollama's own variable (`host:port`, scheme optional), read when OLLAMA_URL is not set.
OLLAMA_HOST_ENV = "OLLAMA_HOST"
# Ollama's port, for an address given without a scheme (as Ollama itself reads OLLAMA_HOST).
OLLAMA_PORT = 11434
# Keys of a config file written by the original TypeScript tool, with the values it writes: accepted and ignored.
LEGACY_KEYS = {"version": "1"}

TokenCounting = Literal["heuristic", "calibrated"]
# Claude Code's request classes (x-claude-code-request-class) that may be served by another, already loaded model.
REQUEST_CLASSES = ("main", "subagent", "workflow", "compaction", "auxiliary")
# Go's time.ParseDuration syntax, which Ollama reads keep_alive with ("30m", "1h30m", "-1s"), or a number of seconds.
_DURATION = re.compile(r"^-?(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+$|^-?\d+(?:\.\d+)?$")


class ConfigError(ValueError):
    """A configuration value is missing, malformed or out of range; the message names it."""


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs to serve; immutable once resolved."""

    host: str = "127.0.0.1"
    port: int = 3000
    # Every Ollama the proxy spreads requests over, in the order given; the first is the primary.
    ollama_urls: tuple[str, ...] = ("http://localhost:11434",)
    default_model: str = "llama3.1"
    model_map: Mapping[str, str] = field(default_factory=dict)
    strict_thinking: bool = False
    # Debug logging: the same as log_level "debug" (kept from before there were levels).
    verbose: bool = False
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    # Where logs go instead of standard error, rotated by size (logs.py).
    log_file: str | None = None
    # No banner or start-up summary, and logs from warnings up.
    quiet: bool = False
    workers: int = 1
    # None: not configured, so DEFAULT_NUM_CTX (or the Modelfile's num_ctx, when larger) applies.
    num_ctx: int | None = None
    model_num_ctx: Mapping[str, int] = field(default_factory=dict)
    thinking_model: str | None = None
    # "auto": Claude Code's `thinking: {type: "adaptive"}` thinks when the model can; "off": it never does.
    adaptive_thinking: Literal["auto", "off"] = "auto"
    token_counting: TokenCounting = "calibrated"
    # Seconds between SSE `ping` events while Ollama loads the model or processes the prompt.
    ping_interval: float = 5.0
    # Seconds of upstream silence (model load and prompt reading included) before an answer is abandoned.
    idle_timeout: float = 600.0
    max_body_size: int = 32 * 1024 * 1024
    # When set, every route but /health needs it as `x-api-key` or `Authorization: Bearer`.
    api_key: str | None = None
    # Browser origins allowed to call the proxy; none by default, so web pages cannot drive the local GPU.
    cors_origins: tuple[str, ...] = ()
    # Seconds running streams get to finish after SIGTERM before the workers are stopped.
    shutdown_grace: float = 30.0
    # Host names accepted in the Host header besides the loopback names, when bound to loopback (DNS rebinding).
    allowed_hosts: tuple[str, ...] = ()
    # A bearer token for an Ollama behind an authenticating reverse proxy; never logged.
    ollama_api_key: str | None = None
    # Seconds a client connection may send nothing (before a request, or in the middle of one) before it is closed.
    connection_timeout: float = 30.0
    # Requests one Ollama runs at once per model: Ollama's OLLAMA_NUM_PARALLEL, which is 1 by default.
    slots: int = 1
    # Per-model overrides of `slots` ({"qwen3:8b": 2}), and per host and model ({"http://gpu2:11434": {"qwen3:8b": 4}}).
    model_slots: Mapping[str, int | Mapping[str, int]] = field(default_factory=dict)
    # Requests waiting in the proxy for a slot beyond which it answers 529 (overloaded).
    max_queue: int = 64
    # Seconds a request may wait for a slot before it is answered 529.
    max_queue_wait: float = 300.0
    # Request classes that may be served by an already loaded model instead of forcing Ollama to reload.
    substitute_classes: tuple[str, ...] = ("auxiliary",)
    # Load the configured models at start and keep them loaded.
    preload: bool = False
    # Sent to Ollama as keep_alive with every chat request when set ("30m", "-1" = forever).
    keep_alive: str | None = None
    # Where the settings came from, for the banner and error messages; not a setting itself.
    config_path: str | None = None
    # The settings some layer gave (flag, environment or file), as opposed to defaults: `ccop claude` offers a
    # choice of model only when none was configured.
    configured: tuple[str, ...] = ()

    @property
    def ollama_url(self) -> str:
        """The primary Ollama: the one single-host code (and every message about "the" Ollama) uses."""
        return self.ollama_urls[0]

    def slots_for(self, host_url: str, model: str) -> int:
        """Requests `model` may run at once on the Ollama at `host_url`: host+model > model > `slots`."""
        wanted = model_key(model)
        per_host = self.model_slots.get(without_credentials(host_url))
        for table in (per_host if isinstance(per_host, Mapping) else {}, self.model_slots):
            for name, value in table.items():
                if isinstance(value, int) and model_key(name) == wanted:
                    return value
        return self.slots

    @property
    def log_threshold(self) -> str:
        """The level logs are written from: --verbose is --log-level debug; --quiet keeps warnings and errors only."""
        if self.verbose:
            return "debug"
        if self.quiet and LEVELS.index(self.log_level) < LEVELS.index("warning"):
            return "warning"
        return self.log_level

    @property
    def keep_alive_value(self) -> str | float | None:
        """`keep_alive` as Ollama's JSON takes it: a bare number is seconds (a string "-1" would not parse there)."""
        if self.keep_alive is None or not re.fullmatch(r"-?\d+(?:\.\d+)?", self.keep_alive):
            return self.keep_alive
        return float(self.keep_alive)

    def to_json(self) -> bytes:
        data = dataclasses.asdict(self)
        data["model_map"] = dict(self.model_map)
        data["model_num_ctx"] = dict(self.model_num_ctx)
        data["model_slots"] = {k: v if isinstance(v, int) else dict(v) for k, v in self.model_slots.items()}
        for name in _TUPLE_FIELDS:
            data[name] = list(getattr(self, name))
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Settings:
        data = orjson.loads(raw)
        for name in _TUPLE_FIELDS:
            if name in data:
                data[name] = tuple(data[name])
        return cls(**data)

    @classmethod
    def for_worker(cls) -> Settings:
        """The settings a worker serves with: the CLI's resolved copy, else resolved here from env and file."""
        raw = os.environ.get(SETTINGS_ENV)
        if raw:
            return cls.from_json(raw)
        return cls.resolve({}, os.environ)

    @classmethod
    def resolve(
        cls,
        flags: Mapping[str, Any],
        environ: Mapping[str, str],
        *,
        config_path: str | None = None,
        cwd: Path | None = None,
    ) -> Settings:
        """Merge flag values (already typed, `None` = not given), the environment and the config file."""
        path = config_path or environ.get("CCOP_CONFIG")
        file_values: dict[str, Any] = {}
        used_path: str | None = None
        if path:
            file_values = load_config_file(Path(path))
            used_path = str(path)
        else:
            candidate = (cwd or Path.cwd()) / CONFIG_FILE_NAME
            if candidate.is_file():
                file_values = load_config_file(candidate)
                used_path = str(candidate)

        values: dict[str, Any] = {}
        for option in OPTIONS:
            layers = [_flag_value(option, flags.get(option.name))]
            if option.env in environ:
                layers.append(option.parse(environ[option.env], f"environment variable {option.env}"))
            elif option.fallback_env and environ.get(option.fallback_env, "").strip():
                # Ollama's own OLLAMA_HOST, so a machine set up for the `ollama` command needs nothing more.
                layers.append(option.parse(environ[option.fallback_env], f"environment variable {option.fallback_env}"))
            # null in the file means "not set here", like a missing key.
            if file_values.get(option.config_key) is not None:
                where = f"{used_path}: key {option.config_key!r}"
                layers.append(option.check(file_values[option.config_key], where))
            given = [value for value in layers if value is not None]
            if not given:
                continue
            if option.kind in {"map", "int_map", "slot_map"}:
                # Maps merge: each higher layer adds entries and overrides the same names below it.
                values[option.name] = _merge_maps(reversed(given))
            else:
                values[option.name] = given[0]
        _check_slot_hosts(values.get("model_slots", {}), values.get("ollama_urls", DEFAULTS.ollama_urls))
        return cls(config_path=used_path, configured=tuple(values), **values)


# Settings held as tuples, which JSON carries as lists.
_TUPLE_FIELDS = ("ollama_urls", "cors_origins", "allowed_hosts", "substitute_classes", "configured")


def _merge_maps(layers: Any) -> dict[str, Any]:
    """Lower layers first; a host's own table (in model_slots) merges entry by entry too."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            below = merged.get(key)
            merged[key] = {**below, **value} if isinstance(value, dict) and isinstance(below, dict) else value
    return merged


def _check_slot_hosts(model_slots: Mapping[str, Any], ollama_urls: tuple[str, ...]) -> None:
    """A host's table in model_slots must name one of the configured Ollamas, or it would silently never apply."""
    hosts = {without_credentials(url) for url in ollama_urls}
    for key, value in model_slots.items():
        if isinstance(value, Mapping) and key not in hosts:
            known = ", ".join(redacted_url(url) for url in ollama_urls)
            raise ConfigError(f"model slots for {redacted_url(key)}: not one of the Ollama URLs ({known})")


def _flag_value(option: Option, value: Any) -> Any:
    """A flag's value, already typed by the parser; addresses are still read the way the other layers read them."""
    if value is not None and option.repeatable:
        # Collected from repeated flags (or given by the launcher): checked as the file's value is, duplicates too.
        items = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else value
        return option.check(items, option.long_flag)
    return value


# ---------------------------------------------------------------------------------------------------------------
# Option table: one row per setting, the only place a setting is declared. The CLI builds its flags, help and
# validation from it (cli.py), and the environment, the config file, `--init` and `--print-config` read it here.


@dataclass(frozen=True)
class Option:
    name: str
    config_key: str
    env: str  # every setting has an environment variable
    # "str" | "int" | "bool" | "port" | "choice" | "float" | "duration", or repeatable: "url_list" | "map" | "int_map"
    # | "slot_map" | "list" | "choice_list"
    kind: str
    # The flag's help: what the setting does. The CLI adds the environment variable and the default from this row.
    help: str
    choices: tuple[str, ...] = ()
    minimum: int = 0
    short: str | None = None
    metavar: str | None = None
    # The long flag when it is not the name with dashes: a list is given one item per flag (`--cors-origin`).
    flag: str | None = None
    # Read when `env` is not set: another program's variable for the same thing (Ollama's OLLAMA_HOST).
    fallback_env: str | None = None
    # The default as the help states it, when the value alone does not tell the whole story.
    default_text: str | None = None

    @property
    def long_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def repeatable(self) -> bool:
        """Given on the command line one entry (`NAME=VALUE`) or one item per flag, and merged or collected."""
        return self.kind in {"map", "int_map", "slot_map", "list", "choice_list", "url_list"}

    def collect(self, entries: Any) -> Any:
        """A repeatable setting's entries (from the flags or one environment variable) as one layer's value."""
        if self.kind in {"map", "int_map"}:
            return dict(entries)
        if self.kind == "slot_map":
            table: dict[str, Any] = {}
            for key, value in entries:
                below = table.get(key)
                table[key] = {**below, **value} if isinstance(value, dict) and isinstance(below, dict) else value
            return table
        return list(entries)

    def parse(self, raw: str, where: str) -> Any:
        """Parse a string from the environment."""
        if self.kind == "bool":
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off", ""}:
                return False
            raise ConfigError(f"{where}: expected true or false, got {raw!r}")
        if self.kind in {"int", "port"}:
            try:
                number = int(raw.strip())
            except ValueError:
                raise ConfigError(f"{where}: expected a whole number, got {raw!r}") from None
            return self.check(number, where)
        if self.kind == "float":
            try:
                value = float(raw.strip())
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {raw!r}") from None
            return self.check(value, where)
        if self.repeatable:
            entries = [self.parse_entry(part, where) for part in re.split(r"[,\s]+", raw) if part]
            return self.check(self.collect(entries), where)
        return self.check(raw, where)

    def parse_entry(self, raw: str, where: str) -> Any:
        """One entry of a repeatable setting: a map's `NAME=VALUE` pair, or one list item."""
        if self.kind == "map":
            return parse_model_map_entry(raw, where)
        if self.kind == "int_map":
            model, sep, value = raw.rpartition("=")
            if not sep or not model or not value.isdigit():
                raise ConfigError(f"{where}: expected MODEL=TOKENS, got {raw!r}")
            return model, int(value)
        if self.kind == "slot_map":
            return _slot_entry(raw, where)
        if self.kind == "url_list":
            return normalize_ollama_url(raw, where)
        if not raw:
            raise ConfigError(f"{where}: expected a non-empty string, got {raw!r}")
        return raw

    def parse_flag(self, raw: str) -> Any:
        """One command-line value: an entry of a repeatable setting, else the whole value as the environment's."""
        if self.repeatable:
            return self.parse_entry(raw, self.long_flag)
        return self.parse(raw, self.long_flag)

    def check(self, value: Any, where: str) -> Any:
        """Validate an already typed value (from the config file, or parsed above)."""
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: expected true or false, got {value!r}")
            return value
        if self.kind in {"int", "port", "float"}:
            return self._check_number(value, where)
        if self.repeatable:
            return self._check_collection(value, where)
        return self._check_text(value, where)

    def _check_number(self, value: Any, where: str) -> Any:
        if self.kind == "float":
            # `not value > 0` also turns away NaN, which compares false with everything.
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{where}: expected a positive number, got {value!r}")
            return float(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        if self.kind == "port" and not 1 <= value <= 65535:
            raise ConfigError(f"{where}: port must be between 1 and 65535, got {value}")
        if value < self.minimum:
            raise ConfigError(f"{where}: must be at least {self.minimum}, got {value}")
        return value

    def _check_collection(self, value: Any, where: str) -> Any:
        if self.kind == "url_list":
            return _unique_urls([value] if isinstance(value, str) else value, where)
        if self.kind == "slot_map":
            return _check_slot_map(value, where)
        if self.kind == "choice_list":
            return self._check_choices(value, where)
        if self.kind == "list":
            if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
                raise ConfigError(f"{where}: expected a list of non-empty strings, got {value!r}")
            return tuple(value)
        if self.kind == "map":
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()
            ):
                raise ConfigError(f"{where}: expected an object of non-empty model names, got {value!r}")
            return dict(value)
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and k and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in value.items()
        ):
            raise ConfigError(f"{where}: expected an object of model names to whole numbers >= 0, got {value!r}")
        return dict(value)

    def _check_choices(self, value: Any, where: str) -> tuple[str, ...]:
        items = list(value) if isinstance(value, (list, tuple)) else None
        if items == ["none"]:
            return ()  # the way to say "none" where an empty list cannot be written (a flag, the environment)
        if items is None or not all(isinstance(item, str) and item in self.choices for item in items):
            raise ConfigError(f"{where}: expected a list of {', '.join(self.choices)} (or none), got {value!r}")
        return tuple(dict.fromkeys(items))

    def _check_text(self, value: Any, where: str) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
        value = value.strip()
        if self.kind == "duration" and not _DURATION.match(value):
            raise ConfigError(f"{where}: expected a duration such as 30m, 1h or -1 (forever), got {value!r}")
        if self.kind == "choice" and value not in self.choices:
            raise ConfigError(f"{where}: expected one of {', '.join(self.choices)}, got {value!r}")
        return value


OPTIONS: tuple[Option, ...] = (
    Option("port", "port", "PORT", "port", "port to listen on", short="-p"),
    Option(
        "host",
        "host",
        "HOST",
        "str",
        "address to bind: an IP, or a name such as localhost; keep 127.0.0.1 unless other machines must reach it",
    ),
    Option(
        "ollama_urls",
        "ollamaUrl",
        "OLLAMA_URL",
        "url_list",
        "Ollama's address; http:// and port 11434 are assumed when left out; user:password@ in it is sent as "
        "Basic authentication; give it once per Ollama to spread requests over several",
        short="-u",
        metavar="URL",
        flag="--ollama-url",
        fallback_env=OLLAMA_HOST_ENV,
        default_text="http://localhost:11434",
    ),
    Option(
        "default_model",
        "defaultModel",
        "DEFAULT_MODEL",
        "str",
        "Ollama model for every other claude-* name",
        short="-d",
        metavar="MODEL",
    ),
    Option(
        "model_map",
        "modelMap",
        "CCOP_MODEL_MAP",
        "map",
        "map a model name to an Ollama model",
        short="-m",
        metavar="CLAUDE=OLLAMA",
    ),
    Option(
        "strict_thinking",
        "strictThinking",
        "CCOP_STRICT_THINKING",
        "bool",
        "answer 400 when thinking is asked of a model that cannot think, instead of dropping it",
    ),
    Option(
        "verbose",
        "verbose",
        "CCOP_VERBOSE",
        "bool",
        "debug logging, including prompt and response text: the same as --log-level debug",
        short="-v",
    ),
    Option(
        "log_level",
        "logLevel",
        "CCOP_LOG_LEVEL",
        "choice",
        "log from this level up; only debug shows prompt and response text",
        LEVELS,
    ),
    Option(
        "log_format",
        "logFormat",
        "CCOP_LOG_FORMAT",
        "choice",
        "text: one readable line per record; json: one JSON object per line (timestamp, severity, body, attributes)",
        ("text", "json"),
    ),
    Option(
        "log_file",
        "logFile",
        "CCOP_LOG_FILE",
        "str",
        "write logs to this file instead of standard error, rotated at 10 MB with 5 old files kept",
        metavar="PATH",
    ),
    Option(
        "quiet",
        "quiet",
        "CCOP_QUIET",
        "bool",
        "no banner or start-up summary, and only warnings and errors in the log",
        short="-q",
    ),
    Option(
        "workers",
        "workers",
        "CCOP_WORKERS",
        "int",
        "worker processes; more help when many agents run at once",
        minimum=1,
        metavar="N",
    ),
    Option(
        "num_ctx",
        "numCtx",
        "CCOP_NUM_CTX",
        "int",
        "context window sent to Ollama for every model, capped at the model's trained length; 0 lets Ollama decide",
        metavar="TOKENS",
        default_text=f"{DEFAULT_NUM_CTX}, the least Claude Code works well in, or the Modelfile's num_ctx when larger",
    ),
    Option(
        "model_num_ctx",
        "modelNumCtx",
        "CCOP_MODEL_NUM_CTX",
        "int_map",
        "context window for one Ollama model; wins over --num-ctx",
        metavar="MODEL=TOKENS",
    ),
    Option(
        "thinking_model",
        "thinkingModel",
        "CCOP_THINKING_MODEL",
        "str",
        "Ollama model for requests that ask for thinking when the mapped model cannot think",
        metavar="MODEL",
    ),
    Option(
        "adaptive_thinking",
        "adaptiveThinking",
        "CCOP_ADAPTIVE_THINKING",
        "choice",
        "auto: Claude Code's adaptive thinking thinks when the model can; off: only explicit thinking requests think",
        ("auto", "off"),
    ),
    Option(
        "token_counting",
        "tokenCounting",
        "CCOP_TOKEN_COUNTING",
        "choice",
        "calibrated: learn each model's ratio from Ollama's counts; heuristic: the plain word rule",
        ("calibrated", "heuristic"),
    ),
    Option(
        "ping_interval",
        "pingInterval",
        "CCOP_PING_INTERVAL",
        "float",
        "seconds between SSE pings while nothing else flows",
        metavar="SECONDS",
    ),
    Option(
        "idle_timeout",
        "idleTimeout",
        "CCOP_IDLE_TIMEOUT",
        "float",
        "abandon an answer when Ollama sends nothing for this long, model load included",
        metavar="SECONDS",
    ),
    Option(
        "max_body_size",
        "maxBodySize",
        "CCOP_MAX_BODY_SIZE",
        "int",
        "largest accepted request body",
        minimum=1,
        metavar="BYTES",
        default_text="33554432 = 32 MiB",
    ),
    Option(
        "api_key",
        "apiKey",
        "CCOP_API_KEY",
        "str",
        "require this key from clients, as x-api-key or Authorization: Bearer; /health stays open",
        metavar="KEY",
    ),
    Option(
        "cors_origins",
        "corsOrigins",
        "CCOP_CORS_ORIGINS",
        "list",
        "allow browser requests from this origin (`*` for any); none by default",
        metavar="ORIGIN",
        flag="--cors-origin",
    ),
    Option(
        "shutdown_grace",
        "shutdownGrace",
        "CCOP_SHUTDOWN_GRACE",
        "float",
        "on SIGTERM, how long running answers may finish before the workers stop",
        metavar="SECONDS",
    ),
    Option(
        "allowed_hosts",
        "allowedHosts",
        "CCOP_ALLOWED_HOSTS",
        "list",
        "accept this Host header name besides localhost, 127.0.0.1 and [::1] on a loopback bind",
        metavar="NAME",
        flag="--allowed-host",
    ),
    Option(
        "ollama_api_key",
        "ollamaApiKey",
        "OLLAMA_API_KEY",
        "str",
        "send this bearer token to Ollama, for an Ollama behind an authenticating reverse proxy",
        metavar="TOKEN",
    ),
    Option(
        "connection_timeout",
        "connectionTimeout",
        "CCOP_CONNECTION_TIMEOUT",
        "float",
        "close a client connection that sends nothing, or stalls mid-request, for this long",
        metavar="SECONDS",
    ),
    Option(
        "slots",
        "slots",
        "CCOP_SLOTS",
        "int",
        "requests one Ollama runs at once for one model; set it to the server's OLLAMA_NUM_PARALLEL",
        minimum=1,
        metavar="N",
    ),
    Option(
        "model_slots",
        "modelSlots",
        "CCOP_MODEL_SLOTS",
        "slot_map",
        "slots for one model (MODEL=N), or for one model on one Ollama (MODEL@URL=N); wins over --slots",
        metavar="MODEL=N",
        flag="--model-slots",
    ),
    Option(
        "max_queue",
        "maxQueue",
        "CCOP_MAX_QUEUE",
        "int",
        "requests that may wait for a slot in the proxy; one more is answered 529 (overloaded)",
        minimum=1,
        metavar="N",
    ),
    Option(
        "max_queue_wait",
        "maxQueueWait",
        "CCOP_MAX_QUEUE_WAIT",
        "float",
        "answer 529 to a request that waited this long for a slot",
        metavar="SECONDS",
    ),
    Option(
        "substitute_classes",
        "substituteClasses",
        "CCOP_SUBSTITUTE_CLASSES",
        "choice_list",
        "request classes an already loaded model may serve instead of reloading Ollama for the mapped one; "
        "none turns it off",
        REQUEST_CLASSES,
        metavar="CLASS",
        flag="--substitute-class",
        default_text="auxiliary",
    ),
    Option(
        "preload",
        "preload",
        "CCOP_PRELOAD",
        "bool",
        "load the configured models into Ollama at start and keep them loaded",
    ),
    Option(
        "keep_alive",
        "keepAlive",
        "CCOP_KEEP_ALIVE",
        "duration",
        "how long Ollama keeps a model loaded after a request (30m, 2h; -1: forever), sent with every request; "
        "unset: Ollama's OLLAMA_KEEP_ALIVE",
        metavar="DURATION",
    ),
)
OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}
CONFIG_KEYS = {option.config_key: option for option in OPTIONS}
DEFAULTS = Settings()


def normalize_ollama_url(raw: str, where: str = "--ollama-url") -> str:
    """An Ollama address as a base URL, read the way Ollama reads OLLAMA_HOST.

    Without a scheme it is `http://`, and without a port then 11434 (`gpu-box` → `http://gpu-box:11434`); with a
    scheme the scheme's own port applies. The unspecified addresses Ollama is often told to listen on (`0.0.0.0`,
    `::`) and an empty host mean this machine. Credentials (`http://user:pass@host`) are kept.
    """
    value = raw.strip()
    has_scheme = "://" in value
    value = value.rstrip("/")
    parts = urlsplit(value if has_scheme else f"http://{value}")
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = -1
    malformed = port == -1 or re.search(r"\s", value) or parts.query or parts.fragment
    if parts.scheme not in ("http", "https") or malformed or (has_scheme and not parts.hostname):
        raise ConfigError(f"{where}: expected an Ollama address such as http://localhost:11434, got {raw!r}")
    host = parts.hostname or ""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    if port is None and not has_scheme:
        port = OLLAMA_PORT
    userinfo, at, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}{at}{host}" + (f":{port}" if port is not None else "")
    return f"{parts.scheme}://{netloc}{parts.path}"


def redacted_url(url: str) -> str:
    """The URL with any password in it masked: for banners, logs, error messages and `/health`."""
    scheme, separator, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}{separator}{user}:********@{hostport}{slash}{path}"


def without_credentials(url: str) -> str:
    """The URL without `user:password@`: how a host is named where a password has no business (slot tables)."""
    scheme, separator, rest = url.partition("://")
    return f"{scheme}{separator}{rest.partition('@')[2] if '@' in rest.split('/', 1)[0] else rest}"


def model_key(name: str) -> str:
    """A model name as Ollama compares names: case aside, and `:latest` when no tag is given."""
    lowered = name.strip().lower()
    return lowered if ":" in lowered.rsplit("/", 1)[-1] else f"{lowered}:latest"


def _unique_urls(urls: Any, where: str) -> tuple[str, ...]:
    if not isinstance(urls, (list, tuple)) or not urls or not all(isinstance(url, str) for url in urls):
        raise ConfigError(f"{where}: expected an Ollama address or a list of them, got {urls!r}")
    normalized = [normalize_ollama_url(url, where) for url in urls]
    for index, url in enumerate(normalized):
        if url in normalized[:index]:
            raise ConfigError(f"{where}: {redacted_url(url)} is given twice; each Ollama is listed once")
    return tuple(normalized)


def _slot_entry(raw: str, where: str) -> tuple[str, Any]:
    """`MODEL=N`, or `MODEL@URL=N` for one Ollama (model names cannot hold `@`; a URL's credentials can)."""
    target, sep, value = raw.rpartition("=")
    model, at, url = target.partition("@")
    if not sep or not model or (at and not url) or not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{where}: expected MODEL=N or MODEL@URL=N with N at least 1, got {raw!r}")
    if at:
        return without_credentials(normalize_ollama_url(url, where)), {model: int(value)}
    return model, int(value)


def _slot_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_slot_map(value: Any, where: str) -> dict[str, Any]:
    """{"model": N, "http://host:port": {"model": N}}: a host's key is read like --ollama-url, so forms agree."""
    expected = f'{where}: expected an object such as {{"qwen3:8b": 2, "http://gpu2:11434": {{"qwen3:8b": 4}}}}'
    if not isinstance(value, dict):
        raise ConfigError(f"{expected}, got {value!r}")
    table: dict[str, Any] = {}
    for key, count in value.items():
        if isinstance(count, dict) and all(isinstance(k, str) and k and _slot_count(v) for k, v in count.items()):
            table[without_credentials(normalize_ollama_url(key, where))] = dict(count)
        elif isinstance(key, str) and key and _slot_count(count):
            table[key] = count
        else:
            raise ConfigError(f"{expected}, got {key!r}: {count!r}")
    return table


def parse_model_map_entry(entry: str, where: str = "--model-map") -> tuple[str, str]:
    """Split `CLAUDE=OLLAMA`; both sides must be non-empty."""
    claude, sep, ollama = entry.partition("=")
    if not sep or not claude.strip() or not ollama.strip():
        raise ConfigError(f"{where}: expected CLAUDE_MODEL=OLLAMA_MODEL, got {entry!r}")
    return claude.strip(), ollama.strip()


def load_config_file(path: Path) -> dict[str, Any]:
    """Read and check `proxy.config.json`; keys starting with `$` or `_` are comments."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object, got {type(data).__name__}")
    for key, expected in LEGACY_KEYS.items():
        if key in data and data[key] != expected:
            raise ConfigError(f"config file {path}: {key!r} must be {expected!r} (or left out), got {data[key]!r}")
    unknown = [
        key for key in data if key not in CONFIG_KEYS and key not in LEGACY_KEYS and not key.startswith(("$", "_"))
    ]
    if unknown:
        known = ", ".join(CONFIG_KEYS)
        raise ConfigError(f"config file {path}: unknown key {unknown[0]!r} (known keys: {known})")
    return {key: value for key, value in data.items() if key in CONFIG_KEYS}


def config_document(settings: Settings) -> dict[str, Any]:
    """Every setting under its config-file key, as JSON values: what `--print-config` shows."""
    data = orjson.loads(settings.to_json())
    document = {option.config_key: data[option.name] for option in OPTIONS}
    if len(settings.ollama_urls) == 1:
        document["ollamaUrl"] = settings.ollama_url  # one Ollama reads (and is written) as the plain string it was
    return document


def default_config_document(given: Mapping[str, Any] | None = None) -> bytes:
    """The file `ccop --init` writes: every key with its default, a starter model map, and the values `given`.

    `given` holds setting names and values (the flags given with `--init`); they replace the defaults, and a given
    model map replaces the starter one.
    """
    given = {
        name: _flag_value(OPTIONS_BY_NAME[name], value) for name, value in (given or {}).items() if value is not None
    }
    document: dict[str, Any] = {"$comment": "ccop configuration; every key is described in docs/CLI.md"}
    values = config_document(dataclasses.replace(DEFAULTS, **given))
    for option in OPTIONS:
        value = values[option.config_key]
        if option.name == "model_map" and option.name not in given:
            value = {
                "claude-opus-5-5": "qwen3-coder:30b",
                "claude-sonnet-5-5": "qwen3-coder:30b",
                "claude-haiku-5-5": "qwen3:8b",
            }
        document[option.config_key] = value
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
