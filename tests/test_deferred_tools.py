"""Deferred tools: Claude Code 2.1.330's ToolSearch, through a real `ccop`, with the real CLI where it matters.

Claude Code offers `ToolSearch` and a `DeferredToolPlaceholder` marked `defer_loading: true` ("never call this
tool"), and names the deferred tools (NotebookEdit, WebFetch, Cron*, …) only in a `role: "system"` message. A
ToolSearch answers with `tool_reference` blocks, after which Claude Code adds the loaded tool to `tools[]`, still
marked `defer_loading: true`. The model may also call a deferred tool it never loaded; Claude Code runs it anyway.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import ProxyProcess
from ollama_double import OllamaDouble, Reply, tool_call
from test_claude_code import Claude, cc_proxy, claude_bin  # noqa: F401  (fixtures)

NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "c1",
            "metadata": {},
            "outputs": [],
            "source": ["print(1)\n"],
        }
    ],
    "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
    "nbformat": 4,
    "nbformat_minor": 5,
}


@pytest.fixture
def claude(claude_bin: str, cc_proxy: ProxyProcess, tmp_path: Path) -> Claude:  # noqa: F811
    return Claude(claude_bin, cc_proxy.url, tmp_path)


@pytest.fixture
def notebook(claude: Claude) -> Path:
    path = claude.cwd / "analysis.ipynb"
    path.write_text(json.dumps(NOTEBOOK, indent=1))
    return path


def tool_names(request: dict[str, Any]) -> list[str]:
    return [tool["function"]["name"] for tool in request.get("tools", [])]


def tool_messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [message for message in request["messages"] if message["role"] == "tool"]


def cell_source(path: Path) -> str:
    source = json.loads(path.read_text())["cells"][0]["source"]
    return source if isinstance(source, str) else "".join(source)


def test_tool_search_then_a_deferred_tool_runs(claude: Claude, ollama: OllamaDouble, notebook: Path) -> None:
    """ToolSearch loads NotebookEdit, the model reads the notebook (NotebookEdit requires it) and edits a cell."""
    steps = [
        Reply(
            content="Loading the notebook tool.",
            tool_calls=[tool_call("ToolSearch", {"query": "select:NotebookEdit", "max_results": 5})],
        ),
        Reply(content="Reading it first.", tool_calls=[tool_call("Read", {"file_path": str(notebook)})]),
        Reply(
            content="Editing the cell.",
            tool_calls=[
                tool_call("NotebookEdit", {"notebook_path": str(notebook), "cell_id": "c1", "new_source": "print(2)\n"})
            ],
        ),
        Reply(content="The cell now prints 2."),
    ]
    ollama.set_responder(lambda request: steps[len(tool_messages(request))])
    result = claude.run("make the first cell print 2", "--permission-mode", "acceptEdits")
    assert result["is_error"] is False, result
    assert result["result"] == "The cell now prints 2."
    assert cell_source(notebook) == "print(2)\n"

    first, after_search, _, last = ollama.chat_requests()
    # The placeholder ("never call this tool") never reaches the model; ToolSearch does.
    assert "ToolSearch" in tool_names(first)
    assert "DeferredToolPlaceholder" not in tool_names(first)
    assert "NotebookEdit" not in tool_names(first)
    # The deferred tools are named in Claude Code's system message, kept as user text in its place.
    assert any("NotebookEdit" in message["content"] for message in first["messages"] if message["role"] == "user")
    # The ToolSearch result (a tool_reference block) tells the model the tool is loaded, and from then on its
    # definition is among the tools, still without the placeholder.
    assert tool_messages(after_search)[0]["content"] == "[tool NotebookEdit is loaded and can be called now]"
    assert "NotebookEdit" in tool_names(after_search)
    assert "DeferredToolPlaceholder" not in tool_names(after_search)
    # Claude Code ran the deferred tool and answered without an error.
    edit_call = last["messages"][-2]["tool_calls"][0]["function"]
    assert edit_call["name"] == "NotebookEdit"
    edit_result = tool_messages(last)[-1]
    assert edit_result["tool_name"] == "NotebookEdit"
    assert not edit_result["content"].startswith("Error:")
    assert "Updated cell c1" in edit_result["content"]


def test_a_deferred_tool_called_without_tool_search_reaches_claude_code(
    claude: Claude, ollama: OllamaDouble, notebook: Path
) -> None:
    """NotebookEdit is not in tools[] at all: the call must still reach Claude Code exactly as the model made it."""
    arguments = {"notebook_path": str(notebook), "cell_id": "c1", "new_source": "print(3)\n"}
    steps = [
        Reply(content="Reading.", tool_calls=[tool_call("Read", {"file_path": str(notebook)})]),
        Reply(content="Editing.", tool_calls=[tool_call("NotebookEdit", arguments)]),
        Reply(content="Done."),
    ]
    ollama.set_responder(lambda request: steps[len(tool_messages(request))])
    result = claude.run("make the first cell print 3", "--permission-mode", "acceptEdits")
    assert result["is_error"] is False, result
    assert cell_source(notebook) == "print(3)\n"
    last = ollama.chat_requests()[-1]
    assert "NotebookEdit" not in tool_names(last)
    replayed = last["messages"][-2]["tool_calls"][0]["function"]
    assert (replayed["name"], replayed["arguments"]) == ("NotebookEdit", arguments)  # no rename, no repair
    assert "Updated cell c1" in tool_messages(last)[-1]["content"]


def test_a_loaded_deferred_tool_written_as_text_is_recovered(
    claude: Claude, ollama: OllamaDouble, notebook: Path
) -> None:
    """Once ToolSearch loaded it, a call to NotebookEdit written as text becomes a real call like any offered tool's."""
    written = json.dumps(
        {
            "name": "NotebookEdit",
            "arguments": {"notebook_path": str(notebook), "cell_id": "c1", "new_source": "print(4)\n"},
        }
    )
    steps = [
        Reply(tool_calls=[tool_call("ToolSearch", {"query": "select:NotebookEdit", "max_results": 5})]),
        Reply(tool_calls=[tool_call("Read", {"file_path": str(notebook)})]),
        Reply(content=f"Editing now.\n<tool_call>\n{written}\n</tool_call>"),
        Reply(content="Done."),
    ]
    ollama.set_responder(lambda request: steps[len(tool_messages(request))])
    result = claude.run("make the first cell print 4", "--permission-mode", "acceptEdits")
    assert result["is_error"] is False, result
    assert cell_source(notebook) == "print(4)\n"
    assert tool_messages(ollama.chat_requests()[-1])[-1]["tool_name"] == "NotebookEdit"


