"""Frozen encoders and feature specs: real offline EfficientNet-Lite0 and MiniLM weights, clear errors."""

import numpy as np
import pytest

from fastgda import FastGDAError
from fastgda.encoders import FeatureSpec, encoder_names, make_encoder


def test_feature_specs_parse_known_encoders_and_reject_the_rest():
    assert {"effnet", "minilm", "pixels"} <= set(encoder_names())
    assert FeatureSpec.parse("effnet+minilm").names == ("effnet", "minilm")
    assert str(FeatureSpec.parse(" effnet + minilm ")) == "effnet+minilm"
    for bad, message in [
        ("", "empty"),
        ("effnet+", "empty"),
        ("resnet", "unknown"),
        ("effnet+effnet", "repeats"),
    ]:
        with pytest.raises(FastGDAError, match=message):
            FeatureSpec.parse(bad)


def test_efficientnet_features_are_deterministic_and_tell_images_apart(small_world):
    encoder = make_encoder("effnet")
    images = small_world.load_images(range(6))
    a, b = encoder.encode(images), encoder.encode(list(images))
    assert a.shape == (6, 1280) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    cosine = unit @ unit.T
    assert cosine[~np.eye(6, dtype=bool)].max() < 0.999  # different pictures, different features
    flipped = encoder.encode(images[:, :, ::-1].copy())
    assert not np.allclose(flipped, a)


def test_minilm_sentence_embeddings_put_paraphrases_closer_than_unrelated_texts():
    encoder = make_encoder("minilm")
    v = encoder.encode(
        ["a large red circle on the left", "a big red circle at the left", "two green squares"]
    )
    assert v.shape == (3, 384) and v.dtype == np.float32
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    assert unit[0] @ unit[1] > unit[0] @ unit[2] + 0.1


def test_encoders_refuse_bad_batches():
    with pytest.raises(FastGDAError, match="uint8"):
        make_encoder("pixels").encode([np.zeros((16, 16), dtype=np.uint8)])
    with pytest.raises(FastGDAError, match="uint8"):
        make_encoder("effnet").encode(np.zeros((1, 16, 16, 3), dtype=np.float32))
    with pytest.raises(FastGDAError, match="non-empty"):
        make_encoder("minilm").encode(["fine", "  "])
    with pytest.raises(FastGDAError, match="unknown encoder"):
        make_encoder("resnet")
