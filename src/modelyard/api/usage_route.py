"""``GET /admin/usage``: ledger aggregates as JSON or CSV."""

from __future__ import annotations

import csv
import io

from starlette.requests import Request as HTTPRequest
from starlette.responses import Response as HTTPResponse

from modelyard.api.responses import JSONResponse
from modelyard.errors import InvalidRequest
from modelyard.store.ledger import LedgerWriter


class UsageRoute:
    """``?group_by=tenant,served_model,day&since=YYYY-MM-DD&until=YYYY-MM-DD&format=csv``"""

    def __init__(self, ledger: LedgerWriter) -> None:
        self.ledger = ledger

    async def handle(self, http: HTTPRequest) -> HTTPResponse:
        group_by = tuple(g for g in http.query_params.get("group_by", "tenant,served_model,day").split(",") if g)
        try:
            rows = await self.ledger.usage(group_by, http.query_params.get("since"), http.query_params.get("until"))
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="group_by") from None
        if http.query_params.get("format") == "csv":
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else [*group_by, "requests"])
            writer.writeheader()
            writer.writerows(rows)
            return HTTPResponse(out.getvalue(), media_type="text/csv")
        return JSONResponse({"object": "list", "group_by": list(group_by), "data": rows})
