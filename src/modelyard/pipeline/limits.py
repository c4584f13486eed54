"""The key's policy at work: allowed models, the class a header may claim, and rate limits.

Limits are counted in this process (:class:`LocalLimiter`) or in Redis, shared
by every replica that names the same one (:class:`SharedLimiter`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from modelyard.economics.ratelimit import LimitState, RateLimiter
from modelyard.errors import PermissionDenied, RateLimited
from modelyard.pipeline.shared_writes import SharedWrites
from modelyard.pipeline.types import Handler, Request, Response, Stage
from modelyard.scheduling.scheduler import CLASS_RANK
from modelyard.store.redis_client import SharedStateUnavailable
from modelyard.store.redis_limits import RedisWindows, Window

log = logging.getLogger("modelyard.limits")

Scope = tuple[str, int | None, int | None]  # (name, requests per minute, tokens per minute)
Settle = Callable[[int], None]  # called once with the request's actual token count
Admission = tuple[Settle | None, float, dict[str, LimitState]]  # (None when refused, retry-after s, states)


class Limiter(Protocol):
    async def check(self, scopes: list[Scope], tokens: int) -> Admission:
        """Admit a request estimated at ``tokens`` against every scope's limits, or refuse it."""
        ...

    async def drain(self) -> None:
        """Wait for settles still on their way (at shutdown)."""
        ...


class LocalLimiter:
    """Limits counted in this process."""

    def __init__(self, limiter: RateLimiter | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.limiter = limiter or RateLimiter()
        self.clock = clock

    async def check(self, scopes: list[Scope], tokens: int) -> Admission:
        reservation, retry_after, states = self.limiter.check(scopes, tokens, self.clock())
        if reservation is None:
            return None, retry_after, states
        return (lambda actual: self.limiter.settle(reservation, actual)), 0.0, states

    async def drain(self) -> None:
        return None  # settles are immediate


class SharedLimiter:
    """Limits counted in Redis. When Redis cannot be reached, requests are let through
    (and a warning logged at most once a minute): a limiter outage must not become an API outage."""

    def __init__(self, windows: RedisWindows) -> None:
        self.windows = windows
        self.writes = SharedWrites(log, "rate limits are not enforced")

    async def check(self, scopes: list[Scope], tokens: int) -> Admission:
        windows = [Window(name, kind, limit, amount)
                   for name, rpm, tpm in scopes
                   for kind, limit, amount in (("requests", rpm, 1), ("tokens", tpm, tokens)) if limit is not None]
        if not windows:
            return (lambda actual: None), 0.0, {}
        try:
            checked = await self.windows.check(windows)
        except SharedStateUnavailable as exc:
            self.writes.unavailable(exc)
            return (lambda actual: None), 0.0, {}
        states = {}
        for w, (remaining, reset_s) in zip(windows, checked.states, strict=True):
            left = remaining - (w.amount if checked.taken is not None else 0)
            states[f"{w.kind}:{w.scope}"] = LimitState(w.limit, max(0, int(left)), reset_s)
        if checked.taken is None:
            return None, checked.retry_after_s, states
        taken = checked.taken
        if not taken.token_scopes:
            return (lambda actual: None), 0.0, states  # requests only: nothing to settle
        return (lambda actual: self.writes.start(self.windows.settle(taken, actual))), 0.0, states

    async def drain(self) -> None:
        await self.writes.drain()


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


def _refuse_never_fitting(scopes: list[Scope], tokens: int) -> None:
    """A request larger than a whole minute's token limit can never be admitted: say so, with no retry-after."""
    for name, _, tpm in scopes:
        if tpm is not None and tokens > tpm:
            raise RateLimited(
                f"Request too large for {name.split(':')[0]} tokens per minute (TPM): limit {tpm}, requested about {tokens} "
                "(prompt and max_tokens); send a smaller request"
            )


def limits(limiter: Limiter) -> Stage:
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
            tokens = estimated_tokens(request)
            _refuse_never_fitting(scopes, tokens)
            settle, retry_after, states = await limiter.check(scopes, tokens)
            request.ratelimit = headers_of(states)
            if settle is None:
                raise RateLimited(f"rate limit reached for this key or tenant; try again in {retry_after:.1f}s", retry_after=retry_after)
            request.finalizers.append(lambda: settle(request.usage().total_tokens))
            return await next_handler(request)

        return handle

    return stage
