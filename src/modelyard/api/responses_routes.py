"""``POST /v1/responses``: OpenAI's Responses API over the same pipeline.

With ``store`` (the default) the conversation — the earlier turns, this
request's input and the answer, not the instructions — is kept in the store
for ``RESPONSE_TTL_S``, so a later request can continue it with
``previous_response_id`` (the same tenant only). Errors are OpenAI's shape.

A chain is one agent session (session budgets, the session record) named by
its first response's id, unless the client names one with
``x-modelyard-session``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from starlette.requests import Request as HTTPRequest
from starlette.responses import Response as HTTPResponse
from starlette.responses import StreamingResponse
from starlette.routing import Route

from modelyard.api import render, responses_parse, responses_render
from modelyard.api.responses import JSONResponse
from modelyard.errors import NotFound
from modelyard.pipeline.stages import SESSION_HEADER
from modelyard.protocol import Usage
from modelyard.store.store import Store

if TYPE_CHECKING:
    from modelyard.api.app import Api

RESPONSE_TTL_S = 30 * 24 * 3600.0  # as OpenAI keeps stored responses: 30 days


def _as_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Output items as the chat turns a continuation replays."""
    messages: list[dict[str, Any]] = []
    for item in items:
        if item["type"] == "message":
            messages.append({"role": "assistant", "content": "".join(p["text"] for p in item["content"])})
        elif item["type"] == "function_call":
            call = {"id": item["call_id"], "type": "function", "function": {"name": item["name"], "arguments": item["arguments"]}}
            if messages and messages[-1].get("tool_calls") is not None:
                messages[-1]["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    return messages


class ResponsesRoutes:
    def __init__(self, api: Api, store: Store) -> None:
        self.api = api
        self.store = store

    def routes(self) -> list[Route]:
        return [Route("/v1/responses", self.create, methods=["POST"])]

    async def _history(self, body: Any, tenant: str) -> tuple[list[dict[str, Any]], str | None]:
        """The earlier turns of ``previous_response_id`` and the chain's session (None: no previous response)."""
        previous = body.get("previous_response_id") if isinstance(body, dict) else None
        if previous is None:
            return [], None
        if not isinstance(previous, str):
            raise responses_parse._fail("previous_response_id: expected a string", "previous_response_id")
        stored = await self.store.load_response(previous, tenant, time.time())
        if stored is None:
            raise NotFound(f"Previous response with id '{previous}' not found (or expired, or stored with store: false)", param="previous_response_id")
        kept = json.loads(stored)
        if isinstance(kept, list):  # stored before chains were sessions
            return kept, previous
        return list(kept["turns"]), str(kept.get("session") or previous)

    async def create(self, http: HTTPRequest) -> HTTPResponse:
        api = self.api
        body = await api.body(http)
        tenant = http.scope["state"].get("tenant", "default")
        history, chain = await self._history(body, tenant)
        response_id = f"resp_{uuid.uuid4().hex}"
        asked = api.headers(http)
        if SESSION_HEADER not in asked and (chain or (isinstance(body, dict) and body.get("store", True) is True)):
            asked[SESSION_HEADER] = chain or response_id
        call = responses_parse.responses_request(body, http.scope["state"]["request_id"], asked, history)
        request = call.request
        response, first = await api.run(http, request)
        envelope = self._envelope(response_id, call, response.model, body)
        turns = [m for m in request.call.messages if m.get("role") != "system"] if request.call else []

        async def keep(items: list[dict[str, Any]], usage: Usage) -> None:
            if call.store:
                kept = {"session": request.session, "turns": turns + _as_messages(items)}
                await self.store.save_response(envelope.response_id, request.tenant, json.dumps(kept), time.time(), RESPONSE_TTL_S)

        headers = api.model_headers(request, response)
        if request.stream:
            events = responses_render.stream_events(envelope, response.streams[0], first, http.scope["state"], keep)
            return StreamingResponse(events, media_type="text/event-stream", headers=headers | {"cache-control": "no-cache"})
        choices = await render.collect(response.streams, first)
        api.note(http, request, response)
        usage = render.total_usage(choices)
        http.scope["state"]["usage"] = usage
        output = responses_render.output_of(envelope.response_id, choices[0])
        await keep(output, usage)
        status = responses_render.status_of(choices[0].finish_reason)
        return JSONResponse(responses_render.response_object(envelope, status, output, usage), headers=headers)

    def _envelope(self, response_id: str, call: responses_parse.ResponsesCall, model: str, body: dict[str, Any]) -> responses_render.Envelope:
        sampling = call.request.call.sampling if call.request.call else None
        echo = {
            "instructions": call.instructions, "tools": call.tools, "tool_choice": call.tool_choice, "metadata": call.metadata,
            "previous_response_id": call.previous_response_id, "store": call.store, "max_output_tokens": sampling.max_tokens if sampling else None,
            "temperature": sampling.temperature if sampling else None, "top_p": sampling.top_p if sampling else None,
            "text": body.get("text") if isinstance(body.get("text"), dict) else {"format": {"type": "text"}},
        }
        return responses_render.Envelope(response_id, model, int(time.time()), echo)
