"""Leave-K-out retraining on a tiny real setup: plans, shared retrains, resumption, exact removal, metrics."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from _tolerance import F32, F64, Tolerance, apart, assert_close, gamma, network, retrained, sums
from fastgda import FastGDAError, IncompatibleArtifactError
from fastgda.counterfactual import (
    RANDOM,
    CounterfactualConfig,
    CounterfactualJob,
    CounterfactualResult,
    retrain_key,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(small_world, test_preset, tmp_path_factory):
    """A tiny model trained for a few steps (so it records its recipe) and three queries sampled from it."""
    from fastgda.diffusion import DiffusionTrainConfig, TextToImageModel, train_diffusion
    from fastgda.diffusion.queries import SamplerConfig, write_query_set

    root = tmp_path_factory.mktemp("cf")
    recipe = DiffusionTrainConfig(steps=30, batch_size=16, warmup_steps=5, checkpoint_every=15)
    model = TextToImageModel.from_preset(test_preset, seed=0)
    train_diffusion(model, small_world, root / "model", recipe)
    prompts = ["a large cyan circle in the center", "a small red square", "a big magenta triangle"]
    write_query_set(model, prompts, root / "queries", sampler=SamplerConfig(num_steps=4))
    return root


def rankings(n: int, seed: int) -> np.ndarray:
    return np.stack([np.random.default_rng(seed + q).permutation(n) for q in range(3)])


def test_leave_k_out_plans_shares_resumes_and_measures(
    trained, small_world, tmp_path, tmp_path_factory
):
    n = len(small_world)
    ranked = rankings(n, 0)
    methods = {
        "method a": ranked,
        "method b (same top-K)": ranked.copy(),
        "method c": rankings(n, 9),
    }
    config = CounterfactualConfig(k=5, steps=12, random_seeds=(0, 1), generate_steps=4)

    def job(cfg=config):
        return CounterfactualJob(
            trained / "model", small_world.root, trained / "queries", methods, tmp_path, cfg
        )  # fmt: skip

    first = job()
    plan = json.loads((tmp_path / "plan.json").read_text())
    # θ₀ + 3 queries for a and c (b shares a's retrains) + 2 random seeds shared by every query.
    assert plan["retrains"] == 1 + 3 + 3 + 2
    assert plan["sets"]["method a"] == plan["sets"]["method b (same top-K)"]
    assert plan["recipe"]["steps"] == 12 and plan["recipe"]["warmup_steps"] == 1
    # θ₀ and the random seeds first, then query by query: a run stopped part-way has every method on its
    # first queries.
    by_query = [
        retrain_key(first.recipe, sorted(r[q, :5].tolist()))
        for q in range(3)
        for r in (ranked, methods["method c"])
    ]
    assert list(first.plan)[3:] == by_query
    assert list(first.plan)[0] == first.baseline_key
    first.run()
    assert first.pending() == []

    # Each retrain trained on exactly the data minus its removed set.
    key = retrain_key(first.recipe, sorted(ranked[1, :5].tolist()))
    manifest = json.loads((tmp_path / "retrains" / key / "model" / "manifest.json").read_text())
    assert manifest["training"]["data"]["size"] == n - 5
    removed = json.loads((tmp_path / "retrains" / key / "removed.json").read_text())["removed"]
    assert removed == sorted(ranked[1, :5].tolist())

    # Interrupted work: only the missing retrain is redone.
    import shutil

    shutil.rmtree(tmp_path / "retrains" / key)
    untouched = tmp_path / "retrains" / first.baseline_key / "model" / "manifest.json"
    before = untouched.stat().st_mtime_ns
    again = job()
    assert again.pending() == [key]
    # An unfinished run reports the queries it has finished, every method on the same ones (paired), apart
    # from the full result.
    assert again.finished_queries() == [0, 2]
    with pytest.raises(FastGDAError, match="unfinished"):
        again.merge()
    partial = again.merge(partial=True).per_query
    assert {len(v) for m in partial.values() for v in m.values()} == {2}
    stored = json.loads((tmp_path / "counterfactual.partial.json").read_text())
    assert (
        stored["evaluated_query_rows"] == [0, 2] and not (tmp_path / "counterfactual.json").exists()
    )
    again.run()
    assert again.pending() == [] and untouched.stat().st_mtime_ns == before
    # Each retrain measured itself as it finished, so its figures outlive its weights: a run carried to another
    # machine (or kept in version control) without them is finished, and evaluates from the measurements.
    name = again.measurement.cache_name()
    assert all((tmp_path / "retrains" / k / name).is_file() for k in again.plan)
    weightless = retrain_key(again.recipe, sorted(rankings(n, 9)[0, :5].tolist()))
    shutil.rmtree(tmp_path / "retrains" / weightless / "model")
    again = job()
    assert again.pending() == []
    # The measurements alone, exported and imported into an empty run folder, finish the run there.
    from fastgda.counterfactual import export_measurements, import_measurements

    kept, elsewhere = tmp_path_factory.mktemp("kept") / "m", tmp_path_factory.mktemp("elsewhere")
    assert export_measurements(tmp_path, kept) == len(again.plan)
    assert import_measurements(kept, elsewhere) == len(again.plan)
    carried = CounterfactualJob(
        trained / "model", small_world.root, trained / "queries", methods, elsewhere, config
    )  # fmt: skip
    assert carried.pending() == [] and not list(elsewhere.rglob("model"))

    result = again.merge().summary()
    assert set(result) == {"method a", "method b (same top-K)", "method c", RANDOM}
    for metric, value in result[
        "method a"
    ].items():  # one shared retrain: the same figures, bit for bit
        assert result["method b (same top-K)"][metric]["mean"] == value["mean"]
    saved = json.loads((tmp_path / "counterfactual.json").read_text())
    # Every figure is its definition, computed here by hand from the retrains' stored measurements: the mean loss
    # rise over the stored timesteps, the pixel MSE of the regenerations in [0, 1], and their encoders' cosine.
    from fastgda.encoders import make_encoder

    encoder = make_encoder(config.similarity_encoder)

    def measured(key):
        (cache,) = (tmp_path / "retrains" / key).glob("eval-*.npz")
        with np.load(cache) as stored:
            return stored["losses"].astype(np.float64), stored["images"]

    base_losses, base_images = measured(again.baseline_key)
    base_code = encoder.encode(base_images)
    for method, removed in [
        ("method c", [rankings(n, 9)[q, :5] for q in range(3)]),
        (RANDOM, None),
    ]:
        for q in range(3):
            sets = again.sets[RANDOM] if removed is None else [sorted(removed[q].tolist())]
            by_hand, loss_scale = [], 0.0
            for ids in sets:
                losses, images = measured(retrain_key(again.recipe, ids))
                code = encoder.encode(images)
                a, b = images[q] / 255.0, base_images[q] / 255.0
                cosine = (
                    code[q] @ base_code[q] / np.linalg.norm(code[q]) / np.linalg.norm(base_code[q])
                )
                by_hand.append(
                    [losses[q].mean() - base_losses[q].mean(), ((a - b) ** 2).mean(), cosine]
                )
                loss_scale = max(
                    loss_scale, np.abs(losses[q]).mean() + np.abs(base_losses[q]).mean()
                )
            expected = np.mean(by_hand, axis=0)
            got = [
                saved["per_query"][method][m][q] for m in ("delta_loss", "delta_mse", "delta_sim")
            ]
            # The job computes in float32, this test in float64. ΔL: two float32 means of T losses (γ_{T+1}
            # of the mean |loss| each) and their difference rounded once. ΔG-MSE: pixels x/255 rounded (u
            # each, so a − b within 2u, relative 2u·255 for pixels that differ at all), squared, averaged
            # over P values (γ_P). ΔG-sim: the encoder run again on the same batch (its chain bound ε, relative
            # to each side's norm, moves a cosine by 2ε per side), two normalisations and a product over its
            # width (γ_d each, of unit vectors).
            num_t, pixels, width = base_losses.shape[1], base_images[q].size, encoder.dim
            tolerances = [
                sums(num_t + 1, loss_scale) + Tolerance(F32 * abs(expected[0]), why="rounded once"),
                Tolerance(
                    0, (2 * 2 * 255 + 1) * F32 + gamma(pixels, F32), why="pixels, squares, mean"
                ),
                sums(width, 1.0) * 3 + 4 * network(encoder.model, 1.0),
            ]
            for name, value, want, within in zip(
                ["ΔL", "ΔMSE", "Δsim"], got, expected, tolerances, strict=True
            ):
                assert_close(value, want, within, f"{method} {q} {name}")
    assert len(saved["per_query"]["method c"]["delta_loss"]) == 3
    for (
        method,
        metrics,
    ) in partial.items():  # the partial figures are the full ones on their queries
        for metric, values in metrics.items():
            full = saved["per_query"][method][metric]
            assert values == [full[0], full[2]]  # the same measurements, the same arithmetic
    for (
        method,
        metrics,
    ) in carried.merge().per_query.items():  # the same figures, read from the copies
        for metric, values in metrics.items():
            assert values == saved["per_query"][method][metric]  # the same measurements, copied
    # A changed measurement is refused, never read.
    victim = next(kept.rglob("eval-*.npz"))
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(IncompatibleArtifactError, match="SHA-256"):
        import_measurements(kept, tmp_path_factory.mktemp("third"))
    # A stored evaluation is reused for the same plan only.
    assert job().cached_result().per_query == saved["per_query"]
    assert job(dataclasses.replace(config, k=4)).cached_result() is None


def test_retraining_is_deterministic_so_differences_come_from_removal(
    trained, small_world, tmp_path
):
    from fastgda.counterfactual import retrain_start
    from fastgda.diffusion import DiffusionTrainConfig, train_diffusion

    recipe = DiffusionTrainConfig(steps=6, batch_size=8, warmup_steps=1)
    weights = []
    for name in ("a", "b"):
        model = retrain_start(trained / "model", seed=0)
        train_diffusion(model, small_world.without([]), tmp_path / name, recipe)
        weights.append(torch.cat([p.flatten() for p in model.unet.parameters()]))
    assert_close(weights[0], weights[1], _retrained(model, recipe))


def test_coupled_retrains_differ_from_the_full_run_only_through_removed_items(
    trained, small_world, tmp_path
):
    """Removing an item the full run never drew leaves coupled (by item id) weights exactly equal to θ₀; the
    uncoupled retrain, whose rows shift, differs everywhere."""
    from fastgda.counterfactual import retrain_start
    from fastgda.diffusion import DiffusionTrainConfig, train_diffusion
    from fastgda.diffusion.training import prepare_training_data

    steps, batch = 6, 8
    drawn = set()
    for step in range(steps):
        gen = torch.Generator().manual_seed(step)  # seed 0: the stream draw_batch starts with
        drawn |= set(torch.randint(0, len(small_world), (batch,), generator=gen).tolist())
    never = next(i for i in range(len(small_world)) if i not in drawn)
    kept = [i for i in range(len(small_world)) if i != never]
    full = prepare_training_data(retrain_start(trained / "model", seed=0), small_world)

    def train(name, removed, coupled):
        recipe = DiffusionTrainConfig(
            steps=steps, batch_size=batch, warmup_steps=1, draw_by_item_id=coupled
        )
        model = retrain_start(trained / "model", seed=0)
        data = full if not removed else full.subset(kept)
        train_diffusion(model, small_world.without(removed), tmp_path / name, recipe, data=data)
        return torch.cat([p.flatten() for p in model.unet.parameters()])

    theta0 = train("full", [], True)
    model = retrain_start(trained / "model", seed=0)
    within = _retrained(model, DiffusionTrainConfig(steps=steps, batch_size=batch, warmup_steps=1))
    assert_close(train("coupled", [never], True), theta0, within)
    assert apart(train("by-position", [never], False), theta0, within)

    config = CounterfactualConfig(k=5, steps=12, random_seeds=(0,), generate_steps=4)
    methods = {"a": rankings(len(small_world), 0)}

    def plan(cfg, out):
        CounterfactualJob(
            trained / "model",
            small_world.root,
            trained / "queries",
            methods,
            out,
            cfg,
        )
        return json.loads((out / "plan.json").read_text())  # fmt: skip

    plain, coupled = (
        plan(config, tmp_path / "p"),
        plan(dataclasses.replace(config, coupled=True), tmp_path / "c"),
    )
    assert coupled["recipe"]["draw_by_item_id"] and not plain["recipe"].get("draw_by_item_id")
    # Coupled and uncoupled retrains are cached apart, θ₀ included.
    assert coupled["baseline"] != plain["baseline"]
    assert not set(coupled["sets"]["a"]) & set(plain["sets"]["a"])


def _retrained(model, recipe) -> Tolerance:
    """Two runs of ``recipe`` from the same start on the same batches: gradients within the UNet's chain bound
    (forward and backward, relative), through ``recipe.steps`` AdamW steps."""
    return retrained(recipe.steps, recipe.lr, 2 * network(model.unet, 1.0))


def test_subset_of_the_full_encoding_equals_encoding_the_subset(trained, small_world):
    """Retrains encode the full set once and take subsets; that must be the same data as encoding each subset."""
    from fastgda.counterfactual import retrain_start
    from fastgda.diffusion.training import prepare_training_data

    model = retrain_start(trained / "model", seed=0)
    removed = [0, 3, 4, len(small_world) - 1]
    kept = [i for i in range(len(small_world)) if i not in removed]
    subset = prepare_training_data(model, small_world).subset(kept)
    direct = prepare_training_data(model, small_world.without(removed))
    # x0 is pixels mapped exactly (x/127.5 − 1, the same elementwise operations); the text states come from
    # the frozen encoder run on other batches: its chain bound, relative to the states' largest value.
    torch.testing.assert_close(subset.x0[:], direct.x0[:], rtol=0, atol=0)
    states = direct.states[:]
    within = network(model.text_encoder, float(states.abs().max()))
    assert_close(subset.states[:], states, within)
    for name in ("caption_start", "caption_count"):
        assert torch.equal(getattr(subset, name), getattr(direct, name)), name
    if direct.mask is not None:
        assert torch.equal(subset.mask, direct.mask)


def test_method_rankings_pick_baselines_and_match_a_full_sort(rng):
    from fastgda import FastGDAError
    from fastgda.counterfactual import method_rankings
    from fastgda.features import Features

    parts = [
        {"name": "effnet", "modality": "image", "dim": 6, "offset": 0},
        {"name": "minilm", "modality": "text", "dim": 4, "offset": 6},
    ]
    items = Features(
        rng.normal(size=(50, 10)).astype(np.float32), np.arange(50), "effnet+minilm", parts
    )
    queries = Features(
        rng.normal(size=(3, 10)).astype(np.float32), np.arange(3), "effnet+minilm", parts
    )
    teacher = np.stack([rng.permutation(50) for _ in range(3)])
    names = {
        b: set(method_rankings(queries, items, teacher, k=5, baselines=b))
        for b in ("all", "parts", "text")
    }
    assert names["text"] == {"teacher", "untuned text (minilm)"}
    assert names["parts"] == {"teacher", "untuned text (minilm)", "untuned image (effnet)"}
    assert len(names["all"]) == 4  # + the concatenation
    ranked = method_rankings(queries, items, teacher, k=5, baselines="text")
    np.testing.assert_array_equal(ranked["teacher"], teacher[:, :5])
    text_q, text_i = queries.part("minilm"), items.part("minilm")
    cosine = (text_q / np.linalg.norm(text_q, axis=1, keepdims=True)) @ (
        text_i / np.linalg.norm(text_i, axis=1, keepdims=True)
    ).T
    np.testing.assert_array_equal(
        ranked["untuned text (minilm)"], np.argsort(-cosine, axis=1)[:, :5]
    )
    with pytest.raises(FastGDAError, match="parts are"):
        method_rankings(queries, items, teacher, k=5, baselines="audio")


def test_ordering_states_each_claim_with_its_paired_difference():
    result = CounterfactualResult(
        per_query={
            "teacher": {"delta_loss": [4e-3, 2e-3, 3e-3]},
            "ranker": {"delta_loss": [1e-3, 3e-3, 1e-3]},
            "untuned text (minilm)": {"delta_loss": [1.2e-3, 2.6e-3, 1.1e-3]},
            "untuned image (effnet)": {"delta_loss": [0.5e-3, 0.5e-3, 0.5e-3]},
            "random": {"delta_loss": [-1e-3, -1e-3, -1e-3]},
        }
    )
    checks = result.ordering("ranker")
    assert [c.holds for c in checks] == [True, True, True, False]
    assert result.orders("ranker") and not result.orders("teacher (missing)")
    text = result.to_text(ranker="ranker")
    assert "ordering on mean delta loss:" in text and text.count("\n- ") == len(checks)
    assert checks[1].claim == "ranker > untuned text (minilm)"
    mean, se = checks[1].paired_difference
    # A float64 mean of three paired differences of numbers of order 1e-3: a few roundings each.
    assert_close(mean, 0.1e-3 / 3, sums(6, 3 * 3e-3, F64))
    assert se > abs(mean) and not checks[1].resolved
    assert "within one s.e." in checks[1].describe() and checks[2].resolved
    assert "measured 56%" in checks[3].claim and "does NOT hold" in checks[3].describe()
    # Without untuned baselines (``--baselines none``) the ranker is compared with random removal.
    per_query = {m: v for m, v in result.per_query.items() if not m.startswith("untuned")}
    checks = CounterfactualResult(per_query=per_query).ordering("ranker")
    assert [(c.claim, c.holds) for c in checks[:2]] == [
        ("teacher >= ranker", True),
        ("ranker > random", True),
    ]
    assert len(checks) == 3
    assert_close(checks[1].paired_difference[0], 8e-3 / 3, sums(6, 3 * 4e-3, F64))
    with pytest.raises(FastGDAError, match="needs teacher, 'ranker' and random"):
        CounterfactualResult(per_query={"teacher": {"delta_loss": [1.0]}}).ordering("ranker")


def test_the_cli_verb_is_one_library_call_and_reports_its_ordering(
    trained, small_world, tmp_path, capsys
):
    """`eval counterfactual` parses and calls ``run_counterfactual``: the teacher's rankings, a stored ranking and
    the untuned text baseline, removed and retrained; then the table and, for one ranker, the ordering claims."""
    from fastgda.cli import main
    from fastgda.counterfactual import run_counterfactual
    from fastgda.features import embed_dataset
    from fastgda.ground_truth import GroundTruth

    n = len(small_world)
    items = embed_dataset(small_world.root, "pixels+minilm", tmp_path / "items")
    queries = embed_dataset(trained / "queries", "pixels+minilm", tmp_path / "q")
    scores = -np.sort(-np.random.default_rng(0).random((3, n)), axis=1).astype(np.float32)
    GroundTruth(np.arange(3), rankings(n, 0), scores, {}).save(tmp_path / "teacher")
    GroundTruth(np.arange(3), rankings(n, 5), scores, {}).save(tmp_path / "stored")
    config = CounterfactualConfig(k=3, steps=2, random_seeds=(0,), generate_steps=2,
                                  similarity_encoder="pixels")  # fmt: skip
    truth = GroundTruth.load(tmp_path / "teacher")
    result = run_counterfactual(
        trained / "model", small_world.root, trained / "queries", items, queries, truth,
        tmp_path / "cf", config, rankings={"stored": tmp_path / "stored"}, baselines="text",
        query_ids=[0, 2],
    )  # fmt: skip
    assert result.query_rows == [0, 2]
    assert set(result.per_query) == {"teacher", "stored", "untuned text (minilm)", RANDOM}
    with pytest.raises(FastGDAError, match="'teacher' is taken"):
        run_counterfactual(
            trained / "model", small_world.root, trained / "queries", items, queries, truth,
            tmp_path / "cf", config, rankings={"teacher": tmp_path / "stored"},
        )  # fmt: skip
    # The CLI over the finished run: --partial evaluates without retraining, and says what it covers.
    argv = ["eval", "counterfactual", "--model", str(trained / "model"), "--data", str(small_world.root),
            "--query-set", str(trained / "queries"), "--items", str(tmp_path / "items"),
            "--queries", str(tmp_path / "q"), "--ground-truth", str(tmp_path / "teacher"),
            "--method", f"stored={tmp_path / 'stored'}", "--baselines", "text", "--query-ids", "0,2",
            "--k", "3", "--steps", "2", "--random-seeds", "0", "--generate-steps", "2",
            "--similarity-encoder", "pixels", "--out", str(tmp_path / "cf"), "--partial"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert text.startswith("2 of 2 queries (ids [0, 2])") and "untuned text (minilm)" in text
    assert "ordering" not in text  # no ranker among the methods: no claims to check
