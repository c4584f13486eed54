"""Agent sessions as the store remembers them: the ledger's rows with a session, and their tool events.

A session's steps are its ledger rows (one per model call: models, tokens,
cost, status); its tool calls and tool results are ``session_events`` rows
written beside them, as is a ``stopped`` event when a session budget refused
a step. Read by ``modelyard sessions`` and ``GET /admin/sessions``.
"""

from __future__ import annotations

from typing import Any

from modelyard.store.database import Database

STEP_COLUMNS = (
    "ts, request_id, endpoint, workload, requested_model, served_model, attempts, prompt_tokens, completion_tokens, "
    "cost_usd, latency_ms, status, error_type, cache"
)


def _where(session: str | None, tenant: str | None) -> tuple[str, list[Any]]:
    clauses, args = ["session IS NOT NULL"], []
    if session is not None:
        clauses.append("session = ?")
        args.append(session)
    if tenant is not None:
        clauses.append("tenant = ?")
        args.append(tenant)
    return " AND ".join(clauses), args


class SessionLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def sessions(self, tenant: str | None = None, since: float | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The most recently active sessions, newest first: steps, tokens, cost, errors and tool calls."""
        where, args = _where(None, tenant)
        if since is not None:
            where += " AND ts >= ?"
            args.append(since)
        rows = await self.db.fetch(
            "SELECT tenant, session, COUNT(*) AS steps, MIN(ts - COALESCE(latency_ms, 0) / 1000.0) AS started, MAX(ts) AS last_ts, "
            "SUM(COALESCE(prompt_tokens, 0) + COALESCE(completion_tokens, 0)) AS tokens, SUM(cost_usd) AS cost_usd, "
            f"SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS errors FROM ledger WHERE {where} "
            "GROUP BY tenant, session ORDER BY last_ts DESC LIMIT ?",
            (*args, limit),
        )
        counts = await self._event_counts(rows)
        for row in rows:
            kinds = counts.get((row["tenant"], row["session"]), {})
            row["tool_calls"] = kinds.get("tool_call", 0)
            row["stopped"] = kinds.get("stopped", 0) > 0
            row["cost_usd"] = round(float(row["cost_usd"] or 0.0), 8)
        return rows

    async def _event_counts(self, sessions: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, int]]:
        """Event counts by kind for a page of sessions, in one query (not one per session)."""
        names = sorted({row["session"] for row in sessions})
        if not names:
            return {}
        rows = await self.db.fetch(
            f"SELECT tenant, session, kind, COUNT(*) AS n FROM session_events WHERE session IN ({', '.join('?' for _ in names)}) "
            "GROUP BY tenant, session, kind",
            names,
        )
        counts: dict[tuple[str, str], dict[str, int]] = {}
        for r in rows:
            counts.setdefault((r["tenant"], r["session"]), {})[r["kind"]] = int(r["n"])
        return counts

    async def session(self, session: str, tenant: str | None = None) -> dict[str, Any] | None:
        """One session's steps in order, each with the tool calls it made and the tool results it sent; None if unknown."""
        where, args = _where(session, tenant)
        steps = await self.db.fetch(f"SELECT tenant, {STEP_COLUMNS} FROM ledger WHERE {where} ORDER BY ts", args)
        if not steps:
            return None
        events = await self.db.fetch(
            f"SELECT ts, request_id, kind, call_id, name, content FROM session_events WHERE {where} ORDER BY ts", args
        )
        by_request: dict[str, list[dict[str, Any]]] = {}
        seen_results: set[str] = set()
        for event in events:
            if event["kind"] == "tool_result" and event["call_id"]:
                if event["call_id"] in seen_results:
                    continue  # a retried step resends the same result: shown where it first arrived
                seen_results.add(event["call_id"])
            by_request.setdefault(event["request_id"] or "", []).append(event)
        for step in steps:
            mine = by_request.get(step["request_id"] or "", [])
            step["tool_results"] = [{k: e[k] for k in ("call_id", "name", "content")} for e in mine if e["kind"] == "tool_result"]
            step["tool_calls"] = [{k: e[k] for k in ("call_id", "name", "content")} for e in mine if e["kind"] == "tool_call"]
            step["stopped"] = next((e["content"] for e in mine if e["kind"] == "stopped"), None)
        stopped = [e["content"] for e in events if e["kind"] == "stopped"]
        return {
            "session": session,
            "tenants": sorted({s["tenant"] for s in steps}),
            "steps": len(steps),
            "models": sorted({s["served_model"] for s in steps if s["served_model"]}),
            "prompt_tokens": sum(s["prompt_tokens"] or 0 for s in steps),
            "completion_tokens": sum(s["completion_tokens"] or 0 for s in steps),
            "cost_usd": round(sum(float(s["cost_usd"] or 0.0) for s in steps), 8),
            "errors": sum(1 for s in steps if (s["status"] or 0) >= 400),
            "tool_calls": sum(len(s["tool_calls"]) for s in steps),
            "stopped": stopped[0] if stopped else None,
            "started": steps[0]["ts"] - (steps[0]["latency_ms"] or 0) / 1000.0,
            "last_ts": steps[-1]["ts"],
            "history": steps,
        }
