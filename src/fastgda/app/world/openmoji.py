"""A real-image development world: the OpenMoji emoji set, rendered small, captioned from its annotations.

The npm package ``openmoji`` (CC BY-SA 4.0: not shipped with fastgda, fetched at set-up time with ``npm pack``)
holds one colour SVG per emoji and ``data/openmoji.csv`` with each emoji's annotation and tags. Each emoji (skin
tone variants left out, so that near-copies do not crowd the pools) becomes a ``size``-pixel RGB image on white,
and gets three captions: its annotation, its tags, and "an emoji of <annotation>" (last: the caption
``fastgda build --train-model`` holds out as a query prompt reads like a prompt). The result is an ordinary
image folder with ``captions.jsonl`` (row order: the package's own order), plus ``LICENSE.txt`` and a manifest.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import tarfile
import tempfile
from pathlib import Path

from PIL import Image

from ..._artifacts import atomic_dir, write_manifest
from ..._optional import require
from ...data import CAPTIONS_FILE, ImageCaptionFolder
from ...errors import DatasetError

OPENMOJI_PACKAGE = "openmoji@17.0.0"
OPENMOJI_KIND = "openmoji_world"
OPENMOJI_FORMAT_VERSION = 1
ATTRIBUTION = (
    "Emoji images: OpenMoji (https://openmoji.org), the open-source emoji and icon project, licensed under "
    "CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/). Rendered small and captioned by fastgda."
)


def fetch_openmoji(folder: str | os.PathLike) -> Path:
    """Download the package's tarball from the npm registry into ``folder`` (``npm pack``); returns its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["npm", "pack", OPENMOJI_PACKAGE, "--silent"], cwd=folder, capture_output=True, text=True,
            timeout=900, check=False,
        )  # fmt: skip
    except FileNotFoundError as exc:
        raise DatasetError(
            "npm is needed to fetch the OpenMoji package; install Node.js, or pass --tarball openmoji-*.tgz"
        ) from exc
    name = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if done.returncode != 0 or not (folder / name).is_file():
        raise DatasetError(f"npm pack {OPENMOJI_PACKAGE} failed: {done.stderr.strip()[-300:]}")
    return folder / name


def build_openmoji_world(
    out_dir: str | os.PathLike,
    tarball: str | os.PathLike | None = None,
    size: int = 16,
) -> ImageCaptionFolder:
    """Render the OpenMoji package into an image folder at ``out_dir`` (fetched with npm unless ``tarball``).

    Raises:
        DatasetError: the tarball is not the OpenMoji package, or npm cannot fetch it.
        MissingDependencyError: the SVG renderer (``resvg-py``, extra ``worlds``) is not installed.
    """
    from ...progress import bar as progress_bar

    resvg = require("resvg_py", "worlds")
    with tempfile.TemporaryDirectory() as scratch:
        tarball = Path(tarball) if tarball else fetch_openmoji(scratch)
        try:
            archive = tarfile.open(tarball)
        except (tarfile.TarError, OSError) as exc:
            raise DatasetError(f"{tarball} is not a readable .tgz ({exc})") from exc
        with archive, atomic_dir(out_dir) as tmp:
            rows = _annotations(archive, tarball)
            (tmp / "images").mkdir()
            lines, skipped = [], 0
            for row in progress_bar(rows, desc="rendering OpenMoji"):
                member = _member(archive, f"package/color/svg/{row['hexcode']}.svg")
                if member is None:
                    skipped += 1
                    continue
                svg = archive.extractfile(member).read().decode("utf-8")
                png = bytes(
                    resvg.svg_to_bytes(
                        svg_string=svg, width=4 * size, height=4 * size, background="white"
                    )
                )
                with Image.open(io.BytesIO(png)) as picture:
                    image = picture.convert("RGB").resize((size, size), Image.LANCZOS)
                name = f"images/{row['hexcode']}.png"
                image.save(tmp / name)
                record = {
                    "file": name,
                    "captions": _captions(row),
                    "id": row["hexcode"],
                    "group": row["group"],
                }
                lines.append(json.dumps(record, ensure_ascii=False))
            if not lines:
                raise DatasetError(f"{tarball} holds no colour SVG named in data/openmoji.csv")
            (tmp / CAPTIONS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
            (tmp / "LICENSE.txt").write_text(ATTRIBUTION + "\n", encoding="utf-8")
            write_manifest(
                tmp,
                OPENMOJI_KIND,
                OPENMOJI_FORMAT_VERSION,
                config={"package": OPENMOJI_PACKAGE, "size": size, "skipped": skipped},
                shapes={"images": [len(lines), size, size, 3]},
            )
    return ImageCaptionFolder(out_dir)


def _annotations(archive, tarball) -> list[dict]:
    member = _member(archive, "package/data/openmoji.csv")
    if member is None:
        raise DatasetError(
            f"{tarball} has no package/data/openmoji.csv: is it the openmoji npm package?"
        )
    text = archive.extractfile(member).read().decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    # Skin-tone variants repeat their base emoji with another colour: keep the base ones.
    return [r for r in rows if not r.get("skintone") and r.get("annotation", "").strip()]


def _member(archive, name: str):
    try:
        return archive.getmember(name)
    except KeyError:
        return None


def _captions(row: dict) -> list[str]:
    annotation = row["annotation"].strip()
    tags = ", ".join(t.strip() for t in (row.get("tags") or "").split(",") if t.strip())
    return [annotation, *([tags] if tags else []), f"an emoji of {annotation}"]
