"""Influence methods over stored item gradients: EK-FAC influence, TRAK and D-TRAK (method.md §9.1).

- **EK-FAC influence** (``ekfac``): score(z) = (α/N) ∇L(z)ᵀ (F + λI)⁻¹ ∇L(query), the first-order term of AbU+'s
  score (method.md §3.1, τ ≈ (α/N) ∇L(z)ᵀ F⁻¹ ∇L(ẑ)) with the teacher's Fisher, query gradient and scoring noise
  (any Fisher: with a diagonal one it is AbU's first-order term). It is sign-aware where AbU+ at a large step
  is mostly second order.
- **TRAK** (``trak``) and **D-TRAK** (``dtrak``): projected gradients φ = R ∇f, and score(z) = φ_qᵀ (ΦᵀΦ + λI)⁻¹ φ_z,
  with f the diffusion loss (TRAK) or D-TRAK's squared-norm output, at ten timesteps 0, 100, ..., 900. λ is
  ``damping`` times the mean squared row norm of Φ (scale-free; D-TRAK tunes λ on LDS, which needs retrains).
  With N <= D the same scores come from the N x N kernel (push-through identity), else from the D x D one.

Every method ranks all N items; a query costs its gradient, a projection and a matrix product.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._artifacts import MANIFEST_NAME, sha256_file
from ..config import NON_NEGATIVE, check_settings, setting
from ..errors import ConfigError, IncompatibleArtifactError
from ..ground_truth import GroundTruth, finished_queries, write_query_result
from ..unlearning.unlearner import UnlearnConfig, unlearn
from .gradients import GradientConfig, flatten_layers, query_gradients
from .store import GradientFeatures, Projector

METHODS = ("ekfac", "trak", "dtrak")
_TEN_TIMESTEPS = tuple(range(0, 1000, 100))


def recipe(method: str) -> GradientConfig:
    """Each method's gradient recipe.

    - ``ekfac``: the teacher's scoring losses (timesteps 0, 200, ..., 800, its keyed noise), full K/V gradient.
    - ``trak``: the diffusion loss at 0, 100, ..., 900, projected to 16,384 (FastGDA's TRAK; AbU used 4,096).
    - ``dtrak``: D-TRAK's mean squared predicted noise at 0, 100, ..., 900 (its ten uniform timesteps),
      projected to 32,768 (the dimension its released analyses use) with a Gaussian matrix.
    """
    if method == "ekfac":
        return GradientConfig(output="loss")
    if method == "trak":
        return GradientConfig(output="loss", timesteps=_TEN_TIMESTEPS, projection_dim=16384)
    if method == "dtrak":
        return GradientConfig(output="square", timesteps=_TEN_TIMESTEPS, projection_dim=32768)
    raise ConfigError(f"influence method {method!r} is not one of {METHODS}")


@dataclass(frozen=True)
class InfluenceConfig:
    """The query side of a method; stored in every run and its ground truth."""

    method: str = setting("ekfac", "ekfac, trak or dtrak")
    damping: float | None = setting(
        None,
        "ekfac: the Fisher's damping (default: its own); trak/dtrak: kernel damping as a share of the mean "
        "squared feature norm (default 0.1)",
        bounds=NON_NEGATIVE,
    )
    unlearn: UnlearnConfig = field(
        default_factory=UnlearnConfig
    )  # ekfac: the query gradient's pairs

    def __post_init__(self):
        check_settings(self)
        if self.method not in METHODS:
            raise ConfigError(f"influence method {self.method!r} is not one of {METHODS}")


KERNEL_DAMPING = 0.1


class InfluenceScorer:
    """Scores every training item for queries with one method over stored gradient features.

    Args:
        model: the ``TextToImageModel`` the features were computed on (refused otherwise).
        features: its ``GradientFeatures``.
        config: the method and its query-side settings.
        fisher: the ``Fisher`` for ``ekfac`` (its layers must be the features').
    """

    def __init__(self, model, features: GradientFeatures, config: InfluenceConfig, fisher=None):
        from ..unlearning.layers import select_linear_layers

        features.check_model(model)
        self.model, self.features, self.config, self.fisher = model, features, config, fisher
        self.layers = select_linear_layers(model.unet, features.config.layers)
        if list(self.layers) != list(features.layers):
            raise IncompatibleArtifactError(
                f"the features hold layers {list(features.layers)[:3]}..., the model's selection gives "
                f"{list(self.layers)[:3]}...; rebuild the features for this model"
            )
        if config.method == "ekfac":
            if fisher is None:
                raise ConfigError("ekfac influence needs the Fisher (`fastgda teacher fisher`)")
            fisher.check_model(model)
            fisher.check_layers(list(self.layers))
        size = sum(layer.weight.numel() for layer in self.layers.values())
        dim = features.config.projection_dim
        self.projector = (
            None if dim is None else Projector(size, dim, features.config.projection_seed)
        )
        self._kernel = None

    def _query_vectors(self, queries, query_ids) -> torch.Tensor:
        """Each query's vector in feature space: (Q, D)."""
        vectors = []
        for q in query_ids:
            x0, states, mask = queries.query(int(q))
            if self.config.method == "ekfac":
                # The teacher's own step Δ = (α/N)(F + λI)⁻¹ ∇L(query) (same pairs, same Fisher): its score's
                # first-order term is ∇L(z)ᵀ Δ, and the positive factor α/N changes no ranking.
                delta = unlearn(
                    self.model, self.layers, self.fisher, x0, states, mask, self.config.unlearn,
                    len(self.features), query_key=int(q), damping=self.config.damping,
                )  # fmt: skip
                vectors.append(flatten_layers(delta, self.layers).cpu())
            else:
                vectors.append(
                    query_gradients(
                        self.model, self.layers, x0[None], states[None],
                        None if mask is None else mask[None], [int(q)], self.features.config,
                    )[0]
                )  # fmt: skip
        stacked = torch.stack(vectors)
        return stacked if self.projector is None else self.projector(stacked)

    def kernel(self) -> tuple[str, torch.Tensor, float]:
        """(form, Cholesky factor, λ) of the damped kernel: ``dual`` ΦΦᵀ + λI (N x N) when N <= D, else
        ``primal`` ΦᵀΦ + λI (D x D); computed once."""
        if self._kernel is None:
            f = self.features
            n, d = len(f), f.dim
            scale = KERNEL_DAMPING if self.config.damping is None else self.config.damping
            lam = scale * float(np.mean(f.norms.astype(np.float64) ** 2))
            if n <= d:
                phi = f.matrix().double()
                gram, form = phi @ phi.T, "dual"
            else:
                gram, form = torch.zeros(d, d, dtype=torch.float64), "primal"
                for s in range(0, n, 4096):
                    block = f.matrix(s, s + 4096).double()
                    gram += block.T @ block
            gram.diagonal().add_(lam)
            self._kernel = (form, torch.linalg.cholesky(gram), lam)
        return self._kernel

    def scores(self, queries, query_ids) -> np.ndarray:
        """float64 (Q, N): higher = more influential."""
        vectors = self._query_vectors(queries, query_ids).double()
        if self.config.method == "ekfac":
            return self.features.dot(vectors).numpy()
        form, factor, _ = self.kernel()
        if form == "dual":  # s = (ΦΦᵀ + λI)⁻¹ Φ φ_q
            return torch.cholesky_solve(self.features.dot(vectors).T, factor).T.numpy()
        weights = torch.cholesky_solve(vectors.T, factor).T  # (ΦᵀΦ + λI)⁻¹ φ_q, then Φ times it
        return self.features.dot(weights).numpy()


class InfluenceJob:
    """One method's rankings of a query set: ``run.json``, one result file per query, ``ground_truth/``.

    A run killed at any moment and started again ranks only the queries without a result; a result depends only
    on (settings, query), so a resumed run equals an uninterrupted one. A ``fastgda.executors.ResumableJob``:
    its units are batches of ``batch`` queries (one gradient pass each).
    """

    def __init__(
        self, scorer: InfluenceScorer, queries, out_dir, provenance: dict, batch: int = 16
    ):
        self.scorer, self.queries, self.out_dir = scorer, queries, Path(out_dir)
        self.results_dir = self.out_dir / "results"
        self.batch = batch
        self.run_info = {
            "method": "influence",
            "config": json.loads(json.dumps(asdict(scorer.config))),
            "gradients": json.loads(json.dumps(asdict(scorer.features.config))),
            **provenance,
            "num_train": len(scorer.features),
            "num_queries": len(queries),
        }
        self.spec: InfluenceSpec | None = (
            None  # set by ``open``: other processes can open the job too
        )

    @classmethod
    def open(
        cls,
        model_dir,
        features_dir,
        queries_dir,
        out_dir,
        config: InfluenceConfig,
        fisher_dir=None,
        device: str = "cpu",
        dtype: str = "float32",
    ) -> InfluenceJob:
        from ..diffusion import TextToImageModel
        from ..diffusion.queries import open_query_set
        from ..unlearning.fisher import Fisher

        queries, digest = open_query_set(queries_dir, model_dir)
        model = TextToImageModel.from_pretrained(model_dir, device=device, dtype=dtype)
        features = GradientFeatures.load(features_dir)
        fisher = Fisher.load(fisher_dir) if fisher_dir else None
        scorer = InfluenceScorer(model, features, config, fisher)
        provenance = {
            "model_manifest_sha256": digest,
            "data_content_hash": features.source.get("data_content_hash"),
            "features_manifest_sha256": sha256_file(Path(features_dir) / MANIFEST_NAME),
            "queries_manifest_sha256": sha256_file(Path(queries_dir) / MANIFEST_NAME),
        }
        if fisher_dir:
            provenance["fisher_manifest_sha256"] = sha256_file(Path(fisher_dir) / MANIFEST_NAME)
        if dtype != "float32":
            provenance["compute_dtype"] = dtype
        job = cls(scorer, queries, out_dir, provenance)
        fisher_folder = str(fisher_dir) if fisher_dir else None
        job.spec = InfluenceSpec(str(model_dir), str(features_dir), str(queries_dir), str(out_dir), config,
                                 fisher_folder, device, dtype)  # fmt: skip
        return job

    def pending(self) -> list[int]:
        done = finished_queries(self.results_dir)
        return [q for q in range(len(self.queries)) if q not in done]

    def run(self, query_ids=None, executor=None) -> None:
        """Rank the pending queries (or the pending ones of ``query_ids``), ``self.batch`` at a time, on
        ``executor`` (default: this process)."""
        from ..executors import run_units
        from ..unlearning.jobs import check_or_write_run_info

        check_or_write_run_info(self.out_dir, self.run_info, "an influence")
        todo = self.pending()
        if query_ids is not None:
            todo = [q for q in todo if q in {int(i) for i in query_ids}]
        batches = [todo[start : start + self.batch] for start in range(0, len(todo), self.batch)]
        run_units(executor, lambda: self.rank_batch, self.spec, batches, "influence query batches")

    def rank_batch(self, query_ids: list[int]) -> None:
        """Score the training set for ``query_ids`` in one pass and write each query's ranking."""
        ids = np.arange(len(self.scorer.features))
        for q, row in zip(query_ids, self.scorer.scores(self.queries, query_ids), strict=True):
            order = np.argsort(-row, kind="stable")
            write_query_result(self.results_dir, q, ids[order], row[order])

    def merge(self, partial: bool = False) -> GroundTruth:
        """Gather the per-query results into ``out_dir/ground_truth`` (``partial``: the finished ones)."""
        from ..unlearning.jobs import merge_run

        return merge_run(self.out_dir, partial=partial)


@dataclass(frozen=True)
class InfluenceSpec:
    """The folders and settings an ``InfluenceJob`` opens from (picklable): called, it builds a worker that
    ranks one batch of queries."""

    model_dir: str
    features_dir: str
    queries_dir: str
    out_dir: str
    config: InfluenceConfig
    fisher_dir: str | None = None
    device: str = "cpu"
    dtype: str = "float32"

    def __call__(self):
        job = InfluenceJob.open(self.model_dir, self.features_dir, self.queries_dir, self.out_dir,
                                self.config, self.fisher_dir, self.device, self.dtype)  # fmt: skip
        return job.rank_batch


def influence_settings_help() -> str:
    """One line per method for the CLI's help."""
    return "; ".join(
        f"{m}: {recipe(m).output} output, {len(recipe(m).timesteps)} timesteps, "
        f"{'full gradient' if recipe(m).projection_dim is None else f'projected to {recipe(m).projection_dim}'}"
        for m in METHODS
    )


__all__ = [
    "METHODS",
    "InfluenceConfig",
    "InfluenceJob",
    "InfluenceScorer",
    "recipe",
    "influence_settings_help",
]
