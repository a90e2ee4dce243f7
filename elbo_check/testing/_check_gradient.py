"""verify_elbo_gradient: exact and stochastic gradients in (m, L) or the user's parameters.

With ``parametrisation=None`` the user's function receives q (a Gaussian) and returns the
gradient in q's mean and Cholesky factor; with a :class:`Parametrisation` it receives
that parametrisation's dict of arrays and returns the gradient in them, which is
compared with the oracle's gradient pulled back through the map's exact Jacobian (or,
for :class:`Custom`, a central-difference Jacobian whose error bound joins the
tolerance).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.stats
from hypothesis import strategies as st
from numpy.typing import NDArray

from .._errors import InvalidInputError, InvalidTypeError
from .._gaussian import Gaussian
from ..strategies import (
    COV_KINDS,
    ElboProblem,
    elbo_problems,
    linear_gaussian_models,
    observations,
    variational_gaussians,
)
from ._cases import as_elbo_cases, check_q_kinds, statistical_cases
from ._diagnosis import Suspect, match_suspects
from ._gradient_cases import (
    _Case,
    _legacy_case,
    _param_case,
)
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
from ._parametrisations import (
    Custom,
    Parametrisation,
)
from ._report import (
    VerificationReport,
    _diagnosis,
)
from ._searching import _deterministic_check
from ._statistics import _batch_t, _repeated_calls, _statistical_calls

FloatArray = NDArray[np.float64]
Params = dict[str, FloatArray]


# ---------------------------------------------------------------------- gradients in (m, L)
@_single_blas_thread
def verify_elbo_gradient(
    fn: Callable[..., Any],
    *,
    parametrisation: Parametrisation | None = None,
    mode: str = "exact",
    seed: int | np.random.Generator | None = None,
    n_samples: int = 8,
    calls: int | None = None,
    problems: Any = None,
    n_problems: int | None = None,
    q_kinds: Sequence[str] | None = None,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    profile: str | None = None,
    max_examples: int | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    **model_options: Any,
) -> VerificationReport:
    r"""Check gradients of the ELBO with respect to q's parameters.

    **Which signature.** With ``parametrisation=None`` (the default, and the original
    interface) ``fn`` receives q itself and differentiates in q's mean ``m`` and lower
    Cholesky factor ``L``::

        fn(model, q, x) -> (grad_mean, grad_scale_tril)                  # exact
        fn(model, q, x, rng, n_samples) -> (grad_mean, grad_scale_tril)  # stochastic

    (entries above the diagonal of ``grad_scale_tril`` are ignored). With a
    :class:`Parametrisation` (``DiagonalLogScale()``, ``FullUnitCholeskyScale()``,
    ``Custom(...)``, even ``FullCholesky()``) ``fn`` receives that parametrisation's
    dict of arrays ``params`` in q's place and returns the gradient in them, as a dict
    with the same keys or a tuple in the order of ``parametrisation.keys``::

        fn(model, params, x) -> {"loc": ..., "log_scale": ...}
        fn(model, params, x, rng, n_samples) -> (grad_loc, grad_log_scale)

    The expected value is the closed form pulled back through the map
    (:meth:`Parametrisation.pullback`). Entries that are not parameters (above the
    diagonal of a factor, the unit diagonal of ``unit_scale_tril``) must have gradient 0;
    a symmetric ``cov`` or ``precision`` gradient is compared through its symmetric part.
    Diagonal parametrisations are checked on diagonal q's.

    ``mode="exact"``: compared within ``rtol * (|g| + 1) + atol`` per coordinate, plus,
    for :class:`Custom`, the error bound of its finite-difference Jacobian; hypothesis
    shrinks a mismatch to a minimal example.

    ``mode="stochastic"``: ``fn`` must return an unbiased estimate (reparameterisation,
    score function, ...). Each coordinate is t-tested on batch means as in
    :func:`verify_elbo_estimator`, Bonferroni-corrected over all coordinates and
    problems, so a correct estimator fails a call with probability at most
    ``false_alarm_rate``.
    """
    __tracebackhide__ = True
    _check_callable(fn)
    _check_rate(false_alarm_rate)
    if parametrisation is not None and not isinstance(parametrisation, Parametrisation):
        raise InvalidTypeError(
            "parametrisation must be None or a Parametrisation (DiagonalLogScale(), "
            f"FullCholesky(), Custom(...), ...); got {type(parametrisation).__name__}"
        )
    chosen = _profile(profile)
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    seed_value = _seed(seed)
    if mode == "exact":
        return _verify_exact_gradient(
            fn,
            parametrisation,
            seed_value,
            check_count("max_examples", max_examples, chosen["max_examples"]),
            rtol,
            atol,
            model_options,
            problems,
            COV_KINDS if q_kinds is None else q_kinds,
        )
    if mode != "stochastic":
        raise InvalidInputError(f"mode must be 'exact' or 'stochastic'; got mode={mode!r}")
    total_calls = _statistical_calls(chosen, calls, n_samples)
    problems_list = statistical_cases(
        problems,
        n_problems,
        default_count=chosen["problems"],
        seed=seed_value,
        q_kinds=("full",) if q_kinds is None else q_kinds,
        model_options=model_options,
        calls=total_calls,
    )
    count = len(problems_list)
    cases = [
        _legacy_case(model, q, x)
        if parametrisation is None
        else _param_case(parametrisation, model, q, x)
        for model, q, x in problems_list
    ]
    comparisons = sum(case.expected.size for case in cases)
    critical = float(scipy.stats.t.isf(false_alarm_rate / (2 * comparisons), BATCHES - 1))
    label = _label(parametrisation, "stochastic")
    worst = 0.0
    for index, case in enumerate(cases):
        expected = case.expected
        draws = _repeated_calls(
            "verify_elbo_gradient",
            lambda model, q, x, rng, n, case=case: case.call(fn, rng, n),
            case.convert,
            (case.model, case.q, case.x, n_samples),
            [seed_value, 78, index],
            total_calls,
        )
        mean, standard_error, t = _batch_t(draws, expected)
        # Spread below the deterministic tolerance is rounding, not randomness (BLAS may
        # round a repeated computation differently): such coordinates, and any whose
        # bias is within that tolerance, are judged as deterministic values.
        tolerance = rtol * (np.abs(expected) + 1.0) + atol + case.error
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
            suspects = [
                suspect for suspect in case.suspects if _predicts(suspect, case, mean, allowance)
            ]
            rows.append(_diagnosis(suspects, "see the coordinates marked 'biased'"))
            raise AssertionError(
                f"{label} failed: biased coordinates (seed="
                f"{seed_value}, problem {index + 1} of {count}; critical |t| = {critical:.3g} "
                f"for false-alarm rate {false_alarm_rate:g} over {comparisons} coordinates)\n"
                + case.describe()
                + "\n"
                + "\n".join(rows)
            )
    return VerificationReport(
        check=label,
        cases=count,
        worst_error=worst,
        tolerance=f"|t| <= {critical:.3g} per coordinate (false-alarm rate {false_alarm_rate:g})",
        seed=seed_value,
        details={"calls": total_calls, "n_samples": n_samples, "critical_t": critical},
    )


def _label(par: Parametrisation | None, mode: str) -> str:
    if par is None:
        return "verify_elbo_gradient" + ("" if mode == "exact" else "(mode='stochastic')")
    extra = "" if mode == "exact" else ", mode='stochastic'"
    return f"verify_elbo_gradient(parametrisation={par!r}{extra})"


def _predicts(suspect: Suspect, case: _Case, mean: FloatArray, allowance: FloatArray) -> bool:
    try:
        predicted = suspect.predict(case.model, case.point, case.x)
    except (ValueError, np.linalg.LinAlgError, FloatingPointError):
        return False
    return predicted is not None and bool(np.all(np.abs(mean - predicted) <= allowance))


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
    seed: int,
    max_examples: int,
    rtol: float,
    atol: float,
    model_options: dict[str, Any],
    problems: Any,
    q_kinds: Sequence[str],
) -> VerificationReport:
    def prepare(p: ElboProblem) -> _Case:
        if par is None:
            return _legacy_case(p.model, p.q, p.x)
        return _param_case(par, p.model, p.q, p.x)

    def compare(case: _Case) -> tuple[FloatArray, FloatArray, FloatArray]:
        expected = case.expected  # computed before fn sees anything
        got = case.convert(case.call(fn))
        return got, expected, rtol * (np.abs(expected) + 1.0) + atol + case.error

    def evaluate(p: ElboProblem) -> tuple[float, float, float]:
        got, expected, tolerance = compare(prepare(p))
        return float(np.max(np.abs(got - expected) / tolerance)), 0.0, 1.0

    def explain(
        p: ElboProblem, got: float, expected: float, tol: float, error: BaseException | None
    ) -> str:
        try:
            case = prepare(p)
        except Exception as err:  # a Custom map that raised
            return f"  the parametrisation's map raised {type(err).__name__}: {err}"
        parts = [case.describe()]
        if error is None:
            g, e, tolerance = compare(case)
            parts += [
                f"    {name:>12s}: expected {e[i]: .10g}, got {g[i]: .10g}, "
                f"gap {g[i] - e[i]:.3g}"
                + ("  <-- off" if abs(g[i] - e[i]) > tolerance[i] else "")
                + ("" if free else "  (not a parameter: must be 0)")
                for i, (name, free) in enumerate(case.names)
            ]
            probes = []
            moved = Gaussian._trusted(case.q.mean + 0.5, case.q.scale_tril * 1.3)
            for qq in (case.q, moved):
                try:
                    probe = prepare(ElboProblem(p.model, qq, p.x))
                    value = probe.convert(probe.call(fn))
                except Exception:
                    continue
                bound = rtol * (np.abs(probe.expected) + 1) + atol + probe.error
                probes.append(((p.model, probe.point, p.x), value, probe.expected, bound))
            found = match_suspects(case.suspects, probes)
            parts.append(_diagnosis(found, "see the coordinates marked 'off'"))
        return "\n".join(parts)

    kinds = check_q_kinds(q_kinds)
    strategy = as_elbo_cases(
        problems,
        lambda: (
            elbo_problems(q_kinds=kinds, **model_options)
            if par is None
            else _parametrised_problems(par, model_options)
        ),
    )
    extra = "" if not isinstance(par, Custom) else " + the Jacobian's difference error"
    return _deterministic_check(
        name=_label(par, "exact"),
        strategy=strategy,
        evaluate=evaluate,
        explain=explain,
        seed=seed,
        max_examples=max_examples,
        tolerance_text=f"|got - exact| <= rtol={rtol:g} * (|exact| + 1) + atol={atol:g}{extra} "
        "per entry",
    )
