"""Nearest cached prompts by embedding: one HNSW index (usearch) per comparison scope.

Exact search over 100,000 384-float vectors takes about 14 ms on this
machine's cores; an HNSW graph answers in about a millisecond. Each scope
(model, parameters and tenant: prompts that may answer each other) has its
own index, so a search never has to filter. When the total passes
``max_entries`` the oldest entries go first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from usearch.index import Index


@dataclass(frozen=True, slots=True)
class Neighbour:
    similarity: float  # cosine
    key: str  # the exact cache key of the entry's answer
    text: str  # the prompt the answer was for
    expires: float


class VectorIndex:
    def __init__(self, dimensions: int, max_entries: int = 100_000) -> None:
        self.dimensions = dimensions
        self.max_entries = max_entries
        self.indexes: dict[str, Index] = {}
        self.entries: OrderedDict[int, tuple[str, Neighbour]] = OrderedDict()  # id -> (scope, entry), oldest first
        self.next_id = 0

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, scope: str, vector: npt.NDArray[np.float32], key: str, text: str, expires: float) -> None:
        index = self.indexes.get(scope)
        if index is None:
            index = self.indexes[scope] = Index(ndim=self.dimensions, metric="cos", dtype="f16", connectivity=16)
        entry_id, self.next_id = self.next_id, self.next_id + 1
        index.add(entry_id, np.asarray(vector, dtype=np.float32))
        self.entries[entry_id] = (scope, Neighbour(0.0, key, text, expires))
        while len(self.entries) > self.max_entries:
            self._remove(next(iter(self.entries)))

    def nearest(self, scope: str, vector: npt.NDArray[np.float32], now: float, count: int = 3) -> list[Neighbour]:
        """Up to ``count`` live entries of ``scope``, most similar first (expired ones are dropped on the way)."""
        index = self.indexes.get(scope)
        if index is None or len(index) == 0:
            return []
        found = index.search(np.asarray(vector, dtype=np.float32), count)
        out = []
        for entry_id, distance in zip(found.keys.tolist(), found.distances.tolist(), strict=True):
            held = self.entries.get(int(entry_id))
            if held is None:
                continue
            _, entry = held
            if entry.expires <= now:
                self._remove(int(entry_id))
                continue
            out.append(Neighbour(1.0 - float(distance), entry.key, entry.text, entry.expires))
        return out

    def _remove(self, entry_id: int) -> None:
        scope, _ = self.entries.pop(entry_id)
        index = self.indexes[scope]
        index.remove(entry_id)
        if len(index) == 0:
            del self.indexes[scope]
