"""The front objects a user reaches from ``import fastgda as fg``: in memory, then saved and loaded as folders."""

import dataclasses

import numpy as np
import pytest

import fastgda as fg
from _tolerance import (
    F32,
    F64,
    assert_close,
    assert_same_ranking,
    largest_loss,
    network,
    rounded,
    sums,
    teacher_scores,
)
from fastgda.cli import build_parser


def test_the_teacher_ranks_in_memory_what_a_resumable_job_writes(teacher_inputs, tmp_path):
    config = fg.TeacherConfig(
        unlearn=fg.UnlearnConfig(num_pairs=16, batch_size=16),
        scoring=fg.ScoringConfig(timesteps=(500,)),
    )
    teacher = fg.Teacher.from_folders(
        teacher_inputs["model_dir"], teacher_inputs["data_dir"], teacher_inputs["fisher_dir"],
        config,
    )  # fmt: skip
    pools = teacher.with_candidates(12)
    in_memory = pools.rank(teacher_inputs["queries_dir"], query_ids=[2, 0])
    assert in_memory.ids.shape == (2, 12) and in_memory.query_ids.tolist() == [2, 0]
    assert pools.before_losses is teacher.before_losses  # computed once, shared

    job = fg.TeacherJob.open(out_dir=tmp_path / "run", config=pools.config, **teacher_inputs)
    job.run([0, 2])
    on_disk = fg.GroundTruth.merge(tmp_path / "run" / "results", [2, 0])
    loss = largest_loss(tmp_path / "run")
    within = teacher_scores(teacher.model, loss, np.abs(in_memory.scores).max())
    assert_same_ranking(in_memory.ids, in_memory.scores, on_disk.ids, on_disk.scores, within)


