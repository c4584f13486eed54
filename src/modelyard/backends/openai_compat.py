"""Any OpenAI-compatible server: vLLM, SGLang, llama-server, Ollama, hosted APIs.

One pooled ``aiohttp.ClientSession`` per deployment (aiohttp's pool costs
O(1) per request; httpx's scanned every pooled connection, which dominated
the gateway's CPU at 50 concurrent requests). Streams are passed through chunk
by chunk. Every aiohttp error and upstream status is translated here into
modelyard's error tree; nothing above this module sees aiohttp.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from modelyard.backends.base import BackendContext, Capabilities, Health, build_options
from modelyard.backends.engine_metrics import parse_engine_load
from modelyard.config import DeploymentConfig, ModelConfig
from modelyard.errors import (
    AuthenticationFailed,
    ContextWindowExceeded,
    InvalidRequest,
    ModelyardError,
    NotReady,
    Overloaded,
    UpstreamError,
    UpstreamTimeout,
)
from modelyard.protocol import Chunk, Embeddings, ModelCall, TokenLogprob, Usage

LOAD_POLL_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class OpenAICompatOptions:
    """Fields of a ``backend: openai`` deployment."""

    base_url: str
    upstream_model: str | None = None  # the name the upstream knows; default: the modelyard model name
    api_key_env: str | None = None
    tools: bool = True
    max_connections: int = 100
    headers: dict | None = None  # extra headers sent upstream (e.g. an organisation id)


class OpenAICompatBackend:
    """The ``openai`` adapter."""

    fresh_connections = False  # True: a new connection per request (for servers that drop idle keep-alive ones)

    def __init__(self, deployment: DeploymentConfig, model: ModelConfig, context: BackendContext) -> None:
        where = f"models.{model.name}.deployments[{model.deployments.index(deployment)}]"
        self._init(deployment, model, build_options(OpenAICompatOptions, deployment.options, where, context.config_source))

    def _init(self, deployment: DeploymentConfig, model: ModelConfig, options: OpenAICompatOptions) -> None:
        self.options = options
        self.deployment = deployment
        self.model = model
        self.upstream_model = self.options.upstream_model or model.name
        embeds = model.kind == "embedding"
        self.capabilities = Capabilities(
            chat=model.kind == "chat", completion=not embeds, embeddings=embeds, tools=self.options.tools, logprobs=True, json_schema=True
        )
        self._client: aiohttp.ClientSession | None = None
        self._base = ""

    async def start(self) -> None:
        headers = {str(k): str(v) for k, v in (self.options.headers or {}).items()}
        if self.options.api_key_env:
            key = os.environ.get(self.options.api_key_env)
            if not key:
                raise RuntimeError(f"deployment {self.deployment.name}: environment variable {self.options.api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        headers["Content-Type"] = "application/json"
        t = self.deployment.timeouts
        self._base = self.options.base_url.rstrip("/")
        self._client = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=t.connect_s, sock_read=t.first_token_s),
            connector=aiohttp.TCPConnector(limit=self.options.max_connections, ttl_dns_cache=300, force_close=self.fresh_connections),
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
        )

    def health(self) -> Health:
        return Health(ready=self._client is not None)

    def _url(self, path: str) -> str:
        """Where ``path`` lives upstream (an adapter whose upstream moves overrides this)."""
        return self._base + path

    def _client_or_fail(self) -> aiohttp.ClientSession:
        if self._client is None:
            raise NotReady(f"deployment {self.deployment.name} is not started")
        return self._client

    def _body(self, call: ModelCall) -> dict[str, Any]:
        s = call.sampling
        body: dict[str, Any] = {"model": self.upstream_model, "stream": False}
        if not call.whole:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        if call.kind == "chat":
            body["messages"] = list(call.messages)
        else:
            body["prompt"] = call.prompt
        optional = {
            "max_tokens": s.max_tokens, "temperature": s.temperature, "top_p": s.top_p, "seed": s.seed,
            "stop": list(s.stop) or None, "response_format": call.response_format, "user": call.user,
            "tools": list(call.tools) or None, "tool_choice": call.tool_choice,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if s.ignore_eos:
            body["ignore_eos"] = True  # only when asked: hosted APIs refuse parameters they do not know
        if s.logprobs:
            body["logprobs"] = True if call.kind == "chat" else max(1, s.top_logprobs)
            if call.kind == "chat" and s.top_logprobs:
                body["top_logprobs"] = s.top_logprobs
        return body

    def generate(self, call: ModelCall) -> AsyncIterator[Chunk]:
        return self._stream(call)

    async def _stream(self, call: ModelCall, extra: dict[str, Any] | None = None) -> AsyncIterator[Chunk]:
        """POST the call (its body plus ``extra`` fields) and translate the upstream's stream (and its errors) into chunks.

        One generator, not a wrapper around another: this is every remote request's per-chunk path.
        """
        if self.model.kind == "embedding":
            raise InvalidRequest(f"model {self.model.name!r} is an embedding model; use /v1/embeddings", param="model")
        if call.tools and not self.options.tools:
            raise InvalidRequest(f"model {self.model.name!r} does not support tools", param="tools")
        body = self._body(call)
        if extra:
            body.update(extra)
        path = "/chat/completions" if call.kind == "chat" else "/completions"
        client = self._client_or_fail()
        if call.whole:
            async for whole in self._answer(client, self._url(path), body, call.kind):
                yield whole
            return
        usage: Usage | None = None
        finish: str | None = None
        try:
            async with client.post(self._url(path), data=orjson.dumps(body)) as response:
                if response.status >= 400:
                    raise _status_error(response.status, await response.read(), response.headers, self.deployment.name)
                content_type = response.headers.get("content-type", "")
                if not content_type.startswith("text/event-stream"):
                    raise UpstreamError(f"deployment {self.deployment.name} answered a stream request with {content_type or 'no content type'}")
                async for batch in _sse_batches(response):
                    pieces: list[Chunk] = []
                    for data in batch:
                        event = orjson.loads(data)
                        if event.get("usage"):
                            u = event["usage"]
                            usage = Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
                        for choice in event.get("choices") or ():
                            chunk = _choice_chunk(choice, call.kind)
                            finish = choice.get("finish_reason") or finish
                            if chunk is not None:
                                pieces.append(chunk)
                    if pieces:
                        yield pieces[0] if len(pieces) == 1 else _joined(pieces)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(f"deployment {self.deployment.name} timed out ({type(exc).__name__})") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"deployment {self.deployment.name}: {type(exc).__name__}: {exc}") from None
        except orjson.JSONDecodeError:
            raise UpstreamError(f"deployment {self.deployment.name} sent a malformed stream event") from None
        if finish is None:
            raise UpstreamError(f"deployment {self.deployment.name} ended the stream without a finish reason")
        yield Chunk(finish_reason=finish, usage=usage or Usage())

    async def _answer(self, client: aiohttp.ClientSession, url: str, body: dict[str, Any], kind: str) -> AsyncIterator[Chunk]:
        """A whole answer in one response: its content as one chunk, then the finish with usage.

        No byte arrives before the answer is complete, so the read limit between bytes is the
        deployment's total limit, not its first-token one (the dispatcher bounds the wait too).
        """
        t = self.deployment.timeouts
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect_s, sock_read=t.total_s)
        try:
            async with client.post(url, data=orjson.dumps(body), timeout=timeout) as response:
                content = await response.read()
                if response.status >= 400:
                    raise _status_error(response.status, content, response.headers, self.deployment.name)
                content_type = response.headers.get("content-type", "")
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout(f"deployment {self.deployment.name} timed out ({type(exc).__name__})") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"deployment {self.deployment.name}: {type(exc).__name__}: {exc}") from None
        if not content_type.startswith("application/json"):
            raise UpstreamError(f"deployment {self.deployment.name} answered with {content_type or 'no content type'}, not JSON")
        try:
            answer = orjson.loads(content)
            choice = answer["choices"][0]
            u = answer.get("usage") or {}
            usage = Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
            chunk = _choice_chunk(_as_delta(choice) if kind == "chat" else choice, kind)
            finish = choice.get("finish_reason")
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise UpstreamError(f"deployment {self.deployment.name} sent a malformed answer") from None
        if not finish:
            raise UpstreamError(f"deployment {self.deployment.name} answered without a finish reason")
        if chunk is not None:
            yield chunk
        yield Chunk(finish_reason=finish, usage=usage)

    async def embed(self, texts: list[str]) -> Embeddings:
        if not self.capabilities.embeddings:
            raise InvalidRequest(f"model {self.model.name!r} is not an embedding model", param="model")
        client = self._client_or_fail()
        try:
            async with client.post(self._url("/embeddings"), data=orjson.dumps({"model": self.upstream_model, "input": texts})) as response:
                content = await response.read()
                if response.status >= 400:
                    raise _status_error(response.status, content, response.headers, self.deployment.name)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout(f"deployment {self.deployment.name} timed out") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"deployment {self.deployment.name}: {type(exc).__name__}: {exc}") from None
        try:
            body = orjson.loads(content)
            rows = sorted(body["data"], key=lambda r: r["index"])
            return Embeddings([r["embedding"] for r in rows], int((body.get("usage") or {}).get("prompt_tokens") or 0))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise UpstreamError(f"deployment {self.deployment.name} sent a malformed embeddings response") from None

    def _metrics_url(self) -> str:
        """Where the engine publishes Prometheus metrics: beside ``/v1``, as vLLM, SGLang and llama-server do."""
        base = self._base[: -len("/v1")] if self._base.endswith("/v1") else self._base
        return base + "/metrics"

    async def poll_load(self) -> dict[str, float] | None:
        """The engine's own running/waiting/KV figures, or None if it publishes none (or cannot be reached)."""
        client = self._client
        if client is None:
            return None
        try:
            async with client.get(self._metrics_url(), timeout=aiohttp.ClientTimeout(total=LOAD_POLL_TIMEOUT_S)) as response:
                if response.status != 200:
                    return None
                return parse_engine_load(await response.text())
        except (aiohttp.ClientError, TimeoutError, NotReady, UnicodeDecodeError):
            return None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


