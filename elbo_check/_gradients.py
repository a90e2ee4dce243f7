"""Closed-form gradients of the ELBO: with respect to q's parameters and the model's.

The functions take the model's factorisation and already-validated arrays; the public
methods :meth:`LinearGaussianModel.elbo_grad_variational` and
:meth:`LinearGaussianModel.elbo_grad_model` validate and call them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._gaussian import Gaussian
from ._linalg import solve_tril, solve_tril_rows
from ._marginal import MarginalFactorization

__all__ = [
    "ModelGradients",
    "VariationalGradients",
    "model_gradients",
    "prior_solve_rows",
    "variational_gradients",
]

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class VariationalGradients:
    """Gradients of the ELBO of each row with respect to q's mean and Cholesky factor.

    Attributes
    ----------
    mean : ndarray, shape batch_shape + (K,)
        The gradient with respect to q's mean.
    scale_tril : ndarray, shape batch_shape + (K, K)
        The gradient with respect to q's Cholesky factor; lower triangular (entries
        above the diagonal are not parameters).
    """

    mean: FloatArray
    scale_tril: FloatArray


@dataclass(frozen=True)
class ModelGradients:
    r"""Gradients of the ELBO, summed over all rows, with respect to the model parameters.

    Each field has the shape of the parameter it belongs to. Matrix gradients treat the
    entries as independent (the derivative of ``f`` along ``E`` is ``sum(G * E)``).

    Attributes
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
