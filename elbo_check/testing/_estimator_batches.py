"""verify_elbo_estimator(fn, batch_size=B): estimators of a minibatch's ELBOs.

Real VAE code estimates the ELBO of a minibatch at once, one ``q(z | x_n)`` per row.
With ``batch_size=B`` the estimator check hands ``fn`` one model and a batch of ``B``
pairs ``(q_b, x_b)``: ``q.mean`` of shape ``(B, K)``, a covariance per member
(``q.scale_tril`` of shape ``(B, K, K)``) and ``x`` of shape ``(B, D)``; ``fn`` returns
the ``B`` estimates, shape ``(B,)``. Every member is checked as a problem of its own:

* statistical mode: ``fn(model, q, x, rng, n_samples)``; each member's mean estimate is
  z-tested against its exact ELBO, with the Bonferroni correction over ``B`` times the
  number of batches;
* pathwise mode: ``fn(model, q, x, eps)`` with ``eps`` of shape ``(n, B, K)`` (sample
  axis first, then batch, then event: the convention of torch and numpyro) must return,
  for each member ``b``, its form's value at ``z[:, b] = m_b + L_b eps[:, b]``.

A failing batch is explained in three steps: a return of the wrong shape (a reduction
over the batch axis); members that interact (the failing member's value changes when
it is evaluated in a batch of copies of itself: a sum or mean over the batch axis,
member 0's q used for every row); else the failing member, packed in a batch of copies
at its position, is diagnosed like an unbatched problem
(:mod:`~elbo_check.testing._estimator_diagnosis`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.stats
from hypothesis import strategies as st
from numpy.typing import NDArray

from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ..strategies import ElboProblem, elbo_problems
from ._batch_problems import as_batch, check_batches
from ._batching import as_values, member, stack_gaussians
from ._calls import _BATCH_AXIS_HINT, _failing_members, _worst_member, _worst_of
from ._cases import as_elbo_cases
from ._estimator_diagnosis import (
    DIAGNOSIS_CRITICAL,
    StatisticalEvidence,
    ValuesOf,
    diagnosis_calls,
    pathwise_diagnosis,
    statistical_diagnosis,
)
from ._forms import ElboForm
from ._options import BATCHES
from ._report import VerificationReport, _describe_gaussian, _describe_model, _fmt, _numbers
from ._returns import BadReturn, InputMutated, invoke
from ._searching import _deterministic_check
from ._statistics import _batch_t, _repeated_calls

__all__ = ["batched_pathwise", "batched_statistical"]

FloatArray = NDArray[np.float64]
Triple = tuple[LinearGaussianModel, Gaussian, FloatArray]

_QUANTITY = "ELBO estimate"


# ---------------------------------------------------------------------- problems
def _copies(model: LinearGaussianModel, q: Gaussian, x: FloatArray, size: int) -> tuple[Any, ...]:
    return model, stack_gaussians([q] * size), np.stack([x] * size)


# ---------------------------------------------------------------------- statistical
def batched_statistical(
    fn: Callable[..., Any],
    form: ElboForm,
    cases: list[Triple],
    size: int,
    *,
    seed: int,
    n_samples: int,
    calls: int,
    false_alarm_rate: float,
    rtol: float,
    atol: float,
) -> VerificationReport:
    """Per-member z-tests of the batched estimator on each batch (module docstring)."""
    name = f"verify_elbo_estimator(batch_size={size})"
    comparisons = size * len(cases)
    critical = float(scipy.stats.t.isf(false_alarm_rate / (2 * comparisons), BATCHES - 1))

    def convert(value: Any) -> FloatArray:
        return as_values(value, size, _QUANTITY)

    worst = 0.0
    for index, (model, q, x) in enumerate(cases):
        terms = model.elbo_terms(q, x)
        expected = np.asarray(terms.elbo, dtype=np.float64)
        scale = np.abs(terms.expected_log_likelihood) + np.abs(terms.kl_to_prior) + 1.0
        tolerance = rtol * scale + atol
        try:
            estimates = _repeated_calls(
                name, fn, convert, (model, q, x, n_samples), [seed, 77, index], calls
            )
        except AssertionError as err:
            if not isinstance(err.__cause__, BadReturn) or isinstance(err.__cause__, InputMutated):
                raise
            raise AssertionError(
                f"{name} failed (seed={seed}, batch {index + 1} of {len(cases)}): "
                f"{err.__cause__}\n" + _describe_model(model) + f"\n  a batch of {size}: q.mean "
                f"{q.mean.shape}, q.scale_tril {q.scale_tril.shape}, x {x.shape}\n"
                + _BATCH_AXIS_HINT
            ) from err.__cause__
        mean, standard_error, t = _batch_t(estimates, expected)
        gap = np.abs(mean - expected)
        still = ~(standard_error > tolerance) | ~np.isfinite(standard_error)
        fixed_bad = still & ~(gap <= tolerance)
        with np.errstate(invalid="ignore"):
            ratio = np.where(gap > tolerance, np.abs(t) / critical, 0.0)
        ratio = np.where(still, np.where(fixed_bad, np.inf, 0.0), ratio)
        ratio = np.where(np.isnan(ratio), np.inf, ratio)
        worst = max(worst, float(np.max(ratio)))
        if not np.any(ratio > 1.0):
            continue
        i = int(np.argmax(ratio))
        failing = int(np.count_nonzero(ratio > 1.0))
        q_i, x_i = member(q, i), np.array(x[i])
        head = (
            f"{name} failed (seed={seed}, batch {index + 1} of {len(cases)}): member {i} of "
            f"the batch of {size} ({failing} of {size} members fail)"
        )
        described = (
            _describe_model(model)
            + "\n"
            + _describe_gaussian("q", q_i)
            + f"\n  x = {_fmt(x_i)}\n  form: {form.describe()}\n"
        )
        if still[i]:
            note = (
                "the estimates did not vary across calls with different rng: does fn ignore "
                "its rng argument?"
                if math.isfinite(mean[i]) and math.isfinite(standard_error[i])
                else "non-finite estimates"
            )
            raise AssertionError(
                head
                + "\n"
                + described
                + _numbers(float(mean[i]), float(expected[i]), float(tolerance[i]))
                + f"\n  {note}"
            )
        first = StatisticalEvidence(
            (model, q_i, x_i),
            float(mean[i]),
            float(standard_error[i]),
            critical,
            float(tolerance[i]),
        )

        def at_position(
            m: LinearGaussianModel,
            qq: Gaussian,
            xx: FloatArray,
            stream: list[int],
            n: int,
            i: int = i,
        ) -> FloatArray | None:
            arguments = (*_copies(m, qq, xx, size), n_samples)
            values = diagnosis_calls(fn, convert, arguments, stream, n)
            return None if values is None else values[:, i]

        lines = [
            f"{head}: the estimator is biased",
            described + f"  exact ELBO       {expected[i]:.10g}\n"
            f"  mean estimate    {mean[i]:.10g} +- {standard_error[i]:.3g} (standard error from "
            f"{BATCHES} batch means of {calls // BATCHES} calls, n_samples={n_samples})\n"
            f"  t = {t[i]:.3g}; critical |t| = {critical:.3g} for false-alarm rate "
            f"{false_alarm_rate:g} over {comparisons} members ({len(cases)} batches of {size})",
        ]
        mixing = _statistical_interaction(
            at_position, first, size, [seed, 79, index], calls, critical
        )
        if mixing is not None:
            lines.append(mixing)
        else:
            lines.append(
                statistical_diagnosis(
                    form,
                    n_samples,
                    first,
                    at_position,
                    [seed, 78, index],
                    calls,
                    critical,
                    rtol,
                    atol,
                )
            )
        raise AssertionError("\n".join(lines))
    return VerificationReport(
        check=name,
        cases=len(cases),
        worst_error=worst,
        tolerance=(
            f"|t| <= {critical:.3g} per member (false-alarm rate {false_alarm_rate:g} over "
            f"{comparisons} members, {calls} calls x {n_samples} samples per batch)"
        ),
        seed=seed,
        details={
            "calls": calls,
            "n_samples": n_samples,
            "critical_t": critical,
            "form": form.name,
            "batch_size": size,
            "members": comparisons,
        },
    )


_INTERACTION_FIX = (
    "  Fix: compute each member from its own row only; look for a sum or mean over the "
    "batch axis (axis 0) where the latent axis was meant (a KL averaged over the batch), "
    "broadcasting of a (B,) array against (B, K), np.diagonal or .T on a (B, K, K) array "
    "(use np.diagonal(a, axis1=-2, axis2=-1) and a.swapaxes(-1, -2)), or q.scale_tril[0] "
    "used for every row"
)


def _statistical_interaction(
    at_position: ValuesOf,
    first: StatisticalEvidence,
    size: int,
    stream: list[int],
    calls: int,
    critical: float,
) -> str | None:
    """A diagnosis if the failing member's mean estimate changes when its batch-mates are
    copies of it: a two-sample t-test at the diagnosis' level (``DIAGNOSIS_CRITICAL``)."""
    if size == 1:
        return None
    alone = at_position(*first.problem, stream, calls)
    if alone is None:
        return None
    mean, standard_error, _ = (float(v) for v in _batch_t(alone, np.array(first.expected)))
    spread = math.hypot(first.standard_error, standard_error)
    tolerance = first.tolerance
    # The verdict is in; this only chooses between explanations, at the diagnosis' level:
    # the means in the batch and among copies differ by more than DIAGNOSIS_CRITICAL
    # standard errors of the difference.
    level = min(critical, DIAGNOSIS_CRITICAL)
    if abs(mean - first.mean) <= level * spread + tolerance:
        return None
    return (
        f"Diagnosis: the members of a batch interact: this member's mean estimate is "
        f"{first.mean:.10g} +- {first.standard_error:.3g} in its batch but {mean:.10g} +- "
        f"{standard_error:.3g} in a batch of {size} copies of itself (exact ELBO "
        f"{first.expected:.10g}).\n" + _INTERACTION_FIX
    )


