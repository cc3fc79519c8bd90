"""What the teacher costs on a Stable Diffusion v1.x-sized model, measured on this machine's device.

Builds, with random weights and no download, a UNet and a CLIP text encoder of SD v1.x's sizes (the public
``unet/config.json`` and ``text_encoder/config.json`` of the v1.4/v1.5 releases, written out below) and times, side
by side in one run, at 64x64 latents (512 px images) with 77-token CLIP states:

- ``t_f``: one sample's scoring forward (the diffusion loss, no gradient), as the teacher's scoring runs it;
- ``t_b``: one sample's forward + backward into the cross-attention key/value weights only, as the query gradient
  runs it; and the same with the Fisher's layer input/output-gradient hooks on (``t_fisher``);
- one caption through the CLIP text encoder (the training set's states are encoded once per model);
- the EK-FAC eigendecompositions of the key/value layers (once per model).

From these, with method.md §3.8's cost model (the before-losses are cached once per model, so a query pays for its
gradient pairs and its candidates' after-losses): teacher cost per query = P x t_b + M x T_s x C x t_f, for the
paper's SD protocol (P = 4,000 pairs, T_s = 10 timesteps, C = 1 caption) over M = 20,000 candidates (training and
validation queries; the paper: 3 A100-hours) and M = 100,000 (test queries; the paper: 15 A100-hours)::

Each figure is timed in every ``--dtypes`` precision side by side (default float32 and bfloat16 under autocast).

    python benchmarks/sd_cost.py                         # the CPU here, a small sample
    python benchmarks/sd_cost.py --device cuda --batch 16 --samples 64
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fastgda.devices import autocast, resolve_dtype

# SD v1.4 / v1.5 UNet (unet/config.json of the public releases).
SD_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
# CLIP ViT-L/14's text tower (text_encoder/config.json of the same releases).
SD_TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
)
PAPER_HOURS = {
    20_000: 3.0,
    100_000: 15.0,
}  # AbU+ on SD v1.4, one A100 [FastGDA C.1; method.md §3.8]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N"
    )
    parser.add_argument("--batch", type=int, default=1, help="samples per forward / backward")
    parser.add_argument("--samples", type=int, default=2, help="timed samples of each kind")
    parser.add_argument(
        "--pairs", type=int, default=4000, help="P: the query gradient's (noise, t) pairs"
    )
    parser.add_argument(
        "--timesteps", type=int, default=10, help="T_s: scoring timesteps per candidate"
    )
    parser.add_argument("--candidates", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument(
        "--fisher-samples", type=int, default=100_000, help="per-sample gradients of the Fisher"
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32", "bfloat16"],
        help="compute precisions timed side by side (autocast; weights stay float32)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    model, text_encoder, layers = build_sd_sized(device)
    params = sum(p.numel() for p in model.unet.parameters())
    kv = sum(layer.weight.numel() for layer in layers.values())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device {device} ({name}); UNet {params / 1e6:.0f}M parameters, {len(layers)} key/value layers "
        f"({kv / 1e6:.1f}M weights); 64x64 latents, 77 x 768 text states; batch {args.batch}, "
        f"{args.samples} timed samples of each kind, in {' and '.join(args.dtypes)}\n"
    )
    by_dtype = {}
    for dtype in args.dtypes:
        model.set_precision(dtype)
        with autocast(
            device, resolve_dtype(dtype)
        ):  # the text encoder is not a TextToImageModel part here
            text_seconds = per_sample(
                lambda b: encode_captions(text_encoder, b, device), args, device
            )
        by_dtype[dtype] = {
            "t_f": per_sample(lambda b: forward(model, b, device), args, device),
            "t_b": per_sample(lambda b: backward(model, layers, b, device), args, device),
            "t_fisher": per_sample(
                lambda b: fisher_backward(model, layers, b, device), args, device
            ),
            "t_text": text_seconds,
        }
    eigh_once = eigendecompositions(layers, device)
    labels = {
        "t_f": "scoring forward t_f",
        "t_b": "gradient sample t_b (key/value weights)",
        "t_fisher": "Fisher sample (t_b with the layer hooks)",
        "t_text": "caption through the CLIP text encoder",
    }
    print("| per sample, seconds | " + " | ".join(args.dtypes) + " |")
    print("|---|" + "---:|" * len(args.dtypes))
    for key, label in labels.items():
        print(f"| {label} | " + " | ".join(f"{by_dtype[d][key]:.4f}" for d in args.dtypes) + " |")
    if len(args.dtypes) > 1:
        first = args.dtypes[0]
        for other in args.dtypes[1:]:
            speedups = ", ".join(
                f"{key} {by_dtype[first][key] / by_dtype[other][key]:.2f}x" for key in labels
            )
            print(f"\n{other} against {first} (above 1: faster): {speedups}")
    print(
        f"\nEK-FAC eigendecompositions of the {len(layers)} layers (float64), once per model: {eigh_once:.1f} s\n"
    )

    costs, fisher_hours, before_hours = {}, {}, {}
    for dtype in args.dtypes:
        seconds = by_dtype[dtype]
        gradient = args.pairs * seconds["t_b"]
        costs[dtype] = {}
        print(
            f"| teacher per query in {dtype} (P = {args.pairs:,}, T_s = {args.timesteps}, C = 1) | query gradient | "
            "scoring | total hours | paper, one A100 |\n|---|---:|---:|---:|---:|"
        )
        for m in args.candidates:
            scoring = m * args.timesteps * seconds["t_f"]
            hours = (gradient + scoring) / 3600
            costs[dtype][m] = {"gradient_s": gradient, "scoring_s": scoring, "hours": hours}
            paper = f"{PAPER_HOURS[m]:g} h" if m in PAPER_HOURS else ""
            print(
                f"| M = {m:,} candidates | {gradient / 3600:.2f} h | {scoring / 3600:.2f} h | {hours:.2f} | {paper} |"
            )
        fisher_hours[dtype] = (args.fisher_samples * seconds["t_fisher"] + eigh_once) / 3600
        before_hours[dtype] = {
            m: m * args.timesteps * seconds["t_f"] / 3600 for m in args.candidates
        }
        print(
            f"\nonce per model in {dtype}: the Fisher over {args.fisher_samples:,} samples "
            f"{fisher_hours[dtype]:.2f} h; the before-losses "
            + ", ".join(f"of {m:,} candidates {h:.2f} h" for m, h in before_hours[dtype].items())
            + "\n"
        )
    if args.json:
        record = {
            "device": str(device),
            "device_name": name,
            "batch": args.batch,
            "samples": args.samples,
            "seconds_per_sample": by_dtype,
            "eigh_once_s": eigh_once,
            "teacher_per_query": costs,
            "fisher_hours": fisher_hours,
            "before_loss_hours": before_hours,
        }
        Path(args.json).write_text(json.dumps(record, indent=1), encoding="utf-8")


def build_sd_sized(device: torch.device):
    """(TextToImageModel over latents, CLIP text model, the key/value layers the teacher updates), random weights."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from fastgda.diffusion import TextToImageModel
    from fastgda.unlearning.layers import select_linear_layers

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD_UNET)
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
    )
    # The loss needs no VAE or text encoder: the teacher reads latents and states encoded once per model.
    model = TextToImageModel(unet, scheduler, text_encoder=None).to(device).eval()
    model.unet.requires_grad_(False)
    layers = select_linear_layers(model.unet, "kv")
    text_encoder = CLIPTextModel(CLIPTextConfig(**SD_TEXT)).to(device).eval()
    return model, text_encoder, layers


