"""``fastgda demo``: the main job on the embedded world (what ``make demo`` runs).

At this stage: build the standard world, load the shipped model (or retrain it with ``--from-scratch``), sample a
query set from held-out prompts, score prompt adherence with the attribute probe, and write a picture grid.
"""

from __future__ import annotations

import json
from pathlib import Path

from ._common import add_json_flag, emit, set_threads


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the main job on the embedded world",
        description="Build the world, load the shipped model, sample queries, draw a grid.",
    )
    parser.add_argument("--out", default="demo", help="output folder (default demo/)")
    parser.add_argument(
        "--num-queries", type=int, default=24, help="held-out prompts to sample (default 24)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--from-scratch",
        action="store_true",
        help="retrain the model instead of loading the shipped one (about an hour on 2 cores)",
    )
    parser.add_argument(
        "--steps", type=int, help="training steps with --from-scratch (default: the pack's)"
    )
    parser.add_argument("--threads", type=int, help="torch threads")
    add_json_flag(parser)
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    from .. import pack
    from ..diffusion import DiffusionTrainConfig, TextToImageModel, train_diffusion
    from ..diffusion.queries import SamplerConfig, write_query_set
    from ..visual import image_grid
    from ..world import held_out_prompts
    from ..world.adherence import score_adherence
    from ..world.probe import AttributeProbe

    set_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = pack.pack_info()
    world = pack.ensure_world(out / "world")
    if args.from_scratch:
        recipe = dict(info["model"]["train_config"])
        if args.steps:
            recipe["steps"] = args.steps
        model = TextToImageModel.from_preset(info["model"]["preset"], seed=recipe["seed"])
        model_dir = out / "model"
        train_diffusion(
            model,
            world,
            model_dir,
            DiffusionTrainConfig(**recipe),
            overwrite=True,
            command="fastgda demo --from-scratch",
        )
    else:
        model_dir = pack.model_dir()
        model = TextToImageModel.from_pretrained(model_dir)
    prompts = held_out_prompts(world.root)[: args.num_queries]
    sampler = SamplerConfig(**info["sampler"])
    queries = write_query_set(
        model,
        prompts,
        out / "queries",
        seed=args.seed,
        sampler=sampler,
        model_dir=model_dir,
        overwrite=True,
    )
    images = queries.load_images()
    probe = AttributeProbe.load(pack.probe_dir())
    adherence = score_adherence(probe, images, [r["scene"] for r in queries.records])
    labels = [f"{r['prompt']}" for r in queries.records]
    image_grid(images, labels).save(out / "queries.png")
    (out / "adherence.json").write_text(json.dumps(adherence, indent=2) + "\n", encoding="utf-8")
    text = (
        f"world: {len(world)} images at {world.root}; model: {model_dir}\n"
        f"sampled {len(images)} held-out prompts -> {out / 'queries'}; grid -> {out / 'queries.png'}\n"
        f"prompt adherence (probe): " + ", ".join(f"{k} {v:.0%}" for k, v in adherence.items())
    )
    emit(args, {"out": str(out), "adherence": adherence, "num_queries": len(images)}, text)
    return 0
