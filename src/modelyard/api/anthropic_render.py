"""Anthropic's Messages API responses: the message object, its SSE event sequence, and its error shape.

Tool calls arrive from backends as OpenAI-style deltas (an index, then an id
and name, then argument fragments). In a message they become ``tool_use``
blocks whose ``input`` is the arguments parsed once; in a stream each call
opens its own ``content_block_start`` (with ``input: {}``, as Anthropic's own
streams do) and its argument fragments pass through unchanged as
``input_json_delta`` events, so a client that joins them gets the backend's
bytes.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from modelyard.api.render import Choice, chain
from modelyard.errors import ModelyardError, UpstreamError
from modelyard.protocol import Chunk, Usage

log = logging.getLogger("modelyard.api")
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "cancelled": "end_turn"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}


def error_body(exc: ModelyardError) -> dict[str, Any]:
    """Anthropic's error shape; the modelyard code (e.g. ``insufficient_quota``) is kept beside it."""
    kind = ERROR_TYPES.get(exc.status, "api_error")
    error: dict[str, Any] = {"type": kind, "message": exc.message}
    if exc.code:
        error["code"] = exc.code
    return {"type": "error", "error": error}


def stop_reason(finish: str | None, tool_calls: bool) -> str:
    if tool_calls and finish in ("stop", "tool_calls", None):
        return "tool_use"
    return STOP_REASONS.get(finish or "stop", "end_turn")


def tool_input(arguments: str, name: str) -> dict[str, Any]:
    """A tool call's arguments as the ``input`` object; a backend that sent something else is an upstream error, never ``{}``."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        raise UpstreamError(f"the model called tool {name!r} with arguments that are not JSON") from None
    if not isinstance(value, dict):
        raise UpstreamError(f"the model called tool {name!r} with arguments that are not a JSON object")
    return value


def message_body(request_id: str, model: str, choice: Choice) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    text = "".join(choice.text)
    if text or not choice.tool_calls:
        content.append({"type": "text", "text": text})
    for index in sorted(choice.tool_calls):
        call = choice.tool_calls[index]
        name = call["function"]["name"]
        content.append({"type": "tool_use", "id": call["id"] or f"toolu_{request_id[:12]}_{index}", "name": name, "input": tool_input(call["function"]["arguments"], name)})
    return {
        "id": f"msg_{request_id}", "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": stop_reason(choice.finish_reason, bool(choice.tool_calls)), "stop_sequence": None,
        "usage": {"input_tokens": choice.usage.prompt_tokens, "output_tokens": choice.usage.completion_tokens},
    }


def event(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind} | payload) + b"\n\n"


@dataclass
class BlockWriter:
    """Turns chunks into content-block events, one block open at a time."""

    request_id: str
    index: int = -1
    open_kind: str = ""  # "text" | "tool" | ""
    tool_index: int | None = None  # the backend's index of the open tool call
    tools_seen: int = 0
    out: list[bytes] = field(default_factory=list)

    def _start(self, kind: str, block: dict[str, Any]) -> None:
        self.stop()
        self.index += 1
        self.open_kind = kind
        self.out.append(event("content_block_start", {"index": self.index, "content_block": block}))

    def stop(self) -> None:
        if self.open_kind:
            self.out.append(event("content_block_stop", {"index": self.index}))
            self.open_kind = ""

    def text(self, text: str) -> None:
        if self.open_kind != "text":
            self._start("text", {"type": "text", "text": ""})
        self.out.append(event("content_block_delta", {"index": self.index, "delta": {"type": "text_delta", "text": text}}))

    def tool(self, delta: dict[str, Any]) -> None:
        backend_index = int(delta.get("index", 0))
        fn = delta.get("function") or {}
        if self.open_kind != "tool" or backend_index != self.tool_index:
            self.tools_seen += 1
            call_id = delta.get("id") or f"toolu_{self.request_id[:12]}_{backend_index}"
            self._start("tool", {"type": "tool_use", "id": call_id, "name": fn.get("name") or "", "input": {}})
            self.tool_index = backend_index
        if fn.get("arguments"):
            self.out.append(event("content_block_delta", {"index": self.index, "delta": {"type": "input_json_delta", "partial_json": fn["arguments"]}}))

    def take(self) -> list[bytes]:
        out, self.out = self.out, []
        return out


async def stream_events(request_id: str, model: str, stream: AsyncIterator[Chunk], first: Chunk | None, record: dict[str, Any]) -> AsyncIterator[bytes]:
    """The Messages API's event sequence for one answer; a failure after the first byte ends with an ``error`` event."""
    usage = first.usage if first is not None and first.usage is not None else Usage()
    start: dict[str, Any] = {"id": f"msg_{request_id}", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": None,
             "stop_sequence": None, "usage": {"input_tokens": usage.prompt_tokens, "output_tokens": 0}}
    yield event("message_start", {"message": start})
    yield event("ping", {})
    writer, finish = BlockWriter(request_id), None
    try:
        pending = [first] if first is not None else []
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for chunk in chain(pending, stream):
                if chunk.text:
                    writer.text(chunk.text)
                for delta in chunk.tool_calls:
                    writer.tool(delta)
                finish = chunk.finish_reason or finish
                if chunk.usage is not None:
                    usage = chunk.usage
                for piece in writer.take():
                    yield piece
        writer.stop()
        for piece in writer.take():
            yield piece
        record["usage"] = usage
        delta = {"stop_reason": stop_reason(finish, writer.tools_seen > 0), "stop_sequence": None}
        yield event("message_delta", {"delta": delta, "usage": {"output_tokens": usage.completion_tokens}})
        yield event("message_stop", {})
    except ModelyardError as exc:
        record["error"] = exc.error_type
        yield event("error", {"error": error_body(exc)["error"]})
    except Exception as exc:  # never a stack trace to the client, never a silent truncation
        log.exception("stream %s failed", request_id)
        record["error"] = "server_error"
        yield event("error", {"error": {"type": "api_error", "message": f"internal error ({type(exc).__name__})"}})
