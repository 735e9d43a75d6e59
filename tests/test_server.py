"""The server started for real: health, root, routing errors, one and several workers."""

from __future__ import annotations

from pathlib import Path

import httpx

import ccop
from conftest import ProxyProcess, start_proxy
from ollama_double import OllamaDouble


def test_health_reports_ollama(http: httpx.Client, ollama: OllamaDouble) -> None:
    response = http.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["version"] == ccop.__version__
    assert body["ollama"]["url"] == ollama.url
    assert body["ollama"]["reachable"] is True
    assert body["ollama"]["version"]


def test_health_says_when_ollama_is_down(tmp_path: Path) -> None:
    from conftest import free_port

    proxy = start_proxy(f"http://127.0.0.1:{free_port()}", tmp_path)
    try:
        body = httpx.get(f"{proxy.url}/health", trust_env=False).json()
        assert body["status"] == "degraded"
        assert body["reason"].startswith("Ollama is not reachable at http://127.0.0.1:")
        assert body["ollama"]["reachable"] is False
        assert body["ollama"]["error"]
    finally:
        proxy.stop()


def test_root_answers_get_and_head(http: httpx.Client) -> None:
    assert http.get("/").status_code == 200
    head = http.head("/")
    assert head.status_code == 200
    assert head.content == b""


def test_unknown_route_is_an_anthropic_404(http: httpx.Client) -> None:
    response = http.post("/v1/nothing-here", json={})
    assert response.status_code == 404
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert "/v1/nothing-here" in body["error"]["message"]
    assert body["request_id"] == response.headers["request-id"]


def test_wrong_method_is_an_anthropic_405(http: httpx.Client) -> None:
    response = http.get("/v1/messages")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "POST" in body["error"]["message"]


def test_banner_is_printed(proxy: ProxyProcess, ollama: OllamaDouble) -> None:
    first_line = proxy.log().splitlines()[0]
    assert f"127.0.0.1:{proxy.port}" in first_line
    assert ollama.url in first_line
    assert "default model llama3.1" in first_line
    assert "1 worker" in first_line


def test_two_workers_both_serve(ollama: OllamaDouble, tmp_path: Path) -> None:
    proxy = start_proxy(ollama.url, tmp_path, "--workers", "2")
    try:
        assert "2 workers" in proxy.log().splitlines()[0]
        pids = set()
        for _ in range(400):
            # A new connection each time, so the kernel can hand it to either worker.
            with httpx.Client(trust_env=False) as fresh:
                pids.add(fresh.get(f"{proxy.url}/health").json()["pid"])
            if len(pids) == 2:
                break
        assert len(pids) == 2, pids
    finally:
        proxy.stop()
