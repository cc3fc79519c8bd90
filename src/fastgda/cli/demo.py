"""``fastgda demo``: the main job on the embedded world (what ``make demo`` runs); see ``fastgda.demo``."""

from __future__ import annotations

import json
from pathlib import Path

from ._common import add_json_flag, emit, set_threads


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the main job on the embedded world and write demo/report.html",
        description="Load the standard world, the shipped model and reference ground truth; embed, train the "
        "ranker, build the attributor, evaluate mAP(L) against baselines, time the live teacher against the "
        "attributor on one query, and write report.html. Reruns reuse finished steps.",
    )
    parser.add_argument("--out", default="demo", help="output folder (default demo/)")
    parser.add_argument("--seed", type=int, default=0, help="ranker seed")
    parser.add_argument("--epochs", type=int, help="cap the ranker's training epochs")
    parser.add_argument(
        "--from-scratch",
        action="store_true",
        help="only retrain the world model with the pack's recipe (about an hour on 2 cores) and sample "
        "held-out prompts from it; the attribution steps use the shipped model's reference ground truth",
    )
    parser.add_argument(
        "--steps", type=int, help="training steps with --from-scratch (default: the pack's)"
    )
    parser.add_argument(
        "--num-queries", type=int, default=24, help="held-out prompts to sample with --from-scratch"
    )
    parser.add_argument("--threads", type=int, help="torch threads")
    add_json_flag(parser)
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    set_threads(args.threads)
    if args.from_scratch:
        return _retrain_model(args)
    from ..demo import run_demo

    summary = run_demo(args.out, seed=args.seed, progress=not args.json, epochs=args.epochs)
    mid = sorted(summary["map"]["fastgda ranker"], key=int)[1]
    lines = [f"{'method':<40} mAP(L={mid})        planted recall"]
    for name, row in summary["map"].items():
        recall = summary["planted_recall"].get(name)
        lines.append(
            f"{name:<40} {row[mid]['mean']:.3f} ± {row[mid]['stderr']:.3f}   "
            + ("-" if recall is None else f"{recall:.2f}")
        )
    lines += [
        f"ranker / best untuned ({summary['best_untuned']}): {summary['ratio_vs_best_untuned']:.2f}x",
        f"live teacher {summary['teacher_seconds_per_query']:.1f} s/query vs attributor "
        f"{summary['attributor_seconds_per_query'] * 1000:.1f} ms/query end to end: "
        f"{summary['speedup']:,.0f}x, measured side by side",
        f"report: {summary['report']}",
    ]
    emit(args, summary, "\n".join(lines))
    return 0


def _retrain_model(args) -> int:
    """Retrain the world model with the pack's recipe, sample held-out prompts, score adherence, draw a grid."""
    from .. import pack
    from ..diffusion import DiffusionTrainConfig, TextToImageModel, train_diffusion
    from ..diffusion.queries import SamplerConfig, write_query_set
    from ..visual import image_grid
    from ..world import held_out_prompts
    from ..world.adherence import score_adherence
    from ..world.probe import AttributeProbe

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = pack.pack_info()
    world = pack.ensure_world(out / "world")
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
    prompts = held_out_prompts(world.root)[: args.num_queries]
    queries = write_query_set(
        model,
        prompts,
        out / "queries",
        seed=args.seed,
        sampler=SamplerConfig(**info["sampler"]),
        model_dir=model_dir,
        overwrite=True,
    )
    images = queries.load_images()
    probe = AttributeProbe.load(pack.probe_dir())
    adherence = score_adherence(probe, images, [r["scene"] for r in queries.records])
    image_grid(images, [r["prompt"] for r in queries.records]).save(out / "queries.png")
    (out / "adherence.json").write_text(json.dumps(adherence, indent=2) + "\n", encoding="utf-8")
    text = (
        f"retrained the world model -> {model_dir}; sampled {len(images)} held-out prompts -> "
        f"{out / 'queries.png'}\nprompt adherence (probe): "
        + ", ".join(f"{k} {v:.0%}" for k, v in adherence.items())
    )
    emit(args, {"out": str(out), "adherence": adherence, "num_queries": len(images)}, text)
    return 0
