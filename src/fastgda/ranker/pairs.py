"""Training pairs for the ranker, drawn fully vectorised from the teacher's candidate rankings.

For a query with K ranked candidates, the candidate at rank r (0 = most influential) gets the target
1 - r / (K - 1), the normalised rank (1 = most, 0 = least influential). With probability ``outlier_prob`` a pair
instead takes a random training item *outside* the candidate pool, labelled 0 like the worst candidate
(method.md §5: 10% outliers), so the ranker also learns that far-away items do not matter.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, FastGDAError


class PairSampler:
    """Draw (query row, training id, target) triples for batches of queries.

    Args:
        ranked_ids: int (Q, K) teacher rankings, most influential first.
        num_train: N, the range outliers are drawn from.
        target: "rank" (normalised rank) or "score" (the teacher's tau min-max scaled per query to [0, 1]).
        scores: float (Q, K) teacher scores, needed for target="score".
        candidate_fraction: keep only this random share of each query's candidates (ablation).
    """

    def __init__(
        self,
        ranked_ids: np.ndarray,
        num_train: int,
        outlier_prob: float = 0.1,
        target: str = "rank",
        scores: np.ndarray | None = None,
        candidate_fraction: float = 1.0,
        seed: int = 0,
    ):
        self.rng = np.random.default_rng(seed)
        q, k = ranked_ids.shape
        if k < 2:
            raise FastGDAError(
                f"each query needs at least 2 ranked candidates, got {k}; rank larger candidate pools"
            )
        if k >= num_train and outlier_prob > 0:
            raise ConfigError(
                f"candidate pools of {k} cover the whole training set of {num_train}: there are no outliers "
                "to draw; set the outlier share to 0 (--outliers 0)"
            )
        self.ranked_ids = np.asarray(ranked_ids, dtype=np.int64)
        self.sorted_ids = np.sort(self.ranked_ids, axis=1)
        self.num_train = num_train
        self.outlier_prob = outlier_prob
        if target == "rank":
            self.targets = np.broadcast_to(1.0 - np.arange(k) / (k - 1), (q, k)).astype(np.float32)
        elif target == "score":
            if scores is None:
                raise FastGDAError(
                    "target='score' needs the teacher's scores; this ground truth holds none"
                )
            low, high = scores.min(axis=1, keepdims=True), scores.max(axis=1, keepdims=True)
            self.targets = ((scores - low) / np.maximum(high - low, 1e-12)).astype(np.float32)
        else:
            raise ConfigError(f"unknown target {target!r}; use 'rank' or 'score'")
        # Positions each query may draw from (all, or a fixed random subset for the subsampling ablation).
        keep = max(2, round(candidate_fraction * k))
        self.positions = np.sort(np.argsort(self.rng.random((q, k)), axis=1)[:, :keep], axis=1)

    def outside_candidates(self, query_rows: np.ndarray) -> np.ndarray:
        """One random training id per row, never in that row's candidate pool: int64 (len(query_rows),)."""
        out = self.rng.integers(0, self.num_train, len(query_rows))
        todo = np.arange(len(query_rows))
        while len(todo):
            pools = self.sorted_ids[query_rows[todo]]
            slot = np.minimum(
                (pools < out[todo, None]).sum(axis=1), pools.shape[1] - 1
            )  # searchsorted per row
            inside = pools[np.arange(len(todo)), slot] == out[todo]
            todo = todo[inside]
            out[todo] = self.rng.integers(0, self.num_train, len(todo))
        return out

    def sample(self, query_rows: np.ndarray, pairs_per_query: int):
        """Pairs for a batch of queries.

        Returns:
            rows int64 (B*P,) query rows; items int64 (B*P,) training ids; targets float32 (B*P,).
        """
        query_rows = np.asarray(query_rows, dtype=np.int64)
        b = len(query_rows)
        pick = self.rng.integers(0, self.positions.shape[1], (b, pairs_per_query))
        positions = np.take_along_axis(self.positions[query_rows], pick, axis=1)
        items = np.take_along_axis(self.ranked_ids[query_rows], positions, axis=1)
        targets = np.take_along_axis(self.targets[query_rows], positions, axis=1).copy()
        rows = np.repeat(query_rows, pairs_per_query).reshape(b, pairs_per_query)
        outlier = self.rng.random((b, pairs_per_query)) < self.outlier_prob
        if outlier.any():
            items[outlier] = self.outside_candidates(rows[outlier])
            targets[outlier] = 0.0
        return rows.reshape(-1), items.reshape(-1), targets.reshape(-1)
