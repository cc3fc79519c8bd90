import json

import numpy as np
import pytest
import torch

from _tolerance import apart, assert_close, ddim, network, retrained
from fastgda import IncompatibleArtifactError
from fastgda.diffusion import DiffusionTrainConfig, TextToImageModel, train_diffusion
from fastgda.diffusion.training import draw_batch, prepare_training_data


def test_tiny16_preset_keeps_diffusers_cross_attention_names():
    from fastgda.diffusion import ModelPreset

    model = TextToImageModel.from_preset("tiny16")
    names = [n for n, _ in model.unet.named_parameters() if "attn2.to_k" in n or "attn2.to_v" in n]
    assert len(names) == 8 and all(
        n.endswith("weight") for n in names
    )  # 4 transformer blocks x (K, V), no bias
    assert 1.0e6 < model.num_parameters < 1.3e6
    assert (
        model.sample_shape == (3, 16, 16)
        and ModelPreset().cross_attention_dim == model.text_encoder.dim
    )


def test_loss_is_per_sample_and_finite(tiny_model):
    x0 = torch.rand(5, 3, 8, 8) * 2 - 1
    states, mask = tiny_model.encode_prompts(["a red circle"] * 5)
    assert states.shape == (5, 24, 384) and mask.shape == (5, 24)
    loss = tiny_model.loss(x0, states, mask, torch.randn_like(x0), torch.randint(0, 1000, (5,)))
    assert loss.shape == (5,) and torch.isfinite(loss).all()


def test_training_lowers_the_loss(tiny_model, small_world, tmp_path):
    config = DiffusionTrainConfig(steps=40, batch_size=32, warmup_steps=5, seed=0)
    data = prepare_training_data(tiny_model, small_world)
    fixed = [draw_batch(data, 10_000 + i, config, 1000) for i in range(4)]

    def held_loss():
        with torch.no_grad():
            return float(np.mean([tiny_model.loss(*b).mean().item() for b in fixed]))

    before = held_loss()
    train_diffusion(tiny_model, small_world, tmp_path / "model", config)
    assert held_loss() < 0.8 * before


def test_draws_by_item_id_change_only_the_slots_of_removed_items(tiny_model, small_world):
    """Common random numbers for leave-K-out: a retrain's batches equal the full run's except where a removed
    item was drawn; the default (by position) redraws everything once rows shift."""
    full = prepare_training_data(tiny_model, small_world)
    removed = {1, 4, 7, 10, 20}
    kept = [i for i in range(len(small_world)) if i not in removed]
    subset = full.subset(kept)
    coupled = DiffusionTrainConfig(batch_size=64, draw_by_item_id=True)
    by_position = DiffusionTrainConfig(batch_size=64)
    changed_slots = 0
    for step in range(20):
        x0, states, mask, noise, t = draw_batch(full, step, coupled, 1000)
        plain = draw_batch(full, step, by_position, 1000)
        assert torch.equal(x0, plain[0]) and torch.equal(
            noise, plain[3]
        )  # nothing removed: identical
        ids = torch.randint(
            0, len(small_world), (64,), generator=torch.Generator().manual_seed(step)
        )
        sub = draw_batch(subset, step, coupled, 1000)
        same = torch.tensor([int(i) not in removed for i in ids])
        assert torch.equal(sub[0][same], x0[same]) and torch.equal(sub[3], noise)
        assert torch.equal(sub[1][same], states[same]) and torch.equal(sub[4], t)
        changed_slots += int((~same).sum())
        # Refilled slots hold kept items (never a removed one).
        kept_x0 = subset.x0[:].flatten(1)
        for row in sub[0][~same].flatten(1):
            assert (kept_x0 == row).all(dim=1).any()
    assert changed_slots > 0
    shifted = draw_batch(subset, 0, by_position, 1000)[0]
    assert not torch.equal(shifted, draw_batch(full, 0, by_position, 1000)[0])