# ---------------------------------------------------------------------- pathwise
def batched_pathwise(
    fn: Callable[..., Any],
    form: ElboForm,
    size: int,
    problems: st.SearchStrategy[ElboProblem],
    *,
    seed: int,
    max_examples: int,
    rtol: float,
    atol: float,
) -> VerificationReport:
    """Every member of ``fn(model, q, x, eps) -> (B,)`` against its form's exact value."""
    Case = tuple[ElboProblem, FloatArray]

    @st.composite
    def cases(draw: st.DrawFn) -> Case:
        problem = draw(problems)
        n = draw(st.integers(1, 4))
        k = problem.model.latent_dim
        count = n * size * k
        eps = np.array(draw(st.lists(st.floats(-3.0, 3.0), min_size=count, max_size=count)))
        return problem, eps.reshape(n, size, k)

    def member_case(
        p: ElboProblem, eps: FloatArray, b: int
    ) -> tuple[Gaussian, FloatArray, FloatArray]:
        return member(p.q, b), np.array(p.x[b]), np.array(eps[:, b, :])

    def exact(p: ElboProblem, eps: FloatArray) -> tuple[FloatArray, FloatArray]:
        expected, tolerance = np.empty(size), np.empty(size)
        for b in range(size):
            q_b, x_b, e_b = member_case(p, eps, b)
            z = q_b.mean + e_b @ q_b.scale_tril.T
            expected[b] = form.pathwise_value(p.model, q_b, x_b, z)
            tolerance[b] = rtol * (form.magnitude(p.model, q_b, x_b, z) + 1.0) + atol
        return expected, tolerance

    def compare(case: Case) -> tuple[FloatArray, FloatArray, FloatArray]:
        p, eps = case
        expected, tolerance = exact(p, eps)  # before fn runs: nothing it does reaches them
        got = as_values(invoke(fn, p.model, p.q, p.x, eps), size, _QUANTITY)
        return got, expected, tolerance

    def packed(
        model: LinearGaussianModel, members: Sequence[tuple[Gaussian, FloatArray, FloatArray]]
    ) -> FloatArray:
        q = stack_gaussians([m[0] for m in members])
        x = np.stack([m[1] for m in members])
        eps = np.stack([m[2] for m in members], axis=1)
        return as_values(invoke(fn, model, q, x, eps), size, _QUANTITY)

    def explain(
        case: Case, got: float, expected: float, tol: float, error: BaseException | None
    ) -> str:
        p, eps = case
        parts = [_describe_model(p.model)]
        if error is not None:
            parts.append(
                f"  a batch of {size}: q.mean {p.q.mean.shape}, q.scale_tril "
                f"{p.q.scale_tril.shape}, x {p.x.shape}, eps {eps.shape}"
            )
            parts.append(_BATCH_AXIS_HINT)
            return "\n".join(parts)
        got_all, expected_all, tolerance_all = compare(case)
        i = _worst_member(got_all, expected_all, tolerance_all)
        failing = _failing_members(got_all, expected_all, tolerance_all)
        q_i, x_i, e_i = member_case(p, eps, i)
        parts += [
            f"  member {i} of the batch of {size} ({failing} of {size} members fail):",
            _describe_gaussian("q", q_i),
            f"  x = {_fmt(x_i)}",
            f"  eps[:, {i}] = {_fmt(e_i)}",
            f"  form: {form.describe()}",
            _numbers(got, expected, tol),
        ]
        mixing = _pathwise_interaction(packed, p, eps, i, got, tol)
        if mixing is not None:
            parts.append(mixing)
            return "\n".join(parts)

        def at_position(m: LinearGaussianModel, q: Gaussian, x: FloatArray, e: FloatArray) -> float:
            return float(packed(m, [(q, x, e)] * size)[i])

        parts.append(pathwise_diagnosis(at_position, form, p.model, q_i, x_i, e_i, rtol, atol))
        return "\n".join(parts)

    suffix = "" if form.name == "joint" else f", form={form.name!r}"
    return _deterministic_check(
        name=f"verify_elbo_estimator(mode='pathwise'{suffix}, batch_size={size})",
        strategy=cases(),
        evaluate=_worst_of(compare),
        explain=explain,
        seed=seed,
        max_examples=max_examples,
        tolerance_text=f"rtol={rtol:g} of the magnitude of the terms of {form.formula} "
        f"+ atol={atol:g}, per member",
    )


