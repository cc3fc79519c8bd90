"""Pictures people look at: a grid of generated images with their prompts underneath."""

from __future__ import annotations

import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def image_grid(
    images: np.ndarray, labels: list[str], columns: int = 6, scale: int = 8, label_lines: int = 4
) -> Image.Image:
    """Lay out uint8 images (B, H, W, 3), upscaled by ``scale`` (nearest), each above its wrapped label."""
    font = ImageFont.load_default()
    height, width = images.shape[1] * scale, images.shape[2] * scale
    cell_w = max(width, 150)
    text_h = 12 * label_lines + 6
    rows = -(-len(images) // columns)
    grid = Image.new(
        "RGB", (columns * (cell_w + 8) + 8, rows * (height + text_h + 8) + 8), (250, 250, 250)
    )
    draw = ImageDraw.Draw(grid)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        x = 8 + (i % columns) * (cell_w + 8)
        y = 8 + (i // columns) * (height + text_h + 8)
        big = Image.fromarray(image).resize((width, height), Image.Resampling.NEAREST)
        grid.paste(big, (x + (cell_w - width) // 2, y))
        wrapped = textwrap.wrap(label, width=cell_w // 6)[:label_lines]
        for j, line in enumerate(wrapped):
            draw.text((x, y + height + 3 + 12 * j), line, fill=(20, 20, 20), font=font)
    return grid
