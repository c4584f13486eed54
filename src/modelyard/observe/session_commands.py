"""``modelyard sessions list`` and ``modelyard sessions show ID``: agent sessions from the ledger."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from modelyard.store.database import StoreUnavailable
from modelyard.store.migrations import SchemaTooNew
from modelyard.store.session_log import SessionLog
from modelyard.store.store import Store

OpenStore = Callable[[argparse.Namespace], Awaitable[Store]]
ConfigArg = Callable[[argparse.ArgumentParser], None]


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "-"


def _print_list(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no sessions recorded yet")
        return
    columns = ("session", "tenant", "steps", "tokens", "cost_usd", "errors", "tool_calls", "stopped", "last")
    cells = [list(columns)] + [
        [str(r["session"]), str(r["tenant"]), str(r["steps"]), str(r["tokens"] or 0), f"{r['cost_usd']:.6f}", str(r["errors"]),
         str(r["tool_calls"]), "yes" if r["stopped"] else "", _when(r["last_ts"])]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for row in cells:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def _print_session(found: dict[str, Any]) -> None:
    print(f"session {found['session']}  tenant {', '.join(found['tenants'])}  started {_when(found['started'])}")
    print(
        f"  {found['steps']} steps  models {', '.join(found['models']) or '-'}  tokens {found['prompt_tokens']} in / "
        f"{found['completion_tokens']} out  cost ${found['cost_usd']:.6f}  tool calls {found['tool_calls']}  errors {found['errors']}"
    )
    if found["stopped"]:
        print(f"  stopped: {found['stopped']}")
    for i, step in enumerate(found["history"], 1):
        outcome = f"error {step['status']} {step['error_type'] or ''}".rstrip() if (step["status"] or 0) >= 400 else "ok"
        print(
            f"{i:>3}. {_when(step['ts'])}  {step['requested_model']} -> {step['served_model'] or '-'}  "
            f"{step['prompt_tokens'] or 0}+{step['completion_tokens'] or 0} tokens  ${float(step['cost_usd'] or 0):.6f}  "
            f"{float(step['latency_ms'] or 0):.0f} ms  {outcome}"
        )
        for result in step["tool_results"]:
            print(f"       <- {result['name'] or '?'} [{result['call_id']}]: {_short(result['content'])}")
        for call in step["tool_calls"]:
            print(f"       -> {call['name']}({_short(call['content'])}) [{call['call_id']}]")
        if step["stopped"]:
            print(f"       stopped: {step['stopped']}")


def _short(text: str | None, width: int = 100) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _run(args: argparse.Namespace, open_store: OpenStore) -> int:
    async def query() -> Any:
        store = await open_store(args)
        try:
            log = SessionLog(store.db)
            if args.action == "list":
                return await log.sessions(args.tenant, None, args.limit)
            return await log.session(args.session_id, args.tenant)
        finally:
            await store.aclose()

    try:
        result = asyncio.run(query())
    except (ValueError, OSError, StoreUnavailable, SchemaTooNew) as exc:
        print(f"modelyard: {exc}", file=sys.stderr)
        return 2
    if args.action == "show" and result is None:
        print(f"modelyard: no session {args.session_id!r} in the ledger", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.action == "list":
        _print_list(result)
    else:
        _print_session(result)
    return 0


def add_commands(sub: Any, config_arg: ConfigArg, open_store: OpenStore) -> None:
    sessions = sub.add_parser("sessions", help="agent sessions: steps, models, tokens, cost and tool calls").add_subparsers(dest="action", required=True)
    p = sessions.add_parser("list", help="the most recently active sessions", description="Sessions from the ledger, newest first.")
    p.add_argument("--limit", type=int, default=50, help="at most this many sessions (default 50)")
    _common(p, config_arg)
    p.set_defaults(func=lambda a: _run(a, open_store))
    p = sessions.add_parser("show", help="one session's steps and tool calls", description="Every step of one session, with its tool calls and results.")
    p.add_argument("session_id", help="the session's id (x-modelyard-session, Anthropic metadata.user_id, or a Responses chain's first id)")
    _common(p, config_arg)
    p.set_defaults(func=lambda a: _run(a, open_store))


def _common(p: argparse.ArgumentParser, config_arg: ConfigArg) -> None:
    config_arg(p)
    p.add_argument("--tenant", help="only this tenant's")
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    p.add_argument("--data-dir", help="the server's data directory (default ~/.cache/modelyard)")
    p.add_argument("--database-url", help="postgresql://... when the servers keep their state there")
