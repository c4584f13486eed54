"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: Anthropic's Messages API over the same pipeline.

The request goes through everything a chat completion does (keys, limits,
budgets, routing, stages, failover, the ledger); only the shapes differ.
Clients authenticate with ``x-api-key`` (Anthropic's SDKs) or a bearer key.
Errors come back in Anthropic's shape (see :mod:`.anthropic_render`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from starlette.requests import Request as HTTPRequest
from starlette.responses import Response as HTTPResponse
from starlette.responses import StreamingResponse
from starlette.routing import Route

from modelyard.api import anthropic_parse, anthropic_render, render
from modelyard.api.responses import JSONResponse
from modelyard.backends.base import TokenCounter
from modelyard.errors import ModelNotFound, ModelyardError
from modelyard.pipeline.runtime import token_counter
from modelyard.shaping.context import MESSAGE_OVERHEAD_TOKENS, message_texts

if TYPE_CHECKING:
    from modelyard.api.app import Api

PREFIX = "/v1/messages"
APPROXIMATE_CHARS_PER_TOKEN = 3.0


class AnthropicRoutes:
    def __init__(self, api: Api) -> None:
        self.api = api

    def routes(self) -> list[Route]:
        return [Route(PREFIX, self.messages, methods=["POST"]), Route(f"{PREFIX}/count_tokens", self.count_tokens, methods=["POST"])]

    async def messages(self, http: HTTPRequest) -> HTTPResponse:
        api = self.api
        request = anthropic_parse.messages_request(await api.body(http), http.scope["state"]["request_id"], api.headers(http))
        response, first = await api.run(http, request)
        headers = api.model_headers(request, response)
        if request.stream:
            events = anthropic_render.stream_events(request.request_id, response.model, response.streams[0], first, http.scope["state"])
            return StreamingResponse(events, media_type="text/event-stream", headers=headers | {"cache-control": "no-cache"})
        choices = await render.collect(response.streams, first)
        api.note(http, request, response)
        http.scope["state"]["usage"] = render.total_usage(choices)
        return JSONResponse(anthropic_render.message_body(request.request_id, response.model, choices[0]), headers=headers)

    async def count_tokens(self, http: HTTPRequest) -> HTTPResponse:
        """The prompt's tokens: by the model's own tokenizer when its engine has one, else the declared approximation."""
        model, messages, tools = anthropic_parse.count_request(await self.api.body(http))
        texts = [t for m in messages for t in message_texts(m)] + [str(tool) for tool in tools]
        counter = self._counter(model)
        if counter is not None:
            try:
                counts = await counter.count_tokens(texts)
                return JSONResponse({"input_tokens": sum(counts) + MESSAGE_OVERHEAD_TOKENS * len(messages)})
            except ModelyardError:
                pass  # the engine could not say: fall back to the approximation
        approximate = sum(math.ceil(len(t.encode()) / APPROXIMATE_CHARS_PER_TOKEN) for t in texts)
        return JSONResponse({"input_tokens": approximate + MESSAGE_OVERHEAD_TOKENS * len(messages)})

    def _counter(self, name: str) -> TokenCounter | None:
        config = self.api.config
        alias = config.alias(name)
        model = config.model(alias.targets[0] if alias else name)
        if model is None:
            raise ModelNotFound(f"The model '{name}' does not exist", param="model")
        return token_counter(self.api.fleet, model)
