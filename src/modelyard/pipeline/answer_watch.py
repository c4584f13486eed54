"""Watch what an answer carries on its way out: its tool calls (a session's record) and finish reasons (traces).

The answer streams through unchanged; the tool calls it carried (joined from
their deltas) land in ``request.tool_calls_made`` and each choice's finish
reason in ``request.finish_reasons`` when the stream ends, however it ends.
Only requests with a session are watched, or every request when traces are on.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from modelyard.pipeline.types import Handler, Request, Response, Stage
from modelyard.protocol import Chunk, merge_tool_call


async def _watched(stream: AsyncIterator[Chunk], request: Request) -> AsyncIterator[Chunk]:
    calls: dict[int, dict[str, Any]] = {}
    finish: str | None = None
    try:
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for chunk in stream:
                for delta in chunk.tool_calls:
                    merge_tool_call(calls, delta)
                if chunk.finish_reason is not None:
                    finish = chunk.finish_reason
                yield chunk
    finally:
        request.tool_calls_made.extend(calls[i] for i in sorted(calls))
        if finish is not None:
            request.finish_reasons.append("tool_calls" if calls and finish == "stop" else finish)


def watch_answers(every_request: bool = False) -> Stage:
    """Watch session requests' answers (``every_request``: all of them, for traces)."""

    def stage(next_handler: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            response = await next_handler(request)
            if (every_request or request.session) and response.streams:
                response.streams = [_watched(s, request) for s in response.streams]
            return response

        return handle

    return stage
