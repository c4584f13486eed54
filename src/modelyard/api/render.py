"""Turn pipeline responses into OpenAI-shaped JSON bodies and SSE events."""

from __future__ import annotations

import base64
import contextlib
import logging
import struct
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import orjson

from modelyard.errors import ModelyardError
from modelyard.pipeline.streams import gather_streams
from modelyard.pipeline.types import Response
from modelyard.protocol import Chunk, Embeddings, Usage, merge_tool_call

log = logging.getLogger("modelyard.api")
DONE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class Choice:
    """One choice's stream, joined."""

    text: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)

    def add(self, chunk: Chunk) -> None:
        if chunk.text:
            self.text.append(chunk.text)
        for call in chunk.tool_calls:
            merge_tool_call(self.tool_calls, call)
        self.logprobs.extend(lp.to_dict() for lp in chunk.logprobs)
        if chunk.finish_reason is not None:
            self.finish_reason = public_finish_reason(chunk.finish_reason)
        if chunk.usage is not None:
            self.usage = chunk.usage


def public_finish_reason(reason: str) -> str:
    return "stop" if reason == "cancelled" else reason


async def collect(streams: list[AsyncIterator[Chunk]], first: Chunk | None) -> list[Choice]:
    """Every choice's stream joined, run concurrently; the first failure cancels the rest."""
    choices = []
    for chunks in await gather_streams(streams, first):
        choice = Choice()
        for chunk in chunks:
            choice.add(chunk)
        choices.append(choice)
    return choices


def chat_body(request_id: str, response: Response, choices: list[Choice], created: int) -> dict[str, Any]:
    out = []
    for i, c in enumerate(choices):
        message: dict[str, Any] = {"role": "assistant", "content": "".join(c.text) if c.text or not c.tool_calls else None}
        if c.tool_calls:
            message["tool_calls"] = [c.tool_calls[k] for k in sorted(c.tool_calls)]
        finish = "tool_calls" if c.tool_calls and c.finish_reason == "stop" else c.finish_reason
        out.append({"index": i, "message": message, "logprobs": {"content": c.logprobs} if c.logprobs else None, "finish_reason": finish})
    return {
        "id": f"chatcmpl-{request_id}", "object": "chat.completion", "created": created, "model": response.model,
        "choices": out, "usage": total_usage(choices).to_dict(), "system_fingerprint": None,
    }


def completion_body(request_id: str, response: Response, choices: list[Choice], created: int) -> dict[str, Any]:
    out = [
        {"index": i, "text": "".join(c.text), "logprobs": completion_logprobs(c.logprobs), "finish_reason": c.finish_reason}
        for i, c in enumerate(choices)
    ]
    return {
        "id": f"cmpl-{request_id}", "object": "text_completion", "created": created, "model": response.model,
        "choices": out, "usage": total_usage(choices).to_dict(),
    }


def completion_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not entries:
        return None
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
        "text_offset": [],
    }


def total_usage(choices: list[Choice]) -> Usage:
    """Prompt tokens once (the same prompt for every choice), completion tokens summed."""
    prompt = max((c.usage.prompt_tokens for c in choices), default=0)
    return Usage(prompt, sum(c.usage.completion_tokens for c in choices))


def embeddings_body(response: Response, embeddings: Embeddings, encoding: str) -> dict[str, Any]:
    data = []
    for i, vector in enumerate(embeddings.vectors):
        value: Any = vector
        if encoding == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": i, "embedding": value})
    usage = {"prompt_tokens": embeddings.prompt_tokens, "total_tokens": embeddings.prompt_tokens}
    return {"object": "list", "data": data, "model": response.model, "usage": usage}


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


@dataclass(slots=True)
class StreamContext:
    """What every event of one streamed response shares."""

    kind: str  # "chat" or "completion"
    request_id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))
    include_usage: bool = False
    record: dict[str, Any] = field(default_factory=dict)

    def event(self, index: int, chunk: Chunk | None, role: bool = False) -> bytes:
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if chunk is not None and chunk.text:
                delta["content"] = chunk.text
            if chunk is not None and chunk.tool_calls:
                delta["tool_calls"] = list(chunk.tool_calls)
            logprobs = {"content": [lp.to_dict() for lp in chunk.logprobs]} if chunk is not None and chunk.logprobs else None
            choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": None}
            obj, prefix = "chat.completion.chunk", "chatcmpl-"
        else:
            entries = [lp.to_dict() for lp in chunk.logprobs] if chunk is not None else []
            choice = {"index": index, "text": chunk.text if chunk else "", "logprobs": completion_logprobs(entries), "finish_reason": None}
            obj, prefix = "text_completion", "cmpl-"
        if chunk is not None and chunk.finish_reason is not None:
            choice["finish_reason"] = public_finish_reason(chunk.finish_reason)
        return sse({"id": prefix + self.request_id, "object": obj, "created": self.created, "model": self.model, "choices": [choice]})

    def usage_event(self, usage: Usage) -> bytes:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        prefix = "chatcmpl-" if self.kind == "chat" else "cmpl-"
        return sse({"id": prefix + self.request_id, "object": obj, "created": self.created, "model": self.model, "choices": [], "usage": usage.to_dict()})


async def stream_events(ctx: StreamContext, streams: list[AsyncIterator[Chunk]], first: Chunk | None) -> AsyncIterator[bytes]:
    """SSE bytes for every choice in turn; a failure after the first byte ends with an error event and no [DONE]."""
    usage = Usage()
    try:
        for index, stream in enumerate(streams):
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                if ctx.kind == "chat":
                    yield ctx.event(index, None, role=True)
                pending = [first] if index == 0 and first is not None else []
                async for chunk in chain(pending, stream):
                    if chunk.usage is not None:
                        usage = Usage(max(usage.prompt_tokens, chunk.usage.prompt_tokens), usage.completion_tokens + chunk.usage.completion_tokens)
                    if chunk.text or chunk.tool_calls or chunk.logprobs or chunk.finish_reason:
                        yield ctx.event(index, chunk)
        ctx.record["usage"] = usage
        if ctx.include_usage:
            yield ctx.usage_event(usage)
        yield DONE
    except ModelyardError as exc:
        ctx.record["error"] = exc.error_type
        yield sse(exc.to_body())
    except Exception as exc:  # never a stack trace to the client, never a silent truncation
        log.exception("stream %s failed", ctx.request_id)
        ctx.record["error"] = "server_error"
        yield sse(ModelyardError(f"internal error ({type(exc).__name__})").to_body())


async def chain(first: list[Chunk], rest: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    """``first`` (chunks already read), then the rest of the stream."""
    for chunk in first:
        yield chunk
    async for chunk in rest:
        yield chunk
