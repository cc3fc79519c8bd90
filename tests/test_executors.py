"""The Ray executor on a real local cluster gives the same teacher rankings and features as the local one."""

import numpy as np
import pytest

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


def test_local_executor_maps_in_order():
    assert LocalExecutor(progress=False).map(lambda: lambda x: x * x, [3, 1, 2]) == [9, 1, 4]


@pytest.mark.ray
def test_ray_executor_matches_local(teacher_inputs, tmp_path):
    ray = pytest.importorskip("ray")
    local = run_teacher(
        _spec(teacher_inputs, tmp_path / "local"), LocalExecutor(progress=False), progress=False
    )
    try:
        executor = make_executor("ray", workers=2, progress=False)
        assert executor.map(lambda: lambda x: x + 1, [1, 2, 3]) == [2, 3, 4]
        distributed = run_teacher(_spec(teacher_inputs, tmp_path / "ray"), executor, progress=False)
        # Embedding runs its chunks on the same executors, with the same result.
        from fastgda.features import embed_dataset

        on_ray = embed_dataset(
            teacher_inputs["data_dir"],
            "pixels+minilm",
            tmp_path / "f-ray",
            16,
            executor,
            progress=False,
        )
        here = embed_dataset(
            teacher_inputs["data_dir"], "pixels+minilm", tmp_path / "f", 16, progress=False
        )
        np.testing.assert_allclose(on_ray.values, here.values, rtol=1e-5, atol=1e-6)
    finally:
        ray.shutdown()
    np.testing.assert_array_equal(local.ids, distributed.ids)
    np.testing.assert_allclose(local.scores, distributed.scores, rtol=1e-5, atol=1e-8)
