"""The distilled ranker: one shared MLP over frozen features whose cosine reproduces the teacher's ranking.

Method.md §5: g maps query and training-item features into one space; the logit of a pair is
``scale * cos(g(q), g(z)) + bias`` with a learnable scale and bias, trained against the teacher's normalised
rank. Higher cosine = more influential (the sign convention of the whole public API). Inputs are standardised
with the training items' per-feature mean and standard deviation, stored with the weights.

An ensemble (``RankerShape.members`` > 1) holds several independently trained MLPs over the same standardised
input. Its embedding concatenates the members' unit outputs divided by sqrt(members): still a unit vector, whose
cosine with another is the mean of the members' cosines, so the index and every caller treat it like one ranker.
"""

from __future__ import annotations

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
from ..errors import ConfigError, IncompatibleArtifactError

RANKER_KIND = "ranker"
RANKER_FORMAT_VERSION = 1


@dataclass(frozen=True)
class RankerShape:
    """The network's shape (the paper's: 3 hidden layers of 768, 768-d output)."""

    in_dim: int
    hidden: tuple[int, ...] = (768, 768, 768)
    out_dim: int = 768
    dropout: float = 0.0
    members: int = 1  # independently trained MLPs whose cosines are averaged (an ensemble)


class Ranker(nn.Module):
    """Shared MLP g with input standardisation, L2-normalised output, and a learnable logit scale and bias."""

    def __init__(self, shape: RankerShape):
        super().__init__()
        self.shape = shape
        self.register_buffer("feature_mean", torch.zeros(shape.in_dim))
        self.register_buffer("feature_std", torch.ones(shape.in_dim))
        if shape.members < 1:
            raise ConfigError(f"a ranker needs at least one member, got {shape.members}")
        # Member 0 keeps the name ``mlp``, so a one-member ranker's weights are stored as before ensembles.
        self.mlp = _mlp(shape)
        for member in range(1, shape.members):
            self.add_module(f"mlp_{member}", _mlp(shape))
        # One scale and bias per member: scalars for a single ranker (as stored before ensembles).
        per_member = () if shape.members == 1 else (shape.members,)
        self.logit_scale = nn.Parameter(torch.full(per_member, 5.0))
        self.logit_bias = nn.Parameter(torch.zeros(per_member))

    @property
    def member_mlps(self) -> list[nn.Module]:
        return [self.mlp] + [getattr(self, f"mlp_{m}") for m in range(1, self.shape.members)]

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
        combined = cls(RankerShape(**{**asdict(first), "members": len(rankers)}))
        combined.feature_mean.copy_(rankers[0].feature_mean)
        combined.feature_std.copy_(rankers[0].feature_std)
        with torch.no_grad():
            for target, member in zip(combined.member_mlps, rankers, strict=True):
                target.load_state_dict(member.mlp.state_dict())
            combined.logit_scale.copy_(torch.stack([r.logit_scale for r in rankers]))
            combined.logit_bias.copy_(torch.stack([r.logit_bias for r in rankers]))
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
        x = torch.as_tensor(features, dtype=torch.float32)
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

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) raw features -> (B, out_dim) unit vectors."""
        if features.shape[-1] != self.shape.in_dim:
            raise IncompatibleArtifactError(
                f"the ranker takes {self.shape.in_dim}-d features, got {features.shape[-1]}-d; embed with the "
                "feature spec the ranker was trained on"
            )
        x = (features - self.feature_mean) / self.feature_std
        if self.shape.members == 1:
            return nn.functional.normalize(self.mlp(x), dim=-1)
        parts = [nn.functional.normalize(mlp(x), dim=-1) for mlp in self.member_mlps]
        return torch.cat(parts, dim=-1) / math.sqrt(self.shape.members)

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
        out = [
            self.embed(torch.as_tensor(features[i : i + batch_size], dtype=torch.float32)).numpy()
            for i in range(0, len(features), batch_size)
        ]
        self.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, self.embedding_dim), np.float32)

    def save(
        self, out_dir: str | os.PathLike, spec: str, extra: dict | None = None, overwrite=False
    ) -> None:
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
            save_file(state, tmp / "ranker.safetensors")
            write_manifest(
                tmp,
                RANKER_KIND,
                RANKER_FORMAT_VERSION,
                config={"shape": asdict(self.shape), "spec": spec},
                shapes={k: list(v.shape) for k, v in state.items()},
                extra=extra,
            )

    @classmethod
    def load(cls, ranker_dir: str | os.PathLike) -> tuple[Ranker, dict]:
        """Load weights and return (ranker in eval mode, manifest)."""
        manifest = read_manifest(ranker_dir, RANKER_KIND, RANKER_FORMAT_VERSION)
        verify_checksums(ranker_dir, manifest)
        shape = manifest["config"]["shape"]
        ranker = cls(RankerShape(**{**shape, "hidden": tuple(shape["hidden"])}))
        ranker.load_state_dict(load_file(Path(ranker_dir) / "ranker.safetensors"))
        return ranker.eval(), manifest


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
    progress: bool = True,
):
    """(ranker, history) left in ``ranker_dir`` by a run with the same ``provenance``, else None.

    A ranker with other provenance is stale: it is removed, with the ``dependents`` built from it.
    """
    ranker_dir = Path(ranker_dir)
    if not (ranker_dir / "manifest.json").exists():
        return None
    # ``extra`` fields (history, provenance) are stored at the manifest's top level; the weights are read
    # (and their checksums verified) only for a ranker that will be used.
    if (
        read_manifest(ranker_dir, RANKER_KIND, RANKER_FORMAT_VERSION).get("provenance")
        == provenance
    ):
        ranker, manifest = Ranker.load(ranker_dir)
        return ranker, manifest["history"]
    if progress:
        print(
            f"  {ranker_dir} was distilled from another reference or with other settings: retraining"
        )
    for folder in (ranker_dir, *dependents):
        shutil.rmtree(folder, ignore_errors=True)
    return None
