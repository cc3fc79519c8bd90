"""``fastgda ranker train``: distil the teacher into a ranker over frozen features."""

from __future__ import annotations

from ._common import add_json_flag, emit, set_threads


def add_parser(sub) -> None:
    from ..ranker import RankerTrainConfig

    d = RankerTrainConfig()
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
    train.add_argument("--epochs", type=int, default=d.epochs)
    train.add_argument("--batch-queries", type=int, default=d.batch_queries)
    train.add_argument("--pairs-per-query", type=int, default=d.pairs_per_query)
    train.add_argument("--lr", type=float, default=d.lr)
    train.add_argument(
        "--hidden", type=int, nargs="+", default=list(d.hidden), help="hidden layer widths"
    )
    train.add_argument("--out-dim", type=int, default=d.out_dim)
    train.add_argument("--loss", choices=["bce", "mse"], default=d.loss)
    train.add_argument("--target", choices=["rank", "score"], default=d.target)
    train.add_argument(
        "--outliers", type=float, default=d.outlier_prob, help="share of outlier pairs"
    )
    train.add_argument("--candidate-fraction", type=float, default=d.candidate_fraction)
    train.add_argument(
        "--train-top",
        type=int,
        help="rank labels over the teacher's top T of each pool only (default: the whole pool)",
    )
    train.add_argument("--patience", type=int, default=d.patience)
    train.add_argument(
        "--part-weights",
        type=float,
        nargs="+",
        help="input-variance shares of the spec's parts, in spec order (default equal)",
    )
    train.add_argument(
        "--no-balance-parts",
        action="store_true",
        help="standardise columns only (default: each part of the spec gets the same input variance)",
    )
    train.add_argument(
        "--members",
        type=int,
        default=d.members,
        help="train R rankers (seeds SEED..SEED+R-1) and average their cosines: steadier with few teacher "
        "queries, at R x the training time, embedding width and index memory",
    )
    train.add_argument("--seed", type=int, default=d.seed)
    train.add_argument("--threads", type=int)
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
