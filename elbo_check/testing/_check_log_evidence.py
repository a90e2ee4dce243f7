"""verify_log_evidence: log p(x)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import strategies as st
from numpy.typing import NDArray

from .._model import LinearGaussianModel
from ..strategies import (
    linear_gaussian_models,
    observations,
)
from ._batching import as_values, check_batch_size
from ._calls import (
    _BATCH_AXIS_HINT,
    _call,
    _failing_members,
    _interaction,
    _worst_member,
    _worst_of,
)
from ._cases import as_evidence_cases
from ._diagnosis import Probe, fit_terms, match_suspects_across, rounding_suspect
from ._limits import _single_blas_thread
from ._options import (
    _check_callable,
    _profile,
    _seed,
    check_count,
    check_tolerance,
)
from ._problems import (
    _with_other_prior,
)
from ._report import (
    VerificationReport,
    _describe_model,
    _diagnosis,
    _fmt,
    _numbers,
)
from ._returns import invoke
from ._searching import _deterministic_check
from ._suspects import (
    EVIDENCE_SUSPECTS,
)
from ._term_fit import EVIDENCE_TERMS, evidence_context, independent_models, safe_context

FloatArray = NDArray[np.float64]


# ---------------------------------------------------------------------- evidence
def _evidence_diagnosis(
    fn: Callable[..., Any],
    model: LinearGaussianModel,
    x: FloatArray,
    tolerance: Callable[[LinearGaussianModel, FloatArray], float],
) -> str:
    """Suspects, then a term-level fit, on variations of the failing case and of two
    independent models (other dimensions, the same noise kind)."""
    groups = [[(model, x), (model, x + 1.0), (model, x - 0.5 * np.arange(model.data_dim))]]
    other_prior = _with_other_prior(model)
    if other_prior is not None:
        groups[0].append((other_prior, x))
    for other in independent_models(model):
        rng = np.random.default_rng([other.data_dim, 71])
        xx = other.marginal_mean + 1.5 * rng.standard_normal(other.data_dim)
        groups.append([(other, xx), (other, xx + 0.8), (other, xx - 0.3 * np.arange(len(xx)))])
        moved = _with_other_prior(other)
        if moved is not None:
            groups[-1].append((moved, xx))
    probes, contexts = [], []
    for number, group in enumerate(groups):
        for mm, xx in group:
            try:
                value = _call(fn, mm, xx)
            except Exception:
                continue
            scale = abs(float(mm.log_evidence(xx))) + mm.data_dim + 1
            expected = float(mm.log_evidence(xx))
            probes.append(Probe((mm, xx), value, expected, tolerance(mm, xx), scale, number))
            contexts.append(safe_context(evidence_context, mm, xx))
    found = match_suspects_across(EVIDENCE_SUSPECTS, probes)
    if not found:
        fit = fit_terms(EVIDENCE_TERMS, contexts, probes) or rounding_suspect(probes)
        found = [fit] if fit is not None else []
    return _diagnosis(found, "compare term by term")


@_single_blas_thread
def verify_log_evidence(
    fn: Callable[[LinearGaussianModel, FloatArray], Any],
    *,
    seed: int | np.random.Generator | None = None,
    max_examples: int | None = None,
    profile: str | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    batch_size: int | None = None,
    problems: Any = None,
    **model_options: Any,
) -> VerificationReport:
    r"""Check ``fn(model, x) -> float``, the log marginal likelihood log p(x) for one x.

    ``fn`` is called on linear-Gaussian models and observations drawn by
    :func:`~elbo_check.strategies.linear_gaussian_models` and
    :func:`~elbo_check.strategies.observations` (hypothesis searches them and shrinks a
    failure to a minimal case), and each value is compared with the exact log evidence
    of :meth:`~elbo_check.LinearGaussianModel.log_evidence`, the log density of the
    marginal [1]_

    .. math::
        p(x) = \mathcal N\bigl(x;\; W\mu_0 + b,\; W\Sigma_0 W^\top + \Psi\bigr).

    A case passes when :math:`|\mathtt{got} - \log p(x)| \le \mathtt{rtol}\,(|\log p(x)|
    + D + 1) + \mathtt{atol}`.

    With ``batch_size=B``, check batched code instead: ``fn(model, x)`` receives ``x``
    of shape ``(B, D)`` (``B`` independent rows) and must return one :math:`\log
    p(x_n)` per row, shape ``(B,)``; every row is compared, and a failure names the
    worst row, says whether rows interact (a row's value changes with the other rows)
    and diagnoses the faulty term on single rows.

    Parameters
    ----------
    fn : callable
        The code under test, ``fn(model, x)``: ``model`` a
        :class:`~elbo_check.LinearGaussianModel` (``weights``, ``bias``,
        ``prior.mean``, ``prior.cov``, ``noise_cov`` or ``dense_noise_cov()``), ``x`` a
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
    batch_size : int, optional
        Check a batched ``fn`` (above) on batches of this many rows, >= 1 (default None:
        unbatched).
    problems : strategy or sequence, optional
        Your own cases instead of the drawn ones: a hypothesis strategy of ``(model,
        x)`` pairs (searched), or a non-empty sequence of them, or of ``(model, q, x)``
        problems whose ``q`` is ignored (checked in order, without search; a failure
        names its index). With ``batch_size=B``, ``x`` has shape ``(B, D)``.
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
        bound on the condition numbers of the marginal covariance and the posterior
        precision; an ``rtol`` you pass is used as given. Pass it for code that
        computes in float32 but returns float64.
    **model_options
        Passed to :func:`~elbo_check.strategies.linear_gaussian_models` to restrict the
        drawn models, e.g. ``noise_kinds=("isotropic",)`` or ``max_data_dim=3``.

    Returns
    -------
    VerificationReport
        When every case passes: ``check`` (``"verify_log_evidence"``, with
        ``batch_size``), ``cases`` (cases tried), ``worst_error`` (the largest ``|got -
        log p(x)| / tolerance``, at most 1), ``tolerance`` (in words), ``seed`` and
        ``details``.

    Raises
    ------
    AssertionError
        The verdict, when a case fails. The message shows the minimal failing case (the
        model and ``x``), the expected and the returned value, the gap and the
        tolerance, and a diagnosis: the known bug (the identity for the prior
        covariance, the offset ``b`` ignored, the noise standard deviation for its
        variance, ...) that reproduces ``fn``'s values on this case and on independent
        ones (``Diagnosis: ...``, ``Fix: ...``). ``fn`` also fails, with the reason in
        the message, when it raises (its exception is chained as the cause), returns
        something other than a real scalar (with ``batch_size``, anything but ``B`` values),
        returns NaN or infinity, edits an argument in place, or gives two values for one
        input.
    InvalidInputError
        Before ``fn`` is called, for a bad option: ``fn`` not callable, ``rtol`` or
        ``atol`` not a finite number >= 0, ``seed`` negative or of another type,
        ``max_examples`` or ``batch_size`` not an integer >= 1, an unknown ``profile``,
        ``problems`` of another type, empty or with a malformed case (``x`` not finite
        or of another shape), ``time_budget`` not positive and finite, ``dtype`` not a
        floating dtype; or an invalid ``$ELBO_CHECK_SEED`` or ``$ELBO_CHECK_PROFILE``
        when ``seed`` or ``profile`` is left to them.
    TypeError
        If a model option is not a parameter of
        :func:`~elbo_check.strategies.linear_gaussian_models` (``q_kinds`` included:
        there is no q here).
    hypothesis.errors.InvalidArgument
        If a model option has an invalid value (raised when the first model is drawn).

    References
    ----------
    .. [1] C. M. Bishop, Pattern Recognition and Machine Learning, Springer, 2006,
       eq. (2.115).

    Examples
    --------
    The marginal's log density, from scipy, passes:

    >>> import numpy as np
    >>> from scipy.stats import multivariate_normal
    >>> from elbo_check.testing import verify_log_evidence
    >>> def my_log_evidence(model, x):
    ...     w, prior = model.weights, model.prior
    ...     cov = w @ prior.cov @ w.T + model.dense_noise_cov()
    ...     return multivariate_normal(w @ prior.mean + model.bias, cov).logpdf(x)
    >>> report = verify_log_evidence(my_log_evidence, max_examples=5, seed=0)
    >>> report.check, report.cases, report.worst_error <= 1
    ('verify_log_evidence', 5, True)

    With the prior's covariance left out (right only for a standard-normal prior), on a
    model of your own:

    >>> from elbo_check import Gaussian, LinearGaussianModel
    >>> def identity_prior(model, x):
    ...     w = model.weights
    ...     cov = w @ w.T + model.dense_noise_cov()
    ...     return multivariate_normal(w @ model.prior.mean + model.bias, cov).logpdf(x)
    >>> model = LinearGaussianModel(
    ...     weights=[[1.0, 0.5], [0.2, -0.3], [0.0, 1.0]], bias=[0.0, 1.0, -1.0],
    ...     prior=Gaussian.from_diagonal(mean=[0.5, -0.5], variances=[2.0, 0.5]), noise_cov=0.4)
    >>> verify_log_evidence(identity_prior, problems=[(model, np.array([0.5, 1.0, -2.0]))])
    Traceback (most recent call last):
      ...
    AssertionError: verify_log_evidence failed (problems[0] of 1)
      model: D = 3, K = 2, noise isotropic
    ...
      gap (got - expected) = 0.0402374; tolerance 7.1e-06
    Diagnosis: the prior covariance is taken to be the identity.
      Fix: the marginal covariance is W S0 W^T + Psi.
    """
    __tracebackhide__ = True
    _check_callable(fn)
    chosen = _profile(profile)
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    seed_value = _seed(seed)
    examples = check_count("max_examples", max_examples, chosen["max_examples"])
    size = check_batch_size(batch_size)
    models = linear_gaussian_models(**model_options)
    shape = () if size is None else (size,)
    cases = models.flatmap(lambda m: st.tuples(st.just(m), observations(m, batch_shape=shape)))
    if size is not None:
        return _verify_batched_evidence(
            fn,
            size,
            as_evidence_cases(problems, lambda: cases, rows=size),
            seed_value,
            examples,
            rtol,
            atol,
        )

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
            parts.append(_evidence_diagnosis(fn, model, x, tolerance))
        return "\n".join(parts)

    return _deterministic_check(
        name="verify_log_evidence",
        strategy=as_evidence_cases(problems, lambda: cases),
        evaluate=evaluate,
        explain=explain,
        seed=seed_value,
        max_examples=examples,
        tolerance_text=f"rtol={rtol:g} of (|log p(x)| + D + 1) + atol={atol:g}",
    )


def _verify_batched_evidence(
    fn: Callable[..., Any],
    size: int,
    strategy: st.SearchStrategy[tuple[LinearGaussianModel, FloatArray]]
    | list[tuple[LinearGaussianModel, FloatArray]],
    seed: int,
    max_examples: int,
    rtol: float,
    atol: float,
) -> VerificationReport:
    def tolerance(model: LinearGaussianModel, x: FloatArray) -> Any:
        return rtol * (np.abs(model.log_evidence(x)) + model.data_dim + 1) + atol

    def compare(
        case: tuple[LinearGaussianModel, FloatArray],
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        model, x = case
        expected = np.asarray(model.log_evidence(x), dtype=np.float64)  # before fn runs
        bound = np.asarray(tolerance(model, x), dtype=np.float64)
        return as_values(invoke(fn, model, x), size, "log p(x)"), expected, bound

    def rows_of(model: LinearGaussianModel) -> Callable[[list[FloatArray]], list[float | None]]:
        """The user's value of each single row, packed ``size`` rows to a call."""

        def values(rows: list[FloatArray]) -> list[float | None]:
            out: list[float | None] = []
            for start in range(0, len(rows), size):
                chunk = rows[start : start + size]
                padded = chunk + [chunk[-1]] * (size - len(chunk))
                try:
                    got = as_values(invoke(fn, model, np.stack(padded)), size, "log p(x)")
                except Exception:
                    out += [None] * len(chunk)
                    continue
                out += [float(v) for v in got[: len(chunk)]]
            return out

        return values

    def explain(
        case: tuple[LinearGaussianModel, FloatArray],
        got: float,
        expected: float,
        tol: float,
        error: BaseException | None,
    ) -> str:
        model, x = case
        parts = [_describe_model(model)]
        if error is not None:
            parts += [f"  a batch of {size} rows: x {x.shape}", _BATCH_AXIS_HINT]
            return "\n".join(parts)
        got_all, expected_all, tolerance_all = compare(case)
        i = _worst_member(got_all, expected_all, tolerance_all)
        failing = _failing_members(got_all, expected_all, tolerance_all)
        row = np.array(x[i])
        parts += [
            f"  row {i} of the batch of {size} ({failing} of {size} rows fail):",
            f"  x = {_fmt(row)}",
            _numbers(got, expected, tol),
        ]
        values_of = rows_of(model)
        others = [np.array(x[j]) for j in range(size) if j != i] or [row + 1.0]
        mixing = _interaction(values_of, row, others, got, tol, size)
        if mixing is not None:
            parts.append(mixing)
            return "\n".join(parts)

        def single(mm: LinearGaussianModel, xx: FloatArray) -> float:
            value = rows_of(mm)([np.asarray(xx)])[0]
            if value is None:
                raise ValueError("fn raised on this row")
            return value

        parts.append(_evidence_diagnosis(single, model, row, tolerance))
        return "\n".join(parts)

    return _deterministic_check(
        name=f"verify_log_evidence(batch_size={size})",
        strategy=strategy,
        evaluate=_worst_of(compare),
        explain=explain,
        seed=seed,
        max_examples=max_examples,
        tolerance_text=f"rtol={rtol:g} of (|log p(x)| + D + 1) + atol={atol:g}, per row",
    )
