"""Fisher preconditioners for the selected linear layers: diagonal (AbU) and EK-FAC (AbU+).

Method.md §3.4-3.5. Per-sample weight gradients of a linear layer y = W a are exact from one batched backward of
the *summed* loss: forward hooks keep the inputs a (B, S, d_in), tensor hooks keep the output gradients
g (B, S, d_out), and G_s = sum over tokens of g a^T. Samples draw a random training image, one of its captions,
a random t and fresh noise (no caption dropout).

Both preconditioners apply (F + lambda I)^-1 with layer-wise damping lambda = damping * mean eigenvalue (the
mean of the diagonal for AbU), so ``alpha / N * precondition(g)`` is the damped Newton step of §3.1.
"""

from __future__ import annotations

import functools
import logging
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .._artifacts import atomic_dir, read_manifest, verify_checksums, write_manifest
from ..config import AT_LEAST_ONE, NON_NEGATIVE, check_settings, setting
from ..errors import IncompatibleArtifactError
from ..progress import bar as progress_bar
from .layers import reads_text_states, select_linear_layers, weights_digest

logger = logging.getLogger(__name__)

FISHER_KIND = "fisher"
FISHER_FORMAT_VERSION = 1


@dataclass(frozen=True)
class FisherConfig:
    """How the Fisher is estimated; stored in its manifest."""

    kind: str = setting("ekfac", "ekfac (AbU+) or diagonal (AbU)", choices=("ekfac", "diagonal"))
    layers: str = setting("kv", "kv, cross-attn, attn, all, or a regular expression (layers.py)")
    num_samples: int = setting(
        10_000,
        "per-sample gradients; ~5 x N, as the papers' 5 epochs (method.md §12.1)",
        bounds=AT_LEAST_ONE,
    )
    batch_size: int = setting(64, "samples per backward pass", bounds=AT_LEAST_ONE)
    damping: float = setting(
        0.1,
        "lambda = damping x layer mean (FastGDA code; 0 reproduces AbU's undamped step)",
        bounds=NON_NEGATIVE,
    )
    seed: int = setting(0, "seeds the samples", bounds=NON_NEGATIVE)
    # Padded token slots of a masked text encoder carry states the attention never reads: their output
    # gradients are zero, but counted as inputs they bend the K/V input covariance (35% of the world's slots).
    padding: str = setting(
        "excluded",
        "padded text-token slots in the K/V covariances: excluded (mask-aware) or included (as Fishers "
        "saved before this setting existed counted them)",
        choices=("excluded", "included"),
    )

    def __post_init__(self):
        check_settings(self)


# A Fisher saved before ``padding`` existed counted the padded slots.
_SAVED_BEFORE_PADDING = {"padding": "included"}


@contextmanager
def record_linear_io(layers: dict[str, nn.Linear]):
    """Record each layer's inputs (B, S, d_in) and output gradients (B, S, d_out) during forward/backward.

    Yields:
        ``(inputs, grads)``: dicts filled by the hooks, keyed by layer name.
    """
    inputs: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name):
        def forward_hook(module, args, output):
            a = args[0].detach()
            inputs[name] = a.reshape(a.shape[0], -1, a.shape[-1])  # 2-D inputs become one token

            def grad_hook(g):
                grads[name] = g.detach().reshape(g.shape[0], -1, g.shape[-1])

            output.register_hook(grad_hook)

        return forward_hook

    for name, layer in layers.items():
        handles.append(layer.register_forward_hook(hook(name)))
    try:
        yield inputs, grads
    finally:
        for handle in handles:
            handle.remove()


