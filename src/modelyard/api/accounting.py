"""Turn a finished HTTP request into a ledger row with its cost."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from modelyard.config import FleetConfig
from modelyard.economics.budget import utc_day
from modelyard.economics.cost import PricePlan
from modelyard.pipeline.costing import PriceCatalog
from modelyard.pipeline.types import Request
from modelyard.protocol import Usage
from modelyard.store.ledger import LedgerWriter


class LedgerRecorder:
    """An access-middleware observer: one ledger row per inference request (success, error, stream, cancelled)."""

    def __init__(self, writer: LedgerWriter, config: FleetConfig, plans: Callable[[], dict[str, PricePlan]]) -> None:
        self.writer = writer
        self.catalog = PriceCatalog(config)
        self.plans = plans

    def observe(self, state: dict[str, Any], status: int, seconds: float) -> None:
        request = state.get("request")
        if not isinstance(request, Request):
            return  # not an inference request
        usage = state.get("usage")
        attempts = request.attempts
        ok = [a for a in attempts if a.outcome == "ok"]
        cost = self.catalog.actual(request)
        state["cost_usd"] = cost
        now = time.time()
        prompt = usage.prompt_tokens if usage else sum(a.usage.prompt_tokens for a in ok if a.usage)
        completion = usage.completion_tokens if usage else sum(a.usage.completion_tokens for a in ok if a.usage)
        plan = self.plans().get(request.tenant)
        revenue = plan.revenue(Usage(prompt, completion), status == 200) if plan else 0.0
        self.writer.record({
            "ts": now,
            "day": utc_day(now),
            "request_id": request.request_id,
            "endpoint": state.get("path"),
            "tenant": request.tenant,
            "api_key": state.get("api_key_id"),
            "workload": request.workload,
            "session": request.session,
            "requested_model": request.model,
            "served_model": state.get("served_model") or request.served_model,
            "deployment": state.get("deployment") or request.deployment,
            "route": state.get("route_reason") or request.route_reason,
            "attempts": len(attempts),
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "cost_usd": cost,
            "revenue_usd": revenue,
            "latency_ms": round(seconds * 1000, 3),
            "ttft_ms": round(ok[0].ttft_s * 1000, 3) if ok and ok[0].ttft_s is not None else None,
            "status": status,
            "error_type": state.get("error"),
            "cache": request.cache or None,
            "saved_usd": request.saved_usd,
            "upstream_ms": round(ok[0].busy_s * 1000, 3) if ok and ok[0].busy_s else None,
        })
