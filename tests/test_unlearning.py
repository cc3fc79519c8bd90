"""Unit-exact checks of the teacher's parts on a real (tiny) diffusers UNet."""

import numpy as np
import pytest
import torch

from _tolerance import F32, F64, Tolerance, apart, assert_close, gamma, network, rounded, sums
from fastgda import FastGDAError, IncompatibleArtifactError
from fastgda.diffusion.training import prepare_training_data
from fastgda.unlearning import (
    EKFAC,
    BeforeLosses,
    DiagonalFisher,
    FisherConfig,
    ScoringConfig,
    UnlearnConfig,
    fit_fisher,
    influence_scores,
    item_losses,
    mean_item_loss,
    newton_step,
    query_gradient,
    select_linear_layers,
    weights_shifted,
)
from fastgda.unlearning.fisher import per_sample_gradients, record_linear_io
from fastgda.unlearning.noise import keyed_noise


@pytest.fixture
def world_data(tiny_model, small_world):
    return prepare_training_data(tiny_model, small_world)


def _random_orthogonal(n, gen):
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q


def test_ekfac_step_equals_dense_damped_inverse():
    gen = torch.Generator().manual_seed(0)
    u_a, u_b = _random_orthogonal(3, gen), _random_orthogonal(4, gen)  # d_in = 3, d_out = 4
    scales = torch.rand(4, 3, generator=gen, dtype=torch.float64) + 0.1
    fisher = EKFAC(
        FisherConfig(damping=0.1), {"w.eigvecs_a": u_a, "w.eigvecs_b": u_b, "w.scales": scales}
    )
    g = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    # Column-major vec: vec(U_B^T G U_A) = (U_A kron U_B)^T vec(G).
    basis = torch.kron(u_a, u_b)
    dense = basis @ torch.diag(scales.T.flatten()) @ basis.T + 0.1 * scales.mean() * torch.eye(
        12, dtype=torch.float64
    )
    expected = torch.linalg.solve(dense, g.T.flatten()).reshape(3, 4).T
    # float64 on both sides: a 12 x 12 solve against products in the eigenbases, each within κ·γ_12 of exact.
    within = _solved(dense, expected)
    assert_close(fisher.precondition({"w": g})["w"], expected, within)


def test_diagonal_step_equals_dense_damped_inverse():
    gen = torch.Generator().manual_seed(1)
    diag = torch.rand(4, 3, generator=gen, dtype=torch.float64)
    g = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    fisher = DiagonalFisher(FisherConfig(kind="diagonal", damping=0.1), {"w.diag": diag})
    dense = torch.diag(diag.flatten()) + 0.1 * diag.mean() * torch.eye(12, dtype=torch.float64)
    expected = torch.linalg.solve(dense, g.flatten()).reshape(4, 3)
    assert_close(fisher.precondition({"w": g})["w"], expected, _solved(dense, expected))
    step = newton_step(fisher, {"w": g}, alpha=0.5, num_train=10)["w"]
    # The step scales the preconditioned gradient by α/N: a few float64 roundings more.
    assert_close(step, 0.05 * expected, 0.05 * _solved(dense, expected) + rounded(F64) * 3)


def _solved(dense: torch.Tensor, expected: torch.Tensor) -> Tolerance:
    """Two float64 solves of a small system (one dense, one in a factored form): each within κ·γ_n of the exact
    solution, relative to its largest element (Higham §7.1, normwise)."""
    n = len(dense)
    condition = float(torch.linalg.cond(dense))
    return Tolerance(
        2 * condition * gamma(n, F64) * float(expected.abs().max()), why=f"κ={condition:.3g}, γ_{n}"
    )


def test_kv_selection_and_unknown_patterns(tiny_model):
    layers = select_linear_layers(tiny_model.unet, "kv")
    assert len(layers) == 8 and all(n.endswith(("attn2.to_k", "attn2.to_v")) for n in layers)
    assert all(layer.bias is None for layer in layers.values())
    assert len(select_linear_layers(tiny_model.unet, "cross-attn")) == 16
    with pytest.raises(FastGDAError, match="matches no linear layer"):
        select_linear_layers(tiny_model.unet, "attn9")


