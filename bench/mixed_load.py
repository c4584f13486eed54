"""Interactive traffic from a real trace beside a batch job: the scheduler vs FCFS.

    .venv/bin/python bench/mixed_load.py [--quick]

Interactive load replays a time-scaled slice of
../shared/data/traces/azure_llm_2023_code.csv (arrival times from the trace,
token counts scaled down to what SmolLM2 on 2 CPU cores serves in about a
second) as streaming chat requests against the embedded SmolLM2 model (on
the embedded fleet's local engine: llama.cpp's server, 4 slots decoded together, one
reserved for interactive work). Four runs on the same machine, each on a fresh server:

  alone      interactive replay only
  idle       the batch job only (its throughput on an idle fleet)
  scheduler  both together, workload classes on
  fcfs       both together, classes off (one first-come-first-served queue)

The four runs repeat (``--repeats``, default 3). TTFT percentiles are reported
per repeat (median and min-max across repeats) and over all repeats pooled;
a pooled p99 is reported only from at least 1,000 samples.

The batch's share of the leftover capacity is measured in engine time, so it
lies in [0, 1]: with u_alone the fraction of time the engine holds at least
one sequence under the interactive load alone and u_both the same fraction
with the batch job beside it, share = (u_both - u_alone) / (1 - u_alone),
clipped at 0. (The engine decodes its sequences together, so engine time,
not slot time, is what the interactive load leaves idle; the slots' mean
occupancy is reported beside it.) Both come from the server's own integrals
(``busy_s`` and ``slot_busy_s`` in ``/admin/fleet``, exact at every request's
start and end) read at the start and end of the measured window: sampling
"busy now?" undercounts a loaded engine, because the probe waits behind the
load. The goal
(share >= 0.8, interactive p99 <= 1.5x alone) is checked on the medians and
fails when either is missed.

Writes bench/results/mixed_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, free_port, machine, percentile, start, stop, table, write_result  # noqa: E402

TRACE = ROOT.parent / "shared" / "data" / "traces" / "azure_llm_2023_code.csv"
CONFIG = """
scheduling:
  classes: {classes}
  reserved_slots: 1
  batch_concurrency: 4
  ttft_objective_s: {{interactive: 30}}
models:
  smollm2-135m:
    kind: chat
    deployments:
      - backend: llamacpp_server
        model_file: builtin:smollm2-135m
        parallel: 4
        threads: 2
        n_ctx: 1024
        max_queue: 512
