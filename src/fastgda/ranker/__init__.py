"""The distilled ranker (method.md §5): a shared MLP over frozen features, trained to imitate the teacher."""

from .model import Ranker, RankerShape, reusable_ranker
from .pairs import PairSampler
from .training import RankerTrainConfig, summarise_history, train_ranker, validate

__all__ = [
    "PairSampler",
    "Ranker",
    "RankerShape",
    "RankerTrainConfig",
    "reusable_ranker",
    "summarise_history",
    "train_ranker",
    "validate",
]
