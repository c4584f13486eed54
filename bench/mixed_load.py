"""Interactive traffic from a real trace beside a batch job: the scheduler vs FCFS.

    .venv/bin/python bench/mixed_load.py [--quick]

Interactive load replays a time-scaled slice of
../shared/data/traces/azure_llm_2023_code.csv (arrival times from the trace,
token counts scaled down to what SmolLM2 on 2 CPU cores serves in about a
second) as streaming chat requests against the embedded SmolLM2 model (2
llama.cpp workers). Four runs on the same machine, each on a fresh server:

  alone      interactive replay only
  idle       the batch job only (its throughput on an idle fleet)
  scheduler  both together, workload classes on
  fcfs       both together, classes off (one first-come-first-served queue)

Writes bench/results/mixed_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
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
  batch_concurrency: 4
  ttft_objective_s: {{interactive: 30}}
models:
  smollm2-135m:
    kind: chat
    deployments:
      - backend: llamacpp
        model_file: builtin:smollm2-135m
        workers: 2
        threads: 1
        n_ctx: 2048
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


async def sample_busy(base: str, stop: asyncio.Event, samples: list[float]) -> None:
    """The fraction of local workers busy, sampled every 100 ms (the server's own view)."""
    async with httpx.AsyncClient(timeout=10) as http:
        while not stop.is_set():
            fleet = (await http.get(base + "/admin/fleet")).json()
            workers = [w for d in fleet["deployments"] for w in d["workers"]]
            if workers:
                samples.append(sum(1 for w in workers if w.get("busy")) / len(workers))
            await asyncio.sleep(0.1)


async def scenario(base: str, trace: list[tuple[float, int, int]] | None, batch_lines: int) -> dict[str, object]:
    result: dict[str, object] = {}
    busy: list[float] = []
    done = asyncio.Event()
    sampler = asyncio.create_task(sample_busy(base, done, busy))
    batch_id = await submit_batch(base, batch_lines) if batch_lines else None
    if batch_id:
        while (await completed_lines(base, batch_id))[0] < 2:  # the job is under way
            await asyncio.sleep(0.2)
    t0 = time.monotonic()
    before = (await completed_lines(base, batch_id))[0] if batch_id else 0
    if trace is not None:
        result["interactive"] = await interactive(base + "/v1/chat/completions", trace)
    else:
        while batch_id and (await completed_lines(base, batch_id))[1] not in ("completed", "failed") and time.monotonic() - t0 < 600:
            await asyncio.sleep(0.5)
    if batch_id:
        after, status = await completed_lines(base, batch_id)
        result["batch_lines_per_min"] = (after - before) / max(1e-9, time.monotonic() - t0) * 60
        result["batch_status"] = status
    done.set()
    await sampler
    result["worker_busy_fraction"] = sum(busy) / len(busy) if busy else 0.0
    return result


def run_server(tmp: Path, label: str, classes: bool) -> tuple[object, str]:
    config = tmp / f"{label}.yaml"
    config.write_text(CONFIG.format(classes="true" if classes else "false"))
    port = free_port()
    data = tmp / label
    server = start(["serve", "--config", str(config), "--port", str(port), "--log-level", "warning", "--data-dir", str(data)], tmp / f"{label}.log", f"http://127.0.0.1:{port}/readyz")
    return server, f"http://127.0.0.1:{port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a 40 s replay and a 40-line batch (a few minutes in all)")
    parser.add_argument("--time-scale", type=float, default=2.0, help="stretch the trace's time by this factor")
    args = parser.parse_args()
    seconds, lines = (40.0, 40) if args.quick else (120.0, 300)
    trace = load_trace(seconds, args.time_scale, skip_s=0.0)
    runs: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for label, classes, with_trace, with_batch in (("alone", True, True, False), ("idle", True, False, True), ("scheduler", True, True, True), ("fcfs", False, True, True)):
            server, base = run_server(tmp, label, classes)
            try:
                runs[label] = asyncio.run(scenario(base, trace if with_trace else None, lines if with_batch else 0))
            finally:
                stop(server)  # type: ignore[arg-type]
    report = summarise(runs, trace, seconds)
    print(table(report["table"]))  # type: ignore[arg-type]
    path = write_result("mixed_load", {k: v for k, v in report.items() if k != "table"} | {"machine": machine(), "trace": str(TRACE.name), "requests": len(trace), "replay_s": seconds, "batch_lines": lines})
    print(f"wrote {path}")


