"""Run the benchmark scripts, keep their results as JSON, and regenerate their blocks in BENCHMARKS.md.

    python -m benchmarks --list                 # what runs in each tier, and how long it takes here
    python -m benchmarks                        # the quick tier (minutes): latency, ranker training
    python -m benchmarks --tier standard        # + demo time, service load, candidate pools, quality,
                                                #   counterfactual (about 3 h on 2 cores)
    python -m benchmarks --tier full            # + the teacher studies (many hours)
    python -m benchmarks --only latency serve_load

Each script runs as its own process (so timings are not disturbed by the suite) with its printed figures captured.
For each one the suite writes ``<results>/<name>.json`` (command, machine, start time, seconds, exit status,
printed output, and the script's own JSON where it writes one), then replaces the block between
``<!-- bench:<name> -->`` and ``<!-- /bench:<name> -->`` in BENCHMARKS.md with the command, the machine, the
date and the script's printed tables. Text outside the blocks (the reading of the figures) is left alone: re-read
it when the figures move. A script that fails leaves its block unchanged and makes the suite exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIERS = ("quick", "standard", "full")


@dataclass(frozen=True)
class Benchmark:
    """One script: its tier, its arguments ({world}, {work}, {results} filled in), and what it needs first."""

    name: str
    tier: str
    args: tuple[str, ...]
    takes: str  # wall time on the development machine, for --list
    data_json: str | None = None  # where the script writes its own JSON, if it does
    needs: tuple[str, ...] = ()
    headline: tuple[str, ...] = ()  # keys of the script's JSON also kept at the top of its record


BENCHMARKS = (
    Benchmark("latency", "quick", ("--threads", "2", "--json", "{results}/latency.data.json"),
              "6 min", "{results}/latency.data.json"),
    Benchmark("ranker_training", "quick", ("--threads", "2"), "2 min"),
    Benchmark("sd_cost", "quick", ("--threads", "2", "--json", "{results}/sd_cost.data.json"), "2 min",
              "{results}/sd_cost.data.json"),
    Benchmark("fast_encoders", "quick",
              ("--world", "{world}", "--demo", "{work}/demo-time/demo", "--threads", "2",
               "--json", "{results}/fast_encoders.data.json"), "2 min", "{results}/fast_encoders.data.json"),
    Benchmark("precision", "standard",
              ("--world", "{world}", "--out", "{work}/precision", "--json", "{results}/precision.data.json"),
              "18 min", "{results}/precision.data.json"),
    Benchmark("demo_time", "standard", ("--work", "{work}/demo-time"), "9 min",
              "{work}/demo-time/demo_time.json"),
    Benchmark("ensemble_cost", "standard",
              ("--threads", "2", "--seeds", "{results}/ranker_seeds.json", "--json",
               "{results}/ensemble_cost.data.json"), "8 min", "{results}/ensemble_cost.data.json"),
    Benchmark("serve_load", "standard",
              ("--attributor", "{work}/demo-time/demo/attributor", "--concurrency", "32", "--seconds", "30",
               "--out", "{results}/serve_load.data.json"),
              "6 min", "{results}/serve_load.data.json", needs=("demo_time",)),
    Benchmark("serve_faults", "standard",
              ("--attributor", "{work}/demo-time/demo/attributor", "--seconds", "60",
               "--json", "{results}/serve_faults.data.json"),
              "2 min", "{results}/serve_faults.data.json", needs=("demo_time",),
              headline=("healthz_p99_ms", "peak_rss_mb", "valid_errors", "status_500")),
    Benchmark("decode_threads", "quick", ("--world", "{world}", "--count", "400", "--scale", "6"), "1 min"),
    Benchmark("evaluation_cost", "quick", ("--json", "{results}/evaluation_cost.data.json"), "3 min",
              "{results}/evaluation_cost.data.json"),
    Benchmark("provenance", "quick", ("--count", "2000", "--size", "640", "--json",
                                      "{results}/provenance.data.json"), "1 min", "{results}/provenance.data.json"),
    Benchmark("scaling", "full", ("--work", "{work}/scaling", "--json", "{results}/scaling.data.json"), "80 min",
              "{results}/scaling.data.json"),
    Benchmark("tolerance_margins", "standard", ("--json", "{results}/tolerance_margins.data.json"), "25 min",
              "{results}/tolerance_margins.data.json"),
    Benchmark("candidate_pools", "standard", ("--world", "{world}", "--work", "{work}/quality"), "10 min",
              "{work}/quality/candidate_pools.json"),
    Benchmark("attribution_quality", "standard",
              ("--world", "{world}", "--work", "{work}/quality", "--train-top", "256", "--members", "3"),
              "40 min", "{work}/quality/quality.json"),
    Benchmark("ranker_seeds", "standard", ("--world", "{world}", "--work", "{work}/quality"), "12 min",
              "{work}/quality/ranker_seeds.json"),
    Benchmark("few_queries", "standard",
              ("--world", "{world}", "--work", "{work}/quality/effnet_minilm", "--json",
               "{results}/few_queries.data.json"), "30 min", "{results}/few_queries.data.json"),
    Benchmark("counterfactual", "standard",
              ("--demo", "{work}/demo-time/demo", "--world", "{world}", "--out", "{work}/counterfactual",
               "--json", "{results}/counterfactual.data.json"),
              "80 min", "{results}/counterfactual.data.json", needs=("demo_time",)),
    Benchmark("method_comparison", "full",
              ("--demo", "{work}/demo-time/demo", "--world", "{world}", "--out", "{work}/method-comparison",
               "--workers", "2", "--json", "{results}/method_comparison.data.json"),
              "7 h", "{results}/method_comparison.data.json", needs=("demo_time",)),
    Benchmark("cheap_teachers", "full",
              ("--demo", "{work}/demo-time/demo", "--world", "{world}", "--grad", "{work}/method-comparison",
               "--out", "{work}/cheap-teachers", "--json", "{results}/cheap_teachers.data.json"),
              "3 h", "{results}/cheap_teachers.data.json", needs=("method_comparison",)),
    Benchmark("teacher", "full", ("--world", "{world}", "--model", "shipped", "--out", "{work}/teacher-bench"),
              "40 min"),
    Benchmark("teacher_planted", "full",
              ("--world", "{world}", "--model", "shipped", "--out", "{work}/teacher-planted", "--alpha", "0.01",
               "--stability-queries", "2"), "2 h"),
    Benchmark("teacher_settings", "full",
              ("--world", "{world}", "--model", "shipped", "--out", "{work}/teacher-settings",
               "--max-queries", "5"), "3 h", "{work}/teacher-settings/results.json"),
)  # fmt: skip
BY_NAME = {b.name: b for b in BENCHMARKS}


def machine() -> str:
    """One line: OS, CPU count, memory, Python, torch and its threads."""
    import torch

    memory = ""
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory = f", {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs{memory}, {gpu}, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def command_of(bench: Benchmark, world: str, work: str, results: Path) -> list[str]:
    fill = {"world": world, "work": work, "results": str(results)}
    return ["python", f"benchmarks/{bench.name}.py", *(a.format(**fill) for a in bench.args)]


def render_block(record: dict) -> str:
    """Markdown for a block: command, machine and date, then the printed output (tables kept as tables)."""
    lines = [
        f"<!-- bench:{record['name']} (written by `python -m benchmarks`; edits inside are overwritten) -->",
        "```",
        shlex.join(record["command"]),
        "```",
        f"*{record['machine']}; {record['started'][:16].replace('T', ' ')} UTC, "
        f"{record['seconds'] / 60:.1f} min.*",
        "",
    ]
    text: list[str] = []

    def flush_text():
        if text:
            if lines[-1].startswith("|"):  # a table ends at a blank line
                lines.append("")
            lines.extend(["```text", *text, "```", ""])
            text.clear()

    for line in record["stdout"].splitlines():
        if line.startswith("|"):
            flush_text()
            lines.append(line)
        elif line.strip():
            text.append(line)
        elif lines[-1].startswith("|"):
            lines.append("")  # a blank line ends a table, so two tables in a row stay two
    flush_text()
    if lines[-1] != "":
        lines.append("")
    lines.append(f"<!-- /bench:{record['name']} -->")
    return "\n".join(lines)


def update_benchmarks_md(path: Path, record: dict) -> bool:
    """Replace the script's block in BENCHMARKS.md; False when the file has no block for it."""
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(
        rf"<!-- bench:{re.escape(record['name'])}[ >].*?<!-- /bench:{re.escape(record['name'])} -->",
        re.DOTALL,
    )
    if not pattern.search(text):
        return False
    updated = pattern.sub(lambda _: render_block(record), text, count=1)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(updated, encoding="utf-8")
    tmp.replace(path)
    return True


