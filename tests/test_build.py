"""``fastgda build`` end to end on a tiny world with a tiny model: every step, resumption, budgets, tar shards."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

import fastgda as fg
from fastgda.cli import main

pytestmark = pytest.mark.slow

SMALL = ["--num-train-queries", "6", "--num-val-queries", "3", "--num-test-queries", "3", "--num-candidates", "12",
         "--num-pairs", "16", "--timesteps", "500", "--fisher-samples", "32", "--sample-steps", "2",
         "--ranker-members", "1", "--ranker-epochs", "3", "--spec", "pixels+minilm"]  # fmt: skip


def test_a_build_runs_every_step_and_resumes_what_was_interrupted(teacher_inputs, tmp_path, capsys):
    out = tmp_path / "build"
    argv = ["build", "--data", str(teacher_inputs["data_dir"]), "--out", str(out)]
    argv += ["--model", str(teacher_inputs["model_dir"]), *SMALL, "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["queries"] == {"train": 6, "val": 3, "test": 3}
    steps = json.loads((out / "build.json").read_text())["steps"]
    assert len(steps) == 11 and all(s["status"] == "done" for s in steps.values())
    prompts = json.loads((out / "prompts.json").read_text())["splits"]
    sources = [{p["source_id"] for p in prompts[s]} for s in ("train", "val", "test")]
    assert not (sources[0] & sources[1] or sources[0] & sources[2] or sources[1] & sources[2])
    assert fg.GroundTruth.load(out / "teacher-test" / "ground_truth").ids.shape == (3, 60)  # all N
    assert fg.GroundTruth.load(out / "teacher-train" / "ground_truth").ids.shape == (6, 12)  # pools
    attributor = fg.Attributor.load(out / "attributor")
    answer = attributor.attribute(
        str(out / "queries-test" / "images" / "q000000.png"), "a red circle", k=4
    )
    assert answer.ids.shape == (1, 4)
    assert "data:image/png;base64," in (out / "report.html").read_text()

    # Interrupted: a training query's result, the ranker and everything after it are lost; the next run redoes
    # only those, and the other queries keep their rankings.
    before = fg.GroundTruth.load(out / "teacher-train" / "ground_truth")
    (out / "teacher-train" / "results" / "q_000001.npz").unlink()
    for name in ("ranker", "attributor"):
        import shutil

        shutil.rmtree(out / name)
    assert main(argv) == 0
    again = fg.GroundTruth.load(out / "teacher-train" / "ground_truth")
    np.testing.assert_array_equal(again.ids, before.ids)
    assert json.loads(capsys.readouterr().out)["queries"]["train"] == 6

    # Other ranker settings: the ranker is retrained and the attributor rebuilt on it; the teacher is not rerun.
    assert fg.Ranker.load(out / "ranker").shape.residual_part is not None  # the default: auto
    results = sorted((out / "teacher-train" / "results").iterdir())
    stamps = [path.stat().st_mtime_ns for path in results]
    attributor_stamp = (out / "attributor" / "manifest.json").stat().st_mtime_ns
    assert main([*argv, "--ranker-residual", "none"]) == 0
    capsys.readouterr()
    assert fg.Ranker.load(out / "ranker").shape.residual_part is None
    assert (out / "attributor" / "manifest.json").stat().st_mtime_ns != attributor_stamp
    assert [path.stat().st_mtime_ns for path in results] == stamps

    # Other teacher settings would not match the finished rankings: refused, with the way out, and nothing redone.
    assert main([*argv, "--num-pairs", "8"]) == 2
    error = capsys.readouterr().err
    assert "'teacher' (num_pairs: 16 then, 8 now)" in error and "another --out" in error
    assert [path.stat().st_mtime_ns for path in results] == stamps


def test_a_budget_ranks_fewer_queries_and_a_partial_teacher_still_builds_on_test_pools(
    teacher_inputs, tmp_path, capsys
):
    """Also the test candidate protocol: test queries ranked over their top-M pools and evaluated within them."""
    out = tmp_path / "budget"
    argv = ["build", "--data", str(teacher_inputs["data_dir"]), "--out", str(out)]
    argv += [
        "--model",
        str(teacher_inputs["model_dir"]),
        *SMALL,
        "--budget-hours",
        "1e-6",
        "--test-candidates",
        "50",
        "--device",
        "cpu",
        "--json",
    ]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["queries"] == {
        "train": 2,
        "val": 2,
        "test": 2,
    }  # the least each split can work with
    train = fg.GroundTruth.load(out / "teacher-train" / "ground_truth")
    assert train.config["finished"] == 2 and train.config["num_queries"] == 6
    assert fg.GroundTruth.load(out / "teacher-test" / "ground_truth").ids.shape == (2, 50)
    assert summary["test_ranked_over"] == 50 and summary["num_train"] == 60
    assert json.loads((out / "evaluation.json").read_text())["num_train"] == 50
    assert "top-50 neighbours" in (out / "report.html").read_text()


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_webdataset_shards_become_an_image_folder_and_nothing_escapes_it(tmp_path):
    shard = tmp_path / "shards" / "000000.tar"
    shard.parent.mkdir()
    members = {
        "a.png": _png("red"),
        "a.txt": b"a red square",
        "b.png": _png("blue"),
        "b.json": json.dumps({"caption": "a blue square"}).encode(),
        "c.png": _png("green"),  # no caption: skipped
        "../escape.txt": b"a caption that names a path outside the shard",
        "../escape.png": _png("black"),
    }
    with tarfile.open(shard, "w") as archive:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    folder = fg.data.convert_shards(shard.parent, tmp_path / "data")
    assert len(folder) == 3 and [folder.captions(i)[0] for i in range(2)] == [
        "a red square",
        "a blue square",
    ]
    assert np.asarray(folder.load_image(1))[0, 0].tolist() == [0, 0, 255]
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "escape.txt").exists()
    assert all(
        folder.image_path(i).parent == tmp_path / "data" / "images" / "000000"
        for i in range(len(folder))
    )
    with pytest.raises(fg.DatasetError, match="no .tar shards"):
        fg.data.convert_shards(tmp_path / "data", tmp_path / "nothing")


def _shard(path, samples: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as archive:
        for name, payload in samples.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))


def test_shards_convert_one_at_a_time_and_a_crash_keeps_the_finished_ones(tmp_path):
    """Issue 33: each shard is converted and marked on its own (side by side); after a failure a rerun converts
    only the shards not marked, and the rows come in shard order whatever order they finished in."""
    shards = tmp_path / "shards"
    shards.mkdir()
    for n, colour in enumerate(("red", "green", "blue")):
        _shard(
            shards / f"{n:06d}.tar",
            {f"s{n}.png": _png(colour), f"s{n}.txt": f"a {colour} square".encode()},
        )
    (shards / "000001.tar").write_bytes(b"not a tar file")  # the second shard is broken
    with pytest.raises(fg.DatasetError, match="000001.tar is not a readable tar file"):
        fg.data.convert_shards(shards, tmp_path / "data", threads=2)
    partial = tmp_path / "data.partial"
    done = sorted(p.name for p in (partial / "done").glob("*.json"))
    assert "000001.json" not in done and not (tmp_path / "data").exists()
    kept = {
        n: (partial / "images" / n / "00000000.png").stat().st_mtime_ns
        for n in ("000000", "000002")
    }
    _shard(shards / "000001.tar", {"s1.png": _png("green"), "s1.txt": b"a green square"})
    folder = fg.data.convert_shards(shards, tmp_path / "data", threads=2)
    assert [folder.captions(i)[0] for i in range(3)] == [
        "a red square",
        "a green square",
        "a blue square",
    ]
    assert [folder.records[i]["id"] for i in range(3)] == ["000000/s0", "000001/s1", "000002/s2"]
    assert not partial.exists() and not (tmp_path / "data" / "done").exists()
    again = {
        n: (tmp_path / "data" / "images" / n / "00000000.png").stat().st_mtime_ns for n in kept
    }
    assert again == kept  # the shards finished before the failure were not converted again


def test_a_quick_build_takes_a_folder_of_mixed_sizes_and_modes(small_world, tmp_path, capsys):
    """Real data: the preset for a first look, on images of ten sizes, aspect ratios, modes and formats (EXIF
    rotation included), with a model trained on them: every step reads them, and the report shows them."""
    from _mixed_images import write_mixed_folder

    data = write_mixed_folder(tmp_path / "mixed", small_world)
    out = tmp_path / "build"
    argv = ["build", "--preset", "quick", "--data", str(data), "--out", str(out), *SMALL]
    argv += ["--train-model", "tiny16", "--model-steps", "8", "--spec", "effnet+minilm"]
    argv += ["--candidate-feature", "effnet+minilm", "--json"]  # pools from the images too
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["queries"] == {"train": 6, "val": 3, "test": 3}
    steps = json.loads((out / "build.json").read_text())["steps"]
    assert all(s["status"] == "done" for s in steps.values()) and len(steps) == 11
    assert fg.GroundTruth.load(out / "teacher-test" / "ground_truth").ids.shape[1] == len(
        small_world
    )
    # The report inlines the data's own images, whatever their size.
    assert (out / "report.html").read_text().count("data:image/png;base64,") > 10
    # The attributor takes a query in another mode and size, and its thumbnails are the stored images.
    attributor = fg.Attributor.load(out / "attributor")
    answer = attributor.attribute(
        str(data / "images" / "0001.png"), small_world.captions(1)[0], k=3
    )
    thumbnails = attributor.thumbnails(answer[0])
    assert answer.ids.shape == (1, 3) and all(t.ndim == 3 and t.shape[2] == 3 for t in thumbnails)
