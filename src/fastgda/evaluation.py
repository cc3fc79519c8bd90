"""Rank agreement with the teacher: mAP(L) as the FastGDA paper defines it, and planted-concept recall.

mAP(L): for each query, the positives are the teacher's top-L training items; walking down the *whole* predicted
ranking, precision is accumulated at every positive and averaged over the L positives (= scikit-learn's
``average_precision_score`` with those labels). The paper reports L at 0.42%, 0.85% and 3.4% of N
(500, 1000 and 4000 of MSCOCO's 118,287).
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError

PAPER_L_FRACTIONS = (0.0042, 0.0085, 0.034)


def l_values(num_train: int, fractions=PAPER_L_FRACTIONS) -> list[int]:
    """The paper's L as counts for a training set of ``num_train`` items (at least 1 each)."""
    return [max(1, round(f * num_train)) for f in fractions]


def average_precision(predicted_scores: np.ndarray, positive: np.ndarray) -> float:
    """AP of one query. predicted_scores (n,) higher = more influential; positive (n,) bool.

    Ties are broken by item order (stable), which matters only for exactly equal scores.
    """
    order = np.argsort(-np.asarray(predicted_scores), kind="stable")
    hits = np.asarray(positive, dtype=bool)[order]
    total = int(hits.sum())
    if total == 0:
        raise ConfigError("a query has no positives; L must be at least 1")
    ranks = np.flatnonzero(hits) + 1  # 1-based positions of the positives
    return float((np.arange(1, total + 1) / ranks).mean())


def map_at_l(predicted_scores: np.ndarray, teacher_ids: np.ndarray, L: int) -> np.ndarray:
    """Per-query AP against the teacher's top-L.

    Args:
        predicted_scores: float (Q, n) scores of every ranked item (column j = training id ``columns[j]``, here
            the identity: full rankings over n = N items).
        teacher_ids: int (Q, K) the teacher's ranking (most influential first), K >= L, ids in [0, n).

    Returns:
        float64 (Q,) AP per query; report its mean and standard error.
    """
    out = np.empty(len(predicted_scores))
    for q, (scores, ids) in enumerate(zip(predicted_scores, teacher_ids, strict=True)):
        positive = np.zeros(len(scores), dtype=bool)
        positive[ids[:L]] = True
        out[q] = average_precision(scores, positive)
    return out


def candidate_map(predicted_scores: np.ndarray, teacher_ids: np.ndarray, L: int) -> np.ndarray:
    """AP within each query's candidate pool: predicted_scores (Q, K) aligned with teacher_ids (Q, K)."""
    positive = np.zeros(teacher_ids.shape, dtype=bool)
    positive[:, :L] = True  # teacher_ids are sorted most influential first
    return np.array(
        [average_precision(s, p) for s, p in zip(predicted_scores, positive, strict=True)]
    )


def recall_at_k(ranked_ids: np.ndarray, relevant: set[int], k: int | None = None) -> float:
    """Share of ``relevant`` ids among the first k (default len(relevant)) of a ranking."""
    k = len(relevant) if k is None else k
    return len(relevant & set(np.asarray(ranked_ids)[:k].tolist())) / len(relevant)


def mean_and_stderr(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))