async def _sse_batches(response: aiohttp.ClientResponse) -> AsyncIterator[list[bytes]]:
    """The ``data:`` payloads of an SSE stream up to ``[DONE]``, grouped by the network read that brought them.

    Events that arrived together go on together: a burst of tokens makes one
    trip through the pipeline's stream layers (stall guard, scheduler, stages,
    rendering) instead of one per token, and nothing waits for more bytes, so
    a slow stream's pacing is unchanged. The body is read to its very end even
    after ``[DONE]``, so the connection goes back to the pool instead of being
    closed.
    """
    partial = b""
    done = False
    async for block in response.content.iter_any():
        if done:
            continue
        *lines, partial = (partial + block).split(b"\n")
        batch: list[bytes] = []
        for raw in lines:
            line = raw.rstrip(b"\r")
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                break
            if data:
                batch.append(data)
        if batch:
            yield batch
    last = partial.rstrip(b"\r")
    if not done and last.startswith(b"data:") and last[5:].strip() not in (b"", b"[DONE]"):
        yield [last[5:].strip()]  # a final event without its line end


def _joined(pieces: list[Chunk]) -> Chunk:
    """Consecutive content chunks as one (text joined; tool-call fragments and log-probabilities kept in order)."""
    return Chunk(
        text="".join(p.text for p in pieces),
        tool_calls=tuple(call for p in pieces for call in p.tool_calls),
        logprobs=tuple(lp for p in pieces for lp in p.logprobs),
    )