def summarise(runs: dict[str, dict[str, object]], trace: list[tuple[float, int, int]], seconds: float) -> dict[str, object]:
    def p(label: str, q: float) -> float | None:
        inter = runs[label].get("interactive")
        value = percentile(inter["ttfts"], q) if isinstance(inter, dict) else None  # type: ignore[arg-type]
        return None if value is None else round(value * 1000, 1)

    utilization = float(runs["alone"]["worker_busy_fraction"])  # type: ignore[arg-type]
    idle_rate = float(runs["idle"]["batch_lines_per_min"])  # type: ignore[arg-type]
    with_rate = float(runs["scheduler"]["batch_lines_per_min"])  # type: ignore[arg-type]
    result: dict[str, object] = {
        "interactive_p50_ttft_ms_alone": p("alone", 50), "interactive_p99_ttft_ms_alone": p("alone", 99),
        "interactive_p50_ttft_ms_with_batch": p("scheduler", 50), "interactive_p99_ttft_ms_with_batch": p("scheduler", 99),
        "interactive_p50_ttft_ms_fcfs": p("fcfs", 50), "interactive_p99_ttft_ms_fcfs": p("fcfs", 99),
        "batch_lines_per_min_idle": round(idle_rate, 1), "batch_lines_per_min_with_interactive": round(with_rate, 1),
        "batch_lines_per_min_fcfs": round(float(runs["fcfs"]["batch_lines_per_min"]), 1),  # type: ignore[arg-type]
        "interactive_worker_utilization": round(utilization, 3),
        "interactive_rejected": {k: runs[k]["interactive"]["rejected"] for k in ("alone", "scheduler", "fcfs")},  # type: ignore[index]
    }
    alone_p99, sched_p99 = result["interactive_p99_ttft_ms_alone"], result["interactive_p99_ttft_ms_with_batch"]
    result["goal_ttft_within_1_5x"] = bool(alone_p99 and sched_p99 and sched_p99 <= 1.5 * alone_p99)  # type: ignore[operator]
    result["batch_share_of_idle_capacity"] = round(with_rate / max(1e-9, idle_rate * (1 - utilization)), 3)
    result["goal_batch_ge_80pct_of_leftover"] = result["batch_share_of_idle_capacity"] >= 0.8  # type: ignore[operator]
    rows = [("", "alone", "scheduler", "fcfs", "batch idle")]
    rows.append(("interactive p50 TTFT ms", str(p("alone", 50)), str(p("scheduler", 50)), str(p("fcfs", 50)), "-"))
    rows.append(("interactive p99 TTFT ms", str(p("alone", 99)), str(p("scheduler", 99)), str(p("fcfs", 99)), "-"))
    rows.append(("batch lines/min", "-", f"{with_rate:.1f}", f"{result['batch_lines_per_min_fcfs']}", f"{idle_rate:.1f}"))
    rows.append(("interactive rejected", *(str(runs[k]["interactive"]["rejected"]) for k in ("alone", "scheduler", "fcfs")), "-"))  # type: ignore[index]
    rows.append(("interactive utilization", f"{utilization:.2f}", "", "", ""))
    rows.append(("goal p99 <= 1.5x alone", "", "met" if result["goal_ttft_within_1_5x"] else "NOT met", "", ""))
    rows.append(("goal batch >= 80% of leftover", "", f"{result['batch_share_of_idle_capacity']:.2f}", "", ""))
    result["table"] = rows
    return result


if __name__ == "__main__":
    main()
