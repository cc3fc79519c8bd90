"""The fast path end to end through the CLI on a tiny real setup: embed, train, build, attribute, evaluate."""

import json

import numpy as np
import pytest

from _tolerance import F32, F64, Tolerance, assert_close, network, rounded, sums
from fastgda import FastGDAError
from fastgda.attributor import Attributor, fit_share_temperature, softmax_shares
from fastgda.cli import main
from fastgda.data import open_dataset
from fastgda.features import Features
from fastgda.ranker import Ranker


def test_train_build_attribute_and_evaluate(fast_path, tmp_path, capsys):
    root, inputs = fast_path
    code = main(
        [
            "ranker", "train", "--items", str(root / "items"), "--queries", str(root / "q"),
            "--ground-truth", str(root / "train/ground_truth"), "--val-queries", str(root / "q"),
            "--val-ground-truth", str(root / "train/ground_truth"), "--out", str(tmp_path / "ranker"),
            "--epochs", "3", "--hidden", "32", "--out-dim", "16", "--batch-queries", "2", "--json",
        ]
    )  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out)["epochs"] == 3
    code = main(
        [
            "attributor", "build", "--ranker", str(tmp_path / "ranker"), "--items", str(root / "items"),
            "--data", str(inputs["data_dir"]), "--out", str(tmp_path / "attributor"),
            "--val-queries", str(root / "q"), "--val-ground-truth", str(root / "train/ground_truth"),
        ]
    )  # fmt: skip
    assert code == 0
    capsys.readouterr()
    query_image = inputs["queries_dir"] / "images/q000000.png"
    html = tmp_path / "answer.html"
    args = ["attribute", "--attributor", str(tmp_path / "attributor"), "--image", str(query_image)]
    args += ["--prompt", "a large cyan circle", "-k", "5", "--json", "--html", str(html)]
    assert main(args) == 0
    answer = json.loads(capsys.readouterr().out)
    assert len(answer["results"]) == 5
    scores = [r["score"] for r in answer["results"]]
    assert scores == sorted(scores, reverse=True)
    # Five shares, each rounded to float32 once, summed in float64.
    within = rounded(F32, 1.0) + sums(5, 1.0, F64)
    assert_close(sum(r["share"] for r in answer["results"]), 1.0, within)
    assert all(r["image"].endswith(".png") and r["captions"] for r in answer["results"])
    page = html.read_text()
    assert page.count("<figure>") == 6 and "data:image/png;base64," in page
    # The library gives the same answer as the CLI.
    library = Attributor.load(tmp_path / "attributor").attribute(
        str(query_image), "a large cyan circle", 5
    )
    assert library.ids.shape == (1, 5)
    assert library.ids[0].tolist() == [r["id"] for r in answer["results"]]

    out = tmp_path / "map.json"
    args = ["eval", "map", "--items", str(root / "items"), "--queries", str(root / "q")]
    args += [
        "--ground-truth",
        str(root / "test/ground_truth"),
        "--ranker",
        str(tmp_path / "ranker"),
        "--out",
        str(out),
    ]
    assert main(args) == 0
    table = json.loads(out.read_text())["map"]
    assert {"ranker (ranker)", "untuned image (pixels)", "untuned text (minilm)", "random"} <= set(
        table
    )
    assert "mAP(L=" in capsys.readouterr().out


