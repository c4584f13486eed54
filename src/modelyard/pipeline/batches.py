"""The OpenAI Batch API's engine: validate input files, run lines in the ``batch``
class, survive crashes, and write output and error files.

Statuses: validating → in_progress → finalizing → completed, or failed,
cancelling → cancelled, expired. Jobs are run by :mod:`batch_runner`, on
whichever replica leases them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelyard.errors import InvalidRequest, NotFound
from modelyard.store.store import Store, new_id

if TYPE_CHECKING:
    from modelyard.pipeline.batch_runner import BatchRunner

log = logging.getLogger("modelyard.batches")

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
WINDOWS = {"24h": 24 * 3600}


@dataclass(frozen=True, slots=True)
class BatchOwner:
    """Who submitted a batch: its lines run as this tenant and API key (None: the master key or open mode)."""

    tenant: str
    key_id: str | None = None


@dataclass(frozen=True, slots=True)
class LineResult:
    """One line's answer (``status`` 200) or error, and whether trying again later may change it.

    ``retryable``: try again after ``retry_after_s``, spending one of the line's tries (overload,
    upstream failures). ``wait_s`` > 0: try again after that long without spending a try (a rate
    limit: the line waits its turn, as a throttled client would).
    """

    status: int
    body: dict[str, Any]
    retryable: bool = False
    retry_after_s: float = 1.0
    wait_s: float = 0.0


LineExecutor = Callable[[str, dict[str, Any], BatchOwner], Awaitable[LineResult]]  # endpoint, body, owner


def batch_object(row: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
    """A stored batch in OpenAI's shape."""
    total = sum(counts.values())
    return {
        "id": row["id"], "object": "batch", "endpoint": row["endpoint"],
        "errors": json.loads(row["errors"]) if row["errors"] else None,
        "input_file_id": row["input_file_id"], "completion_window": row["completion_window"], "status": row["status"],
        "output_file_id": row["output_file_id"], "error_file_id": row["error_file_id"],
        **{k: row[k] for k in ("created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at")},
        "request_counts": {"total": total, "completed": counts.get("done", 0), "failed": counts.get("error", 0)},
        "metadata": json.loads(row["metadata"]) if row["metadata"] else None,
    }


def file_object(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
        "filename": row["filename"], "purpose": row["purpose"], "status": "processed", "status_details": None,
    }


