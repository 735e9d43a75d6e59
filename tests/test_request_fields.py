"""Request fields of the 2026 SDKs: `thread`, `output_config.format`, and the pairing of tool results with calls.

Each feature is driven end to end by a real client: the official `anthropic` Python SDK, the official TypeScript SDK
(`tests/sdk-ts/`, run with `node`), through a real `ccop`, against the Ollama double.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import pytest
from anthropic import beta_tool

from conftest import ProxyProcess
from ollama_double import OllamaDouble, Reply, tool_call

SDK_TS = Path(__file__).parent / "sdk-ts"


def post(http: httpx.Client, body: dict[str, Any], path: str = "/v1/messages") -> httpx.Response:
    return http.post(path, json=body)


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "qwen3:8b", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], **fields}


def assert_invalid(response: httpx.Response, *needles: str) -> str:
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["request_id"] == response.headers["request-id"]
    message: str = error["error"]["message"]
    for needle in needles:
        assert needle in message, message
    return message


class Recorder:
    """An HTTP client for the SDK (which uses `httpx2`) that remembers every request body it sent and its status."""

    def __init__(self) -> None:
        self.exchanges: list[tuple[dict[str, Any], int]] = []
        self.client = httpx2.Client(event_hooks={"response": [self._record]}, trust_env=False, timeout=30)

    def _record(self, response: httpx2.Response) -> None:
        self.exchanges.append((json.loads(response.request.content), response.status_code))


@pytest.fixture
def recorder(proxy: ProxyProcess) -> Iterator[tuple[anthropic.Anthropic, Recorder]]:
    recorder = Recorder()
    with anthropic.Anthropic(base_url=proxy.url, api_key="k", max_retries=0, http_client=recorder.client) as sdk:
        yield sdk, recorder


# -- thread: the message-threads beta ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "thread",
    [{"type": "create"}, {"type": "continue", "previous_message_id": "msg_0123"}],
)
def test_a_thread_is_refused_with_the_code_the_sdks_act_on(
    http: httpx.Client, ollama: OllamaDouble, thread: dict[str, Any]
) -> None:
    # A continue turn carries only the newest messages: a tool result whose call the server was meant to hold. The
    # thread refusal must still win, or the SDKs would not fall back.
    orphan = [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_held", "content": "x"}]}]
    response = http.post(
        "/v1/messages",
        json=body(thread=thread, messages=orphan),
        headers={"anthropic-beta": "message-threads-2026-08-12"},
    )
    message = assert_invalid(response, "thread", "without `thread`")
    assert response.json()["error"]["details"] == {"error_code": "thread_unsupported_request"}
    assert message.startswith("thread: ")
    assert not ollama.chat_requests()


def test_other_errors_carry_no_details(http: httpx.Client) -> None:
    response = post(http, {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert_invalid(response, "max_tokens: field required")
    assert "details" not in response.json()["error"]


def test_a_null_thread_is_no_thread(http: httpx.Client, ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(content="ok"))
    assert post(http, body(thread=None)).status_code == 200


@beta_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def weather_responder(request: dict[str, Any]) -> Reply:
    results = [message["content"] for message in request["messages"] if message["role"] == "tool"]
    if results:
        return Reply(content=f"Paris: {results[0]}.")
    return Reply(tool_calls=[tool_call("get_weather", {"city": "Paris"})])


def assert_full_history_reached_ollama(ollama: OllamaDouble) -> None:
    first, second = ollama.chat_requests()  # the refused thread request never reached Ollama
    assert [m["role"] for m in first["messages"]] == ["user"]
    user, assistant, tool = second["messages"]
    assert user == {"role": "user", "content": "What is the weather in Paris?"}
    assert assistant["tool_calls"][0]["function"] == {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}
    assert tool["role"] == "tool"
    assert tool["content"] == "sunny in Paris"
    assert tool["tool_name"] == "get_weather"


def assert_thread_then_fallback(exchanges: list[tuple[dict[str, Any], int]]) -> None:
    (created, created_status), *rest = exchanges
    assert created["thread"] == {"type": "create"}
    assert created_status == 400
    assert rest and all("thread" not in sent and status == 200 for sent, status in rest)
    assert len(rest[-1][0]["messages"]) == 3  # the last turn resent the whole conversation


@pytest.mark.parametrize("stream", [False, True])
def test_python_tool_runner_falls_back_to_full_history(
    recorder: tuple[anthropic.Anthropic, Recorder], ollama: OllamaDouble, stream: bool
) -> None:
    client, record = recorder
    ollama.set_responder(weather_responder)
    messages: list[anthropic.types.beta.BetaMessageParam] = [
        {"role": "user", "content": "What is the weather in Paris?"}
    ]
    if stream:
        runner = client.beta.messages.tool_runner(
            model="qwen3:8b", max_tokens=200, tools=[get_weather], messages=messages, stream=True
        )
        replies = [events.get_final_message() for events in runner]
    else:
        replies = list(
            client.beta.messages.tool_runner(model="qwen3:8b", max_tokens=200, tools=[get_weather], messages=messages)
        )
    final = replies[-1].content[-1]
    assert final.type == "text"
    assert final.text == "Paris: sunny in Paris."
    assert_full_history_reached_ollama(ollama)
    assert_thread_then_fallback(record.exchanges)


def run_sdk_ts(scenario: str, proxy: ProxyProcess) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not (SDK_TS / "node_modules" / "@anthropic-ai" / "sdk").exists():
        reason = (
            "THE TYPESCRIPT SDK IS NOT INSTALLED, so its end-to-end tests did not run. Install it with "
            "`npm ci --prefix tests/sdk-ts --no-audit --no-fund` (Node 20 or later)."
        )
        if os.environ.get("CCOP_REQUIRE_CLAUDE") == "1":  # CI's switch: every real client must be there
            pytest.fail(reason)
        pytest.skip(reason)
    completed = subprocess.run(
        [node, str(SDK_TS / "sdk.mjs"), scenario, proxy.url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=SDK_TS,
        stdin=subprocess.DEVNULL,
    )
    assert completed.stdout.strip(), f"no output (exit {completed.returncode}):\n{completed.stderr}"
    result: dict[str, Any] = json.loads(completed.stdout)
    assert completed.returncode == 0, result
    return result


def test_typescript_tool_runner_falls_back_to_full_history(proxy: ProxyProcess, ollama: OllamaDouble) -> None:
    ollama.set_responder(weather_responder)
    result = run_sdk_ts("tool-runner", proxy)
    assert result["replies"][-1] == [{"type": "text", "text": "Paris: sunny in Paris."}]
    assert_full_history_reached_ollama(ollama)
    assert_thread_then_fallback([(sent["body"], sent["status"]) for sent in result["sent"]])
