"""The usage ledger: one row per request, written in batches off the request path.

Rows go to an in-memory buffer; a background task writes them every
``flush_s`` in one transaction. ``aclose`` writes whatever is left, so a
graceful shutdown (SIGTERM) loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from typing import Any

from modelyard.store.sqlite import Store

log = logging.getLogger("modelyard.ledger")

COLUMNS = (
    "ts", "day", "request_id", "endpoint", "tenant", "api_key", "workload", "session", "requested_model", "served_model",
    "deployment", "route", "attempts", "prompt_tokens", "completion_tokens", "cost_usd", "revenue_usd", "latency_ms", "ttft_ms", "status", "error_type",
)
SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, day TEXT NOT NULL, request_id TEXT, endpoint TEXT,
    tenant TEXT, api_key TEXT, workload TEXT, session TEXT, requested_model TEXT, served_model TEXT, deployment TEXT,
    route TEXT, attempts INTEGER, prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL, revenue_usd REAL,
    latency_ms REAL, ttft_ms REAL, status INTEGER, error_type TEXT
);
CREATE INDEX IF NOT EXISTS ledger_day ON ledger (day, tenant);
"""
GROUPABLE = ("tenant", "api_key", "requested_model", "served_model", "deployment", "workload", "day", "endpoint")


class LedgerWriter:
    def __init__(self, store: Store, flush_s: float = 0.25) -> None:
        self.store = store
        self.flush_s = flush_s
        self.buffer: list[tuple[Any, ...]] = []
        self.task: asyncio.Task[None] | None = None
        self.written = 0

    async def start(self) -> None:
        await self.store.run(ensure_schema)
        self.task = asyncio.create_task(self._loop(), name="ledger-writer")

    def record(self, row: dict[str, Any]) -> None:
        """Queue one row (no I/O on the request path)."""
        self.buffer.append(tuple(row.get(c) for c in COLUMNS))

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except sqlite3.Error:
                log.exception("ledger flush failed; rows are kept for the next try")

    async def flush(self) -> None:
        if not self.buffer:
            return
        rows, self.buffer = self.buffer, []
        marks = ", ".join("?" for _ in COLUMNS)
        try:
            await self.store.transaction(lambda db: db.executemany(f"INSERT INTO ledger ({', '.join(COLUMNS)}) VALUES ({marks})", rows))
        except BaseException:
            self.buffer[:0] = rows  # keep them: nothing accepted is lost
            raise
        self.written += len(rows)

    async def aclose(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.flush()


def ensure_schema(db: sqlite3.Connection) -> None:
    db.executescript(SCHEMA)
    have = {row[1] for row in db.execute("PRAGMA table_info(ledger)")}
    if "revenue_usd" not in have:  # ledgers written before price plans existed
        db.execute("ALTER TABLE ledger ADD COLUMN revenue_usd REAL")


async def usage(store: Store, group_by: tuple[str, ...], since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
    """Aggregates per ``group_by`` columns (e.g. tenant, served_model, day)."""
    bad = [g for g in group_by if g not in GROUPABLE]
    if bad:
        raise ValueError(f"cannot group by {', '.join(bad)} (choose from {', '.join(GROUPABLE)})")
    where, args = [], []
    if since:
        where.append("day >= ?")
        args.append(since)
    if until:
        where.append("day <= ?")
        args.append(until)
    keys = ", ".join(group_by)
    query = (
        f"SELECT {keys + ', ' if keys else ''}COUNT(*) AS requests, SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS errors, "
        "SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens, SUM(attempts) AS attempts, "
        "ROUND(SUM(cost_usd), 8) AS cost_usd, ROUND(SUM(COALESCE(revenue_usd, 0)), 8) AS revenue_usd, "
        "ROUND(SUM(COALESCE(revenue_usd, 0)) - SUM(cost_usd), 8) AS margin_usd, ROUND(AVG(latency_ms), 2) AS avg_latency_ms FROM ledger"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + (f" GROUP BY {keys} ORDER BY {keys}" if keys else "")
    )
    await store.run(ensure_schema)
    rows = await store.run(lambda db: db.execute(query, args).fetchall())
    return [dict(r) for r in rows]
