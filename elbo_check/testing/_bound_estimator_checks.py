"""The machinery of verify_iwae_estimator and verify_renyi_estimator: option checks,
the statistical test against the estimator's sampled distribution, the check at the
posterior, the pathwise search and the diagnoses."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.stats
from hypothesis import strategies as st
from numpy.typing import NDArray

from .._errors import InvalidInputError
from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ..strategies import ElboProblem
from ._bound_reference import (
    log_weight_sizes,
    log_weights,
    noise_entries,
    reference_estimates,
    renyi_estimates,
    samples,
)
from ._bound_suspects import BoundSuspect, bound_suspects
from ._calls import _call
from ._estimator_diagnosis import DIAGNOSIS_CRITICAL, diagnosis_calls, second_problem
from ._options import (
    BATCHES,
    _is_real,
)
from ._problems import _elbo_scale
from ._report import VerificationReport, _describe_gaussian, _describe_model, _fmt, _numbers
from ._returns import invoke, to_scalar
from ._searching import _deterministic_check
from ._statistics import _batch_t, _repeated_calls

FloatArray = NDArray[np.float64]
Triple = tuple[LinearGaussianModel, Gaussian, FloatArray]

#: Reference draws of the estimator per call of the user's: the reference's standard
#: error is half the user's, so the test's power is that of 1.12 standard errors.
REFERENCE_FACTOR = 4

#: Calls of fn at q = p(z|x) per problem, each of which must return log p(x).
POSTERIOR_CALLS = 3

#: Significance below which the diagnosis rejects a suspect's distribution.
DIAGNOSIS_LEVEL = 1e-3


def check_alpha(alpha: Any) -> float:
    """A finite real ``alpha``, as a float."""
    if not _is_real(alpha) or not math.isfinite(float(alpha)):
        raise InvalidInputError(f"alpha must be a finite real number; got alpha={alpha!r}")
    return float(alpha)


def check_k(k: Any) -> int:
    """The number of importance samples: an integer >= 1."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidInputError(f"k must be an integer >= 1; got k={k!r}")
    return int(k)


def exact_bound_text(model: LinearGaussianModel, q: Gaussian, x: FloatArray, alpha: float) -> str:
    """The bound the estimator tends to as k grows, or why it is infinite."""
    low, high = model.renyi_alpha_interval(q)
    if not low < alpha < high and alpha not in (0.0, 1.0):
        return f"infinite for this q (finite for alpha in ({low:.4g}, {high:.4g}))"
    return f"{float(model.renyi_bound(q, x, alpha)):.10g}"


# ---------------------------------------------------------------------- statistical
class _Reference:
    """The verifier's draws of the correct estimate and of every suspect's."""

    def __init__(
        self, problem: Triple, alpha: float, n: int, count: int, stream: list[int]
    ) -> None:
        model, q, x = problem
        self.suspects = bound_suspects(alpha, n)

        def columns(log_w: FloatArray) -> FloatArray:
            values = [renyi_estimates(log_w, alpha)] + [s.estimate(log_w) for s in self.suspects]
            return np.stack(values, axis=-1)

        rng = np.random.default_rng(stream)
        self.draws = reference_estimates(model, q, x, n, count, rng, columns)
        self.mean = float(np.mean(self.draws[:, 0]))
        self.standard_error = float(np.std(self.draws[:, 0], ddof=1) / math.sqrt(count))

    def matching(self, estimates: FloatArray, tolerance: float) -> list[BoundSuspect]:
        """Suspects whose distribution the user's estimates are consistent with."""
        return [
            suspect
            for index, suspect in enumerate(self.suspects, start=1)
            if fits(estimates, self.draws[:, index], tolerance)
        ]


def fits(
    values: FloatArray, draws: FloatArray, tolerance: float, distribution: bool = True
) -> bool:
    """Whether the user's ``values`` could be draws like ``draws`` (a suspect's): their
    means within the diagnosis' critical value of the combined standard error plus
    ``tolerance``, and (``distribution``) a Kolmogorov-Smirnov p-value above
    :data:`DIAGNOSIS_LEVEL`."""
    if not np.all(np.isfinite(draws)):
        return False
    mean, error, _ = (float(v) for v in _batch_t(values, np.array(0.0)))
    spread = math.hypot(error, float(np.std(draws)) / math.sqrt(len(draws)))
    if abs(mean - float(np.mean(draws))) > DIAGNOSIS_CRITICAL * spread + tolerance:
        return False
    if not distribution or (np.ptp(values) == 0.0 and np.ptp(draws) == 0.0):
        return not distribution or bool(values[0] == draws[0])
    return bool(scipy.stats.ks_2samp(values, draws).pvalue >= DIAGNOSIS_LEVEL)


