"""A captioned folder of real-world-shaped images: mixed sizes, aspect ratios, modes, formats and EXIF rotations.

Each row is a picture of the shapes world (so captions still describe it), padded to another aspect ratio with a
border, resized, and stored the way some real dataset would hand it over.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

# (size (width, height), mode, format): every size an aspect ratio of its own, every mode fastgda must read.
VARIANTS = [
    ((64, 48), "RGB", "PNG"),
    ((40, 80), "RGBA", "PNG"),
    ((32, 32), "P", "GIF"),
    ((100, 60), "L", "PNG"),
    ((48, 72), "I;16", "PNG"),
    ((90, 50), "CMYK", "JPEG"),
    ((60, 36), "LA", "PNG"),
    (
        (50, 90),
        "RGB",
        "EXIF",
    ),  # a JPEG stored sideways with EXIF orientation 6 (rotate 90° clockwise to view)
    ((24, 24), "1", "PNG"),
    ((128, 96), "RGB", "WEBP"),
]
EXTENSION = {"PNG": ".png", "GIF": ".gif", "JPEG": ".jpg", "EXIF": ".jpg", "WEBP": ".webp"}


def _picture(image: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """``image`` (uint8 (h, w, 3)) padded with a grey border to the aspect ratio of ``size`` and resized to it."""
    width, height = size
    h, w = image.shape[:2]
    if width / height > w / h:
        canvas = np.full((h, round(h * width / height), 3), 128, np.uint8)
    else:
        canvas = np.full((round(w * height / width), w, 3), 128, np.uint8)
    top, left = (canvas.shape[0] - h) // 2, (canvas.shape[1] - w) // 2
    canvas[top : top + h, left : left + w] = image
    return Image.fromarray(canvas).resize(size, Image.Resampling.BICUBIC)


def stored_bytes(picture: Image.Image, mode: str, kind: str) -> bytes:
    """``picture`` (RGB) converted to ``mode`` and encoded as ``kind``."""
    buffer = io.BytesIO()
    if kind == "EXIF":
        sideways = picture.transpose(
            Image.Transpose.ROTATE_90
        )  # stored turned left: viewers turn it back
        exif = Image.Exif()
        exif[0x0112] = 6
        sideways.save(buffer, "JPEG", quality=95, exif=exif)
        return buffer.getvalue()
    if mode == "I;16":
        gray = np.asarray(picture.convert("L"), np.uint16) * 257  # 8 bits spread over 16
        Image.fromarray(gray).save(buffer, "PNG")  # uint16: mode I;16
        return buffer.getvalue()
    converted = picture.convert(mode)
    if mode in ("RGBA", "LA"):
        alpha = np.full(picture.size[::-1], 255, np.uint8)
        alpha[:4] = 0  # a transparent top band: composited on white
        converted.putalpha(Image.fromarray(alpha))
    if mode == "P":
        converted = picture.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    converted.save(buffer, kind, **({"quality": 95} if kind in ("JPEG", "WEBP") else {}))
    return buffer.getvalue()


def write_mixed_folder(root: Path, source, count: int | None = None) -> Path:
    """Write ``count`` rows of ``source`` (an image-caption dataset) as mixed images with ``captions.jsonl``."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(len(source) if count is None else count):
        size, mode, kind = VARIANTS[i % len(VARIANTS)]
        name = f"images/{i:04d}{EXTENSION[kind]}"
        (root / name).write_bytes(stored_bytes(_picture(source.load_image(i), size), mode, kind))
        lines.append(json.dumps({"file": name, "captions": list(source.captions(i))}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root
