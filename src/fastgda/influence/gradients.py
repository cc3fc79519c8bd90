"""Per-item gradients of a diffusion model's output function, flattened over the selected linear layers.

The influence methods (method.md §9.1's TRAK, D-TRAK; the first-order term of AbU+, §3.1) compare training items
with a query through gradients:

- ``loss`` output: the item's diffusion loss, its mean over (caption, timestep) rows with the teacher's keyed
  noise (``fastgda.unlearning.noise``), so EK-FAC influence is exactly the first-order term of the teacher's
  score with the same scoring settings.
- ``square`` output: D-TRAK's choice, the mean of the squared predicted noise ε_θ(x_t, t, c)² over elements,
  averaged over the same rows (D-TRAK, "mean-squared-l2-norm").

Per-row gradients of a linear layer's weight are sums over token slots of (output gradient) x (input), taken
from forward/backward hooks, so one backward pass over a batch of rows gives every row's gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import AT_LEAST_ONE, NON_NEGATIVE, Bounds, check_settings, setting
from ..errors import ConfigError
from ..unlearning.fisher import record_linear_io
from ..unlearning.noise import keyed_noise
from ..unlearning.rows import item_rows, row_batches

OUTPUTS = ("loss", "square")
# Queries draw their noise from a key space apart from the training items' (same base seed, flip slot 2).
_QUERY_FLIP_SLOT = 2


@dataclass(frozen=True)
class GradientConfig:
    """Which gradient describes an item: the output function, its timesteps and noise, the layers, and the
    random projection that shortens it (None: the full gradient is kept)."""

    output: str = setting(
        "loss", "output function: loss (TRAK, EK-FAC influence) or square (D-TRAK)"
    )
    timesteps: tuple[int, ...] = setting(
        (0, 200, 400, 600, 800), "timesteps the output is averaged over", bounds=Bounds(0, 999)
    )
    noise_seed: int = setting(0, "seeds the keyed noise", bounds=NON_NEGATIVE)
    layers: str = setting("kv", "linear layers whose weight gradients are taken (as the teacher's)")
    projection_dim: int | None = setting(
        None, "random projection dimension (default: keep the full gradient)", bounds=AT_LEAST_ONE
    )
    projection_seed: int = setting(0, "seeds the projection matrix", bounds=NON_NEGATIVE)

    def __post_init__(self):
        check_settings(self)
        if self.output not in OUTPUTS:
            raise ConfigError(f"output {self.output!r} is not one of {OUTPUTS}")
        if not self.timesteps:
            raise ConfigError("GradientConfig.timesteps is empty; give at least one timestep")


def _output(model, x0, states, mask, noise, t, output: str) -> torch.Tensor:
    """Per-row output (B,): the diffusion loss or the mean squared predicted noise."""
    if output == "loss":
        return model.loss(x0, states, mask, noise, t)
    prediction = model.predict_noise(model.add_noise(x0, noise, t), t, states, mask)
    return prediction.float().pow(2).flatten(1).mean(1)


def _row_gradients(model, layers, x0, states, mask, noise, t, output: str) -> torch.Tensor:
    """Each row's gradient of its output, flattened over ``layers`` in their order: float32 (B, P)."""
    with record_linear_io(layers) as (inputs, grads):
        total = _output(model, x0, states, mask, noise, t, output).sum()
        # Only the hooks' per-row products are wanted; autograd.grad leaves every .grad untouched.
        torch.autograd.grad(total, [layer.weight for layer in layers.values()])
    return torch.cat(
        [
            torch.einsum("bso,bsi->boi", grads[name].float(), inputs[name].float()).flatten(1)
            for name in layers
        ],
        dim=1,
    )


def item_gradients(
    model,
    layers,
    data,
    item_ids: np.ndarray,
    config: GradientConfig,
    rows_per_pass: int = 64,
) -> torch.Tensor:
    """Per-item gradients of the mean output over the item's (caption, timestep) rows.

    Args:
        data: ``TrainingData`` (x0 (N, C, h, w), caption states). item_ids: int (n,).
    Returns:
        float32 (n, P), P = the selected layers' weight count.
    """
    item_ids = np.asarray(item_ids, dtype=np.int64)
    counts = data.caption_count[item_ids].numpy()
    timesteps = list(config.timesteps)
    rows = item_rows(counts, len(timesteps))
    # Each row weighs 1 / (its item's rows): the gradient of the item's mean output.
    weight = torch.from_numpy(1.0 / (counts[rows[:, 0]] * len(timesteps))).float()
    size = sum(layer.weight.numel() for layer in layers.values())
    out = torch.zeros(len(item_ids), size)
    batches = row_batches(data, item_ids, rows, timesteps, config.noise_seed, rows_per_pass, model.device,
                          f"gradients of {len(item_ids)} items")  # fmt: skip
    for batch in batches:
        grads = _row_gradients(model, layers, batch.x0, batch.states, batch.mask, batch.noise, batch.t,
                               config.output)  # fmt: skip
        scaled = grads.cpu() * weight[batch.start : batch.start + len(batch.rows), None]
        out.index_add_(0, torch.from_numpy(batch.rows[:, 0]), scaled)
    return out


def query_gradients(
    model, layers, x0: torch.Tensor, states, mask, query_ids, config: GradientConfig
) -> torch.Tensor:
    """Per-query gradients of the mean output over the recipe's timesteps, each with its own keyed noise.

    Args:
        x0: float32 (Q, C, h, w) generated samples; states (Q, S, D) and mask (Q, S) or None of their prompts.
        query_ids: (Q,) ids that key each query's noise.
    Returns:
        float32 (Q, P).
    """
    timesteps = list(config.timesteps)
    device = model.device
    out = []
    for q, query_id in enumerate(query_ids):
        keys = [(int(query_id), 0, t, _QUERY_FLIP_SLOT) for t in timesteps]
        noise = keyed_noise(tuple(x0.shape[1:]), config.noise_seed, keys)
        b = len(timesteps)
        grads = _row_gradients(
            model, layers, x0[q].expand(b, *x0.shape[1:]).to(device),
            states[q].expand(b, *states.shape[1:]).to(device),
            None if mask is None else mask[q].expand(b, *mask.shape[1:]).to(device),
            noise.to(device), torch.tensor(timesteps, device=device), config.output,
        )  # fmt: skip
        out.append(grads.cpu().mean(0))
    return torch.stack(out)


def flatten_layers(grads: dict[str, torch.Tensor], layer_names) -> torch.Tensor:
    """Layer name -> (d_out, d_in) gradients as one float32 (P,) vector in ``layer_names`` order."""
    return torch.cat([grads[name].float().flatten() for name in layer_names])
