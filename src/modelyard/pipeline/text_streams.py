"""Rewrite the text of a generation stream through a transform that may hold back a short tail."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Protocol

from modelyard.protocol import Chunk


class TextTransform(Protocol):
    def feed(self, text: str) -> str: ...
    def flush(self) -> str: ...


async def rewrite(stream: AsyncIterator[Chunk], transforms: list[TextTransform]) -> AsyncIterator[Chunk]:
    """``stream`` with every chunk's text passed through ``transforms`` in order; what they hold back comes out with the last chunk."""
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        async for chunk in stream:
            text = chunk.text
            for transform in transforms:
                text = transform.feed(text)
            if chunk.finish_reason is not None:
                text += _flush(transforms)
            if text or chunk.finish_reason or chunk.usage or chunk.tool_calls:
                yield dataclasses.replace(chunk, text=text, logprobs=() if text != chunk.text else chunk.logprobs)
                continue
    tail = _flush(transforms)
    if tail:
        yield Chunk(text=tail)


def _flush(transforms: list[TextTransform]) -> str:
    """Everything held back, through the transforms after the one that held it."""
    out = ""
    for i, transform in enumerate(transforms):
        out = transform.feed(out) if i and out else out
        out += transform.flush()
    return out
