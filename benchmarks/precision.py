"""What reduced precision (``--dtype bfloat16`` / ``float16``) does to the teacher and the encoders.

On the shipped world model with the reference Fisher and teacher settings, side by side in one run:

- the teacher: each precision scores the same candidate pools (the float32 teacher's top-M neighbours of each test
  query) with its own before-losses and Newton step; per precision: Spearman of its scores against float32's,
  overlap of the top-10, and seconds per query;
- the encoders of the demo's spec: cosine of every item's features against float32's, per part.

Autocast keeps weights, reductions, the loss and the Fisher's accumulations in float32 (float64 for the Fisher),
so what moves is the UNet's and the encoders' matrix products. On a CPU without bfloat16 units the reduced
precisions are slower; the speed that matters is a GPU's (``benchmarks/sd_cost.py``), the agreement holds on any
device.

    python benchmarks/precision.py --world runs/world --out runs/bench/precision --json bench-results/precision.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fastgda.app.reference import reference_dir, reference_info, reference_query_set
from fastgda.diffusion import TextToImageModel
from fastgda.diffusion.names import resolve_model_dir
from fastgda.diffusion.queries import QuerySet
from fastgda.features import FeatureExtractor
from fastgda.unlearning import Teacher
from fastgda.unlearning.jobs import teacher_config_from_json
from fastgda.unlearning.scoring import BeforeLosses

DTYPES = ("float32", "bfloat16", "float16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True, help="the standard world (fastgda world shapes)")
    parser.add_argument("--model", default="shipped")
    parser.add_argument("--out", required=True, help="work folder (query set)")
    parser.add_argument(
        "--queries", type=int, nargs="+", default=[0, 3, 20, 30], help="test query ids"
    )
    parser.add_argument(
        "--candidates", type=int, default=300, help="M: candidates scored per query"
    )
    parser.add_argument(
        "--items", type=int, default=500, help="items embedded for the encoder drift"
    )
    parser.add_argument("--spec", default="effnet+minilm")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model_dir(args.model)
    reference = reference_dir()
    config = teacher_config_from_json(reference_info()["splits"]["test"]["teacher"])
    model = TextToImageModel.from_pretrained(model_dir)
    queries = QuerySet(reference_query_set("test", model, model_dir, out / "queries-test"))

    teachers = {
        dtype: Teacher.from_folders(
            model_dir,
            args.world,
            reference / "fisher",
            config,
            device="cpu",
            dtype=dtype,
        )
        for dtype in DTYPES
    }
    pools = teachers["float32"].with_candidates(args.candidates, "effnet")
    candidates = {q: pools.candidates(queries, q) for q in args.queries}
    scored = np.unique(np.concatenate(list(candidates.values())))
    scores, seconds = {}, {}
    for dtype, teacher in teachers.items():
        # Before-losses of the scored items only (a float16 pass over all N is slow on a CPU without float16
        # units), computed once per precision, outside the per-query timing.
        teacher.before_losses = BeforeLosses.compute(
            teacher.model, teacher.data, config.scoring, {}, item_ids=scored
        )
        began = time.perf_counter()
        scores[dtype] = {q: teacher.scores(queries, q, candidates[q]) for q in args.queries}
        seconds[dtype] = (time.perf_counter() - began) / len(args.queries)
        print(f"{dtype}: {seconds[dtype]:.1f} s per query", flush=True)

    teacher_rows = {}
    for dtype in DTYPES:
        rho = [_spearman(scores[dtype][q], scores["float32"][q]) for q in args.queries]
        top = [_top_overlap(scores[dtype][q], scores["float32"][q], 10) for q in args.queries]
        teacher_rows[dtype] = {
            "spearman_mean": float(np.mean(rho)),
            "spearman_min": float(np.min(rho)),
            "top10_overlap_mean": float(np.mean(top)),
            "seconds_per_query": seconds[dtype],
        }
    print(
        f"\nteacher on {len(args.queries)} test queries x {args.candidates} candidates (shipped model, reference "
        f"settings, {args.threads} CPU threads), against float32:\n"
        "| precision | Spearman (mean) | Spearman (worst query) | top-10 overlap | seconds per query |\n"
        "|---|---:|---:|---:|---:|"
    )
    for dtype, row in teacher_rows.items():
        print(
            f"| {dtype} | {row['spearman_mean']:.4f} | {row['spearman_min']:.4f} | "
            f"{row['top10_overlap_mean']:.2f} | {row['seconds_per_query']:.1f} |"
        )

    from fastgda.data import open_dataset

    world = open_dataset(args.world)
    rows = list(range(min(args.items, len(world))))
    features = {
        dtype: FeatureExtractor(args.spec, "cpu", dtype).embed(world, rows) for dtype in DTYPES
    }
    parts = FeatureExtractor(args.spec).parts
    encoder_rows = {}
    print(
        f"\nencoders ({args.spec}) on {len(rows)} world items, cosine against float32 per item:\n"
        "| precision | part | mean | worst item |\n|---|---|---:|---:|"
    )
    for dtype in DTYPES[1:]:
        for part in parts:
            cols = slice(part["offset"], part["offset"] + part["dim"])
            cosine = _row_cosine(features[dtype][:, cols], features["float32"][:, cols])
            encoder_rows[f"{dtype} {part['name']}"] = {
                "mean": float(cosine.mean()),
                "min": float(cosine.min()),
            }
            print(f"| {dtype} | {part['name']} | {cosine.mean():.5f} | {cosine.min():.5f} |")
    if args.json:
        record = {
            "queries": args.queries,
            "candidates": args.candidates,
            "threads": args.threads,
            "teacher": teacher_rows,
            "encoders": encoder_rows,
        }
        Path(args.json).write_text(json.dumps(record, indent=1), encoding="utf-8")


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def _top_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    return len(set(np.argsort(-a)[:k].tolist()) & set(np.argsort(-b)[:k].tolist())) / k


def _row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


if __name__ == "__main__":
    main()