def test_hooked_per_sample_gradients_equal_one_backward_per_sample(tiny_model, world_data):
    layers = select_linear_layers(tiny_model.unet, "kv")
    name, layer = next(iter(layers.items()))
    x0, states, mask = world_data.x0[:3], world_data.states[:3], world_data.mask[:3]
    noise, t = torch.randn_like(x0), torch.tensor([10, 500, 990])
    with record_linear_io(layers) as (inputs, grads):
        tiny_model.loss(x0, states, mask, noise, t).sum().backward()
    hooked = per_sample_gradients(inputs[name], grads[name])
    for s in range(3):
        (g,) = torch.autograd.grad(
            tiny_model.loss(
                x0[s : s + 1], states[s : s + 1], mask[s : s + 1], noise[s : s + 1], t[s : s + 1]
            ).sum(),
            [layer.weight],
        )
        # Forward and backward in another batch shape: the chain bound, twice.
        assert_close(hooked[s], g, 2 * network(tiny_model.unet, float(g.abs().max())))


@pytest.mark.parametrize("kind", ["diagonal", "ekfac"])
def test_fitted_fisher_is_positive_and_round_trips(tiny_model, world_data, kind, tmp_path):
    fisher = fit_fisher(
        tiny_model,
        world_data,
        FisherConfig(kind=kind, num_samples=48, batch_size=16),
    )
    assert len(fisher.layer_names) == 8
    values = [v for k, v in fisher.tensors.items() if k.endswith((".diag", ".scales"))]
    assert all(torch.isfinite(v).all() and (v >= 0).all() and v.sum() > 0 for v in values)
    if kind == "ekfac":
        u = fisher.tensors[f"{fisher.layer_names[0]}.eigvecs_a"].double()
        # An eigensolver's basis is orthonormal within about n·u of its precision (2·γ_n here), and each entry
        # was stored as float32 (u each): |(UᵀE)_ij| <= u·Σ|u_ki||u_kj| <= u, twice.
        d = u.shape[0]
        within = sums(d, 1.0) + Tolerance(2 * F32, why="float32 storage of the basis")
        assert_close(u.T @ u, torch.eye(d, dtype=torch.float64), within)
    fisher.save(tmp_path / "f")
    loaded = type(fisher).load(tmp_path / "f")
    assert loaded.kind == kind and loaded.tensors.keys() == fisher.tensors.keys()


def test_unlearning_moves_only_kv_weights_and_raises_the_query_loss(tiny_model, world_data):
    layers = select_linear_layers(tiny_model.unet, "kv")
    fisher = fit_fisher(
        tiny_model,
        world_data,
        FisherConfig(kind="ekfac", num_samples=32, batch_size=16),
    )
    x0, states, mask = world_data.x0[0], world_data.states[0], world_data.mask[0]
    grads = query_gradient(
        tiny_model, layers, x0, states, mask, UnlearnConfig(num_pairs=64, batch_size=32)
    )
    delta = newton_step(fisher, grads, alpha=0.01, num_train=60)
    before = {n: p.detach().clone() for n, p in tiny_model.unet.named_parameters()}
    gen = torch.Generator().manual_seed(5)
    noise, t = (
        torch.randn((64, *x0.shape), generator=gen),
        torch.randint(0, 1000, (64,), generator=gen),
    )

    def query_loss():
        with torch.no_grad():
            return (
                tiny_model.loss(
                    x0.expand(64, -1, -1, -1),
                    states.expand(64, -1, -1),
                    mask.expand(64, -1),
                    noise,
                    t,
                )
                .mean()
                .item()
            )

    loss_before = query_loss()
    with weights_shifted(layers, delta):
        changed = {
            n for n, p in tiny_model.unet.named_parameters() if not torch.equal(p, before[n])
        }
        assert changed == {f"{n}.weight" for n in layers}
        assert query_loss() > loss_before
    assert all(torch.equal(p, before[n]) for n, p in tiny_model.unet.named_parameters())


def test_keyed_noise_depends_only_on_its_key():
    a = keyed_noise((3, 4, 4), 0, [(1, 0, 100, 0), (2, 1, 500, 0)])
    b = keyed_noise((3, 4, 4), 0, [(2, 1, 500, 0)])
    # Bitwise: common random numbers need the same bits for one key, whatever else is drawn beside it.
    torch.testing.assert_close(a[1], b[0], rtol=0, atol=0)
    assert not torch.equal(a[0], keyed_noise((3, 4, 4), 0, [(1, 0, 100, 1)])[0])
    assert not torch.equal(a[0], keyed_noise((3, 4, 4), 1, [(1, 0, 100, 0)])[0])


