"""Fitting an oversized compaction request into the window (ccop.compaction), on the shape Claude Code sends."""

from __future__ import annotations

from typing import Any

import orjson

from ccop import count_request_tokens
from ccop.compaction import fit_compaction

INSTRUCTION = "CRITICAL: Respond with TEXT ONLY. " + "Summarise the conversation so far. " * 100


def compaction_request(results: int, size: int) -> dict[str, Any]:
    return {
        "model": "m",
        "max_tokens": 20000,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "read the files"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": f"t{n}", "name": "Read", "input": {"file_path": f"/f{n}"}}
                    for n in range(results)
                ],
            },
            {
                "role": "user",
                "content": [
                    *(
                        {"type": "tool_result", "tool_use_id": f"t{n}", "content": f"{n} " * size}
                        for n in range(results)
                    ),
                    {"type": "text", "text": INSTRUCTION},
                ],
            },
            # Claude Code 2.1.330 puts a role: system message after the instruction.
            {"role": "system", "content": "Note: a file was read before the conversation was summarised."},
        ],
    }


def count(body: bytes) -> int:
    return count_request_tokens(body)


def test_every_large_result_is_cut_and_the_instruction_is_kept() -> None:
    request = compaction_request(results=6, size=40_000)
    assert count(orjson.dumps(request)) > 100_000
    fitted = fit_compaction(request, 30_000, count)
    assert fitted is not None and fitted.tokens <= 30_000 and fitted.blocks == 6
    results = request["messages"][2]["content"][:6]
    # Cut evenly: no single result keeps the whole budget while the others lose everything.
    lengths = [len(block["content"]) for block in results]
    assert max(lengths) - min(lengths) < 200
    assert all("left out by ccop" in block["content"] for block in results)
    assert request["messages"][2]["content"][6]["text"] == INSTRUCTION
    assert orjson.loads(fitted.body) == request


def test_a_request_that_fits_is_left_alone() -> None:
    request = compaction_request(results=2, size=5_000)
    before = orjson.dumps(request)
    fitted = fit_compaction(request, 100_000, count)
    assert fitted is not None and fitted.blocks == 0 and fitted.body == before


def test_nothing_to_shorten_is_none() -> None:
    request = {"model": "m", "messages": [{"role": "user", "content": "x " * 50_000}]}
    assert fit_compaction(request, 1_000, count) is None
