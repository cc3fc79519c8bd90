"""Teacher jobs end to end on a tiny real model: results per query, resume, merge, mismatched inputs."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from _tolerance import (
    Tolerance,
    assert_close,
    assert_same_ranking,
    largest_loss,
    network,
    sums,
    teacher_scores,
)
from fastgda import FastGDAError, IncompatibleArtifactError
from fastgda.cli import main
from fastgda.diffusion import TextToImageModel
from fastgda.ground_truth import GroundTruth
from fastgda.unlearning import ScoringConfig, Teacher, UnlearnConfig
from fastgda.unlearning.jobs import TeacherConfig, TeacherJob, teacher_config_from_json

CONFIG = TeacherConfig(
    unlearn=UnlearnConfig(num_pairs=32, batch_size=32), scoring=ScoringConfig(timesteps=(300, 700))
)


def test_teacher_ranks_every_training_item_for_every_query(teacher_inputs, tmp_path):
    job = TeacherJob.open(out_dir=tmp_path / "run", config=CONFIG, **teacher_inputs)
    job.run()
    ground_truth = job.merge()
    assert ground_truth.ids.shape == (3, 60) and ground_truth.ids.dtype == np.int32
    for ids, scores in zip(ground_truth.ids, ground_truth.scores, strict=True):
        assert sorted(ids.tolist()) == list(range(60))
        assert np.all(np.diff(scores) <= 0) and np.isfinite(scores).all()
    loaded = GroundTruth.load(tmp_path / "run" / "ground_truth")
    np.testing.assert_array_equal(loaded.ids, ground_truth.ids)


def _rerun(teacher_inputs, run_dir, truth):
    """Teacher scores of one run against another's: their bound for this model and the run's largest loss."""
    model = TextToImageModel.from_pretrained(teacher_inputs["model_dir"])
    return teacher_scores(model, largest_loss(run_dir), float(np.abs(truth.scores).max()))


def test_interrupted_run_finishes_only_what_is_missing_with_identical_results(
    teacher_inputs, tmp_path
):
    whole = TeacherJob.open(out_dir=tmp_path / "whole", config=CONFIG, **teacher_inputs)
    whole.run()
    first = TeacherJob.open(out_dir=tmp_path / "resumed", config=CONFIG, **teacher_inputs)
    first.run([1])  # the run "dies" after one query
    (tmp_path / "resumed" / "results" / ".q_000002.npz.123.tmp").write_bytes(
        b"half a file"
    )  # killed mid-write
    again = TeacherJob.open(out_dir=tmp_path / "resumed", config=CONFIG, **teacher_inputs)
    assert again.pending() == [0, 2]
    again.run()
    a, b = whole.merge(), again.merge()
    # Two runs: the same kernels, not the same bits; ties may swap.
    assert_same_ranking(
        a.ids, a.scores, b.ids, b.scores, _rerun(teacher_inputs, tmp_path / "whole", a)
    )


def test_candidate_pools_rank_only_the_nearest_items(teacher_inputs, tmp_path):
    config = TeacherConfig(unlearn=CONFIG.unlearn, scoring=CONFIG.scoring, num_candidates=10)
    job = TeacherJob.open(out_dir=tmp_path / "run", config=config, **teacher_inputs)
    job.run([0])
    candidates = job.teacher.candidates(job.queries, 0)
    assert set(candidates) == set(np.load(tmp_path / "run/results/q_000000.npz")["ids"].tolist())
    assert len(candidates) == 10


def test_a_candidate_share_ranks_a_fixed_random_part_of_each_pool(teacher_inputs, tmp_path):
    """The paper's SD protocol: training queries ranked on a random 20% of their neighbours, one subset per query."""
    pools = Teacher.from_folders(config=replace(CONFIG, num_candidates=20),
                                 device="cpu", **_inputs(teacher_inputs))  # fmt: skip
    config = replace(CONFIG, num_candidates=20, candidate_share=0.25)
    job = TeacherJob.open(out_dir=tmp_path / "run", config=config, **teacher_inputs)
    full = {q: pools.candidates(job.queries, q) for q in range(3)}
    for q in range(3):
        part = job.teacher.candidates(job.queries, q)
        assert len(part) == 5 and set(part) <= set(full[q])
        assert list(part) == [i for i in full[q] if i in set(part)]  # neighbour order kept
        np.testing.assert_array_equal(
            part, job.teacher.candidates(job.queries, q)
        )  # fixed per query
    assert len({tuple(job.teacher.candidates(job.queries, q)) for q in range(3)}) == 3
    job.run([0])
    assert len(np.load(tmp_path / "run/results/q_000000.npz")["ids"]) == 5


