"""``fastgda embed``: frozen-encoder features of a training set or a query set (resumable)."""

from __future__ import annotations

from ._common import (
    COUNT,
    add_compute_flags,
    add_executor_flags,
    add_json_flag,
    compute_from_args,
    emit,
    executor_from_args,
    set_threads,
)


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "embed",
        help="embed a dataset or query set with frozen encoders",
        description="Write a features artifact: the raw concatenation of the spec's encoders for every row "
        "(image + first caption; for a query set, image + prompt). Re-running resumes.",
    )
    parser.add_argument("--data", required=True, help="training dataset or query-set folder")
    parser.add_argument(
        "--spec", default="effnet+minilm", help="encoders joined by '+' (default effnet+minilm)"
    )
    parser.add_argument("--out", required=True, help="features folder to create")
    parser.add_argument("--chunk-size", type=COUNT, default=512, help="rows per resumable chunk")
    parser.add_argument(
        "--batch-size",
        type=COUNT,
        help="items per encoder pass (default: each encoder's own on a CPU, the most a GPU's free memory holds)",
    )
    parser.add_argument(
        "--store-dtype",
        choices=["float32", "float16"],
        default="float32",
        help="precision of the features on disk (default float32)",
    )
    add_compute_flags(parser, "encoders")
    add_executor_flags(parser)
    parser.add_argument("--threads", type=COUNT)
    add_json_flag(parser)
    parser.set_defaults(handler=handle)


def handle(args) -> int:
    from ..features import embed_dataset

    set_threads(args.threads)
    compute_from_args(args)  # an unknown or absent device fails here, before any work
    executor = executor_from_args(args)
    features = embed_dataset(
        args.data,
        args.spec,
        args.out,
        args.chunk_size,
        executor,
        store_dtype=args.store_dtype,
        device=args.device,  # "auto" is resolved by each worker, on the machine it runs on
        dtype=args.dtype,
        batch_size=args.batch_size,
    )
    result = {"out": args.out, "spec": features.spec, "shape": list(features.values.shape)}
    emit(
        args,
        result,
        f"wrote {features.values.shape[0]} x {features.dim} {features.spec} features to {args.out}",
    )
    return 0
