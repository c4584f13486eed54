"""Two commits' gateway side by side on the same machine, alternated: did a change cost throughput or CPU?

    .venv/bin/python bench/ab_gateway.py BASE [NEW=HEAD] [--rounds 3] [--seconds 10]

For each round, in alternating order, it checks out one commit's ``src/``
into this working tree (the editable install serves it), starts modelyard on
bench/gateway.py's configuration (API keys, limits, budgets, ledger) in front
of the 50 ms fake upstream, and measures 50 concurrent clients with wrk:
requests per second and the gateway's CPU milliseconds per request. ``src/``
is restored to HEAD at the end, whatever happens. Reports medians and the
spread; writes bench/results/ab_gateway.json.

Use it when the machine's speed differs from an earlier run's: bench/gateway.py
compares gateways within one run, this compares code within one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway  # noqa: E402
from _common import ROOT, free_port, machine, median, start, stop, table, write_result  # noqa: E402


def resolve(rev: str) -> str:
    return subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def measure(rev: str, up_port: int, tmp: Path, seconds: int, wrk_bin: str, index: int) -> tuple[float, float]:
    subprocess.run(["git", "checkout", rev, "--", "src"], cwd=ROOT, check=True)
    config = tmp / "modelyard.yaml"
    config.write_text(gateway.MODELYARD_CONFIG.format(port=up_port))
    port = free_port()
    server = start(["serve", "--config", str(config), "--port", str(port), "--data-dir", str(tmp / f"data{index}"), "--log-level", "warning"],
                   tmp / f"modelyard{index}.log", f"http://127.0.0.1:{port}/readyz", env={"MODELYARD_MASTER_KEY": gateway.MASTER_KEY})
    try:
        url = f"http://127.0.0.1:{port}"
        script = tmp / "post.lua"
        script.write_text(gateway.WRK_SCRIPT.format(body=json.dumps(gateway.BODY), key=gateway.tenant_key(url)))
        gateway.wrk(wrk_bin, url, 10, 2, script)  # warm-up
        assert server.pid is not None
        before = gateway.cpu_seconds(server.pid)
        point = gateway.wrk(wrk_bin, url, 50, seconds, script)
        cpu_ms = (gateway.cpu_seconds(server.pid) - before) * 1000 / max(1.0, point["rps"] * seconds)
        return point["rps"], cpu_ms
    finally:
        stop(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base")
    parser.add_argument("new", nargs="?", default="HEAD")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    if subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True).stdout.strip():
        raise SystemExit("src/ has uncommitted changes: commit them first (this script checks out src/)")
    revs = [resolve(args.base), resolve(args.new)]
    wrk_bin = gateway.ensure_wrk()
    runs: dict[str, list[tuple[float, float]]] = {rev: [] for rev in revs}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        up_port = free_port()
        upstream = start(["fake-upstream", "--port", str(up_port), "--latency-ms", "50", "--tokens", "16"], tmp / "upstream.log", f"http://127.0.0.1:{up_port}/v1/models")
        try:
            for i in range(args.rounds):
                for rev in revs if i % 2 == 0 else revs[::-1]:
                    rps, cpu = measure(rev, up_port, tmp, args.seconds, wrk_bin, len(runs[revs[0]]) + len(runs[revs[1]]))
                    runs[rev].append((rps, cpu))
                    print(f"  {rev}  {rps:7.1f} req/s  {cpu:.3f} ms CPU per request", flush=True)
        finally:
            subprocess.run(["git", "checkout", "HEAD", "--", "src"], cwd=ROOT, check=True)
            stop(upstream)
    summary = {rev: {"rps_median": median([r for r, _ in v]), "rps_range": [min(r for r, _ in v), max(r for r, _ in v)],
                     "cpu_ms_median": median([c for _, c in v]), "cpu_ms_range": [min(c for _, c in v), max(c for _, c in v)]} for rev, v in runs.items()}
    rows = [("commit", "req/s median", "range", "CPU ms/request median", "range")]
    rows += [(rev, f"{s['rps_median']:.1f}", f"{s['rps_range'][0]:.0f}-{s['rps_range'][1]:.0f}", f"{s['cpu_ms_median']:.3f}",
              f"{s['cpu_ms_range'][0]:.3f}-{s['cpu_ms_range'][1]:.3f}") for rev, s in summary.items()]
    print(table(rows))
    write_result("ab_gateway", {"machine": machine(), "base": revs[0], "new": revs[1], "rounds": args.rounds, "seconds": args.seconds, "runs": runs, "summary": summary})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
