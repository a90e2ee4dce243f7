"""Closed-form gradients of the ELBO: with respect to q's parameters and the model's.

:func:`variational_gradients` and :func:`model_gradients` take the model's
factorisation and already-validated arrays. :func:`elbo_grad_variational` and
:func:`elbo_grad_model` are the methods of :class:`~elbo_check.LinearGaussianModel`
of those names (bound in its class body; they live here to keep :mod:`._model`
readable): they validate and call them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._gaussian import Gaussian
from ._linalg import solve_tril, solve_tril_rows
from ._marginal import MarginalFactorization

if TYPE_CHECKING:
    from ._model import LinearGaussianModel

__all__ = [
    "ModelGradients",
    "VariationalGradients",
    "elbo_grad_model",
    "elbo_grad_variational",
    "model_gradients",
    "prior_solve_rows",
    "variational_gradients",
]

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class VariationalGradients:
    """Gradients of the ELBO of each row with respect to q's mean and Cholesky factor.

    Returned by :meth:`LinearGaussianModel.elbo_grad_variational`, which has the
    formulas; the parameters are stored as read-only attributes of the same names.
    ``batch_shape`` is the broadcast batch shape of the ``x`` rows and of ``q``.

    Parameters
    ----------
    mean : ndarray, shape batch_shape + (K,)
        The gradient of each row's ELBO with respect to q's mean :math:`m`.
    scale_tril : ndarray, shape batch_shape + (K, K)
        The gradient of each row's ELBO with respect to q's Cholesky factor
        :math:`L_q`; lower triangular (entries above the diagonal are not parameters).

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
    >>> q = Gaussian.from_diagonal(mean=[0.2], variances=[0.5])
    >>> grads = model.elbo_grad_variational(q, np.array([0.3, 0.2]))
    >>> np.round(grads.mean, 6), np.round(grads.scale_tril, 6)
    (array([1.3]), array([[-8.131728]]))
    """

    mean: FloatArray
    scale_tril: FloatArray


@dataclass(frozen=True)
class ModelGradients:
    r"""Gradients of the ELBO, summed over all rows, with respect to the model parameters.

    Returned by :meth:`LinearGaussianModel.elbo_grad_model`, which has the formulas;
    the parameters are stored as read-only attributes of the same names. Each field
    has the shape of the parameter it belongs to. Matrix gradients treat the entries as
    independent (the derivative of ``f`` along ``E`` is ``sum(G * E)``).

    Parameters
    ----------
    weights : ndarray, shape (D, K)
        With respect to :math:`W`.
    bias : ndarray, shape (D,)
        With respect to :math:`b`.
    noise_cov : float or ndarray, shape (D,) or (D, D)
        With respect to :math:`\Psi`, in the form the noise was given: the single
        variance, the ``D`` variances or the full matrix.
    prior_mean : ndarray, shape (K,)
        With respect to :math:`\mu_0`.
    prior_cov : ndarray, shape (K, K)
        With respect to :math:`\Sigma_0` (symmetric).

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
    >>> q = Gaussian.from_diagonal(mean=[0.2], variances=[0.5])
    >>> grads = model.elbo_grad_model(q, np.array([[0.3, 0.2], [0.1, -0.1]]))
    >>> grads.weights.shape, grads.bias.shape, grads.prior_cov.shape
    ((2, 1), (2,), (1, 1))
    >>> round(grads.noise_cov, 6)  # isotropic noise: one variance, one number
    46.0
    """

    weights: FloatArray
    bias: FloatArray
    noise_cov: Any
    prior_mean: FloatArray
    prior_cov: FloatArray


def prior_solve_rows(prior: Gaussian, rows: FloatArray) -> FloatArray:
    """``Sigma_0^{-1} v`` for every vector along the last axis of ``rows``."""
    factor = prior.scale_tril
    k = factor.shape[-1]
    once = solve_tril_rows(factor, rows)
    flat = once.reshape(-1, k)
    return np.ascontiguousarray(solve_tril(factor, flat.T, trans=True).T).reshape(rows.shape)


def variational_gradients(
    marginal: MarginalFactorization, q: Gaussian, data: FloatArray, batch: tuple[int, ...]
) -> VariationalGradients:
    """Gradients of each row's ELBO with respect to q's mean and Cholesky factor."""
    k = marginal.latent_dim
    prior = marginal.prior
    residual = marginal.noise.whiten(data - marginal.bias - q.mean @ marginal.weights.T)
    mean_grad = residual @ marginal.whitened_weights - prior_solve_rows(prior, q.mean - prior.mean)
    mean_grad = np.broadcast_to(mean_grad, (*batch, k)).copy()
    scale = q.scale_tril
    factor_grad = np.tril(-marginal.posterior_precision @ scale)
    diagonal = np.arange(k)
    factor_grad[..., diagonal, diagonal] += 1.0 / np.diagonal(scale, axis1=-2, axis2=-1)
    factor_grad = np.broadcast_to(factor_grad, (*batch, *scale.shape[-2:])).copy()
    return VariationalGradients(mean=mean_grad, scale_tril=factor_grad)


def model_gradients(
    marginal: MarginalFactorization, q: Gaussian, data: FloatArray, batch: tuple[int, ...]
) -> ModelGradients:
    """Gradients of the ELBO summed over rows with respect to (W, b, Psi, mu0, Sigma0)."""
    d, k = marginal.data_dim, marginal.latent_dim
    weights, noise, prior = marginal.weights, marginal.noise, marginal.prior
    n = int(np.prod(batch)) if batch else 1
    means = np.broadcast_to(q.mean, (*batch, k)).reshape(n, k)
    rows = np.broadcast_to(data, (*batch, d)).reshape(n, d)
    residual = rows - marginal.bias - means @ weights.T
    solved = noise.solve(residual)  # Psi^{-1} r_n, shape (n, D)
    if q.shares_covariance:
        cov_total = n * q.cov  # sum of q's covariances over the rows
    else:
        cov_total = np.broadcast_to(q.cov, (*batch, k, k)).reshape(n, k, k).sum(axis=0)
    solved_weights = noise.solve(weights.T).T  # Psi^{-1} W, (D, K)
    spread = solved_weights @ cov_total  # Psi^{-1} W sum_n S_n
    offsets = means - prior.mean
    prior_solved = prior_solve_rows(prior, offsets)  # Sigma0^{-1} delta_n
    cov_part = prior_solve_rows(prior, prior_solve_rows(prior, cov_total).T)  # S0^-1 S S0^-1
    grad_prior_cov = 0.5 * (cov_part + prior_solved.T @ prior_solved - n * prior.precision)
    return ModelGradients(
        weights=solved.T @ means - spread,
        bias=solved.sum(axis=0),
        noise_cov=noise.gradient(solved, spread, solved_weights, n),
        prior_mean=prior_solved.sum(axis=0),
        prior_cov=0.5 * (grad_prior_cov + grad_prior_cov.T),
    )


# ---------------------------------------------------------------------- the model's methods
def elbo_grad_variational(
    self: LinearGaussianModel, q: Gaussian, x: ArrayLike
) -> VariationalGradients:
    r"""Gradient of each row's ELBO with respect to q's mean and Cholesky factor.

    One gradient per row of ``x`` (per member of the broadcast batch), not summed.
    When rows share q's covariance, each row's gradient with respect to the shared
    factor is returned; the gradient of the summed ELBO is their sum.

    Parameters
    ----------
    q : Gaussian
        The variational distribution :math:`q(z) = \mathcal N(m, L_qL_q^\top)` over the
        ``K`` latent dimensions, parametrised by its mean and lower Cholesky factor;
        its batch broadcasts against the rows of ``x``.
    x : array_like, shape (..., D)
        One observation or a batch of them.

    Returns
    -------
    VariationalGradients
        ``mean`` of shape ``batch_shape + (K,)`` and ``scale_tril`` of shape
        ``batch_shape + (K, K)`` (lower triangular), with ``batch_shape =
        np.broadcast_shapes(x.shape[:-1], q.batch_shape)``.

    Raises
    ------
    InvalidTypeError
        If ``q`` is not a :class:`Gaussian`, or ``x`` is not a real array.
    InvalidInputError
        If ``q.dim`` is not ``K``, the last axis of ``x`` is not ``D``, ``x`` holds
        NaN or inf, or the batch shapes of ``x`` and ``q`` do not broadcast.

    Notes
    -----
    The ELBO is :math:`\mathbb E_q[\log p(x, z)] + H(q)` with a quadratic log joint
    and :math:`H(q) = \text{const} + \sum_i\log L_{q,ii}`, so the expectations of the
    gradient identities of Gaussian variational inference [1]_ [2]_ are exact:

    .. math::
        \nabla_m\,\mathrm{ELBO} &= W^\top\Psi^{-1}(x - Wm - b) - \Sigma_0^{-1}(m-\mu_0)
            = -\Lambda(m - m_x),

        \nabla_{L_q}\mathrm{ELBO} &= \operatorname{tril}(-\Lambda L_q)
            + \operatorname{diag}(1/L_{q,11}, \dots, 1/L_{q,KK}),

    with :math:`\Lambda` the posterior precision (:attr:`posterior_precision`),
    :math:`m_x` the posterior mean and :math:`\operatorname{tril}` the lower triangle
    (diagonal included). Both vanish at the posterior.

    References
    ----------
    .. [1] M. Titsias and M. Lázaro-Gredilla, "Doubly stochastic variational Bayes for
       non-conjugate inference", ICML 2014, §2 (gradients with respect to the mean and
       the Cholesky factor; here their expectations are in closed form).
    .. [2] M. Opper and C. Archambeau, "The variational Gaussian approximation
       revisited", *Neural Computation* 21(3):786–792, 2009.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian, LinearGaussianModel
    >>> prior = Gaussian.from_covariance(mean=[0.5, -1.0], cov=[[1.0, 0.3], [0.3, 2.0]])
    >>> model = LinearGaussianModel(weights=[[1.0, 0.0], [0.5, 1.0], [0.0, 2.0]],
    ...                             bias=[0.1, 0.2, 0.3], prior=prior, noise_cov=[0.5, 1.0, 2.0])
    >>> x = np.array([1.0, 0.0, 2.0])
    >>> q = Gaussian.from_cholesky(mean=[0.3, 0.2], scale_tril=[[0.7, 0.0], [0.1, 0.6]])
    >>> grads = model.elbo_grad_variational(q, x)
    >>> np.round(grads.mean, 6)
    array([1.322906, 0.090314])

    A central finite difference along the first coordinate of the mean:

    >>> h = 1e-5
    >>> up = Gaussian.from_cholesky(mean=q.mean + [h, 0.0], scale_tril=q.scale_tril)
    >>> down = Gaussian.from_cholesky(mean=q.mean - [h, 0.0], scale_tril=q.scale_tril)
    >>> round((model.elbo(up, x) - model.elbo(down, x)) / (2 * h), 6)
    1.322906

    At the posterior both gradients vanish:

    >>> at_posterior = model.elbo_grad_variational(model.posterior(x), x)
    >>> bool(np.allclose(at_posterior.mean, 0.0, atol=1e-12))
    True
    >>> bool(np.allclose(at_posterior.scale_tril, 0.0, atol=1e-12))
    True
    """
    q = self._check_q(q)
    data = self._check_x(x)
    batch = self._batch_shape(data.shape[:-1], q.batch_shape)
    return variational_gradients(self._marginal, q, data, batch)


def elbo_grad_model(self: LinearGaussianModel, q: Gaussian, x: ArrayLike) -> ModelGradients:
    r"""Gradient of the ELBO summed over rows with respect to (W, b, Psi, mu0, Sigma0).

    The gradient a maximum-likelihood learner (variational EM, or a VAE's decoder
    step) follows: the ELBO of every row of ``x``, each with its member of ``q``,
    summed, differentiated with respect to the model's parameters at fixed ``q``.

    Parameters
    ----------
    q : Gaussian
        The variational distribution :math:`q(z)` over the ``K`` latent dimensions;
        its batch broadcasts against the rows of ``x``.
    x : array_like, shape (..., D)
        One observation or a batch of them; the ELBO is summed over all rows of the
        broadcast batch.

    Returns
    -------
    ModelGradients
        ``weights`` ``(D, K)``, ``bias`` ``(D,)``, ``noise_cov`` in the form the noise
        was given (a float, ``(D,)`` or ``(D, D)``), ``prior_mean`` ``(K,)`` and
        ``prior_cov`` ``(K, K)``.

    Raises
    ------
    InvalidTypeError
        If ``q`` is not a :class:`Gaussian`, or ``x`` is not a real array.
    InvalidInputError
        If ``q.dim`` is not ``K``, the last axis of ``x`` is not ``D``, ``x`` holds
        NaN or inf, or the batch shapes of ``x`` and ``q`` do not broadcast.

    Notes
    -----
    With :math:`r_n = x_n - Wm_n - b`, :math:`\delta_n = m_n-\mu_0`, :math:`S_n` the
    covariance of row n's q (the same for every row when q shares one) and the sums
    over the :math:`N` rows, matrix calculus [1]_ on the terms of :meth:`elbo_terms`
    gives

    .. math::
        \nabla_b = \textstyle\sum_n \Psi^{-1}r_n,\qquad
        \nabla_W = \textstyle\sum_n \Psi^{-1}(r_nm_n^\top - WS_n),

        \nabla_\Psi = \tfrac12\textstyle\sum_n\bigl(\Psi^{-1}(r_nr_n^\top + WS_nW^\top)
          \Psi^{-1} - \Psi^{-1}\bigr),

        \nabla_{\mu_0} = \textstyle\sum_n\Sigma_0^{-1}\delta_n,\qquad
        \nabla_{\Sigma_0} = \tfrac12\textstyle\sum_n\bigl(\Sigma_0^{-1}(S_n+\delta_n
          \delta_n^\top)\Sigma_0^{-1} - \Sigma_0^{-1}\bigr).

    For diagonal noise the gradient is taken with respect to the variances (the
    diagonal of the matrix formula); for isotropic noise with respect to the single
    variance (its trace). Setting these to zero at :math:`q = p(z\mid x)` gives the
    M-step of EM [2]_.

    References
    ----------
    .. [1] K. B. Petersen and M. S. Pedersen, *The Matrix Cookbook*, 2012, §2
       (derivatives of determinants, inverses and traces).
    .. [2] R. M. Neal and G. E. Hinton, "A view of the EM algorithm that justifies
       incremental, sparse, and other variants", in *Learning in Graphical Models*,
       Kluwer, 1998.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian, LinearGaussianModel
    >>> prior = Gaussian.from_covariance(mean=[0.5, -1.0], cov=[[1.0, 0.3], [0.3, 2.0]])
    >>> model = LinearGaussianModel(weights=[[1.0, 0.0], [0.5, 1.0], [0.0, 2.0]],
    ...                             bias=[0.1, 0.2, 0.3], prior=prior, noise_cov=[0.5, 1.0, 2.0])
    >>> x = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])
    >>> q = Gaussian.from_covariance(mean=[0.3, 0.2], cov=[[0.5, 0.1], [0.1, 0.4]])
    >>> grads = model.elbo_grad_model(q, x)
    >>> np.round(grads.bias, 6), np.round(grads.noise_cov, 6)
    (array([ 0.4, -0.1, -0.2]), array([ 1.04  , -0.1225,  0.4725]))

    A central finite difference of the summed ELBO along the first noise variance:

    >>> def summed_elbo(noise_cov):
    ...     changed = LinearGaussianModel(weights=model.weights, bias=model.bias,
    ...                                   prior=model.prior, noise_cov=noise_cov)
    ...     return float(np.sum(changed.elbo(q, x)))
    >>> h = np.array([1e-6, 0.0, 0.0])
    >>> psi = model.noise_cov
    >>> round((summed_elbo(psi + h) - summed_elbo(psi - h)) / 2e-6, 6)
    1.04
    """
    q = self._check_q(q)
    data = self._check_x(x)
    return model_gradients(
        self._marginal, q, data, self._batch_shape(data.shape[:-1], q.batch_shape)
    )
