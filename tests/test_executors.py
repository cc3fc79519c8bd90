"""The Ray executor on a real local cluster gives the same teacher rankings and features as the local one."""

import numpy as np
import pytest

from _tolerance import assert_close, assert_same_ranking, largest_loss, network, teacher_scores
from fastgda.executors import LocalExecutor, make_executor
from fastgda.unlearning import ScoringConfig, UnlearnConfig
from fastgda.unlearning.jobs import TeacherConfig, TeacherSpec, run_teacher

CONFIG = TeacherConfig(
    unlearn=UnlearnConfig(num_pairs=16, batch_size=16), scoring=ScoringConfig(timesteps=(500,))
)


def _spec(teacher_inputs, out_dir):
    return TeacherSpec(
        *(str(teacher_inputs[k]) for k in ("model_dir", "data_dir", "queries_dir", "fisher_dir")),
        str(out_dir),
        CONFIG,
    )


def test_the_long_jobs_share_one_protocol():
    """The teacher, the influence methods and the counterfactual: open, pending, run on an executor, merge."""
    import inspect

    from fastgda.counterfactual import CounterfactualJob
    from fastgda.executors import ResumableJob
    from fastgda.influence import InfluenceJob
    from fastgda.unlearning.jobs import TeacherJob

    for job in (TeacherJob, InfluenceJob, CounterfactualJob):
        assert issubclass(job, ResumableJob), job
        assert list(inspect.signature(job.run).parameters)[2] == "executor", job
        assert "partial" in inspect.signature(job.merge).parameters, job


def test_a_job_opened_from_memory_is_refused_by_a_distributed_executor(teacher_inputs, tmp_path):
    """A teacher job built from loaded objects has no spec other processes could open: a Ray executor is
    refused with what to do, before a cluster is asked for anything; in this process it runs."""
    from fastgda.errors import FastGDAError
    from fastgda.executors import RayExecutor
    from fastgda.unlearning.jobs import TeacherJob

    spec = _spec(teacher_inputs, tmp_path / "run")
    job = TeacherJob.open(spec.model_dir, spec.data_dir, spec.queries_dir, spec.fisher_dir, spec.out_dir,
                          CONFIG)  # fmt: skip
    assert job.spec is None and spec.job().spec == spec
    with pytest.raises(FastGDAError, match="open it from its folders"):
        job.run([0], executor=RayExecutor.__new__(RayExecutor))  # never started: refused before use
    job.run([0], executor=LocalExecutor())
    assert job.pending() == [1, 2] and len(job.merge(partial=True)) == 1


def test_local_executor_maps_in_order():
    assert LocalExecutor().map(lambda: lambda x: x * x, [3, 1, 2]) == [9, 1, 4]


@pytest.mark.ray
def test_ray_executor_matches_local(teacher_inputs, tmp_path):
    ray = pytest.importorskip("ray")
    local = run_teacher(_spec(teacher_inputs, tmp_path / "local"), LocalExecutor())
    try:
        executor = make_executor("ray", workers=2)
        assert executor.map(lambda: lambda x: x + 1, [1, 2, 3]) == [2, 3, 4]
        distributed = run_teacher(_spec(teacher_inputs, tmp_path / "ray"), executor)
        # Embedding runs its chunks on the same executors, with the same result.
        from fastgda.features import embed_dataset

        on_ray = embed_dataset(
            teacher_inputs["data_dir"],
            "pixels+minilm",
            tmp_path / "f-ray",
            16,
            executor,
        )
        here = embed_dataset(teacher_inputs["data_dir"], "pixels+minilm", tmp_path / "f", 16)
        # Pixels are exact; the text columns come from MiniLM in other processes and batches (its chain bound).
        from fastgda.encoders import make_encoder

        within = network(make_encoder("minilm").model, float(np.abs(here.values).max()))
        assert_close(on_ray.values, here.values, within)
    finally:
        ray.shutdown()
    # Two processes and thread counts: the teacher's scores within their bound, ties free to swap.
    from fastgda.diffusion import TextToImageModel

    model = TextToImageModel.from_pretrained(teacher_inputs["model_dir"])
    within = teacher_scores(model, largest_loss(tmp_path / "local"), np.abs(local.scores).max())
    assert_same_ranking(local.ids, local.scores, distributed.ids, distributed.scores, within)


@pytest.mark.ray
def test_ray_places_one_worker_per_gpu():
    """On a cluster that declares GPUs, each actor gets one GPU of its own (Ray sets CUDA_VISIBLE_DEVICES), and
    the default worker count is the number of GPUs. This machine has none: the local cluster declares two, which
    Ray schedules exactly as real ones."""
    ray = pytest.importorskip("ray")
    from fastgda.executors import RayExecutor

    def _gpu_of_worker():  # nested, so Ray ships it by value (a worker cannot import this test module)
        import os

        import ray

        ids = tuple(str(i) for i in ray.get_gpu_ids())
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        return lambda item: (ids, visible)

    try:
        executor = RayExecutor(num_gpus=2)
        assert (executor.workers, executor.gpus_per_worker) == (2, 1)
        seen = executor.map(_gpu_of_worker, list(range(6)))
        gpus = {ids for ids, _ in seen}
        assert gpus == {("0",), ("1",)}  # two actors, one GPU each, never shared
        assert all(visible == ids[0] for ids, visible in seen)
        # --device cpu: the same cluster's workers take no GPU.
        cpu = make_executor("ray", workers=2, device="cpu")
        assert cpu.gpus_per_worker == 0
        assert {ids for ids, _ in cpu.map(_gpu_of_worker, [0, 1])} == {()}
    finally:
        ray.shutdown()


@pytest.mark.ray
def test_ray_refuses_gpu_workers_on_a_cluster_without_gpus():
    ray = pytest.importorskip("ray")
    from fastgda.errors import FastGDAError
    from fastgda.executors import RayExecutor

    try:
        with pytest.raises(FastGDAError, match="cluster has 0"):
            RayExecutor(num_gpus=0, gpus_per_worker=1)
        # auto on a cluster without GPUs: CPU workers, two by default.
        auto = make_executor("ray", device="auto")
        assert (auto.workers, auto.gpus_per_worker) == (2, 0)
    finally:
        ray.shutdown()
