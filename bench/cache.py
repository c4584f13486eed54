"""The semantic response cache on question pairs: hit rate, false hits, the polarity guard, lookup cost.

    .venv/bin/python bench/cache.py [--pairs FILE] [--sample 60000] [--index-entries 100000]

Each pair of ``--pairs`` (JSON lines: text_a, text_b, label; 1 = the same
question) fills the cache with text_a and queries it with text_b, through the
same parts the server uses: the embedded MiniLM, the HNSW index
(``store/vector_index.py``) and the polarity guard. Two rules say which hits
are false:

- strict (the issue's): a hit on a label-0 pair, or on any entry that is not
  the query's own text_a, is false (an entry with the query's very text,
  case and spacing aside, counts as right);
- grouped (the headline): as strict, except that a hit on an entry the file's
  own label-1 pairs join to the query (transitively: QQP asks popular
  questions in many pairs, so the nearest entry is often another pair's copy
  of the same question) counts as right. Entries no label relates to the
  query still count as false.

The pairs are split in two halves: the static threshold shipped as default is
the one chosen on the first (the lowest whose false-hit share's one-sided
99.5% upper bound is within 2%: the most permissive point of a sweep that
passes is the likeliest to be optimistic, so it is chosen with a margin);
every figure reported, with its 95% bound, is measured on the second. The
adaptive mode runs online over the second half (each query a miss it learns
from, an exploration, or a hit), for several target error rates and
exploration draws, twice: cold (from nothing) and warm (after learning online
over the first half, as a cache that has been running a while; the static
threshold was chosen on that half too). Each run is compared with the static
threshold's best hit rate at the same false-hit share, read off a 0.001 grid
of thresholds on the measured half itself (a hindsight choice the static
threshold could not make).

Lookup cost: the exact path (canonical key, store read, decode) and the
semantic index search with the guard, at ``--index-entries`` entries (the
sample's vectors plus random unit vectors), and the query embedding itself.
Writes bench/results/cache.json and prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.stats import beta

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median, table, write_result  # noqa: E402

from modelyard.pipeline.response_cache import DEFAULT_THRESHOLD  # noqa: E402
from modelyard.protocol import ModelCall, Sampling  # noqa: E402
from modelyard.shaping.adaptive import AdaptivePolicy, AdaptiveThreshold, Candidate  # noqa: E402
from modelyard.shaping.cache_keys import exact_key  # noqa: E402
from modelyard.shaping.polarity import opposition  # noqa: E402
from modelyard.store.response_cache import MemoryCacheStore  # noqa: E402
from modelyard.store.vector_index import VectorIndex  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PAIRS = ROOT.parent / "shared" / "data" / "cache" / "qqp_pairs_train.jsonl"
THRESHOLDS = [round(0.80 + 0.01 * i, 2) for i in range(20)] + [0.992, 0.994, 0.995, 0.996, 0.997, 0.998]
TARGETS = [0.02, 0.03, 0.05]
ADAPTIVE_SEEDS = 3  # exploration draws per target and start
FINE = [round(0.80 + 0.001 * i, 3) for i in range(200)]  # the static curve the adaptive runs are compared with
MAX_FALSE_SHARE = 0.02
SELECTION_CONFIDENCE = 0.995  # one-sided, when choosing among THRESHOLDS: stricter than the 95% reported (neighbouring points are strongly correlated, so not a full Bonferroni 0.998)
# Prompts that embed close together and ask opposite things: none may ever answer the other.
POLARITY = [
    ("How do I enable 2FA on my account?", "How do I disable 2FA on my account?"),
    ("Is it safe to eat raw eggs?", "Is it unsafe to eat raw eggs?"),
    ("Is this mushroom safe to eat?", "Is this mushroom not safe to eat?"),
    ("How do I encrypt a file with gpg?", "How do I decrypt a file with gpg?"),
    ("How to increase the font size in VS Code?", "How to decrease the font size in VS Code?"),
    ("Is coffee good for your heart?", "Is coffee bad for your heart?"),
    ("How do I install Docker on Ubuntu?", "How do I uninstall Docker on Ubuntu?"),
    ("What is the maximum value of an int32?", "What is the minimum value of an int32?"),
    ("Should I buy Tesla stock now?", "Should I sell Tesla stock now?"),
    ("Is it legal to record a phone call in California?", "Is it illegal to record a phone call in California?"),
    ("How do I allow cookies in Chrome?", "How do I block cookies in Chrome?"),
    ("Why is my code running fast?", "Why is my code running slow?"),
    ("Can I take ibuprofen with alcohol?", "Can I not take ibuprofen with alcohol?"),
    ("What are the pros of remote work?", "What are the cons of remote work?"),
    ("How do I turn on dark mode in Windows 11?", "How do I turn off dark mode in Windows 11?"),
    ("Is 17 a prime number?", "Is 21 a prime number?"),
    ("How many calories are in 100 grams of rice?", "How many calories are in 200 grams of rice?"),
    ("Is the stock market likely to go up this year?", "Is the stock market likely to go down this year?"),
    ("How do I add a user to a Linux group?", "How do I remove a user from a Linux group?"),
    ("Why do people love winter?", "Why do people hate winter?"),
    ("How do I start a service with systemctl?", "How do I stop a service with systemctl?"),
    ("Is it possible to run Windows apps on a Mac?", "Is it impossible to run Windows apps on a Mac?"),
    ("How do I upload files to Google Drive?", "How do I download files from Google Drive?"),
    ("Should you accept the cookie banner?", "Should you reject the cookie banner?"),
]


def load_pairs(path: Path, sample: int, seed: int) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if isinstance(r.get("text_a"), str) and isinstance(r.get("text_b"), str) and r["text_a"].strip() and r["text_b"].strip()]
    random.Random(seed).shuffle(rows)
    return rows[:sample]


def embedder() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from modelyard.fleet.artifacts import resolve

    return SentenceTransformer(str(resolve("builtin:all-minilm-l6-v2", Path("~/.cache/modelyard").expanduser())), device="cpu", local_files_only=True)


def embed(model: Any, texts: list[str], cache_dir: Path) -> npt.NDArray[np.float32]:
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:24]
    cached = cache_dir / f"cache-bench-{digest}.npy"
    if cached.exists():
        return np.load(cached)
    vectors = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(cached, vectors)
    return vectors


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def duplicate_groups(path: Path) -> dict[str, str]:
    """Every question of the whole file -> its group: questions joined by label-1 pairs, transitively (union-find)."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("label") == 1 and isinstance(row.get("text_a"), str) and isinstance(row.get("text_b"), str):
                parent[root(_norm(row["text_a"]))] = root(_norm(row["text_b"]))
    return {x: root(x) for x in list(parent)}