def _as_delta(choice: dict[str, Any]) -> dict[str, Any]:
    """A whole chat choice in a streamed choice's shape: its message as the one delta, tool calls numbered."""
    message = choice.get("message") or {}
    calls = [call | {"index": i} for i, call in enumerate(message.get("tool_calls") or ())]
    return {"delta": {"content": message.get("content"), "tool_calls": calls}, "logprobs": choice.get("logprobs")}


def _choice_chunk(choice: dict[str, Any], kind: str) -> Chunk | None:
    if kind == "chat":
        delta = choice.get("delta") or {}
        text = delta.get("content") or ""
        tool_calls = tuple(delta.get("tool_calls") or ())
        logprobs = _chat_logprobs(choice.get("logprobs") or {})
    else:
        text = choice.get("text") or ""
        tool_calls = ()
        lp = choice.get("logprobs") or {}
        if "content" in lp:  # llama-server answers completions with the chat form
            logprobs = _chat_logprobs(lp)
        else:
            logprobs = tuple(
                TokenLogprob(tok, float(val)) for tok, val in zip(lp.get("tokens") or (), lp.get("token_logprobs") or (), strict=False) if val is not None
            )
    if not text and not tool_calls and not logprobs:
        return None
    return Chunk(text=text, tool_calls=tool_calls, logprobs=logprobs)


def _chat_logprobs(lp: dict[str, Any]) -> tuple[TokenLogprob, ...]:
    return tuple(
        TokenLogprob(t["token"], float(t["logprob"]), tuple((a["token"], float(a["logprob"])) for a in t.get("top_logprobs") or ()))
        for t in lp.get("content") or ()
    )


def _status_error(status: int, body: bytes, headers: Mapping[str, str], deployment: str) -> ModelyardError:
    try:
        error = orjson.loads(body).get("error") or {}
        message = error.get("message") or body.decode("utf-8", "replace")[:300]
        code = error.get("code")
        kind = error.get("type")
    except (orjson.JSONDecodeError, AttributeError):
        message, code, kind = body.decode("utf-8", "replace")[:300], None, None
    text = f"deployment {deployment} answered {status}: {message}"
    if status == 429:
        retry = headers.get("retry-after")
        return Overloaded(text, retry_after=float(retry) if retry and retry.replace(".", "", 1).isdigit() else None)
    if status in (401, 403):
        return UpstreamError(f"deployment {deployment} rejected modelyard's credentials ({status})")
    if code == "context_length_exceeded" or kind == "exceed_context_size_error":  # OpenAI's and llama-server's names
        return ContextWindowExceeded(text)
    if status in (400, 404, 422):
        return InvalidRequest(text)
    if status == 504:
        return UpstreamTimeout(text)
    return UpstreamError(text)


__all__ = ["AuthenticationFailed", "OpenAICompatBackend", "OpenAICompatOptions"]
