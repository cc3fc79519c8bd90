"""The untuned baselines as scorers: the plain cosine of one part of the frozen features (e.g. the text part).

A ranker distilled from few teacher queries can learn less than one of its own inputs already knows. Validation
says so (``validation_maps``: the ranker's validation mAP beside each part's), and ``best_scorer`` then offers
the part's cosine in the ranker's place: an ``UntunedScorer`` has the ranker's interface (``embed_numpy``,
``score``, ``save``/``load``), so the attributor, the index and the service use it unchanged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .._artifacts import atomic_dir, read_manifest, write_manifest
from ..errors import FastGDAError
from ..evaluation import candidate_map
from ..index import unit_rows

logger = logging.getLogger(__name__)
UNTUNED_KIND = "untuned_scorer"
UNTUNED_FORMAT_VERSION = 1


class UntunedScorer:
    """Cosine of one part (``part``) of a spec's raw features: what an untuned baseline scores.

    Args:
        spec: the feature spec the inputs follow (e.g. ``"effnet+minilm"``); inputs are its full rows (n, in_dim).
        parts: the spec's part layout (``Features.parts``: name, offset, dim).
        part: the encoder whose columns are compared (e.g. ``"minilm"``).
    """

    def __init__(self, spec: str, parts: list[dict], part: str):
        chosen = [p for p in parts if p["name"] == part]
        if not chosen:
            raise FastGDAError(
                f"{part!r} is not a part of {spec!r}; choose one of {[p['name'] for p in parts]}"
            )
        self.spec, self.parts, self.part = spec, parts, part
        self.offset, self.embedding_dim = int(chosen[0]["offset"]), int(chosen[0]["dim"])
        self.in_dim = sum(int(p["dim"]) for p in parts)
        self.history: list[dict] = []

    @property
    def name(self) -> str:
        modality = next(p for p in self.parts if p["name"] == self.part).get("modality", "")
        return f"untuned {modality} ({self.part})".replace("  ", " ")

    def embed_numpy(self, features: np.ndarray) -> np.ndarray:
        """Unit rows (n, part dim) of the part's columns of features (n, in_dim)."""
        features = np.atleast_2d(features)
        if features.shape[1] != self.in_dim:
            raise FastGDAError(
                f"expected {self.in_dim}-d {self.spec} features, got {features.shape[1]}-d"
            )
        return unit_rows(features[:, self.offset : self.offset + self.embedding_dim])

    def score(self, query_features: np.ndarray, item_features: np.ndarray) -> np.ndarray:
        """Cosines float32 (Q, N) of the part's columns."""
        return self.embed_numpy(query_features) @ self.embed_numpy(item_features).T

    def save(
        self, folder: str | os.PathLike, extra: dict | None = None, overwrite: bool = False
    ) -> None:
        with atomic_dir(folder, overwrite=overwrite) as tmp:
            write_manifest(
                tmp,
                UNTUNED_KIND,
                UNTUNED_FORMAT_VERSION,
                config={"spec": self.spec, "parts": self.parts, "part": self.part},
                shapes={"embedding": [self.embedding_dim]},
                extra=extra,
            )

    @classmethod
    def load(cls, folder: str | os.PathLike) -> UntunedScorer:
        config = read_manifest(folder, UNTUNED_KIND, UNTUNED_FORMAT_VERSION)["config"]
        return cls(config["spec"], config["parts"], config["part"])


def validation_maps(
    scorer_or_ranker, queries, items, truth, l_fraction: float = 0.1
) -> dict[str, float]:
    """Validation mAP within each query's candidate pool (what early stopping maximises), for the ranker and
    for every part's untuned cosine.

    Args:
        queries: ``Features`` of the validation queries (rows picked by ``truth.query_ids``).
        items: ``Features`` of the training items.
        truth: the teacher's ``GroundTruth`` of the validation queries (pools or full rankings).
        l_fraction: positives: the teacher's top share of each pool (``RankerTrainConfig.val_fraction_l``).
    """
    selected = queries.select(truth.query_ids).values
    L = max(1, round(l_fraction * truth.ids.shape[1]))
    ids = truth.ids.astype(np.int64)
    out = {}
    if scorer_or_ranker is not None:
        ranker = scorer_or_ranker
        out["ranker"] = pool_map(
            ranker.embed_numpy(selected), ranker.embed_numpy(items.values), ids, L
        )
    parts = {
        UntunedScorer(items.spec, items.parts, p["name"]).name: (int(p["offset"]), int(p["dim"]))
        for p in items.parts
    }
    return {**out, **part_pool_maps(selected, items.values, ids, parts, L)}


def part_pool_maps(
    query_features: np.ndarray,
    item_features: np.ndarray,
    ranked_ids: np.ndarray,
    parts: dict[str, tuple[int, int]],
    L: int,
) -> dict[str, float]:
    """``pool_map`` of each part's plain cosine: name -> mAP, for parts given as name -> (offset, width) of the
    feature rows (query (Q, D), item (N, D)); ranked_ids int (Q, K)."""
    return {
        name: pool_map(
            unit_rows(query_features[:, o : o + d]),
            unit_rows(item_features[:, o : o + d]),
            ranked_ids,
            L,
        )
        for name, (o, d) in parts.items()
    }


def pool_map(
    query_rows: np.ndarray, item_rows: np.ndarray, ranked_ids: np.ndarray, L: int, chunk: int = 64
) -> float:
    """Mean AP of the teacher's top L within each query's pool, ranked by the dot product of the rows.

    Args:
        query_rows: float (Q, d) embeddings (unit rows: the dot product is the cosine).
        item_rows: float (N, d) embeddings of every training item.
        ranked_ids: int (Q, K) each query's pool, the teacher's most influential first.
    """
    aps = []
    for start in range(0, len(query_rows), chunk):  # (chunk, K, d) at a time, not (Q, K, d)
        ids = ranked_ids[start : start + chunk]
        pooled = np.einsum("qd,qkd->qk", query_rows[start : start + chunk], item_rows[ids])
        aps.append(candidate_map(pooled, ids, L))
    return float(np.concatenate(aps).mean()) if aps else float("nan")


def best_scorer(ranker, items, maps: dict[str, float]):
    """The ranker, unless an untuned part scored a higher validation mAP (``maps``, from ``validation_maps``):
    then that part's ``UntunedScorer``, with a warning that says why."""
    baselines = {name: value for name, value in maps.items() if name != "ranker"}
    if not baselines:
        return ranker
    best = max(baselines, key=baselines.get)
    if baselines[best] <= maps["ranker"]:
        return ranker
    part = best[best.index("(") + 1 : best.rindex(")")]
    logger.warning(
        "the ranker's validation mAP %.3f is below %s's %.3f: it would attribute worse than a plain cosine "
        "(too few teacher queries?); serving %s instead",
        maps["ranker"], best, baselines[best], best,
    )  # fmt: skip
    return UntunedScorer(items.spec, items.parts, part)


def load_scorer(folder: str | os.PathLike):
    """A saved ``Ranker`` or ``UntunedScorer``, whichever the folder holds."""
    from .model import RANKER_KIND, RANKER_READABLE_VERSIONS, Ranker

    # An untuned scorer is at format version 1, which a ranker's versions include, so one read checks either.
    manifest = read_manifest(folder, (RANKER_KIND, UNTUNED_KIND), RANKER_READABLE_VERSIONS)
    if manifest["kind"] == UNTUNED_KIND:
        return UntunedScorer.load(folder)
    return Ranker.load(Path(folder))
