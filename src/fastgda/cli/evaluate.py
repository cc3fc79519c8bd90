"""``fastgda eval map``: rank agreement with the teacher (mAP(L)) for a ranker and the untuned baselines."""

from __future__ import annotations

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
    from ..counterfactual import CounterfactualConfig

    parser = sub.add_parser(
        "eval", help="evaluate attributions", description="Evaluate attribution methods."
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    m = verbs.add_parser(
        "map",
        help="mAP(L) against the teacher's full rankings",
        description="mAP(L) at 0.42%, 0.85% and 3.4% of N for rankers and untuned baselines, with standard "
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
    m.add_argument(
        "--l",
        type=COUNT,
        nargs="+",
        help="the L of mAP(L) (default: 0.42%% 0.85%% 3.4%% of N; the paper's MSCOCO figures: 500 1000 4000)",
    )
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
    c.add_argument(
        "--method",
        action="append",
        default=[],
        type=named_folder,
        metavar="NAME=GROUND_TRUTH",
        help="another method's rankings of the same queries, e.g. 'ekfac influence=runs/infl/ground_truth' "
        "(a ground-truth folder from `teacher run` or `influence rank`; repeatable)",
    )
    c.add_argument("--num-queries", type=COUNT, help="use the first Q queries of the ground truth")
    c.add_argument(
        "--query-ids",
        type=id_list,
        help="comma-separated query ids of the ground truth to use instead (e.g. a few of each kind)",
    )
    add_config_flags(c, CounterfactualConfig)
    c.add_argument(
        "--baselines",
        default="all",
        help="untuned baselines to retrain for: each feature part and the concatenation (all), the parts "
        "only (parts), none, or some part modalities such as 'text' or 'image,text' (random removal always "
        "runs)",
    )
    c.add_argument("--out", required=True, help="job folder (resumable)")
    c.add_argument(
        "--partial",
        action="store_true",
        help="retrain nothing: report the queries whose retrains are all finished so far (a long run's "
        "progress; written to counterfactual.partial.json)",
    )
    add_compute_flags(c, "retrains")
    add_executor_flags(c)
    c.add_argument("--threads", type=COUNT)
    add_json_flag(c)
    c.set_defaults(handler=handle_counterfactual)


def handle_map(args) -> int:
    import json
    from pathlib import Path

    from ..evaluation import evaluate
    from ..features import Features
    from ..ground_truth import GroundTruth
    from ..ranker import Ranker

    set_threads(args.threads)
    items = Features.load(args.items)
    queries = Features.load(args.queries, expect_spec=items.spec)
    truth = GroundTruth.load(args.ground_truth)
    rankers = {f"ranker ({Path(path).name})": Ranker.load(path) for path in args.ranker}
    concepts, exemplars = _planted_concepts(args.query_set, args.data, truth.query_ids)
    evaluation = evaluate(
        rankers, queries, items, truth, concepts=concepts, exemplars=exemplars, ls=args.l
    )
    result = evaluation.to_json()
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    emit(args, result, str(evaluation))
    return 0


def _planted_concepts(query_set, data, query_ids):
    """(the planted concept each query names or None, each concept's training ids) when the data folder plants
    concepts (``concepts.json``), else (None, None)."""
    if not (query_set and data):
        return None, None
    from pathlib import Path

    from ..data import ImageCaptionFolder, read_planted_concepts

    concepts = read_planted_concepts(data) if Path(data).is_dir() else None
    if concepts is None:
        return None, None
    records = ImageCaptionFolder(query_set).records
    return [records[int(q)].get("concept") for q in query_ids], concepts


def named_folder(text: str) -> tuple[str, str]:
    """``NAME=FOLDER`` -> (name, folder)."""
    import argparse

    name, sep, folder = text.rpartition(
        "="
    )  # the last "=": a method's name may hold one ("α = 1e-4")
    if not sep or not name.strip() or not folder.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=FOLDER, got {text!r}")
    return name.strip(), folder.strip()


def handle_counterfactual(args) -> int:
    from pathlib import Path

    import numpy as np

    from ..counterfactual import CounterfactualConfig, CounterfactualJob, method_rankings
    from ..diffusion.names import resolve_model_dir
    from ..errors import FastGDAError
    from ..features import Features
    from ..ground_truth import GroundTruth
    from ..ranker import Ranker

    config = config_from_args(args, CounterfactualConfig)
    set_threads(args.threads)
    compute_from_args(args)  # an unknown or absent device fails here, before any work
    items = Features.load(args.items)
    queries = Features.load(args.queries, expect_spec=items.spec)
    truth = GroundTruth.load(args.ground_truth)
    if args.query_ids:
        truth = truth.select(args.query_ids)
    elif args.num_queries:
        truth = truth.select(truth.query_ids[: args.num_queries])
    rows = truth.query_ids
    rankers = {f"ranker ({Path(path).name})": Ranker.load(path) for path in args.ranker}
    selected = queries.select(rows)
    k = config.k
    rankings = method_rankings(selected, items, truth.ids, rankers, k=k, baselines=args.baselines)
    for name, folder in args.method:
        if name in rankings or name == "random":
            raise FastGDAError(f"--method name {name!r} is taken; choose another")
        rankings[name] = np.asarray(
            GroundTruth.load(folder).select(rows).ids[:, :k], dtype=np.int64
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
        device=args.device,  # "auto" is resolved by each worker, on the machine it runs on
        dtype=args.dtype,
    )
    if not args.partial:
        job.run(executor_from_args(args))
    result = job.evaluate(partial=args.partial)
    evaluated = [int(r) for r in result.query_rows]
    summary = result.summary()
    lines = [f"{len(evaluated)} of {len(rows)} queries (ids {evaluated})"] if args.partial else []
    lines += [f"{'method':<44} {'delta loss':>20} {'delta MSE':>20} {'similarity':>20}"]
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
        {
            "k": k,
            "queries": len(evaluated),
            "query_ids": evaluated,
            "summary": summary,
            "ordering": verdict,
        },
        "\n".join(lines),
    )
    return 0
