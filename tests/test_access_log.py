"""The buffered access log: lines go out in blocks, by time, by size and on close, and a broken stream never fails a request."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from modelyard.observe.access_log import AccessLog, stream_writer


class Blocks:
    """A writer that keeps each block it is given and signals it."""

    def __init__(self) -> None:
        self.blocks: list[bytes] = []
        self.arrived = asyncio.Event()

    def __call__(self, data: bytes) -> None:
        self.blocks.append(data)
        self.arrived.set()

    def lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for block in self.blocks for line in block.splitlines()]


async def test_lines_in_one_loop_turn_go_out_as_one_block_after_the_interval() -> None:
    blocks = Blocks()
    log = AccessLog(blocks, flush_s=0.05)
    for n in range(3):
        log.line({"n": n})
    assert blocks.blocks == []  # buffered, not written per line
    await asyncio.wait_for(blocks.arrived.wait(), 5)
    assert len(blocks.blocks) == 1 and blocks.lines() == [{"n": 0}, {"n": 1}, {"n": 2}]


async def test_a_full_buffer_is_written_without_waiting() -> None:
    blocks = Blocks()
    log = AccessLog(blocks, flush_s=60, flush_bytes=100)
    for n in range(20):
        log.line({"padding": "x" * 20, "n": n})
    assert len(blocks.blocks) >= 5 and all(len(block) >= 100 for block in blocks.blocks)
    log.close()
    assert [line["n"] for line in blocks.lines()] == list(range(20))


async def test_close_writes_the_rest_and_cancels_the_timer() -> None:
    blocks = Blocks()
    log = AccessLog(blocks, flush_s=60)
    log.line({"last": True})
    log.close()
    assert blocks.lines() == [{"last": True}]
    log.close()  # nothing left: nothing written again
    assert len(blocks.blocks) == 1


def test_zero_interval_or_no_event_loop_writes_each_line_at_once() -> None:
    at_once = Blocks()
    AccessLog(at_once, flush_s=0).line({"a": 1})
    no_loop = Blocks()
    AccessLog(no_loop, flush_s=60).line({"b": 2})
    assert at_once.lines() == [{"a": 1}] and no_loop.lines() == [{"b": 2}]


@pytest.mark.parametrize("error", [OSError(32, "broken pipe"), ValueError("I/O operation on closed file")])
def test_a_broken_stream_drops_the_block_and_counts_it(error: Exception) -> None:
    def broken(data: bytes) -> None:
        raise error

    log = AccessLog(broken, flush_s=0)
    log.line({"a": 1})
    log.line({"b": 2})
    assert log.dropped_blocks == 2


def test_the_stream_writer_puts_bytes_after_the_text_already_written() -> None:
    raw = io.BytesIO()
    text = io.TextIOWrapper(raw, encoding="utf-8")
    text.write("a warning\n")  # still in the text layer's buffer
    stream_writer(text)(b'{"n":1}\n')
    assert raw.getvalue() == b'a warning\n{"n":1}\n'


def test_the_stream_writer_falls_back_to_text_for_a_stream_without_a_binary_buffer() -> None:
    text = io.StringIO()
    text.write("a warning\n")
    stream_writer(text)(b'{"n":1}\n')
    assert text.getvalue() == 'a warning\n{"n":1}\n'