def test_a_run_written_before_a_setting_existed_still_resumes(teacher_inputs, tmp_path):
    job = TeacherJob.open(out_dir=tmp_path / "run", config=CONFIG, **teacher_inputs)
    job.run([0])
    path = tmp_path / "run" / "run.json"
    saved = json.loads(path.read_text())
    del saved["config"]["candidate_share"]  # as a run of an earlier version wrote it
    saved["config"]["scoring"]["batch_size"] = 256  # the batch size it recorded then
    path.write_text(json.dumps(saved))
    again = TeacherJob.open(out_dir=tmp_path / "run", config=CONFIG, **teacher_inputs)
    again.run([1])
    assert again.pending() == [2]


def _inputs(teacher_inputs) -> dict:
    return {k: teacher_inputs[k] for k in ("model_dir", "data_dir", "fisher_dir")}


def test_mismatched_inputs_are_refused(teacher_inputs, test_preset, tmp_path):
    other = TextToImageModel.from_preset(test_preset, seed=1)
    other.save(tmp_path / "other")
    with pytest.raises(IncompatibleArtifactError, match="another model"):
        TeacherJob.open(
            **{**teacher_inputs, "model_dir": tmp_path / "other"},
            out_dir=tmp_path / "run",
            config=CONFIG,
        )
    job = TeacherJob.open(out_dir=tmp_path / "run2", config=CONFIG, **teacher_inputs)
    job.prepare()
    changed = TeacherConfig(unlearn=UnlearnConfig(num_pairs=16), scoring=CONFIG.scoring)
    with pytest.raises(IncompatibleArtifactError, match="config"):
        TeacherJob.open(out_dir=tmp_path / "run2", config=changed, **teacher_inputs).prepare()
    with pytest.raises(FastGDAError, match="lacks results"):
        GroundTruth.merge(tmp_path / "run2" / "results", [0, 1, 2])


