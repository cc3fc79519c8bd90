"""The distilled ranker: one shared MLP over frozen features whose cosine reproduces the teacher's ranking.

Method.md §5: g maps query and training-item features into one space; the logit of a pair is
``scale * cos(g(q), g(z)) + bias`` with a learnable scale and bias, trained against the teacher's normalised
rank. Higher cosine = more influential (the sign convention of the whole public API). Inputs are standardised
with the training items' per-feature mean and standard deviation, stored with the weights.

A residual ranker (``RankerShape.residual_part``; ``RankerTrainConfig.residual``, default ``"auto"``) adds one
untuned input part to the MLP's output, with the MLP's last layer zero at the start: untrained, it ranks exactly
as that part's plain cosine, and training (kept only where validation mAP improves) learns a residual on it. With
few teacher queries a plain MLP can learn less than its text part already knows; this one starts from it.

An ensemble (``RankerShape.members`` > 1) holds several independently trained MLPs over the same standardised
input. Its embedding concatenates the members' unit outputs divided by sqrt(members): still a unit vector, whose
cosine with another is the mean of the members' cosines, so the index and every caller treat it like one ranker.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .._artifacts import atomic_dir, read_manifest, verify_checksums, write_manifest
from ..errors import ConfigError, IncompatibleArtifactError, NotFittedError

logger = logging.getLogger(__name__)
RANKER_KIND = "ranker"
# Version 2: the shape may hold a residual part; version 1 rankers read unchanged.
RANKER_FORMAT_VERSION = 2
RANKER_READABLE_VERSIONS = (1, 2)


@dataclass(frozen=True)
class RankerShape:
    """The network's shape (the paper's: 3 hidden layers of 768, 768-d output)."""

    in_dim: int
    hidden: tuple[int, ...] = (768, 768, 768)
    out_dim: int = 768
    dropout: float = 0.0
    members: int = 1  # independently trained MLPs whose cosines are averaged (an ensemble)
    # (offset, width) of the input part whose plain cosine the ranker starts from, or None (the paper's plain
    # MLP). Each member then outputs gain * unit(part) + mlp(x), the part zero-padded to out_dim, with the
    # MLP's last layer zero at initialisation: an untrained ranker ranks exactly as the part's untuned cosine,
    # and training learns a residual on it (as the AbC mappers start at identity).
    residual_part: tuple[int, int] | None = None

    def __post_init__(self):
        if self.residual_part is not None:
            offset, width = self.residual_part
            if offset < 0 or width < 1 or offset + width > self.in_dim:
                raise ConfigError(
                    f"residual part (offset {offset}, width {width}) lies outside the {self.in_dim}-d input"
                )
            if width > self.out_dim:
                raise ConfigError(
                    f"a ranker residual on a {width}-d part needs out_dim >= {width}, got {self.out_dim}"
                )


class Ranker(nn.Module):
    """Shared MLP g with input standardisation, L2-normalised output, and a learnable logit scale and bias.

    Lifecycle: ``Ranker.distil(queries, items, ground_truth, config)`` learns from the teacher (or ``Ranker.load``;
    the verb is not ``train``, which ``nn.Module`` uses for its training-mode switch);
    ``embed`` / ``score`` use it; ``save(dir)`` stores it with the feature spec it reads and its history.

    Attributes:
        spec: the feature spec of the inputs it was trained on (e.g. ``"effnet+minilm"``), or None if unknown.
        history: per-epoch training records (``summarise_history`` reads them).
        validation: validation mAP of the ranker beside each untuned part's (``validation_maps``), when the
            ranker was distilled with validation queries; ``best_scorer`` reads it.
        manifest: the stored manifest, for a loaded ranker.
    """

    def __init__(self, shape: RankerShape, spec: str | None = None):
        super().__init__()
        self.shape = shape
        self.spec = spec
        self.history: list[dict] = []
        self.validation: dict[
            str, float
        ] = {}  # validation mAP of the ranker and of each untuned part
        self.manifest: dict = {}
        self.register_buffer("feature_mean", torch.zeros(shape.in_dim))
        self.register_buffer("feature_std", torch.ones(shape.in_dim))
        if shape.members < 1:
            raise ConfigError(f"a ranker needs at least one member, got {shape.members}")
        # Member 0 is named ``mlp``: a one-member ranker stores the weight names of every ranker folder.
        self.mlp = _mlp(shape)
        for member in range(1, shape.members):
            self.add_module(f"mlp_{member}", _mlp(shape))
        # One scale and bias per member: scalars for a one-member ranker.
        per_member = () if shape.members == 1 else (shape.members,)
        self.logit_scale = nn.Parameter(torch.full(per_member, 5.0))
        self.logit_bias = nn.Parameter(torch.zeros(per_member))
        if shape.residual_part is not None:
            # How much of the untuned part each member keeps: training may turn it down.
            self.residual_gain = nn.Parameter(torch.ones(per_member))
            with torch.no_grad():
                for mlp in self.member_mlps:
                    mlp[-1].weight.zero_()
                    mlp[-1].bias.zero_()

    @property
    def member_mlps(self) -> list[nn.Module]:
        return [self.mlp] + [getattr(self, f"mlp_{m}") for m in range(1, self.shape.members)]

    @property
    def in_dim(self) -> int:
        """Width of the feature rows it reads (the spec's concatenated parts)."""
        return self.shape.in_dim

    @property
    def embedding_dim(self) -> int:
        """Width of ``embed``'s output: out_dim per member."""
        return self.shape.members * self.shape.out_dim

    @classmethod
    def ensemble(cls, rankers: Sequence[Ranker]) -> Ranker:
        """One ranker whose cosine is the mean of the given one-member rankers' cosines."""
        first = rankers[0].shape
        if any(r.shape != first or r.shape.members != 1 for r in rankers):
            raise IncompatibleArtifactError("an ensemble needs one-member rankers of one shape")
        if any(
            not torch.equal(r.feature_mean, rankers[0].feature_mean)
            or not torch.equal(r.feature_std, rankers[0].feature_std)
            for r in rankers
        ):
            raise IncompatibleArtifactError(
                "the members of an ensemble must share one input standardisation"
            )
        combined = cls(RankerShape(**{**asdict(first), "members": len(rankers)}), rankers[0].spec)
        combined.feature_mean.copy_(rankers[0].feature_mean)
        combined.feature_std.copy_(rankers[0].feature_std)
        with torch.no_grad():
            for target, member in zip(combined.member_mlps, rankers, strict=True):
                target.load_state_dict(member.mlp.state_dict())
            combined.logit_scale.copy_(torch.stack([r.logit_scale for r in rankers]))
            combined.logit_bias.copy_(torch.stack([r.logit_bias for r in rankers]))
            if first.residual_part is not None:
                combined.residual_gain.copy_(torch.stack([r.residual_gain for r in rankers]))
        return combined.eval()

    def fit_standardisation(
        self,
        features: np.ndarray,
        part_dims: Sequence[int] | None = None,
        part_weights: Sequence[float] | None = None,
    ) -> None:
        """Set the input mean/std from training-item features (n, in_dim); constant columns get std 1.

        With ``part_dims`` (the widths of a concatenation's parts, summing to in_dim), each part is further
        scaled so that every part carries the same total variance: standardising column by column alone lets
        a 1280-d image part outweigh a 384-d text part 3.3 to 1 at the first layer. ``part_weights`` (one positive
        number per part) makes the parts' shares of the input variance proportional to them instead.
        """
        x = rows_tensor(features)
        std = x.std(dim=0)
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
        if part_dims:
            if sum(part_dims) != self.shape.in_dim:
                raise ConfigError(
                    f"part widths {list(part_dims)} do not sum to {self.shape.in_dim}"
                )
            widths = torch.tensor(list(part_dims), dtype=torch.float32)
            weights = torch.tensor(
                list(part_weights) if part_weights else [1.0] * len(part_dims), dtype=torch.float32
            )
            if len(weights) != len(widths) or not bool((weights > 0).all()):
                raise ConfigError(
                    f"need one positive weight per part ({len(widths)}), got {weights.tolist()}"
                )
            share = weights / weights.sum()  # of the total input variance, per part
            scale = torch.repeat_interleave(
                (widths / (self.shape.in_dim * share)).sqrt(), widths.long()
            )
            std = std * scale
        self.feature_mean.copy_(x.mean(dim=0))
        self.feature_std.copy_(std)

    @classmethod
    def distil(
        cls,
        queries,
        items,
        ground_truth,
        config=None,
        *,
        validation: tuple | None = None,
        device: str = "cpu",
    ) -> Ranker:
        """Learn a ranker from the teacher's rankings (method.md §5), training on ``device`` (the returned ranker
        lives on the CPU).

        Args:
            queries: ``Features`` of the training queries; the rows of ``ground_truth.query_ids`` are used, so the
                ground truth may cover only some of them.
            items: ``Features`` of every training item.
            ground_truth: the teacher's ``GroundTruth`` of those queries (candidate pools or full rankings).
            config: a ``RankerTrainConfig`` (default: the paper's settings).
            validation: (query ``Features``, ``GroundTruth``) for validation mAP and early stopping.

        Returns:
            the ranker (the best weights on validation), with ``spec`` and ``history`` set.
        """
        from .training import RankerTrainConfig, train_ranker

        for features in (queries, *(validation[:1] if validation else ())):
            if features.spec != items.spec:
                raise IncompatibleArtifactError(
                    f"query features {features.spec!r} vs item features {items.spec!r}: embed the queries "
                    "and the items with one spec"
                )
        val = {}
        if validation:
            val_queries, val_truth = validation
            val = {
                "val_query_features": val_queries.select(val_truth.query_ids).values,
                "val_ranked_ids": val_truth.ids,
            }
        ranker_config = config or RankerTrainConfig()
        ranker = train_ranker(
            queries.select(ground_truth.query_ids).values,
            items.values,
            ground_truth.ids,
            ranker_config,
            train_scores=ground_truth.scores,
            part_dims=items.part_dims,
            part_names=[p["name"] for p in sorted(items.parts, key=lambda p: p["offset"])],
            device=device,
            **val,
        )
        ranker.spec = items.spec
        if validation:
            from .untuned import validation_maps

            ranker.validation = validation_maps(
                ranker, *validation[:1], items, validation[1], ranker_config.val_fraction_l
            )
        return ranker

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) raw features -> (B, embedding_dim) unit vectors (embedding_dim = members x out_dim)."""
        if features.shape[-1] != self.shape.in_dim:
            raise IncompatibleArtifactError(
                f"the ranker takes {self.shape.in_dim}-d features, got {features.shape[-1]}-d; embed with the "
                "feature spec the ranker was trained on"
            )
        x = (features - self.feature_mean) / self.feature_std
        start = self._residual_start(features)
        outputs = []
        for member, mlp in enumerate(self.member_mlps):
            out = mlp(x)
            if start is not None:
                out = out + self.residual_gain.reshape(-1)[member] * start
            outputs.append(nn.functional.normalize(out, dim=-1))
        if self.shape.members == 1:
            return outputs[0]
        return torch.cat(outputs, dim=-1) / math.sqrt(self.shape.members)

    def _residual_start(self, features: torch.Tensor) -> torch.Tensor | None:
        """(B, out_dim) the residual part's unit rows, zero-padded, or None.

        Unit rows, not scaled up: the MLP's output (zero at the start) soon matches them, so a few hundred steps
        can move the ranker away from the start. Scaled to unit variance per column (sqrt(width) longer), the
        part swamped the MLP in exploratory runs with 50 or 100 teacher queries.
        """
        if self.shape.residual_part is None:
            return None
        offset, width = self.shape.residual_part
        part = nn.functional.normalize(features[..., offset : offset + width], dim=-1)
        return nn.functional.pad(part, (0, self.shape.out_dim - width))

    def logits(self, query_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """Pairwise logits of aligned embeddings (P, embedding_dim) x (P, embedding_dim) -> (P,).

        An ensemble's logit is the mean of its members' ``scale * cos + bias``.
        """
        members = self.shape.members
        products = (query_emb * item_emb).reshape(*query_emb.shape[:-1], members, -1)
        return self.logits_from_member_cosines(products.sum(-1) * members)

    def logits_from_member_cosines(self, cosines: torch.Tensor) -> torch.Tensor:
        """(..., members) per-member cosines -> (...) logits."""
        scale, bias = self.logit_scale.reshape(-1), self.logit_bias.reshape(-1)
        return (scale * cosines + bias).mean(-1)

    @torch.no_grad()
    def embed_numpy(self, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Embed many feature rows in eval mode: float32 (n, out_dim)."""
        was_training = self.training
        self.eval()
        device = self.feature_mean.device  # features come from the host; embeddings go back to it
        out = [
            self.embed(rows_tensor(features[i : i + batch_size]).to(device)).cpu().numpy()
            for i in range(0, len(features), batch_size)
        ]
        self.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, self.embedding_dim), np.float32)

    def score(self, query_features: np.ndarray, item_features: np.ndarray) -> np.ndarray:
        """Cosines float32 (Q, N) between queries (Q, in_dim) and items (N, in_dim): higher = more influential."""
        return self.embed_numpy(query_features) @ self.embed_numpy(item_features).T

    def save(
        self, folder: str | os.PathLike, extra: dict | None = None, overwrite: bool = False
    ) -> None:
        """Write ``ranker.safetensors`` and a manifest (shape, spec, history, ``extra`` fields) atomically."""
        if self.spec is None:
            raise NotFittedError(
                "this ranker does not know the feature spec it reads; set ranker.spec (e.g. 'effnet+minilm') "
                "or make it with Ranker.distil"
            )
        extra = {"history": self.history, "validation": self.validation, **(extra or {})}
        with atomic_dir(folder, overwrite=overwrite) as tmp:
            state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
            save_file(state, tmp / "ranker.safetensors")
            write_manifest(
                tmp,
                RANKER_KIND,
                RANKER_FORMAT_VERSION,
                config={"shape": asdict(self.shape), "spec": self.spec},
                shapes={k: list(v.shape) for k, v in state.items()},
                extra=extra,
            )

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Ranker:
        """Load a saved ranker in eval mode (checksums verified), with its spec, history and manifest."""
        manifest = read_manifest(folder, RANKER_KIND, RANKER_READABLE_VERSIONS)
        verify_checksums(folder, manifest)
        shape = manifest["config"]["shape"]
        residual = shape.get("residual_part")
        shape = {
            **shape,
            "hidden": tuple(shape["hidden"]),
            "residual_part": tuple(residual) if residual else None,
        }
        ranker = cls(RankerShape(**shape), manifest["config"]["spec"])
        ranker.load_state_dict(load_file(Path(folder) / "ranker.safetensors"))
        ranker.history, ranker.manifest = list(manifest.get("history", [])), manifest
        ranker.validation = dict(manifest.get("validation", {}))
        return ranker.eval()


