"""Files and batch jobs in the database, with the leases that let any replica run any job.

Every write that must not be lost is one statement or one transaction: a batch
and all its parsed lines are created together, and a line's answer is recorded
together with its state, so a crash at any point leaves either the old or the
new state, never half of one.

Leases: a replica claims a batch (to validate or finalize it) or a slice of its
pending lines by writing its name and an expiry; it renews them while it works.
A replica that dies stops renewing, and once its leases expire another replica
claims the same work. A line's answer is committed only while the line is still
pending, so whichever replica commits first wins and every line is answered
exactly once. Times are passed in (``now``), so leases are tested with a
hand-driven clock.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelyard.store.database import Connection, Database, open_database
from modelyard.store.migrations import migrate

LINE_COLUMNS = "batch_id, line_no, custom_id, request, state, response, error, tries, lease_owner, lease_expires"


def new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


class Store:
    """Files and batches over a :class:`Database` (SQLite or PostgreSQL)."""

    def __init__(self, db: Database, legacy_files_dir: Path | None = None) -> None:
        self.db = db
        # Before schema version 2 file bodies were files in the data directory; they are still read from there.
        self.legacy_files_dir = legacy_files_dir

    async def aclose(self) -> None:
        await self.db.aclose()

    # -- files -------------------------------------------------------------------------------
    async def add_file(self, tenant: str, purpose: str, filename: str, content: bytes) -> dict[str, Any]:
        row = {"id": new_id("file-"), "tenant": tenant, "purpose": purpose, "filename": filename, "bytes": len(content), "created_at": int(time.time())}

        async def body(conn: Connection) -> None:
            await conn.execute("INSERT INTO file_contents (file_id, content) VALUES (?, ?)", (row["id"], content))
            await conn.execute(
                "INSERT INTO files (id, tenant, purpose, filename, bytes, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (row["id"], tenant, purpose, filename, len(content), row["created_at"]),
            )

        await self.db.transaction(body)
        return row

    async def get_file(self, tenant: str, file_id: str) -> dict[str, Any] | None:
        return await self.db.fetchone("SELECT * FROM files WHERE id = ? AND tenant = ? AND deleted = 0", (file_id, tenant))

    async def file_content(self, file_id: str) -> bytes:
        """A file's bytes; ``FileNotFoundError`` when it has none."""
        row = await self.db.fetchone("SELECT content FROM file_contents WHERE file_id = ?", (file_id,))
        if row is not None:
            return bytes(row["content"])
        if self.legacy_files_dir is not None:
            return await asyncio.to_thread((self.legacy_files_dir / f"{file_id}.jsonl").read_bytes)
        raise FileNotFoundError(f"no content stored for {file_id}")

    async def list_files(self, tenant: str, purpose: str | None, limit: int) -> list[dict[str, Any]]:
        query = "SELECT * FROM files WHERE tenant = ? AND deleted = 0" + (" AND purpose = ?" if purpose else "") + " ORDER BY created_at DESC, id LIMIT ?"
        return await self.db.fetch(query, (tenant, purpose, limit) if purpose else (tenant, limit))

    async def delete_file(self, tenant: str, file_id: str) -> bool:
        async def body(conn: Connection) -> bool:
            if not await conn.execute("UPDATE files SET deleted = 1 WHERE id = ? AND tenant = ? AND deleted = 0", (file_id, tenant)):
                return False
            await conn.execute("DELETE FROM file_contents WHERE file_id = ?", (file_id,))
            return True

        deleted = await self.db.transaction(body)
        if deleted and self.legacy_files_dir is not None:
            await asyncio.to_thread((self.legacy_files_dir / f"{file_id}.jsonl").unlink, True)
        return deleted

    # -- batches -------------------------------------------------------------------------------
    async def save_response(self, response_id: str, tenant: str, conversation: str, now: float, ttl_s: float) -> None:
        """A Responses API conversation (input and output), for ``previous_response_id``; expired ones are removed on the way."""
        async def body(conn: Connection) -> None:
            await conn.execute("DELETE FROM responses WHERE expires_at <= ?", (now,))
            await conn.execute(
                "INSERT INTO responses (id, tenant, created_at, expires_at, conversation) VALUES (?, ?, ?, ?, ?)", (response_id, tenant, now, now + ttl_s, conversation),
            )

        await self.db.transaction(body)

    async def load_response(self, response_id: str, tenant: str, now: float) -> str | None:
        """A stored conversation of this tenant that has not expired, or None."""
        row = await self.db.fetchone("SELECT conversation FROM responses WHERE id = ? AND tenant = ? AND expires_at > ?", (response_id, tenant, now))
        return None if row is None else str(row["conversation"])

    async def add_batch(self, row: dict[str, Any]) -> None:
        columns = ("id", "tenant", "api_key", "input_file_id", "endpoint", "completion_window", "metadata", "status", "created_at", "expires_at")
        await self.db.execute(
            f"INSERT INTO batches ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})", tuple(row.get(c) for c in columns)
        )

    async def get_batch(self, tenant: str | None, batch_id: str) -> dict[str, Any] | None:
        if tenant is None:
            return await self.db.fetchone("SELECT * FROM batches WHERE id = ?", (batch_id,))
        return await self.db.fetchone("SELECT * FROM batches WHERE id = ? AND tenant = ?", (batch_id, tenant))

    async def list_batches(self, tenant: str, limit: int, after: str | None) -> list[dict[str, Any]]:
        if after:
            anchor = await self.db.fetchone("SELECT created_at FROM batches WHERE id = ?", (after,))
            if anchor is not None:
                return await self.db.fetch(
                    "SELECT * FROM batches WHERE tenant = ? AND (created_at < ? OR (created_at = ? AND id < ?)) ORDER BY created_at DESC, id DESC LIMIT ?",
                    (tenant, anchor["created_at"], anchor["created_at"], after, limit),
                )
        return await self.db.fetch("SELECT * FROM batches WHERE tenant = ? ORDER BY created_at DESC, id DESC LIMIT ?", (tenant, limit))

    async def batches_in(self, statuses: Sequence[str]) -> list[dict[str, Any]]:
        marks = ",".join("?" for _ in statuses)
        return await self.db.fetch(f"SELECT * FROM batches WHERE status IN ({marks}) ORDER BY created_at, id", tuple(statuses))

    async def set_status(self, batch_id: str, status: str, when_column: str | None, expected: Sequence[str] | None = None, **extra: Any) -> bool:
        """Move a batch to ``status`` (only from ``expected`` states, when given), stamping ``when_column``."""
        sets = ["status = ?"] + ([f"{when_column} = ?"] if when_column else []) + [f"{k} = ?" for k in extra]
        args: list[Any] = [status] + ([int(time.time())] if when_column else []) + list(extra.values()) + [batch_id]
        where = "id = ?"
        if expected:
            where += " AND status IN (" + ",".join("?" for _ in expected) + ")"
            args += list(expected)
        return bool(await self.db.execute(f"UPDATE batches SET {', '.join(sets)} WHERE {where}", args))

    async def start_batch(self, batch_id: str, lines: list[tuple[int, str | None, str | None, str, str | None]]) -> bool:
        """Insert every parsed line and move validating → in_progress in one transaction (False: it was no longer validating)."""

        async def body(conn: Connection) -> bool:
            if not await conn.execute(
                "UPDATE batches SET status = 'in_progress', in_progress_at = ?, lease_owner = NULL, lease_expires = NULL WHERE id = ? AND status = 'validating'",
                (int(time.time()), batch_id),
            ):
                return False
            await conn.execute("DELETE FROM batch_lines WHERE batch_id = ?", (batch_id,))
            await conn.insert_many(
                "batch_lines", ("batch_id", "line_no", "custom_id", "request", "state", "error"),
                [(batch_id, n, cid, req, state, err) for n, cid, req, state, err in lines],
            )
            return True

        return await self.db.transaction(body)

    # -- leases --------------------------------------------------------------------------------
    async def claim_batch(self, batch_id: str, owner: str, now: float, ttl_s: float) -> bool:
        """Take (or renew) the batch-level lease, used to validate or finalize it; False while another holds it."""
        return bool(await self.db.execute(
            "UPDATE batches SET lease_owner = ?, lease_expires = ? WHERE id = ? AND (lease_owner IS NULL OR lease_owner = ? OR lease_expires < ?)",
            (owner, now + ttl_s, batch_id, owner, now),
        ))

    async def release_batch(self, batch_id: str, owner: str) -> None:
        await self.db.execute("UPDATE batches SET lease_owner = NULL, lease_expires = NULL WHERE id = ? AND lease_owner = ?", (batch_id, owner))

    async def claim_lines(self, batch_id: str, owner: str, now: float, ttl_s: float, limit: int) -> list[dict[str, Any]]:
        """Lease up to ``limit`` pending lines no live lease holds, lowest line numbers first."""
        skip_locked = " FOR UPDATE SKIP LOCKED" if self.db.dialect == "postgresql" else ""
        rows = await self.db.fetch(
            "UPDATE batch_lines SET lease_owner = ?, lease_expires = ? WHERE (batch_id, line_no) IN ("
            "SELECT batch_id, line_no FROM batch_lines WHERE batch_id = ? AND state = 'pending' AND (lease_expires IS NULL OR lease_expires < ?) "
            f"ORDER BY line_no LIMIT ?{skip_locked}) RETURNING {LINE_COLUMNS}",
            (owner, now + ttl_s, batch_id, now, limit),
        )
        return sorted(rows, key=lambda r: r["line_no"])

    async def renew_lines(self, batch_id: str, owner: str, line_nos: Sequence[int], now: float, ttl_s: float) -> int:
        """Extend this owner's leases on lines still pending; how many it still holds."""
        if not line_nos:
            return 0
        marks = ",".join("?" for _ in line_nos)
        return await self.db.execute(
            f"UPDATE batch_lines SET lease_expires = ? WHERE batch_id = ? AND lease_owner = ? AND state = 'pending' AND line_no IN ({marks})",
            (now + ttl_s, batch_id, owner, *line_nos),
        )

    async def release_line(self, batch_id: str, line_no: int, owner: str) -> None:
        """Give a line back (it stays pending) so any replica may try it again."""
        await self.db.execute(
            "UPDATE batch_lines SET lease_owner = NULL, lease_expires = NULL WHERE batch_id = ? AND line_no = ? AND lease_owner = ?",
            (batch_id, line_no, owner),
        )

    async def release_owner(self, owner: str) -> None:
        """Give back every lease ``owner`` holds (a replica shutting down)."""
        await self.db.execute("UPDATE batch_lines SET lease_owner = NULL, lease_expires = NULL WHERE lease_owner = ? AND state = 'pending'", (owner,))
        await self.db.execute("UPDATE batches SET lease_owner = NULL, lease_expires = NULL WHERE lease_owner = ?", (owner,))

    async def live_leases(self, batch_id: str, now: float) -> int:
        """Pending lines some replica is working on right now."""
        row = await self.db.fetchone(
            "SELECT COUNT(*) AS n FROM batch_lines WHERE batch_id = ? AND state = 'pending' AND lease_expires >= ?", (batch_id, now)
        )
        return int(row["n"]) if row else 0

    # -- lines ---------------------------------------------------------------------------------
    async def pending_lines(self, batch_id: str, limit: int) -> list[dict[str, Any]]:
        return await self.db.fetch(
            f"SELECT {LINE_COLUMNS} FROM batch_lines WHERE batch_id = ? AND state = 'pending' ORDER BY line_no LIMIT ?", (batch_id, limit)
        )

    async def finish_line(self, batch_id: str, line_no: int, state: str, response: dict[str, Any] | None, error: dict[str, Any] | None) -> bool:
        """Record a line's outcome once: only a pending line can change."""
        return bool(await self.db.execute(
            "UPDATE batch_lines SET state = ?, response = ?, error = ?, lease_owner = NULL, lease_expires = NULL "
            "WHERE batch_id = ? AND line_no = ? AND state = 'pending'",
            (state, json.dumps(response) if response is not None else None, json.dumps(error) if error is not None else None, batch_id, line_no),
        ))

    async def bump_tries(self, batch_id: str, line_no: int) -> int:
        rows = await self.db.fetch(
            "UPDATE batch_lines SET tries = tries + 1 WHERE batch_id = ? AND line_no = ? RETURNING tries", (batch_id, line_no)
        )
        return int(rows[0]["tries"]) if rows else 0

    async def line_counts(self, batch_id: str) -> dict[str, int]:
        rows = await self.db.fetch("SELECT state, COUNT(*) AS n FROM batch_lines WHERE batch_id = ? GROUP BY state", (batch_id,))
        return {r["state"]: int(r["n"]) for r in rows}

    async def all_lines(self, batch_id: str) -> list[dict[str, Any]]:
        return await self.db.fetch(f"SELECT {LINE_COLUMNS} FROM batch_lines WHERE batch_id = ? ORDER BY line_no", (batch_id,))


async def open_store(data_dir: Path, database_url: str | None) -> Store:
    """The store for ``serve`` and the CLI: the database opened and migrated to this version's schema."""
    db = await open_database(data_dir, database_url)
    try:
        await migrate(db)
    except BaseException:
        await db.aclose()
        raise
    return Store(db, legacy_files_dir=data_dir / "files" if db.dialect == "sqlite" else None)
