"""``fastgda attributor build``: index a training set with a trained ranker, ready for queries."""

from __future__ import annotations

from ._common import COUNT, ITEM_ID, add_json_flag, emit, set_threads


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "attributor",
        help="build an attributor (ranker + index)",
        description="Build an attributor folder.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    build = verbs.add_parser(
        "build",
        help="embed the training set with the ranker and index it",
        description="Write ranker/, index/ and items.jsonl; with validation data, fit the share temperature.",
    )
    build.add_argument("--ranker", required=True, help="folder from `fastgda ranker train`")
    build.add_argument("--items", required=True, help="features of the training set")
    build.add_argument(
        "--data", required=True, help="the training dataset (captions and image paths)"
    )
    build.add_argument("--out", required=True, help="attributor folder to create")
    build.add_argument("--backend", choices=["exact", "hnsw", "ivfpq"], default="exact")
    build.add_argument(
        "--scorer",
        choices=["auto", "ranker"],
        default="auto",
        help="auto (default): the ranker, or the untuned part that beat it on validation mAP (recorded by "
        "`ranker train` with validation queries); ranker: the ranker whatever its validation",
    )
    build.add_argument(
        "--val-queries", help="validation query features (to fit the share temperature)"
    )
    build.add_argument("--val-ground-truth", help="the teacher's ground truth for them")
    build.add_argument("--threads", type=COUNT)
    build.add_argument("--overwrite", action="store_true")
    add_json_flag(build)
    build.set_defaults(handler=handle_build)

    remove = verbs.add_parser(
        "remove",
        help="take training images out of an attributor for good (takedowns)",
        description="Remove ids from the index; they never come back in answers and cannot be re-added.",
    )
    remove.add_argument("--attributor", required=True)
    remove.add_argument(
        "--ids", type=ITEM_ID, nargs="+", required=True, help="training ids to remove"
    )
    add_json_flag(remove)
    remove.set_defaults(handler=handle_remove)


def handle_build(args) -> int:
    from ..attributor import Attributor
    from ..data import open_dataset
    from ..features import Features
    from ..ground_truth import GroundTruth
    from ..ranker import Ranker, best_scorer

    set_threads(args.threads)
    items = Features.load(args.items)
    ranker = Ranker.load(args.ranker)
    if args.scorer == "auto":
        ranker = best_scorer(ranker, items, ranker.validation)
    validation = None
    if args.val_queries and args.val_ground_truth:
        validation = (
            Features.load(args.val_queries, expect_spec=items.spec),
            GroundTruth.load(args.val_ground_truth),
        )
    attributor = Attributor.build(
        ranker, open_dataset(args.data), items, backend=args.backend, validation=validation
    )
    attributor.save(args.out, overwrite=args.overwrite)
    scorer = getattr(ranker, "name", "ranker")
    result = {
        "out": args.out,
        "items": len(attributor.index),
        "share_temperature": attributor.temperature,
        "scorer": scorer,
    }
    emit(
        args,
        result,
        f"indexed {len(attributor.index)} training items ({args.backend}, scored by {scorer}) -> {args.out}",
    )
    return 0


def handle_remove(args) -> int:
    from ..attributor import Attributor

    attributor = Attributor.load(args.attributor)
    removed = attributor.remove_items(args.ids)
    attributor.save()
    result = {"removed": removed, "requested": len(args.ids), "items": len(attributor.index)}
    emit(
        args,
        result,
        f"removed {removed} of {len(args.ids)} ids; {len(attributor.index)} items remain",
    )
    return 0
