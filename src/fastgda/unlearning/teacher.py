"""``Teacher``: attribution by unlearning in memory (AbU with a diagonal Fisher, AbU+ with EK-FAC).

For a query, one Fisher-preconditioned Newton step raises the model's loss on it, moving only the selected layers
(the cross-attention keys and values); a training item's score is how much its own loss rises (method.md §3). The
teacher holds the model, the training data encoded once, the Fisher and the query-independent before losses, so
ranking many queries costs one step and one scoring pass each. ``TeacherJob`` (jobs.py) runs it over a query-set
folder resumably, one result file per query.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..config import FRACTION, NON_NEGATIVE, Bounds, check_settings, setting
from ..errors import IncompatibleArtifactError
from ..ground_truth import GroundTruth
from ..progress import bar as progress_bar
from .before import BeforeLossStore
from .fisher import Fisher
from .layers import select_linear_layers
from .pools import CandidateSpace, balanced_rows
from .scoring import (
    BeforeLosses,
    ScoringConfig,
    influence_scores,
    item_losses,
    rank,
    scoring_batch_size,
)
from .unlearner import UnlearnConfig, unlearn, weights_shifted

CANDIDATE_SHARE_SEED = (
    1000  # one fixed subset per query, as the papers' code fixes it (method.md §5.6)
)


@dataclass(frozen=True)
class TeacherConfig:
    """Everything that determines a query's ranking besides the model, data, Fisher and query."""

    unlearn: UnlearnConfig = field(default_factory=UnlearnConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    num_candidates: int | None = setting(
        None,
        "rank only each query's top-M neighbours in the candidate_feature space (default: all N, for test queries)",
        bounds=Bounds(2),
    )
    candidate_feature: str = setting(
        "pixels",
        "pixels, a feature spec (``fastgda.encoders``) such as effnet or effnet+minilm, or the training set's "
        "features folder from `fastgda embed` (e.g. CLIP image features, as the paper's SD protocol)",
    )
    candidate_share: float | None = setting(
        None,
        "rank a random share of each query's top-M neighbours, drawn once per query (the paper's SD protocol: "
        "training queries on 20% of their 100k neighbours); default: all M",
        bounds=FRACTION,
    )
    damping: float | None = setting(
        None, "EK-FAC damping (default: the Fisher's own)", bounds=NON_NEGATIVE
    )

    def __post_init__(self):
        check_settings(self)


class Teacher:
    """Ranks training items for generated queries by unlearning each query (method.md §3).

    Args:
        model: the ``TextToImageModel`` that generated the queries.
        dataset: the training set it was trained on.
        fisher: a ``Fisher`` fitted on that model and data (``Fisher.fit`` or ``Fisher.load``).
        config: the step and scoring settings.
        data: the dataset's ``TrainingData`` when already encoded (default: encoded here, once).
        before_losses: a ``BeforeLossStore`` (or dense ``BeforeLosses``) of this model, data and scoring config
            (default: an empty one in memory, filled with each query's candidates as they are scored).
        encoded_cache: where the training set's encoding is kept (``prepare_training_data``'s ``cache``).
    """

    def __init__(
        self,
        model,
        dataset,
        fisher: Fisher,
        config: TeacherConfig = TeacherConfig(),
        *,
        data=None,
        before_losses: BeforeLossStore | BeforeLosses | None = None,
        encoded_cache: str | os.PathLike | None = None,
    ):
        from ..diffusion.training import prepare_training_data

        self.model, self.dataset, self.fisher, self.config = model, dataset, fisher, config
        fisher.check_model(model)
        self.layers = select_linear_layers(model.unet, fisher.config.layers)
        fisher.check_layers(list(self.layers))
        if data is None:
            data = prepare_training_data(model, dataset, cache=encoded_cache)
        self.data = data
        # Shared with the teachers ``with_candidates`` makes, so the before losses are computed once for all.
        self._shared: dict = {"before_losses": None}
        if before_losses is not None:
            self.before_losses = before_losses
        self._candidate_spaces: dict[str, CandidateSpace] = {}
        # query set -> its pools int64 (Q, M): asked for when the before losses are computed and when scored
        self._pools: dict[str, np.ndarray] = {}

    @classmethod
    def from_folders(
        cls,
        model_dir: str | os.PathLike,
        data_dir: str | os.PathLike,
        fisher_dir: str | os.PathLike,
        config: TeacherConfig = TeacherConfig(),
        encoded_cache: str | os.PathLike | None = None,
        device: str = "auto",
        dtype: str = "float32",
    ) -> Teacher:
        """Load the model (onto ``device``: ``fastgda.devices.DEVICE_HELP``, computing in ``dtype``), the dataset
        and the Fisher. Loss differences stay float32 whatever ``dtype`` is."""
        from ..data import open_dataset
        from ..diffusion import TextToImageModel

        model = TextToImageModel.from_pretrained(model_dir, device=device, dtype=dtype)
        dataset, fisher = open_dataset(data_dir), Fisher.load(fisher_dir)
        return cls(model, dataset, fisher, config, encoded_cache=encoded_cache)

    def with_candidates(
        self, num_candidates: int | None, candidate_feature: str | None = None
    ) -> Teacher:
        """The same teacher (model, data, Fisher, before losses shared) ranking other candidate pools: the top-M
        neighbours of each query (training queries), or all N items with ``None`` (test queries)."""
        config = replace(
            self.config,
            num_candidates=num_candidates,
            candidate_feature=candidate_feature or self.config.candidate_feature,
        )
        other = copy.copy(self)
        other.config, other._candidate_spaces, other._pools = config, {}, {}
        return other

    @property
    def ranks_every_item(self) -> bool:
        """Whether every query's candidates are all N training items (full rankings)."""
        m, share = self.config.num_candidates, self.config.candidate_share
        return (m is None or m >= self.num_train) and (share is None or share >= 1)

    @property
    def num_train(self) -> int:
        return len(self.dataset)

    @property
    def before_losses(self) -> BeforeLossStore:
        """L(z, θ₀) of the training items scored so far, by id: each query's candidates are computed when first
        needed (all N for a full ranking), then shared by every query."""
        if self._shared["before_losses"] is None:
            self._shared["before_losses"] = BeforeLossStore(self.config.scoring, {}, self.num_train)
        return self._shared["before_losses"]

    @before_losses.setter
    def before_losses(self, value: BeforeLossStore | BeforeLosses) -> None:
        if isinstance(value, BeforeLosses):
            value = BeforeLossStore.from_losses(value)
        self._shared["before_losses"] = value

    # -- candidates --------------------------------------------------------------------------------------
    def check_queries(self, queries) -> None:
        """Refuse a query set whose samples this model does not denoise."""
        shape = tuple(queries.tensors["x0"].shape[1:])
        if shape != self.model.sample_shape:
            raise IncompatibleArtifactError(
                f"query samples have shape {shape}, the model denoises {self.model.sample_shape}; sample the "
                "queries with this model"
            )

    def candidate_space(self, queries) -> CandidateSpace:
        """The training items' and the query set's candidate features (``fastgda.unlearning.pools``), kept per
        query set; the training rows stay on disk and are read in blocks.

        ``pixels`` uses the clean samples the model denoises (x0, pixels or latents). Anything else is a feature
        spec from ``fastgda.encoders`` (``effnet``, ``effnet+minilm``, ...) or a features folder: training items
        are embedded with their image and first caption, queries with their image and prompt.
        """
        key = str(queries.root)
        if key in self._candidate_spaces:
            return self._candidate_spaces[key]
        name = self.config.candidate_feature
        if name == "pixels":
            x0 = self.data.x0
            query = queries.tensors["x0"].flatten(1).float().numpy()
            width = query.shape[1]
            space = CandidateSpace(lambda a, b: x0[a:b].reshape(b - a, width).numpy(), len(x0),
                                   balanced_rows(query, [(0, width)]), [(0, width)])  # fmt: skip
        else:
            from ..features import FeatureExtractor

            train_features = self._training_candidate_features(name)
            device = self.model.device  # the encoders run where the model runs
            extractor = FeatureExtractor(train_features.spec, device, self.model.compute_dtype)
            query_values = extractor.embed_pairs(
                queries.read_images(), [queries.captions(i)[0] for i in range(len(queries))]
            )
            parts = [
                (p["offset"], p["dim"])
                for p in sorted(train_features.parts, key=lambda p: p["offset"])
            ]
            values = train_features.values  # memory-mapped where it was loaded from a folder
            space = CandidateSpace(lambda a, b: np.asarray(values[a:b], dtype=np.float32), len(values),
                                   balanced_rows(query_values, parts), parts)  # fmt: skip
        self._candidate_spaces[key] = space
        return space

    def _training_candidate_features(self, name: str):
        """``Features`` of every training item for the candidate pools: a features folder (``fastgda embed``, e.g.
        CLIP image features computed once on GPUs), or a spec embedded here, in chunks."""
        from ..features import FEATURES_KIND, FeatureExtractor, Features

        if Path(name).is_dir():
            features = Features.load(name, mmap=True)
            expected = self.dataset.content_hash
            found = features.source.get("content_hash")
            if len(features) != self.num_train or found not in (None, expected):
                raise IncompatibleArtifactError(
                    f"candidate features {name} hold {len(features)} rows of data {found}, the training set has "
                    f"{self.num_train} rows of data {expected}; embed this training set with `fastgda embed`"
                )
            return features
        if name.startswith((".", "/")) or "/" in name:
            raise IncompatibleArtifactError(
                f"candidate feature {name!r} is neither a {FEATURES_KIND} folder nor an encoder spec; give the "
                "folder `fastgda embed` wrote for the training set, or a spec such as effnet+minilm"
            )
        from ..data import ImageCaptionFolder

        if isinstance(
            self.dataset, ImageCaptionFolder
        ):  # a folder that can be embedded again by its path
            cached = _cached_candidate_features(self.dataset, name, self.model)
            if len(cached) == self.num_train:
                return cached
        # A dataset made in memory (a subset, a COCO annotation file): embedded here, each time.
        extractor = FeatureExtractor(name, self.model.device, self.model.compute_dtype)
        return extractor.extract(self.dataset)

    def candidates(self, queries, q: int) -> np.ndarray:
        """All training ids, or query ``q``'s top-M neighbours by cosine in the candidate feature space (nearest
        first); with ``candidate_share``, a random share of them drawn from a generator seeded by ``q``, in
        neighbour order. The first call for a query set finds every query's pool in one pass over N."""
        m, share = self.config.num_candidates, self.config.candidate_share
        if m is None or m >= self.num_train:
            ids = np.arange(self.num_train)
        else:
            key = str(queries.root)
            if key not in self._pools:
                self._pools[key] = self.candidate_space(queries).pools(m)
            ids = self._pools[key][int(q)]
        if share is None or share >= 1:
            return ids
        keep = max(2, round(share * len(ids)))
        rng = np.random.default_rng((CANDIDATE_SHARE_SEED, int(q)))
        return ids[np.sort(rng.choice(len(ids), keep, replace=False))]

    # -- scoring -----------------------------------------------------------------------------------------
    def scores(self, queries, q: int, candidates: np.ndarray) -> np.ndarray:
        """Influence scores float64 (n,) of ``candidates`` for query ``q``: one Newton step, then loss rises."""
        before = self.before_losses
        before.ensure(self.model, self.data, candidates)  # under θ₀: before the weights move
        x0, states, mask = queries.query(q)
        delta = unlearn(
            self.model,
            self.layers,
            self.fisher,
            x0,
            states,
            mask,
            self.config.unlearn,
            self.num_train,
            query_key=q,
            damping=self.config.damping,
        )
        with weights_shifted(self.layers, delta):
            return influence_scores(self.model, self.data, candidates, before)

    def estimate_seconds_per_query(self, queries) -> float:
        """The cost of one query, timed on one batch of the unlearning step and one of scoring.

        Scales to ``num_pairs`` x ``num_steps`` gradient samples and the candidates' (caption, timestep) losses;
        the before losses, computed once, are not part of it.
        """
        import time

        from .unlearner import query_gradient

        config, q = self.config, 0
        x0, states, mask = queries.query(q)
        pairs = min(config.unlearn.batch_size, config.unlearn.num_pairs)
        began = time.perf_counter()
        probe = replace(config.unlearn, num_pairs=pairs, num_steps=1)
        query_gradient(self.model, self.layers, x0, states, mask, probe, query_key=q)
        per_pair = (time.perf_counter() - began) / pairs
        batch = config.scoring.batch_size or scoring_batch_size(self.model, self.data)
        items = self.candidates(queries, q)[: max(1, batch // 8)]
        began = time.perf_counter()
        item_losses(self.model, self.data, items, config.scoring)
        per_item = (time.perf_counter() - began) / len(items)
        num_candidates = min(config.num_candidates or self.num_train, self.num_train)
        return (
            per_pair * config.unlearn.num_pairs * config.unlearn.num_steps
            + per_item * num_candidates
        )

    def rank_query(self, queries, q: int, known: dict[int, float] | None = None):
        """Query ``q``'s candidates, most influential first: (ids int64 (K,), scores float64 (K,)).

        ``known``: candidate id -> a score already computed with these settings (copied, not recomputed).
        """
        candidates = self.candidates(queries, q)
        known = dict(known or {})
        missing = np.array([c for c in candidates.tolist() if c not in known], dtype=np.int64)
        if len(missing):
            known.update(
                zip(missing.tolist(), self.scores(queries, q, missing).tolist(), strict=True)
            )
        return rank(candidates, np.array([known[c] for c in candidates.tolist()], dtype=np.float64))

    def rank(self, queries, query_ids=None) -> GroundTruth:
        """The teacher's rankings of the query set (all queries, or ``query_ids``) as a ``GroundTruth``.

        Args:
            queries: a ``QuerySet`` (or its folder) generated by this model.
        """
        from ..diffusion.queries import QuerySet

        if not isinstance(queries, QuerySet):
            queries = QuerySet(queries)
        self.check_queries(queries)
        query_ids = list(range(len(queries))) if query_ids is None else [int(q) for q in query_ids]
        rows = [
            self.rank_query(queries, q) for q in progress_bar(query_ids, desc="teacher queries")
        ]
        return GroundTruth(
            np.asarray(query_ids, dtype=np.int64),
            np.stack([ids for ids, _ in rows]).astype(np.int32),
            np.stack([scores for _, scores in rows]).astype(np.float32),
            {"config": teacher_config_to_json(self.config)},
        )


def teacher_config_to_json(config: TeacherConfig) -> dict:
    """The config as stored in ``run.json`` and in ground-truth artifacts (JSON values: lists, not tuples)."""
    import json
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(config)))


def teacher_config_from_json(obj: dict) -> TeacherConfig:
    """Inverse of ``teacher_config_to_json``."""
    scoring = {**obj["scoring"], "timesteps": tuple(obj["scoring"]["timesteps"])}
    return TeacherConfig(
        unlearn=UnlearnConfig(**obj["unlearn"]),
        scoring=ScoringConfig(**scoring),
        **{k: v for k, v in obj.items() if k not in ("unlearn", "scoring")},
    )


def _cached_candidate_features(dataset, spec: str, model):
    """The training set's features of ``spec`` for candidate pools, embedded once per (data, spec, precision)
    into fastgda's cache and loaded by every later teacher: each job, each split, the budget's probe and each
    Ray actor used to embed all N again. Resumable in chunks (``embed_dataset``)."""
    from .._artifacts import cache_dir, keyed_cache_dir
    from ..features import FeatureSpec, load_or_embed

    spec = str(FeatureSpec.parse(spec))
    dtype = str(model.compute_dtype).removeprefix("torch.")
    key = {"content_hash": dataset.content_hash, "spec": spec, "compute_dtype": dtype}
    folder = keyed_cache_dir(cache_dir(), "candidate-features", key)
    return load_or_embed(
        dataset.root, spec, folder, device=str(model.device), dtype=dtype, mmap=True
    )
