"""Checks of Anthropic request bodies, before anything is translated.

Each failure is an `InvalidRequest` whose message names the field with a JSON-path-like location
(`messages.2.content.0.text`), so a client author can find the problem without reading our code. Beyond shapes: a
`thread` is refused (the proxy keeps no conversations), a structured-output schema must be one Ollama can turn into
a grammar, and every tool result must answer a call of the assistant turn before it.

Before any of that, `parse_request_body` turns the raw body into JSON and enforces the nesting limit
(`MAX_NESTING`), so no later layer meets a value deeper than it can walk.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from ccop._core import json_nesting_depth
from ccop.errors import InvalidRequest, ThreadUnsupported

__all__ = ["MAX_NESTING", "parse_request_body", "validate_count_tokens_request", "validate_messages_request"]

# How deeply arrays and objects may nest in a request body, counting the body itself (docs/API.md). Every layer after
# validation has a limit of its own, and this one fits them all: the Rust core parses the offered tools with
# serde_json, which stops at 128 levels (the tools array is one level below the body, so a body of 128 leaves it
# 127, the most serde takes); orjson serialises at most 254 levels (the body sent to Ollama nests a `tool_use` input
# one level deeper than the client did); the Python schema walks recurse once or twice per level; and orjson parses
# at most 1024.
MAX_NESTING = 128
# How many leading fields of a too-deep value's path the error shows (the whole path is over 128 fields long).
_SHOWN_PATH_FIELDS = 6

_ROLES = ("user", "assistant", "system")
_THINKING_TYPES = ("enabled", "disabled", "adaptive")
_TOOL_CHOICE_TYPES = ("auto", "any", "tool", "none")
_DOCUMENT_SOURCES = ("base64", "text", "content", "url", "file")
# Go's int64 options overflow above this; nothing sensible needs more.
_MAX_INT_OPTION = 2**31 - 1


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _fail(field: str, expected: str, value: object) -> InvalidRequest:
    return InvalidRequest(f"{field}: expected {expected}, got {_type_name(value)}")


def _require_str(obj: dict[str, Any], key: str, where: str, *, allow_empty: bool = True) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        if key not in obj:
            raise InvalidRequest(f"{where}{key}: field required")
        raise _fail(f"{where}{key}", "a string", value)
    if not allow_empty and not value:
        raise InvalidRequest(f"{where}{key}: must not be empty")
    return value


def _missing(field: str) -> Any:
    raise InvalidRequest(f"{field}: field required")


def _check_int(value: object, field: str, *, minimum: int, maximum: int = _MAX_INT_OPTION) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(field, "an integer", value)
    if not minimum <= value <= maximum:
        raise InvalidRequest(f"{field}: must be between {minimum} and {maximum}, got {value}")


def _check_number(value: object, field: str, *, minimum: float, maximum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(field, "a number", value)
    if not minimum <= value <= maximum:
        raise InvalidRequest(f"{field}: must be between {minimum} and {maximum}, got {value}")


def _check_text_blocks(blocks: list[Any], where: str) -> None:
    for index, block in enumerate(blocks):
        field = f"{where}.{index}"
        if not isinstance(block, dict):
            raise _fail(field, "an object", block)
        _require_str(block, "type", f"{field}.")
        if block["type"] == "text":
            _require_str(block, "text", f"{field}.")


def _check_image(block: dict[str, Any], prefix: str) -> None:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _fail(f"{prefix}source", "an object", source)
    source_type = _require_str(source, "type", f"{prefix}source.")
    if source_type == "base64":
        _require_str(source, "data", f"{prefix}source.", allow_empty=False)
    elif source_type == "url":
        _require_str(source, "url", f"{prefix}source.")


def _check_optional_str(block: dict[str, Any], key: str, prefix: str) -> None:
    if block.get(key) is not None and not isinstance(block[key], str):
        raise _fail(f"{prefix}{key}", "a string", block[key])


def _check_document(block: dict[str, Any], prefix: str) -> None:
    """A `document`: its source says where the text is; translate.py turns each kind into text or a note."""
    source = block.get("source")
    if not isinstance(source, dict):
        if "source" not in block:
            _missing(f"{prefix}source")
        raise _fail(f"{prefix}source", "an object", source)
    where = f"{prefix}source."
    kind = _require_str(source, "type", where)
    if kind in ("base64", "text"):
        _require_str(source, "data", where)
    elif kind == "url":
        _require_str(source, "url", where, allow_empty=False)
    elif kind == "file":
        _require_str(source, "file_id", where, allow_empty=False)
    elif kind == "content":
        content = source.get("content")
        if not isinstance(content, (str, list)):
            if "content" not in source:
                _missing(f"{where}content")
            raise _fail(f"{where}content", "a string or an array of content blocks", content)
        for index, inner in enumerate(content if isinstance(content, list) else ()):
            field = f"{where}content.{index}"
            _check_block(inner, field)
            if inner["type"] not in ("text", "image"):
                raise InvalidRequest(
                    f"{field}.type: a document's content holds text and image blocks, got {inner['type']!r}"
                )
    else:
        raise InvalidRequest(f"{where}type: expected one of {', '.join(_DOCUMENT_SOURCES)}, got {kind!r}")
    _check_optional_str(block, "title", prefix)
    _check_optional_str(block, "context", prefix)


def _check_search_result(block: dict[str, Any], prefix: str) -> None:
    _require_str(block, "source", prefix)
    _require_str(block, "title", prefix)
    content = block.get("content")
    if not isinstance(content, list):
        if "content" not in block:
            _missing(f"{prefix}content")
        raise _fail(f"{prefix}content", "an array of text blocks", content)
    for index, inner in enumerate(content):
        field = f"{prefix}content.{index}"
        if not isinstance(inner, dict):
            raise _fail(field, "a text block object", inner)
        kind = _require_str(inner, "type", f"{field}.")
        if kind != "text":
            raise InvalidRequest(f"{field}.type: a search result holds only text blocks, got {kind!r}")
        _require_str(inner, "text", f"{field}.")


def _check_tool_result(block: dict[str, Any], prefix: str) -> None:
    _require_str(block, "tool_use_id", prefix)
    content = block.get("content")
    if content is not None and not isinstance(content, (str, list)):
        raise _fail(f"{prefix}content", "a string or an array of content blocks", content)
    if isinstance(content, list):
        for index, inner in enumerate(content):
            _check_block(inner, f"{prefix}content.{index}")
    if "is_error" in block and not isinstance(block["is_error"], bool):
        raise _fail(f"{prefix}is_error", "a boolean", block["is_error"])


def _check_block(block: object, where: str) -> None:
    if not isinstance(block, dict):
        raise _fail(where, "a content block object", block)
    kind = _require_str(block, "type", f"{where}.")
    prefix = f"{where}."
    if kind == "text":
        _require_str(block, "text", prefix)
    elif kind == "thinking":
        _require_str(block, "thinking", prefix)
    elif kind == "image":
        _check_image(block, prefix)
    elif kind == "tool_use":
        _require_str(block, "id", prefix)
        _require_str(block, "name", prefix, allow_empty=False)
        if "input" in block and not isinstance(block["input"], (dict, str)):
            raise _fail(f"{prefix}input", "an object", block["input"])
    elif kind == "tool_result":
        _check_tool_result(block, prefix)
    elif kind == "document":
        _check_document(block, prefix)
    elif kind == "search_result":
        _check_search_result(block, prefix)


def _check_messages(messages: object) -> None:
    if not isinstance(messages, list):
        if messages is None:
            _missing("messages")
        raise _fail("messages", "an array of messages", messages)
    if not messages:
        raise InvalidRequest("messages: at least one message is required")
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise _fail(where, "a message object", message)
        role = _require_str(message, "role", f"{where}.")
        if role not in _ROLES:
            raise InvalidRequest(f"{where}.role: expected one of {', '.join(_ROLES)}, got {role!r}")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            if "content" not in message:
                _missing(f"{where}.content")
            raise _fail(f"{where}.content", "a string or an array of content blocks", content)
        for block_index, block in enumerate(content):
            _check_block(block, f"{where}.content.{block_index}")


def _check_tools(tools: object) -> None:
    if not isinstance(tools, list):
        raise _fail("tools", "an array of tool definitions", tools)
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise _fail(f"tools.{index}", "a tool object", tool)
        _require_str(tool, "name", f"tools.{index}.", allow_empty=False)
        if "input_schema" in tool and not isinstance(tool["input_schema"], dict):
            raise _fail(f"tools.{index}.input_schema", "a JSON Schema object", tool["input_schema"])
        if "description" in tool and not isinstance(tool["description"], str):
            raise _fail(f"tools.{index}.description", "a string", tool["description"])


def _check_tool_choice(tool_choice: object) -> None:
    if not isinstance(tool_choice, dict):
        raise _fail("tool_choice", "an object", tool_choice)
    choice = _require_str(tool_choice, "type", "tool_choice.")
    if choice not in _TOOL_CHOICE_TYPES:
        raise InvalidRequest(f"tool_choice.type: expected one of {', '.join(_TOOL_CHOICE_TYPES)}, got {choice!r}")
    if choice == "tool":
        _require_str(tool_choice, "name", "tool_choice.", allow_empty=False)
    parallel = tool_choice.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        raise _fail("tool_choice.disable_parallel_tool_use", "a boolean", parallel)


def _check_thinking(thinking: object) -> None:
    if not isinstance(thinking, dict):
        raise _fail("thinking", "an object", thinking)
    kind = _require_str(thinking, "type", "thinking.")
    if kind not in _THINKING_TYPES:
        raise InvalidRequest(f"thinking.type: expected one of {', '.join(_THINKING_TYPES)}, got {kind!r}")
    if "budget_tokens" in thinking:
        _check_int(thinking["budget_tokens"], "thinking.budget_tokens", minimum=0)


def _check_output_config(config: object) -> None:
    """The container's shape; its `format` is checked with the messages body (`_check_output_format`)."""
    if not isinstance(config, dict):
        raise _fail("output_config", "an object", config)
    effort = config.get("effort")
    if effort is not None and not isinstance(effort, str):
        raise _fail("output_config.effort", "a string such as 'high'", effort)


