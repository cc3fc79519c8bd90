"""The main job on the embedded world, end to end, with a report people can look at.

``run_demo`` loads the standard world, the shipped model and the shipped reference ground truth; embeds the
training set and the reference queries; trains the ranker; builds the attributor; evaluates mAP(L) and planted
recall against untuned baselines on the test queries; runs the live teacher and the attributor on the same test
query to time them side by side; and writes ``report.html`` and ``summary.json``. Every step reuses what an
earlier run left in ``out`` (features, ranker, attributor, before-losses), so a warm rerun only evaluates and
re-times. The steps after the world are the pipeline's (``fastgda.pipeline``: the same step runner, features,
ranker, attributor, evaluation and report as ``fastgda build``); the demo gives them the shapes world, the shipped
model and the reference's rankings, and adds the live timing and the counterfactual.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .._artifacts import write_text_atomic
from ..counterfactual import CounterfactualConfig
from ..pipeline.distil import build_attributor, distil_ranker, embed_features, evaluate_test
from ..pipeline.report import TEACHER_NAME, query_panels, write_report
from ..pipeline.steps import StepRunner, median_seconds
from ..ranker import RankerTrainConfig

DEMO_SPEC = "effnet+minilm"
CURVE_FRACTIONS = (0.002, 0.0042, 0.0085, 0.017, 0.034, 0.068, 0.136)
RANKER_NAME = "fastgda ranker"
STEP_NAMES = ("world", "features", "ranker", "attributor", "evaluation", "timing", "counterfactual",
              "report")  # fmt: skip


@dataclass
class _Inputs:
    """What every step reads: the world, the reference's rankings and query records, and the features."""

    out: Path
    model_dir: Path
    reference: Path
    world: object
    truth: dict  # split -> GroundTruth
    test_records: list[dict]
    features: (
        dict  # "items": Features of the training set; split -> Features of the reference queries
    )

    @property
    def num_train(self) -> int:
        return len(self.world)

    def concepts(self) -> list[str | None]:
        """The planted concept each test query names, in the test ground truth's order."""
        return [self.test_records[int(q)].get("concept") for q in self.truth["test"].query_ids]


