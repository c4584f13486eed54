"""What the learned `auto` alias adds to a request: the prompt's embedding and the router's decision.

    .venv/bin/python bench/route_overhead.py [--requests 200]

One modelyard server on the default fleet. The same one-token requests (each with a
unique first line, so no cached prompt is reused) go, interleaved in
alternating order, to `smollm2-135m` directly and to `auto` with
`x-modelyard-quality: 0` (the router picks smollm2-135m too: from its word
view alone when the words settle the pick, else after embedding the prompt),
so the served model and its work are the same and the difference is the
routing, reported over all pairs and apart for settled and embedded turns
(by the route header's ``:words``). Then the same number of
``/v1/embeddings`` calls to the alias's embedding model alone. Writes
bench/results/route_overhead.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import free_port, machine, median, percentile, start, stop, table, write_result  # noqa: E402

ENCODER = "minilm-l2-int8"  # the default `auto` alias's embedding model (config/defaults.py)
PROMPTS = [
    "Which gas do plants absorb from the air?\n\nA. oxygen\nB. carbon dioxide\nC. helium\nD. neon\n\nAnswer with the letter of the correct option only.",
    "What is the capital of France?",
    "Summarize the plot of Hamlet in one sentence.",
    "A desert environment has low\n\nA. sand\nB. cacti\nC. dryness\nD. rain\n\nAnswer with the letter of the correct option only.",
]


def timed(http: httpx.Client, url: str, model: str, prompt: str, headers: dict[str, str]) -> tuple[float, str, bool]:
    """(ms, the model that answered, whether the router's words settled the pick)."""
    started = time.perf_counter()
    response = http.post(url, headers=headers, json={"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1, "temperature": 0})
    response.raise_for_status()
    settled = response.headers.get("x-modelyard-route", "").split(";")[0].endswith(":words")
    return (time.perf_counter() - started) * 1000, response.headers.get("x-modelyard-model", ""), settled


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="pairs (40 were too few to pin the p50 down on a busy machine)")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = start(["serve", "--port", str(port)], Path(tmp) / "serve.log", f"http://127.0.0.1:{port}/readyz", timeout=300)
        try:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            direct: list[float] = []
            routed: list[float] = []
            served: set[str] = set()
            settled: list[bool] = []
            with httpx.Client(timeout=120) as http:
                for prompt in PROMPTS:  # warm both paths
                    timed(http, url, "auto", prompt, {"x-modelyard-quality": "0"})
                    timed(http, url, "smollm2-135m", prompt, {})
                for i in range(args.requests):
                    # A unique first line per request: llama.cpp would otherwise reuse the previous
                    # request's cached prompt and the second of a pair would look faster.
                    prompt = PROMPTS[i % len(PROMPTS)]
                    pair = [("smollm2-135m", {}, direct), ("auto", {"x-modelyard-quality": "0"}, routed)]
                    for model, headers, sink in pair if i % 2 else reversed(pair):
                        tag = "a" if model == "auto" else "d"  # same length on both paths: same prompt work
                        ms, served_by, words_settled = timed(http, url, model, f"Request {i}{tag}.\n{prompt}", headers)
                        sink.append(ms)
                        if model == "auto":
                            served.add(served_by)
                            settled.append(words_settled)
                embed_url = f"http://127.0.0.1:{port}/v1/embeddings"
                embedding: list[float] = []
                for i in range(args.requests):  # the one extra call routing makes, on its own
                    started = time.perf_counter()
                    http.post(embed_url, json={"model": ENCODER, "input": f"Request {i}.\n{PROMPTS[i % len(PROMPTS)]}"}).raise_for_status()
                    embedding.append((time.perf_counter() - started) * 1000)
        finally:
            stop(server)
    extra = [r - d for r, d in zip(routed, direct, strict=True)]
    by_words = [e for e, s in zip(extra, settled, strict=True) if s]
    embedded = [e for e, s in zip(extra, settled, strict=True) if not s]
    rows = [("path", "n", "p50 ms", "p90 ms", "min ms", "max ms")]
    for name, values in (("smollm2-135m direct", direct), ("auto (learned router)", routed), ("added by routing (pairwise)", extra),
                         ("  turns the words settled", by_words), ("  turns embedded", embedded), (f"one /v1/embeddings call to {ENCODER} alone", embedding)):
        if values:
            rows.append((name, str(len(values)), f"{median(values):.1f}", f"{percentile(values, 90):.1f}", f"{min(values):.1f}", f"{max(values):.1f}"))
    print(table(rows))
    print(f"auto served: {', '.join(sorted(served))}")
    path = write_result("route_overhead", {
        "machine": machine(), "requests": args.requests, "auto_served": sorted(served),
        "direct_ms": {"p50": median(direct), "p90": percentile(direct, 90)},
        "auto_ms": {"p50": median(routed), "p90": percentile(routed, 90)},
        "added_ms": {"p50": median(extra), "p90": percentile(extra, 90), "min": min(extra), "max": max(extra)},
        "settled_by_words": len(by_words), "embedded": len(embedded),
        "added_settled_ms": {"p50": median(by_words), "p90": percentile(by_words, 90)} if by_words else None,
        "added_embedded_ms": {"p50": median(embedded), "p90": percentile(embedded, 90)} if embedded else None,
        "embedding_model": ENCODER,
        "embedding_call_ms": {"p50": median(embedding), "p90": percentile(embedding, 90)},
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
