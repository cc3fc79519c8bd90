"""Frozen encoders and feature specs (extra ``encoders``): ``effnet``, ``minilm``, ``pixels``, joined by '+'."""

from .base import Encoder, FeatureSpec, encoder_names, make_encoder, register

__all__ = ["Encoder", "FeatureSpec", "encoder_names", "make_encoder", "register"]
