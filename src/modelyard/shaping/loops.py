"""Agent loops in a conversation: the same tool call again and again, or a short cycle of calls.

An agent sends its whole history on every step, so the history says whether
it is looping; no state is kept between requests (any replica can judge any
step). Only the calls since the last user message count: a user asking again
is not a loop. A call's signature is its name and its arguments as canonical
JSON (key order and spacing do not matter).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class LoopPolicy:
    max_identical: int = 3  # this many identical calls (same result) since the turn's last new call is a loop
    max_period: int = 3  # cycles of up to this many distinct calls (A→B→A→B, A→B→C→A→B→C)
    cycle_repeats: int = 2  # ... repeated this many times in a row at the end of the turn


@dataclass(frozen=True, slots=True)
class Loop:
    kind: str  # identical | cycle
    calls: tuple[str, ...]  # the tool names involved, in order
    count: int  # identical calls, or repeats of the cycle

    def describe(self) -> str:
        if self.kind == "identical":
            return f"identical call to {self.calls[0]} x{self.count}"
        return f"cycle {' -> '.join(self.calls)} x{self.count}"


Signature = tuple[str, str, str]  # name, canonical arguments, the tool's result


def signature(call: dict[str, Any], result: str = "") -> Signature:
    fn = call.get("function") or {}
    name = str(fn.get("name") or "")
    raw = fn.get("arguments") or ""
    try:
        arguments = json.dumps(json.loads(raw) if isinstance(raw, str) else raw, sort_keys=True, separators=(",", ":"))
    except ValueError:
        arguments = " ".join(str(raw).split())
    return name, arguments, " ".join(result.split())


def turn_calls(messages: Sequence[dict[str, Any]]) -> list[Signature]:
    """Signatures of the tool calls since the last user message, in order, each with its result."""
    start = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1) + 1
    turn = messages[start:]
    results = {m.get("tool_call_id"): m.get("content") if isinstance(m.get("content"), str) else json.dumps(m.get("content")) for m in turn if m.get("role") == "tool"}
    return [signature(c, results.get(c.get("id"), "") or "") for m in turn if m.get("role") == "assistant" for c in m.get("tool_calls") or ()]


def find_loop(messages: Sequence[dict[str, Any]], policy: LoopPolicy) -> Loop | None:
    """The loop the current turn is in, if any."""
    calls = turn_calls(messages)
    if not calls:
        return None
    # Repeats count since the last call never made before in this turn: a new call (an edit, a new file) is progress,
    # so "run the tests, edit, run the tests, edit" is not a loop even when the tests keep failing the same way.
    seen: set[Signature] = set()
    last_new = 0
    for i, made in enumerate(calls):
        if made not in seen:
            seen.add(made)
            last_new = i
    repeated, count = Counter(calls[last_new:]).most_common(1)[0]
    if count >= policy.max_identical:
        return Loop("identical", (repeated[0],), count)
    for period in range(2, policy.max_period + 1):
        span = period * policy.cycle_repeats
        if len(calls) < span:
            break
        tail = calls[-span:]
        pattern = tail[:period]
        if len(set(pattern)) == period and all(tail[i] == pattern[i % period] for i in range(span)):
            return Loop("cycle", tuple(name for name, _, _ in pattern), policy.cycle_repeats)
    return None
