import json

import numpy as np

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
    one = build_world(spec, tmp_path / "one", progress=False)
    two = build_world(spec, tmp_path / "two", progress=False)
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
            assert np.abs(centre - np.asarray(rgb)).max() < 40, (colour, shape, centre)
