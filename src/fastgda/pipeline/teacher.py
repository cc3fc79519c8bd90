"""The build's teacher step: candidate pools for training and validation queries, full rankings (or the
``--test-candidates`` pools) for test queries, the query counts cut to a budget of teacher time."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..data import open_dataset
from ..errors import FastGDAError
from .prepare import SPLITS

if TYPE_CHECKING:
    from .build import BuildConfig

logger = logging.getLogger(__name__)


def rank_with_teacher(
    model_dir, train_data, queries, fisher_dir, out, config: BuildConfig, executor, steps
):
    """Every split's rankings, the query counts cut to the budget; returns split -> GroundTruth (maybe partial)."""
    from .._artifacts import cache_dir
    from ..ground_truth import finished_queries
    from ..unlearning import ScoringConfig, UnlearnConfig
    from ..unlearning.jobs import TeacherConfig, TeacherSpec, run_teacher

    base = TeacherConfig(
        unlearn=UnlearnConfig(num_pairs=config.num_pairs, seed=config.seed),
        scoring=ScoringConfig(timesteps=tuple(config.timesteps), noise_seed=config.seed),
        candidate_feature=config.candidate_feature,
    )
    configs = {
        "train": replace(base, num_candidates=config.num_candidates),
        "val": replace(base, num_candidates=config.num_candidates),
        # Full rankings (evaluation ranks every item), or the test candidate protocol's pools.
        "test": replace(
            base,
            num_candidates=config.test_candidates,
            candidate_feature=config.test_candidate_feature or config.candidate_feature,
        ),
    }
    specs = {
        split: TeacherSpec(
            str(model_dir),
            str(train_data.root),
            str(queries[split]),
            str(fisher_dir),
            str(out / f"teacher-{split}"),
            configs[split],
            str(out / "before_losses"),
            encoded_cache=str(cache_dir()),
            device=config.device,
            dtype=config.dtype,
        )  # fmt: skip
        for split in SPLITS
    }
    limits = budget_limits(specs, config, steps)
    truth = {}
    # Validation first (few queries), then test, then training: a build stopped early still evaluates.
    for split in ("val", "test", "train"):
        # The budget caps each split's total; a resumed build ranks only what is still missing of it.
        done = len(finished_queries(Path(specs[split].out_dir) / "results"))
        limit = None if limits[split] is None else max(0, limits[split] - done)
        truth[split] = run_teacher(specs[split], executor, shuffle_seed=config.seed, limit=limit)
        if len(truth[split]) < 2:
            raise FastGDAError(
                f"the teacher ranked {len(truth[split])} {split} queries within the budget; raise --budget-hours"
            )
    return truth


def budget_limits(specs: dict, config: BuildConfig, steps) -> dict[str, int | None]:
    """Query counts per split that fit ``config.budget_hours`` of teacher time (estimated from one batch)."""
    from ..ground_truth import finished_queries

    wanted = {
        "train": config.num_train_queries,
        "val": config.num_val_queries,
        "test": config.num_test_queries,
    }
    finished = {s: len(finished_queries(Path(specs[s].out_dir) / "results")) for s in SPLITS}
    if all(finished[s] >= len(open_dataset(specs[s].queries_dir)) for s in SPLITS):
        return dict.fromkeys(SPLITS)  # a finished teacher: nothing to size or estimate
    job = {split: specs[split].job().prepare() for split in ("val", "test")}
    pooled = job["val"].teacher.estimate_seconds_per_query(job["val"].queries)
    full = job["test"].teacher.estimate_seconds_per_query(job["test"].queries)
    seconds = {"train": pooled, "val": pooled, "test": full}
    if config.budget_hours is None:
        limits = dict.fromkeys(SPLITS)
    else:
        budget = config.budget_hours * 3600
        test = min(wanted["test"], max(2, int(config.test_share_of_budget * budget / full)))
        left = max(0.0, budget - test * full)
        val = min(wanted["val"], max(2, int(0.15 * left / pooled)))
        train = min(wanted["train"], max(2, int((left - val * pooled) / pooled)))
        limits = {"train": train, "val": val, "test": test}
        logger.info("teacher budget %.2f h: %d training, %d validation, %d test queries", config.budget_hours,
                    train, val, test)  # fmt: skip
    planned = {s: wanted[s] if limits[s] is None else limits[s] for s in SPLITS}
    steps.set_eta(sum(planned[s] * seconds[s] for s in SPLITS) / 60)
    return limits
