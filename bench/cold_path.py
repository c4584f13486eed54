"""How much slower code runs when it runs once per request at low load: the same call back to back, and with idle between calls.

    .venv/bin/python bench/cold_path.py [--calls 150] [--idle-ms 50]

Times three pieces of the learned alias's request path in this process,
each ``--calls`` times back to back and then ``--calls`` times with
``--idle-ms`` of sleep (or of busy-waiting) between calls, as a gateway at
concurrency 1 in front of a 50 ms upstream runs them:

    encode   the default fleet's route embedding (its `auto` alias's embedding model: MiniLM on ONNX int8,
             at the deployment's ``layers``), one short prompt
    route    the shipped learned router's decision for one vector (builtin:auto)
    words    its word view and settling for a multiple-choice question the words settle (no vector needed)
    parse    orjson parse and dump of a chat request body, 200 times (plain Python and C)

Reports each one's median and p90 in each mode and the ratio to back to
back. The busy-wait mode tells whether the slowdown comes from the CPU going
idle (then busy-waiting removes it) or from the caches and branch predictors
the call had warmed being used by other work in between (then it stays).

Writes bench/results/cold_path.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median, percentile, table, write_result  # noqa: E402

SETTLED = "Where would you most likely see a bridge?\n\nA. a park 7\nB. a book\nC. a cup\nD. a shoe\n\nAnswer with the letter of the correct option only."
BODY = {"model": "auto", "messages": [{"role": "user", "content": "hello there, what is the capital of France?"}], "max_tokens": 16}
MODES = ("back_to_back", "idle_sleep", "idle_busy")


def pieces(models_dir: Path) -> dict[str, Callable[[], Any]]:
    from modelyard.backends.sentence_embeddings import _load_onnx
    from modelyard.config.defaults import DEFAULT_FLEET
    from modelyard.fleet.artifacts import resolve
    from modelyard.pipeline import router_file

    deployment = DEFAULT_FLEET["models"][DEFAULT_FLEET["aliases"]["auto"]["embedding_model"]]["deployments"][0]
    encoder = _load_onnx(resolve(deployment["model_path"], models_dir), 1, deployment["runtime"], deployment.get("layers"))
    router, _ = router_file.load(router_file.resolve("builtin:auto"))
    vector = encoder.encode([str(BODY["messages"][0]["content"])])[0][0]  # type: ignore[index]
    raw = orjson.dumps(BODY)

    def words() -> Any:
        seen = router.word_view(SETTLED)
        assert seen is not None
        choice = router.settle(seen, target=0.35)
        assert choice is not None, "the question is no longer settled by words"
        return choice

    def parse() -> None:
        for _ in range(200):
            orjson.dumps(orjson.loads(raw))

    return {
        "encode": lambda: encoder.encode(["hello there, what is the capital of France?"]),
        "route": lambda: router.route(np.asarray(vector, dtype=np.float32), target=0.9, prompt="hello there, what is the capital of France?"),
        "words": words,
        "parse": parse,
    }


def timed(call: Callable[[], Any], calls: int, mode: str, idle_s: float) -> list[float]:
    out = []
    for _ in range(calls):
        began = time.perf_counter()
        call()
        out.append((time.perf_counter() - began) * 1000)
        if mode == "idle_sleep":
            time.sleep(idle_s)
        elif mode == "idle_busy":
            end = time.perf_counter() + idle_s
            while time.perf_counter() < end:
                pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=150, help="timed calls per piece and mode (default 150)")
    parser.add_argument("--idle-ms", type=float, default=50.0, help="idle between calls in the idle modes (default 50)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        calls = pieces(Path(tmp))
        for call in calls.values():  # warm-up: first-call costs are not what this measures
            timed(call, 20, "back_to_back", 0.0)
        result: dict[str, Any] = {"config": {"calls": args.calls, "idle_ms": args.idle_ms}, "machine": machine()}
        rows = [("piece", *(f"{m} p50 ms" for m in MODES), "sleep / back to back", "busy / back to back")]
        for name, call in calls.items():
            modes = {mode: timed(call, args.calls, mode, args.idle_ms / 1000) for mode in MODES}
            row: dict[str, Any] = {mode: {"p50_ms": round(median(v) or 0.0, 4), "p90_ms": round(percentile(v, 90) or 0.0, 4)}
                                   for mode, v in modes.items()}
            base = row["back_to_back"]["p50_ms"] or 1e-9
            row["idle_sleep_over_back_to_back"] = round(row["idle_sleep"]["p50_ms"] / base, 2)
            row["idle_busy_over_back_to_back"] = round(row["idle_busy"]["p50_ms"] / base, 2)
            result[name] = row
            rows.append((name, *(f"{row[m]['p50_ms']:.3f}" for m in MODES), f"{row['idle_sleep_over_back_to_back']:.2f}x",
                         f"{row['idle_busy_over_back_to_back']:.2f}x"))
    print(table(rows))
    print(write_result("cold_path", result))


if __name__ == "__main__":
    main()
