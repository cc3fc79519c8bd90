"""The training set as the diffusion model sees it: clean samples x0 and caption states, encoded once.

The text encoder and the VAE are frozen, so every image and caption is encoded once per (dataset, frozen parts)
and kept on disk (``prepare_training_data``'s ``cache``) as ``.npy`` files that are memory-mapped, not read
into RAM: a Stable Diffusion training set of 100k images at 512 px is 3.3 GB of float16 4x64x64 latents and
about 12 GB of float16 77x768 CLIP text states. Steps read only the rows they draw (``RowStore``).

Latent models store float16 (the VAE's own precision on GPUs); pixel models store float32, where the world
model's pixels x/127.5 - 1 are exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._artifacts import (
    MANIFEST_NAME,
    atomic_dir,
    keyed_cache_dir,
    read_manifest,
    verify_checksums_once,
    write_manifest,
)
from ..data import ImageCaptionDataset
from ..errors import FastGDAError
from ..progress import bar as progress_bar
from .model import TextToImageModel

ENCODED_KIND = "encoded_training_data"
ENCODED_FORMAT_VERSION = 2  # 1: one safetensors file read into RAM; 2: memory-mapped .npy files
_STORED = ("x0", "states", "mask", "caption_start", "caption_count", "null_states", "null_mask")


class RowStore:
    """Rows of a float array on the host, in RAM or memory-mapped from an ``.npy`` file.

    Indexing (an int, a slice, or int ids as numpy or torch) reads only those rows and returns a float32 torch
    tensor. ``take(rows)`` is a lazy view of some rows, in that order.
    """

    def __init__(self, array: np.ndarray | torch.Tensor, rows: np.ndarray | None = None):
        self.array = array.numpy() if isinstance(array, torch.Tensor) else array
        self.rows = rows

    @property
    def shape(self) -> tuple[int, ...]:
        count = self.array.shape[0] if self.rows is None else len(self.rows)
        return (count, *self.array.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        """The stored dtype (rows are returned float32 whatever it is)."""
        return self.array.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.numpy()
        if self.rows is not None:
            index = self.rows[index]
        if isinstance(index, np.ndarray) and index.ndim == 1 and len(index) > 1:
            # Sorted reads are sequential on a memory map; the rows go back to the order asked for.
            order = np.argsort(index, kind="stable")
            values = np.empty((len(index), *self.array.shape[1:]), dtype=self.array.dtype)
            values[order] = self.array[index[order]]
        else:
            values = self.array[index]
        return torch.from_numpy(np.array(values, dtype=np.float32, copy=True))

    def take(self, rows) -> RowStore:
        """A view of ``rows`` (int (n,)), read lazily."""
        rows = np.asarray(rows, dtype=np.int64)
        return RowStore(self.array, rows if self.rows is None else self.rows[rows])

    def numpy(self) -> np.ndarray:
        """Every row, as stored (a memory map stays one unless it is a view)."""
        return self.array if self.rows is None else self.array[self.rows]


@dataclass
class TrainingData:
    """Everything a step draws from, precomputed once: x0 (N, C, h, w), caption states and their owners."""

    x0: RowStore
    states: RowStore  # (num_captions, S, D)
    mask: torch.Tensor | None  # (num_captions, S)
    caption_start: torch.Tensor  # (N,) first caption row of each image
    caption_count: torch.Tensor  # (N,)
    null_states: torch.Tensor  # (1, S, D) the empty caption
    null_mask: torch.Tensor | None
    item_ids: torch.Tensor | None = (
        None  # (N,) ids in the full set of a subset's rows (None: 0..N-1)
    )
    num_full: int | None = None  # size of the full set a subset was taken from (None: N)

    def __post_init__(self):
        if not isinstance(self.x0, RowStore):
            self.x0 = RowStore(self.x0)
        if not isinstance(self.states, RowStore):
            self.states = RowStore(self.states)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The encoding of a full set as named tensors; a subset is stored as its full set."""
        if self.item_ids is not None:
            raise FastGDAError("store the full set's encoding, not a subset's")
        named = {
            "x0": torch.from_numpy(np.array(self.x0.numpy())),
            "states": torch.from_numpy(np.array(self.states.numpy())),
            "caption_start": self.caption_start,
            "caption_count": self.caption_count,
            "null_states": self.null_states,
            "mask": self.mask,
            "null_mask": self.null_mask,
        }
        return {k: v.contiguous() for k, v in named.items() if v is not None}

    def full_ids(self, rows) -> np.ndarray:
        """The ids in the full set of ``rows`` (int (n,)): what keys each item's noise, so a subset's losses and
        gradients equal the full set's."""
        rows = np.asarray(rows, dtype=np.int64)
        return rows if self.item_ids is None else self.item_ids.numpy()[rows]

    def subset(self, rows) -> TrainingData:
        """The data of ``rows`` only, in that order (leave-K-out retrains reuse one encoding of the full set).

        The subset remembers its rows' ids in the full set, for ``DiffusionTrainConfig.draw_by_item_id``."""
        rows = torch.as_tensor(list(rows), dtype=torch.long)
        counts = self.caption_count[rows]
        # Caption rows of the kept images, each image's captions contiguous and in their original order.
        owner = torch.repeat_interleave(torch.arange(len(rows)), counts)
        first = torch.cumsum(counts, 0) - counts
        caption_rows = self.caption_start[rows][owner] + (torch.arange(len(owner)) - first[owner])
        return TrainingData(
            x0=self.x0.take(rows.numpy()),
            states=self.states.take(caption_rows.numpy()),
            mask=None if self.mask is None else self.mask[caption_rows],
            caption_start=first,
            caption_count=counts,
            null_states=self.null_states,
            null_mask=self.null_mask,
            item_ids=rows if self.item_ids is None else self.item_ids[rows],
            num_full=self.x0.shape[0] if self.num_full is None else self.num_full,
        )


