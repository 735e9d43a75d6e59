"""Checks of the Ollama side of the set-up: for `ccop doctor` and the start-up summary.

Each check says what it found and, when something is wrong, the exact command or setting that fixes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import orjson

from ccop.model_facts import ModelInfo, parse_show
from ccop.preload import Load, load_models
from ccop.settings import DEFAULT_NUM_CTX, Settings, redacted_url
from ccop.upstream import ollama_endpoint

__all__ = ["CLAUDE_CODE_WINDOW", "Check", "Report", "best_report", "probe", "probe_hosts", "startup_lines"]

# Claude Code's prompt alone is 12–25k tokens (about 1k with --bare): a smaller window cannot hold a session.
MIN_USEFUL_CONTEXT = 16384
# Below this window Claude Code works but compacts early and often (see DEFAULT_NUM_CTX).
CLAUDE_CODE_WINDOW = DEFAULT_NUM_CTX
# Claude Code keeps this much of the window free for compaction (33k in 2.1.330's /context), so it compacts once the
# conversation reaches window − buffer tokens.
CLAUDE_CODE_COMPACT_BUFFER = 33000
# Claude Code's own prompt (system prompt, tool schemas, skills) before the first message: 13.4k in 2.1.330.
CLAUDE_CODE_PROMPT = 13000
# How many tool-capable models are asked about their context length (each is one cheap /api/show).
_MAX_SHOWN = 40


@dataclass
class Check:
    ok: bool
    text: str
    fix: str | None = None
    # A note that does not fail the check (e.g. num_ctx capped at the trained length).
    warning: bool = False
    # Worth a line in `ccop doctor`, but not on every `ccop claude` start.
    doctor_only: bool = False


@dataclass
class ModelReport:
    role: str  # "default model", "claude-haiku-5-5 →", "thinking model"
    name: str
    installed: bool
    info: ModelInfo | None = None
    num_ctx: int | None = None


@dataclass
class Report:
    url: str
    reachable: bool = False
    error: str | None = None
    version: str | None = None
    installed: list[str] = field(default_factory=list)
    tool_models: list[str] = field(default_factory=list)
    # Each tool-capable model's trained context length (None when Ollama does not say), for suggestions and choices.
    tool_contexts: dict[str, int | None] = field(default_factory=dict)
    models: list[ModelReport] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return all(check.ok or check.warning for check in self.checks)


def _resolve_installed(name: str, installed: list[str]) -> str | None:
    lowered = {item.lower(): item for item in installed}
    return lowered.get(name.lower()) or lowered.get(f"{name.lower()}:latest")


def _models_to_check(settings: Settings, also: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    roles = [("default model", settings.default_model), *also]
    roles += [(f"{alias} →", target) for alias, target in sorted(settings.model_map.items())]
    if settings.thinking_model:
        roles.append(("thinking model", settings.thinking_model))
    return roles


def _trained_length(client: httpx.Client, name: str) -> int | None:
    try:
        show = client.post("/api/show", content=orjson.dumps({"model": name}))
        return parse_show(name, orjson.loads(show.content)).context_length if show.status_code == 200 else None
    except (httpx.HTTPError, orjson.JSONDecodeError, AttributeError):
        return None


def probe_hosts(
    settings: Settings, *, timeout: float = 5.0, also: Sequence[tuple[str, str]] = (), contexts: bool = False
) -> list[Report]:
    """`probe` of every configured Ollama, in the configured order; asked at once, so a dead one costs its timeout
    once, not once per host."""
    if len(settings.ollama_urls) == 1:
        return [probe(settings, timeout=timeout, also=also, contexts=contexts)]
    with ThreadPoolExecutor(max_workers=min(8, len(settings.ollama_urls))) as pool:
        futures = [
            pool.submit(probe, settings, timeout=timeout, also=also, contexts=contexts, url=url)
            for url in settings.ollama_urls
        ]
        return [future.result() for future in futures]


def best_report(reports: Sequence[Report]) -> Report:
    """The report to act on when one must be chosen (`ccop claude`): the first healthy, else the first reachable."""
    return next((r for r in reports if r.healthy), None) or next((r for r in reports if r.reachable), reports[0])


def probe(
    settings: Settings,
    *,
    timeout: float = 5.0,
    also: Sequence[tuple[str, str]] = (),
    contexts: bool = False,
    url: str | None = None,
) -> Report:
    """Ask an Ollama (`url`, by default the primary) about itself and every model the configuration names (and
    `also`: more (role, model) pairs).

    With `contexts`, also every tool-capable model's trained length, to suggest or offer models by it (one
    `/api/show` each: for `ccop doctor` and `ccop claude`, not for the start-up summary of every worker).
    """
    ollama_url = url or settings.ollama_url
    report = Report(url=redacted_url(ollama_url))
    # The same credentials the proxy sends (from the URL, or --ollama-api-key), on every probe.
    base_url, credentials = ollama_endpoint(ollama_url, settings.ollama_api_key)
    with httpx.Client(base_url=base_url, headers=credentials, timeout=timeout, trust_env=False) as client:
        try:
            version = client.get("/api/version")
            version.raise_for_status()
            report.version = str(orjson.loads(version.content).get("version"))
            tags = client.get("/api/tags")
            tags.raise_for_status()
            entries = orjson.loads(tags.content).get("models", [])
        except (httpx.HTTPError, orjson.JSONDecodeError, AttributeError) as exc:
            report.error = str(exc) or type(exc).__name__
            _judge(settings, report)
            return report
        report.reachable = True
        report.installed = [str(entry.get("name")) for entry in entries]
        report.tool_models = [
            str(entry.get("name")) for entry in entries if "tools" in (entry.get("capabilities") or ())
        ]
        if contexts:
            report.tool_contexts = {name: _trained_length(client, name) for name in report.tool_models[:_MAX_SHOWN]}
        for role, name in _models_to_check(settings, also):
            resolved = _resolve_installed(name, report.installed)
            model = ModelReport(role, name, installed=resolved is not None)
            if resolved is not None:
                try:
                    show = client.post("/api/show", content=orjson.dumps({"model": resolved}))
                    if show.status_code == 200:
                        model.info = parse_show(name, orjson.loads(show.content))
                        model.num_ctx = model.info.num_ctx(settings.num_ctx, settings.model_num_ctx)
                except (httpx.HTTPError, orjson.JSONDecodeError):
                    pass
            report.models.append(model)
    _judge(settings, report)
    return report


def _judge(settings: Settings, report: Report) -> None:
    checks = report.checks
    url = report.url  # the password, if any, masked
    if url.rstrip("/").endswith("/v1"):
        checks.append(
            Check(
                False,
                f"the Ollama URL {url} ends in /v1; the proxy talks to Ollama's native API at its root",
                f"--ollama-url {url.rstrip('/').removesuffix('/v1')}",
            )
        )
    if not report.reachable:
        checks.append(
            Check(
                False,
                f"Ollama is not reachable at {url} ({report.error})",
                "start it with `ollama serve`, or point the proxy at it with --ollama-url URL",
            )
        )
        return
    checks.append(Check(True, f"Ollama {report.version} is reachable at {url}"))
    if report.version and _older_than(report.version, (0, 30)):
        checks.append(
            Check(
                False,
                f"Ollama {report.version} does not report model capabilities (0.30 or newer does); the proxy then "
                "guesses them from model names",
                "upgrade Ollama",
                warning=True,
            )
        )
    checks.append(Check(bool(report.installed), f"{len(report.installed)} models installed", "ollama pull qwen3:8b"))
    for model in report.models:
        label = f"{model.role} {model.name}"
        if not model.installed:
            checks.append(Check(False, f"{label}: not installed", f"ollama pull {model.name}"))
            continue
        info = model.info
        if info is None:
            checks.append(Check(True, f"{label}: installed (capabilities unknown)"))
            continue
        traits = ["tools" if info.tools else "no tools", "thinking" if info.thinks else "no thinking"]
        if info.vision and info.capabilities is not None:
            traits.append("vision")
        window = f"context {model.num_ctx}" if model.num_ctx else "context left to Ollama"
        if info.context_length:
            window += f" (trained {info.context_length})"
        checks.append(Check(True, f"{label}: installed, {', '.join(traits)}, {window}"))
        if not info.tools:
            suggestion = f", e.g. {report.tool_models[0]}" if report.tool_models else ""
            checks.append(
                Check(
                    False,
                    f"{label} cannot call tools, which Claude Code needs for nearly every turn",
                    f"map it to a model with tools{suggestion} (--default-model / --model-map)",
                )
            )
        configured = settings.model_num_ctx.get(model.name, settings.num_ctx)
        if configured and info.context_length and configured > info.context_length:
            checks.append(
                Check(
                    False,
                    f"{label}: the configured context {configured} exceeds the model's trained "
                    f"{info.context_length}; the proxy sends {info.context_length}",
                    warning=True,
                    doctor_only=True,
                )
            )
        checks += _window_checks(label, model, info, report, main=model is report.models[0])


def _window_checks(label: str, model: ModelReport, info: ModelInfo, report: Report, *, main: bool) -> list[Check]:
    """Can Claude Code live in this model's window? Too small to hold its prompt fails; below the floor is a note."""
    window = model.num_ctx
    if not window or (window >= CLAUDE_CODE_WINDOW or not main) and window >= MIN_USEFUL_CONTEXT:
        return []
    trained = info.context_length
    target = min(trained, CLAUDE_CODE_WINDOW) if trained else CLAUDE_CODE_WINDOW
    fixes = [f"--num-ctx {target} (or --model-num-ctx {model.name}={target})"] if window < target else []
    if trained is not None and trained < CLAUDE_CODE_WINDOW:
        longer = [name for name, length in report.tool_contexts.items() if length and length >= CLAUDE_CODE_WINDOW]
        example = f", e.g. {longer[0]}" if longer else ""
        fixes.append(f"use a model trained for {CLAUDE_CODE_WINDOW} tokens or more{example}")
    fix = "; or ".join(fixes)
    if window < MIN_USEFUL_CONTEXT:
        return [
            Check(
                False, f"{label}: a context of {window} tokens cannot hold Claude Code's prompt (about 13k tokens)", fix
            )
        ]
    room = window - CLAUDE_CODE_COMPACT_BUFFER - CLAUDE_CODE_PROMPT
    consequence = (
        "so it compacts on nearly every request"
        if room <= 0
        else f"so only about {room // 1000}k tokens of conversation fit before it compacts"
    )
    text = (
        f"{label}: a context of {window} tokens is below the {CLAUDE_CODE_WINDOW} Claude Code needs: it keeps "
        f"{CLAUDE_CODE_COMPACT_BUFFER // 1000}k free for compaction and its own prompt takes about "
        f"{CLAUDE_CODE_PROMPT // 1000}k, {consequence}"
    )
    return [Check(False, text, fix, warning=True)]


