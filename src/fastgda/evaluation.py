"""Rank agreement with the teacher: mAP(L) as the FastGDA paper defines it, planted-concept recall, and
``evaluate``, which scores any methods beside the untuned baselines on one set of test queries.

mAP(L): for each query, the positives are the teacher's top-L training items; walking down the *whole* predicted
ranking, precision is accumulated at every positive and averaged over the L positives (= scikit-learn's
``average_precision_score`` with those labels). The paper reports L at 0.42%, 0.85% and 3.4% of N
(500, 1000 and 4000 of MSCOCO's 118,287).

A *method* is a float (Q, N) matrix of scores, higher = more influential, for the test queries over every
training item. The untuned baselines are cosines of raw frozen features (method.md §6): each part of the spec,
their raw concatenation, and random.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError, IncompatibleArtifactError
from .features import Features
from .index import unit_rows

PAPER_L_FRACTIONS = (0.0042, 0.0085, 0.034)
RANDOM = "random"


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
        predicted_scores: float (Q, N) scores of every training item (full rankings).
        teacher_ids: int (Q, K) the teacher's ranking (most influential first), K >= L, ids in [0, N).

    Returns:
        float64 (Q,) AP per query; report its mean and standard error.
    """
    return map_at_ls(predicted_scores, teacher_ids, [L])[L]


def map_at_ls(predicted_scores: np.ndarray, teacher_ids: np.ndarray, ls) -> dict[int, np.ndarray]:
    """``map_at_l`` at every L of ``ls``, each query's scores sorted once (not once per L): L -> float64 (Q,).

    The same figures as ``average_precision`` bit for bit: the positives' positions in the one stable order.
    """
    ls = [int(L) for L in ls]
    if any(L < 1 for L in ls):
        raise ConfigError("a query has no positives; L must be at least 1")
    out = {L: np.empty(len(predicted_scores)) for L in ls}
    for q, (scores, ids) in enumerate(zip(predicted_scores, teacher_ids, strict=True)):
        order = np.argsort(-np.asarray(scores), kind="stable")
        position = np.empty(len(order), dtype=np.int64)
        position[order] = np.arange(len(order))
        for L in ls:
            ranks = np.sort(position[np.unique(ids[:L])]) + 1  # 1-based positions of the positives
            out[L][q] = float((np.arange(1, len(ranks) + 1) / ranks).mean())
    return out


def candidate_map(predicted_scores: np.ndarray, teacher_ids: np.ndarray, L: int) -> np.ndarray:
    """AP within each query's candidate pool: predicted_scores (Q, K) aligned with teacher_ids (Q, K), which are
    sorted most influential first, so the positives are the first L positions of each pool."""
    return map_at_ls(predicted_scores, pool_positions(teacher_ids.shape), [L])[L]


def pool_positions(shape: tuple[int, int]) -> np.ndarray:
    """int (Q, K): each pool's items by the teacher's rank within it (scores aligned with the pool's order)."""
    return np.broadcast_to(np.arange(shape[1]), shape)


def recall_at_k(ranked_ids: np.ndarray, relevant: set[int], k: int | None = None) -> float:
    """Share of ``relevant`` ids among the first k (default len(relevant)) of a ranking."""
    k = len(relevant) if k is None else k
    return len(relevant & set(np.asarray(ranked_ids)[:k].tolist())) / len(relevant)


def mean_and_stderr(values) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std, ddof = 1, over sqrt(n)); the error is NaN for n < 2.

    The one helper behind every "± s.e." figure: mAP(L), planted recall and the counterfactual's ΔL.
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))


