"""The embedded store: one SQLite file (WAL) in the data directory, plus file bodies on disk.

Every write that must not be lost is one transaction: a batch and all its
parsed lines are created together, and a line's answer is recorded together
with its state, so a crash at any point leaves either the old or the new
state, never half of one.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, purpose TEXT NOT NULL, filename TEXT NOT NULL,
    bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, deleted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, input_file_id TEXT NOT NULL, endpoint TEXT NOT NULL,
    completion_window TEXT NOT NULL, metadata TEXT, status TEXT NOT NULL, created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL, in_progress_at INTEGER, finalizing_at INTEGER, completed_at INTEGER,
    failed_at INTEGER, expired_at INTEGER, cancelling_at INTEGER, cancelled_at INTEGER,
    output_file_id TEXT, error_file_id TEXT, errors TEXT, api_key TEXT
);
CREATE TABLE IF NOT EXISTS batch_lines (
    batch_id TEXT NOT NULL, line_no INTEGER NOT NULL, custom_id TEXT, request TEXT,
    state TEXT NOT NULL, response TEXT, error TEXT, tries INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, line_no)
);
CREATE INDEX IF NOT EXISTS batch_lines_pending ON batch_lines (batch_id, state);
"""


# Columns added after a table first shipped: (table, column, type). Old data directories gain them at startup.
ADDED_COLUMNS = (("batches", "api_key", "TEXT"),)


def _add_missing_columns(db: sqlite3.Connection) -> None:
    for table, column, kind in ADDED_COLUMNS:
        if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


