"""Compute the reference ground truth of the standard world and (with --pack) ship it in the world pack.

Samples the reference query splits (``fastgda.app.world.query_prompts``) with the shipped model, runs the teacher on
each (training and validation queries over their top-512 neighbours by MiniLM text, test queries over all N),
merges the rankings, and packs them compactly with the query images, their clean samples and the EK-FAC Fisher.
Resumable: rerun the same command after an interruption and only the missing queries are computed.

    fastgda world shapes --out runs/world --size 2000 --seed 0
    fastgda teacher fisher --model shipped --data runs/world --out runs/teacher-planted/fisher-ekfac \
        --kind ekfac --samples 10000
    python scripts/build_ground_truth.py --world runs/world --fisher runs/teacher-planted/fisher-ekfac \
        --work runs/gt4 --cache runs/teacher-planted/before_losses --pack
    # enlarging the pools of an earlier --work: add --reuse-work OLD_WORK (its scores are copied)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fastgda.app.pack import PACK_DIR, model_dir
from fastgda.app.reference import compute_reference_runs, pack_reference
from fastgda.app.world.query_prompts import SPLITS
from fastgda.diffusion.queries import SamplerConfig
from fastgda.unlearning import ScoringConfig, UnlearnConfig
from fastgda.unlearning.jobs import TeacherConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", required=True)
    parser.add_argument("--fisher", required=True, help="EK-FAC folder for the shipped model")
    parser.add_argument("--work", required=True, help="folder for query sets and teacher runs")
    parser.add_argument(
        "--cache", help="before-loss cache of the shipped model (any superset of timesteps)"
    )
    parser.add_argument("--splits", nargs="+", default=["val", "test", "train"], choices=SPLITS)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[0, 200, 400, 600, 800])
    parser.add_argument(
        "--candidates", type=int, default=512, help="M for training and validation queries"
    )
    # MiniLM text neighbours, not the papers' image neighbours: on the standard world they hold 84% of the
    # named planted concept's exemplars at M = 256 against 64% (effnet+minilm) and 25% (effnet), and as much of
    # the teacher's top-L (benchmarks/candidate_pools.py).
    parser.add_argument(
        "--candidate-feature",
        default="minilm",
        help="feature spec whose top-M neighbours are the candidates (parts weighted equally)",
    )
    parser.add_argument(
        "--reuse-work",
        help="earlier --work with the same queries and settings but smaller pools: copy its scores",
    )
    parser.add_argument(
        "--pack", action="store_true", help="copy the finished splits into the world pack"
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (two 1-thread runs use 2 cores best)"
    )
    parser.add_argument("--pack-dir", default=str(PACK_DIR))
    parser.add_argument(
        "--pack-only", action="store_true", help="pack what is finished, compute nothing"
    )
    parser.add_argument(
        "--allow-partial", action="store_true", help="pack splits with only their finished queries"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    configs = {
        split: TeacherConfig(
            unlearn=UnlearnConfig(num_pairs=args.pairs, alpha=args.alpha),
            scoring=ScoringConfig(timesteps=tuple(args.timesteps)),
            num_candidates=None if split == "test" else args.candidates,
            candidate_feature=args.candidate_feature,
        )
        for split in ([] if args.pack_only else args.splits)
    }
    timings = compute_reference_runs(
        args.world,
        model_dir(),
        args.fisher,
        work,
        configs,
        SamplerConfig(),
        cache_dir=args.cache,
        reuse_work=args.reuse_work,
    )
    print(json.dumps(timings))
    if args.pack or args.pack_only:
        pack_reference(
            {split: work / f"queries-{split}" for split in SPLITS},
            {split: work / f"run-{split}" for split in SPLITS},
            args.fisher,
            Path(args.pack_dir) / "reference",
            allow_partial=args.allow_partial,
            command=(
                f"python scripts/build_ground_truth.py --world runs/world --fisher runs/teacher-planted/fisher-ekfac "
                f"--work {args.work} --cache runs/teacher-planted/before_losses --alpha {args.alpha:g} "
                f"--pairs {args.pairs} --timesteps {' '.join(map(str, args.timesteps))} "
                f"--candidates {args.candidates} --candidate-feature {args.candidate_feature} --pack"
            ),
        )
        print(f"packed the reference ground truth into {args.pack_dir}/reference")


if __name__ == "__main__":
    main()
