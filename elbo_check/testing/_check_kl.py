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
    r"""Check ``fn(p, q) -> float``, the KL divergence KL(p || q) between two Gaussians.

    ``fn`` is called on pairs of Gaussians of one dimension :math:`K` (1 to ``max_dim``,
    with covariances of the ``q_kinds``) drawn by :func:`~elbo_check.strategies.gaussians`
    and shrunk by hypothesis, and each value is compared with the exact divergence [1]_

    .. math::
        \mathrm{KL}(p\,\|\,q) = \tfrac12\Bigl(\operatorname{tr}(\Sigma_q^{-1}\Sigma_p)
        + (\mu_q - \mu_p)^\top\Sigma_q^{-1}(\mu_q - \mu_p) - K
        + \log\det\Sigma_q - \log\det\Sigma_p\Bigr)

    of :func:`~elbo_check.kl_divergence`. A case passes when :math:`|\mathtt{got} -
    \mathrm{KL}|` is at most ``rtol`` times the size of the terms, :math:`\operatorname{tr}
    (\Sigma_q^{-1}\Sigma_p)` + the Mahalanobis term + :math:`K` + :math:`|\log\det
    \Sigma_q - \log\det\Sigma_p|` + 1, plus ``atol``.

    With ``batch_size=B``, ``p`` and ``q`` are batches of ``B`` Gaussians, each with its
    own covariance (``.mean`` of shape ``(B, K)``, ``.scale_tril`` and ``.cov``
    ``(B, K, K)``), and ``fn`` must return the ``B`` divergences, shape ``(B,)``; each
    member is compared.

    Parameters
    ----------
    fn : callable
        The code under test, ``fn(p, q)``: two :class:`~elbo_check.Gaussian` objects of
        one dimension (read ``.mean``, ``.cov``, ``.scale_tril``). It must return a real
        number, be deterministic and leave its arguments unchanged.
    seed : int or numpy.random.Generator, optional
        Makes the search reproducible: an integer >= 0, or a generator to draw one from
        (default: the pytest plugin's ``--elbo-check-seed``, else
        ``$ELBO_CHECK_SEED``, else 0).
    max_examples : int, optional
        Cases the search tries, >= 1 (default from ``profile``: 100 for ``"dev"``, 300
        for ``"ci"``, 2000 for ``"thorough"``).
    profile : {"dev", "ci", "thorough"}, optional
        The effort profile that sets the default ``max_examples`` (default: the pytest
        plugin's ``--elbo-check-profile``, else ``$ELBO_CHECK_PROFILE``, else ``"dev"``).
    rtol, atol : float, optional
        The tolerance above (defaults 1e-6 and 1e-8 nats): finite numbers >= 0. Left at
        its default, ``rtol`` follows the precision of ``fn`` (see ``dtype``).
    max_dim : int, optional
        The largest dimension :math:`K` drawn, >= 1 (default 6).
    max_condition_number : float, optional
        The largest condition number of a drawn covariance, finite and >= 1 (default
        100).
    batch_size : int, optional
        Check a batched ``fn`` (above) on batches of this many pairs, >= 1 (default
        None: unbatched). A failure names the worst member and says whether the
        members' values depend on each other.
    problems : strategy or sequence, optional
        Your own pairs ``(p, q)`` of Gaussians of one dimension instead of the drawn
        ones: a hypothesis strategy of them (searched) or a non-empty sequence (checked
        in order, without search; a failure names its index).
    q_kinds : sequence of str, optional
        The covariance kinds of both Gaussians: some of ``"full"``, ``"diagonal"`` and
        ``"isotropic"`` (default: all three), e.g. ``("diagonal",)`` for the KL between
        two mean-field Gaussians.
    time_budget : float, optional
        Seconds the call may take, positive and finite (default None: no limit). When
        they run out the search stops drawing cases (a failure already found is still
        shrunk and reported); the report covers the cases checked, ``str(report)`` says
        so and ``report.details["stopped_by_time_budget"]`` holds the budget.
    dtype : str or dtype, optional
        The floating precision ``fn`` computes in: ``"float16"``, ``"bfloat16"``,
        ``"float32"``, ``"float64"`` or a numpy, torch or JAX floating dtype (default
        None: the coarsest floating dtype ``fn`` has returned; float64 for Python
        floats). Below float64, and with ``rtol`` left at its default, each case's
        relative tolerance widens to :math:`\max(10^{-6},\, 8\,\epsilon\,(D + K)\,
        \kappa)`, with :math:`\epsilon` the dtype's machine epsilon and :math:`\kappa` a
        bound on the case's condition numbers (here :math:`D + K` is :math:`2K`); an
        ``rtol`` you pass is used as given.

    Returns
    -------
    VerificationReport
        When every case passes: ``check`` (``"verify_kl"``, with ``batch_size``),
        ``cases`` (cases tried), ``worst_error`` (the largest ``|got - KL| /
        tolerance``, at most 1), ``tolerance`` (in words), ``seed`` and ``details``.

    Raises
    ------
    AssertionError
        The verdict, when a case fails. The message shows the minimal failing pair, the
        expected and the returned value, the gap and the tolerance, and a diagnosis: the
        known bug (arguments reversed, the factor 1/2 or the :math:`-K` missing, ...)
        that reproduces ``fn``'s values on this pair and on independent ones
        (``Diagnosis: ...``, ``Fix: ...``). ``fn`` also fails, with the reason in the
        message, when it raises (its exception is chained as the cause), returns
        something other than a real scalar (with ``batch_size``, anything but ``B`` values),
        returns NaN or infinity, edits an argument in place, or gives two values for one
        input.
    InvalidInputError
        Before ``fn`` is called, for a bad option: ``fn`` not callable, ``rtol`` or
        ``atol`` not a finite number >= 0, ``seed`` negative or of another type,
        ``max_examples``, ``max_dim`` or ``batch_size`` not an integer >= 1,
        ``max_condition_number`` not a finite number >= 1, an unknown ``profile``,
        ``q_kinds`` empty or with another kind, ``problems`` of another type, empty or
        with an item that is not a pair of Gaussians of one dimension, ``time_budget``
        not positive and finite, ``dtype`` not a floating dtype; or an invalid
        ``$ELBO_CHECK_SEED`` or ``$ELBO_CHECK_PROFILE`` when ``seed`` or ``profile`` is
        left to them.

    References
    ----------
    .. [1] S. Kullback and R. A. Leibler, "On information and sufficiency", The Annals
       of Mathematical Statistics 22(1):79-86, 1951.

    Examples
    --------
    The textbook formula passes:

    >>> import numpy as np
    >>> from elbo_check.testing import verify_kl
    >>> def my_kl(p, q):
    ...     d = q.mean - p.mean
    ...     return 0.5 * (np.trace(np.linalg.solve(q.cov, p.cov)) + d @ np.linalg.solve(q.cov, d)
    ...                   - p.dim + np.linalg.slogdet(q.cov)[1] - np.linalg.slogdet(p.cov)[1])
    >>> report = verify_kl(my_kl, max_examples=5, seed=0)
    >>> report.check, report.cases, report.worst_error <= 1
    ('verify_kl', 5, True)

    The divergence is not symmetric; with the arguments reversed, on a pair of your own:

    >>> from elbo_check import Gaussian
    >>> p = Gaussian.from_diagonal(mean=[0.0, 1.0], variances=[1.0, 4.0])
    >>> q = Gaussian.from_covariance(mean=[0.5, 0.0], cov=[[2.0, 0.3], [0.3, 1.0]])
    >>> verify_kl(lambda p, q: my_kl(q, p), problems=[(p, q)])
    Traceback (most recent call last):
      ...
    AssertionError: verify_kl failed (problems[0] of 1)
      K = 2
    ...
      gap (got - expected) = -0.909369; tolerance 9.8e-06
    Diagnosis: the arguments are reversed (KL(q || p) returned for KL(p || q)).
      Fix: KL is not symmetric: KL(p || q) = E_p[log p - log q].
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
