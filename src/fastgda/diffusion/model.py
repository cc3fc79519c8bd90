"""``TextToImageModel``: a diffusers UNet, a DDPM noise schedule, a frozen text encoder and an optional VAE.

One class serves both the tiny pixel-space world model (preset ``tiny16``, MiniLM conditioning) and a Stable
Diffusion v1.x pipeline folder (VAE latents, CLIP text encoder), so the teacher and the query sampler are written
once. ``loss`` is the per-sample diffusion loss of method.md §2 (epsilon prediction, element-mean squared error);
``sample`` is deterministic DDIM with classifier-free guidance.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._artifacts import (
    atomic_dir,
    describe_difference,
    read_manifest,
    verify_checksums,
    write_manifest,
)
from .._optional import require
from ..devices import autocast, resolve_device, resolve_dtype
from ..errors import IncompatibleArtifactError
from .text import CLIPTokenEncoder, MiniLMTokenEncoder, TextEncoder

MODEL_KIND = "text_to_image_model"
MODEL_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelPreset:
    """Architecture of a model trained by fastgda (method.md §12.1)."""

    name: str = "tiny16"
    image_size: int = 16  # pixel space; 32x32 costs 5-7x more per step on 2 cores (method.md §12.2)
    channels: int = 3
    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1  # 1.17M parameters: 4.7 MB of float32 safetensors
    down_block_types: tuple[str, ...] = (
        "DownBlock2D",
        "CrossAttnDownBlock2D",
    )  # cross-attention only at 8x8
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "UpBlock2D")
    attention_head_dim: int = 8
    norm_num_groups: int = 16
    text_encoder: str = "minilm"
    max_tokens: int = 24  # the world's longest caption is 21 MiniLM tokens
    cross_attention_dim: int = 384
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"  # DDPM linear betas 1e-4..0.02, as the COCO model (method.md §2)
    beta_start: float = 1e-4
    beta_end: float = 0.02
    extra: dict[str, Any] = field(default_factory=dict)


PRESETS = {"tiny16": ModelPreset()}


def _diffusers():
    return require("diffusers", extra="diffusion")


class TextToImageModel(torch.nn.Module):
    """A text-conditioned diffusion model built from diffusers parts.

    Attributes:
        unet: ``UNet2DConditionModel`` predicting the noise epsilon.
        scheduler: ``DDPMScheduler`` (T=1000, epsilon prediction) used for noising and as the DDIM config.
        text_encoder: frozen ``TextEncoder`` returning (states, mask).
        vae: optional ``AutoencoderKL``; ``None`` for pixel-space models.
        config: JSON-ready description saved in the manifest.
    """

    def __init__(
        self, unet, scheduler, text_encoder: TextEncoder, vae=None, config: dict | None = None
    ):
        super().__init__()
        self.unet = unet
        self.scheduler = scheduler
        self.text_encoder = text_encoder
        self.vae = vae.eval().requires_grad_(False) if vae is not None else None
        self.config = dict(config or {})
        # The precision eligible ops run in (``set_precision``); weights stay float32 whatever it is.
        self.compute_dtype = torch.float32
        self.register_buffer(
            "alphas_cumprod",
            torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32),
            persistent=False,
        )

    # ----------------------------------------------------------------------------------------- construction
    @classmethod
    def from_preset(cls, preset: str | ModelPreset = "tiny16", seed: int = 0) -> TextToImageModel:
        """Build a freshly initialised model (weights seeded by ``seed``) from a preset."""
        if isinstance(preset, str):
            if preset not in PRESETS:
                raise IncompatibleArtifactError(
                    f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}"
                )
            preset = PRESETS[preset]
        diffusers = _diffusers()
        torch.manual_seed(seed)
        unet = diffusers.UNet2DConditionModel(
            sample_size=preset.image_size,
            in_channels=preset.channels,
            out_channels=preset.channels,
            block_out_channels=preset.block_out_channels,
            layers_per_block=preset.layers_per_block,
            down_block_types=preset.down_block_types,
            up_block_types=preset.up_block_types,
            cross_attention_dim=preset.cross_attention_dim,
            attention_head_dim=preset.attention_head_dim,
            norm_num_groups=preset.norm_num_groups,
        )
        scheduler = cls._make_scheduler(preset)
        text_encoder = MiniLMTokenEncoder(max_tokens=preset.max_tokens)
        return cls(
            unet, scheduler, text_encoder, None, {"preset": asdict(preset), "source": "fastgda"}
        )

    @staticmethod
    def _make_scheduler(preset: ModelPreset):
        return _diffusers().DDPMScheduler(
            num_train_timesteps=preset.num_train_timesteps,
            beta_schedule=preset.beta_schedule,
            beta_start=preset.beta_start,
            beta_end=preset.beta_end,
            prediction_type="epsilon",
            clip_sample=True,  # pixel space lives in [-1, 1]
        )

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | os.PathLike,
        verify: bool = True,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
    ) -> TextToImageModel:
        """Load a fastgda model folder, or a diffusers Stable Diffusion v1.x pipeline folder, onto ``device``
        (``fastgda.devices.DEVICE_HELP``), computing in ``dtype`` (``set_precision``).

        Raises:
            IncompatibleArtifactError: the folder is neither, or its files do not match the manifest.
            DeviceUnavailableError: ``device`` is not on this machine.
        """
        target = resolve_device(device)  # before the weights load: an absent device fails at once
        return cls._load(Path(model_dir), verify).to(target).set_precision(dtype)

    @classmethod
    def _load(cls, model_dir: Path, verify: bool) -> TextToImageModel:
        if (model_dir / "model_index.json").is_file():
            return cls._from_diffusers_pipeline(model_dir)
        manifest = read_manifest(model_dir, MODEL_KIND, MODEL_FORMAT_VERSION)
        if verify:
            verify_checksums(model_dir, manifest)
        if manifest["config"].get("source") == "diffusers_pipeline":
            model = cls._from_finetuned_pipeline(model_dir, manifest)
            model.manifest = manifest
            return model
        raw = manifest["config"]["preset"]
        preset = ModelPreset(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
        diffusers = _diffusers()
        unet = diffusers.UNet2DConditionModel.from_pretrained(
            model_dir / "unet", low_cpu_mem_usage=False
        )
        scheduler = diffusers.DDPMScheduler.from_pretrained(model_dir / "scheduler")
        text_encoder = MiniLMTokenEncoder(max_tokens=preset.max_tokens)
        model = cls(unet, scheduler, text_encoder, None, manifest["config"])
        model.manifest = manifest
        return model

    @classmethod
    def _from_finetuned_pipeline(cls, model_dir: Path, manifest: dict) -> TextToImageModel:
        """A UNet fastgda trained from a Stable Diffusion pipeline; the VAE, text encoder and tokenizer are read
        from that pipeline's folder, which must still be what it was."""
        base = Path(manifest["config"]["path"])
        if not (base / "model_index.json").is_file():
            raise IncompatibleArtifactError(
                f"{model_dir} fine-tunes the Stable Diffusion pipeline at {base}, which is gone; restore that "
                "folder (its VAE and text encoder are not copied into the model folder)"
            )
        model = cls._from_diffusers_pipeline(base)
        expected = manifest["config"].get("frozen_parts")
        if expected is not None and expected != model.encoding_key():
            raise IncompatibleArtifactError(
                f"the pipeline at {base} has another VAE, text encoder or tokenizer than {model_dir} was "
                f"trained with ({describe_difference(expected, model.encoding_key())}); restore the original"
            )
        model.unet = _diffusers().UNet2DConditionModel.from_pretrained(
            model_dir / "unet", low_cpu_mem_usage=False
        )
        model.config = manifest["config"]
        return model

    @classmethod
    def _from_diffusers_pipeline(cls, pipeline_dir: Path) -> TextToImageModel:
        diffusers = _diffusers()
        index = json.loads((pipeline_dir / "model_index.json").read_text(encoding="utf-8"))
        missing = [
            p for p in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if p not in index
        ]
        if missing:
            raise IncompatibleArtifactError(
                f"{pipeline_dir}/model_index.json lacks {missing}: expected a Stable Diffusion v1.x pipeline "
                "(unet, vae, text_encoder, tokenizer, scheduler)"
            )
        unet = diffusers.UNet2DConditionModel.from_pretrained(
            pipeline_dir / "unet", low_cpu_mem_usage=False
        )
        vae = diffusers.AutoencoderKL.from_pretrained(pipeline_dir / "vae", low_cpu_mem_usage=False)
        scheduler = diffusers.DDPMScheduler.from_pretrained(pipeline_dir / "scheduler")
        text_encoder = CLIPTokenEncoder(pipeline_dir)
        config = {
            "source": "diffusers_pipeline",
            "path": str(pipeline_dir),
            "class": index.get("_class_name"),
        }
        return cls(unet, scheduler, text_encoder, vae, config)

    def save(
        self, model_dir: str | os.PathLike, extra: dict | None = None, overwrite: bool = False
    ) -> None:
        """Write a fastgda model folder (``unet/``, ``scheduler/``, ``manifest.json``) atomically.

        A model loaded from a Stable Diffusion pipeline (and trained further) saves its UNet only; the manifest
        points at the pipeline for the frozen VAE, text encoder and tokenizer, and records their fingerprint.
        """
        config = dict(self.config)
        if self.vae is not None:
            config["frozen_parts"] = self.encoding_key()
        with atomic_dir(model_dir, overwrite=overwrite) as tmp:
            self.unet.save_pretrained(tmp / "unet", safe_serialization=True)
            self.scheduler.save_pretrained(tmp / "scheduler")
            write_manifest(
                tmp,
                MODEL_KIND,
                MODEL_FORMAT_VERSION,
                config=config,
                shapes={"sample": list(self.sample_shape), "parameters": [self.num_parameters]},
                extra=extra,
            )

    def encoding_key(self) -> dict:
        """What the encoding of training data depends on: the frozen text encoder, the VAE and the image size,
        not the UNet's weights (so a model keeps its training set's encoding while it trains)."""
        if self.vae is None:
            preset = self.config.get("preset", {})
            names = ("text_encoder", "max_tokens", "image_size", "channels")
            return {"kind": "pixels", **{name: preset.get(name) for name in names}}
        root = Path(self.config["path"])
        return {
            "kind": "latents",
            "image_size": self.image_size,
            "text_encoder": _folder_fingerprint(root / "text_encoder"),
            "tokenizer": _folder_fingerprint(root / "tokenizer"),
            "vae": _folder_fingerprint(root / "vae"),
        }

    def set_precision(self, dtype: torch.dtype | str = "float32") -> TextToImageModel:
        """Run the UNet, VAE and text encoder under autocast in ``dtype`` (float32, bfloat16, float16).

        Outputs (noise predictions, latents, text states, losses) come back float32, so loss differences and
        Fisher accumulations keep full precision. Returns ``self``.
        """
        self.compute_dtype = resolve_dtype(dtype)
        return self

    def _autocast(self):
        return autocast(self.device, self.compute_dtype)

    # ----------------------------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def num_parameters(self) -> int:
        """Trainable UNet parameters."""
        return sum(p.numel() for p in self.unet.parameters())

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the space the UNet denoises: pixels, or VAE latents."""
        size = self.unet.config.sample_size
        return (self.unet.config.in_channels, size, size)

    @property
    def image_size(self) -> int:
        """Side of the RGB images the model generates (the VAE downsamples by 2 per extra block)."""
        size = self.unet.config.sample_size
        if self.vae is None:
            return size
        return size * 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor) if self.vae is not None else 1.0

    # ----------------------------------------------------------------------------------------- encoding
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Frozen text states: float32 (B, S, D) and mask (B, S) or ``None``."""
        with self._autocast():
            states, mask = self.text_encoder(prompts)
        return states.float(), mask

    @torch.no_grad()
    def encode_images(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Map uint8 images (B, H, W, 3) to the clean diffusion sample x0 (B, C, h, w).

        Pixel models use x/127.5 - 1; latent models take the VAE posterior mean times the scaling factor.
        """
        x = (
            torch.as_tensor(np.asarray(images)).to(self.device).permute(0, 3, 1, 2).float() / 127.5
            - 1.0
        )
        if self.vae is None:
            return x
        with self._autocast():
            latents = self.vae.encode(x).latent_dist.mean
        return latents.float() * self.latent_scale

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> np.ndarray:
        """Map clean samples x0 (B, C, h, w) to uint8 images (B, H, W, 3)."""
        if self.vae is None:
            x = x0
        else:
            with self._autocast():
                x = self.vae.decode(x0 / self.latent_scale).sample.float()
        x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).cpu().numpy()

    # ----------------------------------------------------------------------------------------- diffusion
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process: sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, all (B, C, h, w); t int64 (B,)."""
        abar = self.alphas_cumprod.to(x0.device)[t].view(-1, 1, 1, 1)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def predict_noise(self, x_t, t, states, mask=None) -> torch.Tensor:
        """The UNet's epsilon prediction, float32 (B, C, h, w) whatever the compute dtype."""
        with self._autocast():
            out = self.unet(x_t, t, encoder_hidden_states=states, encoder_attention_mask=mask)
        return out.sample.float()

    def loss(self, x0, states, mask, noise, t) -> torch.Tensor:
        """Per-sample diffusion loss ||eps_theta(x_t, c, t) - eps||^2, averaged over elements (method.md §2).

        Args:
            x0: float32 (B, C, h, w) clean samples. states, mask: text states (B, S, D) and (B, S) or None.
            noise: float32 (B, C, h, w). t: int64 (B,) timesteps in [0, T).

        Returns:
            float32 (B,) losses.
        """
        pred = self.predict_noise(self.add_noise(x0, noise, t), t, states, mask)
        return (pred.float() - noise).pow(2).flatten(1).mean(1)

    @torch.no_grad()
    def sample(
        self,
        prompts: list[str],
        seeds: list[int],
        num_steps: int = 50,
        guidance_scale: float = 1.0,
        return_states: bool = False,
    ):
        """Deterministic DDIM sampling (eta = 0) with classifier-free guidance.

        Each prompt's initial noise comes from its own seed, so a sample does not depend on its batch.

        Returns:
            x0: float32 (B, C, h, w) final clean samples, and, with ``return_states``, the prompt states and mask.
        """
        diffusers = _diffusers()
        scheduler = diffusers.DDIMScheduler.from_config(self.scheduler.config)
        scheduler.set_timesteps(num_steps)
        device = self.device
        shape = self.sample_shape
        x = torch.stack(
            [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        ).to(device)
        x = x * scheduler.init_noise_sigma
        states, mask = self.encode_prompts(list(prompts))
        guided = guidance_scale != 1.0  # at scale 1 the unconditional branch cancels out: skip it
        if guided:
            null_states, null_mask = self.encode_prompts([""] * len(prompts))
            both_states = torch.cat([null_states, states])
            both_mask = None if mask is None else torch.cat([null_mask, mask])
        for t in scheduler.timesteps:
            if guided:
                tt = torch.full((2 * len(prompts),), int(t), device=device, dtype=torch.long)
                eps_null, eps_text = self.predict_noise(
                    torch.cat([x, x]), tt, both_states, both_mask
                ).chunk(2)
                eps = eps_null + guidance_scale * (eps_text - eps_null)
            else:
                tt = torch.full((len(prompts),), int(t), device=device, dtype=torch.long)
                eps = self.predict_noise(x, tt, states, mask)
            x = scheduler.step(eps, t, x, eta=0.0).prev_sample
        if return_states:
            return x, states, mask
        return x


def model_digest(model_dir: str | os.PathLike) -> str:
    """The identity of a model folder that query sets and teacher runs record (``model_manifest_sha256``).

    A fastgda model folder: the SHA-256 of its manifest, which holds its weights' checksums. A diffusers
    Stable Diffusion folder (``model_index.json``, no manifest): ``_folder_fingerprint`` of the whole folder.
    """
    from .._artifacts import MANIFEST_NAME, sha256_file

    model_dir = Path(model_dir)
    if (model_dir / MANIFEST_NAME).is_file():
        return sha256_file(model_dir / MANIFEST_NAME)
    if (model_dir / "model_index.json").is_file():
        return "diffusers:" + _folder_fingerprint(model_dir)
    raise IncompatibleArtifactError(
        f"{model_dir} is neither a fastgda model folder (manifest.json) nor a diffusers pipeline folder "
        "(model_index.json); pass the folder `fastgda model train` wrote, or a Stable Diffusion folder"
    )


def _folder_fingerprint(folder: Path) -> str:
    """A digest of a folder's file names and sizes and of its small (config) files' bytes: cheap for GB weights."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}:{path.stat().st_size}".encode())
        if path.stat().st_size < 1 << 20:
            digest.update(path.read_bytes())
    return digest.hexdigest()
