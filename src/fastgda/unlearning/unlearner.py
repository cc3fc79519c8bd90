"""Unlearning one query: a Monte-Carlo gradient of its diffusion loss and one preconditioned Newton step.

Method.md §3.1 and §3.3: theta_- = theta_0 + (alpha / N) (F + lambda I)^-1 grad L(query, theta_0), an *ascent*
step on the query's loss that moves only the selected layers (cross-attention K/V by default). The gradient is
the mean over ``num_pairs`` (noise, timestep) pairs, t uniform with replacement, always with the query's own
prompt states.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..config import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, check_settings, setting
from .fisher import Fisher


@dataclass(frozen=True)
class UnlearnConfig:
    """One Newton step's settings; stored with every ground-truth artifact."""

    num_pairs: int = setting(
        500,
        "(noise, t) pairs for the query gradient; rank stability saturates by 250 on the world (paper: 50,000)",
        bounds=AT_LEAST_ONE,
    )
    batch_size: int = setting(100, "pairs per backward pass", bounds=AT_LEAST_ONE)
    alpha: float = setting(
        0.01,
        "Newton step size in units of (1/N) F^-1 g; select it on validation queries (method.md §12.1)",
        bounds=POSITIVE,
    )
    num_steps: int = setting(
        1,
        "Newton steps; >1 is the multi-step variant for large models (gradient re-estimated each step)",
        bounds=AT_LEAST_ONE,
    )
    seed: int = setting(0, "seeds the query's (noise, t) pairs", bounds=NON_NEGATIVE)

    def __post_init__(self):
        check_settings(self)


def query_gradient(
    model,
    layers: dict[str, nn.Linear],
    x0: torch.Tensor,
    states: torch.Tensor,
    mask: torch.Tensor | None,
    config: UnlearnConfig,
    query_key: int = 0,
) -> dict[str, torch.Tensor]:
    """Mean gradient of the query's diffusion loss over (noise, t) pairs, for the selected weights only.

    Args:
        x0: float32 (C, h, w) the query's clean sample. states: (S, D) its prompt states; mask: (S,) or None.
        query_key: mixed into the seed so different queries draw different pairs.

    Returns:
        layer name -> float32 (d_out, d_in) gradient.
    """
    # Pairs are drawn on the CPU and moved, so a query's pairs have the same bits on every device.
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + query_key)
    device = model.device
    x0, states = x0.to(device), states.to(device)
    mask = None if mask is None else mask.to(device)
    weights = {name: layer.weight for name, layer in layers.items()}
    total = {name: torch.zeros_like(w) for name, w in weights.items()}
    num_timesteps = model.scheduler.config.num_train_timesteps
    done = 0
    while done < config.num_pairs:
        b = min(config.batch_size, config.num_pairs - done)
        t = torch.randint(0, num_timesteps, (b,), generator=gen).to(device)
        noise = torch.randn((b, *x0.shape), generator=gen).to(device)
        loss = model.loss(
            x0.expand(b, *x0.shape),
            states.expand(b, *states.shape),
            None if mask is None else mask.expand(b, *mask.shape),
            noise,
            t,
        ).sum()
        grads = torch.autograd.grad(loss, list(weights.values()))
        for name, g in zip(weights, grads, strict=True):
            total[name] += g
        done += b
    return {name: g / config.num_pairs for name, g in total.items()}


def newton_step(
    fisher: Fisher,
    grads: dict[str, torch.Tensor],
    alpha: float,
    num_train: int,
    damping: float | None = None,
) -> dict[str, torch.Tensor]:
    """Delta = (alpha / N) (F + lambda I)^-1 g per layer: added to the weights, it raises the query's loss."""
    return {
        name: (alpha / num_train) * d for name, d in fisher.precondition(grads, damping).items()
    }


@contextmanager
def weights_shifted(layers: dict[str, nn.Linear], delta: dict[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily add ``delta`` to the layers' weights; the exact original weights come back afterwards."""
    originals = {name: layer.weight.detach().clone() for name, layer in layers.items()}
    try:
        with torch.no_grad():
            for name, d in delta.items():
                layers[name].weight.add_(d.to(layers[name].weight))
        yield
    finally:
        with torch.no_grad():
            for name, layer in layers.items():
                layer.weight.copy_(originals[name])


def unlearn(
    model,
    layers,
    fisher: Fisher,
    x0,
    states,
    mask,
    config: UnlearnConfig,
    num_train: int,
    query_key: int = 0,
    damping: float | None = None,
) -> dict[str, torch.Tensor]:
    """The total weight change for one query (``config.num_steps`` Newton steps, usually one)."""
    total = {name: torch.zeros_like(layer.weight) for name, layer in layers.items()}
    for step in range(config.num_steps):
        with weights_shifted(layers, total):
            grads = query_gradient(model, layers, x0, states, mask, config, query_key * 1009 + step)
        for name, d in newton_step(
            fisher, grads, config.alpha / config.num_steps, num_train, damping
        ).items():
            total[name] += d
    return total
