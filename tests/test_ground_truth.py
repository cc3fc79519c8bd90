"""GroundTruth artifacts: full and compact (float16) storage keep the ranking and the scores' precision."""

import numpy as np

from _tolerance import F16, F32, Tolerance, assert_close
from fastgda.ground_truth import GroundTruth


def test_compact_storage_keeps_the_ranking_and_three_digits_of_every_score(tmp_path, rng):
    scores = -np.sort(-rng.normal(size=(4, 400)), axis=1).astype(np.float32)
    scores[1] *= 1e-7  # taus this small underflow a plain float16
    scores[2] = 0.0
    ids = np.stack([rng.permutation(400) for _ in range(4)]).astype(np.int32)
    truth = GroundTruth(np.arange(4), ids, scores, {"note": "x"})
    truth.save(tmp_path / "full")
    truth.save(tmp_path / "compact", compact=True)
    full, compact = GroundTruth.load(tmp_path / "full"), GroundTruth.load(tmp_path / "compact")
    np.testing.assert_array_equal(full.scores, scores)
    np.testing.assert_array_equal(compact.ids, ids)
    assert compact.config == {"note": "x"} and compact.scores.dtype == np.float32
    for row, original in zip(compact.scores, scores, strict=True):
        # Divided by the row's largest magnitude (a float32 rounding), stored as float16 (u16 of at most 1, or
        # float16's subnormal spacing 2^-24 below 2^-14), multiplied back (another float32 rounding).
        scale = max(float(np.abs(original).max()), 1e-30)
        within = Tolerance(
            (F16 + 2 * F32) * scale, why="float16 of the scaled row, two float32 roundings"
        )
        assert_close(row, original, within)
    size = lambda d: (tmp_path / d / "ground_truth.safetensors").stat().st_size  # noqa: E731
    assert size("compact") < 0.8 * size("full")
