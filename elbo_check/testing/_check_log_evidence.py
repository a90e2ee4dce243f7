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
from ._batching import as_values, check_batch_size
from ._calls import (
    _BATCH_AXIS_HINT,
    _call,
    _failing_members,
    _interaction,
    _worst_member,
    _worst_of,
)
from ._cases import as_evidence_cases
from ._diagnosis import Probe, fit_terms, match_suspects_across, rounding_suspect
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
from ._returns import invoke
from ._searching import _deterministic_check
from ._suspects import (
    EVIDENCE_SUSPECTS,
)
from ._term_fit import EVIDENCE_TERMS, evidence_context, independent_models, safe_context

FloatArray = NDArray[np.float64]


# ---------------------------------------------------------------------- evidence
def _evidence_diagnosis(
    fn: Callable[..., Any],
    model: LinearGaussianModel,
    x: FloatArray,
    tolerance: Callable[[LinearGaussianModel, FloatArray], float],
) -> str:
    """Suspects, then a term-level fit, on variations of the failing case and of two
    independent models (other dimensions, the same noise kind)."""
    groups = [[(model, x), (model, x + 1.0), (model, x - 0.5 * np.arange(model.data_dim))]]
    other_prior = _with_other_prior(model)
    if other_prior is not None:
        groups[0].append((other_prior, x))
    for other in independent_models(model):
        rng = np.random.default_rng([other.data_dim, 71])
        xx = other.marginal_mean + 1.5 * rng.standard_normal(other.data_dim)
        groups.append([(other, xx), (other, xx + 0.8), (other, xx - 0.3 * np.arange(len(xx)))])
        moved = _with_other_prior(other)
        if moved is not None:
            groups[-1].append((moved, xx))
    probes, contexts = [], []
    for number, group in enumerate(groups):
        for mm, xx in group:
            try:
                value = _call(fn, mm, xx)
            except Exception:
                continue
            scale = abs(float(mm.log_evidence(xx))) + mm.data_dim + 1
            expected = float(mm.log_evidence(xx))
            probes.append(Probe((mm, xx), value, expected, tolerance(mm, xx), scale, number))
            contexts.append(safe_context(evidence_context, mm, xx))
    found = match_suspects_across(EVIDENCE_SUSPECTS, probes)
    if not found:
        fit = fit_terms(EVIDENCE_TERMS, contexts, probes) or rounding_suspect(probes)
        found = [fit] if fit is not None else []
    return _diagnosis(found, "compare term by term")


@_single_blas_thread
def verify_log_evidence(
    fn: Callable[[LinearGaussianModel, FloatArray], Any],
    *,
    seed: int | np.random.Generator | None = None,
    max_examples: int | None = None,
    profile: str | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    batch_size: int | None = None,
    problems: Any = None,
    **model_options: Any,
) -> VerificationReport:
    """Check ``fn(model, x) -> float``, the log marginal likelihood log p(x) for one x.

    Tolerance: ``rtol * (|log p(x)| + D + 1) + atol``. ``problems``: your own pairs
    ``(model, x)`` (or ``(model, q, x)`` problems), as a hypothesis strategy or a
    sequence (checked in order, without search).

    With ``batch_size=B``, check batched code instead: ``fn(model, x)`` receives ``x``
    of shape ``(B, D)`` (B independent rows) and must return one log p(x_n) per row,
    shape ``(B,)``; every row is compared, and a failure names the worst row, says
    whether rows interact (a row's value changes with the other rows) and diagnoses
    the faulty term on single rows. Your own problems then hold ``x`` of shape ``(B, D)``.
    """
    __tracebackhide__ = True
    _check_callable(fn)
    chosen = _profile(profile)
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    seed_value = _seed(seed)
    examples = check_count("max_examples", max_examples, chosen["max_examples"])
    size = check_batch_size(batch_size)
    models = linear_gaussian_models(**model_options)
    shape = () if size is None else (size,)
    cases = models.flatmap(lambda m: st.tuples(st.just(m), observations(m, batch_shape=shape)))
    if size is not None:
        return _verify_batched_evidence(
            fn,
            size,
            as_evidence_cases(problems, lambda: cases, rows=size),
            seed_value,
            examples,
            rtol,
            atol,
        )

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
            parts.append(_evidence_diagnosis(fn, model, x, tolerance))
        return "\n".join(parts)

    return _deterministic_check(
        name="verify_log_evidence",
        strategy=as_evidence_cases(problems, lambda: cases),
        evaluate=evaluate,
        explain=explain,
        seed=seed_value,
        max_examples=examples,
        tolerance_text=f"rtol={rtol:g} of (|log p(x)| + D + 1) + atol={atol:g}",
    )


