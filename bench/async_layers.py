"""What the dispatcher's layers of async generators cost per whole answer, against one coroutine.

    .venv/bin/python bench/async_layers.py [--calls 20000] [--rounds 5]

A whole (non-streamed) answer passes through about six async generators
between the backend and the response (``Dispatcher.complete`` → ``stream`` →
``_scheduled`` → the runtime's counted stream → the adapter's stream, each
closed with ``aclosing``), yielding a content chunk and a finish chunk. The
alternative issue 18 raised is a whole-answer path of one coroutine. This
measures the Python mechanics only, on the event loop, with nothing else per
layer: a leaf generator of two chunks wrapped in six ``aclosing`` relay
layers, the leaf alone, and one coroutine returning the same list. Rounds
alternate the three; medians per round in microseconds per answer. Prints a
table, writes bench/results/async_layers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table, write_result  # noqa: E402

CHUNKS = ("content", "finish")


async def leaf() -> AsyncGenerator[str, None]:
    for chunk in CHUNKS:
        yield chunk


async def relay(inner: AsyncGenerator[str, None]) -> AsyncGenerator[str, None]:
    async with contextlib.aclosing(inner) as chunks:
        async for chunk in chunks:
            yield chunk


async def layered(layers: int) -> list[str]:
    stream = leaf()
    for _ in range(layers):
        stream = relay(stream)
    return [chunk async for chunk in stream]


async def one_coroutine() -> list[str]:
    return list(CHUNKS)


async def per_answer_us(make: Callable[[], Awaitable[list[str]]], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await make()
    return (time.perf_counter() - started) / calls * 1e6


async def measure(calls: int, rounds: int) -> dict[str, list[float]]:
    shapes: dict[str, Callable[[], Awaitable[list[str]]]] = {
        "six generator layers": lambda: layered(6), "the leaf generator alone": lambda: layered(0), "one coroutine": one_coroutine,
    }
    results: dict[str, list[float]] = {name: [] for name in shapes}
    for _ in range(rounds):
        for name, make in shapes.items():
            results[name].append(round(await per_answer_us(make, calls), 3))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = asyncio.run(measure(args.calls, args.rounds))
    rows = [("shape", "µs per answer, median", "range over rounds")]
    rows += [(name, f"{statistics.median(v):.2f}", f"{min(v):.2f}-{max(v):.2f}") for name, v in results.items()]
    print(table(rows))
    summary = {name: {"median_us": statistics.median(v), "per_round_us": v} for name, v in results.items()}
    write_result("async_layers", {"machine": machine(), "config": vars(args), "shapes": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
