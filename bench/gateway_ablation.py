"""What each per-request feature costs: modelyard with one feature switched off at a time, beside the floor.

    .venv/bin/python bench/gateway_ablation.py [--rounds 3] [--seconds 5] [--latency-ms 0]

Starts the fake upstream, the bare floor proxy (bench/floor_proxy.py) and one
modelyard per variant, all on bench/gateway.py's production path with whole
answers (``upstream_streaming: when_client_streams``, a tenant's key, limits,
budget, metrics, access log, ledger). Each variant switches one feature's
per-request work off by replacing one method with a no-op at interpreter start
(a ``sitecustomize`` module on the variant's ``PYTHONPATH``; the code under
test is not edited):

    none        nothing off (the production path)
    metrics     Metrics.observe (Prometheus counters and histograms)
    ledger      LedgerRecorder.observe (the ledger row and its cost)
    sessions    SessionRecorder.observe (agent-session tool events)
    ratelimit   RateLimiter.check admits without counting (and so sends no x-ratelimit-* headers)
    accesslog   AccessLog.line (the JSON access-log line)
    all         all of the above at once

What is left with ``all`` is the request path's structure: HTTP parsing and
rendering, middleware, authentication, the pipeline's stages, routing,
scheduler, dispatcher and the upstream client. ``wrk`` at 50 connections
measures each server in turn for ``--seconds``, in the same order each round;
the result is the median and range of each server's CPU milliseconds per
request over the rounds, and its ratio to the floor's median. Writes
bench/results/gateway_ablation.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, machine, median, start, stop, table, write_result  # noqa: E402
from gateway import BODY, MASTER_KEY, WHOLE_CONFIG, WRK_SCRIPT, cpu_seconds, ensure_wrk, start_floor, tenant_key, wrk  # noqa: E402

PATCHES = {
    "metrics": "from modelyard.observe.metrics import Metrics\nMetrics.observe = lambda self, state, status, seconds: None\n",
    "ledger": "from modelyard.api.accounting import LedgerRecorder\nLedgerRecorder.observe = lambda self, state, status, seconds: None\n",
    "sessions": "from modelyard.api.session_record import SessionRecorder\nSessionRecorder.observe = lambda self, state, status, seconds: None\n",
    "ratelimit": "from modelyard.economics import ratelimit\nratelimit.RateLimiter.check = lambda self, scopes, tokens, now: (ratelimit.Reservation([]), 0.0, {})\n",
    "accesslog": "from modelyard.observe.access_log import AccessLog\nAccessLog.line = lambda self, fields: None\n",
}
VARIANTS = {"none": [], **{name: [name] for name in PATCHES}, "all": list(PATCHES)}
CONCURRENCY = 50


def start_variant(name: str, up_port: int, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """modelyard with ``name``'s features off; the process and its URL."""
    site = tmp / f"site-{name}"
    site.mkdir()
    (site / "sitecustomize.py").write_text("".join(PATCHES[feature] for feature in VARIANTS[name]))
    config = tmp / f"{name}.yaml"
    config.write_text(WHOLE_CONFIG.format(port=up_port))
    port = free_port()
    process = start(["serve", "--config", str(config), "--port", str(port), "--data-dir", str(tmp / f"data-{name}"), "--log-level", "warning"],
                    tmp / f"{name}.log", f"http://127.0.0.1:{port}/readyz", env={"MODELYARD_MASTER_KEY": MASTER_KEY, "PYTHONPATH": str(site)})
    return process, f"http://127.0.0.1:{port}"


def run(args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    wrk_bin = ensure_wrk()
    up_port = free_port()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    upstream = start(["fake-upstream", "--port", str(up_port), "--latency-ms", str(args.latency_ms), "--tokens", "16"], tmp / "up.log",
                     f"http://127.0.0.1:{up_port}/v1/models")
    try:
        urls: dict[str, str] = {}
        processes["floor"], urls["floor"] = start_floor(up_port, tmp)
        for name in VARIANTS:
            processes[name], urls[name] = start_variant(name, up_port, tmp)
        scripts = {}
        for name, url in urls.items():
            key = "unused" if name == "floor" else tenant_key(url)
            scripts[name] = tmp / f"post-{name}.lua"
            scripts[name].write_text(WRK_SCRIPT.format(body=json.dumps(BODY), key=key))
            wrk(wrk_bin, url, 10, 2, scripts[name])  # warm-up
        cpu: dict[str, list[float]] = {name: [] for name in urls}
        rps: dict[str, list[float]] = {name: [] for name in urls}
        for round_no in range(args.rounds):
            for name, url in urls.items():
                before = cpu_seconds(processes[name].pid)
                point = wrk(wrk_bin, url, CONCURRENCY, args.seconds, scripts[name])
                cpu[name].append((cpu_seconds(processes[name].pid) - before) * 1000 / max(1.0, point["rps"] * args.seconds))
                rps[name].append(point["rps"])
                print(f"round {round_no + 1}: {name:10s} {point['rps']:8.1f} req/s  {cpu[name][-1]:.3f} ms CPU/request", flush=True)
    finally:
        for process in processes.values():
            stop(process)
        stop(upstream)
    floor_cpu = median(cpu["floor"]) or float("nan")
    base_cpu = median(cpu["none"]) or float("nan")
    rows: dict[str, object] = {}
    for name in urls:
        own = median(cpu[name]) or float("nan")
        rows[name] = {
            "cpu_ms_median": round(own, 4), "cpu_ms_range": [round(min(cpu[name]), 4), round(max(cpu[name]), 4)],
            "rps_median": median(rps[name]), "ratio_to_floor": round(own / floor_cpu, 2),
            "saved_ms_vs_none": None if name == "floor" else round(base_cpu - own, 4),
        }
    return {"config": {"rounds": args.rounds, "seconds": args.seconds, "latency_ms": args.latency_ms, "concurrency": CONCURRENCY},
            "machine": machine(), "variants": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each server, alternated (default 3)")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per measurement (default 5)")
    parser.add_argument("--latency-ms", type=int, default=0, help="the fake upstream's latency before its answer (default 0)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args, Path(tmp))
    variants: dict[str, dict[str, Any]] = result["variants"]  # type: ignore[assignment]
    header = ("server", "CPU ms/request (median)", "range", "x floor", "saved vs none", "req/s")
    lines = [header] + [
        (name, f"{row['cpu_ms_median']:.3f}", "{:.3f}-{:.3f}".format(*row["cpu_ms_range"]), f"{row['ratio_to_floor']:.2f}",
         "" if row["saved_ms_vs_none"] is None else f"{row['saved_ms_vs_none']:+.3f}", f"{row['rps_median']:.0f}")
        for name, row in variants.items()
    ]
    print(table(lines))
    print(write_result("gateway_ablation", result))


if __name__ == "__main__":
    main()
