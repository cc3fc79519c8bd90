import json

import numpy as np
import pytest
from PIL import Image

from fastgda import CocoCaptions, DatasetError, ImageCaptionFolder, open_dataset
from fastgda.app.world import ShapesWorld
from fastgda.data import read_planted_concepts


def test_folder_reads_rows_in_order_with_all_captions(image_caption_dir):
    data = ImageCaptionFolder(image_caption_dir)
    assert len(data) == 8
    np.testing.assert_array_equal(data.ids, np.arange(8))
    assert data.captions(3) == ("image 3", "picture number 3")
    assert data.load_image(0).shape == (8, 8, 3) and data.load_image(0).dtype == np.uint8
    assert data.load_images([0, 1], size=16).shape == (2, 16, 16, 3)


def test_content_hash_changes_when_a_caption_changes(image_caption_dir):
    before = ImageCaptionFolder(image_caption_dir).content_hash
    path = image_caption_dir / "captions.jsonl"
    path.write_text(path.read_text().replace("image 5", "image five"))
    assert ImageCaptionFolder(image_caption_dir).content_hash != before


def test_missing_image_is_named(image_caption_dir):
    (image_caption_dir / "images" / "4.png").unlink()
    with pytest.raises(DatasetError, match=r"4\.png"):
        ImageCaptionFolder(image_caption_dir)


def test_corrupt_image_is_named_when_loaded(image_caption_dir):
    (image_caption_dir / "images" / "2.png").write_bytes(b"not a png at all")
    data = ImageCaptionFolder(image_caption_dir)
    with pytest.raises(DatasetError, match=r"2\.png.*corrupt"):
        data.load_image(2)
    with pytest.raises(DatasetError, match=r"2\.png"):
        data.validate()


@pytest.mark.parametrize("captions", [[], [""], ["   "], "", None])
def test_empty_captions_are_rejected_with_file_and_line(image_caption_dir, captions):
    path = image_caption_dir / "captions.jsonl"
    lines = path.read_text().splitlines()
    lines[6] = json.dumps({"file": "images/6.png", "captions": captions})
    path.write_text("\n".join(lines))
    with pytest.raises(DatasetError, match=r"captions\.jsonl:7.*6\.png"):
        ImageCaptionFolder(image_caption_dir)


def test_duplicate_ids_are_rejected(image_caption_dir):
    path = image_caption_dir / "captions.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for record in lines:
        record["id"] = (
            "same" if record["file"] in ("images/1.png", "images/5.png") else record["file"]
        )
    path.write_text("\n".join(json.dumps(r) for r in lines))
    with pytest.raises(DatasetError, match="duplicate id 'same' at rows 1 and 5"):
        ImageCaptionFolder(image_caption_dir)


def test_folder_without_index_says_what_it_expected(tmp_path):
    with pytest.raises(DatasetError, match="captions.jsonl"):
        ImageCaptionFolder(tmp_path)
    with pytest.raises(DatasetError, match="not a dataset"):
        open_dataset(tmp_path)


def _coco(tmp_path, images, annotations):
    (tmp_path / "annotations").mkdir(parents=True)
    (tmp_path / "train2017").mkdir()
    for img in images:
        Image.new("RGB", (4, 4), (10, 20, 30)).save(tmp_path / "train2017" / img["file_name"])
    path = tmp_path / "annotations" / "captions_train2017.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def test_coco_reader_groups_captions_by_image(tmp_path):
    images = [{"id": 42, "file_name": "a.jpg"}, {"id": 7, "file_name": "b.jpg"}]
    anns = [
        {"image_id": 7, "caption": "b one"},
        {"image_id": 42, "caption": "a one"},
        {"image_id": 42, "caption": "a two"},
    ]
    data = CocoCaptions(_coco(tmp_path, images, anns))
    assert len(data) == 2 and data.keys == ["42", "7"]
    assert data.captions(0) == ("a one", "a two") and data.captions(1) == ("b one",)
    assert isinstance(
        open_dataset(tmp_path / "annotations" / "captions_train2017.json"), CocoCaptions
    )


def test_coco_reader_rejects_duplicate_ids_and_uncaptioned_images(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}]
    anns = [{"image_id": 1, "caption": "x"}]
    with pytest.raises(DatasetError, match="duplicate id '1'"):
        CocoCaptions(_coco(tmp_path / "dup", images, anns))
    images = [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}]
    with pytest.raises(DatasetError, match=r"image id 2, b\.jpg"):
        CocoCaptions(_coco(tmp_path / "nocap", images, anns))


def test_a_shapes_world_is_an_image_folder_with_planted_concepts(small_world, tmp_path):
    """The library reads the world as any captioned folder; its planted exemplars are a generic file any data
    set may carry, and the world's own truth (scenes, held-out combinations) is the app's ``ShapesWorld``."""
    data = open_dataset(small_world.root)
    assert type(data) is ImageCaptionFolder and len(data) == 60
    assert data.load_image(0).shape == (16, 16, 3)
    planted = read_planted_concepts(small_world.root)
    assert planted == small_world.concepts and all(len(ids) == 4 for ids in planted.values())
    world = ShapesWorld(small_world.root)
    assert len(world.scenes) == 60 and world.meta["held_out"]
    assert read_planted_concepts(tmp_path) is None
    (tmp_path / "concepts.json").write_text('{"concepts": [{"name": "x"}]}')
    with pytest.raises(DatasetError, match="not a list of planted concepts"):
        read_planted_concepts(tmp_path)


def test_the_content_hash_is_remembered_under_a_cheap_key_and_what_that_key_misses(
    image_caption_dir,
):
    """The full hash reads every image once; later datasets over the unchanged folder get it from fastgda's cache
    by captions, paths, sizes and modification times. An edit that keeps an image's size and its old
    modification time is what that key misses (documented); ``verify_content_hash`` reads every byte again."""
    import os

    first = ImageCaptionFolder(image_caption_dir)
    remembered = first.content_hash
    assert remembered == first.verify_content_hash()
    image = first.image_path(0)
    data, stat = image.read_bytes(), image.stat()
    # Same size, other bytes, the old modification time put back: the key cannot see it.
    image.write_bytes(bytes(len(data)))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = ImageCaptionFolder(image_caption_dir)
    assert again.content_hash == remembered  # remembered, so no image was read
    assert again.verify_content_hash() != remembered  # every byte read: the edit shows
    # An ordinary edit moves the modification time: the key changes and the hash is recomputed.
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert ImageCaptionFolder(image_caption_dir).content_hash == again.verify_content_hash()
