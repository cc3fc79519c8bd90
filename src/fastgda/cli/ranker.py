"""``fastgda ranker train``: distil the teacher into a ranker over frozen features."""

from __future__ import annotations

from dataclasses import asdict

from ..devices import DEVICE_HELP
from ._common import COUNT, add_config_flags, add_json_flag, config_from_args, emit, set_threads


def add_parser(sub) -> None:
    from ..ranker.training import PRESETS, RankerTrainConfig

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
    train.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="paper",
        help="starting settings, each flag below overriding one field: paper (method.md §5) or demo (the "
        "embedded world's: image part weight 0.1, labels over the top 256, three members) (default: paper)",
    )
    add_config_flags(train, RankerTrainConfig, aliases={"outlier_prob": "--outliers"})
    train.add_argument(
        "--device",
        default="auto",
        help=f"where the training steps run: {DEVICE_HELP} (always float32: the MLP is small enough that "
        "reduced precision would buy nothing)",
    )
    train.add_argument("--threads", type=COUNT)
    train.add_argument("--overwrite", action="store_true")
    add_json_flag(train)
    train.set_defaults(handler=handle_train)


def handle_train(args) -> int:
    from ..devices import resolve_device
    from ..features import Features
    from ..ground_truth import GroundTruth
    from ..ranker import Ranker, RankerTrainConfig, summarise_history
    from ..ranker.training import PRESETS

    config = config_from_args(args, RankerTrainConfig, base=PRESETS[args.preset]())
    set_threads(args.threads)
    device = resolve_device(args.device)  # an unknown or absent device fails here, before any work
    items = Features.load(args.items)
    queries = Features.load(args.queries, expect_spec=items.spec)
    truth = GroundTruth.load(args.ground_truth)
    validation = None
    if args.val_queries and args.val_ground_truth:
        validation = (
            Features.load(args.val_queries, expect_spec=items.spec),
            GroundTruth.load(args.val_ground_truth),
        )
    ranker = Ranker.distil(queries, items, truth, config, validation=validation, device=device)
    ranker.save(args.out, extra={"training": asdict(config)}, overwrite=args.overwrite)
    epochs, val_map = summarise_history(ranker.history)
    result = {
        "out": args.out,
        "epochs": epochs,
        "members": config.members,
        "best_val_map": val_map,
        "validation_map": ranker.validation,
    }
    what = "a ranker" if config.members == 1 else f"an ensemble of {config.members} rankers"
    lines = [f"trained {what} for {epochs} epochs (validation mAP {val_map:.3f}) -> {args.out}"]
    if ranker.validation:
        lines.append(
            "validation mAP within the teacher's pools, the ranker beside its untuned parts:"
        )
        lines += [f"  {name:<40} {value:.3f}" for name, value in ranker.validation.items()]
        best = max(ranker.validation, key=ranker.validation.get)
        if best != "ranker":
            lines.append(
                f"WARNING: the ranker loses to {best} on validation: it would attribute worse than that plain "
                "cosine (too few teacher queries?). `fastgda attributor build` serves the baseline instead "
                "unless given --scorer ranker."
            )
    emit(args, result, "\n".join(lines))
    return 0