def cosine_matrix(queries: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Cosine similarities float32 (Q, N) of raw feature rows."""
    return unit_rows(queries) @ unit_rows(items).T


def untuned_methods(
    query_features: Features,
    item_features: Features,
    seed: int = 0,
    pools: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Score matrices of the untuned baselines: one per spec part, the raw concatenation, and random.

    Float32 (Q, N) over every item, or with ``pools`` (int (Q, K) training ids per query) (Q, K) over each
    query's pool only.
    """
    if query_features.spec != item_features.spec:
        raise IncompatibleArtifactError(
            f"query features {query_features.spec!r} vs item features {item_features.spec!r}: "
            "embed the queries and the items with one spec"
        )

    def cosines(queries: np.ndarray, items: np.ndarray) -> np.ndarray:
        if pools is None:
            return cosine_matrix(queries, items)
        units = unit_rows(queries)
        return np.stack([unit_rows(items[pool]) @ units[q] for q, pool in enumerate(pools)])

    methods = {}
    for part in item_features.parts:
        name = f"untuned {part['modality']} ({part['name']})"
        methods[name] = cosines(query_features.part(part["name"]), item_features.part(part["name"]))
    if len(item_features.parts) > 1:
        methods[f"untuned concatenation ({item_features.spec})"] = cosines(
            query_features.values, item_features.values
        )
    shape = (len(query_features), len(item_features)) if pools is None else pools.shape
    methods[RANDOM] = np.random.default_rng(seed).random(shape).astype(np.float32)
    return methods


def teacher_scores(ground_truth, num_train: int) -> np.ndarray:
    """The teacher's own rankings as a float32 (Q, N) score matrix (items it did not rank: -inf)."""
    scores = np.full((len(ground_truth), num_train), -np.inf, dtype=np.float32)
    np.put_along_axis(scores, ground_truth.ids.astype(np.int64), ground_truth.scores, axis=1)
    return scores


def map_table(
    methods: dict[str, np.ndarray],
    teacher_ids: np.ndarray,
    num_train: int,
    ls: list[int] | None = None,
) -> dict[str, dict]:
    """mAP(L) mean and standard error per method at ``ls`` (default: the paper's L fractions of N)."""
    table = {}
    for name, scores in methods.items():
        per_query = map_at_ls(scores, teacher_ids, ls or l_values(num_train))
        table[name] = {}
        for L, values in per_query.items():
            mean, stderr = mean_and_stderr(values)
            table[name][L] = {"mean": mean, "stderr": stderr}
    return table


def planted_recall(
    methods: dict[str, np.ndarray], concepts: list[str | None], exemplars: dict[str, list[int]]
):
    """Mean recall@(number of exemplars) over queries naming a planted concept, per method: (mean, s.e.)."""
    rows = [q for q, c in enumerate(concepts) if c]
    out = {}
    for name, scores in methods.items():
        recalls = [
            recall_at_k(np.argsort(-scores[q], kind="stable"), set(exemplars[concepts[q]]))
            for q in rows
        ]
        out[name] = mean_and_stderr(recalls) if recalls else (float("nan"), float("nan"))
    return out


def format_map_table(table: dict[str, dict], num_train: int, recall: dict | None = None) -> str:
    """A markdown table: one row per method, mAP(L) +- s.e. per L (the table's), optional planted recall."""
    ls = list(next(iter(table.values()))) if table else l_values(num_train)
    head = "| method | " + " | ".join(f"mAP(L={L}, {100 * L / num_train:.2g}% of N)" for L in ls)
    head += " | planted recall |" if recall else " |"
    lines = [head, "|---|" + "---:|" * (len(ls) + (1 if recall else 0))]
    for name, row in table.items():
        cells = [f"{row[L]['mean']:.3f} ± {row[L]['stderr']:.3f}" for L in ls]
        if recall:
            mean, stderr = recall[name]
            cells.append(f"{mean:.2f} ± {stderr:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class Evaluation:
    """What ``evaluate`` measured: every method's mAP(L) (and planted recall) on Q test queries over N items."""

    num_train: int
    query_ids: np.ndarray  # int64 (Q,)
    scores: dict[str, np.ndarray]  # method -> float32 (Q, N), higher = more influential
    map: dict[str, dict[int, dict[str, float]]]  # method -> L -> {"mean", "stderr"}
    planted_recall: dict[str, tuple[float, float]] | None = None
    # int (Q, N): the full rankings scored against
    teacher_ids: np.ndarray = field(default=None, repr=False)
    # Within pools (``evaluate(within_pools=True)``): each query's pool of training ids (Q, K) in the teacher's
    # order; ``num_train`` is then K, and ``scores`` and ``teacher_ids`` hold positions in the pools.
    pools: np.ndarray | None = field(default=None, repr=False)

    @property
    def ls(self) -> list[int]:
        """The L of the table: the paper's three for this N (0.42%, 0.85%, 3.4% of N) unless others were asked."""
        return list(next(iter(self.map.values())))

    def best_untuned(self, L: int | None = None) -> str:
        """The untuned baseline with the highest mAP(L) (default L: the middle one, 0.85% of N)."""
        L = self.ls[1] if L is None else L
        untuned = [name for name in self.map if name.startswith("untuned")]
        if not untuned:
            raise ConfigError(
                "this evaluation holds no untuned baselines; evaluate with baselines=True"
            )
        return max(untuned, key=lambda name: self.map[name][L]["mean"])

    def ratio(self, method: str, L: int | None = None) -> float:
        """``method``'s mAP(L) over the best untuned baseline's."""
        L = self.ls[1] if L is None else L
        return self.map[method][L]["mean"] / self.map[self.best_untuned(L)][L]["mean"]

    def curve(self, method: str, fractions) -> list[tuple[int, float]]:
        """(L, mean mAP(L)) for L at each fraction of N: the mAP(L) curve of one method."""
        ls = l_values(self.num_train, fractions)
        per_query = map_at_ls(self.scores[method], self.teacher_ids, ls)
        return [(L, float(per_query[L].mean())) for L in ls]

    def to_json(self) -> dict:
        recall = None if self.planted_recall is None else dict(self.planted_recall)
        return {
            "num_train": self.num_train,
            "num_queries": len(self.query_ids),
            "map": self.map,
            "planted_recall": recall,
        }

    def __str__(self) -> str:
        return format_map_table(self.map, self.num_train, self.planted_recall)


def evaluate(
    methods: dict,
    queries: Features,
    items: Features,
    ground_truth,
    *,
    baselines: bool = True,
    concepts: list[str | None] | None = None,
    exemplars: dict[str, list[int]] | None = None,
    seed: int = 0,
    ls: list[int] | None = None,
    within_pools: bool = False,
) -> Evaluation:
    """mAP(L) of each method against the teacher's full rankings of the test queries, beside the untuned baselines.

    Args:
        methods: name -> a ``Ranker`` (scored by its cosine), anything with a ``ranker`` (an ``Attributor``), or a
            float (Q, N) score matrix in the ground truth's query order.
        queries: features of the test queries; the rows of ``ground_truth.query_ids`` are used.
        items: features of every training item (N rows, the ids the ground truth ranks).
        ground_truth: the teacher's rankings of the test queries over all N items.
        baselines: also score the untuned baselines (each part, the concatenation) and random.
        concepts / exemplars: the planted concept each test query names (or None) and each concept's training
            ids, for planted recall (the shapes world).
        ls: the L of mAP(L) (default: 0.42%, 0.85% and 3.4% of N; the paper's MSCOCO figures use 500, 1000, 4000).
        within_pools: score each query within the pool its ground truth ranks (the paper's SD protocol: a test
            query's top-M neighbours); each method scores only those K items, and L defaults to the shares of K.

    Raises:
        IncompatibleArtifactError: the rankings are pools but ``within_pools`` is off, or the features do not match.
    """
    if ground_truth.ids.shape[1] != len(items) and not within_pools:
        raise IncompatibleArtifactError(
            f"mAP(L) needs full rankings: the ground truth ranks {ground_truth.ids.shape[1]} candidates of "
            f"{len(items)} items; use the test queries' full ground truth, or score each query within its pool "
            "(within_pools=True, --within-pools)"
        )
    selected = queries.select(ground_truth.query_ids)
    if within_pools:
        return _evaluate_within_pools(methods, selected, items, ground_truth, baselines, seed, ls)
    scores = {name: _method_scores(method, selected, items) for name, method in methods.items()}
    if baselines:
        scores.update(untuned_methods(selected, items, seed=seed))
    table = map_table(scores, ground_truth.ids, len(items), ls)
    recall = None
    if concepts is not None and exemplars and any(concepts):
        recall = planted_recall(
            {**scores, "teacher": teacher_scores(ground_truth, len(items))}, concepts, exemplars
        )
    return Evaluation(len(items), selected.ids, scores, table, recall, ground_truth.ids)


def _evaluate_within_pools(methods: dict, selected: Features, items: Features, ground_truth, baselines: bool,
                           seed: int, ls) -> Evaluation:  # fmt: skip
    """``evaluate`` within each query's pool: every method scores only the pool's K items (Q, K), and each query
    is sorted once, so the cost grows with Q x K, not Q x N."""
    pools = ground_truth.ids.astype(np.int64)  # (Q, K), the teacher's order
    scores = {name: _method_scores(m, selected, items, pools) for name, m in methods.items()}
    if baselines:
        scores.update(untuned_methods(selected, items, seed, pools))
    local = pool_positions(pools.shape)
    table = map_table(scores, local, pools.shape[1], ls)
    return Evaluation(pools.shape[1], selected.ids, scores, table, None, local, pools)


def _method_scores(
    method, queries: Features, items: Features, pools: np.ndarray | None = None
) -> np.ndarray:
    """A method's float32 scores (Q, N), or (Q, K) over each query's pool: a ``Ranker`` (or anything with a
    ``ranker``) scores by its cosine, only the pool's items with ``pools``; a score matrix is taken as it is
    (its pool's columns when it spans all N)."""
    ranker = getattr(method, "ranker", method)
    if hasattr(ranker, "score"):
        if pools is None:
            return ranker.score(queries.values, items.values)
        rows = [
            ranker.score(queries.values[q : q + 1], items.values[pool])[0]
            for q, pool in enumerate(pools)
        ]
        return np.stack(rows).astype(np.float32)
    matrix = np.asarray(method, dtype=np.float32)
    if pools is not None and matrix.shape[1] == len(items):
        return np.take_along_axis(matrix, pools, 1)
    return matrix
