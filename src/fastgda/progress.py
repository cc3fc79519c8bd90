"""Progress reporting through one switch, not a flag passed down every call.

Long work draws its bars with ``bar`` (tqdm, on stderr) and its step lines with ``say``; whether they show is
decided once by the caller: ``quiet()`` (a block without them), ``reporting(show)`` (a block with or without),
or ``disable()`` / ``enable()`` for the whole process (what diffusers' and datasets' progress switches do).
The command line turns them off under ``--json``; Ray actors turn them off in their own processes.

    import fastgda.progress

    with fastgda.progress.quiet():
        features = extractor.extract(dataset)
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from tqdm.auto import tqdm

_SHOWN_HERE: ContextVar[bool | None] = ContextVar("fastgda_progress", default=None)
_shown_by_default = True


def shown() -> bool:
    """Whether progress shows in the current context."""
    here = _SHOWN_HERE.get()
    return _shown_by_default if here is None else here


@contextmanager
def reporting(show: bool) -> Iterator[None]:
    """Show progress in this block (and the threads' and tasks' it starts with a copy of its context) or not."""
    token = _SHOWN_HERE.set(bool(show))
    try:
        yield
    finally:
        _SHOWN_HERE.reset(token)


def quiet():
    """A block without progress bars or step lines."""
    return reporting(False)


def disable() -> None:
    """No progress anywhere in this process unless a block asks for it."""
    global _shown_by_default
    _shown_by_default = False


def enable() -> None:
    """Progress everywhere in this process unless a block is quiet (the default)."""
    global _shown_by_default
    _shown_by_default = True


def bar(iterable=None, **options) -> tqdm:
    """A tqdm bar (``options`` as tqdm's) that draws only where progress shows."""
    return tqdm(iterable, disable=not shown(), **options)


def say(line: str) -> None:
    """Print one status line (a pipeline step starting) where progress shows: on stderr, with the bars, so that
    stdout holds only results (the command line's rule)."""
    if shown():
        print(line, file=sys.stderr, flush=True)
