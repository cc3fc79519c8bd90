"""How much of each derived float tolerance the suite uses, under summation orders other than this CPU's default.

Every float comparison in ``tests/`` goes through ``tests/_tolerance.py`` (``assert_close``, ``apart``), whose
tolerances are derived from the arithmetic. This script runs the suite under settings that make torch, MKL and
oneDNN take other kernels, as another CPU would (another instruction set, another blocking, another thread
count), with ``FASTGDA_TOLERANCE_LOG`` set, and reports per check the largest share of its tolerance used:

- ``close`` checks: |actual − expected| / tolerance; a wide margin is a share far below 1;
- ``apart`` checks (two results that must differ): tolerance / difference; likewise far below 1.

    python benchmarks/tolerance_margins.py --json bench-results/tolerance_margins.data.json
    python benchmarks/tolerance_margins.py --settings avx2 --tests tests/test_influence.py   # one quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Each setting: environment variables that change how kernels sum. ATEN_CPU_CAPABILITY picks torch's own
# vectorised kernels (default = no SIMD), MKL_ENABLE_INSTRUCTIONS and MKL_CBWR MKL's GEMM code paths,
# ONEDNN_MAX_CPU_ISA oneDNN's convolutions; OMP_NUM_THREADS splits reductions differently.
SETTINGS = {
    "default-1t": {"OMP_NUM_THREADS": "1"},
    "default-2t": {"OMP_NUM_THREADS": "2"},
    "avx2": {"OMP_NUM_THREADS": "2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "no-simd": {"OMP_NUM_THREADS": "1", "ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}  # fmt: skip


def run_suite(
    name: str, tests: list[str], marker: str, workers: int
) -> tuple[list[dict], int, float]:
    """The suite under one setting: its logged checks, pytest's exit status and the wall seconds."""
    with tempfile.TemporaryDirectory(prefix="tolerance-") as tmp:
        log = Path(tmp) / "checks.jsonl"
        env = {**os.environ, **SETTINGS[name], "FASTGDA_TOLERANCE_LOG": str(log)}
        env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            marker,
            *tests,
        ]
        if workers > 1:
            command += ["-n", str(workers), "--dist", "loadfile"]
        began = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - began
        tail = done.stdout.strip().splitlines()[-1:] or ["(no output)"]
        print(
            f"  {name}: pytest exit {done.returncode} in {seconds / 60:.1f} min: {tail[0]}",
            file=sys.stderr,
        )
        if done.returncode not in (0, 1):
            print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
        entries = (
            [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
        )
    return entries, done.returncode, seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--tests", nargs="+", default=["tests"], help="test files or folders")
    parser.add_argument("--marker", default="not weights and not gpu and not demo and not browser")
    parser.add_argument("--workers", type=int, default=2, help="pytest-xdist workers per run")
    parser.add_argument("--top", type=int, default=20, help="checks listed one by one")
    parser.add_argument("--json", help="write every check's worst share here")
    args = parser.parse_args(argv)

    # (check site, kind) -> setting -> worst share; the derivation shown for the site.
    worst: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    why: dict[tuple[str, str], str] = {}
    runs = {}
    for name in args.settings:
        entries, status, seconds = run_suite(name, args.tests, args.marker, args.workers)
        runs[name] = {"pytest_exit": status, "seconds": round(seconds, 1), "checks": len(entries)}
        for entry in entries:
            key = (entry["where"], entry["kind"])
            worst[key][name] = max(worst[key].get(name, 0.0), float(entry["share"]))
            why[key] = entry["why"]

    print(f"{len(worst)} check sites; the largest share of its tolerance each used, per setting")
    print(
        "(close: |difference| / tolerance; apart: tolerance / |difference|; both want far below 1)"
    )
    print()
    print("| setting | pytest exit | checks logged | minutes |")
    print("|---|---:|---:|---:|")
    for name, run in runs.items():
        print(f"| {name} | {run['pytest_exit']} | {run['checks']} | {run['seconds'] / 60:.1f} |")
    print()
    rows = sorted(worst.items(), key=lambda item: -max(item[1].values()))
    bins = [1e-3, 1e-2, 1e-1, 0.5, 1.0]
    print("| kind | checks | " + " | ".join(f"≤ {b:g}" for b in bins) + " | over 1 |")
    print("|---|---:|" + "---:|" * (len(bins) + 1))
    for kind in ("close", "apart"):
        shares = [max(v.values()) for (_, k), v in rows if k == kind]
        counts, previous = [], 0.0
        for bound in bins:
            counts.append(
                sum(previous < x <= bound or (bound == bins[0] and x <= bound) for x in shares)
            )
            previous = bound
        over_one = sum(x > 1 for x in shares)
        print(f"| {kind} | {len(shares)} | " + " | ".join(map(str, counts)) + f" | {over_one} |")
    print()
    print(
        f"The {min(args.top, len(rows))} checks that used the most of their tolerance (every check: --json):"
    )
    print()
    print("| check | kind | " + " | ".join(args.settings) + " | derivation |")
    print("|---|---|" + "---:|" * len(args.settings) + "---|")
    for (where, kind), shares in rows[: args.top]:
        cells = [f"{shares[n]:.2g}" if n in shares else "–" for n in args.settings]
        derivation = why[(where, kind)].replace("|", "/")[:90]
        print(f"| {where} | {kind} | " + " | ".join(cells) + f" | {derivation} |")
    over = [key for key, shares in worst.items() if max(shares.values()) > 1]
    print()
    print(f"checks over their tolerance in any setting: {len(over)}")
    if args.json:
        out = {
            "settings": {n: SETTINGS[n] for n in args.settings},
            "runs": runs,
            "checks": [
                {"where": w, "kind": k, "why": why[(w, k)], "worst": shares}
                for (w, k), shares in rows
            ],
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1), encoding="utf-8")
    failed = any(run["pytest_exit"] != 0 for run in runs.values())
    return 1 if (over or failed) else 0


if __name__ == "__main__":
    sys.exit(main())
