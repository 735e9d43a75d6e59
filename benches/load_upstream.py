"""A fast stand-in for Ollama, for `load.py`: `/api/chat` NDJSON as fast as the socket takes it.

Unlike `tests/ollama_double/` (faithful, controllable, slow on purpose), this server does the least work per
request: every answer is encoded once at start-up and each `/api/chat` is one `transport.write`. The stream has
Ollama's shape: one HTTP/1.1 chunk per NDJSON line (Ollama's Go server flushes each line), `N` content chunks
`{"model","created_at","message":{"role":"assistant","content":<token>},"done":false}`, then the `done` chunk with
`done_reason`, the counts and the durations. Connections are kept alive.

Each token is a distinct string that carries one `TOKEN_MARK` character, which appears nowhere else in the stream,
in the proxy's SSE or in HTTP framing. A client counts the tokens it was delivered by counting that byte, however
the proxy coalesced them into deltas; distinct strings also keep proxies that cut "repeating" streams honest.

Run it as `python benches/load_upstream.py --port P`; it prints `ready <port>` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from typing import cast

import orjson

__all__ = ["TOKEN_MARK", "Stats", "UpstreamConfig", "expected_text", "serve", "token_text"]

TOKEN_MARK = b"~"
VERSION = "0.33.0"
MODEL = "bench"
CREATED_AT = "2026-11-24T07:00:00.123456789Z"
# Bounds for what the parser buffers: the benchmark's own clients send a few hundred bytes.
_MAX_HEAD = 64 * 1024
_MAX_BODY = 8 * 1024 * 1024
_MAX_ARRIVALS = 1_000_000


def token_text(index: int) -> str:
    """The `index`-th token: a leading space, a distinct word and the mark, like ` w17~`."""
    return f" w{index}{TOKEN_MARK.decode()}"


def expected_text(tokens: int) -> str:
    return "".join(token_text(i) for i in range(tokens))


@dataclass(frozen=True)
class UpstreamConfig:
    tokens: int = 500
    # Seconds between chunks; 0 writes the whole answer at once.
    delay: float = 0.0
    # "line": one HTTP chunk per NDJSON line (Ollama's framing); "bulk": the whole body as one HTTP chunk.
    chunking: str = "line"


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _lines(tokens: int) -> list[bytes]:
    lines = []
    for index in range(tokens):
        line = {
            "model": MODEL,
            "created_at": CREATED_AT,
            "message": {"role": "assistant", "content": token_text(index)},
            "done": False,
        }
        lines.append(orjson.dumps(line) + b"\n")
    done = {
        "model": MODEL,
        "created_at": CREATED_AT,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
        "total_duration": 2_345_678_901,
        "load_duration": 12_345_678,
        "prompt_eval_count": 26,
        "prompt_eval_duration": 45_678_901,
        "eval_count": tokens,
        "eval_duration": 2_234_567_890,
    }
    lines.append(orjson.dumps(done) + b"\n")
    return lines


def _head(status: str, content_type: bytes, *, length: int | None) -> bytes:
    framing = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: " + content_type + b"\r\n"
        b"Date: Tue, 24 Nov 2026 07:00:00 GMT\r\n" + framing + b"\r\n\r\n"
    )


def _json_response(status: str, body: object) -> bytes:
    data = orjson.dumps(body)
    return _head(status, b"application/json; charset=utf-8", length=len(data)) + data


class _Answers:
    """Every response, encoded once."""

    def __init__(self, config: UpstreamConfig) -> None:
        lines = _lines(config.tokens)
        self.chat_head = _head("200 OK", b"application/x-ndjson", length=None)
        if config.chunking == "bulk":
            self.chat_chunks = [_chunk(b"".join(lines))]
        else:
            self.chat_chunks = [_chunk(line) for line in lines]
        self.chat_tail = b"0\r\n\r\n"
        self.chat_whole = self.chat_head + b"".join(self.chat_chunks) + self.chat_tail
        text = expected_text(config.tokens)
        last = orjson.loads(lines[-1])
        last["message"]["content"] = text
        self.chat_single = _json_response("200 OK", last)
        self.version = _json_response("200 OK", {"version": VERSION})
        details = {
            "parent_model": "",
            "format": "gguf",
            "family": "llama",
            "families": ["llama"],
            "parameter_size": "8.0B",
            "quantization_level": "Q4_K_M",
        }
        self.tags = _json_response(
            "200 OK",
            {
                "models": [
                    {
                        "name": f"{MODEL}:latest",
                        "model": f"{MODEL}:latest",
                        "modified_at": "2026-11-01T09:00:00Z",
                        "size": 4_920_753_328,
                        "digest": "0" * 64,
                        "details": {**details, "context_length": 131072, "embedding_length": 4096},
                        "capabilities": ["completion", "tools"],
                    }
                ]
            },
        )
        self.show = _json_response(
            "200 OK",
            {
                "capabilities": ["completion", "tools"],
                "model_info": {"general.architecture": "llama", "llama.context_length": 131072},
                "details": {},
            },
        )
        root = b"Ollama is running"
        self.root = _head("200 OK", b"text/plain; charset=utf-8", length=len(root)) + root
        self.not_found = _json_response("404 Not Found", {"error": "404 page not found"})
        self.bad_request = _json_response("400 Bad Request", {"error": "malformed request"})


class Stats:
    """What the benchmark asks of the upstream itself: connections accepted, and when each `/api/chat` arrived.

    `GET /_bench/stats` returns them and starts afresh. Arrival times are `time.perf_counter()`, which is
    CLOCK_MONOTONIC on Linux and so comparable with the load generator's clock in another process.
    """

    def __init__(self) -> None:
        self.connections = 0
        self.chat_arrivals: list[float] = []

    def take(self) -> bytes:
        body = {"connections": self.connections, "chats": len(self.chat_arrivals), "chat_arrivals": self.chat_arrivals}
        self.connections = 0
        self.chat_arrivals = []
        return _json_response("200 OK", body)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: parses requests (Content-Length or chunked bodies) and answers them in order."""

    def __init__(self, answers: _Answers, config: UpstreamConfig, stats: Stats) -> None:
        self._answers = answers
        self._config = config
        self._stats = stats
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._writing: asyncio.Task[None] | None = None
        self._close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self._transport = cast(asyncio.Transport, transport)
        self._stats.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self._writing is not None:
            self._writing.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._writing is None:
            self._process()

    def _process(self) -> None:
        transport = self._transport
        while transport is not None and self._writing is None:
            request = self._take_request()
            if request is None:
                return
            method, path, body, close = request
            self._close_after = close
            answer = self._answer(method, path, body)
            if isinstance(answer, bytes):
                transport.write(answer)
                if close:
                    transport.close()
                    return
            else:
                self._writing = asyncio.get_running_loop().create_task(self._drip(answer))

    def _take_request(self) -> tuple[str, str, bytes, bool] | None:
        """The next whole request in the buffer (removed from it), or None when more bytes are needed."""
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > _MAX_HEAD and self._transport is not None:
                self._transport.close()
            return None
        head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
        parts = head[0].split(" ")
        method, target = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
        version = parts[2] if len(parts) >= 3 else "HTTP/1.0"
        headers: dict[str, str] = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            decoded = _dechunk(buffer, start)
            if decoded is None:
                return None
            body, consumed = decoded
        else:
            length = int(headers.get("content-length", "0") or 0)
            if length > _MAX_BODY:
                if self._transport is not None:
                    self._transport.close()
                return None
            if len(buffer) < start + length:
                return None
            body, consumed = bytes(buffer[start : start + length]), start + length
        del buffer[:consumed]
        connection = headers.get("connection", "").lower()
        close = "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)
        return method, target.split("?", 1)[0], body, close

    def _answer(self, method: str, path: str, body: bytes) -> bytes | list[bytes]:
        answers = self._answers
        if path == "/api/chat" and method == "POST":
            if len(self._stats.chat_arrivals) < _MAX_ARRIVALS:
                self._stats.chat_arrivals.append(time.perf_counter())
            try:
                request = orjson.loads(body)
            except orjson.JSONDecodeError:
                return answers.bad_request
            if isinstance(request, dict) and request.get("stream") is False:
                return answers.chat_single
            if self._config.delay > 0:
                return [answers.chat_head, *answers.chat_chunks, answers.chat_tail]
            return answers.chat_whole
        if path == "/api/show" and method == "POST":
            return answers.show
        if path == "/api/tags" and method in ("GET", "HEAD"):
            return answers.tags
        if path == "/api/version" and method in ("GET", "HEAD"):
            return answers.version
        if path == "/" and method in ("GET", "HEAD"):
            return answers.root
        if path == "/_bench/stats" and method == "GET":
            return self._stats.take()
        return answers.not_found

    async def _drip(self, pieces: list[bytes]) -> None:
        """Write a stream piece by piece with `delay` between the chunks (Ollama's pace, if asked for)."""
        try:
            for index, piece in enumerate(pieces):
                if self._transport is None:
                    return
                if 1 < index < len(pieces) - 1:
                    await asyncio.sleep(self._config.delay)
                self._transport.write(piece)
            if self._close_after and self._transport is not None:
                self._transport.close()
                return
        finally:
            self._writing = None
        if self._buffer:
            self._process()


