"""Importing the official release's data: restricted unpickling, features and rankings."""

import json
import os
import pickle

import numpy as np
import pytest

from _tolerance import F32, F64, assert_close, rounded, sums
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
    imported = import_rankings(tmp_path / "s.pkl").scores[0]
    assert_close(imported, np.linspace(1, 0, 20), rounded(F32))  # stored as float32: one rounding
    np.save(tmp_path / "f.npy", rng.normal(size=(50, 8)).astype(np.float32))
    assert import_features(tmp_path / "f.npy").values.shape == (50, 8)
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(FastGDAError, match="object arrays"):
        import_features(tmp_path / "o.npy")


def test_the_official_release_layout_imports_and_trains_a_ranker(tmp_path, rng, capsys):
    """A small synthetic release in the release's exact layout: features per spec, rankings as
    ``{'random': {'rank': (Q, K)}}`` pickles; imported, then `ranker train` and `eval map` at given L."""
    from fastgda.cli import main
    from fastgda.features import Features
    from fastgda.ground_truth import GroundTruth

    n, d = 300, 16
    feats = tmp_path / "release" / "data" / "coco" / "feats" / "dino_clip"
    feats.mkdir(parents=True)
    items = rng.normal(size=(n, d)).astype(np.float32)
    train_q, test_q = (
        rng.normal(size=(20, d)).astype(np.float32),
        rng.normal(size=(5, d)).astype(np.float32),
    )
    np.save(feats / "data_feats.npy", items)
    np.save(feats / "train_query_feats.npy", train_q)
    np.save(feats / "test_query_feats.npy", test_q)
    # The "teacher" ranks by the features' own cosine.
    unit = items / np.linalg.norm(items, axis=1, keepdims=True)
    train_rank = np.argsort(-(train_q @ unit.T), axis=1)[:, :50]
    test_rank = np.argsort(-(test_q @ unit.T), axis=1)
    for split, rank in (("train", train_rank), ("test", test_rank)):
        path = tmp_path / "release" / "data" / "coco" / f"influence_{split}.pkl"
        path.write_bytes(pickle.dumps({"random": {"rank": rank}}))

    out = tmp_path / "imported"
    assert main(["import-release", str(tmp_path / "release"), "--out", str(out), "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert written["features"]["dino_clip"] == {
        "items": [n, d],
        "q-train": [20, d],
        "q-test": [5, d],
    }
    assert written["ground_truth"] == {"train": [20, 50], "test": [5, n]}
    truth = GroundTruth.load(out / "ground_truth" / "test")
    np.testing.assert_array_equal(truth.ids, test_rank)
    np.testing.assert_array_equal(Features.load(out / "features/dino_clip/items").values, items)

    base = ["--items", str(out / "features/dino_clip/items")]
    args = ["ranker", "train", *base, "--queries", str(out / "features/dino_clip/q-train")]
    args += ["--ground-truth", str(out / "ground_truth/train"), "--out", str(tmp_path / "ranker")]
    assert (
        main([*args, "--hidden", "32", "--out-dim", "16", "--epochs", "2", "--batch-queries", "4"])
        == 0
    )
    capsys.readouterr()
    args = ["eval", "map", *base, "--queries", str(out / "features/dino_clip/q-test")]
    args += ["--ground-truth", str(out / "ground_truth/test"), "--ranker", str(tmp_path / "ranker")]
    assert main([*args, "--l", "5", "10", "40", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)["map"]
    assert set(table["ranker (ranker)"]) == {"5", "10", "40"}
    # The untuned cosine of these features is the teacher itself: mAP 1.
    # Every query's AP is 1 (its top 40 are the teacher's, untied at the boundary within rounding); their mean
    # over 5 queries in float64.
    assert_close(table["untuned imported (dino_clip)"]["40"]["mean"], 1.0, sums(5, 1.0, F64))


def test_release_pickles_with_other_selections_name_them(tmp_path, rng):
    path = tmp_path / "r.pkl"
    ranks = np.argsort(rng.random((3, 10)), axis=1)
    path.write_bytes(pickle.dumps({"nn": {"rank": ranks}, "clip": {"rank": ranks}}))
    with pytest.raises(FastGDAError, match=r"selections \['clip', 'nn'\]"):
        import_rankings(path)
    np.testing.assert_array_equal(import_rankings(path, selection="nn").ids, ranks)
