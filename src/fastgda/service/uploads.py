"""Decoding untrusted query images: verified, bounded, and failing with the right HTTP status.

A client's bytes are never trusted: the format must be one we accept (else 415), the declared size must be
within the pixel budget before any pixel is decoded (decompression bombs, else 422), and the whole image must
decode (truncated files, else 422).
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..images import to_rgb

ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF"})


class UploadError(Exception):
    """A rejected upload; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Read an uploaded image's header only (no pixels decoded yet): its format and declared size are checked.

    Raises:
        UploadError: 415 for bytes that are not an accepted image format, 422 for an empty, unreadable or
            oversized (declared width x height above ``max_pixels``) image.
    """
    if not data:
        raise UploadError(422, "the image is empty")
    with warnings.catch_warnings():
        # PIL warns, then raises, above its own global limit; ours is checked explicitly below.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise UploadError(
                415, f"not an image; send one of {', '.join(sorted(ACCEPTED_FORMATS))}"
            ) from None
        except Image.DecompressionBombError:
            raise UploadError(422, f"the image declares more than {max_pixels} pixels") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise UploadError(422, one_line(f"cannot read the image: {exc}")) from None
    if image.format not in ACCEPTED_FORMATS:
        raise UploadError(
            415,
            f"{image.format} images are not accepted; send one of {', '.join(sorted(ACCEPTED_FORMATS))}",
        )
    width, height = image.size
    if width < 1 or height < 1 or width * height > max_pixels:
        raise UploadError(
            422,
            f"the image declares {width}x{height} pixels; the limit is {max_pixels} pixels in all",
        )
    return image


def load_rgb(image: Image.Image) -> np.ndarray:
    """Decode an image from ``open_image`` to upright uint8 RGB (H, W, 3) (``fastgda.images.to_rgb``: any mode,
    EXIF rotation, alpha on white); 422 if it is truncated or corrupt."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image.load()
            # One copy, not two, for the common RGB upload: it converts to the array directly (a PIL RGB image
            # holds 4 bytes a pixel, the array 3), so a large upload's peak stays near 7 bytes a pixel.
            return to_rgb(image)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise UploadError(422, one_line(f"the image is truncated or corrupt: {exc}")) from None


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode an uploaded image to uint8 RGB (H, W, 3) (``open_image``, then ``load_rgb``)."""
    return load_rgb(open_image(data, max_pixels))


def base64_bytes(text: str) -> bytes:
    """The bytes of a base64 image field: a ``data:image/...;base64,`` URI or plain base64, line-wrapped or
    not (GNU ``base64`` wraps at 76 columns)."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise UploadError(422, "the image field is not valid base64") from None


def decode_base64_image(text: str, max_pixels: int) -> np.ndarray:
    """Decode a base64 image like ``decode_image``."""
    return decode_image(base64_bytes(text), max_pixels)


def one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, at most ``limit`` characters: error bodies stay small whatever the input was."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def encode_png(image: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def thumbnail_png(path: str, size: int) -> bytes:
    """The image at a server-side path as a PNG whose longer side is ``size`` (pixel art stays crisp)."""
    with Image.open(path) as opened:
        image = Image.fromarray(to_rgb(opened))
        scale = size / max(image.size)
        target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        # Upscaling tiny 16x16 samples: nearest keeps their pixels visible instead of a blur.
        resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
        buffer = io.BytesIO()
        image.resize(target, resample).save(buffer, format="PNG")
    return buffer.getvalue()