def test_an_ensemble_ranker_serves_through_the_same_attributor(fast_path, tmp_path, capsys):
    root, inputs = fast_path
    code = main(
        [
            "ranker", "train", "--items", str(root / "items"), "--queries", str(root / "q"),
            "--ground-truth", str(root / "train/ground_truth"), "--val-queries", str(root / "q"),
            "--val-ground-truth", str(root / "train/ground_truth"), "--out", str(tmp_path / "ensemble"),
            "--epochs", "2", "--hidden", "32", "--out-dim", "16", "--batch-queries", "2", "--members", "2",
            "--json",
        ]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["epochs"] == 4 and summary["members"] == 2
    features = Features.load(root / "items")
    attributor = Attributor.build(
        Ranker.load(tmp_path / "ensemble"), open_dataset(inputs["data_dir"]), features
    )
    # The index holds the members' embeddings side by side; its inner product is their mean cosine.
    ranker = attributor.ranker
    assert attributor.index.dim == 32 == ranker.embedding_dim
    query_image = inputs["queries_dir"] / "images/q000000.png"
    answer = attributor.attribute(str(query_image), "a large cyan circle", 5)[0]
    query = ranker.embed_numpy(
        attributor.query_features([str(query_image)], ["a large cyan circle"])
    )
    expected = query @ ranker.embed_numpy(features.values).T
    assert [a.id for a in answer] == features.ids[np.argsort(-expected[0])[:5]].tolist()
    # Cosines of unit vectors (Σ|q_i x_i| <= 1): the product over E terms, each side renormalised (a norm over E
    # terms) by the index, and the items embedded by the ranker in other batches than here (its chain bound).
    width = ranker.embedding_dim
    within = sums(width, 1.0) + sums(width, 1.0) * 2 + network(ranker, 1.0)
    assert_close([a.score for a in answer], np.sort(expected[0])[::-1][:5], within)


def test_bad_attribution_inputs_fail_with_one_line(served, fast_path, tmp_path, capsys):
    root, _ = fast_path
    text = tmp_path / "not-an-image.png"
    text.write_text("hello")
    args = ["attribute", "--attributor", str(served["attributor"]), "--image", str(text)]
    assert main([*args, "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "cannot read query image" in err and err.count("\n") == 1
    args = ["eval", "map", "--items", str(root / "items"), "--queries", str(root / "q")]
    assert main([*args, "--ground-truth", str(root / "train/ground_truth")]) == 2
    err = capsys.readouterr().err
    assert "full rankings" in err and err.count("\n") == 1


def test_share_temperature_matches_the_teacher_and_shares_sum_to_one(rng):
    teacher = np.sort(rng.random((20, 30)), axis=1)[:, ::-1] ** 8
    predicted = (
        np.log(teacher / teacher.sum(axis=1, keepdims=True)) * 0.1
    )  # softmax at T = 0.1 is exact
    # Not rounding: the fit searches a grid of ratio 10^(3.5/59) = 1.146, so the nearest point lies within 7%.
    grid = Tolerance(0, 10 ** (3.5 / 59 / 2) - 1, why="half a grid step")
    assert_close(fit_share_temperature(predicted, teacher), 0.1, grid)
    shares = softmax_shares(np.array([[0.5, 0.2, -np.inf]]), 0.1)
    # float64 shares e_i / Σe: each one rounding of a two-term sum.
    assert shares[0, 2] == 0
    assert_close(shares.sum(), 1.0, sums(2, 1.0, F64) + rounded(F64, 1.0) * 2)


def test_takedowns_persist_and_new_items_are_found_without_retraining(fast_path, tmp_path, capsys):
    root, inputs = fast_path
    args = ["ranker", "train", "--items", str(root / "items"), "--queries", str(root / "q")]
    args += [
        "--ground-truth",
        str(root / "train/ground_truth"),
        "--out",
        str(tmp_path / "r"),
        "--epochs",
        "1",
    ]
    assert main([*args, "--hidden", "16", "--out-dim", "8"]) == 0
    args = ["attributor", "build", "--ranker", str(tmp_path / "r"), "--items", str(root / "items")]
    assert main([*args, "--data", str(inputs["data_dir"]), "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    query = inputs["queries_dir"] / "images/q000001.png"
    before = Attributor.load(tmp_path / "a").attribute(
        str(query), "a small red square on the left", 3
    )[0]
    gone = before[0].id
    assert (
        main(
            [
                "attributor",
                "remove",
                "--attributor",
                str(tmp_path / "a"),
                "--ids",
                str(gone),
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["removed"] == 1
    reloaded = Attributor.load(tmp_path / "a")
    after = reloaded.attribute(str(query), "a small red square on the left", 60)[0]
    assert gone not in [a.id for a in after] and len(after) == 59
    with pytest.raises(FastGDAError, match="removed"):
        reloaded.add_items([gone], [np.zeros((8, 8, 3), np.uint8)], [["back again"]])
    new_image = np.asarray(__import__("PIL.Image").Image.open(query).convert("RGB"))
    reloaded.add_items([1000], [new_image], [["a small red square on the left"]])
    reloaded.save()
    top = Attributor.load(tmp_path / "a").attribute(new_image, "a small red square on the left", 1)
    assert top.ids[0, 0] == 1000
    # The same features on both sides: the cosine of a unit vector with itself, its E squares summed in float32,
    # after the ranker's and the index's normalisations (norms over E terms).
    width = Attributor.load(tmp_path / "a").ranker.embedding_dim
    assert_close(top.scores[0, 0], 1.0, sums(width, 1.0) * 3)
