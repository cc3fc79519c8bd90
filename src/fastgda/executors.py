"""Where units of work run: in this process (``LocalExecutor``) or on a Ray cluster (``RayExecutor``), and the
one protocol of the long jobs that run on them (``ResumableJob``).

The only interface the slow stages see is ``executor.map(make_worker, items)``: ``make_worker()`` builds a
stateful worker once per process (the teacher loads its model, Fisher and before-loss cache once), and
``worker(item)`` does one unit and writes its own result file. Results come back in item order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from ._optional import require
from .errors import FastGDAError
from .progress import bar as progress_bar

logger = logging.getLogger(__name__)


@runtime_checkable
class ResumableJob(Protocol):
    """A long job over units of work (the teacher's and the influence methods' queries, the counterfactual's
    retrains), each written to its own result file, so a job killed at any moment loses at most its units in
    flight: ``TeacherJob``, ``InfluenceJob`` and ``CounterfactualJob`` all read this way.

    Open it with its class's ``open`` (or constructor) over artifact folders, ask what is left (``pending``),
    ``run`` those (or some of them) in this process or on an executor, and ``merge`` the finished results into
    the job's artifact (``partial``: from what has finished so far).
    """

    def pending(self) -> list: ...

    def run(self, units: Sequence | None = None, executor=None) -> None: ...

    def merge(self, partial: bool = False): ...


def run_units(
    executor,
    in_process: Callable[[], Callable[[Any], Any]],
    portable: Callable[[], Callable[[Any], Any]] | None,
    units: Sequence,
    desc: str,
) -> list:
    """Run ``units`` on ``executor`` (default: this process): in this process the already loaded worker
    (``in_process``) is reused; elsewhere the picklable factory ``portable`` builds one in each worker.

    Raises:
        FastGDAError: a distributed executor was given for a job that was not opened from folders.
    """
    executor = executor or LocalExecutor()
    if isinstance(executor, LocalExecutor):
        return executor.map(in_process, units, desc=desc)
    if portable is None:
        raise FastGDAError(
            f"this job was opened from objects in memory, which other processes cannot load: open it from "
            f"its folders ({desc}) to run it on {type(executor).__name__}"
        )
    return executor.map(portable, units, desc=desc)


class LocalExecutor:
    """Run every item in this process with one worker."""

    def map(
        self, make_worker: Callable[[], Callable[[Any], Any]], items: Sequence, desc: str = "work"
    ) -> list:
        worker = make_worker()
        return [worker(item) for item in progress_bar(items, desc=desc)]


class _RayWorker:
    def __init__(self, make_worker, threads: int):
        import torch

        from . import progress

        torch.set_num_threads(threads)
        progress.disable()  # an actor's bars would interleave in the driver's log: the driver's bar counts items
        self.worker = make_worker()

    def __call__(self, item):
        return self.worker(item)


class RayExecutor:
    """Run items on Ray actors: each actor builds its worker once, then serves many items.

    Args:
        address: a running cluster's address, or ``None`` to start a local one.
        workers: number of actors (default: one per GPU when actors take GPUs, else 2).
        cpus_per_worker: each actor's CPU request (and its torch threads).
        gpus_per_worker: each actor's GPU request; ``None``: 1 when the cluster has GPUs, else 0. Ray sets each
            actor's ``CUDA_VISIBLE_DEVICES`` to the GPU it was given, so ``cuda`` in an actor is its own GPU.
        num_cpus / num_gpus: resources of a local cluster started here (default: what the workers need; the
            GPUs torch sees).
        max_retries: how often an item is retried when its actor dies (preemption, out of memory).
    """

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        cpus_per_worker: int = 1,
        gpus_per_worker: float | None = None,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        max_retries: int = 3,
    ):
        self.ray = require("ray", extra="ray")
        if not self.ray.is_initialized():
            if address is None:
                if num_gpus is None:
                    num_gpus = _visible_gpus()
                takes_gpus = gpus_per_worker is None or gpus_per_worker > 0
                planned = workers or (num_gpus if takes_gpus and num_gpus else 2)
                self.ray.init(
                    num_cpus=num_cpus or planned * cpus_per_worker,
                    num_gpus=num_gpus,
                    include_dashboard=False,
                    log_to_driver=False,
                )
            else:
                self.ray.init(address=address, log_to_driver=False)
        cluster_gpus = float(self.ray.cluster_resources().get("GPU", 0))
        if gpus_per_worker is None:
            gpus_per_worker = 1 if cluster_gpus >= 1 else 0
        if gpus_per_worker > cluster_gpus:
            raise FastGDAError(
                f"each Ray worker asks for {gpus_per_worker} GPU(s) but the cluster has {cluster_gpus:g}; "
                "use --device cpu, or a cluster with GPUs"
            )
        self.workers = workers or (int(cluster_gpus // gpus_per_worker) if gpus_per_worker else 2)
        self.cpus_per_worker = cpus_per_worker
        self.gpus_per_worker = gpus_per_worker
        self.max_retries = max_retries
        if gpus_per_worker:
            logger.info(
                "Ray: %d worker(s), %g GPU each (%g in the cluster)",
                self.workers,
                gpus_per_worker,
                cluster_gpus,
            )

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
        bar = progress_bar(total=len(items), desc=desc)
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
    kind: str = "local",
    workers: int | None = None,
    address: str | None = None,
    device: str = "cpu",
):
    """Build an executor by name: ``"local"`` or ``"ray"``.

    ``device``: where the workers' models run. With ``auto`` or ``cuda``, Ray places one worker per GPU
    (``num_gpus=1``) when the cluster has GPUs; with ``cpu`` its workers take none.
    """
    if kind == "local":
        return LocalExecutor()
    if kind == "ray":
        wants_gpu = str(device or "cpu").strip().lower().split(":")[0] in ("auto", "cuda")
        return RayExecutor(
            address=address,
            workers=workers,
            gpus_per_worker=None if wants_gpu else 0,
        )
    raise FastGDAError(f"unknown executor {kind!r}; choose 'local' or 'ray'")


def _visible_gpus() -> int:
    """CUDA devices torch sees here (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
