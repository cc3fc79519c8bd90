"""The ONNX Runtime query path against torch on the standard world: feature drift and the demo ranker's mAP(L).

Embeds the 2,000 training items and the 40 reference test queries with the torch encoders (the reference) and
with ONNX Runtime, reports each part's cosine per row (min and mean), the bulk embedding time of both, and the
demo ranker's mAP(L) against the shipped teacher rankings with each runtime's features for queries and items,
with the paired per-query difference.

    python benchmarks/fast_encoders.py --demo runs/demo-s16 --world runs/world --threads 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fastgda.app.reference import reference_ground_truth, reference_split_dir
from fastgda.data import ImageCaptionFolder, open_dataset
from fastgda.evaluation import l_values, map_at_l, mean_and_stderr
from fastgda.features import FeatureExtractor
from fastgda.ranker import Ranker


def embed(extractor: FeatureExtractor, images, texts, batch: int = 256) -> tuple[np.ndarray, float]:
    began = time.perf_counter()
    rows = [
        extractor.embed_pairs(images[s : s + batch], texts[s : s + batch], concurrent=False)
        for s in range(0, len(texts), batch)
    ]
    return np.concatenate(rows), time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--demo", default="runs/demo-s16", help="a finished `fastgda demo` folder (its ranker)"
    )
    parser.add_argument("--world", default="runs/world")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    world = open_dataset(args.world)
    items = list(range(len(world)))
    item_images, item_texts = world.load_images(items), [world.captions(i)[0] for i in items]
    split = reference_split_dir("test")
    records = ImageCaptionFolder(split).records
    query_images = [np.asarray(Image.open(split / r["file"]).convert("RGB")) for r in records]
    query_texts = [r["prompt"] for r in records]

    ranker = Ranker.load(Path(args.demo) / "ranker")
    truth = reference_ground_truth("test")
    figures = {"threads": args.threads, "runtimes": {}}
    features = {}
    for runtime in ("torch", "onnx"):
        extractor = FeatureExtractor(ranker.spec or "effnet+minilm", runtime=runtime)
        item_values, seconds = embed(extractor, item_images, item_texts)
        query_values, _ = embed(extractor, query_images, query_texts)
        features[runtime] = (item_values, query_values)
        figures["runtimes"][runtime] = {"items_seconds": seconds}
        parts = extractor.parts
    rows = []
    for part in parts:
        columns = slice(part["offset"], part["offset"] + part["dim"])
        for name, index in (("items", 0), ("queries", 1)):
            a, b = features["torch"][index][:, columns], features["onnx"][index][:, columns]
            cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            rows.append((part["name"], name, float(cosine.min()), float(cosine.mean())))
    figures["cosine"] = [dict(zip(("part", "rows", "min", "mean"), r, strict=True)) for r in rows]

    ls = l_values(len(world))
    aps = {}
    for runtime, (item_values, query_values) in features.items():
        scores = ranker.score(query_values[truth.query_ids], item_values)
        aps[runtime] = {L: map_at_l(scores, truth.ids, L) for L in ls}
    figures["map"] = {
        runtime: {str(L): mean_and_stderr(v) for L, v in per_l.items()}
        for runtime, per_l in aps.items()
    }
    figures["map_paired_difference"] = {
        str(L): mean_and_stderr(aps["onnx"][L] - aps["torch"][L]) for L in ls
    }

    torch_s, onnx_s = (figures["runtimes"][r]["items_seconds"] for r in ("torch", "onnx"))
    speed = torch_s / onnx_s
    print(f"N = {len(world):,} training items and {len(records)} test queries, {args.threads} threads; "
          f"embedding the items: torch {torch_s:.1f} s, ONNX Runtime {onnx_s:.1f} s ({speed:.1f}x)")  # fmt: skip
    print()
    print("| part | rows | cosine, ONNX Runtime vs torch (min) | (mean) |")
    print("|---|---|---:|---:|")
    for part, name, low, mean in rows:
        print(f"| {part} | {name} | {low:.7f} | {mean:.7f} |")
    print()
    print(
        "| mAP(L) of the demo ranker, test queries | " + " | ".join(f"L = {L}" for L in ls) + " |"
    )
    print("|---|" + "---:|" * len(ls))
    for runtime in ("torch", "onnx"):
        cells = [f"{m:.4f} ± {s:.4f}" for m, s in (figures["map"][runtime][str(L)] for L in ls)]
        print(f"| features from {runtime} | " + " | ".join(cells) + " |")
    cells = [
        f"{m:+.5f} ± {s:.5f}" for m, s in (figures["map_paired_difference"][str(L)] for L in ls)
    ]
    print("| paired difference, onnx − torch | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