def test_interrupted_training_resumes_to_identical_weights(test_preset, small_world, tmp_path):
    config = DiffusionTrainConfig(
        steps=12, batch_size=8, warmup_steps=2, checkpoint_every=6, keep_checkpoints=5
    )
    whole = train_diffusion(
        TextToImageModel.from_preset(test_preset),
        small_world,
        tmp_path / "a",
        config,
    )
    # Simulate a crash after step 6: only the first checkpoint survives, the model folder was never written.
    resumed_ckpt = tmp_path / "b.checkpoints"
    resumed_ckpt.mkdir()
    (tmp_path / "a.checkpoints" / "step_0000006.safetensors").rename(
        resumed_ckpt / "step_0000006.safetensors"
    )
    resumed = train_diffusion(
        TextToImageModel.from_preset(test_preset, seed=99),
        small_world,
        tmp_path / "b",
        config,
    )
    # Steps 7 to 12 taken twice from the same checkpoint on the same batches: AdamW's first-order bound.
    within = retrained(config.steps - 6, config.lr, 2 * network(whole.unet, 1.0))
    for (name, p), q in zip(whole.unet.named_parameters(), resumed.unet.parameters(), strict=True):
        assert_close(p, q, within, name)


def test_resuming_with_another_recipe_is_refused(test_preset, small_world, tmp_path):
    config = DiffusionTrainConfig(steps=4, batch_size=4, checkpoint_every=2)
    train_diffusion(
        TextToImageModel.from_preset(test_preset),
        small_world,
        tmp_path / "m",
        config,
    )
    (tmp_path / "m").rename(tmp_path / "old")
    (tmp_path / "old.checkpoints").mkdir()
    other = DiffusionTrainConfig(steps=4, batch_size=4, checkpoint_every=2, lr=5e-4)
    with pytest.raises(IncompatibleArtifactError, match=r"another config \(lr: 0.001 -> 0.0005\)"):
        train_diffusion(
            TextToImageModel.from_preset(test_preset),
            small_world,
            tmp_path / "m",
            other,
            checkpoint_dir=tmp_path / "m.checkpoints",
        )


def test_ddim_sampling_is_deterministic_and_batch_independent(tiny_model):
    prompts = [
        "a small blue square on the left on a white background",
        "a big red circle in the middle",
    ]
    # Two steps: DDIM's first-order bound grows with each step's x_t -> x_t' gain, and at two steps it is 1e-3
    # of values of order one (``ddim``): batched and single-row convolutions differ in float rounding only.
    a = tiny_model.sample(prompts, seeds=[5, 6], num_steps=2)
    b = tiny_model.sample(prompts, seeds=[5, 6], num_steps=2)
    alone = tiny_model.sample(prompts[1:], seeds=[6], num_steps=2)
    assert a.shape == (2, 3, 8, 8)
    within = ddim(tiny_model, 2)
    assert_close(a, b, within)
    assert_close(a[1:], alone, within)
    assert apart(a, tiny_model.sample(prompts, seeds=[7, 8], num_steps=2), within)
    images = tiny_model.decode(a)
    assert images.shape == (2, 8, 8, 3) and images.dtype == np.uint8


def test_saved_model_loads_with_the_same_weights_and_outputs(tiny_model, tmp_path):
    """The round trip's promise: weights, buffers and configs bitwise equal; outputs equal to kernel rounding."""
    tiny_model.save(tmp_path / "m")
    loaded = TextToImageModel.from_pretrained(tmp_path / "m")
    original = tiny_model.unet.state_dict()
    for name, tensor in loaded.unet.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    # Configs as stored: JSON values, without diffusers' private "_" keys.
    for part in ("unet", "scheduler"):

        def stored(config):
            public = {k: v for k, v in dict(config).items() if not k.startswith("_")}
            return json.loads(json.dumps(public))

        assert stored(getattr(loaded, part).config) == stored(getattr(tiny_model, part).config)
    x = tiny_model.sample(["a cyan cross"], seeds=[1], num_steps=2)
    assert_close(loaded.sample(["a cyan cross"], seeds=[1], num_steps=2), x, ddim(tiny_model, 2))


