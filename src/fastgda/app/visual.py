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


def png_data_uri(image: np.ndarray, size: int = 96) -> str:
    """A uint8 image (H, W, 3) as an inline PNG data URI about ``size`` pixels wide: small pixel art upscaled
    (nearest, so its pixels stay visible), a photo larger than that shrunk (so a page of them stays small)."""
    import base64
    import io

    picture = Image.fromarray(image)
    if image.shape[1] > size:
        picture.thumbnail(
            (size, size * image.shape[0] // image.shape[1] + 1), Image.Resampling.LANCZOS
        )
        big = picture
    else:
        scale = max(1, size // image.shape[1])
        big = picture.resize(
            (image.shape[1] * scale, image.shape[0] * scale), Image.Resampling.NEAREST
        )
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def attribution_html(
    query_image: np.ndarray, prompt: str, attributions, images: list[np.ndarray]
) -> str:
    """A self-contained page: the query beside its top-k training images with scores, shares and captions."""
    from html import escape

    cards = "".join(
        f'<figure><img src="{png_data_uri(img)}" alt="training image {a.id}">'
        f"<figcaption><b>#{rank} · id {a.id}</b><br>score {a.score:.3f} · share {100 * a.share:.1f}%<br>"
        f"{escape(a.captions[0]) if a.captions else ''}</figcaption></figure>"
        for rank, (a, img) in enumerate(zip(attributions, images, strict=True), start=1)
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>fastgda attribution</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        "figure{display:inline-block;width:150px;margin:0 12px 16px 0;vertical-align:top}"
        "img{image-rendering:pixelated;width:96px;height:96px;border:1px solid #ccc}"
        "figcaption{font-size:12px}.query img{width:160px;height:160px}</style></head><body>"
        f"<h1>Which training images made this?</h1><div class='query'><figure>"
        f"<img src='{png_data_uri(query_image, 160)}' alt='query image'><figcaption><b>query</b><br>"
        f"{escape(prompt)}</figcaption></figure></div><h2>Top {len(attributions)} training images</h2>"
        f"{cards}</body></html>"
    )
