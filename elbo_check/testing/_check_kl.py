"""verify_kl: KL(p || q) between Gaussians."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st
from numpy.typing import NDArray

from .._gaussian import Gaussian, kl_divergence
from .._linalg import solve_tril, solve_tril_rows
from .._random import random_gaussian
from ..strategies import (
    COV_KINDS,
    gaussians,
)
from ._batching import (
    as_values,
    check_batch_size,
    evaluate_members,
    member,
    stack_gaussians,
)
from ._calls import (
    _BATCH_AXIS_HINT,
    _call,
    _failing_members,
    _interaction,
    _one_at_a_time,
    _worst_member,
    _worst_of,
)
from ._cases import as_kl_cases, check_q_kinds
from ._diagnosis import Probe, fit_terms, match_suspects_across, rounding_suspect
from ._limits import _single_blas_thread
from ._options import (
    _check_callable,
    _profile,
    _seed,
    check_condition_number,
    check_count,
    check_tolerance,
)
from ._report import (
    VerificationReport,
    _describe_gaussian,
    _diagnosis,
    _numbers,
)
from ._returns import invoke
from ._searching import _deterministic_check
from ._suspects import (
    KL_SUSPECTS,
)
from ._term_fit import KL_TERMS, independent_kl_pairs, kl_context, safe_context

FloatArray = NDArray[np.float64]


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
    values_of: Callable[[list[_Pair]], list[float | None]],
    p: Gaussian,
    q: Gaussian,
    rtol: float,
    atol: float,
) -> str:
    """Suspects, then a term-level fit, on the failing pair (and its swap), three
    unrelated pairs of its dimension and two of other dimensions: each unrelated pair
    is an independent problem."""
    variants = _kl_variants(p, q)
    groups = [0, 0, 1, 2, 3]
    values = list(values_of(variants))
    for number, pair in enumerate(independent_kl_pairs(p.dim), start=4):
        variants.append(pair)
        groups.append(number)
        values += values_of([pair])  # one dimension per call (batches stack members)
    probes, contexts = [], []
    for (pp, qq), value, number in zip(variants, values, groups, strict=True):
        if value is None:
            continue
        scale = float(_kl_scale(pp, qq))
        probes.append(
            Probe((pp, qq), value, float(kl_divergence(pp, qq)), rtol * scale + atol, scale, number)
        )
        contexts.append(safe_context(kl_context, pp, qq))
    found = match_suspects_across(KL_SUSPECTS, probes)
    if not found:
        fit = fit_terms(KL_TERMS, contexts, probes) or rounding_suspect(probes)
        found = [fit] if fit is not None else []
    return _diagnosis(found, "compare term by term")


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
    problems: Any = None,
    q_kinds: Sequence[str] | None = None,
) -> VerificationReport:
    """Check ``fn(p, q) -> float``, the KL divergence KL(p || q) between two Gaussians.

    ``p`` and ``q`` are :class:`~elbo_check.Gaussian` objects of the same dimension
    with non-zero means and full covariances (read ``.mean``, ``.cov``,
    ``.scale_tril``). Tolerance: ``rtol * (KL + tr + Mahalanobis + K + 1) + atol``.

    With ``batch_size=B``, ``p`` and ``q`` are batches of ``B`` Gaussians, each with its
    own covariance (``.mean`` of shape ``(B, K)``, ``.scale_tril`` ``(B, K, K)``), and
    ``fn`` must return the ``B`` divergences, shape ``(B,)``; each member is compared.

    ``problems``: your own pairs ``(p, q)``, as a hypothesis strategy or a sequence
    (checked in order, without search). ``q_kinds`` restricts the covariances of both
    Gaussians to some of ``"full"``, ``"diagonal"`` and ``"isotropic"`` (default: all),
    e.g. ``("diagonal",)`` for the KL between two mean-field Gaussians.
    """
    __tracebackhide__ = True
    _check_callable(fn)
    chosen = _profile(profile)
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    seed_value = _seed(seed)
    size = check_batch_size(batch_size)
    kinds = check_q_kinds(COV_KINDS if q_kinds is None else q_kinds)
    shape = () if size is None else (size,)
    dims = st.integers(1, check_count("max_dim", max_dim, 6))
    pairs = dims.flatmap(
        lambda k: st.tuples(
            *[
                gaussians(
                    k,
                    batch_shape=shape,
                    max_condition_number=check_condition_number(
                        "max_condition_number", max_condition_number
                    ),
                    shared_covariance=size is None,
                    cov_kinds=kinds,
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
            got = as_values(invoke(fn, p, q), size, "KL divergence")
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
            parts.append(_kl_diagnosis(_one_at_a_time(fn), p, q, rtol, atol))
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
            parts.append(_kl_diagnosis(values_of, p_i, q_i, rtol, atol))
        return "\n".join(parts)

    name = "verify_kl" if size is None else f"verify_kl(batch_size={size})"
    return _deterministic_check(
        name=name,
        strategy=as_kl_cases(problems, lambda: pairs),
        evaluate=_worst_of(compare),
        explain=explain,
        seed=seed_value,
        max_examples=check_count("max_examples", max_examples, chosen["max_examples"]),
        tolerance_text=f"rtol={rtol:g} of the term magnitudes + atol={atol:g}",
    )
