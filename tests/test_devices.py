"""Devices: ``--device`` resolution and the teacher on the model's device (CUDA checks are marked ``gpu``)."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import fastgda as fg
from _tolerance import BF16, Tolerance, assert_close, network, network_shape
from fastgda.devices import DeviceUnavailableError, resolve_device
from fastgda.errors import ConfigError
from fastgda.unlearning.jobs import TeacherSpec

CUDA = torch.cuda.is_available()


def test_auto_is_cuda_when_present_else_the_cpu_and_bad_names_are_refused():
    assert resolve_device("auto").type == ("cuda" if CUDA else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ConfigError, match="unknown device 'banana'; use auto"):
        resolve_device("banana")
    with pytest.raises(ConfigError, match="device 'meta' is not supported"):
        resolve_device("meta")


@pytest.mark.skipif(CUDA, reason="checks the message on a machine without CUDA")
def test_cuda_without_cuda_says_what_to_do():
    with pytest.raises(DeviceUnavailableError, match="sees no CUDA device .* use --device cpu"):
        resolve_device("cuda:0")


def test_a_teacher_job_spec_keeps_auto_for_its_workers_to_resolve():
    assert TeacherSpec("m", "d", "q", "f", "o").device == "auto"


def _ranked(teacher_inputs, device):
    """The teacher's rankings of two queries on ``device``, and the largest loss it measured before unlearning."""
    config = fg.TeacherConfig(
        unlearn=fg.UnlearnConfig(num_pairs=16, batch_size=16),
        scoring=fg.ScoringConfig(timesteps=(300, 700)),
    )
    teacher = fg.Teacher.from_folders(
        teacher_inputs["model_dir"], teacher_inputs["data_dir"], teacher_inputs["fisher_dir"], config, device=device,
    )  # fmt: skip
    truth = teacher.with_candidates(12).rank(teacher_inputs["queries_dir"], query_ids=[0, 1])
    return truth, float(np.nanmax(np.abs(teacher.before_losses.losses))), teacher.model


