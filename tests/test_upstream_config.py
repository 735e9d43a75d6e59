"""The upstream URL and the config the way users have them: credentials to an Ollama behind a reverse proxy,
Ollama's own OLLAMA_HOST, addresses without a scheme, the TypeScript tool's config file, `--init` with flags and
`--print-config` output that is itself a config file."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Spawn, printed_config, run_ccop
from ollama_double import OllamaDouble, Reply

QUESTION = [{"role": "user", "content": "hello"}]


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "llama3.1", "max_tokens": 64, "messages": QUESTION, **extra}


def authorizations(ollama: OllamaDouble) -> dict[str, set[str | None]]:
    """Per Ollama endpoint, the Authorization headers the proxy sent."""
    seen: dict[str, set[str | None]] = {}
    for request in ollama.requests:
        seen.setdefault(request.path, set()).add(request.headers.get("authorization"))
    return seen


def chat_once(url: str) -> None:
    response = httpx.post(f"{url}/v1/messages", json=body(), trust_env=False)
    assert response.status_code == 200, response.text
    assert httpx.get(f"{url}/v1/models", trust_env=False).status_code == 200
    assert httpx.get(f"{url}/health", trust_env=False).json()["ollama"]["reachable"] is True


# -- credentials to Ollama ----------------------------------------------------------------------------------------


def test_credentials_in_the_url_go_on_every_request(spawn: Spawn, ollama: OllamaDouble) -> None:
    url = ollama.url.replace("http://", "http://alice:pa%3Ass@")
    proxy = spawn(url=url)
    ollama.enqueue(Reply(content="hi"))
    chat_once(proxy.url)
    expected = "Basic " + base64.b64encode(b"alice:pa:ss").decode()
    seen = authorizations(ollama)
    assert {"/api/chat", "/api/show", "/api/tags", "/api/version"} <= set(seen)
    assert all(values == {expected} for values in seen.values()), seen
    # The password never shows: not in the log, not in /health, not in the banner.
    health = httpx.get(f"{proxy.url}/health", trust_env=False).json()
    assert health["ollama"]["url"] == ollama.url.replace("http://", "http://alice:********@")
    assert "pa%3Ass" not in proxy.log() and "pa%3Ass" not in json.dumps(health)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_the_ollama_api_key_goes_on_every_request_and_nowhere_else(
    spawn: Spawn, ollama: OllamaDouble, tmp_path: Path, how: str
) -> None:
    token = "tok-SECRET-123"
    proxy = spawn("--ollama-api-key", token) if how == "flag" else spawn(env={"OLLAMA_API_KEY": token})
    ollama.enqueue(Reply(content="hi"))
    chat_once(proxy.url)
    seen = authorizations(ollama)
    assert {"/api/chat", "/api/show", "/api/tags", "/api/version"} <= set(seen)
    assert all(values == {f"Bearer {token}"} for values in seen.values()), seen
    assert token not in proxy.log()
    assert token not in httpx.get(f"{proxy.url}/health", trust_env=False).text
    assert printed_config("--ollama-api-key", token, cwd=tmp_path)["ollamaApiKey"] == "********"


def test_the_doctor_sends_the_ollama_api_key(ollama: OllamaDouble, tmp_path: Path) -> None:
    result = run_ccop("doctor", "--ollama-url", ollama.url, "--ollama-api-key", "tok-doctor", cwd=tmp_path)
    assert f"is reachable at {ollama.url}" in result.stdout, result.stdout
    seen = authorizations(ollama)
    assert {"/api/version", "/api/tags", "/api/show"} <= set(seen)
    assert all(values == {"Bearer tok-doctor"} for values in seen.values()), seen
    assert "tok-doctor" not in result.stdout + result.stderr


# -- the address: OLLAMA_HOST, no scheme -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"OLLAMA_HOST": "gpu-box:11500"}, "http://gpu-box:11500"),
        ({"OLLAMA_HOST": "gpu-box"}, "http://gpu-box:11434"),
        ({"OLLAMA_HOST": "0.0.0.0"}, "http://127.0.0.1:11434"),  # how Ollama is told to listen everywhere
        ({"OLLAMA_HOST": "https://ollama.example.com"}, "https://ollama.example.com"),
        ({"OLLAMA_HOST": "gpu-box:11500", "OLLAMA_URL": "http://other:1"}, "http://other:1"),  # OLLAMA_URL wins
        ({"OLLAMA_URL": "localhost:11500"}, "http://localhost:11500"),
        ({"OLLAMA_URL": "[::1]"}, "http://[::1]:11434"),
    ],
)
def test_ollama_addresses_as_users_write_them(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    assert printed_config(cwd=tmp_path, env=env)["ollamaUrl"] == expected


def test_an_address_without_a_scheme_works(spawn: Spawn, ollama: OllamaDouble) -> None:
    proxy = spawn(url=ollama.url.removeprefix("http://"))
    ollama.enqueue(Reply(content="hi"))
    chat_once(proxy.url)


def test_ollama_host_is_honoured_when_serving(ollama: OllamaDouble, tmp_path: Path) -> None:
    result = run_ccop("doctor", cwd=tmp_path, env={"OLLAMA_HOST": f"127.0.0.1:{ollama.port}"})
    assert f"is reachable at {ollama.url}" in result.stdout, result.stdout


# -- config files ----------------------------------------------------------------------------------------------


def test_a_config_file_from_the_typescript_tool_loads(tmp_path: Path) -> None:
    # As the original tool's `--init` writes it.
    legacy = {
        "version": "1",
        "port": 3100,
        "ollamaUrl": "http://localhost:11434",
        "defaultModel": "qwen3:8b",
        "modelMap": {},
        "strictThinking": False,
        "verbose": False,
    }
    (tmp_path / "proxy.config.json").write_text(json.dumps(legacy, indent=2))
    shown = printed_config(cwd=tmp_path)
    assert shown["port"] == 3100 and shown["defaultModel"] == "qwen3:8b"


def test_init_writes_the_flags_given_with_it(tmp_path: Path) -> None:
    result = run_ccop(
        "--init", "--default-model", "qwen3:8b", "-p", "3200", "-m", "claude-x=y:1b", "-u", "box", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    written = json.loads((tmp_path / "proxy.config.json").read_text())
    assert written["defaultModel"] == "qwen3:8b"
    assert written["port"] == 3200
    assert written["modelMap"] == {"claude-x": "y:1b"}  # instead of the starter map
    assert written["ollamaUrl"] == "http://box:11434"
    assert written["numCtx"] is None  # the rest: defaults
    shown = printed_config(cwd=tmp_path)
    assert shown["defaultModel"] == "qwen3:8b" and shown["port"] == 3200


def test_print_config_output_is_a_config_file(tmp_path: Path) -> None:
    first = tmp_path / "first"
    first.mkdir()
    shown = printed_config(
        "--default-model", "qwen3:8b", "--cors-origin", "http://app.local", "--num-ctx", "32768", cwd=first
    )
    assert "defaultModel" in shown and "default_model" not in shown
    assert shown["corsOrigins"] == ["http://app.local"]
    second = tmp_path / "second"
    second.mkdir()
    (second / "proxy.config.json").write_text(json.dumps(shown))
    again = printed_config(cwd=second)
    assert again.pop("$configFile").endswith("proxy.config.json")
    assert again == shown
