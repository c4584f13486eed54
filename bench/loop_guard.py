"""The loop guard on a synthetic replay: false alarms on benign agent sessions, and how fast injected loops are caught.

    .venv/bin/python bench/loop_guard.py [--sessions 500] [--seed 5]

Benign sessions (3-30 steps) search, list, read and write files and run the
tests: calls are distinct, except the ones an agent really repeats with new
results (running the tests again after each edit, reading a file again after
writing it). Injected sessions start the same way and then loop: the same
call answered the same way, a two-call cycle or a three-call cycle. Each
step, the conversation so far goes through the guard's detection (the same
code the ``loop_guard`` stage runs); the table counts sessions flagged and,
for loops, the steps from the first repeated call to the step the guard
acts on (the goal: within N+1, N = ``max_identical``). Writes
bench/results/loop_guard.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table, write_result  # noqa: E402

from modelyard.shaping.loops import LoopPolicy, find_loop  # noqa: E402

Step = tuple[str, dict[str, Any], str]  # tool, arguments, result


def benign(rng: random.Random, length: int) -> list[Step]:
    steps: list[Step] = []
    failing = rng.randint(1, 5)
    for i in range(length):
        roll = rng.random()
        if roll < 0.2:
            steps.append(("search", {"query": f"topic {i} {rng.randint(0, 10**6)}"}, f"results {i}"))
        elif roll < 0.35:
            steps.append(("list_dir", {"path": f"src/pkg{i}"}, f"files of pkg{i}"))
        elif roll < 0.6:
            path = f"src/module_{rng.randint(0, 10**6)}.py"
            steps.append(("read_file", {"path": path}, f"content of {path}"))
            if rng.random() < 0.3:  # write it, then read it again: the same call, a new result
                steps.append(("write_file", {"path": path, "content": f"v{i}"}, "written"))
                steps.append(("read_file", {"path": path}, f"content of {path} v{i}"))
        else:
            steps.append(("run_tests", {}, f"{failing} failed" if failing else "all passed"))  # the same call, each time a new result
            failing = max(0, failing - rng.randint(0, 1))
            steps.append(("write_file", {"path": f"src/fix_{i}.py", "content": f"fix {i}"}, "written"))
    return steps[:length]


def looping(rng: random.Random, kind: str, prefix: int, loop_steps: int) -> tuple[list[Step], int]:
    """A benign start, then a loop; the index of the first repeated call."""
    steps = benign(rng, prefix)
    a: Step = ("search", {"query": "the same thing"}, "no results")
    b: Step = ("read_file", {"path": "README.md"}, "readme")
    c: Step = ("list_dir", {"path": "."}, "README.md src tests")
    pattern = {"identical": [a], "cycle2": [a, b], "cycle3": [a, b, c]}[kind]
    body = [pattern[i % len(pattern)] for i in range(loop_steps)]
    return steps + body, len(steps) + len(pattern)


def messages(steps: list[Step]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "user", "content": "Fix the failing tests."}]
    for i, (name, arguments, result) in enumerate(steps):
        call_id = f"call_{i}"
        out.append({"role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}]})
        out.append({"role": "tool", "tool_call_id": call_id, "content": result})
    return out


def first_flag(steps: list[Step], policy: LoopPolicy) -> int | None:
    """The first step whose request (the history of steps before it) the guard flags."""
    for n in range(1, len(steps) + 1):
        if find_loop(messages(steps[:n]), policy) is not None:
            return n  # the request after n calls: step n+1 is the one acted on
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    policy = LoopPolicy()
    rng = random.Random(args.seed)
    false_alarms = sum(1 for _ in range(args.sessions) if first_flag(benign(rng, rng.randint(3, 30)), policy) is not None)
    caught: dict[str, list[int | None]] = {}
    for kind in ("identical", "cycle2", "cycle3"):
        caught[kind] = []
        for _ in range(args.sessions):
            steps, first_repeat = looping(rng, kind, rng.randint(0, 20), 12)
            flagged = first_flag(steps, policy)
            # steps from the first repeated call to the request the guard acts on (that request is call number flagged + 1)
            caught[kind].append(None if flagged is None else flagged + 1 - first_repeat)
    rows = [("sessions", "count", "flagged", "steps to catch (max)", "goal")]
    rows.append(("benign", str(args.sessions), str(false_alarms), "-", "0 flagged"))
    for kind, delays in caught.items():
        found = [d for d in delays if d is not None]
        rows.append((f"loop: {kind}", str(len(delays)), str(len(found)), str(max(found) if found else "-"), f"all, within {policy.max_identical + 1}"))
    print(table(rows))
    summary = {
        "benign_sessions": args.sessions, "false_alarms": false_alarms,
        "loops": {k: {"sessions": len(v), "caught": sum(1 for d in v if d is not None), "max_steps_to_catch": max((d for d in v if d is not None), default=None)}
                  for k, v in caught.items()},
        "policy": {"max_identical": policy.max_identical, "max_period": policy.max_period, "cycle_repeats": policy.cycle_repeats},
    }
    write_result("loop_guard", {"seed": args.seed, "machine": machine(), "summary": summary})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
