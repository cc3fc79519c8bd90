"""The shapes world: procedurally generated 16x16 captioned images with planted rare concepts.

Each image holds one object (shape, colour, size, position) or two small objects (left and right) on a plain
background, with 2-3 paraphrased captions. A few *rare concepts* (a rare shape or colour) appear in only
``num_per_concept`` training images, recorded with their ids in ``concepts.json``: an attribution ground truth by
construction. Some full single-object attribute combinations are held out of training; prompts built from them
are the queries. Objects are drawn at 8x resolution and box-filtered down, so edges survive at 16x16.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ...config import AT_LEAST_ONE, NON_NEGATIVE, PROBABILITY, Bounds, check_settings, setting

IMAGE_SIZE = 16
SUPERSAMPLE = (
    8  # drawing at 128x128 and box-filtering down keeps the shapes' edges recognisable at 16x16
)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (45, 85, 225),
    "yellow": (235, 205, 35),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "center", "right")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (18, 18, 18),
    "gray": (120, 120, 120),
    "white": (235, 235, 235),
}
# Rare concepts: attributes that only their exemplars carry. Kind says which attribute slot they fill.
RARE_CONCEPTS: dict[str, tuple[str, object]] = {
    "cross": ("shape", None),
    "magenta": ("colour", (225, 50, 215)),
    "cyan": ("colour", (40, 210, 215)),
}
ALL_COLOURS: dict[str, tuple[int, int, int]] = {
    **COLOURS,
    **{name: rgb for name, (kind, rgb) in RARE_CONCEPTS.items() if kind == "colour"},  # type: ignore[misc]
}
ALL_SHAPES: tuple[str, ...] = SHAPES + tuple(
    n for n, (kind, _) in RARE_CONCEPTS.items() if kind == "shape"
)

_SIZE_WORDS = {
    "small": ("small", "small", "tiny", "little"),
    "large": ("large", "big", "large", "big"),
}
_POSITION_WORDS = {
    "left": ("on the left", "at the left", "on the left side"),
    "center": ("in the center", "in the middle", "at the center"),
    "right": ("on the right", "at the right", "on the right side"),
}
_PIXEL_X = {"left": 4.5, "center": 8.0, "right": 11.5}  # object centres in 16x16 pixel units
_PIXEL_DIAMETER = {"small": 6.0, "large": 10.0}


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object: its attribute names."""

    shape: str
    colour: str
    size: str
    position: str


@dataclass(frozen=True)
class Scene:
    """Everything that determines an image: one or two objects and a background."""

    objects: tuple[ShapeObject, ...]
    background: str

    def to_json(self) -> dict:
        """Return a JSON-ready dict of the scene's attributes."""
        return {"background": self.background, "objects": [asdict(o) for o in self.objects]}

    @staticmethod
    def from_json(obj: dict) -> Scene:
        """Inverse of ``to_json``."""
        return Scene(tuple(ShapeObject(**o) for o in obj["objects"]), obj["background"])

    @property
    def key(self) -> tuple:
        """A hashable attribute tuple identifying the combination (used to hold combinations out)."""
        return (self.background,) + tuple(
            (o.shape, o.colour, o.size, o.position) for o in self.objects
        )


def _polygon(shape: str, cx: float, cy: float, d: float) -> list[tuple[float, float]]:
    r = d / 2
    if shape == "square":
        r *= 0.9  # a square of the same diameter looks bigger than a circle; shrink it to balance areas
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r * 0.85), (cx - r, cy + r * 0.85)]
    if shape == "cross":
        a = r * 0.38  # half the arm width
        return [
            (cx - a, cy - r),
            (cx + a, cy - r),
            (cx + a, cy - a),
            (cx + r, cy - a),
            (cx + r, cy + a),
            (cx + a, cy + a),
            (cx + a, cy + r),
            (cx - a, cy + r),
            (cx - a, cy + a),
            (cx - r, cy + a),
            (cx - r, cy - a),
            (cx - a, cy - a),
        ]
    raise ValueError(f"unknown polygon shape {shape!r}")


