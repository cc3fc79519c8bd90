"""The influence family: per-item gradients, stored features, EK-FAC influence, TRAK/D-TRAK kernels, runs."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from _tolerance import F16, F32, F64, Tolerance, apart, assert_close, gamma, network, rounded, sums
from fastgda.errors import ConfigError, IncompatibleArtifactError

SCORING_TIMESTEPS = (0, 400, 800)


def _spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture(scope="module")
def loaded(teacher_inputs):
    """The tiny saved model, its training data encoded, the K/V layers, and the query set."""
    from fastgda.data import open_dataset
    from fastgda.diffusion import TextToImageModel
    from fastgda.diffusion.queries import QuerySet
    from fastgda.diffusion.training import prepare_training_data
    from fastgda.unlearning.layers import select_linear_layers

    model = TextToImageModel.from_pretrained(teacher_inputs["model_dir"])
    data = prepare_training_data(model, open_dataset(teacher_inputs["data_dir"]))
    layers = select_linear_layers(model.unet, "kv")
    return model, data, layers, QuerySet(teacher_inputs["queries_dir"])


@pytest.fixture(scope="module")
def built(teacher_inputs, tmp_path_factory):
    """Gradient features of the small world: full EK-FAC gradients, D-TRAK projected to 32 (N = 60 > D: the
    primal kernel) and to 128 (N <= D: the dual one)."""
    from fastgda.influence import build_gradient_features, recipe

    root = tmp_path_factory.mktemp("influence")
    args = (teacher_inputs["model_dir"], teacher_inputs["data_dir"])
    # Three timesteps instead of the recipes' five and ten keep the builds short.
    ekfac = replace(recipe("ekfac"), timesteps=SCORING_TIMESTEPS)
    dtrak = replace(recipe("dtrak"), timesteps=(100, 500, 900))
    return {
        "root": root,
        "ekfac": build_gradient_features(*args, root / "ekfac", ekfac, 25),
        "dtrak32": build_gradient_features(
            *args, root / "dtrak32", replace(dtrak, projection_dim=32), 25
        ),
        "dtrak128": build_gradient_features(
            *args, root / "dtrak128", replace(dtrak, projection_dim=128), 25
        ),
    }


@pytest.mark.parametrize("output", ["loss", "square"])
def test_item_gradients_match_autograd_per_item(loaded, output):
    """The hooks' batched per-row gradients equal autograd's gradient of each item's own mean output."""
    from fastgda.influence import GradientConfig, item_gradients
    from fastgda.influence.gradients import _output
    from fastgda.unlearning.noise import keyed_noise

    model, data, layers, _ = loaded
    config = GradientConfig(output=output, timesteps=(0, 300, 700))
    ids = np.array([0, 5, 17])
    batched = item_gradients(model, layers, data, ids, config, rows_per_pass=4)
    # A subset of the data (its rows 1, 2, 3 are items 0, 5, 17) gives the same gradients: keyed by item id.
    subset = item_gradients(model, layers, data.subset([3, 0, 5, 17]), [1, 2, 3], config)
    # Forward and backward passes in other batch shapes: the chain bound, twice over (backward mirrors forward).
    assert_close(subset, batched, 2 * network(model.unet, float(batched.abs().max())))
    for row, item in enumerate(ids):
        count = int(data.caption_count[item])
        caps = data.caption_start[item] + torch.arange(count)
        keys = [(int(item), c, t, 0) for c in range(count) for t in config.timesteps]
        n = len(keys)
        noise = keyed_noise(tuple(data.x0.shape[1:]), config.noise_seed, keys)
        x0 = data.x0[[int(item)] * n]
        states = data.states[caps.repeat_interleave(len(config.timesteps))]
        mask = (
            None if data.mask is None else data.mask[caps.repeat_interleave(len(config.timesteps))]
        )
        t = torch.tensor(list(config.timesteps) * count)
        mean = _output(model, x0, states, mask, noise, t, output).mean()
        direct = torch.autograd.grad(mean, [layer.weight for layer in layers.values()])
        direct = torch.cat([g.flatten() for g in direct])
        # Forward and backward in another batch shape, per-row sums over positions: the chain bound, twice.
        assert_close(batched[row], direct, 2 * network(model.unet, float(direct.abs().max())))


