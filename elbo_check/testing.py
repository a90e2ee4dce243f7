"""Verify a user's ELBO, KL, log-evidence, Monte-Carlo estimator and gradient code.

Each ``verify_*`` function calls the user's code on many linear-Gaussian problems
drawn by :mod:`elbo_check.strategies`, compares with the exact oracle and, on a
mismatch, raises an :class:`AssertionError` that shows the *minimal* counterexample
hypothesis could shrink to (dimensions, parameters, expected, got, gap, tolerance)
and a diagnosis of which term is wrong. On success it returns a
:class:`VerificationReport`.

Deterministic checks (``verify_elbo``, ``verify_kl``, ``verify_log_evidence``, the
pathwise estimator mode and exact gradients) compare within ``rtol`` of the
magnitudes of the terms involved plus ``atol``. Statistical checks (Monte-Carlo
estimators and stochastic gradients) are z-tests on batch means with a stated
false-alarm rate, Bonferroni-corrected over every comparison in the call.

The verifiers are meant to be called from ordinary tests. Inside a test that is
itself decorated with ``@given`` use the single-case checks (:func:`check_elbo`, ...)
on the drawn objects instead.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import scipy.stats
from hypothesis import Phase, find, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample
from numpy.typing import NDArray

from ._batching import (
    BadReturn,
    as_values,
    check_batch_size,
    evaluate_members,
    member,
    stack_gaussians,
)
from ._config import default_profile, default_seed
from ._diagnosis import (
    ELBO_SUSPECTS,
    EVIDENCE_SUSPECTS,
    KL_SUSPECTS,
    Suspect,
    describe_gap,
    match_suspects,
)
from ._errors import InvalidInputError
from ._gaussian import Gaussian, kl_divergence
from ._linalg import cholesky, solve_tril, solve_tril_rows
from ._model import LinearGaussianModel
from ._random import random_gaussian, random_model
from ._threads import blas_libraries, limited_when_alone
from .strategies import (
    ElboProblem,
    elbo_problems,
    gaussians,
    linear_gaussian_models,
    observations,
    variational_gaussians,
)

__all__ = [
    "PROFILES",
    "VerificationReport",
    "check_elbo",
    "verify_elbo",
    "verify_elbo_estimator",
    "verify_elbo_gradient",
    "verify_kl",
    "verify_log_evidence",
]

FloatArray = NDArray[np.float64]

#: Named effort levels: how many examples the deterministic verifiers try, and how
#: many calls per problem the statistical ones make. ``dev`` is the default.
PROFILES: dict[str, dict[str, int]] = {
    "dev": {"max_examples": 100, "calls": 800, "problems": 4},
    "ci": {"max_examples": 300, "calls": 1600, "problems": 6},
    "thorough": {"max_examples": 2000, "calls": 4000, "problems": 12},
}

#: Default false-alarm rate of one statistical verifier call.
DEFAULT_FALSE_ALARM_RATE = 1e-6

#: Batch means per problem in the statistical tests: each batch averages
#: ``calls / BATCHES`` independent estimates, so batch means are close to normal
#: even when single estimates are skewed, and the t-test has BATCHES - 1 degrees of
#: freedom.
BATCHES = 40


# ---------------------------------------------------------------------- threads
_Verifier = TypeVar("_Verifier", bound=Callable[..., Any])


def _single_blas_thread(verifier: _Verifier) -> _Verifier:
    """Run a verifier with one BLAS thread when no other Python thread could see it.

    Verifiers make thousands of tiny (K x K, D x K) BLAS calls, for which thread pools
    only cost: on a loaded 2-core machine ``verify_elbo`` plus ``verify_elbo_estimator``
    took 15.8 s with OpenBLAS's two threads and 0.7 s with one. The BLAS thread count is
    process-wide, so it is limited only while the calling thread is the only Python
    thread, and set back (unless someone else has set it meanwhile) when the verifier
    returns or raises; the user's function, and any threads it starts, run under the
    limit. With other Python threads alive the verifier changes nothing and runs with
    the BLAS threads it finds, which can be much slower (limit them yourself, e.g. with
    ``threadpoolctl.threadpool_limits(1)``). :mod:`elbo_check._threads` says exactly
    what "the only Python thread" does and does not guarantee.
    """

    @functools.wraps(verifier)
    def limited(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        with limited_when_alone(blas_libraries(rescan=True), 1):
            return verifier(*args, **kwargs)

    return limited  # type: ignore[return-value]


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
        return (
            f"{self.check}: passed on {self.cases} cases (seed {self.seed}); worst error "
            f"{self.worst_error:.3g}; tolerance {self.tolerance}"
        )


# ---------------------------------------------------------------------- options
def _profile(profile: str | None) -> dict[str, int]:
    name = profile or default_profile()
    if name not in PROFILES:
        raise InvalidInputError(f"profile must be one of {sorted(PROFILES)}; got profile={name!r}")
    return PROFILES[name]


def _seed(seed: int | np.random.Generator | None) -> int:
    if seed is None:
        return default_seed()
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(0, 2**63 - 1))
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return int(seed)
    raise InvalidInputError(
        f"seed must be an int, a numpy.random.Generator or None; got {type(seed).__name__}"
    )


def _check_callable(fn: Any) -> None:
    if not callable(fn):
        raise InvalidInputError(f"fn must be callable; got {type(fn).__name__}")


def _check_rate(false_alarm_rate: float) -> None:
    if not (0.0 < false_alarm_rate < 1.0):
        raise InvalidInputError(
            f"false_alarm_rate must be in (0, 1); got false_alarm_rate={false_alarm_rate!r}"
        )


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


def _call(fn: Callable[..., Any], *args: Any) -> float:
    return _to_scalar(fn(*args))


def _to_scalar(value: Any) -> float:
    """A user's result (float, numpy or torch scalar) as a float; anything else is an error."""
    if hasattr(value, "detach"):  # torch tensors
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=np.float64)
    if array.size != 1:
        raise BadReturn(f"fn must return a scalar; got an array of shape {array.shape}")
    return float(array.reshape(()))


def _to_array(value: Any) -> FloatArray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


class _Failure(Exception):
    """Raised internally to hand a failing case out of hypothesis' search."""


# ---------------------------------------------------------------------- search
def _search(
    strategy: st.SearchStrategy[Any],
    is_bad: Callable[[Any], bool],
    seed: int,
    max_examples: int,
) -> Any | None:
    """The minimal example ``is_bad`` accepts, or None if none is found."""
    try:
        return find(
            strategy,
            is_bad,
            # No Phase.explain: it re-runs the failing case many times to annotate lines
            # of the *test* function, which here is our own closure (about 20 s wasted).
            settings=settings(
                max_examples=max_examples,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
            ),
            random=random.Random(seed),
        )
    except NoSuchExample:
        return None


