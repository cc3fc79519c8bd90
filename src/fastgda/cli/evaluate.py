"""``fastgda eval map``: rank agreement with the teacher (mAP(L)) for a ranker and the untuned baselines."""

from __future__ import annotations

from ._common import add_json_flag, emit, set_threads


def add_parser(sub) -> None:
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
    m.add_argument("--threads", type=int)
    add_json_flag(m)
    m.set_defaults(handler=handle_map)


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
