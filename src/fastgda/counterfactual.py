"""Leave-K-out counterfactual evaluation (method.md §7.2): remove a method's top-K, retrain, see what is forgotten.

For each test query and method, the method's top-K training images are removed and the model is retrained from
scratch with the original recipe and seed; the retrained model θ₋K is compared with θ₀ (the same recipe on all
the data) on the query:

- ΔL: the query's diffusion loss under θ₋K minus under θ₀, at timesteps 0, stride, 2·stride, ... (fixed noise);
  higher = the removed images mattered more.
- ΔG-MSE: pixel MSE (in [0, 1]) between the two models' regenerations of the prompt with the query's seed
  (deterministic DDIM); higher = more forgotten.
- ΔG-sim: cosine similarity of those regenerations in an image encoder's space; lower = more forgotten.

Random removal uses one set per seed, shared by all queries. Every distinct removed set is one retrain job,
cached under a key of (recipe, removed ids), so methods that agree share a retrain and an interrupted run redoes
only unfinished retrains (each resumes from its last checkpoint).

With ``coupled``, every retrain draws its batches by item id, so θ₋K sees the same items, noise and timesteps as
θ₀ except where a removed item would have been drawn: the run-to-run noise of ΔL shrinks to what the removal
itself causes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ._artifacts import (
    MANIFEST_NAME,
    atomic_dir,
    read_manifest,
    verify_checksums,
    write_json_atomic,
    write_manifest,
)
from .config import AT_LEAST_ONE, NON_NEGATIVE, check_settings, setting
from .errors import FastGDAError
from .evaluation import mean_and_stderr
from .index import unit_rows

RANDOM = "random"
MEASUREMENTS_KIND = "counterfactual-measurements"


def method_rankings(
    query_features,
    item_features,
    teacher_ids: np.ndarray,
    rankers: dict | None = None,
    k: int = 68,
    baselines: str = "parts",
) -> dict[str, np.ndarray]:
    """Each method's top-K training ids per query, most influential first: method -> int64 (Q, K).

    Args:
        query_features / item_features: ``Features`` of the Q queries (in ``teacher_ids``' order) and the items.
        teacher_ids: (Q, >= K) the teacher's ranking of each query.
        rankers: display name -> ``Ranker``.
        baselines: untuned baselines to include: ``all`` (each part and the concatenation), ``parts``,
            ``none``, or a comma-separated list of part modalities (``text``, ``image,text``). Random removal is
            not here: the job draws it, shared by every query.
    """
    from .evaluation import untuned_methods

    modalities = {m.strip() for m in baselines.split(",")} - {"all", "parts", "none"}
    if baselines not in ("all", "parts", "none"):
        known = {part["modality"] for part in item_features.parts}
        if not modalities <= known:
            raise FastGDAError(
                f"--baselines {baselines!r}: the features' parts are {sorted(known)}; "
                "use all, parts, none or some of those"
            )

    scores = {
        name: ranker.score(query_features.values, item_features.values)
        for name, ranker in (rankers or {}).items()
    }
    for name, matrix in untuned_methods(query_features, item_features).items():
        if name == RANDOM:
            continue
        concatenation = name.startswith("untuned concatenation")
        wanted = (
            baselines == "all"
            or (baselines == "parts" and not concatenation)
            or (not concatenation and name.split(" ")[1] in modalities)  # "untuned text (minilm)"
        )
        if wanted:
            scores[name] = matrix
    rankings = {"teacher": np.asarray(teacher_ids)[:, :k].astype(np.int64)}
    for name, matrix in scores.items():
        # A stable full sort (Q is a handful): ties between identical items break by id, so the removed sets,
        # and with them the cached retrains, are the same on every run.
        rankings[name] = np.argsort(-matrix, axis=1, kind="stable")[:, :k].astype(np.int64)
    return rankings


@dataclass(frozen=True)
class CounterfactualConfig:
    """One leave-K-out setting (method.md §7.2); its fields and the removed sets name every retrain."""

    k: int = setting(help="training images removed per (query, method)", bounds=AT_LEAST_ONE)
    steps: int | None = setting(
        None,
        "a reduced recipe for every retrain, θ₀ included (default: the model's own)",
        bounds=AT_LEAST_ONE,
    )
    loss_stride: int = setting(
        5,
        "ΔL timesteps 0, stride, 2 x stride, ... (method.md: stride 5, 200 timesteps)",
        bounds=AT_LEAST_ONE,
    )
    loss_noise_seed: int = setting(0, "seeds the ΔL noise", bounds=NON_NEGATIVE)
    random_seeds: tuple[int, ...] = setting(
        (0, 1, 2), "seeds of the random removals (shared by every query)", bounds=NON_NEGATIVE
    )
    generate_steps: int = setting(50, "DDIM steps of the regenerations", bounds=AT_LEAST_ONE)
    guidance_scale: float = setting(3.0, "guidance scale of the regenerations", bounds=NON_NEGATIVE)
    similarity_encoder: str = setting("effnet", "the image encoder of ΔG-sim")
    # Common random numbers: retrains draw batches by item id (``DiffusionTrainConfig.draw_by_item_id``), so θ₋K
    # and θ₀ differ only where a removed item would have been drawn, not in every batch. Off by default, so
    # the figures in BENCHMARKS.md (measured without it) stay reproducible.
    coupled: bool = setting(False, "retrains draw batches by item id (less retrain noise)")

    def __post_init__(self):
        check_settings(self)

    @classmethod
    def demo(cls, k: int) -> CounterfactualConfig:
        """The demo's reduced recipe: 400-step retrains (the full recipe costs about 73 minutes a retrain on 2
        cores; θ₀ is retrained the same way, so every ΔL compares like with like) and three random removals."""
        return cls(k=k, steps=400, random_seeds=(0, 1, 2))


def removed_sets(
    rankings: dict[str, np.ndarray], k: int, num_train: int, random_seeds
) -> dict[str, list[list[int]]]:
    """The ids each method removes: per method, one sorted list of K ids per query.

    Args:
        rankings: method -> int (Q, >= K) training ids, most influential first.
    Returns:
        method -> Q lists; ``random`` -> one list per seed (shared by every query).
    """
    out = {}
    for name, ranked in rankings.items():
        if ranked.shape[1] < k:
            raise FastGDAError(
                f"{name} ranks only {ranked.shape[1]} items per query; leave-{k}-out needs at least {k}"
            )
        out[name] = [sorted(int(i) for i in row[:k]) for row in ranked]
    out[RANDOM] = [
        sorted(np.random.default_rng(seed).choice(num_train, k, replace=False).tolist())
        for seed in random_seeds
    ]
    return out


def retrain_key(recipe: dict, removed: list[int]) -> str:
    """A stable name for a retrain: same recipe and removed ids -> same key (and the same cached model)."""
    payload = json.dumps({"recipe": recipe, "removed": sorted(removed)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class _Measurement:
    """What a retrain is measured on: the query set's rows and the settings of ΔL and the regenerations."""

    queries_dir: str
    query_rows: tuple[int, ...]
    config: CounterfactualConfig

    def cache_name(self) -> str:
        """One file per rows and measuring settings: measuring other queries never reads stale figures."""
        c = self.config
        payload = [
            list(self.query_rows),
            c.loss_stride,
            c.loss_noise_seed,
            c.generate_steps,
            c.guidance_scale,
        ]
        return f"eval-{hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:12]}.npz"

    @torch.no_grad()
    def __call__(self, model) -> dict[str, np.ndarray]:
        """The model's query losses (Q, T') and regenerations (Q, H, W, 3 uint8)."""
        from .data import ImageCaptionFolder
        from .diffusion.queries import load_query_tensors

        rows = list(self.query_rows)
        tensors = {k: v[rows] for k, v in load_query_tensors(self.queries_dir).items()}
        records = ImageCaptionFolder(self.queries_dir).records
        prompts = [records[r].get("prompt") or records[r]["captions"][0] for r in rows]
        seeds = [int(records[r].get("seed", r)) for r in rows]
        device = model.device
        x0, states = tensors["x0"].to(device), tensors["text_states"].to(device)
        mask = tensors.get("text_mask")
        mask = None if mask is None else mask.to(device)
        steps = torch.arange(0, model.scheduler.config.num_train_timesteps, self.config.loss_stride)
        losses = []
        for q in range(len(x0)):
            gen = torch.Generator().manual_seed(self.config.loss_noise_seed * 1_000_003 + q)
            # On the host: the same noise bits on any device.
            noise = torch.randn((len(steps), *x0.shape[1:]), generator=gen)
            losses.append(
                model.loss(
                    x0[q].expand(len(steps), *x0.shape[1:]),
                    states[q].expand(len(steps), *states.shape[1:]),
                    None if mask is None else mask[q].expand(len(steps), *mask.shape[1:]),
                    noise.to(device),
                    steps.to(device),
                )
                .cpu()
                .numpy()
            )
        images = model.decode(
            model.sample(prompts, seeds, self.config.generate_steps, self.config.guidance_scale)
        )
        return {"losses": np.stack(losses), "images": images}

    def save(self, retrain_dir: Path, measured: dict[str, np.ndarray]) -> None:
        cache = retrain_dir / self.cache_name()
        tmp = cache.with_name(f".{cache.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, **measured)
        os.replace(tmp, cache)


@dataclass(frozen=True)
class _RetrainTask:
    """Picklable worker factory for executors: retrains the model without a removed set (resumable), then
    measures the retrain on the queries, so a finished retrain's figures survive without its weights."""

    model_dir: str
    data_dir: str
    out_dir: str
    recipe: dict
    measurement: _Measurement | None = None
    device: str = "cpu"  # resolved in each worker: a Ray worker uses the GPU it was given
    dtype: str = "float32"

    def __call__(self):
        from .data import open_dataset
        from .diffusion import DiffusionTrainConfig, TextToImageModel, train_diffusion
        from .diffusion.training import prepare_training_data

        dataset = open_dataset(self.data_dir)
        encoded = []  # the full set's images and captions, encoded once per worker on first use

        def run(item: tuple[str, list[int]]) -> str:
            key, removed = item
            target = Path(self.out_dir) / key
            if not (target / "model" / MANIFEST_NAME).exists():
                model = retrain_start(self.model_dir, self.recipe["seed"], self.device, self.dtype)
                if not encoded:
                    encoded.append(prepare_training_data(model, dataset))
                drop = set(removed)
                kept = [i for i in range(len(dataset)) if i not in drop]
                write_json_atomic(
                    target / "removed.json", {"removed": removed, "recipe": self.recipe}
                )
                train_diffusion(
                    model,
                    dataset.without(removed),
                    target / "model",
                    DiffusionTrainConfig(**self.recipe),
                    checkpoint_dir=target / "checkpoints",
                    command=f"leave-{len(removed)}-out retrain {key}",
                    overwrite=True,
                    data=encoded[0].subset(kept),
                )
            m = self.measurement
            if m is not None and not (target / m.cache_name()).exists():
                model = TextToImageModel.from_pretrained(
                    target / "model", device=self.device, dtype=self.dtype
                ).eval()
                m.save(target, m(model))
            return key

        return run


def run_counterfactual(
    model_dir: str | os.PathLike,
    data: str | os.PathLike,
    query_set: str | os.PathLike,
    items,
    queries,
    ground_truth,
    out_dir: str | os.PathLike,
    config: CounterfactualConfig,
    rankers: dict | None = None,
    rankings: dict[str, str | os.PathLike] | None = None,
    baselines: str = "parts",
    query_ids=None,
    executor=None,
    partial: bool = False,
    device: str = "auto",
    dtype: str = "float32",
) -> CounterfactualResult:
    """Leave-K-out evidence on test queries (what ``fastgda eval counterfactual`` runs): every method's top-K,
    the retrains (resumable, shared; none with ``partial``), then ΔL, ΔG-MSE and ΔG-sim per query.

    Args:
        items / queries: ``Features`` of the training items and of the query set (one spec).
        ground_truth: ``GroundTruth`` of the query set; ``query_ids`` picks its rows (default: all of them).
        rankers: display name -> ``Ranker``; rankings: display name -> a stored ground-truth folder of another
            method (its top-K is removed as the method's).
        baselines: the untuned baselines (``method_rankings``).
        partial: evaluate the queries whose retrains are finished, without running any.

    Raises:
        FastGDAError: a stored ranking's name clashes with another method's.
    """
    from .ground_truth import GroundTruth

    if query_ids is not None:
        ground_truth = ground_truth.select(query_ids)
    rows = ground_truth.query_ids
    selected = queries.select(rows)
    methods = method_rankings(
        selected, items, ground_truth.ids, rankers or {}, k=config.k, baselines=baselines
    )
    for name, folder in (rankings or {}).items():
        if name in methods or name == RANDOM:
            raise FastGDAError(f"method name {name!r} is taken; choose another")
        stored = GroundTruth.load(folder).select(rows).ids[:, : config.k]
        methods[name] = np.asarray(stored, dtype=np.int64)
    job = CounterfactualJob(
        model_dir, data, query_set, methods, out_dir, config,
        query_rows=rows.tolist(), device=device, dtype=dtype,
    )  # fmt: skip
    if not partial:
        job.run(executor=executor)
    return job.merge(partial=partial)


def _mean_cell(figure: dict | None) -> str:
    """``mean ± s.e.`` of a summary figure; the mean alone for one query (no standard error), – when absent."""
    if figure is None:
        return "–"
    mean, stderr = figure["mean"], figure["stderr"]
    if stderr is None or not np.isfinite(stderr):
        return f"{mean:.5f}"
    return f"{mean:.5f} ± {stderr:.5f}"


@dataclass
class CounterfactualResult:
    """Per method: ΔL, ΔG-MSE, ΔG-sim per query (Q,), and their means and standard errors."""

    per_query: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    query_rows: list[int] | None = (
        None  # the query-set rows the figures cover (a partial result: some)
    )

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        out = {}
        for method, metrics in self.per_query.items():
            out[method] = {}
            for name, values in metrics.items():
                mean, stderr = mean_and_stderr(values)
                out[method][name] = {"mean": mean, "stderr": stderr}
        return out

    def to_text(self, num_queries: int | None = None, ranker: str | None = None) -> str:
        """The table (each method's mean ± s.e. of ΔL, ΔG-MSE and ΔG-sim) and, with ``ranker``, the ordering
        claims; ``num_queries``: the queries asked for, named when the result covers fewer (a partial one)."""
        rows = [int(row) for row in self.query_rows or []]
        lines = [f"{len(rows)} of {num_queries} queries (ids {rows})"] if num_queries else []
        lines += [f"{'method':<44} {'delta loss':>20} {'delta MSE':>20} {'similarity':>20}"]
        for name, metrics in self.summary().items():
            cells = [_mean_cell(metrics.get(m)) for m in ("delta_loss", "delta_mse", "delta_sim")]
            lines.append(f"{name:<44} " + " ".join(f"{c:>20}" for c in cells))
        if ranker is not None:
            checks = self.ordering(ranker)
            lines += ["", "ordering on mean delta loss:"] + [f"- {c.describe()}" for c in checks]
        return "\n".join(lines)

    def orders(self, ranker: str) -> bool:
        """Whether the ordering claims can be checked for ``ranker``: it, random removal and an untuned
        baseline were all measured."""
        methods = set(self.per_query)
        return (
            ranker in methods
            and RANDOM in methods
            and any(m.startswith("untuned") for m in methods)
        )

    def ordering(self, ranker: str, target_share: float = 0.85) -> list[OrderingCheck]:
        """The evidence claims on mean ΔL (issue acceptance, method.md §4): teacher >= ranker > best untuned
        baseline > random, and ranker >= ``target_share`` of the teacher's. Each comparison carries the paired
        per-query difference (mean, standard error), so a reader sees which claims the queries resolve.

        Args:
            ranker: the ranker's method name; untuned baselines are the methods named ``untuned ...``.
        """
        mean = {m: float(np.mean(v["delta_loss"])) for m, v in self.per_query.items()}
        untuned = [m for m in mean if m.startswith("untuned")]
        missing = [m for m in ("teacher", ranker, "random") if m not in mean]
        if missing:
            raise FastGDAError(
                f"the ordering needs teacher, {ranker!r} and random; this result has {sorted(mean)}"
            )

        def paired(a: str, b: str) -> tuple[float, float]:
            return mean_and_stderr(
                np.subtract(self.per_query[a]["delta_loss"], self.per_query[b]["delta_loss"])
            )

        def check(claim: str, a: str, b: str, strict: bool = True) -> OrderingCheck:
            holds = mean[a] > mean[b] if strict else mean[a] >= mean[b]
            return OrderingCheck(claim, holds, paired(a, b))

        checks = [check("teacher >= ranker", "teacher", ranker, strict=False)]
        if untuned:
            best = max(untuned, key=mean.get)
            checks += [
                check(f"ranker > {best}", ranker, best),
                check(f"{best} > random", best, "random"),
            ]
        else:  # a run without untuned baselines (``--baselines none``)
            checks.append(check("ranker > random", ranker, "random"))
        share = mean[ranker] / mean["teacher"] if mean["teacher"] > 0 else float("nan")
        checks.append(
            OrderingCheck(
                f"ranker >= {target_share:.0%} of the teacher's (measured {share:.0%})",
                bool(share >= target_share),
                None,
            )
        )
        return checks


@dataclass(frozen=True)
class OrderingCheck:
    """One claim on mean ΔL, whether it holds, and the paired ΔL difference behind it (mean, s.e.) if any."""

    claim: str
    holds: bool
    paired_difference: tuple[float, float] | None

    @property
    def resolved(self) -> bool:
        """Whether the paired difference is more than one standard error from zero."""
        if self.paired_difference is None:
            return True
        mean, se = self.paired_difference
        return abs(mean) > se

    def describe(self) -> str:
        """``teacher >= ranker: holds (paired ΔL difference 1.39 ± 1.47 x1e-3, within one s.e.)``."""
        text = f"{self.claim}: {'holds' if self.holds else 'does NOT hold'}"
        if self.paired_difference is not None:
            mean, se = self.paired_difference
            within = "" if self.resolved else ", within one s.e."
            text += f" (paired ΔL difference {mean * 1e3:.2f} ± {se * 1e3:.2f} ×1e-3{within})"
        return text


class CounterfactualJob:
    """Plans, runs (resumably, on any executor) and evaluates the leave-K-out retrains of one setting: a
    ``fastgda.executors.ResumableJob`` whose units are retrain keys, and whose ``merge`` measures them.

    Args:
        model_dir: the original model (its manifest holds the recipe and architecture).
        data_dir: its training set.
        queries_dir: a query set (generated images' x0, prompts and seeds).
        rankings: method -> int (Q, >= K) training ids per query, most influential first.
        query_rows: the query-set rows the rankings' Q rows refer to (default 0..Q-1).
        device / dtype: where retrains and measurements run and the precision they compute in
            (``fastgda.devices``); a dtype other than float32 is part of every retrain's key.

    A model fastgda trained from scratch is retrained from its preset with its recorded recipe. A Stable
    Diffusion pipeline folder (or a model fastgda fine-tuned from one) is retrained as a fine-tune from the
    pipeline's own UNet: its recorded recipe, or for a bare pipeline ``DiffusionTrainConfig.finetune`` with
    ``config.steps`` (required), θ₀ being the same fine-tune on all the data.
    """

    def __init__(
        self,
        model_dir,
        data_dir,
        queries_dir,
        rankings: dict[str, np.ndarray],
        out_dir,
        config: CounterfactualConfig,
        query_rows: list[int] | None = None,
        device: str = "cpu",
        dtype: str = "float32",
    ):
        from .data import open_dataset

        self.model_dir, self.data_dir, self.queries_dir = (
            str(model_dir),
            str(data_dir),
            str(queries_dir),
        )
        self.out_dir, self.config = Path(out_dir), config
        recipe = _recipe_of(Path(model_dir), config)
        if config.steps:
            # A reduced recipe keeps the schedule's shape: warm-up at most a tenth of the run.
            warmup = min(recipe["warmup_steps"], config.steps // 10)
            recipe = {**recipe, "steps": config.steps, "warmup_steps": warmup}
        if config.coupled:
            recipe = {**recipe, "draw_by_item_id": True}  # part of every retrain's key
        self.device, self.dtype = str(device), dtype
        if dtype != "float32":
            # Reduced precision trains other weights: part of every retrain's key, so caches never mix.
            recipe = {**recipe, "compute_dtype": dtype}
        self.recipe = recipe
        self.num_train = len(open_dataset(data_dir))
        lengths = {name: len(r) for name, r in rankings.items()}
        if len(set(lengths.values())) != 1:
            raise FastGDAError(f"every method must rank the same queries; got {lengths}")
        num_queries = next(iter(lengths.values()))
        self.query_rows = (
            list(range(num_queries)) if query_rows is None else [int(r) for r in query_rows]
        )
        if len(self.query_rows) != num_queries:
            raise FastGDAError(
                f"{len(self.query_rows)} query rows for rankings of {num_queries} queries"
            )
        self.sets = removed_sets(rankings, config.k, self.num_train, config.random_seeds)
        self.baseline_key = retrain_key(recipe, [])
        self.plan = {self.baseline_key: []}
        # Random removals first after θ₀: the noise floor every method is read against is known early. Then
        # query by query, every method's set for one query before the next query's: a run stopped part-way
        # has every method on its first queries, a paired comparison (``evaluate(partial=True)``).
        for removed in self.sets[RANDOM]:
            self.plan.setdefault(retrain_key(recipe, removed), removed)
        methods = sorted(m for m in self.sets if m != RANDOM)
        for row in range(num_queries):
            for name in methods:
                removed = self.sets[name][row]
                self.plan.setdefault(retrain_key(recipe, removed), removed)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            self.out_dir / "plan.json",
            {
                **self._signature(),
                "recipe": recipe,
                "baseline": self.baseline_key,
                "retrains": len(self.plan),
            },
        )

    @property
    def retrains_dir(self) -> Path:
        return self.out_dir / "retrains"

    @property
    def measurement(self) -> _Measurement:
        return _Measurement(self.queries_dir, tuple(self.query_rows), self.config)

    def pending(self) -> list[str]:
        """Retrain keys neither measured on these queries nor with a finished model. A measured retrain needs
        no weights: its folder can travel (or be kept in version control) without them."""
        name = self.measurement.cache_name()
        return [
            key
            for key in self.plan
            if not (self.retrains_dir / key / name).exists()
            and not (self.retrains_dir / key / "model" / MANIFEST_NAME).exists()
        ]

    def run(self, keys=None, executor=None) -> None:
        """Retrain every pending removed set (or the pending ones of ``keys``; θ₀ first) on ``executor``
        (default: this process); finished ones are skipped, partial ones resume."""
        from .executors import LocalExecutor

        pending = self.pending()
        if keys is not None:
            pending = [key for key in pending if key in set(keys)]
        # The training recipe proper: the compute dtype travels beside it, not into DiffusionTrainConfig.
        recipe = {k: v for k, v in self.recipe.items() if k != "compute_dtype"}
        task = _RetrainTask(
            self.model_dir,
            self.data_dir,
            str(self.retrains_dir),
            recipe,
            measurement=self.measurement,
            device=self.device,
            dtype=self.dtype,
        )
        executor = executor or LocalExecutor()
        executor.map(task, [(key, self.plan[key]) for key in pending], desc="leave-K-out retrains")

    # -- evaluation ----------------------------------------------------------------------------------
    def _measure(self, key: str) -> dict:
        """The model ``key``'s query losses (Q, T') and regenerations (Q, H, W, 3), cached in its folder."""
        from .diffusion import TextToImageModel

        measurement = self.measurement
        cache = self.retrains_dir / key / measurement.cache_name()
        if not cache.exists():
            model = TextToImageModel.from_pretrained(
                self.retrains_dir / key / "model", device=self.device, dtype=self.dtype
            ).eval()
            measurement.save(self.retrains_dir / key, measurement(model))
        with np.load(cache, allow_pickle=False) as saved:
            return {name: saved[name] for name in saved.files}

    def finished_queries(self) -> list[int]:
        """Positions (into ``query_rows``) of the queries whose retrains are all finished: θ₀, every random seed
        and every method's removed set for that query."""
        missing = set(self.pending())
        shared = [self.baseline_key] + [retrain_key(self.recipe, r) for r in self.sets[RANDOM]]
        if missing.intersection(shared):
            return []
        return [
            q
            for q in range(len(self.query_rows))
            if not any(
                retrain_key(self.recipe, lists[q]) in missing
                for method, lists in self.sets.items()
                if method != RANDOM
            )
        ]

    def merge(self, partial: bool = False) -> CounterfactualResult:
        """Measure the retrains: ΔL, ΔG-MSE and ΔG-sim per method and query; every retrain must be finished.

        With ``partial``, only the queries whose retrains are all finished (``finished_queries``), each method on
        the same queries, so paired differences hold; written to ``counterfactual.partial.json`` with the
        ``query_rows`` it covers, never mistaken for the full result.
        """
        from .encoders import make_encoder

        missing = self.pending()
        rows = list(range(len(self.query_rows)))
        if partial:
            rows = self.finished_queries()
            if not rows:
                raise FastGDAError(
                    f"no query has all its retrains finished yet ({len(missing)} of {len(self.plan)} unfinished, "
                    "θ₀ and the random removals first); run the job longer"
                )
        elif missing:
            raise FastGDAError(
                f"{len(missing)} of {len(self.plan)} retrains are unfinished; run the job again to finish them "
                "(or evaluate the finished queries only with partial=True / --partial)"
            )
        encoder = make_encoder(self.config.similarity_encoder)
        base = self._measure(self.baseline_key)
        base_emb = unit_rows(encoder.encode(base["images"]))
        result = CounterfactualResult(query_rows=[self.query_rows[q] for q in rows])
        embeddings: dict[str, np.ndarray] = {}  # per retrain: its regenerations, encoded once

        def compare(key: str, q: int) -> tuple[float, float, float]:
            measured = self._measure(key)
            if key not in embeddings:
                embeddings[key] = unit_rows(encoder.encode(measured["images"]))
            a = measured["images"][q].astype(np.float32) / 255
            b = base["images"][q].astype(np.float32) / 255
            return (
                float(measured["losses"][q].mean() - base["losses"][q].mean()),
                float(((a - b) ** 2).mean()),
                float(embeddings[key][q] @ base_emb[q]),
            )

        for method, lists in self.sets.items():
            metrics = {"delta_loss": [], "delta_mse": [], "delta_sim": []}
            for q in rows:
                # Random: every seed's model serves every query; the mean over seeds is the query's value.
                removed_sets_of_q = lists if method == RANDOM else [lists[q]]
                per_seed = [compare(retrain_key(self.recipe, r), q) for r in removed_sets_of_q]
                for name, values in zip(metrics, zip(*per_seed, strict=True), strict=True):
                    metrics[name].append(float(np.mean(values)))
            result.per_query[method] = metrics
        write_json_atomic(
            self.out_dir / ("counterfactual.partial.json" if partial else "counterfactual.json"),
            {
                "summary": result.summary(),
                "per_query": result.per_query,
                "k": self.config.k,
                "plan": self._signature(),
                "evaluated_query_rows": result.query_rows,
            },
        )
        return result

    def _signature(self) -> dict:
        """What a stored evaluation must match to be reused: the queries, the config and every removed set."""
        return json.loads(
            json.dumps(
                {
                    "query_rows": self.query_rows,
                    "config": asdict(self.config),
                    "sets": {
                        m: [retrain_key(self.recipe, r) for r in lists]
                        for m, lists in self.sets.items()
                    },
                }
            )
        )

    def cached_result(self) -> CounterfactualResult | None:
        """The stored evaluation when it was made for exactly this plan (else None: call ``merge``)."""
        path = self.out_dir / "counterfactual.json"
        if not path.is_file():
            return None
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("plan") != self._signature():
            return None
        return CounterfactualResult(per_query=stored["per_query"])


def _recipe_of(model_dir: Path, config: CounterfactualConfig) -> dict:
    """The training recipe every retrain reuses (bookkeeping fields dropped).

    Raises:
        FastGDAError: the model records no recipe and none can be made (a bare pipeline without ``steps``).
    """
    from .diffusion.training import DiffusionTrainConfig

    if (model_dir / "model_index.json").is_file() and not (model_dir / MANIFEST_NAME).is_file():
        if not config.steps:
            raise FastGDAError(
                f"{model_dir} is a Stable Diffusion pipeline without a fastgda training record: leave-K-out "
                "retrains fine-tune it on the data, so give their length with --steps"
            )
        recipe = asdict(DiffusionTrainConfig.finetune(config.steps))
    else:
        manifest = json.loads((model_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
        training = manifest.get("training", {})
        model_config = manifest.get("config", {})
        trained_from = (
            "preset" in model_config or model_config.get("source") == "diffusers_pipeline"
        )
        if "config" not in training or not trained_from:
            raise FastGDAError(
                f"{model_dir} records no training recipe; leave-K-out retrains need the recipe it was trained "
                "with"
            )
        recipe = training["config"]
    return {
        k: v
        for k, v in recipe.items()
        if k not in ("stop_at_step", "checkpoint_every", "keep_checkpoints")
    }


def retrain_start(model_dir, seed: int, device: str = "cpu", dtype: str = "float32"):
    """The model a retrain starts from: a fresh ``TextToImageModel`` of the preset a fastgda model was built from
    (weights seeded by ``seed``), or the pipeline's own weights for a Stable Diffusion folder or a model fastgda
    fine-tuned from one."""
    from .devices import resolve_device
    from .diffusion import ModelPreset, TextToImageModel

    model_dir = Path(model_dir)
    device = resolve_device(device)
    if not (model_dir / MANIFEST_NAME).is_file():
        return TextToImageModel.from_pretrained(model_dir, device=device, dtype=dtype)
    config = json.loads((model_dir / MANIFEST_NAME).read_text(encoding="utf-8"))["config"]
    if config.get("source") == "diffusers_pipeline":
        return TextToImageModel.from_pretrained(config["path"], device=device, dtype=dtype)
    preset = ModelPreset(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in config["preset"].items()}
    )
    model = TextToImageModel.from_preset(preset, seed=seed).to(device)
    return model.set_precision(dtype)


def import_measurements(source, run_dir) -> int:
    """Put the measured retrains of ``source`` (an ``export_measurements`` folder; checksums verified) into the
    counterfactual run folder ``run_dir``, where they count as finished; files it already holds are kept.

    Returns:
        How many retrains ``source`` holds.
    """
    source = Path(source)
    verify_checksums(source, read_manifest(source, MEASUREMENTS_KIND, 1))
    retrains = [d for d in sorted(source.iterdir()) if d.is_dir()]
    for retrain in retrains:
        target = Path(run_dir) / "retrains" / retrain.name
        target.mkdir(parents=True, exist_ok=True)
        for file in retrain.iterdir():
            if not (target / file.name).exists():
                shutil.copy2(file, target / file.name)
    return len(retrains)


def export_measurements(run_dir, dest) -> int:
    """Write every measured retrain of the run folder ``run_dir`` (its measurements and removed set, not its
    weights: about 20 KB a retrain) into the artifact folder ``dest``, keeping what ``dest`` already held.

    Returns:
        How many retrains ``dest`` holds.
    """
    if (Path(dest) / MANIFEST_NAME).is_file():
        import_measurements(dest, run_dir)
    with atomic_dir(dest, overwrite=True) as tmp:
        count = 0
        retrains = Path(run_dir) / "retrains"
        for retrain in sorted(retrains.iterdir()) if retrains.is_dir() else []:
            measured = sorted(retrain.glob("eval-*.npz"))
            if not measured:
                continue
            (tmp / retrain.name).mkdir()
            for file in [*measured, retrain / "removed.json"]:
                shutil.copy2(file, tmp / retrain.name / file.name)
            count += 1
        write_manifest(tmp, MEASUREMENTS_KIND, 1, extra={"retrains": count})
    return count