def run_demo(
    out: str | Path,
    seed: int = 0,
    panels: int = 4,
    epochs: int | None = None,
    counterfactual: bool = False,
    counterfactual_steps: int | None = None,
    executor=None,
    model_dir=None,
    reference_root=None,
) -> dict:
    """Run the demo into ``out`` and return its summary (also written to ``out/summary.json``).

    ``epochs`` caps ranker training (default: the ``RankerTrainConfig.demo`` preset's, with early stopping).
    ``counterfactual``: also run the leave-K-out evaluation (``CounterfactualConfig.demo``: K = 3.4% of N,
    ``STANDARD_QUERY_IDS``, retrains of ``counterfactual_steps`` steps on ``executor``; resumable). A finished one
    in ``out/counterfactual`` is shown in the report either way.
    ``model_dir`` / ``reference_root``: another model and its reference ground truth (``--profile full``);
    default: the shipped ones.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = StepRunner(out, STEP_NAMES, "demo", state_file="demo.json")
    world = steps.run("world", _world, out, title="world (standard shapes world, N = 2000)")
    inputs = steps.run(
        "features", _load_inputs, out, world, model_dir, reference_root,
        title=f"features ({DEMO_SPEC}) of the training set and the reference queries",
    )  # fmt: skip
    ranker = steps.run("ranker", _ranker, inputs, seed, epochs,
                       title="ranker (distilled from the reference teacher rankings)")  # fmt: skip
    attributor = steps.run(
        "attributor", build_attributor, ranker, inputs.world, inputs.features, inputs.truth,
        out / "attributor", title="attributor (ranker embeddings of every training image, exact index)",
    )  # fmt: skip
    evaluation = steps.run("evaluation", _evaluate, inputs, ranker, seed,
                           title="evaluation on the test queries (mAP(L), planted recall)")  # fmt: skip
    timing = steps.run("timing", _time_side_by_side, inputs, attributor, evaluation,
                       title="live teacher vs attributor on one test query, side by side")  # fmt: skip
    leave_k_out = None
    if counterfactual or (out / "counterfactual" / "plan.json").exists():
        config = CounterfactualConfig.demo(evaluation.ls[-1])
        if counterfactual_steps:
            config = replace(config, steps=counterfactual_steps)
        leave_k_out = steps.run(
            "counterfactual", _counterfactual, inputs, ranker, config, counterfactual, executor,
            timing["seconds"],
            title="counterfactual: leave-K-out retraining" + ("" if counterfactual else " (stored)"),
        )  # fmt: skip
    summary = steps.run("report", _report, inputs, ranker, evaluation, timing, leave_k_out, panels)
    summary["step_seconds"] = steps.seconds
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def _world(out: Path):
    from . import pack

    return pack.ensure_world(out / "world")


def _load_inputs(out: Path, world, model_dir, reference_root) -> _Inputs:
    from . import pack
    from .reference import (
        reference_dir,
        reference_ground_truth,
        reference_queries,
        reference_split_dir,
    )

    root = Path(reference_root) if reference_root else reference_dir()
    truth = {s: reference_ground_truth(s, root) for s in ("train", "val", "test")}
    query_dirs = {s: reference_split_dir(s, root) for s in truth}
    return _Inputs(
        out=out,
        model_dir=Path(model_dir) if model_dir else pack.model_dir(),
        reference=root,
        world=world,
        truth=truth,
        test_records=reference_queries("test", root),
        features=embed_features(world.root, query_dirs, DEMO_SPEC, out),
    )


def _ranker(inputs: _Inputs, seed: int, epochs: int | None):
    """The demo preset's ranker, reused when an earlier run distilled it from this reference and settings."""
    from .reference import reference_digest

    config = replace(RankerTrainConfig.demo(), seed=seed, **({"epochs": epochs} if epochs else {}))
    # A ranker left by an earlier run is reused only if it was distilled from this reference with these
    # settings; otherwise (a new pack, another --seed) it and the attributor built from it are stale.
    provenance = {
        "reference_manifest_sha256": reference_digest(inputs.reference),
        "seed": seed,
        "epochs": epochs,
        "part_weights": list(config.part_weights),
        "train_top": config.train_top,
        "members": config.members,
    }
    return distil_ranker(inputs.features, inputs.truth, inputs.out / "ranker", config, provenance,
                         dependents=(inputs.out / "attributor",))  # fmt: skip


def _evaluate(inputs: _Inputs, ranker, seed: int):
    return evaluate_test(
        {RANKER_NAME: ranker}, inputs.features, inputs.truth, concepts=inputs.concepts(),
        exemplars=inputs.world.concepts, seed=seed,
    )  # fmt: skip


def _time_side_by_side(inputs: _Inputs, attributor, evaluation) -> dict:
    """The live teacher on one test query (a planted one if any) against the attributor, in one process."""
    from ..diffusion import TextToImageModel
    from ..ground_truth import read_query_result
    from ..unlearning.jobs import TeacherJob, teacher_config_from_json
    from .reference import reference_info, reference_query_set, reference_split_dir

    test = inputs.truth["test"]
    concepts = inputs.concepts()
    planted = [q for q, c in zip(test.query_ids, concepts, strict=True) if c]
    live_q = int(planted[0] if planted else test.query_ids[0])
    model = TextToImageModel.from_pretrained(inputs.model_dir)
    query_set = reference_query_set(
        "test", model, inputs.model_dir, inputs.out / "queries-test", inputs.reference
    )
    config = teacher_config_from_json(reference_info(inputs.reference)["splits"]["test"]["teacher"])
    began = time.perf_counter()
    job = TeacherJob.open(
        inputs.model_dir, inputs.world.root, query_set, inputs.reference / "fisher",
        inputs.out / "teacher-live", config, cache_dir=inputs.out / "before_losses",
    ).prepare()  # fmt: skip
    setup_seconds = (
        time.perf_counter() - began
    )  # model, data, Fisher, before-loss cache (shared by all queries)
    began = time.perf_counter()
    job.run_query(live_q)
    teacher_seconds = time.perf_counter() - began
    live_ids, _ = read_query_result(job.results_dir / f"q_{live_q:06d}.npz")
    mid = evaluation.ls[1]
    row = int(np.flatnonzero(test.query_ids == live_q)[0])
    agreement = len(set(live_ids[:mid].tolist()) & set(test.ids[row, :mid].tolist())) / mid

    record = inputs.test_records[live_q]
    image_path = str(reference_split_dir("test", inputs.reference) / record["file"])
    prompt = record["prompt"]
    attribute_seconds = median_seconds(lambda: attributor.attribute(image_path, prompt, 10), 20)
    query_features = attributor.query_features([image_path], [prompt])
    search_seconds = median_seconds(lambda: attributor.attribute_features(query_features, 10), 50)
    baseline_part = attributor.baseline_part()
    baseline_seconds = median_seconds(
        lambda: attributor.untuned(attributor.query_features([image_path], [prompt]), 10), 20
    )
    return {
        "live_query": live_q,
        "teacher_seconds": teacher_seconds,
        "setup_seconds": setup_seconds,
        "attribute_seconds": attribute_seconds,
        "search_seconds": search_seconds,
        "agreement": agreement,
        "seconds": {
            TEACHER_NAME: teacher_seconds,
            RANKER_NAME: attribute_seconds,
            f"untuned text ({baseline_part})": baseline_seconds,
        },
    }


