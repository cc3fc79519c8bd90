"""An attribute probe: a small CNN that reads colour, shape, size, position and background off a 16x16 image.

It proves the world's attributes are recognisable at 16x16 (>= 95% on held-out real images) and scores prompt
adherence of generated images. It is trained on freshly rendered single-object scenes, uniform over every
attribute value (rare ones included), and saved as safetensors with a manifest.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..._artifacts import atomic_dir, read_manifest, verify_checksums, write_manifest
from ...progress import bar as progress_bar
from .shapes import (
    ALL_COLOURS,
    ALL_SHAPES,
    BACKGROUNDS,
    POSITIONS,
    SIZES,
    Scene,
    ShapeObject,
    render_scene,
)

PROBE_KIND = "attribute_probe"
PROBE_FORMAT_VERSION = 1
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": tuple(ALL_COLOURS),
    "shape": ALL_SHAPES,
    "size": SIZES,
    "position": POSITIONS,
    "background": tuple(BACKGROUNDS),
}


class AttributeProbe(nn.Module):
    """CNN over (B, 3, 16, 16) images in [-1, 1] with one classification head per attribute."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),  # 8x8
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),  # 4x4
            nn.Flatten(),
            nn.Linear(2 * width * 16, 128),
            nn.ReLU(),
        )
        self.heads = nn.ModuleDict(
            {name: nn.Linear(128, len(values)) for name, values in ATTRIBUTES.items()}
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute: name -> (B, num_values)."""
        h = self.body(x)
        return {name: head(h) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> dict[str, list[str]]:
        """Predicted attribute names for uint8 images (B, 16, 16, 3)."""
        self.eval()
        x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        logits = self(x)
        return {
            name: [ATTRIBUTES[name][i] for i in out.argmax(1).tolist()]
            for name, out in logits.items()
        }

    def save(
        self, out_dir: str | os.PathLike, extra: dict | None = None, overwrite: bool = False
    ) -> None:
        """Write ``probe.safetensors`` and a manifest, atomically."""
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            save_file(
                {k: v.contiguous() for k, v in self.state_dict().items()}, tmp / "probe.safetensors"
            )
            write_manifest(
                tmp,
                PROBE_KIND,
                PROBE_FORMAT_VERSION,
                config={"attributes": ATTRIBUTES},
                extra=extra,
            )

    @classmethod
    def load(cls, probe_dir: str | os.PathLike) -> AttributeProbe:
        """Load a saved probe (manifest and checksums checked)."""
        manifest = read_manifest(probe_dir, PROBE_KIND, PROBE_FORMAT_VERSION)
        verify_checksums(probe_dir, manifest)
        probe = cls()
        probe.load_state_dict(load_file(Path(probe_dir) / "probe.safetensors"))
        return probe.eval()


def scene_labels(scene: Scene | dict) -> dict[str, str]:
    """Attribute values of a single-object scene."""
    if isinstance(scene, dict):
        scene = Scene.from_json(scene)
    (obj,) = scene.objects
    return {
        "colour": obj.colour,
        "shape": obj.shape,
        "size": obj.size,
        "position": obj.position,
        "background": scene.background,
    }


def render_probe_set(num: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render ``num`` single-object scenes uniform over every attribute value.

    Returns:
        images uint8 (num, 16, 16, 3) and labels name -> int64 (num,).
    """
    rng = np.random.default_rng([seed, 0x9B0BE])
    images, labels = [], {name: [] for name in ATTRIBUTES}
    for _ in range(num):
        values = {name: str(rng.choice(vals)) for name, vals in ATTRIBUTES.items()}
        scene = Scene(
            (ShapeObject(values["shape"], values["colour"], values["size"], values["position"]),),
            values["background"],
        )
        images.append(render_scene(scene, rng))
        for name in ATTRIBUTES:
            labels[name].append(ATTRIBUTES[name].index(values[name]))
    return np.stack(images), {k: np.asarray(v, dtype=np.int64) for k, v in labels.items()}


def train_probe(num_images: int = 6000, epochs: int = 12, seed: int = 0) -> AttributeProbe:
    """Train a probe on freshly rendered scenes (Adam, batch 128)."""
    torch.manual_seed(seed)
    images, labels = render_probe_set(num_images, seed)
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = {k: torch.as_tensor(v) for k, v in labels.items()}
    probe = AttributeProbe()
    optimizer = torch.optim.Adam(probe.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in progress_bar(range(epochs), desc="training probe"):
        probe.train()
        for idx in torch.randperm(len(x), generator=gen).split(128):
            logits = probe(x[idx])
            loss = sum(nn.functional.cross_entropy(logits[k], y[k][idx]) for k in ATTRIBUTES)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return probe.eval()


def probe_accuracy(probe: AttributeProbe, images: np.ndarray, scenes: list) -> dict[str, float]:
    """Per-attribute accuracy of ``probe`` on single-object images (B, 16, 16, 3) with their scenes."""
    predicted = probe.predict(images)
    truth = [scene_labels(s) for s in scenes]
    return {
        name: float(np.mean([p == t[name] for p, t in zip(predicted[name], truth, strict=True)]))
        for name in ATTRIBUTES
    }
