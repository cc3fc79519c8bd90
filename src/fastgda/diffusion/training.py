"""Train a ``TextToImageModel`` on a captioned dataset: AdamW, EMA weights, caption dropout, resumable.

One readable loop. Every step draws its batch from a generator seeded by (seed, step), so a run interrupted at
any point and resumed from its last checkpoint takes exactly the steps an uninterrupted run would have taken.
Checkpoints are single safetensors files written atomically; the final artifact holds the EMA weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .._artifacts import (
    MANIFEST_NAME,
    atomic_dir,
    describe_difference,
    read_manifest,
    verify_checksums,
    write_manifest,
)
from ..config import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    Bounds,
    check_settings,
    setting,
)
from ..data import ImageCaptionDataset
from ..errors import DatasetError, FastGDAError, IncompatibleArtifactError
from .model import TextToImageModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiffusionTrainConfig:
    """Recipe for training the world model; also the recipe every leave-K-out retrain reuses."""

    steps: int = setting(
        10_000,
        "length of the learning-rate schedule; held-out adherence still rises at 10k",
        bounds=AT_LEAST_ONE,
    )
    stop_at_step: int | None = setting(
        None,
        "end the run at this step of the schedule (early stopping; default: run it all)",
        bounds=AT_LEAST_ONE,
    )
    batch_size: int = setting(64, "training images per step", bounds=AT_LEAST_ONE)
    lr: float = setting(1e-3, "AdamW peak learning rate", bounds=POSITIVE)
    min_lr_ratio: float = setting(
        0.1, "the cosine decay ends at this share of lr", bounds=PROBABILITY
    )
    warmup_steps: int = setting(200, "linear learning-rate warm-up steps", bounds=NON_NEGATIVE)
    weight_decay: float = setting(0.01, "AdamW weight decay", bounds=NON_NEGATIVE)
    grad_clip: float = setting(1.0, "gradient norm clip", bounds=POSITIVE)
    ema_decay: float = setting(
        0.999,
        "EMA of the weights; the EMA weights are what gets saved and sampled",
        bounds=Bounds(0, 1),
    )
    caption_dropout: float = setting(
        0.1, "share of empty captions, for classifier-free guidance", bounds=PROBABILITY
    )
    seed: int = setting(0, "seeds the weights and every batch", bounds=NON_NEGATIVE)
    # Leave-K-out retrains: draw each step's items by their ids in the full set, a removed item's slot refilled
    # from a separate stream, so every other slot sees the item, caption, noise and timestep of the full-data run
    # (common random numbers; the batch distribution stays uniform over the kept items). Identical to the
    # default on data with nothing removed.
    draw_by_item_id: bool = setting(False, "draw batches by item id (coupled leave-K-out retrains)")
    checkpoint_every: int = setting(250, "steps between resumable checkpoints", bounds=AT_LEAST_ONE)
    keep_checkpoints: int = setting(
        2,
        "checkpoints kept (older ones are deleted); raise it to study adherence against steps",
        bounds=AT_LEAST_ONE,
    )

    def __post_init__(self):
        check_settings(self)

    @property
    def last_step(self) -> int:
        """The step the run ends at."""
        return self.steps if self.stop_at_step is None else min(self.stop_at_step, self.steps)


# Fields that do not change the weights a step produces; a checkpoint may be resumed with other values.
_BOOKKEEPING = ("stop_at_step", "checkpoint_every", "keep_checkpoints")


@dataclass
class TrainingData:
    """Everything a step draws from, precomputed once: x0 (N, C, h, w), caption states and their owners."""

    x0: torch.Tensor
    states: torch.Tensor  # (num_captions, S, D)
    mask: torch.Tensor | None  # (num_captions, S)
    caption_start: torch.Tensor  # (N,) first caption row of each image
    caption_count: torch.Tensor  # (N,)
    null_states: torch.Tensor  # (1, S, D) the empty caption
    null_mask: torch.Tensor | None
    item_ids: torch.Tensor | None = (
        None  # (N,) ids in the full set of a subset's rows (None: 0..N-1)
    )
    num_full: int | None = None  # size of the full set a subset was taken from (None: N)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The encoding of a full set as named tensors (for safetensors); a subset is stored as its full set."""
        if self.item_ids is not None:
            raise FastGDAError("store the full set's encoding, not a subset's")
        named = {
            "x0": self.x0,
            "states": self.states,
            "caption_start": self.caption_start,
            "caption_count": self.caption_count,
            "null_states": self.null_states,
            "mask": self.mask,
            "null_mask": self.null_mask,
        }
        return {k: v.contiguous() for k, v in named.items() if v is not None}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> TrainingData:
        return cls(
            x0=tensors["x0"],
            states=tensors["states"],
            mask=tensors.get("mask"),
            caption_start=tensors["caption_start"],
            caption_count=tensors["caption_count"],
            null_states=tensors["null_states"],
            null_mask=tensors.get("null_mask"),
        )

    def subset(self, rows) -> TrainingData:
        """The data of ``rows`` only, in that order (leave-K-out retrains reuse one encoding of the full set).

        The subset remembers its rows' ids in the full set, for ``DiffusionTrainConfig.draw_by_item_id``."""
        rows = torch.as_tensor(list(rows), dtype=torch.long)
        counts = self.caption_count[rows]
        # Caption rows of the kept images, each image's captions contiguous and in their original order.
        owner = torch.repeat_interleave(torch.arange(len(rows)), counts)
        first = torch.cumsum(counts, 0) - counts
        caption_rows = self.caption_start[rows][owner] + (torch.arange(len(owner)) - first[owner])
        return TrainingData(
            x0=self.x0[rows],
            states=self.states[caption_rows],
            mask=None if self.mask is None else self.mask[caption_rows],
            caption_start=first,
            caption_count=counts,
            null_states=self.null_states,
            null_mask=self.null_mask,
            item_ids=rows if self.item_ids is None else self.item_ids[rows],
            num_full=self.x0.shape[0] if self.num_full is None else self.num_full,
        )