def candidates(pairs: list[dict[str, Any]], a_vectors: npt.NDArray[np.float32], b_vectors: npt.NDArray[np.float32], groups: dict[str, str]) -> list[dict[str, Any]]:
    """For each query: the nearest entry the guard lets through, its similarity, and whether serving it is right:
    ``correct`` by the strict rule (the query's own text_a of a label-1 pair, or the same text), ``correct_group``
    also when the file's label-1 pairs join the entry and the query into one group of duplicates."""
    index = VectorIndex(a_vectors.shape[1], max_entries=len(pairs) + 1)
    entry_of: dict[str, int] = {}
    for i, pair in enumerate(pairs):
        if pair["text_a"] not in entry_of:
            entry_of[pair["text_a"]] = i
            index.add("bench", a_vectors[i], str(i), pair["text_a"], float("inf"))
    out = []
    for i, pair in enumerate(pairs):
        found: dict[str, Any] = {"label": int(pair["label"]), "similarity": None, "correct": False, "correct_group": False, "query": pair["text_b"],
                                 "cached": None, "vetoed": 0}
        neighbours = index.nearest("bench", b_vectors[i], 0.0, count=3)
        for j, neighbour in enumerate(neighbours):
            if opposition(pair["text_b"], neighbour.text) is not None:
                found["vetoed"] += 1
                continue
            own = bool(pair["label"]) and neighbour.text == pair["text_a"]
            strict = own or _same_text(neighbour.text, pair["text_b"])
            query_group, entry_group = groups.get(_norm(pair["text_b"])), groups.get(_norm(neighbour.text))
            grouped = strict or (query_group is not None and query_group == entry_group)
            runner_up = neighbours[j + 1].similarity if j + 1 < len(neighbours) else 0.0  # the next entry's: how ambiguous the query is
            found.update(similarity=neighbour.similarity, cached=neighbour.text, correct=strict, correct_group=grouped, runner_up=runner_up)
            break
        out.append(found)
    return out


