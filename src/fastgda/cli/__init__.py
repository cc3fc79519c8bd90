"""The ``fastgda`` command line: ``main(argv) -> int`` parses, calls one library function, formats the result.

Results go to stdout (``--json`` for scripts); logs and progress bars go to stderr. Exit codes: 0 ok; 2 for usage
errors, out-of-range values, any ``FastGDAError`` and unreadable or unwritable paths (one line, no traceback;
``-v`` adds the traceback); 1 for anything unexpected.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from ..errors import FastGDAError
from ..progress import reporting
from . import (
    attribute,
    attributor,
    build,
    demo,
    embed,
    env,
    evaluate,
    influence,
    model,
    ranker,
    release,
    serve,
    teacher,
    world,
)

COMMANDS = (
    env,
    build,
    world,
    model,
    teacher,
    influence,
    embed,
    ranker,
    attributor,
    attribute,
    evaluate,
    release,
    serve,
    demo,
)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line: the problem, then where the usage is (sub-parsers inherit it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, one sub-command per module in ``COMMANDS``."""
    parser = OneLineParser(
        prog="fastgda",
        description="Fast data attribution for text-to-image models: which training images made this output?",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 0 after --help and 2 on a usage error
        return int(exc.code or 0)
    args.argv = list(
        sys.argv[1:] if argv is None else argv
    )  # recorded in manifests as the exact command
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        # One switch for every bar and step line: on, unless the output is for a script (--json).
        with reporting(not getattr(args, "json", False)):
            return int(args.handler(args) or 0)
    except (FastGDAError, OSError) as exc:  # OSError: a path that cannot be read or written
        if args.verbose:
            traceback.print_exc()
        message = " ".join(str(exc).split())  # one line, whatever the message holds
        print(f"fastgda: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "fastgda: interrupted; finished work is kept and the command can be run again to resume",
            file=sys.stderr,
        )
        return 130


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
