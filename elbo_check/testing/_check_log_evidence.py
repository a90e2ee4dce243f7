"""verify_log_evidence: log p(x)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import strategies as st
from numpy.typing import NDArray

from .._model import LinearGaussianModel
from ..strategies import (
    linear_gaussian_models,
    observations,
)
from ._calls import (
    _call,
)
from ._diagnosis import match_suspects
from ._limits import _single_blas_thread
from ._options import (
    _check_callable,
    _profile,
    _seed,
    check_count,
    check_tolerance,
)
from ._problems import (
    _with_other_prior,
)
from ._report import (
    VerificationReport,
    _describe_model,
    _diagnosis,
    _fmt,
    _numbers,
)
from ._searching import _deterministic_check
from ._suspects import (
    EVIDENCE_SUSPECTS,
)

FloatArray = NDArray[np.float64]


# ---------------------------------------------------------------------- evidence
@_single_blas_thread
def verify_log_evidence(
    fn: Callable[[LinearGaussianModel, FloatArray], Any],
    *,
    seed: int | np.random.Generator | None = None,
    max_examples: int | None = None,
    profile: str | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    **model_options: Any,
) -> VerificationReport:
    """Check ``fn(model, x) -> float``, the log marginal likelihood log p(x) for one x.

    Tolerance: ``rtol * (|log p(x)| + D + 1) + atol``.
    """
    __tracebackhide__ = True
    _check_callable(fn)
    chosen = _profile(profile)
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    seed_value = _seed(seed)
    models = linear_gaussian_models(**model_options)
    cases = models.flatmap(lambda m: st.tuples(st.just(m), observations(m)))

    def tolerance(model: LinearGaussianModel, x: FloatArray) -> float:
        return rtol * (abs(float(model.log_evidence(x))) + model.data_dim + 1) + atol

    def evaluate(case: tuple[LinearGaussianModel, FloatArray]) -> tuple[float, float, float]:
        model, x = case
        return _call(fn, model, x), float(model.log_evidence(x)), tolerance(model, x)

    def explain(
        case: tuple[LinearGaussianModel, FloatArray],
        got: float,
        expected: float,
        tol: float,
        error: BaseException | None,
    ) -> str:
        model, x = case
        parts = [_describe_model(model), f"  x = {_fmt(x)}"]
        if error is None:
            parts.append(_numbers(got, expected, tol))
            probes = []
            variants = [(model, x), (model, x + 1.0), (model, x - 0.5 * np.arange(model.data_dim))]
            other_prior = _with_other_prior(model)
            if other_prior is not None:
                variants.append((other_prior, x))
            for mm, xx in variants:
                try:
                    value = _call(fn, mm, xx)
                except Exception:
                    continue
                probes.append(((mm, xx), value, float(mm.log_evidence(xx)), tolerance(mm, xx)))
            parts.append(
                _diagnosis(match_suspects(EVIDENCE_SUSPECTS, probes), "compare term by term")
            )
        return "\n".join(parts)

    return _deterministic_check(
        name="verify_log_evidence",
        strategy=cases,
        evaluate=evaluate,
        explain=explain,
        seed=seed_value,
        max_examples=check_count("max_examples", max_examples, chosen["max_examples"]),
        tolerance_text=f"rtol={rtol:g} of (|log p(x)| + D + 1) + atol={atol:g}",
    )