@dataclass
class _Tracker:
    cases: int = 0
    worst: float = 0.0
    error: BaseException | None = None


def _deterministic_check(
    *,
    name: str,
    strategy: st.SearchStrategy[Any],
    evaluate: Callable[[Any], tuple[float, float, float]],
    explain: Callable[[Any, float, float, float, BaseException | None], str],
    seed: int,
    max_examples: int,
    tolerance_text: str,
) -> VerificationReport:
    """Search for a case where ``evaluate`` returns ``|got - expected| > tolerance``.

    ``evaluate(case)`` returns ``(got, expected, tolerance)``. A user exception counts
    as a failure; the minimal failing case is explained and raised as AssertionError.
    """
    tracker = _Tracker()

    def is_bad(case: Any) -> bool:
        tracker.cases += 1
        try:
            got, expected, tolerance = evaluate(case)
        except Exception:  # the user's code raised: a failure to minimise
            return True
        gap = abs(got - expected)
        if not math.isfinite(got) or gap > tolerance:
            return True
        tracker.worst = max(tracker.worst, gap / tolerance if tolerance > 0 else 0.0)
        return False

    failing = _search(strategy, is_bad, seed, max_examples)
    if failing is None:
        return VerificationReport(
            check=name,
            cases=tracker.cases,
            worst_error=tracker.worst,
            tolerance=tolerance_text,
            seed=seed,
            details={"worst_error_is": "largest |got - expected| / tolerance"},
        )
    try:
        got, expected, tolerance = evaluate(failing)
        error: BaseException | None = None
    except Exception as err:
        got = expected = tolerance = math.nan
        error = err
    message = explain(failing, got, expected, tolerance, error)
    header = f"{name} failed (seed={seed}; minimal example after {tracker.cases} cases)"
    if isinstance(error, BadReturn):
        raise AssertionError(f"{header}: {error}\n{message}") from error
    if error is not None:
        raise AssertionError(
            f"{header}: fn raised {type(error).__name__}: {error}\n{message}"
        ) from error
    raise AssertionError(f"{header}\n{message}")


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


# ---------------------------------------------------------------------- ELBO
def _elbo_scale(model: LinearGaussianModel, q: Gaussian, x: FloatArray) -> float:
    t = model.elbo_terms(q, x)
    return float(abs(t.expected_log_likelihood) + abs(t.kl_to_prior) + 1.0)


def _with_other_prior(model: LinearGaussianModel) -> LinearGaussianModel | None:
    """The same model with a moved prior mean and a non-diagonal, non-unit prior covariance."""
    k = model.latent_dim
    mixing = np.eye(k) + 0.3 * np.tril(np.ones((k, k)), -1)
    factor = model.prior.scale_tril @ (mixing * np.linspace(1.4, 0.8, k))
    try:
        return LinearGaussianModel(
            weights=model.weights,
            bias=model.bias,
            prior=Gaussian._trusted(model.prior.mean + 0.6 + 0.2 * np.arange(k), np.tril(factor)),
            noise_cov=model.noise_cov,
        )
    except ValueError:
        return None


_Problem = tuple[LinearGaussianModel, Gaussian, FloatArray]


def _elbo_variants(model: LinearGaussianModel, q: Gaussian, x: FloatArray) -> dict[str, _Problem]:
    """The failing case and variations of it that each change one thing."""
    k = model.latent_dim
    rng = np.random.default_rng(12345)
    rotation = np.linalg.qr(rng.standard_normal((k, k)))[0]
    moved_mean = Gaussian._trusted(q.mean + 0.7 + 0.3 * np.arange(k), q.scale_tril)
    new_cov = 1.7 * (rotation * np.linspace(0.5, 2.0, k)) @ rotation.T + 0.2 * q.cov
    changed_cov = Gaussian._trusted(q.mean, np.linalg.cholesky(0.5 * (new_cov + new_cov.T)))
    other_x = x + 0.9 + 0.1 * np.arange(model.data_dim)
    variants = {
        "original": (model, q, x),
        "mean moved": (model, moved_mean, x),
        "cov changed": (model, changed_cov, x),
        "x changed": (model, q, other_x),
        "both changed": (
            model,
            Gaussian._trusted(moved_mean.mean, changed_cov.scale_tril),
            other_x,
        ),
    }
    # Failures shrink to a N(0, I) prior, where "prior mean ignored" and "prior taken as
    # standard normal" coincide: a probe with another prior tells such suspects apart.
    other_prior = _with_other_prior(model)
    if other_prior is not None:
        variants["prior changed"] = (other_prior, q, x)
    return variants


def _one_at_a_time(fn: Callable[..., Any]) -> Callable[[list[Any]], list[float | None]]:
    """The user's unbatched function on each tuple of arguments (None where it raises)."""

    def values(problems: list[Any]) -> list[float | None]:
        out: list[float | None] = []
        for problem in problems:
            try:
                out.append(_call(fn, *problem))
            except Exception:
                out.append(None)
        return out

    return values


def _packed(fn: Callable[..., Any], size: int) -> Callable[[list[_Problem]], list[float | None]]:
    """The user's batched ELBO on each single problem, packed ``size`` to a call."""

    def values(problems: list[_Problem]) -> list[float | None]:
        out: list[float | None] = [None] * len(problems)
        for model in {id(m): m for m, _, _ in problems}.values():
            indices = [i for i, (m, _, _) in enumerate(problems) if m is model]

            def build(
                members: Sequence[tuple[Gaussian, FloatArray]], model: LinearGaussianModel = model
            ) -> tuple[Any, ...]:
                return (
                    model,
                    stack_gaussians([q for q, _ in members]),
                    np.stack([x for _, x in members]),
                )

            got = evaluate_members(
                fn, build, [(problems[i][1], problems[i][2]) for i in indices], size, "ELBO"
            )
            for i, value in zip(indices, got, strict=True):
                out[i] = None if np.isnan(value) else float(value)
        return out

    return values


def _elbo_probes(
    values_of: Callable[[list[_Problem]], list[float | None]],
    variants: dict[str, _Problem],
    rtol: float,
    atol: float,
) -> tuple[
    list[tuple[tuple[Any, ...], float, float, float]],
    dict[str, float],
    dict[str, tuple[float, float]],
]:
    """The user's values on the variants, with the exact ones, for the suspect matcher."""
    probes, gaps, values = [], {}, {}
    got_values = values_of(list(variants.values()))
    for (label, (mm, qq, xx)), got in zip(variants.items(), got_values, strict=True):
        if got is None:
            continue
        expected = float(mm.elbo(qq, xx))
        tolerance = rtol * _elbo_scale(mm, qq, xx) + atol
        probes.append(((mm, qq, xx), got, expected, tolerance))
        gaps[label] = got - expected
        values[label] = (got, expected)
    return probes, gaps, values


