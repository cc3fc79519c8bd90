"""``fastgda build``: from a captioned image set to a served-ready attributor, its evidence and its report.

The steps, each resumable (a finished step's folder is reused, an interrupted one continues where it stopped):

1. data: the dataset (tar shards are converted to an image folder once);
2. prompts: query prompts drawn from the training captions (or ``prompts_file``), split by source image into
   training, validation and test queries; with ``train_model`` the drawn captions are held out of training;
3. model: the given model, or a preset trained on the data;
4. queries: one generated image per prompt, per split;
5. Fisher (EK-FAC), once;
6. teacher: candidate pools for training and validation queries, full rankings for test queries, sized by
   ``budget_hours``; stopping at any point leaves every finished query usable (partial merges);
7. features; 8. ranker (an untuned part that beats it on validation is served instead); 9. attributor;
10. evaluation against the untuned baselines; 11. ``report.html`` with the data's own images.

``build.json`` records each step's status, wall time and settings (``fastgda.pipeline.steps``): a rerun with
settings that would not match a step's outputs is refused; ``summary.json`` holds the result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from .._artifacts import write_json_atomic
from ..config import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, Bounds, check_settings, setting
from ..errors import FastGDAError
from .distil import build_attributor, distil_ranker, embed_features, evaluate_test
from .prepare import (
    SPLITS,
    draw_prompts,
    generate_queries,
    prepare_data,
    prepare_fisher,
    prepare_model,
)
from .report import TEACHER_NAME, query_panels, write_report
from .steps import StepRunner, median_seconds
from .teacher import rank_with_teacher

STEP_NAMES = ("data", "prompts", "model", "queries", "fisher", "teacher", "features", "ranker", "attributor",
              "evaluation", "report")  # fmt: skip


@dataclass(frozen=True)
class BuildConfig:
    """What ``fastgda build`` runs: every field is a flag of the same name."""

    spec: str = setting("effnet+minilm", "frozen encoders of the ranker's features, joined by +")
    train_model: str | None = setting(
        None, "train this model preset on the data (e.g. tiny16) when no --model is given"
    )
    model_steps: int = setting(2000, "training steps of --train-model", bounds=AT_LEAST_ONE)
    num_train_queries: int = setting(200, "training queries for the ranker", bounds=Bounds(2))
    num_val_queries: int = setting(
        30, "validation queries (early stopping, the scorer check)", bounds=Bounds(2)
    )
    num_test_queries: int = setting(
        20,
        "test queries (evaluation), ranked over all N or over --test-candidates",
        bounds=Bounds(2),
    )
    test_candidates: int | None = setting(
        None,
        "rank each test query over its top-M neighbours by --test-candidate-feature instead of all N, and "
        "evaluate within those pools (the paper's Stable Diffusion protocol; a full ranking costs N scorings a "
        "query); default: all N",
        bounds=Bounds(2),
    )
    test_candidate_feature: str | None = setting(
        None,
        "the feature spec that picks the test pools of --test-candidates (the paper's protocol uses image "
        "features, e.g. effnet); default: --candidate-feature",
    )
    num_candidates: int = setting(
        256,
        "candidate pool of each training and validation query (its top-M neighbours)",
        bounds=Bounds(2),
    )
    candidate_feature: str = setting("minilm", "the feature spec that picks the candidate pools")
    budget_hours: float | None = setting(
        None,
        "teacher time available: the query counts shrink to fit it (default: no limit)",
        bounds=POSITIVE,
    )
    num_pairs: int = setting(
        500, "(noise, t) pairs of each query's unlearning step", bounds=AT_LEAST_ONE
    )
    timesteps: tuple[int, ...] = setting(
        (0, 200, 400, 600, 800), "scoring timesteps of the teacher", bounds=Bounds(0, 999)
    )
    fisher_samples: int = setting(
        5000, "per-sample gradients of the EK-FAC Fisher", bounds=AT_LEAST_ONE
    )
    sample_steps: int = setting(50, "DDIM steps of the generated queries", bounds=AT_LEAST_ONE)
    guidance_scale: float = setting(
        3.0, "guidance scale of the generated queries", bounds=NON_NEGATIVE
    )
    ranker_members: int = setting(
        3, "rankers in the ensemble (cosines averaged)", bounds=AT_LEAST_ONE
    )
    ranker_epochs: int = setting(
        60, "ranker training epochs (early stopping may end sooner)", bounds=AT_LEAST_ONE
    )
    ranker_residual: str = setting(
        "auto",
        "the ranker starts from an untuned part's cosine: auto (the best on validation), a part's name, or none "
        "(the paper's plain MLP)",
    )
    test_share_of_budget: float = setting(
        0.3,
        "share of the teacher budget for test queries (full rankings cost the most)",
        bounds=FRACTION,
    )
    device: str = setting(
        "auto",
        "where every model and encoder runs (model training, queries, Fisher, teacher, features, ranker): auto "
        "(CUDA when present, else cpu), cpu, cuda or cuda:N",
    )
    dtype: str = setting(
        "float32",
        "the precision models and encoders compute in, under autocast (weights, Fisher accumulations and loss "
        "differences stay float32)",
        choices=("float32", "bfloat16", "float16"),
    )
    seed: int = setting(
        0, "seeds the prompts, the splits, the model and the ranker", bounds=NON_NEGATIVE
    )

    def __post_init__(self):
        check_settings(self)

    @classmethod
    def quick(cls) -> BuildConfig:
        """Small settings for a first look at a new dataset (minutes on a CPU); the evidence is thin."""
        return cls(num_train_queries=40, num_val_queries=10, num_test_queries=8, num_candidates=64,
                   num_pairs=100, timesteps=(200, 600), fisher_samples=1000, sample_steps=20)  # fmt: skip


def run_build(
    data: str | Path,
    out: str | Path,
    config: BuildConfig = BuildConfig(),
    model: str | Path | None = None,
    prompts_file: str | Path | None = None,
    executor=None,
) -> dict:
    """Run every step into ``out`` and return the summary (also ``out/summary.json``); see the module docstring.

    Args:
        data: a folder with ``captions.jsonl``, a COCO captions json, or webdataset tar shards (a .tar or a folder).
        model: a fastgda model folder, a diffusers Stable Diffusion folder, or a model name (``shipped``); else
            ``config.train_model`` is trained.
        prompts_file: query prompts (text, one a line, or JSONL with ``prompt``) instead of drawn captions.

    Raises:
        FastGDAError: no model and no preset, an unknown preset or device, or ``out`` holds a build whose
            finished steps used other settings.
    """
    from ..devices import resolve_device
    from ..diffusion.model import PRESETS

    if model is None and not config.train_model:
        raise FastGDAError(
            "pass --model (a model folder, or shipped) or --train-model PRESET (e.g. tiny16)"
        )
    if model is None and config.train_model not in PRESETS:
        raise FastGDAError(
            f"unknown --train-model {config.train_model!r}; choose one of {sorted(PRESETS)}"
        )
    resolve_device(config.device)  # an unknown or absent device fails here, before any work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = StepRunner(out, STEP_NAMES, "build", state_file="build.json")
    settings = _step_settings(config, data, model, prompts_file)
    run = steps.run

    dataset = run("data", prepare_data, Path(data), out, settings=settings["data"])
    splits, train_data = run("prompts", draw_prompts, dataset, out, config, prompts_file,
                             settings=settings["prompts"])  # fmt: skip
    model_dir = run("model", prepare_model, train_data, out, config, model,
                    settings=settings["model"])  # fmt: skip
    queries = run("queries", generate_queries, model_dir, out, splits, config,
                  settings=settings["queries"])  # fmt: skip
    fisher_dir = run("fisher", prepare_fisher, model_dir, train_data, out, config,
                     settings=settings["fisher"])  # fmt: skip
    truth = run("teacher", rank_with_teacher, model_dir, train_data, queries, fisher_dir, out, config,
                executor, steps, settings=settings["teacher"])  # fmt: skip
    features = run("features", embed_features, train_data.root, queries, config.spec, out,
                   config.device, config.dtype, settings=settings["features"])  # fmt: skip
    ranker, scorer = run("ranker", _ranker, features, truth, out, config)
    attributor = run("attributor", build_attributor, scorer, train_data, features, truth,
                     out / "attributor")  # fmt: skip
    methods = {"fastgda ranker": ranker}
    if scorer is not ranker:
        methods[f"served: {scorer.name}"] = scorer
    # With --test-candidates the test rankings are pools, and every method is scored within them.
    pooled = truth["test"].ids.shape[1] < len(features["items"])
    evaluate = partial(evaluate_test, within_pools=pooled)
    evaluation = run("evaluation", evaluate, methods, features, truth, out)
    seconds = _seconds_per_query(attributor, queries, steps, truth)
    return run("report", _report, train_data, queries, features, truth, evaluation, ranker, seconds,
               out, config)  # fmt: skip


def _step_settings(config: BuildConfig, data, model, prompts_file) -> dict[str, dict]:
    """What each step's outputs depend on: a rerun that changes one of them is refused for a finished step.
    (The ranker and the attributor check their own provenance and are retrained instead; the budget, the
    device and the precision may change between runs.)"""
    return {
        "data": {"data": str(Path(data).resolve())},  # the same folder, however the path is written
        "prompts": {
            "train": config.num_train_queries,
            "val": config.num_val_queries,
            "test": config.num_test_queries,
            "seed": config.seed,
            "held_out": bool(
                config.train_model
            ),  # with no prompts file, as ``draw_prompts`` reads it
            "prompts_file": str(prompts_file) if prompts_file else None,
        },  # fmt: skip
        "model": {
            "model": str(model) if model is not None else None,
            "train_model": config.train_model,
            "model_steps": config.model_steps if model is None else None,
            "seed": config.seed,
        },  # fmt: skip
        "queries": {
            "sample_steps": config.sample_steps,
            "guidance_scale": config.guidance_scale,
            "seed": config.seed,
        },  # fmt: skip
        "fisher": {"fisher_samples": config.fisher_samples, "seed": config.seed},
        "teacher": {
            "num_pairs": config.num_pairs,
            "timesteps": list(config.timesteps),
            "num_candidates": config.num_candidates,
            "candidate_feature": config.candidate_feature,
            "seed": config.seed,
            **(
                {
                    "test_candidates": config.test_candidates,
                    # The feature in effect: naming the default explicitly changes nothing.
                    "test_candidate_feature": config.test_candidate_feature
                    or config.candidate_feature,
                }
                if config.test_candidates
                else {}
            ),
        },  # fmt: skip
        "features": {"spec": config.spec},
    }


def _ranker(features: dict, truth: dict, out: Path, config: BuildConfig):
    """The distilled ranker, and the scorer to serve: the ranker, or an untuned part that beat it on validation."""
    from ..ranker import RankerTrainConfig, best_scorer

    ranker_config = RankerTrainConfig(
        members=config.ranker_members,
        epochs=config.ranker_epochs,
        residual=config.ranker_residual,
        seed=config.seed,
    )
    # A ranker from other settings or other teacher results is retrained, and the attributor built on it rebuilt.
    provenance = {
        "training": asdict(ranker_config),
        "query_ids": {s: truth[s].query_ids.tolist() for s in ("train", "val")},
    }
    ranker = distil_ranker(features, truth, out / "ranker", ranker_config, provenance,
                           dependents=(out / "attributor",), device=config.device)  # fmt: skip
    return ranker, best_scorer(ranker, features["items"], ranker.validation)


def _seconds_per_query(
    attributor, queries: dict, steps: StepRunner, truth: dict
) -> dict[str, float]:
    """The served attributor's time per query (image + prompt, median of 10, measured here) and the teacher's
    (its step's wall time over the queries it ranked in this build)."""
    from ..data import ImageCaptionFolder

    test = ImageCaptionFolder(queries["test"])
    image, prompt = str(test.image_path(0)), test.captions(0)[0]
    served = median_seconds(lambda: attributor.attribute(image, prompt, 10), 10)
    ranked = sum(len(t) for t in truth.values())
    return {"attributor": served, "teacher": steps.total_seconds("teacher") / max(1, ranked)}


def _report(train_data, queries, features, truth, evaluation, ranker, seconds, out: Path,
            config: BuildConfig) -> dict:  # fmt: skip
    """``report.html`` and ``summary.json``; returns the summary."""
    from ..data import ImageCaptionFolder

    ls, n = evaluation.ls, len(features["items"])
    pooled = evaluation.pools is not None
    mid = ls[1]
    best = evaluation.best_untuned(mid)
    served = next((m for m in evaluation.map if m.startswith("served")), "fastgda ranker")
    test = truth["test"]
    query_set = ImageCaptionFolder(queries["test"])
    panels = query_panels(
        test, evaluation, [served, best], test.query_ids[:4].tolist(), query_set.load_image,
        lambda q: query_set.captions(q)[0], train_data.load_image, n,
    )  # fmt: skip
    ratio = evaluation.map[served][mid]["mean"] / evaluation.map[best][mid]["mean"]
    ranked_over = (
        f"test ranked over its top-{evaluation.num_train} neighbours by "
        f"{config.test_candidate_feature or config.candidate_feature}; mAP(L) "
        "within those pools"
        if pooled
        else "test ranked over all N"
    )
    lines = [
        f"{train_data.root}: N = {n} training images; teacher rankings of {len(truth['train'])} training, "
        f"{len(truth['val'])} validation and {len(test)} test queries ({ranked_over}).",
        f"Served scorer: {served}, mAP(L={mid}) {evaluation.map[served][mid]['mean']:.3f} against the best untuned "
        f"baseline ({best}) {evaluation.map[best][mid]['mean']:.3f}: {ratio:.2f}x.",
        f"Teacher {seconds['teacher']:.1f} s per query (this build's wall time over its queries); attributor "
        f"{seconds['attributor'] * 1000:.1f} ms end to end (image + prompt): "
        f"{seconds['teacher'] / seconds['attributor']:,.0f}x faster.",
        "Validation mAP (within the teacher's pools): "
        + ", ".join(f"{k} {v:.3f}" for k, v in ranker.validation.items()),
    ]
    notes = [
        "mAP(L): positives are the teacher's top-L; errors are standard errors over test queries."
        + (f" L counts items of each query's pool of {evaluation.num_train}." if pooled else "")
    ]
    timed = {TEACHER_NAME: seconds["teacher"], served: seconds["attributor"]}
    write_report(out / "report.html", f"fastgda build: {Path(train_data.root).name}", lines, evaluation,
                 timed, panels, notes, evaluation.num_train)  # L as shares of what was ranked  # fmt: skip
    summary = {
        "num_train": n,
        "queries": {s: len(truth[s]) for s in SPLITS},
        "test_ranked_over": evaluation.num_train,  # N, or each test query's pool (--test-candidates)
        "served": served,
        "best_untuned": best,
        "seconds_per_query": seconds,
        "ratio_vs_best_untuned": ratio,
        "map": evaluation.map,
        "config": asdict(config),
        "attributor": str(out / "attributor"),
        "report": str(out / "report.html"),
    }
    write_json_atomic(out / "summary.json", summary)
    return summary
