"""One resumable step runner for the long pipelines (``fastgda build``, the demo).

Each step's status, seconds and settings are kept in one JSON file beside the outputs (``build.json`` for a
build). Steps reuse what an earlier run left (each step function checks its own artifacts), so a rerun after an
interruption continues; the runner adds what the steps cannot see: the time each took, an estimate of what is
left, and a refusal to continue a step that an earlier run began with other settings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .._artifacts import write_json_atomic
from ..errors import FastGDAError
from ..progress import say
from .memory import PeakMemory


class StepRunner:
    """Runs named steps in order and records them in ``out/state_file``.

    ``state["steps"][name]``: ``status`` (running, done), ``seconds`` (the wall time it took to finish, added up
    over the runs that worked on it), ``last_seconds`` (this run's, however short a reuse was),
    ``peak_rss_mb`` and ``peak_anonymous_mb`` (the most resident memory of this process during the step, all of
    it and without memory-mapped files' pages, in the run that finished it; ``fastgda.pipeline.memory``) and
    ``settings`` (what its outputs depend on; a rerun with others is refused before any work).
    """

    def __init__(
        self,
        out: Path,
        names: Sequence[str],
        label: str,
        state_file: str = "steps.json",
    ):
        self.path, self.names, self.label = Path(out) / state_file, list(names), label
        self.state = json.loads(self.path.read_text()) if self.path.is_file() else {"steps": {}}
        self.began = time.perf_counter()
        self.seconds: dict[str, float] = {}  # this run's wall time per step

    def run(
        self,
        name: str,
        function: Callable,
        *args,
        settings: dict | None = None,
        title: str | None = None,
    ):
        """``function(*args)`` as step ``name``; returns its result.

        Raises:
            FastGDAError: an earlier run began or finished this step with other ``settings``.
        """
        record = self.state["steps"].get(name, {})
        if settings is not None:
            settings = json.loads(json.dumps(settings))  # as JSON keeps it: tuples become lists
            if "settings" in record and record["settings"] != settings:
                raise FastGDAError(
                    _changed_message(self.path.parent, name, record["settings"], settings)
                )
        self._announce(name, title)
        done_before = record.get("status") == "done"
        if not done_before:
            record = {"status": "running", "seconds": record.get("seconds", 0.0)}
            if settings is not None:
                record["settings"] = settings
            self._save(name, record)
        began = time.perf_counter()
        try:
            with PeakMemory() as peak:
                result = function(*args)
        except (
            BaseException
        ):  # stopped (Ctrl-C, an error): the work done still counts toward the step
            if not done_before:
                worked = record.get("seconds", 0.0) + time.perf_counter() - began
                self._save(name, {**record, "seconds": round(worked, 1)})
            raise
        seconds = time.perf_counter() - began
        self.seconds[name] = round(seconds, 1)
        # A step reused whole took no work: its recorded time stays what finishing it took.
        total = record.get("seconds", 0.0) + (0.0 if done_before else seconds)
        record = {
            **record,
            "status": "done",
            "seconds": round(total, 1),
            "last_seconds": round(seconds, 1),
        }
        if not done_before:  # a reuse's memory says nothing of what the step needs
            record["peak_rss_mb"] = round(peak.bytes / 2**20, 1)
            if peak.anonymous_bytes is not None:
                record["peak_anonymous_mb"] = round(peak.anonymous_bytes / 2**20, 1)
        if name == "teacher":
            self.state.pop("eta_minutes", None)  # what follows takes minutes at most
        self._save(name, record)
        return result

    def set_eta(self, minutes: float) -> None:
        """Record an estimate of the minutes left in all (shown as each step starts)."""
        self.state["eta_minutes"] = round(minutes, 1)
        write_json_atomic(self.path, self.state)

    def total_seconds(self, name: str) -> float:
        """The wall time step ``name`` took to finish, over every run (0 if it never ran)."""
        return float(self.state["steps"].get(name, {}).get("seconds", 0.0))

    def _announce(self, name: str, title: str | None) -> None:
        index = self.names.index(name) + 1
        elapsed = (time.perf_counter() - self.began) / 60
        left = self.state.get("eta_minutes")
        eta = f", about {left:.0f} min left in all" if left is not None else ""
        say(
            f"[{self.label} {index}/{len(self.names)}] {title or name} (elapsed {elapsed:.1f} min{eta}) ..."
        )

    def _save(self, name: str, record: dict) -> None:
        self.state["steps"][name] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, self.state)


def _changed_message(out: Path, name: str, before: dict, now: dict) -> str:
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    pairs = ", ".join(f"{k}: {before.get(k)!r} then, {now.get(k)!r} now" for k in changed)
    return (
        f"{out} was built with other settings for its step {name!r} ({pairs}); its outputs would not match "
        f"them. Rerun with the earlier settings to continue, or choose another --out to build anew"
    )


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of ``function()`` over ``repeats`` calls, after one warm-up call."""
    function()  # warm-up: lazy initialisation is not what a query costs
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return float(np.median(times))