def per_sample_gradients(inputs: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """G_s = sum over tokens of g a^T: (B, S, d_in), (B, S, d_out) -> (B, d_out, d_in)."""
    return torch.einsum("bso,bsi->boi", grads.double(), inputs.double())


class Fisher:
    """A preconditioner over named linear-layer weights (each (d_out, d_in))."""

    kind = ""

    def __init__(
        self, config: FisherConfig, tensors: dict[str, torch.Tensor], extra: dict | None = None
    ):
        self.config = config
        self.tensors = tensors
        self.extra = dict(extra or {})

    @property
    def layer_names(self) -> list[str]:
        return sorted({key.rsplit(".", 1)[0] for key in self.tensors})

    def precondition(
        self, grads: dict[str, torch.Tensor], damping: float | None = None
    ) -> dict[str, torch.Tensor]:
        """Return (F + lambda I)^-1 g for each layer's gradient (d_out, d_in)."""
        raise NotImplementedError

    def save(self, folder: str | os.PathLike, overwrite: bool = False) -> None:
        """Write ``fisher.safetensors`` and a manifest atomically."""
        with atomic_dir(folder, overwrite=overwrite) as tmp:
            save_file(
                {k: v.contiguous() for k, v in self.tensors.items()}, tmp / "fisher.safetensors"
            )
            shapes = {k: list(v.shape) for k, v in self.tensors.items()}
            write_manifest(
                tmp,
                FISHER_KIND,
                FISHER_FORMAT_VERSION,
                config=asdict(self.config),
                shapes=shapes,
                extra=self.extra,
            )

    @staticmethod
    def fit(model, data, config: FisherConfig | None = None, encoded_cache=None) -> Fisher:
        """Estimate a Fisher of the model over its training set (a dataset, or its encoded ``TrainingData``).

        ``encoded_cache``: where a dataset's encoding is kept (``prepare_training_data``'s ``cache``).
        """
        from ..diffusion.training import TrainingData, prepare_training_data

        if not isinstance(data, TrainingData):
            data = prepare_training_data(model, data, cache=encoded_cache)
        return fit_fisher(model, data, config or FisherConfig())

    @staticmethod
    def load(folder: str | os.PathLike) -> Fisher:
        """Load a saved Fisher of either kind."""
        manifest = read_manifest(folder, FISHER_KIND, FISHER_FORMAT_VERSION)
        verify_checksums(folder, manifest)
        config = FisherConfig(**{**_SAVED_BEFORE_PADDING, **manifest["config"]})
        tensors = load_file(Path(folder) / "fisher.safetensors")
        extra = {
            k: v
            for k, v in manifest.items()
            if k not in ("kind", "format_version", "shapes", "config", "checksums")
        }
        cls = {"diagonal": DiagonalFisher, "ekfac": EKFAC}[config.kind]
        return cls(config, tensors, extra)

    def check_model(self, model) -> None:
        """Raise if the Fisher was fitted on another model (its weights' digest differs).

        A Fisher saved before the digest was recorded cannot be checked; it is accepted with a warning."""
        expected = self.extra.get("model_sha256")
        if expected is None:
            logger.warning(
                "this Fisher records no model digest (saved by an older fastgda): it cannot be checked against "
                "the model; refit it with `fastgda teacher fisher` to have it checked"
            )
            return
        found = weights_digest(model.unet)
        if found != expected:
            raise IncompatibleArtifactError(
                f"the Fisher was fitted on a model whose weights digest is {expected[:12]}…, this model's is "
                f"{found[:12]}…; fit the Fisher on this model (`fastgda teacher fisher --model ...`)"
            )

    def check_layers(self, layer_names: list[str]) -> None:
        """Raise if the Fisher was estimated for other layers than the caller's."""
        if sorted(layer_names) != self.layer_names:
            raise IncompatibleArtifactError(
                f"the Fisher covers layers {self.layer_names[:3]}… ({len(self.layer_names)}), the model selection "
                f"has {sorted(layer_names)[:3]}… ({len(layer_names)}); estimate the Fisher with the same --layers"
            )


class DiagonalFisher(Fisher):
    """F_diag = mean over samples of G_s^2 (method.md §3.4)."""

    kind = "diagonal"

    def precondition(self, grads, damping=None):
        damping = self.config.damping if damping is None else damping
        out = {}
        for name, g in grads.items():
            diag = self.tensors[f"{name}.diag"].to(g)
            out[name] = g / (diag + damping * diag.mean())
        return out


class EKFAC(Fisher):
    """Eigenvalue-corrected Kronecker factors: F ~ (U_A (x) U_B) diag(S) (U_A (x) U_B)^T (method.md §3.5)."""

    kind = "ekfac"

    def precondition(self, grads, damping=None):
        damping = self.config.damping if damping is None else damping
        out = {}
        for name, g in grads.items():
            u_a = self.tensors[f"{name}.eigvecs_a"].to(g)  # (d_in, d_in)
            u_b = self.tensors[f"{name}.eigvecs_b"].to(g)  # (d_out, d_out)
            scales = self.tensors[f"{name}.scales"].to(g)  # (d_out, d_in) corrected eigenvalues S
            rotated = u_b.T @ g @ u_a
            out[name] = u_b @ (rotated / (scales + damping * scales.mean())) @ u_a.T
        return out


def fit_fisher(model, data, config: FisherConfig = FisherConfig()) -> Fisher:
    """Estimate a Fisher over the training data for the layers ``config.layers`` selects.

    Args:
        model: a ``TextToImageModel``.
        data: ``TrainingData`` (``fastgda.diffusion.training.prepare_training_data``).
    """
    layers = select_linear_layers(model.unet, config.layers)
    params = list(model.unet.parameters())
    required = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    for layer in layers.values():
        layer.weight.requires_grad_(True)
    was_training = model.unet.training
    model.unet.eval()
    try:
        batches = functools.partial(_layer_io_batches, model, data, layers, config)
        fit = _fit_diagonal if config.kind == "diagonal" else _fit_ekfac
        tensors = fit(layers, batches, config.num_samples)
    finally:
        model.unet.zero_grad(set_to_none=True)
        for p, req in zip(params, required, strict=True):
            p.requires_grad_(req)
        model.unet.train(was_training)
    cls = DiagonalFisher if config.kind == "diagonal" else EKFAC
    extra = {
        "model": model.config.get("preset", {}).get("name"),
        "model_sha256": weights_digest(model.unet),
    }
    return cls(config, tensors, extra)


def _layer_io_batches(model, data, layers, config: FisherConfig, desc: str):
    """Per batch of training samples: layer name -> (inputs (B, S, d_in), output gradients (B, S, d_out), the
    number of token slots that count). With ``padding`` excluded, a text layer's padded slots are zeroed and
    not counted.

    Samples are drawn as the training loop draws them (random item, caption, t, noise; no caption dropout), and
    the same ``config.seed`` gives the same samples on every pass.
    """
    from ..diffusion.training import DiffusionTrainConfig, draw_batch

    num_batches = -(-config.num_samples // config.batch_size)
    device = model.device
    sampler = DiffusionTrainConfig(
        batch_size=config.batch_size, caption_dropout=0.0, seed=config.seed
    )
    num_timesteps = model.scheduler.config.num_train_timesteps
    for b in progress_bar(range(num_batches), desc=desc):
        # Drawn on the host (the same samples on every device), then moved to the model's device.
        x0, states, mask, noise, t = (
            None if v is None else v.to(device) for v in draw_batch(data, b, sampler, num_timesteps)
        )
        take = min(config.batch_size, config.num_samples - b * config.batch_size)
        mask = None if mask is None else mask[:take]
        with record_linear_io(layers) as (inputs, grads):
            loss = model.loss(x0[:take], states[:take], mask, noise[:take], t[:take])
            loss.sum().backward()  # summed, so each sample's output gradient is its own
        io = {}
        for name in layers:
            a, g = inputs[name], grads[name]
            counted = a.shape[0] * a.shape[1]  # the token slots the covariances average over
            if mask is not None and config.padding == "excluded" and reads_text_states(name):
                keep = mask.to(a.dtype).unsqueeze(-1)  # (B, S, 1): padded slots contribute nothing
                a, g, counted = a * keep, g * keep, int(mask.sum())
            io[name] = (a, g, counted)
        yield io


def _fit_diagonal(layers, batches, num_samples: int) -> dict[str, torch.Tensor]:
    """F_diag = mean over samples of G_s^2 (method.md §3.4): ``<layer>.diag`` (d_out, d_in)."""
    sums = {n: torch.zeros_like(layer.weight, dtype=torch.float64) for n, layer in layers.items()}
    for io in batches("diagonal Fisher"):
        for name, (a, g, _) in io.items():
            sums[name] += per_sample_gradients(a, g).pow(2).sum(0)
    return {f"{name}.diag": (s / num_samples).float().cpu() for name, s in sums.items()}


def _fit_ekfac(layers, batches, num_samples: int) -> dict[str, torch.Tensor]:
    """EK-FAC (method.md §3.5): one pass for the Kronecker factors' eigenbases, one for the corrected eigenvalues.

    Returns ``<layer>.eigvecs_a`` (d_in, d_in), ``.eigvecs_b`` (d_out, d_out) and ``.scales`` (d_out, d_in).
    """
    # Accumulated in float64 on the layers' device; stored on the host.
    cov_a = {
        n: torch.zeros(
            layer.in_features, layer.in_features, dtype=torch.float64, device=layer.weight.device
        )
        for n, layer in layers.items()
    }
    cov_b = {
        n: torch.zeros(
            layer.out_features, layer.out_features, dtype=torch.float64, device=layer.weight.device
        )
        for n, layer in layers.items()
    }
    tokens = dict.fromkeys(layers, 0)
    for io in batches("EK-FAC covariances"):
        for name, (a, g, counted) in io.items():
            a2, g2 = a.reshape(-1, a.shape[-1]).double(), g.reshape(-1, g.shape[-1]).double()
            cov_a[name] += a2.T @ a2
            cov_b[name] += g2.T @ g2
            tokens[name] += (
                counted  # excluded padded slots are zero rows of a2 and g2, and not counted
            )
    bases = {
        name: (
            torch.linalg.eigh(cov_a[name] / tokens[name])[1],
            torch.linalg.eigh(cov_b[name] / tokens[name])[1],
        )
        for name in layers
    }
    sums = {n: torch.zeros_like(layer.weight, dtype=torch.float64) for n, layer in layers.items()}
    for io in batches("EK-FAC eigenvalues"):
        for name, (a, g, _) in io.items():
            u_a, u_b = bases[name]
            rotated = u_b.T @ per_sample_gradients(a, g) @ u_a  # (B, d_out, d_in)
            sums[name] += rotated.pow(2).sum(0)
    tensors = {}
    for name in layers:
        tensors[f"{name}.eigvecs_a"] = bases[name][0].float().cpu()
        tensors[f"{name}.eigvecs_b"] = bases[name][1].float().cpu()
        tensors[f"{name}.scales"] = (sums[name] / num_samples).float().cpu()
    return tensors
