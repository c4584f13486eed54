"""Which failures are worth another try, and how long to wait before it."""

from __future__ import annotations

import random

from modelyard.config.schema import RetryPolicy
from modelyard.errors import ModelyardError, Overloaded, UpstreamError, UpstreamTimeout


def is_retryable(error: ModelyardError) -> bool:
    """Connection errors, timeouts, 429 and 5xx: yes. Other 4xx: never."""
    return error.retryable


def counts_against_deployment(error: ModelyardError) -> bool:
    """Failures that say the deployment is unhealthy (not that it is busy or the request is bad)."""
    return isinstance(error, (UpstreamError, UpstreamTimeout))


def backoff_s(policy: RetryPolicy, attempt: int, error: ModelyardError, rng: random.Random) -> float:
    """Full-jitter exponential backoff before trying the same deployment again;
    an upstream ``Retry-After`` is honoured as a floor."""
    ceiling = min(policy.backoff_max_s, policy.backoff_base_s * (2 ** max(0, attempt - 1)))
    delay = rng.uniform(0, ceiling)
    if isinstance(error, Overloaded) and error.retry_after is not None:
        delay = max(delay, error.retry_after)
    return delay
