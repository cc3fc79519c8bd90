"""Training the ranker: pointwise learning-to-rank against the teacher, with validation and early stopping.

Each step takes a batch of queries and ``pairs_per_query`` pairs per query (``PairSampler``), embeds every
distinct query and training item of the batch *once* (an item drawn by several pairs is not re-embedded), and
applies the loss to ``scale * cos + bias``:

- ``bce`` (default, method.md §5): binary cross-entropy with logits against the target in [0, 1];
- ``mse``: squared error between sigmoid(logit) and the target (the regression ablation).

Pair the loss with ``target="rank"`` (normalised rank, default) or ``target="score"`` (raw-score regression).
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from ..config import (
    AT_LEAST_ONE,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    Bounds,
    check_settings,
    setting,
)
from ..errors import ConfigError
from ..evaluation import candidate_map
from ..progress import bar as progress_bar
from .model import Ranker, RankerShape, rows_tensor
from .pairs import PairSampler
from .untuned import part_pool_maps

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankerTrainConfig:
    """How the ranker is distilled (method.md §5); stored in the ranker's manifest."""

    hidden: tuple[int, ...] = setting((768, 768, 768), "hidden layer widths", bounds=AT_LEAST_ONE)
    out_dim: int = setting(768, "embedding width of one member", bounds=AT_LEAST_ONE)
    dropout: float = setting(0.0, "dropout after each hidden layer", bounds=Bounds(0, 1))
    epochs: int = setting(
        60, "training epochs (early stopping may end sooner)", bounds=AT_LEAST_ONE
    )
    batch_queries: int = setting(32, "queries per step", bounds=AT_LEAST_ONE)
    pairs_per_query: int = setting(
        256, "(query, item) pairs drawn per query and step", bounds=AT_LEAST_ONE
    )
    lr: float = setting(1e-3, "AdamW learning rate", bounds=POSITIVE)
    weight_decay: float = setting(1e-4, "AdamW weight decay", bounds=NON_NEGATIVE)
    outlier_prob: float = setting(
        0.1,
        "share of pairs whose item is drawn from outside the query's pool, labelled worst",
        bounds=PROBABILITY,
    )
    loss: str = setting(
        "bce", "bce (method.md §5) or mse (the regression ablation)", choices=("bce", "mse")
    )
    target: str = setting(
        "rank", "rank (normalised rank) or score (raw teacher score)", choices=("rank", "score")
    )
    candidate_fraction: float = setting(
        1.0, "share of each pool's candidates the pairs are drawn from", bounds=FRACTION
    )
    # Rank labels over the teacher's top T of each training pool only (None: the whole pool); the rest of the pool
    # can still be drawn as an outlier. Validation keeps the whole pools, so runs with different T compare.
    train_top: int | None = setting(
        None,
        "rank labels over the teacher's top T of each pool only (default: the whole pool)",
        bounds=Bounds(2),
    )
    # Independently trained members (seeds seed, seed + 1, ...) whose cosines are averaged: an ensemble costs
    # members x the training time, embedding width and index memory, and steadies a ranker distilled from few
    # queries (benchmarks/attribution_quality.py --members).
    members: int = setting(
        1,
        "train R rankers (seeds SEED..SEED+R-1) and average their cosines: steadier with few teacher queries, "
        "at R x the training time, embedding width and index memory",
        bounds=AT_LEAST_ONE,
    )
    patience: int = setting(
        10, "epochs without a better validation mAP before stopping", bounds=AT_LEAST_ONE
    )
    val_fraction_l: float = setting(
        0.1, "validation mAP positives: the teacher's top share of each pool", bounds=FRACTION
    )
    balance_parts: bool = setting(
        True, "give each part of a concatenated spec the same input variance"
    )
    part_weights: tuple[float, ...] | None = setting(
        None,
        "with balance_parts: input-variance shares of the spec's parts, in spec order",
        bounds=POSITIVE,
    )
    # A ranker distilled from few teacher queries can learn less than one of its own input parts already knows.
    # Started from that part's cosine (a residual on it), with the untrained state kept unless validation mAP
    # improves on it, a member cannot end below the part on validation (an ensemble's average can, by a hair:
    # ``best_scorer`` is the second guard).
    residual: str = setting(
        "auto",
        "start from an untuned part's cosine and learn a residual on it: auto (the part with the best mAP on the "
        "validation pools, else on the training pools), a part's name (e.g. minilm), or none (the paper's plain "
        "MLP)",
    )
    seed: int = setting(0, "seeds the weights and the pairs", bounds=NON_NEGATIVE)

    def __post_init__(self):
        check_settings(self)
        if not self.residual:
            raise ConfigError("residual must be auto, none or a part's name, got ''")

    @classmethod
    def paper(cls) -> RankerTrainConfig:
        """The paper's ranker (method.md §5): a plain MLP (``residual="none"``); otherwise the defaults."""
        return cls(residual="none")

    @classmethod
    def demo(cls) -> RankerTrainConfig:
        """The embedded world's settings for an ``effnet+minilm`` ranker, each chosen on validation queries
        (BENCHMARKS.md, "Attribution quality" and "Seed spread"):

        - ``part_weights=(0.1, 1.0)``: the image part gets a tenth of the text part's input variance, since this
          world's teacher follows the prompt;
        - ``train_top=256``: rank labels over the teacher's top 256 of each 512-candidate pool;
        - ``members=3``: three rankers with averaged cosines, steadier than one distilled from 400 queries;
        - ``residual="none"``: the plain MLP the demo's figures were measured with. From all 400 teacher queries
          validation cannot tell it from the residual start (mAP 0.651 against 0.655; on test 0.537 against
          0.520); from 50 or 100 the residual wins (BENCHMARKS.md, "Few teacher queries").
        """
        return cls(part_weights=(0.1, 1.0), train_top=256, members=3, residual="none")


