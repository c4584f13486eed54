"""Helpers over generation streams: run several to the end, replay collected chunks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from modelyard.protocol import Chunk


async def drain(stream: AsyncIterator[Chunk], first: Chunk | None = None) -> list[Chunk]:
    chunks = [first] if first is not None else []
    async with contextlib.aclosing(stream):  # type: ignore[type-var]
        async for chunk in stream:
            chunks.append(chunk)
    return chunks


async def gather_streams(streams: list[AsyncIterator[Chunk]], first: Chunk | None = None) -> list[list[Chunk]]:
    """Every stream to its end, concurrently; ``first`` is stream 0's already-read chunk.

    The first failure cancels the others and is raised as itself (not wrapped
    in an exception group), so the caller sees a plain ``ModelyardError``.
    """
    if len(streams) == 1:  # one choice (the usual case): drained in this task, no group to run it beside others
        return [await drain(streams[0], first)]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(drain(s, first if i == 0 else None)) for i, s in enumerate(streams)]
    except BaseExceptionGroup as failures:
        raise _first_leaf(failures) from None
    return [t.result() for t in tasks]


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def replay(chunks: list[Chunk]) -> AsyncIterator[Chunk]:
    for chunk in chunks:
        yield chunk


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)
