"""``/admin/tenants`` and ``/admin/keys`` (the auth middleware requires the master key)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request as HTTPRequest
from starlette.responses import Response as HTTPResponse
from starlette.routing import Route

from modelyard.api import parse
from modelyard.api.auth import Keyring
from modelyard.api.responses import JSONResponse
from modelyard.errors import InvalidRequest, NotFound
from modelyard.store.accounts import AccountError, Accounts


def _optional_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidRequest(f"'{name}' must be a positive integer", param=name)
    return value


def _text(body: dict[str, Any], name: str) -> str:
    """A string field ('' when absent); anything else is a 400 naming it."""
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(f"'{name}' must be a string", param=name)
    return value


def _budget(body: Any) -> tuple[float | None, float | None, float | None]:
    """``{"day", "month", "total"}`` in US dollars; a missing period has no limit."""
    if not isinstance(body, dict):
        raise InvalidRequest("'budget' must be an object with 'day', 'month' and/or 'total'", param="budget")
    values = []
    for period in ("day", "month", "total"):
        value = body.get(period)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise InvalidRequest(f"'{period}' must be a number of US dollars >= 0", param=period)
        values.append(float(value) if value is not None else None)
    return values[0], values[1], values[2]


@dataclass(frozen=True, slots=True)
class AdminRoutes:
    accounts: Accounts
    keyring: Keyring

    async def create_tenant(self, http: HTTPRequest) -> HTTPResponse:
        body = parse.parse_json(await http.body())
        try:
            tenant = await self.accounts.create_tenant(_text(body, "id"), _optional_int(body, "rpm"), _optional_int(body, "tpm"))
        except AccountError as exc:
            raise InvalidRequest(str(exc), param="id") from None
        return JSONResponse(tenant, status_code=201)

    async def set_budget(self, http: HTTPRequest) -> HTTPResponse:
        day, month, total = _budget(parse.parse_json(await http.body()))
        values = {"day": day, "month": month, "total": total}
        tenant = http.path_params["tenant"]
        if not await self.accounts.set_budget(tenant, day, month, total):
            raise NotFound(f"No such tenant: {tenant}", param="tenant")
        await self.keyring.refresh()
        return JSONResponse({"tenant": tenant, "budget": values})

    async def set_plan(self, http: HTTPRequest) -> HTTPResponse:
        body = parse.parse_json(await http.body())
        values = []
        for name in ("input_per_1m", "output_per_1m", "per_request"):
            value = body.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise InvalidRequest(f"'{name}' must be a number of US dollars >= 0", param=name)
            values.append(float(value))
        tenant = http.path_params["tenant"]
        if not await self.accounts.set_plan(tenant, *values):
            raise NotFound(f"No such tenant: {tenant}", param="tenant")
        await self.keyring.refresh()
        return JSONResponse({"tenant": tenant, "plan": dict(zip(("input_per_1m", "output_per_1m", "per_request"), values, strict=True))})

    async def list_tenants(self, http: HTTPRequest) -> HTTPResponse:
        return JSONResponse({"object": "list", "data": await self.accounts.tenants()})

    async def create_key(self, http: HTTPRequest) -> HTTPResponse:
        body = parse.parse_json(await http.body())
        models = body.get("allowed_models")
        if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
            raise InvalidRequest("'allowed_models' must be a list of model names", param="allowed_models")
        try:
            key = await self.accounts.create_key(
                _text(body, "tenant"), _text(body, "name"), models, _text(body, "max_class") or None,
                _optional_int(body, "rpm"), _optional_int(body, "tpm"), _budget(body.get("budget") or {}),
            )
        except AccountError as exc:
            raise InvalidRequest(str(exc)) from None
        await self.keyring.refresh()
        return JSONResponse(key, status_code=201)

    async def list_keys(self, http: HTTPRequest) -> HTTPResponse:
        return JSONResponse({"object": "list", "data": await self.accounts.keys(http.query_params.get("tenant"))})

    async def revoke_key(self, http: HTTPRequest) -> HTTPResponse:
        key_id = http.path_params["key_id"]
        if not await self.accounts.revoke(key_id):
            raise NotFound(f"No such active key: {key_id}", param="key_id")
        await self.keyring.refresh()
        return JSONResponse({"id": key_id, "revoked": True})

    def routes(self) -> list[Route]:
        return [
            Route("/admin/tenants", self.create_tenant, methods=["POST"]),
            Route("/admin/tenants", self.list_tenants, methods=["GET"]),
            Route("/admin/tenants/{tenant}/budget", self.set_budget, methods=["POST"]),
            Route("/admin/tenants/{tenant}/plan", self.set_plan, methods=["POST"]),
            Route("/admin/keys", self.create_key, methods=["POST"]),
            Route("/admin/keys", self.list_keys, methods=["GET"]),
            Route("/admin/keys/{key_id}/revoke", self.revoke_key, methods=["POST"]),
        ]
