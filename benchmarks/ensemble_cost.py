"""What a ranker ensemble costs at MSCOCO scale, one member against three side by side, beside what it buys.

N = 118,287 training items with synthetic clustered 1,664-d features (effnet+minilm's width), embedded by the
paper's MLP with R = 1 and R = 3 members (untrained weights: cost does not depend on them), each in an HNSW index.
Per R: the items' embedding time, the index's build time and memory, one query's ranker + search (p50, p99), a
micro-batched pass of 16 queries (what the service runs under load, per query), and one query end to end (a 16x16
image + prompt through the ONNX Runtime encoders side by side). What it buys comes from the ranker-seed study
(``benchmarks/ranker_seeds.py``'s printed table, ``--seeds`` its suite record): the mean and worst of single
rankers against the mean and worst of three-member ensembles on the standard world.

    python benchmarks/ensemble_cost.py --threads 2 --seeds bench-results/ranker_seeds.json
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch
from latency import percentile_ms, timed

from fastgda.features import FeatureExtractor
from fastgda.index import VectorIndex
from fastgda.ranker import Ranker, RankerShape

SPEC = "effnet+minilm"


def seed_study(path: str | None) -> dict[str, list[str]]:
    """The summary rows of ranker_seeds' printed table: label -> its cells (empty when not given)."""
    if not path or not Path(path).is_file():
        return {}
    rows = {}
    for line in json.loads(Path(path).read_text(encoding="utf-8"))["stdout"].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"\*\*(.+)\*\*", cells[0])
        if match:
            rows[match.group(1)] = cells[1:]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-items", type=int, default=118_287)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--members", type=int, nargs="+", default=[1, 3])
    parser.add_argument(
        "--seeds", help="ranker_seeds' suite record (bench-results/ranker_seeds.json)"
    )
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    extractor = FeatureExtractor(SPEC, runtime="onnx")  # the query path's default on a CPU
    dim = extractor.dim
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(512, dim)).astype(np.float32)
    items = centres[rng.integers(0, 512, args.num_items)]
    items += 0.5 * rng.normal(size=items.shape).astype(np.float32)
    queries = centres[rng.integers(0, 512, 1000)]
    queries += 0.5 * rng.normal(size=queries.shape).astype(np.float32)
    image = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    prompt = ["a large red circle on the left on a black background"]
    print(
        f"N = {args.num_items:,}, {dim}-d features ({SPEC}), ranker 3 x 768 -> 768 per member, HNSW "
        f"(M 32, efSearch 128), {args.threads} threads; end to end on ONNX Runtime, encoders side by side\n"
    )
    results = {"num_items": args.num_items, "threads": args.threads, "members": {}}
    for members in args.members:
        torch.manual_seed(0)
        ranker = Ranker(RankerShape(dim, members=members)).eval()
        ranker.fit_standardisation(items)
        began = time.perf_counter()
        embedded = ranker.embed_numpy(items)
        embed_s = time.perf_counter() - began
        began = time.perf_counter()
        index = VectorIndex(ranker.embedding_dim, "hnsw")
        index.add(np.arange(args.num_items), embedded)
        build_s = time.perf_counter() - began
        del embedded

        def one(i=[0], ranker=ranker, index=index):  # noqa: B006  (cycles through the queries)
            row = queries[i[0] % 1000 : i[0] % 1000 + 1]
            i[0] += 1
            return index.search(ranker.embed_numpy(row), 10)

        def pass_of_16(i=[0], ranker=ranker, index=index):  # noqa: B006
            rows = queries[(16 * i[0]) % 992 : (16 * i[0]) % 992 + 16]
            i[0] += 1
            return index.search(ranker.embed_numpy(rows), 10)

        def end_to_end(ranker=ranker, index=index):
            return index.search(ranker.embed_numpy(extractor.embed_pairs(image[None], prompt)), 10)

        single = timed(one, args.repeats)
        batched = timed(pass_of_16, max(20, args.repeats // 4))
        whole = timed(end_to_end, 100)
        results["members"][members] = {
            "index_dim": ranker.embedding_dim,
            "embed_items_s": embed_s,
            "build_s": build_s,
            "memory_mb": index.memory_bytes() / 2**20,
            "ranker_and_search_p50_ms": percentile_ms(single, 50),
            "ranker_and_search_p99_ms": percentile_ms(single, 99),
            "pass_of_16_ms_per_query": percentile_ms(batched, 50) / 16,
            "end_to_end_p50_ms": percentile_ms(whole, 50),
            "end_to_end_p99_ms": percentile_ms(whole, 99),
        }
        del index
    print(
        "| members | index vectors | embed N items, s | HNSW build, s | index memory, MB | ranker + search p50 ms "
        "| p99 ms | per query in a pass of 16, ms | end to end p50 ms | p99 ms |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for members, r in results["members"].items():
        print(
            f"| {members} | {r['index_dim']}-d | {r['embed_items_s']:.1f} | {r['build_s']:.1f} | "
            f"{r['memory_mb']:.0f} | {r['ranker_and_search_p50_ms']:.2f} | {r['ranker_and_search_p99_ms']:.2f} | "
            f"{r['pass_of_16_ms_per_query']:.3f} | {r['end_to_end_p50_ms']:.1f} | {r['end_to_end_p99_ms']:.1f} |"
        )
    if len(results["members"]) > 1:
        low, high = (results["members"][m] for m in (min(args.members), max(args.members)))
        ratios = {
            key: high[key] / low[key]
            for key in (
                "memory_mb",
                "ranker_and_search_p50_ms",
                "pass_of_16_ms_per_query",
                "end_to_end_p50_ms",
            )  # fmt: skip
        }
        results["ratios"] = ratios
        print(
            f"\n{max(args.members)} members against {min(args.members)}: memory {ratios['memory_mb']:.2f}x, "
            f"ranker + search {ratios['ranker_and_search_p50_ms']:.2f}x, a pass of 16 "
            f"{ratios['pass_of_16_ms_per_query']:.2f}x, end to end {ratios['end_to_end_p50_ms']:.2f}x"
        )
    study = seed_study(args.seeds)
    if study:
        results["seed_study"] = study
        print(
            "\nWhat it buys (ranker_seeds, standard world N = 2,000, 40 test queries; its own run):\n"
        )
        print(
            "| rankers | val mAP | mAP(L=8) | mAP(L=17) | mAP(L=68) | / best untuned | planted recall |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for label, cells in study.items():
            print(f"| {label} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
