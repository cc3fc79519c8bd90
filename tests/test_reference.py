"""The reference ground-truth artifact: packing finished teacher runs and materialising its query sets."""

import json

import numpy as np
import pytest
import torch

from _tolerance import (
    F16,
    F32,
    Tolerance,
    assert_close,
    assert_same_ranking,
    largest_loss,
    network,
    teacher_scores,
)
from fastgda import IncompatibleArtifactError
from fastgda.app.reference import (
    pack_reference,
    reference_ground_truth,
    reference_info,
    reference_queries,
    reference_query_set,
)
from fastgda.diffusion import TextToImageModel
from fastgda.diffusion.queries import load_query_tensors
from fastgda.unlearning import ScoringConfig, UnlearnConfig
from fastgda.unlearning.jobs import TeacherConfig, TeacherJob


def test_packed_reference_round_trips_rankings_and_queries(teacher_inputs, tmp_path):
    config = TeacherConfig(
        unlearn=UnlearnConfig(num_pairs=16, batch_size=16),
        scoring=ScoringConfig(timesteps=(500,)),
        num_candidates=20,
    )
    job = TeacherJob.open(out_dir=tmp_path / "run", config=config, **teacher_inputs)
    job.run()
    truth = job.merge()
    root = tmp_path / "reference"
    pack_reference(
        {"val": teacher_inputs["queries_dir"]},
        {"val": tmp_path / "run"},
        teacher_inputs["fisher_dir"],
        root,
        command="test",
    )
    assert reference_info(root)["splits"]["val"]["teacher"]["num_candidates"] == 20
    loaded = reference_ground_truth("val", root)
    np.testing.assert_array_equal(loaded.ids, truth.ids)
    # Packed compact: each row over its largest magnitude as float16, and two float32 roundings.
    packed = Tolerance((F16 + 2 * F32) * float(np.abs(truth.scores).max()), why="compact scores")
    assert_close(loaded.scores, truth.scores, packed)
    assert [r["prompt"] for r in reference_queries("val", root)][0].startswith("a large cyan")

    model = TextToImageModel.from_pretrained(teacher_inputs["model_dir"])
    out = reference_query_set("val", model, teacher_inputs["model_dir"], tmp_path / "queries", root)
    original, rebuilt = load_query_tensors(teacher_inputs["queries_dir"]), load_query_tensors(out)
    # x0 and the mask are copied bytes; the text states come from the frozen encoder run again.
    for name in original:
        if name == "text_states":
            within = network(model.text_encoder, float(original[name].abs().max()))
            assert_close(rebuilt[name], original[name], within, name)
        else:
            assert torch.equal(rebuilt[name], original[name]), name
    # The materialised set is a valid teacher input: same rankings as the original queries.
    again = TeacherJob.open(
        out_dir=tmp_path / "again",
        config=config,
        **{**teacher_inputs, "queries_dir": out},
    )
    again.run([0])
    rerun = np.load(tmp_path / "again/results/q_000000.npz")
    within = teacher_scores(model, largest_loss(tmp_path / "run"), np.abs(truth.scores).max())
    assert_same_ranking(rerun["ids"], rerun["scores"], truth.ids[:1], truth.scores[:1], within)

    with pytest.raises(IncompatibleArtifactError, match="splits"):
        reference_ground_truth("test", root)
    with pytest.raises(IncompatibleArtifactError, match="no reference"):
        reference_info(tmp_path / "nowhere")
    manifest = json.loads((root / "manifest.json").read_text())
    assert (
        manifest["kind"] == "reference_ground_truth"
        and "fisher/fisher.safetensors" in manifest["checksums"]
    )


def spearman(a, b) -> float:
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


@pytest.mark.slow
def test_shipped_reference_is_reproduced_by_todays_teacher(tmp_path):
    """Recompute two shipped training queries (a planted one and a held-out one) from scratch."""
    from fastgda.app.pack import ensure_world, model_dir
    from fastgda.app.reference import reference_dir
    from fastgda.diffusion.training import prepare_training_data
    from fastgda.unlearning import (
        BeforeLosses,
        Fisher,
        influence_scores,
        select_linear_layers,
        unlearn,
        weights_shifted,
    )
    from fastgda.unlearning.jobs import teacher_config_from_json

    info = reference_info()
    sizes = {s: v["num_queries"] for s, v in info["splits"].items()}
    assert sizes == {"train": 400, "val": 50, "test": 40}
    assert info["splits"]["test"]["num_candidates"] == 2000
    config = teacher_config_from_json(info["splits"]["train"]["teacher"])
    model = TextToImageModel.from_pretrained(model_dir())
    queries = load_query_tensors(
        reference_query_set("train", model, model_dir(), tmp_path / "queries")
    )
    records = reference_queries("train")
    truth = reference_ground_truth("train")
    rows = [
        next(row for row, q in enumerate(truth.query_ids) if records[q]["kind"] == kind)
        for kind in ("planted", "held-out")
    ]
    fisher = Fisher.load(reference_dir() / "fisher")
    layers = select_linear_layers(model.unet, fisher.config.layers)
    # The pool's top 32 and every 10th item below them: the ranking at the top and across the whole pool, at a
    # sixth of the cost of scoring all 512 (this test is among the suite's slowest).
    kept = np.r_[0:32, 32 : truth.ids.shape[1] : 10]
    # Only the candidates are encoded (their noise keyed by their ids in the world, as the teacher's was).
    encoded_ids = np.unique(truth.ids[rows][:, kept])
    data = prepare_training_data(model, ensure_world(tmp_path / "world"), rows=encoded_ids)
    for row in rows:
        q = int(truth.query_ids[row])
        candidates = np.searchsorted(encoded_ids, truth.ids[row][kept])  # rows of the encoding
        before = BeforeLosses.compute(model, data, config.scoring, {}, item_ids=candidates)
        delta = unlearn(
            model,
            layers,
            fisher,
            queries["x0"][q],
            queries["text_states"][q],
            queries["text_mask"][q] if "text_mask" in queries else None,
            config.unlearn,
            data.num_full,
            query_key=q,
        )
        with weights_shifted(layers, delta):
            scores = influence_scores(model, data, candidates, before)
        assert spearman(scores, truth.scores[row][kept]) >= 0.99, (q, records[q]["prompt"])