def _counterfactual(
    inputs: _Inputs,
    ranker,
    config: CounterfactualConfig,
    run: bool,
    executor,
    seconds: dict[str, float],
):
    """The leave-K-out section of the report: run the job (``run``) or reuse a finished one; None if unfinished."""
    from ..counterfactual import CounterfactualJob, method_rankings
    from ..pipeline.html import CounterfactualRow, CounterfactualSection
    from .reference import STANDARD_QUERY_IDS

    test = inputs.truth["test"].select(STANDARD_QUERY_IDS)
    rows = test.query_ids
    rankings = method_rankings(
        inputs.features["test"].select(rows),
        inputs.features["items"],
        test.ids,
        {RANKER_NAME: ranker},
        k=config.k,
        baselines="parts",
    )
    job = CounterfactualJob(
        inputs.model_dir, inputs.world.root, inputs.out / "queries-test", rankings,
        inputs.out / "counterfactual", config, query_rows=rows.tolist(),
    )  # fmt: skip
    if run:
        job.run(executor=executor)
    if job.pending():
        return None
    result = job.cached_result() or job.merge()
    table = []
    for method, metrics in result.summary().items():
        name = TEACHER_NAME if method == "teacher" else method
        cells = [
            (metrics[m]["mean"], metrics[m]["stderr"])
            for m in ("delta_loss", "delta_mse", "delta_sim")
        ]
        table.append(CounterfactualRow(name, *cells, seconds.get(name)))
    notes = [
        f"Retrains use a reduced recipe ({config.steps} steps of the pack's schedule; θ₀ retrained the same way), "
        "so ΔL measures what these models forget, not the shipped 10,000-step model.",
        f"Random removal: {len(config.random_seeds)} sets shared by every query. Untuned baselines: "
        "image and text parts.",
    ]
    # Say plainly which of the evidence claims the queries support, and which they do not resolve.
    notes += [check.describe() for check in result.ordering(RANKER_NAME)]
    return CounterfactualSection(table, config.k, len(rows), config.steps, notes)


