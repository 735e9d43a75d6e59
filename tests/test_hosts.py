"""Several Ollama servers: the settings, the host pool's health and ordering, and /v1/models, /health and doctor
across hosts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest

from ccop.hosts import FIRST_BACKOFF, MAX_BACKOFF, HostPool, OllamaHost, parse_ps
from ccop.settings import ConfigError, Settings
from conftest import Spawn, free_port, printed_config, run_ccop
from ollama_double import ModelSpec, OllamaDouble


@pytest.fixture
def second() -> Iterator[OllamaDouble]:
    """Another Ollama with one model of its own and one the session double has too."""
    double = OllamaDouble([ModelSpec("only-here:7b"), ModelSpec("qwen3:8b")])
    double.start()
    yield double
    double.stop()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


# -- settings --------------------------------------------------------------------------------------------------------


def test_repeated_flag_env_and_file_give_several_urls(tmp_path: Path) -> None:
    assert printed_config("-u", "gpu1", "-u", "http://u:pw@gpu2:8080", cwd=tmp_path)["ollamaUrl"] == [
        "http://gpu1:11434",
        "http://u:********@gpu2:8080",
    ]
    assert printed_config(cwd=tmp_path, env={"OLLAMA_URL": "gpu1,gpu2"})["ollamaUrl"] == [
        "http://gpu1:11434",
        "http://gpu2:11434",
    ]
    (tmp_path / "proxy.config.json").write_text(json.dumps({"ollamaUrl": ["gpu1", "gpu3:1"]}))
    assert printed_config(cwd=tmp_path)["ollamaUrl"] == ["http://gpu1:11434", "http://gpu3:1"]
    # One address stays the plain string it always was.
    assert printed_config("-u", "gpu1", cwd=tmp_path)["ollamaUrl"] == "http://gpu1:11434"


@pytest.mark.parametrize(
    ("args", "env"),
    [(["-u", "gpu1", "-u", "http://gpu1:11434"], {}), ([], {"OLLAMA_URL": "gpu1,gpu1:11434"})],
)
def test_the_same_ollama_twice_is_an_error_that_names_it(tmp_path: Path, args: list[str], env: dict[str, str]) -> None:
    result = run_ccop(*args, "--print-config", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert "http://gpu1:11434 is given twice" in result.stderr


def test_scheduling_settings_from_every_layer(tmp_path: Path) -> None:
    (tmp_path / "proxy.config.json").write_text(
        json.dumps(
            {
                "ollamaUrl": ["http://gpu1:11434", "http://gpu2:11434"],
                "modelSlots": {"qwen3:8b": 2, "http://gpu2:11434": {"qwen3:8b": 4}},
                "substituteClasses": [],
            }
        )
    )
    shown = printed_config(
        "--slots", "3", "--model-slots", "llama3.1@gpu2=5", "--keep-alive", "30m", "--max-queue", "9", cwd=tmp_path
    )
    assert shown["slots"] == 3
    assert shown["modelSlots"] == {"qwen3:8b": 2, "http://gpu2:11434": {"qwen3:8b": 4, "llama3.1": 5}}
    assert shown["substituteClasses"] == []
    assert (shown["keepAlive"], shown["maxQueue"], shown["maxQueueWait"], shown["preload"]) == ("30m", 9, 300.0, False)


def test_slots_for_a_host_and_model() -> None:
    settings = Settings.resolve(
        {},
        {"OLLAMA_URL": "gpu1,me:pw@gpu2", "CCOP_SLOTS": "2", "CCOP_MODEL_SLOTS": "qwen3:8b=3,qwen3@gpu2=6"},
        cwd=Path("/nonexistent"),
    )
    assert settings.slots_for("http://gpu1:11434", "qwen3:8b") == 3
    assert settings.slots_for("http://me:pw@gpu2:11434", "qwen3:latest") == 6  # `qwen3` is `qwen3:latest`
    assert settings.slots_for("http://gpu1:11434", "llama3.1") == 2
    assert Settings.from_json(settings.to_json()) == settings


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CCOP_MODEL_SLOTS": "qwen3@gpu9=2"}, "http://gpu9:11434"),  # not a configured Ollama
        ({"CCOP_MODEL_SLOTS": "qwen3=0"}, "CCOP_MODEL_SLOTS"),
        ({"CCOP_SUBSTITUTE_CLASSES": "main,chat"}, "CCOP_SUBSTITUTE_CLASSES"),
        ({"CCOP_KEEP_ALIVE": "a while"}, "CCOP_KEEP_ALIVE"),
        ({"CCOP_SLOTS": "0"}, "CCOP_SLOTS"),
    ],
)
def test_bad_scheduling_settings_are_named(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.resolve({}, env, cwd=Path("/nonexistent"))


def test_substitution_off_and_keep_alive_as_ollama_reads_it() -> None:
    settings = Settings.resolve(
        {}, {"CCOP_SUBSTITUTE_CLASSES": "none", "CCOP_KEEP_ALIVE": "-1"}, cwd=Path("/nonexistent")
    )
    assert settings.substitute_classes == ()
    assert settings.keep_alive_value == -1.0  # Ollama parses a string "-1" as a Go duration, and fails
    assert Settings().substitute_classes == ("auxiliary",)


# -- the pool, without a network ---------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_failing_host_sits_out_longer_each_time_and_comes_back() -> None:
    clock = Clock()
    host = OllamaHost("http://gpu1:11434", httpx.AsyncClient(), clock=clock)
    assert host.healthy
    pauses: list[float] = []
    for _ in range(6):
        host.mark_failed("refused")
        assert not host.healthy and host.last_error == "refused"
        pauses.append(host.out_for)
        clock.now += host.out_for
        assert host.healthy  # tried again once the pause is over
    assert pauses == [FIRST_BACKOFF, 10.0, 20.0, 40.0, MAX_BACKOFF, MAX_BACKOFF]
    host.mark_ok()
    host.mark_failed("refused")
    assert host.out_for == FIRST_BACKOFF  # a success starts the count again


def _fake_ollama(installed: list[str], loaded: list[str], calls: list[str]) -> httpx.AsyncClient:
    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path == "/api/tags":
            return httpx.Response(200, json={"models": [{"name": name} for name in installed]})
        if request.url.path == "/api/ps":
            return httpx.Response(200, json={"models": [{"name": n, "context_length": 8192} for n in loaded]})
        return httpx.Response(404, json={"error": "not found"})

    return httpx.AsyncClient(base_url="http://ollama", transport=httpx.MockTransport(answer))


def test_candidates_have_the_model_are_healthy_and_loaded_first() -> None:
    async def scenario() -> None:
        calls: list[str] = []
        clock = Clock()
        pool = HostPool(
            [
                OllamaHost("http://a:1", _fake_ollama(["qwen3:8b"], [], calls), clock=clock),
                OllamaHost("http://b:1", _fake_ollama(["llama3.1:latest"], ["llama3.1:latest"], calls), clock=clock),
                OllamaHost(
                    "http://c:1", _fake_ollama(["qwen3:8b", "llama3.1:latest"], ["qwen3:8b"], calls), clock=clock
                ),
            ]
        )
        a, b, c = pool.hosts
        assert await pool.candidates("qwen3:8b") == [c, a]  # loaded on c; b does not have it
        assert await pool.candidates("llama3.1") == [b, c]  # `llama3.1` is `llama3.1:latest`
        c.mark_failed("refused")
        assert await pool.candidates("qwen3:8b") == [a]
        a.mark_failed("refused")
        assert set(await pool.candidates("qwen3:8b")) == {a, c}  # none healthy: try them anyway
        assert await pool.candidates("absent:1b") == [b, a, c]  # nobody has it: every host, healthy first
        clock.now += MAX_BACKOFF
        assert await pool.loaded_anywhere() == {"llama3.1:latest": {"http://b:1"}, "qwen3:8b": {"http://c:1"}}
        assert pool.by_url("http://b:1") is b and pool.by_url("http://z:1") is None
        await pool.aclose()

    asyncio.run(scenario())


def test_one_host_asks_ollama_nothing_for_candidates() -> None:
    async def scenario() -> None:
        calls: list[str] = []
        pool = HostPool([OllamaHost("http://a:1", _fake_ollama(["qwen3:8b"], [], calls))])
        assert await pool.candidates("anything") == [pool.primary]
        assert calls == []
        await pool.aclose()

    asyncio.run(scenario())


def test_loaded_models_are_cached_briefly_and_a_failure_is_empty() -> None:
    async def scenario() -> None:
        calls: list[str] = []
        clock = Clock()
        host = OllamaHost("http://a:1", _fake_ollama([], ["qwen3:8b"], calls), clock=clock)
        assert await host.loaded_models() == {"qwen3:8b": 8192}
        assert await host.loaded_models() == {"qwen3:8b": 8192}
        assert calls == ["/api/ps"]
        clock.now += 5
        await host.loaded_models()
        assert calls == ["/api/ps", "/api/ps"]
        await host.aclose()
        down = OllamaHost("http://127.0.0.1:1", httpx.AsyncClient(base_url=dead_url()), clock=clock)
        assert await down.loaded_models() == {}
        await down.aclose()

    asyncio.run(scenario())


def test_parse_ps_keeps_what_is_there() -> None:
    body = {"models": [{"name": "a:1", "context_length": 4096}, {"model": "b:2"}, {"name": 3}, "junk"]}
    assert parse_ps(body) == {"a:1": 4096, "b:2": None}
    assert parse_ps(["not", "an", "object"]) == {}


# -- through the real proxy -------------------------------------------------------------------------------------


def test_models_list_is_the_union_of_the_hosts(spawn: Spawn, ollama: OllamaDouble, second: OllamaDouble) -> None:
    proxy = spawn("-u", second.url, "-m", "claude-haiku-5-5=only-here:7b")
    with anthropic.Anthropic(base_url=proxy.url, api_key="k", max_retries=0) as sdk:
        ids = [model.id for model in sdk.models.list(limit=1000)]
        assert sdk.models.retrieve("only-here:7b").id == "only-here:7b"
    assert ids[0] == "claude-haiku-5-5"
    assert "only-here:7b" in ids and "gpt-oss:20b" in ids  # one from each host
    assert ids.count("qwen3:8b") == 1  # on both, listed once
    assert len(ids) == len(set(ids))


def test_health_with_one_host_down(spawn: Spawn, ollama: OllamaDouble) -> None:
    down = dead_url()
    proxy = spawn("-u", down)
    response = httpx.get(f"{proxy.url}/health", trust_env=False)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert [host["url"] for host in body["hosts"]] == [ollama.url, down]
    assert [host["reachable"] for host in body["hosts"]] == [True, False]
    assert body["hosts"][1]["error"]
    assert body["ollama"]["url"] == ollama.url and body["ollama"]["reachable"] is True  # the primary, as before
    assert body["settings"]["ollama_urls"] == [ollama.url, down]


def test_health_is_degraded_when_no_host_answers(tmp_path: Path) -> None:
    from conftest import start_proxy

    first, other = dead_url(), dead_url()
    proxy = start_proxy(first, tmp_path, "-u", other)
    try:
        body = httpx.get(f"{proxy.url}/health", trust_env=False).json()
    finally:
        proxy.stop()
    assert body["status"] == "degraded"
    assert first in body["reason"] and other in body["reason"]


def test_doctor_with_one_host_down_warns_and_passes(tmp_path: Path, ollama: OllamaDouble) -> None:
    down = dead_url()
    result = run_ccop("doctor", "-u", ollama.url, "-u", down, "-d", "gpt-oss:20b", cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert f"Ollama is not reachable at {down}" in result.stdout
    assert f"problems on {down}" in result.stdout
    both_down = run_ccop("doctor", "-u", down, "-u", dead_url(), cwd=tmp_path)
    assert both_down.returncode == 1
    assert both_down.stdout.count("is not reachable") == 2
