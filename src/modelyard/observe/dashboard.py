"""The dashboard's numbers: per-minute series from ledger rows (pure; no I/O)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else 0.0


def minute_series(rows: Iterable[Mapping[str, Any]], start: float, minutes: int) -> dict[str, Any]:
    """Requests, errors, latency percentiles, cost and revenue per minute, per tenant and per model; cache hit rate and savings."""
    buckets = [int(start // 60) * 60 + 60 * i for i in range(minutes)]
    index = {b: i for i, b in enumerate(buckets)}
    requests, errors = [0] * minutes, [0] * minutes
    latencies: list[list[float]] = [[] for _ in range(minutes)]
    cost_by_tenant: dict[str, list[float]] = defaultdict(lambda: [0.0] * minutes)
    revenue_by_tenant: dict[str, list[float]] = defaultdict(lambda: [0.0] * minutes)
    cost_by_model: dict[str, list[float]] = defaultdict(lambda: [0.0] * minutes)
    looked_up, hits, saved = [0] * minutes, [0] * minutes, [0.0] * minutes
    for row in rows:
        i = index.get(int(row["ts"] // 60) * 60)
        if i is None:
            continue
        requests[i] += 1
        errors[i] += 1 if (row["status"] or 0) >= 400 else 0
        if row["latency_ms"] is not None:
            latencies[i].append(float(row["latency_ms"]))
        tenant, model = row["tenant"] or "-", row["served_model"] or row["requested_model"] or "-"
        cost_by_tenant[tenant][i] += row["cost_usd"] or 0.0
        revenue_by_tenant[tenant][i] += row["revenue_usd"] or 0.0
        cost_by_model[model][i] += row["cost_usd"] or 0.0
        if row.get("cache") in ("hit", "miss"):
            looked_up[i] += 1
            hits[i] += row["cache"] == "hit"
            saved[i] += row.get("saved_usd") or 0.0
    tenants = sorted(set(cost_by_tenant))
    return {
        "minutes": buckets,
        "requests_per_s": [n / 60 for n in requests],
        "errors": errors,
        "latency_p50_ms": [_percentile(v, 50) for v in latencies],
        "latency_p95_ms": [_percentile(v, 95) for v in latencies],
        "cost_by_tenant": dict(cost_by_tenant),
        "margin_by_tenant": {t: [r - c for r, c in zip(revenue_by_tenant[t], cost_by_tenant[t], strict=True)] for t in tenants},
        "cost_by_model": dict(cost_by_model),
        "cache_hit_rate": [h / n if n else None for h, n in zip(hits, looked_up, strict=True)],  # of the requests a cache looked up
        "cache_saved_usd": saved,
        "cache": {"lookups": sum(looked_up), "hits": sum(hits), "saved_usd": sum(saved)},
        "totals": {
            t: {"cost_usd": sum(cost_by_tenant[t]), "revenue_usd": sum(revenue_by_tenant[t]), "margin_usd": sum(revenue_by_tenant[t]) - sum(cost_by_tenant[t])}
            for t in tenants
        },
    }


def route_kind(route: str) -> str:
    """How an alias chose (``learned``, ``rule``, ``intent``, ``cascade``) from a ledger row's route; '' when a model was named."""
    if not route or route == "requested":
        return ""
    return route.split(";", 1)[0].split(":", 1)[0]


def route_shares(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per alias and the model that answered: requests, their share of the alias, and how they were chosen."""
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        kind = route_kind(row.get("route") or "")
        if kind:
            counts[(row["requested_model"] or "-", row["served_model"] or "-")][kind] += 1
    per_alias: dict[str, int] = defaultdict(int)
    for (alias, _), kinds in counts.items():
        per_alias[alias] += sum(kinds.values())
    return [
        {"alias": alias, "model": model, "requests": sum(kinds.values()), "share": sum(kinds.values()) / per_alias[alias], "by": dict(kinds)}
        for (alias, model), kinds in sorted(counts.items())
    ]