"""
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "routing", "requests", "across", "the", "fleet"]


def load_trace(seconds: float, time_scale: float, skip_s: float) -> list[tuple[float, int, int]]:
    """(arrival offset s, prompt words, max tokens) for the trace slice, time-stretched by ``time_scale``."""
    rows = []
    with TRACE.open() as f:
        reader = csv.DictReader(f)
        origin = start = None
        for row in reader:
            stamp = _seconds(row["TIMESTAMP"])
            origin = stamp if origin is None else origin
            if stamp - origin < skip_s:
                continue
            start = stamp if start is None else start  # the first arrival at or after the skip
            offset = (stamp - start) * time_scale
            if offset > seconds:
                break
            prompt = max(8, min(60, int(row["ContextTokens"]) // 60))
            gen = max(4, min(24, int(row["GeneratedTokens"]) // 2))
            rows.append((offset, prompt, gen))
    return rows


def _seconds(stamp: str) -> float:
    clock = stamp.split(" ")[1]
    h, m, s = clock.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def prompt_of(words: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(words)) + ". Summarise that."


async def interactive(url: str, trace: list[tuple[float, int, int]]) -> dict[str, object]:
    ttfts: list[float] = []
    busy: list[float] = []
    rejected = errors = 0
    started = time.monotonic()

    async def one(http: httpx.AsyncClient, at: float, words: int, gen: int) -> None:
        nonlocal rejected, errors
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        body = {"model": "smollm2-135m", "messages": [{"role": "user", "content": prompt_of(words)}], "max_tokens": gen, "stream": True, "temperature": 0}
        t0 = time.monotonic()
        first = None
        async with http.stream("POST", url, json=body) as response:
            if response.status_code == 429:
                rejected += 1
                return
            if response.status_code != 200:
                errors += 1
                return
            async for line in response.aiter_lines():
                if first is None and '"content"' in line and '"role"' not in line:
                    first = time.monotonic() - t0
        if first is not None:
            ttfts.append(first)
        busy.append(time.monotonic() - t0 - (first or 0))

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=500)) as http:
        await asyncio.gather(*(one(http, at, w, g) for at, w, g in trace))
    return {"ttfts": ttfts, "rejected": rejected, "errors": errors, "elapsed": time.monotonic() - started, "decode_s": sum(busy)}


async def submit_batch(base: str, lines: int) -> str:
    body = "\n".join(
        json.dumps({"custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": "smollm2-135m", "messages": [{"role": "user", "content": prompt_of(12 + i % 20)}], "max_tokens": 16, "temperature": 0}})
        for i in range(lines)
    )
    async with httpx.AsyncClient(timeout=60) as http:
        upload = await http.post(base + "/v1/files", files={"file": ("b.jsonl", io.BytesIO(body.encode()))}, data={"purpose": "batch"})
        batch = await http.post(base + "/v1/batches", json={"input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"})
        return str(batch.json()["id"])


async def completed_lines(base: str, batch_id: str) -> tuple[int, str]:
    async with httpx.AsyncClient(timeout=30) as http:
        batch = (await http.get(f"{base}/v1/batches/{batch_id}")).json()
        return int(batch["request_counts"]["completed"]), str(batch["status"])


async def engine_totals(base: str) -> tuple[float, float, int]:
    """(engine busy seconds, sequence-seconds, slots) from the server's own integrals (exact at every start and end)."""
    async with httpx.AsyncClient(timeout=30) as http:
        fleet = (await http.get(base + "/admin/fleet")).json()
    engines = [w for d in fleet["deployments"] for w in d["workers"]]
    return (sum(float(w["busy_s"]) for w in engines), sum(float(w["slot_busy_s"]) for w in engines),
            sum(int(w["slots"]) for w in engines))


async def scenario(base: str, trace: list[tuple[float, int, int]] | None, batch_lines: int, seconds: float) -> dict[str, object]:
    result: dict[str, object] = {}
    batch_id = await submit_batch(base, batch_lines) if batch_lines else None
    if batch_id:
        while (await completed_lines(base, batch_id))[0] < 2:  # the job is under way
            await asyncio.sleep(0.2)
    busy_0, slot_0, slots = await engine_totals(base)
    t0 = time.monotonic()
    before = (await completed_lines(base, batch_id))[0] if batch_id else 0
    if trace is not None:
        result["interactive"] = await interactive(base + "/v1/chat/completions", trace)
    else:
        while batch_id and (await completed_lines(base, batch_id))[1] not in ("completed", "failed") and time.monotonic() - t0 < seconds:
            await asyncio.sleep(0.5)
    if batch_id:
        after, status = await completed_lines(base, batch_id)
        result["batch_lines_per_min"] = (after - before) / max(1e-9, time.monotonic() - t0) * 60
        result["batch_status"] = status
    busy_1, slot_1, _ = await engine_totals(base)
    span = max(1e-9, time.monotonic() - t0)
    result["worker_busy_fraction"] = min(1.0, (busy_1 - busy_0) / span)
    result["slot_occupancy"] = min(1.0, (slot_1 - slot_0) / (span * max(1, slots)))
    return result


def run_server(tmp: Path, label: str, classes: bool) -> tuple[object, str]:
    config = tmp / f"{label}.yaml"
    config.write_text(CONFIG.format(classes="true" if classes else "false"))
    port = free_port()
    data = tmp / label
    server = start(["serve", "--config", str(config), "--port", str(port), "--log-level", "warning", "--data-dir", str(data)], tmp / f"{label}.log", f"http://127.0.0.1:{port}/readyz")
    return server, f"http://127.0.0.1:{port}"


