"""``fastgda build``: a captioned image set to a served-ready attributor, its evaluation and report.html."""

from __future__ import annotations

from ._common import (
    COUNT,
    add_config_flags,
    add_executor_flags,
    add_json_flag,
    config_from_args,
    emit,
    executor_from_args,
    set_threads,
)


def add_parser(sub) -> None:
    from ..pipeline import BuildConfig

    parser = sub.add_parser(
        "build",
        help="your data in one command: model, queries, teacher, ranker, attributor, evaluation, report",
        description="From a captioned image set (a folder with captions.jsonl, a COCO captions json, or "
        "webdataset tar shards) and a model (--model, or --train-model PRESET), run every step to a served-ready "
        "attributor: query prompts drawn from the captions and split by source image, the Fisher, the teacher "
        "(pools for training and validation queries, full rankings for test queries, sized by --budget-hours), "
        "the features, the ranker (an untuned part that beats it on validation is served instead), the "
        "attributor, the evaluation against untuned baselines and OUT/report.html. Every step is resumable: "
        "run the same command again to continue.",
    )
    parser.add_argument(
        "--data", required=True, help="the training set the model was (or will be) trained on"
    )
    parser.add_argument("--out", required=True, help="build folder (resumable)")
    parser.add_argument(
        "--model", help="model folder, diffusers Stable Diffusion folder, or 'shipped'"
    )
    parser.add_argument(
        "--prompts", help="query prompts (one a line, or JSONL with 'prompt') instead of captions"
    )
    parser.add_argument(
        "--preset",
        choices=("full", "quick"),
        default="full",
        help="starting settings, the flags below overriding fields: full (the defaults) or quick (small "
        "settings for a first look in minutes) (default: full)",
    )
    add_config_flags(parser, BuildConfig)
    add_executor_flags(parser)
    parser.add_argument("--threads", type=COUNT)
    add_json_flag(parser)
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    from ..pipeline import BuildConfig, run_build

    base = BuildConfig.quick() if args.preset == "quick" else BuildConfig()
    config = config_from_args(args, BuildConfig, base=base)
    set_threads(args.threads)
    summary = run_build(
        args.data, args.out, config, model=args.model, prompts_file=args.prompts,
        executor=executor_from_args(args, config.device),
    )  # fmt: skip
    mid = sorted(summary["map"][summary["served"]], key=int)[1]
    lines = [
        f"served scorer: {summary['served']} ({summary['ratio_vs_best_untuned']:.2f}x the best untuned "
        f"baseline, {summary['best_untuned']}, at mAP(L={mid}))",
        f"queries ranked by the teacher: {summary['queries']}",
        f"attributor: {summary['attributor']} (fastgda serve --attributor {summary['attributor']})",
        f"report: {summary['report']}",
    ]
    emit(args, summary, "\n".join(lines))
    return 0
