"""Prompt adherence of the world model on held-out prompts, against training steps; train and sample times.

Held-out prompts name attribute combinations never seen in training. Each is sampled with several seeds
(deterministic DDIM, classifier-free guidance) and the attribute probe reads colour, shape, size, position and
background off the result. Checkpoints hold EMA weights, so one training run gives the whole steps curve.

    python benchmarks/adherence.py --world runs/world --checkpoints runs/model.checkpoints \
        --probe src/fastgda/app/packs/shapes2000/probe --seeds 4
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fastgda.app.world import ShapesWorld, held_out_prompts
from fastgda.app.world.adherence import measure_adherence
from fastgda.app.world.probe import AttributeProbe, probe_accuracy
from fastgda.diffusion import DiffusionTrainConfig, TextToImageModel
from fastgda.diffusion.training import draw_batch, load_checkpoint_ema, prepare_training_data


def time_training_step(model, world, batch_size=64, repeats=10):
    config = DiffusionTrainConfig(batch_size=batch_size)
    data = prepare_training_data(model, world)
    optimizer = torch.optim.AdamW(model.unet.parameters(), lr=1e-4)
    times = []
    for step in range(repeats + 2):
        began = time.perf_counter()
        loss = model.loss(*draw_batch(data, step, config, 1000)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - began)
    return float(np.median(times[2:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True)
    parser.add_argument(
        "--checkpoints", required=True, help="folder of step_*.safetensors from model train"
    )
    parser.add_argument("--probe", required=True)
    parser.add_argument("--seeds", type=int, default=4, help="samples per held-out prompt")
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0])
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--only-last", action="store_true", help="score only the newest checkpoint")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(2)

    world = ShapesWorld(args.world)
    probe = AttributeProbe.load(args.probe)
    single = [i for i, s in enumerate(world.scenes) if len(s["objects"]) == 1]
    real_accuracy = probe_accuracy(
        probe, world.load_images(single), [world.scenes[i] for i in single]
    )
    print(
        f"probe accuracy on {len(single)} real single-object world images (not used to train it):"
    )
    print("  " + ", ".join(f"{k} {v:.4f}" for k, v in real_accuracy.items()))

    prompts = held_out_prompts(args.world)
    checkpoints = sorted(Path(args.checkpoints).glob("step_*.safetensors"))
    if args.only_last:
        checkpoints = checkpoints[-1:]
    model = TextToImageModel.from_preset("tiny16")
    rows = []
    print(f"\n{len(prompts)} held-out prompts x {args.seeds} seeds, DDIM {args.ddim_steps} steps")
    print("| training steps | guidance | colour | shape | size | position | background | all |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for path in checkpoints:
        step = load_checkpoint_ema(path, model)
        for guidance in args.guidance:
            score = measure_adherence(model, probe, prompts, args.seeds, guidance, args.ddim_steps)
            rows.append({"step": step, "guidance": guidance, **score})
            print(
                f"| {step} | {guidance:g} | {score['colour']:.3f} | {score['shape']:.3f} | {score['size']:.3f} | "
                f"{score['position']:.3f} | {score['background']:.3f} | {score['all']:.3f} |",
                flush=True,
            )

    began = time.perf_counter()
    n = 64
    model.sample([prompts[0]["prompt"]] * n, list(range(n)), args.ddim_steps, 1.0)
    sample_ms = (time.perf_counter() - began) / n * 1e3
    began = time.perf_counter()
    model.sample([prompts[0]["prompt"]] * n, list(range(n)), args.ddim_steps, 3.0)
    guided_ms = (time.perf_counter() - began) / n * 1e3
    step_s = time_training_step(TextToImageModel.from_preset("tiny16"), world)
    print(
        f"\nsampling: {sample_ms:.1f} ms per image unguided, {guided_ms:.1f} ms with guidance "
        f"(batch {n}, DDIM {args.ddim_steps} steps)"
    )
    print(
        f"training: {step_s:.3f} s per step at batch 64 (median of 10), torch threads {torch.get_num_threads()}"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "probe_real_accuracy": real_accuracy,
                    "rows": rows,
                    "sample_ms_per_image": sample_ms,
                    "guided_sample_ms_per_image": guided_ms,
                    "train_step_s": step_s,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