def test_cached_before_losses_equal_a_recomputation_on_any_subset(
    tiny_model, world_data, small_world, tmp_path
):
    config = ScoringConfig(timesteps=(100, 600), batch_size=7)
    before = BeforeLosses.compute(tiny_model, world_data, config, key={"model": "m"})
    before.save(tmp_path / "before")
    cached = BeforeLosses.load(tmp_path / "before", config, key={"model": "m"})
    subset = np.array([41, 3, 17])
    recomputed = item_losses(
        tiny_model, world_data, subset, ScoringConfig(timesteps=(100, 600), batch_size=5)
    )
    # Losses recomputed in other batches: the UNet's chain bound, relative to the largest loss.
    recomputed_losses = network(tiny_model.unet, float(np.nanmax(np.abs(cached.losses))))
    assert_close(cached.losses[subset], recomputed, recomputed_losses)
    # Identical noise before and after: with unchanged weights every influence is zero up to that bound.
    assert_close(influence_scores(tiny_model, world_data, subset, cached), 0, recomputed_losses)
    assert mean_item_loss(cached.losses).shape == (60, 1)
    # Only the subset encoded: the same losses, its noise keyed by the full set's ids, not by its own rows.
    encoded = prepare_training_data(tiny_model, small_world, rows=subset)
    assert encoded.num_full == 60 and encoded.full_ids([2, 0]).tolist() == [17, 41]
    assert_close(
        mean_item_loss(item_losses(tiny_model, encoded, np.arange(3), config)),
        mean_item_loss(cached.losses[subset]),
        recomputed_losses,
    )
    partial = BeforeLosses.compute(tiny_model, world_data, config, {}, item_ids=subset)
    assert_close(partial.losses[subset], cached.losses[subset], recomputed_losses)
    with pytest.raises(ValueError, match="no before losses"):
        influence_scores(tiny_model, world_data, np.array([3, 4]), partial)
    # A subset of the cached timesteps is served from the cache and equals its own recomputation.
    only_600 = BeforeLosses.load(
        tmp_path / "before", ScoringConfig(timesteps=(600,)), {"model": "m"}
    )
    assert_close(
        only_600.losses[subset],
        item_losses(tiny_model, world_data, subset, ScoringConfig(timesteps=(600,))),
        recomputed_losses,
    )
    for other in (
        ScoringConfig(timesteps=(100, 300)),
        ScoringConfig(timesteps=(100, 600), noise_seed=1),
    ):
        with pytest.raises(IncompatibleArtifactError, match="delete the cache"):
            BeforeLosses.load(tmp_path / "before", other, key={"model": "m"})
    with pytest.raises(IncompatibleArtifactError, match="delete the cache"):
        BeforeLosses.load(tmp_path / "before", config, key={"model": "other"})


def test_flipped_scoring_takes_the_larger_rise_with_its_own_noise(tiny_model, world_data):
    config = ScoringConfig(timesteps=(400,), flips=True)
    losses = item_losses(tiny_model, world_data, np.array([0, 1]), config)
    assert losses.shape[:2] == (2, 2)
    # The flipped image with its own noise: another loss, well beyond the chain bound of one.
    assert apart(losses[:, 0], losses[:, 1], network(tiny_model.unet, float(np.nanmax(losses))))
    before = BeforeLosses(losses, config, key={})
    layers = select_linear_layers(tiny_model.unet, "kv")
    delta = {n: 0.05 * torch.randn_like(layer.weight) for n, layer in layers.items()}
    with weights_shifted(layers, delta):
        after = mean_item_loss(item_losses(tiny_model, world_data, np.array([0, 1]), config))
        tau = influence_scores(tiny_model, world_data, np.array([0, 1]), before)
    # The after losses computed twice (by the scorer, and here): the chain bound, relative to the largest loss.
    within = network(tiny_model.unet, float(np.nanmax(np.abs(losses))))
    assert_close(tau, (after - mean_item_loss(losses)).max(axis=1), within)


def _garbage_in_padding(data):
    """A copy of ``data`` whose padded token slots hold random states (the mask is unchanged)."""
    from dataclasses import replace

    states = data.states[:].clone()
    padded = data.mask == 0
    assert padded.any()  # the world's captions are padded to 24 slots
    states[padded] = torch.randn(
        int(padded.sum()), states.shape[-1], generator=torch.Generator().manual_seed(9)
    )
    return replace(data, states=states)


