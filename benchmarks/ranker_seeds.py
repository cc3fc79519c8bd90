"""Seed spread of the distilled ranker on the standard world: single rankers against ensembles, side by side.

Trains the demo's ranker (effnet+minilm, first-part weight 0.1, labels over the teacher's top 256) with
GROUPS x MEMBERS consecutive seeds, and scores each single ranker and each ensemble of MEMBERS consecutive seeds
(cosines averaged, ``Ranker.ensemble``) on the validation and test queries of the shipped reference: validation
mAP, test mAP(L) at the paper's three L, the ratio to the best untuned baseline at L = 0.85% of N, and planted
recall. The ensembles are built from the single rankers of the same run, so the comparison costs no extra
training. Rankers are cached in the folders ``benchmarks/attribution_quality.py`` uses, so the two share work.

    python benchmarks/ranker_seeds.py --world runs/world --work runs/quality
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from attribution_quality import (  # noqa: E402
    reference_splits,
    spec_features,
    trained_ranker,
    validation_map,
)

from fastgda.app.reference import reference_digest  # noqa: E402
from fastgda.app.world import ShapesWorld  # noqa: E402
from fastgda.evaluation import (  # noqa: E402
    cosine_matrix,
    l_values,  # noqa: E402
    map_table,
    planted_recall,
)
from fastgda.ranker import Ranker, RankerTrainConfig  # noqa: E402

SPEC = "effnet+minilm"
UNTUNED_SPECS = ("effnet+minilm", "effnet", "minilm", "pixels")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True)
    parser.add_argument("--work", default="runs/quality")
    parser.add_argument("--reference", help="reference folder (default: the shipped one)")
    parser.add_argument("--groups", type=int, default=3, help="ensembles (of consecutive seeds)")
    parser.add_argument("--members", type=int, default=3, help="rankers per ensemble")
    parser.add_argument("--image-weight", type=float, default=0.1)
    parser.add_argument("--train-top", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=RankerTrainConfig().epochs)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    world = ShapesWorld(args.world)
    truth, concepts = reference_splits(args.reference)
    n = len(world)
    mid = l_values(n)[1]

    def features(spec):
        return spec_features(work, spec, args.world, args.reference, truth)

    untuned = {}
    for spec in UNTUNED_SPECS:
        _, items, splits = features(spec)
        test_q = splits["test"].select(truth["test"].query_ids).values
        untuned[f"untuned {spec}"] = cosine_matrix(test_q, items.values)
    untuned_table = map_table(untuned, truth["test"].ids, n)
    best_untuned = max(untuned_table, key=lambda name: untuned_table[name][mid]["mean"])
    baseline = untuned_table[best_untuned][mid]["mean"]

    folder, items, splits = features(SPEC)
    test_q = splits["test"].select(truth["test"].query_ids).values
    digest = reference_digest(args.reference)
    minutes: dict = {}
    singles = [
        trained_ranker(
            folder, SPEC, seed, args.image_weight, args, items, splits, truth, digest, minutes
        )
        for seed in range(args.groups * args.members)
    ]
    rankers = {f"seed {seed}": ranker for seed, ranker in enumerate(singles)}
    for g in range(args.groups):
        seeds = range(g * args.members, (g + 1) * args.members)
        rankers[f"ensemble of seeds {seeds[0]}-{seeds[-1]}"] = Ranker.ensemble(
            [singles[s] for s in seeds]
        )

    rows = {}
    for name, ranker in rankers.items():
        scores = ranker.score(test_q, items.values)
        table = map_table({name: scores}, truth["test"].ids, n)[name]
        rows[name] = {
            "val_map": validation_map(ranker, items, splits, truth),
            "map": {L: table[L]["mean"] for L in l_values(n)},
            "ratio": table[mid]["mean"] / baseline,
            "planted_recall": planted_recall({name: scores}, concepts, world.concepts)[name][0],
        }

    print(
        f"standard world N = {n}; {SPEC} ranker, first-part weight {args.image_weight:g}, labels over the "
        f"teacher's top {args.train_top}; best untuned baseline at L = {mid}: {best_untuned} ({baseline:.3f})\n"
    )
    L = l_values(n)
    print(
        "| ranker | val mAP | "
        + " | ".join(f"mAP(L={x})" for x in L)
        + f" | / {best_untuned} | planted recall |"
    )
    print("|---|---:|" + "---:|" * len(L) + "---:|---:|")

    def line(name, row):
        cells = [f"{row['val_map']:.3f}", *(f"{row['map'][x]:.3f}" for x in L)]
        cells += [f"{row['ratio']:.2f}x", f"{row['planted_recall']:.2f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")

    for name, row in rows.items():
        line(name, row)
    for kind in ("seed", "ensemble"):
        group = [row for name, row in rows.items() if name.startswith(kind)]
        for label, reduce in (("mean", np.mean), ("worst", np.min)):
            line(
                f"**{label} of {'single rankers' if kind == 'seed' else 'ensembles'}**",
                {
                    "val_map": reduce([r["val_map"] for r in group]),
                    "map": {x: reduce([r["map"][x] for r in group]) for x in L},
                    "ratio": reduce([r["ratio"] for r in group]),
                    "planted_recall": reduce([r["planted_recall"] for r in group]),
                },
            )
    out = {"best_untuned": best_untuned, "baseline_map": baseline, "rows": rows}
    out["train_minutes"] = minutes
    (work / "ranker_seeds.json").write_text(
        json.dumps(out, indent=1, default=str), encoding="utf-8"
    )


if __name__ == "__main__":
    main()
