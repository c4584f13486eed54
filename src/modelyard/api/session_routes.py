"""``GET /admin/sessions`` (recent agent sessions) and ``GET /admin/sessions/{id}`` (one session's steps and tool calls)."""

from __future__ import annotations

from starlette.requests import Request as HTTPRequest
from starlette.responses import Response as HTTPResponse
from starlette.routing import Route

from modelyard.api.responses import JSONResponse
from modelyard.errors import InvalidRequest, NotFound
from modelyard.store.ledger import LedgerWriter
from modelyard.store.session_log import SessionLog
from modelyard.store.store import Store

MAX_LIST = 500


class SessionRoutes:
    def __init__(self, store: Store, ledger: LedgerWriter) -> None:
        self.store = store
        self.ledger = ledger  # flushed first, so the newest steps are in

    @property
    def log(self) -> SessionLog:
        return SessionLog(self.store.db)

    async def index(self, http: HTTPRequest) -> HTTPResponse:
        raw = http.query_params.get("limit", "50")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST:
            raise InvalidRequest(f"'limit' must be an integer between 1 and {MAX_LIST}", param="limit")
        await self.ledger.flush()
        rows = await self.log.sessions(http.query_params.get("tenant"), None, int(raw))
        return JSONResponse({"object": "list", "data": rows})

    async def show(self, http: HTTPRequest) -> HTTPResponse:
        session = http.path_params["session_id"]
        await self.ledger.flush()
        found = await self.log.session(session, http.query_params.get("tenant"))
        if found is None:
            raise NotFound(f"No session '{session}' in the ledger", param="session_id")
        return JSONResponse(found)

    def routes(self) -> list[Route]:
        return [
            Route("/admin/sessions", self.index, methods=["GET"]),
            Route("/admin/sessions/{session_id:path}", self.show, methods=["GET"]),
        ]
