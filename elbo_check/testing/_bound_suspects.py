"""The catalogue of bugs in multi-sample bound estimators (IWAE and Rényi).

Each suspect is the estimate a bug computes from the same ``n`` log weights
:math:`\\ell_k = \\log p(x, z_k) - \\log q(z_k)` as the correct one, so it can be
evaluated on the verifier's own draws (statistical mode: its whole distribution) or at
the user's noise (pathwise mode: its exact value).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.special
from numpy.typing import NDArray

from ._bound_reference import COEFFICIENTS, Coefficients, normalised_weights, renyi_estimates

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class BoundSuspect:
    """A known bug of a bound estimator: its name, the fix, and the estimate it gives
    from log weights of shape ``(..., n)``."""

    name: str
    advice: str
    estimate: Callable[[FloatArray], FloatArray]


def _bound_name(alpha: float) -> str:
    return "IWAE" if alpha == 0.0 else f"Rényi (alpha={alpha:g})"


def _log_sum_exp(alpha: float) -> Callable[[FloatArray], FloatArray]:
    def estimate(log_w: FloatArray) -> FloatArray:
        return np.asarray(scipy.special.logsumexp((1.0 - alpha) * log_w, axis=-1) / (1.0 - alpha))

    return estimate


def _at_alpha(alpha: float) -> Callable[[FloatArray], FloatArray]:
    return lambda log_w: renyi_estimates(log_w, alpha)


def _unscaled(alpha: float) -> Callable[[FloatArray], FloatArray]:
    def estimate(log_w: FloatArray) -> FloatArray:
        n = log_w.shape[-1]
        return np.asarray(scipy.special.logsumexp((1.0 - alpha) * log_w, axis=-1) - math.log(n))

    return estimate


def bound_suspects(alpha: float, n: int) -> list[BoundSuspect]:
    """The suspects for the estimator of ``alpha`` with ``n`` samples, each distinct
    from the correct estimate (suspects that coincide with it for this ``alpha`` or
    ``n`` are left out)."""
    bound = _bound_name(alpha)
    out: list[BoundSuspect] = []
    others: dict[float, tuple[str, str]] = {}
    if alpha != 1.0:
        if n > 1:
            out.append(
                BoundSuspect(
                    "the -log n of the log-mean-exp is missing (log-sum-exp of the log weights)",
                    f"the {bound} estimate averages the weights: subtract log(n) after the "
                    "log-sum-exp, inside the 1/(1 - alpha) factor",
                    _log_sum_exp(alpha),
                )
            )
            out.append(
                BoundSuspect(
                    "the mean of the log weights (the ELBO estimate) instead of the log of "
                    "the mean of the weights",
                    "apply the log-mean-exp to the n log weights of each observation; "
                    "averaging log weights gives the ELBO for every n",
                    lambda log_w: np.asarray(np.mean(log_w, axis=-1)),
                )
            )
            out.append(
                BoundSuspect(
                    "the largest log weight instead of the log-mean-exp",
                    "use logsumexp(log_w) - log(n), not max(log_w)",
                    lambda log_w: np.asarray(np.max(log_w, axis=-1)),
                )
            )
            out.append(
                BoundSuspect(
                    "only one of the n samples is used",
                    "every sample's log weight enters the log-mean-exp",
                    lambda log_w: np.asarray(log_w[..., 0]),
                )
            )
        others[2.0 - alpha] = (
            "the log-mean-exp is applied to the losses -log w instead of the log weights",
            "take logsumexp of log p(x, z_k) - log q(z_k), not of their negatives",
        )
        if alpha != 0.0:
            out.append(
                BoundSuspect(
                    "the 1/(1 - alpha) factor is missing",
                    "divide the log-mean-exp of (1 - alpha) log w by (1 - alpha)",
                    _unscaled(alpha),
                )
            )
            others[-alpha] = (
                f"alpha has the wrong sign (the estimate of L_{-alpha:g})",
                "the exponent is (1 - alpha) log w and the factor 1/(1 - alpha)",
            )
            others[1.0 - alpha] = (
                f"alpha is used where 1 - alpha belongs (the estimate of L_{1 - alpha:g})",
                "the exponent is (1 - alpha) log w and the factor 1/(1 - alpha)",
            )
    out.append(
        BoundSuspect(
            "the negated estimate: the loss"
            + (" or a factor 1/(alpha - 1) in place of 1/(1 - alpha)" if alpha != 0.0 else ""),
            f"return the {bound} bound estimate itself; its negative is the loss to minimise",
            lambda log_w: -renyi_estimates(log_w, alpha),
        )
    )
    for other, (name, advice) in others.items():
        if other != alpha and n != 1:
            out.append(BoundSuspect(name, advice, _at_alpha(other)))
    return out


# ---------------------------------------------------------------------- gradients
@dataclass(frozen=True)
class GradientSuspect:
    """A known bug of a bound's gradient estimator, as coefficients of the per-sample
    path terms and scores (see :func:`._bound_reference.combine`)."""

    name: str
    advice: str
    coefficients: Coefficients


def _surrogate_not_detached(log_w: FloatArray, alpha: float) -> tuple[FloatArray, FloatArray]:
    # d/dphi of sum_k w_k log w_k with the normalised weights w_k differentiated too
    weights = normalised_weights(log_w, alpha)
    centred = log_w - np.sum(weights * log_w, axis=-1, keepdims=True)
    coef = weights * (1.0 + (1.0 - alpha) * centred)
    return coef, -coef


def _dreg_not_detached(log_w: FloatArray, alpha: float) -> tuple[FloatArray, FloatArray]:
    # d/dphi of sum_k w_k^2 log w_k along the path, the squared weights differentiated too
    weights = normalised_weights(log_w, alpha)
    spread = np.sum(log_w * weights**2, axis=-1, keepdims=True)
    coef = weights**2 + 2.0 * log_w * weights**2 - 2.0 * weights * spread
    return coef, np.zeros_like(coef)


def _dreg_score_kept(log_w: FloatArray, alpha: float) -> tuple[FloatArray, FloatArray]:
    # sum_k w_k^2 log w_k differentiated with q's parameters live in log q(z_k)
    squared = normalised_weights(log_w, alpha) ** 2
    return squared, -squared


def _uniform(log_w: FloatArray, alpha: float) -> tuple[FloatArray, FloatArray]:
    weights = np.full_like(log_w, 1.0 / log_w.shape[-1])
    return weights, -weights


def _vimco_without_baseline(log_w: FloatArray, alpha: float) -> tuple[FloatArray, FloatArray]:
    weights = normalised_weights(log_w, alpha)
    full = scipy.special.logsumexp(log_w, axis=-1, keepdims=True) - math.log(log_w.shape[-1])
    return np.zeros_like(weights), full - weights


def _vimco_score_only(log_w: FloatArray, alpha: float) -> tuple[FloatArray, FloatArray]:
    weights = normalised_weights(log_w, alpha)
    return np.zeros_like(weights), -weights


def _with_alpha(name: str, alpha: float) -> Coefficients:
    base = COEFFICIENTS[name]
    return lambda log_w, _alpha: base(log_w, alpha)


def gradient_suspects(estimator: str, alpha: float, n: int) -> list[GradientSuspect]:
    """The suspects for ``estimator`` of the bound of ``alpha`` with ``n`` samples
    (those that coincide with the estimator itself for this ``n`` left out)."""
    out: list[GradientSuspect] = []
    if n == 1:
        return out
    stl_name = "sticking-the-landing (STL) gradient, biased for k > 1"
    if estimator == "reparameterised":
        out.append(
            GradientSuspect(
                "the importance weights are not detached in the surrogate "
                "sum_k w_k log w_k (their own gradient is added)",
                "detach the normalised weights (or differentiate the log-mean-exp itself)",
                _surrogate_not_detached,
            )
        )
        out.append(
            GradientSuspect(
                f"q's parameters are detached in log q(z): the {stl_name}",
                "keep q's parameters in log q(z_k) for the reparameterised gradient, or "
                "check the STL estimator as estimator='stl'",
                COEFFICIENTS["stl"],
            )
        )
    if estimator in ("stl", "dreg"):
        out.append(
            GradientSuspect(
                "q's parameters are not detached in log q(z) (the score term is kept"
                + (": the plain reparameterised gradient)" if estimator == "stl" else ")"),
                "evaluate log q(z_k) with detached copies of q's parameters; only the path "
                "through z_k = m + L eps_k is differentiated",
                COEFFICIENTS["reparameterised"] if estimator == "stl" else _dreg_score_kept,
            )
        )
    if estimator == "dreg":
        out.append(
            GradientSuspect(
                f"the DReG weights are not squared: the {stl_name}",
                "weight each path term by the squared normalised weight",
                COEFFICIENTS["stl"],
            )
        )
        out.append(
            GradientSuspect(
                "the squared DReG weights are not detached",
                "detach the squared normalised weights: only log w_k is differentiated "
                "along the path",
                _dreg_not_detached,
            )
        )
    if estimator == "vimco":
        out.append(
            GradientSuspect(
                "VIMCO without its leave-one-out baseline",
                "subtract, for each sample, the estimate with its log weight replaced by "
                "the mean of the others",
                _vimco_without_baseline,
            )
        )
        out.append(
            GradientSuspect(
                "VIMCO's learning signal is missing (only the weighted scores remain)",
                "add sum_k (L - L_{-k}) grad log q(z_k)",
                _vimco_score_only,
            )
        )
    if estimator in ("reparameterised", "stl"):
        out.append(
            GradientSuspect(
                "the gradient of the mean log weight (the ELBO's) instead of the bound's",
                "weight each sample's gradient by its normalised importance weight",
                _uniform if estimator == "reparameterised" else _uniform_path,
            )
        )
        if alpha not in (0.0, 1.0):
            out.append(
                GradientSuspect(
                    "the weights ignore alpha (softmax of the log weights: the IWAE gradient)",
                    "normalise exp((1 - alpha) log w_k), not exp(log w_k)",
                    _with_alpha(estimator, 0.0),
                )
            )
    return out


def _uniform_path(log_w: FloatArray, alpha: float) -> tuple[FloatArray, FloatArray]:
    weights = np.full_like(log_w, 1.0 / log_w.shape[-1])
    return weights, np.zeros_like(weights)
