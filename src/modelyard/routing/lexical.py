"""The lexical view of a prompt: hashed word and word-pair counts, TF-IDF weighted, and a logistic probe on them.

Sentence embeddings capture a prompt's topic; some of what makes a prompt
hard for one model and not another is in its words (numbers, symbols, named
terms). The probe scores a prompt from its unigrams and bigrams, hashed
(CRC-32, stable across processes) into ``HASH_SPACE`` buckets; only buckets
seen in training are stored. Pure: arrays in, probabilities out.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

HASH_SPACE = 1 << 20
_TOKEN = re.compile(r"\w+|[^\w\s]")

Array = npt.NDArray[np.float32]


def gram_counts(text: str) -> dict[int, float]:
    """Bucket -> sublinear term frequency (1 + log count) of the text's lower-cased unigrams and bigrams."""
    tokens = _TOKEN.findall(text.lower())
    counts: dict[int, int] = {}
    for gram in tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]:
        bucket = zlib.crc32(gram.encode()) % HASH_SPACE
        counts[bucket] = counts.get(bucket, 0) + 1
    return {bucket: 1.0 + math.log(count) for bucket, count in counts.items()}


@dataclass(frozen=True)
class LexicalProbe:
    """Per-model logistic regression on TF-IDF over the buckets seen in training."""

    buckets: npt.NDArray[np.int64]  # (s,) sorted bucket ids seen in training
    idf: Array  # (s,)
    weights: Array  # (s + 1, m), bias last

    def predict(self, texts: list[str]) -> Array:
        """Probability of a good answer per text and model, (q, m)."""
        out = np.empty((len(texts), self.weights.shape[1]), dtype=np.float32)
        for row, text in enumerate(texts):
            positions, values = self.vector(text)
            score = values @ self.weights[positions] + self.weights[-1] if len(positions) else self.weights[-1]
            out[row] = 1.0 / (1.0 + np.exp(-score))
        return out

    def vector(self, text: str) -> tuple[npt.NDArray[np.int64], Array]:
        """The text's L2-normalised TF-IDF entries: positions into ``buckets`` and their values."""
        counts = gram_counts(text)
        keys = np.fromiter(counts, dtype=np.int64, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
        positions = np.searchsorted(self.buckets, keys)
        known = positions < len(self.buckets)
        known[known] = self.buckets[positions[known]] == keys[known]
        positions, values = positions[known], tf[known] * self.idf[positions[known]]
        norm = float(np.linalg.norm(values))
        return positions, (values / norm if norm else values).astype(np.float32)