def _statistical(
    fn: Callable[..., Any],
    label: str,
    alpha: float,
    n: int,
    cases: list[Triple],
    seed: int,
    calls: int,
    false_alarm_rate: float,
    rtol: float,
    atol: float,
    *,
    posterior: bool,
) -> VerificationReport:
    __tracebackhide__ = True
    count = len(cases)
    # two tests per problem: the mean (two-sided t) and the distribution (KS)
    critical = float(scipy.stats.t.isf(false_alarm_rate / (4 * count), BATCHES - 1))
    ks_level = false_alarm_rate / (2 * count)
    worst = 0.0
    for index, (model, q, x) in enumerate(cases):
        reference = _Reference((model, q, x), alpha, n, REFERENCE_FACTOR * calls, [seed, 93, index])
        estimates = _repeated_calls(
            label, fn, to_scalar, (model, q, x, n), [seed, 91, index], calls
        ).reshape(-1)
        tolerance = rtol * _elbo_scale(model, q, x) + atol
        header = f"{label} failed (seed={seed}, problem {index + 1} of {count})"
        problem_text = (
            _describe_model(model) + "\n" + _describe_gaussian("q", q) + f"\n  x = {_fmt(x)}\n"
            f"  exact L_alpha as k grows: {exact_bound_text(model, q, x, alpha)}\n"
            f"  reference mean of the estimate at k={n}: {reference.mean:.10g} +- "
            f"{reference.standard_error:.3g} ({len(reference.draws)} draws)"
        )
        if not np.all(np.isfinite(estimates)):
            bad = estimates[~np.isfinite(estimates)][0]
            raise AssertionError(f"{header}: fn returned {bad!r}\n{problem_text}")
        mean, standard_error, _ = (float(v) for v in _batch_t(estimates, np.array(0.0)))
        spread = math.hypot(standard_error, reference.standard_error)
        gap = mean - reference.mean
        t = gap / spread if spread > 0 else (math.inf if gap else 0.0)
        ks = scipy.stats.ks_2samp(estimates, reference.draws[:, 0])
        mean_bad = abs(gap) > tolerance and abs(t) > critical
        worst = max(worst, abs(t) / critical if abs(gap) > tolerance else 0.0)
        if mean_bad or ks.pvalue < ks_level:
            constant = standard_error <= tolerance
            what = (
                "the estimates did not vary across calls with different rng: does fn ignore "
                "its rng argument?"
                if constant
                else (
                    "the estimator is biased"
                    if mean_bad
                    else "the estimates do not follow the estimator's distribution"
                )
            )
            raise AssertionError(
                f"{header}: {what}\n{problem_text}\n"
                f"  mean estimate    {mean:.10g} +- {standard_error:.3g} (standard error from "
                f"{BATCHES} batch means of {calls // BATCHES} calls)\n"
                f"  t = {t:.3g}; critical |t| = {critical:.3g}\n"
                f"  Kolmogorov-Smirnov D = {ks.statistic:.3g}, p = {ks.pvalue:.3g}; level "
                f"{ks_level:.3g} (false-alarm rate {false_alarm_rate:g} over {count} problems "
                "and both tests)\n"
                + _statistical_diagnosis(
                    fn,
                    reference,
                    estimates,
                    (model, q, x),
                    alpha,
                    n,
                    [seed, 94, index],
                    calls,
                    tolerance,
                )
            )
        if posterior:
            _check_posterior(fn, label, model, x, n, [seed, 95, index], rtol, atol, alpha)
    return VerificationReport(
        check=label,
        cases=count,
        worst_error=worst,
        tolerance=(
            f"|t| <= {critical:.3g} and Kolmogorov-Smirnov p >= {ks_level:.3g} "
            f"(false-alarm rate {false_alarm_rate:g}, {calls} calls per problem); "
            f"log p(x) within rtol={rtol:g} at q = p(z|x)"
        ),
        seed=seed,
        details={
            "alpha": alpha,
            "k": n,
            "calls": calls,
            "reference_draws": REFERENCE_FACTOR * calls,
            "critical_t": critical,
            "ks_level": ks_level,
            "posterior_checked": posterior,
        },
    )


