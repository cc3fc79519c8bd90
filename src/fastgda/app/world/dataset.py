"""The shapes world as a dataset: an image folder with captions, plus the truth its generator recorded."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ...data import ImageCaptionFolder, read_planted_concepts
from ...errors import DatasetError


class ShapesWorld(ImageCaptionFolder):
    """The built-in shapes world as written by ``fastgda world shapes``: a folder dataset plus its truth.

    Attributes:
        concepts: planted rare concept name -> list of exemplar ids (``concepts.json``).
        scenes: per row, the attribute dict it was drawn from.
        meta: the contents of ``world.json`` (spec, held-out combinations).
    """

    kind = "shapes_world"

    def __init__(self, root: str | os.PathLike):
        super().__init__(root)
        root = Path(root)
        try:
            self.meta = json.loads((root / "world.json").read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise DatasetError(
                f"{root} is not a shapes world ({exc.filename} is missing); build one with "
                "`fastgda world shapes --out DIR`"
            ) from exc
        concepts = read_planted_concepts(root)
        if concepts is None:
            raise DatasetError(
                f"{root} is not a shapes world (concepts.json is missing); build one with "
                "`fastgda world shapes --out DIR`"
            )
        self.concepts = concepts
        self.scenes = [r["scene"] for r in self.records]