def check_elbo(
    value: Any,
    model: LinearGaussianModel,
    q: Gaussian,
    x: Any,
    *,
    rtol: float = 1e-6,
    atol: float = 1e-8,
) -> None:
    """Assert that ``value`` is the ELBO of ``q`` at one observation ``x``.

    For use on objects drawn inside your own ``@given`` test; the tolerance is
    ``rtol`` times the magnitude of the ELBO's terms plus ``atol``.
    """
    __tracebackhide__ = True
    expected = float(model.elbo(q, x))
    got = float(_to_array(value).reshape(()))
    tolerance = rtol * _elbo_scale(model, q, np.asarray(x, dtype=np.float64)) + atol
    if not abs(got - expected) <= tolerance:
        raise AssertionError("ELBO mismatch\n" + _numbers(got, expected, tolerance))


@_single_blas_thread
def verify_elbo(
    fn: Callable[[LinearGaussianModel, Gaussian, FloatArray], Any],
    *,
    seed: int | np.random.Generator | None = None,
    max_examples: int | None = None,
    profile: str | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    up_to_constant: bool = False,
    batch_size: int | None = None,
    problems: st.SearchStrategy[ElboProblem] | None = None,
    **model_options: Any,
) -> VerificationReport:
    """Check ``fn(model, q, x) -> float``, an ELBO for one observation ``x`` of shape (D,).

    With ``batch_size=B``, check batched code instead: ``fn(model, q, x)`` receives
    ``x`` of shape ``(B, D)`` and a ``q`` with ``q.mean`` of shape ``(B, K)`` and one
    covariance per row (``q.scale_tril`` and ``q.cov`` of shape ``(B, K, K)``), and
    must return the ``B`` ELBOs, shape ``(B,)``.

    Parameters
    ----------
    fn : callable
        The code under test. ``q`` is a :class:`~elbo_check.Gaussian` (read
        ``q.mean``, ``q.cov`` or ``q.scale_tril``); ``model`` exposes ``weights``,
        ``bias``, ``prior.mean``, ``prior.cov`` and ``noise_cov``.
    seed : int or numpy.random.Generator, optional
        Makes the search reproducible (default: ``$ELBO_CHECK_SEED`` or 0).
    max_examples : int, optional
        Cases to try (default from ``profile``: 100 for dev, 300 for ci).
    rtol, atol : float
        A case passes when ``|got - expected| <= rtol * (|E_q log p(x|z)| +
        KL(q||p(z)) + 1) + atol``; loosen ``rtol`` to about 1e-4 for float32 code.
    up_to_constant : bool
        For code that drops additive constants: pass when ``got - expected`` is the
        same (within tolerance) for three different q at the same model and x.
    batch_size : int, optional
        Check a batched ``fn`` on batches of this many rows. Every member is compared;
        a failure names the member, and the diagnosis says whether the members'
        values depend on each other (a reduction or a transpose over the batch axis).
    problems : strategy, optional
        Your own strategy of :class:`~elbo_check.strategies.ElboProblem`.
    **model_options
        Passed to :func:`~elbo_check.strategies.linear_gaussian_models` (e.g.
        ``noise_kinds=("diagonal",)`` if your code only supports diagonal noise).

    Returns
    -------
    VerificationReport

    Raises
    ------
    AssertionError
        With the minimal counterexample and a diagnosis of the faulty term.
    """
    __tracebackhide__ = True
    _check_callable(fn)
    chosen = _profile(profile)
    seed_value = _seed(seed)
    examples = max_examples or chosen["max_examples"]
    size = check_batch_size(batch_size)
    if size is not None:
        if up_to_constant:
            raise InvalidInputError(
                "up_to_constant=True and batch_size cannot be combined; check the "
                "constant-free code unbatched (batch_size=None)"
            )
        batched = problems or elbo_problems(
            batch_shape=(size,), shared_covariance=False, **model_options
        )
        return _verify_batched_elbo(fn, size, batched, seed_value, examples, rtol, atol)
    base = problems if problems is not None else elbo_problems(**model_options)

    if not up_to_constant:

        def evaluate(p: ElboProblem) -> tuple[float, float, float]:
            got = _call(fn, p.model, p.q, p.x)
            expected = float(p.model.elbo(p.q, p.x))
            return got, expected, rtol * _elbo_scale(p.model, p.q, p.x) + atol

        def explain(
            p: ElboProblem, got: float, expected: float, tol: float, error: BaseException | None
        ) -> str:
            parts = [_describe_model(p.model), _describe_gaussian("q", p.q), f"  x = {_fmt(p.x)}"]
            if error is None:
                parts.append(_numbers(got, expected, tol))
                t = p.model.elbo_terms(p.q, p.x)
                parts.append(
                    "  exact terms: E_q[log p(x|z)] = "
                    f"{float(t.expected_log_likelihood):.6g}, KL(q||p(z)) = "
                    f"{float(t.kl_to_prior):.6g}, cross-entropy = {float(t.cross_entropy):.6g}, "
                    f"entropy = {float(t.entropy):.6g}"
                )
                probes, gaps, values = _elbo_probes(
                    _one_at_a_time(fn), _elbo_variants(p.model, p.q, p.x), rtol, atol
                )
                parts.append(
                    _diagnosis(
                        match_suspects(ELBO_SUSPECTS, probes), describe_gap(gaps, values, tol)
                    )
                )
            return "\n".join(parts)

        return _deterministic_check(
            name="verify_elbo",
            strategy=base,
            evaluate=evaluate,
            explain=explain,
            seed=seed_value,
            max_examples=examples,
            tolerance_text=f"rtol={rtol:g} of the term magnitudes + atol={atol:g}",
        )

    @st.composite
    def with_three_qs(draw: st.DrawFn) -> tuple[ElboProblem, Gaussian, Gaussian]:
        problem = draw(base)
        others = variational_gaussians(problem.model, batch_shape=problem.q.batch_shape)
        return problem, draw(others), draw(others)

    def evaluate_constant(
        case: tuple[ElboProblem, Gaussian, Gaussian],
    ) -> tuple[float, float, float]:
        p, q1, q2 = case
        offsets, scale = [], 0.0
        for q in (p.q, q1, q2):
            offsets.append(_call(fn, p.model, q, p.x) - float(p.model.elbo(q, p.x)))
            scale = max(scale, _elbo_scale(p.model, q, p.x))
        spread = max(offsets) - min(offsets)
        return spread, 0.0, 2 * (rtol * scale + atol)

    def explain_constant(
        case: tuple[ElboProblem, Gaussian, Gaussian],
        got: float,
        expected: float,
        tol: float,
        error: BaseException | None,
    ) -> str:
        p, q1, q2 = case
        parts = [_describe_model(p.model), f"  x = {_fmt(p.x)}"]
        for name, q in (("q", p.q), ("q2", q1), ("q3", q2)):
            parts.append(_describe_gaussian(name, q))
        if error is None:
            rows = []
            for name, q in (("q", p.q), ("q2", q1), ("q3", q2)):
                value = _call(fn, p.model, q, p.x)
                exact = float(p.model.elbo(q, p.x))
                rows.append(
                    f"  {name}: got {value:.12g}, exact {exact:.12g}, "
                    f"got - exact = {value - exact:.6g}"
                )
            parts += rows
            parts.append(
                f"  got - exact varies by {got:.6g} across q (tolerance {tol:.3g}): "
                "the difference depends on q, so it is not a dropped constant"
            )
            probes, gaps, values = _elbo_probes(
                _one_at_a_time(fn), _elbo_variants(p.model, p.q, p.x), rtol, atol
            )
            # A constant offset is allowed here, so compare gaps to the first probe's.
            offset = gaps.get("original", 0.0)
            shifted = [(args, g - offset, e, t) for args, g, e, t in probes]
            parts.append(
                _diagnosis(match_suspects(ELBO_SUSPECTS, shifted), describe_gap(gaps, values, tol))
            )
        return "\n".join(parts)

    return _deterministic_check(
        name="verify_elbo(up_to_constant=True)",
        strategy=with_three_qs(),
        evaluate=evaluate_constant,
        explain=explain_constant,
        seed=seed_value,
        max_examples=examples,
        tolerance_text=(
            f"spread of got - exact across q <= 2 (rtol={rtol:g} * scale + atol={atol:g})"
        ),
    )