def storage_dtype(model: TextToImageModel) -> str:
    """float16 for VAE latents (and their CLIP states); float32 for pixel models, where x0 must stay exact."""
    return "float16" if model.vae is not None else "float32"


def prepare_training_data(
    model: TextToImageModel,
    dataset: ImageCaptionDataset,
    cache: str | os.PathLike | None = None,
    rows=None,
) -> TrainingData:
    """Encode every image and caption once (the text encoder and VAE are frozen).

    ``cache``: a folder (e.g. ``fastgda._artifacts.cache_dir()``) that keeps one encoding per (dataset content,
    ``model.encoding_key()``) on disk, memory-mapped when read, so the Fisher, the teacher and training share it
    and none holds it in RAM. Without ``cache`` the encoding is held in RAM, float32.

    ``rows``: encode only these items (int (n,)), in RAM, as a subset of the full set (``TrainingData.subset``):
    scoring a few candidates then costs their encoding, not the whole set's.
    """
    if rows is not None:
        if cache is not None:
            raise ValueError("a cached encoding is of the whole set: pass rows or cache, not both")
        rows = np.asarray(rows, dtype=np.int64)
        data = _encode(model, dataset, _in_memory, rows)
        data.item_ids, data.num_full = torch.from_numpy(rows), len(dataset)
        return data
    if cache is None:
        return _encode(model, dataset, _in_memory)
    dtype = storage_dtype(model)
    key = {"content_hash": dataset.content_hash, "model": model.encoding_key(), "dtype": dtype}
    folder = keyed_cache_dir(cache, "encoded", key)
    if (folder / MANIFEST_NAME).is_file():
        manifest = read_manifest(folder, ENCODED_KIND, ENCODED_FORMAT_VERSION)
        if manifest["config"] == key:
            verify_checksums_once(folder, manifest)  # in full once, then a stat per file
            return load_encoded(folder)
    with atomic_dir(folder, overwrite=True) as tmp:
        data = _encode(model, dataset, _on_disk(tmp, dtype))
        data.x0.array.flush()
        data.states.array.flush()
        for name in _STORED:
            value = getattr(data, name)
            if name not in ("x0", "states") and value is not None:
                np.save(tmp / f"{name}.npy", value.numpy())
        del data
        write_manifest(
            tmp,
            ENCODED_KIND,
            ENCODED_FORMAT_VERSION,
            config=key,
            shapes={
                path.stem: list(np.load(path, mmap_mode="r").shape)
                for path in sorted(tmp.glob("*.npy"))
            },
        )
    return load_encoded(folder)


