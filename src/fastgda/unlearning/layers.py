"""Which weights the teacher moves: linear layers of the UNet selected by a name pattern.

Method.md §3.2: AbU+ updates only the cross-attention key and value projections (``attn2.to_k``,
``attn2.to_v``; no bias). Wider selections exist for ablations. Only ``nn.Linear`` weights are selected.
"""

from __future__ import annotations

import hashlib
import re

import torch
from torch import nn

from ..errors import FastGDAError

LAYER_PATTERNS: dict[str, str] = {
    "kv": r"attn2\.to_[kv]$",  # the paper's choice: cross-attention K/V
    "cross-attn": r"attn2\.(to_q|to_k|to_v|to_out\.0)$",
    "attn": r"attn[12]\.(to_q|to_k|to_v|to_out\.0)$",
    "all": r".",
}


def select_linear_layers(unet: nn.Module, pattern: str = "kv") -> dict[str, nn.Linear]:
    """Return ``{module name: nn.Linear}`` for layers whose name matches a preset or a regular expression.

    Raises:
        FastGDAError: no linear layer matches.
    """
    regex = re.compile(LAYER_PATTERNS.get(pattern, pattern))
    layers = {
        name: m
        for name, m in unet.named_modules()
        if isinstance(m, nn.Linear) and regex.search(name)
    }
    if not layers:
        raise FastGDAError(
            f"layer pattern {pattern!r} matches no linear layer of the model; use one of {sorted(LAYER_PATTERNS)} "
            "or a regular expression over module names such as 'attn2\\.to_[kv]$'"
        )
    return layers


TEXT_INPUT = re.compile(
    r"attn2\.to_[kv]$"
)  # cross-attention K/V read the text states, one row per token slot


def reads_text_states(name: str) -> bool:
    """Whether a layer's input rows are the text encoder's token slots (so padded slots can be masked out)."""
    return bool(TEXT_INPUT.search(name))


def weights_digest(unet: nn.Module) -> str:
    """SHA-256 of a UNet's parameters (names, shapes, dtypes and float bytes, read on the host): which model a
    Fisher was fitted on. Moving the model to another device or precision does not change it."""
    digest = hashlib.sha256()
    for name, param in sorted(unet.named_parameters(), key=lambda named: named[0]):
        tensor = param.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