def _mlp(shape: RankerShape) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = shape.in_dim
    for hidden in shape.hidden:
        layers += [nn.Linear(width, hidden), nn.GELU()]
        if shape.dropout:
            layers.append(nn.Dropout(shape.dropout))
        width = hidden
    layers.append(nn.Linear(width, shape.out_dim))
    return nn.Sequential(*layers)


def reusable_ranker(
    ranker_dir: os.PathLike,
    provenance: dict,
    dependents: Sequence[os.PathLike] = (),
) -> Ranker | None:
    """The ranker left in ``ranker_dir`` by a run with the same ``provenance``, else None.

    A ranker with other provenance is stale: it is removed, with the ``dependents`` built from it.
    """
    ranker_dir = Path(ranker_dir)
    if not (ranker_dir / "manifest.json").exists():
        return None
    # ``extra`` fields (history, provenance) are stored at the manifest's top level; the weights are read
    # (and their checksums verified) only for a ranker that will be used.
    if (
        read_manifest(ranker_dir, RANKER_KIND, RANKER_READABLE_VERSIONS).get("provenance")
        == provenance
    ):
        return Ranker.load(ranker_dir)
    logger.info("%s was distilled from other data or settings: retraining", ranker_dir)
    for folder in (ranker_dir, *dependents):
        shutil.rmtree(folder, ignore_errors=True)
    return None


def rows_tensor(rows) -> torch.Tensor:
    """float32 rows as a tensor; a read-only array (a memory-mapped features file) is copied, as torch asks."""
    if isinstance(rows, torch.Tensor):
        return rows.float()
    rows = np.asarray(rows, dtype=np.float32)
    return torch.from_numpy(rows if rows.flags.writeable else rows.copy())
