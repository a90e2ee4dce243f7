"""A catalogue of minibatch ELBO estimators, correct and buggy, for verify_minibatch_elbo.

Each function is written the way a user writes a subsampled ELBO from scratch: plain
numpy on ``model.weights``, ``model.bias``, ``model.noise_cov``, ``model.prior`` and
``q.mean`` / ``q.cov`` / ``q.scale_tril`` (or an encoder's ``matrix``, ``offset`` and
``scale_tril``), with the dataset size a constant of the user's code and the batch size
read from the batch -- never by calling the oracle and perturbing its value.

The buggy ones are the scaling mistakes seen in real code: the batch log-likelihood not
scaled by N/M under a global KL (mgplvm #19), the global KL scaled by N/M with it, the
local rows' KL left unscaled while the likelihood is scaled, the scale applied twice,
(N/M)^2 (the value-level analogue of pyro #531, where a score-function term under
subsampling got scale^2), a minibatch mean where the sum estimate belongs, and a loss
returned where the ELBO is meant. Each row names the diagnosis substring its failure
must contain (None for the correct ones).

Used by ``tests/test_minibatch.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from elbo_check.testing import VerificationReport, verify_minibatch_elbo

LOG_2PI = math.log(2.0 * math.pi)

#: The N of every implementation here (a constant of the user's training script); the
#: batch size M is read from the batch.
DATASET_SIZE = 12
BATCH_SIZE = 4


@dataclass(frozen=True)
class Implementation:
    """One minibatch estimator, the options it is verified with, and the verdict due."""

    name: str
    description: str
    fn: Callable[..., Any]
    latent: str = "local"
    amortised: bool = False
    mode: str = "exact"
    reduction: str = "sum"
    diagnosis: str | None = None  # a substring of the Diagnosis line; None: correct

    def options(self) -> dict[str, Any]:
        return {
            "dataset_size": DATASET_SIZE,
            "batch_size": BATCH_SIZE,
            "latent": self.latent,
            "amortised": self.amortised,
            "mode": self.mode,
            "reduction": self.reduction,
        }

    def verify(self, **overrides: Any) -> VerificationReport:
        """Run the verifier (profile ``dev`` unless overridden); AssertionError if caught."""
        options: dict[str, Any] = {"profile": "dev", **self.options(), **overrides}
        return verify_minibatch_elbo(self.fn, **options)


# --------------------------------------------------------------------------- helpers
# A user's own utilities: dense noise, Gaussian log densities, closed-form terms.
def noise_matrix(model: Any) -> np.ndarray:
    noise = np.asarray(model.noise_cov, dtype=float)
    d = model.weights.shape[0]
    if noise.ndim == 0:
        return float(noise) * np.eye(d)
    return np.diag(noise) if noise.ndim == 1 else noise


def log_normal(points: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """log N(points; mean, cov) over the last axis (cov one matrix or one per row)."""
    factor = np.linalg.cholesky(cov)
    diff = points - mean
    white = np.linalg.solve(factor, diff[..., None])[..., 0]
    log_det = 2.0 * np.sum(np.log(np.diagonal(factor, axis1=-2, axis2=-1)), axis=-1)
    result: np.ndarray = -0.5 * (points.shape[-1] * LOG_2PI + log_det + np.sum(white**2, axis=-1))
    return result


def expected_log_lik_rows(model: Any, mean: np.ndarray, cov: np.ndarray, x: np.ndarray) -> Any:
    """E_{q_i}[log N(x_i; W z + b, Psi)] per row: mean (M, K), cov (M, K, K) or (K, K)."""
    w, psi = model.weights, noise_matrix(model)
    resid = x - mean @ w.T - model.bias
    quad = np.sum(resid * np.linalg.solve(psi, resid.T).T, axis=1)
    spread = np.einsum("dk,...kl,el,ed->...", w, cov, w, np.linalg.inv(psi))
    log_det = np.linalg.slogdet(psi)[1]
    return -0.5 * (w.shape[0] * LOG_2PI + log_det + quad + spread)


def kl_rows(mean: np.ndarray, cov: np.ndarray, prior: Any) -> Any:
    """KL(N(m_i, S_i) || p(z)) per row (or for one Gaussian)."""
    precision = np.linalg.inv(prior.cov)
    diff = mean - prior.mean
    trace = np.einsum("kl,...lk->...", precision, cov)
    maha = np.einsum("...k,kl,...l->...", diff, precision, diff)
    log_ratio = np.linalg.slogdet(prior.cov)[1] - np.linalg.slogdet(cov)[1]
    return 0.5 * (trace + maha - mean.shape[-1] + log_ratio)


def regression_log_lik(model: Any, q: Any, y: np.ndarray) -> float:
    """sum_i E_q[log N(y_i; phi_i . w + b_i, sigma_i^2)] over the batch (one q)."""
    var = np.broadcast_to(np.asarray(model.noise_cov, dtype=float), y.shape)
    phi = model.weights
    resid = y - phi @ q.mean - model.bias
    spread = np.einsum("ik,kl,il->i", phi, q.cov, phi)
    return float(-0.5 * np.sum(np.log(2.0 * np.pi * var) + (resid**2 + spread) / var))


def encoded(encoder: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The encoder's q(z | x_i): means (M, K) and the shared covariance (K, K)."""
    factor = encoder.scale_tril
    return x @ encoder.matrix.T + encoder.offset, factor @ factor.T