def test_teacher_cli_runs_part_of_a_query_set_and_merges_what_finished(
    teacher_inputs, tmp_path, capsys
):
    t = teacher_inputs
    run = (
        f"teacher run --model {t['model_dir']} --data {t['data_dir']} --queries {t['queries_dir']} "
        f"--fisher {t['fisher_dir']} --out {tmp_path / 'run'} --num-pairs 16 --timesteps 500 "
        "--num-candidates 8 --json"
    ).split()
    assert main([*run, "--query-ids", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["shape"] == [1, 8] and result["num_queries"] == 3
    assert GroundTruth.load(tmp_path / "run" / "ground_truth").query_ids.tolist() == [2]
    assert main(["teacher", "merge", "--run", str(tmp_path / "run")]) == 2
    assert "lacks results" in capsys.readouterr().err
    assert main(["teacher", "merge", "--run", str(tmp_path / "run"), "--partial"]) == 0
    assert "merged 1 of 3 queries" in capsys.readouterr().out
    assert main([*run, "--limit", "1"]) == 0  # the first pending query: 0
    assert json.loads(capsys.readouterr().out)["shape"] == [2, 8]
    assert main(run) == 0
    assert json.loads(capsys.readouterr().out)["shape"] == [3, 8]
    assert main(["teacher", "merge", "--run", str(tmp_path / "run")]) == 0
    assert main([*run, "--query-ids", "5"]) == 2
    assert "query ids [5] are not in the query set" in capsys.readouterr().err


@pytest.mark.slow
def test_teacher_killed_with_sigkill_resumes_to_the_same_ground_truth(teacher_inputs, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    t = teacher_inputs
    argv = [sys.executable, "-m", "fastgda.cli", "teacher", "run", "--model", str(t["model_dir"]), "--data",
            str(t["data_dir"]), "--queries", str(t["queries_dir"]), "--fisher", str(t["fisher_dir"]),
            "--pairs", "256", "--timesteps", "100", "300", "500", "700", "900"]  # fmt: skip
    killed = tmp_path / "killed"
    process = subprocess.Popen([*argv, "--out", str(killed)], stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((killed / "results").glob("q_*.npz")) and time.time() < deadline:
        assert process.poll() is None, (
            "the teacher run exited early; run its command by hand to see why"
        )
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished_before = len(list((killed / "results").glob("q_*.npz")))
    assert 1 <= finished_before < 3, "the run should be killed part-way"
    subprocess.run([*argv, "--out", str(killed)], check=True, stderr=subprocess.DEVNULL)
    subprocess.run([*argv, "--out", str(tmp_path / "whole")], check=True, stderr=subprocess.DEVNULL)
    a = GroundTruth.load(killed / "ground_truth")
    b = GroundTruth.load(tmp_path / "whole" / "ground_truth")
    assert_same_ranking(a.ids, a.scores, b.ids, b.scores, _rerun(teacher_inputs, killed, a))


def test_candidate_pools_can_come_from_an_image_encoder(teacher_inputs, tmp_path):
    config = TeacherConfig(
        unlearn=CONFIG.unlearn,
        scoring=CONFIG.scoring,
        num_candidates=10,
        candidate_feature="effnet",
    )
    job = TeacherJob.open(out_dir=tmp_path / "run", config=config, **teacher_inputs)
    pixel_job = TeacherJob.open(
        out_dir=tmp_path / "pixels",
        config=TeacherConfig(unlearn=CONFIG.unlearn, scoring=CONFIG.scoring, num_candidates=10),
        **teacher_inputs,
    )
    pools = [set(job.teacher.candidates(job.queries, q).tolist()) for q in range(3)]
    assert all(len(p) == 10 for p in pools)
    pixel_pools = [set(pixel_job.teacher.candidates(job.queries, q).tolist()) for q in range(3)]
    assert any(p != pixel for p, pixel in zip(pools, pixel_pools, strict=True))


def test_multi_part_candidate_space_averages_the_parts_cosines(teacher_inputs, tmp_path):
    def job(feature: str) -> TeacherJob:
        config = TeacherConfig(
            unlearn=CONFIG.unlearn,
            scoring=CONFIG.scoring,
            num_candidates=10,
            candidate_feature=feature,
        )
        out = tmp_path / feature.replace("+", "_")
        return TeacherJob.open(out_dir=out, config=config, **teacher_inputs)

    def cosine(j: TeacherJob) -> torch.Tensor:
        space = j.teacher.candidate_space(j.queries)
        return torch.from_numpy(space.queries @ space.items().T)

    both, image, text = job("effnet+minilm"), job("effnet"), job("minilm")
    # Cosines of unit rows (Σ|terms| <= 1) over 1,664 columns against the parts' own, each part's rows
    # normalised (γ of its width) and its features from its encoder (chain bound ε: 2ε per side of a cosine).
    from fastgda.encoders import make_encoder

    drift = sum(network(make_encoder(n).model, 1.0).atol for n in ("effnet", "minilm"))
    within = sums(1280 + 384, 1.0) * 3 + Tolerance(4 * drift, why="each side moved by its encoders")
    assert_close(cosine(both), (cosine(image) + cosine(text)) / 2, within)
    assert (
        torch.topk(cosine(both)[0], 10).indices.tolist()
        == both.teacher.candidates(both.queries, 0).tolist()
    )


def test_larger_pools_copy_the_scores_of_an_earlier_run_and_score_only_new_candidates(
    teacher_inputs, tmp_path, monkeypatch
):
    def config(m: int) -> TeacherConfig:
        return TeacherConfig(
            unlearn=CONFIG.unlearn,
            scoring=CONFIG.scoring,
            num_candidates=m,
            candidate_feature="minilm",
        )

    small = TeacherJob.open(out_dir=tmp_path / "m10", config=config(10), **teacher_inputs)
    small.run([0, 1])  # query 2 has no earlier result: it is scored whole
    fresh = TeacherJob.open(out_dir=tmp_path / "fresh", config=config(25), **teacher_inputs)
    fresh.run()
    reused = TeacherJob.open(
        out_dir=tmp_path / "reused",
        config=config(25),
        reuse_runs=[tmp_path / "m10"],
        **teacher_inputs,
    )
    scored = []
    original = Teacher.scores
    monkeypatch.setattr(
        Teacher,
        "scores",
        lambda self, queries, q, ids: scored.append(len(ids)) or original(self, queries, q, ids),
    )
    reused.run()
    assert scored == [15, 15, 25]
    a, b = fresh.merge(), reused.merge()
    assert_same_ranking(
        a.ids, a.scores, b.ids, b.scores, _rerun(teacher_inputs, tmp_path / "fresh", a)
    )

    other = TeacherConfig(
        unlearn=UnlearnConfig(num_pairs=16, batch_size=32),
        scoring=CONFIG.scoring,
        num_candidates=25,
        candidate_feature="minilm",
    )
    with pytest.raises(IncompatibleArtifactError, match="only the candidate pools may differ"):
        TeacherJob.open(
            out_dir=tmp_path / "other",
            config=other,
            reuse_runs=[tmp_path / "m10"],
            **teacher_inputs,
        ).prepare()
    with pytest.raises(IncompatibleArtifactError, match="not a teacher run"):
        TeacherJob.open(
            out_dir=tmp_path / "other2",
            config=config(25),
            reuse_runs=[tmp_path],
            **teacher_inputs,
        ).prepare()


def test_teacher_config_round_trips_through_run_json(teacher_inputs, tmp_path):
    config = TeacherConfig(
        unlearn=CONFIG.unlearn, scoring=CONFIG.scoring, num_candidates=7, candidate_feature="effnet"
    )
    TeacherJob.open(out_dir=tmp_path / "run", config=config, **teacher_inputs).prepare()
    saved = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert teacher_config_from_json(saved) == config


@pytest.mark.slow
def test_reference_runs_sample_rank_and_pack_every_split(teacher_inputs, small_world, tmp_path):
    """What `--profile full` and scripts/build_ground_truth.py run: sample the splits, rank them, pack; resumable."""
    from fastgda.app.reference import (
        compute_reference_runs,
        pack_reference,
        reference_ground_truth,
        reference_queries,
    )
    from fastgda.diffusion.queries import SamplerConfig

    def config(candidates):
        return TeacherConfig(
            unlearn=UnlearnConfig(num_pairs=8, batch_size=8),
            scoring=ScoringConfig(timesteps=(100, 500)),
            num_candidates=candidates,
        )

    configs = {"train": config(16), "val": config(16), "test": config(None)}
    sizes = {"train": 3, "val": 2, "test": 2}
    args = (small_world.root, teacher_inputs["model_dir"], teacher_inputs["fisher_dir"], tmp_path)
    timings = compute_reference_runs(*args, configs, SamplerConfig(num_steps=2), sizes=sizes)
    assert {s: t["queries_computed"] for s, t in timings.items()} == sizes
    again = compute_reference_runs(*args, configs, SamplerConfig(num_steps=2), sizes=sizes)
    assert all(t["queries_computed"] == 0 for t in again.values())  # finished queries are kept

    out = tmp_path / "reference"
    pack_reference(
        {s: tmp_path / f"queries-{s}" for s in sizes},
        {s: tmp_path / f"run-{s}" for s in sizes},
        teacher_inputs["fisher_dir"],
        out,
    )
    assert reference_ground_truth("train", out).ids.shape == (3, 16)
    assert reference_ground_truth("test", out).ids.shape == (2, len(small_world))  # test: all N
    assert len(reference_queries("val", out)) == 2


def test_a_pooled_teacher_computes_only_its_candidates_before_losses_and_scores_as_the_full_pass(
    teacher_inputs, tmp_path
):
    """Issue 33: the before losses of the union of the pools, not of all N; kept by id in chunks, so a resumed
    or second job over the same cache computes none again; and the scores are the full pass's, up to rounding."""
    from fastgda.unlearning import BeforeLosses

    config = replace(CONFIG, num_candidates=12)
    pooled = TeacherJob.open(out_dir=tmp_path / "pooled", config=config, **teacher_inputs)
    pooled.run()
    store = pooled.teacher.before_losses
    union = np.unique(
        np.concatenate([pooled.teacher.candidates(pooled.queries, q) for q in range(3)])
    )
    assert len(store) == len(union) < 60 and store.held(union).all()
    # Another job over the same cache (a resumed run, or a worker): nothing to compute.
    again = TeacherJob.open(out_dir=tmp_path / "again", config=config, cache_dir=tmp_path / "pooled" /
                            "before_losses", **teacher_inputs)  # fmt: skip
    assert again.ensure_before_losses([0, 1, 2]) == 0
    # Today's full pass: dense before losses of all 60 items (format 1), then the same pools scored from them.
    t = pooled.teacher
    key = json.loads((tmp_path / "pooled" / "before_losses" / "manifest.json").read_text())["key"]
    BeforeLosses.compute(t.model, t.data, config.scoring, key).save(tmp_path / "dense")
    full = TeacherJob.open(out_dir=tmp_path / "full", config=config, cache_dir=tmp_path / "dense",
                           **teacher_inputs)  # fmt: skip
    full.run()
    assert len(full.teacher.before_losses) == 60
    a, b = pooled.merge(), full.merge()
    assert_same_ranking(
        a.ids, a.scores, b.ids, b.scores, _rerun(teacher_inputs, tmp_path / "pooled", a)
    )


def test_candidate_features_are_embedded_once_per_data_and_spec_and_loaded_after(
    teacher_inputs, tmp_path
):
    """Issue 33: every teacher job (each split, the budget's probe, each Ray actor) used to embed all N for its
    pools; now the first embeds them into fastgda's cache and the others load them, with the same pools."""
    from fastgda._artifacts import cache_dir

    config = replace(CONFIG, num_candidates=10, candidate_feature="pixels+minilm")
    first = TeacherJob.open(out_dir=tmp_path / "a", config=config, **teacher_inputs)
    pools = [first.teacher.candidates(first.queries, q) for q in range(3)]
    content_hash = first.teacher.dataset.content_hash

    def ours(folder) -> bool:  # other tests of this session cache other specs and data here too
        if not (folder / "manifest.json").is_file():
            return False
        manifest = json.loads((folder / "manifest.json").read_text())
        return (
            manifest["config"]["spec"] == "pixels+minilm"
            and manifest["source"]["content_hash"] == content_hash
        )

    folders = [f for f in (cache_dir() / "candidate-features").iterdir() if ours(f)]
    assert len(folders) == 1
    stamps = {f: (f / "manifest.json").stat().st_mtime_ns for f in folders}
    second = TeacherJob.open(out_dir=tmp_path / "b", config=config, **teacher_inputs)
    for q in range(3):
        np.testing.assert_array_equal(second.teacher.candidates(second.queries, q), pools[q])
    assert {
        f: (f / "manifest.json").stat().st_mtime_ns for f in folders
    } == stamps  # loaded, not rewritten