def _inputs(batch: int, device: torch.device):
    x0 = torch.randn(batch, 4, 64, 64, device=device)
    states = torch.randn(batch, 77, 768, device=device)
    noise = torch.randn_like(x0)
    t = torch.randint(0, 1000, (batch,), device=device)
    return x0, states, noise, t


def forward(model, batch: int, device) -> None:
    x0, states, noise, t = _inputs(batch, device)
    with torch.no_grad():
        model.loss(x0, states, None, noise, t)


def backward(model, layers, batch: int, device) -> None:
    x0, states, noise, t = _inputs(batch, device)
    weights = [layer.weight.requires_grad_(True) for layer in layers.values()]
    try:
        torch.autograd.grad(model.loss(x0, states, None, noise, t).sum(), weights)
    finally:
        for w in weights:
            w.requires_grad_(False)


def fisher_backward(model, layers, batch: int, device) -> None:
    from fastgda.unlearning.fisher import record_linear_io

    x0, states, noise, t = _inputs(batch, device)
    for layer in layers.values():
        layer.weight.requires_grad_(True)
    try:
        with record_linear_io(layers):
            model.loss(x0, states, None, noise, t).sum().backward()
    finally:
        for layer in layers.values():
            layer.weight.requires_grad_(False)
            layer.weight.grad = None


def encode_captions(text_encoder, batch: int, device) -> None:
    ids = torch.randint(0, SD_TEXT["vocab_size"], (batch, 77), device=device)
    with torch.no_grad():
        text_encoder(input_ids=ids)


def per_sample(run, args, device) -> float:
    """Seconds per sample: one untimed warm-up batch, then ``args.samples`` samples in batches of ``args.batch``."""
    run(args.batch)
    _sync(device)
    batches = max(1, -(-args.samples // args.batch))
    began = time.perf_counter()
    for _ in range(batches):
        run(args.batch)
    _sync(device)
    return (time.perf_counter() - began) / (batches * args.batch)


def eigendecompositions(layers, device) -> float:
    """Seconds for the symmetric eigendecompositions EK-FAC needs: d_in x d_in and d_out x d_out per layer."""
    began = time.perf_counter()
    for layer in layers.values():
        for dim in layer.weight.shape:
            a = torch.randn(dim, dim, device=device, dtype=torch.float64)
            torch.linalg.eigh(a @ a.T)
    _sync(device)
    return time.perf_counter() - began


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
