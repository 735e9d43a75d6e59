"""The installed models: ``ModelSpec``, the default set, Ollama's name rules and the bodies of ``/api/tags`` and
``/api/show``, shaped as the Ollama version the double pretends to be would shape them."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

Json = dict[str, Any]

_REGISTRY = "registry.ollama.ai"
_NAMESPACE = "library"
_NAME_CHARS = re.compile(r"^[A-Za-z0-9_.\-/:@]+$")


@dataclass
class ModelSpec:
    """One installed model, as ``/api/tags``, ``/api/show`` and ``/api/chat`` see it.

    ``context_length`` is the *training* context (``model_info["<arch>.context_length"]``); ``num_ctx`` is the
    Modelfile ``PARAMETER num_ctx`` (``None`` when the Modelfile does not set one). ``parameters`` holds any other
    Modelfile parameters; a list value is printed as repeated lines, as Ollama does for ``stop``.
    """

    name: str
    capabilities: list[str] = field(default_factory=lambda: ["completion", "tools"])
    context_length: int = 32768
    architecture: str = "qwen3"
    num_ctx: int | None = None
    family: str | None = None
    parameter_size: str = "8.2B"
    quantization_level: str = "Q4_K_M"
    size: int = 5_225_375_744
    digest: str | None = None
    embedding_length: int = 4096
    parameters: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    modified_at: str = "2026-07-01T09:00:00Z"

    @property
    def effective_family(self) -> str:
        """The family reported in ``details``; Ollama derives it from the architecture unless told otherwise."""
        return self.family or self.architecture

    @property
    def effective_digest(self) -> str:
        """A stable fake sha256 digest, so tests can compare it across endpoints."""
        return self.digest or hashlib.sha256(self.name.encode()).hexdigest()

    @property
    def effective_template(self) -> str:
        """A Go template string shaped like the capabilities (Ollama detects tools/thinking from template markers)."""
        if self.template is not None:
            return self.template
        parts = ["{{- if .System }}{{ .System }}{{ end }}"]
        if "tools" in self.capabilities:
            parts.append("{{- if .Tools }}{{ range .Tools }}{{ . }}{{ end }}{{ end }}")
        if "thinking" in self.capabilities:
            parts.append("{{- if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}")
        parts.append("{{ range .Messages }}{{ .Content }}{{ end }}")
        return "".join(parts)


def default_models() -> list[ModelSpec]:
    """The models a fresh double has installed: one per capability combination the proxy must handle."""
    return [
        ModelSpec(
            "llama3.1:latest",
            ["completion", "tools"],
            context_length=131072,
            architecture="llama",
            parameter_size="8.0B",
            size=4_920_753_328,
            parameters={"stop": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]},
        ),
        ModelSpec(
            "qwen3:8b",
            ["completion", "tools", "thinking"],
            context_length=40960,
            architecture="qwen3",
            parameter_size="8.2B",
            parameters={"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.6, "top_k": 20, "top_p": 0.95},
        ),
        ModelSpec(
            "qwen3-coder:30b",
            ["completion", "tools"],
            context_length=262144,
            architecture="qwen3moe",
            parameter_size="30.5B",
            size=18_556_688_736,
            embedding_length=2048,
            parameters={"stop": ["<|im_end|>"], "temperature": 0.7},
        ),
        ModelSpec(
            "gemma2:latest",
            ["completion"],
            context_length=8192,
            architecture="gemma2",
            parameter_size="9.2B",
            size=5_443_152_417,
            embedding_length=3584,
            parameters={"stop": ["<start_of_turn>", "<end_of_turn>"]},
        ),
        ModelSpec(
            "llava:latest",
            ["completion", "vision"],
            context_length=32768,
            architecture="llama",
            parameter_size="7B",
            quantization_level="Q4_0",
            size=4_733_363_377,
            parameters={"stop": ["[INST]", "[/INST]"]},
        ),
    ]


def full_name(name: str) -> str:
    """Expand ``[host/][namespace/]model[:tag]`` with Ollama's defaults (registry.ollama.ai, library, latest)."""
    slash = name.rfind("/")
    colon = name.rfind(":")
    path, tag = (name[:colon], name[colon + 1 :]) if colon > slash else (name, "latest")
    parts = path.split("/")
    if len(parts) == 1:
        parts = [_REGISTRY, _NAMESPACE, *parts]
    elif len(parts) == 2:
        parts = [_REGISTRY, *parts]
    return "/".join(parts) + ":" + tag


