"""Watch the tool calls a session's answer makes, for the session record.

The answer streams through unchanged; the tool calls it carried (joined from
their deltas) land in ``request.tool_calls_made`` when the stream ends,
however it ends. Requests without a session are not touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from modelyard.pipeline.types import Handler, Request, Response, Stage
from modelyard.protocol import Chunk, merge_tool_call


async def _watched(stream: AsyncIterator[Chunk], request: Request) -> AsyncIterator[Chunk]:
    calls: dict[int, dict[str, Any]] = {}
    try:
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for chunk in stream:
                for delta in chunk.tool_calls:
                    merge_tool_call(calls, delta)
                yield chunk
    finally:
        request.tool_calls_made.extend(calls[i] for i in sorted(calls))


def watch_answers() -> Stage:
    def stage(next_handler: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            response = await next_handler(request)
            if request.session and response.streams:
                response.streams = [_watched(s, request) for s in response.streams]
            return response

        return handle

    return stage
