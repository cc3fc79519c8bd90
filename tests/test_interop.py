"""Importing the official release's data: restricted unpickling, features and rankings."""

import os
import pickle

import numpy as np
import pytest

from fastgda import FastGDAError
from fastgda.interop import import_features, import_rankings, restricted_unpickle


class _Exploit:
    """Unpickling this runs a shell command that writes ``marker``: a refused load leaves no file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def test_a_malicious_pickle_is_refused_without_running(tmp_path):
    path, marker = tmp_path / "rankings.pkl", tmp_path / "pwned"
    path.write_bytes(pickle.dumps({"0": _Exploit(marker)}))
    with pytest.raises(
        FastGDAError, match="refusing to unpickle posix.system|refusing to unpickle os.system"
    ):
        restricted_unpickle(path)
    assert not marker.exists()
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(FastGDAError, match="not a readable"):
        restricted_unpickle(path)


def test_release_rankings_and_features_import_as_artifacts(tmp_path, rng):
    ranks = {q: np.argsort(rng.random(50))[:20] for q in range(3)}
    (tmp_path / "r.pkl").write_bytes(pickle.dumps(ranks, protocol=2))
    truth = import_rankings(tmp_path / "r.pkl")
    assert truth.ids.shape == (3, 20) and truth.query_ids.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(truth.ids[1], ranks[1])
    assert np.all(
        np.diff(truth.scores, axis=1) < 0
    )  # higher = more influential, even without scores
    scored = [{"ids": ranks[q], "scores": np.linspace(1, 0, 20)} for q in range(3)]
    (tmp_path / "s.pkl").write_bytes(pickle.dumps(scored))
    np.testing.assert_allclose(import_rankings(tmp_path / "s.pkl").scores[0], np.linspace(1, 0, 20))
    np.save(tmp_path / "f.npy", rng.normal(size=(50, 8)).astype(np.float32))
    assert import_features(tmp_path / "f.npy").values.shape == (50, 8)
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FastGDAError, match="object arrays"):
        import_features(tmp_path / "o.npy")