def test_ranker_attributor_and_evaluation_work_in_memory_and_round_trip(fast_path, tmp_path):
    root, inputs = fast_path
    items, queries = fg.Features.load(root / "items"), fg.Features.load(root / "q")
    train = fg.GroundTruth.load(root / "train" / "ground_truth")
    test = fg.GroundTruth.load(root / "test" / "ground_truth")
    config = fg.RankerTrainConfig(hidden=(32,), out_dim=16, epochs=2, batch_queries=2)

    # The ground truth may rank only some of the query features: rows are picked by query id.
    partial = train.select([2, 0])
    ranker = fg.Ranker.distil(queries, items, partial, config, validation=(queries, train))
    # Epoch 0 is the residual start (the best part's cosine), validated before training.
    assert ranker.spec == items.spec and [r["epoch"] for r in ranker.history] == [0, 1, 2]
    with pytest.raises(fg.IncompatibleArtifactError, match="hold no rows for ids"):
        fg.Ranker.distil(queries.select([0, 1]), items, partial, config)

    ranker.save(tmp_path / "ranker")
    loaded = fg.Ranker.load(tmp_path / "ranker")
    assert loaded.spec == items.spec and loaded.history == ranker.history
    # Cosines of the same weights' unit embeddings: the MLP's chain bound, then a product over E terms.
    cosines = network(ranker, 1.0) + sums(ranker.embedding_dim, 1.0)
    assert_close(
        loaded.score(queries.values, items.values),
        ranker.score(queries.values, items.values),
        cosines,
    )
    unnamed = fg.Ranker(ranker.shape)
    with pytest.raises(fg.NotFittedError, match="feature spec"):
        unnamed.save(tmp_path / "unnamed")

    dataset = fg.open_dataset(inputs["data_dir"])
    attributor = fg.Attributor.build(ranker, dataset, items, validation=(queries, train))
    assert (
        attributor.root is None and attributor.temperature != 0.05
    )  # fitted to the teacher's shares
    answer = attributor.attribute_features(queries.values, k=4)
    assert answer.ids.shape == answer.scores.shape == answer.shares.shape == (3, 4)
    # float32 shares, each rounded once, summed over k = 4 in float32.
    assert_close(answer.shares.sum(axis=1), 1.0, rounded(F32, 1.0) + sums(4, 1.0))
    expected = np.argsort(-ranker.score(queries.values, items.values), axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(answer.ids, items.ids[expected])
    assert [a.id for a in answer[1]] == answer.ids[1].tolist() and answer[1][0].captions

    attributor.save(tmp_path / "attributor")
    again = fg.Attributor.load(tmp_path / "attributor")
    reloaded = again.attribute_features(queries.values, k=4)
    np.testing.assert_array_equal(reloaded.ids, answer.ids)
    assert again.temperature == attributor.temperature and again.has_features

    evaluation = fg.evaluate({"mine": ranker}, queries, items, test)
    by_hand = fg.evaluate(
        {"mine": ranker.score(queries.select(test.query_ids).values, items.values)},
        queries,
        items,
        test,
    )
    assert evaluation.map == by_hand.map
    assert {"mine", "untuned image (pixels)", "untuned text (minilm)", "random"} <= set(
        evaluation.map
    )
    assert evaluation.best_untuned().startswith("untuned") and "mAP(L=" in str(evaluation)
    with pytest.raises(fg.IncompatibleArtifactError, match="full rankings"):
        fg.evaluate({"mine": ranker}, queries, items, train)


def test_ground_truth_and_features_select_rows_by_id(fast_path):
    root, _ = fast_path
    truth = fg.GroundTruth.load(root / "train" / "ground_truth")
    picked = truth.select([2, 1])
    assert picked.query_ids.tolist() == [2, 1]
    np.testing.assert_array_equal(picked.ids[0], truth.ids[2])
    with pytest.raises(fg.FastGDAError, match=r"query ids \[7\] are not in this ground truth"):
        truth.select([1, 7])
    queries = fg.Features.load(root / "q")
    np.testing.assert_array_equal(queries.select([2, 0]).values, queries.values[[2, 0]])


@pytest.mark.parametrize(
    ("verb", "config_type"),
    [
        (("ranker", "train"), fg.RankerTrainConfig),
        (("teacher", "fisher"), fg.FisherConfig),
        (("teacher", "run"), fg.UnlearnConfig),
        (("model", "sample"), fg.SamplerConfig),
        (("eval", "counterfactual"), fg.CounterfactualConfig),
    ],
)
def test_every_config_field_is_a_flag_of_the_same_name_with_its_help(verb, config_type):
    parser = build_parser()
    for name in verb:
        parser = next(
            a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"
        ).choices[name]
    flags = {option: action for action in parser._actions for option in action.option_strings}
    for field in dataclasses.fields(config_type):
        action = flags[f"--{field.name.replace('_', '-')}"]
        assert action.dest == field.name and field.metadata["help"] in action.help


def test_a_preset_is_the_start_and_flags_override_its_fields():
    from fastgda.cli._common import config_from_args

    args = build_parser().parse_args(
        ["ranker", "train", "--items", "i", "--queries", "q", "--ground-truth", "g", "--out", "o",
         "--preset", "demo", "--members", "2", "--no-balance-parts"]
    )  # fmt: skip
    config = config_from_args(args, fg.RankerTrainConfig, base=fg.RankerTrainConfig.demo())
    assert config == dataclasses.replace(
        fg.RankerTrainConfig.demo(), members=2, balance_parts=False
    )


def test_a_ranker_that_loses_to_a_plain_cosine_on_validation_is_not_served(fast_path, tmp_path):
    from fastgda.evaluation import candidate_map
    from fastgda.ranker import UntunedScorer, best_scorer, load_scorer, validation_maps

    root, inputs = fast_path
    items, queries = fg.Features.load(root / "items"), fg.Features.load(root / "q")
    truth = fg.GroundTruth.load(root / "train" / "ground_truth")
    config = fg.RankerTrainConfig(hidden=(32,), out_dim=16, epochs=1, batch_queries=2)
    ranker = fg.Ranker.distil(queries, items, truth, config, validation=(queries, truth))
    assert set(ranker.validation) == {"ranker", "untuned image (pixels)", "untuned text (minilm)"}

    # Each part's figure is the mAP of its plain cosine within the teacher's pools, computed by hand.
    prompts, captions = queries.select(truth.query_ids).part("minilm"), items.part("minilm")
    q = prompts / np.linalg.norm(prompts, axis=1, keepdims=True)
    x = captions / np.linalg.norm(captions, axis=1, keepdims=True)
    pooled = np.einsum("qd,qkd->qk", q, x[truth.ids])
    by_hand = candidate_map(pooled, truth.ids, max(1, round(0.1 * truth.ids.shape[1]))).mean()
    # The same ranking within each pool, so the same precisions: an average over the queries in float64.
    mine = validation_maps(None, queries, items, truth)["untuned text (minilm)"]
    assert_close(mine, by_hand, sums(2 * len(truth.ids), 1.0, F64))

    # A baseline that beats the ranker is served in its place, through the same attributor.
    assert best_scorer(ranker, items, {"ranker": 0.9, "untuned text (minilm)": 0.5}) is ranker
    scorer = best_scorer(ranker, items, {"ranker": 0.2, "untuned text (minilm)": 0.5})
    assert isinstance(scorer, UntunedScorer) and scorer.part == "minilm"
    attributor = fg.Attributor.build(scorer, fg.open_dataset(inputs["data_dir"]), items)
    answer = attributor.attribute_features(queries.values, k=5)
    np.testing.assert_array_equal(answer.ids, attributor.untuned(queries.values, 5, "minilm").ids)
    attributor.save(tmp_path / "a")
    assert isinstance(load_scorer(tmp_path / "a" / "ranker"), UntunedScorer)
    np.testing.assert_array_equal(
        fg.Attributor.load(tmp_path / "a").attribute_features(queries.values, k=5).ids, answer.ids
    )


def test_evaluation_within_pools_scores_each_query_over_its_pool(fast_path, rng):
    """Issue 33's candidate mode (the paper's SD protocol): each query's K pool items only. Over full rankings
    (K = N) it gives the full evaluation's figures; over pools, the teacher's own order scores 1; pools without
    the flag are refused with the way to it."""
    root, _ = fast_path
    items, queries = fg.Features.load(root / "items"), fg.Features.load(root / "q")
    full_truth = fg.GroundTruth.load(root / "test" / "ground_truth")
    matrix = rng.random((len(full_truth), len(items))).astype(
        np.float32
    )  # continuous: no exact ties
    full = fg.evaluate({"m": matrix}, queries, items, full_truth, baselines=False)
    pooled_full = fg.evaluate(
        {"m": matrix}, queries, items, full_truth, baselines=False, within_pools=True
    )
    assert pooled_full.map["m"] == full.map["m"]
    pools = fg.GroundTruth.load(root / "train" / "ground_truth")  # pools of 20
    with pytest.raises(fg.IncompatibleArtifactError, match="within-pools"):
        fg.evaluate({"m": matrix}, queries, items, pools)
    teacher = np.full((len(pools), len(items)), -1.0, dtype=np.float32)
    np.put_along_axis(teacher, pools.ids.astype(np.int64), -np.arange(20, dtype=np.float32), axis=1)
    evaluation = fg.evaluate({"teacher order": teacher}, queries, items, pools, within_pools=True)
    assert evaluation.num_train == 20 and evaluation.pools.shape == (len(pools), 20)
    assert all(cell["mean"] == 1.0 for cell in evaluation.map["teacher order"].values())
    assert {"untuned image (pixels)", "untuned text (minilm)", "random"} <= set(evaluation.map)
    assert evaluation.scores["random"].shape == (len(pools), 20)
