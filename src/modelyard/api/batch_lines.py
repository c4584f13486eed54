"""Run one batch line as the caller who submitted the batch.

A line takes the same path as a live ``/v1/...`` request: the submitter's
tenant and API key policy (allowed models, class cap, rate limits, budgets)
are enforced by the same pipeline stages, and the same observers write its
ledger row (``workload=batch``), count its metrics and settle its limits and
budget holds. The ledger row is made durable before the runner records the
line's answer, so spend survives a crash: a kill in between re-runs the line,
and both runs are charged because both happened.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from modelyard.api import parse, render
from modelyard.api.middleware import Observer
from modelyard.api.record import note_request
from modelyard.economics.keys import KeyPolicy
from modelyard.errors import AuthenticationFailed, BudgetExceeded, ModelyardError, RateLimited
from modelyard.pipeline.batches import BatchOwner, LineResult
from modelyard.pipeline.types import Handler, Request
from modelyard.protocol import Usage

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
PolicyLookup = Callable[[str], KeyPolicy | None]  # key id -> its current policy (None: revoked or unknown)


def line_executor(handler: Handler, policy_of: PolicyLookup, observers: list[Observer], flush: Callable[[], Awaitable[None]]) -> Any:
    """The batch runner's executor: one line through the pipeline, observed like a live request."""

    async def execute(endpoint: str, body: dict[str, Any], owner: BatchOwner) -> LineResult:
        state: dict[str, Any] = {"request_id": uuid.uuid4().hex, "path": endpoint, "tenant": owner.tenant}
        started = time.perf_counter()
        status = 500
        try:
            result = await _answer(handler, endpoint, body, owner.tenant, _identity(owner, policy_of, state), state)
        except ModelyardError as exc:
            state["error"] = exc.error_type
            result = _error_result(exc)
        status = result.status
        for observe in observers:
            observe(state, status, time.perf_counter() - started)
        if "request" in state:
            await flush()  # the ledger row is on disk before the line's answer is
        return result

    return execute


def _identity(owner: BatchOwner, policy_of: PolicyLookup, state: dict[str, Any]) -> KeyPolicy | None:
    """The submitting key's policy as it is now; a key revoked since the batch was created stops its lines."""
    if owner.key_id is None:
        return None
    policy = policy_of(owner.key_id)
    if policy is None:
        raise AuthenticationFailed(f"the API key that created this batch ({owner.key_id}) has been revoked")
    state.update(api_key_id=policy.key_id, policy=policy)
    return policy


async def _answer(handler: Handler, endpoint: str, body: dict[str, Any], tenant: str, policy: KeyPolicy | None, state: dict[str, Any]) -> LineResult:
    headers = {"x-modelyard-class": "batch"}
    body = {**body, "stream": False}
    body.pop("stream_options", None)
    request: Request
    if endpoint == "/v1/embeddings":
        request, encoding = parse.embedding_request(body, state["request_id"], headers)
        response = await _handle(handler, request, tenant, policy, state)
        assert response.embeddings is not None
        state["usage"] = Usage(response.embeddings.prompt_tokens, 0)
        return LineResult(200, render.embeddings_body(response, response.embeddings, encoding))
    kind = "chat" if endpoint == "/v1/chat/completions" else "completion"
    parser = parse.chat_request if kind == "chat" else parse.completion_request
    request, _ = parser(body, state["request_id"], headers)
    response = await _handle(handler, request, tenant, policy, state)
    try:
        choices = await render.collect(response.streams, None)
    finally:
        note_request(state, request, response)
    state["usage"] = render.total_usage(choices)
    build = render.chat_body if kind == "chat" else render.completion_body
    return LineResult(200, build(request.request_id, response, choices, int(time.time())))


async def _handle(handler: Handler, request: Request, tenant: str, policy: KeyPolicy | None, state: dict[str, Any]) -> Any:
    request.tenant, request.policy = tenant, policy
    note_request(state, request)
    try:
        response = await handler(request)
    finally:
        note_request(state, request)
    note_request(state, request, response)
    return response


def _error_result(exc: ModelyardError) -> LineResult:
    body = exc.to_body()
    if isinstance(exc, RateLimited) and exc.retry_after is not None:  # the key's own limit: wait for the window, as a throttled client would
        return LineResult(exc.status, body, wait_s=max(1.0, exc.retry_after or 1.0))
    if isinstance(exc, BudgetExceeded):  # spending more time will not make the budget larger
        return LineResult(exc.status, body)
    return LineResult(exc.status, body, retryable=exc.status in RETRYABLE_STATUS, retry_after_s=exc.retry_after or 1.0)
