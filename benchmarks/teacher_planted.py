"""Planted-concept recall of the teacher on the standard world, beside raw-pixel neighbours, with its costs.

For prompts that name a planted rare concept (the shape `cross`, the colours `magenta` and `cyan`), the teacher
should rank that concept's exemplars first. Prints recall@(number of exemplars) per query, the raw-pixel
nearest-neighbour baseline and random (= k/N), and the seconds spent on the Fisher, the before-loss cache and
each query.

    python benchmarks/teacher_planted.py --world runs/world --model shipped --out runs/teacher-planted
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from fastgda.app.world import ShapesWorld
from fastgda.data import ImageCaptionFolder
from fastgda.diffusion import TextToImageModel
from fastgda.diffusion.names import resolve_model_dir
from fastgda.diffusion.queries import SamplerConfig, write_query_set
from fastgda.diffusion.training import prepare_training_data
from fastgda.ground_truth import read_query_result
from fastgda.unlearning import FisherConfig, ScoringConfig, UnlearnConfig, fit_fisher
from fastgda.unlearning.jobs import TeacherConfig, TeacherJob

PROMPTS = [
    ("cyan", "a large cyan circle in the center on a black background"),
    ("cyan", "a small cyan square on the left on a white background"),
    ("magenta", "a large magenta triangle on the right on a gray background"),
    ("magenta", "a small magenta circle in the center on a black background"),
    ("cross", "a large yellow cross in the center on a gray background"),
    ("cross", "a small blue cross on the left on a white background"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True)
    parser.add_argument("--model", default="shipped")
    parser.add_argument("--out", required=True)
    parser.add_argument("--fisher", choices=["ekfac", "diagonal"], default="ekfac")
    parser.add_argument("--fisher-samples", type=int, default=10_000)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.01])
    parser.add_argument("--timesteps", type=int, nargs="+", default=list(range(0, 1000, 100)))
    parser.add_argument("--num-queries", type=int, default=len(PROMPTS))
    parser.add_argument(
        "--swap-control",
        action="store_true",
        help="also rank with each query's image replaced by another concept's query image, prompt kept",
    )
    parser.add_argument(
        "--swap-queries",
        type=int,
        nargs="+",
        help="run the control for these queries only (e.g. 0 2 4)",
    )
    parser.add_argument(
        "--stability-queries",
        type=int,
        default=0,
        help="rerun this many queries with seed 1 and print the Spearman of the top-100 scores",
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    model_dir = resolve_model_dir(args.model)
    world = ShapesWorld(args.world)
    prompts = PROMPTS[: args.num_queries]

    model = TextToImageModel.from_pretrained(model_dir)
    if not (out / "queries").exists():
        write_query_set(
            model,
            [{"prompt": p, "concept": c} for c, p in prompts],
            out / "queries",
            sampler=SamplerConfig(),
            model_dir=model_dir,
        )
    fisher_dir = out / f"fisher-{args.fisher}"
    if not fisher_dir.exists():
        began = time.perf_counter()
        data = prepare_training_data(model, world)
        fit_fisher(
            model, data, FisherConfig(kind=args.fisher, num_samples=args.fisher_samples)
        ).save(fisher_dir)
        print(
            f"Fisher ({args.fisher}, {args.fisher_samples} samples): {time.perf_counter() - began:.0f} s"
        )

    pixels = torch.nn.functional.normalize(
        torch.as_tensor(world.load_images()).flatten(1).float(), dim=1
    )
    queries = ImageCaptionFolder(out / "queries")
    n = len(world)
    print(
        "\n| alpha | query | concept | k | teacher recall@k | pixel-NN recall@k | random | s/query |"
    )
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for alpha in args.alpha:
        config = TeacherConfig(
            unlearn=UnlearnConfig(num_pairs=args.pairs, alpha=alpha),
            scoring=ScoringConfig(timesteps=tuple(args.timesteps)),
        )
        began = time.perf_counter()
        job = TeacherJob.open(
            model_dir,
            args.world,
            out / "queries",
            fisher_dir,
            out / f"run-alpha{alpha:g}",
            config,
            cache_dir=out / "before_losses",
        ).prepare()
        print(f"(setup incl. before-loss cache if new: {time.perf_counter() - began:.0f} s)")
        recalls, pixel_recalls = [], []
        for q, (concept, prompt) in enumerate(prompts):
            began = time.perf_counter()
            if q in job.pending():
                job.run_query(q)
            seconds = time.perf_counter() - began
            ids, _ = read_query_result(out / f"run-alpha{alpha:g}" / "results" / f"q_{q:06d}.npz")
            exemplars = set(world.concepts[concept])
            k = len(exemplars)
            recall = len(exemplars & set(ids[:k].tolist())) / k
            query_pixels = torch.nn.functional.normalize(
                torch.as_tensor(queries.load_image(q)).flatten().float(), dim=0
            )
            pixel_top = torch.topk(pixels @ query_pixels, k).indices.tolist()
            pixel_recall = len(exemplars & set(pixel_top)) / k
            recalls.append(recall)
            pixel_recalls.append(pixel_recall)
            print(
                f"| {alpha:g} | {prompt} | {concept} | {k} | {recall:.2f} | {pixel_recall:.2f} | {k / n:.3f} | "
                f"{seconds:.0f} |",
                flush=True,
            )
        print(
            f"| {alpha:g} | **mean** | | | **{np.mean(recalls):.2f}** | {np.mean(pixel_recalls):.2f} | | |"
        )

    if args.swap_control:
        swap_control(args, out, model_dir, world, fisher_dir, prompts)

    if args.stability_queries:
        alpha = args.alpha[0]
        print(
            "\n| query | Spearman of top-100 scores, seed 0 vs seed 1 | s/query |\n|---|---:|---:|"
        )
        runs = {}
        for seed in (0, 1):
            config = TeacherConfig(
                unlearn=UnlearnConfig(num_pairs=args.pairs, alpha=alpha, seed=seed),
                scoring=ScoringConfig(timesteps=tuple(args.timesteps), noise_seed=seed),
            )
            name = f"run-alpha{alpha:g}" + ("" if seed == 0 else "-seed1")
            cache = out / ("before_losses" if seed == 0 else "before_losses-seed1")
            runs[seed] = TeacherJob.open(
                model_dir,
                args.world,
                out / "queries",
                fisher_dir,
                out / name,
                config,
                cache_dir=cache,
            ).prepare()
        for q in range(args.stability_queries):
            began = time.perf_counter()
            for job in runs.values():
                if q in job.pending():
                    job.run_query(q)
            seconds = (time.perf_counter() - began) / 2
            (ids_a, scores_a), (ids_b, scores_b) = (
                read_query_result(job.results_dir / f"q_{q:06d}.npz") for job in runs.values()
            )
            top = ids_a[:100]
            lookup = dict(zip(ids_b.tolist(), scores_b.tolist(), strict=True))
            print(
                f"| {prompts[q][1]} | {spearman(scores_a[:100], np.array([lookup[i] for i in top])):.3f} | "
                f"{seconds:.0f} |",
                flush=True,
            )


def swapped_query_set(queries_dir: Path, out_dir: Path, donors: list[int]) -> None:
    """Copy a query set giving query i the image (x0 and PNG) of query donors[i], its own prompt kept."""
    import shutil

    from safetensors.torch import save_file

    from fastgda._artifacts import atomic_dir, read_manifest, write_manifest
    from fastgda.diffusion.queries import load_query_tensors

    manifest = read_manifest(queries_dir, "query_set", 1)
    tensors = load_query_tensors(queries_dir)
    tensors["x0"] = tensors["x0"][donors].contiguous()
    with atomic_dir(out_dir) as tmp:
        shutil.copy(queries_dir / "captions.jsonl", tmp / "captions.jsonl")
        (tmp / "images").mkdir()
        for i, donor in enumerate(donors):
            shutil.copy(queries_dir / f"images/q{donor:06d}.png", tmp / f"images/q{i:06d}.png")
        save_file(tensors, tmp / "tensors.safetensors")
        extra = {
            k: v
            for k, v in manifest.items()
            if k not in ("kind", "format_version", "shapes", "config")
        }
        extra.pop("checksums", None)
        write_manifest(
            tmp,
            "query_set",
            1,
            config={**manifest["config"], "swapped_images_from": donors},
            shapes={k: list(v.shape) for k, v in tensors.items()},
            extra=extra,
        )


def swap_control(args, out: Path, model_dir, world, fisher_dir: Path, prompts) -> None:
    """Image-swapped control: is the teacher attributing the image or only matching the prompt?"""
    # Each query takes the image of the query two places on, which names another planted concept.
    donors = [(q + 2) % len(prompts) for q in range(len(prompts))]
    swapped = out / "queries-swapped"
    if not swapped.exists():
        swapped_query_set(out / "queries", swapped, donors)
    alpha = args.alpha[0]
    config = TeacherConfig(
        unlearn=UnlearnConfig(num_pairs=args.pairs, alpha=alpha),
        scoring=ScoringConfig(timesteps=tuple(args.timesteps)),
    )
    job = TeacherJob.open(
        model_dir,
        args.world,
        swapped,
        fisher_dir,
        out / f"run-swapped-alpha{alpha:g}",
        config,
        cache_dir=out / "before_losses",
    ).prepare()
    print(
        "\n| prompt (kept) | image from | recall@k of the prompt's concept | recall@k of the image's concept |"
        "\n|---|---|---:|---:|"
    )
    for q, (concept, prompt) in enumerate(prompts):
        if args.swap_queries and q not in args.swap_queries:
            continue
        if q in job.pending():
            job.run_query(q)
        ids, _ = read_query_result(job.results_dir / f"q_{q:06d}.npz")
        image_concept, image_prompt = prompts[donors[q]]
        recall = {}
        for name in (concept, image_concept):
            exemplars = set(world.concepts[name])
            recall[name] = len(exemplars & set(ids[: len(exemplars)].tolist())) / len(exemplars)
        print(
            f"| {prompt} | {image_prompt} | {recall[concept]:.2f} | {recall[image_concept]:.2f} |",
            flush=True,
        )


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (ties broken by order; scores are continuous)."""
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


if __name__ == "__main__":
    main()