def _verify_batched_evidence(
    fn: Callable[..., Any],
    size: int,
    strategy: st.SearchStrategy[tuple[LinearGaussianModel, FloatArray]]
    | list[tuple[LinearGaussianModel, FloatArray]],
    seed: int,
    max_examples: int,
    rtol: float,
    atol: float,
) -> VerificationReport:
    def tolerance(model: LinearGaussianModel, x: FloatArray) -> Any:
        return rtol * (np.abs(model.log_evidence(x)) + model.data_dim + 1) + atol

    def compare(
        case: tuple[LinearGaussianModel, FloatArray],
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        model, x = case
        expected = np.asarray(model.log_evidence(x), dtype=np.float64)  # before fn runs
        bound = np.asarray(tolerance(model, x), dtype=np.float64)
        return as_values(invoke(fn, model, x), size, "log p(x)"), expected, bound

    def rows_of(model: LinearGaussianModel) -> Callable[[list[FloatArray]], list[float | None]]:
        """The user's value of each single row, packed ``size`` rows to a call."""

        def values(rows: list[FloatArray]) -> list[float | None]:
            out: list[float | None] = []
            for start in range(0, len(rows), size):
                chunk = rows[start : start + size]
                padded = chunk + [chunk[-1]] * (size - len(chunk))
                try:
                    got = as_values(invoke(fn, model, np.stack(padded)), size, "log p(x)")
                except Exception:
                    out += [None] * len(chunk)
                    continue
                out += [float(v) for v in got[: len(chunk)]]
            return out

        return values

    def explain(
        case: tuple[LinearGaussianModel, FloatArray],
        got: float,
        expected: float,
        tol: float,
        error: BaseException | None,
    ) -> str:
        model, x = case
        parts = [_describe_model(model)]
        if error is not None:
            parts += [f"  a batch of {size} rows: x {x.shape}", _BATCH_AXIS_HINT]
            return "\n".join(parts)
        got_all, expected_all, tolerance_all = compare(case)
        i = _worst_member(got_all, expected_all, tolerance_all)
        failing = _failing_members(got_all, expected_all, tolerance_all)
        row = np.array(x[i])
        parts += [
            f"  row {i} of the batch of {size} ({failing} of {size} rows fail):",
            f"  x = {_fmt(row)}",
            _numbers(got, expected, tol),
        ]
        values_of = rows_of(model)
        others = [np.array(x[j]) for j in range(size) if j != i] or [row + 1.0]
        mixing = _interaction(values_of, row, others, got, tol, size)
        if mixing is not None:
            parts.append(mixing)
            return "\n".join(parts)

        def single(mm: LinearGaussianModel, xx: FloatArray) -> float:
            value = rows_of(mm)([np.asarray(xx)])[0]
            if value is None:
                raise ValueError("fn raised on this row")
            return value

        parts.append(_evidence_diagnosis(single, model, row, tolerance))
        return "\n".join(parts)

    return _deterministic_check(
        name=f"verify_log_evidence(batch_size={size})",
        strategy=strategy,
        evaluate=_worst_of(compare),
        explain=explain,
        seed=seed,
        max_examples=max_examples,
        tolerance_text=f"rtol={rtol:g} of (|log p(x)| + D + 1) + atol={atol:g}, per row",
    )
