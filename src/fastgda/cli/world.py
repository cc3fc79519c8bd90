"""``fastgda world``: generate the shapes world, list its held-out prompts, train the attribute probe."""

from __future__ import annotations

import json
from pathlib import Path

from ._common import (
    COUNT,
    SEED,
    add_config_flags,
    add_json_flag,
    config_from_args,
    emit,
    set_threads,
)


def add_parser(sub) -> None:
    from ..app.world.shapes import WorldSpec

    parser = sub.add_parser(
        "world", help="the embedded shapes world", description="The embedded shapes world."
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    shapes = verbs.add_parser(
        "shapes",
        help="generate a shapes world",
        description="Generate 16x16 captioned images with planted rare concepts.",
    )
    shapes.add_argument("--out", required=True, help="folder to create")
    add_config_flags(shapes, WorldSpec, aliases={"num_per_concept": "--per-concept"})
    shapes.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    add_json_flag(shapes)
    shapes.set_defaults(handler=handle_shapes)

    prompts = verbs.add_parser(
        "prompts",
        help="write the held-out prompts of a world",
        description="Write one prompt per held-out attribute combination as JSONL.",
    )
    prompts.add_argument("--world", required=True, help="world folder")
    prompts.add_argument("--out", required=True, help="JSONL file to write")
    prompts.set_defaults(handler=handle_prompts)

    openmoji = verbs.add_parser(
        "openmoji",
        help="a real-image world: the OpenMoji emoji set (fetched with npm)",
        description="Fetch the openmoji npm package (CC BY-SA 4.0, not shipped with fastgda), render each emoji "
        "(skin-tone variants left out) as a small RGB image on white, and caption it from its annotation and "
        "tags: an image folder with captions.jsonl, ready for `fastgda build`.",
    )
    openmoji.add_argument("--out", required=True, help="folder to create")
    openmoji.add_argument(
        "--tarball", help="an openmoji-*.tgz already downloaded (default: npm pack)"
    )
    openmoji.add_argument(
        "--size", type=COUNT, default=16, help="image side in pixels (default 16)"
    )
    add_json_flag(openmoji)
    openmoji.set_defaults(handler=handle_openmoji)

    probe = verbs.add_parser(
        "probe",
        help="train the attribute probe classifier",
        description="Train a small CNN that reads attributes off 16x16 images.",
    )
    probe.add_argument("--out", required=True, help="folder to create")
    probe.add_argument(
        "--world", help="world folder to measure held-out accuracy on (single-object images)"
    )
    probe.add_argument(
        "--num-images", type=COUNT, default=6000, help="freshly rendered training images"
    )
    probe.add_argument("--epochs", type=COUNT, default=12)
    probe.add_argument("--seed", type=SEED, default=0)
    probe.add_argument("--threads", type=COUNT, help="torch threads")
    probe.add_argument("--overwrite", action="store_true")
    add_json_flag(probe)
    probe.set_defaults(handler=handle_probe)


def handle_shapes(args) -> int:
    from ..app.world import WorldSpec, build_world
    from ..errors import FastGDAError

    try:
        world = build_world(
            config_from_args(args, WorldSpec),
            args.out,
            overwrite=args.overwrite,
        )
    except ValueError as exc:
        raise FastGDAError(str(exc)) from exc
    result = {
        "out": str(args.out),
        "size": len(world),
        "content_hash": world.content_hash,
        "concepts": world.concepts,
        "held_out": len(world.meta["held_out"]),
    }
    concepts = ", ".join(f"{k} ({len(v)})" for k, v in world.concepts.items())
    emit(
        args,
        result,
        f"wrote {len(world)} images to {args.out}; planted concepts: {concepts}; "
        f"{result['held_out']} held-out combinations; content hash {world.content_hash[:12]}",
    )
    return 0


def handle_prompts(args) -> int:
    from ..app.world import ShapesWorld, held_out_prompts

    ShapesWorld(args.world)  # validates the folder
    records = held_out_prompts(args.world)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    print(f"wrote {len(records)} held-out prompts to {args.out}")
    return 0


def handle_probe(args) -> int:
    from ..app.world import ShapesWorld
    from ..app.world.probe import probe_accuracy, train_probe

    set_threads(args.threads)
    probe = train_probe(args.num_images, args.epochs, args.seed)
    result: dict = {"out": str(args.out)}
    if args.world:
        world = ShapesWorld(args.world)
        rows = [i for i, s in enumerate(world.scenes) if len(s["objects"]) == 1]
        result["held_out_accuracy"] = probe_accuracy(
            probe, world.load_images(rows), [world.scenes[i] for i in rows]
        )
    probe.save(
        args.out,
        extra={"training": vars(args) | {"handler": None}, **result},
        overwrite=args.overwrite,
    )
    accuracy = result.get("held_out_accuracy")
    text = f"wrote probe to {args.out}" + (
        f"; accuracy on real images: {accuracy}" if accuracy else ""
    )
    emit(args, result, text)
    return 0


def handle_openmoji(args) -> int:
    from ..app.world.openmoji import build_openmoji_world

    world = build_openmoji_world(args.out, args.tarball, args.size)
    result = {"out": str(args.out), "size": len(world), "content_hash": world.content_hash}
    emit(
        args, result, f"wrote {len(world)} OpenMoji images ({args.size}x{args.size}) to {args.out}"
    )
    return 0
