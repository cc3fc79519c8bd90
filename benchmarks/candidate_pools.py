"""How much of the teacher's top-L a training query's candidate pool can contain, per candidate feature.

Training queries are ranked by the teacher only over their top-M neighbours in a candidate feature space; what
lies outside is never seen by the ranker except as an "outlier" labelled worst. On the test queries (ranked over
all N) this measures the share of the teacher's top-L that falls inside the top-M pool of each space. For a
multi-part space the parts are L2-normalised and weighted equally (the teacher's ``candidate_feature``).

    python benchmarks/candidate_pools.py --world runs/world --work runs/quality
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fastgda.comparison import cosine_matrix
from fastgda.evaluation import l_values
from fastgda.features import load_or_embed
from fastgda.reference import reference_ground_truth, reference_split_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True)
    parser.add_argument("--work", default="runs/quality")
    parser.add_argument("--pools", type=int, nargs="+", default=[256, 512])
    args = parser.parse_args()
    work = Path(args.work)
    test = reference_ground_truth("test")
    n = test.ids.shape[1]
    cosine = {}
    for name in ("effnet", "minilm", "pixels"):
        items = load_or_embed(args.world, name, work / name / "items", progress=False)
        queries = load_or_embed(
            reference_split_dir("test"), name, work / name / "q-test", progress=False
        )
        cosine[name] = cosine_matrix(queries.values[test.query_ids], items.values)
    cosine["effnet+minilm (parts weighted equally)"] = (cosine["effnet"] + cosine["minilm"]) / 2
    ls = l_values(n)
    rows = {}
    for name, scores in cosine.items():
        order = np.argsort(-scores, axis=1, kind="stable")
        rows[name] = {}
        for m in args.pools:
            for L in ls:
                inside = [
                    len(set(test.ids[q, :L].tolist()) & set(order[q, :m].tolist())) / L
                    for q in range(len(test))
                ]
                rows[name][f"M={m}, L={L}"] = float(np.mean(inside))
    columns = list(next(iter(rows.values())))
    print(
        f"share of the teacher's top-L inside the top-M candidate pool, {len(test)} test queries, N = {n}"
    )
    print("| candidate space | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    (work / "candidate_pools.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
