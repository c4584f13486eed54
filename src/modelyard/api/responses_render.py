"""OpenAI's Responses API: the response object and its ``response.*`` stream events.

An answer's text is one ``message`` output item with one ``output_text``
part; each tool call is a ``function_call`` item whose ``arguments`` are the
backend's bytes. A stream announces the response (``response.created``,
``response.in_progress``), then each item (``response.output_item.added``,
text parts with ``response.output_text.delta`` / ``.done``, calls with
``response.function_call_arguments.delta`` / ``.done``,
``response.output_item.done``), and ends with ``response.completed`` (or
``response.incomplete`` when the answer hit ``max_output_tokens``, or an
``error`` event when it failed after the first byte). Every event has a
``sequence_number``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from modelyard.api.render import Choice, chain
from modelyard.errors import ModelyardError
from modelyard.protocol import Chunk, Usage

log = logging.getLogger("modelyard.api")


@dataclass(frozen=True, slots=True)
class Envelope:
    """What every response object of one request repeats."""

    response_id: str
    model: str
    created_at: int
    echo: dict[str, Any]  # instructions, tools, tool_choice, metadata, previous_response_id, store, ...


def usage_of(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens, "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0},
    }


def response_object(envelope: Envelope, status: str, output: list[dict[str, Any]], usage: Usage | None) -> dict[str, Any]:
    return {
        "id": envelope.response_id, "object": "response", "created_at": envelope.created_at, "status": status, "model": envelope.model,
        "output": output, "usage": usage_of(usage) if usage is not None else None, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None, "parallel_tool_calls": True,
        **envelope.echo,
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def call_item(item_id: str, call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    fn = call["function"]
    return {"type": "function_call", "id": item_id, "call_id": call["id"], "name": fn["name"], "arguments": fn["arguments"], "status": status}


def output_of(response_id: str, choice: Choice) -> list[dict[str, Any]]:
    items = []
    text = "".join(choice.text)
    if text or not choice.tool_calls:
        items.append(message_item(f"msg_{response_id[5:]}", text))
    for index in sorted(choice.tool_calls):
        items.append(call_item(f"fc_{response_id[5:]}_{index}", choice.tool_calls[index]))
    return items


def status_of(finish: str | None) -> str:
    return "incomplete" if finish == "length" else "completed"


def sse(payload: dict[str, Any]) -> bytes:
    return b"event: " + str(payload["type"]).encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


@dataclass
class EventWriter:
    """Output items and their events, one item open at a time."""

    envelope: Envelope
    sequence: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)
    open_text: list[str] | None = None
    open_call: dict[str, Any] | None = None
    call_index: int | None = None
    out: list[bytes] = field(default_factory=list)

    def emit(self, kind: str, **payload: Any) -> None:
        self.out.append(sse({"type": kind, "sequence_number": self.sequence, **payload}))
        self.sequence += 1

    def _item_id(self, prefix: str) -> str:
        return f"{prefix}_{self.envelope.response_id[5:]}_{len(self.items)}"

    def text(self, delta: str) -> None:
        if self.open_text is None:
            self.close()
            item = message_item(self._item_id("msg"), "", "in_progress")
            self.items.append(item)
            self.emit("response.output_item.added", output_index=len(self.items) - 1, item=item)
            self.emit("response.content_part.added", item_id=item["id"], output_index=len(self.items) - 1, content_index=0,
                      part={"type": "output_text", "text": "", "annotations": []})
            self.open_text = []
        self.open_text.append(delta)
        self.emit("response.output_text.delta", item_id=self.items[-1]["id"], output_index=len(self.items) - 1, content_index=0, delta=delta, logprobs=[])

    def tool(self, delta: dict[str, Any]) -> None:
        index, fn = int(delta.get("index", 0)), delta.get("function") or {}
        if self.open_call is None or index != self.call_index:
            self.close()
            call = {"id": delta.get("id") or f"call_{self.envelope.response_id[5:]}_{index}", "function": {"name": fn.get("name") or "", "arguments": ""}}
            item = call_item(self._item_id("fc"), call, "in_progress")
            self.items.append(item)
            self.emit("response.output_item.added", output_index=len(self.items) - 1, item=item)
            self.open_call, self.call_index = call, index
        if fn.get("arguments"):
            self.open_call["function"]["arguments"] += fn["arguments"]
            self.emit("response.function_call_arguments.delta", item_id=self.items[-1]["id"], output_index=len(self.items) - 1, delta=fn["arguments"])

    def close(self) -> None:
        index = len(self.items) - 1
        if self.open_text is not None:
            item_id, text = self.items[-1]["id"], "".join(self.open_text)
            part = {"type": "output_text", "text": text, "annotations": []}
            self.emit("response.output_text.done", item_id=item_id, output_index=index, content_index=0, text=text, logprobs=[])
            self.emit("response.content_part.done", item_id=item_id, output_index=index, content_index=0, part=part)
            self.items[-1] = message_item(item_id, text)
            self.emit("response.output_item.done", output_index=index, item=self.items[-1])
            self.open_text = None
        if self.open_call is not None:
            item_id = self.items[-1]["id"]
            self.emit("response.function_call_arguments.done", item_id=item_id, output_index=index, arguments=self.open_call["function"]["arguments"])
            self.items[-1] = call_item(item_id, self.open_call)
            self.emit("response.output_item.done", output_index=index, item=self.items[-1])
            self.open_call, self.call_index = None, None

    def take(self) -> list[bytes]:
        out, self.out = self.out, []
        return out


async def stream_events(envelope: Envelope, stream: AsyncIterator[Chunk], first: Chunk | None, record: dict[str, Any],
                        done: Any = None) -> AsyncIterator[bytes]:
    """The event sequence for one answer; ``done(items, usage)`` runs once it completed (to store the conversation)."""
    writer = EventWriter(envelope)
    writer.emit("response.created", response=response_object(envelope, "in_progress", [], None))
    writer.emit("response.in_progress", response=response_object(envelope, "in_progress", [], None))
    usage, finish = Usage(), None
    try:
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for chunk in chain([first] if first is not None else [], stream):
                if chunk.text:
                    writer.text(chunk.text)
                for delta in chunk.tool_calls:
                    writer.tool(delta)
                finish = chunk.finish_reason or finish
                usage = chunk.usage or usage
                for piece in writer.take():
                    yield piece
        writer.close()
        if not writer.items:
            writer.text("")
            writer.close()
        record["usage"] = usage
        status = status_of(finish)
        if done is not None:
            await done(writer.items, usage)
        writer.emit(f"response.{status}", response=response_object(envelope, status, writer.items, usage))
        for piece in writer.take():
            yield piece
    except ModelyardError as exc:
        record["error"] = exc.error_type
        yield sse({"type": "error", "sequence_number": writer.sequence, "code": exc.code or exc.error_type, "message": exc.message, "param": exc.param})
    except Exception as exc:  # never a stack trace to the client, never a silent truncation
        log.exception("stream %s failed", envelope.response_id)
        record["error"] = "server_error"
        yield sse({"type": "error", "sequence_number": writer.sequence, "code": "server_error", "message": f"internal error ({type(exc).__name__})", "param": None})
