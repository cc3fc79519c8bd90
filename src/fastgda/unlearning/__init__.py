"""The teacher: attribution by unlearning (AbU with a diagonal Fisher, AbU+ with EK-FAC). Extra ``diffusion``."""

from .before import BeforeLossStore
from .fisher import EKFAC, DiagonalFisher, Fisher, FisherConfig, fit_fisher
from .layers import LAYER_PATTERNS, select_linear_layers
from .scoring import (
    BeforeLosses,
    ScoringConfig,
    influence_scores,
    item_losses,
    mean_item_loss,
    rank,
)
from .teacher import Teacher, TeacherConfig
from .unlearner import UnlearnConfig, newton_step, query_gradient, unlearn, weights_shifted

__all__ = [
    "EKFAC",
    "LAYER_PATTERNS",
    "BeforeLossStore",
    "BeforeLosses",
    "DiagonalFisher",
    "Fisher",
    "FisherConfig",
    "ScoringConfig",
    "Teacher",
    "TeacherConfig",
    "UnlearnConfig",
    "fit_fisher",
    "influence_scores",
    "item_losses",
    "mean_item_loss",
    "newton_step",
    "query_gradient",
    "rank",
    "select_linear_layers",
    "unlearn",
    "weights_shifted",
]
