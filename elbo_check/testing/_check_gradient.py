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
    elbo_problems,
)
from ._batching import check_batch_size
from ._cases import as_elbo_cases, check_q_kinds, statistical_cases
from ._forms import ElboForm, check_form
from ._gradient_checks import (
    _label,
    _parametrised_problems,
    _verify_batches,
    _verify_exact_gradient,
)
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
from ._parametrisations import Parametrisation
from ._pathwise_gradient import verify_pathwise_gradient
from ._report import VerificationReport
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
        The code under test, with the signature of its mode (above). It must return the
        gradient as real arrays (numpy, torch or JAX) and leave its arguments unchanged;
        in statistical mode it must draw its randomness from ``rng`` only.
    parametrisation : Parametrisation, optional
        Differentiate in these parameters instead of :math:`(m, L)` (default None:
        :math:`(m, L)`), e.g. ``DiagonalSoftplusScale()`` or ``Custom(...)``.
    mode : {"exact", "statistical", "pathwise"}, optional
        Which gradient ``fn`` returns (above; default ``"exact"``). ``"stochastic"`` is
        a deprecated name of ``"statistical"``.
    form : {"joint", "analytic_kl", "analytic_entropy"} or ElboForm, optional
        The estimate differentiated (pathwise mode) or the suspects named (default
        ``"joint"``).
    seed : int or numpy.random.Generator, optional
        Makes the check reproducible: an integer >= 0, or a generator to draw one from
        (default: the pytest plugin's ``--elbo-check-seed``, else
        ``$ELBO_CHECK_SEED``, else 0).
    n_samples : int, optional
        Statistical mode: passed to ``fn``, >= 1 (default 8).
    calls : int, optional
        Statistical mode: calls per problem (per batch with ``batch_size``), at least 80
        (default from ``profile``: 800 for ``"dev"``, 1600 for ``"ci"``, 4000 for
        ``"thorough"``).
    problems : strategy or sequence, optional
        Your own problems (:class:`~elbo_check.strategies.ElboProblem` or ``(model, q,
        x)``): a hypothesis strategy (searched in the exact and pathwise modes, drawn
        from ``n_problems`` times in statistical mode) or a non-empty sequence (each
        checked, in order). With ``batch_size=B`` each is one batch: q of batch shape
        ``(B,)`` and ``x`` of shape ``(B, D)``. With a parametrisation, each ``q`` is
        replaced by its projection onto the family (:meth:`Parametrisation.project`).
    n_problems : int, optional
        Statistical mode: problems (batches) drawn from a strategy or the verifier's own,
        >= 1 (default from ``profile``: 4, 6 or 12; with ``batch_size``, each grown into
        ``B`` observations of its model, each with its own q near its posterior).
    q_kinds : sequence of str, optional
        Covariance kinds of the drawn q's: some of ``"full"``, ``"diagonal"`` and
        ``"isotropic"`` (default: ``("full",)`` in statistical mode, all three
        otherwise). With a parametrisation the exact and pathwise modes draw the kinds
        its family holds instead, and the statistical mode projects its q's onto the
        family.
    false_alarm_rate : float, optional
        Statistical mode: the probability that a correct estimator fails the call, all
        coordinates of all problems together, in (0, 1) (default 1e-6). Each coordinate
        is t-tested at level ``false_alarm_rate / (number of coordinates)``
        (Bonferroni), as in :func:`verify_elbo_estimator`'s Notes.
    profile : {"dev", "ci", "thorough"}, optional
        The effort profile that sets the default ``max_examples``, ``calls`` and
        ``n_problems`` (default: the pytest plugin's ``--elbo-check-profile``, else
        ``$ELBO_CHECK_PROFILE``, else ``"dev"``).
    max_examples : int, optional
        Exact and pathwise modes: cases the search tries, >= 1 (default from
        ``profile``: 100, 300 or 2000).
    rtol, atol : float, optional
        Tolerances (above; defaults 1e-6 and 1e-8), finite numbers >= 0; in statistical
        mode a coordinate whose mean is within them of the exact gradient passes
        whatever its t.
    batch_size : int, optional
        Check batched code (above) on batches of this many members, >= 1 (default
        None: unbatched).
    time_budget : float, optional
        Seconds the call may take, positive and finite (default None: no limit). When
        they run out, a statistical check stops between problems (the report covers the
        problems completed, each tested at the planned level, with ``worst_error`` NaN;
        if not even the first is complete, InvalidInputError), the search of the exact
        and pathwise modes stops drawing cases (a failure already found is still shrunk
        and reported). ``str(report)`` then says so and
        ``report.details["stopped_by_time_budget"]`` holds the budget.
    dtype : str or dtype, optional
        The floating precision ``fn`` computes in: ``"float16"``, ``"bfloat16"``,
        ``"float32"``, ``"float64"`` or a numpy, torch or JAX floating dtype (default
        None: the coarsest floating dtype ``fn`` has returned). In the exact and
        pathwise modes, below float64 and with ``rtol`` left at its default, each
        case's relative tolerance widens to :math:`\max(10^{-6},\, 8\,\epsilon\,(D +
        K)\,\kappa)`, with :math:`\epsilon` the dtype's machine epsilon and
        :math:`\kappa` a bound on the case's condition numbers; the statistical test
        does not change.
    **model_options
        Passed to :func:`~elbo_check.strategies.linear_gaussian_models` to restrict the
        drawn models (in statistical mode ``noise_kinds`` and ``prior_kinds`` select
        among the fixed problems, any other option makes the problems drawn).

    Returns
    -------
    VerificationReport
        When the check passes: ``check`` (the call, with its options), ``cases`` (cases
        tried, or problems tested), ``worst_error`` (the largest ``|got - exact| /
        tolerance`` over all entries, or ``|t| / c`` over all coordinates; at most 1),
        ``tolerance`` (in words), ``seed`` and ``details`` (``"form"`` always;
        ``"calls"``, ``"n_samples"`` and ``"critical_t"`` in statistical mode;
        ``"batch_size"`` and ``"members"`` with ``batch_size``).

    Raises
    ------
    AssertionError
        The verdict, with the failing problem (the failing member of a batch), each
        coordinate's expected and returned value marked ``<-- off`` (``<-- biased`` in
        statistical mode, with means, standard errors and t) and a diagnosis
        (``Diagnosis: ...``, ``Fix: ...``). ``fn`` also fails, with the reason in the
        message, when it raises (its exception is chained as the cause), returns
        something other than real arrays of the right shapes (a pair, or the
        parametrisation's keys), a non-zero gradient for an entry that is not a
        parameter, NaN, edits an argument in place, or gives two gradients for one
        input.
    InvalidTypeError
        If ``parametrisation`` is neither None nor a :class:`Parametrisation`.
    InvalidInputError
        For invalid arguments, before ``fn`` is called: ``fn`` not callable, an unknown
        ``mode`` or ``form``, ``false_alarm_rate`` outside (0, 1), ``rtol`` or ``atol``
        not a finite number >= 0, ``seed`` negative or of another type, ``n_samples``,
        ``n_problems``, ``max_examples`` or ``batch_size`` not an integer >= 1,
        ``calls`` below 80, an unknown ``profile``, ``q_kinds`` empty or with another
        kind, ``problems`` of another type, empty or malformed, ``n_problems`` with a
        sequence of problems, ``batch_shape`` or ``shared_covariance`` among the model
        options with ``batch_size`` or a parametrisation, ``time_budget`` not positive
        and finite, ``dtype`` not a floating dtype; in statistical mode an unknown model
        option; or an invalid ``$ELBO_CHECK_SEED`` or ``$ELBO_CHECK_PROFILE`` when
        ``seed`` or ``profile`` is left to them. Also when ``time_budget`` runs out
        before the first statistical problem is complete (no verdict).
    TypeError
        Exact and pathwise modes: if a model option is not a parameter of
        :func:`~elbo_check.strategies.linear_gaussian_models`.
    hypothesis.errors.InvalidArgument
        Exact and pathwise modes: if a model option has an invalid value (when the
        first problem is drawn).

    Warns
    -----
    DeprecationWarning
        For ``mode="stochastic"`` (use ``"statistical"``), and for an integer
        ``problems`` (use ``n_problems``).

    See Also
    --------
    Parametrisation : The chain rule from :math:`(m, L)` to your parameters.
    verify_elbo_estimator : Checks the estimate itself.

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
    ``mode="pathwise"``, with that named [1]_.

    References
    ----------
    .. [1] G. Roeder, Y. Wu and D. Duvenaud, "Sticking the landing: simple,
       lower-variance gradient estimators for variational inference", NeurIPS 2017,
       arXiv:1703.09194.

    Examples
    --------
    The exact gradient in :math:`(m, L)`, with :math:`\Lambda = W^\top\Psi^{-1}W +
    \Sigma_0^{-1}` the posterior precision: :math:`\nabla_m = W^\top\Psi^{-1}(x - Wm
    - b) - \Sigma_0^{-1}(m - \mu_0)` and :math:`\nabla_L = -\Lambda L +
    \operatorname{diag}(1/L_{kk})` (its upper triangle is ignored):

    >>> import numpy as np
    >>> from elbo_check.testing import verify_elbo_gradient
    >>> def elbo_grad(model, q, x):
    ...     w, psi, prior = model.weights, model.dense_noise_cov(), model.prior
    ...     precision = w.T @ np.linalg.solve(psi, w) + np.linalg.inv(prior.cov)
    ...     g_mean = (w.T @ np.linalg.solve(psi, x - w @ q.mean - model.bias)
    ...               - np.linalg.solve(prior.cov, q.mean - prior.mean))
    ...     g_factor = -precision @ q.scale_tril + np.diag(1 / np.diag(q.scale_tril))
    ...     return g_mean, g_factor
    >>> report = verify_elbo_gradient(elbo_grad, max_examples=5, seed=0)
    >>> report.check, report.cases, report.worst_error <= 1, report.details["form"]
    ('verify_elbo_gradient', 5, True, 'joint')

    Without the entropy's gradient, on a problem of your own:

    >>> from elbo_check import Gaussian, ppca
    >>> def no_entropy(model, q, x):
    ...     g_mean, g_factor = elbo_grad(model, q, x)
    ...     return g_mean, g_factor - np.diag(1 / np.diag(q.scale_tril))
    >>> model = ppca(weights=[[1.0, 0.5], [0.2, -0.3], [0.0, 1.0]],
    ...              mean=[0.0, 1.0, -1.0], noise_variance=0.4)
    >>> q = Gaussian.from_covariance(mean=[0.3, -0.2], cov=[[0.5, 0.2], [0.2, 0.8]])
    >>> x = np.array([0.5, 1.0, -2.0])
    >>> verify_elbo_gradient(no_entropy, problems=[(model, q, x)])
    Traceback (most recent call last):
      ...
    AssertionError: verify_elbo_gradient failed (problems[0] of 1)
    ...
              L[0,0]: expected -1.4424978..., got -2.8567113..., gap -1.41  <-- off
    ...
    Diagnosis: the entropy's contribution diag(1 / L_ii) is missing from the factor gradient.
      Fix: d/dL sum(log diag L) = diag(1 / diag L).
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
