"""The teacher's before losses L(z, θ₀), kept by training id and computed only for the ids it scores.

A pooled teacher scores each query's top-M candidates, so it needs the before losses of the union of its pools,
not of all N (at N = 118,287 and the build's defaults, the full pass was 3 M forwards before the first query).
``BeforeLossStore`` computes the ids it is asked for that it does not hold yet, in chunks, and in a folder keeps
each chunk as a small artifact written when it finishes: an interrupted run resumes, queries share what earlier
ones computed, and workers over one folder share each other's chunks (two that compute the same chunk at once
write the same name; the second keeps the first's).

Folder layout (format 2): ``manifest.json`` (kind ``before_losses``: scoring config, key, num_items) and
``chunks/<first id>-<count>-<digest>/`` (``ids.npy`` int64 (n,), ``losses.npy`` float32 (n, F, C_max, T), its own
manifest with checksums). A format-1 folder (one dense ``losses.npy`` of all N, NaN rows not computed) is read
as one chunk of the rows it holds.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .._artifacts import (
    MANIFEST_NAME,
    atomic_dir,
    read_manifest,
    verify_checksums,
    write_manifest,
)
from ..errors import IncompatibleArtifactError
from .scoring import (
    BEFORE_KIND,
    BeforeLosses,
    ScoringConfig,
    item_losses,
    select_columns,
    served_columns,
)

STORE_FORMAT_VERSION = 2
CHUNK_KIND = "before_losses_chunk"
CHUNK_ITEMS = 4096  # ids computed and written together: what an interruption can lose


class BeforeLossStore:
    """Before losses float32 (F, C_max, T) per training id, for the ids asked for (``ensure``), read by ``rows``.

    Args:
        config: the scoring settings (timesteps, noise seed, flips) the losses are computed with.
        key: what the losses belong to (model and data digests, compute dtype); a folder made for another key
            is refused.
        num_items: N, the training set's size (ids are 0..N-1).
        folder: where chunks are kept (None: in memory only).
    """

    def __init__(self, config: ScoringConfig, key: dict, num_items: int, folder=None):
        self.config, self.key, self.num_items = config, key, int(num_items)
        self.folder = Path(folder) if folder is not None else None
        self._chunks: list[tuple[np.ndarray, np.ndarray]] = []  # (ids (n,), losses (n, F, C, T))
        self._read: set[str] = set()  # chunk folders already read
        self._sorted_ids = np.zeros(0, dtype=np.int64)
        self._where = np.zeros((0, 2), dtype=np.int64)  # (chunk, row) of each sorted id
        # Chunks the sorted index covers: it is rebuilt once per lookup after adds.
        self._indexed = 0
        self._columns = list(
            range(len(config.timesteps))
        )  # the stored timesteps this config scores at

    # -- opening -----------------------------------------------------------------------------------------
    @classmethod
    def open(
        cls, folder: str | os.PathLike, config: ScoringConfig, key: dict, num_items: int
    ) -> BeforeLossStore:
        """The store at ``folder``, created if absent.

        Raises:
            IncompatibleArtifactError: the folder holds losses for another model, data, noise seed, flip
                setting or training-set size, or lacks a timestep this config scores at.
        """
        folder = Path(folder)
        store = cls(config, key, num_items, folder)
        if not (folder / MANIFEST_NAME).is_file():
            try:
                with atomic_dir(folder) as tmp:
                    (tmp / "chunks").mkdir()
                    write_manifest(tmp, BEFORE_KIND, STORE_FORMAT_VERSION, config=asdict(config),
                                   shapes={"num_items": [store.num_items]}, extra={"key": key})  # fmt: skip
            except FileExistsError:
                pass  # another worker created it first: read theirs
        manifest = read_manifest(folder, BEFORE_KIND, (1, STORE_FORMAT_VERSION))
        store._columns = served_columns(folder, manifest, config, key, store.num_items)
        if manifest["format_version"] == 1:
            store._read_dense(manifest)
        store.refresh()
        return store

    @classmethod
    def from_losses(cls, before: BeforeLosses) -> BeforeLossStore:
        """An in-memory store of the rows a dense ``BeforeLosses`` holds (NaN rows are not held)."""
        store = cls(before.config, before.key, len(before.losses))
        held = ~np.isnan(before.losses).reshape(len(before.losses), -1).all(axis=1)
        store._add(np.flatnonzero(held).astype(np.int64), before.losses[held])
        return store

    def _read_dense(self, manifest: dict) -> None:
        verify_checksums(self.folder, manifest, names=["losses.npy"])
        losses = np.load(self.folder / "losses.npy", allow_pickle=False)
        held = ~np.isnan(losses).reshape(len(losses), -1).all(axis=1)
        self._add(
            np.flatnonzero(held).astype(np.int64), select_columns(losses[held], self._columns)
        )

    def refresh(self) -> int:
        """Read the chunks other workers wrote since; returns how many were new."""
        if self.folder is None or not (self.folder / "chunks").is_dir():
            return 0
        new = 0
        for chunk in sorted((self.folder / "chunks").iterdir()):
            if chunk.name in self._read or chunk.name.startswith(".") or not chunk.is_dir():
                continue
            manifest = read_manifest(chunk, CHUNK_KIND, STORE_FORMAT_VERSION)
            verify_checksums(chunk, manifest)
            ids = np.load(chunk / "ids.npy", allow_pickle=False)
            losses = np.load(chunk / "losses.npy", allow_pickle=False)
            self._read.add(chunk.name)
            self._add(ids, select_columns(losses, self._columns))
            new += 1
        return new

    # -- computing and reading ---------------------------------------------------------------------------
    def held(self, ids) -> np.ndarray:
        """bool (n,): which of ``ids`` the store holds."""
        self._index()
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        position = np.searchsorted(self._sorted_ids, ids)
        inside = position < len(self._sorted_ids)
        found = np.zeros(len(ids), dtype=bool)
        found[inside] = self._sorted_ids[position[inside]] == ids[inside]
        return found

    def ensure(self, model, data, ids) -> int:
        """Compute (under the weights ``model`` holds now: θ₀) the losses of ``ids`` not held yet, CHUNK_ITEMS at
        a time, each chunk kept before the next starts; returns how many ids were computed here."""
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        if len(ids) and (ids[0] < 0 or ids[-1] >= self.num_items):
            raise IndexError(f"training ids must lie in 0..{self.num_items - 1}")
        missing = ids[~self.held(ids)]
        if len(missing) and self.refresh():
            missing = missing[~self.held(missing)]
        for start in range(0, len(missing), CHUNK_ITEMS):
            chunk = missing[start : start + CHUNK_ITEMS]
            losses = item_losses(model, data, chunk, self.config)
            self._write(chunk, losses)
            self._add(chunk, losses)
        return int(len(missing))

    def rows(self, ids) -> np.ndarray:
        """float32 (n, F, C_max, T) losses of ``ids``, in their order.

        Raises:
            ValueError: some ids were never computed (call ``ensure`` first).
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        found = self.held(ids)  # (indexes the chunks added since the last lookup)
        if not found.all():
            raise ValueError(
                f"{int((~found).sum())} candidates have no before losses (e.g. id {int(ids[~found][0])}); "
                "compute them first (BeforeLossStore.ensure)"
            )
        where = self._where[np.searchsorted(self._sorted_ids, ids)]
        out = None
        for chunk in np.unique(where[:, 0]):
            picked = where[:, 0] == chunk
            block = self._chunks[chunk][1][where[picked, 1]]
            if out is None:
                out = np.empty((len(ids), *block.shape[1:]), dtype=np.float32)
            out[picked] = block
        if out is None:
            shape = (
                self._chunks[0][1].shape[1:] if self._chunks else (1, 1, len(self.config.timesteps))
            )
            out = np.empty((0, *shape), dtype=np.float32)
        return out

    def __len__(self) -> int:
        self._index()
        return len(self._sorted_ids)

    def _add(self, ids: np.ndarray, losses: np.ndarray) -> None:
        """Hold ``ids``' losses (indexed at the next lookup, so adding many chunks costs one sort)."""
        if len(ids) and len(np.unique(ids)) != len(ids):
            raise IncompatibleArtifactError("a before-loss chunk repeats ids; delete the cache")
        if len(ids):
            self._chunks.append(
                (np.asarray(ids, dtype=np.int64), np.asarray(losses, dtype=np.float32))
            )

    def _index(self) -> None:
        """Sort the ids of the chunks added since the last lookup into the index; an id held twice (two workers
        computed it) keeps its first chunk's losses, which differ from the other's only by rounding."""
        if self._indexed == len(self._chunks):
            return
        new = range(self._indexed, len(self._chunks))
        all_ids = np.concatenate([self._sorted_ids, *(self._chunks[c][0] for c in new)])
        where = np.concatenate([self._where, *(np.stack([np.full(len(self._chunks[c][0]), c),
                                                          np.arange(len(self._chunks[c][0]))], axis=1)
                                               for c in new)])  # fmt: skip
        order = np.argsort(all_ids, kind="stable")  # earlier chunks first among equal ids
        all_ids, where = all_ids[order], where[order]
        first = np.r_[True, all_ids[1:] != all_ids[:-1]]
        self._sorted_ids, self._where = all_ids[first], where[first]
        self._indexed = len(self._chunks)

    def _write(self, ids: np.ndarray, losses: np.ndarray) -> None:
        if self.folder is None:
            return
        digest = hashlib.sha256(ids.tobytes()).hexdigest()[:12]
        name = f"{int(ids[0]):012d}-{len(ids):06d}-{digest}"
        try:
            with atomic_dir(self.folder / "chunks" / name) as tmp:
                np.save(tmp / "ids.npy", ids)
                np.save(tmp / "losses.npy", losses)
                write_manifest(tmp, CHUNK_KIND, STORE_FORMAT_VERSION,
                               shapes={"ids": list(ids.shape), "losses": list(losses.shape)})  # fmt: skip
        except FileExistsError:
            pass  # another worker wrote the same chunk
        self._read.add(name)
