"""Tenants and API keys in the store. Keys are stored as SHA-256 hashes only."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

from modelyard.store.database import Connection, Database, DuplicateRow
from modelyard.store.store import new_id

KEY_PREFIX = "my-"


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(plaintext: str) -> str:
    """SHA-256 of the key: keys are 256-bit random, so a fast hash is enough (no dictionary to attack)."""
    return hashlib.sha256(plaintext.encode()).hexdigest()

WORKLOADS = ("interactive", "agent", "embedding", "background", "batch")
BUDGET_COLUMNS = ("budget_day", "budget_month", "budget_total")
PLAN_COLUMNS = ("plan_input_per_1m", "plan_output_per_1m", "plan_per_request")


class AccountError(ValueError):
    """A tenant or key request is invalid (unknown tenant, duplicate, bad field)."""


class Accounts:
    """Tenants, their budgets and price plans, and API keys (schema: store/migrations.py)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def set_budget(self, tenant: str, day: float | None, month: float | None, total: float | None) -> bool:
        return bool(await self.db.execute("UPDATE tenants SET budget_day = ?, budget_month = ?, budget_total = ? WHERE id = ?", (day, month, total, tenant)))

    async def set_plan(self, tenant: str, input_per_1m: float, output_per_1m: float, per_request: float) -> bool:
        """What the tenant pays: per 1M prompt and completion tokens, and per successful request."""
        return bool(await self.db.execute(
            "UPDATE tenants SET plan_input_per_1m = ?, plan_output_per_1m = ?, plan_per_request = ? WHERE id = ?",
            (input_per_1m, output_per_1m, per_request, tenant),
        ))

    async def create_tenant(self, tenant: str, rpm: int | None = None, tpm: int | None = None) -> dict[str, Any]:
        if not tenant or not tenant.replace("-", "").replace("_", "").isalnum():
            raise AccountError("a tenant id is letters, digits, '-' and '_'")
        try:
            await self.db.execute("INSERT INTO tenants (id, created_at, rpm, tpm) VALUES (?, ?, ?, ?)", (tenant, int(time.time()), rpm, tpm))
        except DuplicateRow:
            raise AccountError(f"tenant {tenant!r} already exists") from None
        return {"id": tenant, "rpm": rpm, "tpm": tpm}

    async def tenants(self) -> list[dict[str, Any]]:
        return await self.db.fetch("SELECT * FROM tenants ORDER BY id")

    async def create_key(
        self, tenant: str, name: str = "", allowed_models: list[str] | None = None, max_class: str | None = None,
        rpm: int | None = None, tpm: int | None = None, budget: tuple[float | None, float | None, float | None] = (None, None, None),
    ) -> dict[str, Any]:
        """A new key; the plaintext is in the result and nowhere else, ever."""
        if max_class is not None and max_class not in WORKLOADS:
            raise AccountError(f"max_class must be one of {', '.join(WORKLOADS)}")
        plaintext = generate_key()
        row = {
            "id": new_id("key_"), "tenant": tenant, "name": name, "hash": hash_key(plaintext), "hint": plaintext[:6] + "..." + plaintext[-4:],
            "created_at": int(time.time()), "allowed_models": json.dumps(allowed_models) if allowed_models else None,
            "max_class": max_class, "rpm": rpm, "tpm": tpm, "budget_day": budget[0], "budget_month": budget[1], "budget_total": budget[2],
        }

        async def insert(conn: Connection) -> None:
            if await conn.fetchone("SELECT 1 AS found FROM tenants WHERE id = ?", (tenant,)) is None:
                raise AccountError(f"unknown tenant {tenant!r}; create it first")
            await conn.execute(f"INSERT INTO api_keys ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})", tuple(row.values()))

        await self.db.transaction(insert)
        return _public(row) | {"key": plaintext}

    async def keys(self, tenant: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT * FROM api_keys" + (" WHERE tenant = ?" if tenant else "") + " ORDER BY created_at, id"
        return [_public(r) for r in await self.db.fetch(query, (tenant,) if tenant else ())]

    async def revoke(self, key_id: str) -> bool:
        return bool(await self.db.execute("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (int(time.time()), key_id)))

    async def active_keys(self) -> list[dict[str, Any]]:
        """Every key not revoked, with its hash and its tenant's limits."""
        return await self.db.fetch(
            "SELECT k.*, t.rpm AS tenant_rpm, t.tpm AS tenant_tpm FROM api_keys k JOIN tenants t ON t.id = k.tenant WHERE k.revoked_at IS NULL"
        )


def _public(row: dict[str, Any]) -> dict[str, Any]:
    """A key as it may be shown: never the hash."""
    models = row.get("allowed_models")
    return {
        "id": row["id"], "tenant": row["tenant"], "name": row.get("name") or "", "hint": row["hint"], "created_at": row["created_at"],
        "revoked_at": row.get("revoked_at"), "allowed_models": json.loads(models) if isinstance(models, str) else models,
        "max_class": row.get("max_class"), "rpm": row.get("rpm"), "tpm": row.get("tpm"),
        "budget": {p: row.get(f"budget_{p}") for p in ("day", "month", "total")},
    }
