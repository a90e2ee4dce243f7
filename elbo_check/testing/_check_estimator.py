"""verify_elbo_estimator: Monte-Carlo ELBO estimators, statistical and pathwise."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.stats
from hypothesis import strategies as st
from numpy.typing import NDArray

from .._errors import InvalidInputError
from ..strategies import (
    ElboProblem,
    elbo_problems,
)
from ._calls import (
    _call,
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
    _elbo_scale,
    _pathwise_value,
    _statistical_problems,
)
from ._report import (
    VerificationReport,
    _describe_gaussian,
    _describe_model,
    _diagnosis,
    _fmt,
    _numbers,
)
from ._returns import to_scalar
from ._searching import _deterministic_check
from ._statistics import _batch_t, _repeated_calls, _statistical_budget
from ._suspects import (
    _estimator_suspects,
    _pathwise_suspects,
)

FloatArray = NDArray[np.float64]


@_single_blas_thread
def verify_elbo_estimator(
    fn: Callable[..., Any],
    *,
    mode: str = "statistical",
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
    r"""Check a Monte-Carlo ELBO estimator.

    Two modes:

    ``mode="statistical"`` (default): ``fn(model, q, x, rng, n_samples) -> float`` must
    be an unbiased estimate of the ELBO. On each of ``problems`` fixed problems it is
    called ``calls`` times with independent ``numpy.random.Generator`` objects; the
    mean of the estimates is z-tested against the exact ELBO with the standard error
    estimated from ``BATCHES`` (40) batch means (a t-test with ``BATCHES - 1`` degrees
    of freedom). The per-problem level is ``false_alarm_rate / problems`` (Bonferroni), so
    a correct estimator fails a call with probability at most ``false_alarm_rate``
    (up to the normal approximation of batch means of ``calls / BATCHES`` estimates).

    ``mode="pathwise"``: ``fn(model, q, x, eps) -> float`` with standard-normal noise
    ``eps`` of shape ``(n, K)`` given must return exactly
    :math:`\frac1n\sum_i \log p(x, m + L\varepsilon_i) - \log q(m + L\varepsilon_i)`;
    a deterministic check over hypothesis-drawn problems and noise, with shrinking.

    ``**model_options`` restrict the models: ``noise_kinds`` and ``prior_kinds`` in both
    modes (e.g. ``noise_kinds=("isotropic", "diagonal")`` for code without full noise),
    any option of :func:`~elbo_check.strategies.linear_gaussian_models` in pathwise mode.

    Returns
    -------
    VerificationReport
        ``worst_error`` is the largest ``|t| / critical value`` (statistical) or
        ``|gap| / tolerance`` (pathwise).
    """
    __tracebackhide__ = True
    _check_callable(fn)
    _check_rate(false_alarm_rate)
    chosen = _profile(profile)
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    seed_value = _seed(seed)
    if mode == "pathwise":
        return _verify_pathwise(
            fn,
            seed_value,
            check_count("max_examples", max_examples, chosen["max_examples"]),
            rtol,
            atol,
            model_options,
        )
    if mode != "statistical":
        raise InvalidInputError(f"mode must be 'statistical' or 'pathwise'; got mode={mode!r}")
    total_calls, count = _statistical_budget(chosen, calls, problems, n_samples)
    critical = float(scipy.stats.t.isf(false_alarm_rate / (2 * count), BATCHES - 1))
    worst = 0.0
    for index, (model, q, x) in enumerate(_statistical_problems(seed_value, count, model_options)):
        expected = float(model.elbo(q, x))
        estimates = _repeated_calls(
            "verify_elbo_estimator",
            fn,
            to_scalar,
            (model, q, x, n_samples),
            [seed_value, 77, index],
            total_calls,
        ).reshape(-1)
        mean, standard_error, t = (float(v) for v in _batch_t(estimates, np.array(expected)))
        scale = _elbo_scale(model, q, x)
        tolerance = rtol * scale + atol
        if standard_error <= tolerance or not math.isfinite(standard_error):
            # No variation across calls beyond rounding: compare as a deterministic value.
            if math.isfinite(mean) and abs(mean - expected) <= tolerance:
                continue
            note = (
                "the estimates did not vary across calls with different rng: does fn ignore "
                "its rng argument?"
                if math.isfinite(mean) and math.isfinite(standard_error)
                else "non-finite estimates"
            )
            raise AssertionError(
                "verify_elbo_estimator failed\n"
                + _describe_model(model)
                + "\n"
                + _describe_gaussian("q", q)
                + f"\n  x = {_fmt(x)}\n"
                + _numbers(mean, expected, tolerance)
                + f"\n  {note}"
            )
        ratio = abs(t) / critical if abs(mean - expected) > tolerance else 0.0
        worst = max(worst, ratio)
        if ratio > 1.0:
            suspects = []
            for suspect in _estimator_suspects(n_samples):
                predicted = suspect.predict(model, q, x)
                if predicted is not None and abs(mean - predicted) <= critical * standard_error:
                    suspects.append(suspect)
            raise AssertionError(
                f"verify_elbo_estimator failed: the estimator is biased (seed={seed_value}, "
                f"problem {index + 1} of {count})\n"
                + _describe_model(model)
                + "\n"
                + _describe_gaussian("q", q)
                + f"\n  x = {_fmt(x)}\n"
                f"  exact ELBO       {expected:.10g}\n"
                f"  mean estimate    {mean:.10g} +- {standard_error:.3g} (standard error from "
                f"{BATCHES} batch means of {total_calls // BATCHES} calls, n_samples={n_samples})\n"
                f"  t = {t:.3g}; critical |t| = {critical:.3g} for false-alarm rate "
                f"{false_alarm_rate:g} over {count} problems\n"
                + _diagnosis(suspects, "the bias does not match a known estimator bug")
            )
    return VerificationReport(
        check="verify_elbo_estimator",
        cases=count,
        worst_error=worst,
        tolerance=(
            f"|t| <= {critical:.3g} (false-alarm rate {false_alarm_rate:g}, "
            f"{total_calls} calls x {n_samples} samples per problem)"
        ),
        seed=seed_value,
        details={"calls": total_calls, "n_samples": n_samples, "critical_t": critical},
    )


def _verify_pathwise(
    fn: Callable[..., Any],
    seed: int,
    max_examples: int,
    rtol: float,
    atol: float,
    model_options: dict[str, Any],
) -> VerificationReport:
    problems = elbo_problems(**model_options)

    @st.composite
    def cases(draw: st.DrawFn) -> tuple[ElboProblem, FloatArray]:
        problem = draw(problems)
        n = draw(st.integers(1, 4))
        k = problem.model.latent_dim
        eps = np.array(draw(st.lists(st.floats(-3.0, 3.0), min_size=n * k, max_size=n * k)))
        return problem, eps.reshape(n, k)

    def tolerance(p: ElboProblem, z: FloatArray) -> float:
        magnitude = np.mean(np.abs(p.model.log_joint(p.x, z)) + np.abs(p.q.log_prob(z)))
        return rtol * (float(magnitude) + 1.0) + atol

    def evaluate(case: tuple[ElboProblem, FloatArray]) -> tuple[float, float, float]:
        p, eps = case
        z = p.q.mean + eps @ p.q.scale_tril.T
        return (
            _call(fn, p.model, p.q, p.x, eps.copy()),
            _pathwise_value(p.model, p.q, p.x, z),
            tolerance(p, z),
        )

    def explain(
        case: tuple[ElboProblem, FloatArray],
        got: float,
        expected: float,
        tol: float,
        error: BaseException | None,
    ) -> str:
        p, eps = case
        parts = [
            _describe_model(p.model),
            _describe_gaussian("q", p.q),
            f"  x = {_fmt(p.x)}",
            f"  eps = {_fmt(eps)}",
        ]
        if error is None:
            parts.append(_numbers(got, expected, tol))
            rng = np.random.default_rng(3)
            probes = []
            for noise in (
                eps,
                rng.standard_normal((3, p.model.latent_dim)),
                rng.standard_normal((2, p.model.latent_dim)),
            ):
                z = p.q.mean + noise @ p.q.scale_tril.T
                try:
                    value = _call(fn, p.model, p.q, p.x, noise.copy())
                except Exception:
                    continue
                probes.append(
                    (
                        (p.model, p.q, p.x, noise),
                        value,
                        _pathwise_value(p.model, p.q, p.x, z),
                        tolerance(p, z),
                    )
                )
            parts.append(
                _diagnosis(
                    match_suspects(_pathwise_suspects(), probes),
                    "compare log p(x, z) and log q(z) at z = m + L eps",
                )
            )
        return "\n".join(parts)

    return _deterministic_check(
        name="verify_elbo_estimator(mode='pathwise')",
        strategy=cases(),
        evaluate=evaluate,
        explain=explain,
        seed=seed,
        max_examples=max_examples,
        tolerance_text=f"rtol={rtol:g} of |log p(x,z)| + |log q(z)| + atol={atol:g}",
    )
