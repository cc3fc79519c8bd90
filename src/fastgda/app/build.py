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

``build.json`` records each step's status and wall time; ``summary.json`` the result.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .._artifacts import write_json_atomic, write_text_atomic
from ..config import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE, Bounds, check_settings, setting
from ..data import CAPTIONS_FILE, open_dataset
from ..errors import FastGDAError

logger = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


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
        20, "test queries, ranked over all N (evaluation)", bounds=Bounds(2)
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


class _Steps:
    """``build.json``: each step's status and seconds; a step finished by an earlier run is skipped."""

    def __init__(self, out: Path, names: list[str], progress: bool):
        self.path, self.names, self.progress = out / "build.json", names, progress
        self.state = json.loads(self.path.read_text()) if self.path.is_file() else {"steps": {}}
        self.began = time.perf_counter()

    def run(self, name: str, function, *args):
        index = self.names.index(name) + 1
        if self.progress:
            elapsed = (time.perf_counter() - self.began) / 60
            left = self.state.get("eta_minutes")
            eta = f", about {left:.0f} min left in all" if left is not None else ""
            print(
                f"[build {index}/{len(self.names)}] {name} (elapsed {elapsed:.1f} min{eta}) ...",
                flush=True,
            )
        began = time.perf_counter()
        result = function(*args)
        # Seconds add up over runs: a resumed step's total is the work it took.
        seconds = (
            self.state["steps"].get(name, {}).get("seconds", 0.0) + time.perf_counter() - began
        )
        self.state["steps"][name] = {"status": "done", "seconds": round(seconds, 1)}
        if name == "teacher":
            self.state.pop("eta_minutes", None)  # what follows takes minutes at most
        write_json_atomic(self.path, self.state)
        return result

    def set_eta(self, minutes: float) -> None:
        self.state["eta_minutes"] = round(minutes, 1)
        write_json_atomic(self.path, self.state)


def run_build(
    data: str | Path,
    out: str | Path,
    config: BuildConfig = BuildConfig(),
    model: str | Path | None = None,
    prompts_file: str | Path | None = None,
    executor=None,
    progress: bool = True,
) -> dict:
    """Run every step into ``out`` and return the summary (also ``out/summary.json``); see the module docstring.

    Args:
        data: a folder with ``captions.jsonl``, a COCO captions json, or webdataset tar shards (a .tar or a folder).
        model: a fastgda model folder, a diffusers Stable Diffusion folder, or ``shipped``; else
            ``config.train_model`` is trained.
        prompts_file: query prompts (text, one a line, or JSONL with ``prompt``) instead of drawn captions.
    """
    from ..diffusion.model import PRESETS

    if model is None and not config.train_model:
        raise FastGDAError(
            "pass --model (a model folder, or shipped) or --train-model PRESET (e.g. tiny16)"
        )
    if model is None and config.train_model not in PRESETS:
        raise FastGDAError(
            f"unknown --train-model {config.train_model!r}; choose one of {sorted(PRESETS)}"
        )
    from ..devices import resolve_device

    resolve_device(config.device)  # an unknown or absent device fails here, before any work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = ["data", "prompts", "model", "queries", "fisher", "teacher", "features", "ranker", "attributor",
             "evaluation", "report"]  # fmt: skip
    steps = _Steps(out, names, progress)
    dataset = steps.run("data", _data, Path(data), out, progress)
    splits, train_data = steps.run("prompts", _prompts, dataset, out, config, prompts_file)
    model_dir = steps.run("model", _model, train_data, out, config, model, progress)
    queries = steps.run("queries", _queries, model_dir, out, splits, config, progress)
    fisher_dir = steps.run("fisher", _fisher, model_dir, train_data, out, config, progress)
    truth = steps.run(
        "teacher",
        _teacher,
        model_dir,
        train_data,
        queries,
        fisher_dir,
        out,
        config,
        executor,
        steps,
        progress,
    )
    features = steps.run("features", _features, train_data, queries, out, config, progress)
    ranker, scorer = steps.run("ranker", _ranker, features, truth, out, config, progress)
    attributor = steps.run("attributor", _attributor, scorer, train_data, features, truth, out)
    evaluation = steps.run("evaluation", _evaluate, ranker, scorer, features, truth, out)
    seconds = _seconds_per_query(attributor, queries, steps.state, truth)
    summary = steps.run(
        "report",
        _report,
        train_data,
        queries,
        features,
        truth,
        evaluation,
        ranker,
        seconds,
        out,
        config,
    )
    return summary


