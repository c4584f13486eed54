"""The cost of a request: every attempt it made, at its deployment's price.

API deployments are priced per token (``input_per_1m``, ``output_per_1m``).
Self-hosted deployments are priced per replica-hour; a request pays for the
share of a replica it occupied: ``replica_hour / 3600 x busy seconds``, where
busy seconds run from the attempt's start to its last chunk. Failed, hedged
and repaired attempts cost what they consumed; a request's cost is the sum.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from modelyard.config.schema import Price
from modelyard.protocol import Usage


@dataclass(frozen=True, slots=True)
class AttemptUse:
    """What one attempt consumed, as plain data."""

    deployment: str
    usage: Usage | None
    busy_s: float


def attempt_cost(price: Price, usage: Usage | None, busy_s: float) -> float:
    tokens = usage or Usage()
    per_token = (tokens.prompt_tokens * price.input_per_1m + tokens.completion_tokens * price.output_per_1m) / 1_000_000
    per_time = price.replica_hour / 3600 * max(0.0, busy_s)
    return per_token + per_time


def request_cost(attempts: Iterable[AttemptUse], prices: Mapping[str, Price]) -> float:
    """US dollars for every attempt; a deployment without a price costs nothing."""
    return sum(attempt_cost(prices.get(a.deployment, Price()), a.usage, a.busy_s) for a in attempts)


@dataclass(frozen=True, slots=True)
class PricePlan:
    """What a tenant pays modelyard's operator."""

    input_per_1m: float = 0.0
    output_per_1m: float = 0.0
    per_request: float = 0.0

    def revenue(self, usage: Usage | None, succeeded: bool) -> float:
        """A failed request earns nothing; a successful one its tokens plus the per-request fee."""
        if not succeeded:
            return 0.0
        tokens = usage or Usage()
        return (tokens.prompt_tokens * self.input_per_1m + tokens.completion_tokens * self.output_per_1m) / 1_000_000 + self.per_request