MIN_P99_SAMPLES = 1000
ARMS = (("alone", True, True, False), ("idle", True, False, True), ("scheduler", True, True, True), ("fcfs", False, True, True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one 40 s repeat and a 40-line batch (a smoke run, not a result)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="stretch the trace's time by this factor (0.5: twice as dense)")
    parser.add_argument("--repeats", type=int, default=3, help="repeat all four runs this many times")
    parser.add_argument("--seconds", type=float, default=120.0, help="replay length per run")
    parser.add_argument("--skip-s", type=float, default=270.0,
                        help="start this many trace seconds in (the trace is bursty: from 270 s at time scale 1, 120 s hold 273 requests, about half the engine's capacity)")
    args = parser.parse_args()
    seconds, lines, repeats = (40.0, 40, 1) if args.quick else (args.seconds, 900, args.repeats)
    trace = load_trace(seconds, args.time_scale, skip_s=args.skip_s)
    repeated: list[dict[str, dict[str, object]]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for repeat in range(repeats):
            runs: dict[str, dict[str, object]] = {}
            for label, classes, with_trace, with_batch in ARMS:
                server, base = run_server(tmp, f"{label}-{repeat}", classes)
                try:
                    runs[label] = asyncio.run(scenario(base, trace if with_trace else None, lines if with_batch else 0, seconds))
                finally:
                    stop(server)  # type: ignore[arg-type]
            repeated.append(runs)
            print(f"repeat {repeat + 1}/{repeats} done", flush=True)
    report = summarise(repeated)
    print(table(report["table"]))  # type: ignore[arg-type]
    extra = {"machine": machine(), "trace": str(TRACE.name), "requests_per_run": len(trace), "replay_s": seconds,
             "time_scale": args.time_scale, "skip_s": args.skip_s, "repeats": repeats, "batch_lines": lines}
    path = write_result("mixed_load", {k: v for k, v in report.items() if k != "table"} | extra)
    print(f"wrote {path}")


def ttfts(runs: dict[str, dict[str, object]], label: str) -> list[float]:
    inter = runs[label].get("interactive")
    return list(inter["ttfts"]) if isinstance(inter, dict) else []  # type: ignore[arg-type]


def spread(values: list[float | None]) -> dict[str, float | None]:
    """Median and range across repeats."""
    present = [v for v in values if v is not None]
    if not present:
        return {"median": None, "min": None, "max": None}
    return {"median": round(statistics.median(present), 3), "min": round(min(present), 3), "max": round(max(present), 3)}


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def leftover_share(u_alone: float, u_both: float) -> float:
    """The batch's share of the worker time the interactive load left idle, in [0, 1]."""
    if u_alone >= 1.0:
        return 0.0
    return min(1.0, max(0.0, (u_both - u_alone) / (1.0 - u_alone)))


def summarise(repeated: list[dict[str, dict[str, object]]]) -> dict[str, object]:
    labels = ("alone", "scheduler", "fcfs")
    per_repeat = {label: {"p50_ttft_ms": [ms(percentile(ttfts(r, label), 50)) for r in repeated],
                          "p99_ttft_ms": [ms(percentile(ttfts(r, label), 99)) for r in repeated],
                          "samples": [len(ttfts(r, label)) for r in repeated],
                          "rejected": [r[label]["interactive"]["rejected"] for r in repeated],  # type: ignore[index]
                          "errors": [r[label]["interactive"]["errors"] for r in repeated]}  # type: ignore[index]
                  for label in labels}
    pooled = {label: [t for r in repeated for t in ttfts(r, label)] for label in labels}
    pooled_p99 = {label: ms(percentile(values, 99)) if len(values) >= MIN_P99_SAMPLES else None for label, values in pooled.items()}
    shares = [leftover_share(float(r["alone"]["worker_busy_fraction"]), float(r["scheduler"]["worker_busy_fraction"])) for r in repeated]  # type: ignore[arg-type]
    shares_fcfs = [leftover_share(float(r["alone"]["worker_busy_fraction"]), float(r["fcfs"]["worker_busy_fraction"])) for r in repeated]  # type: ignore[arg-type]
    rates = {label: spread([float(r[label]["batch_lines_per_min"]) for r in repeated]) for label in ("idle", "scheduler", "fcfs")}  # type: ignore[arg-type]
    p99 = {label: spread(per_repeat[label]["p99_ttft_ms"]) for label in labels}
    p50 = {label: spread(per_repeat[label]["p50_ttft_ms"]) for label in labels}
    share = spread(list(shares))
    ratio = (p99["scheduler"]["median"] or 0) / p99["alone"]["median"] if p99["alone"]["median"] else None
    result: dict[str, object] = {
        "per_repeat": per_repeat, "p50_ttft_ms": p50, "p99_ttft_ms": p99, "pooled_samples": {k: len(v) for k, v in pooled.items()},
        "pooled_p99_ttft_ms": pooled_p99, "batch_lines_per_min": rates,
        "worker_busy_fraction": {label: spread([float(r[label]["worker_busy_fraction"]) for r in repeated]) for label in ("alone", "idle", "scheduler", "fcfs")},  # type: ignore[arg-type]
        "slot_occupancy": {label: spread([float(r[label]["slot_occupancy"]) for r in repeated]) for label in ("alone", "idle", "scheduler", "fcfs")},  # type: ignore[arg-type]
        "batch_share_of_leftover": share, "batch_share_of_leftover_fcfs": spread(list(shares_fcfs)),
        "p99_ratio_scheduler_to_alone": None if ratio is None else round(ratio, 3),
    }
    result["goal_ttft_within_1_5x"] = ratio is not None and ratio <= 1.5
    result["goal_batch_ge_80pct_of_leftover"] = share["median"] is not None and share["median"] >= 0.8
    result["table"] = _rows(result, labels)
    return result


def _fmt(cell: dict[str, float | None]) -> str:
    return "-" if cell["median"] is None else f"{cell['median']:g} [{cell['min']:g}-{cell['max']:g}]"


def _rows(result: dict[str, object], labels: tuple[str, ...]) -> list[tuple[str, ...]]:
    p50, p99, pooled, rates = result["p50_ttft_ms"], result["p99_ttft_ms"], result["pooled_p99_ttft_ms"], result["batch_lines_per_min"]
    samples = result["pooled_samples"]
    rows = [("median [min-max] over repeats", *labels, "batch idle")]
    rows.append(("interactive p50 TTFT ms", *(_fmt(p50[k]) for k in labels), "-"))  # type: ignore[index]
    rows.append(("interactive p99 TTFT ms", *(_fmt(p99[k]) for k in labels), "-"))  # type: ignore[index]
    rows.append(("pooled p99 TTFT ms (n)", *(f"{pooled[k]} ({samples[k]})" for k in labels), "-"))  # type: ignore[index]
    rows.append(("batch lines/min", "-", _fmt(rates["scheduler"]), _fmt(rates["fcfs"]), _fmt(rates["idle"])))  # type: ignore[index]
    busy, slots = result["worker_busy_fraction"], result["slot_occupancy"]
    rows.append(("engine busy fraction", *(_fmt(busy[k]) for k in labels), _fmt(busy["idle"])))  # type: ignore[index]
    rows.append(("slot occupancy", *(_fmt(slots[k]) for k in labels), _fmt(slots["idle"])))  # type: ignore[index]
    rows.append(("batch share of leftover", "-", _fmt(result["batch_share_of_leftover"]), _fmt(result["batch_share_of_leftover_fcfs"]), "-"))  # type: ignore[arg-type]
    rows.append(("goal p99 <= 1.5x alone", "", "met" if result["goal_ttft_within_1_5x"] else "NOT met", "", ""))
    rows.append(("goal batch share >= 0.8", "", "met" if result["goal_batch_ge_80pct_of_leftover"] else "NOT met", "", ""))
    return rows


if __name__ == "__main__":
    main()