@pytest.mark.parametrize("padding", ["excluded", "included"])
def test_padded_token_slots_change_nothing_in_a_mask_aware_fisher(tiny_model, world_data, padding):
    """The attention never reads padded slots, so their states must not move the Fisher: with padding excluded,
    garbage there leaves the preconditioned step unchanged; counted (the old behaviour), it moves it."""
    config = FisherConfig(kind="ekfac", num_samples=64, batch_size=32, padding=padding)
    clean = fit_fisher(tiny_model, world_data, config)
    noisy = fit_fisher(tiny_model, _garbage_in_padding(world_data), config)
    gen = torch.Generator().manual_seed(0)
    grads = {
        name: torch.randn(layer.weight.shape, generator=gen)
        for name, layer in select_linear_layers(tiny_model.unet).items()
    }
    a, b = clean.precondition(grads), noisy.precondition(grads)
    worst = max(float((a[n] - b[n]).norm() / a[n].norm()) for n in grads)
    if padding == "excluded":
        # Exact, not within rounding: padded slots enter both fits only as exact zeros (attention weights that
        # underflow to 0, masked covariance terms), the two fits run the same operations on the same shapes,
        # and adding a zero changes no float sum.
        assert worst == 0
    else:
        assert worst > 1e-2  # the defect the mask-aware covariances remove (measured 0.58)


def test_a_fisher_of_another_model_is_refused(
    tiny_model, test_preset, world_data, small_world, tmp_path, caplog
):
    from fastgda.diffusion import TextToImageModel
    from fastgda.unlearning import Fisher, Teacher

    fisher = fit_fisher(
        tiny_model,
        world_data,
        FisherConfig(kind="diagonal", num_samples=16, batch_size=16),
    )
    fisher.save(tmp_path / "fisher")
    loaded = Fisher.load(tmp_path / "fisher")
    assert (
        loaded.extra["model_sha256"] == fisher.extra["model_sha256"]
        and loaded.config.padding == "excluded"
    )
    Teacher(tiny_model, small_world, loaded, data=world_data)  # its own model: accepted
    other = TextToImageModel.from_preset(test_preset, seed=1)  # same preset, other weights
    with pytest.raises(
        IncompatibleArtifactError, match="Fisher was fitted on a model whose weights digest"
    ):
        Teacher(other, small_world, loaded, data=world_data)
    # A Fisher saved before the digest and the padding setting existed: it loads as it was made, unchecked.
    import json

    manifest_path = tmp_path / "fisher" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["model_sha256"], manifest["config"]["padding"]
    manifest_path.write_text(json.dumps(manifest))
    old = Fisher.load(tmp_path / "fisher")
    assert old.config.padding == "included"
    with caplog.at_level("WARNING"):
        Teacher(other, small_world, old, data=world_data)
    assert "records no model digest" in caplog.text


def test_item_rows_lay_out_every_items_rows_as_the_loops_would():
    """The vectorised layout against the nested loops it replaced: item, then flip, caption, timestep."""
    from fastgda.unlearning.rows import item_rows

    counts = np.array([3, 1, 0, 2])
    for flips in (1, 2):
        expected = [(p, f, c, t) for p, count in enumerate(counts) for f in range(flips)
                    for c in range(count) for t in range(4)]  # fmt: skip
        assert item_rows(counts, 4, flips).tolist() == [list(r) for r in expected]
    assert item_rows(np.zeros(0, np.int64), 4).shape == (0, 4)


def test_a_before_loss_store_computes_only_what_no_worker_holds_yet(
    tiny_model, world_data, tmp_path
):
    """Two stores over one folder (two workers): each computes only the ids neither has written; a third reads
    both's chunks; the losses are those of a dense computation, within the UNet's chain bound."""
    from fastgda.unlearning import BeforeLossStore

    config = ScoringConfig(timesteps=(100, 600), batch_size=7)
    one = BeforeLossStore.open(tmp_path / "store", config, {"model": "m"}, 60)
    two = BeforeLossStore.open(tmp_path / "store", config, {"model": "m"}, 60)
    assert one.ensure(tiny_model, world_data, [1, 2, 3]) == 3
    assert two.ensure(tiny_model, world_data, [3, 4]) == 1  # 3 read from the first worker's chunk
    three = BeforeLossStore.open(tmp_path / "store", config, {"model": "m"}, 60)
    assert len(three) == 4 and three.held([1, 2, 3, 4]).all() and not three.held([0, 59]).any()
    dense = item_losses(tiny_model, world_data, np.array([1, 2, 3]), config)
    within = network(tiny_model.unet, float(np.abs(dense).max()))
    assert_close(three.rows([3, 1, 2]), dense[[2, 0, 1]], within)
    with pytest.raises(ValueError, match="no before losses"):
        three.rows([0, 1])
    with pytest.raises(IncompatibleArtifactError, match="delete the cache"):
        BeforeLossStore.open(tmp_path / "store", config, {"model": "other"}, 60)
