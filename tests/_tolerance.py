"""What the suite promises when it compares floats: every tolerance derived from the arithmetic, in one place.

Bitwise equality holds for what is stored and read back (weights, ids, bytes) and for counter-based noise, whose
bits depend only on its key. Any other float result computed twice (by two objects, in two runs, with another
batch or thread count, or on another CPU, whose kernels sum in another order: another instruction set, another
BLAS blocking) may differ by rounding, and is compared within a tolerance built here from three facts: the
precision's unit roundoff u, the number n of terms a result sums, and the terms' magnitude.

The bounds behind them:

- One sum (``sums``), deterministic (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., §3.1,
  §4.2): n terms, each a product rounded once, summed in any order, lie within γ_n · Σ|terms| of the exact sum,
  γ_n = n·u / (1 − n·u); two evaluations in two orders within 2·γ_n · Σ|terms| of each other.
- A chain of sums (``layers``: a network's forward pass), probabilistic (Higham & Mary, "A new approach to
  probabilistic rounding error analysis", SIAM J. Sci. Comput. 41(5), 2019, Theorem 2.4): an element that results
  from m roundings lies within γ̃_m(λ) = exp(λ·√m·u + m·u²/(1 − u)) − 1 ≈ λ·√m·u of its exact value, relative to
  the magnitude of what it sums, with probability at least 1 − 2·exp(−λ²(1 − u)²/2). λ = 10 makes that 4e-22
  per element. The deterministic bound (m·u) grows with depth x width and says nothing about a deep network:
  2·116·γ_576 = 0.8% for the test UNet, against this bound's 0.03%.

Each use states its derivation in one line beside it. ``assert_close`` and ``apart`` compare with a
``Tolerance`` and, when ``FASTGDA_TOLERANCE_LOG`` names a file, append how much of the tolerance each check used
(``benchmarks/tolerance_margins.py`` runs the suite under other summation orders and reports the margins).
"""

from __future__ import annotations

import inspect
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Unit roundoff u = 2^-p of each precision (p significand bits): one rounding moves a value by at most u·|value|.
F64 = 2.0**-53
F32 = 2.0**-24
F16 = 2.0**-11
BF16 = 2.0**-8

LOG_ENV = "FASTGDA_TOLERANCE_LOG"


@dataclass(frozen=True)
class Tolerance:
    """|actual − expected| <= atol + rtol·|expected|, elementwise; ``why`` is the derivation, shown on failure."""

    atol: float
    rtol: float = 0.0
    why: str = ""

    def __add__(self, other: Tolerance) -> Tolerance:
        """Two independent error sources: their bounds add."""
        return Tolerance(self.atol + other.atol, self.rtol + other.rtol, f"{self.why}; {other.why}")

    def __mul__(self, factor: float) -> Tolerance:
        return Tolerance(self.atol * factor, self.rtol * factor, f"{factor:g} x ({self.why})")

    __rmul__ = __mul__


def gamma(num_terms: int, unit: float = F32) -> float:
    """γ_n = n·u / (1 − n·u): the relative error bound of an n-term sum (Higham §3.1)."""
    if num_terms * unit >= 0.5:
        raise ValueError(f"{num_terms} terms at u = {unit:g}: the bound needs n·u well under 1")
    return num_terms * unit / (1 - num_terms * unit)


def sums(num_terms: int, magnitude: float, unit: float = F32) -> Tolerance:
    """Two evaluations of a sum of ``num_terms`` terms whose absolute values add to at most ``magnitude``: each
    within γ_n·magnitude of the exact sum, so within 2·γ_n·magnitude of each other (or of an exact reference,
    with room to spare)."""
    return Tolerance(
        2 * gamma(num_terms, unit) * float(magnitude),
        why=f"2·γ_{num_terms}(u={unit:.1e})·{float(magnitude):.3g}",
    )


def rounded(unit: float, magnitude: float = 0.0) -> Tolerance:
    """One rounding to a precision (a float16 store, a float32 cast of float64): u relative, plus u·magnitude
    absolute for values that sum or scale rounded ones."""
    return Tolerance(
        unit * float(magnitude), unit, why=f"one rounding at u={unit:.1e} (of {magnitude:.3g})"
    )


# λ of the probabilistic bound: it fails with probability at most 2·exp(−λ²/2) = 4e-22 per element.
LAMBDA = 10.0


