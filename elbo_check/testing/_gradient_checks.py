"""The checks :func:`verify_elbo_gradient` dispatches to: batches in every mode, and the
exact mode, in (m, L) or in a parametrisation's parameters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st
from numpy.typing import NDArray

from .._errors import InvalidInputError
from ..strategies import (
    COV_KINDS,
    ElboProblem,
    linear_gaussian_models,
    observations,
    variational_gaussians,
)
from ._batch_problems import batched_statistical_cases
from ._cases import check_q_kinds
from ._forms import ElboForm
from ._gradient_batch_statistics import verify_batched_statistical
from ._gradient_batches import batched_gradient_problems, verify_batched_gradient
from ._gradient_cases import _Case, _legacy_case, _param_case, coordinate_rows
from ._gradient_diagnosis import gradient_suspects_across
from ._options import check_count
from ._parametrisations import Custom, Parametrisation
from ._report import VerificationReport, _diagnosis
from ._searching import _deterministic_check
from ._statistics import _statistical_calls

FloatArray = NDArray[np.float64]


def _label(par: Parametrisation | None, mode: str, form: ElboForm, size: int | None = None) -> str:
    """The report's and the failure's name of the call, e.g.
    ``verify_elbo_gradient(mode='pathwise', form='analytic_kl', batch_size=4)``."""
    options = [] if par is None else [f"parametrisation={par!r}"]
    if mode != "exact":
        options.append(f"mode={mode!r}")
    if mode == "pathwise" and form.name != "joint":
        options.append(f"form={form.name!r}")
    if size is not None:
        options.append(f"batch_size={size}")
    return "verify_elbo_gradient" + (f"({', '.join(options)})" if options else "")


def _verify_batches(
    fn: Callable[..., Any],
    par: Parametrisation | None,
    mode: str,
    form: ElboForm,
    size: int,
    *,
    seed: int,
    chosen: dict[str, int],
    n_samples: int,
    calls: int | None,
    problems: Any,
    n_problems: int | None,
    q_kinds: Sequence[str] | None,
    false_alarm_rate: float,
    max_examples: int | None,
    rtol: float,
    atol: float,
    model_options: dict[str, Any],
) -> VerificationReport:
    """``batch_size=size`` in every mode (see :mod:`._gradient_batches`)."""
    batched = sorted({"batch_shape", "shared_covariance"} & set(model_options))
    if batched:
        raise InvalidInputError(
            f"batch_size={size} draws batches of {size} members, each with its own q; "
            f"{batched} cannot be combined with it (leave them out)"
        )
    label = _label(par, mode, form, size)
    if mode == "statistical":
        total_calls = _statistical_calls(chosen, calls, n_samples)
        return verify_batched_statistical(
            fn,
            par,
            form,
            size,
            label=label,
            seed=seed,
            batches=batched_statistical_cases(
                problems,
                n_problems,
                size,
                default_count=chosen["problems"],
                seed=seed,
                q_kinds=("full",) if q_kinds is None else q_kinds,
                model_options=model_options,
                calls=total_calls,
            ),
            calls=total_calls,
            n_samples=n_samples,
            false_alarm_rate=false_alarm_rate,
            rtol=rtol,
            atol=atol,
        )
    kinds = check_q_kinds(
        (COV_KINDS if q_kinds is None else q_kinds) if par is None else par.cov_kinds
    )
    extra = "" if not isinstance(par, Custom) else " + the Jacobian's difference error"
    if mode == "pathwise":
        tolerance_text = (
            f"|got - exact| <= rtol={rtol:g} * (|exact| + magnitude + 1) + atol={atol:g}"
            f"{extra} per entry, the magnitude being the sum of the absolute values of the "
            f"terms of the gradient of {form.formula}"
        )
    else:
        tolerance_text = (
            f"|got - exact| <= rtol={rtol:g} * (|exact| + 1) + atol={atol:g}{extra} per entry"
        )
    return verify_batched_gradient(
        fn,
        par,
        form,
        size,
        pathwise=mode == "pathwise",
        label=label,
        seed=seed,
        max_examples=check_count("max_examples", max_examples, chosen["max_examples"]),
        rtol=rtol,
        atol=atol,
        problems=batched_gradient_problems(problems, size, kinds, model_options),
        tolerance_text=tolerance_text,
    )


def _parametrised_problems(
    par: Parametrisation, model_options: dict[str, Any]
) -> st.SearchStrategy[ElboProblem]:
    """Problems with one q of the kinds ``par`` holds (diagonal for diagonal maps)."""
    batched = sorted({"batch_shape", "shared_covariance"} & set(model_options))
    if batched:
        raise InvalidInputError(
            f"a parametrisation is checked on one q at a time; {batched} are not supported "
            "with parametrisation="
        )
    models = linear_gaussian_models(**model_options)

    @st.composite
    def problems(draw: st.DrawFn) -> ElboProblem:
        model = draw(models)
        q = draw(variational_gaussians(model, cov_kinds=par.cov_kinds))
        return ElboProblem(model, q, draw(observations(model)))

    return problems()


def _verify_exact_gradient(
    fn: Callable[..., Any],
    par: Parametrisation | None,
    form: ElboForm,
    seed: int,
    max_examples: int,
    rtol: float,
    atol: float,
    strategy: Any,
) -> VerificationReport:
    suspects = form.gradient_suspects()

    def prepare(model: Any, q: Any, x: Any, variant: int = 0) -> _Case:
        if par is None:
            return _legacy_case(model, q, x, suspects)
        return _param_case(par, model, q, x, suspects)

    def compare(case: _Case) -> tuple[FloatArray, FloatArray, FloatArray]:
        expected = case.expected  # computed before fn sees anything
        got = case.convert(case.call(fn))
        return got, expected, case.tolerance(rtol, atol)

    def evaluate(p: ElboProblem) -> tuple[float, float, float]:
        got, expected, tolerance = compare(prepare(p.model, p.q, p.x))
        return float(np.max(np.abs(got - expected) / tolerance)), 0.0, 1.0

    def explain(
        p: ElboProblem, got: float, expected: float, tol: float, error: BaseException | None
    ) -> str:
        try:
            case = prepare(p.model, p.q, p.x)
        except Exception as err:  # a Custom map that raised
            return f"  the parametrisation's map raised {type(err).__name__}: {err}"
        parts = [case.describe()]
        if error is None:
            parts += coordinate_rows(case, *compare(case))
            found = gradient_suspects_across(fn, prepare, case, case.suspects, rtol, atol)
            parts.append(_diagnosis(found, "see the coordinates marked 'off'"))
        return "\n".join(parts)

    extra = "" if not isinstance(par, Custom) else " + the Jacobian's difference error"
    return _deterministic_check(
        name=_label(par, "exact", form),
        strategy=strategy,
        evaluate=evaluate,
        explain=explain,
        seed=seed,
        max_examples=max_examples,
        tolerance_text=f"|got - exact| <= rtol={rtol:g} * (|exact| + 1) + atol={atol:g}{extra} "
        "per entry",
    )
