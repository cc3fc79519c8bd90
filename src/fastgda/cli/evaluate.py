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
    m.add_argument(
        "--within-pools",
        action="store_true",
        help="score each test query within the pool its ground truth ranks (the paper's SD protocol: the top-M "
        "neighbours); L defaults to the shares of the pool size",
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
    evaluation = evaluate(rankers, queries, items, truth, concepts=concepts, exemplars=exemplars,
                          ls=args.l, within_pools=args.within_pools)  # fmt: skip
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

    from ..counterfactual import CounterfactualConfig, run_counterfactual
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
    query_ids = args.query_ids or (
        truth.query_ids[: args.num_queries] if args.num_queries else None
    )
    rankers = {f"ranker ({Path(path).name})": Ranker.load(path) for path in args.ranker}
    rankings = dict(args.method)
    if len(rankings) != len(args.method):
        raise FastGDAError("--method names repeat; give each stored ranking its own name")
    result = run_counterfactual(
        resolve_model_dir(args.model), args.data, args.query_set, items, queries, truth, args.out, config,
        rankers, rankings, args.baselines, query_ids, None if args.partial else executor_from_args(args),
        args.partial,
        device=args.device,  # "auto" is resolved by each worker, on the machine it runs on
        dtype=args.dtype,
    )  # fmt: skip
    ranker = next(iter(rankers)) if len(rankers) == 1 else None
    ranker = ranker if ranker is not None and result.orders(ranker) else None
    asked = len(query_ids) if query_ids is not None else len(truth.query_ids)
    text = result.to_text(asked if args.partial else None, ranker)
    verdict = {c.claim: c.holds for c in result.ordering(ranker)} if ranker else {}
    evaluated = [int(row) for row in result.query_rows]
    payload = {"k": config.k, "queries": len(evaluated), "query_ids": evaluated,
               "summary": result.summary(), "ordering": verdict}  # fmt: skip
    emit(args, payload, text)
    return 0
