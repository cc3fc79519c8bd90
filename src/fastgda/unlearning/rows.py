"""The (item, flip, caption, timestep) rows a training item is scored or differentiated over, in batches.

The teacher's losses (``scoring.item_losses``) and the influence methods' gradients
(``fastgda.influence.gradients.item_gradients``) both average an item's output over its captions and the
configured timesteps (and, for the teacher, the horizontal flip), each row under noise keyed by (the item's id in
the full set, caption, timestep, flip): a subset scores as the full set does, and before/after losses see the
same noise. Rows are laid out item by item so that batches stay full whatever the caption counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..progress import bar as progress_bar
from .noise import keyed_noise


def item_rows(caption_counts: np.ndarray, num_timesteps: int, num_flips: int = 1) -> np.ndarray:
    """Every item's rows, item by item, then flip, caption, timestep (the last fastest).

    Args:
        caption_counts: int (n,) captions of each item.

    Returns:
        int64 (R, 4): position of the item among the n, flip, caption, timestep index; R = Σ F·C_i·T.
    """
    counts = np.asarray(caption_counts, dtype=np.int64)
    sizes = counts * num_flips * num_timesteps
    position = np.repeat(np.arange(len(counts), dtype=np.int64), sizes)
    within = np.arange(int(sizes.sum()), dtype=np.int64) - np.repeat(
        np.cumsum(sizes) - sizes, sizes
    )
    per_flip = counts[position] * num_timesteps
    flip = within // per_flip
    caption = (within % per_flip) // num_timesteps
    timestep = within % num_timesteps
    return np.stack([position, flip, caption, timestep], axis=1)


@dataclass
class RowBatch:
    """One batch of rows, its tensors on the model's device: x0 (B, C, h, w) mirrored where ``flips``, states
    (B, S, D) and mask (B, S) or None of each row's caption, noise (B, C, h, w), timesteps t (B,)."""

    rows: np.ndarray  # int64 (B, 4), as ``item_rows`` lays them out
    start: int  # the first row's index among all rows
    x0: torch.Tensor
    states: torch.Tensor
    mask: torch.Tensor | None
    noise: torch.Tensor
    t: torch.Tensor


def row_batches(
    data,
    item_ids: np.ndarray,
    rows: np.ndarray,
    timesteps: list[int],
    noise_seed: int,
    batch_size: int,
    device,
    desc: str = "",
) -> Iterator[RowBatch]:
    """Batches of ``rows`` (from ``item_rows``) of ``item_ids``' items of ``data`` (a ``TrainingData``)."""
    items = np.asarray(item_ids, dtype=np.int64)
    ids = data.full_ids(items)  # the noise is keyed by the full set's id
    shape = tuple(data.x0.shape[1:])
    for start in progress_bar(range(0, len(rows), batch_size), desc=desc, leave=False):
        batch = rows[start : start + batch_size]
        position, flip, caption, step = batch.T
        item = torch.from_numpy(items[position])
        captions = data.caption_start[item] + torch.from_numpy(caption)
        t_values = [timesteps[i] for i in step.tolist()]
        keys = [(int(ids[p]), int(c), t, int(f))
                for p, c, t, f in zip(position, caption, t_values, flip, strict=True)]  # fmt: skip
        x0 = data.x0[item]
        flips = torch.from_numpy(flip.astype(bool))
        if flips.any():
            x0 = torch.where(flips.view(-1, 1, 1, 1), x0.flip(-1), x0)  # mirror along the width
        yield RowBatch(
            rows=batch,
            start=start,
            x0=x0.to(device),
            states=data.states[captions].to(device),
            mask=None if data.mask is None else data.mask[captions].to(device),
            noise=keyed_noise(shape, noise_seed, keys).to(device),
            t=torch.tensor(t_values).to(device),
        )
