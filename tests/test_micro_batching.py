"""Micro-batching: waiting queries are joined into one pass, and a joined answer is the answer each gets alone."""

import asyncio
import threading

import numpy as np
import pytest
from PIL import Image

from _tolerance import assert_same_top_k, attributed
from fastgda.service.batching import MicroBatcher


class GatedWork:
    """``work(jobs)`` that records each pass and holds the first one until the gate opens, so later jobs queue."""

    def __init__(self):
        self.passes: list[list] = []
        self.gate = threading.Event()

    def __call__(self, jobs: list) -> list:
        self.passes.append(list(jobs))
        if len(self.passes) == 1:
            self.gate.wait(10)
        if "bad" in jobs:
            raise ValueError("a bad job")
        return [f"answer {job}" for job in jobs]


async def in_thread(function, *args):
    return await asyncio.to_thread(function, *args)


async def queue_behind_first(batcher: MicroBatcher, work: GatedWork, jobs: list) -> list:
    """Submit "first", then ``jobs`` while its pass is held; open the gate; every outcome, exceptions included."""
    first = asyncio.create_task(batcher.submit("first"))
    while not work.passes:  # the first pass has started and holds the only slot
        await asyncio.sleep(0.001)
    rest = [asyncio.create_task(batcher.submit(job)) for job in jobs]
    await asyncio.sleep(0.01)
    work.gate.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


def test_jobs_that_wait_are_joined_into_one_pass_in_arrival_order():
    work = GatedWork()
    batcher = MicroBatcher(work, in_thread, slots=1, max_queries=16)
    outcomes = asyncio.run(queue_behind_first(batcher, work, ["a", "b", "c"]))
    assert outcomes == ["answer first", "answer a", "answer b", "answer c"]
    assert work.passes == [["first"], ["a", "b", "c"]]
    assert (batcher.passes, batcher.queries) == (2, 4)


def test_a_pass_holds_at_most_max_queries():
    work = GatedWork()
    batcher = MicroBatcher(work, in_thread, slots=1, max_queries=2)
    asyncio.run(queue_behind_first(batcher, work, ["a", "b", "c"]))
    assert work.passes == [["first"], ["a", "b"], ["c"]]


def test_a_bad_job_fails_its_own_request_only():
    work = GatedWork()
    batcher = MicroBatcher(work, in_thread, slots=1, max_queries=16)
    outcomes = asyncio.run(queue_behind_first(batcher, work, ["a", "bad", "c"]))
    assert outcomes[:2] == ["answer first", "answer a"] and outcomes[3] == "answer c"
    assert isinstance(outcomes[2], ValueError)
    assert work.passes[1] == ["a", "bad", "c"]  # the joined pass failed, then each job ran alone
    assert work.passes[2:] == [["a"], ["bad"], ["c"]]


def test_a_request_that_went_away_is_not_computed():
    work = GatedWork()
    batcher = MicroBatcher(work, in_thread, slots=1, max_queries=16)

    async def scenario():
        first = asyncio.create_task(batcher.submit("first"))
        while not work.passes:
            await asyncio.sleep(0.001)
        gone = asyncio.create_task(batcher.submit("gone"))
        kept = asyncio.create_task(batcher.submit("kept"))
        await asyncio.sleep(0.01)
        gone.cancel()
        work.gate.set()
        return await asyncio.gather(first, kept)

    assert asyncio.run(scenario()) == ["answer first", "answer kept"]
    assert work.passes == [["first"], ["kept"]]


def test_a_lone_job_does_not_wait_for_company():
    work = GatedWork()
    work.gate.set()
    batcher = MicroBatcher(work, in_thread, slots=2, max_queries=16)

    async def one_by_one():
        return [await batcher.submit(job) for job in ("a", "b")]

    assert asyncio.run(one_by_one()) == ["answer a", "answer b"]
    assert work.passes == [["a"], ["b"]]


def test_a_joined_pass_answers_each_job_as_alone(served):
    """Service.answer_jobs on mixed jobs (image queries, given features, two ks, a baseline) against each alone."""
    pytest.importorskip("fastapi")
    from fastgda.service.app import QueryJob, Service
    from fastgda.service.config import ServiceConfig

    service = Service(ServiceConfig(attributor=str(served["attributor"]), runtime="torch"))
    image = np.asarray(Image.open(served["query_image"]).convert("RGB"))
    shifted = np.roll(image, 3, axis=1)
    given = service.attributor.query_features([shifted], ["a small red square on the left"])[0]
    jobs = [
        QueryJob([None], [image], ["a large cyan circle in the center"], k=5),
        QueryJob([given], k=5, baseline=True),
        QueryJob([None, given], [shifted], ["a small red square on the left"], k=3),
        QueryJob([None], [image], ["a green triangle"], k=5, baseline=True),
    ]
    joined = service.answer_jobs(jobs)
    # Joined and alone, the encoders run on other batches: ``attributed`` bounds how far a cosine moves.
    tolerance = attributed(service.attributor)
    for job, answer in zip(jobs, joined, strict=True):
        (alone,) = service.answer_jobs([job])
        for key in ("results", "baseline"):
            if key == "baseline" and not job.baseline:
                assert "baseline" not in answer
                continue
            rows = answer[key]["results"] if key == "baseline" else answer[key]
            alone_rows = alone[key]["results"] if key == "baseline" else alone[key]
            assert len(rows) == len(job.features)
            for row, alone_row in zip(rows, alone_rows, strict=True):
                assert len(row) == job.k
                _same_answer(row, alone_row, tolerance)
    # The features-given row of job 2 is the row its image gives: both answers agree.
    _same_answer(joined[2]["results"][0], joined[2]["results"][1], tolerance)


def _same_answer(row: list[dict], other: list[dict], tolerance) -> None:
    """Two answers' results (top-k dicts) agree up to ties within the tolerance."""
    ids, scores = [r["id"] for r in row], [r["score"] for r in row]
    assert_same_top_k(ids, scores, [r["id"] for r in other], [r["score"] for r in other], tolerance)
