"""Whether llama.cpp's json-schema-to-grammar accepts a ``format`` schema, which Ollama checks once the model runs.

The proxy's own check of ``output_config.format`` is held against this one (tests/test_request_fields.py), so its
main failure conditions are kept: a ``$ref`` that is not ``#/…`` or points to nothing, a non-string ``format``,
``oneOf``/``anyOf`` that is not an array, a pattern not anchored with ``^…$``, and a schema with neither a known
``type`` nor anything else to go by (``{"description": "x"}``, ``true``).
"""

from __future__ import annotations

from typing import Any

import orjson

Json = dict[str, Any]

# JSON schema types json-schema-to-grammar has a rule for (its PRIMITIVE_RULES).
_GRAMMAR_TYPES = frozenset(
    ("boolean", "number", "integer", "string", "null", "object", "array", "value", "uuid", "char")
    + ("decimal-part", "integral-part")
)


def _collect_refs(root: Json, node: Any, refs: dict[str, Any]) -> bool:
    """Resolve every ``$ref`` below ``node`` against ``root`` into ``refs``; ``False`` if one cannot be."""
    if isinstance(node, list):
        return all(_collect_refs(root, item, refs) for item in node)
    if not isinstance(node, dict):
        return True
    if "$ref" not in node:
        return all(_collect_refs(root, value, refs) for value in node.values())
    ref = node["$ref"]
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return False
    target: Any = root
    for token in ref[2:].split("/"):
        if not isinstance(target, dict) or token not in target:
            return False
        target = target[token]
    refs[ref] = target
    return True


class _Converter:
    """Walks a schema the way the converter does, answering whether each node has a rule."""

    def __init__(self, refs: dict[str, Any]) -> None:
        self.refs = refs
        self.seen: set[str] = set()

    def visit(self, schema: Any) -> bool:
        if not isinstance(schema, dict):
            return schema is None or schema == []
        if "format" in schema and not isinstance(schema["format"], str):
            return False
        if "$ref" in schema:
            return self._ref(schema["$ref"])
        if "oneOf" in schema or "anyOf" in schema:
            options = schema["oneOf"] if "oneOf" in schema else schema["anyOf"]
            return isinstance(options, list) and all(self.visit(option) for option in options)
        kind = schema.get("type")
        if isinstance(kind, list):
            return all(self.visit({**schema, "type": option}) for option in kind)
        if "const" in schema or "enum" in schema:
            return True
        return self._typed(schema, kind)

    def _ref(self, ref: str) -> bool:
        if ref in self.seen:
            return True
        self.seen.add(ref)
        return self.visit(self.refs.get(ref))

    def _typed(self, schema: Json, kind: Any) -> bool:
        if kind in (None, "object") and isinstance(schema.get("properties"), dict):
            extra = schema.get("additionalProperties")
            properties = all(self.visit(value) for value in schema["properties"].values())
            return properties and (not isinstance(extra, dict) or self.visit(extra))
        if kind in (None, "array") and ("items" in schema or "prefixItems" in schema):
            items = schema["items"] if "items" in schema else schema["prefixItems"]
            return all(self.visit(item) for item in items) if isinstance(items, list) else self.visit(items)
        if kind in (None, "string") and "pattern" in schema:
            pattern = schema["pattern"]
            return isinstance(pattern, str) and len(pattern) >= 2 and pattern[0] == "^" and pattern[-1] == "$"
        if not schema or kind == "object" or "allOf" in schema or "additionalProperties" in schema:
            return True
        return isinstance(kind, str) and kind in _GRAMMAR_TYPES


def schema_converts(root: Json) -> bool:
    refs: dict[str, Any] = {}
    return _collect_refs(root, root, refs) and _Converter(refs).visit(root)


def check_format(value: Any) -> str | None:
    """The error Ollama answers (with a 500) for a ``format`` it cannot use, or ``None``."""
    if value is None or value in ("", "json"):
        return None
    if not isinstance(value, dict):
        # Ollama prints the raw JSON value with Go's %q.
        quoted = orjson.dumps(orjson.dumps(value).decode()).decode()
        return f'invalid format: {quoted}; expected "json" or a valid JSON Schema object'
    if not schema_converts(value):
        return "invalid JSON schema in format"
    return None
