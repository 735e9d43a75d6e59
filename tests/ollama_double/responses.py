"""Writing one ``/api/chat`` response with the quirks a scripted ``Reply`` asks for: a late head or a head that
arrives before the first line, one HTTP chunk per NDJSON line or bodies split anywhere, ``{"error":…}`` mid-stream,
held, hanging and endless streams, and error bodies too large to buffer. Every wait notices a client that leaves."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from .script import ChatStream, Reply
from .server import ClientGone, HttpConnection
from .wire import Json, aggregate, chunk, encode_line, error_of, message, plan_reply

JSON_TYPE = "application/json; charset=utf-8"
_NDJSON_HEADERS = [("Content-Type", "application/x-ndjson"), ("Transfer-Encoding", "chunked")]


class Streamer:
    """Writes one chat response, keeps its ``ChatStream`` record, and turns every sign of a vanished client into
    ``ClientGone``."""

    def __init__(
        self, conn: HttpConnection, record: ChatStream, lock: threading.Condition, on_finish: Callable[[], None]
    ) -> None:
        self.conn = conn
        self.record = record
        self.lock = lock
        self.on_finish = on_finish

    def set_phase(self, phase: str) -> None:
        with self.lock:
            self.record.phase = phase

    def _check(self) -> None:
        if self.conn.gone:
            raise ClientGone

    async def write(self, data: bytes, *, counts: bool = False, final: bool = False) -> None:
        """Write and drain; ``final`` marks the write that completes the response.

        The response is recorded as finished *before* that write, because the client may act on the last bytes
        (and a test may inspect the records) before this thread runs again.
        """
        self._check()
        if final:
            self.on_finish()
        await self.conn.write(data)
        if counts:
            with self.lock:
                self.record.chunks_sent += 1

    async def pause(self, seconds: float, phase: str | None = None) -> None:
        """Sleep, but wake up at once (and raise) if the client disconnects meanwhile."""
        if phase:
            self.set_phase(phase)
        self._check()
        if seconds <= 0:
            return
        watcher = self.conn.watcher
        if watcher is None:
            await asyncio.sleep(seconds)
            return
        done, _ = await asyncio.wait({watcher}, timeout=seconds)
        if done:
            raise ClientGone

    async def hold(self, event: threading.Event) -> None:
        """Wait for a test's event (polled: it is set from another thread)."""
        self.set_phase("hold")
        while not event.is_set():
            await self.pause(0.02)
        self.set_phase("streaming")

    async def hang(self) -> None:
        """Never finish: wait for the client to leave."""
        self.set_phase("hang")
        self._check()
        assert self.conn.watcher is not None
        await asyncio.wait({self.conn.watcher})
        raise ClientGone

    async def body(self, payload: bytes, split_every: int | None, pause: float, *, last: bool) -> None:
        """Write ``payload`` as body bytes, each piece of ``split_every`` bytes its own HTTP chunk and TCP write.

        The last piece carries the end of the body in the same write: a client that closes right after reading
        ``done:true`` must not be recorded as a disconnect just because the terminator was still to come.
        """
        step = split_every if split_every and split_every > 0 else max(len(payload), 1)
        if last and not payload:
            await self.write(self.conn.frame(b"", end=True), final=True)
        for start in range(0, len(payload), step):
            if start:
                await self.pause(pause)
            final = last and start + step >= len(payload)
            await self.write(self.conn.frame(payload[start : start + step], end=final), counts=True, final=final)


@dataclass
class ChatContext:
    """What a reply is written for: the request's model name and body, and the simulated load time."""

    model: str
    request: Json
    load_ns: int


async def stream_reply(out: Streamer, reply: Reply, ctx: ChatContext) -> None:
    """A ``stream:true`` answer: NDJSON lines, each its own HTTP chunk unless ``split_every`` cuts the body."""
    await out.pause(reply.first_byte_delay, "first_byte_delay")
    failure = error_of(reply)
    if failure is not None and (reply.error_body_size is not None or reply.endless_error_body):
        await _large_error(out, failure, reply.error_body_size)
    elif failure is not None:
        await _whole(out, failure[0], orjson.dumps({"error": failure[1]}), None, 0.0)
    elif reply.endless:
        await _endless(out, reply, ctx.model)
    else:
        await _lines(out, reply, ctx)


def _items(reply: Reply, ctx: ChatContext) -> tuple[list[Json | bytes], Json | None]:
    """The lines to send, and the final line when it is to be held back for ``hold_until``."""
    if reply.raw_lines is not None:
        return list(reply.raw_lines), None
    plan = plan_reply(reply, ctx.model, ctx.request, ctx.load_ns)
    items: list[Json | bytes] = list(plan.chunks)
    if reply.mid_stream_error is not None:
        items.append({"error": reply.mid_stream_error})
    elif not reply.end_without_done and not reply.hang_after_chunks:
        items.append(plan.final)
        return items, plan.final if reply.hold_until is not None else None
    return items, None


