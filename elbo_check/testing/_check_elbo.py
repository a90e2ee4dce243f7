"""verify_elbo: an ELBO for one observation or a batch."""

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
from ._returns import invoke
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
    r"""Check ``fn(model, q, x) -> float``, an ELBO for one observation ``x`` of shape (D,).

    ``fn`` is called on linear-Gaussian problems drawn by
    :func:`~elbo_check.strategies.elbo_problems` (hypothesis searches them, from
    :math:`D = K = 1` up, and shrinks a failure to a minimal case) and each value is
    compared with the exact ELBO,

    .. math::
        \mathrm{ELBO}(q) = \mathbb E_{q}[\log p(x\mid z)] - \mathrm{KL}(q\,\|\,p(z)),

    of :meth:`~elbo_check.LinearGaussianModel.elbo` [1]_. A case passes when

    .. math::
        |\mathtt{got} - \mathrm{ELBO}(q)| \le \mathtt{rtol}\,
        \bigl(|\mathbb E_q[\log p(x\mid z)]| + \mathrm{KL}(q\,\|\,p(z)) + 1\bigr)
        + \mathtt{atol}.

    With ``batch_size=B``, check batched code instead: ``fn(model, q, x)`` receives
    ``x`` of shape ``(B, D)`` and a ``q`` with ``q.mean`` of shape ``(B, K)`` and one
    covariance per row (``q.scale_tril`` and ``q.cov`` of shape ``(B, K, K)``), and
    must return the ``B`` ELBOs, shape ``(B,)``.

    Parameters
    ----------
    fn : callable
        The code under test, ``fn(model, q, x)``. ``q`` is a :class:`~elbo_check.Gaussian`
        (read ``q.mean``, ``q.cov`` or ``q.scale_tril``); ``model`` a
        :class:`~elbo_check.LinearGaussianModel` (``weights``, ``bias``,
        ``prior.mean``, ``prior.cov``, ``noise_cov`` or ``dense_noise_cov()``); ``x`` a
        float64 array. It must return a real number (Python, numpy, torch or JAX), be
        deterministic and leave its arguments unchanged (it gets private copies).
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
    up_to_constant : bool, optional
        For code that drops additive constants (``-D/2 log 2 pi``, say): a case passes
        when ``got - ELBO`` is the same, within twice the tolerance, for three q's at the
        same model and ``x`` (default False). Cannot be combined with ``batch_size``.
    batch_size : int, optional
        Check a batched ``fn`` (above) on batches of this many rows, >= 1 (default None:
        unbatched). Every member is compared; a failure names the worst member and says
        whether the members' values depend on each other (a reduction or a transpose
        over the batch axis).
    problems : strategy or sequence, optional
        Your own problems instead of the drawn ones: a hypothesis strategy of
        :class:`~elbo_check.strategies.ElboProblem` (searched), or a non-empty sequence
        of them or of ``(model, q, x)`` tuples (checked in order, without search; a
        failure names its index). With ``batch_size=B`` each problem is one batch.
    q_kinds : sequence of str, optional
        The covariance kinds of the drawn q's: some of ``"full"``, ``"diagonal"`` (a
        mean-field guide) and ``"isotropic"`` (default: all three).
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
        bound on the case's condition numbers; an ``rtol`` you pass is used as given.
        Pass it for code that computes in float32 but returns float64.
    **model_options
        Passed to :func:`~elbo_check.strategies.linear_gaussian_models` to restrict the
        drawn models, e.g. ``noise_kinds=("diagonal",)`` if your code only supports
        diagonal noise, or ``max_latent_dim=3``.

    Returns
    -------
    VerificationReport
        When every case passes: ``check`` (``"verify_elbo"``, with its options),
        ``cases`` (cases tried), ``worst_error`` (the largest ``|got - ELBO| /
        tolerance``, at most 1), ``tolerance`` (in words), ``seed`` and ``details``.

    Raises
    ------
    AssertionError
        The verdict, when a case fails. The message shows the minimal failing case
        (the model, ``q``, ``x``), the expected and the returned value, the gap and the
        tolerance, the exact terms, and a diagnosis: the known bug that reproduces
        ``fn``'s values on this case and on independent ones (``Diagnosis: ...``,
        ``Fix: ...``), else what the gap depends on. ``fn`` also fails, with the reason
        in the message, when it raises (its exception is chained as the cause), returns
        something other than a real scalar (None, a string, an array; with
        ``batch_size``, anything but ``B`` values), returns NaN or infinity, edits an
        argument in place, or gives two values for one input.
    InvalidInputError
        Before ``fn`` is called, for a bad option: ``fn`` not callable, ``rtol`` or
        ``atol`` not a finite number >= 0, ``seed`` negative or of another type,
        ``max_examples`` or ``batch_size`` not an integer >= 1, an unknown ``profile``,
        ``q_kinds`` empty or with another kind, ``problems`` of another type, empty or
        with a malformed problem, ``up_to_constant`` with ``batch_size``,
        ``time_budget`` not positive and finite, ``dtype`` not a floating dtype; or an
        invalid ``$ELBO_CHECK_SEED`` or ``$ELBO_CHECK_PROFILE`` when ``seed`` or
        ``profile`` is left to them.
    TypeError
        If a model option is not a parameter of
        :func:`~elbo_check.strategies.linear_gaussian_models`.
    hypothesis.errors.InvalidArgument
        If a model option has an invalid value (raised when the first problem is drawn).

    See Also
    --------
    check_elbo : The same comparison on one case, for use inside ``@given``.
    verify_elbo_estimator : Checks a Monte-Carlo estimate of the ELBO.

    References
    ----------
    .. [1] D. M. Blei, A. Kucukelbir and J. D. McAuliffe, "Variational inference: a
       review for statisticians", Journal of the American Statistical Association
       112(518):859-877, 2017.

    Examples
    --------
    An ELBO written out by hand passes:

    >>> import numpy as np
    >>> from elbo_check import kl_divergence
    >>> from elbo_check.testing import verify_elbo
    >>> def my_elbo(model, q, x):
    ...     w, psi = model.weights, model.dense_noise_cov()
    ...     r = x - w @ q.mean - model.bias
    ...     ell = -0.5 * (np.linalg.slogdet(2 * np.pi * psi)[1] + r @ np.linalg.solve(psi, r)
    ...                   + np.trace(np.linalg.solve(psi, w @ q.cov @ w.T)))
    ...     return ell - kl_divergence(q, model.prior)
    >>> report = verify_elbo(my_elbo, max_examples=5, seed=0)
    >>> report.check, report.cases, report.worst_error <= 1
    ('verify_elbo', 5, True)

    The same with the KL added instead of subtracted fails; on your own problem (checked
    without search) the message shows the case and names the bug:

    >>> from elbo_check import Gaussian, ppca
    >>> def kl_added(model, q, x):
    ...     return my_elbo(model, q, x) + 2 * kl_divergence(q, model.prior)
    >>> model = ppca(weights=[[1.0, 0.5], [0.2, -0.3], [0.0, 1.0]],
    ...              mean=[0.0, 1.0, -1.0], noise_variance=0.4)
    >>> q = Gaussian.from_diagonal(mean=[0.3, -0.2], variances=[0.5, 0.8])
    >>> x = np.array([0.5, 1.0, -2.0])
    >>> verify_elbo(kl_added, problems=[(model, q, x)])
    Traceback (most recent call last):
      ...
    AssertionError: verify_elbo failed (problems[0] of 1)
      model: D = 3, K = 2, noise isotropic
    ...
      gap (got - expected) = 0.346291; tolerance 5.49e-06
    ...
    Diagnosis: the KL term has the wrong sign.
      Fix: the ELBO is reconstruction MINUS KL(q || p(z)).
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
