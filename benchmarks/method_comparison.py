"""The papers' Table 1 on the standard world: AbU+, AbU, the influence family, the ranker and baselines under one
leave-K-out run, with each method's cost per query measured side by side (issue 18).

Every step is resumable and reuses what an earlier invocation finished, so the run can span days:

1. the teacher at other steps (AbU+ at α = 1e-4 and 1e-3: ``--alphas``), with an EK-FAC that leaves padded
   text slots out (the reference's counts them), and AbU with a diagonal Fisher, on the counterfactual's test
   queries (α = 1e-2 is the shipped reference ground truth);
2. gradient features and rankings of EK-FAC influence and D-TRAK (and TRAK with ``--with-trak``);
3. one coupled leave-K-out run over all of them, the demo's ranker, untuned text and random removal
   (``fastgda eval counterfactual`` into ``--out`` itself; about 110 retrains of the 400-step recipe);
4. each method's cost for one query (query 20) measured in one process, and its storage.

    python benchmarks/method_comparison.py --demo runs/demo-s16 --world runs/world --out runs/cf18 \\
        --workers 2 --json bench-results/method_comparison.data.json

``--costs-only`` skips the counterfactual (steps 1, 2 and 4). Every retrain is measured as it finishes, and
the measurements (about 20 KB a retrain, no weights) are kept in ``--measurements``, a folder in version
control, as are the rankings (``--rankings``): a run on a new machine starts from them, and ``--export-only``
saves what an unfinished run measured. ``--partial`` prints the table over the queries whose retrains are all
measured so far (every method on the same queries), without costs: an unfinished run's progress.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fastgda.app.reference import EXTENDED_QUERY_IDS, reference_split_dir
from fastgda.counterfactual import export_measurements, import_measurements

SHIPPED_FISHER = reference_split_dir("test").parent / "fisher"
TEACHER = "AbU+ (EK-FAC), α = 1e-2"  # the shipped reference: the counterfactual's "teacher"
PADDING_EXCLUDED = "AbU+ (EK-FAC, padding excluded), α = 1e-2"
K, STEPS = 68, 400  # the counterfactual's removal (3.4% of N) and retrain recipe, as the demo's
COST_QUERY = 20  # a planted query ("a large yellow cross"), as the demo's side-by-side timing
METRICS = (("delta_loss", 1e-3, "ΔL ×1e-3 ↑"), ("delta_mse", 1e-2, "ΔG-MSE ×1e-2 ↑"),
           ("delta_sim", 1e-1, "ΔG-sim ×1e-1 ↓"))  # fmt: skip


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "fastgda.cli", *args], check=True)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def methods_of(args, out: Path) -> dict[str, dict]:
    """Method name -> where its ranking (ground truth) and its stored state live, and its family."""
    methods = {
        TEACHER: {"family": "unlearning", "truth": reference_split_dir("test") / "ground_truth",
                  "storage": [SHIPPED_FISHER]},
    }  # fmt: skip
    for alpha in args.alphas:
        methods[f"AbU+ (EK-FAC), α = {alpha}"] = {
            "family": "unlearning", "truth": out / f"teacher-a{alpha}" / "ground_truth",
            "storage": [SHIPPED_FISHER], "alpha": float(alpha),
        }  # fmt: skip
    # The reference Fisher counts padded text slots; this one leaves them out (the mask-aware default since
    # issue 18), so the table decides the Fisher's padding handling too.
    methods[PADDING_EXCLUDED] = {
        "family": "unlearning", "truth": out / "teacher-padding-excluded" / "ground_truth",
        "storage": [out / "fisher-padding-excluded"],
    }  # fmt: skip
    methods["AbU (diagonal), α = 1e-2"] = {
        "family": "unlearning", "truth": out / "teacher-diag" / "ground_truth",
        "storage": [out / "fisher-diag"],
    }  # fmt: skip
    names = {"ekfac": "EK-FAC influence", "dtrak": "D-TRAK", "trak": "TRAK"}
    for m in influence_methods(args):
        methods[names[m]] = {
            "family": "influence", "truth": out / f"influence-{m}" / "ground_truth",
            "storage": [out / f"grad-{m}"] + ([SHIPPED_FISHER] if m == "ekfac" else []), "influence": m,
        }  # fmt: skip
    return methods


def ranking_done(run: Path) -> bool:
    return (run / "ground_truth" / "manifest.json").is_file()


def common_options(args) -> list[str]:
    """The model and the compute every ranking and fit runs with."""
    return ["--model", "shipped", "--device", args.device, "--threads", str(args.threads)]


def fit_state(args, out: Path) -> None:
    """The Fishers and gradient features behind the rankings (each command returns at once when done)."""
    common = common_options(args)
    if not (out / "fisher-padding-excluded" / "manifest.json").is_file():
        # The reference EK-FAC's samples and settings, its padded text slots left out.
        cli("teacher", "fisher", *common, "--data", args.world, "--kind", "ekfac", "--samples", "10000",
            "--batch-size", "64", "--padding", "excluded", "--out", str(out / "fisher-padding-excluded"))  # fmt: skip
    if not (out / "fisher-diag" / "manifest.json").is_file():
        # The reference EK-FAC's samples (10,000) and padding handling, so only the Fisher's form differs.
        cli("teacher", "fisher", *common, "--data", args.world, "--kind", "diagonal", "--samples", "10000",
            "--batch-size", "64", "--padding", "included", "--out", str(out / "fisher-diag"))  # fmt: skip
    for m in influence_methods(args):
        cli("influence", "features", *common, "--method", m, "--data", args.world,
            "--out", str(out / f"grad-{m}"))  # fmt: skip


def influence_methods(args) -> list[str]:
    return ["ekfac", "dtrak"] + (["trak"] if args.with_trak else [])


def prepare(args, out: Path, queries: str) -> None:
    """Steps 1 and 2: every ranking the counterfactual compares (each command resumes or returns at once).

    The rankings (ground truths of the 12 queries, about 0.2 MB each) are kept in ``--rankings`` beside the
    measurements, so a new machine reuses them, and with them every retrain key. The Fishers and gradient
    features behind them (about 30 min here) are fitted now only when a ranking is missing, so a resumed run
    goes straight to its retrains; the costs of step 4 fit them after the retrains.
    """
    kept = Path(args.rankings)
    if kept.is_dir():
        for folder in sorted(kept.iterdir()):
            if folder.is_dir() and not ranking_done(out / folder.name):
                shutil.copytree(folder, out / folder.name / "ground_truth")
    ids = ",".join(map(str, EXTENDED_QUERY_IDS))
    common = common_options(args)
    teacher = ["teacher", "run", *common, "--data", args.world, "--queries", queries, "--query-ids", ids,
               "--cache-dir", str(out / "before_losses")]  # fmt: skip
    rankings = {
        **{
            out / f"teacher-a{alpha}": [*teacher, "--fisher", str(SHIPPED_FISHER), "--alpha", alpha]
            for alpha in args.alphas
        },
        out / "teacher-padding-excluded": [
            *teacher,
            "--fisher",
            str(out / "fisher-padding-excluded"),
        ],
        out / "teacher-diag": [*teacher, "--fisher", str(out / "fisher-diag")],
        **{
            out / f"influence-{m}": [
                "influence",
                "rank",
                *common,
                "--method",
                m,
                "--features",
                str(out / f"grad-{m}"),
                *(["--fisher", str(SHIPPED_FISHER)] if m == "ekfac" else []),
                "--queries",
                queries,
                "--query-ids",
                ids,
            ]  # fmt: skip
            for m in influence_methods(args)
        },
    }
    if not all(ranking_done(run) for run in rankings):
        fit_state(args, out)
    for run, command in rankings.items():
        if not ranking_done(run):
            cli(*command, "--out", str(run))
        if not (kept / run.name / "manifest.json").is_file():
            shutil.copytree(run / "ground_truth", kept / run.name)


def counterfactual(args, out: Path, demo: Path, methods: dict) -> dict:
    """Step 3: the coupled leave-K-out run over every method (resumable), as ``counterfactual.json``."""
    measurements = Path(args.measurements)
    if (measurements / "manifest.json").is_file():
        print(f"# {import_measurements(measurements, out)} measured retrains from {measurements}")
    extra = [
        a
        for name, m in methods.items()
        if name != TEACHER
        for a in ("--method", f"{name}={m['truth']}")
    ]
    cli("eval", "counterfactual", "--model", "shipped", "--data", args.world,
        "--query-set", str(demo / "queries-test"), "--items", str(demo / "features" / "items"),
        "--queries", str(demo / "features" / "q-test"), "--ground-truth", str(methods[TEACHER]["truth"]),
        "--ranker", str(demo / "ranker"), "--baselines", "text", *extra,
        "--query-ids", ",".join(map(str, EXTENDED_QUERY_IDS)), "--k", str(K), "--steps", str(STEPS),
        "--random-seeds", "0", "1", "2", "--coupled", "--executor", args.executor, "--workers", str(args.workers),
        "--threads", "1", "--out", str(out), "--json", *(["--partial"] if args.partial else []))  # fmt: skip
    if args.partial:  # nothing new was measured
        return json.loads((out / "counterfactual.partial.json").read_text(encoding="utf-8"))
    export_measurements(out, measurements)
    return json.loads((out / "counterfactual.json").read_text(encoding="utf-8"))


def measure_costs(args, out: Path, demo: Path, methods: dict) -> dict[str, dict]:
    """Step 4: seconds per query of each method on one test query, in this process, and bytes stored."""
    import torch

    from fastgda.attributor import Attributor
    from fastgda.data import ImageCaptionFolder, open_dataset
    from fastgda.diffusion import TextToImageModel
    from fastgda.diffusion.model import model_digest
    from fastgda.diffusion.names import resolve_model_dir
    from fastgda.diffusion.queries import QuerySet
    from fastgda.diffusion.training import prepare_training_data
    from fastgda.features import FeatureExtractor, Features
    from fastgda.index import unit_rows
    from fastgda.influence import GradientFeatures, InfluenceConfig, InfluenceScorer
    from fastgda.unlearning import (
        BeforeLossStore,
        Fisher,
        ScoringConfig,
        Teacher,
        TeacherConfig,
        UnlearnConfig,
    )

    torch.set_num_threads(args.threads)
    model_dir = resolve_model_dir("shipped")
    model = TextToImageModel.from_pretrained(model_dir)
    dataset = open_dataset(args.world)
    data = prepare_training_data(model, dataset)
    key = {"model": model_digest(model_dir), "data": dataset.content_hash}
    # The teachers' shared set-up: every item's before losses, read from the runs' cache (computed where the
    # rankings came from --rankings).
    before = BeforeLossStore.open(out / "before_losses", ScoringConfig(), key, len(dataset))
    before.ensure(model, data, np.arange(len(dataset)))
    queries = QuerySet(demo / "queries-test")
    q, everything = COST_QUERY, np.arange(len(dataset))
    costs = {}
    for name, method in methods.items():
        began = time.perf_counter()
        if method["family"] == "unlearning":
            fisher = Fisher.load(method["storage"][0])
            config = TeacherConfig(unlearn=UnlearnConfig(alpha=method.get("alpha", 0.01)))
            teacher = Teacher(model, dataset, fisher, config, data=data, before_losses=before)
            setup = time.perf_counter() - began
            began = time.perf_counter()
            teacher.scores(queries, q, everything)
        else:
            fisher = Fisher.load(SHIPPED_FISHER) if method["influence"] == "ekfac" else None
            scorer = InfluenceScorer(
                model,
                GradientFeatures.load(method["storage"][0]),
                InfluenceConfig(method["influence"]),
                fisher,
            )
            if method["influence"] != "ekfac":
                scorer.kernel()  # once per run, for every query
            setup = time.perf_counter() - began
            began = time.perf_counter()
            scorer.scores(queries, [q])
        seconds = time.perf_counter() - began
        stored = sum(folder_bytes(p) for p in method["storage"])
        costs[name] = {"seconds": seconds, "setup_seconds": setup, "storage_bytes": stored}
        print(
            f"# {name}: {seconds:.2f} s per query (set-up {setup:.1f} s), {stored / 1e6:.0f} MB",
            flush=True,
        )

    image = queries.load_images()[q]
    prompt = ImageCaptionFolder(demo / "queries-test").records[q]["prompt"]
    attributor = Attributor.load(demo / "attributor", runtime="auto")  # the query path as served
    attributor.attribute(image, prompt, k=10)  # warm: encoders loaded
    timings = []
    for _ in range(20):
        began = time.perf_counter()
        attributor.attribute(image, prompt, k=10)
        timings.append(time.perf_counter() - began)
    costs["ranker (ranker)"] = {"seconds": float(np.median(timings)), "setup_seconds": 0.0,
                                "storage_bytes": folder_bytes(demo / "attributor")}  # fmt: skip
    items = Features.load(demo / "features" / "items")
    text = next(p for p in items.parts if p["modality"] == "text")
    bank = unit_rows(items.values[:, text["offset"] : text["offset"] + text["dim"]])
    encoder = FeatureExtractor(text["name"], runtime="auto")
    encoder.embed_pairs([image], [prompt])
    timings = []
    for _ in range(20):
        began = time.perf_counter()
        feature = encoder.embed_pairs([image], [prompt])
        np.argsort(-(bank @ unit_rows(feature)[0]))[:10]
        timings.append(time.perf_counter() - began)
    costs["untuned text (minilm)"] = {"seconds": float(np.median(timings)), "setup_seconds": 0.0,
                                      "storage_bytes": int(bank.nbytes)}  # fmt: skip
    return costs


def agreement(methods: dict) -> dict[str, tuple[float, float]]:
    """Each method's mAP(L = 17, 0.85% of N) against AbU+ at α = 1e-2 on the counterfactual's queries."""
    from fastgda.evaluation import map_at_l, mean_and_stderr, teacher_scores
    from fastgda.ground_truth import GroundTruth

    reference = GroundTruth.load(methods[TEACHER]["truth"]).select(EXTENDED_QUERY_IDS)
    out = {}
    for name, method in methods.items():
        if name != TEACHER and (Path(method["truth"]) / "manifest.json").is_file():
            truth = GroundTruth.load(method["truth"]).select(EXTENDED_QUERY_IDS)
            out[name] = mean_and_stderr(map_at_l(teacher_scores(truth, 2000), reference.ids, 17))
    return out


def decisions(summary: dict, family: dict[str, str], num_queries: int, partial: bool) -> list[str]:
    """The rule written down before the results (issue 18, with 1 of 12 queries measured), applied to the
    paired ΔL gaps d ± s (method minus AbU+ α = 1e-2 with the reference Fisher, which counts padded slots):

    - a teacher setting replaces the default only when d > s (it beats the default by more than one s.e.);
    - the Fisher's padding: excluded is the default since issue 18's part 3; it goes back to included (the
      reference's) only when included beats it by more than one s.e., i.e. when d < −s for the excluded row;
    - an influence method is offered as a distillation teacher (part 4) when |d| <= s, or d > s.
    """
    unfinished = " (unfinished run: what the rule would say; nothing is decided)" if partial else ""
    lines = [
        f"Decisions (pre-registered rule, {num_queries} queries; ΔL gaps ×1e-3, paired){unfinished}:"
    ]
    for name, figures in summary.items():
        gap = figures.get("paired_delta_loss")
        if gap is None or gap["stderr"] is None:
            continue
        d, s = gap["mean"] * 1e3, gap["stderr"] * 1e3
        if name == PADDING_EXCLUDED:
            verdict = ("included (the reference's) beats it: the default goes back to included" if d < -s
                       else "not beaten by more than one s.e.: excluded stays the default")  # fmt: skip
        elif family[name] == "unlearning":
            verdict = ("beats the default by more than one s.e.: it becomes the default" if d > s
                       else "does not beat the default by more than one s.e.: the default stays")  # fmt: skip
        elif family[name] == "influence":
            verdict = ("within one s.e. of AbU+ or better: offer it as a distillation teacher" if d >= -s
                       else "more than one s.e. below AbU+: not offered as a teacher")  # fmt: skip
        else:
            continue
        lines.append(f"- {name}: {d:+.2f} ± {s:.2f}: {verdict}")
    return lines


def robustness(result: dict, demo: Path, rows: list[str], names: dict) -> dict[str, dict]:
    """Two readings of the paired ΔL gaps that one query cannot carry, beside the pre-registered rule (which
    they do not change): on how many queries a method's removals beat AbU+ α = 1e-2's, and the paired gap on
    the queries naming no planted concept (a planted query's ΔL is far larger than the others')."""
    from fastgda.data import ImageCaptionFolder

    records = ImageCaptionFolder(demo / "queries-test").records
    query_rows = result["evaluated_query_rows"]
    plain = [i for i, q in enumerate(query_rows) if not records[q].get("concept")]
    teacher = np.asarray(result["per_query"]["teacher"]["delta_loss"])
    out = {}
    for name in rows:
        if name == TEACHER:
            continue
        diff = np.asarray(result["per_query"][names.get(name, name)]["delta_loss"]) - teacher
        out[name] = {
            "wins": int((diff > 0).sum()),
            "queries": len(diff),
            "unplanted_gap": {**figure(diff[plain]), "queries": len(plain)},
        }
    return out


def figure(values) -> dict:
    """{"mean", "stderr"} of per-query values (``mean_and_stderr``); stderr None for one query, since the JSON
    and the report take None, not NaN."""
    from fastgda.evaluation import mean_and_stderr

    mean, stderr = mean_and_stderr(values)
    return {"mean": mean, "stderr": None if np.isnan(stderr) else stderr}


def gap_text(gap: dict) -> str:
    """A paired gap ×1e-3 as "+0.12 ± 0.05", or "+0.12" where one query gives no standard error."""
    spread = f" ± {gap['stderr'] * 1e3:.2f}" if gap["stderr"] is not None else ""
    return f"{gap['mean'] * 1e3:+.2f}{spread}"


def print_robustness(result: dict, readings: dict[str, dict]) -> list[str]:
    """Print the largest query's share of the teacher's ΔL and the ``robustness`` table; return the same
    readings as sentences for the report."""
    teacher = np.asarray(result["per_query"]["teacher"]["delta_loss"])
    top = int(np.argmax(teacher))
    print()
    print(f"{TEACHER}'s ΔL on its largest query (test query {result['evaluated_query_rows'][top]}): "
          f"{teacher[top] * 1e3:.2f} ×1e-3, {teacher[top] / teacher.sum():.0%} of its total over the "
          f"{len(teacher)} queries")  # fmt: skip
    plain = next(iter(readings.values()))["unplanted_gap"]["queries"]
    print()
    print(f"| method | queries its removals beat {TEACHER}'s on (ΔL) | ΔL gap ×1e-3 on the {plain} queries "
          "naming no planted concept (paired) |")  # fmt: skip
    print("|---|---:|---:|")
    for name, r in readings.items():
        print(f"| {name} | {r['wins']} of {r['queries']} | {gap_text(r['unplanted_gap'])} |")
    return [
        f"{name}: its removals beat {TEACHER}'s on {r['wins']} of {r['queries']} queries; paired ΔL gap on "
        f"the {plain} queries naming no planted concept {gap_text(r['unplanted_gap'])} ×1e-3"
        for name, r in readings.items()
    ]


def write_report(
    path: Path, summary: dict, family: dict, result: dict, partial: bool, findings: list[str]
) -> None:
    """The table as a self-contained page (``fastgda.pipeline.html``): Table 1's columns, the ΔL chart, and
    ``findings`` (the rule's verdicts and the robustness readings) as notes."""
    from fastgda.pipeline.html import (
        CounterfactualRow,
        CounterfactualSection,
        render_counterfactual_report,
    )

    def pair(figures: dict | None):
        return None if figures is None else (figures["mean"], figures["stderr"])

    rows = []
    for name, figures in summary.items():
        cost = figures["cost"] or {}
        rows.append(CounterfactualRow(
            name, *(pair(figures[m]) for m, _, _ in METRICS), cost.get("seconds"), family[name],
            cost.get("storage_bytes"), pair(figures.get("paired_delta_loss")),
        ))  # fmt: skip
    queries = result["evaluated_query_rows"]
    section = CounterfactualSection(rows, K, len(queries), STEPS, teacher=TEACHER)
    title = "Attribution methods under one leave-K-out run" + (" (unfinished)" if partial else "")
    summary_lines = [
        f"N = 2,000 training images of the standard world; K = {K} removed per method and query; test "
        f"queries {queries}; coupled {STEPS}-step retrains (θ₀ retrained the same way).",
        "Produced by benchmarks/method_comparison.py; the figures are those it printed.",
    ]
    notes = [
        "Latency: seconds to answer one query (test query 20) in one process on this machine, set-up (loading "
        "the Fisher or the gradient features) excluded; storage: what the method keeps to answer a query.",
        "ΔL − teacher's: each method's ΔL minus AbU+ α = 1e-2's on the same query, mean ± standard error of the "
        "differences.",
    ]
    if partial:
        notes.append("Unfinished run: only the queries whose retrains are all measured; no costs.")
    notes += findings
    path.write_text(
        render_counterfactual_report(title, summary_lines, section, 2000, notes), encoding="utf-8"
    )


def seconds_text(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="runs/demo-s16", help="a finished `fastgda demo` folder")
    parser.add_argument("--world", default="runs/world")
    parser.add_argument("--out", default="runs/method-comparison")
    parser.add_argument(
        "--alphas",
        nargs="*",
        default=["1e-4", "1e-3"],
        help="AbU+ steps besides the reference's 1e-2",
    )
    parser.add_argument("--with-trak", action="store_true", help="also TRAK (12 more retrains)")
    parser.add_argument("--costs-only", action="store_true", help="skip the leave-K-out run")
    parser.add_argument(
        "--partial",
        action="store_true",
        help="retrain nothing: the table over the queries whose retrains are all measured (an unfinished "
        "run's progress; no costs)",
    )
    parser.add_argument("--executor", default="ray", choices=["local", "ray"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument(
        "--report",
        help="the table as an HTML page (default: report.html in --out, report.partial.html with --partial)",
    )
    parser.add_argument(
        "--measurements",
        default="bench-results/method_comparison.retrains",
        help="measured retrains kept across machines (read before the run, written after it)",
    )
    parser.add_argument(
        "--rankings",
        default="bench-results/method_comparison.rankings",
        help="every compared method's rankings of the queries, kept across machines like --measurements",
    )
    parser.add_argument(
        "--export-only",
        action="store_true",
        help="only copy what --out has measured so far into --measurements (for an unfinished run)",
    )
    args = parser.parse_args()
    demo, out = Path(args.demo), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.export_only:
        count = export_measurements(out, args.measurements)
        print(f"{count} measured retrains in {args.measurements}")
        return

    began = time.perf_counter()
    prepare(args, out, str(demo / "queries-test"))
    methods = methods_of(args, out)
    result = None if args.costs_only else counterfactual(args, out, demo, methods)
    # A partial table is a progress report: the costs are measured once, beside the finished run's figures.
    if not args.partial:
        fit_state(args, out)  # what the costs load: every method's Fisher or gradient features
    costs = {} if args.partial else measure_costs(args, out, demo, methods)
    evaluated = result["evaluated_query_rows"] if result else list(EXTENDED_QUERY_IDS)
    print(f"N = 2,000, K = {K}, {len(evaluated)} test queries (ids {evaluated}), coupled "
          f"{STEPS}-step retrains; costs on test query {COST_QUERY}, {args.threads} threads; this run "
          f"{(time.perf_counter() - began) / 60:.1f} min")  # fmt: skip
    print()
    names = {TEACHER: "teacher"}
    header = "| family | method | latency per query | storage |"
    if result:
        header += (
            " " + " | ".join(label for _, _, label in METRICS) + " | ΔL − AbU+ α=1e-2 (paired) |"
        )
    print(header)
    print("|---|---|---:|---:|" + ("---:|" * (len(METRICS) + 1) if result else ""))
    rows = (
        list(methods)
        + ["ranker (ranker)", "untuned text (minilm)"]
        + (["random"] if result else [])
    )
    family = {**{n: m["family"] for n, m in methods.items()}, "ranker (ranker)": "fastgda",
              "untuned text (minilm)": "feature", "random": "–"}  # fmt: skip
    summary = {}
    for name in rows:
        cost = costs.get(name)
        cells = [family[name], name, seconds_text(cost["seconds"]) if cost else "–",
                 f"{cost['storage_bytes'] / 1e6:,.0f} MB" if cost else "–"]  # fmt: skip
        summary[name] = {"cost": cost}
        if result:
            per_query = result["per_query"][names.get(name, name)]
            for metric, scale, _ in METRICS:
                summary[name][metric] = value = figure(per_query[metric])
                spread = f" ± {value['stderr'] / scale:.2f}" if value["stderr"] is not None else ""
                cells.append(f"{value['mean'] / scale:.2f}{spread}")
            if name == TEACHER:
                cells.append("–")
            else:
                gap = figure(
                    np.subtract(
                        per_query["delta_loss"], result["per_query"]["teacher"]["delta_loss"]
                    )
                )
                summary[name]["paired_delta_loss"] = gap
                cells.append(gap_text(gap))
        print("| " + " | ".join(cells) + " |")
    if costs.get(TEACHER):
        base = costs[TEACHER]["seconds"]
        print()
        print(f"Per query against {TEACHER} ({seconds_text(base)}), side by side in this run: " + ", ".join(
            f"{name} {base / cost['seconds']:,.1f}x" for name, cost in costs.items() if name != TEACHER
        ) + " faster")  # fmt: skip
    agree = agreement(methods)
    print()
    print(f"| method | mAP(17) against {TEACHER}, {len(EXTENDED_QUERY_IDS)} queries |")
    print("|---|---:|")
    for name, (mean, se) in agree.items():
        print(f"| {name} | {mean:.3f} ± {se:.3f} |")
    if result:
        print()
        verdicts = decisions(summary, family, len(evaluated), args.partial)
        for line in verdicts:
            print(line)
        readings = robustness(result, demo, rows, names)
        findings = [line.removeprefix("- ") for line in verdicts] + print_robustness(
            result, readings
        )
        report = Path(args.report or out / f"report{'.partial' if args.partial else ''}.html")
        write_report(report, summary, family, result, args.partial, findings)
        print(f"\nreport: {report}")
    if args.json:
        figures = {"methods": summary, "costs": costs, "agreement_map17": agree}
        if result:
            figures["robustness"] = readings
        Path(args.json).write_text(json.dumps(figures, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
