"""Versioned schema migrations, applied at startup by one process at a time.

The schema's version lives in ``schema_version``. At startup a process takes
the migration lock (PostgreSQL: an advisory transaction lock; SQLite: the
file's write lock), reads the version, applies every newer migration in that
one transaction, and records it. A process whose code knows fewer migrations
than the database holds refuses to start: it would write rows a newer replica
does not expect (:class:`SchemaTooNew`).

Migration 1 is the schema as it stood before versioning. It creates only what
is missing and adds columns older data directories lack, so a data directory
or PostgreSQL ledger written by an earlier modelyard is adopted as version 1.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from modelyard.store.database import Connection, Database, ddl

LEDGER_COLUMNS = (
    "ts {real} NOT NULL, day TEXT NOT NULL, request_id TEXT, endpoint TEXT, tenant TEXT, api_key TEXT, workload TEXT, "
    "session TEXT, requested_model TEXT, served_model TEXT, deployment TEXT, route TEXT, attempts INTEGER, prompt_tokens INTEGER, "
    "completion_tokens INTEGER, cost_usd {real}, revenue_usd {real}, latency_ms {real}, "
    "ttft_ms {real}, status INTEGER, error_type TEXT"
)

V1_TABLES = (
    "CREATE TABLE IF NOT EXISTS files (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, purpose TEXT NOT NULL, filename TEXT NOT NULL, "
    "bytes INTEGER NOT NULL, created_at BIGINT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS batches (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, input_file_id TEXT NOT NULL, endpoint TEXT NOT NULL, "
    "completion_window TEXT NOT NULL, metadata TEXT, status TEXT NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, "
    "in_progress_at BIGINT, finalizing_at BIGINT, completed_at BIGINT, failed_at BIGINT, expired_at BIGINT, cancelling_at BIGINT, "
    "cancelled_at BIGINT, output_file_id TEXT, error_file_id TEXT, errors TEXT, api_key TEXT)",
    "CREATE TABLE IF NOT EXISTS batch_lines (batch_id TEXT NOT NULL, line_no INTEGER NOT NULL, custom_id TEXT, request TEXT, "
    "state TEXT NOT NULL, response TEXT, error TEXT, tries INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (batch_id, line_no))",
    "CREATE INDEX IF NOT EXISTS batch_lines_pending ON batch_lines (batch_id, state)",
    "CREATE TABLE IF NOT EXISTS tenants (id TEXT PRIMARY KEY, created_at BIGINT NOT NULL, rpm INTEGER, tpm INTEGER, "
    "budget_day {real}, budget_month {real}, budget_total {real}, plan_input_per_1m {real}, plan_output_per_1m {real}, plan_per_request {real})",
    "CREATE TABLE IF NOT EXISTS api_keys (id TEXT PRIMARY KEY, tenant TEXT NOT NULL REFERENCES tenants (id), name TEXT, hash TEXT NOT NULL UNIQUE, "
    "hint TEXT NOT NULL, created_at BIGINT NOT NULL, revoked_at BIGINT, allowed_models TEXT, max_class TEXT, rpm INTEGER, tpm INTEGER, "
    "budget_day {real}, budget_month {real}, budget_total {real})",
    "CREATE TABLE IF NOT EXISTS ledger (id {serial}, " + LEDGER_COLUMNS + ")",
    "CREATE INDEX IF NOT EXISTS ledger_day ON ledger (day, tenant)",
)
# Columns that shipped after their table did; data written by older versions gains them in migration 1.
V1_LATE_COLUMNS = (
    ("batches", "api_key", "TEXT"),
    ("ledger", "revenue_usd", "{real}"),
    *(("tenants", c, "{real}") for c in ("budget_day", "budget_month", "budget_total", "plan_input_per_1m", "plan_output_per_1m", "plan_per_request")),
    *(("api_keys", c, "{real}") for c in ("budget_day", "budget_month", "budget_total")),
)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection, str], Awaitable[None]]  # (transaction, dialect)


async def _v1(conn: Connection, dialect: str) -> None:
    for statement in V1_TABLES:
        await conn.execute(ddl(statement, dialect))
    for table, column, kind in V1_LATE_COLUMNS:
        if column not in await conn.columns(table):
            await conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {ddl(kind, dialect)}")


async def _v2(conn: Connection, dialect: str) -> None:
    """Leases: any replica may validate, run or finalize any batch; file bodies in the database."""
    for statement in (
        "ALTER TABLE batches ADD COLUMN lease_owner TEXT",
        "ALTER TABLE batches ADD COLUMN lease_expires {real}",
        "ALTER TABLE batch_lines ADD COLUMN lease_owner TEXT",
        "ALTER TABLE batch_lines ADD COLUMN lease_expires {real}",
        "CREATE TABLE file_contents (file_id TEXT PRIMARY KEY, content {blob} NOT NULL)",
        "CREATE INDEX batches_status ON batches (status)",
    ):
        await conn.execute(ddl(statement, dialect))


async def _v3(conn: Connection, dialect: str) -> None:
    """The response cache in the ledger: what each request's cache did and what a hit saved."""
    for statement in ("ALTER TABLE ledger ADD COLUMN cache TEXT", "ALTER TABLE ledger ADD COLUMN saved_usd {real}"):
        await conn.execute(ddl(statement, dialect))


