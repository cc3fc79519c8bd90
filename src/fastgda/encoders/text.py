"""Frozen text encoders for feature specs: MiniLM sentence embeddings (offline, 384-d)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..errors import FastGDAError
from .base import Encoder, register


def as_text_batch(texts: Sequence[str]) -> list[str]:
    """Check a batch of texts; empty or non-string entries fail naming their position."""
    batch = list(texts)
    for i, text in enumerate(batch):
        if not isinstance(text, str) or not text.strip():
            raise FastGDAError(
                f"text {i} of the batch is {text!r}; encoders need non-empty strings"
            )
    return batch


@register("minilm")
class MiniLMEncoder(Encoder):
    """all-MiniLM-L6-v2 sentence embedding: attention-masked mean of token states (384-d), offline."""

    name = "minilm"
    modality = "text"
    dim = 384

    def __init__(self, max_tokens: int = 64, batch_size: int = 256):
        from ..diffusion.text import _load_minilm

        self.tokenizer, self.model = _load_minilm()
        self.max_tokens = max_tokens
        self.batch_size = batch_size

    @torch.no_grad()
    def encode(self, batch) -> np.ndarray:
        texts = as_text_batch(batch)
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="pt",
            )
            tokens = {name: value.to(self.device) for name, value in tokens.items()}
            states = self.model(**tokens).last_hidden_state.float()
            mask = tokens["attention_mask"].unsqueeze(-1).to(states.dtype)
            out.append(((states * mask).sum(1) / mask.sum(1)).cpu().numpy())
        return (
            np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.dim), np.float32)
        )

    def config(self) -> dict:
        return super().config() | {"max_tokens": self.max_tokens, "pooling": "mean"}

    def _tokens(self, texts: list[str], kind: str):
        return self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors=kind
        )

    def onnx_session(self, threads: int = 1):
        from .runtime import OnnxEncoderSession

        tokens = self._tokens(
            ["a red circle", "two shapes: a small blue square and a big green one"], "pt"
        )
        names = list(tokens)  # input_ids, token_type_ids, attention_mask (the tokenizer's order)
        network = _MeanPooled(self.model, names).eval()
        key = {**self.config(), "weights_sha256": self.weights_key()}
        dynamic = {name: {0: "batch", 1: "tokens"} for name in names}
        return OnnxEncoderSession(
            network, tuple(tokens[n] for n in names), names, dynamic, key, threads
        )

    def encode_onnx(self, batch, session) -> np.ndarray:
        texts = as_text_batch(batch)
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self._tokens(texts[start : start + self.batch_size], "np")
            out.append(session(*[tokens[name].astype(np.int64) for name in session.names]))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


class _MeanPooled(torch.nn.Module):
    """MiniLM's attention-masked mean of token states: what ``encode`` computes, as one module."""

    def __init__(self, model, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        tokens = dict(zip(self.names, inputs, strict=True))
        states = self.model(**tokens).last_hidden_state.float()
        mask = tokens["attention_mask"].unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1)
