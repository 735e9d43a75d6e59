"""Safe on a developer's desktop: what a web page the user opens can (not) do to a proxy on loopback, what `/health`
tells a stranger, what client strings can do to the log and the terminal, and the file `ccop --init` writes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ccop.launcher import _health
from conftest import ProxyProcess, Spawn, ccop_command, free_port, start_proxy
from ollama_double import OllamaDouble, Reply
from test_launcher import Launcher

QUESTION = [{"role": "user", "content": "hello"}]


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "llama3.1", "max_tokens": 64, "messages": QUESTION, **extra}


def assert_error(response: httpx.Response, status: int, error_type: str, *fragments: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert response.json()["type"] == "error"
    assert error["type"] == error_type
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    return error


# -- DNS rebinding: a loopback proxy answers only to loopback names ------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example.com", "evil.example.com:{port}", "127.0.0.1.evil.example", "0"])
def test_a_foreign_host_name_is_refused_on_loopback(proxy: ProxyProcess, ollama: OllamaDouble, host: str) -> None:
    headers = {"host": host.format(port=proxy.port)}
    with httpx.Client(base_url=proxy.url, trust_env=False) as http:
        assert_error(http.post("/v1/messages", json=body(), headers=headers), 403, "permission_error", "--allowed-host")
        assert_error(http.get("/v1/models", headers=headers), 403, "permission_error")
        assert_error(http.get("/health", headers=headers), 403, "permission_error")
    assert not ollama.chat_requests()


@pytest.mark.parametrize("host", ["localhost", "localhost:{port}", "127.0.0.1", "127.0.0.1:{port}", "[::1]:{port}"])
def test_loopback_host_names_are_served(proxy: ProxyProcess, ollama: OllamaDouble, host: str) -> None:
    ollama.enqueue(Reply(content="hi"))
    headers = {"host": host.format(port=proxy.port)}
    response = httpx.post(f"{proxy.url}/v1/messages", json=body(), headers=headers, trust_env=False)
    assert response.status_code == 200, response.text


def test_allowed_host_names_are_served(spawn: Spawn, ollama: OllamaDouble) -> None:
    proxy = spawn("--allowed-host", "ccop.internal", "--allowed-host", "Gpu-Box.lan")
    ollama.enqueue(Reply(content="hi"), Reply(content="hi"))
    for host in ("ccop.internal", f"gpu-box.lan:{proxy.port}"):
        response = httpx.post(f"{proxy.url}/v1/messages", json=body(), headers={"host": host}, trust_env=False)
        assert response.status_code == 200, response.text
    other = httpx.get(f"{proxy.url}/v1/models", headers={"host": "other.lan"}, trust_env=False)
    assert_error(other, 403, "permission_error")


def test_allowed_hosts_from_the_environment(spawn: Spawn) -> None:
    proxy = spawn(env={"CCOP_ALLOWED_HOSTS": "a.lan, b.lan"})
    assert httpx.get(f"{proxy.url}/v1/models", headers={"host": "b.lan"}, trust_env=False).status_code == 200


def test_a_proxy_bound_beyond_loopback_accepts_any_host(spawn: Spawn) -> None:
    proxy = spawn("--host", "0.0.0.0", "--api-key", "k")
    response = httpx.get(
        f"{proxy.url}/v1/models", headers={"host": "gpu-box.example.com", "x-api-key": "k"}, trust_env=False
    )
    assert response.status_code == 200, response.text


# -- cross-site requests: JSON only, and only from allowed origins ------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
@pytest.mark.parametrize("content_type", ["text/plain", "text/plain;charset=UTF-8", "multipart/form-data", None])
def test_posts_need_a_json_content_type(
    http: httpx.Client, ollama: OllamaDouble, path: str, content_type: str | None
) -> None:
    # What a page can send cross-site without a preflight: a "simple" request, or a body without a type at all.
    headers = {"content-type": content_type} if content_type else {}
    response = http.post(path, content=json.dumps(body()).encode(), headers=headers)
    assert_error(response, 400, "invalid_request_error", "content-type must be application/json")
    assert not ollama.chat_requests()


def test_json_content_types_are_accepted(http: httpx.Client, ollama: OllamaDouble) -> None:
    ollama.enqueue(Reply(content="hi"))
    for content_type in ("application/json; charset=utf-8", "application/vnd.api+json"):
        response = http.post(
            "/v1/messages/count_tokens", content=json.dumps(body()).encode(), headers={"content-type": content_type}
        )
        assert response.status_code == 200, response.text


def test_requests_from_web_origins_are_refused_unless_allowed(
    http: httpx.Client, ollama: OllamaDouble, spawn: Spawn
) -> None:
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{free_port()}"):
        refused = http.post("/v1/messages", json=body(), headers={"origin": origin})
        assert_error(refused, 403, "permission_error", "--cors-origin")
        assert "access-control-allow-origin" not in refused.headers
    assert not ollama.chat_requests()

    proxy = spawn("--cors-origin", "http://app.local")
    ollama.enqueue(Reply(content="hi"))
    allowed = httpx.post(
        f"{proxy.url}/v1/messages", json=body(), headers={"origin": "http://app.local"}, trust_env=False
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "http://app.local"
    other = httpx.post(
        f"{proxy.url}/v1/messages", json=body(), headers={"origin": "http://evil.example"}, trust_env=False
    )
    assert_error(other, 403, "permission_error")


# -- /health tells a stranger nothing when a key is set ------------------------------------------------------------


def test_health_without_the_key_says_only_ok(spawn: Spawn, ollama: OllamaDouble) -> None:
    proxy = spawn("--api-key", "s3cret")
    anonymous = httpx.get(f"{proxy.url}/health", trust_env=False)
    assert anonymous.status_code == 200
    assert anonymous.json() == {"status": "ok"}
    assert ollama.url not in anonymous.text
    full = httpx.get(f"{proxy.url}/health", headers={"authorization": "Bearer s3cret"}, trust_env=False).json()
    assert full["status"] == "ok" and full["ollama"]["url"] == ollama.url and full["pid"]
    wrong = httpx.get(f"{proxy.url}/health", headers={"x-api-key": "nope"}, trust_env=False).json()
    assert wrong == {"status": "ok"}


def test_health_is_degraded_while_ollama_is_down(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    proxy = start_proxy(down, tmp_path)
    try:
        health = httpx.get(f"{proxy.url}/health", trust_env=False).json()
        assert health["status"] == "degraded"
        assert health["reason"].startswith(f"Ollama is not reachable at {down} (")
        # The operating system's reason, not the HTTP library's wrapping of it.
        assert "Connect call failed" in health["reason"] and "ssl:default" not in health["reason"]
        # Still a ccop to the launcher, which then reports the real problem itself.
        seen = _health(proxy.url, None)
        assert isinstance(seen, dict) and seen["status"] == "degraded"
    finally:
        proxy.stop()


def test_the_launchers_probe_sends_the_key(spawn: Spawn) -> None:
    proxy = spawn("--api-key", "s3cret")
    with_key = _health(proxy.url, "s3cret")
    assert isinstance(with_key, dict) and "ollama" in with_key
    assert _health(proxy.url, "other") == {"status": "ok"}  # a ccop, but one with another key


def test_the_launcher_reuses_a_proxy_with_its_key_and_names_another_key(ollama: OllamaDouble, tmp_path: Path) -> None:
    proxy = start_proxy(ollama.url, tmp_path, "--api-key", "k1")
    (tmp_path / "launcher").mkdir()
    launcher = Launcher(ollama, tmp_path / "launcher")
    launcher.port = proxy.port
    try:
        same = launcher.run("-p", "hi", CCOP_API_KEY="k1")
        assert same.returncode == 7, same.stderr
        assert "(running)" in same.stderr
        other = launcher.run("-p", "hi", CCOP_API_KEY="k2")
        assert other.returncode == 1
        assert "needs a different API key" in other.stderr
    finally:
        proxy.stop()


# -- client strings in the log and in error messages ---------------------------------------------------------------


def log_after(proxy: ProxyProcess, text: str, start: int = 0) -> str:
    """The proxy's log from `start` once `text` is in it: the access line is written after the answer is sent."""
    deadline = time.monotonic() + 10
    while text not in (log := proxy.log()[start:]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert text in log, log[-2000:]
    return log


def test_a_model_name_cannot_forge_log_lines_or_reach_the_terminal(proxy: ProxyProcess) -> None:
    forged = "ghost\n2026-01-01T00:00:00 INFO ccop.access [1] req_forged POST /v1/messages 200\x1b[2J\x9b31m"
    response = httpx.post(f"{proxy.url}/v1/messages", json=body(model=forged), trust_env=False)
    message = assert_error(response, 404, "not_found_error", "ghost")["message"]
    assert "\x1b" not in message and "\n" not in message and "\x9b" not in message
    log = log_after(proxy, "ghost\\x0a2026-01-01")  # escaped, on the request's own line
    assert "\x1b" not in log and "\x9b" not in log
    assert not any(line.startswith("2026-01-01T00:00:00") for line in log.splitlines())


def test_a_huge_model_name_is_cut_in_the_log_and_the_answer(proxy: ProxyProcess) -> None:
    huge = "m" * (10 << 20)
    before = len(proxy.log())
    response = httpx.post(f"{proxy.url}/v1/messages", json=body(model=huge), trust_env=False, timeout=60)
    message = assert_error(response, 404, "not_found_error", "more characters]")["message"]
    assert len(response.content) < 20_000
    assert "m" * 300 not in message
    assert len(log_after(proxy, "more characters]", before)) < 20_000


def test_path_and_headers_are_escaped_in_the_log(proxy: ProxyProcess) -> None:
    httpx.get(f"{proxy.url}/nothing%0aFORGED%1b[31m", trust_env=False)
    log = log_after(proxy, "/nothing")
    assert "\nFORGED" not in log and "\x1b" not in log


# -- ccop --init: owner-only, never through a link ----------------------------------------------------------------


def _init(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CCOP_")}
    return subprocess.run([*ccop_command(), "--init", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_init_writes_the_file_for_its_owner_only(tmp_path: Path) -> None:
    result = _init(tmp_path, "--api-key", "s3cret")
    assert result.returncode == 0, result.stderr
    written = tmp_path / "proxy.config.json"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert json.loads(written.read_text())["apiKey"] == "s3cret"
    written.chmod(0o644)
    assert _init(tmp_path, "--force").returncode == 0
    assert stat.S_IMODE(written.stat().st_mode) == 0o600  # an existing file is tightened too


@pytest.mark.parametrize("dangling", [False, True])
def test_init_refuses_to_write_through_a_symlink(tmp_path: Path, dangling: bool) -> None:
    target = tmp_path / "elsewhere.txt"
    if not dangling:
        target.write_text("precious")
    (tmp_path / "proxy.config.json").symlink_to(target)
    result = _init(tmp_path, "--force")
    assert result.returncode == 1
    assert "symbolic link" in result.stderr
    assert target.read_text() == "precious" if not dangling else not target.exists()
