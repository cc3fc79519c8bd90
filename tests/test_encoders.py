"""Frozen encoders and feature specs: real offline EfficientNet-Lite0 and MiniLM weights, clear errors."""

import numpy as np
import pytest

from _tolerance import apart, assert_close, network
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
    # The network run twice on one batch: its chain bound, relative to the largest feature.
    within = network(encoder.model, float(np.abs(a).max()))
    assert_close(a, b, within)
    unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    cosine = unit @ unit.T
    assert cosine[~np.eye(6, dtype=bool)].max() < 0.999  # different pictures, different features
    flipped = encoder.encode(images[:, :, ::-1].copy())
    assert apart(flipped, a, within)


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


@pytest.fixture(scope="module")
def tiny_hf_folders(tmp_path_factory):
    """A random DINO-style ViT and a random CLIP (both towers, projection 24-d) saved like hub folders."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, ViTConfig, ViTModel

    from _tiny_hf import write_clip_tokenizer_files

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    vit = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    ViTModel(
        ViTConfig(image_size=32, patch_size=8, **vit), add_pooling_layer=False
    ).save_pretrained(root / "dino")
    vocab = write_clip_tokenizer_files(root / "clip")
    tokenizer = CLIPTokenizer(
        str(root / "clip/vocab.json"), str(root / "clip/merges.txt"), model_max_length=16
    )
    tokenizer.save_pretrained(root / "clip")
    text = dict(
        vocab_size=vocab, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1
    )
    config = CLIPConfig(
        text_config={**vit, **text, "projection_dim": 24},
        vision_config={**vit, "image_size": 32, "patch_size": 8, "projection_dim": 24},
        projection_dim=24,
    )
    CLIPModel(config).save_pretrained(root / "clip")
    return root


def test_dino_and_clip_encoders_load_from_local_folders(tiny_hf_folders, small_world, monkeypatch):
    images = small_world.load_images(range(3))
    dino = make_encoder("dino", path=str(tiny_hf_folders / "dino"))
    assert dino.encode(images).shape == (3, 32) and dino.config()["image_size"] == 32
    monkeypatch.setenv("FASTGDA_CLIP_PATH", str(tiny_hf_folders / "clip"))
    image_part, text_part = make_encoder("clip_image"), make_encoder("clip_text")
    assert image_part.encode(images).shape == (3, 24)
    v = text_part.encode(["a red circle", "a blue square", "a red circle"])
    within = network(text_part.model, float(np.abs(v).max()))  # rows of one batch: its chain bound
    assert v.shape == (3, 24)
    assert_close(v[0], v[2], within)
    assert apart(v[0], v[1], within)
    from fastgda.features import FeatureExtractor

    monkeypatch.setenv("FASTGDA_DINO_PATH", str(tiny_hf_folders / "dino"))
    both = FeatureExtractor("dino+clip_text").embed(small_world, range(4))
    assert both.shape == (4, 32 + 24)


def test_missing_hf_weights_fail_with_instructions(tmp_path):
    with pytest.raises(FastGDAError, match="local folder"):
        make_encoder("dino", path=str(tmp_path / "nothing-here"))


def test_the_onnx_runtime_gives_torchs_features(small_world, tmp_path, monkeypatch):
    """The fast query path (issue 20): EfficientNet and MiniLM exported to ONNX and run by ONNX Runtime give
    the torch features (cosine > 0.99999 per row; measured 0.9999998), the export is cached and reused, and
    the runtime is refused where it cannot run."""
    pytest.importorskip("onnxruntime")
    import torch

    from fastgda.encoders.runtime import resolve_runtime
    from fastgda.features import FeatureExtractor

    monkeypatch.setenv("FASTGDA_CACHE", str(tmp_path))
    rows = [0, 3, 11, 42]
    images, texts = small_world.load_images(rows), [small_world.captions(i)[0] for i in rows]
    fast = FeatureExtractor("effnet+minilm", runtime="onnx")
    assert fast.runtime == "onnx" and FeatureExtractor("minilm", runtime="auto").runtime == "onnx"
    got = fast.embed_pairs(images, texts)
    expected = FeatureExtractor("effnet+minilm", concurrent=False).embed_pairs(images, texts)
    for part in fast.parts:
        columns = slice(part["offset"], part["offset"] + part["dim"])
        a, b = got[:, columns], expected[:, columns]
        cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cosine.min() > 0.99999, (part["name"], cosine)
    exports = sorted(tmp_path.glob("onnx/*.onnx"))
    assert [p.name.split("-")[0] for p in exports] == ["effnet", "minilm"]
    stamps = [p.stat().st_mtime_ns for p in exports]
    FeatureExtractor("effnet+minilm", runtime="onnx")  # reloads the cached exports, checked again
    assert [p.stat().st_mtime_ns for p in exports] == stamps
    with pytest.raises(FastGDAError, match="serves float32 on a CPU"):
        resolve_runtime("onnx", torch.device("cpu"), torch.bfloat16)
    assert resolve_runtime("auto", torch.device("cpu"), torch.bfloat16) == "torch"
    with pytest.raises(FastGDAError, match="not one of"):
        resolve_runtime("tensorrt", torch.device("cpu"), torch.float32)
