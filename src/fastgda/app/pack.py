"""The shipped world pack: the tiny model and attribute probe trained on the standard shapes world.

The world itself is not shipped: it is regenerated from its spec (N=2000, seed 0) in about a second and checked
against the content hash the model was trained on. ``pack.json`` records the commands, seeds and figures.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import IncompatibleArtifactError
from .world.dataset import ShapesWorld

PACK_DIR = Path(__file__).parent / "packs" / "shapes2000"


def pack_info() -> dict:
    """The pack's ``pack.json``: world spec, data hash, the commands that built it, measured figures."""
    path = PACK_DIR / "pack.json"
    if not path.is_file():
        raise IncompatibleArtifactError(
            f"the shipped world pack is missing ({path}); reinstall fastgda or rebuild it with "
            "`fastgda demo --profile full`"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def model_dir() -> Path:
    """Folder of the shipped tiny16 model (a fastgda model artifact)."""
    return PACK_DIR / "model"


def probe_dir() -> Path:
    """Folder of the shipped attribute probe."""
    return PACK_DIR / "probe"


def ensure_world(out_dir: str | os.PathLike) -> ShapesWorld:
    """Open the standard world at ``out_dir``, generating it first if absent, and check its content hash.

    Raises:
        IncompatibleArtifactError: the world there differs from the one the shipped model was trained on.
    """
    from .world import WorldSpec, build_world

    info = pack_info()
    out_dir = Path(out_dir)
    world = (
        ShapesWorld(out_dir)
        if out_dir.exists()
        else build_world(WorldSpec(**info["world"]["spec"]), out_dir)
    )
    if world.content_hash != info["world"]["content_hash"]:
        raise IncompatibleArtifactError(
            f"the world at {out_dir} has content hash {world.content_hash[:12]}…, the shipped model was trained on "
            f"{info['world']['content_hash'][:12]}…; delete {out_dir} to regenerate it, or retrain with "
            "`fastgda demo --profile full`"
        )
    return world
