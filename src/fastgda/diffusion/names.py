"""Named models: a short name (``shipped``) that stands for a model folder, provided by whatever package ships it.

Every verb that takes ``--model`` accepts a folder or a name. Names come from the ``fastgda.models`` entry-point
group (fastgda's own app registers ``shipped``, the world model packaged with it) or from
``register_model_name`` at run time; the model layer never imports the packages that provide them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from ..errors import FastGDAError

ENTRY_POINT_GROUP = "fastgda.models"
_REGISTERED: dict[str, Callable[[], os.PathLike | str]] = {}


def register_model_name(name: str, locate: Callable[[], os.PathLike | str]) -> None:
    """Make ``name`` stand for the folder ``locate()`` returns (called when the name is used)."""
    _REGISTERED[name] = locate


@lru_cache(
    maxsize=1
)  # scanning the installed distributions takes milliseconds; they do not change in a run
def _entry_points() -> dict:
    from importlib.metadata import entry_points

    return {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP)}


def model_names() -> list[str]:
    """Every name ``resolve_model_dir`` knows, sorted."""
    return sorted(set(_REGISTERED) | set(_entry_points()))


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """The folder a model name stands for; anything that is not a known name is taken as a path.

    Raises:
        FastGDAError: a name's provider failed to load (its package is broken or half installed).
    """
    name = str(name_or_path)
    if name in _REGISTERED:
        return Path(_REGISTERED[name]())
    point = _entry_points().get(name) if os.sep not in name else None
    if point is None:
        return Path(name_or_path)
    try:
        locate = point.load()
    except (ImportError, AttributeError) as exc:
        raise FastGDAError(
            f"model name {name!r} is provided by {point.value}, which failed to load ({exc}); reinstall the "
            "package that provides it, or pass the model folder"
        ) from exc
    return Path(locate())
