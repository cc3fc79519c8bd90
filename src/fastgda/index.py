"""Nearest-neighbour search over ranker embeddings: exact by default, faiss HNSW or IVF-PQ for large sets.

All backends search by inner product of unit vectors (= cosine, higher = more influential) and share one
contract: ``search(queries, k)`` returns ids and scores, best first; ``add(ids, vectors)`` inserts new training
items (no retraining: they are embedded with the same ranker); ``remove(ids)`` takes items out for good
(takedowns), whatever the backend can physically delete.

``exact`` streams the items in blocks and keeps a running top-k per query (``torch.topk`` per block, never a
full sort of N and never a Q x N matrix). ``hnsw`` and ``ivfpq`` wrap faiss (extra ``index``); they cannot
delete in place, so removed ids are masked: the search over-fetches by the number of removed ids and drops them.

A takedown may arrive while searches run on other threads (a serving process): ``remove`` builds the new state
aside and swaps it in under a lock, and a search reads one consistent snapshot (ids, vectors, removed ids).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import torch

from ._artifacts import atomic_dir, read_manifest, verify_checksums, write_manifest
from ._optional import require
from .errors import FastGDAError, IncompatibleArtifactError

INDEX_KIND = "index"
INDEX_FORMAT_VERSION = 1
BACKENDS = ("exact", "hnsw", "ivfpq")


def _as_rows(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    vectors = np.ascontiguousarray(np.atleast_2d(np.asarray(vectors, dtype=np.float32)))
    if dim is not None and vectors.shape[1] != dim:
        raise FastGDAError(
            f"vectors have {vectors.shape[1]} dimensions, the index holds {dim}-d vectors"
        )
    if not np.isfinite(vectors).all():
        raise FastGDAError("vectors contain NaN or infinite values")
    return vectors


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero): inner products of unit rows are cosines."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def exact_top_k(
    queries: np.ndarray, vectors: np.ndarray, k: int, block_size: int = 65_536
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k inner products of queries (Q, d) over vectors (n, d), streamed in blocks of rows.

    Returns:
        positions int64 (Q, k') and scores float32 (Q, k'), k' = min(k, n), best first.
    """
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    k = min(k, len(vectors))
    best_scores = torch.full((len(q), 0), -torch.inf)
    best_positions = torch.zeros((len(q), 0), dtype=torch.int64)
    for start in range(0, len(vectors), block_size):
        block = torch.from_numpy(vectors[start : start + block_size])
        scores = q @ block.T
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        merged_scores = torch.cat([best_scores, top.values], dim=1)
        merged_positions = torch.cat([best_positions, top.indices + start], dim=1)
        keep = torch.topk(merged_scores, min(k, merged_scores.shape[1]), dim=1)
        best_scores = keep.values
        best_positions = torch.gather(merged_positions, 1, keep.indices)
    return best_positions.numpy(), best_scores.numpy()