# Named starting points for ``fastgda ranker train --preset``.
PRESETS = {"paper": RankerTrainConfig.paper, "demo": RankerTrainConfig.demo}


def _loss(kind: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if kind == "bce":
        return nn.functional.binary_cross_entropy_with_logits(logits, targets)
    if kind == "mse":
        return nn.functional.mse_loss(torch.sigmoid(logits), targets)
    raise ValueError(f"unknown loss {kind!r}; use 'bce' or 'mse'")


def pair_loss(
    ranker: Ranker,
    query_features: torch.Tensor,
    item_features: torch.Tensor | np.ndarray,
    rows: np.ndarray,
    items: np.ndarray,
    targets: np.ndarray,
    kind: str,
) -> torch.Tensor:
    """Mean loss over pairs, embedding each distinct query and item of the batch once.

    ``item_features``: a tensor on the ranker's device, or a host array of all N (a memory map): only the batch's
    rows are read, in id order, and moved to the device."""
    q_unique, q_index = np.unique(rows, return_inverse=True)
    i_unique, i_index = np.unique(items, return_inverse=True)
    q_emb = ranker.embed(query_features[torch.from_numpy(q_unique)])
    picked = torch.from_numpy(i_unique) if isinstance(item_features, torch.Tensor) else i_unique
    i_emb = ranker.embed(rows_tensor(item_features[picked]).to(q_emb.device))
    logits = ranker.logits(q_emb[torch.from_numpy(q_index)], i_emb[torch.from_numpy(i_index)])
    return _loss(kind, logits, torch.from_numpy(targets).to(logits.device))


@torch.no_grad()
def validate(
    ranker: Ranker,
    query_features: np.ndarray,
    item_embeddings: np.ndarray,
    ranked_ids: np.ndarray,
    L: int,
    loss: str = "bce",
) -> tuple[float, float]:
    """Validation on every (query, candidate) pair, no outliers.

    Returns:
        (loss against the normalised-rank targets, mean AP of the teacher's top-L within each pool).
    """
    members = ranker.shape.members
    q_emb = ranker.embed_numpy(query_features).reshape(len(query_features), members, -1)
    candidates = item_embeddings[ranked_ids].reshape(*ranked_ids.shape, members, -1)
    member_cosines = np.einsum("qrd,qkrd->qkr", q_emb, candidates) * members  # (Q, K, members)
    cosine = member_cosines.mean(-1)
    k = ranked_ids.shape[1]
    targets = torch.from_numpy(
        np.broadcast_to(1.0 - np.arange(k) / (k - 1), cosine.shape).astype(np.float32)
    )
    logits = ranker.logits_from_member_cosines(
        torch.from_numpy(member_cosines).to(ranker.logit_scale.device)
    )
    targets = targets.to(logits.device)
    return _loss(loss, logits, targets).item(), float(candidate_map(cosine, ranked_ids, L).mean())


def train_ranker(
    train_query_features: np.ndarray,
    item_features: np.ndarray,
    train_ranked_ids: np.ndarray,
    config: RankerTrainConfig = RankerTrainConfig(),
    *,
    val_query_features: np.ndarray | None = None,
    val_ranked_ids: np.ndarray | None = None,
    train_scores: np.ndarray | None = None,
    part_dims: list[int] | None = None,
    part_names: list[str] | None = None,
    device: str = "cpu",
) -> Ranker:
    """Fit a ranker on arrays (``Ranker.distil`` does it from ``Features`` and a ``GroundTruth``).

    Returns the best-on-validation weights (or the last, without validation); ``ranker.history`` holds the
    per-epoch records.

    With ``config.members`` > 1 each member is trained on its own (seed ``config.seed + m``, its own early
    stopping) and the members are joined by ``Ranker.ensemble``. The history then holds every member's epochs
    (with a ``member`` key) and, with validation, a last record ``{"member": "ensemble", ...}``.

    Args:
        train_query_features: float (Q, D) features of the training queries.
        item_features: float (N, D) features of every training item.
        train_ranked_ids: int (Q, K) the teacher's candidate rankings, most influential first (only the first
            ``config.train_top`` columns are used when it is set).
        part_dims: widths of the feature spec's parts (``Features.part_dims``), for ``balance_parts`` and
            ``residual``; without them the whole row is one part.
        part_names: the parts' names in column order (e.g. ``["effnet", "minilm"]``), for ``config.residual``.
        device: where the training steps run (``fastgda.devices.DEVICE_HELP``); the ranker returned is on the CPU.
    """
    from ..devices import resolve_device

    device = resolve_device(device)
    residual_part = choose_residual_part(
        config,
        part_dims,
        part_names,
        (val_query_features, val_ranked_ids)
        if val_query_features is not None and val_ranked_ids is not None
        else (train_query_features, train_ranked_ids),
        item_features,
    )
    train_one = functools.partial(
        _train_one,
        train_query_features=train_query_features,
        item_features=item_features,
        train_ranked_ids=train_ranked_ids,
        val_query_features=val_query_features,
        val_ranked_ids=val_ranked_ids,
        train_scores=train_scores,
        part_dims=part_dims,
        residual_part=residual_part,
        device=device,
    )
    if config.members == 1:
        return train_one(config=config)
    rankers, history = [], []
    for member in range(config.members):
        ranker = train_one(config=replace(config, members=1, seed=config.seed + member))
        rankers.append(ranker)
        history += [{"member": member, **record} for record in ranker.history]
    ensemble = Ranker.ensemble(rankers)
    if val_query_features is not None and val_ranked_ids is not None:
        val_items = np.unique(val_ranked_ids)  # the pools' items only, not all N
        val_loss, val_map = validate(
            ensemble,
            val_query_features,
            ensemble.embed_numpy(item_features[val_items]),
            np.searchsorted(val_items, val_ranked_ids),
            _validation_l(config, val_ranked_ids),
            config.loss,
        )
        history.append({"member": "ensemble", "val_loss": val_loss, "val_map": val_map})
    ensemble.history = history
    return ensemble


def choose_residual_part(
    config: RankerTrainConfig,
    part_dims: list[int] | None,
    part_names: list[str] | None,
    queries: tuple[np.ndarray, np.ndarray],
    item_features: np.ndarray,
) -> tuple[int, int] | None:
    """(offset, width) of the part ``config.residual`` names, or of the part whose plain cosine ranks the pools of
    ``queries`` (features (Q, D), ranked ids (Q, K)) best for ``"auto"``; None for ``"none"``."""
    if config.residual == "none":
        return None
    dims = list(part_dims) if part_dims else [item_features.shape[1]]
    names = list(part_names) if part_names else [f"part {i}" for i in range(len(dims))]
    if len(names) != len(dims):
        raise ConfigError(f"{len(names)} part names {names} for {len(dims)} part widths {dims}")
    offsets = np.cumsum([0, *dims[:-1]]).tolist()
    parts = {name: (int(o), int(d)) for name, o, d in zip(names, offsets, dims, strict=True)}
    if config.residual != "auto":
        if config.residual not in parts:
            raise ConfigError(
                f"residual part {config.residual!r} is not a part of these features; choose auto, none or one "
                f"of {names}"
            )
        return parts[config.residual]
    query_features, ranked_ids = queries
    L = max(1, round(config.val_fraction_l * ranked_ids.shape[1]))
    maps = part_pool_maps(query_features, item_features, ranked_ids, parts, L)
    best = max(maps, key=maps.get)
    logger.info(
        "the ranker starts from %s's cosine (pool mAP %s)",
        best, ", ".join(f"{n} {m:.3f}" for n, m in maps.items()),
    )  # fmt: skip
    return parts[best]


def summarise_history(history: list[dict]) -> tuple[int, float]:
    """(epochs trained, over all members; the validation mAP of the returned weights, NaN without validation)."""
    epochs = sum(record.get("epoch", 0) > 0 for record in history)
    final = [r["val_map"] for r in history if r.get("member") == "ensemble"]
    best = max((r["val_map"] for r in history if "val_map" in r), default=float("nan"))
    return epochs, final[0] if final else best


def _validation_l(config: RankerTrainConfig, val_ranked_ids: np.ndarray) -> int:
    return max(1, round(config.val_fraction_l * val_ranked_ids.shape[1]))


def _train_one(
    train_query_features: np.ndarray,
    item_features: np.ndarray,
    train_ranked_ids: np.ndarray,
    config: RankerTrainConfig,
    val_query_features: np.ndarray | None,
    val_ranked_ids: np.ndarray | None,
    train_scores: np.ndarray | None,
    part_dims: list[int] | None,
    residual_part: tuple[int, int] | None,
    device=None,
) -> Ranker:
    """One member: the training loop with validation each epoch and early stopping.

    A residual ranker is validated before its first epoch too (``epoch`` 0): its untrained state is the part's
    cosine, and it is returned unless an epoch beats it.
    """
    if config.train_top is not None:
        train_ranked_ids = train_ranked_ids[:, : config.train_top]
        if train_scores is not None:
            train_scores = train_scores[:, : config.train_top]
    ranker = _new_member(item_features, config, part_dims, residual_part, device)
    sampler = PairSampler(train_ranked_ids, len(item_features), config.outlier_prob, config.target,
                          train_scores, config.candidate_fraction, config.seed)  # fmt: skip
    optimiser = torch.optim.AdamW(
        ranker.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = _lr_schedule(
        optimiser, config, config.epochs * math.ceil(len(train_ranked_ids) / config.batch_queries)
    )
    q_train = torch.as_tensor(train_query_features, dtype=torch.float32).to(device)
    has_val = val_query_features is not None and val_ranked_ids is not None
    val_l = _validation_l(config, val_ranked_ids) if has_val else 1

    if has_val:
        # Validation reads only the items in its pools: each epoch embeds those, not all N (whose cost grows
        # with N every epoch of every member).
        val_items = np.unique(val_ranked_ids)
        val_positions = np.searchsorted(val_items, val_ranked_ids)
        val_item_features = item_features[val_items]

    def validated(record: dict) -> dict:
        record["val_loss"], record["val_map"] = validate(
            ranker, val_query_features, ranker.embed_numpy(val_item_features), val_positions,
            val_l, config.loss,
        )  # fmt: skip
        return record

    history: list[dict] = []
    stopping = _EarlyStopping(config.patience, residual=residual_part is not None)
    if has_val and residual_part is not None:
        history.append(validated({"epoch": 0}))
        stopping.start_from(history[-1]["val_map"], ranker)
    order_rng = np.random.default_rng(config.seed + 1)
    bar = progress_bar(range(config.epochs), desc=f"ranker epochs (seed {config.seed})")
    for epoch in bar:
        order = order_rng.permutation(len(train_ranked_ids))
        # Item rows stay on the host (all N, perhaps memory-mapped): each batch reads and moves only its own.
        loss = _train_epoch(
            ranker, sampler, order, q_train, item_features, optimiser, schedule, config
        )
        record = {"epoch": epoch + 1, "train_loss": loss}
        if has_val:
            stopping.observe(validated(record)["val_map"], ranker)
        history.append(record)
        bar.set_postfix({k: round(v, 4) for k, v in record.items() if k != "epoch"})
        if has_val and stopping.should_stop(epoch + 1):
            break
    stopping.restore_best(ranker)
    ranker.history = history
    return ranker.cpu().eval()


def _new_member(
    item_features: np.ndarray, config: RankerTrainConfig, part_dims, residual_part, device
) -> Ranker:
    """An untrained member (seeded by ``config.seed``), its input standardisation fitted on the items."""
    torch.manual_seed(config.seed)
    # A residual member is at least as wide as the part it starts from (a 1280-d image part: 1280-d outputs).
    out_dim = max(config.out_dim, residual_part[1]) if residual_part else config.out_dim
    shape = RankerShape(item_features.shape[1], config.hidden, out_dim, config.dropout,
                        residual_part=residual_part)  # fmt: skip
    ranker = Ranker(shape)
    ranker.fit_standardisation(
        item_features, part_dims if config.balance_parts else None, config.part_weights
    )
    return ranker.to(device)


def _lr_schedule(optimiser, config: RankerTrainConfig, total_steps: int):
    """One-cycle over ``total_steps``; warm up for 5% of the steps, and a short run (few queries, few epochs) for at
    least two steps, which OneCycleLR needs; a run too short for any schedule keeps the learning rate constant."""
    if total_steps >= 6:
        return torch.optim.lr_scheduler.OneCycleLR(
            optimiser, config.lr, total_steps=total_steps, pct_start=max(0.05, 2.5 / total_steps)
        )
    return torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0)


def _train_epoch(ranker, sampler, order, q_train, items, optimiser, schedule, config) -> float:
    """One pass over the training queries in ``order``, ``config.batch_queries`` at a time; the mean loss."""
    ranker.train()
    losses = []
    for start in range(0, len(order), config.batch_queries):
        rows, ids, targets = sampler.sample(
            order[start : start + config.batch_queries], config.pairs_per_query
        )
        loss = pair_loss(ranker, q_train, items, rows, ids, targets, config.loss)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
    return float(np.mean(losses))


class _EarlyStopping:
    """The best validation mAP so far and its weights; stops after ``patience`` epochs without a better one.

    A residual member's untrained start (its part's cosine) is a fallback, not the bar for patience: its first
    epochs often dip below it before they climb, so it trains at least 2 x patience epochs, and the start is
    kept only if no epoch beats it.
    """

    def __init__(self, patience: int, residual: bool):
        self.patience, self.residual = patience, residual
        self.best, self.best_state, self.stale = -1.0, None, 0
        self.start_map, self.start_state = -1.0, None

    def start_from(self, val_map: float, ranker) -> None:
        self.start_map, self.start_state = val_map, copy.deepcopy(ranker.state_dict())

    def observe(self, val_map: float, ranker) -> None:
        if val_map > self.best:
            self.best, self.best_state, self.stale = val_map, copy.deepcopy(ranker.state_dict()), 0
        else:
            self.stale += 1

    def should_stop(self, epochs_done: int) -> bool:
        warm = not self.residual or epochs_done >= 2 * self.patience
        return self.stale >= self.patience and warm

    def restore_best(self, ranker) -> None:
        """Load the best weights seen (the start's, if no epoch beat it); nothing without validation."""
        state = self.best_state
        if self.start_state is not None and self.start_map >= self.best:
            state = self.start_state
        if state is not None:
            ranker.load_state_dict(state)
