"""Scoring training items: the rise of each one's diffusion loss after unlearning a query.

Method.md §3.6: tau(query, z) = L(z, theta_-) - L(z, theta_0), each loss averaged over equally spaced timesteps
and then over the item's captions, with noise keyed by (item, caption, t, flip) so the before and after losses
see identical noise. The before losses do not depend on the query: ``BeforeLosses`` computes them for all N
items (or some) in memory; the teacher keeps them by id in a ``fastgda.unlearning.before.BeforeLossStore``,
computed only for the items it scores and reused by every query.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .._artifacts import atomic_dir, read_manifest, verify_checksums, write_manifest
from ..config import AT_LEAST_ONE, NON_NEGATIVE, Bounds, check_settings, setting
from ..errors import ConfigError, IncompatibleArtifactError
from .rows import item_rows, row_batches

BEFORE_KIND = "before_losses"
BEFORE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ScoringConfig:
    """Which losses score an item; before and after must use the same settings."""

    # Five spread over the range: 0.989 rank agreement with ten at half the cost on the standard world
    # (benchmarks/teacher_settings.py); pass ten (0, 100, ..., 900) or the paper's twenty for large models.
    timesteps: tuple[int, ...] = setting(
        (0, 200, 400, 600, 800),
        "scoring timesteps (of the 1000-step DDPM schedule)",
        bounds=Bounds(0, 999),
    )
    noise_seed: int = setting(0, "seeds the keyed scoring noise", bounds=NON_NEGATIVE)
    # Scores do not depend on it (noise is keyed per item), so runs neither record nor compare it.
    batch_size: int | None = setting(
        None,
        "items scored per forward pass (default: 256 on a CPU; on a GPU the most its free memory holds)",
        bounds=AT_LEAST_ONE,
    )
    flips: bool = setting(
        False,
        "also score the mirrored sample, tau = max over the two; only for data trained with flips",
    )

    def __post_init__(self):
        check_settings(self)
        if not self.timesteps:
            raise ConfigError(
                "ScoringConfig.timesteps is empty; give at least one scoring timestep"
            )

    @property
    def num_flips(self) -> int:
        return 2 if self.flips else 1


def item_losses(model, data, item_ids: np.ndarray, config: ScoringConfig) -> np.ndarray:
    """Per-(item, caption, timestep) diffusion losses under keyed noise.

    Args:
        data: ``TrainingData`` with x0 (N, C, h, w) and caption states.
        item_ids: int array (n,) of rows to score.

    Returns:
        float32 (n, F, C_max, T), F = 2 with flips else 1: NaN where an item has fewer than C_max captions.
    """
    item_ids = np.asarray(item_ids, dtype=np.int64)
    c_max = int(data.caption_count.max())
    timesteps = list(config.timesteps)
    rows = item_rows(data.caption_count[item_ids].numpy(), len(timesteps), config.num_flips)
    out = np.full(
        (len(item_ids), config.num_flips, c_max, len(timesteps)), np.nan, dtype=np.float32
    )
    batch_size = config.batch_size or scoring_batch_size(model, data)
    batches = row_batches(data, item_ids, rows, timesteps, config.noise_seed, batch_size, model.device,
                          f"scoring {len(item_ids)} items")  # fmt: skip
    with torch.no_grad():
        for batch in batches:
            losses = model.loss(batch.x0, batch.states, batch.mask, batch.noise, batch.t)
            position, flip, caption, step = batch.rows.T
            out[position, flip, caption, step] = losses.cpu().numpy()
    return out


CPU_SCORING_BATCH = 256  # on 2 cores throughput is flat from about 64 items a pass


def scoring_batch_size(model, data) -> int:
    """Items per scoring pass when none is set: ``CPU_SCORING_BATCH`` on a CPU; on a GPU, the most its free
    memory holds, from the peak memory of probe passes at 1 and 2 items (measured once per model)."""
    from ..devices import batch_size_for_memory, free_memory_bytes, measure_bytes_per_item

    cached = getattr(model, "_scoring_batch_size", None)
    if cached is not None:
        return cached
    device = model.device
    states, mask = data.states[[0]], None if data.mask is None else data.mask[[0]]

    @torch.no_grad()
    def probe(n: int) -> None:
        x0 = data.x0[[0] * n].to(device)
        model.loss(x0, states.expand(n, -1, -1).to(device),
                   None if mask is None else mask.expand(n, -1).to(device),
                   torch.zeros_like(x0), torch.zeros(n, dtype=torch.long, device=device))  # fmt: skip

    per_item = measure_bytes_per_item(probe, device)
    size = batch_size_for_memory(free_memory_bytes(device), per_item or 1.0, CPU_SCORING_BATCH)
    model._scoring_batch_size = size
    return size


def mean_item_loss(losses: np.ndarray) -> np.ndarray:
    """Average over timesteps, then over each item's own captions: (n, F, C_max, T) -> float64 (n, F)."""
    return np.nanmean(losses.astype(np.float64).mean(axis=3), axis=2)


