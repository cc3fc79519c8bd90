"""The distilled ranker (method.md §5): a shared MLP over frozen features, trained to imitate the teacher."""

from .model import Ranker, RankerShape, reusable_ranker
from .pairs import PairSampler
from .training import RankerTrainConfig, summarise_history, train_ranker, validate
from .untuned import UntunedScorer, best_scorer, load_scorer, validation_maps

__all__ = [
    "PairSampler",
    "Ranker",
    "RankerShape",
    "RankerTrainConfig",
    "UntunedScorer",
    "best_scorer",
    "load_scorer",
    "reusable_ranker",
    "summarise_history",
    "train_ranker",
    "validate",
    "validation_maps",
]
