"""verify_iwae_estimator and verify_renyi_estimator: multi-sample bound estimates.

The statistical mode compares the user's estimates with draws of the exact reference
distribution (the log weights are closed form in z, so the verifier samples the
estimator itself); the pathwise mode compares with the estimate at given noise; both
check that at q = p(z|x) every estimate is log p(x) exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st
from numpy.typing import NDArray

from .._errors import InvalidInputError
from ..strategies import COV_KINDS, elbo_problems
from ._batch_problems import batched_statistical_cases
from ._batching import check_batch_size
from ._bound_batches import batched_pathwise, batched_statistical
from ._bound_estimator_checks import (
    _pathwise,
    _statistical,
    check_alpha,
    check_k,
)
from ._cases import as_elbo_cases, check_q_kinds, statistical_cases
from ._estimator_batches import pathwise_batches
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
from ._report import VerificationReport
from ._statistics import _statistical_calls

FloatArray = NDArray[np.float64]


# ---------------------------------------------------------------------- public
@_single_blas_thread
def verify_renyi_estimator(
    fn: Callable[..., Any],
    *,
    alpha: float,
    k: int = 8,
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
    batch_size: int | None = None,
    **model_options: Any,
) -> VerificationReport:
    r"""Check a Monte-Carlo estimator of the variational Rényi bound.

    With :math:`z_1, \dots, z_k \sim q` independent and log weights
    :math:`\ell_j = \log p(x, z_j) - \log q(z_j)`, the estimate of
    :math:`\mathcal L_\alpha` [1]_ is

    .. math::
        \hat{\mathcal L}_{\alpha,k} = \frac{1}{1-\alpha}\log\frac1k\sum_{j=1}^k
        e^{(1-\alpha)\ell_j}\quad(\alpha\ne1),\qquad
        \hat{\mathcal L}_{1,k} = \frac1k\sum_j\ell_j,

    as Pyro's and NumPyro's ``RenyiELBO`` compute it (``alpha = 0`` is the IWAE bound
    [2]_, :func:`verify_iwae_estimator`). For :math:`\alpha\ne1` and finite ``k`` it is
    biased for :math:`\mathcal L_\alpha` (:meth:`~elbo_check.LinearGaussianModel.renyi_bound`),
    so it is compared with its own exact distribution, which the verifier samples: the
    log weights are closed form in :math:`z`.

    ``mode="statistical"`` (default): ``fn(model, q, x, rng, k) -> float`` is called
    ``calls`` times per problem with independent generators, and the verifier draws
    ``4 * calls`` reference estimates. Two tests per problem, Bonferroni-corrected over
    both and all problems so that a correct estimator fails a call with probability at
    most ``false_alarm_rate``: the mean (batch means as in
    :func:`verify_elbo_estimator`; :math:`t = (\bar y - \bar r)/\sqrt{s^2 + s_r^2}`
    with the reference mean :math:`\bar r` and its standard error :math:`s_r`, against
    Student's t with 39 degrees of freedom) and the whole distribution (the two-sample
    Kolmogorov-Smirnov test). Then, with q the exact posterior, every importance weight
    is :math:`p(x)`: ``fn`` is called 3 more times there and must return
    :math:`\log p(x)` to rounding (``rtol`` of the ELBO's magnitude plus ``atol``).

    ``mode="pathwise"``: ``fn(model, q, x, eps) -> float`` with standard-normal noise
    ``eps`` of shape ``(k, K)`` must return exactly the estimate at
    :math:`z_j = m + L\varepsilon_j`: a deterministic check over hypothesis-drawn
    problems and noise (entries in [-3, 3]), with shrinking, within ``rtol`` of the
    largest :math:`|\log p(x, z_j)| + |\log q(z_j)|` plus ``atol``; and at q = p(z|x)
    the value must be :math:`\log p(x)` for every noise.

    A failure's diagnosis names a catalogued bug (the ``-log k`` missing, the mean of the
    log weights, the log-mean-exp of the losses, the ``1/(1 - alpha)`` factor missing or
    negated, alpha's sign, ...) only when it reproduces the user's values on two
    independent problems (statistical mode: its mean and distribution; pathwise mode:
    its value at two noises).

    Parameters
    ----------
    fn : callable
        The estimator under test, with the signature of its mode (above); it returns a
        real number (Python, numpy, torch or JAX) and draws its randomness from ``rng``.
    alpha : float
        The order of the bound, any finite real number (``1`` is the ELBO estimate,
        ``0`` the IWAE estimate, ``-1`` the χ² upper bound's estimate up to a factor).
    k : int, optional
        Samples per estimate (Pyro's ``num_particles``), >= 1 (default 8).
    mode : {"statistical", "pathwise"}, optional
        The check to run (default ``"statistical"``).
    seed : int or numpy.random.Generator, optional
        Makes the check reproducible, as in :func:`verify_elbo_estimator`.
    calls : int, optional
        Statistical mode: calls of ``fn`` per problem, >= 80 (default from ``profile``:
        800, 1600 or 4000).
    problems : strategy or sequence, optional
        Your own problems, as in :func:`verify_elbo_estimator`.
    n_problems : int, optional
        Statistical mode: problems drawn, >= 1 (default from ``profile``: 4, 6 or 12).
    q_kinds : sequence of str, optional
        Covariance kinds of q (default ``("full",)`` in statistical mode, all three in
        pathwise mode). The check at the posterior needs ``"full"``.
    false_alarm_rate : float, optional
        Statistical mode: the probability that a correct estimator fails the call, in
        (0, 1) (default 1e-6).
    profile : {"dev", "ci", "thorough"}, optional
        The effort profile for the defaults of ``calls``, ``n_problems`` and
        ``max_examples``.
    max_examples : int, optional
        Pathwise mode: cases the search tries, >= 1 (default from ``profile``).
    rtol, atol : float, optional
        Tolerances of the deterministic comparisons (defaults 1e-6 and 1e-8); in
        statistical mode also a slack on the mean. Finite numbers >= 0.
    batch_size : int, optional
        Check batched code on minibatches of this many members, >= 1 (default None):
        ``fn`` receives ``x`` of shape ``(B, D)`` and a ``q`` of batch shape ``(B,)``
        (a covariance per member) and returns the ``B`` estimates, shape ``(B,)``; in
        pathwise mode ``eps`` has shape ``(k, B, K)`` (samples, batch, event). Every
        member is tested (Bonferroni over members) and checked at its own posterior;
        a log-mean-exp over the batch axis is named (``k`` values returned, or with
        ``k == B`` the values it gives).
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
        When the check passes; ``details`` holds ``"alpha"``, ``"k"`` and, in
        statistical mode, ``"calls"``, ``"reference_draws"``, ``"critical_t"``,
        ``"ks_level"`` and ``"posterior_checked"``.

    Raises
    ------
    AssertionError
        The verdict, when the check fails: the problem, the reference mean and the
        estimate's, the test statistics and their critical values, and a diagnosis;
        also when ``fn`` raises, returns something other than a real number, or edits
        an argument in place.
    InvalidInputError
        Before ``fn`` is called, for a bad option: ``alpha`` not a finite real number,
        ``k`` not an integer >= 1, an unknown ``mode``, and every option
        :func:`verify_elbo_estimator` refuses.

    See Also
    --------
    verify_iwae_estimator : The same check at ``alpha = 0``.
    verify_renyi_gradient : Gradient estimators of these bounds.

    References
    ----------
    .. [1] Y. Li and R. E. Turner, "Rényi divergence variational inference", NeurIPS
       2016, arXiv:1602.02311.
    .. [2] Y. Burda, R. Grosse and R. Salakhutdinov, "Importance weighted
       autoencoders", ICLR 2016, arXiv:1509.00519.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.special import logsumexp
    >>> from elbo_check.testing import verify_renyi_estimator
    >>> def renyi(model, q, x, rng, k, alpha=0.5):
    ...     z = q.mean + rng.standard_normal((k, q.dim)) @ q.scale_tril.T
    ...     log_w = model.log_joint(x, z) - q.log_prob(z)
    ...     return (logsumexp((1 - alpha) * log_w) - np.log(k)) / (1 - alpha)
    >>> verify_renyi_estimator(renyi, alpha=0.5, k=4, n_problems=1, calls=80).check
    'verify_renyi_estimator(alpha=0.5, k=4)'
    """
    __tracebackhide__ = True
    return _verify(
        fn,
        "verify_renyi_estimator",
        check_alpha(alpha),
        k=k,
        mode=mode,
        seed=seed,
        calls=calls,
        problems=problems,
        n_problems=n_problems,
        q_kinds=q_kinds,
        false_alarm_rate=false_alarm_rate,
        profile=profile,
        max_examples=max_examples,
        rtol=rtol,
        atol=atol,
        batch_size=batch_size,
        model_options=model_options,
    )


@_single_blas_thread
def verify_iwae_estimator(
    fn: Callable[..., Any],
    *,
    k: int = 8,
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
    batch_size: int | None = None,
    **model_options: Any,
) -> VerificationReport:
    r"""Check a Monte-Carlo estimator of the importance-weighted bound (IWAE).

    The estimate is :math:`\log\frac1k\sum_{j=1}^k p(x, z_j)/q(z_j)` with
    :math:`z_j \sim q` independent [1]_: :func:`verify_renyi_estimator` at
    ``alpha = 0``, with the same modes and options (see there). Its expectation
    increases with ``k`` towards :math:`\log p(x)`; at ``k = 1`` it is the ELBO.

    Parameters
    ----------
    fn : callable
        ``fn(model, q, x, rng, k) -> float`` (statistical mode) or
        ``fn(model, q, x, eps) -> float`` with ``eps`` of shape ``(k, K)`` (pathwise).
    k : int, optional
        Samples per estimate, >= 1 (default 8).
    mode : {"statistical", "pathwise"}, optional
        The check to run (default ``"statistical"``).
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
        Statistical mode: the probability that a correct estimator fails, in (0, 1).
    profile : {"dev", "ci", "thorough"}, optional
        The effort profile.
    max_examples : int, optional
        Pathwise mode: cases the search tries.
    rtol, atol : float, optional
        Tolerances of the deterministic comparisons.
    batch_size : int, optional
        Check batched code: ``B`` estimates per call (see :func:`verify_renyi_estimator`).
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
        When the check passes (see :func:`verify_renyi_estimator`).

    Raises
    ------
    AssertionError
        The verdict, when the check fails, with a diagnosis (the ``-log k`` missing,
        the log-mean-exp of the losses, the loss returned, ...).
    InvalidInputError
        Before ``fn`` is called, for a bad option.

    See Also
    --------
    verify_renyi_estimator : The general check.

    References
    ----------
    .. [1] Y. Burda, R. Grosse and R. Salakhutdinov, "Importance weighted
       autoencoders", ICLR 2016, arXiv:1509.00519.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.special import logsumexp
    >>> from elbo_check.testing import verify_iwae_estimator
    >>> def iwae(model, q, x, rng, k):
    ...     z = q.mean + rng.standard_normal((k, q.dim)) @ q.scale_tril.T
    ...     return logsumexp(model.log_joint(x, z) - q.log_prob(z)) - np.log(k)
    >>> verify_iwae_estimator(iwae, k=5, n_problems=1, calls=80).check
    'verify_iwae_estimator(k=5)'
    """
    __tracebackhide__ = True
    return _verify(
        fn,
        "verify_iwae_estimator",
        0.0,
        k=k,
        mode=mode,
        seed=seed,
        calls=calls,
        problems=problems,
        n_problems=n_problems,
        q_kinds=q_kinds,
        false_alarm_rate=false_alarm_rate,
        profile=profile,
        max_examples=max_examples,
        rtol=rtol,
        atol=atol,
        batch_size=batch_size,
        model_options=model_options,
    )


# ---------------------------------------------------------------------- shared
def _label(name: str, alpha: float, k: int, mode: str) -> str:
    parts = [] if name == "verify_iwae_estimator" else [f"alpha={alpha:g}"]
    parts.append(f"k={k}")
    if mode != "statistical":
        parts.append(f"mode={mode!r}")
    return f"{name}({', '.join(parts)})"


def _verify(
    fn: Callable[..., Any],
    name: str,
    alpha: float,
    *,
    k: Any,
    mode: Any,
    seed: Any,
    calls: Any,
    problems: Any,
    n_problems: Any,
    q_kinds: Any,
    false_alarm_rate: Any,
    profile: Any,
    max_examples: Any,
    rtol: Any,
    atol: Any,
    batch_size: Any,
    model_options: dict[str, Any],
) -> VerificationReport:
    __tracebackhide__ = True
    _check_callable(fn)
    _check_rate(false_alarm_rate)
    n = check_k(k)
    chosen = _profile(profile)
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    seed_value = _seed(seed)
    size = check_batch_size(batch_size)
    label = (
        _label(name, alpha, n, mode)
        if size is None
        else (_label(name, alpha, n, mode)[:-1] + f", batch_size={size})")
    )
    if mode == "pathwise":
        kinds = check_q_kinds(COV_KINDS if q_kinds is None else q_kinds)
        if size is not None:
            return batched_pathwise(
                fn,
                label,
                alpha,
                n,
                size,
                pathwise_batches(problems, size, kinds, model_options),
                seed=seed_value,
                max_examples=check_count("max_examples", max_examples, chosen["max_examples"]),
                rtol=rtol,
                atol=atol,
            )
        user = as_elbo_cases(problems, lambda: elbo_problems(q_kinds=kinds, **model_options))
        strategy = user if isinstance(user, st.SearchStrategy) else st.sampled_from(user)
        return _pathwise(
            fn,
            label,
            alpha,
            n,
            strategy,
            seed=seed_value,
            max_examples=check_count("max_examples", max_examples, chosen["max_examples"]),
            rtol=rtol,
            atol=atol,
        )
    if mode != "statistical":
        raise InvalidInputError(f"mode must be 'statistical' or 'pathwise'; got mode={mode!r}")
    total = _statistical_calls(chosen, calls, n)
    kinds = check_q_kinds(("full",) if q_kinds is None else q_kinds)
    if size is not None:
        batches = batched_statistical_cases(
            problems,
            n_problems,
            size,
            default_count=chosen["problems"],
            seed=seed_value,
            q_kinds=kinds,
            model_options=model_options,
            calls=total,
        )
        return batched_statistical(
            fn,
            label,
            alpha,
            n,
            batches,
            size,
            seed=seed_value,
            calls=total,
            false_alarm_rate=false_alarm_rate,
            rtol=rtol,
            atol=atol,
            posterior="full" in kinds,
        )
    cases = statistical_cases(
        problems,
        n_problems,
        default_count=chosen["problems"],
        seed=seed_value,
        q_kinds=kinds,
        model_options=model_options,
        calls=total,
    )
    return _statistical(
        fn,
        label,
        alpha,
        n,
        cases,
        seed_value,
        total,
        false_alarm_rate,
        rtol,
        atol,
        posterior="full" in kinds,
    )
