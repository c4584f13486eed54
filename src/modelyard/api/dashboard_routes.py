"""``GET /ui`` (the dashboard page) and ``GET /admin/dashboard`` (its data)."""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from starlette.requests import Request as HTTPRequest
from starlette.responses import HTMLResponse
from starlette.responses import Response as HTTPResponse
from starlette.routing import Route

from modelyard.api.responses import JSONResponse
from modelyard.errors import InvalidRequest
from modelyard.observe.dashboard import minute_series, route_shares
from modelyard.store.ledger import LedgerWriter


class DashboardRoutes:
    def __init__(self, ledger: LedgerWriter, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.ledger = ledger
        self.snapshot = snapshot
        self.page = resources.files("modelyard.api").joinpath("static/dashboard.html").read_text(encoding="utf-8")

    async def ui(self, http: HTTPRequest) -> HTTPResponse:
        return HTMLResponse(self.page)

    async def data(self, http: HTTPRequest) -> HTTPResponse:
        raw = http.query_params.get("minutes", "30")
        if not raw.isdigit() or not 1 <= int(raw) <= 1440:
            raise InvalidRequest("'minutes' must be an integer between 1 and 1440", param="minutes")
        minutes = int(raw)
        start = time.time() - (minutes - 1) * 60
        rows = await self.ledger.recent(int(start // 60) * 60)
        series = minute_series(rows, start, minutes)
        fleet = self.snapshot()
        deployments = [
            {
                "deployment": d["deployment"], "ready": d["ready"], "outstanding": d["outstanding"],
                "queued": sum(fleet["scheduler"].get(d["deployment"], {}).get("queued", {}).values()),
                "utilization": _slot_use(fleet["scheduler"].get(d["deployment"], {})),
                "breaker": fleet["breakers"].get(d["deployment"], {}).get("state"),
            }
            for d in fleet["deployments"]
        ]
        return JSONResponse({"now": time.time(), "series": series, "routes": route_shares(rows), "deployments": deployments, "budgets": fleet.get("budgets", {})})

    def routes(self) -> list[Route]:
        return [Route("/ui", self.ui, methods=["GET"]), Route("/admin/dashboard", self.data, methods=["GET"])]


def _slot_use(scheduler: dict[str, object]) -> float | None:
    """Share of the deployment's slots (engine slots, workers or max_concurrency) holding a request."""
    running, capacity = scheduler.get("running"), scheduler.get("capacity")
    if not isinstance(running, int) or not isinstance(capacity, int) or capacity <= 0:
        return None
    return running / capacity
