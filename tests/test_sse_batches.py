"""The openai adapter's SSE reader: events grouped by network read, lines split anywhere, read to the end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from modelyard.backends.openai_compat import _joined, _sse_batches
from modelyard.protocol import Chunk, TokenLogprob


class Reads:
    """What aiohttp's ``response.content.iter_any()`` hands over: the body in the pieces the network delivered."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.read: list[bytes] = []

    async def iter_any(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            self.read.append(piece)
            yield piece


class Response:
    def __init__(self, pieces: list[bytes]) -> None:
        self.content = Reads(pieces)


def event(text: str) -> bytes:
    return b"data: " + orjson.dumps({"choices": [{"delta": {"content": text}}]}) + b"\r\n\r\n"


async def batches(pieces: list[bytes]) -> tuple[list[list[str]], Response]:
    response = Response(pieces)
    out = [[orjson.loads(d)["choices"][0]["delta"]["content"] for d in batch] async for batch in _sse_batches(response)]  # type: ignore[arg-type]
    return out, response


async def test_events_that_arrive_together_go_together() -> None:
    out, _ = await batches([event("a") + event("b") + event("c"), event("d")])
    assert out == [["a", "b", "c"], ["d"]]


@pytest.mark.parametrize("cut", [1, 5, 9, 17, 30])
async def test_a_line_split_across_reads_is_joined(cut: int) -> None:
    body = event("hello") + event("world") + b"data: [DONE]\n\n"
    out, _ = await batches([body[:cut], body[cut:]])
    assert [t for batch in out for t in batch] == ["hello", "world"]


async def test_done_ends_the_events_but_the_body_is_read_to_its_end() -> None:
    out, response = await batches([event("x") + b"data: [DONE]\n\n" + event("after"), b": comment\n\n"])
    assert out == [["x"]] and len(response.content.read) == 2


async def test_a_last_event_without_a_line_end_is_kept() -> None:
    out, _ = await batches([event("x"), b'data: {"choices": [{"delta": {"content": "tail"}}]}'])
    assert out == [["x"], ["tail"]]


def test_joined_keeps_order() -> None:
    pieces = [Chunk(text="a", tool_calls=({"index": 0, "id": "1"},), logprobs=(TokenLogprob("a", -0.1),)),
              Chunk(text="b", tool_calls=({"index": 0, "function": {"arguments": "{}"}},), logprobs=(TokenLogprob("b", -0.2),))]
    joined: Any = _joined(pieces)
    assert joined.text == "ab" and [c.get("id") for c in joined.tool_calls] == ["1", None]
    assert [lp.token for lp in joined.logprobs] == ["a", "b"] and joined.finish_reason is None
