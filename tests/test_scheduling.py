"""Many agents, few slots, through the real proxy: the scheduler's order, limits and hosts as clients see them.

The Ollama double plays a server with `OLLAMA_NUM_PARALLEL`-style slots and its own first-come, first-served queue;
the proxy runs with `--slots` matching it, so requests wait in the proxy, where its order applies. Streams are held
open with `Reply(hold_until=…)` until the test lets them finish, and `/health`'s `queue` tells when requests wait.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import anthropic
import httpx
import pytest

from conftest import ProxyProcess, Spawn, worker_pids
from ollama_double import OllamaDouble, Reply

MODEL = "qwen3:8b"


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=32) as executor:
        yield executor


@pytest.fixture(autouse=True)
def _slots_back(ollama: OllamaDouble) -> Iterator[None]:
    # The double is shared by the whole session: its scheduler settings go back to "no limit" after each test.
    yield
    ollama.num_parallel = None


@pytest.fixture
def held(ollama: OllamaDouble) -> Iterator[threading.Event]:
    """Every answer is held before its last chunk until the test sets the event (set at the end whatever happened)."""
    gate = threading.Event()
    ollama.set_responder(lambda request: Reply(content=f"answer to {_prompt(request)}", hold_until=gate))
    yield gate
    gate.set()


@pytest.fixture
def second() -> Iterator[OllamaDouble]:
    with OllamaDouble() as double:
        yield double


def _prompt(request: dict[str, Any]) -> str:
    return str(request["messages"][-1]["content"])


def _sdk(proxy: ProxyProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key="test-key", max_retries=0, timeout=60.0)


def _ask(
    proxy: ProxyProcess, text: str, request_class: str = "subagent", session: str = "s1", model: str = MODEL
) -> str:
    headers = {"x-claude-code-request-class": request_class, "x-claude-code-session-id": session}
    with _sdk(proxy) as sdk:
        message = sdk.messages.create(
            model=model, max_tokens=64, messages=[{"role": "user", "content": text}], extra_headers=headers
        )
    return "".join(block.text for block in message.content if block.type == "text")


def _queue(proxy: ProxyProcess) -> dict[str, Any]:
    queue: dict[str, Any] = httpx.get(f"{proxy.url}/health", timeout=5, trust_env=False).json()["queue"]
    return queue


def _wait(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _start_order(ollama: OllamaDouble) -> list[str]:
    """The prompts, in the order their requests got a slot at Ollama."""
    streams = [stream for stream in ollama.chat_streams if stream.started_at is not None]
    return [_prompt(stream.request) for stream in sorted(streams, key=lambda stream: stream.started_at or 0.0)]


def _all(futures: list[Future[str]]) -> list[str]:
    return [future.result(timeout=60) for future in futures]


def test_the_users_turn_starts_before_every_subagent_waiting_ahead_of_it(
    spawn: Spawn, ollama: OllamaDouble, held: threading.Event, pool: ThreadPoolExecutor
) -> None:
    ollama.num_parallel = 2
    proxy = spawn("--slots", "2")
    subagents = [pool.submit(_ask, proxy, f"subagent {i}") for i in range(12)]
    _wait(lambda: ollama.active_streams == 2 and _queue(proxy)["waiting"] == 10, "2 running and 10 waiting")
    main = pool.submit(_ask, proxy, "the user's turn", "main")
    _wait(lambda: _queue(proxy)["waiting"] == 11, "the main request to queue")
    assert _queue(proxy)["waiting_by_class"] == {"main": 1, "subagent": 10}
    held.set()
    assert main.result(timeout=60) == "answer to the user's turn"
    _all(subagents)
    order = _start_order(ollama)
    # The two that were running when it came started before it; every subagent that was waiting started after it.
    assert order.index("the user's turn") == 2
    assert ollama.max_active_streams == 2


def test_two_sessions_share_the_slot_fairly(
    spawn: Spawn, ollama: OllamaDouble, held: threading.Event, pool: ThreadPoolExecutor
) -> None:
    ollama.num_parallel = 1
    proxy = spawn("--slots", "1")
    busy = [pool.submit(_ask, proxy, f"A{i}", session="A") for i in range(6)]
    _wait(lambda: _queue(proxy)["waiting"] == 5, "session A's five subagents to queue")
    late = [pool.submit(_ask, proxy, f"B{i}", session="B") for i in range(2)]
    _wait(lambda: _queue(proxy)["waiting"] == 7, "session B's two subagents to queue")
    held.set()
    _all(busy + late)
    order = _start_order(ollama)
    # First come, first served would start B's after all of A's; taking turns starts them second and fourth.
    assert [prompt[0] for prompt in order[:4]] == ["A", "B", "A", "B"]


def test_a_full_queue_is_a_529_that_says_how_long_the_queue_is(
    spawn: Spawn, ollama: OllamaDouble, held: threading.Event, pool: ThreadPoolExecutor
) -> None:
    proxy = spawn("--slots", "1", "--max-queue", "2")
    running = [pool.submit(_ask, proxy, f"s{i}") for i in range(3)]
    _wait(lambda: _queue(proxy)["waiting"] == 2, "two requests to queue")
    with pytest.raises(anthropic.APIStatusError) as refused:
        _ask(proxy, "one too many")
    assert refused.value.status_code == 529
    error = refused.value.body["error"]  # type: ignore[index]
    assert error["type"] == "overloaded_error"
    assert "2" in error["message"] and "queue" in error["message"]
    held.set()
    _all(running)
    assert "one too many" not in [_prompt(request) for request in ollama.chat_requests()]


def test_a_waiting_stream_gets_message_start_and_pings_and_leaving_frees_its_place(
    spawn: Spawn, ollama: OllamaDouble, held: threading.Event, pool: ThreadPoolExecutor
) -> None:
    proxy = spawn("--slots", "1", "--ping-interval", "0.2")
    first = pool.submit(_ask, proxy, "running")
    _wait(lambda: ollama.active_streams == 1, "the first request to run")
    body = {"model": MODEL, "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "leaver"}]}
    with (
        httpx.Client(trust_env=False, timeout=30) as client,
        client.stream("POST", f"{proxy.url}/v1/messages", json=body) as response,
    ):
        assert response.status_code == 200
        # Held in a name: a generator dropped after `break` would be closed, and the connection with it.
        chunks = response.iter_raw()
        seen = b""
        while b"event: ping" not in seen:
            seen += next(chunks)
        assert b"event: message_start" in seen
        assert _queue(proxy)["waiting"] == 1
    # The client is gone: its place is free at once, and Ollama never hears of it.
    _wait(lambda: _queue(proxy)["waiting"] == 0, "the queue to empty")
    held.set()
    first.result(timeout=60)
    assert _ask(proxy, "next") == "answer to next"
    assert "leaver" not in [_prompt(request) for request in ollama.chat_requests()]


def test_waiting_too_long_is_an_overloaded_error(
    spawn: Spawn, ollama: OllamaDouble, held: threading.Event, pool: ThreadPoolExecutor
) -> None:
    proxy = spawn("--slots", "1", "--max-queue-wait", "1")
    first = pool.submit(_ask, proxy, "running")
    _wait(lambda: ollama.active_streams == 1, "the first request to run")
    # Not streamed: nothing was sent yet, so a real 529.
    with pytest.raises(anthropic.APIStatusError) as refused:
        _ask(proxy, "too late", "auxiliary")
    assert refused.value.status_code == 529
    # Streamed: message_start went out while it waited, so the stream ends with an error event of the same type.
    with _sdk(proxy) as sdk, pytest.raises(anthropic.APIError) as ended:
        with sdk.messages.stream(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "streamed, too late"}]
        ) as stream:
            for _ in stream:
                pass
    assert "overloaded_error" in str(ended.value)
    held.set()
    first.result(timeout=60)


def test_with_four_workers_the_slots_hold_across_all_of_them(
    spawn: Spawn, ollama: OllamaDouble, pool: ThreadPoolExecutor
) -> None:
    ollama.num_parallel = 8  # Ollama could run more: only the proxy keeps it at two
    ollama.set_responder(lambda request: Reply(content="paced answer", chunk_size=2, delay_between=0.01))
    proxy = spawn("--workers", "4", "--slots", "2")
    answers = _all([pool.submit(_ask, proxy, f"agent {i}", session=f"s{i % 3}") for i in range(16)])
    assert answers == ["paced answer"] * 16
    assert ollama.max_active_streams == 2
    assert _queue(proxy) == {"in_flight": 0, "waiting": 0, "waiting_by_class": {}, "max_queue": 64}


def test_a_session_stays_on_its_host(
    spawn: Spawn, ollama: OllamaDouble, second: OllamaDouble, held: threading.Event, pool: ThreadPoolExecutor
) -> None:
    proxy = spawn("--ollama-url", second.url, "--slots", "1")
    other = pool.submit(_ask, proxy, "another session", "main", session="other")
    _wait(lambda: ollama.active_streams == 1, "the first host to be busy")
    # The first host is busy, so the session starts on the second; it stays there once the first is free again,
    # though the first comes first in the configuration and has the model loaded too.
    assert _ask(proxy, "turn 1", "main", session="warm") == f"Hello from {MODEL}."
    held.set()
    other.result(timeout=60)
    for turn in (2, 3):
        assert _ask(proxy, f"turn {turn}", "main", session="warm") == f"Hello from {MODEL}."
    assert [_prompt(request) for request in second.chat_requests()] == ["turn 1", "turn 2", "turn 3"]
    assert [_prompt(request) for request in ollama.chat_requests()] == ["another session"]


def test_a_host_that_dies_is_avoided_and_used_again_when_back(
    spawn: Spawn, ollama: OllamaDouble, second: OllamaDouble
) -> None:
    proxy = spawn("--ollama-url", second.url)
    assert _ask(proxy, "first", "main", session="s") == f"Hello from {MODEL}."
    assert len(ollama.chat_requests()) == 1  # the first host, the session's host from now on
    ollama.stop()
    try:
        # The session's host refuses the connection: the request goes to the other one, and nothing shows.
        assert _ask(proxy, "second", "main", session="s") == f"Hello from {MODEL}."
        assert len(second.chat_requests()) == 1
        health = httpx.get(f"{proxy.url}/health", timeout=5, trust_env=False).json()
        assert [host["healthy"] for host in health["hosts"]] == [False, True]
    finally:
        ollama.start()
    ollama.load(MODEL)  # as loaded as on the other host: the configuration's order decides for a new session
    # Once its time out is over, the first host is used again (it comes first for a new session).
    _wait(
        lambda: httpx.get(f"{proxy.url}/health", timeout=5, trust_env=False).json()["hosts"][0]["healthy"],
        "the first host to be taken back",
        timeout=30,
    )
    assert _ask(proxy, "third", "main", session="new") == f"Hello from {MODEL}."
    assert [_prompt(request) for request in ollama.chat_requests()] == ["first", "third"]


def test_a_title_request_is_served_by_the_loaded_model_instead_of_loading_another(
    spawn: Spawn, ollama: OllamaDouble
) -> None:
    ollama.load(MODEL, num_ctx=65536)
    proxy = spawn("--default-model", MODEL, "--model-map", "claude-haiku-4-5=llama3.1")
    assert _ask(proxy, "a title please", "auxiliary", model="claude-haiku-4-5") == f"Hello from {MODEL}."
    assert "served by qwen3:8b, which is loaded" in proxy.log()
    # The user's own turn gets the model it asked for, loaded or not.
    assert _ask(proxy, "my turn", "main", model="claude-haiku-4-5") == "Hello from llama3.1."
    assert [name for name, _ in ollama.model_loads][-1] == "llama3.1:latest"


def test_substitution_can_be_turned_off(spawn: Spawn, ollama: OllamaDouble) -> None:
    ollama.load(MODEL, num_ctx=65536)
    proxy = spawn("--model-map", "claude-haiku-4-5=llama3.1", "--substitute-class", "none")
    assert _ask(proxy, "a title please", "auxiliary", model="claude-haiku-4-5") == "Hello from llama3.1."


def test_keep_alive_is_sent_with_every_chat_request(spawn: Spawn, ollama: OllamaDouble) -> None:
    proxy = spawn("--keep-alive", "-1")
    _ask(proxy, "hi", "main")
    assert ollama.keep_alives() == [-1]


def test_preload_loads_the_configured_models_with_the_window_requests_use(spawn: Spawn, ollama: OllamaDouble) -> None:
    proxy = spawn("--preload", "--keep-alive", "1h", "--model-map", "claude-haiku-4-5=qwen3:8b")
    _wait(lambda: len(ollama.model_loads) == 2, "both configured models to load")
    assert {name for name, _ in ollama.model_loads} == {"llama3.1:latest", "qwen3:8b"}
    assert ollama.keep_alives() == ["1h", "1h"]
    _wait(lambda: "loaded qwen3:8b with a 40960-token window" in proxy.log(), "the start-up lines")
    # The first turn finds its model loaded with the window it asks for: no second load.
    assert _ask(proxy, "first turn", "main", model="llama3.1") == "Hello from llama3.1."
    assert _ask(proxy, "a title", "auxiliary", model="claude-haiku-4-5") == f"Hello from {MODEL}."
    assert len(ollama.model_loads) == 2


def test_a_worker_killed_while_holding_a_slot_gives_it_back(
    spawn: Spawn, ollama: OllamaDouble, held: threading.Event, pool: ThreadPoolExecutor
) -> None:
    proxy = spawn("--workers", "2", "--slots", "1")
    holder = pool.submit(_ask, proxy, "held")
    _wait(lambda: ollama.active_streams == 1 and _queue(proxy)["in_flight"] == 1, "the slot to be taken")
    workers = worker_pids(proxy)
    assert len(workers) == 2
    for pid in workers:
        os.kill(pid, signal.SIGKILL)  # the OOM killer, say: no chance to release anything
    with pytest.raises(anthropic.APIConnectionError):
        holder.result(timeout=60)
    # The replacements serve, and the dead worker's slot is free again: the next request is not stuck behind it.
    _wait(lambda: len(worker_pids(proxy) - workers) == 2, "two replacement workers", timeout=30)

    def slot_free() -> bool:
        try:
            return bool(_queue(proxy)["in_flight"] == 0)
        except httpx.HTTPError:  # a replacement still starting
            return False

    _wait(slot_free, "the dead worker's slot to be given back", timeout=30)
    held.set()
    assert _ask(proxy, "after") == "answer to after"