def _report(inputs: _Inputs, ranker, evaluation, timing: dict, leave_k_out, panels: int) -> dict:
    """Write ``report.html`` and return the summary."""
    from ..ranker import summarise_history

    mid, n = evaluation.ls[1], inputs.num_train
    recall = evaluation.planted_recall or {}
    has_planted = any(inputs.concepts())
    best = evaluation.best_untuned(mid)
    ratio = evaluation.ratio(RANKER_NAME, mid)
    truth = inputs.truth
    summary_lines = [
        f"Standard world: N = {n} training images; teacher rankings of {len(truth['train'])} training, "
        f"{len(truth['val'])} validation and {len(truth['test'])} test queries (test ranked over all N).",
        f"Ranker ({DEMO_SPEC}, ensemble of {ranker.shape.members}): mAP(L={mid}) "
        f"{evaluation.map[RANKER_NAME][mid]['mean']:.3f} vs the best untuned baseline ({best}) "
        f"{evaluation.map[best][mid]['mean']:.3f}: {ratio:.2f}x.",
        f"Live teacher on test query {timing['live_query']}: {timing['teacher_seconds']:.1f} s per query (plus "
        f"{timing['setup_seconds']:.1f} s of shared set-up); attributor {timing['attribute_seconds'] * 1000:.1f} ms "
        f"end to end ({timing['search_seconds'] * 1000:.2f} ms with features given): "
        f"{timing['teacher_seconds'] / timing['attribute_seconds']:,.0f}x faster, measured side by side.",
        f"The live teacher's top {mid} agrees with the shipped reference's on {timing['agreement']:.0%} of items.",
    ]
    if leave_k_out is not None:
        loss = {row.name: row.delta_loss[0] * 1e3 for row in leave_k_out.rows}
        summary_lines.append(
            f"Leave-{leave_k_out.k}-out retraining on {leave_k_out.num_queries} test queries, ΔL ×1e-3: "
            + ", ".join(f"{name} {value:.2f}" for name, value in loss.items())
            + "."
        )
    notes = [
        "mAP(L): positives are the teacher's top-L; precision accumulates over the whole predicted ranking "
        "(method.md §7.1). Errors are standard errors over test queries.",
        "Planted recall: the share of a planted concept's exemplars in the top k (k = their count), over test "
        "queries whose prompt names the concept.",
    ]
    if leave_k_out is None:
        notes.append(
            "Counterfactual leave-K-out retraining was not run (fastgda demo --counterfactual)."
        )
    write_report(
        inputs.out / "report.html", "fastgda on the embedded world", summary_lines, evaluation,
        timing["seconds"], _panels(inputs, evaluation, best, panels), notes, n,
        recall=recall if has_planted else None, counterfactual=leave_k_out, curve_fractions=CURVE_FRACTIONS,
    )  # fmt: skip
    return {
        "num_train": n,
        "spec": DEMO_SPEC,
        "map": evaluation.map,
        "planted_recall": {
            (TEACHER_NAME if k == "teacher" else k): v[0] for k, v in recall.items()
        },
        "best_untuned": best,
        "ratio_vs_best_untuned": ratio,
        "live_query": timing["live_query"],
        "teacher_seconds_per_query": timing["teacher_seconds"],
        "teacher_setup_seconds": timing["setup_seconds"],
        "attributor_seconds_per_query": timing["attribute_seconds"],
        "search_seconds_per_query": timing["search_seconds"],
        "speedup": timing["teacher_seconds"] / timing["attribute_seconds"],
        "speedup_features_given": timing["teacher_seconds"] / timing["search_seconds"],
        "live_teacher_agreement": timing["agreement"],
        "ranker_epochs": summarise_history(ranker.history)[0],
        "counterfactual": None
        if leave_k_out is None
        else {
            "k": leave_k_out.k,
            "retrain_steps": leave_k_out.retrain_steps,
            "delta_loss": {r.name: r.delta_loss for r in leave_k_out.rows},
        },
        "report": str(inputs.out / "report.html"),
    }


def _panels(inputs: _Inputs, evaluation, best: str, count: int) -> list:
    """Query panels: half planted queries, half others; the teacher's, the ranker's and the best baseline's top-10."""
    from ..data import ImageCaptionFolder
    from .reference import reference_split_dir

    test = inputs.truth["test"]
    concepts = inputs.concepts()
    planted = [q for q, c in zip(test.query_ids, concepts, strict=True) if c]
    chosen = (
        planted[: count // 2]
        + [q for q in test.query_ids if q not in planted][: count - min(len(planted), count // 2)]
    )
    query_set = ImageCaptionFolder(reference_split_dir("test", inputs.reference))
    records = inputs.test_records
    return query_panels(
        test, evaluation, [RANKER_NAME, best], [int(q) for q in chosen], query_set.load_image,
        lambda q: records[q]["prompt"], inputs.world.load_image, inputs.num_train,
        concept_of=lambda q: records[q].get("concept"), exemplars=inputs.world.concepts,
    )  # fmt: skip
