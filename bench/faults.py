"""Failover under load: one of two upstream deployments fails mid-run, then recovers.

    .venv/bin/python bench/faults.py [--quick] [--kinds kill,hang,...]

Constant load (CLIENTS concurrent clients) on a model with two deployments of
the fake upstream (two real HTTP server processes). At T_FAULT replica b
fails, at T_BACK it recovers. One run per fault kind, each on fresh processes:

  kill            the process is SIGKILLed (connection refused) and restarted
  hang            it accepts requests and never answers
  slow            its first byte comes after the deployment's first-token timeout
  5xx             it answers every request 500 (an error storm)
  kill_capacity   both replicas serve at most CAPACITY requests at once (the
                  rest queue); b is killed, so the outage costs capacity

Reports success rate and latency before, during and after the fault, and how
long the circuit breaker took to open and to close (its cooldown is read from
the config the run used). Writes bench/results/faults.json: the kill run's
figures at the top level (as before) and every kind under ``by_fault``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, machine, percentile, start, stop, table, write_result  # noqa: E402

CONFIG = """
models:
  fake:
    kind: chat
    breaker: {{consecutive_failures: 5, cooldown_s: 2}}
    deployments:
      - {{name: a, backend: openai, base_url: 'http://127.0.0.1:{a}/v1', timeouts: {{connect_s: 1, first_token_s: 1}}}}
      - {{name: b, backend: openai, base_url: 'http://127.0.0.1:{b}/v1', timeouts: {{connect_s: 1, first_token_s: 1}}}}
