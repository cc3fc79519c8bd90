"""Comparing attribution methods against the teacher: untuned baselines, full score matrices, mAP(L) tables.

A *method* here is a (Q, N) matrix of scores, higher = more influential, for the evaluation queries over every
training item. The untuned baselines are cosines of raw frozen features (method.md §6): each image part, each
text part (query prompt vs the item's first caption), their raw concatenation, and random.
"""

from __future__ import annotations

import numpy as np

from .errors import IncompatibleArtifactError
from .evaluation import l_values, map_at_l, mean_and_stderr, recall_at_k
from .features import Features


def cosine_matrix(queries: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Cosine similarities (Q, N) of raw feature rows."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    x = items / np.maximum(np.linalg.norm(items, axis=1, keepdims=True), 1e-12)
    return (q @ x.T).astype(np.float32)


def untuned_methods(
    query_features: Features, item_features: Features, seed: int = 0
) -> dict[str, np.ndarray]:
    """Score matrices of the untuned baselines: one per spec part, the raw concatenation, and random."""
    if query_features.spec != item_features.spec:
        raise IncompatibleArtifactError(
            f"query features {query_features.spec!r} vs item features {item_features.spec!r}: "
            "embed the queries and the items with one spec"
        )
    methods = {}
    for part in item_features.parts:
        name = f"untuned {part['modality']} ({part['name']})"
        methods[name] = cosine_matrix(
            query_features.part(part["name"]), item_features.part(part["name"])
        )
    if len(item_features.parts) > 1:
        methods[f"untuned concatenation ({item_features.spec})"] = cosine_matrix(
            query_features.values, item_features.values
        )
    rng = np.random.default_rng(seed)
    methods["random"] = rng.random((len(query_features), len(item_features))).astype(np.float32)
    return methods


def map_table(
    methods: dict[str, np.ndarray], teacher_ids: np.ndarray, num_train: int
) -> dict[str, dict]:
    """mAP(L) mean and standard error per method at the paper's L fractions of N."""
    table = {}
    for name, scores in methods.items():
        table[name] = {}
        for L in l_values(num_train):
            mean, stderr = mean_and_stderr(map_at_l(scores, teacher_ids, L))
            table[name][L] = {"mean": mean, "stderr": stderr}
    return table


def planted_recall(
    methods: dict[str, np.ndarray], concepts: list[str | None], exemplars: dict[str, list[int]]
):
    """Mean recall@(number of exemplars) over queries naming a planted concept, per method."""
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
    """A markdown table: one row per method, mAP(L) +- s.e. per L, optional planted recall."""
    ls = l_values(num_train)
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
