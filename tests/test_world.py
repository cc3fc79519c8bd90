import json

import numpy as np
import pytest

from fastgda.app.world import WorldSpec, build_world, generate_world, held_out_prompts
from fastgda.app.world.shapes import ALL_COLOURS, ALL_SHAPES, RARE_CONCEPTS, Scene, render_scene


def test_world_is_deterministic_for_a_seed():
    spec = WorldSpec(size=80, seed=3, num_per_concept=5)
    a, b = generate_world(spec), generate_world(spec)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.captions == b.captions and a.concepts == b.concepts
    c = generate_world(WorldSpec(size=80, seed=4, num_per_concept=5))
    assert not np.array_equal(a.images, c.images)


def test_written_worlds_with_one_spec_have_one_content_hash(tmp_path):
    spec = WorldSpec(size=50, seed=2, num_per_concept=4)
    one = build_world(spec, tmp_path / "one")
    two = build_world(spec, tmp_path / "two")
    assert one.content_hash == two.content_hash
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert manifest["kind"] == "dataset" and manifest["content_hash"] == one.content_hash


def test_each_planted_concept_lives_only_in_its_exemplars(small_world):
    rare = set(RARE_CONCEPTS)
    assert set(small_world.concepts) == rare
    for name, ids in small_world.concepts.items():
        assert len(ids) == 4
        for i in ids:
            assert any(name in caption for caption in small_world.captions(i))
    carriers = {i for ids in small_world.concepts.values() for i in ids}
    for i, scene in enumerate(small_world.scenes):
        has_rare = any(o["shape"] in rare or o["colour"] in rare for o in scene["objects"])
        assert has_rare == (i in carriers)


def test_held_out_combinations_never_appear_in_training(small_world):
    held = {Scene.from_json(s).key for s in small_world.meta["held_out"]}
    assert len(held) == 32
    seen = {Scene.from_json(s).key for s in small_world.scenes}
    assert not held & seen
    prompts = held_out_prompts(small_world.root)
    assert len(prompts) == 32 and all(p["prompt"] for p in prompts)


def test_captions_are_two_or_three_paraphrases_naming_colour_and_shape(small_world):
    for i, scene in enumerate(small_world.scenes):
        captions = small_world.captions(i)
        assert 2 <= len(captions) <= 3 and len(set(captions)) == len(captions)
        for caption in captions:
            for obj in scene["objects"]:
                assert obj["colour"] in caption and obj["shape"] in caption


def test_rendered_objects_take_their_colour(rng):
    from fastgda.app.world.shapes import ShapeObject

    for colour, rgb in ALL_COLOURS.items():
        for shape in ALL_SHAPES:
            image = render_scene(
                Scene((ShapeObject(shape, colour, "large", "center"),), "black"), rng
            )
            centre = image[6:10, 6:10].reshape(-1, 3).mean(0)
            # Integer pixels, not float sums: the renderer jitters each colour by up to ±12 per channel and
            # antialiases edges; 40 leaves room for a thin shape's edge inside the centre patch.
            assert np.abs(centre - np.asarray(rgb)).max() < 40, (colour, shape, centre)


def test_the_openmoji_world_renders_each_emoji_with_captions_from_its_annotations(tmp_path):
    """A package in the npm tarball's layout, with two emojis, a skin-tone variant and a missing SVG."""
    import io
    import tarfile

    from fastgda import DatasetError, open_dataset
    from fastgda.app.world.openmoji import build_openmoji_world

    svg = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72"><circle cx="36" cy="36" r="30" fill="{}"/></svg>'
    table = (
        "emoji,hexcode,group,subgroups,annotation,tags,openmoji_tags,skintone\n"
        'x,1F534,symbols,geometric,red circle,"circle, red",,\n'
        'x,1F535,symbols,geometric,blue circle,"blue, circle",,\n'
        "x,1F44B-1F3FB,people,hand,waving hand: light skin tone,wave,,1\n"
        "x,1F4A9,smileys,face,pile of poo,poo,,\n"  # no SVG in the package: skipped
    )
    files = {
        "package/data/openmoji.csv": table.encode(),
        "package/color/svg/1F534.svg": svg.format("#ff0000").encode(),
        "package/color/svg/1F535.svg": svg.format("#0000ff").encode(),
        "package/color/svg/1F44B-1F3FB.svg": svg.format("#f0c0a0").encode(),
    }
    tarball = tmp_path / "openmoji-17.0.0.tgz"
    with tarfile.open(tarball, "w:gz") as archive:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    world = build_openmoji_world(tmp_path / "world", tarball, size=16)
    assert len(world) == 2 and world.captions(0) == (
        "red circle",
        "circle, red",
        "an emoji of red circle",
    )
    image = open_dataset(tmp_path / "world").load_image(1)
    assert (
        image.shape == (16, 16, 3)
        and image[8, 8].tolist()[2] > 200
        and image[0, 0].tolist() == [255] * 3
    )
    assert "CC BY-SA 4.0" in (tmp_path / "world" / "LICENSE.txt").read_text()
    with pytest.raises(DatasetError, match="openmoji.csv"):
        (tmp_path / "empty.tgz").write_bytes(b"")
        with tarfile.open(tmp_path / "empty.tgz", "w:gz"):
            pass
        build_openmoji_world(tmp_path / "none", tmp_path / "empty.tgz")
