"""``fastgda influence``: the influence family (EK-FAC influence, TRAK, D-TRAK) over stored item gradients."""

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
    from ..influence.methods import METHODS, influence_settings_help

    parser = sub.add_parser(
        "influence",
        help="influence methods beside the teacher: EK-FAC influence, TRAK, D-TRAK",
        description="Gradient-based attribution over the same model, data and query sets as the teacher. "
        "Item gradients are computed once per model (`features`), then each query costs its gradient, a "
        "projection and a matrix product (`rank`). Recipes: " + influence_settings_help() + ".",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    features = verbs.add_parser(
        "features",
        help="every training item's gradient features, once per model (resumable)",
        description="Compute each training item's gradient under a method's recipe and store it memory-mapped "
        "(float16 unit rows and float32 norms). Re-running finishes only the missing chunks.",
    )
    features.add_argument("--method", required=True, choices=METHODS)
    features.add_argument("--model", required=True, help="model folder or 'shipped'")
    features.add_argument("--data", required=True, help="the training dataset")
    features.add_argument("--out", required=True, help="gradient-features folder to create")
    features.add_argument(
        "--projection-dim", type=COUNT, help="override the recipe's projection dimension"
    )
    features.add_argument(
        "--no-projection", action="store_true", help="keep the full gradient (no projection)"
    )
    features.add_argument(
        "--timesteps", type=int, nargs="+", help="override the recipe's timesteps"
    )
    features.add_argument(
        "--layers", help="linear layers whose gradients are taken (default kv, the teacher's)"
    )
    features.add_argument(
        "--chunk-size", type=COUNT, default=500, help="items per resumable chunk (default 500)"
    )
    add_executor_flags(features)
    add_compute_flags(features)
    features.add_argument("--threads", type=COUNT)
    add_json_flag(features)
    features.set_defaults(handler=handle_features)

    rank = verbs.add_parser(
        "rank",
        help="rank every training item for each query (resumable; writes a ground truth)",
        description="Score all N training items for each query with one influence method and write per-query "
        "results and OUT/ground_truth, the teacher's format.",
    )
    rank.add_argument("--method", required=True, choices=METHODS)
    rank.add_argument("--model", required=True, help="model folder or 'shipped'")
    rank.add_argument("--features", required=True, help="folder from `fastgda influence features`")
    rank.add_argument("--queries", required=True, help="query set from `fastgda model sample`")
    rank.add_argument("--out", required=True, help="run folder (results/, ground_truth/)")
    rank.add_argument("--fisher", help="ekfac: the Fisher from `fastgda teacher fisher`")
    rank.add_argument(
        "--damping",
        type=float,
        help="ekfac: Fisher damping (default: the Fisher's own); trak/dtrak: kernel damping as a share of "
        "the mean squared feature norm (default 0.1)",
    )
    add_config_flags(rank, _unlearn_type(), ["num_pairs", "seed"], aliases={"num_pairs": "--pairs"})
    rank.add_argument("--query-ids", type=id_list, help="rank only these queries, e.g. 0,3,7")
    add_compute_flags(rank)
    add_executor_flags(rank)
    rank.add_argument("--threads", type=COUNT)
    add_json_flag(rank)
    rank.set_defaults(handler=handle_rank)


def _unlearn_type():
    from ..unlearning import UnlearnConfig

    return UnlearnConfig


def handle_features(args) -> int:
    from .._artifacts import cache_dir
    from ..diffusion.names import resolve_model_dir
    from ..influence import build_gradient_features, recipe

    set_threads(args.threads)
    device, dtype = compute_from_args(args)
    config = recipe(args.method)
    if args.no_projection:
        config = replace(config, projection_dim=None)
    elif args.projection_dim:
        config = replace(config, projection_dim=args.projection_dim)
    if args.timesteps:
        config = replace(config, timesteps=tuple(args.timesteps))
    if args.layers:
        config = replace(config, layers=args.layers)
    features = build_gradient_features(
        resolve_model_dir(args.model),
        args.data,
        args.out,
        config,
        chunk_size=args.chunk_size,
        executor=executor_from_args(args, args.device),
        device=args.device,  # "auto" is resolved by each worker, on the machine it runs on
        dtype=dtype,
        encoded_cache=cache_dir(),
    )
    size_mb = (features.rows.nbytes + features.norms.nbytes) / 1e6
    result = {"out": args.out, "shape": [len(features), features.dim], "megabytes": size_mb}
    text = (
        f"wrote {len(features)} x {features.dim} gradient features ({size_mb:.0f} MB) to {args.out}"
    )
    emit(args, result, text)
    return 0


def handle_rank(args) -> int:
    from ..diffusion.names import resolve_model_dir
    from ..influence import InfluenceConfig, InfluenceJob
    from ..unlearning import UnlearnConfig

    set_threads(args.threads)
    device, dtype = compute_from_args(args)
    unlearn = config_from_args(args, UnlearnConfig)
    config = InfluenceConfig(method=args.method, damping=args.damping, unlearn=unlearn)
    job = InfluenceJob.open(
        resolve_model_dir(args.model), args.features, args.queries, args.out, config,
        fisher_dir=args.fisher, device=device, dtype=dtype,
    )  # fmt: skip
    job.run(args.query_ids, executor_from_args(args, args.device))
    ground_truth = job.merge(partial=bool(job.pending()))
    shape = list(ground_truth.ids.shape)
    result = {"out": args.out, "ground_truth": f"{args.out}/ground_truth", "shape": shape}
    emit(
        args,
        result,
        f"ranked {shape[0]} queries x {shape[1]} items; ground truth in {args.out}/ground_truth",
    )
    return 0
