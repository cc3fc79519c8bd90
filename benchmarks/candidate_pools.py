"""How much of the teacher's top-L a training query's candidate pool can contain, per candidate feature.

Training queries are ranked by the teacher only over their top-M neighbours in a candidate feature space; what
lies outside is never seen by the ranker except as an "outlier" labelled worst. On the test queries (ranked over
all N) this measures the share of the teacher's top-L that falls inside the top-M pool of each space. For a
multi-part space the parts are L2-normalised and weighted equally (the teacher's ``candidate_feature``).
A second table: for the training queries that name a planted concept, the share of its exemplars inside the pool.

    python benchmarks/candidate_pools.py --world runs/world --work runs/quality
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fastgda.app.reference import reference_ground_truth, reference_queries, reference_split_dir
from fastgda.app.world import ShapesWorld
from fastgda.evaluation import cosine_matrix, l_values
from fastgda.features import load_or_embed


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
        items = load_or_embed(args.world, name, work / name / "items")
        queries = load_or_embed(reference_split_dir("test"), name, work / name / "q-test")
        cosine[name] = cosine_matrix(queries.select(test.query_ids).values, items.values)
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
    planted = planted_coverage(args.world, work, args.pools)
    print()
    print(
        "share of a planted concept's exemplars inside the top-M pool of the training queries that name it "
        f"({planted.pop('queries')} of {len(reference_ground_truth('train'))} training queries)"
    )
    columns = [f"M={m}" for m in args.pools]
    print("| candidate space | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, row in planted.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    (work / "candidate_pools.json").write_text(
        json.dumps({"teacher_top_l": rows, "planted_exemplars_train": planted}, indent=1),
        encoding="utf-8",
    )


def planted_coverage(world_dir, work: Path, pools) -> dict:
    """Per candidate space and M: the mean share of the named concept's exemplars inside a training query's
    pool. An exemplar outside the pool is never ranked by the teacher for that query."""
    world = ShapesWorld(world_dir)
    train = reference_ground_truth("train")
    records = reference_queries("train")
    concepts = [records[int(q)].get("concept") for q in train.query_ids]
    rows = [r for r, c in enumerate(concepts) if c]
    cosine = {}
    for name in ("effnet", "minilm"):
        items = load_or_embed(world_dir, name, work / name / "items")
        queries = load_or_embed(reference_split_dir("train"), name, work / name / "q-train")
        cosine[name] = cosine_matrix(queries.values[train.query_ids[rows]], items.values)
    cosine["effnet+minilm (parts weighted equally)"] = (cosine["effnet"] + cosine["minilm"]) / 2
    out: dict = {"queries": len(rows)}
    for name, scores in cosine.items():
        order = np.argsort(-scores, axis=1, kind="stable")
        out[name] = {}
        for m in pools:
            shares = [
                len(set(world.concepts[concepts[r]]) & set(order[i, :m].tolist()))
                / len(world.concepts[concepts[r]])
                for i, r in enumerate(rows)
            ]
            out[name][f"M={m}"] = float(np.mean(shares))
    return out


if __name__ == "__main__":
    main()
