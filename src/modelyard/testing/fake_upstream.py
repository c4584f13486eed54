"""A fake OpenAI-compatible upstream: a real HTTP server with scripted behaviour.

Defaults come from :class:`FakeScript`; each request can override them with
headers, so one server can script many cases:

- ``x-fake-latency-ms``: delay before the first byte (embeddings too)
- ``x-fake-tokens``: tokens in the completion
- ``x-fake-status``: answer with this HTTP error status instead (e.g. 429, 500), embeddings too
- ``x-fake-fail-after``: stream this many tokens, then drop the connection (a non-streamed answer: drop it halfway)
- ``x-fake-retry-after``: ``Retry-After`` value sent with a 429 (``none``: no header)
- ``x-fake-error-code``: the ``code`` in a scripted error body (e.g. ``context_length_exceeded``)
- ``x-fake-stall-after``: stream this many tokens, then go silent (the connection stays open; a non-streamed answer never comes)
- ``x-fake-token-interval-ms``: the gap between streamed tokens (a non-streamed answer waits as long in all)
- ``x-fake-garbage``: answer 200 with a body that is not valid JSON / SSE
- ``x-fake-content-type``: answer 200 with an HTML page instead of the API response
- ``x-fake-text``: the reply text (split on spaces into tokens) instead of the word list
- ``x-fake-logprob``: the logprob reported for every token when logprobs are requested
- ``x-fake-echo``: reply with the last message's text (or the prompt), split on spaces into tokens
- ``x-fake-tool-call``: ``NAME {"json": "arguments"}``: the chat answer is that one tool call (streamed too)

``GET /received`` lists the last 100 generation request bodies, as received;
``GET /stats`` counts generation requests (and those in flight) and embedding requests.

A running server also takes a fault for every later request at ``POST /fault``
(``{"mode": "hang" | "slow" | "status" | null, "status": 500, "latency_ms": 5000}``):
``hang`` accepts and never answers, ``slow`` delays the first byte by
``latency_ms``, ``status`` answers every request with that error, ``null``
clears it. ``FakeScript.capacity`` bounds the requests served at once (the
rest queue), as a real replica's slots do. ``GET /metrics`` publishes the
requests in flight under vLLM's names (``vllm:num_requests_running``,
``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``), counting
requests sent to it directly as well as through a gateway.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, AsyncIterable, AsyncIterator

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")


@dataclass(frozen=True, slots=True)
class FakeScript:
    """Default behaviour of every request."""

    latency_ms: float = 0.0
    tokens: int = 16
    token_interval_ms: float = 0.0
    capacity: int = 0  # requests served at once; 0: unbounded


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


def _setting(request: Request, name: str, default: float) -> float:
    value = request.headers.get(name)
    return float(value) if value is not None else default


FAULT_MODES = ("hang", "slow", "status")
LOAD_SCALE = 8  # without a capacity, /metrics reports KV usage as in-flight requests / this


def create_fake_app(script: FakeScript) -> Starlette:
    counter = {"requests": 0, "in_flight": 0, "embeddings": 0}
    received: deque[Any] = deque(maxlen=100)
    fault: dict[str, Any] = {"mode": None}
    slots = asyncio.Semaphore(script.capacity) if script.capacity > 0 else None

    async def generate(request: Request) -> Response:
        counter["requests"] += 1
        counter["in_flight"] += 1
        try:
            response = await _generate_counted(request)
        except BaseException:
            counter["in_flight"] -= 1
            raise
        if isinstance(response, StreamingResponse):
            response.body_iterator = _counted(response.body_iterator, counter)
        else:
            counter["in_flight"] -= 1
        return response

    async def _generate_counted(request: Request) -> Response:
        body = orjson.loads(await request.body())
        received.append(body)
        if fault["mode"] is not None:
            return await _injected(fault)
        if slots is None:
            return await _generate(request, body, script)
        async with slots:  # a streamed answer is fully generated before the slot is freed (bounded replica time)
            response = await _generate(request, body, script)
            if isinstance(response, StreamingResponse):
                chunks = [chunk async for chunk in response.body_iterator]
                return Response(b"".join(c.encode() if isinstance(c, str) else bytes(c) for c in chunks), media_type="text/event-stream")
            return response

    async def set_fault(request: Request) -> Response:
        wanted = orjson.loads(await request.body())
        if wanted.get("mode") not in (None, *FAULT_MODES):
            return _json({"error": {"message": f"mode must be one of {FAULT_MODES} or null", "type": "invalid_request_error"}}, 400)
        fault.clear()
        fault.update({"mode": wanted.get("mode"), "status": int(wanted.get("status", 500)), "latency_ms": float(wanted.get("latency_ms", 5000))})
        return _json(fault)

    async def embeddings(request: Request) -> Response:
        counter["embeddings"] += 1
        body = orjson.loads(await request.body())
        if latency := _setting(request, "x-fake-latency-ms", 0) / 1000:
            await asyncio.sleep(latency)
        if status := int(_setting(request, "x-fake-status", 0)):
            return _json({"error": {"message": "scripted failure", "type": "server_error", "param": None, "code": None}}, status)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i, "embedding": [float(len(t) % 7), 1.0, 0.5]} for i, t in enumerate(inputs)]
        n = sum(len(t.split()) for t in inputs)
        return _json({"object": "list", "data": data, "model": body.get("model"), "usage": {"prompt_tokens": n, "total_tokens": n}})

    async def models(request: Request) -> Response:
        return _json({"object": "list", "data": [{"id": "fake", "object": "model", "created": 0, "owned_by": "fake"}]})

    async def stats(request: Request) -> Response:
        return _json(counter)

    async def received_bodies(request: Request) -> Response:
        return _json(list(received))

    async def metrics(request: Request) -> Response:
        """Load under vLLM's metric names, so load-aware balancing can be tested against it."""
        capacity = script.capacity or LOAD_SCALE
        running = min(counter["in_flight"], capacity)
        waiting = counter["in_flight"] - running
        lines = [
            f'vllm:num_requests_running{{model_name="fake"}} {running}',
            f'vllm:num_requests_waiting{{model_name="fake"}} {waiting}',
            f'vllm:kv_cache_usage_perc{{model_name="fake"}} {min(1.0, counter["in_flight"] / capacity):.4f}',
        ]
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    return Starlette(routes=[
        Route("/v1/chat/completions", generate, methods=["POST"]),
        Route("/v1/completions", generate, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/stats", stats, methods=["GET"]),
        Route("/received", received_bodies, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/fault", set_fault, methods=["POST"]),
    ])
async def _counted(body: AsyncIterable[Any], counter: dict[str, int]) -> AsyncIterator[Any]:
    """A streamed body that counts as in flight until it ends or the client leaves."""
    try:
        async for chunk in body:
            yield chunk
    finally:
        counter["in_flight"] -= 1


async def _injected(fault: dict[str, Any]) -> Response:
    if fault["mode"] == "hang":
        await asyncio.Event().wait()  # accepted, never answered (the client's timeout ends it)
    if fault["mode"] == "slow":
        await asyncio.sleep(fault["latency_ms"] / 1000)
        return _json({"error": {"message": "too late", "type": "fake"}}, 504)
    return _json({"error": {"message": f"injected failure {fault['status']}", "type": "fake", "code": None}}, fault["status"])


async def _generate(request: Request, body: Any, script: FakeScript) -> Response:
    chat = request.url.path.endswith("/chat/completions")
    latency = _setting(request, "x-fake-latency-ms", script.latency_ms) / 1000
    tokens = int(_setting(request, "x-fake-tokens", body.get("max_tokens") or script.tokens))
    tokens = min(tokens, int(body.get("max_tokens") or tokens))
    status = int(_setting(request, "x-fake-status", 0))
    if latency:
        await asyncio.sleep(latency)
    if status:
        retry = request.headers.get("x-fake-retry-after", "1")
        headers = {"retry-after": retry} if status == 429 and retry != "none" else None
        code = request.headers.get("x-fake-error-code")
        return _json({"error": {"message": f"scripted failure {status}", "type": "fake", "code": code}}, status, headers)
    if request.headers.get("x-fake-garbage"):
        body_type = "text/event-stream" if body.get("stream") else "application/json"
        return Response(b"data: {this is not json\n\n" if body.get("stream") else b"{not json", media_type=body_type)
    if request.headers.get("x-fake-content-type"):
        return Response(b"<html><body>502 Bad Gateway</body></html>", media_type="text/html")
    if (tool := request.headers.get("x-fake-tool-call")) and chat:
        return _tool_call_answer(tool, body, _prompt_tokens(body))
    scripted = request.headers.get("x-fake-text")
    if request.headers.get("x-fake-echo"):
        scripted = _last_text(body)
    words = scripted.split(" ")[:tokens] if scripted else [WORDS[i % len(WORDS)] for i in range(tokens)]
    tokens = len(words)
    logprob = _setting(request, "x-fake-logprob", -0.1) if body.get("logprobs") else None
    model = body.get("model", "fake")
    prompt_tokens = _prompt_tokens(body)
    fail_after = int(_setting(request, "x-fake-fail-after", -1))
    stall_after = int(_setting(request, "x-fake-stall-after", -1))
    interval = _setting(request, "x-fake-token-interval-ms", script.token_interval_ms) / 1000
    if body.get("stream"):
        events = _stream(chat, model, words, prompt_tokens, body, fail_after, stall_after, interval, logprob)
        return StreamingResponse(events, media_type="text/event-stream")
    if 0 <= stall_after < len(words):
        await asyncio.sleep(3600)  # a generation that stalls never finishes its answer
    if interval:
        await asyncio.sleep(interval * len(words))  # as long as the same answer streamed
    answer = orjson.dumps(_whole_answer(chat, model, words, prompt_tokens, body, logprob))
    if 0 <= fail_after < len(words):
        return StreamingResponse(_broken(answer), media_type="application/json")
    return Response(answer, media_type="application/json")


def _whole_answer(chat: bool, model: str, words: list[str], prompt_tokens: int, body: dict[str, Any], logprob: float | None) -> dict[str, Any]:
    """The non-streamed answer: the same words, finish reason, usage and log-probabilities as the stream."""
    texts = [word if i == 0 else " " + word for i, word in enumerate(words)]
    text = "".join(texts)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words), "total_tokens": prompt_tokens + len(words)}
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}} if chat else {"index": 0, "text": text}
    if logprob is not None and chat:
        choice["logprobs"] = {"content": [{"token": t, "logprob": logprob, "top_logprobs": []} for t in texts]}
    choice["finish_reason"] = "length" if len(words) >= int(body.get("max_tokens") or 1 << 30) else "stop"
    return {"id": "fake-1", "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice], "usage": usage}


async def _broken(answer: bytes) -> AsyncIterator[bytes]:
    """Half an answer, then the connection drops: a server that died while answering."""
    yield answer[: len(answer) // 2]
    raise ConnectionResetError("scripted failure mid-answer")



def _tool_call_answer(header: str, body: dict[str, Any], prompt_tokens: int) -> Response:
    """``x-fake-tool-call: NAME {"json": "arguments"}``: the answer is that one tool call."""
    name, _, arguments = header.partition(" ")
    call_id = "call_" + uuid.uuid4().hex[:12]
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 5, "total_tokens": prompt_tokens + 5}
    base = {"id": "fake-1", "created": int(time.time()), "model": body.get("model", "fake")}
    if not body.get("stream"):
        message = {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments or "{}"}}]}
        return _json(base | {"object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}], "usage": usage})

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = base | {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    head = {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
    events = [event({"role": "assistant", "tool_calls": [head]}), event({"tool_calls": [{"index": 0, "function": {"arguments": arguments or "{}"}}]}),
              event({}, "tool_calls")]
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append(b"data: " + orjson.dumps(base | {"object": "chat.completion.chunk", "choices": [], "usage": usage}) + b"\n\n")
    return Response(b"".join(events) + b"data: [DONE]\n\n", media_type="text/event-stream")


def _last_text(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    content = messages[-1].get("content") if messages else body.get("prompt")
    return content if isinstance(content, str) and content else "(nothing)"


def _prompt_tokens(body: dict[str, Any]) -> int:
    text = body.get("prompt") or " ".join(str(m.get("content") or "") for m in body.get("messages") or [])
    return len(str(text).split())


async def _stream(
    chat: bool, model: str, words: list[str], prompt_tokens: int, body: dict[str, Any], fail_after: int, stall_after: int, interval: float,
    logprob: float | None = None,
) -> AsyncIterator[bytes]:
    def event(payload: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    base = {"id": "fake-1", "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()), "model": model}
    for i, word in enumerate(words):
        if i == fail_after:
            raise ConnectionResetError("scripted mid-stream failure")
        if i == stall_after:
            await asyncio.sleep(3600)
        text = word if i == 0 else " " + word
        choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "finish_reason": None} if chat else {"index": 0, "text": text, "finish_reason": None}
        if logprob is not None and chat:
            choice["logprobs"] = {"content": [{"token": text, "logprob": logprob, "top_logprobs": []}]}
        yield event(base | {"choices": [choice]})
        if interval:
            await asyncio.sleep(interval)
    reason = "length" if len(words) >= int(body.get("max_tokens") or 1 << 30) else "stop"
    last = {"index": 0, "delta": {}, "finish_reason": reason} if chat else {"index": 0, "text": "", "finish_reason": reason}
    yield event(base | {"choices": [last]})
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words), "total_tokens": prompt_tokens + len(words)}
        yield event(base | {"choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


def serve_fake(script: FakeScript, host: str, port: int) -> None:
    uvicorn.run(create_fake_app(script), host=host, port=port, log_level="warning", access_log=False, loop="uvloop", http="httptools")
