"""Anthropic Messages request → Ollama `/api/chat` request, as pure functions over dicts.

Nothing the client sent is dropped silently: content Ollama cannot represent becomes a short bracketed note in the
text, and each replacement is reported in `ChatPlan.notes` for the log.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ccop._core import heal_tool_arguments
from ccop.errors import InvalidRequest
from ccop.model_names import ThinkLevel, budget_to_level

__all__ = ["ChatPlan", "ModelTraits", "build_chat_request", "strip_billing_header"]

# Claude Code prefixes its system prompt with a per-request billing line; dropping it keeps the prompt prefix
# byte-identical between turns, so Ollama can reuse its KV cache instead of re-reading the whole prompt.
_BILLING_LINE = re.compile(r"^x-anthropic-billing-header:[^\n]*(?:\n|$)", re.MULTILINE)
_DATA_URL_PREFIX = re.compile(r"^data:[^;,]*;base64,")
_EFFORT_LEVELS: dict[str, ThinkLevel] = {
    "low": "low",
    "medium": "medium",
    "high": "high",
    "max": "high",
    "xhigh": "high",
}


@dataclass(frozen=True)
class ModelTraits:
    """What the proxy knows about the target model when it builds the request."""

    thinks: bool
    takes_think_levels: bool = False
    vision: bool = True
    # The context window to request; None leaves it to Ollama.
    num_ctx: int | None = None


@dataclass
class ChatPlan:
    """The Ollama request plus what the response side needs to know about it."""

    body: dict[str, Any]
    ollama_model: str
    max_tokens: int
    stop_sequences: list[str]
    stream: bool
    notes: list[str] = field(default_factory=list)
    # The Anthropic definitions of the tools sent to Ollama (the model knows exactly these): they decide which calls
    # the answer's schema repair and text-call recovery act on.
    offered_tools: list[dict[str, Any]] = field(default_factory=list)


def strip_billing_header(text: str) -> str:
    return _BILLING_LINE.sub("", text)


def _system_text(system: str | list[Any] | None) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        parts = [system]
    else:
        parts = [block.get("text", "") for block in system if isinstance(block, dict) and block.get("type") == "text"]
    cleaned = (strip_billing_header(part).strip("\n") for part in parts)
    # Blocks are joined with a newline: gluing them together would fuse the last and first words of neighbours.
    return "\n".join(part for part in cleaned if part)


def _image_data(block: dict[str, Any], where: str) -> str:
    source = block["source"]
    if source.get("type") != "base64":
        kind = source.get("type")
        raise InvalidRequest(
            f"{where}.source.type: {kind!r} images are not supported; Ollama takes only inline images, so send the "
            "image as a base64 source"
        )
    # Ollama wants raw standard base64; a data: URL prefix makes it answer 400 "illegal base64 data".
    return _DATA_URL_PREFIX.sub("", source["data"])


def _document_text(block: dict[str, Any], notes: list[str]) -> str:
    """A validated `document` block as text: its own text where the request carries it, else a note saying why not."""
    source = block["source"]
    title = block.get("title")
    header = f"[document: {title}]" if title else "[document]"
    context = block.get("context")
    prefix = header + (f"\n{context}" if context else "")
    kind = source["type"]
    if kind == "text":
        return f"{prefix}\n{source['data']}"
    if kind == "content":
        content = source["content"]
        if isinstance(content, str):
            return f"{prefix}\n{content}"
        parts = []
        for inner in content:
            if inner["type"] == "text":
                parts.append(inner["text"])
            else:
                notes.append("image inside a document replaced by a note")
                parts.append("[image omitted: images inside a document cannot be passed to Ollama]")
        return "\n".join([prefix, *parts])
    notes.append(f"document ({kind}) replaced by a note")
    if kind == "url":
        # Ollama fetches nothing; the address at least tells the model what the user pointed at.
        return f"{header} [the document at {source['url']} cannot be passed to Ollama and was left out]"
    return f"{header} [the document's {kind} content cannot be passed to Ollama and was left out]"


def _other_block_text(block: dict[str, Any], notes: list[str]) -> str:
    """Text for block types Ollama has no place for: keep any text, note the rest."""
    kind = block.get("type")
    if kind == "document":
        return _document_text(block, notes)
    if kind == "tool_reference" and isinstance(block.get("tool_name"), str):
        # A client-side tool search's answer (Claude Code's ToolSearch): the named deferred tool is now loaded, and
        # its definition is among the tools sent to Ollama (see `_loaded_tools`).
        return f"[tool {block['tool_name']} is loaded and can be called now]"
    if kind == "search_result":
        # Validated: `title` and `source` are strings, `content` holds only text blocks.
        texts = [inner["text"] for inner in block["content"]]
        return "\n".join([f"[search result: {block['title']} ({block['source']})]", *texts])
    # The type is the client's text: repr keeps a newline in it from starting a line of its own in the log.
    if isinstance(block.get("text"), str):
        notes.append(f"{kind!r} block kept as text")
        return str(block["text"])
    notes.append(f"{kind!r} block replaced by a note")
    return f"[{kind} block omitted: Ollama cannot represent it]"


def _tool_result_content(block: dict[str, Any], where: str, notes: list[str]) -> tuple[str, list[str]]:
    content = block.get("content")
    texts: list[str] = []
    images: list[str] = []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for index, inner in enumerate(content):
            kind = inner.get("type")
            if kind == "text":
                texts.append(inner["text"])
            elif kind == "image":
                images.append(_image_data(inner, f"{where}.content.{index}"))
            else:
                texts.append(_other_block_text(inner, notes))
    text = "\n".join(texts)
    if block.get("is_error"):
        # Ollama has no error flag on tool messages; without this marker a failure reads like a success.
        text = f"Error: {text}" if text else "Error: the tool failed without output"
    return text, images


def _translate_user(
    message: dict[str, Any], where: str, tool_names: Mapping[str, str], notes: list[str], vision: bool
) -> list[dict[str, Any]]:
    content = message["content"]
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tool_messages: list[dict[str, Any]] = []
    texts: list[str] = []
    images: list[str] = []
    for index, block in enumerate(content):
        kind = block["type"]
        block_where = f"{where}.content.{index}"
        if kind == "text":
            texts.append(block["text"])
        elif kind == "image":
            data = _image_data(block, block_where)
            if vision:
                images.append(data)
            else:
                texts.append(_image_note(notes))
        elif kind == "tool_result":
            text, result_images = _tool_result_content(block, block_where, notes)
            if result_images and not vision:
                text = "\n".join([text, *(_image_note(notes) for _ in result_images)]).strip("\n")
                result_images = []
            tool_message: dict[str, Any] = {"role": "tool", "content": text, "tool_call_id": block["tool_use_id"]}
            name = tool_names.get(block["tool_use_id"])
            if name:
                tool_message["tool_name"] = name
            if result_images:
                tool_message["images"] = result_images
            tool_messages.append(tool_message)
        elif kind in ("thinking", "redacted_thinking"):
            notes.append(f"{kind} block in a user message kept as text")
            texts.append(block.get("thinking") or "[redacted thinking]")
        else:
            texts.append(_other_block_text(block, notes))
    result = tool_messages
    # Text beside tool results (Claude Code's reminders, user interjections) follows the tool messages, in order.
    if texts or images or not tool_messages:
        user: dict[str, Any] = {"role": "user", "content": "\n".join(texts)}
        if images:
            user["images"] = images
        result.append(user)
    return result


def _image_note(notes: list[str]) -> str:
    notes.append("image replaced by a note: the model cannot see images")
    return "[image omitted: this model cannot see images]"


def _translate_assistant(message: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    content = message["content"]
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    thinking: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in content:
        kind = block["type"]
        if kind == "text":
            texts.append(block["text"])
        elif kind == "thinking":
            thinking.append(block["thinking"])
        elif kind == "redacted_thinking":
            notes.append("redacted_thinking replaced by a note")
            thinking.append("[redacted thinking]")
        elif kind == "tool_use":
            tool_calls.append(
                {
                    "id": block["id"],
                    "function": {
                        "index": len(tool_calls),
                        "name": block["name"],
                        "arguments": _tool_input(block.get("input", {})),
                    },
                }
            )
        else:
            texts.append(_other_block_text(block, notes))
    result: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts)}
    if thinking:
        result["thinking"] = "\n".join(thinking)
    if tool_calls:
        result["tool_calls"] = tool_calls
    return result


def _tool_input(value: object) -> dict[str, Any]:
    """Ollama insists on an object; a string input (some clients replay what a model produced) is healed."""
    if isinstance(value, dict):
        return value
    healed, _kind = heal_tool_arguments(value if isinstance(value, str) else orjson.dumps(value))
    result: dict[str, Any] = orjson.loads(healed)
    return result


def _translate_system_message(message: dict[str, Any]) -> dict[str, Any] | None:
    """A `role: system` entry inside `messages` becomes user-side text at its position.

    Ollama's templates hoist system messages to the front of the prompt, which would change the prompt prefix on
    every turn and defeat the KV cache; as user text it stays where Claude Code put it.
    """
    content = message["content"]
    if isinstance(content, str):
        text = content
    else:
        text = "\n".join(block["text"] for block in content if block.get("type") == "text" and block.get("text"))
    if not text:
        return None
    return {"role": "user", "content": text}


def _loaded_tools(messages: list[dict[str, Any]]) -> set[str]:
    """The deferred tools a client-side tool search has loaded: names of `tool_reference` blocks in tool results."""
    loaded: set[str] = set()
    for message in messages:
        content = message["content"]
        if message["role"] != "user" or isinstance(content, str):
            continue
        for block in content:
            inner = block.get("content") if block["type"] == "tool_result" else None
            if isinstance(inner, list):
                loaded.update(
                    ref["tool_name"]
                    for ref in inner
                    if ref.get("type") == "tool_reference" and isinstance(ref.get("tool_name"), str)
                )
    return loaded


def _offered_tools(body: dict[str, Any], notes: list[str]) -> list[dict[str, Any]]:
    """The request's tools the model is told about, as the request defines them.

    A tool with `defer_loading: true` stays hidden until a tool search loads it, as on Anthropic's side: Claude Code
    offers `ToolSearch` plus a `DeferredToolPlaceholder` ("never call this tool") and adds each deferred tool once its
    ToolSearch result (`tool_reference` blocks) names it, so the placeholder never reaches the model. Anthropic's own
    tool search (`tool_search_tool_*` server tools) cannot run here, so with one of those every deferred tool is
    offered instead of none.
    """
    tools = body.get("tools") or []
    server_search = any(str(tool.get("type", "")).startswith("tool_search_tool_") for tool in tools)
    loaded = None if server_search else _loaded_tools(body["messages"])
    offered: list[dict[str, Any]] = []
    for tool in tools:
        if tool.get("input_schema") is None:
            # Server tools (web_search_…, code_execution_…) run on Anthropic's side and have no schema to offer.
            notes.append(f"server tool {tool['name']!r} left out (no input_schema)")
        elif tool.get("defer_loading") is not True or loaded is None or tool["name"] in loaded:
            offered.append(tool)
    return offered


def _ollama_tool(tool: dict[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _output_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema of a structured-output request (validated), under its current or its deprecated name."""
    config = body.get("output_config") or {}
    output_format = config.get("format") or body.get("output_format")
    return output_format["schema"] if output_format else None


