"""``fastgda demo --profile full``: the whole pipeline from scratch, nothing taken from the pack but its recipes.

1. the standard world, regenerated from its generator (its content hash must equal the shipped world's);
2. the world model, retrained with the pack's recipe (10,000 steps, about 75 min on 2 cores), then its prompt
   adherence on held-out prompts scored by the pack's attribute probe;
3. the EK-FAC Fisher of that model, with the shipped reference's Fisher settings;
4. the reference ground truth: the reference query splits sampled by the new model and ranked by the teacher with
   the shipped reference's settings (400 training, 50 validation, 40 test queries; about 2.5 h);
5. the demo on them (features, ranker, attributor, mAP(L), the live teacher against the attributor), and
6. the leave-K-out counterfactual (about 80 min).

About 6 hours on 2 cores. Every step is resumable: rerun the same command after an interruption and finished
work is kept (the model resumes from its last checkpoint, the teacher from its finished queries).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .._artifacts import MANIFEST_NAME, write_text_atomic
from ..errors import FastGDAError


def retrain_world_model(world, out_dir: Path, steps: int | None = None) -> Path:
    """Train the world model with the pack's recipe (``steps`` overrides its length) into ``out_dir``."""
    from ..diffusion import DiffusionTrainConfig, TextToImageModel, train_diffusion
    from . import pack

    if (out_dir / MANIFEST_NAME).is_file():
        return out_dir
    info = pack.pack_info()
    recipe = dict(info["model"]["train_config"])
    if steps:
        recipe["steps"] = steps
    model = TextToImageModel.from_preset(info["model"]["preset"], seed=recipe["seed"])
    train_diffusion(
        model,
        world,
        out_dir,
        DiffusionTrainConfig(**recipe),
        checkpoint_dir=out_dir.with_name(out_dir.name + ".checkpoints"),
        command="fastgda demo --profile full",
    )
    return out_dir


def score_model_adherence(model_dir: Path, world, out: Path, num_prompts: int = 24) -> dict:
    """Sample held-out prompts with the model, score them with the pack's probe, and save a grid."""
    from ..diffusion import TextToImageModel
    from ..diffusion.queries import SamplerConfig, write_query_set
    from . import pack
    from .visual import image_grid
    from .world import held_out_prompts
    from .world.adherence import score_adherence
    from .world.probe import AttributeProbe

    model = TextToImageModel.from_pretrained(model_dir)
    prompts = held_out_prompts(world.root)[:num_prompts]
    queries = write_query_set(
        model,
        prompts,
        out / "adherence-queries",
        sampler=SamplerConfig(**pack.pack_info()["sampler"]),
        model_dir=model_dir,
        overwrite=True,
    )
    images = queries.load_images()
    probe = AttributeProbe.load(pack.probe_dir())
    adherence = score_adherence(probe, images, [r["scene"] for r in queries.records])
    image_grid(images, [r["prompt"] for r in queries.records]).save(out / "adherence.png")
    write_text_atomic(out / "adherence.json", json.dumps(adherence, indent=1) + "\n")
    return adherence


def build_fisher(model_dir: Path, world, out_dir: Path) -> Path:
    """Fit the EK-FAC Fisher with the shipped reference's settings."""
    from ..diffusion import TextToImageModel
    from ..diffusion.training import prepare_training_data
    from ..unlearning import FisherConfig, fit_fisher
    from .reference import reference_dir

    if (out_dir / MANIFEST_NAME).is_file():
        return out_dir
    shipped = json.loads((reference_dir() / "fisher" / MANIFEST_NAME).read_text(encoding="utf-8"))
    model = TextToImageModel.from_pretrained(model_dir)
    data = prepare_training_data(model, world)
    fit_fisher(model, data, FisherConfig(**shipped["config"])).save(out_dir)
    return out_dir


def build_reference(
    model_dir: Path,
    world,
    fisher_dir: Path,
    work: Path,
    out_dir: Path,
    executor=None,
) -> Path:
    """Sample and rank the reference query splits with the shipped reference's teacher settings, then pack."""
    from ..diffusion.queries import SamplerConfig
    from ..unlearning.jobs import teacher_config_from_json
    from .reference import compute_reference_runs, pack_reference, reference_info

    if (out_dir / MANIFEST_NAME).is_file():
        return out_dir
    splits = reference_info()["splits"]
    configs = {split: teacher_config_from_json(info["teacher"]) for split, info in splits.items()}
    sampler = SamplerConfig(**next(iter(splits.values()))["query_sampler"])
    compute_reference_runs(
        world.root,
        model_dir,
        fisher_dir,
        work,
        configs,
        sampler,
        cache_dir=work / "before_losses",
        executor=executor,
    )
    pack_reference(
        {split: work / f"queries-{split}" for split in splits},
        {split: work / f"run-{split}" for split in splits},
        fisher_dir,
        out_dir,
        command="fastgda demo --profile full",
    )
    return out_dir


def run_full_profile(
    out: str | Path,
    seed: int = 0,
    executor=None,
    model_steps: int | None = None,
    counterfactual_steps: int | None = None,
) -> dict:
    """Run every step above into ``out``; returns the demo's summary with the model's adherence added."""
    from . import pack
    from .demo import run_demo

    out = Path(out)
    marker = out / "profile-full"
    if (out / "summary.json").is_file() and not marker.is_file():
        # Its features, ranker and before-losses belong to the shipped model: reusing them would mix two models.
        raise FastGDAError(
            f"{out} holds a standard demo; choose another --out for --profile full (default demo-full/)"
        )
    out.mkdir(parents=True, exist_ok=True)
    marker.touch()
    began = time.perf_counter()
    world = pack.ensure_world(out / "world")
    model_dir = retrain_world_model(world, out / "model", model_steps)
    adherence = score_model_adherence(model_dir, world, out)
    fisher_dir = build_fisher(model_dir, world, out / "fisher")
    reference = build_reference(
        model_dir, world, fisher_dir, out / "teacher", out / "reference", executor
    )
    summary = run_demo(
        out,
        seed=seed,
        counterfactual=True,
        counterfactual_steps=counterfactual_steps,
        executor=executor,
        model_dir=model_dir,
        reference_root=reference,
    )
    summary["model_adherence"] = adherence
    summary["full_profile_seconds"] = time.perf_counter() - began
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    return summary
