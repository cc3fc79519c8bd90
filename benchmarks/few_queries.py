"""Does the ranker ship worse than its own inputs when the teacher ranked few queries?

Rankers are distilled from the first 50, 100, ... training queries (in a seeded random order), side by side in one
run: on the standard world (``--world``: the shipped reference, the demo preset) or on a ``fastgda build`` folder
(``--build``: its teacher rankings and features, the build's ranker settings). Each count is distilled twice, with
the ranker started as the paper's plain MLP (``--residual none``) and as a residual on its best untuned part
(``auto``, the default). For each: the validation mAP of the ranker beside each untuned part's (what
``best_scorer`` decides on), the scorer it chooses, and the test mAP(L) of the ranker, of the best untuned
baseline and of the chosen scorer::

    python benchmarks/few_queries.py --world runs/world --work runs/bench/few-queries
    python benchmarks/few_queries.py --build runs/openmoji-build --counts 50 100 200
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fastgda.app.reference import reference_ground_truth, reference_split_dir
from fastgda.evaluation import evaluate, l_values
from fastgda.features import Features, load_or_embed
from fastgda.ground_truth import GroundTruth
from fastgda.ranker import Ranker, RankerTrainConfig, best_scorer

SPEC = "effnet+minilm"
SPLITS = ("train", "val", "test")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--world", help="the standard world (fastgda world shapes --size 2000)")
    source.add_argument("--build", help="a `fastgda build` folder")
    parser.add_argument("--work", help="with --world: features are embedded here once")
    parser.add_argument("--counts", type=int, nargs="+", default=[50, 100, 400])
    parser.add_argument(
        "--residual",
        nargs="+",
        default=["auto", "none"],
        help="ranker starts to compare (RankerTrainConfig.residual): auto (a residual on the best part), none",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.build:
        build = Path(args.build)
        truth = {s: GroundTruth.load(build / f"teacher-{s}" / "ground_truth") for s in SPLITS}
        features = {s: Features.load(build / "features" / f"q-{s}") for s in SPLITS}
        items = Features.load(build / "features" / "items")
        settings = json.loads((build / "summary.json").read_text())["config"]
        base = RankerTrainConfig(
            members=settings["ranker_members"], epochs=settings["ranker_epochs"]
        )
        what = f"{build.name} N = {len(items)}; the build's ranker settings ({items.spec}, {base.members} members)"
    else:
        work = Path(args.work or "runs/bench/few-queries")
        truth = {s: reference_ground_truth(s) for s in SPLITS}
        items = load_or_embed(args.world, SPEC, work / "items")
        features = {s: load_or_embed(reference_split_dir(s), SPEC, work / f"q-{s}") for s in truth}
        base = RankerTrainConfig.demo()
        what = f"standard world N = {len(items)}; demo preset ({SPEC}, ensemble of 3)"
    n = len(items)
    mid = l_values(n)[1]
    order = np.random.default_rng(args.seed).permutation(truth["train"].query_ids)
    print(
        f"{what}; validation {len(truth['val'])} and test {len(truth['test'])} queries; mAP(L = {mid}, 0.85% of "
        "N) on the test queries\n"
    )
    rows = {}
    for count, residual in [
        (c, r) for c in args.counts if c <= len(truth["train"]) for r in args.residual
    ]:
        began = time.perf_counter()
        train = truth["train"].select(sorted(order[:count].tolist()))
        config = replace(base, seed=args.seed, residual=residual)
        ranker = Ranker.distil(
            features["train"],
            items,
            train,
            config,
            validation=(features["val"], truth["val"]),
        )
        minutes = (time.perf_counter() - began) / 60
        chosen = best_scorer(ranker, items, ranker.validation)
        evaluation = evaluate(
            {"ranker": ranker, "chosen": chosen}, features["test"], items, truth["test"]
        )
        best = evaluation.best_untuned(mid)
        rows[f"{count} {residual}"] = {
            "queries": count,
            "residual": residual,
            "minutes": minutes,
            "validation_map": ranker.validation,
            "chosen": getattr(chosen, "name", "ranker"),
            "test_map": {name: evaluation.map[name][mid]["mean"] for name in evaluation.map},
            "best_untuned": best,
        }
    parts = [name for name in next(iter(rows.values()))["validation_map"] if name != "ranker"]
    tail = "start | chosen scorer | test mAP ranker | test mAP best untuned | test mAP chosen | chosen / best untuned"
    print(
        "| training queries | val mAP ranker | "
        + " | ".join(f"val mAP {p}" for p in parts)
        + f" | {tail} |"
    )
    print("|---:|---:|" + "---:|" * len(parts) + "---|---|---:|---:|---:|---:|")
    for row in rows.values():
        test, val = row["test_map"], row["validation_map"]
        start = "residual on the best part" if row["residual"] == "auto" else row["residual"]
        cells = [f"{val['ranker']:.3f}", *(f"{val[p]:.3f}" for p in parts), start, row["chosen"]]
        cells += [
            f"{test['ranker']:.3f}",
            f"{test[row['best_untuned']]:.3f} ({row['best_untuned']})",
        ]
        cells += [f"{test['chosen']:.3f}", f"{test['chosen'] / test[row['best_untuned']]:.2f}x"]
        print(f"| {row['queries']} | " + " | ".join(cells) + " |")
    print(
        "\ntraining minutes: " + ", ".join(f"{key} {r['minutes']:.1f}" for key, r in rows.items())
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
