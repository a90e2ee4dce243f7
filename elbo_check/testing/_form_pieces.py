r"""The oracle's pieces of an ELBO estimate: sample terms, scores and pathwise gradients.

:mod:`._forms` assembles the three forms of a Monte-Carlo ELBO from these; its module
docstring gives the formulas (scores :math:`g^{\mathrm{lik}}` and :math:`g`, and the
gradient through :math:`z_i = m + L\varepsilon_i`). :mod:`._form_suspects` writes the
forms' known bugs on the same pieces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._errors import InvalidInputError, InvalidTypeError
from .._gaussian import LOG_2PI, Gaussian
from .._gradients import prior_solve_rows
from .._model import LinearGaussianModel
from .._validation import as_real_array

FloatArray = NDArray[np.float64]


# ---------------------------------------------------------------------- checks
def _check_problem(model: Any, q: Any, x: Any) -> FloatArray:
    """``x`` as a float64 array of shape (D,), after checking ``model`` and ``q``."""
    if not isinstance(model, LinearGaussianModel):
        raise InvalidTypeError(f"model must be a LinearGaussianModel; got {type(model).__name__}")
    if q is not None:
        if not isinstance(q, Gaussian):
            raise InvalidTypeError(f"q must be a Gaussian; got {type(q).__name__}")
        if q.batch_shape != () or q.dim != model.latent_dim:
            raise InvalidInputError(
                f"q must be one Gaussian (not a batch) of the model's K = {model.latent_dim} "
                f"dimensions; got {q!r}"
            )
    data = as_real_array("x", x)
    if data.shape != (model.data_dim,):
        raise InvalidInputError(
            f"x must be one observation of shape (D,) = ({model.data_dim},); got shape {data.shape}"
        )
    return data


def _check_rows(model: LinearGaussianModel, rows: Any, name: str) -> FloatArray:
    """``rows`` (samples or noise) as a float64 array of shape (n, K)."""
    array = as_real_array(name, rows)
    if array.ndim != 2 or array.shape[1] != model.latent_dim or array.shape[0] < 1:
        raise InvalidInputError(
            f"{name} must have shape (n, K) with n >= 1 and K = {model.latent_dim}; "
            f"got shape {array.shape}"
        )
    return array


# ---------------------------------------------------------------------- pieces
@dataclass(frozen=True)
class _Pieces:
    """The sample terms of an estimate: per-sample arrays at given ``z`` (pathwise) or
    their expectations under some law of ``z`` (statistical), and the sample count."""

    log_likelihood: FloatArray
    log_prior: FloatArray
    log_q: FloatArray
    n: int


def _sample_pieces(
    model: LinearGaussianModel, q: Gaussian, x: FloatArray, z: FloatArray
) -> _Pieces:
    return _Pieces(
        np.asarray(model.log_likelihood(x, z), dtype=np.float64),
        np.asarray(model.prior.log_prob(z), dtype=np.float64),
        np.asarray(q.log_prob(z), dtype=np.float64),
        int(z.shape[0]),
    )


def _expected_log_density(g: Gaussian, mean: FloatArray, cov: FloatArray) -> float:
    """E over z ~ N(mean, cov) of log g(z) (cov may be singular)."""
    precision = g.precision
    offset = mean - g.mean
    return -0.5 * (
        g.dim * LOG_2PI
        + float(g.log_det_cov)
        + float(np.sum(precision * cov))
        + float(offset @ precision @ offset)
    )


def _expected_pieces(
    model: LinearGaussianModel,
    q: Gaussian,
    x: FloatArray,
    n: int,
    law: tuple[FloatArray, FloatArray] | None = None,
) -> _Pieces:
    """Expectations of the sample terms over z ~ q, or over z ~ N(mean, cov) = ``law``."""
    if law is None:
        terms = model.elbo_terms(q, x)
        return _Pieces(
            np.asarray(terms.expected_log_likelihood, dtype=np.float64),
            np.asarray(-terms.cross_entropy, dtype=np.float64),
            np.asarray(-terms.entropy, dtype=np.float64),
            n,
        )
    mean, cov = law
    residual = model._noise.whiten(x - model.bias - model.weights @ mean)
    weights = model._marginal.whitened_weights
    ell = -0.5 * (
        model.data_dim * LOG_2PI
        + model._noise.logdet
        + float(residual @ residual)
        + float(np.sum((weights.T @ weights) * cov))
    )
    return _Pieces(
        np.asarray(ell),
        np.asarray(_expected_log_density(model.prior, mean, cov)),
        np.asarray(_expected_log_density(q, mean, cov)),
        n,
    )


# ---------------------------------------------------------------------- pathwise gradients
#: A gradient in (m, L) (the second entry lower triangular), or the sizes of its terms.
GradientPair = tuple[FloatArray, FloatArray]


def _samples(q: Gaussian, eps: FloatArray) -> FloatArray:
    """``z_i = m + L eps_i`` for the rows of ``eps``."""
    return q.mean + eps @ q.scale_tril.T


def _likelihood_scores(
    model: LinearGaussianModel, x: FloatArray, z: FloatArray
) -> tuple[FloatArray, FloatArray]:
    r"""Rows :math:`W^\top\Psi^{-1}(x - Wz_i - b)` (whitened by the noise's own factor), and
    the sizes of the terms they are differences of."""
    marginal = model._marginal
    weights = marginal.whitened_weights  # Psi^{-1/2} W
    residual = marginal.noise.whiten(x - model.bias - z @ model.weights.T)
    size = (np.abs(marginal.noise.whiten(x - model.bias)) + np.abs(z @ weights.T)) @ np.abs(weights)
    return residual @ weights, size


def _prior_scores(model: LinearGaussianModel, z: FloatArray) -> tuple[FloatArray, FloatArray]:
    r"""Rows :math:`-\Sigma_0^{-1}(z_i - \mu_0)` (solves with the prior's factor) and sizes."""
    prior = model.prior
    size = np.abs(prior_solve_rows(prior, z)) + np.abs(prior_solve_rows(prior, prior.mean))
    return -prior_solve_rows(prior, z - prior.mean), size


def _joint_scores(
    model: LinearGaussianModel, x: FloatArray, z: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Rows of grad_z log p(x, z_i), and sizes."""
    likelihood, first = _likelihood_scores(model, x, z)
    prior, second = _prior_scores(model, z)
    return likelihood + prior, first + second


def _through_samples(scores: FloatArray, eps: FloatArray) -> GradientPair:
    r"""The gradient in :math:`(m, L)` of :math:`\frac1n\sum_i f(m + L\varepsilon_i)` from
    the rows :math:`\nabla f(z_i)`: their mean, and :math:`\operatorname{tril}` of the mean
    of :math:`\nabla f(z_i)\,\varepsilon_i^\top`."""
    n = scores.shape[0]
    return np.mean(scores, axis=0), np.tril(scores.T @ eps) / n


def _log_scale_gradient(q: Gaussian) -> FloatArray:
    r""":math:`\partial \sum_k \log L_{kk} / \partial L = \operatorname{diag}(1/L_{kk})`."""
    return np.diag(1.0 / np.diagonal(q.scale_tril))


def _kl_gradient(model: LinearGaussianModel, q: Gaussian) -> tuple[GradientPair, GradientPair]:
    r"""The gradient of :math:`\mathrm{KL}(q\,\|\,p(z))` in :math:`(m, L)`:
    :math:`\Sigma_0^{-1}(m - \mu_0)` and
    :math:`\operatorname{tril}(\Sigma_0^{-1}L) - \operatorname{diag}(1/L_{kk})`; and sizes."""
    prior = model.prior
    solved_factor = prior_solve_rows(prior, q.scale_tril.T).T  # S0^-1 L
    gradient = (
        prior_solve_rows(prior, q.mean - prior.mean),
        np.tril(solved_factor) - _log_scale_gradient(q),
    )
    size = (
        np.abs(prior_solve_rows(prior, q.mean)) + np.abs(prior_solve_rows(prior, prior.mean)),
        np.tril(np.abs(solved_factor)) + np.abs(_log_scale_gradient(q)),
    )
    return gradient, size


def _joint_path_gradient(
    model: LinearGaussianModel, q: Gaussian, x: FloatArray, eps: FloatArray
) -> tuple[GradientPair, GradientPair]:
    r"""The pathwise gradient of :math:`\frac1n\sum_i\log p(x, z_i) + \sum_k\log L_{kk}`
    (the joint and the analytic-entropy forms up to constants), and sizes."""
    scores, sizes = _joint_scores(model, x, _samples(q, eps))
    gm, gl = _through_samples(scores, eps)
    mm, ml = _through_samples(sizes, np.abs(eps))
    entropy = _log_scale_gradient(q)
    return (gm, gl + entropy), (mm, ml + np.abs(entropy))
