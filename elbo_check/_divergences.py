"""The KL divergence and the cross-entropy between two Gaussians, from their factors.

Both are computed from the Cholesky factors the :class:`~elbo_check.Gaussian` holds,
with triangular solves only: no covariance is inverted or formed. They are re-exported
by :mod:`elbo_check._gaussian`, where the package's other modules import them from.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._errors import InvalidInputError, InvalidTypeError
from ._gaussian import LOG_2PI, Gaussian, _scalar_or_array
from ._linalg import gram_diag_log_term, logdets_from_tril, solve_tril, solve_tril_rows

__all__ = ["cross_entropy", "kl_divergence"]

FloatArray = NDArray[np.float64]


def _check_same_dim(p: Gaussian, q: Gaussian) -> None:
    for name, value in (("p", p), ("q", q)):
        if not isinstance(value, Gaussian):
            raise InvalidTypeError(f"{name} must be a Gaussian; got {type(value).__name__}")
    if p.dim != q.dim:
        raise InvalidInputError(
            f"p and q must have the same dimension; got p.dim={p.dim} and q.dim={q.dim}"
        )


def _mean_offsets(p: Gaussian, q: Gaussian) -> FloatArray:
    try:
        np.broadcast_shapes(p.batch_shape, q.batch_shape)
    except ValueError as err:
        raise InvalidInputError(
            f"the batch shapes of p {p.batch_shape} and q {q.batch_shape} do not broadcast"
        ) from err
    return np.asarray(p.mean - q.mean)


def _factor_ratio(p: Gaussian, q: Gaussian) -> FloatArray:
    """``L_q^{-1} L_p`` (lower triangular), for shared or batched factors."""
    if p.scale_tril.shape == q.scale_tril.shape and np.array_equal(p.scale_tril, q.scale_tril):
        # exact: a blocked LAPACK solve would leave O(eps) entries
        return np.broadcast_to(np.eye(p.dim), p.scale_tril.shape)
    return solve_tril(q.scale_tril, p.scale_tril)  # lower triangular: exact zeros above


def _sum_last_two(values: FloatArray) -> Any:
    return np.sum(values, axis=(-2, -1))


def kl_divergence(p: Gaussian, q: Gaussian) -> Any:
    r"""Kullback–Leibler divergence :math:`\mathrm{KL}(p \,\|\, q)` between two Gaussians.

    The divergence of ``q`` from ``p``, :math:`\mathbb E_p[\log p(z) - \log q(z)]`: the
    expectation is under the *first* argument. It is not symmetric; the ELBO's terms
    are :math:`\mathrm{KL}(q\,\|\,p(z))` and :math:`\mathrm{KL}(q\,\|\,p(z\mid x))`, with
    the variational distribution first.

    Parameters
    ----------
    p : Gaussian
        The distribution the expectation is taken under, :math:`\mathcal N(\mu_p,
        \Sigma_p)`, :math:`\Sigma_p = L_pL_p^\top`; a single Gaussian or a batch.
    q : Gaussian
        The reference distribution :math:`\mathcal N(\mu_q, \Sigma_q)`,
        :math:`\Sigma_q = L_qL_q^\top`, over the same ``K`` dimensions; its batch
        broadcasts against ``p``'s.

    Returns
    -------
    float or ndarray of shape ``np.broadcast_shapes(p.batch_shape, q.batch_shape)``
        The divergence in nats: never negative, and exactly 0 for identical
        arguments. A float when neither argument is batched.

    Raises
    ------
    InvalidTypeError
        If ``p`` or ``q`` is not a :class:`Gaussian`.
    InvalidInputError
        If ``p.dim != q.dim``, or if the batch shapes of ``p`` and ``q`` do not
        broadcast.

    See Also
    --------
    cross_entropy : :math:`H(p, q) = \mathrm{KL}(p\,\|\,q) + H(p)`.
    LinearGaussianModel.kl_to_posterior : The KL from ``q`` to the exact posterior.

    Notes
    -----
    The textbook form [1]_ [2]_ is

    .. math::
        \mathrm{KL}(p\,\|\,q) = \tfrac12\bigl(\operatorname{tr}(\Sigma_q^{-1}\Sigma_p)
            + (\mu_p - \mu_q)^\top\Sigma_q^{-1}(\mu_p - \mu_q) - K
            + \log\det\Sigma_q - \log\det\Sigma_p\bigr).

    With :math:`M = L_q^{-1} L_p` (lower triangular) and
    :math:`w = L_q^{-1}(\mu_p - \mu_q)` it is evaluated as

    .. math::
        \mathrm{KL}(p\,\|\,q) = \tfrac12\Bigl(\sum_{i>j} M_{ij}^2
            + \sum_i \bigl(M_{ii}^2 - 1 - 2\log M_{ii}\bigr) + \lVert w\rVert^2\Bigr),

    the same terms regrouped so that each is non-negative (:math:`t - 1 - \log t
    \ge 0`): no cancellation between large terms, a result that is never negative
    and exactly zero for identical arguments.

    References
    ----------
    .. [1] S. Kullback and R. A. Leibler, "On information and sufficiency",
       *Ann. Math. Statist.* 22(1):79–86, 1951.
    .. [2] C. E. Rasmussen and C. K. I. Williams, *Gaussian Processes for Machine
       Learning*, MIT Press, 2006, Appendix A.5 (the KL divergence between two
       multivariate Gaussians).

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian, kl_divergence
    >>> p = Gaussian.from_diagonal(mean=[0.0], variances=[1.0])
    >>> q = Gaussian.from_diagonal(mean=[1.0], variances=[1.0])
    >>> kl_divergence(p, q)
    0.5

    The divergence is not symmetric; a Monte Carlo average of
    :math:`\log p(z) - \log q(z)` over draws from ``p`` agrees with ``kl_divergence(p,
    q)``:

    >>> p = Gaussian.from_covariance(mean=[0.0, 1.0], cov=[[2.0, 0.3], [0.3, 0.5]])
    >>> q = Gaussian.standard(2)
    >>> round(kl_divergence(p, q), 6), round(kl_divergence(q, p), 6)
    (0.797155, 1.425372)
    >>> z = p.sample(100_000, rng=0)
    >>> round(float(np.mean(p.log_prob(z) - q.log_prob(z))), 2)
    0.8
    """
    _check_same_dim(p, q)
    offsets = _mean_offsets(p, q)
    ratio = _factor_ratio(p, q)
    off_diagonal = _sum_last_two(np.tril(ratio, k=-1) ** 2)
    diagonal_terms = gram_diag_log_term(np.diagonal(ratio, axis1=-2, axis2=-1))
    whitened = solve_tril_rows(q.scale_tril, offsets)
    squared = np.einsum("...i,...i->...", whitened, whitened)
    values = 0.5 * (off_diagonal + np.sum(diagonal_terms, axis=-1) + squared)
    return _scalar_or_array(
        np.broadcast_to(values, np.broadcast_shapes(p.batch_shape, q.batch_shape)).copy()
    )


def cross_entropy(p: Gaussian, q: Gaussian) -> Any:
    r"""Cross-entropy :math:`H(p, q) = -\mathbb E_p[\log q(z)]` of ``q`` relative to ``p``.

    The expected negative log density of ``q`` under draws from ``p``. In the ELBO,
    :math:`H(q, p(z))` (the variational distribution first) is the ``cross_entropy``
    term of :class:`ElboTerms`.

    Parameters
    ----------
    p : Gaussian
        The distribution the expectation is taken under, :math:`\mathcal N(\mu_p,
        \Sigma_p)`, :math:`\Sigma_p = L_pL_p^\top`; a single Gaussian or a batch.
    q : Gaussian
        The distribution whose log density is averaged, :math:`\mathcal N(\mu_q,
        \Sigma_q)`, :math:`\Sigma_q = L_qL_q^\top`, over the same ``K`` dimensions;
        its batch broadcasts against ``p``'s.

    Returns
    -------
    float or ndarray of shape ``np.broadcast_shapes(p.batch_shape, q.batch_shape)``
        The cross-entropy in nats (it can be negative, like a differential entropy).
        A float when neither argument is batched.

    Raises
    ------
    InvalidTypeError
        If ``p`` or ``q`` is not a :class:`Gaussian`.
    InvalidInputError
        If ``p.dim != q.dim``, or if the batch shapes of ``p`` and ``q`` do not
        broadcast.

    See Also
    --------
    kl_divergence : :math:`\mathrm{KL}(p\,\|\,q) = H(p, q) - H(p)`.
    Gaussian.entropy : :math:`H(p) = H(p, p)`.

    Notes
    -----
    .. math::
        H(p, q) = \tfrac12\bigl(K\log 2\pi + \log\det\Sigma_q
            + \operatorname{tr}(\Sigma_q^{-1}\Sigma_p)
            + (\mu_p-\mu_q)^\top\Sigma_q^{-1}(\mu_p-\mu_q)\bigr),

    evaluated as :math:`\tfrac12\bigl(K\log 2\pi + 2\sum_i\log L_{q,ii}
    + \lVert L_q^{-1}L_p\rVert_F^2 + \lVert L_q^{-1}(\mu_p-\mu_q)\rVert^2\bigr)`. It
    equals :math:`\mathrm{KL}(p\,\|\,q) + H(p)` [1]_ [2]_.

    References
    ----------
    .. [1] T. M. Cover and J. A. Thomas, *Elements of Information Theory*, 2nd ed.,
       Wiley, 2006, §8.5 (relative entropy of densities) and Theorem 8.4.1 (the
       entropy of a multivariate normal).
    .. [2] C. E. Rasmussen and C. K. I. Williams, *Gaussian Processes for Machine
       Learning*, MIT Press, 2006, Appendix A.5.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian, cross_entropy, kl_divergence
    >>> p = Gaussian.from_covariance(mean=[0.0, 1.0], cov=[[2.0, 0.3], [0.3, 0.5]])
    >>> q = Gaussian.standard(2)
    >>> round(cross_entropy(p, q), 6)
    3.587877
    >>> round(kl_divergence(p, q) + p.entropy(), 6)
    3.587877

    A Monte Carlo average of :math:`-\log q(z)` over draws from ``p``:

    >>> z = p.sample(100_000, rng=0)
    >>> round(float(-np.mean(q.log_prob(z))), 2)
    3.59
    """
    _check_same_dim(p, q)
    offsets = _mean_offsets(p, q)
    trace = _sum_last_two(solve_tril(q.scale_tril, p.scale_tril) ** 2)
    whitened = solve_tril_rows(q.scale_tril, offsets)
    squared = np.einsum("...i,...i->...", whitened, whitened)
    values = 0.5 * (p.dim * LOG_2PI + logdets_from_tril(q.scale_tril) + trace + squared)
    return _scalar_or_array(
        np.broadcast_to(values, np.broadcast_shapes(p.batch_shape, q.batch_shape)).copy()
    )
