"""What a request costs, before (worst case) and after (actual), from the fleet's price catalog."""

from __future__ import annotations

from modelyard.config import FleetConfig, Price
from modelyard.economics.cost import AttemptUse, attempt_cost, request_cost
from modelyard.pipeline.types import Request
from modelyard.protocol import Usage


class PriceCatalog:
    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.prices: dict[str, Price] = {d.name: d.price for m in config.models for d in m.deployments}

    def actual(self, request: Request) -> float:
        """Every attempt at its deployment's price (retries, hedges, repairs, escalations included), plus routing's own calls."""
        work = [*request.attempts, *request.overhead]
        return request_cost((AttemptUse(a.deployment, a.usage, a.busy_s) for a in work), self.prices)

    def answer_cost(self, request: Request) -> float:
        """The attempts alone (what a cached copy of the answer saves next time), without routing's calls."""
        return request_cost((AttemptUse(a.deployment, a.usage, a.busy_s) for a in request.attempts), self.prices)

    def worst_case(self, request: Request) -> float:
        """The most one attempt of this request can cost on any deployment it may be sent to.

        Prompt tokens are bounded by the prompt's UTF-8 bytes (a token is at least
        one byte); completion tokens by ``max_tokens`` (or the model's window);
        replica time by the deployment's total timeout.
        """
        models = [self.config.model(name) for name in [*request.plan, *request.escalations]]
        worst = 0.0
        for model in (m for m in models if m is not None):
            if request.call is not None:
                call = request.call
                prompt = len((call.prompt + "".join(str(m.get("content") or "") for m in call.messages)).encode())
                completion = (call.sampling.max_tokens or model.context_window) * request.n
            else:
                prompt, completion = sum(len(t.encode()) for t in request.inputs), 0
            for d in model.deployments:
                worst = max(worst, attempt_cost(d.price, Usage(prompt, completion), d.timeouts.total_s))
        return worst
