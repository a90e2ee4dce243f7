"""What a verifier returns on success, and the text of its failures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ._diagnosis import Suspect

FloatArray = NDArray[np.float64]


# ---------------------------------------------------------------------- reports
@dataclass(frozen=True)
class VerificationReport:
    """What a verifier checked, on how many cases, and the worst error it saw.

    Every ``verify_*`` function returns one when its check passes (a failing check
    raises :class:`AssertionError` instead). ``str(report)`` is a one-line summary; the
    parameters below are also the report's attributes. A report is immutable.

    Parameters
    ----------
    check : str
        The verifier call, with its mode and options when not the defaults, e.g.
        ``"verify_elbo"`` or ``"verify_elbo_gradient(mode='pathwise')"``.
    cases : int
        What was checked: the cases the hypothesis search tried or the problems of
        your sequence (deterministic checks); the problems tested, or with
        ``batch_size`` the batches (statistical checks).
    worst_error : float
        The largest error seen relative to what is allowed: ``|got - expected| /
        tolerance`` for deterministic checks (for gradients, over all entries);
        ``|t| / critical value`` for statistical ones (0 for a mean within ``rtol`` and
        ``atol`` of the target). At most 1 when the check passes; NaN when a time budget
        stopped a statistical check.
    tolerance : str
        The tolerance in words, e.g. ``"rtol=1e-06 of the term magnitudes +
        atol=1e-08"`` or ``"|t| <= 6.23 (false-alarm rate 1e-06, 800 calls x 8 samples
        per problem)"``.
    seed : int
        The seed the check ran with; pass it back as ``seed=`` to repeat the run.
    details : dict, optional
        Further facts, by check (default: none): ``"worst_error_is"`` (what
        ``worst_error`` measures); ``"calls"``, ``"n_samples"`` and ``"critical_t"``
        (statistical checks); ``"form"`` (estimator and gradient checks);
        ``"batch_size"`` and ``"members"`` (batched checks); ``"stopped_by_time_budget"``
        (the budget in seconds, when it cut the check short); ``"precision"`` (the
        dtype of your code, when the default tolerance followed it).

    Raises
    ------
    dataclasses.FrozenInstanceError
        On assignment to an attribute (:func:`dataclasses.replace` gives a changed
        copy).

    Examples
    --------
    >>> from elbo_check.testing import VerificationReport
    >>> report = VerificationReport(check="verify_elbo", cases=100, worst_error=0.0213,
    ...                             tolerance="rtol=1e-06 of the term magnitudes + atol=1e-08",
    ...                             seed=0)
    >>> print(report)  # doctest: +NORMALIZE_WHITESPACE
    verify_elbo: passed on 100 cases (seed 0); worst error 0.0213;
    tolerance rtol=1e-06 of the term magnitudes + atol=1e-08
    >>> report.cases, report.worst_error <= 1
    (100, True)
    >>> report.cases = 3
    Traceback (most recent call last):
      ...
    dataclasses.FrozenInstanceError: cannot assign to field 'cases'
    """

    check: str
    cases: int
    worst_error: float
    tolerance: str
    seed: int
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        text = (
            f"{self.check}: passed on {self.cases} cases (seed {self.seed}); worst error "
            f"{self.worst_error:.3g}; tolerance {self.tolerance}"
        )
        precision = self.details.get("precision")
        if precision is not None:
            text += f" (widened for {precision} code: see elbo_check.testing._precision)"
        budget = self.details.get("stopped_by_time_budget")
        if budget is not None:
            text += f" (stopped early by time_budget={budget:g} s: fewer cases than planned)"
        return text


# ---------------------------------------------------------------------- formatting
def _fmt(array: Any) -> str:
    values = np.asarray(array, dtype=np.float64)
    if values.ndim == 0:
        return f"{float(values):.6g}"
    return np.array2string(
        values, precision=6, separator=", ", suppress_small=False, max_line_width=88
    ).replace("\n", "\n      ")


def _describe_gaussian(name: str, g: Gaussian) -> str:
    return f"  {name}.mean = {_fmt(g.mean)}\n  {name}.cov  = {_fmt(g.cov)}"


def _describe_model(model: LinearGaussianModel) -> str:
    return "\n".join(
        [
            f"  model: D = {model.data_dim}, K = {model.latent_dim}, noise {model.noise_kind}",
            f"  weights   = {_fmt(model.weights)}",
            f"  bias      = {_fmt(model.bias)}",
            _describe_gaussian("prior", model.prior),
            f"  noise_cov = {_fmt(model.noise_cov)}",
        ]
    )


def _numbers(got: float, expected: float, tolerance: float) -> str:
    return (
        f"  expected {expected:.15g}\n  got      {got:.15g}\n"
        f"  gap (got - expected) = {got - expected:.6g}; tolerance {tolerance:.3g}"
    )


def _diagnosis(found: list[Suspect], fallback: str) -> str:
    if found:
        lines = [f"Diagnosis: {s.name}.\n  Fix: {s.advice}." for s in found[:3]]
        return "\n".join(lines)
    return f"Diagnosis: no known bug matches; {fallback}."
