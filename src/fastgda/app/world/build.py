"""Write a generated shapes world to disk as a dataset folder with its ground truth and a manifest."""

from __future__ import annotations

import json
import os
from dataclasses import asdict

from PIL import Image

from ..._artifacts import atomic_dir, write_json_atomic, write_manifest
from ...data import CAPTIONS_FILE
from ...progress import bar as progress_bar
from .dataset import ShapesWorld
from .shapes import RARE_CONCEPTS, WorldSpec, generate_world

WORLD_FORMAT_VERSION = 1


def build_world(
    spec: WorldSpec, out_dir: str | os.PathLike, overwrite: bool = False
) -> ShapesWorld:
    """Generate the world for ``spec`` and write it to ``out_dir``.

    Layout: ``images/NNNNNN.png`` (16x16 RGB), ``captions.jsonl`` (file, captions, scene attributes),
    ``concepts.json`` (planted concepts and their exemplar ids), ``world.json`` (spec, vocabularies, held-out
    combinations) and ``manifest.json``. The folder appears only once complete.

    Returns:
        The written world, opened as a dataset.
    """
    world = generate_world(spec)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        lines = []
        for i in progress_bar(range(spec.size), desc="writing world"):
            name = f"images/{i:06d}.png"
            Image.fromarray(world.images[i]).save(tmp / name, optimize=False)
            lines.append(
                json.dumps(
                    {
                        "id": i,
                        "file": name,
                        "captions": world.captions[i],
                        "scene": world.scenes[i].to_json(),
                    }
                )
            )
        (tmp / CAPTIONS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
        concepts = [
            {"name": name, "attribute": kind, "exemplar_ids": world.concepts[name]}
            for name, (kind, _) in RARE_CONCEPTS.items()
        ]
        write_json_atomic(tmp / "concepts.json", {"concepts": concepts})
        write_json_atomic(
            tmp / "world.json",
            {
                "generator": "shapes",
                "spec": asdict(spec),
                "held_out": [s.to_json() for s in world.held_out],
            },
        )
        dataset = ShapesWorld(tmp)
        write_manifest(
            tmp,
            "dataset",
            WORLD_FORMAT_VERSION,
            config={"generator": "shapes", **asdict(spec)},
            shapes={"images": [spec.size, 16, 16, 3]},
            extra={"content_hash": dataset.content_hash},
        )
    return ShapesWorld(out_dir)
