"""The proxy as a process: workers that die, stopping, the port, and the watchers around a running answer.

Every test starts the real `ccop` (tests/conftest.py) and looks at it from outside: its children in /proc, its
exit code and output, and what a client receives over HTTP.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from conftest import ProxyProcess, Spawn, ccop_command, child_processes, free_port, start_proxy, worker_pids
from ollama_double import OllamaDouble, Reply

STREAM_BODY = {"model": "llama3.1", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def _wait_until(condition: Callable[[], object], timeout: float = 15.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def _answers(proxy: ProxyProcess) -> bool:
    try:
        return httpx.get(f"{proxy.url}/health", timeout=2.0, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def streaming(spawn: Spawn) -> Iterator[Callable[[ProxyProcess], httpx.Response]]:
    """Open SSE streams to a proxy; each is closed when the test ends."""
    clients: list[httpx.Client] = []
    responses: list[httpx.Response] = []

    def open_stream(proxy: ProxyProcess) -> httpx.Response:
        client = httpx.Client(base_url=proxy.url, timeout=httpx.Timeout(20.0), trust_env=False)
        clients.append(client)
        response = client.send(client.build_request("POST", "/v1/messages", json=STREAM_BODY), stream=True)
        responses.append(response)
        return response

    yield open_stream
    for response in responses:
        response.close()
    for client in clients:
        client.close()


def _read_until(lines: Iterator[str], marker: str) -> list[str]:
    seen: list[str] = []
    for line in lines:
        seen.append(line)
        if marker in line:
            return seen
    raise AssertionError(f"the stream ended before {marker!r}: {seen}")


# -- workers ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_a_killed_worker_is_replaced_and_the_service_keeps_answering(spawn: Spawn, workers: int) -> None:
    proxy = spawn("--workers", str(workers))
    assert _wait_until(lambda: len(worker_pids(proxy)) == workers)
    before = worker_pids(proxy)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)

    # A replacement appears (the main process did not give up), and the service answers again.
    assert _wait_until(lambda: len(worker_pids(proxy) - before) == 1 and victim not in worker_pids(proxy)), proxy.log()
    assert proxy.process.poll() is None, proxy.log()
    assert _wait_until(lambda: _answers(proxy)), proxy.log()
    assert f"(pid {victim}) was killed by signal 9; starting a replacement" in proxy.log()
    if workers > 1:
        # The surviving worker served on all along: every request in a row is answered.
        assert all(_answers(proxy) for _ in range(10))


def test_the_start_up_check_child_is_reaped(spawn: Spawn) -> None:
    proxy = spawn()
    # The start-up check prints one summary line about Ollama and exits.
    assert _wait_until(lambda: "Ollama 0.33.0" in proxy.log()), proxy.log()
    assert _wait_until(lambda: not any(state == "Z" for state, _ in child_processes(proxy.process.pid).values())), (
        child_processes(proxy.process.pid)
    )


# -- stopping --------------------------------------------------------------------------------------------------------


def test_sigterm_ends_a_stream_that_outlives_the_grace_period_with_an_error_event(
    spawn: Spawn, ollama: OllamaDouble, streaming: Callable[[ProxyProcess], httpx.Response]
) -> None:
    proxy = spawn("--shutdown-grace", "1")
    never = threading.Event()
    ollama.enqueue(Reply(content="a long answer", hold_until=never))
    response = streaming(proxy)
    lines = response.iter_lines()
    _read_until(lines, "content_block_delta")

    proxy.process.send_signal(signal.SIGTERM)
    rest = list(lines)  # the stream must end cleanly (no RemoteProtocolError), with an error frame
    text = "\n".join(rest)
    assert "event: error" in text, text
    assert "shutting down" in text
    assert "message_stop" not in text
    assert proxy.process.wait(timeout=15) == 0
    assert "shutting down: running answers have 1 s to finish" in proxy.log()
    assert "ccop: stopped" in proxy.log()
    assert "ending 1 answer(s) still running after 1 s" in proxy.log()
    never.set()


def test_sigterm_ends_a_stream_still_waiting_for_ollama_with_an_error_event(
    spawn: Spawn, ollama: OllamaDouble, streaming: Callable[[ProxyProcess], httpx.Response]
) -> None:
    proxy = spawn("--shutdown-grace", "1")
    # Ollama is still loading the model: its response head has not come yet, the client has message_start.
    ollama.enqueue(Reply(content="too late", first_byte_delay=60))
    lines = streaming(proxy).iter_lines()
    _read_until(lines, "event: message_start")

    proxy.process.send_signal(signal.SIGTERM)
    text = "\n".join(lines)
    assert "event: error" in text, text
    assert "shutting down" in text
    proxy.process.wait(timeout=15)


def test_sigterm_lets_a_running_answer_finish_within_the_grace_period(
    spawn: Spawn, ollama: OllamaDouble, streaming: Callable[[ProxyProcess], httpx.Response]
) -> None:
    proxy = spawn("--shutdown-grace", "20")
    release = threading.Event()
    ollama.enqueue(Reply(content="almost done", hold_until=release))
    response = streaming(proxy)
    lines = response.iter_lines()
    _read_until(lines, "content_block_delta")

    proxy.process.send_signal(signal.SIGTERM)
    assert _wait_until(lambda: "waiting up to 20 s for 1 running answer(s)" in proxy.log()), proxy.log()
    release.set()
    text = "\n".join(lines)
    assert "event: message_stop" in text
    assert "event: error" not in text
    assert proxy.process.wait(timeout=15) == 0


def test_a_second_interrupt_stops_at_once(
    spawn: Spawn, ollama: OllamaDouble, streaming: Callable[[ProxyProcess], httpx.Response]
) -> None:
    proxy = spawn("--shutdown-grace", "120")
    never = threading.Event()
    ollama.enqueue(Reply(content="a long answer", hold_until=never))
    lines = streaming(proxy).iter_lines()  # kept: a dropped iterator would close the stream
    _read_until(lines, "content_block_delta")

    proxy.process.send_signal(signal.SIGINT)
    assert _wait_until(lambda: "press Ctrl-C again to stop at once" in proxy.log()), proxy.log()
    proxy.process.send_signal(signal.SIGINT)
    # Well inside the 120 s grace period the first interrupt granted.
    proxy.process.wait(timeout=15)
    assert "ccop: stopping now" in proxy.log()
    never.set()


def test_ctrl_c_in_the_terminal_while_the_start_up_check_waits_prints_no_traceback(tmp_path: Path) -> None:
    # An "Ollama" that accepts connections and never answers: the start-up check is still waiting when Ctrl-C comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        port = str(free_port())
        env = {key: value for key, value in os.environ.items() if not key.startswith("CCOP_")}
        # Its own process group, standing for the terminal's foreground group that Ctrl-C signals as a whole.
        process = subprocess.Popen(
            [*ccop_command(), "--port", port, "--ollama-url", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=tmp_path,
            start_new_session=True,
        )
        try:
            assert _wait_until(lambda: child_processes(process.pid)), "no workers started"
            time.sleep(0.5)
            os.killpg(process.pid, signal.SIGINT)
            output, _ = process.communicate(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 0
    assert "Traceback" not in output, output
    assert "KeyboardInterrupt" not in output
    assert output.rstrip().endswith("ccop: stopped")


# -- the address -----------------------------------------------------------------------------------------------------


def _run_ccop(*args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CCOP_") and key != "PORT"}
    return subprocess.run([*ccop_command(), *args], capture_output=True, text=True, timeout=30, env=env)


def test_a_second_ccop_on_the_same_port_exits_with_one_line(spawn: Spawn, ollama: OllamaDouble) -> None:
    first = spawn()
    second = _run_ccop("--port", str(first.port), "--ollama-url", ollama.url)

    assert second.returncode == 1
    assert "listening" not in second.stdout
    message = second.stderr.strip()
    assert "\n" not in message, message
    assert f"port {first.port} is already in use by pid {first.process.pid}" in message
    assert "--port" in message
    # The first proxy is untouched and still the only one answering.
    assert _answers(first)


def test_a_port_held_by_another_program_exits_with_one_line(ollama: OllamaDouble) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = _run_ccop("--port", str(port), "--ollama-url", ollama.url)

    assert result.returncode == 1
    assert "listening" not in result.stdout
    assert "Traceback" not in result.stderr
    command = " ".join(_command_of(os.getpid()))
    shown = command if len(command) <= 80 else command[:79] + "…"
    assert result.stderr.strip() == (
        f"ccop: port {port} is already in use by pid {os.getpid()} ({shown}); "
        "stop that process, or choose another port with --port"
    )


def _command_of(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().rstrip("\0").split("\0")


def test_host_may_be_a_name(spawn: Spawn) -> None:
    proxy = spawn("--host", "localhost")
    assert _answers(proxy)  # the conftest reaches it at 127.0.0.1
    assert f"listening on http://localhost:{proxy.port}" in proxy.log()


def test_an_ipv6_host_is_bound_and_shown_as_a_url(ollama: OllamaDouble, tmp_path: Path) -> None:
    proxy = start_proxy(ollama.url, tmp_path, "--host", "::1", wait=False)
    proxy.host = "[::1]"
    try:
        assert _wait_until(lambda: _answers(proxy)), proxy.log()
        assert f"listening on http://[::1]:{proxy.port}" in proxy.log()
    finally:
        proxy.stop()


def test_an_unknown_host_name_is_one_line(ollama: OllamaDouble) -> None:
    result = _run_ccop("--host", "no-such-host.invalid", "--port", "1", "--ollama-url", ollama.url)
    assert result.returncode == 1
    assert result.stderr.startswith("ccop: cannot resolve --host no-such-host.invalid")
    assert "Traceback" not in result.stderr


# -- the watchers around a running answer ----------------------------------------------------------------------------


def test_a_client_that_stops_reading_is_not_blamed_on_ollama(spawn: Spawn, ollama: OllamaDouble) -> None:
    proxy = spawn("--idle-timeout", "2")
    # Far more than the proxy buffers for a slow client (its 1 MiB mark plus the sockets' buffers).
    ollama.enqueue(Reply(content="word " * 4_000_000, chunk_size=4096))
    body = httpx.Request("POST", f"{proxy.url}/v1/messages", json={**STREAM_BODY, "max_tokens": 100_000}).read()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", proxy.port))
        head = (
            f"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        # ...and reads nothing more: the proxy's buffers fill, then it waits for this client.
        assert _wait_until(lambda: "POST /v1/messages" in proxy.log(), timeout=30), proxy.log()

    line = next(line for line in proxy.log().splitlines() if "POST /v1/messages" in line)
    assert "the client read nothing for 2 s" in line
    assert "Ollama sent nothing" not in line


def test_message_start_does_not_wait_for_a_slow_first_token(
    spawn: Spawn, ollama: OllamaDouble, streaming: Callable[[ProxyProcess], httpx.Response]
) -> None:
    # Pings every 60 s: only message_start itself can reach the client while the first token is held back.
    proxy = spawn(env={"CCOP_PING_INTERVAL": "60"})
    first_token = threading.Event()
    ollama.enqueue(Reply(content="late", first_line_after=first_token))
    response = streaming(proxy)
    lines = response.iter_lines()
    try:
        # Ollama's response head is out, its first token is not: message_start arrives anyway.
        before = _read_until(lines, "event: message_start")
    finally:
        first_token.set()
    assert not any("content_block" in line for line in before)
    rest = "\n".join(lines)
    assert rest.index("content_block_delta") < rest.index("message_stop")
