"""Import optional dependencies where they are used, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise a ``MissingDependencyError`` naming ``pip install 'fastgda[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"this feature needs the Python package {module!r}, which is not installed; "
            f"install it with: pip install 'fastgda[{extra}]'"
        ) from exc