def _tool_choice_instruction(choice: dict[str, Any] | None) -> str:
    if not choice:
        return ""
    kind = choice.get("type")
    lines = []
    if kind == "any":
        lines.append("You must answer by calling one or more of the available tools.")
    elif kind == "tool":
        lines.append(f"You must answer by calling the tool named {choice['name']!r}.")
    if choice.get("disable_parallel_tool_use") and kind != "none":
        lines.append("Call at most one tool in this answer.")
    return "\n".join(lines)


def _think_value(body: dict[str, Any], traits: ModelTraits, adaptive_thinking: bool) -> bool | ThinkLevel:
    thinking = body.get("thinking")
    if not traits.thinks or not thinking or thinking.get("type") == "disabled":
        return False
    if thinking.get("type") == "adaptive" and not adaptive_thinking:
        return False
    if not traits.takes_think_levels:
        return True
    effort = (body.get("output_config") or {}).get("effort")
    if isinstance(effort, str) and effort in _EFFORT_LEVELS:
        return _EFFORT_LEVELS[effort]
    budget = thinking.get("budget_tokens")
    if isinstance(budget, int) and not isinstance(budget, bool):
        return budget_to_level(budget)
    return "medium"


def _ollama_messages(body: dict[str, Any], vision: bool, notes: list[str]) -> list[dict[str, Any]]:
    """The conversation in Ollama's shape: the system prompt (with any tool-choice instruction) first."""
    messages: list[dict[str, Any]] = []
    system = _system_text(body.get("system"))
    instruction = _tool_choice_instruction(body.get("tool_choice"))
    if instruction:
        system = f"{system}\n\n{instruction}" if system else instruction
    if system:
        messages.append({"role": "system", "content": system})

    tool_names: dict[str, str] = {}
    for index, message in enumerate(body["messages"]):
        role = message["role"]
        if role == "assistant":
            translated = _translate_assistant(message, notes)
            for call in translated.get("tool_calls", ()):
                tool_names[call["id"]] = call["function"]["name"]
            messages.append(translated)
        elif role == "user":
            messages.extend(_translate_user(message, f"messages.{index}", tool_names, notes, vision))
        else:
            system_message = _translate_system_message(message)
            if system_message is not None:
                messages.append(system_message)
    return messages


