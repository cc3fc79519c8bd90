"""Reference query prompts of a world: disjoint train / validation / test splits for the teacher's ground truth.

Every query describes a scene the model never saw in training, so attributions cannot be read off a duplicate:

- *held-out*: the world's held-out single-object combinations, split by combination (a test combination never
  appears in training or validation queries), each with its three caption paraphrases;
- *planted*: single-object scenes naming a planted rare concept (cross, magenta, cyan), the only queries with a
  known answer (that concept's exemplars);
- *two-object*: random two-object scenes from the common vocabulary.

Half of each split is held-out prompts, a quarter planted, the rest two-object. The same (seed, sizes) give the
same prompts and sampling seeds on every machine.
"""

from __future__ import annotations

import numpy as np

from .shapes import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    RARE_CONCEPTS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    caption_scene,
    sample_scene,
)

SPLITS = ("train", "val", "test")
DEFAULT_SIZES = {"train": 400, "val": 50, "test": 40}
_SEED_BASE = {
    "train": 0,
    "val": 100_000,
    "test": 200_000,
}  # sampling seeds never collide across splits


def _planted_scene(rng: np.random.Generator, concept: str) -> Scene:
    kind, _ = RARE_CONCEPTS[concept]
    obj = ShapeObject(
        concept if kind == "shape" else str(rng.choice(SHAPES)),
        concept if kind == "colour" else str(rng.choice(list(COLOURS))),
        str(rng.choice(SIZES)),
        str(rng.choice(POSITIONS)),
    )
    return Scene((obj,), str(rng.choice(list(BACKGROUNDS))))


def reference_query_prompts(
    held_out: list[dict], seed: int = 0, sizes: dict[str, int] | None = None
) -> dict[str, list[dict]]:
    """Prompt records per split: ``{"prompt", "seed", "scene", "kind", "concept"}``.

    Args:
        held_out: the world's held-out scenes (``world.json``'s ``held_out``), at least 3.
        sizes: queries per split (default 400 / 50 / 40).
    """
    sizes = {**DEFAULT_SIZES, **(sizes or {})}
    if len(held_out) < 3:
        raise ValueError(f"need at least 3 held-out combinations to split, got {len(held_out)}")
    rng = np.random.default_rng([seed, 0x9E57])
    combos = [Scene.from_json(s) for s in held_out]
    order = rng.permutation(len(combos))
    # Test and validation each get ~5/32 of the combinations, training the rest.
    n_eval = max(1, round(len(combos) * 5 / 32))
    combo_split = {
        "test": [combos[i] for i in order[:n_eval]],
        "val": [combos[i] for i in order[n_eval : 2 * n_eval]],
        "train": [combos[i] for i in order[2 * n_eval :]],
    }
    used: set[tuple] = set()  # (scene key, caption variant) already given to some query
    out: dict[str, list[dict]] = {}
    for split in ("test", "val", "train"):  # evaluation splits first, so they get first pick
        size = sizes[split]
        records: list[dict] = []
        n_held, n_planted = size // 2, size // 4
        # Held-out: every (combination, paraphrase) once, then again with new sampling seeds.
        cycle = [(s, v) for s in combo_split[split] for v in range(3)]
        records += [
            {
                "scene": cycle[i % len(cycle)][0],
                "variant": cycle[i % len(cycle)][1],
                "kind": "held-out",
            }
            for i in range(n_held)
        ]
        concepts = list(RARE_CONCEPTS)
        for i in range(n_planted):
            concept = concepts[i % len(concepts)]
            while True:
                scene, variant = _planted_scene(rng, concept), int(rng.integers(3))
                if (scene.key, variant) not in used:
                    break
            used.add((scene.key, variant))
            records.append(
                {"scene": scene, "variant": variant, "kind": "planted", "concept": concept}
            )
        while len(records) < size:
            scene, variant = sample_scene(rng, two_object_prob=1.0), int(rng.integers(3))
            if (scene.key, variant) not in used:
                used.add((scene.key, variant))
                records.append({"scene": scene, "variant": variant, "kind": "two-object"})
        out[split] = [
            {
                "prompt": caption_scene(r["scene"], (r["variant"],))[0],
                "seed": _SEED_BASE[split] + i,
                "scene": r["scene"].to_json(),
                "kind": r["kind"],
                "concept": r.get("concept"),
            }
            for i, r in enumerate(records)
        ]
    return {split: out[split] for split in SPLITS}
