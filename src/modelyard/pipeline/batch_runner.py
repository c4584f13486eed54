"""The batch runner: any replica runs any job, a leased slice of lines at a time.

Every replica that shares the store runs one :class:`BatchRunner`. Each step it
looks at the active jobs and, for each, takes what it can lease:

- a job being validated, cancelled, finalized or expired: the job's own lease,
  so one replica parses the input file or writes the output files;
- a job in progress: up to ``concurrency`` pending lines no live lease holds.

It renews its leases while the lines run (every third of the lease), and a
line's answer is committed only while the line is still pending, so a replica
that dies loses its lines at lease expiry to another replica and every line is
answered exactly once. A job is finalized (completed, cancelled or expired)
only when no line holds a live lease, so lines already running on any replica
finish first. Cancelling is a status in the store, so it works from any
replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from modelyard.pipeline.batches import BatchOwner, LineExecutor, parse_line
from modelyard.store.store import Store, new_id

log = logging.getLogger("modelyard.batches")

MAX_LINE_TRIES = 5
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
# A job in these states is closed by one replica, once no line is running anywhere: (final status, its time column).
CLOSING = {"cancelling": ("cancelled", "cancelled_at"), "finalizing": ("completed", "completed_at"), "in_progress": ("expired", "expired_at")}


def replica_name() -> str:
    """This process's name in lease columns: readable, and unique across restarts."""
    return f"{os.uname().nodename}-{os.getpid()}-{new_id('')[:6]}"


class BatchRunner:
    """Runs leased batch work for one replica."""

    def __init__(
        self, store: Store, execute: LineExecutor, concurrency: int, lease_s: float = 10.0,
        replica: str | None = None, clock: Callable[[], float] = time.time, poll_s: float = 1.0,
    ) -> None:
        self.store = store
        self.execute = execute
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.replica = replica or replica_name()
        self.clock = clock
        self.poll_s = poll_s
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop(), name="batch-runner")

    async def aclose(self) -> None:
        """Stop, and give back the lines this replica was answering so another takes them at once."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            try:
                await self.store.release_owner(self.replica)
            except Exception:  # the store is gone too: the leases expire instead
                log.warning("could not give back batch leases at shutdown; they expire in %.0fs", self.lease_s, exc_info=True)

    async def _loop(self) -> None:
        while True:
            try:
                busy = await self.step()
            except Exception:  # a broken batch (or a store hiccup) must not stop the others
                log.exception("batch runner step failed")
                busy = False
            if not busy:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), self.poll_s)
                self.wakeup.clear()

    async def step(self) -> bool:
        """Advance every active batch once; True when there is more to do right away."""
        busy = False
        for row in await self.store.batches_in(ACTIVE):
            status, now = row["status"], self.clock()
            if status == "validating":
                if await self.store.claim_batch(row["id"], self.replica, now, self.lease_s):
                    await self._validate(row)
                    busy = True
            elif status != "in_progress" or now > row["expires_at"]:
                await self._close(row)
            else:
                busy = await self._run_some(row) or busy
        return busy

    async def _close(self, row: dict[str, Any]) -> None:
        now = self.clock()
        if await self.store.live_leases(row["id"], now) or not await self.store.claim_batch(row["id"], self.replica, now, self.lease_s):
            return  # lines still running somewhere, or another replica is closing it
        status, when = CLOSING[row["status"]]
        await self._finalize(row, status, when)

    async def _validate(self, row: dict[str, Any]) -> None:
        try:
            text = (await self.store.file_content(row["input_file_id"])).decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            await self._fail(row, "invalid_file", f"cannot read the input file: {exc}")
            return
        seen: set[str] = set()
        lines = []
        for number, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            custom_id, request, problem = parse_line(number, raw, row["endpoint"], seen)
            lines.append((number, custom_id, request, "error" if problem else "pending", json.dumps({"code": "invalid_request", "message": problem, "line": number}) if problem else None))
        if not lines:
            await self._fail(row, "empty_file", "the input file holds no request lines")
            return
        await self.store.start_batch(row["id"], lines)

    async def _fail(self, row: dict[str, Any], code: str, message: str) -> None:
        errors = {"object": "list", "data": [{"code": code, "message": message, "param": None, "line": None}]}
        await self.store.set_status(row["id"], "failed", "failed_at", expected=("validating",), errors=json.dumps(errors))

    async def _run_some(self, row: dict[str, Any]) -> bool:
        lines = await self.store.claim_lines(row["id"], self.replica, self.clock(), self.lease_s, self.concurrency)
        if not lines:
            if (await self.store.line_counts(row["id"])).get("pending", 0) == 0:
                await self.store.set_status(row["id"], "finalizing", "finalizing_at", expected=("in_progress",))
                return True
            return False  # the rest are leased by other replicas
        running = {line["line_no"] for line in lines}
        renewer = asyncio.create_task(self._renew(row["id"], running), name="batch-lease-renewal")
        try:
            await asyncio.gather(*(self._run_line(row, line, running) for line in lines))
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        return True

    async def _renew(self, batch_id: str, running: set[int]) -> None:
        while running:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.store.renew_lines(batch_id, self.replica, sorted(running), self.clock(), self.lease_s)
            except Exception:  # the store is briefly away: the next renewal may still be in time
                log.warning("could not renew batch line leases", exc_info=True)

    async def _run_line(self, row: dict[str, Any], line: dict[str, Any], running: set[int]) -> None:
        batch_id, line_no = row["id"], line["line_no"]
        try:
            owner = BatchOwner(row["tenant"], row.get("api_key"))
            result = await self.execute(row["endpoint"], json.loads(line["request"]), owner)
            if result.wait_s > 0:
                await asyncio.sleep(min(60.0, result.wait_s))
                await self.store.release_line(batch_id, line_no, self.replica)
                return  # stays pending, its tries untouched; tried again on a later step
            if result.retryable and await self.store.bump_tries(batch_id, line_no) < MAX_LINE_TRIES:
                await asyncio.sleep(min(30.0, result.retry_after_s))
                await self.store.release_line(batch_id, line_no, self.replica)
                return  # stays pending; tried again on a later step
            response = {"status_code": result.status, "request_id": new_id("req_"), "body": result.body}
            await self.store.finish_line(batch_id, line_no, "done" if result.status == 200 else "error", response, None)
        finally:
            running.discard(line_no)

    async def _finalize(self, row: dict[str, Any], status: str, when: str) -> None:
        outputs, errors = [], []
        for line in await self.store.all_lines(row["id"]):
            entry_id = f"batch_req_{row['id'][6:]}_{line['line_no']}"
            response = json.loads(line["response"]) if line["response"] else None
            error = json.loads(line["error"]) if line["error"] else None
            if line["state"] == "done":
                outputs.append({"id": entry_id, "custom_id": line["custom_id"], "response": response, "error": None})
            elif line["state"] == "error":
                errors.append({"id": entry_id, "custom_id": line["custom_id"], "response": response, "error": error})
        extra: dict[str, Any] = {}
        if outputs:
            extra["output_file_id"] = (await self.store.add_file(row["tenant"], "batch_output", f"{row['id']}_output.jsonl", _jsonl(outputs)))["id"]
        if errors:
            extra["error_file_id"] = (await self.store.add_file(row["tenant"], "batch_output", f"{row['id']}_error.jsonl", _jsonl(errors)))["id"]
        await self.store.set_status(row["id"], status, when, expected=(row["status"],), **extra)


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()
