"""Long conversations against a real local model's window, without and with the context budget stage.

    .venv/bin/python bench/context_replay.py [--conversations 60] [--window 2048]

Conversation lengths are drawn (seeded) from the Azure LLM conversation
trace's ``ContextTokens`` (../shared/data/traces/azure_llm_2023_conv.csv;
14% of its requests are longer than 2,048 tokens). Each becomes a real
multi-turn chat: a system message, user and assistant turns of 120-360 words,
and a last question, about that many tokens in all. Two modelyard servers run
SmolLM2-135M on llama.cpp with a ``--window``-token context (one slot): the
first as today, the second with a ``context_budget`` stage. Every
conversation goes to both; the table counts answers, context-window errors
(400 ``context_length_exceeded``) and trimmed conversations. Writes
bench/results/context_replay.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, machine, median, start, stop, table, write_result  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT.parent / "shared" / "data" / "traces" / "azure_llm_2023_conv.csv"
WORDS = ["the", "sea", "is", "wide", "and", "deep", "and", "blue", "in", "the", "light", "of", "day", "while", "ships", "sail", "over", "it", "to", "far", "away", "ports", "where", "people", "trade", "fish", "salt", "and", "cloth", "for", "bread", "wine", "and", "tools", "that", "they", "need", "at", "home"]
FLEET = """
models:
  smollm2-135m:
    kind: chat
    context_window: {window}
    deployments:
      - {{backend: llamacpp_server, model_file: 'builtin:smollm2-135m', parallel: 1, n_ctx: {window}}}
{stages}
"""
STAGES = """
stages:
  - kind: context_budget
"""


def lengths(count: int, seed: int) -> list[int]:
    with TRACE.open() as f:
        context = [int(row["ContextTokens"]) for row in csv.DictReader(f)]
    return random.Random(seed).sample(context, count)


def conversation(tokens: int, rng: random.Random) -> list[dict[str, str]]:
    """About ``tokens`` tokens of chat: short common words are about one token each for SmolLM2's tokenizer."""
    messages = [{"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."}]
    used, turn = 20, 0
    while used < tokens - 40:
        size = min(rng.randint(120, 360), max(10, tokens - 40 - used))
        text = " ".join(WORDS[(turn * 7 + i) % len(WORDS)] for i in range(size))
        messages.append({"role": "user" if turn % 2 == 0 else "assistant", "content": f"Turn {turn}: {text}."})
        used += size + 8
        turn += 1
    if messages[-1]["role"] == "user":
        messages.append({"role": "assistant", "content": "I see."})
    messages.append({"role": "user", "content": "What colour is the sea?"})
    return messages


def replay(url: str, conversations: list[list[dict[str, str]]]) -> list[dict[str, Any]]:
    out = []
    with httpx.Client(timeout=600) as http:
        for messages in conversations:
            started = time.perf_counter()
            response = http.post(url, json={"model": "smollm2-135m", "messages": messages, "max_tokens": 8, "temperature": 0})
            body = response.json()
            out.append({
                "status": response.status_code, "seconds": time.perf_counter() - started,
                "code": (body.get("error") or {}).get("code") if response.status_code != 200 else None,
                "prompt_tokens": (body.get("usage") or {}).get("prompt_tokens"), "trimmed": response.headers.get("x-modelyard-context"),
            })
    return out


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "answered": sum(1 for r in rows if r["status"] == 200),
        "context_errors": sum(1 for r in rows if r["code"] == "context_length_exceeded"),
        "other_errors": sum(1 for r in rows if r["status"] != 200 and r["code"] != "context_length_exceeded"),
        "trimmed": sum(1 for r in rows if r["trimmed"]),
        "max_prompt_tokens": max((r["prompt_tokens"] or 0 for r in rows), default=0),
        "median_seconds": median([r["seconds"] for r in rows if r["status"] == 200]),
    }


def serve(tmp: Path, name: str, window: int, stages: str) -> tuple[Any, str]:
    config = tmp / f"{name}.yaml"
    config.write_text(FLEET.format(window=window, stages=stages))
    port = free_port()
    process = start(["serve", "--port", str(port), "--config", str(config), "--data-dir", str(tmp / name)], tmp / f"{name}.log",
                    f"http://127.0.0.1:{port}/readyz", timeout=300)
    return process, f"http://127.0.0.1:{port}/v1/chat/completions"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=60)
    parser.add_argument("--window", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    sizes = lengths(args.conversations, args.seed)
    conversations = [conversation(n, rng) for n in sizes]
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name, stages in (("today", ""), ("context_budget", STAGES)):  # one server at a time: the 2 cores are not shared
            process, url = serve(tmp, name, args.window, stages)
            try:
                results[name] = replay(url, conversations)
            finally:
                stop(process)
    sums = {name: summary(rows) for name, rows in results.items()}
    rows = [("server", "conversations", "answered", "context errors", "other errors", "trimmed", "max prompt tokens", "median s")]
    rows += [(name, str(len(results[name])), str(s["answered"]), str(s["context_errors"]), str(s["other_errors"]), str(s["trimmed"]), str(s["max_prompt_tokens"]),
              f"{s['median_seconds']:.2f}") for name, s in sums.items()]
    print(table(rows))
    over = sum(1 for n in sizes if n > args.window)
    print(f"\n{over} of {len(sizes)} sampled trace lengths exceed the {args.window}-token window")
    write_result("context_replay", {"machine": machine(), "window": args.window, "seed": args.seed, "lengths": sizes, "over_window": over,
                                    "summary": sums, "requests": results})
    print(json.dumps(sums))


if __name__ == "__main__":
    main()