def run_one(bench: Benchmark, world: str, work: str, results: Path) -> dict:
    command = command_of(bench, world, work, results)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    print(f"\n== {bench.name}: {shlex.join(command)}", flush=True)
    began = time.perf_counter()
    # stdout is the figures (captured and echoed); stderr (progress bars, logs) goes straight to the terminal.
    process = subprocess.Popen(
        [sys.executable, *command[1:]], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    captured = []
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        captured.append(line)
    returncode = process.wait()
    record = {
        "name": bench.name,
        "command": command,
        "machine": machine(),
        "started": started,
        "seconds": round(time.perf_counter() - began, 1),
        "returncode": returncode,
        "stdout": "".join(captured),
    }
    if bench.data_json and returncode == 0:
        data_path = ROOT / bench.data_json.format(world=world, work=work, results=results)
        if data_path.is_file():
            record["data"] = json.loads(data_path.read_text(encoding="utf-8"))
            record.update({key: record["data"][key] for key in bench.headline})
    out = results / f"{bench.name}.json"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
    tmp.replace(out)
    return record


def ensure_world(world: str) -> None:
    """The standard world (N = 2,000, seed 0) is built here when missing: it is deterministic."""
    if (ROOT / world / "captions.jsonl").is_file():
        return
    print(f"building the standard world in {world}", flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "fastgda.cli",
            "world",
            "shapes",
            "--out",
            world,
            "--size",
            "2000",
            "--seed",
            "0",
        ],
        cwd=ROOT,
        check=True,
    )