def test_ekfac_influence_is_the_odd_part_of_the_teachers_score(teacher_inputs, loaded, built):
    """EK-FAC influence is the first-order term of the teacher's loss rise: the odd part of the score,
    (τ(+Δ) − τ(−Δ)) / 2, first order up to O(α³), equals it item by item (Spearman > 0.99 over the 60 items,
    within 5% of the largest score; measured 0.99994 and 0.2%), computed from stored gradients instead of a
    scoring pass. α = 1e-5: the random tiny model and its 32-sample diagonal Fisher take large steps."""
    from fastgda.influence import InfluenceConfig, InfluenceScorer
    from fastgda.unlearning import Fisher, ScoringConfig, UnlearnConfig
    from fastgda.unlearning.scoring import BeforeLosses, influence_scores
    from fastgda.unlearning.unlearner import unlearn, weights_shifted

    model, data, layers, queries = loaded
    fisher = Fisher.load(teacher_inputs["fisher_dir"])
    config = UnlearnConfig(num_pairs=40, batch_size=20, alpha=1e-5)
    scoring = ScoringConfig(timesteps=SCORING_TIMESTEPS)
    items = np.arange(len(data.x0))
    before = BeforeLosses.compute(model, data, scoring, {})
    scorer = InfluenceScorer(
        model, built["ekfac"], InfluenceConfig(method="ekfac", unlearn=config), fisher
    )
    influence = scorer.scores(queries, [0, 1])
    for q in (0, 1):
        x0, states, mask = queries.query(q)
        delta = unlearn(model, layers, fisher, x0, states, mask, config, len(items), query_key=q)
        with weights_shifted(layers, delta):
            plus = influence_scores(model, data, items, before)
        with weights_shifted(layers, {name: -d for name, d in delta.items()}):
            minus = influence_scores(model, data, items, before)
        odd = (plus - minus) / 2
        assert _spearman(odd, influence[q]) > 0.99
        # Not rounding but truncation: the odd part is the first-order term plus O(α³) (measured 0.2% of the
        # largest score); 5% leaves room for the float32 loss differences it is taken from.
        assert_close(
            odd, influence[q], Tolerance(0.05 * np.abs(odd).max(), why="first order + O(α³)")
        )


@pytest.mark.parametrize("name", ["dtrak32", "dtrak128"])
def test_kernel_scores_match_the_formula(loaded, built, name):
    """Both kernel forms (dual for N <= D, primal otherwise) give φ_qᵀ (ΦᵀΦ + λI)⁻¹ Φᵀ, computed here directly."""
    from fastgda.influence import InfluenceConfig, InfluenceScorer

    model, _, _, queries = loaded
    features = built[name]
    scorer = InfluenceScorer(model, features, InfluenceConfig(method="dtrak", damping=0.3))
    form, _, lam = scorer.kernel()
    assert form == ("primal" if len(features) > features.dim else "dual")
    phi = features.matrix().double()
    vectors = scorer._query_vectors(queries, [0, 2]).double()
    expected = vectors @ torch.linalg.solve(
        phi.T @ phi + lam * torch.eye(phi.shape[1], dtype=torch.float64), phi.T
    )
    got = scorer.scores(queries, [0, 2])
    # The scorer's one float32 step is a product with Φ over D terms (its other operand cast to float32 first):
    # within γ_{D+1}·(|Φ| |x|) of exact. In the primal form x = the float64 weights and that is the score's error;
    # in the dual form x = φ_q and the error vector e then passes through (ΦΦᵀ + λI)⁻¹, which scales a vector
    # by at most 1/λ_min. Everything else is float64 (u = 2^-53 times the kernel's condition number).
    gram = phi @ phi.T if form == "dual" else phi.T @ phi
    kernel = gram + lam * torch.eye(len(gram), dtype=torch.float64)
    eigenvalues = torch.linalg.eigvalsh(kernel)
    if form == "primal":
        weights = torch.linalg.solve(kernel, vectors.T).T  # (Q, D)
        bound = gamma(features.dim + 1, F32) * (weights.abs() @ phi.abs().T)  # (Q, N)
    else:
        e = gamma(features.dim + 1, F32) * (vectors.abs() @ phi.abs().T)  # (Q, N)
        bound = e.norm(dim=1, keepdim=True) / eigenvalues.min() * torch.ones_like(e)
    float64 = F64 * float(eigenvalues.max() / eigenvalues.min()) * len(gram) * expected.abs()
    assert_close(got, expected, Tolerance(float(2 * (bound + float64).max()), why="see above"))


