"""What sharing rate limits and budgets through Redis costs a request: in the process vs in Redis vs no gateway.

    .venv/bin/python bench/shared_limits.py [--requests 400] [--rounds 3]

Starts the fake upstream (a real HTTP server, no added latency, a 16-token
answer) and two modelyard servers in front of it that differ only in where
they count rate limits and budgets: in the process, and in the Redis on
127.0.0.1:6379 (`--redis-url`). Every request authenticates with an API key
that has RPM and TPM limits, and its tenant a budget, all high enough never to
refuse, so each request runs the limiter (check and settle) and the budget
(reserve and commit).
Rounds alternate between the servers (and the upstream directly, the floor);
each round sends the requests one at a time (latency) and then 16 at a time
(throughput). Prints medians over rounds with their spread and writes
bench/results/shared_limits.json.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, machine, median, percentile, start, stop, table, write_result  # noqa: E402

MASTER = "sk-bench-master"
FLEET = """
models:
  fake-chat:
    kind: chat
    deployments:
      - {{backend: openai, base_url: 'http://127.0.0.1:{port}/v1', upstream_model: fake, price: {{input_per_1m: 1, output_per_1m: 2}}}}
"""
BODY = {"model": "fake-chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}


def api_key(url: str, tenant: str) -> str:
    admin = {"Authorization": f"Bearer {MASTER}"}
    httpx.post(url + "/admin/tenants", json={"id": tenant}, headers=admin).raise_for_status()
    httpx.post(url + f"/admin/tenants/{tenant}/budget", json={"total": 1_000_000}, headers=admin).raise_for_status()
    response = httpx.post(url + "/admin/keys", json={"tenant": tenant, "rpm": 10_000_000, "tpm": 1_000_000_000}, headers=admin)
    response.raise_for_status()
    return str(response.json()["key"])


async def sequential(url: str, key: str, n: int) -> list[float]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    seconds = []
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(n):
            started = time.perf_counter()
            (await client.post(url + "/v1/chat/completions", json=BODY, headers=headers)).raise_for_status()
            seconds.append(time.perf_counter() - started)
    return seconds


async def concurrent(url: str, key: str, n: int, width: int = 16) -> float:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    queue = list(range(n))

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            queue.pop()
            (await client.post(url + "/v1/chat/completions", json=BODY, headers=headers)).raise_for_status()

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=width)) as client:
        await asyncio.gather(*(worker(client) for _ in range(width)))
    return n / (time.perf_counter() - started)


def forget(redis_url: str, tenant: str) -> None:
    """Delete what the run left in Redis (its tenant's budget figures)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"modelyard:*:{tenant}:*"):
        client.delete(key)
    client.close()


def summary(rounds: list[dict[str, float]], field: str) -> tuple[float, float, float]:
    values = [r[field] for r in rounds]
    return median(values) or 0.0, min(values), max(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="modelyard-bench-"))
    tenant = f"bench-{uuid.uuid4().hex[:8]}"  # Redis outlives the run: figures of this run's own
    up_port = free_port()
    processes = [start(["fake-upstream", "--port", str(up_port), "--tokens", "16"], tmp / "up.log", f"http://127.0.0.1:{up_port}/v1/models")]
    try:
        config = tmp / "fleet.yaml"
        config.write_text(FLEET.format(port=up_port))
        targets: dict[str, tuple[str, str]] = {"upstream directly": (f"http://127.0.0.1:{up_port}", "")}
        for name, extra in (("in the process", []), ("in Redis", ["--redis-url", args.redis_url])):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            serve = ["serve", "--config", str(config), "--port", str(port), "--data-dir", str(tmp / name.replace(" ", "-")), *extra]
            processes.append(start(serve, tmp / f"{port}.log", url + "/readyz", env={"MODELYARD_MASTER_KEY": MASTER}))
            targets[name] = (url, api_key(url, tenant))
        results: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for _ in range(args.rounds):
            for name, (url, key) in targets.items():
                asyncio.run(sequential(url, key, 20))  # warm the connections and the path
                seconds = asyncio.run(sequential(url, key, args.requests))
                throughput = asyncio.run(concurrent(url, key, args.requests))
                results[name].append({"p50_ms": 1000 * (median(seconds) or 0), "p99_ms": 1000 * (percentile(seconds, 99) or 0), "rps_c16": throughput})
    finally:
        for process in reversed(processes):
            stop(process)
        forget(args.redis_url, tenant)
    local = summary(results["in the process"], "p50_ms")[0]
    rows = [("target", "p50 ms (min-max)", "p99 ms", "req/s at c16 (min-max)", "p50 vs in-process")]
    for name, rounds in results.items():
        p50, p99, rps = summary(rounds, "p50_ms"), summary(rounds, "p99_ms"), summary(rounds, "rps_c16")
        rows.append((name, f"{p50[0]:.2f} ({p50[1]:.2f}-{p50[2]:.2f})", f"{p99[0]:.2f}", f"{rps[0]:.0f} ({rps[1]:.0f}-{rps[2]:.0f})", f"{p50[0] / local:.2f}x"))
    print(table(rows))
    report: dict[str, Any] = {"machine": machine(), "requests": args.requests, "rounds": args.rounds, "results": results}
    print(f"wrote {write_result('shared_limits', report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