# -- the steps ---------------------------------------------------------------------------------------------
def _data(source: Path, out: Path, progress: bool):
    from ..data import convert_shards

    if source.suffix == ".tar" or (source.is_dir() and any(source.glob("*.tar"))):
        folder = out / "data"
        if not (folder / CAPTIONS_FILE).is_file():
            convert_shards(source, folder, progress=progress)
        return open_dataset(folder)
    return open_dataset(source)


def _prompts(dataset, out: Path, config: BuildConfig, prompts_file):
    """Query prompts per split, each with its source image, and the training set the model sees.

    Prompts are drawn from distinct source images (seeded) and split by source image. With ``train_model``,
    each source image's last caption becomes the prompt and is held out of the training set (images with one
    caption are not drawn); with a given model the prompt is the last caption as it is.
    """
    from ..diffusion.queries import read_prompts

    path = out / "prompts.json"
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        return saved["splits"], open_dataset(saved["train_data"])
    counts = {
        "train": config.num_train_queries,
        "val": config.num_val_queries,
        "test": config.num_test_queries,
    }
    rng = np.random.default_rng(config.seed)
    if prompts_file:
        records = read_prompts(prompts_file)
        order = rng.permutation(len(records)).tolist()
        splits, start = {}, 0
        for split in SPLITS:
            splits[split] = [records[i] for i in order[start : start + counts[split]]]
            start += counts[split]
        train_data = dataset
    else:
        hold_out = bool(config.train_model)
        eligible = [i for i in range(len(dataset)) if not hold_out or len(dataset.captions(i)) > 1]
        needed = sum(counts.values())
        if len(eligible) < needed:
            raise FastGDAError(
                f"{len(eligible)} images can give a query prompt, {needed} are asked for; lower the query counts"
                + (" (held-out prompts need images with two or more captions)" if hold_out else "")
            )
        order = rng.permutation(eligible).tolist()
        splits, start = {}, 0
        for split in SPLITS:
            rows = order[start : start + counts[split]]
            splits[split] = [{"prompt": dataset.captions(i)[-1], "source_id": int(i)} for i in rows]
            start += counts[split]
        train_data = (
            _holdout_captions(dataset, order[:needed], out / "train-data") if hold_out else dataset
        )
    write_json_atomic(path, {"splits": splits, "train_data": str(train_data.root)})
    return splits, train_data


def _holdout_captions(dataset, rows, folder: Path):
    """The dataset without the last caption of ``rows``: a captions.jsonl naming the original images."""
    if not (folder / CAPTIONS_FILE).is_file():
        held = set(int(r) for r in rows)
        lines = []
        for i in range(len(dataset)):
            captions = list(dataset.captions(i))
            if i in held:
                captions = captions[:-1]
            record = {
                "file": str(Path(dataset.image_path(i)).resolve()),
                "captions": captions,
                "id": str(i),
            }
            lines.append(json.dumps(record))
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / CAPTIONS_FILE, "\n".join(lines) + "\n")
    return open_dataset(folder)


def _model(train_data, out: Path, config: BuildConfig, model, progress: bool) -> Path:
    from .._artifacts import cache_dir
    from ..devices import resolve_device
    from ..diffusion import DiffusionTrainConfig, TextToImageModel, train_diffusion
    from ..diffusion.names import resolve_model_dir
    from ..diffusion.training import prepare_training_data

    if model is not None:
        return resolve_model_dir(model)
    folder = out / "model"
    if not (folder / "manifest.json").is_file():
        recipe = DiffusionTrainConfig(
            steps=config.model_steps, seed=config.seed, checkpoint_every=250
        )
        network = TextToImageModel.from_preset(config.train_model, seed=config.seed)
        network.to(resolve_device(config.device)).set_precision(config.dtype)
        data = prepare_training_data(network, train_data, progress=progress, cache=cache_dir())
        train_diffusion(network, train_data, folder, recipe, progress=progress, data=data)
    return folder


