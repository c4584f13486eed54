"""A plan as a terminal table and as a self-contained HTML report with plots (inline SVG, no scripts)."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from modelyard.planning.plan import Objective
from modelyard.planning.simulate import SimRecord

HEADLINE = ("requests", "completed", "rejected_rate", "ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms", "e2e_p99_ms", "throughput_rps",
            "cost_usd", "cost_per_1k_requests_usd", "revenue_usd", "margin_usd", "simulations", "plan_seconds")


def print_plan(summary: Mapping[str, Any]) -> None:
    width = max(len(k) for k in HEADLINE)
    for key in HEADLINE:
        value = summary.get(key)
        print(f"{key.ljust(width)}  {'-' if value is None else value}")
    print()
    print(f"{'deployment':32} {'replicas':>8} {'util':>6} {'cost_usd':>10}")
    for name, replicas in sorted(summary["replicas"].items()):
        util = summary["utilization"].get(name)
        cost = summary["cost_by_deployment_usd"].get(name, 0.0)
        print(f"{name:32} {replicas:>8} {'-' if util is None else f'{util:.0%}':>6} {cost:>10.4f}")
    print()
    print(f"{'model':24} {'requests':>8} {'ttft p50':>9} {'ttft p99':>9} {'e2e p50':>9} {'rejected':>8}  objectives")
    for name, m in summary["models"].items():
        print(f"{name:24} {m['requests']:>8} {_num(m['ttft_p50_ms']):>9} {_num(m['ttft_p99_ms']):>9} {_num(m['e2e_p50_ms']):>9} "
              f"{m['rejected_rate']:>8.2%}  {'met' if m['objectives_met'] else 'NOT MET'}")
    if summary.get("what_ifs"):
        print()
        print(f"{'what if':16} {'change':64} {'met':>4} {'ttft p99':>9} {'cost/1k req':>11} {'quality':>7}  replicas")
        for r in summary["what_ifs"]:
            replicas = ", ".join(f"{k}={v}" for k, v in sorted(r["replicas"].items()))
            quality = f"{r['expected_quality']:.3f}" if r.get("expected_quality") is not None else "-"
            print(f"{r['what_if']:16} {r['change'][:64]:64} {'yes' if r['objectives_met'] else 'no':>4} {_num(r['ttft_p99_ms']):>9} "
                  f"{_num(r['cost_per_1k_requests_usd']):>11} {quality:>7}  {replicas}")


def records_jsonl(records: Sequence[SimRecord]) -> str:
    """One line per simulated request, the fields of ``replay --outcomes``."""
    lines = [json.dumps({"index": r.index, "arrival_s": round(r.arrival_s, 6), "status": r.status, "model": r.model, "deployment": r.deployment,
                         "ttft_s": r.ttft_s, "e2e_s": r.e2e_s, "output_tokens": r.output_tokens if r.status == 200 else 0, "attempts": r.attempts},
                        separators=(",", ":")) for r in records]
    return "\n".join(lines) + "\n"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:g}"


def write_html(path: Path, summary: Mapping[str, Any], records: Sequence[SimRecord], objectives: Sequence[Objective]) -> None:
    """One file: the headline table, per-model and what-if tables, a TTFT distribution and a replica chart."""
    ttft = sorted(r.ttft_s for r in records if r.status == 200 and r.ttft_s is not None)
    parts = [
        "<!doctype html><meta charset='utf-8'><title>modelyard plan</title>",
        "<style>body{font:14px system-ui;margin:2em;max-width:60em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f4f4f4}td:first-child{text-align:left}</style>",
        "<h1>modelyard plan</h1>",
        "<p>Objectives: " + html.escape(", ".join(f"{o.name} ≤ {o.limit:g}" for o in objectives)) + "</p>",
        _table(["figure", "value"], [[k, summary.get(k)] for k in HEADLINE]),
        "<h2>Replicas</h2>",
        _table(["deployment", "replicas", "utilization", "cost (USD)"],
               [[n, r, f"{summary['utilization'].get(n, 0):.0%}", summary["cost_by_deployment_usd"].get(n, 0.0)] for n, r in sorted(summary["replicas"].items())]),
        _bars({n: float(r) for n, r in summary["replicas"].items()}, "replicas"),
        "<h2>Models</h2>",
        _table(["model", "requests", "TTFT p50 ms", "TTFT p99 ms", "e2e p50 ms", "e2e p99 ms", "rejected", "objectives"],
               [[n, m["requests"], m["ttft_p50_ms"], m["ttft_p99_ms"], m["e2e_p50_ms"], m["e2e_p99_ms"], f"{m['rejected_rate']:.2%}",
                 "met" if m["objectives_met"] else "NOT MET"] for n, m in summary["models"].items()]),
        "<h2>Time to first token</h2>",
        _cdf(ttft),
        "<h2>Cost per tenant</h2>",
        _table(["tenant", "cost (USD)"], [[t, c] for t, c in sorted(summary["cost_by_tenant_usd"].items())]),
    ]
    if summary.get("what_ifs"):
        parts += ["<h2>What if</h2>", _table(
            ["what if", "change", "met", "TTFT p99 ms", "cost / 1k requests", "expected quality", "replicas"],
            [[r["what_if"], r["change"], "yes" if r["objectives_met"] else "no", r["ttft_p99_ms"], r["cost_per_1k_requests_usd"],
              r.get("expected_quality", "-"), ", ".join(f"{k}={v}" for k, v in sorted(r["replicas"].items()))] for r in summary["what_ifs"]])]
    path.write_text("\n".join(parts) + "\n")


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('-' if v is None else str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _bars(values: Mapping[str, float], unit: str) -> str:
    if not values:
        return ""
    top = max(values.values()) or 1.0
    height = 22 * len(values) + 10
    bars = "".join(
        f"<text x='0' y='{22 * i + 16}' font-size='12'>{html.escape(n)}</text>"
        f"<rect x='240' y='{22 * i + 4}' width='{300 * v / top:.1f}' height='16' fill='#4a78c2'/>"
        f"<text x='{246 + 300 * v / top:.1f}' y='{22 * i + 16}' font-size='12'>{v:g} {unit}</text>"
        for i, (n, v) in enumerate(sorted(values.items()))
    )
    return f"<svg width='640' height='{height}'>{bars}</svg>"


def _cdf(values: Sequence[float]) -> str:
    """The share of requests with TTFT at or below x (x on a linear scale up to the p99.9)."""
    if not values:
        return "<p>no completed requests</p>"
    top = values[min(len(values) - 1, int(0.999 * len(values)))] or 1e-9
    step = max(1, len(values) // 400)
    points = " ".join(f"{60 + 560 * min(v, top) / top:.1f},{250 - 230 * (i + 1) / len(values):.1f}" for i, v in enumerate(values) if i % step == 0)
    axis = (f"<line x1='60' y1='250' x2='620' y2='250' stroke='#000'/><line x1='60' y1='20' x2='60' y2='250' stroke='#000'/>"
            f"<text x='60' y='268' font-size='12'>0</text><text x='580' y='268' font-size='12'>{top * 1000:.0f} ms</text>"
            f"<text x='10' y='24' font-size='12'>100%</text><text x='20' y='250' font-size='12'>0%</text>")
    return f"<svg width='640' height='280'>{axis}<polyline fill='none' stroke='#c24a4a' stroke-width='2' points='{points}'/></svg>"
