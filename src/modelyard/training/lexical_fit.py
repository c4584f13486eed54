"""Fit the lexical probe (routing/lexical.py): TF-IDF over hashed grams, one L2 logistic regression per model."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from modelyard.routing.lexical import HASH_SPACE, LexicalProbe, gram_counts

LEXICAL_C = 1.0  # inverse regularisation; 1 was the best of 0.25/1/4 on MMLU in cross-validation


def fit_lexical(texts: list[str], quality: npt.NDArray[np.float32], c: float = LEXICAL_C) -> LexicalProbe:
    """The probe for ``texts`` (already routing text) and outcomes ``quality`` (n, m) in 0..1."""
    rows, cols, values = [], [], []
    for row, text in enumerate(texts):
        for bucket, tf in gram_counts(text).items():
            rows.append(row)
            cols.append(bucket)
            values.append(tf)
    counts = sp.csr_matrix((values, (rows, cols)), shape=(len(texts), HASH_SPACE))
    seen = np.flatnonzero(np.asarray((counts > 0).sum(axis=0)).ravel())
    counts = counts[:, seen]
    frequency = np.asarray((counts > 0).sum(axis=0)).ravel()
    idf = (np.log((1 + len(texts)) / (1 + frequency)) + 1).astype(np.float32)
    tfidf = counts.multiply(idf[None, :]).tocsr()
    norms = np.sqrt(np.asarray(tfidf.multiply(tfidf).sum(axis=1)).ravel())
    tfidf = sp.diags(1.0 / np.where(norms == 0, 1.0, norms)) @ tfidf
    weights = np.zeros((len(seen) + 1, quality.shape[1]), dtype=np.float32)
    for j in range(quality.shape[1]):
        weights[:, j] = _logistic(tfidf, quality[:, j].astype(np.float64), c)
    return LexicalProbe(buckets=seen.astype(np.int64), idf=idf, weights=weights)


def _logistic(x: sp.csr_matrix, y: npt.NDArray[np.float64], c: float) -> npt.NDArray[np.float32]:
    """Weights then bias. Soft labels (LLMRouter's 0..1 scores) become a positive and a negative copy of each row, weighted y and 1 - y."""
    rate = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
    if np.all(y == y[0]):  # one class only: the base rate, nothing to learn from the words
        return np.concatenate([np.zeros(x.shape[1]), [np.log(rate / (1 - rate))]]).astype(np.float32)
    both = sp.vstack([x, x]).tocsr()
    labels = np.concatenate([np.ones(len(y)), np.zeros(len(y))])
    weight = np.concatenate([y, 1 - y])
    keep = weight > 0
    model = LogisticRegression(C=c, max_iter=2000).fit(both[keep], labels[keep], sample_weight=weight[keep])
    return np.concatenate([model.coef_[0], model.intercept_]).astype(np.float32)