ENCODED_KIND = "encoded_training_data"
ENCODED_FORMAT_VERSION = 1


def prepare_training_data(
    model: TextToImageModel,
    dataset: ImageCaptionDataset,
    progress: bool = True,
    cache: str | os.PathLike | None = None,
) -> TrainingData:
    """Encode every image and caption once (the text encoder and VAE are frozen).

    ``cache``: a folder (e.g. ``fastgda._artifacts.cache_dir()``) that keeps one encoding per (dataset content,
    ``model.encoding_key()``), so the Fisher, the teacher and training read it instead of encoding again.
    """
    if cache is None:
        return _encode(model, dataset, progress)
    key = {"content_hash": dataset.content_hash, "model": model.encoding_key()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    folder = Path(cache) / "encoded" / digest
    if (folder / MANIFEST_NAME).is_file():
        manifest = read_manifest(folder, ENCODED_KIND, ENCODED_FORMAT_VERSION)
        if manifest["config"] == key:
            verify_checksums(folder, manifest)
            return TrainingData.from_tensors(load_file(folder / "encoded.safetensors"))
    data = _encode(model, dataset, progress)
    tensors = data.tensors()
    with atomic_dir(folder, overwrite=True) as tmp:
        save_file(tensors, tmp / "encoded.safetensors")
        write_manifest(
            tmp,
            ENCODED_KIND,
            ENCODED_FORMAT_VERSION,
            config=key,
            shapes={name: list(t.shape) for name, t in tensors.items()},
        )
    return data


def _encode(model: TextToImageModel, dataset: ImageCaptionDataset, progress: bool) -> TrainingData:
    size = model.image_size
    x0_parts, state_parts, mask_parts, counts = [], [], [], []
    chunk = 256
    for start in tqdm(range(0, len(dataset), chunk), desc="encoding data", disable=not progress):
        rows = range(start, min(start + chunk, len(dataset)))
        images = dataset.load_images(rows, size=size)
        x0_parts.append(model.encode_images(images).cpu())  # the encoding lives on the host
        captions = [c for i in rows for c in dataset.captions(i)]
        counts.extend(len(dataset.captions(i)) for i in rows)
        states, mask = model.encode_prompts(captions)
        state_parts.append(states.cpu())
        mask_parts.append(None if mask is None else mask.cpu())
    counts_t = torch.tensor(counts, dtype=torch.long)
    null_states, null_mask = model.encode_prompts([""])
    null_states, null_mask = null_states.cpu(), None if null_mask is None else null_mask.cpu()
    return TrainingData(
        x0=torch.cat(x0_parts),
        states=torch.cat(state_parts),
        mask=None if mask_parts[0] is None else torch.cat(mask_parts),
        caption_start=torch.cumsum(counts_t, 0) - counts_t,
        caption_count=counts_t,
        null_states=null_states,
        null_mask=null_mask,
    )


def _lr_at(step: int, config: DiffusionTrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def _rows_by_item_id(data: TrainingData, step: int, config, ids: torch.Tensor) -> torch.Tensor:
    """Rows of the items ``ids`` (B,) drawn over the full set; a removed item's slot gets a kept row drawn
    uniformly from a stream of its own, so the main stream, and with it every other slot, is unchanged."""
    row_of = torch.full((data.num_full,), -1, dtype=torch.long)
    row_of[data.item_ids] = torch.arange(data.x0.shape[0])
    idx = row_of[ids]
    removed = idx < 0
    if removed.any():
        spare = torch.Generator().manual_seed(2**62 + config.seed * 1_000_003 + step)
        idx[removed] = torch.randint(0, data.x0.shape[0], (int(removed.sum()),), generator=spare)
    return idx


def draw_batch(data: TrainingData, step: int, config: DiffusionTrainConfig, num_timesteps: int):
    """The batch of ``step``: a pure function of (seed, step), so resumed runs match uninterrupted ones.

    Returns:
        x0 (B, C, h, w), states (B, S, D), mask (B, S) or None, noise (B, C, h, w), t (B,).
    """
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    batch = config.batch_size
    if config.draw_by_item_id and data.item_ids is not None:
        idx = _rows_by_item_id(
            data, step, config, torch.randint(0, data.num_full, (batch,), generator=gen)
        )
    else:
        idx = torch.randint(0, data.x0.shape[0], (batch,), generator=gen)
    pick = (torch.rand(batch, generator=gen) * data.caption_count[idx]).long()
    rows = data.caption_start[idx] + pick
    drop = torch.rand(batch, generator=gen) < config.caption_dropout
    states = torch.where(drop.view(-1, 1, 1), data.null_states, data.states[rows])
    mask = (
        None
        if data.mask is None
        else torch.where(drop.view(-1, 1), data.null_mask, data.mask[rows])
    )
    t = torch.randint(0, num_timesteps, (batch,), generator=gen)
    noise = torch.randn(data.x0[idx].shape, generator=gen)
    return data.x0[idx], states, mask, noise, t


def _checkpoint_files(checkpoint_dir: Path) -> list[Path]:
    return sorted(checkpoint_dir.glob("step_*.safetensors"))


def _step_of(path: Path) -> int:
    return int(path.stem.removeprefix("step_"))


def _save_checkpoint(
    checkpoint_dir: Path, step: int, model, ema, optimizer, meta: dict, keep: int = 2
) -> None:
    tensors = {f"unet.{name}": p.detach().contiguous() for name, p in model.unet.named_parameters()}
    tensors.update({f"ema.{name}": e.contiguous() for name, e in ema.items()})
    for i, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"opt.{i}.{key}"] = torch.as_tensor(value).detach().contiguous()
    path = checkpoint_dir / f"step_{step:07d}.safetensors"
    tmp = path.with_suffix(".tmp")
    save_file(tensors, tmp, metadata={"meta": json.dumps({**meta, "step": step})})
    os.replace(tmp, path)  # atomic: a crash leaves the previous checkpoint intact
    for old in _checkpoint_files(checkpoint_dir)[:-keep]:
        old.unlink()


def _load_checkpoint(path: Path, model, ema, optimizer) -> dict:
    from safetensors import safe_open

    with safe_open(path, "pt") as handle:
        meta = json.loads(handle.metadata()["meta"])
    tensors = load_file(path)
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            p.copy_(tensors[f"unet.{name}"])
            ema[name].copy_(tensors[f"ema.{name}"])
    state = optimizer.state_dict()
    params = state["param_groups"][0]["params"]
    state["state"] = {
        i: {key.split(".", 2)[2]: tensors[key] for key in tensors if key.startswith(f"opt.{i}.")}
        for i in params
    }
    state["state"] = {i: s for i, s in state["state"].items() if s}
    optimizer.load_state_dict(state)
    return meta


def load_checkpoint_ema(path: str | os.PathLike, model: TextToImageModel) -> int:
    """Copy a checkpoint's EMA weights into ``model.unet`` (to study a run part-way); returns its step."""
    from safetensors import safe_open

    with safe_open(path, "pt") as handle:
        step = json.loads(handle.metadata()["meta"])["step"]
        with torch.no_grad():
            for name, p in model.unet.named_parameters():
                p.copy_(handle.get_tensor(f"ema.{name}"))
    return step


def train_diffusion(
    model: TextToImageModel,
    dataset: ImageCaptionDataset,
    out_dir: str | os.PathLike,
    config: DiffusionTrainConfig = DiffusionTrainConfig(),
    checkpoint_dir: str | os.PathLike | None = None,
    command: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    data: TrainingData | None = None,
) -> TextToImageModel:
    """Train ``model`` on ``dataset`` and write the EMA weights to ``out_dir`` (a model artifact).

    ``data``: ``dataset`` already encoded by ``prepare_training_data`` (or a ``subset`` of a larger encoding);
    without it the dataset is encoded here.

    Resumes from the newest checkpoint in ``checkpoint_dir`` (default ``<out_dir>.checkpoints``) when its config
    and data hash match.

    Raises:
        IncompatibleArtifactError: a checkpoint exists for another config or dataset.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is false.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(
            f"{out_dir} already exists; pass --overwrite or choose another folder"
        )
    checkpoint_dir = (
        Path(checkpoint_dir) if checkpoint_dir else out_dir.with_name(out_dir.name + ".checkpoints")
    )
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    if len(dataset) == 0:
        raise DatasetError(f"{dataset.source} has no images to train on")
    data_info = dataset.describe()
    # Round-trip through JSON so tuples compare equal to the lists a checkpoint stores.
    meta = json.loads(
        json.dumps(
            {
                "config": {k: v for k, v in asdict(config).items() if k not in _BOOKKEEPING},
                "data_hash": data_info["content_hash"],
                "model": model.config,
            }
        )
    )

    model.unet.train()
    ema = {name: p.detach().clone() for name, p in model.unet.named_parameters()}
    optimizer = torch.optim.AdamW(
        model.unet.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    start_step = 0
    history: list[list[float]] = []
    # Resume from the newest checkpoint at or before the last step (a later one cannot be undone).
    checkpoints = [c for c in _checkpoint_files(checkpoint_dir) if _step_of(c) <= config.last_step]
    if checkpoints:
        saved = _load_checkpoint(checkpoints[-1], model, ema, optimizer)
        saved["config"] = {k: v for k, v in saved["config"].items() if k not in _BOOKKEEPING}
        for key in ("config", "data_hash", "model"):
            if saved[key] != meta[key]:
                raise IncompatibleArtifactError(
                    f"checkpoint {checkpoints[-1]} was made with another {key} "
                    f"({describe_difference(saved[key], meta[key])}); "
                    f"delete {checkpoint_dir} to start over, or resume with the original settings"
                )
        start_step = saved["step"]
        history = saved.get("history", [])
        logger.info("resuming from %s at step %d", checkpoints[-1], start_step)

    resumed_from = start_step
    # Nothing to prepare when a checkpoint already sits at the last step (exporting an early-stopped model).
    if data is not None and data.x0.shape[0] != len(dataset):
        raise IncompatibleArtifactError(
            f"data holds {data.x0.shape[0]} images but the dataset has {len(dataset)}; "
            "prepare the training data from this dataset"
        )
    if data is None and start_step < config.last_step:
        data = prepare_training_data(model, dataset, progress=progress)
    num_timesteps = model.scheduler.config.num_train_timesteps
    began = time.perf_counter()
    running = None
    bar = tqdm(total=config.last_step, initial=start_step, desc="training", disable=not progress)
    for step in range(start_step, config.last_step):
        x0, states, mask, noise, t = draw_batch(data, step, config, num_timesteps)
        loss = model.loss(x0, states, mask, noise, t).mean()
        if not torch.isfinite(loss):
            raise FastGDAError(
                f"training loss became {loss.item()} at step {step}; lower --lr, or check the data for NaNs "
                f"(the last good checkpoint in {checkpoint_dir} is kept)"
            )
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.unet.parameters(), config.grad_clip)
        optimizer.step()
        decay = min(
            config.ema_decay, (1 + step) / (10 + step)
        )  # short EMA memory early in training
        with torch.no_grad():
            for name, p in model.unet.named_parameters():
                ema[name].lerp_(p.detach(), 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        if (step + 1) % 100 == 0:
            history.append([step + 1, round(running, 5)])
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.last_step:
            _save_checkpoint(
                checkpoint_dir,
                step + 1,
                model,
                ema,
                optimizer,
                {**meta, "history": history},
                config.keep_checkpoints,
            )
    bar.close()

    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            p.copy_(ema[name])
    model.unet.eval()
    model.save(
        out_dir,
        extra={
            "training": {
                "command": command,
                "config": asdict(config),
                "data": data_info,
                "seconds_this_run": round(time.perf_counter() - began, 1),
                "resumed_from_step": resumed_from,
                "final_step": config.last_step,
                "loss_history": history,
                "torch": torch.__version__,
                "numpy": np.__version__,
            }
        },
        overwrite=overwrite,
    )
    return model
