"""``fastgda teacher``: estimate the Fisher, run attribution by unlearning over a query set, merge results."""

from __future__ import annotations

from dataclasses import replace

from ._common import (
    COUNT,
    add_compute_flags,
    add_config_flags,
    add_executor_flags,
    add_json_flag,
    compute_from_args,
    config_from_args,
    emit,
    executor_from_args,
    id_list,
    set_threads,
)


def add_parser(sub) -> None:
    from ..unlearning import FisherConfig, ScoringConfig, UnlearnConfig
    from ..unlearning.jobs import TeacherConfig

    parser = sub.add_parser(
        "teacher",
        help="the slow teacher: attribution by unlearning (AbU / AbU+)",
        description="Attribution by unlearning: Fisher estimation, per-query runs, merge.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    fisher = verbs.add_parser(
        "fisher",
        help="estimate the Fisher preconditioner once per model",
        description="Estimate a diagonal (AbU) or EK-FAC (AbU+) Fisher over training data.",
    )
    fisher.add_argument("--model", required=True, help="model folder or 'shipped'")
    fisher.add_argument(
        "--data", required=True, help="the training dataset the model was trained on"
    )
    fisher.add_argument("--out", required=True, help="Fisher folder to create")
    add_config_flags(fisher, FisherConfig, aliases={"num_samples": "--samples"})
    add_compute_flags(fisher)
    fisher.add_argument("--threads", type=COUNT)
    fisher.add_argument("--overwrite", action="store_true")
    fisher.set_defaults(handler=handle_fisher)

    run = verbs.add_parser(
        "run",
        help="rank training images for every query (resumable)",
        description="Unlearn each query and rank training items by their loss rise. "
        "Re-running the same command finishes only what is missing.",
    )
    run.add_argument("--model", required=True, help="model folder or 'shipped'")
    run.add_argument("--data", required=True)
    run.add_argument("--queries", required=True, help="query set from `fastgda model sample`")
    run.add_argument("--fisher", required=True, help="folder from `fastgda teacher fisher`")
    run.add_argument(
        "--out", required=True, help="run folder (results/, before_losses/, ground_truth/)"
    )
    add_config_flags(
        run,
        TeacherConfig,
        ["num_candidates", "candidate_feature", "candidate_share", "damping"],
        aliases={"num_candidates": "--candidates"},
    )
    add_config_flags(
        run,
        UnlearnConfig,
        aliases={"num_pairs": "--pairs", "num_steps": "--newton-steps"},
    )
    add_config_flags(run, ScoringConfig, ["timesteps", "noise_seed", "flips"])
    add_config_flags(run, ScoringConfig, ["batch_size"], prefix="scoring-")
    run.add_argument(
        "--query-ids",
        type=id_list,
        help="rank only these queries (comma-separated ids), e.g. 0,3,7",
    )
    run.add_argument(
        "--limit",
        type=COUNT,
        help="rank at most this many of the pending queries; the ground truth then holds every finished query",
    )
    run.add_argument(
        "--cache-dir",
        "--cache",
        help="before-loss cache folder to share between runs (default OUT/before_losses)",
    )
    run.add_argument(
        "--reuse",
        nargs="+",
        default=[],
        metavar="RUN",
        help="earlier runs on the same queries and settings with other --candidates: copy the scores they "
        "computed and score only the new candidates",
    )
    add_executor_flags(run)
    add_compute_flags(run)
    run.add_argument("--threads", type=COUNT)
    add_json_flag(run)
    run.set_defaults(handler=handle_run)

    merge = verbs.add_parser(
        "merge",
        help="gather per-query results into one ground-truth artifact",
        description="Merge OUT/results/q_*.npz into OUT/ground_truth.",
    )
    merge.add_argument("--run", required=True, help="teacher run folder")
    merge.add_argument(
        "--partial",
        action="store_true",
        help="merge the queries finished so far (a run cut short); their ids are kept with the rankings",
    )
    merge.set_defaults(handler=handle_merge)


def handle_fisher(args) -> int:
    from .._artifacts import cache_dir
    from ..data import open_dataset
    from ..diffusion import TextToImageModel
    from ..diffusion.names import resolve_model_dir
    from ..diffusion.training import prepare_training_data
    from ..unlearning import FisherConfig, fit_fisher

    config = config_from_args(args, FisherConfig)
    set_threads(args.threads)
    device, dtype = compute_from_args(args)
    model = TextToImageModel.from_pretrained(
        resolve_model_dir(args.model), device=device, dtype=dtype
    )
    data = prepare_training_data(model, open_dataset(args.data), cache=cache_dir())
    fit_fisher(model, data, config).save(args.out, overwrite=args.overwrite)
    print(f"wrote {config.kind} Fisher over {config.layers!r} layers to {args.out}")
    return 0


def handle_run(args) -> int:
    from .._artifacts import cache_dir
    from ..diffusion.names import resolve_model_dir
    from ..unlearning import ScoringConfig, UnlearnConfig
    from ..unlearning.jobs import TeacherConfig, TeacherSpec, run_teacher

    config = replace(
        config_from_args(args, TeacherConfig),
        unlearn=config_from_args(args, UnlearnConfig),
        scoring=config_from_args(args, ScoringConfig),
    )
    set_threads(args.threads)
    compute_from_args(args)  # an unknown or absent device fails here, before any work
    model_dir = str(resolve_model_dir(args.model))
    spec = TeacherSpec(
        model_dir,
        args.data,
        args.queries,
        args.fisher,
        args.out,
        config,
        args.cache_dir,
        tuple(args.reuse),
        str(cache_dir()),
        args.device,  # "auto" is resolved by each worker, on the machine it runs on
        args.dtype,
    )
    ground_truth = run_teacher(
        spec, executor_from_args(args), query_ids=args.query_ids, limit=args.limit
    )
    shape = list(ground_truth.ids.shape)
    total = ground_truth.config["num_queries"]
    result = {
        "out": args.out,
        "ground_truth": f"{args.out}/ground_truth",
        "shape": shape,
        "num_queries": total,
    }
    text = f"ranked {shape[0]} queries x {shape[1]} candidates; ground truth in {args.out}/ground_truth"
    if shape[0] < total:
        text += f" ({shape[0]} of {total} queries: run the command again to rank the rest)"
    emit(args, result, text)
    return 0


def handle_merge(args) -> int:
    from ..unlearning.jobs import merge_run

    ground_truth = merge_run(args.run, partial=args.partial)
    shape = ground_truth.ids.shape
    total = ground_truth.config["num_queries"]
    of = f" of {total}" if shape[0] < total else ""
    print(f"merged {shape[0]}{of} queries x {shape[1]} candidates into {args.run}/ground_truth")
    return 0
