"""Query latency of the fast path at MSCOCO scale, side by side with a "score everything and argsort" reference.

N = 118,287 training items with synthetic clustered 1280-d features (the size of dino+clip_text), embedded by the
paper's MLP (3 x 768 hidden, 768 out; untrained weights: latency does not depend on them). Prints, per index
backend: single-query top-10 p50/p99 with features given, per-query time in batches of 1,000, recall@10 against
exact search, index memory; the end-to-end time of a 16x16 image + prompt through the offline encoders
(effnet+minilm) into the ranker and the index; and the speed ratio against the reference.

    python benchmarks/latency.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from fastgda.features import FeatureExtractor
from fastgda.index import VectorIndex
from fastgda.ranker import Ranker, RankerShape


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q) * 1000)


def timed(fn, repeats: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        out.append(time.perf_counter() - began)
    return out


# The index's default settings, spelled out in the table.
LABELS = {
    "exact": "exact (streamed top-k)",
    "hnsw": "hnsw (M 32, efSearch 128)",
    "ivfpq": "ivfpq (nprobe 16, m 16, exact re-scoring of 10 x k candidates)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-items", type=int, default=118_287)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backends", nargs="+", default=["exact", "hnsw", "ivfpq"])
    parser.add_argument(
        "--members",
        type=int,
        default=1,
        help="ranker ensemble size (the demo's is 3): R MLPs, R x 768-d index vectors",
    )
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(512, args.dim)).astype(np.float32)
    features = centres[rng.integers(0, 512, args.num_items)] + 0.5 * rng.normal(
        size=(args.num_items, args.dim)
    ).astype(np.float32)
    queries = centres[rng.integers(0, 512, 1000)] + 0.5 * rng.normal(size=(1000, args.dim)).astype(
        np.float32
    )
    torch.manual_seed(0)
    ranker = Ranker(RankerShape(args.dim, members=args.members)).eval()
    ranker.fit_standardisation(features)
    began = time.perf_counter()
    item_emb = ranker.embed_numpy(features)
    embed_seconds = time.perf_counter() - began
    print(
        f"N = {args.num_items:,}, features {args.dim}-d, ranker 3 x 768 -> 768"
        + (f" x {args.members} members" if args.members > 1 else "")
        + f" ({ranker.embedding_dim}-d index vectors), torch threads {args.threads}"
    )
    print(f"embedding the training set with the ranker: {embed_seconds:.1f} s\n")

    # Reference: ranker forward, score every item, full argsort.
    def reference(i=[0]):  # noqa: B006  (a counter cycling through the queries)
        with torch.no_grad():
            q = ranker.embed(torch.from_numpy(queries[i[0] % 1000 : i[0] % 1000 + 1]))
        i[0] += 1
        return np.argsort(-(item_emb @ q.numpy()[0]))[:10]

    ref_times = timed(reference, max(20, args.repeats // 10))
    results = {
        "num_items": args.num_items,
        "members": args.members,
        "reference_p50_ms": percentile_ms(ref_times, 50),
        "backends": {},
    }
    exact_ids = None
    built = {}
    print(
        "| backend | build s | single query p50 ms | p99 ms | batch of 1000, ms/query | recall@10 vs exact | "
        "memory MB | speed-up vs reference (p50) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for backend in args.backends:
        began = time.perf_counter()
        index = VectorIndex(ranker.embedding_dim, backend)
        index.add(np.arange(args.num_items), item_emb)
        build = time.perf_counter() - began
        built[backend] = index

        def single(i=[0], index=index):  # noqa: B006
            with torch.no_grad():
                q = ranker.embed(torch.from_numpy(queries[i[0] % 1000 : i[0] % 1000 + 1]))
            i[0] += 1
            return index.search(q.numpy(), 10)

        times = timed(single, args.repeats if backend != "exact" else max(20, args.repeats // 10))
        began = time.perf_counter()
        with torch.no_grad():
            batch_q = ranker.embed(torch.from_numpy(queries)).numpy()
        ids, _ = index.search(batch_q, 10)
        batch_ms = (time.perf_counter() - began) * 1000 / len(queries)
        if backend == "exact":
            exact_ids = ids
        recall = (
            float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact_ids, strict=True)]))
            if exact_ids is not None
            else float("nan")
        )
        row = {
            "build_s": build,
            "p50_ms": percentile_ms(times, 50),
            "p99_ms": percentile_ms(times, 99),
            "batch_ms_per_query": batch_ms,
            "recall_at_10": recall,
            "memory_mb": index.memory_bytes() / 2**20,
            "speedup_vs_reference": percentile_ms(ref_times, 50) / percentile_ms(times, 50),
        }
        results["backends"][backend] = row
        print(
            f"| {LABELS.get(backend, backend)} | {build:.1f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
            f"{batch_ms:.3f} | {recall:.3f} | "
            f"{row['memory_mb']:.0f} | {row['speedup_vs_reference']:.0f}x |",
            flush=True,
        )
    print(
        f"\nreference (ranker + score all N + full argsort): p50 {results['reference_p50_ms']:.1f} ms"
    )

    # End to end: image + prompt -> effnet+minilm -> ranker -> index (HNSW if built, else exact), with the
    # encoders one after the other (the reference) and side by side in threads, one torch thread each.
    sequential = FeatureExtractor("effnet+minilm", concurrent=False)
    side_by_side = FeatureExtractor("effnet+minilm", concurrent=True)
    e2e_ranker = Ranker(RankerShape(sequential.dim, members=args.members)).eval()
    e2e_index = built["hnsw" if "hnsw" in built else args.backends[0]]
    image = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    prompt = ["a large red circle on the left on a black background"]

    def rank_and_search(f):
        with torch.no_grad():
            q = e2e_ranker.embed(torch.from_numpy(f)).numpy()
        return e2e_index.search(q, 10)

    features = sequential.embed_pairs(image[None], prompt)
    stages = {
        f"{e.name} ({args.threads} threads)": timed(
            lambda e=e: e.encode(image[None] if e.modality == "image" else prompt), 60
        )
        for e in sequential.encoders
    }
    stages["ranker + search"] = timed(lambda: rank_and_search(features), 60)
    e2e = timed(lambda: rank_and_search(sequential.embed_pairs(image[None], prompt)), 100)
    per_encoder = max(1, args.threads // len(side_by_side.encoders))
    torch.set_num_threads(per_encoder)
    concurrent_e2e = timed(
        lambda: rank_and_search(side_by_side.embed_pairs(image[None], prompt)), 100
    )
    drift = float(
        np.abs(side_by_side.embed_pairs(image[None], prompt) - features).max()
    )  # threads change only the order of float sums
    # ONNX Runtime for the encoders' networks, side by side (one thread each) and in turn (all threads).
    onnx_side = FeatureExtractor("effnet+minilm", runtime="onnx")
    onnx_side.embed_pairs(image[None], prompt)
    onnx_e2e = timed(lambda: rank_and_search(onnx_side.embed_pairs(image[None], prompt)), 100)
    onnx_drift = float(np.abs(onnx_side.embed_pairs(image[None], prompt) - features).max())
    torch.set_num_threads(args.threads)
    onnx_turn = FeatureExtractor("effnet+minilm", concurrent=False, runtime="onnx")
    onnx_turn_e2e = timed(lambda: rank_and_search(onnx_turn.embed_pairs(image[None], prompt)), 100)
    for e in onnx_turn.encoders:
        session = onnx_turn._sessions[e.name]
        batch = image[None] if e.modality == "image" else prompt
        stages[f"{e.name}, ONNX Runtime ({args.threads} threads)"] = timed(
            lambda e=e, s=session, b=batch: e.encode_onnx(b, s), 60
        )
    results["end_to_end_onnx_p50_ms"] = percentile_ms(onnx_e2e, 50)
    results["end_to_end_onnx_p99_ms"] = percentile_ms(onnx_e2e, 99)
    results["end_to_end_onnx_in_turn_p50_ms"] = percentile_ms(onnx_turn_e2e, 50)
    results["end_to_end_onnx_in_turn_p99_ms"] = percentile_ms(onnx_turn_e2e, 99)
    results["end_to_end_p50_ms"] = percentile_ms(e2e, 50)
    results["end_to_end_p99_ms"] = percentile_ms(e2e, 99)
    results["end_to_end_concurrent_p50_ms"] = percentile_ms(concurrent_e2e, 50)
    results["end_to_end_concurrent_p99_ms"] = percentile_ms(concurrent_e2e, 99)
    results["stages_p50_ms"] = {name: percentile_ms(v, 50) for name, v in stages.items()}
    print(
        f"end to end (16x16 image + prompt -> effnet+minilm -> ranker -> {e2e_index.backend} top-10): "
        f"p50 {results['end_to_end_p50_ms']:.1f} ms, p99 {results['end_to_end_p99_ms']:.1f} ms"
    )
    print()
    print("| end-to-end stage (median of 60) | ms |")
    print("|---|---:|")
    for name, value in results["stages_p50_ms"].items():
        print(f"| {name} | {value:.1f} |")
    print()
    print("| end to end, one query (100 runs) | p50 ms | p99 ms |")
    print("|---|---:|---:|")
    print(f"| encoders one after the other, {args.threads} torch threads (the reference) | "
          f"{results['end_to_end_p50_ms']:.1f} | {results['end_to_end_p99_ms']:.1f} |")  # fmt: skip
    p50, p99 = results["end_to_end_concurrent_p50_ms"], results["end_to_end_concurrent_p99_ms"]
    print(f"| encoders side by side, {per_encoder} torch thread each | {p50:.1f} | {p99:.1f} |")
    for label, key in ((f"encoders under ONNX Runtime in turn, {args.threads} threads", "onnx_in_turn"),
                       (f"encoders under ONNX Runtime side by side, {per_encoder} thread each", "onnx")):  # fmt: skip
        print(
            f"| {label} | {results[f'end_to_end_{key}_p50_ms']:.1f} | {results[f'end_to_end_{key}_p99_ms']:.1f} |"
        )
    print(
        f"features against the reference: max |difference| side by side {drift:.2e}, ONNX Runtime {onnx_drift:.2e}"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
