"""Which teacher settings to use: step size alpha, Fisher kind, (noise, t) pairs and scoring timesteps.

For validation queries (prompts naming a planted concept, and held-out attribute combinations) this script
unlearns each query under every setting with two noise seeds and scores a fixed candidate pool (the query's
pixel neighbours, the planted exemplars, random fill) at every timestep, keeping per-timestep losses, so
any subset of timesteps can be evaluated afterwards without recomputation. Per setting it prints:

- planted recall@k and average precision of the exemplars within the pool (planted queries);
- attribute overlap of the top 10 (``fastgda.app.world.relevance``; random pool items for reference);
- seed stability: Spearman of the top-50 scores between seed 0 and seed 1 (the ceiling a student can reach);
- agreement with the most expensive setting (most pairs, all timesteps).

Then per scoring timestep alone, and for candidate timestep subsets, the same figures at the chosen setting.

    python benchmarks/teacher_settings.py --world runs/world --model shipped --out runs/teacher-settings \
        --ekfac runs/teacher-planted/fisher-ekfac
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fastgda.app.world import ShapesWorld
from fastgda.app.world.relevance import attribute_overlap
from fastgda.diffusion import TextToImageModel
from fastgda.diffusion.names import resolve_model_dir
from fastgda.diffusion.queries import SamplerConfig, load_query_tensors, write_query_set
from fastgda.diffusion.training import prepare_training_data
from fastgda.unlearning import (
    Fisher,
    FisherConfig,
    ScoringConfig,
    UnlearnConfig,
    fit_fisher,
    item_losses,
    newton_step,
    query_gradient,
    select_linear_layers,
    weights_shifted,
)

TIMESTEPS = tuple(range(0, 1000, 100))
PLANTED = [
    ("cyan", "large", "circle", "center", "black"),
    ("magenta", "large", "triangle", "right", "gray"),
    ("yellow", "large", "cross", "center", "gray"),
]
PLANTED_CONCEPT = ["cyan", "magenta", "cross"]
TIMESTEP_SUBSETS = {
    "all 10 (0..900)": TIMESTEPS,
    "100..900 (9)": TIMESTEPS[1:],
    "300..900 (7)": TIMESTEPS[3:],
    "500..900 (5)": TIMESTEPS[5:],
    "0,200,..,800 (5)": TIMESTEPS[::2],
    "100,300,..,900 (5)": TIMESTEPS[1::2],
    "700..900 (3)": TIMESTEPS[7:],
}


def scene(colour, size, shape, position, background) -> dict:
    return {
        "background": background,
        "objects": [{"shape": shape, "colour": colour, "size": size, "position": position}],
    }


def prompt_of(s: dict) -> str:
    o = s["objects"][0]
    where = {"left": "on the left", "center": "in the center", "right": "on the right"}[
        o["position"]
    ]
    return f"a {o['size']} {o['colour']} {o['shape']} {where} on a {s['background']} background"


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = positive[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / max(hits.sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True)
    parser.add_argument("--model", default="shipped")
    parser.add_argument("--out", required=True)
    parser.add_argument("--ekfac", help="existing EK-FAC folder (default: fit one)")
    parser.add_argument("--fisher-samples", type=int, default=10_000)
    parser.add_argument(
        "--common-queries", type=int, default=3, help="held-out combination queries"
    )
    parser.add_argument(
        "--max-queries",
        type=int,
        help="evaluate only the first n queries (e.g. those already computed)",
    )
    parser.add_argument("--pool", type=int, default=128, help="candidate pool size per query")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.001, 0.003, 0.01, 0.03, 0.1])
    parser.add_argument("--pairs", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument(
        "--reference-pairs", type=int, default=1000, help="pairs for the alpha grid"
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model_dir(args.model)
    model = TextToImageModel.from_pretrained(model_dir)
    world = ShapesWorld(args.world)
    data = prepare_training_data(model, world)
    n_train = len(world)
    layers = select_linear_layers(model.unet, "kv")

    planted = [scene(*p) for p in PLANTED]
    held = world.meta["held_out"]
    rng = np.random.default_rng(0)
    common = [held[i] for i in rng.choice(len(held), args.common_queries, replace=False)]
    query_scenes = planted + common
    concepts = PLANTED_CONCEPT + [None] * len(common)
    if not (out / "queries").exists():
        write_query_set(
            model,
            [{"prompt": prompt_of(s), "scene": s} for s in query_scenes],
            out / "queries",
            seed=100,
            sampler=SamplerConfig(),
            model_dir=model_dir,
        )
    queries = load_query_tensors(out / "queries")

    fishers: dict[str, Fisher] = {}
    for kind in ("ekfac", "diagonal"):
        path = Path(args.ekfac) if kind == "ekfac" and args.ekfac else out / f"fisher-{kind}"
        if not path.exists():
            began = time.perf_counter()
            fit_fisher(model, data, FisherConfig(kind=kind, num_samples=args.fisher_samples)).save(
                path
            )
            print(f"fitted {kind} Fisher in {time.perf_counter() - began:.0f} s", flush=True)
        fishers[kind] = Fisher.load(path)

    # (fisher, alpha, pairs) settings: the alpha grid at the reference pairs, the pairs curve at alpha 0.01.
    settings = [("ekfac", a, args.reference_pairs) for a in args.alphas]
    settings += [("ekfac", 0.01, p) for p in args.pairs if p != args.reference_pairs]
    settings += [("diagonal", 0.01, args.reference_pairs)]
    pixels = torch.nn.functional.normalize(data.x0[:].flatten(1), dim=1)

    per_query = []
    for q, (query_scene, concept) in enumerate(zip(query_scenes, concepts, strict=True)):
        if args.max_queries is not None and q >= args.max_queries:
            break
        cache = out / f"q{q}.npz"
        exemplars = np.array(world.concepts[concept]) if concept else np.zeros(0, dtype=int)
        near = torch.topk(
            pixels @ torch.nn.functional.normalize(queries["x0"][q].flatten(), dim=0), 64
        )
        pool = list(dict.fromkeys(near.indices.tolist() + exemplars.tolist()))
        rest = np.setdiff1d(np.arange(n_train), pool)
        pool = np.array(pool + rng.choice(rest, args.pool - len(pool), replace=False).tolist())
        if cache.exists():
            saved = np.load(cache)
            taus = {k: saved[k] for k in saved.files if k != "pool"}
            pool = saved["pool"]
        else:
            began = time.perf_counter()
            taus = {}
            for seed in (0, 1):
                scoring = ScoringConfig(timesteps=TIMESTEPS, noise_seed=seed)
                before = item_losses(model, data, pool, scoring)
                grads = {}
                for fisher_kind, alpha, pairs in settings:
                    if pairs not in grads:
                        grads[pairs] = query_gradient(
                            model,
                            layers,
                            queries["x0"][q],
                            queries["text_states"][q],
                            queries["text_mask"][q] if "text_mask" in queries else None,
                            UnlearnConfig(num_pairs=pairs, seed=seed),
                            query_key=q * 1009,
                        )
                    delta = newton_step(fishers[fisher_kind], grads[pairs], alpha, n_train)
                    with weights_shifted(layers, delta):
                        after = item_losses(model, data, pool, scoring)
                    # (n, T): mean over captions of the per-timestep rise
                    taus[f"{fisher_kind}|{alpha:g}|{pairs}|{seed}"] = np.nanmean(
                        (after - before).astype(np.float64), axis=2
                    ).max(axis=1)
            np.savez(cache, pool=pool, **taus)
            print(
                f"query {q} ({prompt_of(query_scene)}): {time.perf_counter() - began:.0f} s",
                flush=True,
            )
        overlap = np.array([attribute_overlap(query_scene, world.scenes[i]) for i in pool])
        per_query.append((taus, pool, set(exemplars.tolist()), overlap))

    def metrics(setting: str, steps: tuple[int, ...]) -> dict:
        cols = [TIMESTEPS.index(t) for t in steps]
        ref = f"ekfac|0.01|{max(args.pairs)}|0"
        rows = {"recall": [], "ap": [], "overlap10": [], "stability50": [], "agree_ref50": []}
        for taus, pool, exemplars, overlap in per_query:
            a = taus[setting + "|0"][:, cols].mean(axis=1)
            b = taus[setting + "|1"][:, cols].mean(axis=1)
            r = taus[ref].mean(axis=1)  # always all timesteps: the costliest estimate
            top = np.argsort(-a)[:50]
            rows["stability50"].append(spearman(a[top], b[top]))
            top_ref = np.argsort(-r)[:50]
            rows["agree_ref50"].append(spearman(r[top_ref], a[top_ref]))
            rows["overlap10"].append(float(overlap[np.argsort(-a)[:10]].mean()))
            if exemplars:
                positive = np.isin(pool, list(exemplars))
                k = int(positive.sum())
                rows["recall"].append(float(positive[np.argsort(-a)[:k]].mean()))
                rows["ap"].append(average_precision(a, positive))
        return {k: float(np.mean(v)) for k, v in rows.items()}

    pool_overlap = float(np.mean([o.mean() for *_, o in per_query]))
    results: dict = {
        "settings": {},
        "timesteps": {},
        "single_timestep": {},
        "pool_overlap": pool_overlap,
    }
    header = (
        "| {} | planted recall@k | planted AP | overlap@10 | stability top-50 | agreement top-50 |"
    )
    print(f"\nAttribute overlap of a random pool item: {pool_overlap:.3f}")
    print("\n" + header.format("Fisher, alpha, pairs (all 10 timesteps)"))
    print("|---|---:|---:|---:|---:|---:|")
    for fisher_kind, alpha, pairs in settings:
        name = f"{fisher_kind}|{alpha:g}|{pairs}"
        m = metrics(name, TIMESTEPS)
        results["settings"][name] = m
        print(
            f"| {fisher_kind}, {alpha:g}, {pairs} | {m['recall']:.2f} | {m['ap']:.3f} | {m['overlap10']:.3f} | "
            f"{m['stability50']:.3f} | {m['agree_ref50']:.3f} |"
        )
    chosen = f"ekfac|0.01|{args.reference_pairs}"
    print("\n" + header.format(f"timesteps ({chosen})"))
    print("|---|---:|---:|---:|---:|---:|")
    for label, steps in TIMESTEP_SUBSETS.items():
        m = metrics(chosen, steps)
        results["timesteps"][label] = m
        print(
            f"| {label} | {m['recall']:.2f} | {m['ap']:.3f} | {m['overlap10']:.3f} | {m['stability50']:.3f} | "
            f"{m['agree_ref50']:.3f} |"
        )
    for t in TIMESTEPS:
        m = metrics(chosen, (t,))
        results["single_timestep"][t] = m
        print(
            f"| t = {t} alone | {m['recall']:.2f} | {m['ap']:.3f} | {m['overlap10']:.3f} | {m['stability50']:.3f} | "
            f"{m['agree_ref50']:.3f} |"
        )
    for pairs in args.pairs:
        for label in ("all 10 (0..900)", "500..900 (5)", "100,300,..,900 (5)"):
            m = metrics(f"ekfac|0.01|{pairs}", TIMESTEP_SUBSETS[label])
            results["timesteps"][f"{pairs} pairs, {label}"] = m
    print("\n| pairs | timesteps | stability top-50 | agreement top-50 |\n|---:|---|---:|---:|")
    for pairs in args.pairs:
        for label in ("all 10 (0..900)", "500..900 (5)", "100,300,..,900 (5)"):
            m = results["timesteps"][f"{pairs} pairs, {label}"]
            print(f"| {pairs} | {label} | {m['stability50']:.3f} | {m['agree_ref50']:.3f} |")
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
