"""verify_elbo_gradient: exact and stochastic gradients in (m, L)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.stats
from numpy.typing import NDArray

from .._errors import InvalidInputError
from .._gaussian import Gaussian
from ..strategies import (
    ElboProblem,
    elbo_problems,
)
from ._diagnosis import match_suspects
from ._limits import _single_blas_thread
from ._options import (
    BATCHES,
    DEFAULT_FALSE_ALARM_RATE,
    _check_callable,
    _check_rate,
    _profile,
    _seed,
    check_count,
    check_tolerance,
)
from ._problems import (
    _flat_gradient,
    _flatten,
    _statistical_problems,
)
from ._report import (
    VerificationReport,
    _describe_gaussian,
    _describe_model,
    _diagnosis,
    _fmt,
)
from ._returns import invoke, to_array
from ._searching import _deterministic_check
from ._statistics import _batch_t, _repeated_calls, _statistical_budget
from ._suspects import (
    _gradient_suspects,
)

FloatArray = NDArray[np.float64]


# ---------------------------------------------------------------------- gradients
def _gradient_pair(value: Any, k: int) -> tuple[FloatArray, FloatArray]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise InvalidInputError(
            f"fn must return a pair (grad_mean, grad_scale_tril); got {type(value).__name__}"
        )
    grad_mean = to_array(value[0], "grad_mean").reshape(-1)
    grad_factor = to_array(value[1], "grad_scale_tril")
    if grad_mean.shape != (k,) or grad_factor.shape != (k, k):
        raise InvalidInputError(
            f"fn must return grad_mean of shape ({k},) and grad_scale_tril of shape ({k}, {k}); "
            f"got {grad_mean.shape} and {grad_factor.shape}"
        )
    return grad_mean, np.tril(grad_factor)


def _flat_gradient_pair(value: Any, k: int) -> FloatArray:
    """A user's ``(grad_mean, grad_scale_tril)`` as one vector (lower triangle only)."""
    return _flatten(_gradient_pair(value, k))


