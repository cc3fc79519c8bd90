"""Vector index: exact streamed top-k, faiss HNSW / IVF-PQ recall against exact, add/remove, persistence."""

import numpy as np
import pytest

from _tolerance import assert_close, assert_same_ranking, sums
from fastgda import FastGDAError
from fastgda.index import VectorIndex, exact_top_k


def clustered(rng, n=4000, dim=32, clusters=40):
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_streamed_top_k_equals_a_full_sort(rng):
    vectors, queries = clustered(rng, 1000), clustered(rng, 7)
    positions, scores = exact_top_k(queries, vectors, 10, block_size=64)
    full = queries @ vectors.T
    # Cosines of unit vectors, 32 terms each (Σ|q_i x_i| <= 1), summed by numpy here and torch there.
    top = np.argsort(-full, axis=1)[:, :10]
    expected = np.take_along_axis(full, top, 1)
    assert_same_ranking(positions, scores, top, expected, sums(32, 1.0))


@pytest.mark.parametrize("backend", ["hnsw", "ivfpq"])
def test_approximate_backends_recall_the_exact_neighbours(rng, backend):
    vectors, queries = clustered(rng), clustered(rng, 50)
    ids = np.arange(len(vectors)) + 1000
    exact, approx = VectorIndex(32), VectorIndex(32, backend, nprobe=16)
    exact.add(ids, vectors)
    approx.add(ids, vectors)
    truth, _ = exact.search(queries, 10)
    found, _ = approx.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
    assert recall >= (0.95 if backend == "hnsw" else 0.6), recall
    assert approx.memory_bytes() > 0


def test_ivfpq_refinement_rescores_with_the_stored_vectors(rng):
    vectors, queries = clustered(rng, dim=64), clustered(rng, 50, dim=64)
    ids = np.arange(len(vectors)) * 3 + 7  # ids unlike rows, so the id -> row lookup is exercised
    exact = VectorIndex(64)
    exact.add(ids, vectors)
    truth, truth_scores = exact.search(queries, 10)
    recall = {}
    for refine in (1, 10):
        index = VectorIndex(64, "ivfpq", nprobe=16, m=8, refine=refine)
        index.add(ids, vectors)
        found, scores = index.search(queries, 10)
        recall[refine] = np.mean(
            [len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)]
        )
        if refine > 1:  # refined scores are exact cosines, best first
            exact_scores = np.einsum("qd,qkd->qk", queries, vectors[(found - 7) // 3])
            # 64-term products of unit vectors, and the index renormalised both sides (a norm each).
            assert_close(scores, exact_scores, sums(64, 1.0) * 3)
            assert np.all(np.diff(scores, axis=1) <= 0)  # sorted by the very values returned
    assert recall[10] > recall[1] and recall[10] >= 0.9, recall


@pytest.mark.parametrize("backend", ["exact", "hnsw", "ivfpq"])
def test_added_items_are_found_and_removed_items_never_come_back(rng, backend, tmp_path):
    vectors = clustered(rng, 500)
    index = VectorIndex(32, backend)
    index.add(np.arange(500), vectors)
    new = clustered(rng, 3)
    index.add([900, 901, 902], new)
    ids, scores = index.search(new, 1)
    assert ids[:, 0].tolist() == [900, 901, 902]
    assert_close(
        scores[:, 0], 1.0, sums(32, 1.0) * 3
    )  # a unit vector with itself, both renormalised
    top, _ = index.search(vectors[:5], 3)
    assert index.remove(top[:, 0]) == len(set(top[:, 0].tolist()))
    after, _ = index.search(vectors[:5], 50)
    assert not set(top[:, 0].tolist()) & set(after.ravel().tolist())
    with pytest.raises(FastGDAError, match="removed"):
        index.add(top[:1, 0], vectors[:1])
    index.save(tmp_path / "index")
    loaded = VectorIndex.load(tmp_path / "index")
    assert len(loaded) == len(index)
    again, _ = loaded.search(vectors[:5], 50)
    assert not set(top[:, 0].tolist()) & set(again.ravel().tolist())
    np.testing.assert_array_equal(again[:, :10], after[:, :10])


def test_bad_inputs_are_refused(rng):
    index = VectorIndex(8)
    with pytest.raises(FastGDAError, match="dimensions"):
        index.add([0], np.zeros((1, 9)))
    with pytest.raises(FastGDAError, match="NaN"):
        index.add([0], np.full((1, 8), np.nan))
    with pytest.raises(FastGDAError, match="backend"):
        VectorIndex(8, "annoy")
    index.add([0, 1], rng.normal(size=(2, 8)))
    ids, scores = index.search(rng.normal(size=(1, 8)), 5)
    assert ids[0, 2:].tolist() == [-1, -1, -1] and np.isinf(scores[0, 2:]).all()
