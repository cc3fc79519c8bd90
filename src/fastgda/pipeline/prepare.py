"""The build's first steps: the data, the query prompts and their splits, the model, the generated queries, the
Fisher. Each reuses what an earlier run left in the build folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._artifacts import write_json_atomic, write_text_atomic
from ..data import CAPTIONS_FILE, open_dataset
from ..errors import FastGDAError

if TYPE_CHECKING:
    from .build import BuildConfig

SPLITS = ("train", "val", "test")


def prepare_data(source: Path, out: Path):
    from ..data import convert_shards

    if source.suffix == ".tar" or (source.is_dir() and any(source.glob("*.tar"))):
        folder = out / "data"
        if not (folder / CAPTIONS_FILE).is_file():
            convert_shards(source, folder)
        return open_dataset(folder)
    return open_dataset(source)


def draw_prompts(dataset, out: Path, config: BuildConfig, prompts_file):
    """Query prompts per split, each with its source image, and the training set the model sees.

    Prompts are drawn from distinct source images (seeded) and split by source image. With ``train_model``,
    each source image's last caption becomes the prompt and is held out of the training set (images with one
    caption are not drawn); with a given model the prompt is the last caption as it is.
    """
    from ..diffusion.queries import read_prompts

    path = out / "prompts.json"
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        return saved["splits"], open_dataset(saved["train_data"])
    counts = {
        "train": config.num_train_queries,
        "val": config.num_val_queries,
        "test": config.num_test_queries,
    }
    rng = np.random.default_rng(config.seed)
    if prompts_file:
        records = read_prompts(prompts_file)
        order = rng.permutation(len(records)).tolist()
        splits, start = {}, 0
        for split in SPLITS:
            splits[split] = [records[i] for i in order[start : start + counts[split]]]
            start += counts[split]
        train_data = dataset
    else:
        hold_out = bool(config.train_model)
        eligible = [i for i in range(len(dataset)) if not hold_out or len(dataset.captions(i)) > 1]
        needed = sum(counts.values())
        if len(eligible) < needed:
            raise FastGDAError(
                f"{len(eligible)} images can give a query prompt, {needed} are asked for; lower the query counts"
                + (" (held-out prompts need images with two or more captions)" if hold_out else "")
            )
        order = rng.permutation(eligible).tolist()
        splits, start = {}, 0
        for split in SPLITS:
            rows = order[start : start + counts[split]]
            splits[split] = [{"prompt": dataset.captions(i)[-1], "source_id": int(i)} for i in rows]
            start += counts[split]
        train_data = (
            holdout_captions(dataset, order[:needed], out / "train-data") if hold_out else dataset
        )
    write_json_atomic(path, {"splits": splits, "train_data": str(train_data.root)})
    return splits, train_data


def holdout_captions(dataset, rows, folder: Path):
    """The dataset without the last caption of ``rows``: a captions.jsonl naming the original images."""
    if not (folder / CAPTIONS_FILE).is_file():
        held = set(int(r) for r in rows)

        def lines():  # one line at a time: N records are never held together
            for i in range(len(dataset)):
                captions = list(dataset.captions(i))
                if i in held:
                    captions = captions[:-1]
                file = str(Path(dataset.image_path(i)).resolve())
                yield json.dumps({"file": file, "captions": captions, "id": str(i)}) + "\n"

        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / CAPTIONS_FILE, lines())
    return open_dataset(folder)


def prepare_model(train_data, out: Path, config: BuildConfig, model) -> Path:
    from .._artifacts import cache_dir
    from ..devices import resolve_device
    from ..diffusion import DiffusionTrainConfig, TextToImageModel, train_diffusion
    from ..diffusion.names import resolve_model_dir
    from ..diffusion.training import prepare_training_data

    if model is not None:
        return resolve_model_dir(model)
    folder = out / "model"
    if not (folder / "manifest.json").is_file():
        recipe = DiffusionTrainConfig(
            steps=config.model_steps, seed=config.seed, checkpoint_every=250
        )
        network = TextToImageModel.from_preset(config.train_model, seed=config.seed)
        network.to(resolve_device(config.device)).set_precision(config.dtype)
        data = prepare_training_data(network, train_data, cache=cache_dir())
        train_diffusion(network, train_data, folder, recipe, data=data)
    return folder


def generate_queries(model_dir: Path, out: Path, splits: dict, config: BuildConfig) -> dict:
    from ..diffusion import TextToImageModel
    from ..diffusion.queries import QuerySet, SamplerConfig

    model = None
    sets = {}
    for n, split in enumerate(SPLITS):
        folder = out / f"queries-{split}"
        if not (folder / "manifest.json").is_file():
            model = model or TextToImageModel.from_pretrained(
                model_dir, device=config.device, dtype=config.dtype
            )
            sampler = SamplerConfig(
                num_steps=config.sample_steps, guidance_scale=config.guidance_scale
            )
            QuerySet.generate(
                model, splits[split], folder, seed=config.seed + 100_000 * n, sampler=sampler,
                model_dir=model_dir,
            )  # fmt: skip
        sets[split] = folder
    return sets


def prepare_fisher(model_dir: Path, train_data, out: Path, config: BuildConfig) -> Path:
    from .._artifacts import cache_dir
    from ..diffusion import TextToImageModel
    from ..unlearning import Fisher, FisherConfig

    folder = out / "fisher"
    if not (folder / "manifest.json").is_file():
        model = TextToImageModel.from_pretrained(
            model_dir, device=config.device, dtype=config.dtype
        )
        fisher_config = FisherConfig(num_samples=config.fisher_samples, seed=config.seed)
        Fisher.fit(model, train_data, fisher_config, encoded_cache=cache_dir()).save(folder)
    return folder
