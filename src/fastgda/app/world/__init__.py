"""The embedded shapes world: a procedurally generated captioned image set whose attribution truth is known."""

from .build import build_world
from .dataset import ShapesWorld
from .shapes import WorldSpec, generate_world, held_out_prompts

__all__ = ["ShapesWorld", "WorldSpec", "build_world", "generate_world", "held_out_prompts"]
