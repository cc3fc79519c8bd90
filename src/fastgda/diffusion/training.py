"""Train a ``TextToImageModel`` on a captioned dataset: AdamW, EMA weights, caption dropout, resumable.

One readable loop. Every step draws its batch from a generator seeded by (seed, step), so a run interrupted at
any point and resumed from its last checkpoint takes exactly the steps an uninterrupted run would have taken.
Checkpoints are single safetensors files written atomically; the final artifact holds the EMA weights.
"""

from __future__ import annotations

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

from .._artifacts import (
    describe_difference,
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
from ..progress import bar as progress_bar
from .encoded import TrainingData, prepare_training_data
from .model import TextToImageModel

__all__ = ["DiffusionTrainConfig", "TrainingData", "prepare_training_data", "train_diffusion"]

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

    @classmethod
    def finetune(cls, steps: int) -> DiffusionTrainConfig:
        """Fine-tuning a pretrained pipeline (Stable Diffusion class) on the user's data: the learning rate of
        the usual SD fine-tuning recipes (1e-5), 8 images a step, a short warm-up."""
        return cls(steps=steps, batch_size=8, lr=1e-5, warmup_steps=min(100, steps // 10))

    @property
    def last_step(self) -> int:
        """The step the run ends at."""
        return self.steps if self.stop_at_step is None else min(self.stop_at_step, self.steps)


# Fields that do not change the weights a step produces; a checkpoint may be resumed with other values.
_BOOKKEEPING = ("stop_at_step", "checkpoint_every", "keep_checkpoints")


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
    x0 = data.x0[idx]
    noise = torch.randn(x0.shape, generator=gen)
    return x0, states, mask, noise, t


def _checkpoint_files(checkpoint_dir: Path) -> list[Path]:
    return sorted(checkpoint_dir.glob("step_*.safetensors"))


def _step_of(path: Path) -> int:
    return int(path.stem.removeprefix("step_"))


def _save_checkpoint(
    checkpoint_dir: Path, step: int, model, ema, optimizer, meta: dict, keep: int = 2
) -> None:
    # Stored from the host, so a checkpoint resumes on any device.
    tensors = {
        f"unet.{name}": p.detach().cpu().contiguous() for name, p in model.unet.named_parameters()
    }
    tensors.update({f"ema.{name}": e.cpu().contiguous() for name, e in ema.items()})
    for i, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"opt.{i}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
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
    meta = _checkpoint_meta(model, config, data_info)
    model.unet.train()
    ema = {name: p.detach().clone() for name, p in model.unet.named_parameters()}
    optimizer = torch.optim.AdamW(
        model.unet.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    start_step, history = _resume(checkpoint_dir, config, meta, model, ema, optimizer)
    # Nothing to prepare when a checkpoint already sits at the last step (exporting an early-stopped model).
    if data is not None and data.x0.shape[0] != len(dataset):
        raise IncompatibleArtifactError(
            f"data holds {data.x0.shape[0]} images but the dataset has {len(dataset)}; "
            "prepare the training data from this dataset"
        )
    if data is None and start_step < config.last_step:
        data = prepare_training_data(model, dataset)
    began = time.perf_counter()
    _run_steps(model, data, config, ema, optimizer, start_step, history, checkpoint_dir, meta)
    training = {
        "command": command,
        "config": asdict(config),
        "data": data_info,
        "seconds_this_run": round(time.perf_counter() - began, 1),
        "resumed_from_step": start_step,
        "final_step": config.last_step,
        "loss_history": history,
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    _export_ema(model, ema, out_dir, training, overwrite)
    return model


def _checkpoint_meta(
    model: TextToImageModel, config: DiffusionTrainConfig, data_info: dict
) -> dict:
    """What a checkpoint must match to be resumed: the recipe (less bookkeeping), the data's hash, the model."""
    # Round-trip through JSON so tuples compare equal to the lists a checkpoint stores.
    return json.loads(
        json.dumps(
            {
                "config": {k: v for k, v in asdict(config).items() if k not in _BOOKKEEPING},
                "data_hash": data_info["content_hash"],
                "model": model.config,
            }
        )
    )


def _resume(
    checkpoint_dir: Path, config: DiffusionTrainConfig, meta: dict, model, ema: dict, optimizer
) -> tuple[int, list[list[float]]]:
    """Load the newest usable checkpoint into ``model``, ``ema`` and ``optimizer``; returns (its step, the loss
    history so far), or (0, []) without one.

    Raises:
        IncompatibleArtifactError: the checkpoint was made with another recipe, data or model.
    """
    # The newest checkpoint at or before the last step (a later one cannot be undone).
    checkpoints = [c for c in _checkpoint_files(checkpoint_dir) if _step_of(c) <= config.last_step]
    if not checkpoints:
        return 0, []
    saved = _load_checkpoint(checkpoints[-1], model, ema, optimizer)
    saved["config"] = {k: v for k, v in saved["config"].items() if k not in _BOOKKEEPING}
    for key in ("config", "data_hash", "model"):
        if saved[key] != meta[key]:
            raise IncompatibleArtifactError(
                f"checkpoint {checkpoints[-1]} was made with another {key} "
                f"({describe_difference(saved[key], meta[key])}); "
                f"delete {checkpoint_dir} to start over, or resume with the original settings"
            )
    logger.info("resuming from %s at step %d", checkpoints[-1], saved["step"])
    return saved["step"], saved.get("history", [])


def _run_steps(
    model, data, config: DiffusionTrainConfig, ema: dict, optimizer, start_step: int,
    history: list[list[float]], checkpoint_dir: Path, meta: dict,
) -> None:  # fmt: skip
    """Steps ``start_step`` to ``config.last_step``: AdamW on the denoising loss, the EMA after each, the
    running loss into ``history`` every 100 steps, and a checkpoint every ``config.checkpoint_every``."""
    num_timesteps = model.scheduler.config.num_train_timesteps
    running = None
    bar = progress_bar(total=config.last_step, initial=start_step, desc="training")
    for step in range(start_step, config.last_step):
        # Drawn on the host (the same batch on every device), then moved to the model's device.
        x0, states, mask, noise, t = (
            None if v is None else v.to(model.device)
            for v in draw_batch(data, step, config, num_timesteps)
        )
        loss = model.loss(x0, states, mask, noise, t).mean()
        if not torch.isfinite(loss):
            raise FastGDAError(
                f"training loss became {loss.item()} at step {step}; lower --lr, or check the data for NaNs "
                f"(the last good checkpoint in {checkpoint_dir} is kept)"
            )
        _optimizer_step(model, optimizer, loss, step, config)
        _update_ema(ema, model, step, config)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        if (step + 1) % 100 == 0:
            history.append([step + 1, round(running, 5)])
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.last_step:
            _save_checkpoint(checkpoint_dir, step + 1, model, ema, optimizer, {**meta, "history": history},
                             config.keep_checkpoints)  # fmt: skip
    bar.close()


def _optimizer_step(
    model, optimizer, loss: torch.Tensor, step: int, config: DiffusionTrainConfig
) -> None:
    """One AdamW step at the schedule's learning rate, gradients clipped to ``config.grad_clip``."""
    for group in optimizer.param_groups:
        group["lr"] = _lr_at(step, config)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.unet.parameters(), config.grad_clip)
    optimizer.step()


@torch.no_grad()
def _update_ema(ema: dict, model, step: int, config: DiffusionTrainConfig) -> None:
    decay = min(config.ema_decay, (1 + step) / (10 + step))  # short EMA memory early in training
    for name, p in model.unet.named_parameters():
        ema[name].lerp_(p.detach(), 1 - decay)


def _export_ema(model, ema: dict, out_dir: Path, training: dict, overwrite: bool) -> None:
    """Copy the EMA weights into ``model`` and save it to ``out_dir`` with ``training`` in its manifest."""
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            p.copy_(ema[name])
    model.unet.eval()
    model.save(out_dir, extra={"training": training}, overwrite=overwrite)
