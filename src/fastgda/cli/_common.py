"""Helpers shared by the CLI verbs: JSON output and argument types."""

from __future__ import annotations

import json
import sys
from typing import Any


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
    parser.add_argument("--workers", type=int, default=2, help="Ray actors (with --executor ray)")
    parser.add_argument("--address", help="Ray cluster address (default: start a local cluster)")


def executor_from_args(args):
    from ..executors import make_executor

    return make_executor(args.executor, args.workers, args.address)