def _worst_member(got: FloatArray, expected: FloatArray, tolerance: FloatArray) -> int:
    """The member that fails worst: the first non-finite value, else the largest gap/tol."""
    bad = ~np.isfinite(got)
    if np.any(bad):
        return int(np.flatnonzero(bad)[0])
    return int(np.argmax(np.abs(got - expected) / tolerance))


def _worst_of(
    compare: Callable[[Any], tuple[FloatArray, FloatArray, FloatArray]],
) -> Callable[[Any], tuple[float, float, float]]:
    """``evaluate`` for a per-member ``compare``: the worst member's (got, expected, tol)."""

    def evaluate(case: Any) -> tuple[float, float, float]:
        got, expected, tolerance = compare(case)
        i = _worst_member(got, expected, tolerance)
        return float(got[i]), float(expected[i]), float(tolerance[i])

    return evaluate


def _failing_members(got: FloatArray, expected: FloatArray, tolerance: FloatArray) -> int:
    return int(np.count_nonzero(~(np.abs(got - expected) <= tolerance)))


_BATCH_AXIS_HINT = (
    "Hint: an error that appears only with batches usually comes from an operation on "
    "the wrong axis: np.diagonal(a) and a.T act on the first axes of a (B, K, K) array "
    "(use np.diagonal(a, axis1=-2, axis2=-1) and a.swapaxes(-1, -2)); sums and means "
    "need axis=-1 for the latent axis"
)


def _interaction(
    values_of: Callable[[list[Any]], list[float | None]],
    single: Any,
    others: list[Any],
    got: float,
    tolerance: float,
    size: int,
) -> str | None:
    """A diagnosis if a member's value changes with the rest of its batch.

    The member is evaluated first in a batch of copies of itself, then in a batch
    with ``others`` (different problems) after it; a correct batched function gives
    the same value in both and in the original batch.
    """
    if size == 1 or not others:
        return None
    fill = [others[i % len(others)] for i in range(size - 1)]
    among_copies = values_of([single] * size)[0]
    among_others = values_of([single, *fill])[0]
    seen = [v for v in (among_copies, among_others) if v is not None]
    if all(abs(v - got) <= tolerance for v in seen):
        return None
    contexts = [f"{got:.12g} in its batch"]
    if among_copies is not None:
        contexts.append(f"{among_copies:.12g} in a batch of {size} copies of it")
    if among_others is not None:
        contexts.append(f"{among_others:.12g} in a batch with other members")
    return (
        f"Diagnosis: the members of a batch interact: this member's value is "
        f"{', '.join(contexts)}.\n"
        "  Fix: compute each member from its own row only; look for a sum or mean over "
        "the batch axis (axis 0) where the latent axis was meant, broadcasting of a "
        "(B,) array against (B, K), np.diagonal or .T on a (B, K, K) array (both act on "
        "the first axes; use np.diagonal(a, axis1=-2, axis2=-1) and a.swapaxes(-1, -2)), "
        "or q.scale_tril[0] used for every row"
    )


def _verify_batched_elbo(
    fn: Callable[..., Any],
    size: int,
    strategy: st.SearchStrategy[ElboProblem],
    seed: int,
    max_examples: int,
    rtol: float,
    atol: float,
) -> VerificationReport:
    def compare(p: ElboProblem) -> tuple[FloatArray, FloatArray, FloatArray]:
        got = as_values(fn(p.model, p.q, p.x), size, "ELBO")
        terms = p.model.elbo_terms(p.q, p.x)
        expected = np.asarray(terms.elbo, dtype=np.float64)
        scale = np.abs(terms.expected_log_likelihood) + np.abs(terms.kl_to_prior) + 1.0
        return got, expected, rtol * scale + atol

    def explain(
        p: ElboProblem, got: float, expected: float, tol: float, error: BaseException | None
    ) -> str:
        parts = [_describe_model(p.model)]
        if error is not None:
            parts.append(
                f"  a batch of {size}: q.mean {p.q.mean.shape}, q.scale_tril "
                f"{p.q.scale_tril.shape}, x {p.x.shape}"
            )
            parts.append(_BATCH_AXIS_HINT)
            return "\n".join(parts)
        got_all, expected_all, tolerance_all = compare(p)
        i = _worst_member(got_all, expected_all, tolerance_all)
        q_i, x_i = member(p.q, i), np.array(p.x[i])
        failing = _failing_members(got_all, expected_all, tolerance_all)
        parts += [
            f"  member {i} of the batch of {size} ({failing} of {size} members fail):",
            _describe_gaussian("q", q_i),
            f"  x = {_fmt(x_i)}",
            _numbers(got, expected, tol),
        ]
        t = p.model.elbo_terms(q_i, x_i)
        parts.append(
            "  exact terms: E_q[log p(x|z)] = "
            f"{float(t.expected_log_likelihood):.6g}, KL(q||p(z)) = "
            f"{float(t.kl_to_prior):.6g}, cross-entropy = {float(t.cross_entropy):.6g}, "
            f"entropy = {float(t.entropy):.6g}"
        )
        values_of = _packed(fn, size)
        variants = _elbo_variants(p.model, q_i, x_i)
        same_model = [v for v in variants.values() if v[0] is p.model][1:]
        mixing = _interaction(values_of, variants["original"], same_model, got, tol, size)
        if mixing is not None:
            parts.append(mixing)
            return "\n".join(parts)
        probes, gaps, values = _elbo_probes(values_of, variants, rtol, atol)
        parts.append(
            _diagnosis(match_suspects(ELBO_SUSPECTS, probes), describe_gap(gaps, values, tol))
        )
        return "\n".join(parts)

    return _deterministic_check(
        name=f"verify_elbo(batch_size={size})",
        strategy=strategy,
        evaluate=_worst_of(compare),
        explain=explain,
        seed=seed,
        max_examples=max_examples,
        tolerance_text=f"rtol={rtol:g} of the term magnitudes + atol={atol:g}, per member",
    )


