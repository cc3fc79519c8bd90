"""``GroundTruth``: the teacher's rankings, one row per query, most influential first.

Sign convention (stated once, used everywhere): a score is *higher = more influential*. The teacher's score is
tau = L(z, theta_-) - L(z, theta_0), the rise of a training item's loss after unlearning the query; rows are
sorted by descending tau. The ranker later trains on 1 - normalised rank, so its learned scale is positive.

Stored as ``ground_truth.safetensors`` (query_ids int64 (Q,), ids int32 (Q, K), scores float32 (Q, K), or float16
with a per-row float32 ``score_scale`` when saved compact) plus a manifest. Per-query files (``q_000012.npz``, npy
arrays without pickles) are what a running job writes; ``merge`` gathers them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ._artifacts import atomic_dir, read_manifest, verify_checksums, write_manifest
from .errors import FastGDAError

GROUND_TRUTH_KIND = "ground_truth"
GROUND_TRUTH_FORMAT_VERSION = 1
_QUERY_FILE = re.compile(r"^q_(\d+)\.npz$")


def query_file(results_dir: str | os.PathLike, query_id: int) -> Path:
    """Where the teacher writes one query's ranking."""
    return Path(results_dir) / f"q_{query_id:06d}.npz"


def write_query_result(
    results_dir: str | os.PathLike, query_id: int, ids: np.ndarray, scores: np.ndarray
) -> None:
    """Write one query's ranking atomically (temporary file, then rename)."""
    path = query_file(results_dir, query_id)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.savez(
            handle, ids=np.asarray(ids, dtype=np.int32), scores=np.asarray(scores, dtype=np.float32)
        )
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_query_result(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one query's (ids int32 (K,), scores float32 (K,)); never unpickles."""
    with np.load(path, allow_pickle=False) as data:
        return data["ids"], data["scores"]


def finished_queries(results_dir: str | os.PathLike) -> set[int]:
    """Query ids whose result file exists (a crash mid-write leaves only a hidden temporary file)."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        return set()
    return {int(m.group(1)) for p in results_dir.iterdir() if (m := _QUERY_FILE.match(p.name))}


@dataclass
class GroundTruth:
    """Teacher rankings. ``ids[q]`` are training ids, most influential first; ``scores[q]`` their tau."""

    query_ids: np.ndarray  # int64 (Q,)
    ids: np.ndarray  # int32 (Q, K)
    scores: np.ndarray  # float32 (Q, K), descending along each row
    config: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.query_ids)

    @classmethod
    def merge(
        cls,
        results_dir: str | os.PathLike,
        query_ids: list[int] | None = None,
        config: dict | None = None,
    ):
        """Gather per-query files into one ``GroundTruth`` (every listed query must be finished).

        Raises:
            FastGDAError: a query is missing or rows have different lengths.
        """
        done = finished_queries(results_dir)
        query_ids = sorted(done) if query_ids is None else list(query_ids)
        missing = [q for q in query_ids if q not in done]
        if missing or not query_ids:
            raise FastGDAError(
                f"{results_dir} lacks results for {len(missing) or 'all'} queries (e.g. {missing[:5]}); "
                "run the teacher again to finish them, then merge"
            )
        rows = [read_query_result(query_file(results_dir, q)) for q in query_ids]
        lengths = {len(ids) for ids, _ in rows}
        if len(lengths) != 1:
            raise FastGDAError(
                f"queries in {results_dir} rank different numbers of candidates: {sorted(lengths)}"
            )
        return cls(
            np.asarray(query_ids, dtype=np.int64),
            np.stack([ids for ids, _ in rows]),
            np.stack([scores for _, scores in rows]),
            dict(config or {}),
        )

    def select(self, query_ids) -> GroundTruth:
        """The rows of these query ids, in that order.

        Raises:
            FastGDAError: some ids are not ranked here (the message names them and the ids that are).
        """
        position = {int(q): row for row, q in enumerate(self.query_ids)}
        wanted = [int(q) for q in query_ids]
        missing = [q for q in wanted if q not in position]
        if missing:
            held = (
                f"{int(self.query_ids.min())}..{int(self.query_ids.max())}" if len(self) else "none"
            )
            raise FastGDAError(
                f"query ids {missing[:10]} are not in this ground truth; it ranks query ids {held} "
                f"({len(self)} queries)"
            )
        rows = np.array([position[q] for q in wanted], dtype=np.int64)
        return GroundTruth(
            self.query_ids[rows], self.ids[rows], self.scores[rows], dict(self.config)
        )

    def save(
        self, folder: str | os.PathLike, overwrite: bool = False, compact: bool = False
    ) -> None:
        """Write ``ground_truth.safetensors`` and a manifest atomically.

        ``compact`` stores scores as float16 divided by each row's largest magnitude (kept as float32
        ``score_scale`` (Q,)): half the size, ~3 significant digits, and tiny taus do not underflow. The order of
        ``ids`` is always the full-precision ranking.
        """
        tensors = {
            "query_ids": torch.from_numpy(self.query_ids.astype(np.int64)),
            "ids": torch.from_numpy(self.ids.astype(np.int32)),
        }
        if compact:
            scale = np.abs(self.scores).max(axis=1).astype(np.float32)
            scale[scale == 0] = 1.0
            tensors["scores"] = torch.from_numpy((self.scores / scale[:, None]).astype(np.float16))
            tensors["score_scale"] = torch.from_numpy(scale)
        else:
            tensors["scores"] = torch.from_numpy(self.scores.astype(np.float32))
        with atomic_dir(folder, overwrite=overwrite) as tmp:
            save_file(tensors, tmp / "ground_truth.safetensors")
            write_manifest(
                tmp,
                GROUND_TRUTH_KIND,
                GROUND_TRUTH_FORMAT_VERSION,
                config=self.config,
                shapes={k: list(v.shape) for k, v in tensors.items()},
            )

    @classmethod
    def load(cls, folder: str | os.PathLike) -> GroundTruth:
        """Load a merged ground truth (manifest and checksums checked)."""
        manifest = read_manifest(folder, GROUND_TRUTH_KIND, GROUND_TRUTH_FORMAT_VERSION)
        verify_checksums(folder, manifest)
        tensors = load_file(Path(folder) / "ground_truth.safetensors")
        scores = tensors["scores"].numpy().astype(np.float32)
        if "score_scale" in tensors:  # a compact (float16) artifact
            scores = scores * tensors["score_scale"].numpy()[:, None]
        return cls(tensors["query_ids"].numpy(), tensors["ids"].numpy(), scores, manifest["config"])
