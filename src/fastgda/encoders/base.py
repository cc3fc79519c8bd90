"""The frozen-encoder interface and the registry behind feature spec strings such as ``effnet+minilm``.

An encoder maps a batch of images (uint8 (B, H, W, 3)) or texts to float32 (B, dim) features. A feature spec
joins encoders with ``+``; the feature of an item is the raw concatenation of its parts (method.md §5), image
parts reading the image and text parts reading the caption (training items) or prompt (queries).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import FastGDAError


class Encoder(ABC):
    """A frozen feature extractor for one modality."""

    name: str = ""
    modality: str = ""  # "image" or "text"
    dim: int = 0

    device = "cpu"  # where ``model`` runs; inputs are prepared on the host and moved

    @abstractmethod
    def encode(self, batch: Sequence) -> np.ndarray:
        """Encode images (uint8 (B, H, W, 3) array or list of them) or strings: float32 (B, dim)."""

    def to(self, device) -> Encoder:
        """Run on ``device`` (a torch device or its name). Loaded weights are cached and shared: each device
        gets its own copy, so moving one encoder never moves another that shares its weights. Returns ``self``."""
        model = getattr(self, "model", None)
        if model is not None:
            self.model = _on_device(model, str(device))
        self.device = str(device)
        return self

    def config(self) -> dict:
        """What identifies this encoder's output in a features manifest."""
        return {"name": self.name, "modality": self.modality, "dim": self.dim}

    def onnx_session(self, threads: int = 1):
        """This encoder's network under ONNX Runtime (``fastgda.encoders.runtime``), or None where it has no
        network to export (``encode_onnx`` then is ``encode``)."""
        return None

    def encode_onnx(self, batch: Sequence, session) -> np.ndarray:
        """``encode`` with the network run by ``session`` (same preprocessing, same output)."""
        return self.encode(batch)

    def weights_key(self) -> str:
        """A digest of the network's weights: part of the name of its cached ONNX export."""
        import hashlib

        import torch

        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(
                tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
            )
        return digest.hexdigest()[:16]


_REGISTRY: dict[str, Callable[..., Encoder]] = {}


@functools.lru_cache(maxsize=8)
def _on_device(module, device: str):
    """``module`` itself on the CPU, else one cached copy of it on ``device``."""
    import copy

    import torch

    if torch.device(device).type == "cpu":
        return module
    return copy.deepcopy(module).to(device)


def register(name: str):
    """Class decorator: make an encoder constructible by name in feature specs."""

    def decorate(factory):
        _REGISTRY[name] = factory
        return factory

    return decorate


def encoder_names() -> list[str]:
    from . import hf, image, text  # noqa: F401  (importing registers the built-in encoders)

    return sorted(_REGISTRY)


def make_encoder(name: str, **options) -> Encoder:
    """Build a registered encoder; unknown names fail listing the known ones."""
    known = encoder_names()
    if name not in _REGISTRY:
        raise FastGDAError(f"unknown encoder {name!r}; known encoders: {', '.join(known)}")
    return _REGISTRY[name](**options)


@dataclass(frozen=True)
class FeatureSpec:
    """Encoder names joined by '+', e.g. ``effnet+minilm``; the order fixes the feature layout."""

    names: tuple[str, ...]

    @classmethod
    def parse(cls, spec: str) -> FeatureSpec:
        names = tuple(part.strip() for part in spec.split("+"))
        if not spec.strip() or any(not n for n in names):
            raise FastGDAError(f"feature spec {spec!r} is empty; write encoder names joined by '+'")
        known = encoder_names()
        unknown = [n for n in names if n not in known]
        if unknown:
            raise FastGDAError(
                f"feature spec {spec!r} names unknown encoders {unknown}; known: {', '.join(known)}"
            )
        if len(set(names)) != len(names):
            raise FastGDAError(f"feature spec {spec!r} repeats an encoder")
        return cls(names)

    def __str__(self) -> str:
        return "+".join(self.names)