def _pathwise_interaction(
    packed: Callable[
        [LinearGaussianModel, Sequence[tuple[Gaussian, FloatArray, FloatArray]]], FloatArray
    ],
    p: ElboProblem,
    eps: FloatArray,
    i: int,
    got: float,
    tolerance: float,
) -> str | None:
    """A diagnosis if member ``i``'s value changes when its batch-mates change: it is
    evaluated, at its position, among copies of itself and among the other members in
    reverse order."""
    size = eps.shape[1]
    if size == 1:
        return None
    members = [(member(p.q, b), np.array(p.x[b]), np.array(eps[:, b, :])) for b in range(size)]
    others = [members[b] for b in reversed(range(size)) if b != i]
    reordered = [*others[:i], members[i], *others[i:]]
    seen = []
    for label, batch in (
        (f"in a batch of {size} copies of it", [members[i]] * size),
        ("with its batch-mates reordered", reordered),
    ):
        try:
            seen.append((label, float(packed(p.model, batch)[i])))
        except Exception:
            continue
    if all(abs(value - got) <= tolerance for _, value in seen):
        return None
    contexts = [f"{got:.12g} in its batch"] + [f"{value:.12g} {label}" for label, value in seen]
    return (
        "Diagnosis: the members of a batch interact: this member's value is "
        + ", ".join(contexts)
        + ".\n"
        + _INTERACTION_FIX
    )


def pathwise_batches(
    problems: Any, size: int, kinds: Sequence[str], model_options: dict[str, Any]
) -> st.SearchStrategy[ElboProblem]:
    """The batched pathwise check's problems: drawn batches, or the user's (each a batch)."""
    user = as_elbo_cases(
        problems,
        lambda: elbo_problems(
            batch_shape=(size,), shared_covariance=False, q_kinds=kinds, **model_options
        ),
    )
    if isinstance(user, st.SearchStrategy):
        if problems is None:
            return user
        return user.map(
            lambda p: ElboProblem(*as_batch("problems (a drawn problem)", p.model, p.q, p.x, size))
        )
    return st.sampled_from(check_batches(user, size))
