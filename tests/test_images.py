"""Images of any size and mode: decoded upright as 8-bit RGB, squared per model, read side by side."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from _mixed_images import VARIANTS, stored_bytes, write_mixed_folder
from fastgda import DatasetError, FastGDAError
from fastgda.data import ImageCaptionFolder, read_rgb
from fastgda.images import array_to_rgb, map_images, square, to_rgb


def _decoded(picture: Image.Image, mode: str, kind: str) -> np.ndarray:
    with Image.open(io.BytesIO(stored_bytes(picture, mode, kind))) as image:
        return to_rgb(image)


@pytest.fixture
def picture():
    """A 30 x 20 RGB picture: a red left half, a blue right half."""
    array = np.zeros((20, 30, 3), np.uint8)
    array[:, :15] = (200, 30, 30)
    array[:, 15:] = (30, 30, 200)
    return Image.fromarray(array)


def test_every_mode_decodes_to_upright_8_bit_rgb(picture):
    for _, mode, kind in VARIANTS:
        rgb = _decoded(picture, mode, kind)
        assert rgb.dtype == np.uint8 and rgb.shape == (20, 30, 3), (mode, kind)
    # Transparency is composited on white: the stored transparent band reads as white.
    rgba = _decoded(picture, "RGBA", "PNG")
    assert (rgba[:4] == 255).all() and (rgba[4:, :15] == (200, 30, 30)).all()
    assert (_decoded(picture, "LA", "PNG")[:4] == 255).all()
    # 16 bits keep their top 8: a 16-bit gray of v * 257 reads as v.
    gray = np.asarray(picture.convert("L"))
    np.testing.assert_array_equal(_decoded(picture, "I;16", "PNG")[..., 0], gray)
    # EXIF orientation 6: stored sideways (20 x 30), shown upright (30 x 20) with red on the left.
    upright = _decoded(picture, "RGB", "EXIF")
    assert upright[:, :10, 0].mean() > 150 and upright[:, -10:, 2].mean() > 150
    # CMYK JPEGs and palettes come out in their colours (JPEG: within its lossy coding).
    assert np.abs(_decoded(picture, "CMYK", "JPEG")[:, :10].astype(int) - (200, 30, 30)).max() < 40
    palette = picture.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    palette.info["transparency"] = palette.getpixel((0, 0))  # the red entry is transparent: white
    assert (to_rgb(palette)[:, :10] == 255).all()


def test_16_bit_float_and_odd_arrays_are_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 12, dtype=np.uint16).reshape(3, 4)
    assert array_to_rgb(ramp).max() == 255 and array_to_rgb(ramp).min() == 0
    np.testing.assert_array_equal(array_to_rgb(ramp)[..., 0], np.round(ramp / 257))
    unit = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    assert array_to_rgb(unit)[-1, -1, 0] == 255 and array_to_rgb(unit)[0, 0, 0] == 0
    assert to_rgb(Image.fromarray(unit * 255, "F")).shape == (3, 4, 3)
    rgba = np.zeros((2, 2, 4), np.uint8)  # fully transparent black: white
    assert (array_to_rgb(rgba) == 255).all()
    assert array_to_rgb(np.zeros((5, 6, 1), np.uint8)).shape == (5, 6, 3)
    with pytest.raises(ValueError, match=r"got shape \(5, 6, 2\)"):
        array_to_rgb(np.zeros((5, 6, 2), np.uint8))


def test_square_takes_the_centred_square_and_leaves_square_images_as_a_plain_resize():
    tall = np.zeros((80, 40, 3), np.uint8)
    tall[:20], tall[20:60], tall[60:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    centre = square(tall, 16)
    assert (
        centre.shape == (16, 16, 3) and (centre[..., 1] == 255).all() and centre[..., 0].max() == 0
    )
    wide = square(np.ascontiguousarray(tall.transpose(1, 0, 2)), 16)
    assert (wide[..., 1] == 255).all()
    # DINO's 224/256: the central 7/8 of the shorter side.
    ring = np.zeros((64, 64, 3), np.uint8)
    ring[:4], ring[-4:], ring[:, :4], ring[:, -4:] = 255, 255, 255, 255
    assert square(ring, 32, crop=224 / 256).max() == 0 and square(ring, 32).max() > 0
    # A square image is resized whole, bit for bit as before (features of square worlds do not move).
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    plain = np.asarray(Image.fromarray(image).resize((12, 12), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(square(image, 12), plain)
    assert square(image, 20) is image
    with pytest.raises(ValueError, match="crop"):
        square(image, 8, crop=0)


def test_a_mixed_folder_reads_side_by_side_and_squares_to_one_batch(small_world, tmp_path):
    folder = ImageCaptionFolder(write_mixed_folder(tmp_path / "mixed", small_world, 20))
    images = folder.read_images()
    shapes = {image.shape for image in images}
    assert len(shapes) == len(VARIANTS) and all(s[2] == 3 for s in shapes)
    assert images[7].shape == (90, 50, 3)  # the EXIF row, upright
    with pytest.raises(DatasetError, match=r"pass size= to square them.*read_images"):
        folder.load_images()
    batch = folder.load_images(range(20), size=16)
    assert batch.shape == (20, 16, 16, 3) and batch.dtype == np.uint8
    folder.validate()
    # The threads keep the order and pass on the first error, naming the file.
    assert map_images(lambda i: i * i, range(50), threads=4) == [i * i for i in range(50)]
    (tmp_path / "mixed" / "images" / "0003.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="0003.png is corrupt"):
        folder.read_images()
    with pytest.raises(DatasetError, match="0003.png is corrupt"):
        folder.validate()


def test_embed_reads_a_folder_of_mixed_sizes_and_modes(small_world, tmp_path, capsys):
    """The issue's case: four PNGs of four sizes, then every variant, embedded with a real image encoder."""
    from fastgda.cli import main
    from fastgda.features import Features

    root = tmp_path / "mixed"
    (root / "images").mkdir(parents=True)
    lines = []
    for i, (width, height) in enumerate([(64, 48), (40, 80), (32, 32), (100, 60)]):
        Image.fromarray(small_world.load_image(i)).resize((width, height)).save(
            root / f"images/{i}.png"
        )
        lines.append(json.dumps({"file": f"images/{i}.png", "caption": small_world.captions(i)[0]}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    argv = ["embed", "--data", str(root), "--spec", "effnet+minilm", "--out", str(tmp_path / "f")]
    assert main([*argv, "--device", "cpu"]) == 0
    features = Features.load(tmp_path / "f")
    assert features.values.shape == (4, 1280 + 384) and np.isfinite(features.values).all()
    capsys.readouterr()
    write_mixed_folder(tmp_path / "variants", small_world, len(VARIANTS))
    argv = ["embed", "--data", str(tmp_path / "variants"), "--spec", "pixels+minilm"]
    assert main([*argv, "--out", str(tmp_path / "g")]) == 0
    assert Features.load(tmp_path / "g").values.shape == (len(VARIANTS), 768 + 384)


def test_query_images_of_any_mode_and_shape_are_read(tmp_path, picture):
    from fastgda.attributor import load_query_image

    path = tmp_path / "q.png"
    path.write_bytes(stored_bytes(picture, "LA", "PNG"))
    assert load_query_image(path).shape == (20, 30, 3)
    assert load_query_image(picture.convert("CMYK")).shape == (20, 30, 3)
    assert load_query_image(np.zeros((7, 9), np.uint16)).shape == (7, 9, 3)
    with pytest.raises(FastGDAError, match="cannot read the query image"):
        load_query_image(np.zeros((3,), np.uint8))
    assert read_rgb(path).shape == (20, 30, 3)


def test_pages_show_large_photos_as_thumbnails_and_pixel_art_enlarged():
    import base64

    from fastgda.pipeline.html import png_data_uri

    def size_of(uri: str) -> tuple[int, int]:
        return Image.open(io.BytesIO(base64.b64decode(uri.partition(",")[2]))).size

    photo = np.random.default_rng(0).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    assert size_of(png_data_uri(photo, 96)) == (
        96,
        72,
    )  # not a 4000-pixel-wide PNG inlined in a page
    assert size_of(png_data_uri(np.zeros((16, 16, 3), np.uint8), 96)) == (96, 96)
