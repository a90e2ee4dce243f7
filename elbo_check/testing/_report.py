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

    ``str(report)`` is a one-line summary.

    Attributes
    ----------
    check : str
        The verifier call, e.g. ``"verify_elbo"``.
    cases : int
        Hypothesis cases tried (deterministic checks) or problems tested (statistical
        checks).
    worst_error : float
        The largest error seen relative to what is allowed: ``|got - expected| /
        tolerance`` for deterministic checks, ``|t| / critical value`` for statistical
        ones; at most 1 when the check passes.
    tolerance : str
        The tolerance in words.
    seed : int
        The seed the check ran with; pass it back to repeat the run.
    details : dict
        Further numbers of the check (e.g. ``calls`` and ``critical_t``).
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
