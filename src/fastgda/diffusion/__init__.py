"""Text-to-image diffusion models (extra ``diffusion``): the tiny world model and Stable Diffusion, one class."""

from .model import PRESETS, ModelPreset, TextToImageModel
from .names import model_names, register_model_name, resolve_model_dir
from .training import DiffusionTrainConfig, train_diffusion

__all__ = [
    "PRESETS",
    "DiffusionTrainConfig",
    "ModelPreset",
    "TextToImageModel",
    "model_names",
    "register_model_name",
    "resolve_model_dir",
    "train_diffusion",
]