def _dechunk(buffer: bytearray, start: int) -> tuple[bytes, int] | None:
    """A chunked request body starting at `start`: (body, bytes consumed), or None if incomplete."""
    body = bytearray()
    position = start
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size = int(bytes(buffer[position:line_end]).split(b";", 1)[0].strip() or b"0", 16)
        position = line_end + 2
        if size == 0:
            # Trailers (normally none) end with an empty line.
            while True:
                line_end = buffer.find(b"\r\n", position)
                if line_end < 0:
                    return None
                empty = line_end == position
                position = line_end + 2
                if empty:
                    return bytes(body), position
        if len(buffer) < position + size + 2:
            return None
        body += buffer[position : position + size]
        position += size + 2


async def serve(host: str, port: int, config: UpstreamConfig, *, announce: bool = True) -> None:
    """Serve until cancelled (or killed)."""
    answers = _Answers(config)
    stats = Stats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(answers, config, stats), host, port, backlog=4096, reuse_address=True
    )
    if announce:
        bound = server.sockets[0].getsockname()[1]
        print(f"ready {bound}", flush=True)
    async with server:
        await server.serve_forever()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="A fast Ollama stand-in for the proxy-overhead benchmark.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed as `ready <port>`)")
    parser.add_argument("--tokens", type=int, default=500, help="content chunks per /api/chat answer")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds between chunks (0: one write)")
    parser.add_argument("--chunking", choices=("line", "bulk"), default="line")
    parser.add_argument("--cpus", default="", help="comma-separated CPUs to pin this process to")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.cpus:
        os.sched_setaffinity(0, {int(cpu) for cpu in args.cpus.split(",")})
    config = UpstreamConfig(tokens=args.tokens, delay=args.delay, chunking=args.chunking)
    # ccop's own event loop (a dependency everywhere but Windows): the stand-in must not be the slower side.
    uvloop = importlib.util.find_spec("uvloop")
    try:
        if uvloop is not None:
            print("event loop: uvloop", file=sys.stderr, flush=True)
            importlib.import_module("uvloop").run(serve(args.host, args.port, config))
        else:
            asyncio.run(serve(args.host, args.port, config))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