# ---------------------------------------------------------------------- KL
def _kl_scale(p: Gaussian, q: Gaussian) -> Any:
    """The magnitudes KL(p || q) is made of (per member for batches): the tolerance scale."""
    ratio = solve_tril(q.scale_tril, p.scale_tril)
    w = solve_tril_rows(q.scale_tril, np.asarray(p.mean - q.mean))
    log_dets = np.abs(np.asarray(q.log_det_cov) - np.asarray(p.log_det_cov))
    return np.sum(ratio**2, axis=(-2, -1)) + np.sum(w**2, axis=-1) + p.dim + log_dets + 1


_Pair = tuple[Gaussian, Gaussian]


def _kl_variants(p: Gaussian, q: Gaussian) -> list[_Pair]:
    """The failing pair, swapped, and three unrelated pairs of its dimension."""
    rng = np.random.default_rng(7)
    variants = [(p, q), (q, p)]
    for _ in range(3):
        # Random scales too: for K = 1 a condition number alone fixes the covariance.
        first, second = (
            random_gaussian(
                rng, p.dim, condition_number=10.0, cov_scale=float(rng.uniform(0.3, 3.0))
            )
            for _ in range(2)
        )
        variants.append((first, second))
    return variants


def _kl_diagnosis(
    values: list[float | None], variants: list[_Pair], rtol: float, atol: float
) -> str:
    probes = [
        ((pp, qq), value, float(kl_divergence(pp, qq)), rtol * float(_kl_scale(pp, qq)) + atol)
        for (pp, qq), value in zip(variants, values, strict=True)
        if value is not None
    ]
    return _diagnosis(match_suspects(KL_SUSPECTS, probes), "compare term by term")


@_single_blas_thread
def verify_kl(
    fn: Callable[[Gaussian, Gaussian], Any],
    *,
    seed: int | np.random.Generator | None = None,
    max_examples: int | None = None,
    profile: str | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    max_dim: int = 6,
    max_condition_number: float = 100.0,
    batch_size: int | None = None,
) -> VerificationReport:
    """Check ``fn(p, q) -> float``, the KL divergence KL(p || q) between two Gaussians.

    ``p`` and ``q`` are :class:`~elbo_check.Gaussian` objects of the same dimension
    with non-zero means and full covariances (read ``.mean``, ``.cov``,
    ``.scale_tril``). Tolerance: ``rtol * (KL + tr + Mahalanobis + K + 1) + atol``.

    With ``batch_size=B``, ``p`` and ``q`` are batches of ``B`` Gaussians, each with its
    own covariance (``.mean`` of shape ``(B, K)``, ``.scale_tril`` ``(B, K, K)``), and
    ``fn`` must return the ``B`` divergences, shape ``(B,)``; each member is compared.
    """
    __tracebackhide__ = True
    _check_callable(fn)
    chosen = _profile(profile)
    seed_value = _seed(seed)
    size = check_batch_size(batch_size)
    shape = () if size is None else (size,)
    dims = st.integers(1, max_dim)
    pairs = dims.flatmap(
        lambda k: st.tuples(
            *[
                gaussians(
                    k,
                    batch_shape=shape,
                    max_condition_number=max_condition_number,
                    shared_covariance=size is None,
                )
                for _ in range(2)
            ]
        )
    )

    def compare(pair: _Pair) -> tuple[FloatArray, FloatArray, FloatArray]:
        p, q = pair
        if size is None:
            got = np.array([_call(fn, p, q)])
        else:
            got = as_values(fn(p, q), size, "KL divergence")
        expected = np.asarray(kl_divergence(p, q), dtype=np.float64).reshape(got.shape)
        return got, expected, np.reshape(rtol * _kl_scale(p, q) + atol, got.shape)

    def explain(
        pair: _Pair, got: float, expected: float, tol: float, error: BaseException | None
    ) -> str:
        p, q = pair
        if error is not None:
            described = [f"  K = {p.dim}", _describe_gaussian("p", p), _describe_gaussian("q", q)]
            return "\n".join(described if size is None else [*described, _BATCH_AXIS_HINT])
        if size is None:
            parts = [f"  K = {p.dim}", _describe_gaussian("p", p), _describe_gaussian("q", q)]
            parts.append(_numbers(got, expected, tol))
            variants = _kl_variants(p, q)
            values = _one_at_a_time(fn)(list(variants))
            parts.append(_kl_diagnosis(values, variants, rtol, atol))
            return "\n".join(parts)
        got_all, expected_all, tolerance_all = compare(pair)
        i = _worst_member(got_all, expected_all, tolerance_all)
        p_i, q_i = member(p, i), member(q, i)
        failing = _failing_members(got_all, expected_all, tolerance_all)
        parts = [
            f"  K = {p.dim}; member {i} of the batch of {size} ({failing} of {size} members fail):",
            _describe_gaussian("p", p_i),
            _describe_gaussian("q", q_i),
            _numbers(got, expected, tol),
        ]

        def values_of(cases: list[_Pair]) -> list[float | None]:
            def build(members: Sequence[_Pair]) -> tuple[Any, ...]:
                return stack_gaussians([a for a, _ in members]), stack_gaussians(
                    [b for _, b in members]
                )

            got_values = evaluate_members(fn, build, cases, size, "KL divergence")
            return [None if np.isnan(v) else float(v) for v in got_values]

        variants = _kl_variants(p_i, q_i)
        mixing = _interaction(values_of, variants[0], variants[1:], got, tol, size)
        if mixing is not None:
            parts.append(mixing)
        else:
            parts.append(_kl_diagnosis(values_of(variants), variants, rtol, atol))
        return "\n".join(parts)

    name = "verify_kl" if size is None else f"verify_kl(batch_size={size})"
    return _deterministic_check(
        name=name,
        strategy=pairs,
        evaluate=_worst_of(compare),
        explain=explain,
        seed=seed_value,
        max_examples=max_examples or chosen["max_examples"],
        tolerance_text=f"rtol={rtol:g} of the term magnitudes + atol={atol:g}",
    )


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
        max_examples=max_examples or chosen["max_examples"],
        tolerance_text=f"rtol={rtol:g} of (|log p(x)| + D + 1) + atol={atol:g}",
    )