# --------------------------------------------------------------------------- exact: local
def local_elbo(model: Any, q: Any, x: np.ndarray) -> float:
    """(N/M) sum_batch [E log p(x_i|z_i) - KL(q_i || p(z))]."""
    scale = DATASET_SIZE / len(x)
    ell = expected_log_lik_rows(model, q.mean, q.cov, x)
    return float(scale * np.sum(ell - kl_rows(q.mean, q.cov, model.prior)))


def local_kl_unscaled(model: Any, q: Any, x: np.ndarray) -> float:
    scale = DATASET_SIZE / len(x)
    ell = expected_log_lik_rows(model, q.mean, q.cov, x)
    return float(scale * np.sum(ell) - np.sum(kl_rows(q.mean, q.cov, model.prior)))


def local_minibatch_mean(model: Any, q: Any, x: np.ndarray) -> float:
    ell = expected_log_lik_rows(model, q.mean, q.cov, x)
    return float(np.mean(ell - kl_rows(q.mean, q.cov, model.prior)))


def local_scaled_twice(model: Any, q: Any, x: np.ndarray) -> float:
    scale = DATASET_SIZE / len(x)
    return scale * local_elbo(model, q, x)  # local_elbo scales already


def local_loss(model: Any, q: Any, x: np.ndarray) -> float:
    return -local_elbo(model, q, x)


def amortised_elbo(model: Any, encoder: Any, x: np.ndarray, *, kl_scaled: bool = True) -> float:
    mean, cov = encoded(encoder, x)
    scale = DATASET_SIZE / len(x)
    ell = np.sum(expected_log_lik_rows(model, mean, cov, x))
    kl = np.sum(kl_rows(mean, cov, model.prior))
    return float(scale * ell - (scale if kl_scaled else 1.0) * kl)


# --------------------------------------------------------------------------- exact: global
def regression_elbo(model: Any, q: Any, y: np.ndarray) -> float:
    """(N/M) sum_batch E log p(y_i|w) - KL(q || p(w))."""
    scale = DATASET_SIZE / len(y)
    return scale * regression_log_lik(model, q, y) - float(kl_rows(q.mean, q.cov, model.prior))


def regression_scaled_twice(model: Any, q: Any, y: np.ndarray) -> float:
    """The batch log-likelihood scaled once by hand and once more by a helper that scales."""
    scale = DATASET_SIZE / len(y)
    scaled = scale * regression_log_lik(model, q, y)  # the helper returned it scaled
    return scale * scaled - float(kl_rows(q.mean, q.cov, model.prior))


def regression_kl_added(model: Any, q: Any, y: np.ndarray) -> float:
    scale = DATASET_SIZE / len(y)
    return scale * regression_log_lik(model, q, y) + float(kl_rows(q.mean, q.cov, model.prior))


def regression_unscaled(model: Any, q: Any, y: np.ndarray) -> float:
    """log p(batch) - KL (mgplvm #19)."""
    return regression_log_lik(model, q, y) - float(kl_rows(q.mean, q.cov, model.prior))


def regression_kl_scaled(model: Any, q: Any, y: np.ndarray) -> float:
    """(N/M) (log p(batch) - KL): the global KL scaled with the batch."""
    scale = DATASET_SIZE / len(y)
    return scale * regression_unscaled(model, q, y)