"""
KINDS = ("kill", "hang", "slow", "5xx", "kill_capacity")
CAPACITY = 8  # per replica, in kill_capacity: 50 clients need both replicas' slots
INJECTED = {"hang": {"mode": "hang"}, "slow": {"mode": "slow", "latency_ms": 3000}, "5xx": {"mode": "status", "status": 500}}


async def client_loop(url: str, stop_at: float, started: float, samples: list[tuple[float, bool, float]]) -> None:
    body = {"model": "fake", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=1)) as client:
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            try:
                response = await client.post(url, json=body)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            samples.append((t0 - started, ok, time.monotonic() - t0))


async def watch_breaker(url: str, stop_at: float, started: float, states: list[tuple[float, str]]) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < stop_at:
            try:
                state = (await client.get(url)).json()["fake/b"]["state"]
                if not states or states[-1][1] != state:
                    states.append((time.monotonic() - started, state))
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            await asyncio.sleep(0.05)


def phase(samples: list[tuple[float, bool, float]], lo: float, hi: float) -> dict[str, float | int | None]:
    inside = [s for s in samples if lo <= s[0] < hi]
    latencies = [s[2] * 1000 for s in inside if s[1]]
    ok = sum(1 for s in inside if s[1])
    return {
        "requests": len(inside),
        "success_rate": ok / len(inside) if inside else None,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        # the requests sent to a hanging replica before the breaker opens are too few to move a p99
        "p999_ms": percentile(latencies, 99.9),
        "max_ms": max(latencies, default=None),
    }


async def inject(port: int, fault: dict[str, object] | None) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        (await client.post(f"http://127.0.0.1:{port}/fault", json=fault or {"mode": None})).raise_for_status()


async def run(args: argparse.Namespace, tmp: Path, kind: str) -> dict[str, object]:
    port_a, port_b = free_port(), free_port()
    upstream_flags = ["--latency-ms", str(args.latency_ms), "--tokens", "8", *(["--capacity", str(CAPACITY)] if kind == "kill_capacity" else [])]
    a = start(["fake-upstream", "--port", str(port_a), *upstream_flags], tmp / f"{kind}-a.log", f"http://127.0.0.1:{port_a}/v1/models")
    b = start(["fake-upstream", "--port", str(port_b), *upstream_flags], tmp / f"{kind}-b.log", f"http://127.0.0.1:{port_b}/v1/models")
    config_text = CONFIG.format(a=port_a, b=port_b)
    config = tmp / f"{kind}.yaml"
    config.write_text(config_text)
    model = yaml.safe_load(config_text)["models"]["fake"]
    port = free_port()
    gateway = start(["serve", "--config", str(config), "--port", str(port), "--log-level", "warning"], tmp / f"{kind}-gw.log", f"http://127.0.0.1:{port}/readyz")
    base = f"http://127.0.0.1:{port}"
    samples: list[tuple[float, bool, float]] = []
    states: list[tuple[float, str]] = []
    try:
        started = time.monotonic()
        stop_at = started + args.duration
        tasks = [asyncio.create_task(client_loop(base + "/v1/chat/completions", stop_at, started, samples)) for _ in range(args.clients)]
        tasks.append(asyncio.create_task(watch_breaker(base + "/admin/breakers", stop_at, started, states)))
        await asyncio.sleep(args.kill_at)
        killed_at = time.monotonic() - started
        if kind in INJECTED:
            await inject(port_b, INJECTED[kind])
        else:
            b.send_signal(signal.SIGKILL)
            b.wait()
        await asyncio.sleep(args.back_at - args.kill_at)
        back_at = time.monotonic() - started
        if kind in INJECTED:
            await inject(port_b, None)
        else:
            b = await asyncio.to_thread(start, ["fake-upstream", "--port", str(port_b), *upstream_flags], tmp / f"{kind}-b2.log", f"http://127.0.0.1:{port_b}/v1/models")
        ready_at = time.monotonic() - started
        await asyncio.gather(*tasks)
    finally:
        for process in (gateway, a, b):
            stop(process)
    return summarise_run(samples, states, killed_at, back_at, ready_at, args) | {"cooldown_s": model["breaker"]["cooldown_s"],
                                                                                "first_token_timeout_s": model["deployments"][1]["timeouts"]["first_token_s"]}


def summarise_run(samples: list[tuple[float, bool, float]], states: list[tuple[float, str]], killed_at: float, back_at: float,
                  ready_at: float, args: argparse.Namespace) -> dict[str, object]:
    opened = next((t for t, s in states if s == "open" and t >= killed_at), None)
    closed = next((t for t, s in states if s == "closed" and t >= ready_at), None)
    before, during, after = phase(samples, 1.0, killed_at), phase(samples, killed_at, ready_at), phase(samples, ready_at + 0.5, args.duration)
    total_ok = sum(1 for s in samples if s[1])
    result: dict[str, object] = {
        "success_rate": total_ok / len(samples) if samples else 0.0,
        "requests": len(samples),
        "p50_ms_before": before["p50_ms"], "p99_ms_before": before["p99_ms"],
        "p50_ms_during": during["p50_ms"], "p99_ms_during": during["p99_ms"],
        "p999_ms_before": before["p999_ms"], "p999_ms_during": during["p999_ms"], "max_ms_during": during["max_ms"],
        "p50_ms_after": after["p50_ms"], "p99_ms_after": after["p99_ms"],
        "requests_during": during["requests"], "success_rate_during": during["success_rate"],
        "breaker_open_s": None if opened is None else round(opened - killed_at, 3),
        "breaker_close_s": None if closed is None else round(closed - ready_at, 3),
        "upstream_restart_s": round(ready_at - back_at, 3),
        "breaker_states": states,
    }
    before_p99, during_p99 = result["p99_ms_before"], result["p99_ms_during"]
    result["goals"] = {
        "success_rate_ge_99_9": float(result["success_rate"]) >= 0.999,  # type: ignore[arg-type]
        "p99_during_le_2x_before": before_p99 is not None and during_p99 is not None and during_p99 <= 2 * before_p99,  # type: ignore[operator]
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter runs (about 25 s per kind)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated fault kinds from {', '.join(KINDS)}")
    args = parser.parse_args()
    args.duration, args.kill_at, args.back_at = (20.0, 6.0, 12.0) if args.quick else (30.0, 10.0, 20.0)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown fault kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    by_fault: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            by_fault[kind] = asyncio.run(run(args, Path(tmp), kind))
            print(f"{kind}: done", flush=True)
    keys = ("requests", "success_rate", "success_rate_during", "p50_ms_before", "p99_ms_before", "p50_ms_during", "p99_ms_during",
            "p999_ms_before", "p999_ms_during", "max_ms_during", "p50_ms_after", "p99_ms_after", "breaker_open_s", "breaker_close_s", "cooldown_s")
    rows = [("metric", *kinds)]
    for key in keys:
        rows.append((key, *(f"{v:.4f}" if isinstance(v := by_fault[k][key], float) else str(v) for k in kinds)))
    rows.append(("goal: success >= 99.9%", *("met" if by_fault[k]["goals"]["success_rate_ge_99_9"] else "NOT met" for k in kinds)))  # type: ignore[index]
    rows.append(("goal: p99 during <= 2x before", *("met" if by_fault[k]["goals"]["p99_during_le_2x_before"] else "NOT met" for k in kinds)))  # type: ignore[index]
    print(table(rows))
    top = by_fault.get("kill", next(iter(by_fault.values())))
    config = {"clients": args.clients, "duration_s": args.duration, "kill_at_s": args.kill_at, "back_at_s": args.back_at,
              "upstream_latency_ms": args.latency_ms, "capacity_per_replica_in_kill_capacity": CAPACITY}
    print(f"wrote {write_result('faults', top | {'by_fault': by_fault, 'config': config, 'machine': machine()})}")


if __name__ == "__main__":
    main()