def split_candidates(path: Path, sample: int, seed: int, cache_dir: Path) -> tuple[Any, list[dict[str, Any]], npt.NDArray[np.float32], list[dict[str, Any]], list[dict[str, Any]]]:
    """(the embedder, the sampled pairs, their text_a vectors, the first half's candidates, the second half's)."""
    pairs = load_pairs(path, sample, seed)
    model = embedder()
    a_vectors = embed(model, [p["text_a"] for p in pairs], cache_dir)
    b_vectors = embed(model, [p["text_b"] for p in pairs], cache_dir)
    half = len(pairs) // 2
    groups = duplicate_groups(path)
    choose = candidates(pairs[:half], a_vectors[:half], b_vectors[:half], groups)
    measure = candidates(pairs[half:], a_vectors[half:], b_vectors[half:], groups)
    return model, pairs, a_vectors, choose, measure


def _same_text(a: str, b: str) -> bool:
    """The query is, letter for letter (case and spacing aside), a cached question: right whatever pair it came from."""
    return _norm(a) == _norm(b)


def upper95(false: int, hits: int) -> float:
    """Clopper-Pearson upper bound of the false-hit share."""
    return 1.0 if hits == 0 else (1.0 if false == hits else float(beta.ppf(0.975, false + 1, hits - false)))


def static_point(rows: list[dict[str, Any]], threshold: float, right: str = "correct_group") -> dict[str, Any]:
    hits = [r for r in rows if r["similarity"] is not None and r["similarity"] >= threshold]
    false = sum(1 for r in hits if not r[right])
    duplicates = sum(1 for r in rows if r["label"] == 1)
    return {
        "threshold": threshold, "hits": len(hits), "false_hits": false, "hit_rate": sum(1 for r in hits if r[right] and r["label"] == 1) / max(1, duplicates),
        "false_hit_share": false / len(hits) if hits else 0.0, "false_hit_share_upper95": upper95(false, len(hits)),
    }


def adaptive_run(rows: list[dict[str, Any]], target: float, threshold: float, seed: int, warm: list[dict[str, Any]] | None = None,
                 right: str = "correct_group") -> dict[str, Any]:
    """Online over ``rows``: each refused candidate's label is learned (a miss's answer says it). ``warm``: rows the
    model learns from first, online as well, and that are not counted (a cache that has been running a while)."""
    model = AdaptiveThreshold(AdaptivePolicy(target_error=target, static_threshold=threshold))
    rng = random.Random(seed)
    for r in warm or []:
        _adaptive_step(model, r, rng, right)
    hits = false = explored = good = 0
    for r in rows:
        decision = _adaptive_step(model, r, rng, right)
        hits += decision == "hit"
        false += decision == "hit" and not r[right]
        good += decision == "hit" and bool(r[right]) and r["label"] == 1
        explored += decision == "explore"
    duplicates = sum(1 for r in rows if r["label"] == 1)
    return {
        "target_error": target, "seed": seed, "warm": warm is not None, "hits": hits, "false_hits": false, "explored": explored,
        "hit_rate": good / max(1, duplicates), "false_hit_share": false / hits if hits else 0.0, "false_hit_share_upper95": upper95(false, hits),
    }


def _adaptive_step(model: AdaptiveThreshold, r: dict[str, Any], rng: random.Random, right: str) -> str | None:
    if r["similarity"] is None:
        return None
    candidate = Candidate(r["similarity"], r["query"], r["cached"], r["runner_up"])
    decision = model.decide(candidate, rng.random())
    if decision != "hit":
        model.observe(candidate, bool(r[right]), explored=decision == "explore")
    return decision