def regression_batch_mean(model: Any, q: Any, y: np.ndarray) -> float:
    """mean over the batch of E log p(y_i|w), minus the KL."""
    return regression_log_lik(model, q, y) / len(y) - float(kl_rows(q.mean, q.cov, model.prior))


def regression_per_datum(model: Any, q: Any, y: np.ndarray) -> float:
    """The per-datum ELBO: the batch mean of E log p(y_i|w) minus KL / N."""
    kl = float(kl_rows(q.mean, q.cov, model.prior))
    return regression_log_lik(model, q, y) / len(y) - kl / DATASET_SIZE


def local_per_datum(model: Any, q: Any, x: np.ndarray) -> float:
    """The per-datum ELBO: the batch mean of the rows' ELBOs."""
    return local_minibatch_mean(model, q, x)


def local_sum_for_mean(model: Any, q: Any, x: np.ndarray) -> float:
    """The dataset ELBO estimate where the per-datum one was asked for."""
    return local_elbo(model, q, x)


# --------------------------------------------------------------------------- Monte Carlo
def local_mc(model: Any, q: Any, x: np.ndarray, rng: np.random.Generator, n_samples: int) -> float:
    """(N/M) sum_batch [mean_s log p(x_i|z_is) - KL(q_i || p(z))], z_is = m_i + L_i eps."""
    scale = DATASET_SIZE / len(x)
    eps = rng.standard_normal((n_samples, *q.mean.shape))  # (S, M, K)
    z = q.mean + np.einsum("mkl,sml->smk", q.scale_tril, eps)
    lik = log_normal(x, z @ model.weights.T + model.bias, noise_matrix(model))  # (S, M)
    kl_terms = kl_rows(q.mean, q.cov, model.prior)
    return float(scale * (np.sum(lik.mean(axis=0)) - np.sum(kl_terms)))


def local_mc_kl_unscaled(
    model: Any, q: Any, x: np.ndarray, rng: np.random.Generator, n_samples: int
) -> float:
    scale = DATASET_SIZE / len(x)
    eps = rng.standard_normal((n_samples, *q.mean.shape))
    z = q.mean + np.einsum("mkl,sml->smk", q.scale_tril, eps)
    lik = log_normal(x, z @ model.weights.T + model.bias, noise_matrix(model))
    return float(scale * np.sum(lik.mean(axis=0)) - np.sum(kl_rows(q.mean, q.cov, model.prior)))


def regression_mc(
    model: Any,
    q: Any,
    y: np.ndarray,
    rng: np.random.Generator,
    n_samples: int,
    *,
    power: int = 1,
    kl_scaled: bool = False,
) -> float:
    """Joint form: mean_s [(N/M)^power sum_batch log p(y_i|w_s) + log p(w_s) - log q(w_s)]."""
    scale = (DATASET_SIZE / len(y)) ** power
    w = q.mean + rng.standard_normal((n_samples, q.mean.shape[0])) @ q.scale_tril.T
    var = np.broadcast_to(np.asarray(model.noise_cov, dtype=float), y.shape)
    resid = y - w @ model.weights.T - model.bias  # (S, M)
    lik = -0.5 * np.sum(np.log(2.0 * np.pi * var) + resid**2 / var, axis=1)
    log_ratio = log_normal(w, model.prior.mean, model.prior.cov) - log_normal(w, q.mean, q.cov)
    kl_factor = DATASET_SIZE / len(y) if kl_scaled else 1.0
    return float(np.mean(scale * lik + kl_factor * log_ratio))


# --------------------------------------------------------------------------- the catalogue
def _with(fn: Callable[..., Any], **fixed: Any) -> Callable[..., Any]:
    def bound(*args: Any) -> Any:
        return fn(*args, **fixed)

    bound.__name__ = fn.__name__
    return bound