def _queries(model_dir: Path, out: Path, splits: dict, config: BuildConfig, progress: bool) -> dict:
    from ..diffusion import TextToImageModel
    from ..diffusion.queries import QuerySet, SamplerConfig

    model = None
    sets = {}
    for n, split in enumerate(SPLITS):
        folder = out / f"queries-{split}"
        if not (folder / "manifest.json").is_file():
            model = model or TextToImageModel.from_pretrained(
                model_dir, device=config.device, dtype=config.dtype
            )
            sampler = SamplerConfig(
                num_steps=config.sample_steps, guidance_scale=config.guidance_scale
            )
            QuerySet.generate(
                model, splits[split], folder, seed=config.seed + 100_000 * n, sampler=sampler,
                model_dir=model_dir, progress=progress,
            )  # fmt: skip
        sets[split] = folder
    return sets


def _fisher(model_dir: Path, train_data, out: Path, config: BuildConfig, progress: bool) -> Path:
    from .._artifacts import cache_dir
    from ..diffusion import TextToImageModel
    from ..unlearning import Fisher, FisherConfig

    folder = out / "fisher"
    if not (folder / "manifest.json").is_file():
        model = TextToImageModel.from_pretrained(
            model_dir, device=config.device, dtype=config.dtype
        )
        fisher_config = FisherConfig(num_samples=config.fisher_samples, seed=config.seed)
        Fisher.fit(model, train_data, fisher_config, progress, encoded_cache=cache_dir()).save(
            folder
        )
    return folder


def _teacher(
    model_dir, train_data, queries, fisher_dir, out, config: BuildConfig, executor, steps, progress
):
    """Every split's rankings, the query counts cut to the budget; returns split -> GroundTruth (maybe partial)."""
    from .._artifacts import cache_dir
    from ..ground_truth import finished_queries
    from ..unlearning import ScoringConfig, UnlearnConfig
    from ..unlearning.jobs import TeacherConfig, TeacherSpec, run_teacher

    base = TeacherConfig(
        unlearn=UnlearnConfig(num_pairs=config.num_pairs, seed=config.seed),
        scoring=ScoringConfig(timesteps=tuple(config.timesteps), noise_seed=config.seed),
        candidate_feature=config.candidate_feature,
    )
    configs = {
        "train": replace(base, num_candidates=config.num_candidates),
        "val": replace(base, num_candidates=config.num_candidates),
        "test": base,  # full rankings: evaluation needs every item ranked
    }
    specs = {
        split: TeacherSpec(
            str(model_dir),
            str(train_data.root),
            str(queries[split]),
            str(fisher_dir),
            str(out / f"teacher-{split}"),
            configs[split],
            str(out / "before_losses"),
            encoded_cache=str(cache_dir()),
            device=config.device,
            dtype=config.dtype,
        )  # fmt: skip
        for split in SPLITS
    }
    limits = _budget_limits(specs, config, steps)
    truth = {}
    # Validation first (few queries), then test, then training: a build stopped early still evaluates.
    for split in ("val", "test", "train"):
        # The budget caps each split's total; a resumed build ranks only what is still missing of it.
        done = len(finished_queries(Path(specs[split].out_dir) / "results"))
        limit = None if limits[split] is None else max(0, limits[split] - done)
        truth[split] = run_teacher(
            specs[split], executor, progress=progress, shuffle_seed=config.seed, limit=limit
        )
        if len(truth[split]) < 2:
            raise FastGDAError(
                f"the teacher ranked {len(truth[split])} {split} queries within the budget; raise --budget-hours"
            )
    return truth


