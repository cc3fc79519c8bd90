"""fastgda: fast data attribution for text-to-image models.

``import fastgda`` stays light (numpy, torch, pillow): the diffusion layer (``fastgda.diffusion``), the shapes
world (``fastgda.world``) and other heavy parts are imported explicitly where they are used.
"""

from .data import (
    CocoCaptions,
    ImageCaption,
    ImageCaptionDataset,
    ImageCaptionFolder,
    ShapesWorld,
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

__all__ = [
    "CocoCaptions",
    "ConfigError",
    "DatasetError",
    "FastGDAError",
    "ImageCaption",
    "ImageCaptionDataset",
    "ImageCaptionFolder",
    "IncompatibleArtifactError",
    "MissingDependencyError",
    "NotFittedError",
    "ShapesWorld",
    "open_dataset",
]
