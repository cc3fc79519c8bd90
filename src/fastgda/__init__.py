"""fastgda: fast data attribution for text-to-image models.

One front object per stage, each usable in memory and saved or loaded as an artifact folder::

    import fastgda as fg

    teacher = fg.Teacher(model, dataset, fisher)            # slow, faithful: attribution by unlearning
    truth = teacher.rank(queries)                             # -> fg.GroundTruth
    grads = fg.build_gradient_features(model_dir, data_dir, "grad", recipe("dtrak"))  # fastgda.influence
    job = fg.InfluenceJob.open(model_dir, "grad", "queries", "runs/dtrak", fg.InfluenceConfig("dtrak"))
    job.run(); influence = job.merge()                        # any long job: pending, run(executor=), merge
    extractor = fg.FeatureExtractor("effnet+minilm")          # frozen encoders -> fg.Features
    ranker = fg.Ranker.distil(query_features, item_features, truth, fg.RankerTrainConfig())
    attributor = fg.Attributor.build(ranker, dataset, item_features)
    answer = attributor.attribute(images, prompts, k=10)      # ids, scores, shares: (Q, k) arrays
    print(fg.evaluate({"ranker": ranker}, test_features, item_features, test_truth))
    fg.run_build("my_data", "runs/my-build", fg.BuildConfig(budget_hours=2), model="my_model")  # all of it

``import fastgda`` stays light (numpy, torch, pillow): the front objects are imported on first use, and the
diffusion layer, encoders, Ray, FastAPI and faiss only where they are needed. The pipeline (``fg.run_build``) lives in
``fastgda.pipeline``; the embedded world's app (the shapes world, the demo) in ``fastgda.app``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .data import (
    CocoCaptions,
    ImageCaption,
    ImageCaptionDataset,
    ImageCaptionFolder,
    open_dataset,
)
from .errors import (
    ConfigError,
    DatasetError,
    FastGDAError,
    IncompatibleArtifactError,
    MissingDependencyError,
    NotFittedError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:  # the same names, seen statically (type checkers, IDEs and the import contract)
    from .attributor import Attribution, Attributions, Attributor
    from .counterfactual import CounterfactualConfig, CounterfactualJob
    from .diffusion.model import TextToImageModel
    from .diffusion.queries import QuerySet, SamplerConfig
    from .evaluation import Evaluation, evaluate
    from .features import FeatureExtractor, Features, embed_dataset
    from .ground_truth import GroundTruth
    from .influence.methods import InfluenceConfig, InfluenceJob, InfluenceScorer
    from .influence.store import GradientFeatures, build_gradient_features
    from .pipeline.build import BuildConfig, run_build
    from .ranker.model import Ranker
    from .ranker.training import RankerTrainConfig
    from .unlearning.fisher import Fisher, FisherConfig
    from .unlearning.jobs import TeacherJob
    from .unlearning.scoring import ScoringConfig
    from .unlearning.teacher import Teacher, TeacherConfig
    from .unlearning.unlearner import UnlearnConfig

# Front objects, by the module that defines them (imported on first access).
_FRONT = {
    "Attribution": "attributor",
    "Attributions": "attributor",
    "Attributor": "attributor",
    "BuildConfig": "pipeline.build",
    "CounterfactualConfig": "counterfactual",
    "CounterfactualJob": "counterfactual",
    "Evaluation": "evaluation",
    "FeatureExtractor": "features",
    "Features": "features",
    "Fisher": "unlearning.fisher",
    "FisherConfig": "unlearning.fisher",
    "GradientFeatures": "influence.store",
    "GroundTruth": "ground_truth",
    "InfluenceConfig": "influence.methods",
    "InfluenceJob": "influence.methods",
    "InfluenceScorer": "influence.methods",
    "QuerySet": "diffusion.queries",
    "Ranker": "ranker.model",
    "RankerTrainConfig": "ranker.training",
    "SamplerConfig": "diffusion.queries",
    "ScoringConfig": "unlearning.scoring",
    "Teacher": "unlearning.teacher",
    "TeacherConfig": "unlearning.teacher",
    "TeacherJob": "unlearning.jobs",
    "TextToImageModel": "diffusion.model",
    "UnlearnConfig": "unlearning.unlearner",
    "build_gradient_features": "influence.store",
    "embed_dataset": "features",
    "run_build": "pipeline.build",
    "evaluate": "evaluation",
}

__all__ = [
    "Attribution",
    "Attributions",
    "Attributor",
    "BuildConfig",
    "CocoCaptions",
    "ConfigError",
    "CounterfactualConfig",
    "CounterfactualJob",
    "DatasetError",
    "Evaluation",
    "FastGDAError",
    "FeatureExtractor",
    "Features",
    "Fisher",
    "FisherConfig",
    "GradientFeatures",
    "GroundTruth",
    "ImageCaption",
    "ImageCaptionDataset",
    "ImageCaptionFolder",
    "IncompatibleArtifactError",
    "InfluenceConfig",
    "InfluenceJob",
    "InfluenceScorer",
    "MissingDependencyError",
    "NotFittedError",
    "QuerySet",
    "Ranker",
    "RankerTrainConfig",
    "SamplerConfig",
    "ScoringConfig",
    "Teacher",
    "TeacherConfig",
    "TeacherJob",
    "TextToImageModel",
    "UnlearnConfig",
    "build_gradient_features",
    "embed_dataset",
    "evaluate",
    "open_dataset",
    "run_build",
]


def __getattr__(name: str):
    if name in _FRONT:
        value = getattr(importlib.import_module(f".{_FRONT[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'fastgda' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FRONT))
