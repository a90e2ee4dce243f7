"""Batched bound estimators: one estimate per member of a minibatch (``batch_size=B``).

``fn`` receives one model, ``x`` of shape ``(B, D)`` and a ``q`` of batch shape ``(B,)``
(a covariance per member) and returns the ``B`` estimates. The statistical check tests
every member against draws of its own exact distribution; the pathwise check compares
every member at noise ``eps`` of shape ``(k, B, K)`` (samples first, then the batch, as in
torch and numpyro). Both check the members at their posteriors, where each estimate is
``log p(x_b)`` exactly. A reduction over the batch axis instead of the sample axis gives
``k`` values instead of ``B`` (named by the shape check) or, when ``k == B``, values that
the suspect "reduced over the batch axis" reproduces.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.special
import scipy.stats
from hypothesis import strategies as st
from numpy.typing import NDArray

from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ..strategies import ElboProblem
from ._batching import as_values, member, stack_gaussians
from ._bound_estimator_checks import (
    POSTERIOR_CALLS,
    REFERENCE_FACTOR,
    _bound_diagnosis,
    fits,
)
from ._bound_reference import (
    log_weight_sizes,
    log_weights,
    noise_entries,
    renyi_estimates,
    samples,
)
from ._bound_suspects import BoundSuspect, bound_suspects
from ._options import BATCHES
from ._problems import _elbo_scale
from ._report import VerificationReport, _describe_gaussian, _describe_model, _fmt, _numbers
from ._returns import BadReturn, invoke
from ._searching import _deterministic_check
from ._statistics import _batch_t, _repeated_calls

FloatArray = NDArray[np.float64]
Batch = tuple[LinearGaussianModel, Gaussian, FloatArray]

#: The name of the batch-axis reduction, a suspect of batched code when ``k == B``.
BATCH_AXIS = "the log-mean-exp is taken over the batch axis instead of the sample axis"


def axis_suspect(alpha: float) -> BoundSuspect:
    """The batch-axis reduction: from log weights ``(..., k, B)`` (sample row j, member b),
    output j is the estimate over the members of row j, shape ``(..., k)``."""
    return BoundSuspect(
        BATCH_AXIS,
        "reduce the (k, B) log weights over axis 0 (the samples); each member keeps its own",
        lambda log_w: renyi_estimates(log_w, alpha),
    )


def _members(q: Gaussian, size: int) -> list[Gaussian]:
    return [member(q, b) for b in range(size)]


def _joint_log_weights(
    model: LinearGaussianModel, members: list[Gaussian], x: FloatArray, eps: FloatArray
) -> FloatArray:
    """Log weights ``(..., k, B)`` of every member at noise ``(..., k, B, K)``."""
    return np.stack(
        [log_weights(model, g, x[b], samples(g, eps[..., b, :])) for b, g in enumerate(members)],
        axis=-1,
    )


def batched_statistical(
    fn: Callable[..., Any],
    label: str,
    alpha: float,
    n: int,
    batches: list[Batch],
    size: int,
    *,
    seed: int,
    calls: int,
    false_alarm_rate: float,
    rtol: float,
    atol: float,
    posterior: bool,
) -> VerificationReport:
    """The statistical check of batched code (see the module docstring)."""
    __tracebackhide__ = True
    tests = 2 * size * len(batches)
    critical = float(scipy.stats.t.isf(false_alarm_rate / (2 * tests), BATCHES - 1))
    ks_level = false_alarm_rate / tests
    worst = 0.0
    for index, (model, q, x) in enumerate(batches):
        members = _members(q, size)
        count = REFERENCE_FACTOR * calls
        rng = np.random.default_rng([seed, 93, index])
        joint = _joint_log_weights(model, members, x, rng.standard_normal((count, n, size, q.dim)))
        reference = renyi_estimates(np.moveaxis(joint, -1, -2), alpha)  # (count, B)
        values = _repeated_calls(
            label,
            fn,
            estimates_of(size, n),
            (model, q, x, n),
            [seed, 91, index],
            calls,
        )  # (calls, B)
        mean, error, _ = _batch_t(values, np.zeros(size))
        ref_mean = reference.mean(axis=0)
        ref_error = reference.std(axis=0, ddof=1) / math.sqrt(count)
        tolerance = np.array(
            [rtol * _elbo_scale(model, g, x[b]) + atol for b, g in enumerate(members)]
        )
        gap = mean - ref_mean
        t = gap / np.hypot(error, ref_error)
        ks = np.array(
            [scipy.stats.ks_2samp(values[:, b], reference[:, b]).pvalue for b in range(size)]
        )
        bad = ((np.abs(gap) > tolerance) & (np.abs(t) > critical)) | (ks < ks_level)
        bad |= ~np.isfinite(mean)
        worst = max(
            worst, float(np.max(np.where(np.abs(gap) > tolerance, np.abs(t), 0.0))) / critical
        )
        if np.any(bad):
            b = int(np.argmax(np.where(bad, np.abs(t), -1.0)))
            raise AssertionError(
                f"{label} failed (seed={seed}, batch {index + 1} of {len(batches)}; "
                f"{int(bad.sum())} of {size} members fail; the worst is member {b})\n"
                + _describe_model(model)
                + "\n"
                + _describe_gaussian(f"q[{b}]", members[b])
                + f"\n  x[{b}] = {_fmt(x[b])}\n"
                f"  reference mean of the estimate at k={n}: {ref_mean[b]:.10g} +- "
                f"{ref_error[b]:.3g} ({count} draws)\n"
                f"  mean estimate    {mean[b]:.10g} +- {error[b]:.3g}\n"
                f"  t = {t[b]:.3g}; critical |t| = {critical:.3g}; Kolmogorov-Smirnov p = "
                f"{ks[b]:.3g}, level {ks_level:.3g} (false-alarm rate {false_alarm_rate:g} "
                f"over {size} members x {len(batches)} batches and both tests)\n"
                + _batched_diagnosis(joint, values, alpha, n, size, b, tolerance)
            )
        if posterior:
            _posterior_members(fn, label, model, x, n, size, [seed, 95, index], rtol, atol)
    return VerificationReport(
        check=label,
        cases=len(batches),
        worst_error=worst,
        tolerance=(
            f"|t| <= {critical:.3g} and Kolmogorov-Smirnov p >= {ks_level:.3g} per member "
            f"(false-alarm rate {false_alarm_rate:g}, {calls} calls per batch); log p(x_b) "
            f"within rtol={rtol:g} at q_b = p(z|x_b)"
        ),
        seed=seed,
        details={
            "alpha": alpha,
            "k": n,
            "calls": calls,
            "batch_size": size,
            "members": size * len(batches),
            "critical_t": critical,
            "ks_level": ks_level,
            "posterior_checked": posterior,
        },
    )


def _member_estimate(suspect: BoundSuspect, joint: FloatArray, b: int) -> FloatArray:
    return suspect.estimate(joint[:, :, b])


def _column(values: FloatArray, b: int) -> FloatArray:
    return values[:, b]


def estimates_of(size: int, n: int) -> Callable[[Any], FloatArray]:
    """The reader of a batched return: ``size`` values, and a named error for ``k``
    values (a reduction over the batch axis instead of the sample axis)."""

    def read(value: Any) -> FloatArray:
        shape = np.shape(value)
        if n != size and shape == (n,):
            raise BadReturn(
                f"fn must return one estimate per batch member, shape ({size},); got {n} "
                f"values, one per sample (k={n}): the log-mean-exp reduced over the batch "
                "axis instead of the sample axis?"
            )
        return as_values(value, size, "estimate")

    return read


def _batched_diagnosis(
    joint: FloatArray,
    values: FloatArray,
    alpha: float,
    n: int,
    size: int,
    failing: int,
    tolerance: FloatArray,
) -> str:
    """Suspects that reproduce the failing member and another member (mean and
    distribution), and the batch-axis reduction when ``k == B``."""
    others = [b for b in range(size) if b != failing][:1]
    suspects = bound_suspects(alpha, n)
    found: list[BoundSuspect] = []
    candidates: list[tuple[BoundSuspect, Callable[[int], FloatArray]]] = [
        (s, functools.partial(_member_estimate, s, joint)) for s in suspects
    ]
    if n == size:
        axis = axis_suspect(alpha)
        outputs = axis.estimate(joint)  # (count, k): output j from sample row j
        candidates.append((axis, functools.partial(_column, outputs)))
    for suspect, predict in candidates:
        if all(fits(values[:, b], predict(b), float(tolerance[b])) for b in [failing, *others]):
            found.append(suspect)
    return _bound_diagnosis(found)


def _posterior_members(
    fn: Callable[..., Any],
    label: str,
    model: LinearGaussianModel,
    x: FloatArray,
    n: int,
    size: int,
    stream: list[int],
    rtol: float,
    atol: float,
) -> None:
    __tracebackhide__ = True
    posteriors = [model.posterior(x[b]) for b in range(size)]
    q = stack_gaussians(posteriors)
    expected = np.array([float(model.log_evidence(x[b])) for b in range(size)])
    tolerance = np.array(
        [rtol * _elbo_scale(model, g, x[b]) + atol for b, g in enumerate(posteriors)]
    )
    for seq in np.random.SeedSequence(stream).spawn(POSTERIOR_CALLS):
        rng = np.random.Generator(np.random.PCG64(seq))
        try:
            got = estimates_of(size, n)(invoke(fn, model, q, x, rng, n))
        except Exception as err:
            raise AssertionError(
                f"{label}: fn raised {type(err).__name__}: {err}\n  at q_b = p(z|x_b)"
            ) from err
        off = ~(np.abs(got - expected) <= tolerance)
        if np.any(off):
            b = int(np.argmax(off))
            raise AssertionError(
                f"{label} failed at q_b = p(z|x_b): there every importance weight of member "
                f"b equals p(x_b), so its estimate must be log p(x_b) exactly\n"
                + _describe_model(model)
                + f"\n  member {b} of {size}; x[{b}] = {_fmt(x[b])}\n"
                + _numbers(float(got[b]), float(expected[b]), float(tolerance[b]))
            )


def batched_pathwise(
    fn: Callable[..., Any],
    label: str,
    alpha: float,
    n: int,
    size: int,
    problems: st.SearchStrategy[ElboProblem],
    *,
    seed: int,
    max_examples: int,
    rtol: float,
    atol: float,
) -> VerificationReport:
    """The pathwise check of batched code: ``eps`` of shape ``(k, B, K)``."""
    __tracebackhide__ = True

    @st.composite
    def cases(draw: st.DrawFn) -> tuple[ElboProblem, FloatArray, bool]:
        problem = draw(problems)
        dim = problem.model.latent_dim
        eps = np.array(draw(noise_entries(n * size * dim))).reshape(n, size, dim)
        return problem, eps, draw(st.booleans())

    def setup(
        case: tuple[ElboProblem, FloatArray, bool],
    ) -> tuple[Gaussian, FloatArray, FloatArray]:
        p, eps, at_posterior = case
        q = stack_gaussians([p.model.posterior(xb) for xb in p.x]) if at_posterior else p.q
        members = _members(q, size)
        joint = _joint_log_weights(p.model, members, p.x, eps)
        expected = renyi_estimates(np.moveaxis(joint, -1, -2), alpha)
        sizes = np.stack(
            [
                log_weight_sizes(p.model, g, p.x[b], samples(g, eps[:, b, :])).max()
                for b, g in enumerate(members)
            ]
        )
        return q, expected, rtol * (sizes + 1.0) + atol

    def evaluate(case: tuple[ElboProblem, FloatArray, bool]) -> tuple[float, float, float]:
        p, eps, _ = case
        q, expected, tolerance = setup(case)  # before fn runs
        got = estimates_of(size, n)(invoke(fn, p.model, q, p.x, eps))
        return float(np.max(np.abs(got - expected) / tolerance)), 0.0, 1.0

    def explain(
        case: tuple[ElboProblem, FloatArray, bool],
        got: float,
        expected: float,
        tol: float,
        error: BaseException | None,
    ) -> str:
        p, eps, at_posterior = case
        q, exact, tolerance = setup(case)
        parts = [_describe_model(p.model), f"  x = {_fmt(p.x)}", f"  eps = {_fmt(eps)}"]
        if at_posterior:
            parts.append("  q: every member at its posterior p(z|x_b)")
        if error is None:
            values = estimates_of(size, n)(invoke(fn, p.model, q, p.x, eps))
            off = np.abs(values - exact) > tolerance
            parts += [
                f"    member {b}: expected {exact[b]:.10g}, got {values[b]:.10g}"
                + ("  <-- off" if off[b] else "")
                for b in range(size)
            ]
            parts.append(
                _pathwise_batch_diagnosis(p.model, q, p.x, eps, values, alpha, n, size, tolerance)
            )
        return "\n".join(parts)

    return _deterministic_check(
        name=label,
        strategy=cases(),
        evaluate=evaluate,
        explain=explain,
        seed=seed,
        max_examples=max_examples,
        tolerance_text=(
            f"per member: rtol={rtol:g} of the largest |log p(x_b, z)| + |log q_b(z)| + 1, "
            f"+ atol={atol:g}"
        ),
    )


def _pathwise_batch_diagnosis(
    model: LinearGaussianModel,
    q: Gaussian,
    x: FloatArray,
    eps: FloatArray,
    values: FloatArray,
    alpha: float,
    n: int,
    size: int,
    tolerance: FloatArray,
) -> str:
    joint = _joint_log_weights(model, _members(q, size), x, eps)  # (k, B)
    found = []
    for suspect in bound_suspects(alpha, n):
        predicted = np.array([float(suspect.estimate(joint[:, b])) for b in range(size)])
        if np.all(np.abs(predicted - values) <= np.maximum(tolerance, 1e-6)):
            found.append(suspect)
    if n == size:
        axis = axis_suspect(alpha)
        if np.all(np.abs(axis.estimate(joint) - values) <= np.maximum(tolerance, 1e-6)):
            found.append(axis)
    return _bound_diagnosis(found)