def probabilistic_gamma(num_roundings: int, unit: float = F32, lam: float = LAMBDA) -> float:
    """γ̃_m(λ) = exp(λ·√m·u + m·u²/(1 − u)) − 1 (Higham & Mary 2019, Theorem 2.4)."""
    return math.expm1(lam * math.sqrt(num_roundings) * unit + num_roundings * unit**2 / (1 - unit))


def layers(depth: int, width: int, magnitude: float, unit: float = F32) -> Tolerance:
    """A chain of ``depth`` layers (matrix products, convolutions, normalisations, attention), each summing at
    most ``width`` terms, values of order ``magnitude`` (normalised layers pass errors on with a gain of order
    one): an output results from at most depth·width roundings, so it lies within γ̃_{depth·width}(λ) of its
    exact value relative to ``magnitude`` (the probabilistic bound), and two evaluations within twice that."""
    return Tolerance(
        2 * probabilistic_gamma(depth * width, unit) * float(magnitude),
        why=f"2·γ̃_{{{depth} layers x {width}}}(λ={LAMBDA:g}, u={unit:.1e})·{float(magnitude):.3g}",
    )


def network_shape(module) -> tuple[int, int]:
    """(depth, width) bounds of a torch module for ``layers``: the number of layers that sum (every Linear and
    convolution, each counted as if on one path, and each attention's two products: an over-count, never an
    under-count) and the widest sum among them (a layer's fan-in, or ``sequence`` for attention)."""
    import torch

    depth, width = 0, 1
    for sub in module.modules():
        if isinstance(sub, torch.nn.Linear):
            depth, width = depth + 1, max(width, sub.in_features)
        elif isinstance(sub, torch.nn.Conv1d | torch.nn.Conv2d):
            fan_in = sub.in_channels // sub.groups * math.prod(sub.kernel_size)
            depth, width = depth + 1, max(width, fan_in)
        elif isinstance(sub, torch.nn.GroupNorm | torch.nn.LayerNorm):
            depth += (
                1  # a mean and a variance: sums that the widths above bound for these small models
            )
    return depth, width


def network(module, magnitude: float, unit: float = F32, extra_width: int = 1) -> Tolerance:
    """``layers`` for a module's forward pass, its depth and width read off the module (``network_shape``);
    ``extra_width``: a wider sum it makes that is not a layer (attention over a longer sequence)."""
    depth, width = network_shape(module)
    return layers(depth, max(width, extra_width), magnitude, unit)


def encoded(extractor, values) -> Tolerance:
    """Features of a ``FeatureExtractor`` computed twice (another batch, thread or process): each part within
    its encoder's chain bound, relative to that part's largest value in ``values`` (N, D); an encoder without a
    network (pixels) within one float32 rounding. The loosest part's bound serves every column."""
    values = np.asarray(values)
    bounds = []
    for part, encoder in zip(extractor.parts, extractor.encoders, strict=True):
        scale = float(np.abs(values[:, part["offset"] : part["offset"] + part["dim"]]).max())
        model = getattr(encoder, "model", None)
        bounds.append(network(model, scale) if model is not None else rounded(F32, scale))
    return max(bounds, key=lambda b: b.atol)


