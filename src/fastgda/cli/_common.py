"""Helpers shared by the CLI verbs: JSON output, flags typed and range-checked from config fields."""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from typing import Any

from ..config import AT_LEAST_ONE, NON_NEGATIVE, Bounds, field_parser, value_parser


def emit(args, result: dict[str, Any], text: str) -> None:
    """Print ``result`` as JSON with ``--json``, else the human-readable ``text``."""
    if getattr(args, "json", False):
        json.dump(result, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(text)


def add_json_flag(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def set_threads(threads: int | None) -> None:
    """Pin torch's intra-op threads (default: leave torch's choice)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def add_executor_flags(parser) -> None:
    """--executor/--workers/--address, read back by ``executor_from_args``."""
    parser.add_argument("--executor", choices=["local", "ray"], default="local")
    parser.add_argument("--workers", type=COUNT, default=2, help="Ray actors (with --executor ray)")
    parser.add_argument("--address", help="Ray cluster address (default: start a local cluster)")


def executor_from_args(args):
    from ..executors import make_executor

    return make_executor(args.executor, args.workers, args.address)


# Types for flags that map to no config field: parsed and range-checked by argparse, before any work starts.
COUNT = value_parser(int, AT_LEAST_ONE)  # a number of things (threads, workers, rows, steps)
SEED = value_parser(int, NON_NEGATIVE)
ITEM_ID = value_parser(int, NON_NEGATIVE)


def id_list(text: str) -> list[int]:
    """Comma-separated ids, e.g. ``3,17,21``."""
    import argparse

    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ids, got {text!r}") from None
    if not ids or min(ids) < 0:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated ids of at least 0, got {text!r}"
        )
    return ids


PORT = value_parser(int, Bounds(0, 65535))


def add_setting(parser, flag: str, config_type: type, name: str, **kwargs) -> None:
    """Add ``flag`` for the field ``name`` of ``config_type``, with the field's type, range, default and help.

    A tuple field takes one or more values (``nargs="+"``); keyword arguments override what the field gives.
    """
    field = {f.name: f for f in dataclasses.fields(config_type)}[name]
    hint = typing.get_type_hints(config_type)[name]
    parse = _scalar_type(hint)
    if parse is None or parse is bool:
        raise TypeError(f"{config_type.__name__}.{name} ({hint}) is not a typed value flag")
    default = None if field.default is dataclasses.MISSING else field.default
    is_sequence = typing.get_origin(hint) is tuple or any(
        typing.get_origin(a) is tuple for a in typing.get_args(hint)
    )
    choices = field.metadata.get("choices")
    kwargs.setdefault("type", field_parser(config_type, name, parse))
    kwargs.setdefault("default", list(default) if is_sequence and default is not None else default)
    if choices:
        kwargs.setdefault("choices", choices)
    if is_sequence:
        kwargs.setdefault("nargs", "+")
    if "help" not in kwargs:
        text = field.metadata.get("help", "")
        kwargs["help"] = f"{text} (default: %(default)s)" if default is not None else text
    parser.add_argument(flag, **kwargs)


def _scalar_type(hint) -> type | None:
    """int for ``int``, ``int | None`` and ``tuple[int, ...]``; likewise float, str and bool."""
    if hint in (int, float, str, bool):
        return hint
    for arg in typing.get_args(hint):
        if arg is not type(None) and arg is not Ellipsis and (found := _scalar_type(arg)):
            return found
    return None
