"""Problems and exact reference values shared by the verifiers."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._errors import InvalidInputError
from .._gaussian import LOG_2PI, Gaussian
from .._linalg import cholesky
from .._model import LinearGaussianModel
from .._random import random_gaussian, random_model
from ._calls import _Problem

FloatArray = NDArray[np.float64]


# ---------------------------------------------------------------------- ELBO
def _elbo_scale(model: LinearGaussianModel, q: Gaussian, x: FloatArray) -> float:
    t = model.elbo_terms(q, x)
    return float(abs(t.expected_log_likelihood) + abs(t.kl_to_prior) + 1.0)


def _with_other_prior(model: LinearGaussianModel) -> LinearGaussianModel | None:
    """The same model with a moved prior mean and a non-diagonal, non-unit prior covariance."""
    k = model.latent_dim
    mixing = np.eye(k) + 0.3 * np.tril(np.ones((k, k)), -1)
    factor = model.prior.scale_tril @ (mixing * np.linspace(1.4, 0.8, k))
    try:
        return LinearGaussianModel(
            weights=model.weights,
            bias=model.bias,
            prior=Gaussian._trusted(model.prior.mean + 0.6 + 0.2 * np.arange(k), np.tril(factor)),
            noise_cov=model.noise_cov,
        )
    except ValueError:
        return None


def _elbo_variants(model: LinearGaussianModel, q: Gaussian, x: FloatArray) -> dict[str, _Problem]:
    """The failing case and variations of it that each change one thing."""
    k = model.latent_dim
    rng = np.random.default_rng(12345)
    rotation = np.linalg.qr(rng.standard_normal((k, k)))[0]
    moved_mean = Gaussian._trusted(q.mean + 0.7 + 0.3 * np.arange(k), q.scale_tril)
    new_cov = 1.7 * (rotation * np.linspace(0.5, 2.0, k)) @ rotation.T + 0.2 * q.cov
    changed_cov = Gaussian._trusted(q.mean, np.linalg.cholesky(0.5 * (new_cov + new_cov.T)))
    other_x = x + 0.9 + 0.1 * np.arange(model.data_dim)
    variants = {
        "original": (model, q, x),
        "mean moved": (model, moved_mean, x),
        "cov changed": (model, changed_cov, x),
        "x changed": (model, q, other_x),
        "both changed": (
            model,
            Gaussian._trusted(moved_mean.mean, changed_cov.scale_tril),
            other_x,
        ),
    }
    # Failures shrink to a N(0, I) prior, where "prior mean ignored" and "prior taken as
    # standard normal" coincide: a probe with another prior tells such suspects apart.
    other_prior = _with_other_prior(model)
    if other_prior is not None:
        variants["prior changed"] = (other_prior, q, x)
    return variants


# ---------------------------------------------------------------------- estimators
#: (D, K, family, noise kind, prior kind) of the fixed statistical problems, in turn.
_STATISTICAL_SHAPES = (
    (3, 2, "full_noise", "full", "general"),
    (2, 4, "general", "diagonal", "general"),
    (5, 3, "factor_analysis", "diagonal", "standard"),
    (4, 4, "ppca", "isotropic", "standard"),
    (3, 3, "bayesian_linear_regression", "isotropic", "general"),
)


def _statistical_problems(
    seed: int, count: int, model_options: dict[str, Any]
) -> list[tuple[LinearGaussianModel, Gaussian, FloatArray]]:
    """Fixed problems for statistical checks, chosen where realistic bugs bias estimates.

    Families and shapes cycle through full noise, diagonal noise with a general prior,
    K > D, PPCA and regression; q has a full covariance (so a transposed factor or a
    covariance used as a scale changes the distribution) and sits near the posterior (so
    the correct estimator has small variance and biases stand out). ``model_options``
    may restrict ``noise_kinds`` and ``prior_kinds`` as for the strategies.
    """
    unknown = sorted(set(model_options) - {"noise_kinds", "prior_kinds"})
    if unknown:
        raise InvalidInputError(
            f"statistical checks accept only noise_kinds and prior_kinds as model options; "
            f"got {unknown}"
        )
    noise_kinds = model_options.get("noise_kinds", ("isotropic", "diagonal", "full"))
    prior_kinds = model_options.get("prior_kinds", ("standard", "diagonal", "general"))
    shapes = [
        (d, k, family)
        for d, k, family, noise, prior in _STATISTICAL_SHAPES
        if noise in noise_kinds and prior in prior_kinds
    ]
    if not shapes:
        raise InvalidInputError(
            f"no statistical test problem has noise_kinds={tuple(noise_kinds)!r} and "
            f"prior_kinds={tuple(prior_kinds)!r}"
        )
    rng = np.random.default_rng([seed, 2024])
    out = []
    for i in range(count):
        d, k, family = shapes[i % len(shapes)]
        model = random_model(
            rng,
            data_dim=d,
            latent_dim=k,
            family=family,  # type: ignore[arg-type]
            condition_number=10.0,
        )
        x = model.sample(1, rng)[0][0]
        posterior = model.posterior(x)
        skew = random_gaussian(rng, k, condition_number=10.0).scale_tril
        product = posterior.scale_tril @ skew  # a full, non-symmetric spread of q
        factor = cholesky("cov", product @ product.T)
        mean = posterior.mean + posterior.scale_tril @ rng.standard_normal(k)
        out.append((model, Gaussian._trusted(mean, factor), x))
    return out


def _expected_log_ratio(
    model: LinearGaussianModel, q: Gaussian, x: FloatArray, mean: FloatArray, cov: FloatArray
) -> float:
    """E over z ~ N(mean, cov) (cov may be singular) of log p(x, z) - log q(z)."""
    k, d = model.latent_dim, model.data_dim
    residual = model._noise.whiten(x - model.bias - model.weights @ mean)
    weights = model._marginal.whitened_weights
    ell = -0.5 * (
        d * LOG_2PI
        + model._noise.logdet
        + residual @ residual
        + float(np.trace(weights.T @ weights @ cov))
    )

    def expected_log_density(g: Gaussian) -> float:
        precision = g.precision
        offset = mean - g.mean
        return -0.5 * (
            k * LOG_2PI
            + float(g.log_det_cov)
            + float(np.trace(precision @ cov))
            + float(offset @ precision @ offset)
        )

    return float(ell + expected_log_density(model.prior) - expected_log_density(q))


def _pathwise_value(model: LinearGaussianModel, q: Gaussian, x: FloatArray, z: FloatArray) -> float:
    return float(np.mean(model.log_joint(x, z) - q.log_prob(z)))


def _flat_gradient(model: LinearGaussianModel, q: Gaussian, x: FloatArray) -> FloatArray:
    grads = model.elbo_grad_variational(q, x)
    rows, cols = np.tril_indices(q.dim)
    return np.concatenate([grads.mean.reshape(-1), grads.scale_tril[rows, cols]])


def _flatten(pair: tuple[FloatArray, FloatArray]) -> FloatArray:
    rows, cols = np.tril_indices(pair[1].shape[0])
    return np.concatenate([pair[0], pair[1][rows, cols]])