def _budget_limits(specs: dict, config: BuildConfig, steps) -> dict[str, int | None]:
    """Query counts per split that fit ``config.budget_hours`` of teacher time (estimated from one batch)."""
    from ..ground_truth import finished_queries

    wanted = {
        "train": config.num_train_queries,
        "val": config.num_val_queries,
        "test": config.num_test_queries,
    }
    finished = {s: len(finished_queries(Path(specs[s].out_dir) / "results")) for s in SPLITS}
    if all(finished[s] >= len(open_dataset(specs[s].queries_dir)) for s in SPLITS):
        return dict.fromkeys(SPLITS)  # a finished teacher: nothing to size or estimate
    job = {split: specs[split].job(progress=False).prepare() for split in ("val", "test")}
    pooled = job["val"].teacher.estimate_seconds_per_query(job["val"].queries)
    full = job["test"].teacher.estimate_seconds_per_query(job["test"].queries)
    seconds = {"train": pooled, "val": pooled, "test": full}
    if config.budget_hours is None:
        limits = dict.fromkeys(SPLITS)
    else:
        budget = config.budget_hours * 3600
        test = min(wanted["test"], max(2, int(config.test_share_of_budget * budget / full)))
        left = max(0.0, budget - test * full)
        val = min(wanted["val"], max(2, int(0.15 * left / pooled)))
        train = min(wanted["train"], max(2, int((left - val * pooled) / pooled)))
        limits = {"train": train, "val": val, "test": test}
        logger.info("teacher budget %.2f h: %d training, %d validation, %d test queries", config.budget_hours,
                    train, val, test)  # fmt: skip
    planned = {s: wanted[s] if limits[s] is None else limits[s] for s in SPLITS}
    steps.set_eta(sum(planned[s] * seconds[s] for s in SPLITS) / 60)
    return limits


def _features(train_data, queries: dict, out: Path, config: BuildConfig, progress: bool) -> dict:
    from ..features import load_or_embed

    compute = {"device": config.device, "dtype": config.dtype}
    features = {
        "items": load_or_embed(
            train_data.root, config.spec, out / "features" / "items", progress, **compute
        )
    }
    for split in SPLITS:
        features[split] = load_or_embed(
            queries[split], config.spec, out / "features" / f"q-{split}", progress, **compute
        )
    return features


def _ranker(features: dict, truth: dict, out: Path, config: BuildConfig, progress: bool):
    """The distilled ranker, and the scorer to serve: the ranker, or an untuned part that beat it on validation."""
    from ..ranker import Ranker, RankerTrainConfig, best_scorer, reusable_ranker

    folder = out / "ranker"
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
    ranker = reusable_ranker(folder, provenance, dependents=[out / "attributor"], progress=progress)
    if ranker is None:
        validation = (features["val"], truth["val"])
        ranker = Ranker.distil(
            features["train"], features["items"], truth["train"], ranker_config, validation=validation,
            progress=progress, device=config.device,
        )  # fmt: skip
        ranker.save(folder, extra={"training": asdict(ranker_config), "provenance": provenance})
    return ranker, best_scorer(ranker, features["items"], ranker.validation)


def _attributor(scorer, train_data, features: dict, truth: dict, out: Path):
    from ..attributor import Attributor

    folder = out / "attributor"
    if (folder / "manifest.json").is_file():
        return Attributor.load(folder)
    validation = (features["val"], truth["val"])
    attributor = Attributor.build(scorer, train_data, features["items"], validation=validation)
    attributor.save(folder)
    return attributor


def _evaluate(ranker, scorer, features: dict, truth: dict, out: Path):
    from ..evaluation import evaluate

    methods = {"fastgda ranker": ranker}
    if scorer is not ranker:
        methods[f"served: {scorer.name}"] = scorer
    evaluation = evaluate(methods, features["test"], features["items"], truth["test"])
    write_json_atomic(out / "evaluation.json", evaluation.to_json())
    return evaluation


def _seconds_per_query(attributor, queries: dict, state: dict, truth: dict) -> dict[str, float]:
    """The served attributor's time per query (image + prompt, median of 10, measured here) and the teacher's
    (its step's wall time over the queries it ranked in this build)."""
    from ..data import ImageCaptionFolder
    from .demo import median_seconds

    test = ImageCaptionFolder(queries["test"])
    image, prompt = str(test.image_path(0)), test.captions(0)[0]
    served = median_seconds(lambda: attributor.attribute(image, prompt, 10), 10)
    ranked = sum(len(t) for t in truth.values())
    teacher = state["steps"].get("teacher", {}).get("seconds", 0.0) / max(1, ranked)
    return {"attributor": served, "teacher": teacher}