class Store:
    """SQLite on one connection guarded by a lock; calls run in a thread off the event loop."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.files_dir = data_dir / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(data_dir / "modelyard.db", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        _add_missing_columns(self._db)
        self._lock = threading.Lock()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                return fn(self._db)

        return await asyncio.to_thread(locked)

    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def body(db: sqlite3.Connection) -> T:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        return await self.run(body)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- files -------------------------------------------------------------------------------
    def file_path(self, file_id: str) -> Path:
        return self.files_dir / f"{file_id}.jsonl"

    async def add_file(self, tenant: str, purpose: str, filename: str, content: bytes) -> dict[str, Any]:
        file_id = new_id("file-")
        path = self.file_path(file_id)
        partial = path.with_suffix(".partial")
        await asyncio.to_thread(partial.write_bytes, content)
        await asyncio.to_thread(partial.replace, path)
        row = {"id": file_id, "tenant": tenant, "purpose": purpose, "filename": filename, "bytes": len(content), "created_at": int(time.time())}
        await self.run(lambda db: db.execute(
            "INSERT INTO files (id, tenant, purpose, filename, bytes, created_at) VALUES (:id, :tenant, :purpose, :filename, :bytes, :created_at)", row
        ))
        return row

    async def get_file(self, tenant: str, file_id: str) -> dict[str, Any] | None:
        row = await self.run(lambda db: db.execute("SELECT * FROM files WHERE id = ? AND tenant = ? AND deleted = 0", (file_id, tenant)).fetchone())
        return dict(row) if row else None

    async def list_files(self, tenant: str, purpose: str | None, limit: int) -> list[dict[str, Any]]:
        query = "SELECT * FROM files WHERE tenant = ? AND deleted = 0" + (" AND purpose = ?" if purpose else "") + " ORDER BY created_at DESC, id LIMIT ?"
        args: Sequence[Any] = (tenant, purpose, limit) if purpose else (tenant, limit)
        rows = await self.run(lambda db: db.execute(query, args).fetchall())
        return [dict(r) for r in rows]

    async def delete_file(self, tenant: str, file_id: str) -> bool:
        cursor = await self.run(lambda db: db.execute("UPDATE files SET deleted = 1 WHERE id = ? AND tenant = ? AND deleted = 0", (file_id, tenant)))
        if cursor.rowcount:
            await asyncio.to_thread(self.file_path(file_id).unlink, True)
        return bool(cursor.rowcount)

    # -- batches -------------------------------------------------------------------------------
    async def add_batch(self, row: dict[str, Any]) -> None:
        await self.run(lambda db: db.execute(
            "INSERT INTO batches (id, tenant, api_key, input_file_id, endpoint, completion_window, metadata, status, created_at, expires_at) "
            "VALUES (:id, :tenant, :api_key, :input_file_id, :endpoint, :completion_window, :metadata, :status, :created_at, :expires_at)", row
        ))

    async def get_batch(self, tenant: str | None, batch_id: str) -> dict[str, Any] | None:
        if tenant is None:
            row = await self.run(lambda db: db.execute("SELECT * FROM batches WHERE id = ?", (batch_id,)).fetchone())
        else:
            row = await self.run(lambda db: db.execute("SELECT * FROM batches WHERE id = ? AND tenant = ?", (batch_id, tenant)).fetchone())
        return dict(row) if row else None

    async def list_batches(self, tenant: str, limit: int, after: str | None) -> list[dict[str, Any]]:
        def query(db: sqlite3.Connection) -> list[sqlite3.Row]:
            if after:
                anchor = db.execute("SELECT created_at FROM batches WHERE id = ?", (after,)).fetchone()
                if anchor is not None:
                    return db.execute(
                        "SELECT * FROM batches WHERE tenant = ? AND (created_at < ? OR (created_at = ? AND id < ?)) ORDER BY created_at DESC, id DESC LIMIT ?",
                        (tenant, anchor[0], anchor[0], after, limit),
                    ).fetchall()
            return db.execute("SELECT * FROM batches WHERE tenant = ? ORDER BY created_at DESC, id DESC LIMIT ?", (tenant, limit)).fetchall()

        return [dict(r) for r in await self.run(query)]

    async def batches_in(self, statuses: Sequence[str]) -> list[dict[str, Any]]:
        marks = ",".join("?" for _ in statuses)
        rows = await self.run(lambda db: db.execute(f"SELECT * FROM batches WHERE status IN ({marks}) ORDER BY created_at", tuple(statuses)).fetchall())
        return [dict(r) for r in rows]

    async def set_status(self, batch_id: str, status: str, when_column: str | None, expected: Sequence[str] | None = None, **extra: Any) -> bool:
        """Move a batch to ``status`` (only from ``expected`` states, when given), stamping ``when_column``."""
        sets = ["status = :status"] + ([f"{when_column} = :now"] if when_column else []) + [f"{k} = :{k}" for k in extra]
        where = "id = :id" + (" AND status IN (" + ",".join(f":e{i}" for i in range(len(expected))) + ")" if expected else "")
        params = {"status": status, "now": int(time.time()), "id": batch_id, **extra, **{f"e{i}": e for i, e in enumerate(expected or ())}}
        cursor = await self.run(lambda db: db.execute(f"UPDATE batches SET {', '.join(sets)} WHERE {where}", params))
        return bool(cursor.rowcount)

    async def start_batch(self, batch_id: str, lines: list[tuple[int, str | None, str | None, str, str | None]]) -> None:
        """Insert every parsed line and move validating → in_progress in one transaction."""

        def body(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM batch_lines WHERE batch_id = ?", (batch_id,))
            db.executemany(
                "INSERT INTO batch_lines (batch_id, line_no, custom_id, request, state, error) VALUES (?, ?, ?, ?, ?, ?)",
                [(batch_id, n, cid, req, state, err) for n, cid, req, state, err in lines],
            )
            db.execute("UPDATE batches SET status = 'in_progress', in_progress_at = ? WHERE id = ? AND status = 'validating'", (int(time.time()), batch_id))

        await self.transaction(body)

    async def pending_lines(self, batch_id: str, limit: int) -> list[dict[str, Any]]:
        rows = await self.run(lambda db: db.execute(
            "SELECT * FROM batch_lines WHERE batch_id = ? AND state = 'pending' ORDER BY line_no LIMIT ?", (batch_id, limit)
        ).fetchall())
        return [dict(r) for r in rows]

    async def finish_line(self, batch_id: str, line_no: int, state: str, response: dict[str, Any] | None, error: dict[str, Any] | None) -> bool:
        """Record a line's outcome once: only a pending line can change."""
        cursor = await self.run(lambda db: db.execute(
            "UPDATE batch_lines SET state = ?, response = ?, error = ? WHERE batch_id = ? AND line_no = ? AND state = 'pending'",
            (state, json.dumps(response) if response is not None else None, json.dumps(error) if error is not None else None, batch_id, line_no),
        ))
        return bool(cursor.rowcount)

    async def bump_tries(self, batch_id: str, line_no: int) -> int:
        def body(db: sqlite3.Connection) -> int:
            db.execute("UPDATE batch_lines SET tries = tries + 1 WHERE batch_id = ? AND line_no = ?", (batch_id, line_no))
            return int(db.execute("SELECT tries FROM batch_lines WHERE batch_id = ? AND line_no = ?", (batch_id, line_no)).fetchone()[0])

        return await self.run(body)

    async def line_counts(self, batch_id: str) -> dict[str, int]:
        rows = await self.run(lambda db: db.execute("SELECT state, COUNT(*) FROM batch_lines WHERE batch_id = ? GROUP BY state", (batch_id,)).fetchall())
        return {r[0]: r[1] for r in rows}

    async def all_lines(self, batch_id: str) -> list[dict[str, Any]]:
        rows = await self.run(lambda db: db.execute("SELECT * FROM batch_lines WHERE batch_id = ? ORDER BY line_no", (batch_id,)).fetchall())
        return [dict(r) for r in rows]