def selected(args) -> list[Benchmark]:
    if args.only:
        unknown = [n for n in args.only if n not in BY_NAME]
        if unknown:
            raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {sorted(BY_NAME)}")
        chosen = [BY_NAME[n] for n in args.only]
    else:
        chosen = [b for b in BENCHMARKS if TIERS.index(b.tier) <= TIERS.index(args.tier)]
    names = {b.name for b in chosen}
    for bench in chosen:
        missing = [n for n in bench.needs if n not in names]
        if missing and not args.only:
            raise SystemExit(f"{bench.name} needs {missing} in the same run")
    return chosen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--tier", choices=TIERS, default="quick", help="run this tier and those below"
    )
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run just these benchmarks")
    parser.add_argument(
        "--world", default="runs/world", help="the standard world (built if missing)"
    )
    parser.add_argument(
        "--work", default="runs/bench", help="folder for the benchmarks' own outputs"
    )
    parser.add_argument("--results", default="bench-results", help="folder for the JSON results")
    parser.add_argument("--no-update", action="store_true", help="leave BENCHMARKS.md as it is")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    results = ROOT / args.results
    if args.list:
        for bench in BENCHMARKS:
            needs = f" (after {', '.join(bench.needs)})" if bench.needs else ""
            command = shlex.join(command_of(bench, args.world, args.work, Path(args.results)))
            print(f"{bench.tier:<9} {bench.name:<20} ~{bench.takes:<7} {command}{needs}")
        return 0
    chosen = selected(args)
    results.mkdir(parents=True, exist_ok=True)
    if any("{world}" in " ".join(b.args) for b in chosen):
        ensure_world(args.world)
    failed = []
    for bench in chosen:
        record = run_one(bench, args.world, args.work, Path(args.results))
        if record["returncode"] != 0:
            failed.append(bench.name)
            print(
                f"!! {bench.name} failed (exit {record['returncode']}); its block is left unchanged"
            )
        elif not args.no_update and not update_benchmarks_md(ROOT / "BENCHMARKS.md", record):
            print(
                f"!! BENCHMARKS.md has no <!-- bench:{bench.name} --> block; results are in {results}"
            )
    print(
        f"\nresults: {results}/<name>.json" + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