@pytest.fixture
def float32_on_cuda():
    """CUDA's convolutions in float32, not TF32 (10 bits, torch's default for cuDNN): the bounds below are for
    float32 arithmetic on both devices."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_the_teacher_on_cuda_ranks_as_on_the_cpu(teacher_inputs, float32_on_cuda):
    (cpu, loss, model), (cuda, _, _) = (
        _ranked(teacher_inputs, "cpu"),
        _ranked(teacher_inputs, "cuda"),
    )
    # Same pairs and noise bits on both devices; the kernels differ. A score is a difference of two mean losses,
    # each within the UNet's chain bound (relative to the largest loss) of the other device's; the top of each
    # ranking matches.
    assert_close(np.sort(cuda.scores, 1), np.sort(cpu.scores, 1), 2 * network(model.unet, loss))
    for a, b in zip(cuda.ids, cpu.ids, strict=True):
        assert len(set(a[:5]) & set(b[:5])) >= 4  # near-ties may swap places


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_the_fisher_fitted_on_cuda_is_stored_on_the_host_and_matches_the_cpu(
    teacher_inputs, float32_on_cuda
):
    from fastgda.data import open_dataset
    from fastgda.diffusion import TextToImageModel
    from fastgda.diffusion.training import prepare_training_data

    fishers = {}
    # The diagonal Fisher is basis-free, so the two devices compare element by element; EK-FAC's eigenbases
    # may rotate within near-degenerate eigenspaces, so on CUDA it is only checked to be finite and on the host.
    for device, kind in (("cpu", "diagonal"), ("cuda", "diagonal"), ("cuda", "ekfac")):
        model = TextToImageModel.from_pretrained(teacher_inputs["model_dir"]).to(device)
        data = prepare_training_data(model, open_dataset(teacher_inputs["data_dir"]))
        assert data.x0[:1].device.type == "cpu"  # the encoding lives on the host
        config = fg.FisherConfig(kind=kind, num_samples=32, batch_size=16)
        fishers[device, kind] = fg.Fisher.fit(model, data, config)
    for fisher in (fishers["cuda", "diagonal"], fishers["cuda", "ekfac"]):
        for name, value in fisher.tensors.items():
            assert value.device.type == "cpu" and bool(torch.isfinite(value).all()), name
    # A diagonal entry is a mean of squared per-sample gradients: each gradient within the chain bound ε
    # (forward and backward, relative), so each square within 2ε of itself, and the mean within 2ε of the
    # largest square it averages (at most num_samples times the largest entry).
    epsilon = 2 * network(model.unet, 1.0).atol
    for name, value in fishers["cpu", "diagonal"].tensors.items():
        within = Tolerance(2 * epsilon * 32 * float(value.abs().max()), 2 * epsilon, "squares of ε")
        assert_close(fishers["cuda", "diagonal"].tensors[name], value, within, name)


# -- precision ------------------------------------------------------------------------------------------------
def test_dtypes_resolve_and_bad_names_are_refused():
    from fastgda.devices import autocast, resolve_dtype

    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype(None) is torch.float32
    assert resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ConfigError, match="unknown dtype 'float8'; use float32, bfloat16, float16"):
        resolve_dtype("float8")
    x = torch.randn(4, 8)
    with autocast("cpu", torch.float32):
        assert (x @ x.T).dtype == torch.float32
    with autocast("cpu", torch.bfloat16):
        assert (x @ x.T).dtype == torch.bfloat16


def test_batch_sizes_fit_the_free_memory_and_the_cpu_keeps_its_default():
    from fastgda.devices import batch_size_for_memory, free_memory_bytes, measure_bytes_per_item

    assert free_memory_bytes("cpu") is None
    assert measure_bytes_per_item(lambda n: None, "cpu") is None
    assert batch_size_for_memory(None, 1e6, default=256) == 256
    # 80% of 10 GB at 10 MB an item: 800 items; the cap and the floor of one hold.
    assert batch_size_for_memory(10 * 10**9, 10 * 10**6, default=256) == 800
    assert batch_size_for_memory(10 * 10**9, 1.0, default=256, cap=4096) == 4096
    assert batch_size_for_memory(10**6, 10**9, default=256) == 1


def test_a_model_in_reduced_precision_returns_float32_losses_close_to_full_precision(
    teacher_inputs,
):
    from fastgda.diffusion import TextToImageModel

    model = TextToImageModel.from_pretrained(teacher_inputs["model_dir"])
    x0, noise = torch.randn(4, *model.sample_shape), torch.randn(4, *model.sample_shape)
    t = torch.tensor([0, 300, 600, 900])
    states, mask = model.encode_prompts(["a red circle"] * 4)
    full = model.loss(x0, states, mask, noise, t)
    for dtype in ("bfloat16", "float16"):
        model.set_precision(dtype)
        states, mask = model.encode_prompts(["a red circle"] * 4)
        reduced = model.loss(x0, states, mask, noise, t)
        assert states.dtype == reduced.dtype == torch.float32
        # Not float32 rounding but a precision's: autocast rounds each layer's inputs to 8 bits (u = 2^-8) and
        # sums in float32; with normalisations between layers the errors do not compound, and the loss, a mean
        # over the sample's elements, moves by a few u. 5u is the bound (measured under 1%).
        assert_close(reduced, full, Tolerance(0, 5 * BF16, "5 roundings to bfloat16"), dtype)


def test_a_teacher_run_keeps_one_precision(teacher_inputs, tmp_path):
    from fastgda.errors import IncompatibleArtifactError
    from fastgda.unlearning.jobs import run_teacher

    config = fg.TeacherConfig(
        unlearn=fg.UnlearnConfig(num_pairs=8, batch_size=8),
        scoring=fg.ScoringConfig(timesteps=(500,)),
        num_candidates=6,
    )
    inputs = [
        str(teacher_inputs[k]) for k in ("model_dir", "data_dir", "queries_dir", "fisher_dir")
    ]
    spec = TeacherSpec(*inputs, str(tmp_path / "run"), config, device="cpu", dtype="bfloat16")
    truth = run_teacher(spec, query_ids=[0])
    assert np.isfinite(truth.scores).all()
    run_info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_info["compute_dtype"] == "bfloat16"
    before = json.loads((tmp_path / "run" / "before_losses" / "manifest.json").read_text())
    assert before["key"]["compute_dtype"] == "bfloat16"
    # Resuming in float32 would mix two precisions in one ground truth: refused, naming the field.
    with pytest.raises(IncompatibleArtifactError, match="compute_dtype"):
        run_teacher(replace(spec, dtype="float32"), query_ids=[1])


def test_features_in_reduced_precision_stay_close_and_are_recorded(small_world, tmp_path):
    from fastgda.encoders import make_encoder
    from fastgda.features import embed_dataset

    full = embed_dataset(small_world.root, "effnet+minilm", tmp_path / "f32")
    reduced = embed_dataset(small_world.root, "effnet+minilm", tmp_path / "bf16", dtype="bfloat16")
    assert reduced.source["compute_dtype"] == "bfloat16" and "compute_dtype" not in full.source
    a, b = full.values.astype(np.float64), reduced.values.astype(np.float64)
    for part in full.parts:
        cols = slice(part["offset"], part["offset"] + part["dim"])
        cosine = (
            (a[:, cols] * b[:, cols]).sum(1)
            / np.linalg.norm(a[:, cols], axis=1)
            / np.linalg.norm(b[:, cols], axis=1)
        )
        # bfloat16 rounds each layer's inputs to 8 bits (u = 2^-8): over a chain of d layers, rounding errors of
        # random sign move a row by about δ = 2u·√d of its norm (λ = 4 of those at worst, 1 on average), and a
        # row moved by δ keeps a cosine of 1 − δ²/2. EfficientNet's rows drift most (a mean of about 0.997, a
        # worst row of about 0.988 on this world, measured on the CPU).
        depth, _ = network_shape(make_encoder(part["name"]).model)
        drift = 2 * BF16 * np.sqrt(depth)
        assert cosine.mean() > 1 - drift**2 / 2 * 4, part["name"]  # λ = 2 on average
        assert cosine.min() > 1 - (4 * drift) ** 2 / 2, part["name"]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_on_cuda_batches_fit_the_free_memory_and_encoders_match_the_cpu(
    teacher_inputs, small_world
):
    from fastgda.data import open_dataset
    from fastgda.diffusion import TextToImageModel
    from fastgda.diffusion.training import prepare_training_data
    from fastgda.features import FeatureExtractor
    from fastgda.unlearning.scoring import CPU_SCORING_BATCH, scoring_batch_size

    model = TextToImageModel.from_pretrained(teacher_inputs["model_dir"], device="cuda")
    data = prepare_training_data(model, open_dataset(teacher_inputs["data_dir"]))
    # A 1M-parameter model on a GPU: far more than the CPU's 256 items fit in a pass.
    assert scoring_batch_size(model, data) > CPU_SCORING_BATCH
    cpu, cuda = FeatureExtractor("effnet+minilm"), FeatureExtractor("effnet+minilm", "cuda")
    assert all(e.batch_size >= 1 for e in cuda.encoders)
    rows = list(range(16))
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = (
        False  # float32 on both
    )
    try:
        here, there = cpu.embed(small_world, rows), cuda.embed(small_world, rows)
    finally:
        torch.backends.cudnn.allow_tf32 = True
    # Each encoder's columns within its chain bound, relative to its largest feature.
    for part, encoder in zip(cpu.parts, cpu.encoders, strict=True):
        cols = slice(part["offset"], part["offset"] + part["dim"])
        within = network(encoder.model, float(np.abs(here[:, cols]).max()))
        assert_close(there[:, cols], here[:, cols], within, part["name"])


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_a_model_trains_on_cuda_in_bfloat16(small_world, test_preset, tmp_path):
    from fastgda.diffusion import DiffusionTrainConfig, TextToImageModel, train_diffusion

    model = TextToImageModel.from_preset(test_preset, seed=0).to("cuda").set_precision("bfloat16")
    recipe = DiffusionTrainConfig(steps=4, batch_size=8, warmup_steps=1, checkpoint_every=2)
    train_diffusion(model, small_world, tmp_path / "m", recipe)
    again = TextToImageModel.from_pretrained(
        tmp_path / "m"
    )  # checkpoints and weights load on the CPU
    assert all(bool(torch.isfinite(p).all()) for p in again.unet.parameters())
