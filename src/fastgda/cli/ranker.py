"""``fastgda ranker train``: distil the teacher into a ranker over frozen features."""

from __future__ import annotations

from ._common import COUNT, add_json_flag, add_setting, emit, set_threads


def add_parser(sub) -> None:
    from ..ranker import RankerTrainConfig

    parser = sub.add_parser(
        "ranker", help="the distilled ranker", description="Train the distilled ranker."
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    train = verbs.add_parser(
        "train",
        help="train a ranker on teacher ground truth",
        description="Learn an MLP whose cosine reproduces the teacher's rankings (BCE on normalised rank, "
        "outliers labelled worst), with validation mAP each epoch and early stopping.",
    )
    train.add_argument(
        "--items", required=True, help="features of the training set (`fastgda embed`)"
    )
    train.add_argument("--queries", required=True, help="features of the training queries")
    train.add_argument(
        "--ground-truth", required=True, help="the teacher's ground truth for those queries"
    )
    train.add_argument("--val-queries", help="features of validation queries")
    train.add_argument("--val-ground-truth", help="the teacher's ground truth for them")
    train.add_argument("--out", required=True, help="ranker folder to create")
    for flag, name in [
        ("--epochs", "epochs"),
        ("--batch-queries", "batch_queries"),
        ("--pairs-per-query", "pairs_per_query"),
        ("--lr", "lr"),
        ("--hidden", "hidden"),
        ("--out-dim", "out_dim"),
        ("--loss", "loss"),
        ("--target", "target"),
        ("--outliers", "outlier_prob"),
        ("--candidate-fraction", "candidate_fraction"),
        ("--train-top", "train_top"),
        ("--patience", "patience"),
        ("--part-weights", "part_weights"),
    ]:
        add_setting(train, flag, RankerTrainConfig, name)
    train.add_argument(
        "--no-balance-parts",
        action="store_true",
        help="standardise columns only (default: each part of the spec gets the same input variance)",
    )
    add_setting(train, "--members", RankerTrainConfig, "members")
    add_setting(train, "--seed", RankerTrainConfig, "seed")
    train.add_argument("--threads", type=COUNT)
    train.add_argument("--overwrite", action="store_true")
    add_json_flag(train)
    train.set_defaults(handler=handle_train)


def handle_train(args) -> int:
    from ..errors import FastGDAError
    from ..features import Features
    from ..ground_truth import GroundTruth
    from ..ranker import RankerTrainConfig, summarise_history, train_ranker

    set_threads(args.threads)
    items = Features.load(args.items)
    queries = Features.load(args.queries, expect_spec=items.spec)
    truth = GroundTruth.load(args.ground_truth)
    if len(truth) != len(queries):
        raise FastGDAError(
            f"{args.ground_truth} ranks {len(truth)} queries but {args.queries} holds {len(queries)}; "
            "pass the features of the query set the teacher ranked"
        )
    val = (None, None)
    if args.val_queries and args.val_ground_truth:
        val = (
            Features.load(args.val_queries, expect_spec=items.spec).values,
            GroundTruth.load(args.val_ground_truth).ids,
        )
    config = RankerTrainConfig(
        hidden=tuple(args.hidden),
        out_dim=args.out_dim,
        epochs=args.epochs,
        batch_queries=args.batch_queries,
        pairs_per_query=args.pairs_per_query,
        lr=args.lr,
        loss=args.loss,
        target=args.target,
        outlier_prob=args.outliers,
        candidate_fraction=args.candidate_fraction,
        train_top=args.train_top,
        patience=args.patience,
        seed=args.seed,
        members=args.members,
        balance_parts=not args.no_balance_parts,
        part_weights=tuple(args.part_weights) if args.part_weights else None,
    )
    ranker, history = train_ranker(
        queries.values[truth.query_ids],
        items.values,
        truth.ids,
        config,
        *val,
        train_scores=truth.scores,
        part_dims=items.part_dims,
    )
    from dataclasses import asdict

    ranker.save(
        args.out,
        items.spec,
        extra={"training": asdict(config), "history": history},
        overwrite=args.overwrite,
    )
    epochs, val_map = summarise_history(history)
    result = {"out": args.out, "epochs": epochs, "members": args.members, "best_val_map": val_map}
    what = "a ranker" if args.members == 1 else f"an ensemble of {args.members} rankers"
    emit(
        args,
        result,
        f"trained {what} for {epochs} epochs (validation mAP {val_map:.3f}) -> {args.out}",
    )
    return 0
