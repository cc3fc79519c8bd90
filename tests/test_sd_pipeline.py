"""The Stable Diffusion path: a tiny randomly initialised SD v1.x-style pipeline built from configs, saved by
diffusers and loaded through the same ``TextToImageModel`` class (VAE latents, CLIP text encoder)."""

import json

import pytest
import torch

from _tiny_hf import write_clip_tokenizer_files
from _tolerance import RECOMPUTED
from fastgda import IncompatibleArtifactError
from fastgda.diffusion import TextToImageModel


@pytest.fixture(scope="module")
def tiny_sd_dir(tmp_path_factory):
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("sd")
    vocab_size = write_clip_tokenizer_files(root / "tok")
    tokenizer = CLIPTokenizer(
        str(root / "tok" / "vocab.json"), str(root / "tok" / "merges.txt"), model_max_length=16
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        sample_size=16,
    )
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(root / "pipeline")
    return root / "pipeline"


def test_sd_pipeline_folder_loads_with_vae_and_clip(tiny_sd_dir):
    model = TextToImageModel.from_pretrained(tiny_sd_dir)
    assert model.vae is not None and model.text_encoder.name == "clip"
    assert model.sample_shape == (4, 8, 8) and model.image_size == 16
    states, mask = model.encode_prompts(["a red circle", "two cats"])
    assert states.shape == (2, 16, 32) and mask is None  # SD attends to every padded token


def test_sd_latents_train_and_sample_through_the_same_interface(tiny_sd_dir):
    model = TextToImageModel.from_pretrained(tiny_sd_dir)
    images = torch.randint(0, 255, (2, 16, 16, 3), dtype=torch.uint8).numpy()
    x0 = model.encode_images(images)
    assert x0.shape == (2, 4, 8, 8)
    states, mask = model.encode_prompts(["a", "b"])
    loss = model.loss(x0, states, mask, torch.randn_like(x0), torch.tensor([10, 900]))
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    sample = model.sample(["a red circle"], seeds=[0], num_steps=3)
    torch.testing.assert_close(
        sample, model.sample(["a red circle"], seeds=[0], num_steps=3), **RECOMPUTED
    )
    assert model.decode(sample).shape == (1, 16, 16, 3)


def test_incomplete_pipeline_folder_is_refused(tmp_path):
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionPipeline", "unet": []})
    )
    with pytest.raises(IncompatibleArtifactError, match="lacks"):
        TextToImageModel.from_pretrained(tmp_path)


@pytest.mark.slow
def test_fastgda_build_runs_end_to_end_on_a_stable_diffusion_folder(tiny_sd_dir, tmp_path, capsys):
    """Queries, the EK-FAC Fisher and the teacher over VAE latents and CLIP states, then features, ranker,
    attributor, evaluation and report: the path a user with their own SD model takes."""
    import fastgda as fg
    from fastgda.cli import main
    from fastgda.diffusion.model import model_digest

    data, out = tmp_path / "data", tmp_path / "build"
    assert main(["world", "shapes", "--out", str(data), "--size", "60", "--per-concept", "2"]) == 0
    argv = ["build", "--data", str(data), "--out", str(out), "--model", str(tiny_sd_dir), "--json",
            "--num-train-queries", "6", "--num-val-queries", "3", "--num-test-queries", "3", "--num-candidates", "12",
            "--num-pairs", "16", "--timesteps", "500", "--fisher-samples", "32", "--sample-steps", "2",
            "--ranker-members", "1", "--ranker-epochs", "3", "--spec", "pixels+minilm"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["queries"] == {"train": 6, "val": 3, "test": 3}
    digest = model_digest(tiny_sd_dir)
    assert digest.startswith("diffusers:")
    queries = json.loads((out / "queries-test" / "manifest.json").read_text())
    assert queries["model_manifest_sha256"] == digest
    assert fg.GroundTruth.load(out / "teacher-test" / "ground_truth").ids.shape == (3, 60)
    fisher = fg.Fisher.load(out / "fisher")
    assert all(
        "attn2.to_" in name for name in fisher.layer_names
    )  # the CLIP-conditioned K/V layers
    answer = fg.Attributor.load(out / "attributor").attribute(
        str(out / "queries-test" / "images" / "q000000.png"), "a red circle", k=4
    )
    assert answer.ids.shape == (1, 4)
    with pytest.raises(IncompatibleArtifactError, match="neither a fastgda model folder"):
        model_digest(tmp_path)