# ---------------------------------------------------------------------- estimators
#: (D, K, family, noise kind, prior kind) of the fixed statistical problems, in turn.
_STATISTICAL_SHAPES = (
    (3, 2, "full_noise", "full", "general"),
    (2, 4, "general", "diagonal", "general"),
    (5, 3, "factor_analysis", "diagonal", "standard"),
    (4, 4, "ppca", "isotropic", "standard"),
    (3, 3, "bayesian_linear_regression", "isotropic", "general"),
)


def _statistical_problems(
    seed: int, count: int, model_options: dict[str, Any]
) -> list[tuple[LinearGaussianModel, Gaussian, FloatArray]]:
    """Fixed problems for statistical checks, chosen where realistic bugs bias estimates.

    Families and shapes cycle through full noise, diagonal noise with a general prior,
    K > D, PPCA and regression; q has a full covariance (so a transposed factor or a
    covariance used as a scale changes the distribution) and sits near the posterior (so
    the correct estimator has small variance and biases stand out). ``model_options``
    may restrict ``noise_kinds`` and ``prior_kinds`` as for the strategies.
    """
    unknown = sorted(set(model_options) - {"noise_kinds", "prior_kinds"})
    if unknown:
        raise InvalidInputError(
            f"statistical checks accept only noise_kinds and prior_kinds as model options; "
            f"got {unknown}"
        )
    noise_kinds = model_options.get("noise_kinds", ("isotropic", "diagonal", "full"))
    prior_kinds = model_options.get("prior_kinds", ("standard", "diagonal", "general"))
    shapes = [
        (d, k, family)
        for d, k, family, noise, prior in _STATISTICAL_SHAPES
        if noise in noise_kinds and prior in prior_kinds
    ]
    if not shapes:
        raise InvalidInputError(
            f"no statistical test problem has noise_kinds={tuple(noise_kinds)!r} and "
            f"prior_kinds={tuple(prior_kinds)!r}"
        )
    rng = np.random.default_rng([seed, 2024])
    out = []
    for i in range(count):
        d, k, family = shapes[i % len(shapes)]
        model = random_model(
            rng,
            data_dim=d,
            latent_dim=k,
            family=family,  # type: ignore[arg-type]
            condition_number=10.0,
        )
        x = model.sample(1, rng)[0][0]
        posterior = model.posterior(x)
        skew = random_gaussian(rng, k, condition_number=10.0).scale_tril
        product = posterior.scale_tril @ skew  # a full, non-symmetric spread of q
        factor = cholesky("cov", product @ product.T)
        mean = posterior.mean + posterior.scale_tril @ rng.standard_normal(k)
        out.append((model, Gaussian._trusted(mean, factor), x))
    return out


def _expected_log_ratio(
    model: LinearGaussianModel, q: Gaussian, x: FloatArray, mean: FloatArray, cov: FloatArray
) -> float:
    """E over z ~ N(mean, cov) (cov may be singular) of log p(x, z) - log q(z)."""
    k, d = model.latent_dim, model.data_dim
    from ._gaussian import LOG_2PI

    residual = model._noise.whiten(x - model.bias - model.weights @ mean)
    weights = model._marginal.whitened_weights
    ell = -0.5 * (
        d * LOG_2PI
        + model._noise.logdet
        + residual @ residual
        + float(np.trace(weights.T @ weights @ cov))
    )

    def expected_log_density(g: Gaussian) -> float:
        precision = g.precision
        offset = mean - g.mean
        return -0.5 * (
            k * LOG_2PI
            + float(g.log_det_cov)
            + float(np.trace(precision @ cov))
            + float(offset @ precision @ offset)
        )

    return float(ell + expected_log_density(model.prior) - expected_log_density(q))


def _estimator_suspects(n_samples: int) -> tuple[Suspect, ...]:
    def wrong_law(cov_of: Callable[[Gaussian], FloatArray]) -> Callable[..., float]:
        return lambda m, q, x: _expected_log_ratio(m, q, x, q.mean, cov_of(q))

    def k_ones(q: Gaussian) -> FloatArray:
        return np.ones((q.dim, q.dim))

    return (
        Suspect(
            "samples use the transposed Cholesky factor (z = m + L^T eps)",
            "draw z = m + L eps with L lower triangular, S = L L^T",
            wrong_law(lambda q: q.scale_tril.T @ q.scale_tril),
        ),
        Suspect(
            "samples use the covariance as the scale (z = m + S eps)",
            "the scale is the Cholesky factor L, not S = L L^T",
            wrong_law(lambda q: q.cov @ q.cov),
        ),
        Suspect(
            "one noise draw is shared across latent dimensions",
            "draw eps with shape (n_samples, K), one independent normal per dimension",
            wrong_law(lambda q: q.scale_tril @ k_ones(q) @ q.scale_tril.T),
        ),
        Suspect(
            "the sum over samples is returned instead of the mean",
            "divide by n_samples",
            lambda m, q, x: n_samples * float(m.elbo(q, x)),
        ),
        Suspect(
            "the sum over samples is divided by n_samples - 1",
            "divide by n_samples",
            lambda m, q, x: (
                n_samples / (n_samples - 1) * float(m.elbo(q, x)) if n_samples > 1 else None
            ),
        ),
        Suspect(
            "log q(z) is missing (the estimate is E_q[log p(x, z)])",
            "subtract log q(z) at the same samples, or add the entropy",
            lambda m, q, x: float(m.elbo(q, x)) - q.entropy(),
        ),
        Suspect(
            "log q(z) lacks the Jacobian term -sum(log diag L)",
            "log q(m + L eps) = log N(eps; 0, I) - sum(log diag L)",
            lambda m, q, x: float(m.elbo(q, x)) - 0.5 * q.log_det_cov,
        ),
    )


def _repeated_calls(
    name: str,
    fn: Callable[..., Any],
    convert: Callable[[Any], Any],
    case: tuple[LinearGaussianModel, Gaussian, FloatArray, int],
    seed: list[int],
    calls: int,
) -> FloatArray:
    """``convert(fn(model, q, x, rng, n_samples))`` for ``calls`` independent generators
    spawned from ``seed``, as rows of an array.

    A user exception becomes an AssertionError that shows the problem it failed on.
    """
    model, q, x, n_samples = case
    results = []
    for stream in np.random.SeedSequence(seed).spawn(calls):
        generator = np.random.Generator(np.random.PCG64(stream))
        try:
            results.append(convert(fn(model, q, x, generator, n_samples)))
        except Exception as err:
            raise AssertionError(
                f"{name}: fn raised {type(err).__name__}: {err}\n"
                + _describe_model(model)
                + "\n"
                + _describe_gaussian("q", q)
                + f"\n  x = {_fmt(x)}\n  n_samples = {n_samples}"
            ) from err
    return np.asarray(results, dtype=np.float64).reshape(calls, -1)


