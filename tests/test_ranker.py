"""The distilled ranker: pair sampling, sign convention, learning a planted ranking, mAP(L) definition."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from _tolerance import (
    F32,
    F64,
    Tolerance,
    apart,
    assert_close,
    gamma,
    network,
    retrained,
    rounded,
    sums,
)
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
            assert_close(target, 1 - position[(q, item)] / 44, rounded(F32, 1.0) * 2)  # float32
        else:
            outliers += 1
            assert target == 0.0
    assert 0.4 < outliers / len(rows) < 0.6
    assert targets.max() == 1.0  # the teacher's first choice: 1 − 0/44, exactly


def _retrained(config: RankerTrainConfig, num_queries: int, in_dim: int):
    """Two trainings of ``config`` on the same batches: the MLP's gradients within its chain bound (forward and
    backward, relative), over epochs x ceil(queries / batch) AdamW steps (OneCycle peaks at ``config.lr``)."""
    steps = config.epochs * -(-num_queries // config.batch_queries)
    mlp = Ranker(RankerShape(in_dim, config.hidden, config.out_dim))
    return retrained(steps, config.lr, 2 * network(mlp, 1.0))


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
        val_query_features=queries[160:], val_ranked_ids=ranked[160:],
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
            val_query_features=queries[30:], val_ranked_ids=ranked[30:],
        )  # fmt: skip
        return torch.cat([p.flatten() for p in ranker.parameters()]), ranker.history

    top, top_history = fit(ranked[:30], train_top=10)
    truncated, truncated_history = fit(ranked[:30, :10])
    whole, _ = fit(ranked[:30])
    within = _retrained(config, 30, queries.shape[1])
    assert_close(top, truncated, within)
    assert apart(top, whole, within)
    # Validation mAP is measured against the whole validation pools in both runs.
    assert [h["val_map"] for h in top_history] == [h["val_map"] for h in truncated_history]
    with pytest.raises(ConfigError, match="train_top must be at least 2, got 0"):
        fit(ranked[:30], train_top=0)


def test_training_reads_item_rows_from_a_memory_map_as_from_ram(rng, tmp_path):
    """All N item rows may stay on disk: each batch reads its own; the weights come out the same, bit for bit."""
    queries, items, ranked, _ = planted_problem(rng, num_queries=40)
    np.save(tmp_path / "items.npy", items)
    mapped = np.load(
        tmp_path / "items.npy", mmap_mode="r"
    )  # read-only, as a features folder is opened
    config = RankerTrainConfig(hidden=(16,), out_dim=8, epochs=2, batch_queries=4, pairs_per_query=20,
                               residual="none", members=2)  # fmt: skip

    def weights(item_features):
        ranker = train_ranker(queries[:30], item_features, ranked[:30], config,
                              val_query_features=queries[30:], val_ranked_ids=ranked[30:])  # fmt: skip
        return torch.cat([p.flatten() for p in ranker.parameters()]), ranker.history

    (in_ram, history), (on_disk, disk_history) = weights(items), weights(mapped)
    assert torch.equal(in_ram, on_disk) and history == disk_history


def test_balanced_parts_get_equal_input_variance(rng):
    features = np.concatenate(
        [rng.normal(size=(500, 48)) * 3.0, rng.normal(size=(500, 16))], axis=1
    )
    ranker = Ranker(RankerShape(64, (8,), 4))
    ranker.fit_standardisation(features, part_dims=[48, 16])
    x = (torch.as_tensor(features, dtype=torch.float32) - ranker.feature_mean) / ranker.feature_std
    per_part = [x[:, :48].var(dim=0).sum().item(), x[:, 48:].var(dim=0).sum().item()]
    # float32 throughout: a standard deviation and a variance over 500 rows each (γ_500 relative, of positive
    # terms, plus their means' and the divisions' roundings), summed over at most 48 columns (γ_48).
    variance = Tolerance(
        0, 4 * gamma(501, F32) + gamma(48, F32) + 4 * F32, "two passes of 500, one of 48"
    )
    assert_close(per_part, [32.0, 32.0], variance)
    ranker.fit_standardisation(features, part_dims=[48, 16], part_weights=[1.0, 3.0])
    x = (torch.as_tensor(features, dtype=torch.float32) - ranker.feature_mean) / ranker.feature_std
    per_part = [x[:, :48].var(dim=0).sum().item(), x[:, 48:].var(dim=0).sum().item()]
    assert_close(per_part, [16.0, 48.0], variance)  # a quarter and three quarters of 64
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
        # float64 averages of 12 precisions, each a ratio of counts: a sum of 200 terms at most, either way.
        assert_close(ours[q], average_precision_score(labels, scores[q]), sums(200, 1.0, F64))
    found = average_precision(np.array([3.0, 2.0, 1.0]), np.array([True, False, True]))
    assert_close(found, (1 + 2 / 3) / 2, sums(3, 1.0, F64))
    assert l_values(118_287) == [497, 1005, 4022] and l_values(2000) == [8, 17, 68]


def test_map_sorts_each_query_once_for_every_l_with_the_same_bits(rng):
    """Issue 33: one sort per query serves every L; each AP is the per-L computation's, bit for bit (the same
    positions in the same stable order, the same float64 operations), ties included."""
    from fastgda.evaluation import map_at_ls

    scores = np.round(
        rng.normal(size=(4, 300)), 1
    )  # rounded: many exact ties, broken by item order
    teacher = np.argsort(-(scores + rng.normal(size=scores.shape)), axis=1)
    together = map_at_ls(scores, teacher, [1, 7, 40])
    for L in (1, 7, 40):
        one_by_one = [
            average_precision(scores[q], np.isin(np.arange(300), teacher[q, :L])) for q in range(4)
        ]
        assert together[L].tolist() == one_by_one


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
            val_query_features=queries[30:], val_ranked_ids=ranked[30:],
        )  # fmt: skip

    ensemble = fit(RankerTrainConfig(**{**config.__dict__, "members": 2}))
    history = ensemble.history
    alone = [fit(RankerTrainConfig(**{**config.__dict__, "seed": s})) for s in (5, 6)]
    within = _retrained(config, 30, queries.shape[1])
    for target, member in zip(ensemble.member_mlps, alone, strict=True):
        for a, b in zip(target.parameters(), member.mlp.parameters(), strict=True):
            assert_close(a, b, within)
    assert apart(alone[0].mlp[0].weight, alone[1].mlp[0].weight, within)

    # The embedding is a unit vector whose cosine is the mean of the members' cosines; so are the logits.
    q, x = torch.as_tensor(queries[30:]), torch.as_tensor(items[:10])
    q_emb, x_emb = ensemble.embed(q), ensemble.embed(x)
    assert q_emb.shape == (10, ensemble.embedding_dim) == (10, 16)
    # Norms and products of unit vectors over E = 16 terms (Σ|terms| <= 1), the members' normalisations over 8;
    # a logit scales a cosine by the scale and adds the bias.
    width = ensemble.embedding_dim
    cosines = sums(width, 1.0) * 3 + network(ensemble, 1.0)
    assert_close(q_emb.norm(dim=-1), torch.ones(10), sums(width, 1.0) * 2)
    members_cos = [(m.embed(q) * m.embed(x)).sum(-1) for m in alone]
    assert_close((q_emb * x_emb).sum(-1), sum(members_cos) / 2, cosines)
    members_logits = [m.logits(m.embed(q), m.embed(x)) for m in alone]
    scale = float(
        ensemble.logit_scale.detach().abs().max() + ensemble.logit_bias.detach().abs().max()
    )
    assert_close(
        ensemble.logits(q_emb, x_emb),
        sum(members_logits) / 2,
        scale * cosines + rounded(F32, scale) * 3,
    )

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
    assert_close(loaded.embed(q), q_emb, network(loaded, 1.0))  # the same weights, bit for bit
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
    a = train_ranker(queries, items, ranked, config)
    b = train_ranker(queries, items * 2.0, ranked, config)
    c = Ranker(RankerShape(16, (16,), 4))
    with pytest.raises(IncompatibleArtifactError, match="standardisation"):
        Ranker.ensemble([a, b])
    with pytest.raises(IncompatibleArtifactError, match="one shape"):
        Ranker.ensemble([a, c])
    with pytest.raises(ConfigError, match="members must be at least 1, got 0"):
        RankerTrainConfig(members=0)
