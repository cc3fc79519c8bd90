"""How each step of ``fastgda build`` grows with N: wall time and peak resident memory per step on the shapes world
at several N, with the same model and teacher settings and fixed query counts, the growth exponent fitted to each
step, and each step's time extrapolated to N = 10^6 and 10^8 on this machine.

Each N gets its own world (``fastgda world shapes --size N``: planted concepts keep 12 exemplars each, so they
grow rarer) and its own build folder and fastgda cache, so nothing is shared between sizes; each build runs in a
fresh process and records its steps' seconds and peak memory in ``build.json`` (``fastgda.pipeline.steps``).
Test queries are ranked over their top-M neighbours (``--test-candidates``), so the teacher's work per query is
the same at every N; a full ranking costs N scorings a query (see BENCHMARKS.md). Rerunning continues an
interrupted build (its steps' seconds add up over the runs that worked on them).

    python benchmarks/scaling.py --sizes 2000 12000 118287 --work runs/scaling --json bench-results/scaling.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

STEPS = ("world", "data", "prompts", "model", "queries", "fisher", "teacher", "features", "ranker",
         "attributor", "evaluation", "report")  # fmt: skip
# Fixed per-N work: the same model, the same query counts and pools at every N.
BUILD_FLAGS = ["--train-model", "tiny16", "--model-steps", "300", "--num-train-queries", "8",
               "--num-val-queries", "4", "--num-test-queries", "2", "--num-candidates", "128",
               "--test-candidates", "1000", "--num-pairs", "100", "--timesteps", "200", "600",
               "--fisher-samples", "500", "--sample-steps", "10", "--ranker-members", "1",
               "--ranker-epochs", "5", "--device", "cpu"]  # fmt: skip


def run_child(argv: list[str], env: dict) -> tuple[float, float]:
    """Run a command to its end; returns (wall seconds, its peak resident MiB, from the kernel's accounting of
    that one child)."""
    began = time.perf_counter()
    child = subprocess.Popen(argv, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{' '.join(argv)} exited with {child.returncode}")
    return time.perf_counter() - began, usage.ru_maxrss / 1024  # ru_maxrss: KiB on Linux


def measure_size(n: int, work: Path, threads: int) -> dict[str, dict]:
    """step -> {"seconds", "peak_mb"} of one world and one build at N = ``n``."""
    env = {**os.environ, "FASTGDA_CACHE": str(work / f"cache-{n}"), "HF_HUB_OFFLINE": "1"}
    fastgda = [sys.executable, "-m", "fastgda.cli"]
    world, build = work / f"world-{n}", work / f"build-{n}"
    record_file = work / f"world-{n}.json"
    if not (world / "manifest.json").is_file():
        seconds, peak = run_child([*fastgda, "world", "shapes", "--out", str(world), "--size", str(n),
                                   "--overwrite"], env)  # fmt: skip
        record_file.write_text(json.dumps({"seconds": seconds, "peak_mb": peak}))
    steps = {"world": json.loads(record_file.read_text())}
    argv = [*fastgda, "build", "--data", str(world), "--out", str(build), *BUILD_FLAGS,
            "--threads", str(threads), "--json"]  # fmt: skip
    state = build / "build.json"
    recorded = json.loads(state.read_text())["steps"] if state.is_file() else {}
    finished = set(STEPS[1:]) <= {name for name, r in recorded.items() if r["status"] == "done"}
    if not finished:  # a finished build's figures are read as they are
        run_child(argv, {**env, "PYTHONUNBUFFERED": "1"})
    recorded = json.loads(state.read_text())["steps"]
    for name, record in recorded.items():
        steps[name] = {"seconds": record["seconds"], "peak_mb": record.get("peak_rss_mb"),
                       "anonymous_mb": record.get("peak_anonymous_mb")}  # fmt: skip
    return steps


def full_ranking_rate(build: Path, world: Path, cache: Path, items: int = 1024) -> dict:
    """The teacher's scoring rate with the build's model at the default five timesteps, measured on ``items``
    training items: what one full ranking of N items costs (test queries without --test-candidates)."""
    os.environ["FASTGDA_CACHE"] = str(cache)
    from fastgda.data import open_dataset
    from fastgda.diffusion import TextToImageModel
    from fastgda.diffusion.training import prepare_training_data
    from fastgda.progress import quiet
    from fastgda.unlearning import ScoringConfig
    from fastgda.unlearning.scoring import item_losses

    with quiet():
        model = TextToImageModel.from_pretrained(build / "model", device="cpu")
        data = prepare_training_data(
            model,
            open_dataset(train if (train := build / "train-data").is_dir() else world),
            cache=cache,
        )
        ids = np.random.default_rng(0).choice(
            len(data.x0), size=min(items, len(data.x0)), replace=False
        )
        item_losses(model, data, ids[:64], ScoringConfig())  # warm-up
        began = time.perf_counter()
        item_losses(model, data, ids, ScoringConfig())
        seconds = time.perf_counter() - began
    captions = float(data.caption_count.numpy()[ids].mean())
    return {"items_per_second": len(ids) / seconds, "captions_per_item": captions, "timesteps": 5}


def exponent(sizes: list[int], values: list[float]) -> float | None:
    """The least-squares slope of log(value) on log(N): value ∝ N^slope (None with fewer than two sizes or a
    value of zero)."""
    points = [(math.log(n), math.log(v)) for n, v in zip(sizes, values, strict=True) if v and v > 0]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def extrapolate(sizes: list[int], seconds: list[float], target: int) -> float:
    """Seconds at ``target`` from the two largest sizes' power law (a step that shrank stays at its largest)."""
    (n1, t1), (n2, t2) = sorted(zip(sizes, seconds, strict=True))[-2:]
    if t1 <= 0 or t2 <= 0:
        return t2
    slope = max(0.0, math.log(t2 / t1) / math.log(n2 / n1))
    return t2 * (target / n2) ** slope


