"""Embedding throughput and latency with dynamic batching on and off.

    .venv/bin/python bench/embeddings.py [--quick]

Two modelyard servers serve MiniLM (real sentence-transformers), one with
batching on (default policy), one with it off. Single-text clients at
concurrency 1, 8 and 64 run for a fixed time against each, one server at a
time on the same machine. Writes bench/results/embeddings.json.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, machine, percentile, start, stop, table, write_result  # noqa: E402

CONFIG = """
models:
  minilm-l6:
    kind: embedding
    deployments:
      - backend: sentence-transformers
        model_path: builtin:all-minilm-l6-v2
        threads: 2
        batching: {{enabled: {enabled}, max_wait_ms: 5, max_batch_size: 64}}
"""
SENTENCES = [f"sentence number {i} about routing requests across a fleet of models" for i in range(500)]


async def load(url: str, concurrency: int, seconds: float) -> dict[str, float | None]:
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + seconds

    async def client(index: int) -> None:
        nonlocal errors
        async with httpx.AsyncClient(timeout=60) as http:
            i = index
            while time.monotonic() < stop_at:
                t0 = time.monotonic()
                response = await http.post(url, json={"model": "minilm-l6", "input": SENTENCES[i % len(SENTENCES)]})
                if response.status_code == 200:
                    latencies.append(time.monotonic() - t0)
                else:
                    errors += 1
                i += concurrency

    started = time.monotonic()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    elapsed = time.monotonic() - started
    return {
        "throughput_rps": len(latencies) / elapsed,
        "p50_ms": (percentile(latencies, 50) or 0) * 1000,
        "p99_ms": (percentile(latencies, 99) or 0) * 1000,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 s per point instead of 15 s")
    args = parser.parse_args()
    seconds = 4.0 if args.quick else 15.0
    results: dict[str, dict[str, dict[str, float | None]]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for label, enabled in (("batching_on", "true"), ("batching_off", "false")):
            config = tmp / f"{label}.yaml"
            config.write_text(CONFIG.format(enabled=enabled))
            port = free_port()
            server = start(["serve", "--config", str(config), "--port", str(port), "--log-level", "warning", "--data-dir", str(tmp)], tmp / f"{label}.log", f"http://127.0.0.1:{port}/readyz")
            try:
                url = f"http://127.0.0.1:{port}/v1/embeddings"
                asyncio.run(load(url, 4, 1.0))  # warm-up
                results[label] = {f"c{c}": asyncio.run(load(url, c, seconds)) for c in (1, 8, 64)}
            finally:
                stop(server)
    rows = [("concurrency", "on: req/s", "on: p99 ms", "off: req/s", "off: p99 ms", "speed-up")]
    for c in ("c1", "c8", "c64"):
        on, off = results["batching_on"][c], results["batching_off"][c]
        speedup = (on["throughput_rps"] or 0) / (off["throughput_rps"] or 1)
        rows.append((c, f"{on['throughput_rps']:.1f}", f"{on['p99_ms']:.1f}", f"{off['throughput_rps']:.1f}", f"{off['p99_ms']:.1f}", f"{speedup:.2f}x"))
    print(table(rows))
    path = write_result("embeddings", {"results": results, "seconds_per_point": seconds, "machine": machine()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