def _statistical_budget(
    chosen: dict[str, int], calls: int | None, problems: int | None, n_samples: int
) -> tuple[int, int]:
    """Validated ``(calls per problem, problems)`` of a statistical check."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise InvalidInputError(
            f"n_samples must be a positive integer; got n_samples={n_samples!r}"
        )
    total_calls = calls or chosen["calls"]
    if total_calls < 2 * BATCHES:
        raise InvalidInputError(f"calls must be at least {2 * BATCHES}; got calls={total_calls!r}")
    return total_calls, problems or chosen["problems"]


def _batch_t(values: FloatArray, target: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """t statistics of the mean of ``values`` (calls along axis 0) against ``target``."""
    calls = values.shape[0]
    usable = (calls // BATCHES) * BATCHES
    batches = values[:usable].reshape(BATCHES, usable // BATCHES, *values.shape[1:]).mean(axis=1)
    mean = values[:usable].mean(axis=0)
    standard_error = batches.std(axis=0, ddof=1) / math.sqrt(BATCHES)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (mean - target) / standard_error
    return mean, standard_error, t


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
    seed_value = _seed(seed)
    if mode == "pathwise":
        return _verify_pathwise(
            fn, seed_value, max_examples or chosen["max_examples"], rtol, atol, model_options
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
            _to_scalar,
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


def _pathwise_value(model: LinearGaussianModel, q: Gaussian, x: FloatArray, z: FloatArray) -> float:
    return float(np.mean(model.log_joint(x, z) - q.log_prob(z)))


def _pathwise_suspects() -> tuple[Suspect, ...]:
    def at(transform: Callable[[Gaussian, FloatArray], FloatArray]) -> Callable[..., float]:
        return lambda m, q, x, eps: _pathwise_value(m, q, x, transform(q, eps))

    return (
        Suspect(
            "samples use the transposed Cholesky factor (z = m + L^T eps)",
            "z = m + L eps, i.e. eps @ L.T for row vectors",
            at(lambda q, e: q.mean + e @ q.scale_tril),
        ),
        Suspect(
            "samples use the covariance as the scale (z = m + S eps)",
            "the scale is the Cholesky factor L",
            at(lambda q, e: q.mean + e @ q.cov.T),
        ),
        Suspect(
            "one noise draw is shared across latent dimensions",
            "use every column of eps",
            at(lambda q, e: q.mean + np.repeat(e[:, :1], q.dim, axis=1) @ q.scale_tril.T),
        ),
        Suspect(
            "log q(z) is missing",
            "subtract log q(z) at the same samples",
            lambda m, q, x, e: float(np.mean(m.log_joint(x, q.mean + e @ q.scale_tril.T))),
        ),
        Suspect(
            "log q(z) lacks the Jacobian term -sum(log diag L)",
            "log q(m + L eps) = log N(eps; 0, I) - sum(log diag L)",
            lambda m, q, x, e: (
                _pathwise_value(m, q, x, q.mean + e @ q.scale_tril.T) - 0.5 * q.log_det_cov
            ),
        ),
        Suspect(
            "the sum over samples is returned instead of the mean",
            "divide by n_samples",
            lambda m, q, x, e: (
                e.shape[0] * _pathwise_value(m, q, x, q.mean + e @ q.scale_tril.T)
                if e.shape[0] > 1
                else None
            ),
        ),
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


# ---------------------------------------------------------------------- gradients
def _gradient_pair(value: Any, k: int) -> tuple[FloatArray, FloatArray]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise InvalidInputError(
            f"fn must return a pair (grad_mean, grad_scale_tril); got {type(value).__name__}"
        )
    grad_mean = _to_array(value[0]).reshape(-1)
    grad_factor = _to_array(value[1])
    if grad_mean.shape != (k,) or grad_factor.shape != (k, k):
        raise InvalidInputError(
            f"fn must return grad_mean of shape ({k},) and grad_scale_tril of shape ({k}, {k}); "
            f"got {grad_mean.shape} and {grad_factor.shape}"
        )
    return grad_mean, np.tril(grad_factor)


def _flat_gradient_pair(value: Any, k: int) -> FloatArray:
    """A user's ``(grad_mean, grad_scale_tril)`` as one vector (lower triangle only)."""
    return _flatten(_gradient_pair(value, k))


def _flat_gradient(model: LinearGaussianModel, q: Gaussian, x: FloatArray) -> FloatArray:
    grads = model.elbo_grad_variational(q, x)
    rows, cols = np.tril_indices(q.dim)
    return np.concatenate([grads.mean.reshape(-1), grads.scale_tril[rows, cols]])


def _flatten(pair: tuple[FloatArray, FloatArray]) -> FloatArray:
    rows, cols = np.tril_indices(pair[1].shape[0])
    return np.concatenate([pair[0], pair[1][rows, cols]])


def _gradient_suspects() -> tuple[Suspect, ...]:
    def closed(m: LinearGaussianModel, q: Gaussian, x: FloatArray) -> Any:
        return m.elbo_grad_variational(q, x)

    def flat(mean: FloatArray, factor: FloatArray) -> FloatArray:
        return _flatten((mean, np.tril(factor)))

    return (
        Suspect(
            "the gradient has the wrong sign (the gradient of the loss -ELBO)",
            "ascend the ELBO: return d ELBO / d phi",
            lambda m, q, x: -_flat_gradient(m, q, x),
        ),
        Suspect(
            "the entropy's contribution diag(1 / L_ii) is missing from the factor gradient",
            "d/dL sum(log diag L) = diag(1 / diag L)",
            lambda m, q, x: flat(
                closed(m, q, x).mean,
                closed(m, q, x).scale_tril - np.diag(1 / np.diagonal(q.scale_tril)),
            ),
        ),
        Suspect(
            "the gradient with respect to the covariance S is returned for L",
            "chain rule: d/dL = tril(2 (dELBO/dS) L)",
            lambda m, q, x: flat(
                closed(m, q, x).mean,
                0.5 * (-m.posterior_precision + np.linalg.inv(q.cov)),
            ),
        ),
        Suspect(
            "the prior term's gradient is missing from the mean gradient",
            "d/dm includes -S0^-1 (m - mu0)",
            lambda m, q, x: flat(
                closed(m, q, x).mean + np.linalg.solve(m.prior.cov, q.mean - m.prior.mean),
                closed(m, q, x).scale_tril,
            ),
        ),
    )


