"""verify_elbo_gradient: exact, statistical and pathwise gradients in (m, L) or the
user's parameters.

With ``parametrisation=None`` the user's function receives q (a Gaussian) and returns the
gradient in q's mean and Cholesky factor; with a :class:`Parametrisation` it receives
that parametrisation's dict of arrays and returns the gradient in them, which is
compared with the oracle's gradient pulled back through the map's exact Jacobian (or,
for :class:`Custom`, a central-difference Jacobian whose error bound joins the
tolerance).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st
from numpy.typing import NDArray

from .._errors import InvalidInputError, InvalidTypeError
from ..strategies import (
    COV_KINDS,
    ElboProblem,
    elbo_problems,
    linear_gaussian_models,
    observations,
    variational_gaussians,
)
from ._batch_problems import batched_statistical_cases
from ._batching import check_batch_size
from ._cases import as_elbo_cases, check_q_kinds, statistical_cases
from ._forms import ElboForm, check_form
from ._gradient_batch_statistics import verify_batched_statistical
from ._gradient_batches import batched_gradient_problems, verify_batched_gradient
from ._gradient_cases import _Case, _legacy_case, _param_case, coordinate_rows
from ._gradient_diagnosis import gradient_suspects_across
from ._gradient_statistics import verify_statistical_gradient
from ._limits import _single_blas_thread
from ._options import (
    DEFAULT_FALSE_ALARM_RATE,
    _check_callable,
    _check_rate,
    _profile,
    _seed,
    check_count,
    check_tolerance,
)
from ._parametrisations import Custom, Parametrisation
from ._pathwise_gradient import verify_pathwise_gradient
from ._report import VerificationReport, _diagnosis
from ._searching import _deterministic_check
from ._statistics import _statistical_calls

FloatArray = NDArray[np.float64]

#: The modes, and the deprecated name of one of them.
MODES = ("exact", "statistical", "pathwise")
_DEPRECATED_MODES = {"stochastic": "statistical"}


@_single_blas_thread
def verify_elbo_gradient(
    fn: Callable[..., Any],
    *,
    parametrisation: Parametrisation | None = None,
    mode: str = "exact",
    form: str | ElboForm = "joint",
    seed: int | np.random.Generator | None = None,
    n_samples: int = 8,
    calls: int | None = None,
    problems: Any = None,
    n_problems: int | None = None,
    q_kinds: Sequence[str] | None = None,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    profile: str | None = None,
    max_examples: int | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    batch_size: int | None = None,
    **model_options: Any,
) -> VerificationReport:
    r"""Check gradients of the ELBO with respect to q's parameters.

    Three modes, parallel to :func:`verify_elbo_estimator`'s:

    ``mode="exact"`` (default): the exact gradient of the ELBO.

    ``mode="statistical"``: an unbiased estimate of it (reparameterisation, score
    function, sticking the landing, ...). Each coordinate is t-tested on batch means as
    in :func:`verify_elbo_estimator`, Bonferroni-corrected over all coordinates and
    problems, so a correct estimator fails a call with probability at most
    ``false_alarm_rate``. ``mode="stochastic"`` is a deprecated name of this mode.

    ``mode="pathwise"``: the noise ``eps`` (shape ``(n, K)``) is given, and ``fn`` must
    return exactly the gradient of its ``form``'s estimate at
    :math:`z_i = m + L\varepsilon_i` with respect to :math:`(m, L)` (or the
    parameters), holding ``eps`` fixed: what autodiff of a reparameterised estimate
    gives. A deterministic check over hypothesis-drawn problems and noise (``n`` in 1..4,
    entries in [-3, 3]), with shrinking.

    **Which signature.** With ``parametrisation=None`` (the default) ``fn`` receives q
    itself and differentiates in q's mean ``m`` and lower Cholesky factor ``L``::

        fn(model, q, x) -> (grad_mean, grad_scale_tril)                  # exact
        fn(model, q, x, rng, n_samples) -> (grad_mean, grad_scale_tril)  # statistical
        fn(model, q, x, eps) -> (grad_mean, grad_scale_tril)             # pathwise

    (entries above the diagonal of ``grad_scale_tril`` are ignored). With a
    :class:`Parametrisation` (``DiagonalLogScale()``, ``FullUnitCholeskyScale()``,
    ``Custom(...)``, even ``FullCholesky()``) ``fn`` receives that parametrisation's
    dict of arrays ``params`` in q's place and returns the gradient in them, as a dict
    with the same keys or a tuple in the order of ``parametrisation.keys``::

        fn(model, params, x) -> {"loc": ..., "log_scale": ...}
        fn(model, params, x, rng, n_samples) -> (grad_loc, grad_log_scale)
        fn(model, params, x, eps) -> {"loc": ..., "log_scale": ...}

    The expected value is the one in :math:`(m, L)` pulled back through the map
    (:meth:`Parametrisation.pullback`). Entries that are not parameters (above the
    diagonal of a factor, the unit diagonal of ``unit_scale_tril``) must have gradient 0;
    a symmetric ``cov`` or ``precision`` gradient is compared through its symmetric part.
    Diagonal parametrisations are checked on diagonal q's.

    ``form`` (``"joint"``, ``"analytic_kl"``, ``"analytic_entropy"`` or an
    :class:`ElboForm`) says which estimate is differentiated. Every form has the ELBO as
    its expectation, and its pathwise gradient the ELBO's gradient as expectation, so in
    the exact and statistical modes the expected gradient is the same for all forms:
    there ``form`` only picks the suspects a failure is compared with (the KL's gradient
    missing, for the analytic-KL form) and is recorded in the report's details. In
    pathwise mode it selects the exact target (see Notes).

    Tolerances: exact mode compares within ``rtol * (|g| + 1) + atol`` per coordinate;
    pathwise mode within ``rtol * (|g| + magnitude + 1) + atol``, the magnitude being
    the sum of the absolute values of the terms the coordinate is a sum of (see
    :meth:`ElboForm.pathwise_gradient_with_sizes`); both plus, for :class:`Custom`, the
    error bound of its finite-difference Jacobian. A failure's diagnosis names a
    suspect only when it explains the user's gradient on the failing problem and on an
    independent problem of the same dimensions, noise, prior and q kinds.

    **Batches.** With ``batch_size=B``, ``fn`` is batched VAE code: one model and a
    minibatch of ``B`` members, each with its own observation and q. ``x`` has shape
    ``(B, D)``; q has batch shape ``(B,)`` with a covariance per member (``q.mean``
    ``(B, K)``, ``q.scale_tril`` and ``q.cov`` ``(B, K, K)``); with a parametrisation
    every parameter has a leading batch axis (``DiagonalLogScale``: ``loc`` and
    ``log_scale`` of shape ``(B, K)``). ``fn`` returns, for each member ``b``, the
    gradient of member ``b``'s ELBO with respect to member ``b``'s own parameters, the
    batch axis first: what autodiff of the *sum* of the members' ELBOs gives::

        fn(model, q, x) -> (grad_mean (B, K), grad_scale_tril (B, K, K))       # exact
        fn(model, q, x, rng, n_samples) -> (grad_mean, grad_scale_tril)       # statistical
        fn(model, q, x, eps) -> (grad_mean, grad_scale_tril)                  # pathwise
        fn(model, params, x) -> {"loc": (B, K), "log_scale": (B, K)}  # DiagonalLogScale

    In pathwise mode ``eps`` has shape ``(n, B, K)`` (sample axis first, as in
    :func:`verify_elbo_estimator`) and member ``b``'s target is its form's pathwise
    gradient at ``eps[:, b, :]``. Every coordinate of every member is compared (in the
    statistical mode the Bonferroni correction runs over all of them). A failure names
    the worst member and how many fail, and says whether the return has the wrong
    shape (the gradients summed or averaged over the batch axis), whether it is the
    gradient of the batch *mean* of the ELBOs (every member's gradient divided by
    ``B``), whether the members interact (a member's gradient changes with its
    batch-mates), and otherwise diagnoses the member as an unbatched gradient (it is
    packed, at its position, into batches of copies of itself).

    Parameters
    ----------
    fn : callable
        The code under test, with the signature of its mode (above).
    parametrisation : Parametrisation, optional
        Differentiate in these parameters instead of ``(m, L)`` (default: ``(m, L)``).
    mode : {"exact", "statistical", "pathwise"}
        Which gradient ``fn`` returns (above).
    form : str or ElboForm
        The estimate differentiated (pathwise mode) or the suspects named.
    seed : int or numpy.random.Generator, optional
        Makes the check reproducible (default: ``$ELBO_CHECK_SEED`` or 0).
    n_samples : int
        Statistical mode: passed to ``fn``.
    calls : int, optional
        Statistical mode: calls per problem (per batch with ``batch_size``).
    problems : strategy or sequence, optional
        Your own problems (:class:`~elbo_check.strategies.ElboProblem` or ``(model, q,
        x)``). With ``batch_size=B`` each is one batch: q of batch shape ``(B,)`` and
        ``x`` of shape ``(B, D)``.
    n_problems : int, optional
        Statistical mode: problems (batches) drawn from a strategy or the verifier's own
        (with ``batch_size``, each grown into ``B`` observations of its model, each
        with its own q near its posterior).
    q_kinds : sequence of str, optional
        Covariance kinds of the drawn q's (``"full"``, ``"diagonal"``, ``"isotropic"``).
    false_alarm_rate : float
        Statistical mode: the probability that a correct estimator fails a call.
    profile : str, optional
        ``"dev"`` or ``"ci"``: the default ``max_examples``, ``calls`` and problems.
    max_examples : int, optional
        Exact and pathwise modes: cases the search tries.
    rtol, atol : float
        Tolerances (above).
    batch_size : int, optional
        Check batched code on batches of this many members (``None``: unbatched).
    **model_options
        Passed to :func:`~elbo_check.strategies.linear_gaussian_models`.

    Returns
    -------
    VerificationReport

    Raises
    ------
    AssertionError
        With the failing problem (the failing member of a batch) and a diagnosis.
    InvalidInputError
        For invalid arguments, before ``fn`` is called.

    Notes
    -----
    With :math:`g(z) = \nabla_z\log p(x, z) = -\Sigma_0^{-1}(z - \mu_0)
    + W^\top\Psi^{-1}(x - Wz - b)`, :math:`g^{\mathrm{lik}}` its likelihood part and
    :math:`z_i = m + L\varepsilon_i`, the pathwise targets are, for the joint and the
    analytic-entropy forms (at fixed noise :math:`-\log q(z_i) = \sum_k \log L_{kk} +
    \mathrm{const}`, and :math:`H(q) = \sum_k\log L_{kk} + \mathrm{const}`),

    .. math::
        \nabla_m = \frac1n\sum_i g(z_i),\qquad
        \nabla_L = \operatorname{tril}\Bigl(\frac1n\sum_i g(z_i)\varepsilon_i^\top\Bigr)
            + \operatorname{diag}(1/L_{kk}),

    and for the analytic-KL form

    .. math::
        \nabla_m = \frac1n\sum_i g^{\mathrm{lik}}(z_i) - \Sigma_0^{-1}(m - \mu_0),\qquad
        \nabla_L = \operatorname{tril}\Bigl(\frac1n\sum_i g^{\mathrm{lik}}(z_i)
            \varepsilon_i^\top - \Sigma_0^{-1}L\Bigr) + \operatorname{diag}(1/L_{kk}).

    A sticking-the-landing estimator (log q's parameters detached) is unbiased but not
    the gradient of its estimate: it passes ``mode="statistical"`` and fails
    ``mode="pathwise"``, with that named.
    """
    __tracebackhide__ = True
    _check_callable(fn)
    _check_rate(false_alarm_rate)
    if parametrisation is not None and not isinstance(parametrisation, Parametrisation):
        raise InvalidTypeError(
            "parametrisation must be None or a Parametrisation (DiagonalLogScale(), "
            f"FullCholesky(), Custom(...), ...); got {type(parametrisation).__name__}"
        )
    if isinstance(mode, str) and mode in _DEPRECATED_MODES:
        warnings.warn(
            f"verify_elbo_gradient(mode={mode!r}) is deprecated; use "
            f"mode={_DEPRECATED_MODES[mode]!r} (the same test, named as in "
            "verify_elbo_estimator)",
            DeprecationWarning,
            stacklevel=3,  # the caller of the verifier's wrapper
        )
        mode = _DEPRECATED_MODES[mode]
    if mode not in MODES:
        choices = ", ".join(repr(m) for m in MODES)
        raise InvalidInputError(
            f"mode must be one of {choices} ('stochastic' is a deprecated name of "
            f"'statistical'); got mode={mode!r}"
        )
    chosen_form = check_form(form)
    chosen = _profile(profile)
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    seed_value = _seed(seed)
    size = check_batch_size(batch_size)
    if size is not None:
        report = _verify_batches(
            fn,
            parametrisation,
            mode,
            chosen_form,
            size,
            seed=seed_value,
            chosen=chosen,
            n_samples=n_samples,
            calls=calls,
            problems=problems,
            n_problems=n_problems,
            q_kinds=q_kinds,
            false_alarm_rate=false_alarm_rate,
            max_examples=max_examples,
            rtol=rtol,
            atol=atol,
            model_options=model_options,
        )
        return dataclasses.replace(
            report, details={**report.details, "form": chosen_form.name, "batch_size": size}
        )
    if mode == "statistical":
        total_calls = _statistical_calls(chosen, calls, n_samples)
        return verify_statistical_gradient(
            fn,
            parametrisation,
            chosen_form,
            label=_label(parametrisation, mode, chosen_form),
            seed=seed_value,
            problems=statistical_cases(
                problems,
                n_problems,
                default_count=chosen["problems"],
                seed=seed_value,
                q_kinds=("full",) if q_kinds is None else q_kinds,
                model_options=model_options,
                calls=total_calls,
            ),
            calls=total_calls,
            n_samples=n_samples,
            false_alarm_rate=false_alarm_rate,
            rtol=rtol,
            atol=atol,
        )
    kinds = check_q_kinds(COV_KINDS if q_kinds is None else q_kinds)
    strategy = as_elbo_cases(
        problems,
        lambda: (
            elbo_problems(q_kinds=kinds, **model_options)
            if parametrisation is None
            else _parametrised_problems(parametrisation, model_options)
        ),
    )
    examples = check_count("max_examples", max_examples, chosen["max_examples"])
    if mode == "pathwise":
        report = verify_pathwise_gradient(
            fn,
            parametrisation,
            chosen_form,
            label=_label(parametrisation, mode, chosen_form),
            seed=seed_value,
            max_examples=examples,
            rtol=rtol,
            atol=atol,
            problems=strategy
            if isinstance(strategy, st.SearchStrategy)
            else st.sampled_from(strategy),
        )
    else:
        report = _verify_exact_gradient(
            fn, parametrisation, chosen_form, seed_value, examples, rtol, atol, strategy
        )
    return dataclasses.replace(report, details={**report.details, "form": chosen_form.name})


def _label(par: Parametrisation | None, mode: str, form: ElboForm, size: int | None = None) -> str:
    """The report's and the failure's name of the call, e.g.
    ``verify_elbo_gradient(mode='pathwise', form='analytic_kl', batch_size=4)``."""
    options = [] if par is None else [f"parametrisation={par!r}"]
    if mode != "exact":
        options.append(f"mode={mode!r}")
    if mode == "pathwise" and form.name != "joint":
        options.append(f"form={form.name!r}")
    if size is not None:
        options.append(f"batch_size={size}")
    return "verify_elbo_gradient" + (f"({', '.join(options)})" if options else "")


def _verify_batches(
    fn: Callable[..., Any],
    par: Parametrisation | None,
    mode: str,
    form: ElboForm,
    size: int,
    *,
    seed: int,
    chosen: dict[str, int],
    n_samples: int,
    calls: int | None,
    problems: Any,
    n_problems: int | None,
    q_kinds: Sequence[str] | None,
    false_alarm_rate: float,
    max_examples: int | None,
    rtol: float,
    atol: float,
    model_options: dict[str, Any],
) -> VerificationReport:
    """``batch_size=size`` in every mode (see :mod:`._gradient_batches`)."""
    batched = sorted({"batch_shape", "shared_covariance"} & set(model_options))
    if batched:
        raise InvalidInputError(
            f"batch_size={size} draws batches of {size} members, each with its own q; "
            f"{batched} cannot be combined with it (leave them out)"
        )
    label = _label(par, mode, form, size)
    if mode == "statistical":
        total_calls = _statistical_calls(chosen, calls, n_samples)
        return verify_batched_statistical(
            fn,
            par,
            form,
            size,
            label=label,
            seed=seed,
            batches=batched_statistical_cases(
                problems,
                n_problems,
                size,
                default_count=chosen["problems"],
                seed=seed,
                q_kinds=("full",) if q_kinds is None else q_kinds,
                model_options=model_options,
                calls=total_calls,
            ),
            calls=total_calls,
            n_samples=n_samples,
            false_alarm_rate=false_alarm_rate,
            rtol=rtol,
            atol=atol,
        )
    kinds = check_q_kinds(
        (COV_KINDS if q_kinds is None else q_kinds) if par is None else par.cov_kinds
    )
    extra = "" if not isinstance(par, Custom) else " + the Jacobian's difference error"
    if mode == "pathwise":
        tolerance_text = (
            f"|got - exact| <= rtol={rtol:g} * (|exact| + magnitude + 1) + atol={atol:g}"
            f"{extra} per entry, the magnitude being the sum of the absolute values of the "
            f"terms of the gradient of {form.formula}"
        )
    else:
        tolerance_text = (
            f"|got - exact| <= rtol={rtol:g} * (|exact| + 1) + atol={atol:g}{extra} per entry"
        )
    return verify_batched_gradient(
        fn,
        par,
        form,
        size,
        pathwise=mode == "pathwise",
        label=label,
        seed=seed,
        max_examples=check_count("max_examples", max_examples, chosen["max_examples"]),
        rtol=rtol,
        atol=atol,
        problems=batched_gradient_problems(problems, size, kinds, model_options),
        tolerance_text=tolerance_text,
    )


def _parametrised_problems(
    par: Parametrisation, model_options: dict[str, Any]
) -> st.SearchStrategy[ElboProblem]:
    """Problems with one q of the kinds ``par`` holds (diagonal for diagonal maps)."""
    batched = sorted({"batch_shape", "shared_covariance"} & set(model_options))
    if batched:
        raise InvalidInputError(
            f"a parametrisation is checked on one q at a time; {batched} are not supported "
            "with parametrisation="
        )
    models = linear_gaussian_models(**model_options)

    @st.composite
    def problems(draw: st.DrawFn) -> ElboProblem:
        model = draw(models)
        q = draw(variational_gaussians(model, cov_kinds=par.cov_kinds))
        return ElboProblem(model, q, draw(observations(model)))

    return problems()


def _verify_exact_gradient(
    fn: Callable[..., Any],
    par: Parametrisation | None,
    form: ElboForm,
    seed: int,
    max_examples: int,
    rtol: float,
    atol: float,
    strategy: Any,
) -> VerificationReport:
    suspects = form.gradient_suspects()

    def prepare(model: Any, q: Any, x: Any, variant: int = 0) -> _Case:
        if par is None:
            return _legacy_case(model, q, x, suspects)
        return _param_case(par, model, q, x, suspects)

    def compare(case: _Case) -> tuple[FloatArray, FloatArray, FloatArray]:
        expected = case.expected  # computed before fn sees anything
        got = case.convert(case.call(fn))
        return got, expected, case.tolerance(rtol, atol)

    def evaluate(p: ElboProblem) -> tuple[float, float, float]:
        got, expected, tolerance = compare(prepare(p.model, p.q, p.x))
        return float(np.max(np.abs(got - expected) / tolerance)), 0.0, 1.0

    def explain(
        p: ElboProblem, got: float, expected: float, tol: float, error: BaseException | None
    ) -> str:
        try:
            case = prepare(p.model, p.q, p.x)
        except Exception as err:  # a Custom map that raised
            return f"  the parametrisation's map raised {type(err).__name__}: {err}"
        parts = [case.describe()]
        if error is None:
            parts += coordinate_rows(case, *compare(case))
            found = gradient_suspects_across(fn, prepare, case, case.suspects, rtol, atol)
            parts.append(_diagnosis(found, "see the coordinates marked 'off'"))
        return "\n".join(parts)

    extra = "" if not isinstance(par, Custom) else " + the Jacobian's difference error"
    return _deterministic_check(
        name=_label(par, "exact", form),
        strategy=strategy,
        evaluate=evaluate,
        explain=explain,
        seed=seed,
        max_examples=max_examples,
        tolerance_text=f"|got - exact| <= rtol={rtol:g} * (|exact| + 1) + atol={atol:g}{extra} "
        "per entry",
    )
