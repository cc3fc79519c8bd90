"""``fastgda model``: train the tiny text-to-image model, and sample query sets from any model."""

from __future__ import annotations

import shlex

from ._common import (
    COUNT,
    SEED,
    add_compute_flags,
    add_config_flags,
    add_json_flag,
    compute_from_args,
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
        help="architecture preset of a model trained from scratch (default tiny16)",
    )
    train.add_argument(
        "--init",
        help="fine-tune a Stable Diffusion pipeline folder (model_index.json) instead of training a preset "
        "from scratch; the recipe flags describe the fine-tune, and leave-K-out retrains repeat it from the "
        "pipeline's weights",
    )
    add_config_flags(train, DiffusionTrainConfig, aliases={"stop_at_step": "--stop-at"})
    train.add_argument(
        "--checkpoint-dir", help="checkpoint folder (default OUT.checkpoints); resumed if present"
    )
    add_compute_flags(train)
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
    add_compute_flags(sample)
    sample.add_argument("--threads", type=COUNT, help="torch threads")
    sample.add_argument("--overwrite", action="store_true")
    add_json_flag(sample)
    sample.set_defaults(handler=handle_sample)


def handle_train(args) -> int:
    from pathlib import Path

    from .._artifacts import cache_dir
    from ..data import open_dataset
    from ..diffusion import DiffusionTrainConfig, TextToImageModel, train_diffusion
    from ..diffusion.training import prepare_training_data
    from ..errors import ConfigError

    config = config_from_args(args, DiffusionTrainConfig)
    set_threads(args.threads)
    device, dtype = compute_from_args(args)
    if args.init and not (Path(args.init) / "model_index.json").is_file():
        # A model is retrained from where its recorded recipe began: the pipeline, or a preset's fresh weights.
        # A second fine-tune on top of a trained model would have no such start.
        raise ConfigError(
            f"--init {args.init}: expected a Stable Diffusion pipeline folder (with model_index.json)"
        )
    dataset = open_dataset(args.data, args.images)
    if args.init:
        model = TextToImageModel.from_pretrained(args.init, device=device, dtype=dtype)
    else:
        model = TextToImageModel.from_preset(args.preset, seed=config.seed).to(device)
        model.set_precision(dtype)
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
    from ..diffusion import TextToImageModel
    from ..diffusion.names import resolve_model_dir
    from ..diffusion.queries import SamplerConfig, read_prompts, write_query_set

    sampler = config_from_args(args, SamplerConfig)
    set_threads(args.threads)
    model_dir = resolve_model_dir(args.model)
    prompts = read_prompts(args.prompts)
    device, dtype = compute_from_args(args)
    model = TextToImageModel.from_pretrained(model_dir, device=device, dtype=dtype)
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
