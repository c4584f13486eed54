"""Record a session's tool traffic beside its ledger rows: calls the model made, results the client sent back.

An agent resends its whole history every step, so a step's new tool results
are the ``tool`` messages after the last assistant message; the calls are the
ones the answer made (kept by :mod:`modelyard.pipeline.answer_watch`). Each
is recorded once, with the request that carried it. Content is cut at
``MAX_CONTENT`` characters; what was redacted before routing (the PII filter)
stays redacted here.
"""

from __future__ import annotations

import time
from typing import Any

from modelyard.pipeline.types import Request
from modelyard.store.ledger import LedgerWriter

MAX_CONTENT = 2000


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _new_tool_results(messages: tuple[dict[str, Any], ...] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    names: dict[str, str] = {}
    last_assistant = -1
    for i, message in enumerate(messages):
        if message.get("role") == "assistant":
            last_assistant = i
            for call in message.get("tool_calls") or []:
                names[str(call.get("id", ""))] = str((call.get("function") or {}).get("name", ""))
    out = []
    for message in messages[last_assistant + 1:]:
        if message.get("role") == "tool":
            call_id = str(message.get("tool_call_id") or "")
            out.append({"kind": "tool_result", "call_id": call_id, "name": message.get("name") or names.get(call_id, ""),
                        "content": _text(message.get("content"))[:MAX_CONTENT]})
    return out


def session_events(request: Request, now: float) -> list[dict[str, Any]]:
    """The tool results the request sent, the tool calls its answer made, and a stop, as ``session_events`` rows."""
    assert request.session is not None
    events = _new_tool_results(request.call.messages) if request.call is not None else []
    for call in request.tool_calls_made:
        fn = call.get("function") or {}
        events.append({"kind": "tool_call", "call_id": call.get("id", ""), "name": fn.get("name", ""),
                       "content": str(fn.get("arguments", ""))[:MAX_CONTENT]})
    if request.session_stopped:
        events.append({"kind": "stopped", "content": request.session_stopped})
    base = {"ts": now, "tenant": request.tenant, "session": request.session, "request_id": request.request_id}
    return [base | e for e in events]


class SessionRecorder:
    """An access-middleware observer: a session request's tool events go to the ledger writer's next batch."""

    def __init__(self, writer: LedgerWriter) -> None:
        self.writer = writer

    def observe(self, state: dict[str, Any], status: int, seconds: float) -> None:
        request = state.get("request")
        if isinstance(request, Request) and request.session:
            events = session_events(request, time.time())
            if events:
                self.writer.record_events(events)