def test_tampered_or_foreign_folders_are_refused(tiny_model, small_world, tmp_path):
    tiny_model.save(tmp_path / "m")
    weights = tmp_path / "m" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(IncompatibleArtifactError, match="changed or truncated"):
        TextToImageModel.from_pretrained(tmp_path / "m")
    with pytest.raises(
        IncompatibleArtifactError, match="kind 'dataset', expected 'text_to_image_model'"
    ):
        TextToImageModel.from_pretrained(small_world.root)


def test_a_training_set_is_encoded_once_per_text_encoder_and_image_size(
    tiny_model, test_preset, small_world, tmp_path, monkeypatch
):
    from fastgda.diffusion import encoded as encoding

    first = prepare_training_data(tiny_model, small_world, cache=tmp_path)
    encoded = []
    real = encoding._encode
    monkeypatch.setattr(encoding, "_encode", lambda *args: encoded.append(args) or real(*args))
    # Another UNet with the same text encoder and image size reads the stored encoding, bit for bit.
    other = TextToImageModel.from_preset(test_preset, seed=5)
    again = prepare_training_data(other, small_world, cache=tmp_path)
    assert encoded == []
    for name, tensor in first.tensors().items():
        assert torch.equal(again.tensors()[name], tensor), name
    # Another dataset is encoded anew, beside the first.
    prepare_training_data(other, small_world.without([0, 1]), cache=tmp_path)
    assert len(encoded) == 1 and len(list((tmp_path / "encoded").iterdir())) == 2


def test_the_stored_encoding_is_memory_mapped_and_matches_the_one_in_memory(
    tiny_model, small_world, tmp_path
):
    """x0 and caption states are read from memory-mapped .npy files, row by row; a pixel model stores float32,
    so they equal the in-memory encoding bit for bit (a latent model's float16 is tested with the SD pipeline)."""
    import numpy as np

    in_memory = prepare_training_data(tiny_model, small_world)
    stored = prepare_training_data(tiny_model, small_world, cache=tmp_path)
    assert isinstance(stored.x0.array, np.memmap) and isinstance(stored.states.array, np.memmap)
    assert stored.x0.dtype == np.float32
    for name, tensor in in_memory.tensors().items():
        assert torch.equal(stored.tensors()[name], tensor), name
    # Reads in any order, and through a lazy subset, return the rows asked for.
    ids = torch.tensor([5, 0, 3, 3])
    assert torch.equal(stored.x0[ids], in_memory.x0[:][ids])
    subset = stored.subset([4, 1])
    assert torch.equal(subset.x0[:], in_memory.x0[:][[4, 1]])
    assert torch.equal(subset.states[:], in_memory.subset([4, 1]).states[:])


def test_model_names_resolve_through_the_registry_without_importing_the_app(tmp_path):
    """`--model shipped` is a name the app provides by entry point; a folder never loads the app, and a user may
    name their own models."""
    import subprocess
    import sys

    from fastgda.app import pack
    from fastgda.diffusion import model_names, register_model_name, resolve_model_dir

    assert "shipped" in model_names() and resolve_model_dir("shipped") == pack.model_dir()
    register_model_name("mine", lambda: tmp_path / "my-model")
    assert resolve_model_dir("mine") == tmp_path / "my-model" and "mine" in model_names()
    assert resolve_model_dir(tmp_path / "elsewhere") == tmp_path / "elsewhere"
    code = (
        "import sys; from fastgda.diffusion.names import resolve_model_dir; "
        "import fastgda.cli.teacher, fastgda.cli.influence, fastgda.cli.evaluate, fastgda.cli.model; "
        "resolve_model_dir('runs/some-model'); "
        "print(sorted(m for m in sys.modules if m.startswith('fastgda.app')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout
