"""verify_elbo and check_elbo: an ELBO for one observation or a batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st
from numpy.typing import NDArray

from .._errors import InvalidInputError
from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ..strategies import (
    COV_KINDS,
    ElboProblem,
    elbo_problems,
    variational_gaussians,
)
from ._batching import (
    as_values,
    check_batch_size,
    member,
)
from ._calls import (
    _BATCH_AXIS_HINT,
    _call,
    _failing_members,
    _interaction,
    _one_at_a_time,
    _packed,
    _Problem,
    _worst_member,
    _worst_of,
)
from ._cases import as_elbo_cases, check_q_kinds
from ._diagnosis import (
    Probe,
    describe_gap,
    fit_terms,
    match_suspects_across,
    rounding_suspect,
)
from ._limits import _single_blas_thread
from ._options import (
    _check_callable,
    _profile,
    _seed,
    check_count,
    check_tolerance,
)
from ._problems import _elbo_scale, _elbo_variants
from ._report import (
    VerificationReport,
    _describe_gaussian,
    _describe_model,
    _diagnosis,
    _fmt,
    _numbers,
)
from ._returns import invoke, to_scalar
from ._searching import _deterministic_check
from ._suspects import (
    ELBO_SUSPECTS,
)
from ._term_fit import ELBO_TERMS, elbo_context, independent_elbo_problems, safe_context

FloatArray = NDArray[np.float64]


def _elbo_diagnosis(
    values_of: Callable[[list[_Problem]], list[float | None]],
    model: LinearGaussianModel,
    q: Gaussian,
    x: FloatArray,
    rtol: float,
    atol: float,
    tol: float,
    *,
    up_to_constant: bool = False,
) -> str:
    """The Diagnosis line: suspects, then a term-level fit, on the failing case's
    variations and on independent problems; else what the gap depends on."""
    groups = [_elbo_variants(model, q, x)]
    groups += [_elbo_variants(*problem) for problem in independent_elbo_problems(model)]
    cases = [case for group in groups for case in group.values()]
    got_values = values_of(cases)
    probes, contexts, gaps, values = [], [], {}, {}
    offsets: dict[int, float] = {}
    position = 0
    for number, group in enumerate(groups):
        for label, (mm, qq, xx) in group.items():
            got = got_values[position]
            position += 1
            if got is None:
                continue
            expected = float(mm.elbo(qq, xx))
            scale = _elbo_scale(mm, qq, xx)
            if number == 0:
                gaps[label] = got - expected
                values[label] = (got, expected)
            if up_to_constant:  # a constant per problem is allowed: compare gap changes
                offset = offsets.setdefault(number, got - expected)
                got -= offset
            probes.append(Probe((mm, qq, xx), got, expected, rtol * scale + atol, scale, number))
            contexts.append(safe_context(elbo_context, mm, qq, xx))
    found = match_suspects_across(ELBO_SUSPECTS, probes)
    if not found:
        fit = fit_terms(ELBO_TERMS, contexts, probes, center=up_to_constant)
        if fit is None and not up_to_constant:
            fit = rounding_suspect(probes)
        found = [fit] if fit is not None else []
    return _diagnosis(found, describe_gap(gaps, values, tol) if gaps else "no probe")


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
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    expected = float(model.elbo(q, x))
    got = to_scalar(value, "value")
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
    problems: Any = None,
    q_kinds: Sequence[str] | None = None,
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
    problems : strategy or sequence, optional
        Your own problems: a hypothesis strategy of
        :class:`~elbo_check.strategies.ElboProblem`, or a sequence of them (or of
        ``(model, q, x)`` tuples), checked in order without search.
    q_kinds : sequence of str, optional
        The covariance kinds of the drawn q: some of ``"full"``, ``"diagonal"`` (a
        mean-field guide) and ``"isotropic"`` (default: all three).
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
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    seed_value = _seed(seed)
    examples = check_count("max_examples", max_examples, chosen["max_examples"])
    size = check_batch_size(batch_size)
    kinds = check_q_kinds(COV_KINDS if q_kinds is None else q_kinds)
    if size is not None:
        if up_to_constant:
            raise InvalidInputError(
                "up_to_constant=True and batch_size cannot be combined; check the "
                "constant-free code unbatched (batch_size=None)"
            )
        batched = as_elbo_cases(
            problems,
            lambda: elbo_problems(
                batch_shape=(size,), shared_covariance=False, q_kinds=kinds, **model_options
            ),
        )
        return _verify_batched_elbo(fn, size, batched, seed_value, examples, rtol, atol)
    base = as_elbo_cases(problems, lambda: elbo_problems(q_kinds=kinds, **model_options))

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
                parts.append(
                    _elbo_diagnosis(_one_at_a_time(fn), p.model, p.q, p.x, rtol, atol, tol)
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
        problem = draw(base if isinstance(base, st.SearchStrategy) else st.sampled_from(base))
        others = variational_gaussians(
            problem.model, batch_shape=problem.q.batch_shape, cov_kinds=kinds
        )
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
            # A constant offset is allowed here: compare gaps to each problem's first one.
            parts.append(
                _elbo_diagnosis(
                    _one_at_a_time(fn), p.model, p.q, p.x, rtol, atol, tol, up_to_constant=True
                )
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


def _verify_batched_elbo(
    fn: Callable[..., Any],
    size: int,
    strategy: st.SearchStrategy[ElboProblem] | list[ElboProblem],
    seed: int,
    max_examples: int,
    rtol: float,
    atol: float,
) -> VerificationReport:
    def compare(p: ElboProblem) -> tuple[FloatArray, FloatArray, FloatArray]:
        got = as_values(invoke(fn, p.model, p.q, p.x), size, "ELBO")
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
        parts.append(_elbo_diagnosis(values_of, p.model, q_i, x_i, rtol, atol, tol))
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
