"""`GET /v1/models` and `GET /v1/models/{id}` in Anthropic's shape, built from Ollama's `/api/tags`.

The model map's names are listed too, so a client's model picker (Claude Code's gateway discovery) can offer them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs

from ccop.errors import InvalidRequest, NotFound
from ccop.model_facts import InstalledModel

__all__ = ["list_page", "model_entries", "find_entry"]

_EPOCH = "1970-01-01T00:00:00Z"
# Python before 3.11 cannot parse fractional seconds of nanosecond precision, so they are cut off first.
_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)?$")
_DEFAULT_LIMIT = 20
_MAX_LIMIT = 1000


def _timestamp(value: str | None) -> str:
    """Ollama's RFC 3339 time (nanoseconds, any offset) as Anthropic's UTC `...Z` form, to the second."""
    match = _RFC3339.match(value or "")
    if match is None:
        return _EPOCH
    seconds, offset = match.groups()
    parsed = datetime.fromisoformat(seconds + ("+00:00" if offset in (None, "Z") else offset))
    return parsed.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def model_entries(installed: list[InstalledModel], model_map: Mapping[str, str]) -> list[dict[str, Any]]:
    """The map's names first (what Claude Code asks for), then every installed model."""
    by_name = {model.name: model for model in installed}
    entries: list[dict[str, Any]] = []
    seen: set[str] = set()
    for alias, target in sorted(model_map.items()):
        target_model = by_name.get(target) or by_name.get(f"{target}:latest")
        entries.append(
            {
                "type": "model",
                "id": alias,
                "display_name": f"{alias} → {target}",
                "created_at": _timestamp(target_model.modified_at if target_model else None),
            }
        )
        seen.add(alias)
    for model in installed:
        if model.name in seen:
            continue
        entries.append(
            {"type": "model", "id": model.name, "display_name": model.name, "created_at": _timestamp(model.modified_at)}
        )
        seen.add(model.name)
    return entries


def list_page(entries: list[dict[str, Any]], query_string: bytes) -> dict[str, Any]:
    """Anthropic's cursor pagination: `limit`, `after_id`, `before_id`."""
    query = parse_qs(query_string.decode("latin-1"))
    raw_limit = query.get("limit", [str(_DEFAULT_LIMIT)])[0]
    try:
        limit = int(raw_limit)
    except ValueError:
        raise InvalidRequest(f"limit: expected an integer between 1 and {_MAX_LIMIT}, got {raw_limit!r}") from None
    if not 1 <= limit <= _MAX_LIMIT:
        raise InvalidRequest(f"limit: must be between 1 and {_MAX_LIMIT}, got {limit}")
    ids = [entry["id"] for entry in entries]
    start, end = 0, len(entries)
    if "after_id" in query:
        after = query["after_id"][0]
        start = ids.index(after) + 1 if after in ids else len(entries)
    if "before_id" in query:
        before = query["before_id"][0]
        end = ids.index(before) if before in ids else 0
        start = max(start, end - limit)
    window = entries[start:end]
    page = window[:limit]
    return {
        "data": page,
        "has_more": len(window) > limit or ("before_id" in query and start > 0),
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
    }


def find_entry(entries: list[dict[str, Any]], model_id: str) -> dict[str, Any]:
    wanted = model_id.lower()
    for entry in entries:
        name = str(entry["id"]).lower()
        if name == wanted or name == f"{wanted}:latest":
            return entry
    known = ", ".join(entry["id"] for entry in entries) or "none"
    raise NotFound(f"model {model_id!r} is neither installed in Ollama nor in the model map. Known models: {known}")
