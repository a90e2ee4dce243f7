"""verify_elbo_gradient(mode='statistical'): unbiasedness t-tests of gradient estimates.

Each coordinate of the user's estimate is t-tested on batch means against the exact
gradient, Bonferroni-corrected over all coordinates and problems. On a failure the
suspects consistent with the biased means are run past an independent problem (its
own calls, seeded from the verifier's seed): a suspect is named only when it is
consistent on both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.stats
from numpy.typing import NDArray

from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ._diagnosis import Suspect
from ._forms import ElboForm
from ._gradient_cases import _Case, _legacy_case, _param_case, repeated_caller
from ._gradient_diagnosis import independent_gradient_problems
from ._options import BATCHES
from ._parametrisations import Parametrisation
from ._progress import BudgetReached
from ._report import VerificationReport, _diagnosis
from ._statistics import _batch_t, _repeated_calls

__all__ = ["verify_statistical_gradient"]

FloatArray = NDArray[np.float64]
Problem = tuple[LinearGaussianModel, Gaussian, FloatArray]


def verify_statistical_gradient(
    fn: Callable[..., Any],
    par: Parametrisation | None,
    form: ElboForm,
    *,
    label: str,
    seed: int,
    problems: Sequence[Problem],
    calls: int,
    n_samples: int,
    false_alarm_rate: float,
    rtol: float,
    atol: float,
) -> VerificationReport:
    """The statistical mode on the given problems (see :func:`verify_elbo_gradient`)."""
    suspects = form.gradient_suspects()

    def prepare(model: LinearGaussianModel, q: Gaussian, x: FloatArray) -> _Case:
        if par is None:
            return _legacy_case(model, q, x, suspects)
        return _param_case(par, model, q, x, suspects)

    def means(case: _Case, stream: list[int]) -> tuple[FloatArray, FloatArray, FloatArray]:
        draws = _repeated_calls(
            "verify_elbo_gradient",
            repeated_caller(fn, case.point),
            case.convert,
            (case.model, case.q, case.x, n_samples),
            stream,
            calls,
        )
        return _batch_t(draws, case.expected)

    count = len(problems)
    cases = [prepare(*problem) for problem in problems]
    comparisons = sum(case.expected.size for case in cases)
    critical = float(scipy.stats.t.isf(false_alarm_rate / (2 * comparisons), BATCHES - 1))
    worst = 0.0
    for index, case in enumerate(cases):
        expected = case.expected
        mean, standard_error, t = means(case, [seed, 78, index])
        # Spread below the deterministic tolerance is rounding, not randomness (BLAS may
        # round a repeated computation differently): such coordinates, and any whose
        # bias is within that tolerance, are judged as deterministic values.
        tolerance = case.tolerance(rtol, atol)
        constant = standard_error <= tolerance
        exact_bad = constant & (np.abs(mean - expected) > tolerance)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(
                constant | (np.abs(mean - expected) <= tolerance), 0.0, np.abs(t) / critical
            )
        worst = max(worst, float(np.max(ratio)))
        if np.any(ratio > 1.0) or np.any(exact_bad) or not np.all(np.isfinite(mean)):
            rows = [
                f"    {name:>12s}: exact {expected[i]: .6g}, mean {mean[i]: .6g} "
                f"+- {standard_error[i]:.2g} (t = {t[i]:.3g})"
                + ("  <-- biased" if ratio[i] > 1.0 or exact_bad[i] else "")
                + ("" if free else "  (not a parameter: must be 0)")
                for i, (name, free) in enumerate(case.names)
            ]
            allowance = critical * standard_error + tolerance
            found = [s for s in case.suspects if _predicts(s, case, mean, allowance)]
            if found:
                found = _confirmed(
                    found, case, prepare, means, [seed, 79, index], critical, (rtol, atol)
                )
            rows.append(_diagnosis(found, "see the coordinates marked 'biased'"))
            raise AssertionError(
                f"{label} failed: biased coordinates (seed="
                f"{seed}, problem {index + 1} of {count}; critical |t| = {critical:.3g} "
                f"for false-alarm rate {false_alarm_rate:g} over {comparisons} coordinates)\n"
                + f"  form: {form.describe()}\n"
                + case.describe()
                + "\n"
                + "\n".join(rows)
            )
    return VerificationReport(
        check=label,
        cases=count,
        worst_error=worst,
        tolerance=f"|t| <= {critical:.3g} per coordinate (false-alarm rate {false_alarm_rate:g})",
        seed=seed,
        details={
            "calls": calls,
            "n_samples": n_samples,
            "critical_t": critical,
            "form": form.name,
        },
    )


def _predicts(suspect: Suspect, case: _Case, mean: FloatArray, allowance: FloatArray) -> bool:
    try:
        predicted = suspect.predict(*case.arguments)
    except (ValueError, np.linalg.LinAlgError, FloatingPointError, ZeroDivisionError):
        return False
    if predicted is None:
        return False
    values = np.asarray(predicted, dtype=np.float64)
    return bool(np.all(np.isfinite(values)) and np.all(np.abs(mean - values) <= allowance))


def _confirmed(
    found: list[Suspect],
    case: _Case,
    prepare: Callable[[LinearGaussianModel, Gaussian, FloatArray], _Case],
    means: Callable[[_Case, list[int]], tuple[FloatArray, FloatArray, FloatArray]],
    stream: list[int],
    critical: float,
    tolerances: tuple[float, float],
) -> list[Suspect]:
    """The suspects in ``found`` that are also consistent with ``fn``'s mean on an
    independent problem (same dimensions, noise, prior and q kinds)."""
    (problem,) = independent_gradient_problems(case.model, case.q, 1)
    try:
        other = prepare(*problem)
        mean, standard_error, _ = means(other, stream)
    except (AssertionError, BudgetReached, ValueError):
        return []  # fn failed or the budget ran out: name nothing rather than guess
    allowance = critical * standard_error + other.tolerance(*tolerances)
    return [s for s in found if _predicts(s, other, mean, allowance)]
