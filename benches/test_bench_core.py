"""Micro benchmarks of the Rust core (``ccop._core``) against pure-Python baselines (``baselines.py``).

Every group times one job twice, ``[rust]`` and ``[python]``, and each test first asserts that both give the same
result on the benchmark's input, so the two rows of a group compare equivalent work. Results and method:
``docs/PERFORMANCE.md``.

Benchmarks are off by default (pyproject's ``--benchmark-disable``): ``python -m pytest benches`` then runs each
function once as a smoke test. Measure with::

    python -m pytest benches --benchmark-enable -p no:cacheprovider

Where a round processes many items (lines, frames, inputs), ``extra_info`` records the counts and, when timing is
on, the median cost per item in nanoseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import orjson
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from baselines import (
    PyStreamTranslator,
    build_request_body,
    build_stream,
    cut_pieces,
    heal_inputs,
    py_count_request,
    py_heal_tool_arguments,
)
from ccop import _core

IMPLS = ["rust", "python"]

MESSAGE_ID = "msg_01BenchBenchBenchBench01"
MODEL = "claude-sonnet-4-5"
INPUT_ESTIMATE = 18000
MAX_TOKENS = 32000

# Fixture data, built once per session in a few milliseconds.
LINES = build_stream(500)
STREAM = b"".join(LINES)
PIECES = cut_pieces(STREAM, 1024, 4096)
CONTENT_LINES = LINES[:500]
REQUEST_BODY = build_request_body(200_000)
HEAL_INPUTS = heal_inputs()


class Translator(Protocol):
    def start(self) -> bytes: ...
    def feed(self, chunk: bytes, /) -> bytes: ...
    def finish(self) -> bytes: ...


def _rust_translator() -> Translator:
    return _core.StreamTranslator(
        message_id=MESSAGE_ID, model=MODEL, input_tokens_estimate=INPUT_ESTIMATE, max_tokens=MAX_TOKENS
    )


def _python_translator() -> Translator:
    return PyStreamTranslator(
        message_id=MESSAGE_ID, model=MODEL, input_tokens_estimate=INPUT_ESTIMATE, max_tokens=MAX_TOKENS
    )


def _translate(factory: Callable[[], Translator], reads: Sequence[bytes]) -> bytes:
    """One whole message: ``start()``, ``feed()`` per socket read, ``finish()``; the SSE bytes."""
    translator = factory()
    out = [translator.start()]
    for read in reads:
        out.append(translator.feed(read))
    out.append(translator.finish())
    return b"".join(out)


def _record(benchmark: BenchmarkFixture, **counts: int) -> None:
    """Store the item counts and, when timing is on, the median nanoseconds per item in ``extra_info``."""
    benchmark.extra_info.update(counts)
    stats = benchmark.stats
    if stats is None:
        return
    median: float = stats.stats.median
    for name, count in counts.items():
        benchmark.extra_info[f"median_ns_per_{name.removesuffix('s')}"] = round(median / count * 1e9, 1)


def _parse_sse(stream: bytes) -> list[tuple[str, object]]:
    """``(event, data)`` pairs of a buffer of single-data-line frames."""
    events = []
    for frame in stream.decode().split("\n\n")[:-1]:
        event, data = frame.split("\n")
        events.append((event.removeprefix("event: "), orjson.loads(data.removeprefix("data: "))))
    return events


# --------------------------------------------------------------------------------------------------------------------
# 1. NDJSON split + parse + translate of a whole stream
# --------------------------------------------------------------------------------------------------------------------


def _check_stream(reads: Sequence[bytes]) -> bytes:
    rust = _translate(_rust_translator, reads)
    python = _translate(_python_translator, reads)
    # Byte-identical, which implies the same events; the parsed form is checked too, for a readable failure.
    assert _parse_sse(rust) == _parse_sse(python)
    assert rust == python
    assert rust.count(b"event: message_stop\n") == 1
    return rust


@pytest.mark.benchmark(group="1a stream: 502 NDJSON lines in 1-4 KB reads -> SSE")
@pytest.mark.parametrize("impl", IMPLS)
def test_stream_socket_reads(benchmark: BenchmarkFixture, impl: str) -> None:
    expected = _check_stream(PIECES)
    factory = _rust_translator if impl == "rust" else _python_translator
    assert benchmark(_translate, factory, PIECES) == expected
    _record(benchmark, lines=len(LINES), reads=len(PIECES))
    benchmark.extra_info.update(bytes_in=len(STREAM), bytes_out=len(expected))


@pytest.mark.benchmark(group="1b stream: 502 NDJSON lines, one line per read -> SSE")
@pytest.mark.parametrize("impl", IMPLS)
def test_stream_line_per_read(benchmark: BenchmarkFixture, impl: str) -> None:
    expected = _check_stream(LINES)
    factory = _rust_translator if impl == "rust" else _python_translator
    assert benchmark(_translate, factory, LINES) == expected
    _record(benchmark, lines=len(LINES))
    benchmark.extra_info.update(bytes_in=len(STREAM), bytes_out=len(expected))


# --------------------------------------------------------------------------------------------------------------------
# 2. SSE frame encoding
# --------------------------------------------------------------------------------------------------------------------


def _delta_json(text: str) -> bytes:
    return orjson.dumps({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})


DELTA_TEXTS = [orjson.loads(line)["message"]["content"] for line in CONTENT_LINES]
DELTA_DATA = [_delta_json(text) for text in DELTA_TEXTS]


def _encode_rust(datas: Sequence[bytes]) -> list[bytes]:
    encode = _core.encode_sse
    return [encode("content_block_delta", data) for data in datas]


def _encode_python(datas: Sequence[bytes]) -> list[bytes]:
    return [b"event: content_block_delta\ndata: " + data + b"\n\n" for data in datas]


@pytest.mark.benchmark(group="2a SSE framing only: 500 ready-made delta JSONs")
@pytest.mark.parametrize("impl", IMPLS)
def test_sse_encode(benchmark: BenchmarkFixture, impl: str) -> None:
    expected = _encode_python(DELTA_DATA)
    assert _encode_rust(DELTA_DATA) == expected
    assert benchmark(_encode_rust if impl == "rust" else _encode_python, DELTA_DATA) == expected
    _record(benchmark, frames=len(DELTA_DATA))


_BLOCK_START = b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'  # noqa: E501


def _delta_frames_rust(lines: Sequence[bytes]) -> list[bytes]:
    """The translator parses each NDJSON line and writes the delta frame itself."""
    translator = _rust_translator()
    translator.start()
    feed = translator.feed
    return [feed(line) for line in lines]


def _delta_frames_python(lines: Sequence[bytes]) -> list[bytes]:
    """The least a Python relay does per chunk: parse the line, build the delta dict, ``orjson.dumps``, frame."""
    loads, dumps = orjson.loads, orjson.dumps
    frames = []
    for line in lines:
        text = loads(line)["message"]["content"]
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
        frames.append(b"event: content_block_delta\ndata: " + dumps(delta) + b"\n\n")
    return frames


@pytest.mark.benchmark(group="2b SSE per chunk: NDJSON line -> text_delta frame, 500 lines")
@pytest.mark.parametrize("impl", IMPLS)
def test_sse_delta_per_chunk(benchmark: BenchmarkFixture, impl: str) -> None:
    python = _delta_frames_python(CONTENT_LINES)
    rust = _delta_frames_rust(CONTENT_LINES)
    # The translator's first frame is preceded by the text block's content_block_start (extra work for Rust).
    assert rust[0] == _BLOCK_START + python[0]
    assert rust[1:] == python[1:]
    expected = rust if impl == "rust" else python
    assert benchmark(_delta_frames_rust if impl == "rust" else _delta_frames_python, CONTENT_LINES) == expected
    _record(benchmark, frames=len(CONTENT_LINES))


# --------------------------------------------------------------------------------------------------------------------
# 3. Tool-argument healing
# --------------------------------------------------------------------------------------------------------------------


def _heal_rust(inputs: Sequence[str]) -> list[tuple[bytes, str]]:
    heal = _core.heal_tool_arguments
    return [heal(text) for text in inputs]


def _heal_python(inputs: Sequence[str]) -> list[tuple[bytes, str]]:
    return [py_heal_tool_arguments(text) for text in inputs]


@pytest.mark.benchmark(group="3 heal_tool_arguments: 12 mixed inputs")
@pytest.mark.parametrize("impl", IMPLS)
def test_heal_tool_arguments(benchmark: BenchmarkFixture, impl: str) -> None:
    expected = _heal_rust(HEAL_INPUTS)
    assert _heal_python(HEAL_INPUTS) == expected
    assert {kind for _, kind in expected} == {"parsed_string", "unescaped", "raw"}
    assert benchmark(_heal_rust if impl == "rust" else _heal_python, HEAL_INPUTS) == expected
    _record(benchmark, inputs=len(HEAL_INPUTS))


# --------------------------------------------------------------------------------------------------------------------
# 4. Request token counting
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.benchmark(group="4 count_request_tokens: ~200 KB Claude Code request")
@pytest.mark.parametrize("impl", IMPLS)
def test_count_request_tokens(benchmark: BenchmarkFixture, impl: str) -> None:
    expected = _core.count_request_tokens(REQUEST_BODY)
    assert py_count_request(REQUEST_BODY) == expected
    count = _core.count_request_tokens if impl == "rust" else py_count_request
    assert benchmark(count, REQUEST_BODY) == expected
    benchmark.extra_info.update(body_bytes=len(REQUEST_BODY), tokens=expected)
