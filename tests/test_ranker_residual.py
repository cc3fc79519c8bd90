"""The residual ranker: it starts as an untuned part's cosine and keeps that start unless validation improves."""

import json

import numpy as np
import pytest
import torch

from _tolerance import assert_close, network, sums
from fastgda import ConfigError, IncompatibleArtifactError
from fastgda.ranker import Ranker, RankerShape, RankerTrainConfig, train_ranker
from fastgda.ranker.training import choose_residual_part
from fastgda.ranker.untuned import UntunedScorer

PARTS = [
    {"name": "image", "offset": 0, "dim": 12, "modality": "image"},
    {"name": "text", "offset": 12, "dim": 6, "modality": "text"},
]


def two_part_problem(rng, num_items=120, num_queries=60, k=30):
    """Features of an image part (noise) and a text part whose cosine is the teacher's ranking."""
    items = rng.normal(size=(num_items, 18)).astype(np.float32)
    queries = rng.normal(size=(num_queries, 18)).astype(np.float32)
    text = UntunedScorer("image+text", PARTS, "text")
    ranked = np.argsort(-text.score(queries, items), axis=1)[:, :k]
    return queries, items, ranked


def _cosines(ranker) -> object:
    """Cosines of unit embeddings computed two ways: the MLP's chain bound (relative), the text part's two
    normalisations and a product over the output width (γ each, of unit vectors)."""
    return network(ranker, 1.0) + sums(ranker.embedding_dim, 1.0) * 3


def test_an_untrained_residual_ranker_scores_as_the_parts_untuned_cosine(rng):
    queries, items, _ = two_part_problem(rng)
    for members in (1, 3):
        ranker = Ranker(RankerShape(18, (16,), 8, residual_part=(12, 6), members=members))
        expected = UntunedScorer("image+text", PARTS, "text").score(queries, items)
        assert_close(ranker.score(queries, items), expected, _cosines(ranker))


def test_training_keeps_the_start_when_no_epoch_beats_it_on_validation(rng):
    queries, items, ranked = two_part_problem(rng)
    # Training labels are shuffled pools: nothing to learn; validation pools follow the text cosine exactly.
    shuffled = np.stack([rng.permutation(row) for row in ranked[:40]])
    config = RankerTrainConfig(
        hidden=(16,), out_dim=8, epochs=4, batch_queries=8, pairs_per_query=16
    )
    ranker = train_ranker(
        queries[:40], items, shuffled, config,
        val_query_features=queries[40:], val_ranked_ids=ranked[40:],
        part_dims=[12, 6], part_names=["image", "text"],
    )  # fmt: skip
    assert ranker.shape.residual_part == (12, 6)  # auto: text orders the validation pools
    assert ranker.history[0]["epoch"] == 0
    assert (
        ranker.history[0]["val_map"] == 1.0
    )  # every pool in its teacher's order: each AP is exactly 1
    expected = UntunedScorer("image+text", PARTS, "text").score(queries[40:], items)
    assert_close(ranker.score(queries[40:], items), expected, _cosines(ranker))
    plain = train_ranker(
        queries[:40], items, shuffled, RankerTrainConfig(**{**config.__dict__, "residual": "none"}),
        val_query_features=queries[40:], val_ranked_ids=ranked[40:], part_dims=[12, 6],
    )  # fmt: skip
    assert plain.shape.residual_part is None and max(h["val_map"] for h in plain.history) < 0.9


def test_the_residual_part_is_chosen_by_name_by_pool_map_or_not_at_all(rng):
    queries, items, ranked = two_part_problem(rng)

    def choose(residual, dims=(12, 6), names=("image", "text")):
        config = RankerTrainConfig(residual=residual)
        return choose_residual_part(config, list(dims), list(names), (queries, ranked), items)

    assert choose("auto") == (12, 6)
    assert choose("image") == (0, 12)
    assert choose("none") is None
    assert choose("auto", dims=(18,), names=("all",)) == (0, 18)
    expected = (
        r"'dino' is not a part of these features; choose auto, none or one of \['image', 'text'\]"
    )
    with pytest.raises(ConfigError, match=expected):
        choose("dino")
    with pytest.raises(ConfigError, match="residual part .* outside the 18-d input"):
        RankerShape(18, (16,), 8, residual_part=(12, 8))
    with pytest.raises(ConfigError, match="needs out_dim >= 12, got 8"):
        RankerShape(18, (16,), 8, residual_part=(0, 12))


def test_a_residual_ranker_round_trips_and_a_version_1_ranker_still_loads(rng, tmp_path):
    queries, items, _ = two_part_problem(rng)
    torch.manual_seed(0)
    ranker = Ranker(RankerShape(18, (16,), 8, residual_part=(12, 6)), spec="image+text")
    with torch.no_grad():
        ranker.mlp[-1].weight.normal_()
        ranker.residual_gain.fill_(0.5)
    ranker.save(tmp_path / "residual")
    loaded = Ranker.load(tmp_path / "residual")
    assert loaded.shape == ranker.shape
    for name, value in ranker.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name
    assert_close(loaded.score(queries, items), ranker.score(queries, items), _cosines(ranker))

    plain = Ranker(RankerShape(18, (16,), 8), spec="image+text")
    plain.save(tmp_path / "plain")
    manifest_path = tmp_path / "plain" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["config"]["shape"]["residual_part"]  # as a version 1 ranker was written
    manifest["format_version"] = 1
    manifest_path.write_text(json.dumps(manifest))
    assert Ranker.load(tmp_path / "plain").shape == plain.shape
    manifest["format_version"] = 3
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IncompatibleArtifactError, match="this fastgda reads version 1 or 2"):
        Ranker.load(tmp_path / "plain")


def test_an_ensemble_of_residual_rankers_averages_their_cosines(rng):
    queries, items, _ = two_part_problem(rng)
    members = []
    for seed, gain in ((0, 1.0), (1, 0.25)):
        torch.manual_seed(seed)
        member = Ranker(RankerShape(18, (16,), 8, residual_part=(12, 6)))
        with torch.no_grad():
            member.mlp[-1].weight.normal_()
            member.residual_gain.fill_(gain)
        members.append(member)
    ensemble = Ranker.ensemble(members)
    mean = (members[0].score(queries, items) + members[1].score(queries, items)) / 2
    assert_close(ensemble.score(queries, items), mean, _cosines(ensemble))
