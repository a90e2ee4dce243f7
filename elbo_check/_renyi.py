r"""Exact Rényi bounds, the CUBO and importance-weight moments of a Gaussian q.

With :math:`w(z) = p(x, z)/q(z)` the importance weight of :math:`q = \mathcal N(m, S)`,
:math:`S = LL^\top`, every quantity here is a closed form in the linear-Gaussian model:

.. math::
    \mathcal L_\alpha(q; x) = \frac{1}{1-\alpha}\log\mathbb E_q\bigl[w^{1-\alpha}\bigr]
      = \log p(x) - D_\alpha\bigl(q\,\|\,p(z\mid x)\bigr),

the Rényi bound of Li & Turner (2016): the ELBO at :math:`\alpha = 1` (a limit),
:math:`\log p(x)` at :math:`\alpha = 0`, non-increasing in :math:`\alpha`, and for
:math:`\alpha = 1 - n \le 0` the :math:`\chi` upper bound :math:`\mathrm{CUBO}_n` of Dieng
et al. (2017). :mod:`elbo_check._renyi_core` holds the derivation and its stable
evaluation. Each function here is a method of :class:`~elbo_check.LinearGaussianModel`,
bound in its class body (``model.renyi_bound`` and so on); they use only its public API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._errors import InvalidInputError
from ._gaussian import Gaussian, _scalar_or_array
from ._importance_weights import ImportanceWeightStats, importance_weight_stats
from ._renyi_common import bound_at, check_model, check_q, divergence, finished, pair_with, real
from ._renyi_core import Order, Pair, alpha_interval
from ._renyi_gradients import renyi_bound_grad_variational

if TYPE_CHECKING:
    from ._model import LinearGaussianModel

__all__ = [
    "ImportanceWeightStats",
    "cubo",
    "importance_weight_moment",
    "importance_weight_stats",
    "renyi_alpha_interval",
    "renyi_bound",
    "renyi_bound_grad_variational",
    "renyi_divergence_to_posterior",
]

FloatArray = NDArray[np.float64]


# ---------------------------------------------------------------------- the bound
def renyi_bound(
    self: LinearGaussianModel,
    q: Gaussian,
    x: ArrayLike,
    alpha: float,
    *,
    return_error_bound: bool = False,
) -> Any:
    r"""Exact Rényi variational bound :math:`\mathcal L_\alpha(q; x)` of Li & Turner.

    Parameters
    ----------
    q : Gaussian
        The variational distribution over the ``K`` latent dimensions; its batch
        broadcasts against the rows of ``x``, as in ``model.elbo``.
    x : array_like, shape (..., D)
        One observation or a batch of them.
    alpha : float
        The order, any real number in the open interval where the expectation is
        finite (:meth:`renyi_alpha_interval`, which always contains ``[0, 1]``).
    return_error_bound : bool, optional
        Also return a bound on each value's distance from the exact value at the
        float64 inputs (default False).

    Returns
    -------
    value : float or ndarray
        :math:`\mathcal L_\alpha`, one per member of the broadcast batch; ``-inf`` (or
        ``+inf`` for :math:`\alpha < 0`) only where the exact value is beyond float64.
    bound : float or ndarray
        Only with ``return_error_bound=True``: :math:`E_\alpha` below.

    Raises
    ------
    InvalidTypeError
        If ``q`` is not a :class:`~elbo_check.Gaussian` or ``alpha`` not a real number.
    InvalidInputError
        If ``alpha`` is not finite or lies outside the interval where
        :math:`\alpha S^{-1} + (1-\alpha)\Sigma^{-1}` is positive definite (the message
        gives the interval, from the generalised eigenvalues of :math:`S` and the
        posterior covariance :math:`\Sigma`); if ``q``'s dimension or the shapes of ``q``
        and ``x`` do not match; if ``x`` has a non-finite entry; and, for
        :math:`\alpha < 1/2`, if ``model.log_evidence`` refuses ``x``.

    Notes
    -----
    The bound of Li & Turner [1]_ is
    :math:`\mathcal L_\alpha = \frac{1}{1-\alpha}\log\mathbb E_q[w^{1-\alpha}]
    = \log p(x) - D_\alpha(q\,\|\,p(z\mid x))`. With the posterior
    :math:`\mathcal N(\mu, \Sigma)`, :math:`d = m - \mu` and
    :math:`A_\alpha = \alpha\Sigma + (1-\alpha)S`, the Rényi divergence between
    Gaussians [2]_ gives

    .. math::
        \mathcal L_\alpha = \log p(x) - \frac\alpha2\,d^\top A_\alpha^{-1}d
          + \frac{1}{2(\alpha-1)}\log\frac{\det A_\alpha}
            {\det S^{1-\alpha}\det\Sigma^{\alpha}},

    finite where :math:`\alpha S^{-1} + (1-\alpha)\Sigma^{-1} \succ 0`: for the
    generalised eigenvalues :math:`\gamma_i` of :math:`(S, \Sigma)`, that is
    :math:`1 + (\alpha - 1)(1 - \gamma_i) > 0` for every ``i``. The last term is
    :math:`0/0` at :math:`\alpha = 1`; :mod:`elbo_check._renyi_core` derives the closed
    form afresh in the eigenbasis, where it becomes a sum of
    :math:`\operatorname{log1p}(t\kappa_i)/t`, :math:`t = \alpha - 1`,
    :math:`\kappa_i = 1 - \gamma_i`. For :math:`\alpha \ge 1/2` the value is
    ``model.elbo`` minus :math:`\Delta_\alpha = D_\alpha - \mathrm{KL}`, a sum of terms
    that each carry the factor :math:`t` explicitly; below, :math:`\log p(x) - D_\alpha`
    with :math:`D_\alpha = \frac{\alpha}{1-\alpha}D_{1-\alpha}(p\|q)`, exactly 0 at
    :math:`\alpha = 0`. So :math:`\mathcal L_1` *is* ``model.elbo`` and
    :math:`\mathcal L_0` *is* ``model.log_evidence``, bit for bit.

    **Error bound.** The returned bound is

    .. math::
        E_\alpha = B + R_\alpha + \varepsilon\,\lvert\mathcal L_\alpha\rvert,

    with :math:`\varepsilon = 2^{-52}`, :math:`B` the bound of ``model.elbo``
    (:math:`\alpha \ge 1/2`) or of ``model.log_evidence`` (below), and :math:`R_\alpha`
    the first-order bound of :func:`elbo_check._renyi_core.rounding_bound` (eigenvalue
    and offset errors propagated through each term, plus 20 ulps of each term). For
    :math:`\alpha \ge 1/2` every term of :math:`R_\alpha` is proportional to
    :math:`\lvert\alpha - 1\rvert`: nothing is divided by :math:`\alpha - 1`, so
    :math:`E_{1+h} \to B + \varepsilon\lvert\mathrm{ELBO}\rvert` as :math:`h \to 0` and

    .. math::
        \mathcal L_{1+h} = \mathrm{ELBO} - \tfrac h2\operatorname{Var}_q[\log w]
          + O(h^2),\qquad \operatorname{Var}_q[\log w]
          = \tfrac12\textstyle\sum_i\kappa_i^2 + d^\top\Sigma^{-1}S\Sigma^{-1}d

    (:attr:`ImportanceWeightStats.log_weight_variance`). Against 60-digit arithmetic at
    :math:`h = \pm10^{-8}\dots10^{-14}` the error is at most :math:`4\times10^{-15}`
    (2% of :math:`E`), where the textbook formula in float64 errs by up to
    :math:`5\times10^{-2}` (``tests/test_renyi_routes.py``, ``tests/test_renyi.py``).

    References
    ----------
    .. [1] Y. Li and R. E. Turner, "Rényi divergence variational inference", NeurIPS
       2016.
    .. [2] M. Gil, F. Alajaji and T. Linder, "Rényi divergence measures for commonly
       used univariate continuous distributions", Information Sciences 249, 124–131,
       2013 (the multivariate normal case, with :math:`A_\alpha` as above).

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian, ppca
    >>> model = ppca(weights=[[1.0], [0.5]], mean=[0.0, 0.0], noise_variance=0.1)
    >>> x = np.array([0.3, 0.2])
    >>> q = Gaussian.from_covariance(mean=[0.2], cov=[[0.2]])
    >>> model.renyi_bound(q, x, 1.0) == model.elbo(q, x)
    True
    >>> model.renyi_bound(q, x, 0.0) == model.log_evidence(x)
    True
    >>> bool(abs(model.renyi_bound(q, x, 1.0 + 1e-12) - model.elbo(q, x)) < 1e-12)
    True
    >>> [round(model.renyi_bound(q, x, a), 6) for a in (-1.0, 0.0, 0.5, 1.0, 1.5)]
    [-0.753594, -0.894044, -1.029521, -1.310011, -2.920464]
    """
    check_model(self)
    q = check_q(self, q)
    order = real("alpha", alpha)
    value, bound, batch = bound_at(
        self, q, x, Order.from_alpha(order), ("alpha", order, False), return_error_bound
    )
    result = finished(value, batch, "alpha", order)
    if bound is None:
        return result
    return result, _scalar_or_array(np.array(np.broadcast_to(bound, batch)))


def renyi_divergence_to_posterior(
    self: LinearGaussianModel, q: Gaussian, x: ArrayLike, alpha: float
) -> Any:
    r"""Exact Rényi divergence :math:`D_\alpha(q\,\|\,p(z\mid x))` of order ``alpha``.

    Parameters
    ----------
    q : Gaussian
        The variational distribution; its batch broadcasts against the rows of ``x``.
    x : array_like, shape (..., D)
        One observation or a batch of them.
    alpha : float
        The order, in :meth:`renyi_alpha_interval` (negative orders allowed: the
        divergence is then :math:`\le 0`).

    Returns
    -------
    float or ndarray
        :math:`D_\alpha`, one per member of the broadcast batch; :math:`\ge 0` for
        :math:`\alpha > 0`, ``0`` at :math:`\alpha = 0`, ``model.kl_to_posterior`` at 1.

    Raises
    ------
    InvalidTypeError
        If ``q`` or ``alpha`` has the wrong type.
    InvalidInputError
        As :meth:`renyi_bound` (``alpha`` outside its interval, mismatched shapes, a
        non-finite ``x``).

    Notes
    -----
    .. math::
        D_\alpha(q\|p) = \frac{1}{\alpha-1}\log\int q^\alpha p^{1-\alpha}\,dz
          = \frac\alpha2\,d^\top A_\alpha^{-1}d - \frac{1}{2(\alpha-1)}
            \log\frac{\det A_\alpha}{\det S^{1-\alpha}\det\Sigma^\alpha},

    :math:`A_\alpha = \alpha\Sigma + (1-\alpha)S`, :math:`d = m - \mu` [1]_, evaluated
    as in :meth:`renyi_bound` (for :math:`\alpha \ge 1/2` as
    ``model.kl_to_posterior`` plus :math:`\Delta_\alpha`), without :math:`\log p(x)`.

    References
    ----------
    .. [1] M. Gil, F. Alajaji and T. Linder, "Rényi divergence measures for commonly
       used univariate continuous distributions", Information Sciences 249, 124–131,
       2013.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian, ppca
    >>> model = ppca(weights=[[1.0], [0.5]], mean=[0.0, 0.0], noise_variance=0.1)
    >>> x = np.array([0.3, 0.2])
    >>> q = Gaussian.from_covariance(mean=[0.2], cov=[[0.05]])
    >>> model.renyi_divergence_to_posterior(q, x, 1.0) == model.kl_to_posterior(q, x)
    True
    >>> round(model.renyi_divergence_to_posterior(q, x, 2.0), 6)
    0.150294
    """
    check_model(self)
    q = check_q(self, q)
    order = Order.from_alpha(real("alpha", alpha))
    pair, data = pair_with(self, q, x)
    found = divergence(pair, order, "alpha", order.alpha, False)
    value = found.value
    if found.whitened.orientation == "posterior":
        with np.errstate(over="ignore", invalid="ignore"):  # NaN: refused by finished()
            value = np.asarray(self.kl_to_posterior(q, data)) + value
    return finished(value, pair.batch, "alpha", order.alpha)


def renyi_alpha_interval(self: LinearGaussianModel, q: Gaussian) -> tuple[Any, Any]:
    r"""The open interval of orders :math:`\alpha` where the Rényi bound of ``q`` is finite.

    Parameters
    ----------
    q : Gaussian
        The variational distribution; only its covariance matters (the model's
        posterior covariance does not depend on ``x``).

    Returns
    -------
    low, high : float or ndarray
        :math:`\alpha_{\min} < 0` (or ``-inf``) and :math:`\alpha_{\max} > 1` (or
        ``inf``); arrays over q's batch of covariances when it has one.

    Raises
    ------
    InvalidTypeError
        If ``q`` is not a :class:`~elbo_check.Gaussian`.
    InvalidInputError
        If ``q`` is not over the model's ``K`` latent dimensions.

    Notes
    -----
    :math:`\int q^\alpha p^{1-\alpha}dz` is finite exactly when
    :math:`\alpha S^{-1} + (1-\alpha)\Sigma^{-1}` is positive definite. With
    :math:`\gamma_i` the generalised eigenvalues of :math:`(S, \Sigma)`:

    .. math::
        \alpha_{\max} = \frac{\gamma_{\max}}{\gamma_{\max} - 1}\ (\gamma_{\max} > 1),
        \qquad
        \alpha_{\min} = -\frac{\gamma_{\min}}{1 - \gamma_{\min}}\ (\gamma_{\min} < 1),

    and :math:`\pm\infty` otherwise. So the CUBO's :math:`n = 1 - \alpha` may reach 2
    only if :math:`S \succ \Sigma/2` (a proposal must be wider than half the target for
    the importance weights to have a finite variance), and :math:`\alpha > 1` is bounded
    as soon as q is wider than the posterior in some direction. The derivation is in
    :mod:`elbo_check._renyi_core`; see also [1]_.

    References
    ----------
    .. [1] M. Gil, F. Alajaji and T. Linder, "Rényi divergence measures for commonly
       used univariate continuous distributions", Information Sciences 249, 124–131,
       2013.

    Examples
    --------
    >>> from elbo_check import Gaussian, ppca
    >>> model = ppca(weights=[[1.0]], mean=[0.0], noise_variance=1.0)  # posterior var 1/2
    >>> low, high = model.renyi_alpha_interval(Gaussian.from_covariance(mean=[0.0], cov=[[1.0]]))
    >>> low, round(high, 12)  # gamma = 2: alpha_max = 2
    (-inf, 2.0)
    >>> low, high = model.renyi_alpha_interval(Gaussian.from_covariance(mean=[0.0], cov=[[0.25]]))
    >>> round(low, 12), high  # gamma = 1/2: alpha_min = -1, so CUBO_2 is infinite
    (-1.0, inf)
    """
    check_model(self)
    q = check_q(self, q)
    posterior = self.posterior(self.marginal_mean)
    zeros = np.zeros(self.latent_dim)
    pair = Pair((), q.scale_tril, posterior.scale_tril, zeros, zeros, zeros)
    low, high = alpha_interval(pair)
    return _scalar_or_array(low), _scalar_or_array(high)


def cubo(self: LinearGaussianModel, q: Gaussian, x: ArrayLike, n: float = 2.0) -> Any:
    r"""Exact :math:`\chi` upper bound :math:`\mathrm{CUBO}_n` of Dieng et al. (2017).

    Parameters
    ----------
    q : Gaussian
        The variational distribution; its batch broadcasts against the rows of ``x``.
    x : array_like, shape (..., D)
        One observation or a batch of them.
    n : float, optional
        The order, a real number :math:`\ge 1` (default 2, the :math:`\chi^2` bound)
        such that :math:`\mathbb E_q[w^n]` is finite.

    Returns
    -------
    float or ndarray
        :math:`\mathrm{CUBO}_n \ge \log p(x)`, one per member of the broadcast batch
        (``log p(x)`` itself for ``n = 1``); ``inf`` only if the exact value exceeds
        float64.

    Raises
    ------
    InvalidTypeError
        If ``q`` or ``n`` has the wrong type.
    InvalidInputError
        If ``n < 1`` (not an upper bound), or :math:`\mathbb E_q[w^n]` is infinite
        (the message gives the interval of ``n`` where it is finite), or as
        :meth:`renyi_bound`.

    Notes
    -----
    .. math::
        \mathrm{CUBO}_n = \frac1n\log\mathbb E_q\Bigl[\Bigl(\frac{p(x,z)}{q(z)}\Bigr)^n
          \Bigr] = \log p(x) + \frac1n\log\bigl(1 + D_{\chi^n}(p(z\mid x)\,\|\,q)\bigr)
          = \mathcal L_{1-n},

    the Rényi bound of order :math:`1 - n \le 0` [1]_ [2]_; it is non-decreasing in
    ``n``, with the :math:`\chi^n` divergence :math:`D_{\chi^n}(p\|q) = \mathbb E_q[(p/q)^n]
    - 1`. This is :math:`\mathrm{CUBO}_n` itself, in nats. To optimise it Dieng et al.
    minimise the surrogate :math:`\exp(n\,\mathrm{CUBO}_n) = \mathbb E_q[w^n]`, which
    has the same minimiser and an unbiased Monte-Carlo estimate (the estimate
    :math:`\frac1n\log\frac1M\sum_m w_m^n` of ``CUBO_n`` itself is biased low).

    References
    ----------
    .. [1] A. B. Dieng, D. Tran, R. Ranganath, J. Paisley and D. M. Blei, "Variational
       inference via chi upper bound minimization", NeurIPS 2017.
    .. [2] Y. Li and R. E. Turner, "Rényi divergence variational inference", NeurIPS
       2016.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian, ppca
    >>> model = ppca(weights=[[1.0], [0.5]], mean=[0.0, 0.0], noise_variance=0.1)
    >>> x = np.array([0.3, 0.2])
    >>> q = Gaussian.from_covariance(mean=[0.2], cov=[[0.2]])
    >>> bool(model.cubo(q, x) >= model.log_evidence(x) >= model.elbo(q, x))
    True
    >>> model.cubo(q, x, n=2) == model.renyi_bound(q, x, -1.0)
    True
    """
    check_model(self)
    q = check_q(self, q)
    order = real("n", n)
    if order < 1.0:
        raise InvalidInputError(
            f"n must be >= 1 (CUBO_n is an upper bound on log p(x) only for n >= 1); "
            f"got n = {order!r}"
        )
    value, _, batch = bound_at(self, q, x, Order.from_beta(order), ("n", order, True))
    return finished(value, batch, "n", order)


def importance_weight_moment(
    self: LinearGaussianModel, q: Gaussian, x: ArrayLike, beta: float
) -> Any:
    r"""Exact :math:`\log\mathbb E_q[w^\beta]` of the importance weight :math:`w = p(x,z)/q(z)`.

    Parameters
    ----------
    q : Gaussian
        The variational distribution; its batch broadcasts against the rows of ``x``.
    x : array_like, shape (..., D)
        One observation or a batch of them.
    beta : float
        The exponent, any real number where the moment is finite (the interval
        ``1 - model.renyi_alpha_interval(q)[::-1]``, which contains ``[0, 1]``).

    Returns
    -------
    float or ndarray
        :math:`\log\mathbb E_q[w^\beta]`: ``0`` at :math:`\beta = 0`,
        :math:`\log p(x)` at :math:`\beta = 1`.

    Raises
    ------
    InvalidTypeError
        If ``q`` or ``beta`` has the wrong type.
    InvalidInputError
        If the moment is infinite (the message gives the interval of ``beta`` where it
        is finite: :math:`\beta\Sigma^{-1} + (1-\beta)S^{-1} \succ 0`), or as
        :meth:`renyi_bound`.

    Notes
    -----
    .. math::
        \log\mathbb E_q[w^\beta] = \beta\log p(x) + \log\int p(z\mid x)^\beta
          q(z)^{1-\beta}dz = \beta\,\mathcal L_{1-\beta}
          = \beta\bigl(\log p(x) - D_{1-\beta}(q\,\|\,p(z\mid x))\bigr),

    the cumulant-generating function of :math:`\log w` under q [1]_; its derivative at
    0 is the ELBO, its second :math:`\operatorname{Var}_q[\log w]`.

    References
    ----------
    .. [1] Y. Li and R. E. Turner, "Rényi divergence variational inference", NeurIPS
       2016.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian, ppca
    >>> model = ppca(weights=[[1.0], [0.5]], mean=[0.0, 0.0], noise_variance=0.1)
    >>> x = np.array([0.3, 0.2])
    >>> q = Gaussian.from_covariance(mean=[0.2], cov=[[0.2]])
    >>> model.importance_weight_moment(q, x, 1.0) == model.log_evidence(x)
    True
    >>> model.importance_weight_moment(q, x, 0.0)
    0.0
    """
    check_model(self)
    q = check_q(self, q)
    exponent = real("beta", beta)
    order = Order.from_beta(exponent)
    value, _, batch = bound_at(self, q, x, order, ("beta", exponent, True))
    with np.errstate(over="ignore", invalid="ignore"):
        moment = np.where(exponent == 0.0, 0.0, exponent * np.asarray(value))
    return finished(moment, batch, "beta", exponent)