def test_float16_storage_keeps_the_ranking(loaded, built):
    """Stored float16 unit rows x float32 norms rank like the float32 gradients they came from."""
    from fastgda.influence import item_gradients

    model, data, layers, _ = loaded
    features = built["ekfac"]
    exact = item_gradients(model, layers, data, np.arange(len(features)), features.config)
    # The build's gradients and these come from the same passes in other batch shapes (the chain bound, forward
    # and backward, relative to the largest element), and a norm moves by at most the error vector's norm.
    recomputed = 2 * network(model.unet, float(exact.abs().max()))
    norm_error = recomputed.atol * float(np.sqrt(exact.shape[1])) + sums(exact.shape[1], 1).atol
    assert_close(
        features.norms, exact.norm(dim=1), Tolerance(norm_error, why="chain bound x sqrt(D)")
    )
    probe = torch.randn(3, exact.shape[1], generator=torch.Generator().manual_seed(0))
    stored, direct = features.dot(probe).numpy(), (probe.double() @ exact.double().T).numpy()
    for row in range(3):
        assert _spearman(stored[row], direct[row]) > 0.999
    # Each stored element is one float16 rounding of a unit row (u16 relative), the product sums D float32 terms
    # (γ_D), and the rows were computed by other passes (the chain bound times Σ|probe|).
    terms = (probe.double().abs() @ exact.double().abs().T).numpy()  # Σ|probe_i g_i| per score
    rows = (F16 + 2 * gamma(exact.shape[1], F32)) * terms + recomputed.atol * np.abs(
        probe.numpy()
    ).sum(axis=1, keepdims=True)
    assert_close(stored, direct, Tolerance(float(rows.max()), why="float16 rows, γ_D, chain bound"))


def test_projection_is_the_same_matrix_in_any_batch():
    """TRAK's seeded projection does not depend on how rows are batched, and keeps inner products on average."""
    from fastgda.influence import Projector

    x = torch.randn(6, 3000, generator=torch.Generator().manual_seed(1))
    projector = Projector(3000, 2048, seed=7)
    whole, part = projector(x), Projector(3000, 2048, seed=7)(x[2:4])
    # One float32 product over 3,000 terms in another batch shape (and a scaling), of Σ|x_i r_i| at most:
    matrix = projector(torch.eye(3000))  # (3000, 2048): R / sqrt(Z) itself
    within = sums(3001, float((x.abs() @ matrix.abs()).max()))
    assert_close(whole[2:4], part, within)
    assert apart(Projector(3000, 2048, seed=8)(x[2:4]), part, within)
    exact, approx = (x @ x.T).diagonal(), (whole @ whole.T).diagonal()
    # Not rounding but sampling (JL): a squared norm projected to k = 2048 has relative standard deviation
    # sqrt(2/k) = 3.1%; 0.15 is 4.8 of them.
    assert_close(approx, exact, Tolerance(0, 0.15, why="JL: 4.8 standard deviations at k = 2048"))


def test_builds_resume_and_refuse_mismatches(teacher_inputs, built, tmp_path):
    """A build interrupted after some chunks finishes only the rest and equals an uninterrupted one; other
    settings over the same chunks are refused; features of another model are refused by the scorer."""
    from fastgda.diffusion import TextToImageModel
    from fastgda.influence import InfluenceConfig, InfluenceScorer, build_gradient_features
    from fastgda.influence.store import write_chunk

    config = replace(built["dtrak32"].config)
    out = tmp_path / "features"
    parts = tmp_path / "features.parts"
    parts.mkdir()
    # A finished chunk from "before the crash": chunk 1 holds these rows, so the build must keep them.
    marker = torch.full((25, 32), 3.0)
    args = (teacher_inputs["model_dir"], teacher_inputs["data_dir"])
    (parts / "build.json").write_text("{}")  # other settings
    with pytest.raises(IncompatibleArtifactError, match="other settings"):
        build_gradient_features(*args, out, config, chunk_size=25)
    (parts / "build.json").unlink()
    write_chunk(parts, 1, marker)
    resumed = build_gradient_features(*args, out, config, chunk_size=25)
    # Stored as float16 unit rows times float32 norms: one float16 and one float32 rounding.
    assert_close(resumed.matrix(25, 50), np.full((25, 32), 3.0), rounded(F16) + rounded(F32))
    whole = built["dtrak32"]
    # Rows recomputed by the same passes may differ by the chain bound, and each side was rounded to float16.
    model = TextToImageModel.from_pretrained(teacher_inputs["model_dir"])
    rebuilt = 2 * rounded(F16) + 2 * network(model.unet, float(whole.matrix().abs().max()))
    assert_close(resumed.matrix(0, 25), whole.matrix(0, 25), rebuilt)
    assert_close(resumed.matrix(50, 60), whole.matrix(50, 60), rebuilt)
    assert not parts.exists()  # the parts are gone once the artifact is written

    manifest = (teacher_inputs["model_dir"] / "manifest.json").read_text()
    preset = json.loads(manifest)["config"]["preset"]
    from fastgda.diffusion import ModelPreset

    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in preset.items()}
    stranger = TextToImageModel.from_preset(ModelPreset(**fields), seed=5)
    with pytest.raises(IncompatibleArtifactError, match="rebuild them for this model"):
        InfluenceScorer(stranger, whole, InfluenceConfig(method="dtrak"))
    with pytest.raises(ConfigError, match="needs the Fisher"):
        model = TextToImageModel.from_pretrained(teacher_inputs["model_dir"])
        InfluenceScorer(model, built["ekfac"], InfluenceConfig(method="ekfac"))
    with pytest.raises(ConfigError, match="not one of"):
        InfluenceConfig(method="tracin")


