"""Leave-K-out counterfactual on the standard world: how much each method's top-K makes the model forget a query.

Runs ``fastgda eval counterfactual`` (resumable: finished retrains are reused) over the demo's features, ranker
and the shipped test ground truth, then prints mean ± standard error per method, each method's ΔL as a share of
the teacher's, paired per-query differences, and whether the acceptance ordering holds
(teacher >= ranker > best untuned > random).

The default query selection takes test queries of every kind in their proportions (first query of each of the
first four held-out scenes, the first two planted, the first two two-object queries).

    python benchmarks/counterfactual.py --demo runs/demo-time/demo --world runs/world \\
        --out runs/counterfactual --steps 400 --executor ray --workers 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fastgda.app.reference import STANDARD_QUERY_IDS, reference_split_dir
from fastgda.app.world import ShapesWorld
from fastgda.counterfactual import CounterfactualConfig, CounterfactualResult
from fastgda.data import ImageCaptionFolder

DEMO = CounterfactualConfig.demo(k=1)  # the demo's retrain steps and random seeds

DEFAULT_QUERY_IDS = ",".join(map(str, STANDARD_QUERY_IDS))
METRICS = (("delta_loss", 1e-3, "ΔL ×1e-3 ↑"), ("delta_mse", 1e-2, "ΔG-MSE ×1e-2 ↑"),
           ("delta_sim", 1e-1, "ΔG-sim ×1e-1 ↓"))  # fmt: skip


def mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std() / np.sqrt(len(v))) if len(v) > 1 else 0.0


def removed_ids(out: Path, key: str) -> list[int]:
    return json.loads((out / "retrains" / key / "removed.json").read_text(encoding="utf-8"))[
        "removed"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--demo", default="runs/demo-time/demo", help="a finished `fastgda demo` folder"
    )
    parser.add_argument("--world", default="runs/world")
    parser.add_argument("--out", default="runs/counterfactual")
    parser.add_argument("--k", type=int, default=68, help="3.4%% of N = 2,000")
    parser.add_argument(
        "--steps", type=int, default=DEMO.steps, help="reduced recipe for every retrain"
    )
    parser.add_argument("--query-ids", default=DEFAULT_QUERY_IDS)
    parser.add_argument("--random-seeds", type=int, default=len(DEMO.random_seeds))
    parser.add_argument(
        "--baselines", default="parts", help="untuned baselines (see eval counterfactual)"
    )
    parser.add_argument(
        "--coupled",
        action="store_true",
        help="retrains draw batches by item id (common random numbers)",
    )
    parser.add_argument("--executor", default="ray", choices=["local", "ray"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    demo, out = Path(args.demo), Path(args.out)

    command = [
        sys.executable, "-m", "fastgda.cli", "eval", "counterfactual", "--model", "shipped",
        "--data", args.world, "--query-set", str(demo / "queries-test"),
        "--items", str(demo / "features" / "items"), "--queries", str(demo / "features" / "q-test"),
        "--ground-truth", str(reference_split_dir("test") / "ground_truth"),
        "--ranker", str(demo / "ranker"), "--baselines", args.baselines, "--query-ids", args.query_ids,
        "--k", str(args.k), "--steps", str(args.steps), "--random-seeds", *map(str, range(args.random_seeds)),
        "--executor", args.executor, "--workers", str(args.workers), "--threads", "2",
        "--out", str(out), "--json",
    ] + (["--coupled"] if args.coupled else [])  # fmt: skip
    began = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - began
    result = json.loads((out / "counterfactual.json").read_text(encoding="utf-8"))
    plan = json.loads((out / "plan.json").read_text(encoding="utf-8"))
    retrain_seconds = [
        json.loads(p.read_text(encoding="utf-8"))["training"]["seconds_this_run"]
        for p in sorted((out / "retrains").glob("*/model/manifest.json"))
    ]
    per_query = result["per_query"]
    queries = len(per_query["teacher"]["delta_loss"])
    print(
        f"N = 2,000, K = {args.k} ({args.k / 2000:.1%} of N), {queries} test queries "
        f"(ids {args.query_ids}), random removal {args.random_seeds} seeds shared by all queries; "
        f"{plan['retrains']} retrains of {plan['recipe']['steps']} steps "
        f"(median {statistics.median(retrain_seconds):.0f} s each, one thread per Ray worker); "
        f"this run {wall / 60:.1f} min (finished retrains are reused)"
    )
    print()
    teacher_dl = mean_se(per_query["teacher"]["delta_loss"])[0]
    header = "| method | " + " | ".join(label for _, _, label in METRICS) + " | ΔL / teacher's |"
    print(header)
    print("|---|" + "---:|" * (len(METRICS) + 1))
    summary = {}
    for method, metrics in per_query.items():
        cells = []
        summary[method] = {}
        for name, scale, _ in METRICS:
            mean, se = mean_se(metrics[name])
            summary[method][name] = {"mean": mean, "stderr": se}
            cells.append(f"{mean / scale:.2f} ± {se / scale:.2f}")
        share = summary[method]["delta_loss"]["mean"] / teacher_dl if teacher_dl else float("nan")
        print(f"| {method} | " + " | ".join(cells) + f" | {share:.0%} |")

    # For the queries naming a planted concept: how many of its exemplars each method removed (the teacher's
    # ΔL there comes from removing them).
    world = ShapesWorld(args.world)
    records = ImageCaptionFolder(demo / "queries-test").records
    planted = [
        (i, records[q]["concept"])
        for i, q in enumerate(plan["query_rows"])
        if records[q].get("concept")
    ]
    if planted:
        print()
        print(
            f"Planted exemplars removed, on the {len(planted)} queries naming a planted concept "
            f"(of {len(world.concepts[planted[0][1]])} each):"
        )
        for method, keys in plan["sets"].items():
            cells = []
            for i, concept in planted:
                # Random: one removed set per seed, shared by every query; the mean over seeds.
                own = keys if method == "random" else [keys[i]]
                counts = [
                    len(set(removed_ids(out, key)) & set(world.concepts[concept])) for key in own
                ]
                cells.append(f"{np.mean(counts):.3g} ({concept})")
            print(f"- {method}: " + ", ".join(cells))
        others = [i for i in range(queries) if i not in {i for i, _ in planted}]
        print()
        print(f"ΔL ×1e-3 on the {len(others)} queries naming no planted concept (mean ± s.e.):")
        for method, metrics in per_query.items():
            mean, se = mean_se(np.asarray(metrics["delta_loss"])[others])
            print(f"- {method}: {mean * 1e3:.2f} ± {se * 1e3:.2f}")

    ranker = next(m for m in per_query if m.startswith("ranker"))
    checks = CounterfactualResult(per_query).ordering(ranker)
    print()
    print(
        "Acceptance ordering on mean ΔL, with paired per-query differences (mean ± s.e. over queries):"
    )
    for check in checks:
        print(f"- {check.describe()}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"k": args.k, "queries": args.query_ids, "steps": args.steps, "wall_s": wall,
                 "retrain_seconds": retrain_seconds, "summary": summary,
                 "checks": {c.claim: c.holds for c in checks},
                 "per_query": per_query},
                indent=1,
            ),
            encoding="utf-8",
        )  # fmt: skip


if __name__ == "__main__":
    main()
