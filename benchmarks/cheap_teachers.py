"""Distilling from a cheap teacher (issue 18, part 4): rankers distilled from EK-FAC influence and D-TRAK rankings
of the reference's training queries, beside one distilled from AbU+ (the reference), all scored against AbU+ on
the 40 test queries.

Only the teacher differs: the same 400 training and 50 validation queries, each method's ranking restricted to the
AbU+ teacher's candidate pool of the query (its 512 nearest items by text features, as the reference was built),
the same features (the demo's effnet+minilm), the demo's ranker settings (``--preset demo``: three members, labels
over the top 256) and seeds. Every step is resumable:

1. the reference's training and validation queries as query sets (the shipped model);
2. per method, rankings of all N items for those queries (``fastgda influence rank``, on the features of
   ``benchmarks/method_comparison.py``'s ``--out``), restricted to the pools;
3. a ranker per teacher (``fastgda ranker train --preset demo``);
4. mAP(L) against AbU+ on the test queries for each ranker, each influence method's own test rankings, and the
   untuned baselines (``fastgda eval map``).

    python benchmarks/cheap_teachers.py --demo runs/demo-s16 --world runs/world --grad runs/cf18 \\
        --out runs/cheap-teachers --json bench-results/cheap_teachers.data.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fastgda.app.reference import reference_ground_truth, reference_split_dir

SHIPPED_FISHER = reference_split_dir("test").parent / "fisher"
METHODS = {"ekfac": "EK-FAC influence", "dtrak": "D-TRAK"}


def cli(*args: str, capture: bool = False) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "fastgda.cli", *args], check=True, capture_output=capture, text=True
    )
    return done.stdout if capture else ""


def query_sets(out: Path) -> dict[str, Path]:
    """The reference's train and val splits as query-set folders (reused when already there)."""
    from fastgda.app.reference import reference_query_set
    from fastgda.diffusion import TextToImageModel
    from fastgda.diffusion.names import resolve_model_dir

    model_dir = resolve_model_dir("shipped")
    model = TextToImageModel.from_pretrained(model_dir)
    return {
        s: reference_query_set(s, model, model_dir, out / f"queries-{s}") for s in ("train", "val")
    }


def restricted_to_pools(full, pools):
    """``full`` (a GroundTruth over all N items) with each query's row kept to its pool's items, in ``full``'s
    order: the ranking the method gives within the candidates the AbU+ teacher ranked."""
    from fastgda.ground_truth import GroundTruth

    full = full.select(pools.query_ids)
    ids, scores = [], []
    for row in range(len(pools)):
        keep = np.isin(full.ids[row], pools.ids[row])
        ids.append(full.ids[row][keep])
        scores.append(full.scores[row][keep])
    config = {**full.config, "restricted_to": "the AbU+ reference's candidate pools"}
    return GroundTruth(pools.query_ids, np.stack(ids), np.stack(scores), config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default="runs/demo-s16", help="a finished `fastgda demo` folder")
    parser.add_argument("--world", default="runs/world")
    parser.add_argument(
        "--grad", default="runs/cf18", help="method_comparison's --out (grad-<method> features)"
    )
    parser.add_argument("--out", default="runs/cheap-teachers")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    demo, out, grad = Path(args.demo), Path(args.out), Path(args.grad)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    sets = query_sets(out)
    common = ["--model", "shipped", "--device", "cpu", "--threads", str(args.threads)]
    features = demo / "features"
    truths = {"AbU+ (EK-FAC), α = 1e-2": {}}
    seconds = {}
    for split in ("train", "val"):
        folder = out / f"abu-{split}"
        if not (folder / "manifest.json").is_file():
            reference_ground_truth(split).save(folder)
        truths["AbU+ (EK-FAC), α = 1e-2"][split] = folder
    for method in args.methods:
        name = METHODS[method]
        truths[name] = {}
        for split, queries in sets.items():
            run = out / f"{method}-{split}"
            tick = time.perf_counter()
            fisher = ["--fisher", str(SHIPPED_FISHER)] if method == "ekfac" else []
            cli("influence", "rank", *common, "--method", method, "--features",
                str(grad / f"grad-{method}"), *fisher, "--queries", str(queries), "--out", str(run))  # fmt: skip
            seconds[(name, split)] = time.perf_counter() - tick
            pooled = out / f"{method}-{split}-pooled"
            if not (pooled / "manifest.json").is_file():
                from fastgda.ground_truth import GroundTruth

                full = GroundTruth.load(run / "ground_truth")
                restricted_to_pools(full, reference_ground_truth(split)).save(pooled)
            truths[name][split] = pooled
    rankers = {}
    for name, split_truth in truths.items():
        folder = out / ("ranker-" + name.split(" ")[0].lower().replace("+", "plus"))
        if not (folder / "manifest.json").is_file():
            cli("ranker", "train", "--preset", "demo", "--items", str(features / "items"),
                "--queries", str(features / "q-train"), "--ground-truth", str(split_truth["train"]),
                "--val-queries", str(features / "q-val"), "--val-ground-truth", str(split_truth["val"]),
                "--threads", "2", "--out", str(folder))  # fmt: skip
        rankers[name] = folder
    ranker_flags = [a for folder in rankers.values() for a in ("--ranker", str(folder))]
    table = json.loads(
        cli(
            "eval",
            "map",
            "--items",
            str(features / "items"),
            "--queries",
            str(features / "q-test"),
            "--ground-truth",
            str(reference_split_dir("test") / "ground_truth"),
            "--query-set",
            str(demo / "queries-test"),
            "--data",
            args.world,
            *ranker_flags,
            "--json",
            capture=True,
        )  # fmt: skip
    )
    print(json.dumps(table, indent=1)[:4000])
    print(f"\nthis run {(time.perf_counter() - began) / 60:.1f} min")
    if args.json:
        figures = {"map": table, "rankers": {k: str(v) for k, v in rankers.items()},
                   "rank_seconds": {f"{k[0]} / {k[1]}": v for k, v in seconds.items()}}  # fmt: skip
        Path(args.json).write_text(json.dumps(figures, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
