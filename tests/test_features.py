"""Features artifacts: embedding a dataset in resumable chunks, layout, spec checks."""

import json

import numpy as np
import pytest

from _tolerance import F32, assert_close, encoded, rounded
from fastgda import IncompatibleArtifactError
from fastgda.features import FeatureExtractor, Features, embed_dataset


def test_embedding_writes_the_concatenated_parts_of_every_row(small_world, tmp_path):
    features = embed_dataset(small_world.root, "pixels+minilm", tmp_path / "f", chunk_size=16)
    assert features.values.shape == (60, 768 + 384) and features.ids.tolist() == list(range(60))
    assert [p["name"] for p in features.parts] == ["pixels", "minilm"]
    embedder = FeatureExtractor("pixels+minilm")
    again = embedder.embed(small_world, range(5))
    assert_close(features.values[:5], again, encoded(embedder, again))  # other batches
    # A pixel feature is x/255 in float32: one correctly rounded division (within u), or two roundings where a
    # library multiplies by 1/255 instead.
    assert_close(
        features.part("pixels")[7], small_world.load_image(7).reshape(-1) / 255.0, rounded(F32) * 2
    )
    loaded = Features.load(tmp_path / "f", expect_spec="pixels+minilm")
    np.testing.assert_array_equal(loaded.values, features.values)
    assert not (tmp_path / "f.partial").exists()
    with pytest.raises(IncompatibleArtifactError, match="embed again"):
        Features.load(tmp_path / "f", expect_spec="effnet+minilm")


def test_an_interrupted_embedding_reuses_its_finished_chunks(small_world, tmp_path):
    whole = embed_dataset(small_world.root, "pixels", tmp_path / "whole", chunk_size=16)
    partial = tmp_path / "resumed.partial"
    embed_dataset(small_world.root, "pixels", tmp_path / "resumed", chunk_size=16)
    # Simulate a run that died after two chunks: a marker value in a finished chunk must survive the resume.
    (tmp_path / "resumed").rename(tmp_path / "first")
    partial.mkdir()
    settings = {"spec": "pixels", "chunk_size": 16, "content_hash": small_world.content_hash}
    (partial / "settings.json").write_text(json.dumps(settings))
    marked = whole.values[:16].copy()
    marked[0, 0] = 42.0
    np.save(partial / "chunk_000000.npy", marked)
    (partial / ".chunk_000001.npy.9.tmp").write_bytes(b"half")
    resumed = embed_dataset(small_world.root, "pixels", tmp_path / "resumed", chunk_size=16)
    assert resumed.values[0, 0] == 42.0  # reused, not recomputed
    np.testing.assert_array_equal(resumed.values[16:], whole.values[16:])
    assert not partial.exists()


def test_a_specs_encoders_run_side_by_side_with_the_same_features(small_world):
    """On a CPU the encoders of a two-part spec run concurrently in threads (a query costs its slowest encoder,
    not their sum); the features are the sequential ones, up to the order of float sums (the encoders' chain bounds)."""
    from fastgda.features import FeatureExtractor

    rows = [0, 7, 19]
    images, texts = small_world.load_images(rows), [small_world.captions(i)[0] for i in rows]
    side_by_side = FeatureExtractor("effnet+minilm")
    assert side_by_side.concurrent
    sequential = FeatureExtractor("effnet+minilm", concurrent=False)
    assert not FeatureExtractor("minilm").concurrent  # one encoder: nothing to overlap
    got, expected = side_by_side.embed_pairs(images, texts), sequential.embed_pairs(images, texts)
    assert got.shape == expected.shape == (3, side_by_side.dim)
    assert_close(got, expected, encoded(sequential, expected))  # threads: other kernels' sum orders
    assert {t.name.split("_")[0] for t in side_by_side._pool._threads} == {"encoder"}
