"""Typed settings: the dataclass fields of every config carry their help text and their valid values.

A config declares each field with ``setting(default, "help", low=..., high=...)`` and calls ``check_settings``
from ``__post_init__``, so an out-of-range value is refused when the config is built, before any work starts.
The command line reads the same metadata (``value_parser``) to check a flag as it is parsed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Bounds:
    """An interval of valid numbers; ``low_open`` excludes ``low`` itself (e.g. a step size > 0)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def describe(self) -> str:
        low = (
            None
            if self.low is None
            else f"{'greater than' if self.low_open else 'at least'} {self.low:g}"
        )
        high = None if self.high is None else f"at most {self.high:g}"
        return " and ".join(part for part in (low, high) if part) or "a number"

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (a number), or None when it is valid."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number, got {value!r}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value}"
        too_low = self.low is not None and (
            value <= self.low if self.low_open else value < self.low
        )
        too_high = self.high is not None and value > self.high
        return f"must be {self.describe()}, got {value:g}" if too_low or too_high else None


# The ranges most settings need, named once.
POSITIVE = Bounds(0, low_open=True)  # a size, rate or scale: > 0
AT_LEAST_ONE = Bounds(1)  # a count of things to do
NON_NEGATIVE = Bounds(0)  # a seed, a weight decay, a count that may be zero
PROBABILITY = Bounds(0, 1)  # a share or probability in [0, 1]
FRACTION = Bounds(0, 1, low_open=True)  # a share that must keep something: (0, 1]


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",  # noqa: A002 - argparse's word for it
    *,
    bounds: Bounds | None = None,
    choices: Sequence[Any] | None = None,
) -> Any:
    """A dataclass field whose metadata holds its help, its numeric bounds and its allowed choices."""
    metadata = {"help": help, "bounds": bounds, "choices": tuple(choices) if choices else None}
    if isinstance(default, list | dict | set):
        raise TypeError("mutable defaults: pass a tuple")
    return dataclasses.field(default=default, metadata=metadata)


def field_problem(field: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with ``value`` for ``field`` (each element of a tuple is checked), or None."""
    if value is None:
        return None  # optional settings: None means "not set", and the config's own logic decides
    values = value if isinstance(value, tuple | list) else (value,)
    choices, bounds = field.metadata.get("choices"), field.metadata.get("bounds")
    for item in values:
        if choices and item not in choices:
            return f"must be one of {', '.join(map(str, choices))}, got {item!r}"
        if bounds and (problem := bounds.problem(item)):
            return problem
    return None


def check_settings(config: Any) -> None:
    """Raise ``ConfigError`` naming the first field of ``config`` whose value is out of its declared range."""
    for field in dataclasses.fields(config):
        problem = field_problem(field, getattr(config, field.name))
        if problem:
            raise ConfigError(f"{type(config).__name__}.{field.name} {problem}")


def value_parser(
    parse: Callable[[str], Any], bounds: Bounds | None = None, choices: Sequence[Any] | None = None
) -> Callable[[str], Any]:
    """An argparse ``type=`` that parses a string and refuses values outside ``bounds`` or ``choices``."""
    import argparse

    def parse_checked(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {parse.__name__}, got {text!r}") from None
        problem = None
        if choices and value not in choices:
            problem = f"must be one of {', '.join(map(str, choices))}, got {value!r}"
        elif bounds:
            problem = bounds.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse_checked.__name__ = parse.__name__  # argparse names the type in its messages
    return parse_checked


def field_parser(config_type: type, name: str, parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``value_parser`` with the bounds and choices a config declares for its field ``name``."""
    field = {f.name: f for f in dataclasses.fields(config_type)}[name]
    return value_parser(parse, field.metadata.get("bounds"), field.metadata.get("choices"))
