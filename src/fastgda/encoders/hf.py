"""The paper's encoders through ``transformers``: DINO ViT-B/16 image features and CLIP ViT-B/32 image/text.

Each loads from a local folder (``path=`` option or the environment variables below) or, where the machine has
a network, from the hub id. Offline machines must pass a folder: nothing is downloaded when
``HF_HUB_OFFLINE=1``.

    FASTGDA_DINO_PATH   default facebook/dino-vitb16          (CLS token of the last layer, 768-d)
    FASTGDA_CLIP_PATH   default openai/clip-vit-base-patch32  (projected embeddings, 512-d)
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch

from .._optional import require
from ..errors import FastGDAError
from .base import Encoder, register
from .image import IMAGENET_MEAN, IMAGENET_STD, as_image_batch, resize_normalise
from .text import as_text_batch

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def _location(path: str | None, variable: str, default: str) -> str:
    return str(path or os.environ.get(variable) or default)


@functools.lru_cache(maxsize=4)
def _load(cls_name: str, location: str):
    transformers = require("transformers", extra="encoders")
    try:
        return (
            getattr(transformers, cls_name).from_pretrained(location).eval().requires_grad_(False)
        )
    except OSError as exc:
        raise FastGDAError(
            f"cannot load {cls_name} from {location!r} ({exc}); pass a local folder with path=... or set the "
            "environment variable named in fastgda.encoders.hf"
        ) from exc


def _image_size(model, default: int = 224) -> int:
    size = getattr(model.config, "image_size", default)
    return int(size[0] if isinstance(size, list | tuple) else size)


class _HFImageEncoder(Encoder):
    """A transformers vision model behind the encoder interface; subclasses say how to load and pool, and how
    they were trained to see: the centred square's share of the shorter side (``crop``) and the normalisation."""

    modality = "image"
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    crop = 1.0

    def __init__(self, model, location: str, dim: int, batch_size: int):
        self.model, self.location, self.dim, self.batch_size = model, location, dim, batch_size
        self.size = _image_size(model)

    def pool(self, outputs) -> torch.Tensor:
        """(B, dim) features from the model's outputs."""
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, batch) -> np.ndarray:
        images = as_image_batch(batch)
        out = [
            self.pool(
                self.model(
                    pixel_values=resize_normalise(
                        images[i : i + self.batch_size], self.size, self.mean, self.std, self.crop
                    ).to(self.device)
                )
            )
            .float()
            .cpu()
            for i in range(0, len(images), self.batch_size)
        ]
        return (
            torch.cat(out).numpy().astype(np.float32)
            if out
            else np.zeros((0, self.dim), np.float32)
        )

    def config(self) -> dict:
        return super().config() | {
            "location": self.location,
            "image_size": self.size,
            "crop": self.crop,
        }


@register("dino")
class DinoEncoder(_HFImageEncoder):
    """DINO ViT (``ViTModel``/``Dinov2Model`` folders): CLS token of the last hidden state.

    Preprocessing as DINO was evaluated (method.md §4): resize the shorter side to 256, centre-crop 224 (a crop
    of 224/256 of the shorter side, then resized to the model's input size), ImageNet mean and std.
    """

    name = "dino"
    crop = 224 / 256

    def __init__(self, path: str | None = None, batch_size: int = 32):
        location = _location(path, "FASTGDA_DINO_PATH", "facebook/dino-vitb16")
        model = _load("AutoModel", location)
        super().__init__(model, location, int(model.config.hidden_size), batch_size)

    def pool(self, outputs) -> torch.Tensor:
        return outputs.last_hidden_state[:, 0]


@register("clip_image")
class CLIPImageEncoder(_HFImageEncoder):
    """CLIP vision tower with its projection (``image_embeds``).

    CLIP's preprocessing: resize the shorter side to the input size (bicubic), centre-crop the square, CLIP's
    mean and std.
    """

    name = "clip_image"
    mean, std = CLIP_MEAN, CLIP_STD

    def __init__(self, path: str | None = None, batch_size: int = 32):
        location = _location(path, "FASTGDA_CLIP_PATH", "openai/clip-vit-base-patch32")
        model = _load("CLIPVisionModelWithProjection", location)
        super().__init__(model, location, int(model.config.projection_dim), batch_size)

    def pool(self, outputs) -> torch.Tensor:
        return outputs.image_embeds


@register("clip_text")
class CLIPTextEncoder(Encoder):
    """CLIP text tower with its projection (``text_embeds``), the paper's text feature."""

    name = "clip_text"
    modality = "text"

    def __init__(self, path: str | None = None, batch_size: int = 256):
        self.location = _location(path, "FASTGDA_CLIP_PATH", "openai/clip-vit-base-patch32")
        transformers = require("transformers", extra="encoders")
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.location)
        except OSError as exc:
            raise FastGDAError(
                f"cannot load the CLIP tokenizer from {self.location!r} ({exc})"
            ) from exc
        self.model = _load("CLIPTextModelWithProjection", self.location)
        self.dim = int(self.model.config.projection_dim)
        self.max_tokens = int(self.model.config.max_position_embeddings)
        self.batch_size = batch_size

    @torch.no_grad()
    def encode(self, batch) -> np.ndarray:
        texts = as_text_batch(batch)
        out = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(
                texts[i : i + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            )
            out.append(
                self.model(
                    input_ids=tokens["input_ids"].to(self.device),
                    attention_mask=tokens["attention_mask"].to(self.device),
                )
                .text_embeds.float()
                .cpu()
            )
        return (
            torch.cat(out).numpy().astype(np.float32)
            if out
            else np.zeros((0, self.dim), np.float32)
        )

    def config(self) -> dict:
        return super().config() | {"location": self.location}