def _statistical_diagnosis(
    fn: Callable[..., Any],
    reference: _Reference,
    estimates: FloatArray,
    problem: Triple,
    alpha: float,
    n: int,
    stream: list[int],
    calls: int,
    tolerance: float,
) -> str:
    found = reference.matching(estimates, tolerance)
    if found:
        other = second_problem(*problem, stream)
        values = diagnosis_calls(fn, to_scalar, (*other, n), [*stream, 1], calls)
        if values is None:
            found = []
        else:
            again = _Reference(other, alpha, n, REFERENCE_FACTOR * calls, [*stream, 2])
            names = {s.name for s in again.matching(values.reshape(-1), tolerance)}
            found = [s for s in found if s.name in names]
    return _bound_diagnosis(found)


def _bound_diagnosis(found: list[BoundSuspect]) -> str:
    if not found:
        return (
            "Diagnosis: no known bug matches on two problems; compare your log weights "
            "with model.log_joint(x, z) - q.log_prob(z) and the reduction with "
            "(logsumexp((1 - alpha) * log_w) - log k) / (1 - alpha)."
        )
    return "\n".join(f"Diagnosis: {s.name}.\n  Fix: {s.advice}." for s in found[:3])


def _check_posterior(
    fn: Callable[..., Any],
    label: str,
    model: LinearGaussianModel,
    x: FloatArray,
    n: int,
    stream: list[int],
    rtol: float,
    atol: float,
    alpha: float,
) -> None:
    """At q = p(z|x) every weight is p(x): each call must return log p(x)."""
    __tracebackhide__ = True
    posterior = model.posterior(x)
    expected = float(model.log_evidence(x))  # before fn runs
    tolerance = rtol * _elbo_scale(model, posterior, x) + atol
    for seq in np.random.SeedSequence(stream).spawn(POSTERIOR_CALLS):
        rng = np.random.Generator(np.random.PCG64(seq))
        try:
            got = to_scalar(invoke(fn, model, posterior, x, rng, n))
        except Exception as err:
            raise AssertionError(
                f"{label}: fn raised {type(err).__name__}: {err}\n  at q = p(z|x)\n"
                + _describe_model(model)
                + f"\n  x = {_fmt(x)}"
            ) from err
        if math.isfinite(got) and abs(got - expected) <= tolerance:
            continue
        log_w = np.full((1, n), expected)
        found = [
            s
            for s in bound_suspects(alpha, n)
            if abs(float(s.estimate(log_w)[0]) - got) <= tolerance
        ]
        raise AssertionError(
            f"{label} failed at q = p(z|x): there every importance weight equals p(x), so "
            "every estimate must equal log p(x) exactly, whatever the draws\n"
            + _describe_model(model)
            + "\n"
            + _describe_gaussian("q = p(z|x)", posterior)
            + f"\n  x = {_fmt(x)}\n"
            + _numbers(got, expected, tolerance)
            + "\n"
            + _bound_diagnosis(found)
        )


