"""Text-to-image diffusion models (extra ``diffusion``): the tiny world model and Stable Diffusion, one class."""

from .model import PRESETS, ModelPreset, TextToImageModel
from .training import DiffusionTrainConfig, train_diffusion

__all__ = ["PRESETS", "DiffusionTrainConfig", "ModelPreset", "TextToImageModel", "train_diffusion"]