def ddim(model, num_steps: int, guidance_scale: float = 1.0) -> Tolerance:
    """Deterministic DDIM (η = 0) sampling with ``model`` (a ``TextToImageModel``) done twice, in other batches:
    step t -> t' is x' = a·x + c·ε̂ with a = √(ᾱ_t'/ᾱ_t), c = √(1 − ᾱ_t') − a·√(1 − ᾱ_t), ε̂ = ε_u + g·(ε_c − ε_u).
    Each prediction lies within the UNet's chain bound η of the other run's (predictions are of order one: unit
    noise), so ε̂ within (1 + 2|g|)·η of it, plus the gain of an error E already in x (order one through
    normalised layers). First order: E' = (a + |c|·(1 + 2|g|))·E + |c|·(1 + 2|g|)·η, from E = 0."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(model.scheduler.config)
    scheduler.set_timesteps(num_steps)
    alphas = scheduler.alphas_cumprod.double()
    eta = network(model.unet, 1.0).atol
    guided = 1 + 2 * abs(guidance_scale) if guidance_scale != 1.0 else 1.0
    error = 0.0
    for t in scheduler.timesteps.tolist():
        previous = t - scheduler.config.num_train_timesteps // num_steps
        after = float(alphas[previous]) if previous >= 0 else float(scheduler.final_alpha_cumprod)
        a = (after / float(alphas[t])) ** 0.5
        c = abs((1 - after) ** 0.5 - a * (1 - float(alphas[t])) ** 0.5)
        error = (a + c * guided) * error + c * guided * eta
    return Tolerance(error, why=f"DDIM, {num_steps} steps, g={guidance_scale:g}, η={eta:.2g}")


def teacher_scores(model, loss_scale: float, score_scale: float) -> Tolerance:
    """Teacher scores τ = L(θ + Δ) − L(θ) (``model`` a ``TextToImageModel``) computed twice, in other batches:
    each loss within the UNet's chain bound of the other run's (relative to ``loss_scale``, the largest loss),
    and the step Δ within its own (the query's gradients: forward and backward), which moves τ, first order in
    Δ, by that share of ``score_scale`` (the largest |τ|)."""
    losses = 2 * network(model.unet, loss_scale)
    step = 2 * network(model.unet, 1.0).atol * float(score_scale)
    return losses + Tolerance(step, why="the step's own rounding, first order in the step")


def largest_loss(run_dir) -> float:
    """The largest before-unlearning loss a teacher run measured (``run_dir/before_losses``): the scale of its
    losses for ``teacher_scores``."""
    folder = Path(run_dir) / "before_losses"
    files = (
        [folder / "losses.npy"] if (folder / "losses.npy").is_file() else []
    )  # format 1: one dense array
    files += sorted(folder.glob("chunks/*/losses.npy"))  # format 2: the chunks computed
    return max(float(np.nanmax(np.abs(np.load(path)))) for path in files)


def assert_same_ranking(ids, scores, other_ids, other_scores, tolerance: Tolerance) -> None:
    """Rankings (rows of ids, best first, with their scores) of one computation done twice agree up to rounding:
    the same items in every row, each item's two scores within ``tolerance``, and two items swap places only
    where their scores tie within twice the tolerance (faiss's tie-tolerant comparison, ``contrib/evaluation``)."""
    ids, other_ids = np.atleast_2d(np.asarray(ids)), np.atleast_2d(np.asarray(other_ids))
    scores, other_scores = (
        np.atleast_2d(np.asarray(scores)),
        np.atleast_2d(np.asarray(other_scores)),
    )
    for row, (a, b) in enumerate(zip(ids, other_ids, strict=True)):
        if sorted(a.tolist()) != sorted(b.tolist()):
            raise AssertionError(f"row {row} ranks other items: {sorted(set(a) ^ set(b))[:10]}")
        by_id = dict(zip(b.tolist(), other_scores[row].tolist(), strict=True))
        assert_close(scores[row], [by_id[i] for i in a.tolist()], tolerance, f"row {row}")
        mine = dict(zip(a.tolist(), scores[row].tolist(), strict=True))
        for n, (x, y) in enumerate(zip(a.tolist(), b.tolist(), strict=True)):
            if x != y:
                allowed = 2 * (tolerance.atol + tolerance.rtol * abs(mine[x]))
                if abs(mine[x] - mine[y]) > allowed:
                    raise AssertionError(
                        f"row {row}, position {n}: item {x} against {y}, scores {mine[x]:.6g} and "
                        f"{mine[y]:.6g} not tied within {allowed:.3g}"
                    )


def attributed(attributor) -> Tolerance:
    """Cosines an ``Attributor`` returns for image + prompt queries computed two ways (joined with other queries
    or alone, ONNX Runtime or torch): the query features within its encoders' chain bounds (ε_f, relative), the
    embedding within the ranker's besides (ε_r, gain of order one), so a cosine of unit vectors within
    2(ε_f + ε_r), plus its product's and normalisations' rounding over the widest of the embedding and the
    spec's parts (an untuned baseline's cosine is taken over one part)."""
    encoders = attributor.embedder.encoders
    drift = sum(
        network(e.model, 1.0).atol for e in encoders if getattr(e, "model", None) is not None
    )
    drift += network(attributor.ranker, 1.0).atol
    width = max([attributor.ranker.embedding_dim] + [e.dim for e in encoders])
    return (
        Tolerance(2 * drift, why="encoders' and ranker's chain bounds, 2 per side")
        + sums(width, 1.0) * 3
    )


def assert_same_top_k(ids, scores, other_ids, other_scores, tolerance: Tolerance) -> None:
    """Two top-k answers (ids best first, with scores) of one query computed two ways agree up to rounding: the
    shared items rank alike (``assert_same_ranking``) and an item in one answer only is tied, within twice the
    tolerance, with the other answer's last place (it fell just outside the other's top k)."""
    scores_of = dict(zip(list(ids), list(scores), strict=True))
    other_of = dict(zip(list(other_ids), list(other_scores), strict=True))
    for item in set(scores_of) ^ set(other_of):
        score, edge = (
            (scores_of[item], min(other_of.values()))
            if item in scores_of
            else (other_of[item], min(scores_of.values()))
        )
        if score - edge > 2 * (tolerance.atol + tolerance.rtol * abs(score)):
            raise AssertionError(
                f"item {item} ({score:.6g}) in one answer only, not tied with {edge:.6g}"
            )
    shared = [i for i in ids if i in other_of]
    other_shared = sorted(shared, key=lambda i: -other_of[i])
    assert_same_ranking(
        [shared], [[scores_of[i] for i in shared]], [other_shared], [[other_of[i] for i in other_shared]],
        tolerance,
    )  # fmt: skip


def retrained(steps: int, lr: float, gradient: Tolerance) -> Tolerance:
    """A short Adam(W) run done twice from the same start on the same batches: each step's gradients may differ
    by ``gradient`` (absolute, the chain bound forward and backward, relative to the largest gradient, so
    ``gradient.atol`` is a relative error ε). To first order that moves Adam's normalised update m̂/√v̂ (of size at
    most about one) by 2ε, numerator and denominator, so each weight by 2ε·lr per step, over ``steps`` steps
    (the learning rate's peak bounds every step's)."""
    return Tolerance(
        2 * steps * lr * gradient.atol, why=f"{steps} Adam steps x 2·lr={lr:g} x ({gradient.why})"
    )


def _as_arrays(actual, expected) -> tuple[np.ndarray, np.ndarray]:
    def array(x):
        if hasattr(x, "detach"):
            x = x.detach().cpu().double().numpy()
        return np.asarray(x, dtype=np.float64)

    return array(actual), array(expected)


def used(actual, expected, tolerance: Tolerance) -> float:
    """The largest share of the tolerance any element uses: |actual − expected| / (atol + rtol·|expected|)."""
    a, e = _as_arrays(actual, expected)
    if a.shape != e.shape:
        a, e = np.broadcast_arrays(a, e)
    allowed = tolerance.atol + tolerance.rtol * np.abs(e)
    both_inf = np.isinf(a) & np.isinf(e) & (np.sign(a) == np.sign(e))
    both_nan = np.isnan(a) & np.isnan(e)
    diff = np.where(both_inf | both_nan, 0.0, np.abs(a - e))
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(diff == 0, 0.0, diff / allowed)
    return float(np.nanmax(np.where(np.isnan(share), np.inf, share))) if share.size else 0.0


def _record(kind: str, share: float, tolerance: Tolerance) -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    caller = next(f for f in inspect.stack() if Path(f.filename).name != "_tolerance.py")
    entry = {
        "test": os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0],
        "where": f"{Path(caller.filename).name}:{caller.lineno}",
        "kind": kind,
        "share": share,
        "why": tolerance.why,
    }
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")


def assert_close(actual, expected, tolerance: Tolerance, what: str = "") -> None:
    """Fail unless every element of ``actual`` lies within ``tolerance`` of ``expected``."""
    share = used(actual, expected, tolerance)
    _record("close", share, tolerance)
    if share > 1:
        a, e = _as_arrays(actual, expected)
        worst = float(np.nanmax(np.abs(a - e))) if a.size else 0.0
        raise AssertionError(
            f"{what + ': ' if what else ''}differs by up to {worst:.3g}, {share:.2f} times the tolerance "
            f"(atol {tolerance.atol:.3g}, rtol {tolerance.rtol:.3g}: {tolerance.why})"
        )


def apart(actual, expected, tolerance: Tolerance) -> bool:
    """Whether some element lies beyond ``tolerance``: for checks that two results must differ (another seed,
    another weight). The log records the reciprocal of the share used, so here too a small share is a wide
    margin."""
    share = used(actual, expected, tolerance)
    _record("apart", 1 / share if share > 0 else math.inf, tolerance)
    return share > 1
