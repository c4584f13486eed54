"""How much a learned cut could gain over the static threshold on question pairs: the ceiling for the adaptive cache.

    .venv/bin/python bench/cache_features.py [--pairs FILE] [--sample 60000] [--seed 7]

``bench/cache.py`` measures the adaptive mode as shipped (learned online from
nothing on the measured half). This asks a narrower question first: with
*every* label of the first half known, can any score order the second half's
candidates better than their similarity does? If not, no online learner can
beat the static threshold at the same false-hit share on these pairs. Same
pairs, split, embeddings, index, polarity guard and grouped rule as
``bench/cache.py``.

Scores compared (each a logistic regression fitted on the whole first half,
applied to the second; ranked, and the hit rate on duplicates read at each
false-hit share, as for the static curve):

- ``static``: the similarity itself (the static threshold's curve);
- ``lexical``: the adaptive mode's features without the margin
  (``shaping/adaptive.features``: similarity, word overlap, length ratio,
  differing content words);
- ``+margin``: all of them, with the gap between the nearest and the next
  entry (a query that sits between two cached questions is ambiguous; the
  adaptive mode uses this set since this benchmark found it);
- ``+entry``: plus each entry's own history (vCache's per-entry idea): how
  many earlier queries to the same entry were right at a similarity at or
  below this one, and how many were wrong at or above it. Only queries the
  static default did not serve count as labelled, as online.

Writes bench/results/cache_features.json.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table, write_result  # noqa: E402
from cache import DEFAULT_PAIRS, split_candidates  # noqa: E402

from modelyard.pipeline.response_cache import DEFAULT_THRESHOLD  # noqa: E402
from modelyard.shaping.adaptive import Candidate, _logistic, features  # noqa: E402

FLOOR = 0.75  # the adaptive mode's own floor: less similar candidates are never considered
SHARES = (0.005, 0.01, 0.015, 0.02, 0.03, 0.05)
SCORES = ("static", "lexical", "+margin", "+entry")
LEXICAL = 6  # the adaptive features before the two margin terms (shaping/adaptive.features)


def feature_rows(rows: list[dict[str, Any]]) -> tuple[dict[str, npt.NDArray[np.float64]], npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Per score: the feature matrix of the candidates at or above the floor; their grouped labels and pair labels."""
    history: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    lexical, margin, entry, right, label = [], [], [], [], []
    for r in rows:
        s = r["similarity"]
        if s is None or s < FLOOR:
            continue
        seen = history[r["cached"]]
        full = features(Candidate(s, r["query"], r["cached"], r["runner_up"]))
        lexical.append(full[:LEXICAL])
        margin.append(full[LEXICAL:])
        entry.append([math.log1p(sum(1 for x, ok in seen if ok and x <= s)), math.log1p(sum(1 for x, ok in seen if not ok and x >= s))])
        right.append(r["correct_group"])
        label.append(r["label"])
        if s < DEFAULT_THRESHOLD:  # a miss: the model answered, so the label is known from here on
            seen.append((s, bool(r["correct_group"])))
    lex, mar, ent = np.array(lexical), np.array(margin), np.array(entry)
    matrices = {"lexical": lex, "+margin": np.concatenate([lex, mar], 1), "+entry": np.concatenate([lex, mar, ent], 1)}
    return matrices, np.array(right, dtype=np.float64), np.array(label)


def curve(score: npt.NDArray[np.float64], right: npt.NDArray[np.float64], label: npt.NDArray[np.int64], duplicates: int) -> tuple[Any, Any]:
    """(false-hit share, hit rate on duplicates) when the top k candidates by ``score`` are served, for every k."""
    order = np.argsort(-score, kind="stable")
    served = np.arange(1, len(order) + 1)
    return np.cumsum(right[order] == 0) / served, np.cumsum((right[order] == 1) & (label[order] == 1)) / duplicates


def hit_rate_at(points: tuple[Any, Any], share: float) -> float:
    shares, rates = points
    within = shares <= share
    return float(rates[within].max()) if within.any() else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=Path, default=DEFAULT_PAIRS, help="JSON lines with text_a, text_b, label (1 = same question)")
    parser.add_argument("--sample", type=int, default=60000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/modelyard/bench").expanduser())
    args = parser.parse_args()

    _, _, _, fit_rows, test_rows = split_candidates(args.pairs, args.sample, args.seed, args.cache_dir)
    fit_x, fit_y, _ = feature_rows(fit_rows)
    test_x, test_y, test_label = feature_rows(test_rows)
    duplicates = sum(1 for r in test_rows if r["label"] == 1)
    similarity = np.array([r["similarity"] for r in test_rows if r["similarity"] is not None and r["similarity"] >= FLOOR])
    points = {"static": curve(similarity, test_y, test_label, duplicates)}
    weights = {}
    for name in SCORES[1:]:
        w = _logistic(fit_x[name], fit_y, np.ones(len(fit_y)), None)
        weights[name] = [round(float(v), 4) for v in w]
        points[name] = curve(test_x[name] @ w, test_y, test_label, duplicates)
    at = {name: {str(share): round(hit_rate_at(p, share), 4) for share in SHARES} for name, p in points.items()}
    rows = [("false-hit share", *SCORES)] + [(f"{share:.1%}", *(f"{at[name][str(share)]:.3f}" for name in SCORES)) for share in SHARES]
    print(table(rows))
    write_result("cache_features", {"pairs_file": str(args.pairs), "seed": args.seed, "machine": machine(), "fitted_on": len(fit_y), "measured": len(test_y),
                                    "duplicates": duplicates, "hit_rate_at_share": at, "weights": weights, "floor": FLOOR, "static_default": DEFAULT_THRESHOLD})


if __name__ == "__main__":
    main()