def _older_than(version: str, minimum: tuple[int, ...]) -> bool:
    try:
        parts = tuple(int(part) for part in version.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return parts != (0, 0) and parts < minimum


def startup_lines(settings: Settings, reports: Sequence[Report] | None = None) -> list[str]:
    """A short summary for the banner, plus a warning line per problem; per host when there are several."""
    if reports is None:
        reports = probe_hosts(settings, timeout=3.0)
    if len(reports) == 1:
        return _summary(reports[0])
    return [f"{report.url}: {line}" for report in reports for line in _summary(report, several=True)]


def _summary(report: Report, *, several: bool = False) -> list[str]:
    if not report.reachable:
        consequence = "it gets no requests" if several else "requests will fail"
        return [
            f"warning: Ollama is not reachable at {report.url} yet ({report.error}); {consequence} "
            "until it runs (`ollama serve`)"
        ]
    default = report.models[0]
    if default.installed and default.info is not None:
        context = f"context {default.num_ctx}" if default.num_ctx else "context left to Ollama"
        state = f"default model {default.name} installed, {context}"
    elif default.installed:
        state = f"default model {default.name} installed"
    else:
        state = f"default model {default.name} NOT installed"
    lines = [f"Ollama {report.version} · {len(report.installed)} models · {state}"]
    for check in report.checks:
        if not check.ok:
            fix = f" — fix: {check.fix}" if check.fix else ""
            lines.append(f"warning: {check.text}{fix}")
    return lines


def preload(settings: Settings, reports: Sequence[Report]) -> list[str]:
    """`--preload`: load every configured model each reachable host has, with the window the proxy will send."""
    lines = []
    for url, report in zip(settings.ollama_urls, reports, strict=True):
        if not report.reachable:
            continue
        wanted = {model.name: Load(model.name, model.num_ctx) for model in report.models if model.installed}
        base_url, credentials = ollama_endpoint(url, settings.ollama_api_key)
        with httpx.Client(base_url=base_url, headers=credentials, trust_env=False) as client:
            done = load_models(client, wanted.values(), settings.keep_alive_value)
        prefix = f"{report.url}: " if len(reports) > 1 else ""
        lines += [f"{prefix}{line}" for line in done]
    return lines


if __name__ == "__main__":
    # The CLI runs this as a child process at start-up, with the resolved settings in CCOP_SETTINGS.
    resolved = Settings.for_worker()
    found = probe_hosts(resolved, timeout=3.0)
    for line in startup_lines(resolved, found):
        print(line, flush=True)
    if resolved.preload:
        for line in preload(resolved, found):
            print(line, flush=True)
