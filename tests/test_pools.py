"""Candidate pools found in one streamed pass over memory-mapped training rows equal a dense search."""

import numpy as np

from _tolerance import assert_same_ranking, sums
from fastgda.unlearning.pools import CandidateSpace, balanced_rows


def test_pools_streamed_in_blocks_over_a_float16_memmap_equal_a_dense_search(rng, tmp_path):
    parts = [(0, 24), (24, 8)]  # two encoders of unequal widths
    items = rng.normal(size=(1000, 32)).astype(np.float16)
    np.save(tmp_path / "values.npy", items)
    mapped = np.load(tmp_path / "values.npy", mmap_mode="r")
    queries = balanced_rows(rng.normal(size=(9, 32)).astype(np.float32), parts)
    space = CandidateSpace(
        lambda a, b: np.asarray(mapped[a:b], dtype=np.float32), len(mapped), queries, parts
    )

    pools = space.pools(20, block_rows=37)  # many blocks, the last one short

    dense = queries @ balanced_rows(items.astype(np.float32), parts).T
    top = np.argsort(-dense, axis=1)[:, :20]
    found = np.take_along_axis(dense, pools, 1)
    # Cosine of balanced rows: 32 products whose absolute values add to at most 1, summed two ways.
    assert_same_ranking(pools, found, top, np.take_along_axis(dense, top, 1), sums(32, 1.0))
    assert pools.shape == (9, 20) and pools.dtype == np.int64


def test_balanced_rows_make_a_cosine_the_mean_of_the_parts_cosines(rng):
    parts = [(0, 5), (5, 3)]
    a, b = rng.normal(size=(4, 8)), rng.normal(size=(4, 8))
    joined = (balanced_rows(a, parts) * balanced_rows(b, parts)).sum(axis=1)

    def cosine(x, y):
        return (x * y).sum(axis=1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)

    means = (cosine(a[:, :5], b[:, :5]) + cosine(a[:, 5:], b[:, 5:])) / 2
    # float32 rows: a normalisation (8 terms) per side and an 8-term sum, against float64.
    np.testing.assert_allclose(joined, means, atol=float(sums(8, 1.0).atol) * 3)
