"""The key's policy at work: allowed models, the class a header may claim, and rate limits."""

from __future__ import annotations

import time

from modelyard.economics.ratelimit import LimitState, RateLimiter
from modelyard.errors import PermissionDenied, RateLimited
from modelyard.pipeline.types import Handler, Request, Response, Stage
from modelyard.scheduling.scheduler import CLASS_RANK

DEFAULT_COMPLETION_ESTIMATE = 256


def estimated_tokens(request: Request) -> int:
    """A reservation before the call (about 4 characters a token, plus the completion budget); settled to the real count after."""
    if request.call is None:
        return max(1, sum(len(t) for t in request.inputs) // 4)
    text = request.call.prompt + "".join(str(m.get("content") or "") for m in request.call.messages)
    completion = request.call.sampling.max_tokens or DEFAULT_COMPLETION_ESTIMATE
    return max(1, len(text) // 4) + completion * request.n


def headers_of(states: dict[str, LimitState]) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers from the tightest key-level (or tenant-level) limits."""
    out: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        relevant = [s for name, s in states.items() if name.startswith(kind)]
        if relevant:
            tightest = min(relevant, key=lambda s: s.remaining)
            out[f"x-ratelimit-limit-{kind}"] = str(tightest.limit)
            out[f"x-ratelimit-remaining-{kind}"] = str(tightest.remaining)
            out[f"x-ratelimit-reset-{kind}"] = f"{tightest.reset_s:.1f}s"
    return out


def limits(limiter: RateLimiter) -> Stage:
    def stage(next_handler: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            policy = request.policy
            if policy is None:
                return await next_handler(request)
            if not policy.allows_model(request.model):
                raise PermissionDenied(f"this API key may not use model '{request.model}'", param="model")
            if policy.max_class and CLASS_RANK.get(request.workload, 9) < CLASS_RANK[policy.max_class]:
                request.workload = policy.max_class  # a header may not claim more than the key's policy
            scopes = [(f"key:{policy.key_id}", policy.rpm, policy.tpm), (f"tenant:{policy.tenant}", policy.tenant_rpm, policy.tenant_tpm)]
            reservation, retry_after, states = limiter.check(scopes, estimated_tokens(request), time.monotonic())
            request.ratelimit = headers_of(states)
            if reservation is None:
                raise RateLimited(f"rate limit reached for this key or tenant; try again in {retry_after:.1f}s", retry_after=retry_after)
            request.finalizers.append(lambda: limiter.settle(reservation, request.usage().total_tokens))
            return await next_handler(request)

        return handle

    return stage
