r"""Exact gradients of the Rényi bound with respect to q's mean and Cholesky factor.

The gradients follow from the Gaussian closed form of
:meth:`elbo_check.LinearGaussianModel.renyi_bound` and are evaluated in the same whitened
eigenbasis (:mod:`elbo_check._renyi_core`), so they have no :math:`0/0` at
:math:`\alpha = 1` (where they are the ELBO's) and vanish exactly at :math:`\alpha = 0`
(where the bound is :math:`\log p(x)`, free of q). The function is a method of
:class:`~elbo_check.LinearGaussianModel`, bound in its class body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._errors import InvalidInputError
from ._gaussian import Gaussian
from ._gradients import VariationalGradients
from ._linalg import solve_tril
from ._renyi_common import check_model, check_q, divergence, pair_with, real
from ._renyi_core import Order

if TYPE_CHECKING:
    from ._model import LinearGaussianModel

__all__ = ["renyi_bound_grad_variational"]

FloatArray = NDArray[np.float64]


def renyi_bound_grad_variational(
    self: LinearGaussianModel, q: Gaussian, x: ArrayLike, alpha: float
) -> VariationalGradients:
    r"""Gradient of each row's Rényi bound with respect to q's mean and Cholesky factor.

    The bound is :math:`\mathcal L_\alpha` of :meth:`renyi_bound`; the
    factor is q's lower-triangular :math:`L` (the convention of
    ``model.elbo_grad_variational``).

    Parameters
    ----------
    q : Gaussian
        The variational distribution :math:`\mathcal N(m, LL^\top)`; its batch broadcasts
        against the rows of ``x``.
    x : array_like, shape (..., D)
        One observation or a batch of them.
    alpha : float
        The order, in :meth:`renyi_alpha_interval`.

    Returns
    -------
    VariationalGradients
        ``mean`` of shape ``batch + (K,)`` and ``scale_tril`` of shape
        ``batch + (K, K)`` (lower triangular: the entries above the diagonal are not
        parameters), as ``model.elbo_grad_variational`` returns them, which they equal
        at :math:`\alpha = 1`.

    Raises
    ------
    InvalidTypeError
        If ``q`` or ``alpha`` has the wrong type.
    InvalidInputError
        If ``alpha`` is outside the interval where the bound is finite, or as
        :meth:`renyi_bound`.

    Notes
    -----
    Differentiating the closed form (with :math:`A = \alpha\Sigma + (1-\alpha)S`,
    :math:`d = m - \mu`, :math:`a = A^{-1}d`, and :math:`dS = dL\,L^\top + L\,dL^\top`):

    .. math::
        \nabla_m\mathcal L_\alpha = -\alpha\,A^{-1}d,\qquad
        \nabla_L\mathcal L_\alpha = \operatorname{tril}\Bigl(\operatorname{diag}(1/L_{ii})
          - A^{-1}L + \alpha(1-\alpha)\,a\,a^\top L\Bigr),

    since :math:`\nabla_S D_\alpha = \tfrac12(A^{-1} - S^{-1}) - \tfrac{\alpha(1-\alpha)}2
    aa^\top` [1]_ and :math:`\operatorname{tril}(S^{-1}L) = \operatorname{diag}(1/L_{ii})`.
    At :math:`\alpha = 1` these are the ELBO's gradients; at :math:`\alpha = 0` both
    vanish. :math:`A^{-1}` is never formed: in the eigenbasis of the posterior-whitened
    q covariance (for :math:`\alpha \ge 1/2`; of the q-whitened posterior covariance
    below) it is diagonal, :math:`\operatorname{diag}(1/D_i)`, :math:`D_i = \alpha +
    (1-\alpha)\gamma_i`.

    References
    ----------
    .. [1] K. B. Petersen and M. S. Pedersen, *The Matrix Cookbook*, 2012, §2.1 (the
       derivatives of :math:`\log\det` and of an inverse), applied to the closed form of
       M. Gil, F. Alajaji and T. Linder, Information Sciences 249, 124–131, 2013.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian, ppca
    >>> model = ppca(weights=[[1.0], [0.5]], mean=[0.0, 0.0], noise_variance=0.1)
    >>> x = np.array([0.3, 0.2])
    >>> q = Gaussian.from_covariance(mean=[0.2], cov=[[0.05]])
    >>> at_one = model.renyi_bound_grad_variational(q, x, 1.0)
    >>> elbo = model.elbo_grad_variational(q, x)
    >>> bool(np.allclose(at_one.mean, elbo.mean) and np.allclose(at_one.scale_tril,
    ...                                                          elbo.scale_tril))
    True
    >>> at_zero = model.renyi_bound_grad_variational(q, x, 0.0)
    >>> float(np.max(np.abs(at_zero.mean))), float(np.max(np.abs(at_zero.scale_tril)))
    (0.0, 0.0)
    """
    check_model(self)
    q = check_q(self, q)
    value = real("alpha", alpha)
    order = Order.from_alpha(value)
    pair, _ = pair_with(self, q, x)
    found = divergence(pair, order, "alpha", value, False)
    k, batch = self.latent_dim, pair.batch
    if value == 0.0:  # L_0 = log p(x) does not depend on q
        return VariationalGradients(mean=np.zeros((*batch, k)), scale_tril=np.zeros((*batch, k, k)))
    w = found.whitened
    inverse_d = 1.0 / found.denominators  # cov_batch + (K,)
    factor = q.scale_tril
    if w.orientation == "posterior":
        # A^{-1} = Lp^-T V diag(1/D) V^T Lp^-1,  e = Lp^-1 d,  eps = V^T e
        scaled = np.einsum("...ij,...j->...i", w.vectors, w.offsets * inverse_d)
        a_vector = _solve_rows_transposed(pair.post_tril, scaled)
        inner = (w.vectors * inverse_d[..., None, :]) @ np.swapaxes(w.vectors, -1, -2) @ w.ratio
        a_times_l = solve_tril(pair.post_tril, inner, trans=True)  # A^{-1} L
        spread = -a_times_l
        diagonal = np.arange(k)
        spread[..., diagonal, diagonal] += 1.0 / np.diagonal(factor, axis1=-2, axis2=-1)
    else:
        # A = L (alpha M M^T + (1 - alpha) I) L^T with M = L^-1 Lp; e = L^-1 (mu - m)
        scaled = np.einsum("...ij,...j->...i", w.vectors, -w.offsets * inverse_d)
        a_vector = _solve_rows_transposed(factor, scaled)
        weights = order.alpha * (w.eigenvalues - 1.0) * inverse_d  # (D_i - 1) / D_i
        inner = (w.vectors * weights[..., None, :]) @ np.swapaxes(w.vectors, -1, -2)
        spread = solve_tril(np.asarray(factor), inner, trans=True)  # L^-T V diag(.) V^T
    with np.errstate(over="ignore", invalid="ignore"):  # a NaN is reported below
        rank_one = (
            a_vector[..., :, None]
            * np.einsum("...ji,...j->...i", np.broadcast_to(factor, (*batch, k, k)), a_vector)[
                ..., None, :
            ]
        )
        mean_grad = -order.alpha * a_vector
        factor_grad = np.tril(spread + order.alpha * order.beta * rank_one)
    if np.any(np.isnan(mean_grad)) or np.any(np.isnan(factor_grad)):
        raise InvalidInputError(
            f"alpha = {value!r} gives gradients that float64 cannot represent (their terms "
            "overflow: q's and the posterior's scales are too far apart)"
        )
    return VariationalGradients(
        mean=np.array(np.broadcast_to(mean_grad, (*batch, k))),
        scale_tril=np.array(np.broadcast_to(factor_grad, (*batch, k, k))),
    )


def _solve_rows_transposed(factor: FloatArray, rows: FloatArray) -> FloatArray:
    """``L^{-T} v`` for every vector ``v`` along the last axis of ``rows``."""
    solved = solve_tril(np.asarray(factor), rows[..., :, None], trans=True)
    return np.asarray(solved[..., 0], dtype=np.float64)