def test_cli_ranks_resumably(teacher_inputs, built, tmp_path):
    """`influence rank` ranks one query, then the rest on a rerun (the first result kept), writes the teacher's
    ground-truth format, and a resumed run with other settings is refused."""
    from fastgda.ground_truth import GroundTruth

    out = tmp_path / "run"
    base = [
        sys.executable, "-m", "fastgda.cli", "influence", "rank", "--method", "dtrak",
        "--model", str(teacher_inputs["model_dir"]), "--features", str(built["root"] / "dtrak128"),
        "--queries", str(teacher_inputs["queries_dir"]), "--out", str(out), "--device", "cpu", "--json",
    ]  # fmt: skip
    first = subprocess.run(base + ["--query-ids", "1"], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["shape"] == [1, 60]
    kept = (out / "results" / "q_000001.npz").stat().st_mtime_ns
    second = subprocess.run(base, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert (out / "results" / "q_000001.npz").stat().st_mtime_ns == kept
    truth = GroundTruth.load(out / "ground_truth")
    assert truth.ids.shape == (3, 60) and list(truth.query_ids) == [0, 1, 2]
    assert all(sorted(row) == list(range(60)) for row in truth.ids.tolist())
    assert np.all(np.diff(truth.scores, axis=1) <= 0)
    refused = subprocess.run(base + ["--damping", "2"], capture_output=True, text=True)
    assert refused.returncode != 0 and "other ['config']" in refused.stderr


@pytest.mark.ray
def test_an_influence_job_runs_on_a_ray_cluster_as_it_does_here(teacher_inputs, built, tmp_path):
    """The job protocol's executor: batches of queries ranked by Ray actors (each opening the job from its
    folders) give the rankings this process gives, each batch scored as one matrix product."""
    ray = pytest.importorskip("ray")
    from _tolerance import assert_same_ranking
    from fastgda.executors import make_executor
    from fastgda.influence import InfluenceConfig, InfluenceJob

    def opened(name: str) -> InfluenceJob:
        job = InfluenceJob.open(
            teacher_inputs["model_dir"], built["root"] / "dtrak32", teacher_inputs["queries_dir"],
            tmp_path / name, InfluenceConfig("dtrak"),
        )  # fmt: skip
        job.batch = 2  # two units of work for three queries
        return job

    here = opened("here")
    here.run()
    try:
        there = opened("ray")
        there.run(executor=make_executor("ray", workers=2))
    finally:
        ray.shutdown()
    a, b = here.merge(), there.merge()
    assert there.pending() == [] and list(b.query_ids) == [0, 1, 2]
    # The same arithmetic in two processes with other thread counts: a query's gradient is one backward pass
    # through the network (its chain bound, relative to the largest score), then a product over D = 32 projected
    # coordinates (one sum's bound); items swap only where scores tie within that.
    from _tolerance import network, sums
    from fastgda.diffusion import TextToImageModel

    model = TextToImageModel.from_pretrained(teacher_inputs["model_dir"])
    scale = float(np.abs(a.scores).max())
    within = network(model.unet, scale) + sums(32, scale)
    assert_same_ranking(a.ids, a.scores, b.ids, b.scores, within)
