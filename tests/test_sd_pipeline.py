"""The Stable Diffusion path: a tiny randomly initialised SD v1.x-style pipeline built from configs, saved by
diffusers and loaded through the same ``TextToImageModel`` class (VAE latents, CLIP text encoder)."""

import json

import pytest
import torch

from _tiny_hf import write_clip_tokenizer_files
from _tolerance import assert_close, ddim
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
    sample = model.sample(["a red circle"], seeds=[0], num_steps=2)
    # DDIM over two steps done twice: its first-order bound (``ddim``) on latents of order one.
    assert_close(sample, model.sample(["a red circle"], seeds=[0], num_steps=2), ddim(model, 2))
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


def _balanced(features):
    """Each part's rows at unit length, scaled by 1/sqrt(parts): the teacher's candidate space."""
    import numpy as np

    parts = sorted(features.parts, key=lambda p: p["offset"])
    columns = []
    for p in parts:
        block = features.values[:, p["offset"] : p["offset"] + p["dim"]].astype(np.float64)
        columns.append(block / np.linalg.norm(block, axis=1, keepdims=True) / len(parts) ** 0.5)
    return np.concatenate(columns, axis=1)


@pytest.mark.slow
def test_every_verb_runs_on_a_stable_diffusion_folder(tiny_sd_dir, tmp_path):
    """The separate verbs on an SD pipeline, as a user with GPUs would chain them: fine-tune the pipeline on
    their data, sample queries (bfloat16), fit the Fisher, embed, run the teacher with pools from a features
    folder, train the ranker, build the attributor, evaluate, and run leave-K-out fine-tunes."""
    import numpy as np

    import fastgda as fg
    from fastgda.cli import main

    def run(*argv):
        assert main([str(a) for a in argv]) == 0, argv

    data, ft = tmp_path / "data", tmp_path / "ft"
    run("world", "shapes", "--out", data, "--size", "40", "--per-concept", "2")
    run("model", "train", "--init", tiny_sd_dir, "--data", data, "--out", ft, "--steps", "4",
        "--batch-size", "4", "--checkpoint-every", "2", "--device", "cpu")  # fmt: skip
    manifest = json.loads((ft / "manifest.json").read_text())
    assert (
        manifest["config"]["source"] == "diffusers_pipeline"
        and "frozen_parts" in manifest["config"]
    )
    tuned, base = (
        TextToImageModel.from_pretrained(ft),
        TextToImageModel.from_pretrained(tiny_sd_dir),
    )
    assert tuned.vae is not None and not torch.equal(
        next(tuned.unet.parameters()), next(base.unet.parameters())
    )
    (tmp_path / "train.txt").write_text(
        "a red circle\na blue square\na green triangle\ntwo red circles\n"
    )
    (tmp_path / "test.txt").write_text("a red square\na blue circle\na green star\n")
    for split in ("train", "test"):
        run("model", "sample", "--model", ft, "--prompts", tmp_path / f"{split}.txt",
            "--out", tmp_path / f"q-{split}", "--steps", "2", "--dtype", "bfloat16")  # fmt: skip
    sampled = json.loads((tmp_path / "q-test" / "manifest.json").read_text())
    assert sampled["config"]["compute_dtype"] == "bfloat16"
    run("teacher", "fisher", "--model", ft, "--data", data, "--out", tmp_path / "fisher",
        "--samples", "16", "--batch-size", "8")  # fmt: skip
    for name, source in (
        ("items", data),
        ("f-train", tmp_path / "q-train"),
        ("f-test", tmp_path / "q-test"),
    ):
        run("embed", "--data", source, "--spec", "pixels+minilm", "--out", tmp_path / name,
            "--store-dtype", "float16")  # fmt: skip
    assert np.load(tmp_path / "items" / "values.npy").dtype == np.float16
    teacher = ("teacher", "run", "--model", ft, "--data", data, "--fisher", tmp_path / "fisher",
               "--pairs", "8", "--timesteps", "500")  # fmt: skip
    run(*teacher, "--queries", tmp_path / "q-train", "--out", tmp_path / "t-train",
        "--candidates", "10", "--candidate-feature", tmp_path / "items")  # fmt: skip
    run(*teacher, "--queries", tmp_path / "q-test", "--out", tmp_path / "t-test")
    # The training queries' pools are their top-10 neighbours in the features folder's space.
    pools = fg.GroundTruth.load(tmp_path / "t-train" / "ground_truth").ids
    items, queries = fg.Features.load(tmp_path / "items"), fg.Features.load(tmp_path / "f-train")
    cosine = _balanced(queries) @ _balanced(items).T
    for q, pool in enumerate(pools):
        assert set(pool.tolist()) == set(np.argsort(-cosine[q])[:10].tolist())
    assert fg.GroundTruth.load(tmp_path / "t-test" / "ground_truth").ids.shape == (3, 40)
    run("ranker", "train", "--items", tmp_path / "items", "--queries", tmp_path / "f-train",
        "--ground-truth", tmp_path / "t-train" / "ground_truth", "--out", tmp_path / "ranker",
        "--epochs", "2", "--members", "1", "--device", "cpu")  # fmt: skip
    run("attributor", "build", "--ranker", tmp_path / "ranker", "--items", tmp_path / "items",
        "--data", data, "--out", tmp_path / "attributor")  # fmt: skip
    run("eval", "map", "--items", tmp_path / "items", "--queries", tmp_path / "f-test",
        "--ground-truth", tmp_path / "t-test" / "ground_truth", "--ranker", tmp_path / "ranker",
        "--l", "2", "4", "--out", tmp_path / "map.json")  # fmt: skip
    assert "ranker (ranker)" in json.loads((tmp_path / "map.json").read_text())["map"]
    run("eval", "counterfactual", "--model", ft, "--data", data, "--query-set", tmp_path / "q-test",
        "--items", tmp_path / "items", "--queries", tmp_path / "f-test",
        "--ground-truth", tmp_path / "t-test" / "ground_truth", "--ranker", tmp_path / "ranker",
        "--k", "3", "--steps", "3", "--random-seeds", "0", "--generate-steps", "2", "--baselines", "none",
        "--similarity-encoder", "pixels", "--num-queries", "2", "--out", tmp_path / "cf")  # fmt: skip
    result = json.loads((tmp_path / "cf" / "counterfactual.json").read_text())
    assert set(result["summary"]) == {"teacher", "ranker (ranker)", "random"}
    assert all(np.isfinite(v) for m in result["per_query"].values() for v in m["delta_loss"])
    # Every retrain is a fine-tune of the pipeline, saved as a fastgda folder that points at it.
    plan = json.loads((tmp_path / "cf" / "plan.json").read_text())
    retrained = tmp_path / "cf" / "retrains" / plan["baseline"] / "model"
    assert json.loads((retrained / "manifest.json").read_text())["config"]["path"] == str(
        tiny_sd_dir
    )


def test_a_bare_pipeline_needs_the_length_of_its_leave_k_out_fine_tunes(tiny_sd_dir, tmp_path):
    import numpy as np

    from fastgda.counterfactual import CounterfactualConfig, CounterfactualJob
    from fastgda.errors import FastGDAError

    rankings = {"teacher": np.arange(6).reshape(2, 3)}
    with pytest.raises(FastGDAError, match="give their length with --steps"):
        CounterfactualJob(
            tiny_sd_dir, tmp_path, tmp_path, rankings, tmp_path / "cf", CounterfactualConfig(k=2)
        )


def test_only_a_pipeline_can_be_fine_tuned_with_init(tmp_path, capsys):
    from fastgda.cli import main

    assert (
        main(
            [
                "model",
                "train",
                "--init",
                str(tmp_path),
                "--data",
                str(tmp_path),
                "--out",
                str(tmp_path / "m"),
            ]
        )
        == 2
    )
    assert "expected a Stable Diffusion pipeline folder" in capsys.readouterr().err
