"""The pipeline every user runs on their own data, and the demo on the embedded world: from a captioned image set
and a model to a served-ready attributor, its evaluation and ``report.html``.

``build`` wires the steps (``fastgda build``); ``prepare`` and ``teacher`` are the build's own first steps;
``distil`` the steps every pipeline shares once it has teacher rankings (features, ranker, attributor,
evaluation); ``steps`` the one resumable step runner; ``report`` and ``html`` the report.
"""

from .build import BuildConfig, run_build
from .steps import StepRunner

__all__ = ["BuildConfig", "StepRunner", "run_build"]
