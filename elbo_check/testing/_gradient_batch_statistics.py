"""verify_elbo_gradient(mode='statistical', batch_size=B): unbiasedness t-tests of a
minibatch's gradient estimates.

``fn(model, q, x, rng, n_samples)`` receives a batch (see :mod:`._gradient_batches`)
and returns every member's gradient estimate, with a leading batch axis. Each
coordinate of each member is t-tested on batch means against the member's exact
gradient, Bonferroni-corrected over all coordinates of all members of all batches, so
a correct estimator fails a call with probability at most ``false_alarm_rate`` (up to
the normal approximation of batch means). The verifier's own batches grow each of its
realistic problems (q near the posterior) into ``B`` observations of its model, each
with its own q of the same covariance kind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.stats
from numpy.typing import NDArray

from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ._batching import member
from ._calls import _BATCH_AXIS_HINT
from ._forms import ElboForm
from ._gradient_batches import (
    _Batch,
    _batch_mean,
    _interaction_text,
    packed_fn,
)
from ._gradient_cases import _Case, _legacy_case, _param_case, repeated_caller
from ._gradient_statistics import _confirmed, _predicts
from ._options import BATCHES
from ._parametrisations import Parametrisation
from ._progress import BudgetReached
from ._report import VerificationReport, _describe_model, _diagnosis
from ._returns import BadReturn, InputMutated
from ._statistics import _batch_t, _repeated_calls

__all__ = ["verify_batched_statistical"]

FloatArray = NDArray[np.float64]
Triple = tuple[LinearGaussianModel, Gaussian, FloatArray]


# ---------------------------------------------------------------------- statistical
def verify_batched_statistical(
    fn: Callable[..., Any],
    par: Parametrisation | None,
    form: ElboForm,
    size: int,
    *,
    label: str,
    seed: int,
    batches: Sequence[Triple],
    calls: int,
    n_samples: int,
    false_alarm_rate: float,
    rtol: float,
    atol: float,
) -> VerificationReport:
    """Per-coordinate t-tests of every member's mean gradient estimate, Bonferroni-
    corrected over all coordinates of all members of all batches."""
    suspects = form.gradient_suspects()

    def prepare(model: LinearGaussianModel, q: Gaussian, x: FloatArray) -> _Case:
        if par is None:
            return _legacy_case(model, q, x, suspects)
        return _param_case(par, model, q, x, suspects)

    prepared = [
        _Batch(par, [prepare(m, member(q, b), np.array(x[b])) for b in range(size)])
        for m, q, x in batches
    ]
    comparisons = sum(batch.expected.size for batch in prepared)
    critical = float(scipy.stats.t.isf(false_alarm_rate / (2 * comparisons), BATCHES - 1))

    def estimates(batch: _Batch, stream: list[int]) -> FloatArray:
        """``calls`` rows of the batch's flat coordinates ``(B * C)``."""
        return _repeated_calls(
            label,
            repeated_caller(fn, batch.point),
            lambda value: batch.convert(value).reshape(-1),
            (batch.model, batch.q, batch.x, n_samples),
            stream,
            calls,
        )

    worst = 0.0
    for index, batch in enumerate(prepared):
        expected, tolerance = batch.expected, batch.tolerance(rtol, atol)
        head = f"{label} failed (seed={seed}, batch {index + 1} of {len(prepared)})"
        try:
            draws = estimates(batch, [seed, 78, index])
        except AssertionError as err:
            if not isinstance(err.__cause__, BadReturn) or isinstance(err.__cause__, InputMutated):
                raise  # fn raised, or edited an input: reported as such, with the batch
            raise AssertionError(
                f"{head}: {err.__cause__}\n"
                + "\n".join([_describe_model(batch.model), batch.shapes(), _BATCH_AXIS_HINT])
            ) from err.__cause__
        mean, standard_error, t = (
            v.reshape(expected.shape) for v in _batch_t(draws, expected.reshape(-1))
        )
        # As unbatched: a spread below the deterministic tolerance is rounding, and such
        # coordinates (and any whose bias is within that tolerance) are judged as values.
        gap = np.abs(mean - expected)
        constant = standard_error <= tolerance
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(constant | (gap <= tolerance), 0.0, np.abs(t) / critical)
        ratio = np.where(constant & ~(gap <= tolerance), np.inf, ratio)
        ratio = np.where(np.isfinite(mean) & ~np.isnan(ratio), ratio, np.inf)
        per_member = np.max(ratio, axis=1)
        worst = max(worst, float(np.max(per_member)))
        if not np.any(per_member > 1.0):
            continue
        i = int(np.argmax(per_member))
        case = batch.members[i]
        failing = int(np.count_nonzero(per_member > 1.0))
        rows = [
            f"    {name:>12s}: exact {expected[i, j]: .6g}, mean {mean[i, j]: .6g} "
            f"+- {standard_error[i, j]:.2g} (t = {t[i, j]:.3g})"
            + ("  <-- biased" if ratio[i, j] > 1.0 else "")
            + ("" if free else "  (not a parameter: must be 0)")
            for j, (name, free) in enumerate(case.names)
        ]
        allowance = critical * standard_error + tolerance
        found = _batch_mean(mean, expected, allowance, size)
        if found is None:
            found = _statistical_interaction(
                fn,
                batch,
                i,
                (mean[i], standard_error[i]),
                critical,
                tolerance[i],
                estimates,
                [seed, 79, index],
            )
        if found is None:
            unbatched = packed_fn(fn, par, size, i)

            def means(
                other: _Case, stream: list[int], unbatched: Any = unbatched
            ) -> tuple[FloatArray, FloatArray, FloatArray]:
                draws = _repeated_calls(
                    label,
                    repeated_caller(unbatched, other.point),
                    other.convert,
                    (other.model, other.q, other.x, n_samples),
                    stream,
                    calls,
                )
                return _batch_t(draws, other.expected)

            named = [s for s in case.suspects if _predicts(s, case, mean[i], allowance[i])]
            if named:
                named = _confirmed(
                    named, case, prepare, means, [seed, 80, index], critical, (rtol, atol)
                )
            found = _diagnosis(named, "see the coordinates marked 'biased'")
        raise AssertionError(
            f"{head}: member {i} of the batch of {size} ({failing} of {size} members have "
            f"biased coordinates; critical |t| = {critical:.3g} for false-alarm rate "
            f"{false_alarm_rate:g} over {comparisons} coordinates)\n"
            + f"  form: {form.describe()}\n"
            + case.describe()
            + "\n"
            + "\n".join(rows)
            + "\n"
            + found
        )
    return VerificationReport(
        check=label,
        cases=len(prepared),
        worst_error=worst,
        tolerance=(
            f"|t| <= {critical:.3g} per coordinate of every member (false-alarm rate "
            f"{false_alarm_rate:g} over {comparisons} coordinates)"
        ),
        seed=seed,
        details={
            "calls": calls,
            "n_samples": n_samples,
            "critical_t": critical,
            "form": form.name,
            "batch_size": size,
            "members": size * len(prepared),
        },
    )


def _statistical_interaction(
    fn: Callable[..., Any],
    batch: _Batch,
    i: int,
    seen: tuple[FloatArray, FloatArray],
    critical: float,
    tolerance: FloatArray,
    estimates: Callable[[_Batch, list[int]], FloatArray],
    stream: list[int],
) -> str | None:
    """A diagnosis if member ``i``'s mean gradient changes when its batch-mates are
    copies of it: a two-sample t-test of every coordinate at the verdict's level."""
    size = batch.size
    if size == 1:
        return None
    copies = _Batch(batch.par, [batch.members[i]] * size)
    try:
        draws = estimates(copies, stream)
    except (AssertionError, BudgetReached):
        return None  # fn failed among copies, or the budget ran out: name nothing
    expected = copies.expected
    alone, alone_error, _ = (
        v.reshape(expected.shape)[i] for v in _batch_t(draws, expected.reshape(-1))
    )
    mean, standard_error = seen
    change = np.abs(alone - mean)
    spread = np.hypot(standard_error, alone_error)
    if np.all(change <= critical * spread + tolerance):
        return None
    return _interaction_text(
        batch.members[i], mean, [(f"in a batch of {size} copies of it", alone)], change
    )
