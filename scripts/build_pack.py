"""Assemble the shipped world pack from a trained model, the attribute probe and measured adherence.

    fastgda world shapes --out runs/world --size 2000 --seed 0
    fastgda model train --data runs/world --out runs/model --preset tiny16 --steps 10000 --seed 0 \
        --checkpoint-every 1000 --keep-checkpoints 100
    fastgda world probe --out runs/probe --world runs/world
    python scripts/build_pack.py --world runs/world --model runs/model --probe runs/probe --guidance 1.0
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from fastgda._artifacts import read_manifest, sha256_file, verify_checksums, write_json_atomic
from fastgda.app.pack import PACK_DIR
from fastgda.app.world import held_out_prompts
from fastgda.app.world.adherence import measure_adherence
from fastgda.app.world.probe import AttributeProbe, probe_accuracy
from fastgda.data import ShapesWorld
from fastgda.diffusion import TextToImageModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--probe", required=True)
    parser.add_argument(
        "--guidance", type=float, default=1.0, help="sampler guidance scale shipped with the pack"
    )
    parser.add_argument(
        "--seeds", type=int, default=4, help="samples per held-out prompt for the figures"
    )
    parser.add_argument("--out", default=str(PACK_DIR))
    args = parser.parse_args()
    torch.set_num_threads(2)

    world = ShapesWorld(args.world)
    model = TextToImageModel.from_pretrained(args.model)
    training = model.manifest["training"]
    if training["data"]["content_hash"] != world.content_hash:
        raise SystemExit("the model was trained on another world than --world")
    probe = AttributeProbe.load(args.probe)
    verify_checksums(args.probe, read_manifest(args.probe, "attribute_probe", 1))
    single = [i for i, s in enumerate(world.scenes) if len(s["objects"]) == 1]
    real_accuracy = probe_accuracy(
        probe, world.load_images(single), [world.scenes[i] for i in single]
    )
    sampler = {"num_steps": 50, "guidance_scale": args.guidance, "batch_size": 64}
    adherence = measure_adherence(
        model, probe, held_out_prompts(args.world), args.seeds, args.guidance, 50
    )

    out = Path(args.out)
    for name, src in (("model", args.model), ("probe", args.probe)):
        shutil.rmtree(out / name, ignore_errors=True)
        shutil.copytree(src, out / name)
    info = {
        "name": "shapes2000",
        "world": {
            "spec": world.meta["spec"],
            "content_hash": world.content_hash,
            "command": "fastgda world shapes --out runs/world --size 2000 --seed 0",
        },
        "model": {
            "preset": model.config["preset"]["name"],
            "train_config": training["config"],
            "command": training["command"],
            "manifest_sha256": sha256_file(out / "model" / "manifest.json"),
        },
        "probe": {
            "command": "fastgda world probe --out runs/probe --world runs/world",
            "real_accuracy": real_accuracy,
        },
        "sampler": sampler,
        "adherence": {
            "seeds_per_prompt": args.seeds,
            "num_prompts": len(held_out_prompts(args.world)),
            **adherence,
        },
        "pack_command": "python scripts/build_pack.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
    }
    write_json_atomic(out / "pack.json", info)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