def _report(
    train_data,
    queries,
    features,
    truth,
    evaluation,
    ranker,
    seconds,
    out: Path,
    config: BuildConfig,
) -> dict:
    from ..data import ImageCaptionFolder
    from ..evaluation import teacher_scores
    from .report import MethodRow, PanelRow, QueryPanel, render_report

    ls, n = evaluation.ls, len(features["items"])
    mid = ls[1]
    best = evaluation.best_untuned(mid)
    served = next((m for m in evaluation.map if m.startswith("served")), "fastgda ranker")
    timed = {"teacher (AbU+)": seconds["teacher"], served: seconds["attributor"]}
    rows = [
        MethodRow(
            "teacher (AbU+)",
            dict.fromkeys(ls, 1.0),
            dict.fromkeys(ls, 0.0),
            None,
            timed["teacher (AbU+)"],
        )
    ]
    rows += [
        MethodRow(
            name,
            {L: t[L]["mean"] for L in ls},
            {L: t[L]["stderr"] for L in ls},
            None,
            timed.get(name),
        )
        for name, t in evaluation.map.items()
    ]
    test = truth["test"]
    teacher = teacher_scores(test, n)
    query_set = ImageCaptionFolder(queries["test"])
    panels = []
    for row, q in enumerate(test.query_ids[:4]):
        panel = QueryPanel(
            _thumbnail(query_set.load_image(int(q))), query_set.captions(int(q))[0], None
        )
        for name, scores in [("teacher (AbU+)", teacher[row]), (served, evaluation.scores[served][row]),
                             (best, evaluation.scores[best][row])]:  # fmt: skip
            top = np.argsort(-scores, kind="stable")[:10]
            images = [_thumbnail(train_data.load_image(int(i))) for i in top]
            panel.rows.append(PanelRow(name, top.tolist(), scores[top].tolist(), images))
        panels.append(panel)
    ratio = evaluation.map[served][mid]["mean"] / evaluation.map[best][mid]["mean"]
    lines = [
        f"{train_data.root}: N = {n} training images; teacher rankings of {len(truth['train'])} training, "
        f"{len(truth['val'])} validation and {len(test)} test queries (test ranked over all N).",
        f"Served scorer: {served}, mAP(L={mid}) {evaluation.map[served][mid]['mean']:.3f} against the best untuned "
        f"baseline ({best}) {evaluation.map[best][mid]['mean']:.3f}: {ratio:.2f}x.",
        f"Teacher {seconds['teacher']:.1f} s per query (this build's wall time over its queries); attributor "
        f"{seconds['attributor'] * 1000:.1f} ms end to end (image + prompt): "
        f"{seconds['teacher'] / seconds['attributor']:,.0f}x faster.",
        "Validation mAP (within the teacher's pools): "
        + ", ".join(f"{k} {v:.3f}" for k, v in ranker.validation.items()),
    ]
    curves = {
        name: evaluation.curve(name, (0.002, 0.0042, 0.0085, 0.017, 0.034, 0.068))
        for name in evaluation.scores
    }
    notes = [
        "mAP(L): positives are the teacher's top-L; errors are standard errors over test queries."
    ]
    html = render_report(
        f"fastgda build: {Path(train_data.root).name}", lines, rows, ls, n, curves, panels, notes
    )
    write_text_atomic(out / "report.html", html)
    summary = {
        "num_train": n,
        "queries": {s: len(truth[s]) for s in SPLITS},
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


def _thumbnail(image: np.ndarray, size: int = 96) -> np.ndarray:
    """The image at most ``size`` pixels a side: the report inlines every image."""
    from PIL import Image

    if max(image.shape[:2]) <= size:
        return image
    picture = Image.fromarray(image)
    picture.thumbnail((size, size))
    return np.asarray(picture)
