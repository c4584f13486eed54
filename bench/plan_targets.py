"""What a learned alias's quality target costs at scale: `router shares` then `plan --target-shares`.

    .venv/bin/python bench/plan_targets.py [--duration-s 300] [--scale 1]

1. ``modelyard router shares`` on the held-out part of the local outcome table
   (data/routing/local_outcomes.jsonl, --split test, int8 embeddings as `auto`
   serves): per quality target, the share of prompts to each model and the
   recorded quality and cost of those answers.
2. ``modelyard plan`` of the Azure conversation trace (``--duration-s`` from
   the start, token scale 0.05, every request to ``auto``) on the embedded
   fleet with the profiles in bench/results/profiles/, ``--what-if target``:
   replicas, cost per 1,000 requests and expected quality per target.

Writes bench/results/plan_targets.json. Pure simulation after the shares: no
engine runs, so the figures move only with the router, the table, the
profiles and the planner's code.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ENV, ROOT, table, write_result  # noqa: E402

ROUTER = ROOT / "src/modelyard/data/routers/auto.npz"
OUTCOMES = ROOT / "data/routing/local_outcomes.jsonl"
TRACE = ROOT.parent / "shared/data/traces/azure_llm_2023_conv.csv"
PROFILES = ROOT / "bench/results/profiles"


def cli(*args: str) -> str:
    run = subprocess.run([sys.executable, "-m", "modelyard.cli", *args], capture_output=True, text=True, env=ENV, cwd=ROOT, check=False)
    if run.returncode not in (0, 1):  # plan exits 1 when the objectives cannot be met: still a result
        raise SystemExit(f"modelyard {args[0]} failed ({run.returncode}):\n{run.stderr[-2000:]}")
    return run.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration-s", type=float, default=300.0, help="seconds of the conversation trace")
    parser.add_argument("--scale", type=float, default=1.0, help="times the trace's traffic")
    parser.add_argument("--slo", default="p99_ttft_s=5")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shares_file = Path(tmp) / "shares.json"
        cli("router", "shares", "--router", str(ROUTER), "--data", str(OUTCOMES), "--split", "test", "--embedding-runtime", "onnx-int8", "--out", str(shares_file))
        shares = json.loads(shares_file.read_text())
        out = cli("plan", "--trace", str(TRACE), "--duration-s", str(args.duration_s), "--token-scale", "0.05", "--scale", str(args.scale), "--model", "auto",
                  "--profiles", str(PROFILES), "--target-shares", f"auto={shares_file}", "--what-if", "target", "--slo", args.slo, "--json")
    summary = json.loads(out.strip().splitlines()[-1])
    rows = [r for r in summary["what_ifs"] if r["what_if"] == "quality target"]
    by_target = []
    for share_row, plan_row in zip(shares["rows"], rows, strict=True):
        by_target.append({"target": share_row["target"], "shares": share_row["shares"], "expected_quality": share_row["quality"],
                          "replicas": plan_row["replicas"], "cost_per_1k_requests_usd": plan_row["cost_per_1k_requests_usd"],
                          "ttft_p99_ms": plan_row["ttft_p99_ms"], "objectives_met": plan_row["objectives_met"]})
    printed = [("target", "to smollm2", "quality", "cost/1k req ($)", "replicas", "ttft p99 ms", "met")]
    for r in by_target:
        printed.append((f"{r['target']:g}", f"{r['shares'].get('smollm2-135m', 0):.0%}", f"{r['expected_quality']:.3f}", f"{r['cost_per_1k_requests_usd']:.5f}",
                        ", ".join(f"{k}={v}" for k, v in sorted(r["replicas"].items())), f"{r['ttft_p99_ms']:.0f}", "yes" if r["objectives_met"] else "no"))
    print(table(printed))
    print("wrote", write_result("plan_targets", {
        "settings": {"duration_s": args.duration_s, "scale": args.scale, "token_scale": 0.05, "slo": args.slo, "router": str(ROUTER.relative_to(ROOT)),
                     "outcomes": str(OUTCOMES.relative_to(ROOT)), "split": "test", "prompts": shares["n"]},
        "by_target": by_target, "planned": {"replicas": summary["replicas"], "cost_per_1k_requests_usd": summary["cost_per_1k_requests_usd"]},
    }))


if __name__ == "__main__":
    main()
