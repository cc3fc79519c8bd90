"""The distilled ranker: pair sampling, sign convention, learning a planted ranking, mAP(L) definition."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from _tolerance import RETRAINED
from fastgda import ConfigError, IncompatibleArtifactError
from fastgda.evaluation import average_precision, l_values, map_at_l
from fastgda.ranker import (
    PairSampler,
    Ranker,
    RankerShape,
    RankerTrainConfig,
    summarise_history,
    train_ranker,
)
from fastgda.ranker.training import pair_loss


def planted_problem(rng, num_train=300, num_queries=200, dim=16, k=40):
    """Features plus a teacher whose ranking is cosine in a hidden 4-d projection: learnable, not trivial."""
    items = rng.normal(size=(num_train, dim)).astype(np.float32)
    queries = rng.normal(size=(num_queries, dim)).astype(np.float32)
    projection = rng.normal(size=(dim, 4))

    def project(x):
        z = x @ projection
        return z / np.linalg.norm(z, axis=1, keepdims=True)

    scores = project(queries) @ project(items).T
    ranked = np.argsort(-scores, axis=1)[:, :k]
    return queries, items, ranked, scores


def test_outliers_never_come_from_the_candidate_pool_and_targets_follow_rank(rng):
    ranked = np.stack([rng.choice(50, 45, replace=False) for _ in range(8)])  # pools cover 90% of N
    sampler = PairSampler(ranked, num_train=50, outlier_prob=0.5, seed=1)
    rows, items, targets = sampler.sample(np.arange(8), 400)
    position = {(q, i): r for q in range(8) for r, i in enumerate(ranked[q])}
    outliers = 0
    for q, item, target in zip(rows, items, targets, strict=True):
        if (q, item) in position:
            assert target == pytest.approx(1 - position[(q, item)] / 44)
        else:
            outliers += 1
            assert target == 0.0
    assert 0.4 < outliers / len(rows) < 0.6
    assert targets.max() == pytest.approx(
        1.0
    )  # the teacher's first choice is the most positive target


def test_a_batch_embeds_each_distinct_query_and_item_once(rng):
    ranker = Ranker(RankerShape(in_dim=6, hidden=(8,), out_dim=4))
    seen = []
    ranker.mlp.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    rows, items = np.array([0, 0, 1, 1, 1]), np.array([3, 3, 3, 5, 7])
    q, x = torch.randn(2, 6), torch.randn(10, 6)
    pair_loss(ranker, q, x, rows, items, np.ones(5, dtype=np.float32), "bce")
    assert seen == [2, 3]


def test_the_ranker_learns_a_planted_ranking_and_higher_cosine_means_more_influential(rng):
    queries, items, ranked, _ = planted_problem(rng)
    config = RankerTrainConfig(
        hidden=(64,),
        out_dim=16,
        epochs=30,
        batch_queries=4,
        pairs_per_query=40,
        lr=3e-3,
        patience=30,
    )
    ranker = train_ranker(
        queries[:160], items, ranked[:160], config,
        val_query_features=queries[160:], val_ranked_ids=ranked[160:], progress=False,
    )  # fmt: skip
    history = [record for record in ranker.history if record["epoch"] > 0]  # epoch 0: the start
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    q_emb, i_emb = ranker.embed_numpy(queries[160:]), ranker.embed_numpy(items)
    predicted = q_emb @ i_emb.T  # cosine: higher = more influential
    tuned = map_at_l(predicted, ranked[160:], 10).mean()
    reversed_sign = map_at_l(-predicted, ranked[160:], 10).mean()
    untuned = map_at_l(queries[160:] @ items.T, ranked[160:], 10).mean()
    random = map_at_l(rng.random(predicted.shape), ranked[160:], 10).mean()
    assert tuned > 1.5 * max(untuned, random) and tuned > 5 * reversed_sign, (
        tuned,
        untuned,
        random,
    )
    assert ranker.logit_scale.item() > 0


def test_train_top_labels_only_the_teachers_top_t_and_validates_on_whole_pools(rng):
    queries, items, ranked, _ = planted_problem(rng, num_queries=40)
    config = RankerTrainConfig(
        hidden=(16,), out_dim=8, epochs=3, batch_queries=4, pairs_per_query=20, residual="none"
    )

    def fit(ids, **changes):
        cfg = RankerTrainConfig(**{**config.__dict__, **changes})
        ranker = train_ranker(
            queries[:30], items, ids, cfg,
            val_query_features=queries[30:], val_ranked_ids=ranked[30:], progress=False,
        )  # fmt: skip
        return torch.cat([p.flatten() for p in ranker.parameters()]), ranker.history

    top, top_history = fit(ranked[:30], train_top=10)
    truncated, truncated_history = fit(ranked[:30, :10])
    whole, _ = fit(ranked[:30])
    torch.testing.assert_close(top, truncated, **RETRAINED)
    assert not torch.allclose(top, whole, **RETRAINED)
    # Validation mAP is measured against the whole validation pools in both runs.
    assert [h["val_map"] for h in top_history] == [h["val_map"] for h in truncated_history]
    with pytest.raises(ConfigError, match="train_top must be at least 2, got 0"):
        fit(ranked[:30], train_top=0)


def test_balanced_parts_get_equal_input_variance(rng):
    features = np.concatenate(
        [rng.normal(size=(500, 48)) * 3.0, rng.normal(size=(500, 16))], axis=1
    )
    ranker = Ranker(RankerShape(64, (8,), 4))
    ranker.fit_standardisation(features, part_dims=[48, 16])
    x = (torch.as_tensor(features, dtype=torch.float32) - ranker.feature_mean) / ranker.feature_std
    per_part = [x[:, :48].var(dim=0).sum().item(), x[:, 48:].var(dim=0).sum().item()]
    assert per_part == pytest.approx([32.0, 32.0], rel=1e-3)
    ranker.fit_standardisation(features, part_dims=[48, 16], part_weights=[1.0, 3.0])
    x = (torch.as_tensor(features, dtype=torch.float32) - ranker.feature_mean) / ranker.feature_std
    per_part = [x[:, :48].var(dim=0).sum().item(), x[:, 48:].var(dim=0).sum().item()]
    assert per_part == pytest.approx([16.0, 48.0], rel=1e-3)  # a quarter and three quarters of 64
    with pytest.raises(ConfigError, match="do not sum"):
        ranker.fit_standardisation(features, part_dims=[48, 10])
    with pytest.raises(ConfigError, match="positive weight"):
        ranker.fit_standardisation(features, part_dims=[48, 16], part_weights=[1.0, 0.0])


def test_map_equals_scikit_learn_average_precision(rng):
    scores = rng.normal(size=(5, 200))
    teacher = np.argsort(-(scores + rng.normal(scale=2.0, size=scores.shape)), axis=1)
    ours = map_at_l(scores, teacher, L=12)
    for q in range(5):
        labels = np.isin(np.arange(200), teacher[q, :12])
        assert ours[q] == pytest.approx(average_precision_score(labels, scores[q]))
    assert average_precision(
        np.array([3.0, 2.0, 1.0]), np.array([True, False, True])
    ) == pytest.approx((1 + 2 / 3) / 2)
    assert l_values(118_287) == [497, 1005, 4022] and l_values(2000) == [8, 17, 68]


def test_an_ensemble_is_its_members_trained_alone_and_its_cosine_is_their_mean(rng, tmp_path):
    queries, items, ranked, _ = planted_problem(rng, num_queries=40)
    config = RankerTrainConfig(
        hidden=(16,),
        out_dim=8,
        epochs=3,
        batch_queries=4,
        pairs_per_query=20,
        seed=5,
        residual="none",
    )

    def fit(cfg):
        return train_ranker(
            queries[:30], items, ranked[:30], cfg,
            val_query_features=queries[30:], val_ranked_ids=ranked[30:], progress=False,
        )  # fmt: skip

    ensemble = fit(RankerTrainConfig(**{**config.__dict__, "members": 2}))
    history = ensemble.history
    alone = [fit(RankerTrainConfig(**{**config.__dict__, "seed": s})) for s in (5, 6)]
    for target, member in zip(ensemble.member_mlps, alone, strict=True):
        for a, b in zip(target.parameters(), member.mlp.parameters(), strict=True):
            torch.testing.assert_close(a, b, **RETRAINED)
    assert not torch.allclose(alone[0].mlp[0].weight, alone[1].mlp[0].weight, **RETRAINED)

    # The embedding is a unit vector whose cosine is the mean of the members' cosines; so are the logits.
    q, x = torch.as_tensor(queries[30:]), torch.as_tensor(items[:10])
    q_emb, x_emb = ensemble.embed(q), ensemble.embed(x)
    assert q_emb.shape == (10, ensemble.embedding_dim) == (10, 16)
    torch.testing.assert_close(q_emb.norm(dim=-1), torch.ones(10))
    members_cos = [(m.embed(q) * m.embed(x)).sum(-1) for m in alone]
    torch.testing.assert_close((q_emb * x_emb).sum(-1), sum(members_cos) / 2)
    members_logits = [m.logits(m.embed(q), m.embed(x)) for m in alone]
    torch.testing.assert_close(ensemble.logits(q_emb, x_emb), sum(members_logits) / 2)

    # History: each member's epochs, then the ensemble's validation record.
    assert [h["member"] for h in history[:-1]] == [0] * 3 + [1] * 3
    assert history[-1]["member"] == "ensemble"
    assert summarise_history(history) == (6, history[-1]["val_map"])

    # Stored and loaded like any ranker; a one-member ranker keeps the weight names of old artifacts.
    ensemble.spec = "pixels"
    ensemble.save(tmp_path / "ensemble")
    loaded = Ranker.load(tmp_path / "ensemble")
    assert loaded.manifest["config"]["shape"]["members"] == 2
    assert loaded.spec == "pixels" and loaded.history == history
    torch.testing.assert_close(loaded.embed(q), q_emb)
    assert set(alone[0].state_dict()) == {
        "feature_mean",
        "feature_std",
        "mlp.0.weight",
        "mlp.0.bias",
        "mlp.2.weight",
        "mlp.2.bias",
        "logit_scale",
        "logit_bias",
    }
    assert alone[0].logit_scale.shape == ()


def test_an_ensemble_refuses_members_it_cannot_join(rng):
    queries, items, ranked, _ = planted_problem(rng, num_queries=20)
    config = RankerTrainConfig(hidden=(16,), out_dim=8, epochs=1, batch_queries=4)
    a = train_ranker(queries, items, ranked, config, progress=False)
    b = train_ranker(queries, items * 2.0, ranked, config, progress=False)
    c = Ranker(RankerShape(16, (16,), 4))
    with pytest.raises(IncompatibleArtifactError, match="standardisation"):
        Ranker.ensemble([a, b])
    with pytest.raises(IncompatibleArtifactError, match="one shape"):
        Ranker.ensemble([a, c])
    with pytest.raises(ConfigError, match="members must be at least 1, got 0"):
        RankerTrainConfig(members=0)
