"""Ollama's ``/api/chat`` JSON: the chunks of a reply in Go's field order with its ``omitempty`` rules, the
``stream:false`` aggregate, and the double's prompt-size estimate.

A reply streams thinking chunks, then content chunks, then (rendered mode) one chunk per tool call, then a
``done:true`` chunk with ``done_reason`` and metrics; in native llama-server mode every tool call arrives only in that
final chunk.
"""

from __future__ import annotations

import http
import time
from dataclasses import dataclass
from typing import Any

import orjson

from .script import Reply

Json = dict[str, Any]


def rfc3339_nano(ns: int) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: trailing zeros of the fraction are trimmed, and a zero fraction vanishes."""
    seconds, frac = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def now() -> str:
    return rfc3339_nano(time.time_ns())


def estimate_prompt_tokens(request: Json) -> int:
    """The double's prompt size in tokens: the characters Ollama renders into the prompt, divided by 4.

    That is every message's ``content`` and ``thinking``, its tool calls, and the ``tools`` (Ollama's templates
    write each tool's JSON into the prompt, which is why Claude Code's ~12 tool schemas cost thousands of tokens).
    It drives both the ``truncate:false`` overflow check and the default ``prompt_eval_count``, so tests can predict
    either from the request they send, and a client that decides by usage (Claude Code's auto-compaction) sees sizes
    close to a real model's.
    """
    chars = 0
    for msg in request.get("messages") or []:
        if not isinstance(msg, dict):
            continue
        chars += sum(len(msg[key]) for key in ("content", "thinking") if isinstance(msg.get(key), str))
        if msg.get("tool_calls"):
            chars += len(orjson.dumps(msg["tool_calls"]))
    if request.get("tools"):
        chars += len(orjson.dumps(request["tools"]))
    return chars // 4


def message(content: str, thinking: str = "", tool_calls: list[Json] | None = None) -> Json:
    """``api.Message`` as Ollama serialises it: ``content`` always, the rest only when non-empty."""
    msg: Json = {"role": "assistant", "content": content}
    if thinking:
        msg["thinking"] = thinking
    if tool_calls:
        msg["tool_calls"] = tool_calls
    return msg


def chunk(model: str, msg: Json) -> Json:
    """One ``done:false`` line."""
    return {"model": model, "created_at": now(), "message": msg, "done": False}


def bare_done(model: str, reason: str) -> Json:
    """The answer to a request without messages (``load``)."""
    return {"model": model, "created_at": now(), "message": message(""), "done": True, "done_reason": reason}


def error_of(reply: Reply) -> tuple[int, str] | None:
    """The status and text of a reply scripted to fail before its first byte (an error with status 200 is a 500)."""
    if reply.status == 200 and reply.error is None:
        return None
    status = 500 if reply.status == 200 else reply.status
    return status, reply.error if reply.error is not None else http.HTTPStatus(status).phrase.lower()


def _pieces(text: str, size: int) -> list[str]:
    if not text:
        return []
    if size <= 0:
        return [text]
    return [text[i : i + size] for i in range(0, len(text), size)]


def _normalize_tool_calls(calls: list[Json]) -> list[Json]:
    """Put calls in Ollama's serialisation order, numbering ``function.index`` from 0 where it is missing."""
    out: list[Json] = []
    for position, call in enumerate(calls):
        function = dict(call.get("function") or {})
        ordered_fn: Json = {
            "index": function.pop("index", position),
            "name": function.pop("name", ""),
            "arguments": function.pop("arguments", {}),
        }
        ordered_fn.update(function)
        ordered: Json = {"id": call["id"]} if call.get("id") else {}
        ordered["function"] = ordered_fn
        ordered.update({k: v for k, v in call.items() if k not in ("id", "function")})
        out.append(ordered)
    return out


@dataclass
class Plan:
    """The chunks of one reply, before encoding: shared by the streaming and the aggregated answer."""

    chunks: list[Json]
    final: Json


def _final_chunk(
    reply: Reply, model: str, calls: list[Json], prompt_tokens: int, eval_count: int, load_ns: int
) -> Json:
    final: Json = {
        "model": model,
        "created_at": now(),
        "message": message(reply.content_in_final, tool_calls=calls if reply.tool_calls_in_final else None),
        "done": True,
    }
    if reply.done_reason:
        final["done_reason"] = reply.done_reason
    prompt_ns = prompt_tokens * 250_000
    eval_ns = eval_count * 12_500_000
    metrics: list[tuple[str, int | None]] = [
        ("total_duration", load_ns + prompt_ns + eval_ns + 1_000_000),
        ("load_duration", load_ns),
        ("prompt_eval_count", prompt_tokens),
        ("prompt_eval_cached_count", reply.prompt_eval_cached_count),
        ("prompt_eval_duration", prompt_ns),
        ("eval_count", eval_count),
        ("eval_duration", eval_ns),
    ]
    final.update((key, value) for key, value in metrics if value)  # every metric is omitempty in Go
    return final


def plan_reply(reply: Reply, model: str, request: Json, load_ns: int) -> Plan:
    calls = _normalize_tool_calls(reply.tool_calls)
    chunks = [chunk(model, message("", piece)) for piece in _pieces(reply.thinking, reply.chunk_size)]
    chunks += [chunk(model, message(piece)) for piece in _pieces(reply.content, reply.chunk_size)]
    text_chunks = len(chunks)
    if not reply.tool_calls_in_final:
        chunks += [chunk(model, message("", tool_calls=[call])) for call in calls]
    prompt_tokens = reply.prompt_eval_count
    if prompt_tokens is None:
        prompt_tokens = max(1, estimate_prompt_tokens(request))
    eval_count = text_chunks if reply.eval_count is None else reply.eval_count
    return Plan(chunks, _final_chunk(reply, model, calls, prompt_tokens, eval_count, load_ns))


def aggregate(plan: Plan, with_final: bool) -> Json:
    """The ``stream:false`` answer: thinking and content concatenated, tool calls gathered, metrics from the end."""
    lines = [*plan.chunks, plan.final] if with_final else plan.chunks
    thinking = "".join(line["message"].get("thinking", "") for line in lines)
    content = "".join(line["message"].get("content", "") for line in lines)
    calls = [call for line in lines for call in line["message"].get("tool_calls", [])]
    out: Json = {"model": plan.final["model"], "created_at": now(), "message": message(content, thinking, calls)}
    if not with_final:
        out["done"] = False
        return out
    out.update({k: v for k, v in plan.final.items() if k not in ("model", "created_at", "message")})
    return out


def encode_line(item: Json | bytes) -> bytes:
    """One NDJSON line; raw bytes go as given. ``created_at`` is stamped when sent, as Ollama does."""
    if isinstance(item, bytes):
        return item
    if "created_at" in item:
        item["created_at"] = now()
    return orjson.dumps(item) + b"\n"