def _sampling_options(body: dict[str, Any], num_ctx: int | None) -> dict[str, Any]:
    # Claude Code asks for 32k–128k output tokens; more than the context window can never be produced, and an
    # oversized num_predict only hides the real limit from Ollama.
    max_tokens = body["max_tokens"]
    options: dict[str, Any] = {"num_predict": min(max_tokens, num_ctx) if num_ctx else max_tokens}
    if num_ctx is not None:
        # The same value on every request for a model: a different num_ctx makes Ollama reload it.
        options["num_ctx"] = num_ctx
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            options[key] = body[key]
    return options


def build_chat_request(
    body: dict[str, Any],
    *,
    ollama_model: str,
    traits: ModelTraits,
    strict_thinking: bool,
    adaptive_thinking: bool = True,
) -> ChatPlan:
    """Translate a validated `/v1/messages` body into an Ollama `/api/chat` request."""
    notes: list[str] = []
    messages = _ollama_messages(body, traits.vision, notes)

    thinking = body.get("thinking") or {}
    if thinking.get("type") == "enabled" and not traits.thinks and strict_thinking:
        raise InvalidRequest(
            f"thinking: model {ollama_model!r} cannot think; choose a thinking-capable model, or remove `thinking` "
            "(the proxy drops it instead when started without --strict-thinking)"
        )
    think = _think_value(body, traits, adaptive_thinking)
    if thinking.get("type") == "enabled" and not traits.thinks:
        # Only an explicit request is worth a log line; `adaptive` (Claude Code's default) means "if you can".
        notes.append(f"thinking dropped: {ollama_model} cannot think")

    request: dict[str, Any] = {
        "model": ollama_model,
        "messages": messages,
        # Always stream from Ollama: one code path for both client modes, and a client disconnect can stop
        # generation at any moment.
        "stream": True,
        # Explicit, because Ollama turns thinking on by default for every model that can think.
        "think": think,
        "options": _sampling_options(body, traits.num_ctx),
        # Without this Ollama silently drops the oldest messages of a prompt that does not fit; an error lets the
        # client compact the conversation instead.
        "truncate": False,
    }
    offered: list[dict[str, Any]] = []
    choice = body.get("tool_choice")
    if not choice or choice.get("type") != "none":
        offered = _offered_tools(body, notes)
        if offered:
            request["tools"] = [_ollama_tool(tool) for tool in offered]
    schema = _output_schema(body)
    if schema is not None:
        # Ollama constrains the answer to the schema with a grammar (for a thinking model, once thinking is done).
        request["format"] = schema

    return ChatPlan(
        body=request,
        ollama_model=ollama_model,
        max_tokens=body["max_tokens"],
        stop_sequences=list(body.get("stop_sequences") or ()),
        stream=bool(body.get("stream", False)),
        notes=notes,
        offered_tools=offered,
    )
