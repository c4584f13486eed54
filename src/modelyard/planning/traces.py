"""Request traces: read them, slice them, scale them. Pure: text in, requests out.

Three formats, told apart by their content:

- **Azure LLM inference CSV** (``TIMESTAMP,ContextTokens,GeneratedTokens``), as
  in ``../shared/data/traces/azure_llm_2023_*.csv``.
- **Mooncake-style JSONL**: one object per line with ``timestamp`` (ms),
  ``input_length``, ``output_length`` and optional ``hash_ids`` (one id per
  512-token block of the prompt; equal ids are a shared prefix).
- **modelyard's own trace JSONL** (``modelyard usage --export-trace``): the
  Mooncake fields plus ``tenant``, ``workload`` and ``model``.

Scaling: ``time_scale`` multiplies the gaps between arrivals (0.5 is twice as
dense); ``token_scale`` multiplies input and output lengths (small local
models cannot serve the trace's multi-thousand-token prompts at its pace).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

GOLDEN = 0.6180339887498949
BLOCK_TOKENS = 512  # Mooncake's hash_ids cover this many prompt tokens each


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the line and the problem."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace, as plain data."""

    arrival_s: float  # seconds since the trace's first request
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()  # shared-prefix blocks, when the trace has them
    tenant: str | None = None
    workload: str | None = None
    model: str | None = None


def parse_trace(text: str, source: str = "<trace>") -> list[TraceRequest]:
    """Requests of a trace in any supported format, ordered by arrival, the first at 0 s."""
    head = text.lstrip()[:1]
    rows = _parse_jsonl(text, source) if head == "{" else _parse_azure_csv(text, source)
    if not rows:
        raise TraceError(f"{source}: no requests")
    rows.sort(key=lambda r: r.arrival_s)
    origin = rows[0].arrival_s
    return [replace(r, arrival_s=r.arrival_s - origin) for r in rows]


def _parse_azure_csv(text: str, source: str) -> list[TraceRequest]:
    reader = csv.DictReader(io.StringIO(text))
    wanted = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
    if not reader.fieldnames or not wanted <= set(reader.fieldnames):
        raise TraceError(f"{source}: expected an Azure trace CSV with columns {', '.join(sorted(wanted))}, or JSONL")
    rows = []
    for line_no, row in enumerate(reader, start=2):
        try:
            stamp = _azure_seconds(row["TIMESTAMP"])
            rows.append(TraceRequest(stamp, _count(row["ContextTokens"]), _count(row["GeneratedTokens"])))
        except (ValueError, TypeError) as exc:
            raise TraceError(f"{source}:{line_no}: {exc}") from None
    return rows


def _azure_seconds(stamp: str) -> float:
    # Seven fractional digits: more than datetime parses; keep microseconds.
    day, _, fraction = stamp.strip().partition(".")
    moment = datetime.strptime(day, "%Y-%m-%d %H:%M:%S")
    return moment.timestamp() + (float("0." + fraction) if fraction else 0.0)


def _parse_jsonl(text: str, source: str) -> list[TraceRequest]:
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            if not isinstance(item, dict):
                raise ValueError("each line must be a JSON object")
            hashes = item.get("hash_ids") or []
            if not isinstance(hashes, list) or not all(isinstance(h, int) for h in hashes):
                raise ValueError("hash_ids must be a list of integers")
            rows.append(TraceRequest(
                arrival_s=float(item["timestamp"]) / 1000.0,
                input_tokens=_count(item["input_length"]),
                output_tokens=_count(item["output_length"]),
                hash_ids=tuple(hashes),
                tenant=_optional_str(item, "tenant"),
                workload=_optional_str(item, "workload"),
                model=_optional_str(item, "model"),
            ))
        except KeyError as exc:
            raise TraceError(f"{source}:{line_no}: missing field {exc.args[0]!r}") from None
        except (ValueError, TypeError) as exc:
            raise TraceError(f"{source}:{line_no}: {exc}") from None
    return rows


def _count(value: object) -> int:
    number = int(float(str(value)))
    if number < 0:
        raise ValueError(f"token counts cannot be negative, got {value!r}")
    return number


def _optional_str(item: dict[str, object], key: str) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value


def window(requests: Sequence[TraceRequest], start_s: float = 0.0, duration_s: float | None = None) -> list[TraceRequest]:
    """The requests arriving in [start_s, start_s + duration_s), re-based to start at 0 s."""
    end = float("inf") if duration_s is None else start_s + duration_s
    chosen = [r for r in requests if start_s <= r.arrival_s < end]
    return [replace(r, arrival_s=r.arrival_s - start_s) for r in chosen]


def scale(requests: Iterable[TraceRequest], time_scale: float = 1.0, token_scale: float = 1.0,
          min_input: int = 1, min_output: int = 1) -> list[TraceRequest]:
    """Arrival gaps times ``time_scale``; token counts times ``token_scale`` (at least the minimums)."""
    if time_scale <= 0 or token_scale <= 0:
        raise ValueError("time_scale and token_scale must be positive")
    return [
        replace(
            r,
            arrival_s=r.arrival_s * time_scale,
            input_tokens=max(min_input, round(r.input_tokens * token_scale)),
            output_tokens=max(min_output, round(r.output_tokens * token_scale)),
        )
        for r in requests
    ]


def amplify(requests: Sequence[TraceRequest], factor: float) -> list[TraceRequest]:
    """``factor`` times the traffic over the same time span: the trace's shape (bursts, quiet spells) kept.

    Copy ``k`` of ``n = ceil(factor)`` copies arrives ``k/n`` of the way to the
    next request of the original; the last copy is thinned to the fractional
    part (deterministically, evenly over the trace). A copy keeps its
    original's ``hash_ids``, so it shares its original's prefix.
    """
    if factor <= 0:
        raise ValueError("the traffic factor must be positive")
    copies = math.ceil(factor)
    fraction = factor - (copies - 1)
    out: list[TraceRequest] = []
    for i, r in enumerate(requests):
        gap = requests[i + 1].arrival_s - r.arrival_s if i + 1 < len(requests) else 0.0
        for k in range(copies):
            if k == copies - 1 and (i * GOLDEN) % 1.0 >= fraction:
                continue  # thinned: a low-discrepancy sequence keeps an even fraction of the copy
            out.append(r if k == 0 else replace(r, arrival_s=r.arrival_s + gap * k / copies))
    out.sort(key=lambda r: r.arrival_s)
    return out


def to_jsonl(requests: Iterable[TraceRequest]) -> str:
    """modelyard's trace JSONL (readable by :func:`parse_trace` and Mooncake-style tools)."""
    lines = []
    for r in requests:
        item: dict[str, object] = {"timestamp": round(r.arrival_s * 1000.0, 3), "input_length": r.input_tokens, "output_length": r.output_tokens}
        if r.hash_ids:
            item["hash_ids"] = list(r.hash_ids)
        for key in ("tenant", "workload", "model"):
            if getattr(r, key) is not None:
                item[key] = getattr(r, key)
        lines.append(json.dumps(item, separators=(",", ":")))
    return "\n".join(lines) + ("\n" if lines else "")