async def _lines(out: Streamer, reply: Reply, ctx: ChatContext) -> None:
    items, held = _items(reply, ctx)
    out.set_phase("streaming")
    await out.write(out.conn.head(200, _NDJSON_HEADERS))
    if reply.first_line_after is not None:
        await out.hold(reply.first_line_after)
    ends = not reply.hang_after_chunks
    if reply.split_every and reply.split_every > 0:
        # Split the joined body rather than each line, so piece boundaries fall inside lines and characters.
        before = items[:-1] if held is not None else items
        payload = b"".join(encode_line(item) for item in before)
        await out.body(payload, reply.split_every, reply.split_pause, last=ends and held is None)
    else:
        await _line_by_line(out, reply, items[:-1] if held is not None else items, last=ends and held is None)
    if held is not None and reply.hold_until is not None:
        await out.hold(reply.hold_until)
        await out.body(encode_line(held), reply.split_every, reply.split_pause, last=ends)
    if reply.hang_after_chunks:
        await out.hang()


async def _line_by_line(out: Streamer, reply: Reply, items: list[Json | bytes], *, last: bool) -> None:
    if not items and last:
        await out.body(b"", None, 0.0, last=True)
    for position, item in enumerate(items):
        if position and reply.delay_between > 0:
            await out.pause(reply.delay_between, "streaming")
        await out.body(encode_line(item), None, 0.0, last=last and position == len(items) - 1)


async def _whole(out: Streamer, status: int, body: bytes, split_every: int | None, pause: float) -> None:
    """A JSON body with a ``Content-Length``; ``split_every`` writes it in pieces after the head."""
    head = out.conn.head(status, [("Content-Type", JSON_TYPE), ("Content-Length", str(len(body)))])
    if not split_every or split_every <= 0 or not body:
        await out.write(head + out.conn.frame(body, end=True), final=True)
        return
    await out.write(head)
    await out.body(body, split_every, pause, last=True)


async def _large_error(out: Streamer, failure: tuple[int, str], size: int | None) -> None:
    """An error answer of ``size`` bytes (``None``: endless, chunked), 1 MiB per write, until the client leaves."""
    status, text = failure
    start = orjson.dumps({"error": text})
    headers = [("Content-Type", JSON_TYPE)]
    total = None if size is None else max(size, len(start))
    headers.append(("Transfer-Encoding", "chunked") if total is None else ("Content-Length", str(total)))
    out.set_phase("streaming")
    await out.write(out.conn.head(status, headers))
    await out.write(out.conn.frame(start, end=total == len(start)), final=total == len(start))
    piece = b" " * (1 << 20)
    left = None if total is None else total - len(start)
    while left is None or left > 0:
        part = piece if left is None else piece[:left]
        final = left is not None and left <= len(piece)
        await out.write(out.conn.frame(part, end=final), counts=True, final=final)
        left = None if left is None else left - len(part)


async def _endless(out: Streamer, reply: Reply, model: str) -> None:
    """Content lines forever (a model ignoring num_predict), 64 lines per TCP write, until the client leaves."""
    out.set_phase("streaming")
    await out.write(out.conn.head(200, _NDJSON_HEADERS))
    text = reply.content or "again "
    while True:
        batch = b"".join(out.conn.frame(encode_line(chunk(model, message(text)))) for _ in range(64))
        # With split_every, in TCP writes of that many bytes: reads then end in the middle of lines.
        step = reply.split_every if reply.split_every and reply.split_every > 0 else len(batch)
        for start in range(0, len(batch), step):
            if start:
                await out.pause(reply.split_pause)
            await out.write(batch[start : start + step], counts=True)
        await out.pause(reply.delay_between)


async def single_reply(out: Streamer, reply: Reply, ctx: ChatContext) -> None:
    """A ``stream:false`` answer: the aggregate, or the error (a mid-stream error becomes a 500 with its text)."""
    await out.pause(reply.first_byte_delay, "first_byte_delay")
    status, body = 200, b""
    failure = error_of(reply)
    if failure is not None:
        status, body = failure[0], orjson.dumps({"error": failure[1]})
    elif reply.raw_lines is not None:
        body = b"".join(reply.raw_lines)
    elif reply.mid_stream_error is not None:
        status, body = 500, orjson.dumps({"error": reply.mid_stream_error})
    else:
        if reply.hang_after_chunks:
            await out.hang()  # nothing is sent until generation ends, and it never does
        if reply.hold_until is not None:
            await out.hold(reply.hold_until)
        plan = plan_reply(reply, ctx.model, ctx.request, ctx.load_ns)
        body = orjson.dumps(aggregate(plan, with_final=not reply.end_without_done))
    out.set_phase("streaming")
    await _whole(out, status, body, reply.split_every, reply.split_pause)
