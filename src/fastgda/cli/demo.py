"""``fastgda demo``: the main job on the embedded world (what ``make demo`` runs); see ``fastgda.app.demo``."""

from __future__ import annotations

from ..counterfactual import CounterfactualConfig
from ._common import (
    COUNT,
    SEED,
    add_executor_flags,
    add_json_flag,
    emit,
    executor_from_args,
    set_threads,
)

DEMO_RETRAINS = CounterfactualConfig.demo(k=1)  # the demo's retrain recipe (K is set by the demo)


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the main job on the embedded world and write demo/report.html",
        description="Load the standard world, the shipped model and reference ground truth; embed, train the "
        "ranker, build the attributor, evaluate mAP(L) against baselines, time the live teacher against the "
        "attributor on one query, and write report.html. Reruns reuse finished steps.",
    )
    parser.add_argument(
        "--out", help="output folder (default demo/, or demo-full/ with --profile full)"
    )
    parser.add_argument("--seed", type=SEED, default=0, help="ranker seed")
    parser.add_argument("--epochs", type=COUNT, help="cap the ranker's training epochs")
    parser.add_argument(
        "--profile",
        choices=("standard", "full"),
        default="standard",
        help="standard: the shipped model and reference ground truth (minutes); full: everything from scratch "
        "- world, model, Fisher, teacher reference, demo, counterfactual - about 6 hours on 2 cores, resumable "
        "(default --out demo-full/)",
    )
    parser.add_argument(
        "--model-steps", type=COUNT, help="with --profile full: training steps of the world model"
    )
    parser.add_argument(
        "--counterfactual",
        action="store_true",
        help="also run the leave-K-out counterfactual (K = 3.4%% of N, 8 test queries, 36 retrains: about 80 "
        "minutes on 2 cores with --executor ray; resumable) and add its table to the report",
    )
    parser.add_argument(
        "--counterfactual-steps",
        type=COUNT,
        default=DEMO_RETRAINS.steps,
        help=f"training steps of each leave-K-out retrain (reduced recipe; default {DEMO_RETRAINS.steps})",
    )
    add_executor_flags(parser)
    parser.add_argument("--threads", type=COUNT, help="torch threads")
    add_json_flag(parser)
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    set_threads(args.threads)
    executor = executor_from_args(args) if args.counterfactual or args.profile == "full" else None
    if args.profile == "full":
        from ..app.full_profile import run_full_profile

        summary = run_full_profile(
            args.out or "demo-full",
            seed=args.seed,
            executor=executor,
            model_steps=args.model_steps,
            counterfactual_steps=args.counterfactual_steps,
        )
    else:
        from ..app.demo import run_demo

        summary = run_demo(
            args.out or "demo",
            seed=args.seed,
            epochs=args.epochs,
            counterfactual=args.counterfactual,
            counterfactual_steps=args.counterfactual_steps,
            executor=executor,
        )
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
    ]
    if summary["counterfactual"]:
        cf = summary["counterfactual"]
        lines.append(
            f"leave-{cf['k']}-out delta loss (x1e-3): "
            + ", ".join(
                f"{name} {mean * 1e3:.2f} ± {se * 1e3:.2f}"
                for name, (mean, se) in cf["delta_loss"].items()
            )
        )
    lines.append(f"report: {summary['report']}")
    emit(args, summary, "\n".join(lines))
    return 0
