"""Teacher cost on the standard world: seconds per query (full ranking and training-query mode), forward
samples per second, and the per-query cost with the cached before losses against recomputing them.

    python benchmarks/teacher.py --world runs/world --model shipped --out runs/teacher-bench
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from fastgda.app.world import ShapesWorld
from fastgda.diffusion import TextToImageModel
from fastgda.diffusion.names import resolve_model_dir
from fastgda.diffusion.queries import SamplerConfig, load_query_tensors, write_query_set
from fastgda.diffusion.training import prepare_training_data
from fastgda.unlearning import (
    FisherConfig,
    ScoringConfig,
    UnlearnConfig,
    fit_fisher,
    influence_scores,
    item_losses,
    select_linear_layers,
    unlearn,
    weights_shifted,
)
from fastgda.unlearning.scoring import BeforeLosses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True)
    parser.add_argument("--model", default="shipped")
    parser.add_argument("--out", required=True)
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--candidates", type=int, default=256)
    parser.add_argument("--fisher-samples", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    model_dir = resolve_model_dir(args.model)
    model = TextToImageModel.from_pretrained(model_dir)
    world = ShapesWorld(args.world)
    data = prepare_training_data(model, world)
    n = len(world)
    scoring = ScoringConfig()
    num_forwards = int(data.caption_count.sum()) * len(scoring.timesteps)

    began = time.perf_counter()
    fisher = fit_fisher(model, data, FisherConfig(kind="ekfac", num_samples=args.fisher_samples))
    fisher_s = time.perf_counter() - began
    write_query_set(
        model,
        ["a large cyan circle in the center on a black background"],
        out / "queries",
        sampler=SamplerConfig(),
        model_dir=model_dir,
        overwrite=True,
    )
    q = load_query_tensors(out / "queries")
    began = time.perf_counter()
    before = BeforeLosses.compute(model, data, scoring, key={})
    before_s = time.perf_counter() - began

    layers = select_linear_layers(model.unet, "kv")
    began = time.perf_counter()
    delta = unlearn(
        model,
        layers,
        fisher,
        q["x0"][0],
        q["text_states"][0],
        q["text_mask"][0],
        UnlearnConfig(num_pairs=args.pairs),
        n,
    )
    unlearn_s = time.perf_counter() - began
    all_ids = np.arange(n)
    began = time.perf_counter()
    with weights_shifted(layers, delta):
        influence_scores(model, data, all_ids, before)
    after_full_s = time.perf_counter() - began
    subset = all_ids[: args.candidates]
    began = time.perf_counter()
    with weights_shifted(layers, delta):
        influence_scores(model, data, subset, before)
    after_m_s = time.perf_counter() - began
    began = time.perf_counter()
    item_losses(
        model, data, subset, scoring
    )  # what recomputing the before losses costs per training query
    before_m_s = time.perf_counter() - began

    full = unlearn_s + after_full_s
    train_mode = unlearn_s + after_m_s
    print(
        f"N = {n}, {len(scoring.timesteps)} timesteps x {num_forwards // n / len(scoring.timesteps):.2f} captions "
        f"per item, {args.pairs} unlearning pairs, torch threads {torch.get_num_threads()}"
    )
    print(f"EK-FAC Fisher, {args.fisher_samples} samples (2 passes): {fisher_s:.1f} s")
    print(
        f"before-loss cache for all N ({num_forwards} forwards): {before_s:.1f} s "
        f"= {num_forwards / before_s:.0f} forward samples/s, once per model"
    )
    print(f"unlearning one query ({args.pairs} pairs): {unlearn_s:.1f} s")
    print(
        f"full-ranking query (all {n}): {full:.1f} s; with before losses recomputed: {full + before_s:.1f} s; "
        f"ratio {full / (full + before_s):.2f}"
    )
    print(
        f"training query (M = {args.candidates}): {train_mode:.1f} s; with before losses recomputed: "
        f"{train_mode + before_m_s:.1f} s; ratio {train_mode / (train_mode + before_m_s):.2f}"
    )


if __name__ == "__main__":
    main()
