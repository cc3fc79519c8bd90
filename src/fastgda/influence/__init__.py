"""The influence family beside the teacher: EK-FAC influence, TRAK and D-TRAK over stored item gradients.

``build_gradient_features`` computes every training item's gradient once per model (chunked, resumable, on any
executor, memory-mapped float16 on disk); ``InfluenceJob`` ranks a query set with one method, writing the same
per-query results and ground-truth artifact as the teacher, so ``eval map``, ``eval counterfactual`` and the
ranker read them alike.
"""

from .gradients import GradientConfig, item_gradients, query_gradients
from .methods import METHODS, InfluenceConfig, InfluenceJob, InfluenceScorer, recipe
from .store import GradientFeatures, Projector, build_gradient_features

__all__ = [
    "METHODS",
    "GradientConfig",
    "GradientFeatures",
    "InfluenceConfig",
    "InfluenceJob",
    "InfluenceScorer",
    "Projector",
    "build_gradient_features",
    "item_gradients",
    "query_gradients",
    "recipe",
]
