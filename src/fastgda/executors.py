"""Where units of work run: in this process (``LocalExecutor``) or on a Ray cluster (``RayExecutor``).

The only interface the slow stages see is ``executor.map(make_worker, items)``: ``make_worker()`` builds a
stateful worker once per process (the teacher loads its model, Fisher and before-loss cache once), and
``worker(item)`` does one unit and writes its own result file. Results come back in item order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm

from ._optional import require

logger = logging.getLogger(__name__)


class LocalExecutor:
    """Run every item in this process with one worker."""

    def __init__(self, progress: bool = True):
        self.progress = progress

    def map(
        self, make_worker: Callable[[], Callable[[Any], Any]], items: Sequence, desc: str = "work"
    ) -> list:
        worker = make_worker()
        return [worker(item) for item in tqdm(items, desc=desc, disable=not self.progress)]


class _RayWorker:
    def __init__(self, make_worker, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.worker = make_worker()

    def __call__(self, item):
        return self.worker(item)


class RayExecutor:
    """Run items on Ray actors: each actor builds its worker once, then serves many items.

    Args:
        address: a running cluster's address, or ``None`` to start a local one with ``num_cpus``.
        workers: number of actors. cpus_per_worker / gpus_per_worker: each actor's resource request.
        max_retries: how often an item is retried when its actor dies (preemption, out of memory).
    """

    def __init__(
        self,
        address: str | None = None,
        workers: int = 2,
        cpus_per_worker: int = 1,
        gpus_per_worker: float = 0,
        num_cpus: int | None = None,
        max_retries: int = 3,
        progress: bool = True,
    ):
        self.ray = require("ray", extra="ray")
        if not self.ray.is_initialized():
            if address is None:
                self.ray.init(
                    num_cpus=num_cpus or workers * cpus_per_worker,
                    include_dashboard=False,
                    log_to_driver=False,
                )
            else:
                self.ray.init(address=address, log_to_driver=False)
        self.workers = workers
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.max_retries = max_retries
        self.progress = progress

    def map(
        self, make_worker: Callable[[], Callable[[Any], Any]], items: Sequence, desc: str = "work"
    ) -> list:
        ray = self.ray
        actor_cls = ray.remote(
            num_cpus=self.cpus_per_worker,
            num_gpus=self.gpus_per_worker,
            max_restarts=self.max_retries,
            max_task_retries=self.max_retries,
        )(_RayWorker)
        actors = [
            actor_cls.remote(make_worker, self.cpus_per_worker)
            for _ in range(min(self.workers, len(items)))
        ]
        results: list = [None] * len(items)
        pending = {}
        queue = list(enumerate(items))
        bar = tqdm(total=len(items), desc=desc, disable=not self.progress)
        try:
            for (
                actor
            ) in actors:  # one item in flight per actor; the next goes to whichever finishes first
                if queue:
                    index, item = queue.pop(0)
                    pending[actor.__call__.remote(item)] = (index, actor)
            while pending:
                (ready,), _ = ray.wait(list(pending), num_returns=1)
                index, actor = pending.pop(ready)
                results[index] = ray.get(ready)
                bar.update(1)
                if queue:
                    next_index, item = queue.pop(0)
                    pending[actor.__call__.remote(item)] = (next_index, actor)
        finally:
            bar.close()
            for actor in actors:
                ray.kill(actor)
        return results


def make_executor(
    kind: str = "local", workers: int = 1, address: str | None = None, progress: bool = True
):
    """Build an executor by name: ``"local"`` or ``"ray"``."""
    if kind == "local":
        return LocalExecutor(progress=progress)
    if kind == "ray":
        return RayExecutor(address=address, workers=workers, progress=progress)
    from .errors import FastGDAError

    raise FastGDAError(f"unknown executor {kind!r}; choose 'local' or 'ray'")