class VectorIndex:
    """Unit vectors with int64 ids, searchable by cosine.

    Args:
        dim: vector dimension. backend: "exact", "hnsw" or "ivfpq".
        options: backend settings (hnsw: m, ef_search, ef_construction; ivfpq: nlist, m, nbits, nprobe,
            refine: IVF-PQ fetches refine x k candidates and re-scores them exactly with the stored vectors;
            default 10, 1 turns refinement off).
    """

    def __init__(self, dim: int, backend: str = "exact", **options):
        if backend not in BACKENDS:
            raise FastGDAError(
                f"unknown index backend {backend!r}; choose one of {', '.join(BACKENDS)}"
            )
        self.dim, self.backend, self.options = dim, backend, options
        self.ids = np.zeros(0, dtype=np.int64)
        self.vectors = np.zeros(
            (0, dim), dtype=np.float32
        )  # kept for every backend: rebuilds and saving
        # Removed ids, as a set (membership) and a sorted array (masking results), both replaced together and
        # never changed in place: a search holding the old ones keeps a consistent view.
        self.removed: frozenset[int] = frozenset()
        self.removed_ids = np.zeros(0, dtype=np.int64)
        self._faiss_index = None
        self._sorted = None  # (sorted ids, their rows): id -> row lookups for IVF-PQ refinement
        self._lock = threading.Lock()  # guards swaps of (ids, vectors, removed) against snapshots
        # One add or remove at a time (each computes aside, then swaps under _lock).
        self._writing = threading.Lock()
        self._masked = 0  # entries of ids that are removed but still in a faiss structure

    def __len__(self) -> int:
        """Searchable items (removed ones excluded), without a pass over the ids."""
        with self._lock:
            return len(self.ids) - self._masked

    # -- building ----------------------------------------------------------------------------------------
    def add(self, ids, vectors) -> None:
        """Insert vectors (n, dim) under new ids (n,). Re-adding a removed id is refused: takedowns stick."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        vectors = _as_rows(vectors, self.dim)
        if len(ids) != len(vectors):
            raise FastGDAError(f"{len(ids)} ids for {len(vectors)} vectors")
        with self._writing:
            self._add(ids, vectors)

    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        clash = set(ids.tolist()) & (set(self.ids.tolist()) | self.removed)
        if clash or len(set(ids.tolist())) != len(ids):
            raise FastGDAError(
                f"ids {sorted(clash)[:5] or 'repeated in the batch'} are already in the index or were removed; "
                "give new training images new ids"
            )
        vectors = unit_rows(vectors)
        with self._lock:
            self.ids = np.concatenate([self.ids, ids])
            self.vectors = np.concatenate([self.vectors, vectors])
            self._sorted = None
            if self.backend != "exact":
                if self._faiss_index is None:
                    self._faiss_index = self._build_faiss(self.vectors, self.ids)
                else:
                    self._faiss_index.add_with_ids(vectors, ids)

    def remove(self, ids) -> int:
        """Take ids out of every future result (safe while other threads search); returns how many were
        present."""
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        with self._writing:
            new = np.setdiff1d(ids, self.removed_ids, assume_unique=True)
            present = int(np.isin(new, self.ids).sum())  # still served until now
            keep = ~np.isin(self.ids, new) if self.backend == "exact" else None
            removed_ids = np.union1d(self.removed_ids, new)
            with self._lock:
                if keep is not None:  # the exact backend deletes; faiss structures mask
                    self.ids, self.vectors = self.ids[keep], self.vectors[keep]
                else:
                    self._masked += present
                # Remembered for every backend, so a removed id can never be re-added.
                self._set_removed(removed_ids)
        return present

    def _set_removed(self, removed_ids: np.ndarray) -> None:
        """Swap in another sorted array of removed ids (and its set): the caller holds the lock or owns self."""
        self.removed_ids = removed_ids
        self.removed = frozenset(removed_ids.tolist())

    def _snapshot(self):
        """(ids, vectors, sorted removed ids, faiss index) as of one moment."""
        with self._lock:
            return self.ids, self.vectors, self.removed_ids, self._faiss_index

    def _build_faiss(self, vectors: np.ndarray, ids: np.ndarray):
        faiss = require("faiss", extra="index")
        if self.backend == "hnsw":
            inner = faiss.IndexHNSWFlat(
                self.dim, int(self.options.get("m", 32)), faiss.METRIC_INNER_PRODUCT
            )
            inner.hnsw.efConstruction = int(self.options.get("ef_construction", 200))
            inner.hnsw.efSearch = int(self.options.get("ef_search", 128))
            index = faiss.IndexIDMap2(inner)
        else:
            nlist = int(
                self.options.get("nlist", max(1, min(4096, round(4 * np.sqrt(len(vectors))))))
            )
            m = int(self.options.get("m", 16 if self.dim % 16 == 0 else 8))
            if self.dim % m:
                raise FastGDAError(
                    f"IVF-PQ needs the dimension {self.dim} divisible by m={m}; pass m=..."
                )
            nbits = int(self.options.get("nbits", 8))
            quantizer = faiss.IndexFlatIP(self.dim)
            inner = faiss.IndexIVFPQ(
                quantizer, self.dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT
            )
            # Both quantisers are trained on the vectors: nlist coarse centroids, 2^nbits codes per sub-vector.
            needed = max(nlist, 2**nbits)
            if len(vectors) < needed:
                raise FastGDAError(
                    f"IVF-PQ (nlist {nlist}, nbits {nbits}) needs at least {needed} training vectors, got "
                    f"{len(vectors)}; use the exact backend for small sets"
                )
            inner.train(vectors)
            inner.nprobe = int(self.options.get("nprobe", 16))
            index = faiss.IndexIDMap2(inner)
        index.add_with_ids(vectors, ids)
        return index

    # -- searching ---------------------------------------------------------------------------------------
    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ids and cosine scores per query, best first: int64 (Q, k'), float32 (Q, k'), k' <= k.

        Rows are padded with id -1 and score -inf where fewer than k items remain.
        """
        queries = _as_rows(queries, self.dim)
        queries = unit_rows(queries)
        if k < 1:
            raise FastGDAError(f"k must be at least 1, got {k}")
        all_ids, vectors, removed_ids, faiss_index = self._snapshot()
        if self.backend == "exact" or faiss_index is None:
            positions, scores = exact_top_k(queries, vectors, k)
            ids = all_ids[positions] if len(all_ids) else np.zeros((len(queries), 0), np.int64)
        else:
            refine = int(self.options.get("refine", 10)) if self.backend == "ivfpq" else 1
            fetch = min(k * max(refine, 1) + len(removed_ids), len(all_ids))
            scores, ids = faiss_index.search(queries, fetch)
            if refine > 1:
                ids, scores = self._rescore(queries, ids, all_ids, vectors)
            if len(removed_ids):
                removed = np.isin(ids, removed_ids) | (ids < 0)
                order = np.argsort(removed, axis=1, kind="stable")  # survivors first, order kept
                ids, scores = (
                    np.take_along_axis(ids, order, 1),
                    np.take_along_axis(scores, order, 1),
                )
                scores = np.where(np.take_along_axis(removed, order, 1), -np.inf, scores)
                ids = np.where(np.isinf(scores), -1, ids)
            ids, scores = ids[:, :k], scores[:, :k]
        if ids.shape[1] < k:
            pad = k - ids.shape[1]
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return ids.astype(np.int64), scores.astype(np.float32)

    def _rescore(
        self, queries: np.ndarray, ids: np.ndarray, all_ids: np.ndarray, vectors: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact cosines of the candidates ``ids`` (Q, c) from the stored ``vectors`` (rows of ``all_ids``), best
        first (-1: no candidate)."""
        lookup = self._sorted
        if lookup is None or len(lookup[0]) != len(all_ids):
            order = np.argsort(all_ids, kind="stable")
            lookup = self._sorted = (all_ids[order], order)
        sorted_ids, rows_of_sorted = lookup
        missing = ids < 0
        rows = rows_of_sorted[np.searchsorted(sorted_ids, np.where(missing, sorted_ids[0], ids))]
        scores = np.einsum("qd,qcd->qc", queries, vectors[rows])
        scores = np.where(missing, -np.inf, scores).astype(np.float32)
        order = np.argsort(-scores, axis=1, kind="stable")
        return np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)

    def memory_bytes(self) -> int:
        """Bytes held by the searchable structure (faiss index, or the exact backend's matrix)."""
        if self.backend == "exact" or self._faiss_index is None:
            return int(self.vectors.nbytes + self.ids.nbytes)
        faiss = require("faiss", extra="index")
        structure = int(faiss.serialize_index(self._faiss_index).nbytes)
        if self.backend == "ivfpq" and int(self.options.get("refine", 10)) > 1:
            structure += int(self.vectors.nbytes)  # refinement reads the stored vectors
        return structure

    # -- persistence -------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike, overwrite: bool = False) -> None:
        """Vectors, ids and removed ids as npy (faiss structures are rebuilt on load, never unpickled)."""
        live = ~np.isin(self.ids, self.removed_ids)
        with atomic_dir(folder, overwrite=overwrite) as tmp:
            np.save(tmp / "vectors.npy", self.vectors[live])
            np.save(tmp / "ids.npy", self.ids[live])
            np.save(tmp / "removed.npy", self.removed_ids)
            write_manifest(
                tmp,
                INDEX_KIND,
                INDEX_FORMAT_VERSION,
                config={"backend": self.backend, "options": self.options, "dim": self.dim},
                shapes={"vectors": list(self.vectors[live].shape)},
            )

    @staticmethod
    def read_removed(folder: str | os.PathLike) -> np.ndarray:
        """The removed ids a saved index holds, int64 (R,), without reading its vectors: what a running server
        reads to take down ids another process removed (``removed.npy`` checked against the manifest)."""
        folder = Path(folder)
        manifest = read_manifest(folder, INDEX_KIND, INDEX_FORMAT_VERSION)
        verify_checksums(folder, manifest, names=["removed.npy"])
        return np.load(folder / "removed.npy", allow_pickle=False).astype(np.int64)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> VectorIndex:
        folder = Path(folder)
        manifest = read_manifest(folder, INDEX_KIND, INDEX_FORMAT_VERSION)
        verify_checksums(folder, manifest)
        config = manifest["config"]
        index = cls(config["dim"], config["backend"], **config["options"])
        vectors = np.load(folder / "vectors.npy", allow_pickle=False)
        ids = np.load(folder / "ids.npy", allow_pickle=False)
        if len(vectors) != len(ids):
            raise IncompatibleArtifactError(
                f"index {folder} holds {len(vectors)} vectors for {len(ids)} ids"
            )
        index._set_removed(
            np.unique(np.load(folder / "removed.npy", allow_pickle=False).astype(np.int64))
        )
        if len(ids):
            index.ids = ids
            index.vectors = vectors
            if index.backend != "exact":
                index._faiss_index = index._build_faiss(vectors, ids)
        return index