def table(sizes: list[int], measured: dict[int, dict]) -> tuple[str, dict]:
    """The markdown table of seconds and peak MiB per step and size, with exponents and extrapolations."""
    header = "| step | " + " | ".join(f"N = {n:,}: s, peak MiB (anonymous)" for n in sizes)
    header += " | time exponent | memory exponent | h at 10^6 | h at 10^8 |"
    lines = [header, "|" + "---|" * (len(sizes) + 5)]
    fitted, totals = {}, {10**6: 0.0, 10**8: 0.0}
    for step in STEPS:
        rows = [measured[n].get(step) for n in sizes]
        if any(r is None for r in rows):
            continue
        seconds = [r["seconds"] for r in rows]
        peaks = [r["peak_mb"] or 0.0 for r in rows]
        # Memory's exponent from the anonymous part where known: memory-mapped pages are not what a step needs.
        anonymous = [r.get("anonymous_mb") for r in rows]
        needed = [a if a is not None else p for a, p in zip(anonymous, peaks, strict=True)]
        time_exp, mem_exp = exponent(sizes, seconds), exponent(sizes, needed)
        far = {t: extrapolate(sizes, seconds, t) for t in totals} if len(sizes) > 1 else {}
        for t in far:
            totals[t] += far[t]
        fitted[step] = {"time_exponent": time_exp, "memory_exponent": mem_exp,
                        "hours": {str(t): s / 3600 for t, s in far.items()}}  # fmt: skip
        cells = [f"{s:,.1f} s, {p:,.0f}" + ("" if a is None else f" ({a:,.0f})")
                 for s, p, a in zip(seconds, peaks, anonymous, strict=True)]  # fmt: skip
        show = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
        hours = [f"{far[t] / 3600:,.2f}" if far else "—" for t in totals]
        lines.append(f"| {step} | " + " | ".join(cells) + f" | {show(time_exp)} | {show(mem_exp)} | "
                     + " | ".join(hours) + " |")  # fmt: skip
    totals_row = [
        f"{sum(measured[n][s]['seconds'] for s in STEPS if s in measured[n]):,.0f} s" for n in sizes
    ]
    lines.append("| **all steps** | " + " | ".join(totals_row) + " | | | "
                 + " | ".join(f"{v / 3600:,.1f}" for v in totals.values()) + " |")  # fmt: skip
    return "\n".join(lines), {
        "steps": fitted,
        "total_hours": {str(t): v / 3600 for t, v in totals.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 12000, 118287])
    parser.add_argument(
        "--work", default="runs/scaling", help="worlds, builds and caches, one set per N"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sizes = sorted(args.sizes)
    measured = {}
    for n in sizes:
        print(f"N = {n:,}: world and build ...", file=sys.stderr, flush=True)
        measured[n] = measure_size(n, work, args.threads)
    text, fitted = table(sizes, measured)
    largest = sizes[-1]
    rate = full_ranking_rate(
        work / f"build-{largest}", work / f"world-{largest}", work / f"cache-{largest}"
    )
    fitted["scoring"] = rate
    print("Build flags at every N: " + " ".join(BUILD_FLAGS))
    print("Peak MiB: this process's resident memory during the step, all of it and (in brackets) its anonymous "
          "part, without memory-mapped files' pages; the world: its own process, all of it. The memory exponent "
          f"is the anonymous part's.\n\n{text}\n")  # fmt: skip
    minutes = ", ".join(
        f"{n / rate['items_per_second'] / 60:,.1f} min at N = {n:,}" for n in (*sizes, 10**6)
    )
    print(f"Teacher scoring at the default 5 timesteps ({rate['captions_per_item']:.2f} captions an item), "
          f"measured on the N = {largest:,} build: {rate['items_per_second']:.1f} items/s, so one full test "
          f"ranking (no --test-candidates) costs {minutes}.")  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        data = {"sizes": sizes, "flags": BUILD_FLAGS, "measured": {str(n): m for n, m in measured.items()},
                **fitted}  # fmt: skip
        Path(args.json).write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