@_single_blas_thread
def verify_elbo_gradient(
    fn: Callable[..., Any],
    *,
    mode: str = "exact",
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
    r"""Check gradients of the ELBO with respect to q's mean ``m`` and Cholesky factor ``L``.

    ``mode="exact"``: ``fn(model, q, x) -> (grad_mean, grad_scale_tril)`` is compared
    with the closed form (entries above the diagonal of ``grad_scale_tril`` are not
    parameters and are ignored) within ``rtol * (|g| + 1) + atol`` in the max norm;
    hypothesis shrinks a mismatch to a minimal example.

    ``mode="stochastic"``: ``fn(model, q, x, rng, n_samples) -> (grad_mean,
    grad_scale_tril)`` must be an unbiased estimate (reparameterisation, score
    function, ...). Each of the ``K + K(K+1)/2`` coordinates is t-tested on batch
    means as in :func:`verify_elbo_estimator`, Bonferroni-corrected over all
    coordinates and problems, so a correct estimator fails a call with probability at
    most ``false_alarm_rate``.
    """
    __tracebackhide__ = True
    _check_callable(fn)
    _check_rate(false_alarm_rate)
    chosen = _profile(profile)
    seed_value = _seed(seed)
    if mode == "exact":
        return _verify_exact_gradient(
            fn, seed_value, max_examples or chosen["max_examples"], rtol, atol, model_options
        )
    if mode != "stochastic":
        raise InvalidInputError(f"mode must be 'exact' or 'stochastic'; got mode={mode!r}")
    total_calls, count = _statistical_budget(chosen, calls, problems, n_samples)
    cases = _statistical_problems(seed_value, count, model_options)
    comparisons = sum(q.dim + q.dim * (q.dim + 1) // 2 for _, q, _ in cases)
    critical = float(scipy.stats.t.isf(false_alarm_rate / (2 * comparisons), BATCHES - 1))
    worst = 0.0
    for index, (model, q, x) in enumerate(cases):
        expected = _flat_gradient(model, q, x)
        draws = _repeated_calls(
            "verify_elbo_gradient",
            fn,
            functools.partial(_flat_gradient_pair, k=q.dim),
            (model, q, x, n_samples),
            [seed_value, 78, index],
            total_calls,
        )
        mean, standard_error, t = _batch_t(draws, expected)
        # Spread below the deterministic tolerance is rounding, not randomness (BLAS may
        # round a repeated computation differently): such coordinates, and any whose
        # bias is within that tolerance, are judged as deterministic values.
        tolerance = rtol * (np.abs(expected) + 1.0) + atol
        constant = standard_error <= tolerance
        exact_bad = constant & (np.abs(mean - expected) > tolerance)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(
                constant | (np.abs(mean - expected) <= tolerance), 0.0, np.abs(t) / critical
            )
        worst = max(worst, float(np.max(ratio)))
        if np.any(ratio > 1.0) or np.any(exact_bad) or not np.all(np.isfinite(mean)):
            names = _coordinate_names(q.dim)
            rows = [
                f"    {names[i]:>12s}: exact {expected[i]: .6g}, mean {mean[i]: .6g} "
                f"+- {standard_error[i]:.2g} (t = {t[i]:.3g})"
                + ("  <-- biased" if ratio[i] > 1.0 or exact_bad[i] else "")
                for i in range(expected.size)
            ]
            allowance = critical * standard_error + tolerance
            suspects = [
                suspect
                for suspect in _gradient_suspects()
                if np.all(np.abs(mean - suspect.predict(model, q, x)) <= allowance)
            ]
            rows.append(_diagnosis(suspects, "see the coordinates marked 'biased'"))
            raise AssertionError(
                f"verify_elbo_gradient(mode='stochastic') failed: biased coordinates (seed="
                f"{seed_value}, problem {index + 1} of {count}; critical |t| = {critical:.3g} "
                f"for false-alarm rate {false_alarm_rate:g} over {comparisons} coordinates)\n"
                + _describe_model(model)
                + "\n"
                + _describe_gaussian("q", q)
                + f"\n  x = {_fmt(x)}\n"
                + "\n".join(rows)
            )
    return VerificationReport(
        check="verify_elbo_gradient(mode='stochastic')",
        cases=count,
        worst_error=worst,
        tolerance=f"|t| <= {critical:.3g} per coordinate (false-alarm rate {false_alarm_rate:g})",
        seed=seed_value,
        details={"calls": total_calls, "n_samples": n_samples, "critical_t": critical},
    )


def _coordinate_names(k: int) -> list[str]:
    rows, cols = np.tril_indices(k)
    return [f"mean[{i}]" for i in range(k)] + [
        f"L[{i},{j}]" for i, j in zip(rows, cols, strict=True)
    ]


def _verify_exact_gradient(
    fn: Callable[..., Any],
    seed: int,
    max_examples: int,
    rtol: float,
    atol: float,
    model_options: dict[str, Any],
) -> VerificationReport:
    def compare(p: ElboProblem) -> tuple[FloatArray, FloatArray, FloatArray]:
        got = _flat_gradient_pair(fn(p.model, p.q, p.x), p.model.latent_dim)
        expected = _flat_gradient(p.model, p.q, p.x)
        return got, expected, rtol * (np.abs(expected) + 1.0) + atol

    def evaluate(p: ElboProblem) -> tuple[float, float, float]:
        got, expected, tolerance = compare(p)
        return float(np.max(np.abs(got - expected) / tolerance)), 0.0, 1.0

    def explain(
        p: ElboProblem, got: float, expected: float, tol: float, error: BaseException | None
    ) -> str:
        parts = [_describe_model(p.model), _describe_gaussian("q", p.q), f"  x = {_fmt(p.x)}"]
        if error is None:
            g, e, tolerance = compare(p)
            names = _coordinate_names(p.model.latent_dim)
            parts += [
                f"    {names[i]:>12s}: expected {e[i]: .10g}, got {g[i]: .10g}, "
                f"gap {g[i] - e[i]:.3g}" + ("  <-- off" if abs(g[i] - e[i]) > tolerance[i] else "")
                for i in range(e.size)
            ]
            probes = []
            for qq in (p.q, Gaussian._trusted(p.q.mean + 0.5, p.q.scale_tril * 1.3)):
                try:
                    value = _flat_gradient_pair(fn(p.model, qq, p.x), p.model.latent_dim)
                except Exception:
                    continue
                exact = _flat_gradient(p.model, qq, p.x)
                probes.append(((p.model, qq, p.x), value, exact, rtol * (np.abs(exact) + 1) + atol))
            found = match_suspects(_gradient_suspects(), probes)
            parts.append(_diagnosis(found, "see the coordinates marked 'off'"))
        return "\n".join(parts)

    return _deterministic_check(
        name="verify_elbo_gradient",
        strategy=elbo_problems(**model_options),
        evaluate=evaluate,
        explain=explain,
        seed=seed,
        max_examples=max_examples,
        tolerance_text=f"|got - exact| <= rtol={rtol:g} * (|exact| + 1) + atol={atol:g} per entry",
    )
