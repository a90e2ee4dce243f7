r"""Exact statistics of the importance weight :math:`w = p(x, z)/q(z)` under a Gaussian q.

How well q serves as an importance-sampling proposal (and how biased the IWAE bound of
``num_samples`` weights is) is governed by the second moment of the weight, a closed
form here: :math:`\mathbb E_q[w^2] = p(x)^2\exp(-2D_{-1}(q\,\|\,p(z\mid x)))`
(:mod:`elbo_check._renyi_core`). :func:`importance_weight_stats` is a method of
:class:`~elbo_check.LinearGaussianModel`, bound in its class body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from ._errors import InvalidInputError
from ._gaussian import Gaussian, _scalar_or_array
from ._renyi_common import check_model, check_q, pair_with
from ._renyi_core import Order, evaluate, whiten

if TYPE_CHECKING:
    from ._model import LinearGaussianModel

__all__ = ["ImportanceWeightStats", "importance_weight_stats"]


@dataclass(frozen=True)
class ImportanceWeightStats:
    r"""Exact second-order statistics of the importance weight, per observation.

    Returned by :meth:`LinearGaussianModel.importance_weight_stats`, which has the
    formulas; the parameters are stored as read-only attributes of the same names, each a
    float or an array over the broadcast batch of ``q`` and ``x``.

    Parameters
    ----------
    relative_variance : float or ndarray
        :math:`\operatorname{Var}_q(w)/p(x)^2 = \chi^2(p(z\mid x)\,\|\,q)`; ``inf`` where
        :math:`\mathbb E_q[w^2]` diverges (q narrower than half the posterior in some
        direction: :math:`2S \not\succ \Sigma`). Zero exactly at the posterior.
    ess_per_sample : float or ndarray
        The expected effective sample size per sample,
        :math:`(\mathbb E_q w)^2/\mathbb E_q[w^2] = 1/(1 + \text{relative\_variance})`,
        in :math:`[0, 1]`; ``0`` where the variance is infinite, ``1`` at the posterior.
    log_weight_variance : float or ndarray
        :math:`\operatorname{Var}_q(\log w)`, always finite: twice the slope of the Rényi
        divergence at :math:`\alpha = 1`, so
        :math:`\mathcal L_{1+h} = \mathrm{ELBO} - \tfrac h2\operatorname{Var}_q(\log w)
        + O(h^2)`.

    Raises
    ------
    TypeError
        If a field is missing or an unknown one is given (the dataclass constructor
        checks nothing else).

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian, ppca
    >>> model = ppca(weights=[[1.0], [0.5]], mean=[0.0, 0.0], noise_variance=0.1)
    >>> q = Gaussian.from_diagonal(mean=[0.3], variances=[0.2])
    >>> stats = model.importance_weight_stats(q, np.array([0.3, 0.2]))
    >>> bool(np.isclose(stats.ess_per_sample, 1 / (1 + stats.relative_variance)))
    True
    >>> round(stats.iwae_bias(num_samples=10), 6)
    -0.014361
    """

    relative_variance: Any
    ess_per_sample: Any
    log_weight_variance: Any

    def iwae_bias(self, num_samples: int) -> Any:
        r"""First-order bias of the IWAE bound with ``num_samples`` importance samples.

        Parameters
        ----------
        num_samples : int
            The number :math:`n \ge 1` of weights averaged inside the logarithm (the
            IWAE literature's ``K``, not the latent dimension).

        Returns
        -------
        float or ndarray
            :math:`-\operatorname{Var}_q(w)/(2np(x)^2)`, the leading term of
            :math:`\mathbb E[\log\frac1n\sum_k w_k] - \log p(x)`; ``-inf`` where the
            variance is infinite (the expansion then does not apply).

        Raises
        ------
        InvalidInputError
            If ``num_samples`` is not a positive integer.

        Notes
        -----
        A second-order expansion of :math:`\log\bar w` about :math:`p(x) = \mathbb E
        \bar w`, with :math:`\operatorname{Var}\bar w = \operatorname{Var}(w)/n`, gives

        .. math::
            \mathbb E\Bigl[\log\frac1n\sum_{k=1}^n w_k\Bigr] = \log p(x)
              - \frac{\operatorname{Var}_q(w)}{2n\,p(x)^2} + O(n^{-2}),

        as in Nowozin [1]_ (when higher moments exist; the exact bias is
        :math:`\le 0` and non-decreasing in ``n``, [2]_).

        References
        ----------
        .. [1] S. Nowozin, "Debiasing evidence approximations: on importance-weighted
           autoencoders and jackknife variational inference", ICLR 2018.
        .. [2] Y. Burda, R. Grosse and R. Salakhutdinov, "Importance weighted
           autoencoders", ICLR 2016.

        Examples
        --------
        >>> from elbo_check._importance_weights import ImportanceWeightStats
        >>> ImportanceWeightStats(0.5, 2 / 3, 0.4).iwae_bias(5)
        -0.05
        """
        if (
            isinstance(num_samples, (bool, np.bool_))
            or not isinstance(num_samples, (int, np.integer))
            or num_samples < 1
        ):
            raise InvalidInputError(f"num_samples must be a positive integer; got {num_samples!r}")
        with np.errstate(over="ignore"):
            value = -np.asarray(self.relative_variance, dtype=np.float64) / (2.0 * num_samples)
        return _scalar_or_array(value)


def importance_weight_stats(
    self: LinearGaussianModel, q: Gaussian, x: ArrayLike
) -> ImportanceWeightStats:
    r"""Exact relative variance, effective sample size and log-weight variance of q.

    Parameters
    ----------
    q : Gaussian
        The proposal / variational distribution; its batch broadcasts against the rows
        of ``x``.
    x : array_like, shape (..., D)
        One observation or a batch of them.

    Returns
    -------
    ImportanceWeightStats
        ``relative_variance``, ``ess_per_sample`` and ``log_weight_variance``, each a
        float or an array over the broadcast batch, and the IWAE bias as a function of
        the number of samples (:meth:`ImportanceWeightStats.iwae_bias`).

    Raises
    ------
    InvalidTypeError
        If ``q`` is not a :class:`~elbo_check.Gaussian`.
    InvalidInputError
        If ``q``'s dimension or the shapes of ``q`` and ``x`` do not match, or ``x`` has
        a non-finite entry.

    Notes
    -----
    With :math:`D_{-1}\le 0` the Rényi divergence of order :math:`-1` (its closed form in
    the eigenbasis of q's whitened posterior covariance, :mod:`elbo_check._renyi_core`),
    :math:`\gamma_i` the generalised eigenvalues of :math:`(S, \Sigma)`,
    :math:`\kappa_i = 1 - \gamma_i` and :math:`d = m - \mu`:

    .. math::
        \frac{\operatorname{Var}_q(w)}{p(x)^2} = \frac{\mathbb E_q[w^2]}{p(x)^2} - 1
          = \operatorname{expm1}(-2D_{-1}),\qquad
        \mathrm{ESS}/n = \frac{(\mathbb E_q w)^2}{\mathbb E_q[w^2]} = e^{2D_{-1}},

        \operatorname{Var}_q(\log w) = \tfrac12\textstyle\sum_i\kappa_i^2
          + d^\top\Sigma^{-1}S\Sigma^{-1}d.

    :math:`\mathbb E_q[w^2]` is finite iff :math:`2S \succ \Sigma` (all
    :math:`\gamma_i > 1/2`). The ESS is Kong's [1]_ (see also Owen [2]_, ch. 9); the
    relative variance is the :math:`\chi^2` divergence of Dieng et al. [3]_.

    References
    ----------
    .. [1] A. Kong, "A note on importance sampling using standardized weights",
       Technical Report 348, Department of Statistics, University of Chicago, 1992.
    .. [2] A. B. Owen, *Monte Carlo theory, methods and examples*, 2013.
    .. [3] A. B. Dieng, D. Tran, R. Ranganath, J. Paisley and D. M. Blei, "Variational
       inference via chi upper bound minimization", NeurIPS 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import ppca
    >>> model = ppca(weights=[[1.0], [0.5]], mean=[0.0, 0.0], noise_variance=0.1)
    >>> x = np.array([0.3, 0.2])
    >>> exact = model.importance_weight_stats(model.posterior(x), x)
    >>> exact.relative_variance, exact.ess_per_sample, exact.iwae_bias(10)
    (0.0, 1.0, -0.0)
    >>> from elbo_check import Gaussian
    >>> wide = model.importance_weight_stats(Gaussian.from_diagonal(mean=[0.3],
    ...                                      variances=[0.2]), x)
    >>> round(wide.ess_per_sample, 6), round(wide.relative_variance, 6)
    (0.776863, 0.287229)
    """
    check_model(self)
    q = check_q(self, q)
    pair, _ = pair_with(self, q, x)
    second = evaluate(whiten(pair, "q"), Order(-1.0, 2.0), partial=True)
    if second is None:  # pragma: no cover - partial evaluation always returns
        raise AssertionError("unreachable")
    half_log_ratio = np.broadcast_to(second.value, pair.batch)  # D_{-1} <= 0, or -inf
    with np.errstate(over="ignore"):
        relative = np.expm1(-2.0 * half_log_ratio)
    ess = np.exp(2.0 * half_log_ratio)
    posterior = whiten(pair, "posterior")
    kappa = 1.0 - posterior.eigenvalues
    eps = posterior.offsets
    with np.errstate(over="ignore"):  # inf: the exact variance is beyond float64
        spread = 0.5 * np.sum(kappa * kappa, axis=-1)
        log_variance = spread + np.sum(posterior.eigenvalues * eps * eps, axis=-1)

    def shaped(values: Any) -> Any:
        return _scalar_or_array(np.array(np.broadcast_to(values, pair.batch), dtype=np.float64))

    return ImportanceWeightStats(
        relative_variance=shaped(np.maximum(relative, 0.0)),
        ess_per_sample=shaped(np.minimum(ess, 1.0)),
        log_weight_variance=shaped(log_variance),
    )