def name_key(name: str) -> str:
    """The lookup key: the expanded name, lower-cased, because Ollama's name lookup ignores case."""
    return full_name(name).lower()


def valid_model_name(name: str) -> bool:
    """A coarse ``model.ParseName(...).IsValid()``: allowed characters and three non-empty path parts plus a tag."""
    if not _NAME_CHARS.match(name):
        return False
    path, _, tag = full_name(name).rpartition(":")
    parts = path.split("/")
    return bool(tag) and len(parts) == 3 and all(parts)


def version_tuple(version: str) -> tuple[int, ...]:
    """``"0.33.0-rc1"`` → ``(0, 33, 0)``: what the version-dependent shapes below compare."""
    return tuple(int(n) for n in re.findall(r"\d+", version.split("-")[0])[:3])


def _is_dev_build(version: str) -> bool:
    return version_tuple(version) == (0, 0, 0)


def _go_value(value: Any) -> str:
    """How ``ollama show`` prints a Modelfile parameter (Go's ``%#v``): strings quoted, ``0.7`` not ``0.70``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parameter_items(spec: ModelSpec) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    if spec.num_ctx is not None:
        items.append(("num_ctx", spec.num_ctx))
    for key, value in spec.parameters.items():
        items.extend((key, item) for item in (value if isinstance(value, list) else [value]))
    return items


def _details(spec: ModelSpec, *, with_context: bool) -> Json:
    family = spec.effective_family
    details: Json = {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": spec.parameter_size,
        "quantization_level": spec.quantization_level,
    }
    if with_context:
        details["context_length"] = spec.context_length
        details["embedding_length"] = spec.embedding_length
    return details


def model_details(spec: ModelSpec) -> Json:
    """``details`` as ``/api/show`` and ``/api/ps`` give it (without the context, which only ``/api/tags`` adds)."""
    return _details(spec, with_context=False)


def _parameter_count(parameter_size: str) -> int:
    match = re.match(r"^([\d.]+)([BM])$", parameter_size)
    if not match:
        return 0
    return int(float(match.group(1)) * (1_000_000_000 if match.group(2) == "B" else 1_000_000))


def tags_body(specs: list[ModelSpec], version: str) -> Json:
    """``/api/tags``: the most recently modified first; capabilities and the context only from v0.30 on."""
    modern = version_tuple(version) >= (0, 30) or _is_dev_build(version)
    models = []
    for spec in sorted(specs, key=lambda s: s.modified_at, reverse=True):
        entry: Json = {
            "name": spec.name,
            "model": spec.name,
            "modified_at": spec.modified_at,
            "size": spec.size,
            "digest": spec.effective_digest,
            "details": _details(spec, with_context=modern),
        }
        if modern:
            entry["capabilities"] = list(spec.capabilities)
        models.append(entry)
    return {"models": models}


def show_body(spec: ModelSpec, version: str) -> Json:
    """``/api/show``: the Modelfile, its parameters (key padded to 30 columns), model_info and capabilities."""
    params = _parameter_items(spec)
    modelfile = [
        '# Modelfile generated by "ollama show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {spec.name}",
        "",
        f"FROM /root/.ollama/models/blobs/sha256-{spec.effective_digest}",
        f'TEMPLATE """{spec.effective_template}"""',
        *(f"PARAMETER {key} {_go_value(value)}" for key, value in params),
    ]
    body: Json = {"modelfile": "\n".join(modelfile) + "\n"}
    if params:
        body["parameters"] = "\n".join(f"{key:<30} {_go_value(value)}" for key, value in params)
    arch = spec.architecture
    body["template"] = spec.effective_template
    body["details"] = _details(spec, with_context=False)
    body["model_info"] = {
        "general.architecture": arch,
        "general.parameter_count": _parameter_count(spec.parameter_size),
        f"{arch}.context_length": spec.context_length,
        f"{arch}.embedding_length": spec.embedding_length,
    }
    # `capabilities` joined /api/show in 0.6.4; older servers leave clients to guess.
    if version_tuple(version) >= (0, 6, 4) or _is_dev_build(version):
        body["capabilities"] = list(spec.capabilities)
    body["modified_at"] = spec.modified_at
    return body
