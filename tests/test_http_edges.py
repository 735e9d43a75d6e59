"""HTTP edge cases at the client side of the proxy, over raw sockets: huge declared bodies, `Expect: 100-continue`,
broken chunked bodies, stalled bodies, and connections that never send anything."""

from __future__ import annotations

import http.client
import io
import resource
import selectors
import socket
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from conftest import ProxyProcess, Spawn
from ollama_double import OllamaDouble, Reply

MESSAGE = orjson.dumps({"model": "llama3.1", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]})


class _Received:
    """Bytes already read from a socket, readable by `http.client.HTTPResponse`."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self._data)


def read_all(sock: socket.socket, timeout: float = 20.0) -> bytes:
    """Everything the proxy sends until it closes the connection (bounded by `timeout`)."""
    sock.settimeout(timeout)
    data = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            piece = sock.recv(65536)
        except TimeoutError:
            break
        if not piece:
            break
        data += piece
    return bytes(data)


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    response = http.client.HTTPResponse(_Received(raw))  # type: ignore[arg-type]
    response.begin()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def assert_anthropic_error(raw: bytes, status: int, error_type: str, fragment: str) -> None:
    assert raw.startswith(f"HTTP/1.1 {status} ".encode()), raw[:200]
    got, headers, body = parse(raw)
    assert got == status
    error = orjson.loads(body)
    assert error["type"] == "error"
    assert error["error"]["type"] == error_type
    assert fragment in error["error"]["message"]
    assert error["request_id"] == headers["request-id"]


def connect(proxy: ProxyProcess) -> socket.socket:
    return socket.create_connection((proxy.host, proxy.port), timeout=20.0)


def request_head(path: str, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", *headers, "", ""]
    return "\r\n".join(lines).encode()


@pytest.fixture
def patient_proxy(spawn: Spawn) -> ProxyProcess:
    """A proxy whose connection timeout is far longer than any test waits: a prompt answer is not a timeout."""
    return spawn("--default-model", "llama3.1", "--connection-timeout", "600")


def test_declared_length_over_the_limit_is_413_before_any_body(patient_proxy: ProxyProcess) -> None:
    with connect(patient_proxy) as sock:
        sock.sendall(request_head("/v1/messages", "Content-Length: 10000000000"))
        raw = read_all(sock)
    assert_anthropic_error(raw, 413, "request_too_large", "--max-body-size")


def test_expect_continue_over_the_limit_gets_413_not_continue(patient_proxy: ProxyProcess) -> None:
    with connect(patient_proxy) as sock:
        sock.sendall(request_head("/v1/messages", "Content-Length: 40000000", "Expect: 100-continue"))
        raw = read_all(sock)
    assert b"100 Continue" not in raw
    assert_anthropic_error(raw, 413, "request_too_large", "--max-body-size")


def test_expect_continue_within_the_limit_still_works(patient_proxy: ProxyProcess) -> None:
    with connect(patient_proxy) as sock:
        sock.sendall(request_head("/v1/messages", f"Content-Length: {len(MESSAGE)}", "Expect: 100-continue"))
        sock.settimeout(20.0)
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(MESSAGE)
        status, _, body = parse(http_response_bytes(sock))
    assert status == 200
    assert orjson.loads(body)["type"] == "message"


def http_response_bytes(sock: socket.socket) -> bytes:
    """One whole response with a Content-Length body, on a connection that stays open."""
    sock.settimeout(20.0)
    data = bytearray()
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_malformed_chunked_body_is_an_anthropic_400(patient_proxy: ProxyProcess) -> None:
    with connect(patient_proxy) as sock:
        sock.sendall(request_head("/v1/messages", "Transfer-Encoding: chunked") + b'5\r\n{"mod\r\nZZZ\r\n\r\n')
        raw = read_all(sock)
    assert_anthropic_error(raw, 400, "invalid_request_error", "chunked")


def test_stalled_body_gets_408_and_the_connection_closes(spawn: Spawn) -> None:
    proxy = spawn("--default-model", "llama3.1", "--connection-timeout", "1")
    with connect(proxy) as sock:
        sock.sendall(request_head("/v1/messages", f"Content-Length: {len(MESSAGE)}") + MESSAGE[:10])
        raw = read_all(sock)  # ends only when the proxy closes the connection
    assert_anthropic_error(raw, 408, "invalid_request_error", "stalled")


def test_silent_and_half_sent_connections_are_closed(spawn: Spawn) -> None:
    proxy = spawn("--connection-timeout", "1")
    with connect(proxy) as silent, connect(proxy) as half_head, connect(proxy) as kept_alive:
        half_head.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        kept_alive.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert http_response_bytes(kept_alive).startswith(b"HTTP/1.1 200")
        # Each ends with the proxy closing it (read_all returns at EOF; its own bound is far longer).
        for sock in (silent, half_head, kept_alive):
            started = time.monotonic()
            read_all(sock)
            assert time.monotonic() - started < 15


def test_a_stream_longer_than_the_connection_timeout_is_not_cut(spawn: Spawn, ollama: OllamaDouble) -> None:
    proxy = spawn("--default-model", "llama3.1", "--connection-timeout", "1")
    ollama.enqueue(Reply(content="slow and steady wins", chunk_size=2, first_byte_delay=1.5, delay_between=0.3))
    body = orjson.loads(MESSAGE) | {"stream": True}
    with httpx.stream("POST", f"{proxy.url}/v1/messages", json=body, timeout=30.0, trust_env=False) as response:
        assert response.status_code == 200
        events = response.read().decode()
    data = [orjson.loads(line[6:]) for line in events.splitlines() if line.startswith("data: ")]
    assert data[-1]["type"] == "message_stop"
    text = "".join(event["delta"]["text"] for event in data if event.get("delta", {}).get("type") == "text_delta")
    assert text == "slow and steady wins"


def test_a_slow_non_streaming_answer_is_not_cut(spawn: Spawn, ollama: OllamaDouble) -> None:
    # The client sends nothing while it waits for the whole message, longer than the connection timeout.
    proxy = spawn("--default-model", "llama3.1", "--connection-timeout", "1")
    ollama.enqueue(Reply(content="worth the wait", first_byte_delay=2.5))
    headers = {"content-type": "application/json"}
    response = httpx.post(f"{proxy.url}/v1/messages", content=MESSAGE, headers=headers, timeout=30.0, trust_env=False)
    assert response.status_code == 200
    assert response.json()["content"][0]["text"] == "worth the wait"


@pytest.fixture
def silent_connections() -> Iterator[list[socket.socket]]:
    # This process holds every socket too: many machines start with a soft limit of 1024 open files.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 4096
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.fail(f"this test holds 2,100 sockets but the open-file limit is {hard}; raise it (ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


def test_proxy_answers_while_2100_silent_connections_are_held_then_closes_them(
    spawn: Spawn, ollama: OllamaDouble, silent_connections: list[socket.socket]
) -> None:
    timeout = 10.0
    proxy = spawn("--default-model", "llama3.1", "--connection-timeout", str(timeout))
    for _ in range(2100):
        silent_connections.append(socket.create_connection((proxy.host, proxy.port), timeout=10.0))

    with httpx.Client(base_url=proxy.url, timeout=5.0, trust_env=False) as fresh:
        assert fresh.get("/health").json()["status"] == "ok"
        ollama.enqueue(Reply(content="still here"))
        body = orjson.loads(MESSAGE) | {"stream": True}
        with fresh.stream("POST", "/v1/messages", json=body) as response:
            assert response.status_code == 200
            assert "message_stop" in response.read().decode()
    # The silent connections were all still open after the proxy answered.
    for sock in silent_connections:
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)

    # Then every one of them is closed by the proxy, within a bounded wait.
    with selectors.DefaultSelector() as selector:
        for sock in silent_connections:
            selector.register(sock, selectors.EVENT_READ)
        closed = 0
        deadline = time.monotonic() + timeout + 30
        while closed < len(silent_connections) and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1.0):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                try:
                    data = ready.recv(1)
                except ConnectionResetError:
                    data = b""
                assert data == b""
                selector.unregister(ready)
                closed += 1
    assert closed == len(silent_connections)