def _metadata(value: Any) -> dict[str, str] | None:
    """OpenAI's rule: at most 16 pairs, keys up to 64 characters, string values up to 512."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > 16 or not all(isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in value.items()):
        raise InvalidRequest("'metadata' must be an object of at most 16 keys (up to 64 characters) with string values (up to 512)", param="metadata")
    return value


def parse_line(number: int, raw: str, endpoint: str, seen: set[str]) -> tuple[str | None, str | None, str | None]:
    """(custom_id, request JSON, problem) for one input line; a problem makes it an error line."""
    try:
        item = json.loads(raw)
    except ValueError as exc:
        return None, None, f"line {number}: not valid JSON ({exc})"
    if not isinstance(item, dict):
        return None, None, f"line {number}: expected a JSON object"
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return None, None, f"line {number}: 'custom_id' must be a non-empty string"
    if custom_id in seen:
        return custom_id, None, f"line {number}: duplicate custom_id {custom_id!r}"
    seen.add(custom_id)
    if item.get("method", "POST") != "POST":
        return custom_id, None, f"line {number}: 'method' must be POST"
    if item.get("url") != endpoint:
        return custom_id, None, f"line {number}: 'url' must be {endpoint!r} (the batch's endpoint), got {item.get('url')!r}"
    body = item.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return custom_id, None, f"line {number}: 'body' must be an object with a 'model'"
    return custom_id, json.dumps(body), None


class BatchService:
    """Files and batches for the API; :class:`BatchRunner` runs the jobs."""

    def __init__(self, store: Store, runner: BatchRunner, max_file_bytes: int) -> None:
        self.store = store
        self.runner = runner
        self.max_file_bytes = max_file_bytes

    # -- files ---------------------------------------------------------------------------------
    async def upload(self, tenant: str, purpose: str, filename: str, content: bytes) -> dict[str, Any]:
        if purpose != "batch":
            raise InvalidRequest("'purpose' must be 'batch'", param="purpose")
        if not content.strip():
            raise InvalidRequest("the file is empty", param="file")
        try:
            content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"the file is not UTF-8 text (byte {exc.start}); expected JSONL", param="file") from None
        return file_object(await self.store.add_file(tenant, purpose, filename, content))

    async def file(self, tenant: str, file_id: str) -> dict[str, Any]:
        row = await self.store.get_file(tenant, file_id)
        if row is None:
            raise NotFound(f"No such file: {file_id}", param="file_id")
        return row

    async def content(self, tenant: str, file_id: str) -> bytes:
        await self.file(tenant, file_id)
        return await self.store.file_content(file_id)

    async def delete(self, tenant: str, file_id: str) -> dict[str, Any]:
        if not await self.store.delete_file(tenant, file_id):
            raise NotFound(f"No such file: {file_id}", param="file_id")
        return {"id": file_id, "object": "file", "deleted": True}

    # -- batches -------------------------------------------------------------------------------
    async def create(self, owner: BatchOwner, body: dict[str, Any]) -> dict[str, Any]:
        tenant = owner.tenant
        input_file_id = body.get("input_file_id")
        if not isinstance(input_file_id, str):
            raise InvalidRequest("'input_file_id' is required", param="input_file_id")
        endpoint = body.get("endpoint")
        if endpoint not in ENDPOINTS:
            raise InvalidRequest(f"'endpoint' must be one of {', '.join(ENDPOINTS)}", param="endpoint")
        window = body.get("completion_window")
        if not isinstance(window, str) or window not in WINDOWS:
            raise InvalidRequest("'completion_window' must be '24h'", param="completion_window")
        metadata = _metadata(body.get("metadata"))
        source = await self.store.get_file(tenant, input_file_id)
        if source is None:
            raise NotFound(f"No such file: {input_file_id}", param="input_file_id")
        if source["purpose"] != "batch":
            raise InvalidRequest(f"file {input_file_id} was not uploaded with purpose 'batch'", param="input_file_id")
        now = int(time.time())
        row = {
            "id": new_id("batch_"), "tenant": tenant, "api_key": owner.key_id, "input_file_id": input_file_id, "endpoint": endpoint,
            "completion_window": window, "metadata": json.dumps(metadata) if metadata else None, "status": "validating",
            "created_at": now, "expires_at": now + WINDOWS[str(window)],
        }
        await self.store.add_batch(row)
        self.runner.wakeup.set()
        return await self.get(tenant, row["id"])

    async def get(self, tenant: str, batch_id: str) -> dict[str, Any]:
        row = await self.store.get_batch(tenant, batch_id)
        if row is None:
            raise NotFound(f"No such batch: {batch_id}", param="batch_id")
        return batch_object(row, await self.store.line_counts(batch_id))

    async def list(self, tenant: str, limit: int, after: str | None) -> dict[str, Any]:
        rows = await self.store.list_batches(tenant, limit + 1, after)
        data = [batch_object(r, await self.store.line_counts(r["id"])) for r in rows[:limit]]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None, "has_more": len(rows) > limit}

    async def cancel(self, tenant: str, batch_id: str) -> dict[str, Any]:
        row = await self.store.get_batch(tenant, batch_id)
        if row is None:
            raise NotFound(f"No such batch: {batch_id}", param="batch_id")
        if not await self.store.set_status(batch_id, "cancelling", "cancelling_at", expected=("validating", "in_progress")):
            raise InvalidRequest(f"batch {batch_id} is {row['status']} and cannot be cancelled", code="invalid_state")
        self.runner.wakeup.set()
        return await self.get(tenant, batch_id)

    # -- the runner ------------------------------------------------------------------------------
    def start(self) -> None:
        self.runner.start()

    async def aclose(self) -> None:
        await self.runner.aclose()