def render_scene(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Draw a scene with small random jitter in position, size and colour.

    Returns:
        uint8 array of shape (16, 16, 3).
    """
    s = SUPERSAMPLE
    canvas = Image.new("RGB", (IMAGE_SIZE * s, IMAGE_SIZE * s), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        cx = (_PIXEL_X[obj.position] + rng.uniform(-0.6, 0.6)) * s
        cy = (8.0 + rng.uniform(-1.0, 1.0)) * s
        d = _PIXEL_DIAMETER[obj.size] * rng.uniform(0.92, 1.08) * s
        rgb = np.asarray(ALL_COLOURS[obj.colour]) + rng.integers(-12, 13, size=3)
        fill = tuple(int(c) for c in np.clip(rgb, 0, 255))
        if obj.shape == "circle":
            draw.ellipse([cx - d / 2, cy - d / 2, cx + d / 2, cy + d / 2], fill=fill)
        else:
            draw.polygon(_polygon(obj.shape, cx, cy, d), fill=fill)
    small = canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8)


def _object_phrase(obj: ShapeObject, variant: int, with_position: bool = True) -> str:
    size = _SIZE_WORDS[obj.size][variant % len(_SIZE_WORDS[obj.size])]
    phrase = f"{size} {obj.colour} {obj.shape}"
    if with_position:
        phrase += " " + _POSITION_WORDS[obj.position][variant % 3]
    return phrase


def caption_scene(scene: Scene, variants: tuple[int, ...]) -> list[str]:
    """Write one caption per template variant (0, 1 or 2): paraphrases naming every attribute."""
    bg = scene.background
    captions = []
    for v in variants:
        if len(scene.objects) == 1:
            (obj,) = scene.objects
            if v == 0:
                captions.append(f"a {_object_phrase(obj, 0)} on a {bg} background")
            elif v == 1:
                captions.append(
                    f"{_object_phrase(obj, 1, False)}, {_POSITION_WORDS[obj.position][1]}, {bg} background"
                )
            else:
                captions.append(f"a picture of a {_object_phrase(obj, 2)} over {bg}")
        else:
            left, right = scene.objects
            if v == 0:
                captions.append(
                    f"a {_object_phrase(left, 0, False)} on the left and a {_object_phrase(right, 0, False)} "
                    f"on the right on a {bg} background"
                )
            elif v == 1:
                captions.append(
                    f"a {_object_phrase(right, 1, False)} to the right of a {_object_phrase(left, 1, False)}, "
                    f"{bg} background"
                )
            else:
                captions.append(
                    f"two shapes over {bg}: a {left.colour} {left.shape} at the left, "
                    f"a {right.colour} {right.shape} at the right"
                )
    return captions


def all_single_object_scenes() -> list[Scene]:
    """Every single-object scene built from common attributes (4 colours x 3 shapes x 2 x 3 x 3 = 216)."""
    return [
        Scene((ShapeObject(shape, colour, size, position),), bg)
        for colour in COLOURS
        for shape in SHAPES
        for size in SIZES
        for position in POSITIONS
        for bg in BACKGROUNDS
    ]


def sample_scene(
    rng: np.random.Generator,
    two_object_prob: float = 0.35,
    shapes: tuple[str, ...] = SHAPES,
    colours: tuple[str, ...] = tuple(COLOURS),
) -> Scene:
    """Draw a random scene from the given attribute vocabularies."""
    bg = str(rng.choice(list(BACKGROUNDS)))
    if rng.random() < two_object_prob:
        objs = tuple(
            ShapeObject(str(rng.choice(shapes)), str(rng.choice(colours)), "small", pos)
            for pos in ("left", "right")
        )
        return Scene(objs, bg)
    obj = ShapeObject(
        str(rng.choice(shapes)),
        str(rng.choice(colours)),
        str(rng.choice(SIZES)),
        str(rng.choice(POSITIONS)),
    )
    return Scene((obj,), bg)


@dataclass(frozen=True)
class WorldSpec:
    """Parameters of a generated shapes world; together with the code version they determine it exactly."""

    size: int = setting(2000, "N training images", bounds=AT_LEAST_ONE)
    seed: int = setting(0, "generator seed", bounds=NON_NEGATIVE)
    num_per_concept: int = setting(12, "exemplars per planted rare concept", bounds=AT_LEAST_ONE)
    held_out_fraction: float = setting(
        0.15,
        "share of the 216 single-object combinations kept out of training",
        bounds=Bounds(0, 1),
    )
    two_object_prob: float = setting(0.35, "share of two-object images", bounds=PROBABILITY)

    def __post_init__(self):
        check_settings(self)


@dataclass
class GeneratedWorld:
    """A world in memory: images (N, 16, 16, 3) uint8, captions, scenes, concepts and held-out scenes."""

    spec: WorldSpec
    images: np.ndarray
    captions: list[list[str]]
    scenes: list[Scene]
    concepts: dict[str, list[int]]
    held_out: list[Scene]


def generate_world(spec: WorldSpec) -> GeneratedWorld:
    """Generate the training set of a shapes world, deterministically from ``spec.seed``.

    The planted exemplars are single-object images whose only rare attribute is their concept; no other image
    carries a rare attribute. Held-out single-object combinations never appear in training.
    """
    rng = np.random.default_rng([spec.seed, 0x5A1E5])
    combos = all_single_object_scenes()
    num_held = round(spec.held_out_fraction * len(combos))
    held_idx = np.sort(rng.choice(len(combos), size=num_held, replace=False))
    held_out = [combos[i] for i in held_idx]
    held_keys = {s.key for s in held_out}

    num_planted = spec.num_per_concept * len(RARE_CONCEPTS)
    if spec.size < num_planted + 10:
        raise ValueError(
            f"a world needs at least {num_planted + 10} images for its planted concepts, got {spec.size}"
        )
    scenes: list[Scene] = []
    for concept, (kind, _) in RARE_CONCEPTS.items():
        for _ in range(spec.num_per_concept):
            base = sample_scene(rng, two_object_prob=0.0)
            (obj,) = base.objects
            obj = ShapeObject(
                concept if kind == "shape" else obj.shape,
                concept if kind == "colour" else obj.colour,
                obj.size,
                obj.position,
            )
            scenes.append(Scene((obj,), base.background))
    while len(scenes) < spec.size:
        scene = sample_scene(rng, spec.two_object_prob)
        if scene.key not in held_keys:
            scenes.append(scene)
    # Shuffle so the planted exemplars sit at random ids rather than the first rows.
    order = rng.permutation(spec.size)
    scenes = [scenes[i] for i in order]

    images = np.stack([render_scene(s, rng) for s in scenes])
    captions = []
    for scene in scenes:
        count = int(rng.integers(2, 4))  # 2-3 captions each
        variants = tuple(int(v) for v in rng.permutation(3)[:count])
        captions.append(caption_scene(scene, variants))
    concepts = {
        name: [
            i for i, s in enumerate(scenes) if any(name in (o.shape, o.colour) for o in s.objects)
        ]
        for name in RARE_CONCEPTS
    }
    return GeneratedWorld(spec, images, captions, scenes, concepts, held_out)


def held_out_prompts(world_dir: str | Path) -> list[dict]:
    """Return the world's held-out prompts: one per held-out combination, with its scene attributes."""
    meta = json.loads((Path(world_dir) / "world.json").read_text(encoding="utf-8"))
    out = []
    for obj in meta["held_out"]:
        scene = Scene.from_json(obj)
        out.append({"prompt": caption_scene(scene, (0,))[0], "scene": scene.to_json()})
    return out
