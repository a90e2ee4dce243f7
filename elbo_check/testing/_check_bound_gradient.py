"""verify_iwae_gradient and verify_renyi_gradient: gradient estimators of multi-sample
bounds (reparameterised, sticking the landing, DReG, VIMCO) in (m, L) or the user's
parameters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st
from numpy.typing import NDArray

from .._errors import InvalidInputError, InvalidTypeError
from ..strategies import COV_KINDS, elbo_problems
from ._bound_estimator_checks import (
    check_alpha,
    check_k,
)
from ._bound_gradient_checks import (
    _pathwise,
    _Settings,
    _statistical,
    check_estimator,
)
from ._cases import as_elbo_cases, check_q_kinds, statistical_cases
from ._gradient_checks import _parametrised_problems
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
from ._report import VerificationReport
from ._statistics import _statistical_calls

FloatArray = NDArray[np.float64]


# ---------------------------------------------------------------------- public
@_single_blas_thread
def verify_renyi_gradient(
    fn: Callable[..., Any],
    *,
    alpha: float,
    k: int = 8,
    estimator: str = "reparameterised",
    parametrisation: Parametrisation | None = None,
    distribution_test: bool = True,
    mode: str = "statistical",
    seed: int | np.random.Generator | None = None,
    calls: int | None = None,
    problems: Any = None,
    n_problems: int | None = None,
    q_kinds: Sequence[str] | None = None,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    profile: str | None = None,
    max_examples: int | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    **model_options: Any,
) -> VerificationReport:
    r"""Check a gradient estimator of the Rényi bound's Monte-Carlo estimate.

    With :math:`z_j = m + L\varepsilon_j` (:math:`j = 1..k`), log weights
    :math:`\ell_j = \log p(x, z_j) - \log q(z_j)` and normalised weights
    :math:`\tilde w_j = \operatorname{softmax}((1-\alpha)\ell)_j`, the per-sample path
    term :math:`p_j = \nabla_z\ell(z_j)` carried through :math:`z_j` and the score
    :math:`s_j = \nabla_\phi\log q_\phi(z_j)` at fixed :math:`z_j`, the ``estimator`` is

    ``"reparameterised"``
        :math:`\sum_j\tilde w_j(p_j - s_j)`: autodiff of the estimate
        (:func:`verify_renyi_estimator`) at fixed noise; its expectation is the
        gradient of the estimate's expectation.
    ``"stl"`` (sticking the landing [1]_)
        :math:`\sum_j\tilde w_j p_j`: ``log q`` evaluated with detached parameters.
        Unbiased for the ELBO (``alpha = 1`` or ``k = 1``), biased otherwise; it is
        checked for its own expectation.
    ``"dreg"`` (doubly reparameterised [2]_, ``alpha = 0`` only)
        :math:`\sum_j\tilde w_j^2 p_j`, with the expectation of ``"reparameterised"``.
    ``"vimco"`` ([3]_, ``alpha = 0`` only, ``k >= 2``)
        :math:`\sum_j(\hat L - \hat L_{-j})\,s_j - \sum_j\tilde w_j s_j`, a
        score-function estimator whose baseline :math:`\hat L_{-j}` replaces
        :math:`\ell_j` by the mean of the other log weights; same expectation.

    ``mode="statistical"`` (default): ``fn(model, q, x, rng, k)`` returns a gradient
    estimate; each coordinate's mean is t-tested against the verifier's own draws of the
    same estimator (``4 * calls`` of them; for ``k = 1``, or ``alpha = 1`` with
    ``"reparameterised"`` or ``"stl"``, their expectation is the ELBO's exact gradient),
    Bonferroni-corrected over coordinates and problems, so that a correct estimator fails
    a call with probability at most ``false_alarm_rate``. For ``"stl"`` and ``"dreg"``,
    whose every draw is exactly zero at q = p(z|x) (the path term vanishes there), 3
    more calls at the posterior must return zero to rounding.

    ``mode="pathwise"``: ``fn(model, q, x, eps)`` with ``eps`` of shape ``(k, K)`` must
    return exactly the estimator's value at that noise, at hypothesis-drawn problems (and
    at q = p(z|x)), within ``rtol * (|g| + magnitude + 1) + atol`` per coordinate, the
    magnitude being the summed sizes of the per-sample terms.

    The return is ``(grad_mean, grad_scale_tril)`` in :math:`(m, L)`, or with a
    :class:`Parametrisation` a gradient in its parameters (``fn`` then receives the
    parameters in q's place), as for :func:`verify_elbo_gradient`. A failure names a
    catalogued bug (the importance weights not detached, q's parameters detached or
    not, the DReG weights not squared or not detached, VIMCO's baseline missing, the
    ELBO's gradient, ...) when it explains the user's values on two problems (or two
    noises).

    Parameters
    ----------
    fn : callable
        The gradient estimator, with the signature of its mode (above).
    alpha : float
        The bound's order, finite (``0`` for IWAE: :func:`verify_iwae_gradient`).
    k : int, optional
        Samples per estimate, >= 1 (>= 2 for ``"vimco"``; default 8).
    estimator : {"reparameterised", "stl", "dreg", "vimco"}, optional
        Which estimator ``fn`` implements (default ``"reparameterised"``).
    parametrisation : Parametrisation, optional
        The parameters ``fn`` differentiates in (default: q's mean and Cholesky factor).
    distribution_test : bool, optional
        Statistical mode: also compare each coordinate's whole distribution with the
        reference draws (two-sample Kolmogorov-Smirnov; default True). This assumes
        ``fn`` draws :math:`z = m + L\varepsilon` with :math:`L` q's lower Cholesky
        factor, as torch's and NumPyro's ``Normal`` and ``MultivariateNormal`` do: the
        gradient's distribution (not its mean) depends on the map from noise to
        :math:`z`. Pass False for another sampler (a low-rank guide's, a symmetric
        square root): then the means alone are tested.
    mode : {"statistical", "pathwise"}, optional
        The check to run (default ``"statistical"``).
    seed : int or numpy.random.Generator, optional
        Makes the check reproducible.
    calls : int, optional
        Statistical mode: calls of ``fn`` per problem, >= 80.
    problems : strategy or sequence, optional
        Your own problems, as in :func:`verify_elbo_estimator`.
    n_problems : int, optional
        Statistical mode: problems drawn, >= 1.
    q_kinds : sequence of str, optional
        Covariance kinds of q (default ``("full",)`` in statistical mode, all three in
        pathwise mode; a parametrisation's own kinds with ``parametrisation``).
    false_alarm_rate : float, optional
        Statistical mode: the probability that a correct estimator fails, in (0, 1).
    profile : {"dev", "ci", "thorough"}, optional
        The effort profile.
    max_examples : int, optional
        Pathwise mode: cases the search tries, >= 1.
    rtol, atol : float, optional
        Tolerances of the deterministic comparisons (defaults 1e-6 and 1e-8).
    time_budget : float, optional
        Seconds the call may take, positive and finite (default None: no limit), as in
        :func:`verify_elbo_estimator`.
    dtype : str or dtype, optional
        The floating precision ``fn`` computes in (default: that of its returns), as in
        :func:`verify_elbo_estimator`; it widens only the deterministic comparisons.
    **model_options
        Restrict the models, as in :func:`verify_elbo_estimator`.

    Returns
    -------
    VerificationReport
        When the check passes; ``details`` holds ``"alpha"``, ``"k"``, ``"estimator"``
        and, in statistical mode, ``"calls"``, ``"critical_t"`` and
        ``"posterior_checked"``.

    Raises
    ------
    AssertionError
        The verdict, when the check fails: the problem, each coordinate's reference and
        estimate, and a diagnosis; also when ``fn`` raises, returns a malformed
        gradient, or edits an argument in place.
    InvalidInputError
        Before ``fn`` is called, for a bad option: an unknown ``estimator``, ``"dreg"``
        or ``"vimco"`` with ``alpha != 0``, ``"vimco"`` with ``k = 1``, and every option
        :func:`verify_renyi_estimator` refuses.
    InvalidTypeError
        If ``parametrisation`` is not a :class:`Parametrisation`.

    See Also
    --------
    verify_iwae_gradient : The same check at ``alpha = 0``.
    verify_renyi_estimator : The estimate itself.

    References
    ----------
    .. [1] G. Roeder, Y. Wu and D. Duvenaud, "Sticking the landing: simple,
       lower-variance gradient estimators for variational inference", NeurIPS 2017.
    .. [2] G. Tucker, D. Lawson, S. Gu and C. J. Maddison, "Doubly reparameterized
       gradient estimators for Monte Carlo objectives", ICLR 2019.
    .. [3] A. Mnih and D. J. Rezende, "Variational inference for Monte Carlo
       objectives", ICML 2016.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.special import softmax
    >>> from elbo_check.testing import verify_renyi_gradient
    >>> def stl(model, q, x, rng, k, alpha=0.5):
    ...     eps = rng.standard_normal((k, q.dim))
    ...     z = q.mean + eps @ q.scale_tril.T
    ...     log_w = model.log_joint(x, z) - q.log_prob(z)
    ...     w = softmax((1 - alpha) * log_w)
    ...     # grad_z log p(x, z) - grad_z log q(z), for each sample
    ...     prior, noise = model.prior, model.dense_noise_cov()
    ...     resid = x - model.bias - z @ model.weights.T
    ...     path = (np.linalg.solve(noise, resid.T).T @ model.weights
    ...             - np.linalg.solve(prior.cov, (z - prior.mean).T).T
    ...             + np.linalg.solve(q.cov, (z - q.mean).T).T)
    ...     return w @ path, np.tril((w[:, None] * path).T @ eps)
    >>> verify_renyi_gradient(stl, alpha=0.5, estimator="stl", n_problems=1, calls=80).check
    "verify_renyi_gradient(alpha=0.5, k=8, estimator='stl')"
    """
    __tracebackhide__ = True
    return _verify(fn, "verify_renyi_gradient", check_alpha(alpha), locals())


@_single_blas_thread
def verify_iwae_gradient(
    fn: Callable[..., Any],
    *,
    k: int = 8,
    estimator: str = "reparameterised",
    parametrisation: Parametrisation | None = None,
    distribution_test: bool = True,
    mode: str = "statistical",
    seed: int | np.random.Generator | None = None,
    calls: int | None = None,
    problems: Any = None,
    n_problems: int | None = None,
    q_kinds: Sequence[str] | None = None,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    profile: str | None = None,
    max_examples: int | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    **model_options: Any,
) -> VerificationReport:
    r"""Check a gradient estimator of the IWAE bound's Monte-Carlo estimate.

    :func:`verify_renyi_gradient` at ``alpha = 0`` (see there): ``estimator`` is
    ``"reparameterised"`` (autodiff of the log-mean-exp), ``"stl"``, ``"dreg"`` or
    ``"vimco"``. At q = p(z|x) the IWAE bound is at its maximum, so every unbiased
    estimator has mean zero there, and ``"stl"`` and ``"dreg"`` are exactly zero.

    Parameters
    ----------
    fn : callable
        ``fn(model, q, x, rng, k)`` (statistical) or ``fn(model, q, x, eps)``
        (pathwise), returning ``(grad_mean, grad_scale_tril)`` or a gradient in the
        parametrisation's parameters.
    k : int, optional
        Samples per estimate, >= 1 (default 8).
    estimator : {"reparameterised", "stl", "dreg", "vimco"}, optional
        Which estimator ``fn`` implements.
    parametrisation : Parametrisation, optional
        The parameters ``fn`` differentiates in.
    distribution_test : bool, optional
        Also compare each coordinate's distribution (default True; see
        :func:`verify_renyi_gradient`).
    mode : {"statistical", "pathwise"}, optional
        The check to run.
    seed : int or numpy.random.Generator, optional
        Makes the check reproducible.
    calls : int, optional
        Statistical mode: calls of ``fn`` per problem, >= 80.
    problems : strategy or sequence, optional
        Your own problems.
    n_problems : int, optional
        Statistical mode: problems drawn, >= 1.
    q_kinds : sequence of str, optional
        Covariance kinds of q.
    false_alarm_rate : float, optional
        Statistical mode: the probability that a correct estimator fails.
    profile : {"dev", "ci", "thorough"}, optional
        The effort profile.
    max_examples : int, optional
        Pathwise mode: cases the search tries.
    rtol, atol : float, optional
        Tolerances of the deterministic comparisons.
    time_budget : float, optional
        Seconds the call may take, positive and finite (default None: no limit), as in
        :func:`verify_elbo_estimator`.
    dtype : str or dtype, optional
        The floating precision ``fn`` computes in (default: that of its returns), as in
        :func:`verify_elbo_estimator`; it widens only the deterministic comparisons.
    **model_options
        Restrict the models.

    Returns
    -------
    VerificationReport
        When the check passes.

    Raises
    ------
    AssertionError
        The verdict, when the check fails, with a diagnosis.
    InvalidInputError
        Before ``fn`` is called, for a bad option.
    InvalidTypeError
        If ``parametrisation`` is not a :class:`Parametrisation`.

    See Also
    --------
    verify_renyi_gradient : The general check.

    References
    ----------
    .. [1] G. Tucker, D. Lawson, S. Gu and C. J. Maddison, "Doubly reparameterized
       gradient estimators for Monte Carlo objectives", ICLR 2019.

    Examples
    --------
    >>> from elbo_check.testing import verify_iwae_gradient
    >>> def zero(model, q, x, eps):  # STL at the posterior only; wrong elsewhere
    ...     return 0.0 * q.mean, 0.0 * q.scale_tril
    >>> verify_iwae_gradient(zero, estimator="stl", mode="pathwise", max_examples=20)
    Traceback (most recent call last):
      ...
    AssertionError: verify_iwae_gradient(k=8, estimator='stl', mode='pathwise') failed ...
    ...
    """
    __tracebackhide__ = True
    return _verify(fn, "verify_iwae_gradient", 0.0, locals())


# ---------------------------------------------------------------------- shared
def _verify(
    fn: Callable[..., Any], name: str, alpha: float, o: dict[str, Any]
) -> VerificationReport:
    __tracebackhide__ = True
    _check_callable(fn)
    _check_rate(o["false_alarm_rate"])
    n = check_k(o["k"])
    estimator = check_estimator(o["estimator"], alpha)
    if estimator == "vimco" and n < 2:
        raise InvalidInputError(f"estimator='vimco' needs k >= 2 samples; got k={n}")
    par = o["parametrisation"]
    if par is not None and not isinstance(par, Parametrisation):
        raise InvalidTypeError(
            "parametrisation must be an elbo_check.testing.Parametrisation; "
            f"got {type(par).__name__}"
        )
    chosen = _profile(o["profile"])
    rtol, atol = check_tolerance("rtol", o["rtol"]), check_tolerance("atol", o["atol"])
    seed = _seed(o["seed"])
    mode = o["mode"]
    parts = [] if alpha == 0.0 and name == "verify_iwae_gradient" else [f"alpha={alpha:g}"]
    parts += [f"k={n}", f"estimator={estimator!r}"]
    if mode != "statistical":
        parts.append(f"mode={mode!r}")
    label = f"{name}({', '.join(parts)})"
    distribution = o["distribution_test"]
    if not isinstance(distribution, bool):
        raise InvalidTypeError(
            f"distribution_test must be True or False; got distribution_test={distribution!r}"
        )
    settings = _Settings(label, alpha, n, estimator, par, seed, rtol, atol, distribution)
    options = o["model_options"]
    default_kinds = par.cov_kinds if par is not None else None
    if mode == "pathwise":
        kinds = check_q_kinds(o["q_kinds"] or default_kinds or COV_KINDS)
        if par is not None and o["problems"] is None:
            strategy: Any = _parametrised_problems(par, options)
        else:
            user = as_elbo_cases(o["problems"], lambda: elbo_problems(q_kinds=kinds, **options))
            strategy = user if isinstance(user, st.SearchStrategy) else st.sampled_from(user)
        return _pathwise(
            fn,
            settings,
            strategy,
            check_count("max_examples", o["max_examples"], chosen["max_examples"]),
        )
    if mode != "statistical":
        raise InvalidInputError(f"mode must be 'statistical' or 'pathwise'; got mode={mode!r}")
    calls = _statistical_calls(chosen, o["calls"], n)
    kinds = check_q_kinds(o["q_kinds"] or (("full",) if par is None else default_kinds))
    cases = statistical_cases(
        o["problems"],
        o["n_problems"],
        default_count=chosen["problems"],
        seed=seed,
        q_kinds=kinds,
        model_options=options,
        calls=calls,
    )
    return _statistical(fn, settings, cases, calls, o["false_alarm_rate"])