@_single_blas_thread
def verify_elbo_gradient(
    fn: Callable[..., Any],
    *,
    mode: str = "exact",
    seed: int | np.random.Generator | None = None,
    n_samples: int = 8,
    calls: int | None = None,
    problems: int | None = None,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    profile: str | None = None,
    max_examples: int | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    **model_options: Any,
) -> VerificationReport:
    r"""Check gradients of the ELBO with respect to q's mean ``m`` and Cholesky factor ``L``.

    ``mode="exact"``: ``fn(model, q, x) -> (grad_mean, grad_scale_tril)`` is compared
    with the closed form (entries above the diagonal of ``grad_scale_tril`` are not
    parameters and are ignored) within ``rtol * (|g| + 1) + atol`` in the max norm;
    hypothesis shrinks a mismatch to a minimal example.

    ``mode="stochastic"``: ``fn(model, q, x, rng, n_samples) -> (grad_mean,
    grad_scale_tril)`` must be an unbiased estimate (reparameterisation, score
    function, ...). Each of the ``K + K(K+1)/2`` coordinates is t-tested on batch
    means as in :func:`verify_elbo_estimator`, Bonferroni-corrected over all
    coordinates and problems, so a correct estimator fails a call with probability at
    most ``false_alarm_rate``.
    """
    __tracebackhide__ = True
    _check_callable(fn)
    _check_rate(false_alarm_rate)
    chosen = _profile(profile)
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    seed_value = _seed(seed)
    if mode == "exact":
        return _verify_exact_gradient(
            fn,
            seed_value,
            check_count("max_examples", max_examples, chosen["max_examples"]),
            rtol,
            atol,
            model_options,
        )
    if mode != "stochastic":
        raise InvalidInputError(f"mode must be 'exact' or 'stochastic'; got mode={mode!r}")
    total_calls, count = _statistical_budget(chosen, calls, problems, n_samples)
    cases = _statistical_problems(seed_value, count, model_options)
    comparisons = sum(q.dim + q.dim * (q.dim + 1) // 2 for _, q, _ in cases)
    critical = float(scipy.stats.t.isf(false_alarm_rate / (2 * comparisons), BATCHES - 1))
    worst = 0.0
    for index, (model, q, x) in enumerate(cases):
        expected = _flat_gradient(model, q, x)
        draws = _repeated_calls(
            "verify_elbo_gradient",
            fn,
            functools.partial(_flat_gradient_pair, k=q.dim),
            (model, q, x, n_samples),
            [seed_value, 78, index],
            total_calls,
        )
        mean, standard_error, t = _batch_t(draws, expected)
        # Spread below the deterministic tolerance is rounding, not randomness (BLAS may
        # round a repeated computation differently): such coordinates, and any whose
        # bias is within that tolerance, are judged as deterministic values.
        tolerance = rtol * (np.abs(expected) + 1.0) + atol
        constant = standard_error <= tolerance
        exact_bad = constant & (np.abs(mean - expected) > tolerance)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(
                constant | (np.abs(mean - expected) <= tolerance), 0.0, np.abs(t) / critical
            )
        worst = max(worst, float(np.max(ratio)))
        if np.any(ratio > 1.0) or np.any(exact_bad) or not np.all(np.isfinite(mean)):
            names = _coordinate_names(q.dim)
            rows = [
                f"    {names[i]:>12s}: exact {expected[i]: .6g}, mean {mean[i]: .6g} "
                f"+- {standard_error[i]:.2g} (t = {t[i]:.3g})"
                + ("  <-- biased" if ratio[i] > 1.0 or exact_bad[i] else "")
                for i in range(expected.size)
            ]
            allowance = critical * standard_error + tolerance
            suspects = [
                suspect
                for suspect in _gradient_suspects()
                if np.all(np.abs(mean - suspect.predict(model, q, x)) <= allowance)
            ]
            rows.append(_diagnosis(suspects, "see the coordinates marked 'biased'"))
            raise AssertionError(
                f"verify_elbo_gradient(mode='stochastic') failed: biased coordinates (seed="
                f"{seed_value}, problem {index + 1} of {count}; critical |t| = {critical:.3g} "
                f"for false-alarm rate {false_alarm_rate:g} over {comparisons} coordinates)\n"
                + _describe_model(model)
                + "\n"
                + _describe_gaussian("q", q)
                + f"\n  x = {_fmt(x)}\n"
                + "\n".join(rows)
            )
    return VerificationReport(
        check="verify_elbo_gradient(mode='stochastic')",
        cases=count,
        worst_error=worst,
        tolerance=f"|t| <= {critical:.3g} per coordinate (false-alarm rate {false_alarm_rate:g})",
        seed=seed_value,
        details={"calls": total_calls, "n_samples": n_samples, "critical_t": critical},
    )


def _coordinate_names(k: int) -> list[str]:
    rows, cols = np.tril_indices(k)
    return [f"mean[{i}]" for i in range(k)] + [
        f"L[{i},{j}]" for i, j in zip(rows, cols, strict=True)
    ]


def _verify_exact_gradient(
    fn: Callable[..., Any],
    seed: int,
    max_examples: int,
    rtol: float,
    atol: float,
    model_options: dict[str, Any],
) -> VerificationReport:
    def compare(p: ElboProblem) -> tuple[FloatArray, FloatArray, FloatArray]:
        got = _flat_gradient_pair(invoke(fn, p.model, p.q, p.x), p.model.latent_dim)
        expected = _flat_gradient(p.model, p.q, p.x)
        return got, expected, rtol * (np.abs(expected) + 1.0) + atol

    def evaluate(p: ElboProblem) -> tuple[float, float, float]:
        got, expected, tolerance = compare(p)
        return float(np.max(np.abs(got - expected) / tolerance)), 0.0, 1.0

    def explain(
        p: ElboProblem, got: float, expected: float, tol: float, error: BaseException | None
    ) -> str:
        parts = [_describe_model(p.model), _describe_gaussian("q", p.q), f"  x = {_fmt(p.x)}"]
        if error is None:
            g, e, tolerance = compare(p)
            names = _coordinate_names(p.model.latent_dim)
            parts += [
                f"    {names[i]:>12s}: expected {e[i]: .10g}, got {g[i]: .10g}, "
                f"gap {g[i] - e[i]:.3g}" + ("  <-- off" if abs(g[i] - e[i]) > tolerance[i] else "")
                for i in range(e.size)
            ]
            probes = []
            for qq in (p.q, Gaussian._trusted(p.q.mean + 0.5, p.q.scale_tril * 1.3)):
                try:
                    value = _flat_gradient_pair(invoke(fn, p.model, qq, p.x), p.model.latent_dim)
                except Exception:
                    continue
                exact = _flat_gradient(p.model, qq, p.x)
                probes.append(((p.model, qq, p.x), value, exact, rtol * (np.abs(exact) + 1) + atol))
            found = match_suspects(_gradient_suspects(), probes)
            parts.append(_diagnosis(found, "see the coordinates marked 'off'"))
        return "\n".join(parts)

    return _deterministic_check(
        name="verify_elbo_gradient",
        strategy=elbo_problems(**model_options),
        evaluate=evaluate,
        explain=explain,
        seed=seed,
        max_examples=max_examples,
        tolerance_text=f"|got - exact| <= rtol={rtol:g} * (|exact| + 1) + atol={atol:g} per entry",
    )