async def _v4(conn: Connection, dialect: str) -> None:
    """Responses API: a stored response's conversation, for previous_response_id chains."""
    for statement in (
        "CREATE TABLE responses (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, created_at {real} NOT NULL, expires_at {real} NOT NULL, conversation TEXT NOT NULL)",
        "CREATE INDEX responses_expiry ON responses (expires_at)",
    ):
        await conn.execute(ddl(statement, dialect))


async def _v5(conn: Connection, dialect: str) -> None:
    """Agent sessions: every tool call and tool result of a session, and a session's steps found fast."""
    if "session" not in await conn.columns("ledger"):  # a ledger from the first releases
        await conn.execute("ALTER TABLE ledger ADD COLUMN session TEXT")
    for statement in (
        "CREATE TABLE session_events (ts {real} NOT NULL, tenant TEXT NOT NULL, session TEXT NOT NULL, request_id TEXT, "
        "kind TEXT NOT NULL, call_id TEXT, name TEXT, content TEXT)",
        "CREATE INDEX session_events_session ON session_events (session, tenant, ts)",
        "CREATE INDEX ledger_session ON ledger (session, tenant, ts)",
    ):
        await conn.execute(ddl(statement, dialect))


async def _v6(conn: Connection, dialect: str) -> None:
    """Spend per tenant, key and day, kept with every ledger write: startup and budget reloads read it, not the whole ledger."""
    await conn.execute(ddl(
        "CREATE TABLE spend_daily (tenant TEXT NOT NULL, api_key TEXT NOT NULL, day TEXT NOT NULL, cost_usd {real} NOT NULL, "
        "PRIMARY KEY (tenant, api_key, day))", dialect,
    ))
    key = "COALESCE(api_key, '')" if "api_key" in await conn.columns("ledger") else "''"  # the first releases had no key column
    await conn.execute(  # the ledger written before this version, once
        f"INSERT INTO spend_daily (tenant, api_key, day, cost_usd) SELECT COALESCE(tenant, ''), {key}, day, SUM(COALESCE(cost_usd, 0)) "
        f"FROM ledger GROUP BY COALESCE(tenant, ''), {key}, day"
    )


async def _v7(conn: Connection, dialect: str) -> None:
    """The answering attempt's own time (start to last chunk): what the planner fits remote deployments' speed from."""
    await conn.execute(ddl("ALTER TABLE ledger ADD COLUMN upstream_ms {real}", dialect))


MIGRATIONS = (
    Migration(1, "tenants, keys, files, batches, batch lines, ledger", _v1),
    Migration(2, "batch and line leases; file contents in the database", _v2),
    Migration(3, "ledger: cache outcome and saved cost", _v3),
    Migration(4, "stored Responses API conversations", _v4),
    Migration(5, "session tool calls and results; ledger rows by session", _v5),
    Migration(6, "spend per tenant, key and day, kept with the ledger", _v6),
    Migration(7, "ledger: the answering attempt's own time", _v7),
)
LATEST = MIGRATIONS[-1].version


class SchemaTooNew(Exception):
    """The database was migrated by a newer modelyard than this one."""


async def migrate(db: Database, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Bring the schema up to date; the versions applied now (empty when it already was)."""
    known = migrations[-1].version

    async def body(conn: Connection) -> list[int]:
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at TEXT NOT NULL, description TEXT)")
        row = await conn.fetchone("SELECT MAX(version) AS version FROM schema_version")
        current = int(row["version"]) if row and row["version"] is not None else 0
        if current > known:
            raise SchemaTooNew(
                f"the database's schema is version {current}, and this modelyard knows only up to {known}: "
                "upgrade this replica (a newer one has migrated the database)"
            )
        applied = []
        for migration in migrations:
            if migration.version > current:
                await migration.apply(conn, db.dialect)
                await conn.execute(
                    "INSERT INTO schema_version (version, applied_at, description) VALUES (?, ?, ?)",
                    (migration.version, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), migration.description),
                )
                applied.append(migration.version)
        return applied

    return await db.migration_lock(body)


async def schema_version(db: Database) -> int:
    """The version the database holds (0 before any migration)."""
    if "version" not in await db.columns("schema_version"):
        return 0
    row = await db.fetchone("SELECT MAX(version) AS version FROM schema_version")
    return int(row["version"]) if row and row["version"] is not None else 0