def adaptive_runs(choose: list[dict[str, Any]], measure: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Every target, cold (from nothing on the measured half) and warm (after the first half, online too), several
    exploration draws; each compared with the static threshold's best hit rate at its false-hit share (fine grid)."""
    fine = [static_point(measure, t) for t in FINE]
    runs = []
    for target in TARGETS:
        for warm in (choose, None):
            for k in range(ADAPTIVE_SEEDS):
                run = adaptive_run(measure, target, DEFAULT_THRESHOLD, seed + k, warm=warm)
                run["static_hit_rate_at_same_share"] = static_hit_rate_at(fine, run["false_hit_share"])
                run["gain"] = run["hit_rate"] / run["static_hit_rate_at_same_share"] - 1 if run["static_hit_rate_at_same_share"] else 0.0
                runs.append(run)
    return runs


def gains(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per target and start: the median, lowest and highest relative gain in hit rate over the static threshold."""
    out = {}
    for target in TARGETS:
        for start in ("warm", "cold"):
            values = [r["gain"] for r in runs if r["target_error"] == target and r["warm"] == (start == "warm")]
            out[f"{target}_{start}"] = {"median": round(statistics.median(values), 4), "min": round(min(values), 4), "max": round(max(values), 4)}
    return out


def static_hit_rate_at(curve: list[dict[str, Any]], share: float) -> float:
    """The static threshold's best hit rate at a false-hit share no higher than ``share``."""
    return max((p["hit_rate"] for p in curve if p["false_hit_share"] <= share), default=0.0)


def upper_bound(false: int, hits: int, confidence: float) -> float:
    """Clopper-Pearson one-sided upper bound of the false-hit share at ``confidence``."""
    return 1.0 if hits == 0 else (1.0 if false == hits else float(beta.ppf(confidence, false + 1, hits - false)))


def choose_threshold(curve: list[dict[str, Any]]) -> float:
    """The lowest threshold whose false-hit share is within ``MAX_FALSE_SHARE`` at ``SELECTION_CONFIDENCE``.

    The most permissive point that passes is, of all the points tried, the one whose estimate is most likely
    to be optimistic (a winner's curse over the sweep): the selection asks for a wider margin than the 95% bound
    the shipped default is then reported with, on pairs it was not chosen on."""
    within = [p for p in curve if upper_bound(p["false_hits"], p["hits"], SELECTION_CONFIDENCE) <= MAX_FALSE_SHARE]
    return min(p["threshold"] for p in within) if within else max(p["threshold"] for p in curve)


def polarity(model: Any) -> dict[str, Any]:
    texts = [t for pair in POLARITY for t in pair]
    vectors = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
    similarities = [float(vectors[2 * i] @ vectors[2 * i + 1]) for i in range(len(POLARITY))]
    vetoed = [opposition(b, a) is not None for a, b in POLARITY]
    above = sum(1 for s in similarities if s >= DEFAULT_THRESHOLD)
    hits = sum(1 for s, v in zip(similarities, vetoed, strict=True) if s >= DEFAULT_THRESHOLD and not v)
    return {"pairs": len(POLARITY), "similarity_median": median(similarities), "similarity_max": max(similarities), "above_threshold_without_guard": above,
            "vetoed_by_guard": sum(vetoed), "hits": hits}


def lookup_costs(model: Any, a_vectors: npt.NDArray[np.float32], texts: list[str], entries: int, queries: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    index = VectorIndex(a_vectors.shape[1], max_entries=entries)
    start = time.perf_counter()
    for i in range(entries):
        vector = a_vectors[i] if i < len(a_vectors) else rng.standard_normal(a_vectors.shape[1]).astype(np.float32)
        index.add("bench", vector / np.linalg.norm(vector), str(i), texts[i % len(texts)], float("inf"))
    build_s = time.perf_counter() - start
    semantic = []
    for i in range(queries):
        probe = a_vectors[i % len(a_vectors)] + 0.05 * rng.standard_normal(a_vectors.shape[1]).astype(np.float32)
        t0 = time.perf_counter()
        found = index.nearest("bench", probe / np.linalg.norm(probe), 0.0)
        for n in found[:1]:
            opposition(texts[i % len(texts)], n.text)
        semantic.append((time.perf_counter() - t0) * 1000)
    exact = asyncio.run(_exact_costs(texts, entries, queries))
    embeds = []
    for i in range(min(queries, 200)):
        t0 = time.perf_counter()
        model.encode([texts[i % len(texts)]], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        embeds.append((time.perf_counter() - t0) * 1000)
    return {"entries": entries, "index_build_s": round(build_s, 1), "semantic_lookup_p50_ms": median(semantic), "hit_p50_ms": median(exact),
            "embed_p50_ms": median(embeds), "queries": queries}


async def _exact_costs(texts: list[str], entries: int, queries: int) -> list[float]:
    store = MemoryCacheStore(max_entries=entries)
    body = json.dumps({"model": "m", "text": "an answer " * 40, "finish_reason": "stop", "usage": [30, 80], "cost_usd": 1e-5}).encode()
    calls = [ModelCall(kind="chat", model="m", sampling=Sampling(temperature=0.0, max_tokens=64), messages=({"role": "user", "content": f"{texts[i % len(texts)]} #{i}"},))
             for i in range(entries)]
    for call in calls:
        await store.put(exact_key(call, "m", "tenant:t"), body, 3600.0)
    times = []
    for i in range(queries):
        t0 = time.perf_counter()
        raw = await store.get(exact_key(calls[(i * 7919) % entries], "m", "tenant:t"))
        assert raw is not None
        json.loads(raw)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=Path, default=DEFAULT_PAIRS, help="JSON lines with text_a, text_b, label (1 = same question)")
    parser.add_argument("--sample", type=int, default=60000, help="pairs used (half choose the threshold, half measure)")
    parser.add_argument("--index-entries", type=int, default=100_000, help="entries in the index when lookup cost is measured")
    parser.add_argument("--queries", type=int, default=2000, help="timed lookups")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/modelyard/bench").expanduser())
    args = parser.parse_args()

    model, pairs, a_vectors, choose, measure = split_candidates(args.pairs, args.sample, args.seed, args.cache_dir)
    strict_curve = [static_point(measure, t, "correct") for t in THRESHOLDS]
    chosen = choose_threshold([static_point(choose, t) for t in THRESHOLDS])
    curve = [static_point(measure, t) for t in THRESHOLDS]
    shipped = static_point(measure, DEFAULT_THRESHOLD)
    adaptive = adaptive_runs(choose, measure, args.seed)
    default_adaptive = sorted((r for r in adaptive if r["target_error"] == 0.02 and r["warm"]), key=lambda r: r["hit_rate"])[ADAPTIVE_SEEDS // 2]
    guard = polarity(model)
    costs = lookup_costs(model, a_vectors, [p["text_a"] for p in pairs], args.index_entries, args.queries, args.seed)

    rows: list[tuple[str, ...]] = [("threshold", "hits", "false", "hit rate (dups)", "false share", "upper95")]
    rows += [(f"{p['threshold']:.3f}", str(p["hits"]), str(p["false_hits"]), f"{p['hit_rate']:.3f}", f"{p['false_hit_share']:.4f}", f"{p['false_hit_share_upper95']:.4f}")
             for p in curve]
    rows += [("strict rule:", "", "", "", "", "")]
    rows += [(f"{p['threshold']:.3f}", str(p["hits"]), str(p["false_hits"]), f"{p['hit_rate']:.3f}", f"{p['false_hit_share']:.4f}", f"{p['false_hit_share_upper95']:.4f}")
             for p in strict_curve if p["threshold"] >= 0.9]
    print(table(rows))
    print()
    rows = [("adaptive target", "start", "seed", "hits", "false", "hit rate", "false share", "upper95", "static hit rate at same share", "gain")]
    rows += [(f"{r['target_error']:.2f}", "warm" if r["warm"] else "cold", str(r["seed"]), str(r["hits"]), str(r["false_hits"]), f"{r['hit_rate']:.3f}",
              f"{r['false_hit_share']:.4f}", f"{r['false_hit_share_upper95']:.4f}", f"{r['static_hit_rate_at_same_share']:.3f}", f"{r['gain']:+.1%}")
             for r in adaptive]
    print(table(rows))
    print(f"\nthreshold chosen on the first half: {chosen}; shipped default: {DEFAULT_THRESHOLD}")
    print(f"polarity set: {guard}")
    print(f"lookup costs: {costs}")
    summary = {
        "pairs": len(pairs), "measured_pairs": len(measure), "threshold": DEFAULT_THRESHOLD, "threshold_chosen_on_first_half": chosen,
        "hit_rate": shipped["hit_rate"], "false_hit_share": shipped["false_hit_share"], "false_hit_share_upper95": shipped["false_hit_share_upper95"],
        "adaptive_hit_rate": default_adaptive["hit_rate"], "adaptive_false_hit_share": default_adaptive["false_hit_share"],
        "adaptive_false_hit_share_upper95": default_adaptive["false_hit_share_upper95"],
        "static_hit_rate_at_adaptive_share": default_adaptive["static_hit_rate_at_same_share"],
        "adaptive_gain_over_static": gains(adaptive),
        "polarity_hits": guard["hits"], "hit_p50_ms": costs["hit_p50_ms"], "semantic_lookup_p50_ms": costs["semantic_lookup_p50_ms"],
        "embed_p50_ms": costs["embed_p50_ms"], "index_entries": costs["entries"],
    }
    strict = static_point(measure, DEFAULT_THRESHOLD, "correct")
    false_examples = [{"similarity": round(r["similarity"], 4), "label": r["label"], "query": r["query"], "cached": r["cached"]}
                      for r in measure if r["similarity"] is not None and r["similarity"] >= DEFAULT_THRESHOLD and not r["correct_group"]][:40]
    summary |= {"strict_false_hit_share": strict["false_hit_share"], "strict_false_hit_share_upper95": strict["false_hit_share_upper95"],
                "strict_hit_rate": strict["hit_rate"]}
    write_result("cache", {"pairs_file": str(args.pairs), "seed": args.seed, "machine": machine(), "static_curve": curve, "strict_curve": strict_curve, "adaptive": adaptive, "false_hit_examples": false_examples,
                           "polarity": guard, "lookup": costs, "summary": summary})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
