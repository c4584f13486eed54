"""Authentication at the door: the master key for ``/admin``, virtual keys for ``/v1``.

Without ``MODELYARD_MASTER_KEY`` modelyard runs open (every caller is tenant
``default``) and ``serve`` refuses to listen beyond loopback. With it, every
``/v1`` call needs a valid key (or the master key) and ``/admin`` needs the
master key; ``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json`` stay open.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from modelyard.economics.budget import BudgetBook, BudgetLimits, key_owner, period_keys
from modelyard.economics.cost import PricePlan
from modelyard.economics.keys import KeyPolicy
from modelyard.errors import AuthenticationFailed
from modelyard.store.accounts import BUDGET_COLUMNS, PLAN_COLUMNS, Accounts, hash_key
from modelyard.tasks import stop_task

log = logging.getLogger("modelyard.auth")
OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/ui", "/openapi.json")  # /ui is a static page; its data needs the master key
SpendSource = Callable[[], Awaitable[list[dict[str, Any]]]]
DEFAULT_TENANT = "default"


class Keyring:
    """Active keys by hash, reloaded from the store every few seconds (CLI changes apply without a restart)."""

    def __init__(
        self, accounts: Accounts, master_key: str | None, book: BudgetBook | None = None, spend: SpendSource | None = None, refresh_s: float = 5.0
    ) -> None:
        self.accounts = accounts
        self.book = book
        self.spend = spend
        self.master_key = master_key or None
        self.refresh_s = refresh_s
        self.policies: dict[str, KeyPolicy] = {}
        self.by_id: dict[str, KeyPolicy] = {}
        self.plans: dict[str, PricePlan] = {}
        self.task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        keys = await self.accounts.active_keys()
        self.policies = {
            row["hash"]: KeyPolicy(
                key_id=row["id"], tenant=row["tenant"],
                allowed_models=tuple(json.loads(row["allowed_models"]) if row["allowed_models"] else ()),
                max_class=row["max_class"], rpm=row["rpm"], tpm=row["tpm"], tenant_rpm=row["tenant_rpm"], tenant_tpm=row["tenant_tpm"],
            )
            for row in keys
        }
        self.by_id = {p.key_id: p for p in self.policies.values()}
        tenants = await self.accounts.tenants()
        self.plans = {
            t["id"]: PricePlan(t["plan_input_per_1m"] or 0.0, t["plan_output_per_1m"] or 0.0, t["plan_per_request"] or 0.0)
            for t in tenants
            if any(t[c] is not None for c in PLAN_COLUMNS)
        }
        if self.book is not None:
            limits = {
                t["id"]: BudgetLimits(t["budget_day"], t["budget_month"], t["budget_total"])
                for t in tenants
                if any(t[c] is not None for c in BUDGET_COLUMNS)
            }
            limits |= {
                key_owner(k["id"]): BudgetLimits(k["budget_day"], k["budget_month"], k["budget_total"])
                for k in keys
                if any(k[c] is not None for c in BUDGET_COLUMNS)
            }
            self.book.limits = limits

    async def load_spend(self) -> None:
        """What each owner spent, from the ledger (so budgets survive restarts, and Redis losing its figures).

        The book keeps the larger of what it knew and what the ledger says: the ledger may lag this
        replica's own last requests, and holds everyone's requests up to its last write.
        """
        if self.book is None or self.spend is None:
            return
        today, month = period_keys(time.time())["day"], period_keys(time.time())["month"]
        ledger: dict[tuple[str, str, str], float] = {}
        for row in await self.spend():
            cost = row["cost"] or 0.0
            owners = [row["tenant"]] + ([key_owner(row["api_key"])] if row["api_key"] else [])
            for period, key in (("total", "all"), ("month", row["day"][:7]), ("day", row["day"])):
                if period == "total" or key in (today, month):
                    for owner in owners:
                        ledger[(owner, period, key)] = ledger.get((owner, period, key), 0.0) + cost
        for slot, spent in ledger.items():
            self.book.spent[slot] = max(self.book.spent.get(slot, 0.0), spent)

    async def start(self) -> None:
        await self.refresh()
        await self.load_spend()
        self.task = asyncio.create_task(self._loop(), name="keyring-refresh")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            with contextlib.suppress(Exception):
                await self.refresh()

    async def aclose(self) -> None:
        await stop_task(self.task)

    def is_master(self, token: str) -> bool:
        return self.master_key is not None and hmac.compare_digest(token.encode(), self.master_key.encode())

    def lookup(self, token: str) -> KeyPolicy | None:
        return self.policies.get(hash_key(token))

    def policy_of(self, key_id: str) -> KeyPolicy | None:
        """An active key's current policy by its id (None: revoked or unknown); batch lines run under it."""
        return self.by_id.get(key_id)


def bearer(scope: Scope) -> str:
    """The key a client sent: ``Authorization: Bearer <key>``, or ``x-api-key: <key>`` (Anthropic's SDKs)."""
    api_key = ""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            text = value.decode("latin-1")
            return text[7:].strip() if text[:7].lower() == "bearer " else ""
        if name == b"x-api-key":
            api_key = value.decode("latin-1").strip()
    return api_key


class AuthMiddleware:
    def __init__(self, app: ASGIApp, keyring: Keyring) -> None:
        self.app = app
        self.keyring = keyring

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["tenant"] = DEFAULT_TENANT
        path = scope["path"]
        if self.keyring.master_key is None or path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        token = bearer(scope)
        if path.startswith("/admin"):
            if not self.keyring.is_master(token):
                await _refuse(scope, receive, send, "the admin API needs the master key (Authorization: Bearer $MODELYARD_MASTER_KEY)")
                return
        elif not self.keyring.is_master(token):
            policy = self.keyring.lookup(token) if token else None
            if policy is None:
                await _refuse(scope, receive, send, "Incorrect API key provided." if token else "Missing API key: send Authorization: Bearer <key>.")
                return
            state.update(tenant=policy.tenant, api_key_id=policy.key_id, policy=policy)
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, receive: Receive, send: Send, message: str) -> None:
    from modelyard.api.anthropic_render import error_body
    from modelyard.api.responses import JSONResponse

    error = AuthenticationFailed(message)
    scope["state"]["error"] = error.error_type
    body = error_body(error) if scope["path"].startswith("/v1/messages") else error.to_body()
    await JSONResponse(body, status_code=error.status, headers={"www-authenticate": "Bearer"})(scope, receive, send)