class BeforeLosses:
    """L(z, theta_0) for every training item, computed once per (model, data, scoring config) and cached.

    Attributes:
        losses: float32 (N, F, C_max, T) per-(item, flip, caption, t) losses.
    """

    def __init__(self, losses: np.ndarray, config: ScoringConfig, key: dict):
        self.losses = losses
        self.config = config
        self.key = key

    @classmethod
    def compute(
        cls,
        model,
        data,
        config: ScoringConfig,
        key: dict,
        item_ids: np.ndarray | None = None,
    ) -> BeforeLosses:
        """Losses of every item, or only of ``item_ids`` (other rows stay NaN; for checks on a few queries)."""
        if item_ids is None:
            return cls(
                item_losses(model, data, np.arange(data.x0.shape[0]), config),
                config,
                key,
            )
        part = item_losses(model, data, np.asarray(item_ids), config)
        losses = np.full((data.x0.shape[0], *part.shape[1:]), np.nan, dtype=np.float32)
        losses[np.asarray(item_ids)] = part
        return cls(losses, config, key)

    def rows(self, ids) -> np.ndarray:
        """float32 (n, F, C_max, T) losses of ``ids``.

        Raises:
            ValueError: some of them were not computed (``compute`` with other ``item_ids``).
        """
        rows = self.losses[np.asarray(ids)]
        if np.isnan(rows).reshape(len(rows), -1).all(axis=1).any():
            raise ValueError(
                "some candidates have no before losses; compute them for every candidate first"
            )
        return rows

    def save(self, folder: str | os.PathLike, overwrite: bool = False) -> None:
        with atomic_dir(folder, overwrite=overwrite) as tmp:
            np.save(tmp / "losses.npy", self.losses)
            write_manifest(
                tmp,
                BEFORE_KIND,
                BEFORE_FORMAT_VERSION,
                config=asdict(self.config),
                shapes={"losses": list(self.losses.shape)},
                extra={"key": self.key},
            )

    @classmethod
    def load(cls, folder: str | os.PathLike, config: ScoringConfig, key: dict) -> BeforeLosses:
        """Load a cache, refusing one made for another model, dataset, noise seed or flip setting.

        A cache computed at more timesteps serves any subset of them: noise is keyed by (item, caption, t, flip),
        so the columns of the kept timesteps are exactly what a recomputation would give.
        """
        manifest = read_manifest(folder, BEFORE_KIND, BEFORE_FORMAT_VERSION)
        columns = served_columns(folder, manifest, config, key)
        # A few bytes per (item, caption, timestep): checked in full, so a cut-short copy is refused here.
        verify_checksums(folder, manifest, names=["losses.npy"])
        losses = select_columns(np.load(Path(folder) / "losses.npy", allow_pickle=False), columns)
        return cls(losses, config, key)


def served_columns(
    folder, manifest: dict, config: ScoringConfig, key: dict, num_items: int | None = None
) -> list[int]:
    """Which of a saved before-loss cache's timestep columns ``config`` scores at, after refusing a cache made for
    another model, data (``key``), noise seed, flip setting or training-set size.

    A cache computed at more timesteps serves any subset of them: noise is keyed by (item, caption, t, flip), so
    the kept columns are exactly what a recomputation would give.

    Raises:
        IncompatibleArtifactError: the cache cannot serve ``config`` and ``key``.
    """
    saved = ScoringConfig(
        **{**manifest["config"], "timesteps": tuple(manifest["config"]["timesteps"])}
    )
    shapes = manifest.get("shapes", {})
    size = shapes.get("num_items", shapes.get("losses", [None]))[0]
    if (
        set(config.timesteps) - set(saved.timesteps)
        or (saved.noise_seed, saved.flips) != (config.noise_seed, config.flips)
        or manifest["key"] != key
        or (num_items is not None and size != num_items)
    ):
        raise IncompatibleArtifactError(
            f"before-loss cache {folder} was computed for {manifest['key']} with {asdict(saved)} over {size} "
            f"items; this run needs {key} with {asdict(config)} over {num_items or size} items; delete the cache "
            "(or pass another --cache-dir) to recompute it"
        )
    return [saved.timesteps.index(t) for t in config.timesteps]


def select_columns(losses: np.ndarray, columns: list[int]) -> np.ndarray:
    """``losses`` (..., T_saved) at ``columns`` (as it is when they are all of them, in order)."""
    if columns == list(range(losses.shape[-1])):
        return losses
    return np.ascontiguousarray(losses[..., columns])


def influence_scores(model, data, candidate_ids: np.ndarray, before) -> np.ndarray:
    """tau = L(z, theta_-) - L(z, theta_0) for candidates, under the weights ``model`` holds now; ``before`` is
    a ``BeforeLosses`` or a ``BeforeLossStore`` holding the candidates.

    With flips, tau is the larger of the original's and the mirror's rise (method.md §3.6).

    Returns:
        float64 (n,) scores; higher = more influential.
    """
    rows = before.rows(candidate_ids)
    after = mean_item_loss(item_losses(model, data, candidate_ids, before.config))
    return (after - mean_item_loss(rows)).max(axis=1)


def rank(candidate_ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort candidates most influential first (stable for ties). Returns ids int64 and scores float32."""
    order = np.argsort(-scores, kind="stable")
    return np.asarray(candidate_ids, dtype=np.int64)[order], scores[order].astype(np.float32)