def _check_metadata(metadata: object) -> None:
    if not isinstance(metadata, dict):
        raise _fail("metadata", "an object", metadata)
    _check_optional_str(metadata, "user_id", "metadata.")


# Top-level fields that may be absent or null, and the check of a value that is there.
_OPTIONAL_FIELDS = (
    ("tools", _check_tools),
    ("tool_choice", _check_tool_choice),
    ("thinking", _check_thinking),
    ("output_config", _check_output_config),
    ("metadata", _check_metadata),
)


def _check_common(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidRequest(f"request body: expected a JSON object, got {_type_name(body)}")
    _require_str(body, "model", "", allow_empty=False)
    _check_messages(body.get("messages"))
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        if not isinstance(system, list):
            raise _fail("system", "a string or an array of text blocks", system)
        _check_text_blocks(system, "system")
    for key, check in _OPTIONAL_FIELDS:
        if body.get(key) is not None:
            check(body[key])
    return body


def _check_tool_results(messages: list[dict[str, Any]]) -> None:
    """Every `tool_result` answers a `tool_use` of the assistant turn just before it, as Anthropic requires.

    Ollama does not check this, and a model shown a result for a call it never made gets confused; Anthropic answers
    the same 400 with this wording. Consecutive messages of one role are one turn (Anthropic merges them), and
    `role: "system"` messages, which Claude Code places between turns, belong to neither side.
    """
    turn_ids: set[str] = set()
    previous_role = None
    for index, message in enumerate(messages):
        role = message["role"]
        if role == "system":
            continue
        content = message["content"]
        if role == "assistant":
            if previous_role != "assistant":
                turn_ids = set()
            if isinstance(content, list):
                turn_ids.update(block["id"] for block in content if block["type"] == "tool_use")
        elif isinstance(content, list):
            for block_index, block in enumerate(content):
                if block["type"] == "tool_result" and block["tool_use_id"] not in turn_ids:
                    raise InvalidRequest(
                        f"messages.{index}.content.{block_index}: unexpected `tool_use_id` found in `tool_result` "
                        f"blocks: {block['tool_use_id']}. Each `tool_result` block must have a corresponding "
                        "`tool_use` block in the previous message."
                    )
        previous_role = role


# --------------------------------------------------------------------------------------------------------------------
# Structured outputs: the JSON schema that becomes Ollama's `format`
# --------------------------------------------------------------------------------------------------------------------
#
# Ollama turns a `format` schema into a sampling grammar with llama.cpp's json-schema-to-grammar
# (common/json-schema-to-grammar.cpp, vendored by Ollama). A schema the converter rejects fails only once the model
# runs: a 500 "invalid JSON schema in format", or an error in the middle of a stream, and a few malformed patterns make
# the converter loop forever. `_FormatSchema` walks the schema the way the converter does and stops at the first of
# its failure conditions, so the client gets a 400 naming the part of the schema instead.

# Types the converter has a rule for (PRIMITIVE_RULES); any other `type` is "Unrecognized schema".
_GRAMMAR_TYPES = frozenset(
    ("boolean", "number", "integer", "string", "null", "object", "array", "value", "uuid", "char")
    + ("decimal-part", "integral-part")
)
# String formats with a rule of their own; these take precedence over `minLength` / `maxLength`.
_GRAMMAR_FORMATS = re.compile(r"uuid[1-5]?|date|time|date-time")
# Pattern characters that are never part of a literal (NON_LITERAL_SET).
_PATTERN_SYNTAX = frozenset("|.()[]{}*+?")
_INT_BOUNDS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum")
_C_INT = re.compile(r"\s*([+-]?\d+)")


def _is_c_int(text: str) -> bool:
    """Whether C++ `std::stoi` reads an int from `text` (leading digits, in range) rather than throwing."""
    match = _C_INT.match(text)
    return match is not None and -(2**31) <= int(match.group(1)) < 2**31


def _pattern_problem(pattern: str) -> str | None:
    """Why the converter's regex reader (`_visit_pattern`) rejects or hangs on `pattern`, or None."""
    if not (pattern.startswith("^") and pattern.endswith("$")) or len(pattern) < 2:
        return "a pattern must start with '^' and end with '$'"
    body = pattern[1:-1]
    i = 0
    items = [0]  # items read so far at each nesting level: a quantifier needs something before it
    while i < len(body):
        char = body[i]
        if char == "(":
            items.append(0)
            i += 1
            continue
        if char == ")" and len(items) == 1:
            return None  # the converter stops reading at an unmatched ')'
        if char in "*+?{":
            problem, i = _quantifier_problem(body, i, items[-1])
            if problem:
                return problem
            continue
        if char in "]}":
            # The converter finds no literal here and never advances: it loops forever.
            return f"unbalanced {char!r}"
        if char == ")":
            items.pop()
            i += 1
        else:
            i = _after_atom(body, i)
            if i < 0:
                return "unbalanced square brackets"
        items[-1] += 1
    return None


def _quantifier_problem(body: str, i: int, items_before: int) -> tuple[str | None, int]:
    """A quantifier at `body[i]`: what is wrong with it, else None and where reading goes on."""
    char = body[i]
    if char != "{":
        return (None if items_before else f"nothing to repeat before {char!r}"), i + 1
    end = body.find("}", i)
    if end < 0:
        return "unbalanced curly brackets", i
    numbers = body[i + 1 : end].split(",")
    if len(numbers) > 2:
        return "wrong number of values in curly brackets", i
    if not _is_c_int(numbers[0]) and (len(numbers) == 1 or numbers[0]):
        return "invalid number in curly brackets", i
    if len(numbers) == 2 and numbers[1] and not _is_c_int(numbers[1]):
        return "invalid number in curly brackets", i
    if not items_before:
        return "nothing to repeat before '{'", i
    return None, end + 1


def _after_atom(body: str, i: int) -> int:
    """Where the atom at `body[i]` (a class, `.`, `|` or a run of literals) ends; -1 for an unclosed class."""
    char = body[i]
    length = len(body)
    if char == "[":
        i += 1
        while i < length and body[i] != "]":
            i += 2 if body[i] == "\\" else 1
        return i + 1 if i < length else -1
    if char in ".|":
        return i + 1
    i += 2 if char == "\\" else 1
    while i < length and (body[i] == "\\" or body[i] not in _PATTERN_SYNTAX):
        i += 2 if body[i] == "\\" else 1
    return i


class _FormatSchema:
    """One walk over a `format` schema, mirroring the converter's `resolve_refs` and `visit`."""

    def __init__(self, root: dict[str, Any], where: str) -> None:
        self.root = root
        self.where = where
        # Each reference is converted once, which is also what lets recursive schemas through.
        self.visited: set[str] = set()

    def fail(self, path: str, reason: str) -> InvalidRequest:
        return InvalidRequest(f"{path}: Ollama cannot use this JSON schema as an output format: {reason}")

    def check(self) -> None:
        try:
            self.check_refs(self.root, self.where)
            self.visit(self.root, self.where)
        except RecursionError:
            # The body nests at most MAX_NESTING levels, but chains of `$ref`s can still take the walk deeper.
            raise InvalidRequest(f"{self.where}: the schema is nested too deeply") from None

    def target(self, ref: str) -> tuple[Any, str]:
        """The schema a checked `#/…` reference points to, and its path."""
        node: Any = self.root
        for token in ref[2:].split("/"):
            node = node[token]
        return node, self.where + "".join(f".{token}" for token in ref[2:].split("/"))

    def check_refs(self, node: object, path: str) -> None:
        """Every `$ref` is a string pointing into the schema itself (the converter cannot fetch anything)."""
        if isinstance(node, list):
            for index, item in enumerate(node):
                self.check_refs(item, f"{path}.{index}")
            return
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            if key != "$ref":
                # Also beside a `$ref`, where the converter does not look: a reference that resolves nowhere is a
                # mistake wherever it is, and the walk below may still reach it through another reference.
                self.check_refs(value, f"{path}.{key}")
        if "$ref" not in node:
            return
        ref = node["$ref"]
        if not isinstance(ref, str):
            raise _fail(f"{path}.$ref", "a string", ref)
        if not ref.startswith("#/"):
            raise self.fail(
                f"{path}.$ref",
                f"{ref!r} is not supported; only references into the schema itself, such as "
                "'#/$defs/Name', can be resolved",
            )
        node = self.root
        for token in ref[2:].split("/"):
            if not isinstance(node, dict) or token not in node:
                raise self.fail(f"{path}.$ref", f"{ref!r} points to nothing in the schema ({token!r} not found)")
            node = node[token]

    def count(self, schema: dict[str, Any], key: str, path: str) -> None:
        """The converter reads these keywords as C++ ints: a number (or boolean) is required."""
        value = schema[key]
        if value is None or not isinstance(value, (int, float)):
            raise _fail(f"{path}.{key}", "a number", value)

    def visit(self, schema: object, path: str) -> None:
        if not isinstance(schema, dict):
            # An empty value means "any object" to the converter; anything else (`true`, a string) has no rule.
            if schema is None or schema == []:
                return
            raise self.fail(path, f"expected a schema object, got {_type_name(schema)}")
        if "format" in schema and not isinstance(schema["format"], str):
            raise _fail(f"{path}.format", "a string", schema["format"])
        kind = schema.get("type")
        if "$ref" in schema:
            ref = schema["$ref"]
            if ref not in self.visited:
                self.visited.add(ref)
                self.visit(*self.target(ref))
        elif "oneOf" in schema or "anyOf" in schema:
            key = "oneOf" if "oneOf" in schema else "anyOf"
            self.visit_all(schema[key], f"{path}.{key}")
        elif isinstance(kind, list):
            for option in kind:
                self.visit({**schema, "type": option}, path)
        elif "const" not in schema and "enum" not in schema:
            self.visit_typed(schema, kind, path)

    def visit_typed(self, schema: dict[str, Any], kind: object, path: str) -> None:
        """The converter's rules after references, alternatives and constants, tried in its order."""
        object_like = kind is None or kind == "object"
        string_like = kind is None or kind == "string"
        if object_like and ("properties" in schema or schema.get("additionalProperties", True) is not True):
            self.visit_properties(schema, path)
        elif object_like and "allOf" in schema:
            self.visit_all_of(schema["allOf"], f"{path}.allOf")
        elif (kind is None or kind == "array") and ("items" in schema or "prefixItems" in schema):
            self.visit_items(schema, path)
        elif string_like and "pattern" in schema:
            self.check_pattern(schema["pattern"], f"{path}.pattern")
        elif string_like and _GRAMMAR_FORMATS.fullmatch(schema.get("format", "")):
            return
        elif kind == "string" and ("minLength" in schema or "maxLength" in schema):
            for key in ("minLength", "maxLength"):
                if key in schema:
                    self.count(schema, key, path)
        elif kind == "integer" and any(key in schema for key in _INT_BOUNDS):
            for pair in (_INT_BOUNDS[:2], _INT_BOUNDS[2:]):
                used = next((key for key in pair if key in schema), None)
                if used:
                    self.count(schema, used, path)
        elif schema and kind != "object" and not (isinstance(kind, str) and kind in _GRAMMAR_TYPES):
            self.fail_untyped(kind, path)

    def visit_properties(self, schema: dict[str, Any], path: str) -> None:
        properties = schema.get("properties", {})
        if not isinstance(properties, dict):
            raise _fail(f"{path}.properties", "an object", properties)
        for name, value in properties.items():
            self.visit(value, f"{path}.properties.{name}")
        if isinstance(schema.get("additionalProperties"), dict):
            self.visit(schema["additionalProperties"], f"{path}.additionalProperties")

    def visit_all_of(self, parts: object, path: str) -> None:
        if not isinstance(parts, list):
            raise _fail(path, "an array of schemas", parts)
        for index, part in enumerate(parts):
            where = f"{path}.{index}"
            if isinstance(part, dict) and "anyOf" in part:
                if not isinstance(part["anyOf"], list):
                    raise _fail(f"{where}.anyOf", "an array of schemas", part["anyOf"])
                for option, component in enumerate(part["anyOf"]):
                    self.all_of_component(component, f"{where}.anyOf.{option}", set())
            else:
                self.all_of_component(part, where, set())

    def visit_items(self, schema: dict[str, Any], path: str) -> None:
        key = "items" if "items" in schema else "prefixItems"
        if isinstance(schema[key], list):
            self.visit_all(schema[key], f"{path}.{key}")
        else:
            self.visit(schema[key], f"{path}.{key}")
            if "minItems" in schema:
                self.count(schema, "minItems", path)

    def check_pattern(self, pattern: object, path: str) -> None:
        if not isinstance(pattern, str):
            raise _fail(path, "a string", pattern)
        problem = _pattern_problem(pattern)
        if problem:
            raise self.fail(path, problem)

    def fail_untyped(self, kind: object, path: str) -> None:
        if kind is None:
            raise self.fail(
                path,
                "it says nothing the model can produce; give it a `type` (or `properties`, `items`, "
                "`anyOf`, `enum`, `const`, `$ref`)",
            )
        raise self.fail(
            f"{path}.type", f"unknown type {kind!r}; use object, array, string, number, integer, boolean or null"
        )

    def visit_all(self, schemas: object, path: str) -> None:
        if not isinstance(schemas, list):
            raise _fail(path, "an array of schemas", schemas)
        for index, schema in enumerate(schemas):
            self.visit(schema, f"{path}.{index}")

    def all_of_component(self, component: object, path: str, seen: set[str]) -> None:
        """An `allOf` part contributes its properties; a reference is followed to the schema it names."""
        if not isinstance(component, dict):
            return
        if "$ref" in component:
            ref = component["$ref"]
            if ref in seen:
                # The converter follows these without remembering where it has been, and never returns.
                raise self.fail(f"{path}.$ref", f"{ref!r} refers back to itself through `allOf`")
            self.all_of_component(self.target(ref)[0], self.target(ref)[1], seen | {ref})
        elif "properties" in component:
            properties = component["properties"]
            if not isinstance(properties, dict):
                raise _fail(f"{path}.properties", "an object", properties)
            for name, value in properties.items():
                self.visit(value, f"{path}.properties.{name}")


def _check_output_format(body: dict[str, Any]) -> None:
    """`output_config.format` (or its older top-level name `output_format`) is a JSON schema Ollama can take."""
    config = body.get("output_config")  # an object or null (`_check_output_config`)
    in_config = config.get("format") if config else None
    legacy = body.get("output_format")
    if in_config is not None and legacy is not None:
        raise InvalidRequest(
            "output_format: both `output_format` and `output_config.format` were given; send only "
            "`output_config.format` (`output_format` is its deprecated name)"
        )
    where = "output_config.format" if in_config is not None else "output_format"
    output_format = in_config if in_config is not None else legacy
    if output_format is None:
        return
    if not isinstance(output_format, dict):
        raise _fail(where, 'an object such as {"type": "json_schema", "schema": {…}}', output_format)
    kind = _require_str(output_format, "type", f"{where}.")
    if kind != "json_schema":
        raise InvalidRequest(
            f"{where}.type: expected 'json_schema', got {kind!r}; structured outputs take a JSON schema: "
            '{"type": "json_schema", "schema": {…}}'
        )
    schema = output_format.get("schema")
    if not isinstance(schema, dict):
        if "schema" not in output_format:
            _missing(f"{where}.schema")
        raise _fail(f"{where}.schema", "a JSON Schema object", schema)
    _FormatSchema(schema, f"{where}.schema").check()


def _too_deep(body: object) -> InvalidRequest:
    """The error for a body nested deeper than MAX_NESTING, naming the start of the first path that goes too deep."""
    where = "request body"
    stack: list[tuple[object, tuple[str, ...]]] = [(body, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            children: Any = value.items()
        elif isinstance(value, list):
            children = enumerate(value)
        else:
            continue
        if len(path) >= MAX_NESTING:
            where = ".".join(path[:_SHOWN_PATH_FIELDS]) + ".…"
            break
        stack.extend((child, (*path, str(key))) for key, child in reversed(list(children)))
    return InvalidRequest(
        f"{where}: nested more than {MAX_NESTING} levels deep; arrays and objects in a request may nest at most "
        f"{MAX_NESTING} levels (counting the request body itself), so flatten this value"
    )


def parse_request_body(raw: bytes) -> Any:
    """The JSON value of a request body, within the nesting limit; any other body is a 400."""
    if not raw:
        raise InvalidRequest("request body is empty; send a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson gives up at 1024 levels with "depth limit exceeded"; the nesting limit is the thing to report.
        if json_nesting_depth(raw) > MAX_NESTING:
            raise _too_deep(None) from None
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if json_nesting_depth(raw) > MAX_NESTING:
        raise _too_deep(body)
    return body


def validate_messages_request(body: object) -> dict[str, Any]:
    """Check a `/v1/messages` body; returns it typed as a dict."""
    if isinstance(body, dict) and body.get("thread") is not None:
        # Checked first: a thread's `continue` turn carries only the newest messages, which would fail other
        # checks (a tool result without its call), and only this error makes the SDKs resend the full history.
        raise ThreadUnsupported(
            "thread: this server keeps no conversation between requests, so message threads are not supported; "
            "send the whole conversation in `messages` without `thread`"
        )
    checked = _check_common(body)
    if "max_tokens" not in checked:
        _missing("max_tokens")
    _check_int(checked["max_tokens"], "max_tokens", minimum=1)
    if "stream" in checked and not isinstance(checked["stream"], bool):
        raise _fail("stream", "a boolean", checked["stream"])
    if checked.get("temperature") is not None:
        _check_number(checked["temperature"], "temperature", minimum=0.0, maximum=2.0)
    if checked.get("top_p") is not None:
        _check_number(checked["top_p"], "top_p", minimum=0.0, maximum=1.0)
    if checked.get("top_k") is not None:
        _check_int(checked["top_k"], "top_k", minimum=0, maximum=100_000)
    stop = checked.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(item, str) and item for item in stop):
            raise _fail("stop_sequences", "an array of non-empty strings", stop)
    _check_output_format(checked)
    _check_tool_results(checked["messages"])
    return checked


def validate_count_tokens_request(body: object) -> dict[str, Any]:
    """Check a `/v1/messages/count_tokens` body (the messages body without `max_tokens`)."""
    return _check_common(body)