# -- the same rules without the CLI ----------------------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {"limit": {"type": "integer"}}}


def post(proxy: ProxyProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{proxy.url}/v1/messages", json=body, timeout=30, trust_env=False)


def deferred_body(messages: list[dict[str, Any]], *extra_tools: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": "llama3.1",
        "max_tokens": 200,
        "messages": messages,
        "tools": [
            {"name": "Search", "description": "find tools", "input_schema": {"type": "object"}},
            {"name": "Later", "description": "deferred", "input_schema": SCHEMA, "defer_loading": True},
            *extra_tools,
        ],
    }


def test_deferred_tools_are_offered_once_a_tool_reference_loads_them(proxy: ProxyProcess, ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(content="ok"), Reply(content="ok"))
    assert post(proxy, deferred_body([{"role": "user", "content": "hi"}])).status_code == 200
    assert tool_names(ollama.chat_requests()[-1]) == ["Search"]

    loaded: list[dict[str, Any]] = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "s1", "name": "Search", "input": {}}]},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "s1",
                    "content": [{"type": "tool_reference", "tool_name": "Later"}],
                }
            ],
        },
    ]
    assert post(proxy, deferred_body(loaded)).status_code == 200
    chat = ollama.chat_requests()[-1]
    assert tool_names(chat) == ["Search", "Later"]
    assert chat["messages"][-1]["content"] == "[tool Later is loaded and can be called now]"


def test_with_anthropics_own_tool_search_every_deferred_tool_is_offered(
    proxy: ProxyProcess, ollama: OllamaDouble
) -> None:
    """The proxy cannot run a `tool_search_tool_*` server tool, so nothing could ever load the deferred tools."""
    ollama.enqueue(Reply(content="ok"))
    server_search = {"type": "tool_search_tool_regex_20251119", "name": "tool_search_tool_regex"}
    assert post(proxy, deferred_body([{"role": "user", "content": "hi"}], server_search)).status_code == 200
    assert tool_names(ollama.chat_requests()[-1]) == ["Search", "Later"]


def test_calls_to_tools_not_offered_are_neither_repaired_nor_recovered(
    proxy: ProxyProcess, ollama: OllamaDouble
) -> None:
    """Schema repair and text-call recovery act only on offered tools; a hidden deferred tool's schema is not used."""
    ollama.enqueue(
        Reply(
            content='<tool_call>{"name": "Later", "arguments": {"limit": "5"}}</tool_call>',
            tool_calls=[tool_call("Later", {"limit": "5"})],
        )
    )
    answer = post(proxy, deferred_body([{"role": "user", "content": "hi"}])).json()
    text, call = answer["content"]
    assert text == {"type": "text", "text": '<tool_call>{"name": "Later", "arguments": {"limit": "5"}}</tool_call>'}
    assert (call["type"], call["name"], call["input"]) == ("tool_use", "Later", {"limit": "5"})
