"""Images of any size and mode as the pipeline's uint8 RGB arrays, and squared the way each model reads them.

Real datasets mix sizes, aspect ratios and modes. Every path that reads an image (datasets, query files and
uploads, thumbnails) goes through ``to_rgb``: EXIF orientation applied; transparency composited on white (as the
OpenMoji world was rendered); 16-bit and float images scaled to 8 bits; palette, grayscale, CMYK and YCbCr
converted. A model then takes ``square``: the centred square of a share of the shorter side (``crop``), resized
(bicubic) to its input size. That is the paper's "centre-cropped, resized" for the diffusion model and CLIP's
resize-then-centre-crop at ``crop = 1``, DINO's resize 256 / crop 224 at ``crop = 224/256``. A square image is
resized whole, exactly as a plain resize would: images already square keep the features they always had.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageOps

# Modes that carry transparency of their own; "P", "L" and "RGB" images may carry it as a ``transparency`` key.
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
EXIF_ORIENTATION = 0x0112  # the EXIF tag saying how to turn the stored pixels to show them upright
# Whole-number modes wider than 8 bits: 16-bit PNG/TIFF ("I;16*"), or 32-bit integers holding 16-bit values ("I").
_WIDE_INTEGER_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def to_rgb(image: Image.Image) -> np.ndarray:
    """The image upright, as 8-bit RGB.

    - EXIF orientation (a phone's rotated JPEG) is applied, as every viewer shows it.
    - Transparency (RGBA, LA, PA, a palette's or a colour's ``transparency``) is composited on white.
    - 16-bit images keep their top 8 bits (value / 257, rounded); a 32-bit integer image is read as 16-bit when
      its values exceed 255; a float image is read as [0, 1] when its values do not exceed 1, else as [0, 255].
    - Palette, 1-bit, grayscale, CMYK and YCbCr images are converted by Pillow.

    Returns:
        uint8 array of shape (H, W, 3).

    Raises:
        ValueError: a mode Pillow cannot convert to RGB (e.g. LAB); OSError: pixels that do not decode.
    """
    try:
        # exif_transpose copies even an upright image: ask first, so the common case costs no copy.
        if image.getexif().get(EXIF_ORIENTATION, 1) not in (1, None):
            image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):
        pass  # a broken EXIF block: the pixels are still good, shown as stored
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return np.asarray(image, dtype=np.uint8)  # the common case: one copy, no conversion
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)
    if mode in _WIDE_INTEGER_MODES or mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if mode == "F":
            scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
        else:
            scale = (
                1 / 257 if mode.startswith("I;16") or (values.size and values.max() > 255) else 1.0
            )
        gray = np.clip(np.nan_to_num(values * scale), 0, 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def array_to_rgb(array) -> np.ndarray:
    """An image given as an array, as ``to_rgb`` reads files: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); uint8,
    a wider integer type (16-bit: value / 257) or floats in [0, 1] (else [0, 255]); alpha composited on white.

    Returns:
        uint8 (H, W, 3); the array itself when it already is one.

    Raises:
        ValueError: an array of another shape.
    """
    a = np.asarray(array)
    if a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3:
        return a
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or 0 in a.shape:
        raise ValueError(
            f"an image array is (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got shape {a.shape}"
        )
    if a.dtype != np.uint8:
        values = a.astype(np.float64)
        top = np.nanmax(values) if values.size else 0.0
        if a.dtype == bool:
            values = values * 255
        elif np.issubdtype(a.dtype, np.floating):
            values = values * 255 if top <= 1.0 else values
        elif top > 255:
            values = values / 257
        a = np.clip(np.nan_to_num(values), 0, 255).round().astype(np.uint8)
    if a.ndim == 2:
        return np.repeat(a[..., None], 3, axis=2)
    if a.shape[2] == 4:
        return to_rgb(Image.fromarray(a, "RGBA"))
    return a


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Open an image file and return it as ``to_rgb`` does: uint8 (H, W, 3).

    Raises:
        FileNotFoundError, or OSError / ValueError / SyntaxError from Pillow for a file that is not a readable
        image (callers turn them into their own errors).
    """
    with Image.open(path) as image:
        return to_rgb(image)


def square_box(width: int, height: int, crop: float = 1.0) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) in whole pixels of the centred square whose side is ``crop`` times the shorter
    side (rounded, at least one pixel)."""
    if not 0 < crop <= 1:
        raise ValueError(f"crop must lie in (0, 1], got {crop}")
    side = max(1, round(min(width, height) * crop))
    left, top = (width - side) // 2, (height - side) // 2
    return (left, top, left + side, top + side)


def square(image: np.ndarray, size: int, crop: float = 1.0) -> np.ndarray:
    """The centred square of ``crop`` times the shorter side, cut out, then resized (bicubic, antialiased) to
    size x size: nothing outside the square bleeds in.

    Args:
        image: uint8 (H, W, 3). size: the side of the result. crop: the square's share of the shorter side.

    Returns:
        uint8 (size, size, 3); the image itself when it is already size x size and ``crop`` is 1.
    """
    height, width = image.shape[:2]
    box = square_box(width, height, crop)
    if box == (0, 0, width, height) and height == width == size:
        return image
    picture = Image.fromarray(np.asarray(image))
    if box != (0, 0, width, height):
        picture = picture.crop(box)
    return np.asarray(picture.resize((size, size), Image.Resampling.BICUBIC))


def squares(images: Sequence[np.ndarray], size: int, crop: float = 1.0) -> np.ndarray:
    """``square`` for each image of a batch: uint8 (B, size, size, 3)."""
    if not len(images):
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([square(image, size, crop) for image in images])


def decode_threads() -> int:
    """Threads that decode images side by side: Pillow releases the GIL while it decodes and resizes."""
    return max(1, min(8, os.cpu_count() or 1))


def map_images(
    load: Callable[[int], np.ndarray], indices: Sequence[int], threads: int | None = None
):
    """``[load(i) for i in indices]``, decoded on ``threads`` threads (default ``decode_threads()``), in order.

    The first error raised by ``load`` propagates, naming its file as ``load`` names it.
    """
    indices = list(indices)
    threads = decode_threads() if threads is None else threads
    if threads <= 1 or len(indices) < 2:
        return [load(i) for i in indices]
    with ThreadPoolExecutor(min(threads, len(indices)), thread_name_prefix="decode") as pool:
        return list(pool.map(load, indices))
