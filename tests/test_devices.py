"""Devices: ``--device`` resolution and the teacher on the model's device (CUDA checks are marked ``gpu``)."""

import numpy as np
import pytest
import torch

import fastgda as fg
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
    config = fg.TeacherConfig(
        unlearn=fg.UnlearnConfig(num_pairs=16, batch_size=16),
        scoring=fg.ScoringConfig(timesteps=(300, 700)),
    )
    teacher = fg.Teacher.from_folders(
        teacher_inputs["model_dir"], teacher_inputs["data_dir"], teacher_inputs["fisher_dir"], config,
        progress=False, device=device,
    )  # fmt: skip
    return teacher.with_candidates(12).rank(teacher_inputs["queries_dir"], query_ids=[0, 1])


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_the_teacher_on_cuda_ranks_as_on_the_cpu(teacher_inputs):
    cpu, cuda = _ranked(teacher_inputs, "cpu"), _ranked(teacher_inputs, "cuda")
    # Same pairs and noise bits on both devices; the kernels differ, so the scores agree within a tolerance and the
    # top of each ranking matches.
    np.testing.assert_allclose(
        np.sort(cuda.scores, 1), np.sort(cpu.scores, 1), rtol=1e-3, atol=1e-6
    )
    for a, b in zip(cuda.ids, cpu.ids, strict=True):
        assert len(set(a[:5]) & set(b[:5])) >= 4  # near-ties may swap places


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_the_fisher_fitted_on_cuda_is_stored_on_the_host_and_matches_the_cpu(teacher_inputs):
    from fastgda.data import open_dataset
    from fastgda.diffusion import TextToImageModel
    from fastgda.diffusion.training import prepare_training_data

    fishers = {}
    # The diagonal Fisher is basis-free, so the two devices compare element by element; EK-FAC's eigenbases
    # may rotate within near-degenerate eigenspaces, so on CUDA it is only checked to be finite and on the host.
    for device, kind in (("cpu", "diagonal"), ("cuda", "diagonal"), ("cuda", "ekfac")):
        model = TextToImageModel.from_pretrained(teacher_inputs["model_dir"]).to(device)
        data = prepare_training_data(
            model, open_dataset(teacher_inputs["data_dir"]), progress=False
        )
        assert data.x0.device.type == "cpu"  # the encoding lives on the host
        config = fg.FisherConfig(kind=kind, num_samples=32, batch_size=16)
        fishers[device, kind] = fg.Fisher.fit(model, data, config, progress=False)
    for fisher in (fishers["cuda", "diagonal"], fishers["cuda", "ekfac"]):
        for name, value in fisher.tensors.items():
            assert value.device.type == "cpu" and bool(torch.isfinite(value).all()), name
    for name, value in fishers["cpu", "diagonal"].tensors.items():
        torch.testing.assert_close(
            fishers["cuda", "diagonal"].tensors[name], value, rtol=1e-2, atol=1e-8
        )
