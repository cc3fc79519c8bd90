"""``fastgda eval map``: rank agreement with the teacher (mAP(L)) for a ranker and the untuned baselines."""

from __future__ import annotations

from ._common import (
    COUNT,
    add_executor_flags,
    add_json_flag,
    add_setting,
    emit,
    executor_from_args,
    id_list,
    set_threads,
)


def add_parser(sub) -> None:
    from ..counterfactual import CounterfactualConfig

    parser = sub.add_parser(
        "eval", help="evaluate attributions", description="Evaluate attribution methods."
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    m = verbs.add_parser(
        "map",
        help="mAP(L) against the teacher's full rankings",
        description="mAP(L) at 0.42%%, 0.85%% and 3.4%% of N for rankers and untuned baselines, with standard "
        "errors; planted-concept recall where the queries name planted concepts of a shapes world.",
    )
    m.add_argument("--items", required=True, help="features of the training set")
    m.add_argument("--queries", required=True, help="features of the test queries")
    m.add_argument(
        "--ground-truth", required=True, help="the teacher's full rankings of the test queries"
    )
    m.add_argument("--ranker", action="append", default=[], help="ranker folder (repeatable)")
    m.add_argument(
        "--query-set", help="the test query-set folder (its records name planted concepts)"
    )
    m.add_argument("--data", help="the training dataset (a shapes world, for planted recall)")
    m.add_argument("--out", help="write the table as JSON here")
    m.add_argument("--threads", type=COUNT)
    add_json_flag(m)
    m.set_defaults(handler=handle_map)

    c = verbs.add_parser(
        "counterfactual",
        help="leave-K-out retraining: how much each method's top-K makes the model forget the query",
        description="For each test query and method (teacher, rankers, untuned baselines, random), remove the "
        "method's top-K training images, retrain from scratch with the model's recipe and seed, and report "
        "delta loss, delta generation MSE and similarity (method.md 7.2). Resumable; retrains are cached by "
        "removed set and run on the local executor or Ray.",
    )
    c.add_argument("--model", default="shipped", help="the original model ('shipped' or a folder)")
    c.add_argument("--data", required=True, help="its training set")
    c.add_argument("--query-set", required=True, help="query-set folder of the test queries")
    c.add_argument("--items", required=True, help="features of the training set")
    c.add_argument("--queries", required=True, help="features of the test queries")
    c.add_argument("--ground-truth", required=True, help="the teacher's full rankings of them")
    c.add_argument("--ranker", action="append", default=[], help="ranker folder (repeatable)")
    add_setting(c, "--k", CounterfactualConfig, "k", required=True)
    c.add_argument("--num-queries", type=COUNT, help="use the first Q queries of the ground truth")
    c.add_argument(
        "--query-ids",
        type=id_list,
        help="comma-separated query ids of the ground truth to use instead (e.g. a few of each kind)",
    )
    add_setting(c, "--steps", CounterfactualConfig, "steps")
    c.add_argument(
        "--baselines",
        default="all",
        help="untuned baselines to retrain for: each feature part and the concatenation (all), the parts "
        "only (parts), none, or some part modalities such as 'text' or 'image,text' (random removal always "
        "runs)",
    )
    c.add_argument(
        "--random-seeds", type=COUNT, default=3, help="random removals (shared by queries)"
    )
    c.add_argument(
        "--coupled",
        action="store_true",
        help="retrains draw batches by item id, so they differ from the full-data run only where a removed "
        "image was drawn (less retrain noise; cached apart from uncoupled retrains)",
    )
    c.add_argument("--out", required=True, help="job folder (resumable)")
    add_executor_flags(c)
    c.add_argument("--threads", type=COUNT)
    add_json_flag(c)
    c.set_defaults(handler=handle_counterfactual)


def handle_map(args) -> int:
    import json
    from pathlib import Path

    from ..comparison import format_map_table, map_table, planted_recall, untuned_methods
    from ..errors import FastGDAError
    from ..features import Features
    from ..ground_truth import GroundTruth
    from ..ranker import Ranker

    set_threads(args.threads)
    items = Features.load(args.items)
    queries = Features.load(args.queries, expect_spec=items.spec)
    truth = GroundTruth.load(args.ground_truth)
    if truth.ids.shape[1] != len(items):
        raise FastGDAError(
            f"mAP(L) needs full rankings: {args.ground_truth} ranks {truth.ids.shape[1]} candidates of "
            f"{len(items)} items; use the test queries' ground truth"
        )
    query_values = queries.values[truth.query_ids]
    methods = {}
    for path in args.ranker:
        ranker, _ = Ranker.load(path)
        methods[f"ranker ({Path(path).name})"] = (
            ranker.embed_numpy(query_values) @ ranker.embed_numpy(items.values).T
        )
    test_queries = Features(query_values, truth.query_ids, queries.spec, queries.parts)
    methods.update(untuned_methods(test_queries, items))
    table = map_table(methods, truth.ids, len(items))
    recall = None
    if args.query_set and args.data:
        from ..data import ImageCaptionFolder, open_dataset

        records = ImageCaptionFolder(args.query_set).records
        concepts = [records[int(q)].get("concept") for q in truth.query_ids]
        dataset = open_dataset(args.data)
        if any(concepts) and hasattr(dataset, "concepts"):
            recall = planted_recall(methods, concepts, dataset.concepts)
    result = {
        "num_train": len(items),
        "num_queries": len(truth),
        "map": table,
        "planted_recall": recall,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    emit(args, result, format_map_table(table, len(items), recall))
    return 0


def handle_counterfactual(args) -> int:
    import numpy as np

    from ..counterfactual import CounterfactualConfig, CounterfactualJob, method_rankings
    from ..errors import FastGDAError
    from ..features import Features
    from ..ground_truth import GroundTruth
    from ..pack import resolve_model_dir
    from ..ranker import Ranker

    set_threads(args.threads)
    items = Features.load(args.items)
    queries = Features.load(args.queries, expect_spec=items.spec)
    truth = GroundTruth.load(args.ground_truth)
    positions = np.arange(len(truth.query_ids))
    if args.query_ids:
        position_of = {int(q): i for i, q in enumerate(truth.query_ids)}
        wanted = args.query_ids
        missing = [q for q in wanted if q not in position_of]
        if missing:
            raise FastGDAError(
                f"query ids {missing} are not in {args.ground_truth}; it holds ids "
                f"{int(truth.query_ids.min())}..{int(truth.query_ids.max())}"
            )
        positions = np.array([position_of[q] for q in wanted])
    elif args.num_queries:
        positions = positions[: args.num_queries]
    rows = truth.query_ids[positions]
    rankers = {}
    for path in args.ranker:
        ranker, _ = Ranker.load(path)
        rankers[f"ranker ({path.rstrip('/').split('/')[-1]})"] = ranker
    selected = Features(queries.values[rows], rows, queries.spec, queries.parts)
    k = args.k
    rankings = method_rankings(
        selected, items, truth.ids[positions], rankers, k=k, baselines=args.baselines
    )
    config = CounterfactualConfig(
        k=k,
        steps=args.steps,
        random_seeds=tuple(range(args.random_seeds)),
        coupled=args.coupled,
    )
    job = CounterfactualJob(
        resolve_model_dir(args.model),
        args.data,
        args.query_set,
        rankings,
        args.out,
        config,
        progress=not args.json,
        query_rows=rows.tolist(),
    )
    job.run(executor_from_args(args))
    result = job.evaluate()
    summary = result.summary()
    lines = [f"{'method':<44} {'delta loss':>20} {'delta MSE':>20} {'similarity':>20}"]
    for name, metrics in summary.items():
        cells = [
            f"{metrics[m]['mean']:.5f} ± {metrics[m]['stderr']:.5f}"
            for m in ("delta_loss", "delta_mse", "delta_sim")
        ]
        lines.append(f"{name:<44} " + " ".join(f"{c:>20}" for c in cells))
    checks = []
    if len(rankers) == 1 and "random" in summary and any(m.startswith("untuned") for m in summary):
        checks = result.ordering(next(iter(rankers)))
        lines += ["", "ordering on mean delta loss:"] + [f"- {c.describe()}" for c in checks]
    verdict = {c.claim: c.holds for c in checks}
    emit(
        args,
        {"k": k, "queries": len(rows), "summary": summary, "ordering": verdict},
        "\n".join(lines),
    )
    return 0
