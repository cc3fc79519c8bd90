"""Helpers shared by the CLI verbs: JSON output, flags typed and range-checked from config fields."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from typing import Any

from ..config import AT_LEAST_ONE, NON_NEGATIVE, Bounds, field_parser, value_parser
from ..devices import DEVICE_HELP, DTYPE_HELP, DTYPES


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


def add_compute_flags(parser, what: str = "models") -> None:
    """--device and --dtype, read back by ``compute_from_args``."""
    parser.add_argument("--device", default="auto", help=f"where the {what} run: {DEVICE_HELP}")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help=DTYPE_HELP)


def compute_from_args(args):
    """(torch.device, dtype name) from --device/--dtype; an absent device fails here, before any work."""
    from ..devices import resolve_device, resolve_dtype

    resolve_dtype(args.dtype)
    return resolve_device(args.device), args.dtype


def add_executor_flags(parser) -> None:
    """--executor/--workers/--address, read back by ``executor_from_args``."""
    parser.add_argument("--executor", choices=["local", "ray"], default="local")
    parser.add_argument(
        "--workers",
        type=COUNT,
        help="Ray actors (with --executor ray; default: one per GPU when the cluster has GPUs and --device "
        "is auto or cuda, else 2)",
    )
    parser.add_argument("--address", help="Ray cluster address (default: start a local cluster)")


def executor_from_args(args, device: str | None = None):
    """The executor the flags ask for; on a Ray cluster with GPUs, one worker per GPU when ``device`` (default:
    ``--device``, else cpu) allows."""
    from ..executors import make_executor

    device = device or getattr(args, "device", "cpu")
    return make_executor(args.executor, args.workers, args.address, device=device)


# Types for flags that map to no config field: parsed and range-checked by argparse, before any work starts.
COUNT = value_parser(int, AT_LEAST_ONE)  # a number of things (threads, workers, rows, steps)
SEED = value_parser(int, NON_NEGATIVE)
ITEM_ID = value_parser(int, NON_NEGATIVE)


def id_list(text: str) -> list[int]:
    """Comma-separated ids, e.g. ``3,17,21``."""
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


def add_config_flags(
    parser,
    config_type: type,
    names: list[str] | None = None,
    *,
    prefix: str = "",
    aliases: dict[str, str] | None = None,
) -> None:
    """One flag per field of ``config_type`` (or of ``names``): ``--<prefix><field-name>``, one to one.

    The field gives the flag its type, range, choices and help (with the default); a bool field becomes
    ``--name/--no-name``, a tuple takes one or more values. A flag left out keeps the config's default (or its
    preset's): ``config_from_args`` builds the config from the flags given. ``aliases``: field -> an older flag
    spelling still accepted (e.g. ``{"outlier_prob": "--outliers"}``).
    """
    hints = typing.get_type_hints(config_type)
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    settings = dict(parser.get_default("settings") or {})
    for name in names or list(fields):
        field, hint = fields[name], hints[name]
        dest = f"{prefix.replace('-', '_')}{name}"
        flags = [f"--{prefix}{name.replace('_', '-')}"]
        if aliases and name in aliases:
            flags.append(aliases[name])
        required = field.default is dataclasses.MISSING
        default = None if required else field.default
        help_text = field.metadata.get("help", "")
        if default is not None and default != ():
            shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
            help_text += f" (default: {shown})"
        kwargs: dict[str, Any] = {"dest": dest, "help": help_text.replace("%", "%%")}
        if required:
            kwargs["required"] = True
        else:
            kwargs["default"] = argparse.SUPPRESS
        parse = _scalar_type(hint)
        if parse is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = field_parser(config_type, name, parse)
            if field.metadata.get("choices"):
                kwargs["choices"] = field.metadata["choices"]
            if _is_sequence(hint):
                kwargs["nargs"] = "+"
        parser.add_argument(*flags, **kwargs)
        settings[dest] = (config_type.__name__, name)
    parser.set_defaults(settings=settings)


def config_from_args(args, config_type: type, base=None):
    """``base`` (default: ``config_type()``) with the fields whose flags were given on the command line."""
    given = {
        field: tuple(value) if isinstance(value, list) else value
        for dest, (type_name, field) in getattr(args, "settings", {}).items()
        if type_name == config_type.__name__ and (value := getattr(args, dest, None)) is not None
    }
    if base is None:
        return config_type(**given)
    return dataclasses.replace(base, **given)


def _is_sequence(hint) -> bool:
    return typing.get_origin(hint) is tuple or any(
        typing.get_origin(arg) is tuple for arg in typing.get_args(hint)
    )


def _scalar_type(hint) -> type | None:
    """int for ``int``, ``int | None`` and ``tuple[int, ...]``; likewise float, str and bool."""
    if hint in (int, float, str, bool):
        return hint
    for arg in typing.get_args(hint):
        if arg is not type(None) and arg is not Ellipsis and (found := _scalar_type(arg)):
            return found
    return None
