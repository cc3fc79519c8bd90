"""Candidate pools: each query's top-M training items by cosine in a candidate feature space, found in one
streamed pass over the training rows.

The training rows stay where they are (a memory-mapped features file, the encoding's memory-mapped x0): blocks of
rows are read, normalised and searched against every query of the set at once, keeping a running top-M per
query (``fastgda.index.exact_top_k``). Memory is one block and the (Q, M) pools, whatever N is; the cost is one
read of the training features per query set, O(N·D).

A space of several parts (``effnet+minilm``) scales each part's columns to unit length and by 1/sqrt(parts), so a
cosine is the mean of the parts' cosines and no encoder dominates by its width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..index import exact_top_k, unit_rows

POOL_BLOCK_ROWS = 65_536  # about 100 MB of float32 rows at 384 columns: one block read at a time


def balanced_rows(values: np.ndarray, parts: list[tuple[int, int]]) -> np.ndarray:
    """float32 (n, D): each part's columns (offset, width) of ``values`` (n, D) scaled to unit length, then by
    1/sqrt(number of parts)."""
    scale = len(parts) ** -0.5
    columns = [unit_rows(values[:, offset : offset + width]) * scale for offset, width in parts]
    return np.concatenate(columns, axis=1) if len(columns) > 1 else columns[0]


@dataclass
class CandidateSpace:
    """The training items' and a query set's candidate features.

    Attributes:
        read_items: ``read_items(start, stop)`` -> float32 (stop - start, D) raw training rows (not normalised).
        num_items: N.
        queries: float32 (Q, D) the queries' rows, already balanced.
        parts: (offset, width) of each part's columns.
    """

    read_items: Callable[[int, int], np.ndarray]
    num_items: int
    queries: np.ndarray
    parts: list[tuple[int, int]]

    def items(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """float32 (n, D) balanced rows of training items ``start:stop`` (default: all; for small sets)."""
        stop = self.num_items if stop is None else stop
        return balanced_rows(self.read_items(start, stop), self.parts)

    def pools(self, size: int, block_rows: int = POOL_BLOCK_ROWS) -> np.ndarray:
        """int64 (Q, min(size, N)): every query's nearest training items, nearest first, in one pass over N."""
        positions, _ = exact_top_k(self.queries, _Blocks(self), size, block_size=block_rows)
        return positions


class _Blocks:
    """The balanced training rows as ``exact_top_k`` reads them: ``len`` and slices of rows."""

    def __init__(self, space: CandidateSpace):
        self.space = space

    def __len__(self) -> int:
        return self.space.num_items

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.space.num_items)
        return self.space.items(start, stop)
