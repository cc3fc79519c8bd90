"""``fastgda model``: train the tiny text-to-image model, and sample query sets from any model."""

from __future__ import annotations

import shlex

from ._common import (
    COUNT,
    SEED,
    add_config_flags,
    add_json_flag,
    config_from_args,
    emit,
    set_threads,
)


def add_parser(sub) -> None:
    from ..diffusion.model import PRESETS
    from ..diffusion.queries import SamplerConfig
    from ..diffusion.training import DiffusionTrainConfig

    parser = sub.add_parser(
        "model",
        help="train or sample the text-to-image model",
        description="Train the tiny text-to-image model or sample query sets.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    train = verbs.add_parser(
        "train",
        help="train a model on a captioned dataset (resumable)",
        description="Train with AdamW and EMA; re-running the command resumes it.",
    )
    train.add_argument(
        "--data", required=True, help="dataset: a world, a folder with captions.jsonl, or COCO json"
    )
    train.add_argument("--images", help="image folder for a COCO captions file")
    train.add_argument("--out", required=True, help="model folder to create")
    train.add_argument(
        "--preset",
        default="tiny16",
        choices=sorted(PRESETS),
        help="architecture preset (default tiny16)",
    )
    add_config_flags(train, DiffusionTrainConfig, aliases={"stop_at_step": "--stop-at"})
    train.add_argument(
        "--checkpoint-dir", help="checkpoint folder (default OUT.checkpoints); resumed if present"
    )
    train.add_argument("--threads", type=COUNT, help="torch threads")
    train.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    train.set_defaults(handler=handle_train)

    sample = verbs.add_parser(
        "sample",
        help="generate a query set from prompts",
        description="Generate images with deterministic DDIM and write a query set.",
    )
    sample.add_argument(
        "--model", required=True, help="model folder, SD pipeline folder, or 'shipped'"
    )
    sample.add_argument(
        "--prompts", required=True, help="text file (one prompt a line) or JSONL with 'prompt'"
    )
    sample.add_argument("--out", required=True, help="query-set folder to create")
    sample.add_argument("--seed", type=SEED, default=0, help="query i uses seed + i (default 0)")
    add_config_flags(sample, SamplerConfig, aliases={"num_steps": "--steps"})
    sample.add_argument("--threads", type=COUNT, help="torch threads")
    sample.add_argument("--overwrite", action="store_true")
    add_json_flag(sample)
    sample.set_defaults(handler=handle_sample)


def handle_train(args) -> int:
    from .._artifacts import cache_dir
    from ..data import open_dataset
    from ..diffusion import DiffusionTrainConfig, TextToImageModel, train_diffusion
    from ..diffusion.training import prepare_training_data

    config = config_from_args(args, DiffusionTrainConfig)
    set_threads(args.threads)
    dataset = open_dataset(args.data, args.images)
    model = TextToImageModel.from_preset(args.preset, seed=config.seed)
    command = "fastgda " + shlex.join(args.argv)
    train_diffusion(
        model,
        dataset,
        args.out,
        config,
        checkpoint_dir=args.checkpoint_dir,
        command=command,
        overwrite=args.overwrite,
        data=prepare_training_data(model, dataset, cache=cache_dir()),
    )
    print(f"wrote model to {args.out}")
    return 0


def handle_sample(args) -> int:
    from ..app.pack import resolve_model_dir
    from ..diffusion import TextToImageModel
    from ..diffusion.queries import SamplerConfig, read_prompts, write_query_set

    sampler = config_from_args(args, SamplerConfig)
    set_threads(args.threads)
    model_dir = resolve_model_dir(args.model)
    prompts = read_prompts(args.prompts)
    model = TextToImageModel.from_pretrained(model_dir)
    queries = write_query_set(
        model,
        prompts,
        args.out,
        seed=args.seed,
        sampler=sampler,
        model_dir=model_dir,
        overwrite=args.overwrite,
    )
    emit(
        args,
        {"out": str(args.out), "num_queries": len(queries)},
        f"wrote {len(queries)} queries to {args.out}",
    )
    return 0
