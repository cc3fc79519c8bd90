"""Ranker training throughput against per-pair references, and the time to train on the standard world.

Side by side in one run, on the same features, the same MLP (3 x 768 -> 768) and the same batch layout
(32 queries x 256 pairs): training pairs per second of

- fastgda: vectorised pair sampling, each distinct query and item embedded once per batch;
- per-pair batched: pairs drawn one by one in Python, one MLP row per pair side (no deduplication);
- per-pair loop: as above, and each pair embedded by its own forward call (the naive reference).

With ``--reference DIR`` (the shipped reference ground truth, default) it then trains the ranker on the
standard world's training queries with validation and reports wall-clock minutes.

    python benchmarks/ranker_training.py --world runs/world --work runs/ranker-bench
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch

from fastgda.ranker import PairSampler, Ranker, RankerShape, RankerTrainConfig
from fastgda.ranker.training import pair_loss


def per_pair_sample(
    ranked: np.ndarray, num_train: int, rows, pairs: int, outlier: float, rnd: random.Random
):
    """The straightforward reference: one pair at a time in Python."""
    k = ranked.shape[1]
    out_rows, out_items, out_targets = [], [], []
    for q in rows:
        pool = set(ranked[q].tolist())
        for _ in range(pairs):
            if rnd.random() < outlier:
                item = rnd.randrange(num_train)
                while item in pool:
                    item = rnd.randrange(num_train)
                target = 0.0
            else:
                j = rnd.randrange(k)
                item, target = int(ranked[q, j]), 1 - j / (k - 1)
            out_rows.append(q)
            out_items.append(item)
            out_targets.append(target)
    return out_rows, out_items, out_targets


def measure(step, steps: int) -> float:
    step()  # warm-up
    began = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - began) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dim", type=int, default=1280 + 384, help="feature dimension (effnet+minilm)"
    )
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-queries", type=int, default=400)
    parser.add_argument("--candidates", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--world", help="standard world folder: also time a real training run")
    parser.add_argument("--work", default="runs/ranker-bench")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    items = torch.from_numpy(rng.normal(size=(args.num_train, args.dim)).astype(np.float32))
    queries = torch.from_numpy(rng.normal(size=(args.num_queries, args.dim)).astype(np.float32))
    ranked = np.stack(
        [
            rng.choice(args.num_train, args.candidates, replace=False)
            for _ in range(args.num_queries)
        ]
    )
    torch.manual_seed(0)
    ranker = Ranker(RankerShape(args.dim))
    optimiser = torch.optim.AdamW(ranker.parameters(), lr=1e-3)
    sampler = PairSampler(ranked, args.num_train, 0.1)
    rnd = random.Random(0)
    batch_queries, pairs = 32, 256
    pairs_per_step = batch_queries * pairs

    def train_step(loss):
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    def ours():
        rows, ids, targets = sampler.sample(
            rng.choice(args.num_queries, batch_queries, replace=False), pairs
        )
        train_step(pair_loss(ranker, queries, items, rows, ids, targets, "bce"))

    def per_pair_batched():
        rows, ids, targets = per_pair_sample(
            ranked,
            args.num_train,
            rng.choice(args.num_queries, batch_queries, replace=False),
            pairs,
            0.1,
            rnd,
        )
        q, x = ranker.embed(queries[rows]), ranker.embed(items[ids])
        train_step(nn_bce(ranker.logits(q, x), torch.tensor(targets, dtype=torch.float32)))

    loop_queries = 2  # the loop is ~100x slower: time a smaller batch and compare pairs per second

    def per_pair_loop():
        rows, ids, targets = per_pair_sample(
            ranked,
            args.num_train,
            rng.choice(args.num_queries, loop_queries, replace=False),
            pairs,
            0.1,
            rnd,
        )
        logits = torch.stack(
            [
                ranker.logits(ranker.embed(queries[r : r + 1]), ranker.embed(items[i : i + 1]))[0]
                for r, i in zip(rows, ids, strict=True)
            ]
        )
        train_step(nn_bce(logits, torch.tensor(targets, dtype=torch.float32)))

    ours_s = measure(ours, args.steps)
    batched_s = measure(per_pair_batched, args.steps)
    loop_s = measure(per_pair_loop, args.steps) * batch_queries / loop_queries  # per full-size step
    print(
        f"features {args.dim}-d, MLP 3 x 768 -> 768, {pairs_per_step} pairs per step, torch threads {args.threads}"
    )
    print("\n| implementation | s/step | pairs/s | fastgda speed-up |\n|---|---:|---:|---:|")
    for name, seconds in [("fastgda (vectorised, deduplicated)", ours_s), ("per-pair, batched", batched_s),
                          ("per-pair loop (timed on 2-query batches)", loop_s)]:  # fmt: skip
        print(
            f"| {name} | {seconds:.3f} | {pairs_per_step / seconds:,.0f} | {seconds / ours_s:.1f}x |"
        )

    if args.world:
        from fastgda.app.reference import reference_ground_truth, reference_split_dir
        from fastgda.features import Features, embed_dataset

        work = Path(args.work)
        item_features = work / "items"
        if not item_features.exists():
            embed_dataset(args.world, "effnet+minilm", item_features)
        feats = {
            s: embed_dataset(reference_split_dir(s), "effnet+minilm", work / f"q-{s}")
            for s in ("train", "val")
        }
        truth = {s: reference_ground_truth(s) for s in ("train", "val")}
        began = time.perf_counter()
        history = Ranker.distil(
            feats["train"], Features.load(item_features), truth["train"], RankerTrainConfig(),
            validation=(feats["val"], truth["val"]),
        ).history  # fmt: skip
        minutes = (time.perf_counter() - began) / 60
        print(
            f"\nstandard world: {len(history)} epochs on {len(truth['train'])} training queries x "
            f"{truth['train'].ids.shape[1]} candidates in {minutes:.1f} min "
            f"(best validation mAP {max(h['val_map'] for h in history):.3f})"
        )


def nn_bce(logits, targets):
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)


if __name__ == "__main__":
    main()
