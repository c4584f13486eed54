"""Intent routing: an intent is a few example utterances; a prompt goes where its nearest example's intent says.

Pure: the example vectors are computed once by the pipeline (with the
fleet's embedding model) and handed in; matching is one matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from modelyard.config import IntentConfig

Array = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class IntentMatch:
    intent: IntentConfig
    similarity: float


@dataclass(frozen=True)
class IntentIndex:
    """Every example utterance's vector, and which intent it belongs to."""

    intents: tuple[IntentConfig, ...]
    vectors: Array  # (examples, d), L2-normalised
    owner: npt.NDArray[np.int64]  # (examples,) index into intents

    @staticmethod
    def build(intents: tuple[IntentConfig, ...], vectors: Array) -> IntentIndex:
        """``vectors`` holds the examples' embeddings in order: every example of the first intent, then the next."""
        owner = np.array([i for i, intent in enumerate(intents) for _ in intent.examples], dtype=np.int64)
        if len(owner) != len(vectors):
            raise ValueError(f"{len(vectors)} vectors for {len(owner)} example utterances")
        return IntentIndex(intents, normalise(vectors), owner)

    def match(self, query: Array) -> IntentMatch | None:
        """The intent whose nearest example is most similar to ``query``, if that similarity reaches its threshold."""
        if not len(self.vectors):
            return None
        sims = self.vectors @ normalise(query[None, :])[0]
        best = np.full(len(self.intents), -np.inf)
        np.maximum.at(best, self.owner, sims)
        order = np.argsort(-best)
        for i in order:
            if best[i] >= self.intents[i].threshold:
                return IntentMatch(self.intents[i], float(best[i]))
        return None


def examples_of(intents: tuple[IntentConfig, ...]) -> list[str]:
    """The texts to embed for :meth:`IntentIndex.build`, in the order it expects."""
    return [example for intent in intents for example in intent.examples]


def normalise(vectors: Array) -> Array:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms == 0, 1.0, norms)).astype(np.float32)