CORRECT: list[Implementation] = [
    Implementation("local", "(N/M) sum_batch of the rows' exact ELBOs", local_elbo),
    Implementation(
        "local amortised", "the same with an encoder's q(z|x_i)", amortised_elbo, amortised=True
    ),
    Implementation("global", "(N/M) log p(batch) - KL, exact", regression_elbo, latent="global"),
    Implementation(
        "local MC",
        "reparameterised log-likelihood, analytic KL, all scaled by N/M",
        local_mc,
        mode="statistical",
    ),
    Implementation(
        "global MC",
        "joint form: (N/M) log p(batch | w) + log p(w) - log q(w), w ~ q",
        regression_mc,
        latent="global",
        mode="statistical",
    ),
    Implementation(
        "local mean", "the per-datum ELBO: the batch mean", local_per_datum, reduction="mean"
    ),
    Implementation(
        "global mean",
        "the per-datum ELBO: mean_batch E log p(y_i|w) - KL / N",
        regression_per_datum,
        latent="global",
        reduction="mean",
    ),
]

BUGS: list[Implementation] = [
    Implementation(
        "global unscaled likelihood (mgplvm #19)",
        "log p(batch) - KL",
        regression_unscaled,
        latent="global",
        diagnosis="the batch log-likelihood is not scaled by N/M = 3 (log p(batch) - KL",
    ),
    Implementation(
        "global KL scaled",
        "(N/M) (log p(batch) - KL)",
        regression_kl_scaled,
        latent="global",
        diagnosis="the global latent's KL is scaled by N/M = 3; it enters the dataset ELBO once",
    ),
    Implementation(
        "local KL unscaled",
        "(N/M) sum_batch E log p(x_i|z_i) - sum_batch KL(q_i || p(z))",
        local_kl_unscaled,
        diagnosis="the batch rows' KL terms are not scaled by N/M = 3",
    ),
    Implementation(
        "amortised KL unscaled",
        "the encoder's version of the same",
        _with(amortised_elbo, kl_scaled=False),
        amortised=True,
        diagnosis="the batch rows' KL terms are not scaled by N/M = 3",
    ),
    Implementation(
        "local scaled twice",
        "(N/M)^2 sum_batch [...]: the scale applied twice",
        local_scaled_twice,
        diagnosis="scaled by (N/M)^2 = 9 instead of N/M = 3",
    ),
    Implementation(
        "global likelihood scaled twice",
        "(N/M)^2 log p(batch) - KL",
        regression_scaled_twice,
        latent="global",
        diagnosis="the batch log-likelihood is scaled by (N/M)^2 = 9 instead of N/M = 3",
    ),
    Implementation(
        "local minibatch mean",
        "mean_batch [E log p(x_i|z_i) - KL(q_i || p(z))] where the sum estimate belongs",
        local_minibatch_mean,
        diagnosis="the minibatch mean: this is (1/N) times the dataset ELBO -- pass "
        "reduction='mean'",
    ),
    Implementation(
        "global batch mean",
        "mean_batch E log p(y_i|w) - KL",
        regression_batch_mean,
        latent="global",
        diagnosis="the batch log-likelihood is averaged over the batch (1/M = 0.25) instead "
        "of scaled by N/M = 3",
    ),
    Implementation(
        "local loss", "-ELBO estimate", local_loss, diagnosis="the sign is flipped (a loss)"
    ),
    Implementation(
        "global KL added",
        "(N/M) log p(batch) + KL",
        regression_kl_added,
        latent="global",
        diagnosis="the global latent's KL is added instead of subtracted",
    ),
    Implementation(
        "sum for mean",
        "the dataset ELBO estimate under reduction='mean'",
        local_sum_for_mean,
        reduction="mean",
        diagnosis="N times the per-datum ELBO that reduction='mean' targets",
    ),
    Implementation(
        "global MC scale squared (pyro #531 analogue)",
        "(N/M)^2 on the sampled batch log-likelihood",
        _with(regression_mc, power=2),
        latent="global",
        mode="statistical",
        diagnosis="the batch log-likelihood is scaled by (N/M)^2 = 9 instead of N/M = 3",
    ),
    Implementation(
        "global MC KL scaled",
        "(N/M) on log p(w) - log q(w) too",
        _with(regression_mc, kl_scaled=True),
        latent="global",
        mode="statistical",
        diagnosis="the global latent's KL is scaled by N/M = 3",
    ),
    Implementation(
        "local MC KL unscaled",
        "sampled likelihood scaled by N/M, the rows' analytic KL not",
        local_mc_kl_unscaled,
        mode="statistical",
        diagnosis="the batch rows' KL terms are not scaled by N/M = 3",
    ),
]
