"""Micro-batching: queries that wait for a worker are joined into one pass of the encoders, ranker and search.

At concurrency 32 on two cores most requests wait for the pool anyway. Answered one by one, each query reads the
ranker's weights once for a single row (a matrix-vector product: three members of the paper's MLP are 36 MB of
float32 per query) and pays the encoders' per-call overhead; joined, one matrix product serves the whole group.
Nothing waits for company: a worker that frees takes whatever has queued meanwhile, so a lone query goes straight
through and batches only form under load.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any


class MicroBatcher:
    """Runs ``work(jobs) -> results`` (one result per job, in order) on the jobs that are waiting, at most
    ``slots`` passes at once and at most ``max_queries`` queries in a pass (a larger job runs alone).

    ``run(work, jobs)`` awaits the work in the server's pool. A pass that raises is retried job by job, so a bad
    query fails its own request only. A job whose request went away (cancelled) is dropped before its pass; the
    work may also return None for a job whose request left during the pass.
    """

    def __init__(
        self,
        work: Callable[[list], Sequence],
        run: Callable[..., Awaitable],
        slots: int,
        max_queries: int,
    ):
        self.work, self.run = work, run
        self.slots, self.max_queries = slots, max_queries
        self._waiting: deque[tuple[Any, int, asyncio.Future]] = deque()
        self._active = 0
        self._tasks: set[asyncio.Task] = set()
        self.passes = 0  # counters for /metrics: passes run and the queries they answered
        self.queries = 0

    async def submit(self, job, queries: int = 1):
        """The job's result, computed in a pass with whatever else is waiting; ``queries``: rows it holds."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((job, queries, future))
        if self._active < self.slots:
            self._active += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)  # held, so the task is not garbage-collected mid-pass
            task.add_done_callback(self._tasks.discard)
        return await future

    def _take(self) -> list[tuple[Any, int, asyncio.Future]]:
        """The next pass: waiting jobs in arrival order up to ``max_queries`` rows (always at least one job)."""
        taken, rows = [], 0
        while self._waiting:
            job, queries, future = self._waiting[0]
            if taken and rows + queries > self.max_queries:
                break
            self._waiting.popleft()
            if future.done():  # its request was cancelled while waiting
                continue
            taken.append((job, queries, future))
            rows += queries
        return taken

    async def _drain(self) -> None:
        try:
            while self._waiting:
                taken = self._take()
                if taken:
                    await self._pass(taken)
        finally:
            self._active -= 1

    async def _pass(self, taken: list) -> None:
        jobs = [job for job, _, _ in taken]
        try:
            try:
                results = await self.run(self.work, jobs)
            except Exception as exc:
                if len(taken) == 1:
                    _settle(taken[0][2], exception=exc)
                    return
                for one in taken:  # one job's fault must not fail the others
                    await self._pass([one])
                return
            self.passes += 1
            # A None result is a job computed for nobody (its request went away): not an answered query.
            self.queries += sum(
                q for (_, q, _), r in zip(taken, results, strict=True) if r is not None
            )
            for (_, _, future), result in zip(taken, results, strict=True):
                _settle(future, result=result)
        except BaseException:
            for _, _, future in taken:  # the server is stopping: nobody is left waiting forever
                if not future.done():
                    future.cancel()
            raise


def _settle(future: asyncio.Future, result=None, exception: BaseException | None = None) -> None:
    if future.done():  # the request went away while its pass ran
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)