def load_encoded(folder: Path) -> TrainingData:
    """An encoding written by ``prepare_training_data``: x0 and states memory-mapped, the rest in RAM."""
    arrays = {}
    for name in _STORED:
        path = folder / f"{name}.npy"
        if path.is_file():
            mapped = name in ("x0", "states")
            array = np.load(path, mmap_mode="r" if mapped else None, allow_pickle=False)
            arrays[name] = array if mapped else torch.from_numpy(array)
    return TrainingData(
        x0=RowStore(arrays["x0"]),
        states=RowStore(arrays["states"]),
        mask=arrays.get("mask"),
        caption_start=arrays["caption_start"],
        caption_count=arrays["caption_count"],
        null_states=arrays["null_states"],
        null_mask=arrays.get("null_mask"),
    )


def _in_memory(name: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.empty(shape, dtype=np.float32)


def _on_disk(folder: Path, dtype: str):
    def allocate(name: str, shape: tuple[int, ...]) -> np.ndarray:
        return np.lib.format.open_memmap(
            folder / f"{name}.npy", mode="w+", dtype=dtype, shape=shape
        )

    return allocate


def _encode(model: TextToImageModel, dataset: ImageCaptionDataset, allocate, items=None):
    """Encode chunk by chunk into ``allocate(name, shape)`` arrays, so the whole encoding is never in RAM twice.

    ``items``: the dataset rows to encode (int (n,)), in that order; every row when None."""
    size = model.image_size
    items = np.arange(len(dataset)) if items is None else items
    counts = torch.tensor([len(dataset.captions(int(i))) for i in items], dtype=torch.long)
    starts = torch.cumsum(counts, 0) - counts
    x0 = states = mask = None
    chunk = 256
    for start in progress_bar(range(0, len(items), chunk), desc="encoding data"):
        rows = [int(i) for i in items[start : start + chunk]]
        chunk_x0 = model.encode_images(dataset.load_images(rows, size=size)).cpu()
        chunk_states, chunk_mask = model.encode_prompts(
            [c for i in rows for c in dataset.captions(i)]
        )
        if x0 is None:  # the shapes are known once the first chunk is encoded
            x0 = allocate("x0", (len(items), *chunk_x0.shape[1:]))
            states = allocate("states", (int(counts.sum()), *chunk_states.shape[1:]))
            if chunk_mask is not None:
                mask = torch.empty((int(counts.sum()), chunk_mask.shape[1]), dtype=chunk_mask.dtype)
        first = int(starts[start])
        x0[start : start + len(rows)] = chunk_x0.numpy()
        states[first : first + len(chunk_states)] = chunk_states.cpu().numpy()
        if mask is not None:
            mask[first : first + len(chunk_states)] = chunk_mask.cpu()
    if x0 is None:
        raise FastGDAError(f"{dataset.source} has no images to encode")
    null_states, null_mask = model.encode_prompts([""])
    return TrainingData(
        x0=RowStore(x0),
        states=RowStore(states),
        mask=mask,
        caption_start=starts,
        caption_count=counts,
        null_states=null_states.cpu(),
        null_mask=None if null_mask is None else null_mask.cpu(),
    )