# ---------------------------------------------------------------------- pathwise
def _pathwise(
    fn: Callable[..., Any],
    label: str,
    alpha: float,
    n: int,
    problems: st.SearchStrategy[ElboProblem],
    *,
    seed: int,
    max_examples: int,
    rtol: float,
    atol: float,
) -> VerificationReport:
    __tracebackhide__ = True

    @st.composite
    def cases(draw: st.DrawFn) -> tuple[ElboProblem, FloatArray, bool]:
        problem = draw(problems)
        dim = problem.model.latent_dim
        eps = np.array(draw(noise_entries(n * dim)))
        at_posterior = draw(st.booleans()) and problem.x.ndim == 1
        return problem, eps.reshape(n, dim), at_posterior

    def exact(
        model: LinearGaussianModel, q: Gaussian, x: FloatArray, eps: FloatArray
    ) -> tuple[float, float]:
        z = samples(q, eps)
        value = float(renyi_estimates(log_weights(model, q, x, z), alpha))
        return value, rtol * (float(np.max(log_weight_sizes(model, q, x, z))) + 1.0) + atol

    def q_of(case: tuple[ElboProblem, FloatArray, bool]) -> Gaussian:
        p, _, at_posterior = case
        return p.model.posterior(p.x) if at_posterior else p.q

    def evaluate(case: tuple[ElboProblem, FloatArray, bool]) -> tuple[float, float, float]:
        p, eps, at_posterior = case
        q = q_of(case)
        value, tolerance = exact(p.model, q, p.x, eps)
        if at_posterior:
            value = float(p.model.log_evidence(p.x))
        return _call(fn, p.model, q, p.x, eps), value, tolerance

    def explain(
        case: tuple[ElboProblem, FloatArray, bool],
        got: float,
        expected: float,
        tolerance: float,
        error: BaseException | None,
    ) -> str:
        p, eps, at_posterior = case
        q = q_of(case)
        parts = [
            _describe_model(p.model),
            _describe_gaussian("q = p(z|x)" if at_posterior else "q", q),
            f"  x = {_fmt(p.x)}",
            f"  eps = {_fmt(eps)}",
        ]
        if error is None:
            parts.append(_numbers(got, expected, tolerance))
            parts.append(_pathwise_diagnosis(fn, alpha, n, p.model, q, p.x, eps, got, tolerance))
        return "\n".join(parts)

    return _deterministic_check(
        name=label,
        strategy=cases(),
        evaluate=evaluate,
        explain=explain,
        seed=seed,
        max_examples=max_examples,
        tolerance_text=(
            f"rtol={rtol:g} of the largest |log p(x, z_j)| + |log q(z_j)| + 1, + atol={atol:g}"
        ),
    )


def _pathwise_diagnosis(
    fn: Callable[..., Any],
    alpha: float,
    n: int,
    model: LinearGaussianModel,
    q: Gaussian,
    x: FloatArray,
    eps: FloatArray,
    got: float,
    tolerance: float,
) -> str:
    # two generic noises besides the (often shrunk, degenerate) failing one
    others = np.random.default_rng([n, q.dim, 7]).standard_normal((2, n, q.dim))
    try:
        second, third = (_call(fn, model, q, x, noise) for noise in others)
    except Exception:
        return _bound_diagnosis([])
    other = others[0]
    found = []
    for suspect in bound_suspects(alpha, n):
        ok = True
        for noise, value in ((eps, got), (other, second), (others[1], third)):
            z = samples(q, noise)
            predicted = float(suspect.estimate(log_weights(model, q, x, z)))
            size = float(np.max(log_weight_sizes(model, q, x, z)))
            ok = ok and abs(predicted - value) <= max(tolerance, 1e-6 * (size + 1.0))
        if ok:
            found.append(suspect)
    if found:
        return _bound_diagnosis(found)
    exact = [
        float(renyi_estimates(log_weights(model, q, x, samples(q, noise)), alpha))
        for noise in (eps, other)
    ]
    return (
        _bound_diagnosis([])
        + "\n  "
        + describe_gap(got - exact[0], second - exact[1], exact, tolerance, n)
    )


def describe_gap(first: float, second: float, exact: list[float], tolerance: float, n: int) -> str:
    """What the gap at two noises says: a constant (a multiple of log k?), a factor on
    the estimate, or something that depends on the draws."""
    if not (math.isfinite(first) and math.isfinite(second)):
        return "The returns are not finite."
    if abs(first - second) <= 2.0 * tolerance:
        text = f"The gap is the same constant {first:.6g} at two noises"
        if n > 1:
            ratio = first / math.log(n)
            simple = round(ratio * 2.0) / 2.0
            if simple != 0.0 and abs(ratio - simple) <= 1e-6 * max(1.0, abs(ratio)):
                return text + f": {simple:g} * log(k), so the log(k) normalisation is wrong."
        return text + ": a normalising constant is wrong or missing."
    values = [first + exact[0], second + exact[1]]
    if all(abs(e) > tolerance for e in exact):
        factors = [v / e for v, e in zip(values, exact, strict=True)]
        if abs(factors[0] - factors[1]) <= 1e-6 * max(1.0, abs(factors[0])):
            return f"The estimate is the correct one times {factors[0]:.6g} at two noises."
    return (
        "The gap changes with the draws: check the samples (z = m + L eps) and the log "
        "weights (log p(x, z) - log q(z)) before the reduction."
    )
