"""A catalogue of realistic buggy ELBO / KL / evidence / estimator / gradient code.

Every function here is written the way a user writes it from scratch: plain numpy on
``model.weights``, ``model.bias``, ``model.prior.mean`` / ``.cov``, ``model.noise_cov``
(a scalar, a ``(D,)`` vector of variances or a ``(D, D)`` matrix) and ``q.mean``,
``q.cov``, ``q.scale_tril`` -- never by calling the oracle and perturbing its value.
Each kind has one CORRECT reference implementation (``CORRECT``) and several buggy
ones (``BUGS``); each buggy entry names the verifier call that should catch it and,
where a suspect catalogue in ``elbo_check/testing/_suspects.py`` has a matching
suspect, the suspect name the diagnosis line should give.

Used by ``tests/test_kill_matrix.py`` and ``benchmarks/kill_matrix.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from elbo_check import testing

LOG_2PI = math.log(2.0 * math.pi)

FloatArray = np.ndarray


# --------------------------------------------------------------------------- kinds
#: kind -> (verifier, the options every call of that kind passes)
KINDS: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = {
    "elbo": (testing.verify_elbo, {}),
    "kl": (testing.verify_kl, {}),
    "evidence": (testing.verify_log_evidence, {}),
    "estimator": (testing.verify_elbo_estimator, {"mode": "statistical"}),
    "pathwise": (testing.verify_elbo_estimator, {"mode": "pathwise"}),
    "gradient": (testing.verify_elbo_gradient, {"mode": "exact"}),
    "statistical_gradient": (testing.verify_elbo_gradient, {"mode": "statistical"}),
    "batched_elbo": (testing.verify_elbo, {"batch_size": 4}),
    "batched_kl": (testing.verify_kl, {"batch_size": 4}),
}

SIGNATURES = {
    "elbo": "fn(model, q, x)",
    "kl": "fn(p, q) = KL(p || q)",
    "evidence": "fn(model, x)",
    "estimator": "fn(model, q, x, rng, n_samples)",
    "pathwise": "fn(model, q, x, eps)",
    "gradient": "fn(model, q, x) -> (grad_mean, grad_scale_tril)",
    "statistical_gradient": "fn(model, q, x, rng, n_samples) -> (grad_mean, grad_scale_tril)",
    "batched_elbo": "fn(model, q, x) -> (B,): x (B, D), q.scale_tril (B, K, K)",
    "batched_kl": "fn(p, q) -> (B,): batches of B Gaussians, a covariance each",
}


@dataclass(frozen=True)
class Implementation:
    """One implementation: what it is, the code, and how it is to be verified.

    ``options`` are the verifier options beyond those of its kind (``KINDS``);
    ``diagnosis`` is the suspect name the failure's diagnosis line should contain, or
    None where no catalogue can name the bug. ``known_gap`` says why the call does NOT
    catch the bug yet (a documented weakness of the verifier; the test is a strict xfail).
    """

    name: str
    kind: str
    description: str
    fn: Callable[..., Any]
    options: dict[str, Any] = field(default_factory=dict)
    diagnosis: str | None = None
    known_gap: str | None = None

    @property
    def verifier(self) -> Callable[..., Any]:
        return KINDS[self.kind][0]

    def all_options(self) -> dict[str, Any]:
        return {**KINDS[self.kind][1], **self.options}

    def call_text(self) -> str:
        """The verifier call as a user would write it."""
        options = ", ".join(f"{k}={v!r}" for k, v in self.all_options().items())
        return f"{self.verifier.__name__}(fn{', ' + options if options else ''})"

    def verify(self, **overrides: Any) -> Any:
        """Run the verifier on this implementation; AssertionError when caught.

        The profile is ``dev`` (the default a user gets) unless overridden, so the
        matrix measures the same settings in CI, where the default would be ``ci``."""
        options = {"profile": "dev", **self.all_options(), **overrides}
        return self.verifier(self.fn, **options)


# --------------------------------------------------------------------------- helpers
# What a user's own small utility module looks like.
def noise_matrix(model: Any) -> FloatArray:
    """Psi as a dense (D, D) matrix, whatever form ``model.noise_cov`` has."""
    noise = np.asarray(model.noise_cov, dtype=float)
    d = model.weights.shape[0]
    if noise.ndim == 0:
        return float(noise) * np.eye(d)
    if noise.ndim == 1:
        return np.diag(noise)
    return noise


def logdet(matrix: FloatArray) -> float:
    sign, value = np.linalg.slogdet(matrix)
    assert sign > 0
    return float(value)


def log_normal(x: FloatArray, mean: FloatArray, cov: FloatArray) -> FloatArray:
    """log N(x; mean, cov) for x of shape (d,) or rows of shape (n, d)."""
    factor = np.linalg.cholesky(cov)
    diff = np.atleast_2d(x - mean)
    white = np.linalg.solve(factor, diff.T)
    d = cov.shape[0]
    values = -0.5 * (d * LOG_2PI + 2.0 * np.sum(np.log(np.diag(factor))) + np.sum(white**2, axis=0))
    return values if np.ndim(x - mean) > 1 else values[0]


def expected_log_likelihood(model: Any, m: FloatArray, cov: FloatArray, x: FloatArray) -> float:
    """E_q[log N(x; W z + b, Psi)] for q = N(m, cov)."""
    w, b = model.weights, model.bias
    psi = noise_matrix(model)
    psi_inv = np.linalg.inv(psi)
    r = x - w @ m - b
    return float(
        -0.5
        * (len(x) * LOG_2PI + logdet(psi) + r @ psi_inv @ r + np.trace(psi_inv @ w @ cov @ w.T))
    )


def gaussian_kl(m1: FloatArray, s1: FloatArray, m0: FloatArray, s0: FloatArray) -> float:
    """KL(N(m1, s1) || N(m0, s0)), the textbook formula."""
    k = len(m1)
    s0_inv = np.linalg.inv(s0)
    diff = m1 - m0
    return float(0.5 * (np.trace(s0_inv @ s1) + diff @ s0_inv @ diff - k + logdet(s0) - logdet(s1)))


def _per_data_dim_log_likelihood(model: Any, q: Any, x: FloatArray) -> FloatArray:
    """E_q[log p(x|z)] split over the D (whitened) data dimensions."""
    chol = np.linalg.cholesky(noise_matrix(model))
    white_residual = np.linalg.solve(chol, x - model.weights @ q.mean - model.bias)
    white_spread = np.linalg.solve(chol, model.weights @ q.scale_tril)
    return -0.5 * (
        LOG_2PI + 2.0 * np.log(np.diag(chol)) + white_residual**2 + np.sum(white_spread**2, axis=1)
    )


# =========================================================================== ELBO
def elbo_correct(model: Any, q: Any, x: FloatArray) -> float:
    """Reconstruction minus KL(q || prior), both in closed form."""
    prior = model.prior
    return expected_log_likelihood(model, q.mean, q.cov, x) - gaussian_kl(
        q.mean, q.cov, prior.mean, prior.cov
    )


def elbo_missing_entropy(model: Any, q: Any, x: FloatArray) -> float:
    # "E_q[log p(x, z)]" form, forgetting + H(q).
    m, s = q.mean, q.cov
    mu0, s0 = model.prior.mean, model.prior.cov
    s0_inv = np.linalg.inv(s0)
    cross_entropy = 0.5 * (
        len(m) * LOG_2PI + logdet(s0) + np.trace(s0_inv @ s) + (m - mu0) @ s0_inv @ (m - mu0)
    )
    return expected_log_likelihood(model, m, s, x) - cross_entropy


def elbo_kl_mean_over_latent(model: Any, q: Any, x: FloatArray) -> float:
    # Per-dimension KL terms in the prior's whitened coordinates, then .mean() over K.
    l0 = np.linalg.cholesky(model.prior.cov)
    ratio = np.linalg.solve(l0, q.scale_tril)
    white_mean = np.linalg.solve(l0, q.mean - model.prior.mean)
    per_dim = 0.5 * (
        np.sum(ratio**2, axis=1) + white_mean**2 - 1.0 - 2.0 * np.log(np.abs(np.diag(ratio)))
    )
    return expected_log_likelihood(model, q.mean, q.cov, x) - float(np.mean(per_dim))


def elbo_ell_mean_over_data(model: Any, q: Any, x: FloatArray) -> float:
    # Per-data-dimension log-likelihood, then .mean() over D.
    ell = float(np.mean(_per_data_dim_log_likelihood(model, q, x)))
    return ell - gaussian_kl(q.mean, q.cov, model.prior.mean, model.prior.cov)


def elbo_q_variance_as_std(model: Any, q: Any, x: FloatArray) -> float:
    # Treats q's covariance as its scale: "std" = cov, so the covariance becomes cov @ cov.T.
    q_std = q.cov
    cov = q_std @ q_std.T
    return expected_log_likelihood(model, q.mean, cov, x) - gaussian_kl(
        q.mean, cov, model.prior.mean, model.prior.cov
    )


def elbo_noise_variance_as_std(model: Any, q: Any, x: FloatArray) -> float:
    # Believes noise_cov holds sigma, so squares it to get the variance.
    sigma = np.asarray(model.noise_cov, dtype=float)
    if sigma.ndim == 2:
        psi = sigma @ sigma.T
    elif sigma.ndim == 1:
        psi = np.diag(sigma**2)
    else:
        psi = float(sigma) ** 2 * np.eye(len(x))
    w, b, m = model.weights, model.bias, q.mean
    psi_inv = np.linalg.inv(psi)
    r = x - w @ m - b
    ell = -0.5 * (
        len(x) * LOG_2PI + logdet(psi) + r @ psi_inv @ r + np.trace(psi_inv @ w @ q.cov @ w.T)
    )
    return float(ell) - gaussian_kl(m, q.cov, model.prior.mean, model.prior.cov)


def elbo_cholesky_transposed(model: Any, q: Any, x: FloatArray) -> float:
    # Builds the covariance from the factor the wrong way round: S = L^T L.
    factor = q.scale_tril
    cov = factor.T @ factor
    return expected_log_likelihood(model, q.mean, cov, x) - gaussian_kl(
        q.mean, cov, model.prior.mean, model.prior.cov
    )


def elbo_prior_standard_normal(model: Any, q: Any, x: FloatArray) -> float:
    # The VAE habit: KL to N(0, I) whatever the model's prior is.
    k = len(q.mean)
    return expected_log_likelihood(model, q.mean, q.cov, x) - gaussian_kl(
        q.mean, q.cov, np.zeros(k), np.eye(k)
    )


def elbo_prior_mean_ignored(model: Any, q: Any, x: FloatArray) -> float:
    m, s, s0 = q.mean, q.cov, model.prior.cov
    s0_inv = np.linalg.inv(s0)
    kl = 0.5 * (np.trace(s0_inv @ s) + m @ s0_inv @ m - len(m) + logdet(s0) - logdet(s))
    return expected_log_likelihood(model, m, s, x) - float(kl)


def elbo_bias_ignored(model: Any, q: Any, x: FloatArray) -> float:
    w, m, s = model.weights, q.mean, q.cov
    psi = noise_matrix(model)
    psi_inv = np.linalg.inv(psi)
    r = x - w @ m  # forgot - b
    ell = -0.5 * (
        len(x) * LOG_2PI + logdet(psi) + r @ psi_inv @ r + np.trace(psi_inv @ w @ s @ w.T)
    )
    return float(ell) - gaussian_kl(m, s, model.prior.mean, model.prior.cov)


def elbo_logdet_via_det(model: Any, q: Any, x: FloatArray) -> float:
    # log det through np.linalg.det: exact at moderate scales, inf / -inf / nan when
    # the determinant under- or overflows.
    w, b, m, s = model.weights, model.bias, q.mean, q.cov
    mu0, s0 = model.prior.mean, model.prior.cov
    psi = noise_matrix(model)
    psi_inv, s0_inv = np.linalg.inv(psi), np.linalg.inv(s0)
    r = x - w @ m - b
    ell = -0.5 * (
        len(x) * LOG_2PI
        + np.log(np.linalg.det(psi))
        + r @ psi_inv @ r
        + np.trace(psi_inv @ w @ s @ w.T)
    )
    kl = 0.5 * (
        np.trace(s0_inv @ s)
        + (m - mu0) @ s0_inv @ (m - mu0)
        - len(m)
        + np.log(np.linalg.det(s0))
        - np.log(np.linalg.det(s))
    )
    return float(ell - kl)


def elbo_kl_per_data_dim(model: Any, q: Any, x: FloatArray) -> float:
    # Batch-axis confusion: the per-dimension log-likelihood vector (D,) is treated as
    # D observations, the KL broadcast against it and everything summed -> KL counted D times.
    per_dim = _per_data_dim_log_likelihood(model, q, x)
    kl = gaussian_kl(q.mean, q.cov, model.prior.mean, model.prior.cov)
    return float(np.sum(per_dim - kl))


def elbo_reconstruction_at_mean(model: Any, q: Any, x: FloatArray) -> float:
    # log p(x | z = m) instead of E_q[log p(x | z)]: no trace term.
    w, b = model.weights, model.bias
    ell = log_normal(x, w @ q.mean + b, noise_matrix(model))
    return float(ell) - gaussian_kl(q.mean, q.cov, model.prior.mean, model.prior.cov)


def elbo_prior_mean_sign(model: Any, q: Any, x: FloatArray) -> float:
    # Sign slip in the prior's Mahalanobis term: (m + mu0) instead of (m - mu0).
    m, s, mu0, s0 = q.mean, q.cov, model.prior.mean, model.prior.cov
    s0_inv = np.linalg.inv(s0)
    diff = m + mu0
    kl = 0.5 * (np.trace(s0_inv @ s) + diff @ s0_inv @ diff - len(m) + logdet(s0) - logdet(s))
    return expected_log_likelihood(model, m, s, x) - float(kl)


def elbo_prior_trace_diagonal(model: Any, q: Any, x: FloatArray) -> float:
    # tr(S0^-1 S) computed as if both were diagonal.
    m, s, mu0, s0 = q.mean, q.cov, model.prior.mean, model.prior.cov
    s0_inv = np.linalg.inv(s0)
    trace = np.sum(np.diag(s) / np.diag(s0))
    kl = 0.5 * (trace + (m - mu0) @ s0_inv @ (m - mu0) - len(m) + logdet(s0) - logdet(s))
    return expected_log_likelihood(model, m, s, x) - float(kl)


# =========================================================================== KL
def kl_correct(p: Any, q: Any) -> float:
    return gaussian_kl(p.mean, p.cov, q.mean, q.cov)


def kl_arguments_reversed(p: Any, q: Any) -> float:
    # KL(q || p): the arguments of the textbook formula swapped.
    return gaussian_kl(q.mean, q.cov, p.mean, p.cov)


def kl_missing_mean_term(p: Any, q: Any) -> float:
    q_inv = np.linalg.inv(q.cov)
    k = len(p.mean)
    return float(0.5 * (np.trace(q_inv @ p.cov) - k + logdet(q.cov) - logdet(p.cov)))


def kl_diagonal_only(p: Any, q: Any) -> float:
    # The mean-field formula applied to full covariances: only the variances are read.
    vp, vq = np.diag(p.cov), np.diag(q.cov)
    diff = p.mean - q.mean
    return float(0.5 * np.sum(vp / vq + diff**2 / vq - 1.0 + np.log(vq) - np.log(vp)))


def kl_mean_over_dims(p: Any, q: Any) -> float:
    # Per-dimension terms in q's whitened coordinates, then .mean() instead of .sum().
    lq = np.linalg.cholesky(q.cov)
    ratio = np.linalg.solve(lq, p.scale_tril)
    white = np.linalg.solve(lq, p.mean - q.mean)
    per_dim = 0.5 * (
        np.sum(ratio**2, axis=1) + white**2 - 1.0 - 2.0 * np.log(np.abs(np.diag(ratio)))
    )
    return float(np.mean(per_dim))


# =========================================================================== evidence
def evidence_correct(model: Any, x: FloatArray) -> float:
    w, b, mu0, s0 = model.weights, model.bias, model.prior.mean, model.prior.cov
    cov = w @ s0 @ w.T + noise_matrix(model)
    return float(log_normal(x, w @ mu0 + b, cov))


def evidence_missing_weight_cov(model: Any, x: FloatArray) -> float:
    # Marginal covariance taken as Psi alone: W S0 W^T forgotten.
    w, b, mu0 = model.weights, model.bias, model.prior.mean
    return float(log_normal(x, w @ mu0 + b, noise_matrix(model)))


def evidence_noise_std_as_variance(model: Any, x: FloatArray) -> float:
    # Adds the noise standard deviation (sqrt Psi) where the variance Psi belongs.
    w, b, mu0, s0 = model.weights, model.bias, model.prior.mean, model.prior.cov
    psi = noise_matrix(model)
    values, vectors = np.linalg.eigh(psi)
    noise_std = (vectors * np.sqrt(values)) @ vectors.T
    return float(log_normal(x, w @ mu0 + b, w @ s0 @ w.T + noise_std))


def evidence_prior_cov_identity(model: Any, x: FloatArray) -> float:
    # W W^T + Psi: the prior covariance assumed to be the identity.
    w, b, mu0 = model.weights, model.bias, model.prior.mean
    return float(log_normal(x, w @ mu0 + b, w @ w.T + noise_matrix(model)))


# =========================================================================== estimators
def _log_joint(model: Any, x: FloatArray, z: FloatArray) -> FloatArray:
    """log p(x | z) + log p(z) for rows z of shape (n, K)."""
    means = z @ model.weights.T + model.bias
    log_lik = log_normal(x - means, np.zeros(len(x)), noise_matrix(model))
    return log_lik + log_normal(z, model.prior.mean, model.prior.cov)


def estimator_correct(model: Any, q: Any, x: FloatArray, rng: Any, n_samples: int) -> float:
    eps = rng.standard_normal((n_samples, len(q.mean)))
    z = q.mean + eps @ q.scale_tril.T
    return float(np.mean(_log_joint(model, x, z) - log_normal(z, q.mean, q.cov)))


def estimator_shared_noise(model: Any, q: Any, x: FloatArray, rng: Any, n_samples: int) -> float:
    # One normal draw per sample, broadcast over the K latent dimensions.
    eps = rng.standard_normal((n_samples, 1)) * np.ones(len(q.mean))
    z = q.mean + eps @ q.scale_tril.T
    return float(np.mean(_log_joint(model, x, z) - log_normal(z, q.mean, q.cov)))


def estimator_n_minus_one(model: Any, q: Any, x: FloatArray, rng: Any, n_samples: int) -> float:
    # "Unbiased" like a sample variance: divides the sum by n - 1.
    eps = rng.standard_normal((n_samples, len(q.mean)))
    z = q.mean + eps @ q.scale_tril.T
    total = np.sum(_log_joint(model, x, z) - log_normal(z, q.mean, q.cov))
    return float(total / (n_samples - 1))


def estimator_cov_as_scale(model: Any, q: Any, x: FloatArray, rng: Any, n_samples: int) -> float:
    # z = m + S eps: the covariance used as the scale.
    eps = rng.standard_normal((n_samples, len(q.mean)))
    z = q.mean + eps @ q.cov.T
    return float(np.mean(_log_joint(model, x, z) - log_normal(z, q.mean, q.cov)))


def estimator_cholesky_transposed(
    model: Any, q: Any, x: FloatArray, rng: Any, n_samples: int
) -> float:
    # z = m + L^T eps (row vectors: eps @ L instead of eps @ L.T).
    eps = rng.standard_normal((n_samples, len(q.mean)))
    z = q.mean + eps @ q.scale_tril
    return float(np.mean(_log_joint(model, x, z) - log_normal(z, q.mean, q.cov)))


def estimator_missing_log_q(model: Any, q: Any, x: FloatArray, rng: Any, n_samples: int) -> float:
    # Averages log p(x, z) only: the entropy / -log q(z) term is missing.
    eps = rng.standard_normal((n_samples, len(q.mean)))
    z = q.mean + eps @ q.scale_tril.T
    return float(np.mean(_log_joint(model, x, z)))


def _standard_log_normal(eps: FloatArray) -> FloatArray:
    return -0.5 * (eps.shape[-1] * LOG_2PI + np.sum(eps**2, axis=-1))


def pathwise_correct(model: Any, q: Any, x: FloatArray, eps: FloatArray) -> float:
    factor = q.scale_tril
    z = q.mean + eps @ factor.T
    log_q = _standard_log_normal(eps) - np.sum(np.log(np.diag(factor)))  # change of variables
    return float(np.mean(_log_joint(model, x, z) - log_q))


def pathwise_missing_jacobian(model: Any, q: Any, x: FloatArray, eps: FloatArray) -> float:
    # log q(z) taken as log N(eps; 0, I): the Jacobian -sum(log diag L) is forgotten.
    z = q.mean + eps @ q.scale_tril.T
    return float(np.mean(_log_joint(model, x, z) - _standard_log_normal(eps)))


def pathwise_cholesky_transposed(model: Any, q: Any, x: FloatArray, eps: FloatArray) -> float:
    # z = m + L^T eps, with log q evaluated at that z.
    z = q.mean + eps @ q.scale_tril
    return float(np.mean(_log_joint(model, x, z) - log_normal(z, q.mean, q.cov)))


# =========================================================================== gradients
def _posterior_precision(model: Any) -> FloatArray:
    w = model.weights
    return np.linalg.inv(model.prior.cov) + w.T @ np.linalg.inv(noise_matrix(model)) @ w


def _grad_log_joint(model: Any, x: FloatArray, z: FloatArray) -> FloatArray:
    """d/dz [log p(x | z) + log p(z)] at z of shape (K,) or rows (n, K)."""
    w, b = model.weights, model.bias
    psi_inv = np.linalg.inv(noise_matrix(model))
    s0_inv = np.linalg.inv(model.prior.cov)
    residual = x - z @ w.T - b
    return residual @ psi_inv @ w - (z - model.prior.mean) @ s0_inv


def gradient_correct(model: Any, q: Any, x: FloatArray) -> tuple[FloatArray, FloatArray]:
    factor = q.scale_tril
    grad_mean = _grad_log_joint(model, x, q.mean)
    grad_factor = np.tril(-_posterior_precision(model) @ factor) + np.diag(1.0 / np.diag(factor))
    return grad_mean, grad_factor


def gradient_wrong_sign(model: Any, q: Any, x: FloatArray) -> tuple[FloatArray, FloatArray]:
    # The gradient of the loss -ELBO, returned as if it were the ELBO's.
    factor = q.scale_tril
    grad_mean = -_grad_log_joint(model, x, q.mean)
    grad_factor = np.tril(_posterior_precision(model) @ factor) - np.diag(1.0 / np.diag(factor))
    return grad_mean, grad_factor


def gradient_missing_entropy_diagonal(
    model: Any, q: Any, x: FloatArray
) -> tuple[FloatArray, FloatArray]:
    # d/dL of sum(log diag L) forgotten.
    grad_mean = _grad_log_joint(model, x, q.mean)
    return grad_mean, np.tril(-_posterior_precision(model) @ q.scale_tril)


def gradient_wrt_covariance(model: Any, q: Any, x: FloatArray) -> tuple[FloatArray, FloatArray]:
    # dELBO/dS = 1/2 (S^-1 - Lambda) returned where dELBO/dL is wanted.
    grad_mean = _grad_log_joint(model, x, q.mean)
    return grad_mean, 0.5 * (np.linalg.inv(q.cov) - _posterior_precision(model))


def statistical_gradient_correct(
    model: Any, q: Any, x: FloatArray, rng: Any, n_samples: int
) -> tuple[FloatArray, FloatArray]:
    # Reparameterisation gradient of E_q[log p(x, z)] plus the entropy's exact gradient.
    factor = q.scale_tril
    eps = rng.standard_normal((n_samples, len(q.mean)))
    g = _grad_log_joint(model, x, q.mean + eps @ factor.T)  # (n, K)
    grad_mean = g.mean(axis=0)
    grad_factor = np.tril(g.T @ eps / n_samples) + np.diag(1.0 / np.diag(factor))
    return grad_mean, grad_factor


def statistical_gradient_missing_entropy(
    model: Any, q: Any, x: FloatArray, rng: Any, n_samples: int
) -> tuple[FloatArray, FloatArray]:
    # Only the reparameterised E_q[log p(x, z)] part: the entropy's diag(1 / L_ii) is lost.
    eps = rng.standard_normal((n_samples, len(q.mean)))
    g = _grad_log_joint(model, x, q.mean + eps @ q.scale_tril.T)
    return g.mean(axis=0), np.tril(g.T @ eps / n_samples)


def statistical_gradient_wrong_sign(
    model: Any, q: Any, x: FloatArray, rng: Any, n_samples: int
) -> tuple[FloatArray, FloatArray]:
    # The gradient of the loss -ELBO.
    grad_mean, grad_factor = statistical_gradient_correct(model, q, x, rng, n_samples)
    return -grad_mean, -grad_factor


# --------------------------------------------------------------------------- batched
# Minibatch code: x (B, D), q.mean (B, K), q.scale_tril (B, K, K) -> B values.
def _batched_logdet(factor: FloatArray, bug: str) -> FloatArray:
    if bug == "np.diagonal on the batch":
        return 2 * np.sum(np.log(np.abs(np.diagonal(factor))), axis=0)  # axes 0 and 1
    return 2 * np.sum(np.log(np.diagonal(factor, axis1=-2, axis2=-1)), axis=-1)


def batched_elbo(model: Any, q: Any, x: FloatArray, bug: str = "") -> Any:
    w, b = model.weights, model.bias
    d, k = w.shape
    psi = noise_matrix(model)
    psi_inv = np.linalg.inv(psi)
    m, factor = q.mean, q.scale_tril
    if bug == "first row's covariance for all":
        factor = np.broadcast_to(factor[0], factor.shape)
    cov = factor @ np.swapaxes(factor, -1, -2)
    if bug == ".T on the batch":
        cov = factor @ factor.T  # (B, K, K) @ (K, K, B): wrong for B > 1
    r = x - m @ w.T - b
    trace = np.einsum("ij,bji->b", w.T @ psi_inv @ w, cov)
    ell = -0.5 * (d * LOG_2PI + logdet(psi) + np.einsum("bi,ij,bj->b", r, psi_inv, r) + trace)
    s0, mu0 = model.prior.cov, model.prior.mean
    s0_inv = np.linalg.inv(s0)
    delta = m - mu0
    kl_terms = np.einsum("ij,bji->b", s0_inv, cov) + np.einsum("bi,ij,bj->b", delta, s0_inv, delta)
    kl = 0.5 * (kl_terms - k + logdet(s0) - _batched_logdet(factor, bug))
    if bug == "KL averaged over the batch":
        kl = np.full_like(kl, kl.mean())
    if bug == "summed over the batch":
        return float(np.sum(ell - kl))
    if bug == "entropy missing":  # E_q log p(x, z) only: KL replaced by the cross-entropy
        kl = kl + (0.5 * k * (1 + LOG_2PI) + 0.5 * _batched_logdet(factor, ""))
    return ell - kl


def batched_kl(p: Any, q: Any, bug: str = "") -> Any:
    k = p.dim
    q_inv = np.linalg.inv(q.cov)
    delta = q.mean - p.mean
    trace = np.einsum("bij,bji->b", q_inv, p.cov)
    if bug == "summed over the batch axis":
        trace = np.full_like(trace, np.einsum("bij,bji->", q_inv, p.cov))
    mahalanobis = np.einsum("bi,bij,bj->b", delta, q_inv, delta)
    log_dets = np.linalg.slogdet(q.cov)[1] - np.linalg.slogdet(p.cov)[1]
    if bug == "arguments swapped":
        log_dets = -log_dets
    return 0.5 * (trace + mahalanobis - k + log_dets)


def _batched(fn: Callable[..., Any], bug: str) -> Callable[..., Any]:
    def with_bug(*args: Any) -> Any:
        return fn(*args, bug=bug)

    with_bug.__name__ = f"{fn.__name__}[{bug}]"
    return with_bug


# =========================================================================== catalogue
CORRECT: tuple[Implementation, ...] = (
    Implementation("elbo_correct", "elbo", "closed-form reconstruction - KL", elbo_correct),
    Implementation("kl_correct", "kl", "textbook Gaussian KL(p || q)", kl_correct),
    Implementation(
        "evidence_correct", "evidence", "log N(x; W mu0 + b, W S0 W^T + Psi)", evidence_correct
    ),
    Implementation(
        "estimator_correct", "estimator", "reparameterised mean of log p - log q", estimator_correct
    ),
    Implementation(
        "pathwise_correct", "pathwise", "log p(x, z) - log q(z) at z = m + L eps", pathwise_correct
    ),
    Implementation("gradient_correct", "gradient", "closed-form (m, L) gradient", gradient_correct),
    Implementation(
        "statistical_gradient_correct",
        "statistical_gradient",
        "reparameterisation gradient + exact entropy gradient",
        statistical_gradient_correct,
    ),
    Implementation(
        "batched_elbo_correct", "batched_elbo", "minibatch ELBO, a q per row", batched_elbo
    ),
    Implementation("batched_kl_correct", "batched_kl", "minibatch Gaussian KL", batched_kl),
)

_INTERACT = "the members of a batch interact"

BUGS: tuple[Implementation, ...] = (
    # ----------------------------------------------------------------- ELBO
    Implementation(
        "elbo_missing_entropy",
        "elbo",
        "E_q[log p(x, z)] returned without + H(q)",
        elbo_missing_entropy,
        diagnosis="the entropy term H(q) is missing",
    ),
    Implementation(
        "elbo_kl_mean_over_latent",
        "elbo",
        "KL to the prior averaged over latent dimensions instead of summed",
        elbo_kl_mean_over_latent,
        diagnosis="the KL to the prior is averaged over latent dimensions",
    ),
    Implementation(
        "elbo_ell_mean_over_data",
        "elbo",
        "expected log-likelihood averaged over data dimensions instead of summed",
        elbo_ell_mean_over_data,
        diagnosis="the expected log-likelihood is averaged over data dimensions",
    ),
    Implementation(
        "elbo_q_variance_as_std",
        "elbo",
        "q's covariance used as its scale (cov = S S^T)",
        elbo_q_variance_as_std,
        diagnosis="q's covariance is used where its scale",
    ),
    Implementation(
        "elbo_noise_variance_as_std",
        "elbo",
        "noise_cov read as sigma and squared",
        elbo_noise_variance_as_std,
        diagnosis="the noise variance is used where the noise standard deviation belongs",
    ),
    Implementation(
        "elbo_cholesky_transposed",
        "elbo",
        "closed form with S = L^T L",
        elbo_cholesky_transposed,
        diagnosis="q's Cholesky factor is transposed",
    ),
    Implementation(
        "elbo_prior_standard_normal",
        "elbo",
        "KL taken to N(0, I) instead of the model's prior",
        elbo_prior_standard_normal,
        diagnosis="the prior is taken to be the standard normal",
    ),
    Implementation(
        "elbo_prior_mean_ignored",
        "elbo",
        "prior term uses m instead of m - mu0",
        elbo_prior_mean_ignored,
        diagnosis="the prior mean is ignored",
    ),
    Implementation(
        "elbo_bias_ignored",
        "elbo",
        "residual x - W m (offset b forgotten)",
        elbo_bias_ignored,
        diagnosis="the offset b is ignored",
    ),
    Implementation(
        "elbo_logdet_via_det",
        "elbo",
        "log-determinants via np.log(np.linalg.det(.)): fails only when det under/overflows",
        elbo_logdet_via_det,
        options={"extreme_scales": True},
    ),
    Implementation(
        "elbo_logdet_via_det_large_d",
        "elbo",
        "the same np.linalg.det code, verified with D = 30 so that det(Psi) can under/overflow",
        elbo_logdet_via_det,
        options={"extreme_scales": True, "min_data_dim": 30, "max_data_dim": 30},
    ),
    Implementation(
        "elbo_kl_per_data_dim",
        "elbo",
        "KL broadcast against the (D,) per-dimension log-likelihood and summed (x as D rows)",
        elbo_kl_per_data_dim,
        diagnosis="the KL is subtracted once per data dimension",
    ),
    Implementation(
        "elbo_reconstruction_at_mean",
        "elbo",
        "log p(x | z = m): the trace term tr(Psi^-1 W S W^T) is missing",
        elbo_reconstruction_at_mean,
        diagnosis="the trace term -1/2 tr(Psi^-1 W S W^T) of the reconstruction is missing",
    ),
    Implementation(
        "elbo_prior_mean_sign",
        "elbo",
        "prior term uses (m + mu0): shows only with a non-zero prior mean",
        elbo_prior_mean_sign,
        diagnosis="the prior term uses (m + mu0)",
    ),
    Implementation(
        "elbo_prior_trace_diagonal",
        "elbo",
        "tr(S0^-1 S) from the diagonals only: shows only with non-diagonal covariances",
        elbo_prior_trace_diagonal,
        diagnosis="the trace term tr(S0^-1 S) of the KL uses only the diagonals",
    ),
    # ----------------------------------------------------------------- KL
    Implementation(
        "kl_arguments_reversed",
        "kl",
        "returns KL(q || p)",
        kl_arguments_reversed,
        diagnosis="the arguments are reversed",
    ),
    Implementation(
        "kl_missing_mean_term",
        "kl",
        "Mahalanobis term of the means missing",
        kl_missing_mean_term,
        diagnosis="the mean term is missing",
    ),
    Implementation(
        "kl_diagonal_only",
        "kl",
        "mean-field formula: only the variances are read",
        kl_diagonal_only,
        diagnosis="only the diagonals of the covariances are used",
    ),
    Implementation(
        "kl_mean_over_dims",
        "kl",
        "per-dimension terms averaged instead of summed",
        kl_mean_over_dims,
        diagnosis="the KL is averaged over dimensions instead of summed",
    ),
    # ----------------------------------------------------------------- evidence
    Implementation(
        "evidence_missing_weight_cov",
        "evidence",
        "marginal covariance Psi (W S0 W^T missing)",
        evidence_missing_weight_cov,
        diagnosis="the W S0 W^T term of the marginal covariance is missing",
    ),
    Implementation(
        "evidence_noise_std_as_variance",
        "evidence",
        "W S0 W^T + sqrt(Psi): noise std used as the variance",
        evidence_noise_std_as_variance,
        diagnosis="the noise standard deviation is used where the noise variance belongs",
    ),
    Implementation(
        "evidence_prior_cov_identity",
        "evidence",
        "W W^T + Psi: prior covariance taken as I",
        evidence_prior_cov_identity,
        diagnosis="the prior covariance is taken to be the identity",
    ),
    # ----------------------------------------------------------------- MC estimator
    Implementation(
        "estimator_shared_noise",
        "estimator",
        "one normal draw shared across the K latent dimensions",
        estimator_shared_noise,
        diagnosis="one noise draw is shared across latent dimensions",
    ),
    Implementation(
        "estimator_n_minus_one",
        "estimator",
        "sum over samples divided by n_samples - 1",
        estimator_n_minus_one,
        diagnosis="the sum over samples is divided by n_samples - 1",
    ),
    Implementation(
        "estimator_cov_as_scale",
        "estimator",
        "z = m + S eps (covariance as scale)",
        estimator_cov_as_scale,
        diagnosis="samples use the covariance as the scale",
    ),
    Implementation(
        "estimator_cholesky_transposed",
        "estimator",
        "z = m + L^T eps",
        estimator_cholesky_transposed,
        diagnosis="samples use the transposed Cholesky factor",
    ),
    Implementation(
        "estimator_missing_log_q",
        "estimator",
        "mean of log p(x, z) only (no - log q(z))",
        estimator_missing_log_q,
        diagnosis="log q(z) is missing",
    ),
    # ----------------------------------------------------------------- pathwise
    Implementation(
        "pathwise_missing_jacobian",
        "pathwise",
        "log q(z) = log N(eps; 0, I): Jacobian -sum(log diag L) missing",
        pathwise_missing_jacobian,
        diagnosis="log q(z) lacks the Jacobian term",
    ),
    Implementation(
        "pathwise_cholesky_transposed",
        "pathwise",
        "z = m + L^T eps",
        pathwise_cholesky_transposed,
        diagnosis="samples use the transposed Cholesky factor",
    ),
    # ----------------------------------------------------------------- gradients
    Implementation(
        "gradient_wrong_sign",
        "gradient",
        "gradient of the loss -ELBO",
        gradient_wrong_sign,
        diagnosis="the gradient has the wrong sign",
    ),
    Implementation(
        "gradient_missing_entropy_diagonal",
        "gradient",
        "factor gradient lacks diag(1 / L_ii)",
        gradient_missing_entropy_diagonal,
        diagnosis="the entropy's contribution diag(1 / L_ii) is missing",
    ),
    Implementation(
        "gradient_wrt_covariance",
        "gradient",
        "dELBO/dS returned for dELBO/dL",
        gradient_wrt_covariance,
        diagnosis="the gradient with respect to the covariance S is returned for L",
    ),
    Implementation(
        "statistical_gradient_missing_entropy",
        "statistical_gradient",
        "reparameterised gradient without the entropy's diag(1 / L_ii)",
        statistical_gradient_missing_entropy,
        diagnosis="the entropy's contribution diag(1 / L_ii) is missing",
    ),
    Implementation(
        "statistical_gradient_wrong_sign",
        "statistical_gradient",
        "gradient of the loss -ELBO",
        statistical_gradient_wrong_sign,
        diagnosis="the gradient has the wrong sign",
    ),
    # ----------------------------------------------------------------- batched
    Implementation(
        "batched_kl_averaged_over_batch",
        "batched_elbo",
        "the KL averaged over the batch, as a loss wants, subtracted from per-row terms",
        _batched(batched_elbo, "KL averaged over the batch"),
        diagnosis=_INTERACT,
    ),
    Implementation(
        "batched_first_row_covariance",
        "batched_elbo",
        "q.scale_tril[0] used for every row",
        _batched(batched_elbo, "first row's covariance for all"),
        diagnosis=_INTERACT,
    ),
    Implementation(
        "batched_transpose",
        "batched_elbo",
        "S = L @ L.T on a (B, K, K) array (.T reverses every axis)",
        _batched(batched_elbo, ".T on the batch"),
        diagnosis=_INTERACT,
    ),
    Implementation(
        "batched_np_diagonal",
        "batched_elbo",
        "log det from np.diagonal(L), which takes axes 0 and 1 of (B, K, K)",
        _batched(batched_elbo, "np.diagonal on the batch"),
    ),
    Implementation(
        "batched_entropy_missing",
        "batched_elbo",
        "E_q log p(x, z) without H(q), per row",
        _batched(batched_elbo, "entropy missing"),
        diagnosis="the entropy term H(q) is missing",
    ),
    Implementation(
        "batched_kl_trace_summed_over_batch",
        "batched_kl",
        "tr(S_q^-1 S_p) summed over the batch axis too",
        _batched(batched_kl, "summed over the batch axis"),
        diagnosis=_INTERACT,
    ),
)


# =========================================================================== issue 10, part 2
# The estimator mistakes users make (the loss, the IWAE bound, a likelihood divided by N,
# a mean-field estimator given correlated q), autodiff at fixed noise (pathwise
# gradients), and minibatch code for every verifier that takes batch_size.
def _log_likelihood_rows(model: Any, x: FloatArray, z: FloatArray) -> FloatArray:
    """log p(x | z) for rows z (n, K)."""
    return log_normal(x - z @ model.weights.T - model.bias, np.zeros(len(x)), noise_matrix(model))


def estimator_returns_loss(model: Any, q: Any, x: FloatArray, rng: Any, n_samples: int) -> float:
    return -estimator_correct(model, q, x, rng, n_samples)  # BUG: the loss for an optimiser


def estimator_iwae(model: Any, q: Any, x: FloatArray, rng: Any, n_samples: int) -> float:
    z = q.mean + rng.standard_normal((n_samples, len(q.mean))) @ q.scale_tril.T
    log_w = _log_joint(model, x, z) - log_normal(z, q.mean, q.cov)
    top = np.max(log_w)
    return float(top + np.log(np.mean(np.exp(log_w - top))))  # BUG: log-mean-exp


def estimator_likelihood_over_n(
    model: Any, q: Any, x: FloatArray, rng: Any, n_samples: int
) -> float:
    """Analytic KL; the reconstruction divided by a dataset size N = 50 (a minibatch
    rescaling applied to the wrong term)."""
    z = q.mean + rng.standard_normal((n_samples, len(q.mean))) @ q.scale_tril.T
    kl = gaussian_kl(q.mean, q.cov, model.prior.mean, model.prior.cov)
    return float(np.mean(_log_likelihood_rows(model, x, z)) / 50.0 - kl)  # BUG: / N


def estimator_mean_field_on_full_q(
    model: Any, q: Any, x: FloatArray, rng: Any, n_samples: int
) -> float:
    """A mean-field VAE ELBO (analytic KL) that reads q's marginal scales only."""
    variances = np.diagonal(q.cov)  # BUG for correlated q: the correlations are dropped
    z = q.mean + np.sqrt(variances) * rng.standard_normal((n_samples, len(q.mean)))
    kl = gaussian_kl(q.mean, np.diag(variances), model.prior.mean, model.prior.cov)
    return float(np.mean(_log_likelihood_rows(model, x, z)) - kl)


def pathwise_gradient_correct(model: Any, q: Any, x: FloatArray, eps: FloatArray) -> Any:
    """Autodiff of mean_i [log p(x, z_i) - log q(z_i)] at z_i = m + L eps_i, by hand."""
    factor = q.scale_tril
    g = _grad_log_joint(model, x, q.mean + eps @ factor.T)  # (n, K)
    return g.mean(axis=0), np.tril(g.T @ eps / len(eps)) + np.diag(1.0 / np.diag(factor))


def pathwise_gradient_sticking_the_landing(
    model: Any, q: Any, x: FloatArray, eps: FloatArray
) -> Any:
    """log q's parameters detached: only the path derivative of -log q through z."""
    factor = q.scale_tril
    z = q.mean + eps @ factor.T
    g = _grad_log_joint(model, x, z) + (z - q.mean) @ np.linalg.inv(q.cov)  # BUG (STL)
    return g.mean(axis=0), np.tril(g.T @ eps / len(eps))


def pathwise_gradient_analytic_kl_correct(
    model: Any, q: Any, x: FloatArray, eps: FloatArray
) -> Any:
    """Autodiff of mean_i log p(x | z_i) - KL(q || p(z)) at z_i = m + L eps_i, by hand."""
    factor = q.scale_tril
    z = q.mean + eps @ factor.T
    g = (x - z @ model.weights.T - model.bias) @ np.linalg.inv(noise_matrix(model)) @ model.weights
    s0_inv = np.linalg.inv(model.prior.cov)
    grad_kl_mean = s0_inv @ (q.mean - model.prior.mean)
    grad_kl_factor = np.tril(s0_inv @ factor) - np.diag(1.0 / np.diag(factor))
    return g.mean(axis=0) - grad_kl_mean, np.tril(g.T @ eps / len(eps)) - grad_kl_factor


def pathwise_gradient_kl_missing(model: Any, q: Any, x: FloatArray, eps: FloatArray) -> Any:
    """Analytic-KL form; only the reconstruction is differentiated."""
    factor = q.scale_tril
    z = q.mean + eps @ factor.T
    g = (x - z @ model.weights.T - model.bias) @ np.linalg.inv(noise_matrix(model)) @ model.weights
    return g.mean(axis=0), np.tril(g.T @ eps / len(eps))  # BUG: - d KL / d (m, L) missing


def _batched_cov(q: Any) -> FloatArray:
    factor = q.scale_tril
    return np.asarray(factor @ np.swapaxes(factor, -1, -2))


def batched_estimator(
    model: Any, q: Any, x: FloatArray, rng: Any, n_samples: int, bug: str = ""
) -> Any:
    """Analytic-KL minibatch estimate: x (B, D), q.mean (B, K), q.scale_tril (B, K, K)."""
    means, factors = q.mean, q.scale_tril
    b, k = means.shape
    eps = rng.standard_normal((n_samples, b, k))
    z = means + np.einsum("bkl,nbl->nbk", factors, eps)  # (n, B, K)
    residual = x - z @ model.weights.T - model.bias  # (n, B, D)
    log_lik = log_normal(
        residual.reshape(-1, x.shape[-1]), np.zeros(x.shape[-1]), noise_matrix(model)
    )
    recon = log_lik.reshape(n_samples, b).mean(axis=0)
    covs = _batched_cov(q)
    kl = np.array(
        [gaussian_kl(means[i], covs[i], model.prior.mean, model.prior.cov) for i in range(b)]
    )
    if bug == "kl averaged over the batch":
        kl = np.full(b, kl.mean())
    values = recon - kl
    return float(values.sum()) if bug == "summed over the batch" else values


def batched_log_evidence(model: Any, x: FloatArray, bug: str = "") -> Any:
    """log p(x_b) for rows x (B, D)."""
    w = model.weights
    mean = w @ model.prior.mean + model.bias
    centred = x - (x.mean(axis=0) if bug == "centred on the batch mean" else mean)
    cov = w @ model.prior.cov @ w.T + noise_matrix(model)
    return log_normal(centred, np.zeros(x.shape[-1]), cov)


def batched_gradient(model: Any, q: Any, x: FloatArray, bug: str = "") -> Any:
    """Each member's exact (m_b, L_b) gradient: x (B, D), q.scale_tril (B, K, K)."""
    factors = q.scale_tril
    grad_mean = _grad_log_joint(model, x, q.mean)  # rows: one per member
    diagonal = np.diagonal(factors, axis1=-2, axis2=-1)
    grad_factor = np.tril(-np.einsum("kl,blm->bkm", _posterior_precision(model), factors))
    grad_factor = grad_factor + np.einsum("bk,kl->bkl", 1.0 / diagonal, np.eye(factors.shape[-1]))
    if bug == "the batch-mean loss":
        return grad_mean / len(x), grad_factor / len(x)
    return grad_mean, grad_factor


def statistical_gradient_score_term_missing(
    model: Any, q: Any, x: FloatArray, rng: Any, n_samples: int
) -> Any:
    """z sampled, not reparameterised; the surrogate lacks f(z) grad log q(z), so what
    autodiff returns is the gradient of -log q(z) at fixed z."""
    factor = q.scale_tril
    eps = rng.standard_normal((n_samples, len(q.mean)))
    z = q.mean + eps @ factor.T
    grad_mean = -((z - q.mean) @ np.linalg.inv(q.cov)).mean(axis=0)
    inv_t = np.linalg.inv(factor).T
    outer = np.einsum("ij,nj,nk->ik", inv_t, eps, eps) / n_samples
    return grad_mean, np.diag(1.0 / np.diag(factor)) - np.tril(outer)


KINDS.update(
    {
        "pathwise_gradient": (testing.verify_elbo_gradient, {"mode": "pathwise"}),
        "pathwise_gradient_analytic_kl": (
            testing.verify_elbo_gradient,
            {"mode": "pathwise", "form": "analytic_kl"},
        ),
        "batched_estimator": (testing.verify_elbo_estimator, {"batch_size": 4}),
        "batched_evidence": (testing.verify_log_evidence, {"batch_size": 4}),
        "batched_gradient": (testing.verify_elbo_gradient, {"batch_size": 4}),
    }
)
SIGNATURES.update(
    {
        "pathwise_gradient": "fn(model, q, x, eps) -> (grad_mean, grad_scale_tril) at fixed eps",
        "pathwise_gradient_analytic_kl": (
            "fn(model, q, x, eps) -> gradient of mean_i log p(x|z_i) - KL(q || p(z))"
        ),
        "batched_estimator": "fn(model, q, x, rng, n_samples) -> (B,): x (B, D), a q per row",
        "batched_evidence": "fn(model, x) -> (B,): x (B, D)",
        "batched_gradient": "fn(model, q, x) -> ((B, K), (B, K, K)): a q per row",
    }
)

CORRECT = (
    *CORRECT,
    Implementation(
        "pathwise_gradient_correct",
        "pathwise_gradient",
        "autodiff of the joint-form estimate at fixed eps, by hand",
        pathwise_gradient_correct,
    ),
    Implementation(
        "pathwise_gradient_analytic_kl_correct",
        "pathwise_gradient_analytic_kl",
        "autodiff of the analytic-KL estimate at fixed eps, by hand",
        pathwise_gradient_analytic_kl_correct,
    ),
    Implementation(
        "batched_estimator_correct",
        "batched_estimator",
        "analytic-KL minibatch estimate, einsum over the batch",
        lambda m, q, x, rng, n: batched_estimator(m, q, x, rng, n),
        options={"form": "analytic_kl"},
    ),
    Implementation(
        "batched_evidence_correct",
        "batched_evidence",
        "log p(x_b) for every row",
        lambda m, x: batched_log_evidence(m, x),
    ),
    Implementation(
        "batched_gradient_correct",
        "batched_gradient",
        "each member's (m, L) gradient, einsum over the batch",
        lambda m, q, x: batched_gradient(m, q, x),
    ),
)

BUGS = (
    *BUGS,
    Implementation(
        "statistical_gradient_score_term_missing",
        "statistical_gradient",
        "a sampled z's surrogate without the score-function term f(z) grad log q(z)",
        statistical_gradient_score_term_missing,
        diagnosis="the gradient is 0 in expectation",
    ),
    Implementation(
        "estimator_returns_loss",
        "estimator",
        "the loss -ELBO returned (what an optimiser minimises)",
        estimator_returns_loss,
        diagnosis="the loss -ELBO is returned",
    ),
    Implementation(
        "estimator_iwae",
        "estimator",
        "log-mean-exp of the importance weights (the IWAE bound) returned as the ELBO",
        estimator_iwae,
        diagnosis="importance-weighted bound",
    ),
    Implementation(
        "estimator_likelihood_over_n",
        "estimator",
        "analytic-KL form with the reconstruction divided by N = 50",
        estimator_likelihood_over_n,
        options={"form": "analytic_kl"},
        diagnosis="the reconstruction E_q[log p(x | z)] is scaled by",
    ),
    Implementation(
        "estimator_mean_field_on_full_q",
        "estimator",
        "a mean-field VAE ELBO (marginal scales only) given correlated q",
        estimator_mean_field_on_full_q,
        options={"form": "analytic_kl"},
        diagnosis="q's covariance is replaced by its diagonal",
    ),
    Implementation(
        "pathwise_gradient_sticking_the_landing",
        "pathwise_gradient",
        "log q's parameters detached (STL): unbiased, not this estimate's gradient",
        pathwise_gradient_sticking_the_landing,
        diagnosis="sticking the landing",
    ),
    Implementation(
        "pathwise_gradient_kl_missing",
        "pathwise_gradient_analytic_kl",
        "analytic-KL form, only the reconstruction differentiated",
        pathwise_gradient_kl_missing,
        diagnosis="the KL's gradient is missing",
    ),
    Implementation(
        "batched_estimator_kl_averaged",
        "batched_estimator",
        "the KL averaged over the batch, subtracted from every row",
        lambda m, q, x, rng, n: batched_estimator(m, q, x, rng, n, "kl averaged over the batch"),
        options={"form": "analytic_kl"},
        diagnosis=_INTERACT,
    ),
    Implementation(
        "batched_estimator_summed",
        "batched_estimator",
        "one number for the batch (summed over rows)",
        lambda m, q, x, rng, n: batched_estimator(m, q, x, rng, n, "summed over the batch"),
        options={"form": "analytic_kl"},
    ),
    Implementation(
        "batched_evidence_batch_mean",
        "batched_evidence",
        "rows centred on the batch mean instead of the marginal mean",
        lambda m, x: batched_log_evidence(m, x, "centred on the batch mean"),
        diagnosis=_INTERACT,
    ),
    Implementation(
        "batched_gradient_batch_mean_loss",
        "batched_gradient",
        "the gradient of the batch MEAN of the ELBOs (every member's divided by B)",
        lambda m, q, x: batched_gradient(m, q, x, "the batch-mean loss"),
        diagnosis="the gradient is of the batch MEAN of the ELBOs",
    ),
)


# =========================================================================== helpers for tests
def _bound_suspect_catalogues() -> dict[str, Any]:
    from elbo_check.testing._bound_batches import axis_suspect
    from elbo_check.testing._bound_suspects import bound_suspects, gradient_suspects

    return {
        "iwae_estimator": bound_suspects(0.0, 5),
        "iwae_pathwise": bound_suspects(0.0, 5),
        "renyi_estimator": bound_suspects(0.5, 5),
        "iwae_gradient": gradient_suspects("reparameterised", 0.0, 5),
        "dreg_gradient": gradient_suspects("dreg", 0.0, 5),
        "dreg_pathwise": gradient_suspects("dreg", 0.0, 5),
        "vimco_gradient": gradient_suspects("vimco", 0.0, 5),
        "iwae_batched": (
            *bound_suspects(0.0, 4),
            axis_suspect(0.0),
        ),
    }


def suspect_names(kind: str) -> tuple[str, ...]:
    """Names of the suspects the verifier of ``kind`` can put on its diagnosis line."""
    from elbo_check.testing import FORMS, _suspects
    from elbo_check.testing._estimator_diagnosis import _SCALED_TERMS, extra_estimator_suspects

    catalogues: dict[str, Any] = {
        "elbo": _suspects.ELBO_SUSPECTS,
        "kl": _suspects.KL_SUSPECTS,
        "evidence": _suspects.EVIDENCE_SUSPECTS,
        "estimator": _suspects._estimator_suspects(8)
        + tuple(s for form in FORMS.values() for s in form.estimator_suspects(8)),
        "pathwise": _suspects._pathwise_suspects(),
        "gradient": _suspects._gradient_suspects(),
        "statistical_gradient": _suspects._gradient_suspects(),
        "batched_elbo": _suspects.ELBO_SUSPECTS,
        "batched_kl": _suspects.KL_SUSPECTS,
        "float32_elbo": _suspects.ELBO_SUSPECTS,
        "log_scale_gradient": (),
        "pathwise_gradient": tuple(
            s for form in FORMS.values() for s in form.pathwise_gradient_suspects()
        ),
        "pathwise_gradient_analytic_kl": FORMS["analytic_kl"].pathwise_gradient_suspects(),
        "batched_estimator": tuple(
            s for form in FORMS.values() for s in form.estimator_suspects(8)
        ),
        "batched_evidence": _suspects.EVIDENCE_SUSPECTS,
        "batched_gradient": _suspects._gradient_suspects(),
        **_bound_suspect_catalogues(),
    }
    if kind == "estimator":
        catalogues[kind] += extra_estimator_suspects(8)
    names = tuple(suspect.name for suspect in catalogues[kind])
    if kind == "estimator":  # names fitted from these labels: a term scaled by a constant
        names += tuple(f"{label} is scaled by" for label, _, _, _ in _SCALED_TERMS) + tuple(
            name for _, _, special, _ in _SCALED_TERMS for name in special.values()
        )
    if kind == "batched_gradient":
        names += ("the gradient is of the batch MEAN of the ELBOs",)
    return (*names, _INTERACT) if kind.startswith("batched") else names


def diagnosed_names(message: str) -> list[str]:
    """The suspect names on the ``Diagnosis:`` lines of a verifier's failure message."""
    prefix = "Diagnosis: "
    return [
        line[len(prefix) :].rstrip(".")
        for line in message.splitlines()
        if line.startswith(prefix) and not line.startswith(prefix + "no known bug matches")
    ]


# =========================================================================== issue 10 additions
# Hostile functions, the options users now reach for (diagonal guides, analytic-KL forms,
# float32 code) and gradients in a guide's own parameters.
def elbo_edits_x_in_place(model: Any, q: Any, x: FloatArray) -> float:
    x -= model.bias  # BUG: edits the caller's array (and then uses the centred x twice)
    return elbo_correct(model, q, x + model.bias)


_CALLS = [0]


def elbo_not_deterministic(model: Any, q: Any, x: FloatArray) -> float:
    _CALLS[0] += 1
    return elbo_correct(model, q, x) + (1.0 if _CALLS[0] % 7 == 0 else 0.0)  # BUG: state


def elbo_returns_nothing(model: Any, q: Any, x: FloatArray) -> Any:
    elbo_correct(model, q, x)  # BUG: the value is computed and dropped


def elbo_correct_float32(model: Any, q: Any, x: FloatArray) -> Any:
    """The closed form, computed in float32 throughout (correct at float32 precision)."""
    f = np.float32
    m, s = q.mean.astype(f), (q.scale_tril @ q.scale_tril.T).astype(f)
    w, b, xx = model.weights.astype(f), model.bias.astype(f), x.astype(f)
    noise = noise_matrix(model).astype(f)
    residual = xx - w @ m - b
    lp = np.linalg.cholesky(noise)
    a = np.linalg.solve(lp, residual)
    spread = np.linalg.solve(lp, w @ np.linalg.cholesky(s))
    ell = -0.5 * (len(x) * f(LOG_2PI) + 2 * np.sum(np.log(np.diag(lp))) + a @ a + np.sum(spread**2))
    s0 = model.prior.cov.astype(f)
    l0 = np.linalg.cholesky(s0)
    c = np.linalg.solve(l0, m - model.prior.mean.astype(f))
    ratio = np.linalg.solve(l0, np.linalg.cholesky(s))
    k = len(m)
    log_det_ratio = 2 * np.sum(np.log(np.diag(l0))) - 2 * np.sum(
        np.log(np.diag(np.linalg.cholesky(s)))
    )
    return f(ell - 0.5 * (np.sum(ratio**2) + c @ c - k + log_det_ratio))


def estimator_mean_field_variance_as_scale(
    model: Any, q: Any, x: FloatArray, rng: Any, n_samples: int
) -> float:
    """An AutoNormal-style estimator that reads q's marginal variances as its scales."""
    variances = np.diagonal(q.scale_tril @ q.scale_tril.T)
    z = q.mean + rng.standard_normal((n_samples, q.dim)) * variances  # BUG: not sqrt
    log_q = log_normal(z, q.mean, q.scale_tril @ q.scale_tril.T)
    return float(np.mean(_log_joint(model, x, z) - log_q))


def estimator_analytic_kl_added(
    model: Any, q: Any, x: FloatArray, rng: Any, n_samples: int
) -> float:
    """The analytic-KL form with the KL added instead of subtracted."""
    z = q.mean + rng.standard_normal((n_samples, q.dim)) @ q.scale_tril.T
    log_lik = log_normal(
        np.broadcast_to(x, (n_samples, len(x))) - z @ model.weights.T - model.bias,
        np.zeros(len(x)),
        noise_matrix(model),
    )
    kl = gaussian_kl(q.mean, q.scale_tril @ q.scale_tril.T, model.prior.mean, model.prior.cov)
    return float(np.mean(log_lik) + kl)  # BUG: + KL


def log_scale_gradient_correct(model: Any, params: dict[str, FloatArray], x: FloatArray) -> Any:
    """d ELBO / d (loc, log_scale) for q = N(loc, diag(exp(2 log_scale))), by hand."""
    scale = np.exp(params["log_scale"])
    noise = noise_matrix(model)
    w = model.weights
    precision = w.T @ np.linalg.solve(noise, w) + np.linalg.inv(model.prior.cov)
    residual = x - w @ params["loc"] - model.bias
    grad_loc = w.T @ np.linalg.solve(noise, residual) - np.linalg.solve(
        model.prior.cov, params["loc"] - model.prior.mean
    )
    grad_scale = -np.diagonal(precision) * scale + 1.0 / scale  # d/ds_i of the ELBO
    return {"loc": grad_loc, "log_scale": grad_scale * scale}


def log_scale_gradient_missing_jacobian(
    model: Any, params: dict[str, FloatArray], x: FloatArray
) -> Any:
    grads = log_scale_gradient_correct(model, params, x)
    scale = np.exp(params["log_scale"])
    return {"loc": grads["loc"], "log_scale": grads["log_scale"] / scale}  # BUG: d/ds returned


def elbo_float32_missing_entropy(model: Any, q: Any, x: FloatArray) -> Any:
    """float32 code with the entropy dropped: still a bug at float32's tolerance."""
    s = (q.scale_tril @ q.scale_tril.T).astype(np.float32)
    return elbo_correct_float32(model, q, x) - np.float32(0.5) * np.float32(
        len(q.mean) * (1 + LOG_2PI) + 2 * np.sum(np.log(np.diag(np.linalg.cholesky(s))))
    )


KINDS["float32_elbo"] = (testing.verify_elbo, {})
KINDS["log_scale_gradient"] = (
    testing.verify_elbo_gradient,
    {"parametrisation": testing.DiagonalLogScale()},
)
SIGNATURES["float32_elbo"] = "fn(model, q, x) -> numpy.float32"
SIGNATURES["log_scale_gradient"] = (
    "fn(model, params, x) -> {'loc', 'log_scale'} with parametrisation=DiagonalLogScale()"
)

CORRECT = (
    *CORRECT,
    Implementation(
        "float32_elbo_correct",
        "float32_elbo",
        "the closed form computed in float32 (passes at float32's tolerance)",
        elbo_correct_float32,
    ),
    Implementation(
        "log_scale_gradient_correct",
        "log_scale_gradient",
        "(loc, log_scale) gradient derived by hand",
        log_scale_gradient_correct,
    ),
)

BUGS = (
    *BUGS,
    Implementation(
        "elbo_edits_x_in_place", "elbo", "x -= b on the caller's array", elbo_edits_x_in_place
    ),
    Implementation(
        "elbo_not_deterministic",
        "elbo",
        "state kept between calls: wrong on every 7th call",
        elbo_not_deterministic,
    ),
    Implementation(
        "elbo_returns_nothing", "elbo", "the value computed and not returned", elbo_returns_nothing
    ),
    Implementation(
        "float32_elbo_missing_entropy",
        "float32_elbo",
        "float32 code with the entropy dropped",
        elbo_float32_missing_entropy,
        diagnosis="entropy term H(q) is missing",
    ),
    Implementation(
        "estimator_mean_field_variance_as_scale",
        "estimator",
        "a mean-field guide's variances used as its scales (z = m + var * eps)",
        estimator_mean_field_variance_as_scale,
        options={"q_kinds": ("diagonal",)},
        diagnosis="covariance as the scale",
    ),
    Implementation(
        "estimator_analytic_kl_added",
        "estimator",
        "analytic-KL form with the KL added: log p(x|z) + KL(q || p(z))",
        estimator_analytic_kl_added,
        options={"form": "analytic_kl"},
        diagnosis="KL is added instead of subtracted",
    ),
    Implementation(
        "log_scale_gradient_missing_jacobian",
        "log_scale_gradient",
        "d ELBO / d scale returned for d ELBO / d log scale",
        log_scale_gradient_missing_jacobian,
    ),
)


# =========================================================================== multi-sample
# IWAE and Rényi estimates and their gradient estimators (code in buggy_bounds.py). Two
# problems of 400 calls each: a statistical gradient check per seed stays near a second.
import buggy_bounds as _bounds  # noqa: E402

_FEWER = {"n_problems": 2, "calls": 400}
KINDS.update(
    {
        "iwae_estimator": (testing.verify_iwae_estimator, {"k": 5, **_FEWER}),
        "iwae_pathwise": (testing.verify_iwae_estimator, {"k": 5, "mode": "pathwise"}),
        "renyi_estimator": (testing.verify_renyi_estimator, {"alpha": 0.5, "k": 5, **_FEWER}),
        "iwae_gradient": (testing.verify_iwae_gradient, {"k": 5, **_FEWER}),
        "dreg_gradient": (testing.verify_iwae_gradient, {"k": 5, "estimator": "dreg", **_FEWER}),
        "dreg_pathwise": (
            testing.verify_iwae_gradient,
            {"k": 5, "estimator": "dreg", "mode": "pathwise"},
        ),
        "vimco_gradient": (
            testing.verify_iwae_gradient,
            {"k": 5, "estimator": "vimco", **_FEWER},
        ),
        "iwae_batched": (testing.verify_iwae_estimator, {"k": 4, "batch_size": 4, **_FEWER}),
    }
)
SIGNATURES.update(
    {
        "iwae_estimator": "fn(model, q, x, rng, k)",
        "iwae_pathwise": "fn(model, q, x, eps), eps (k, K)",
        "renyi_estimator": "fn(model, q, x, rng, k)",
        "iwae_gradient": "fn(model, q, x, rng, k) -> (grad_mean, grad_scale_tril)",
        "dreg_gradient": "fn(model, q, x, rng, k) -> (grad_mean, grad_scale_tril)",
        "dreg_pathwise": "fn(model, q, x, eps) -> (grad_mean, grad_scale_tril)",
        "vimco_gradient": "fn(model, q, x, rng, k) -> (grad_mean, grad_scale_tril)",
        "iwae_batched": "fn(model, q, x, rng, k) -> (B,): x (B, D), q.scale_tril (B, K, K)",
    }
)

CORRECT = (
    *CORRECT,
    Implementation("iwae_correct", "iwae_estimator", "log-mean-exp of k log weights", _bounds.iwae),
    Implementation(
        "iwae_pathwise_correct", "iwae_pathwise", "IWAE estimate at given noise", _bounds.iwae_at
    ),
    Implementation(
        "renyi_correct", "renyi_estimator", "(1/(1-a)) log mean w^(1-a), a = 0.5", _bounds.renyi
    ),
    Implementation(
        "iwae_gradient_correct",
        "iwae_gradient",
        "sum_k w_k (path_k - score_k)",
        _bounds.iwae_gradient,
    ),
    Implementation(
        "dreg_gradient_correct", "dreg_gradient", "sum_k w_k^2 path_k", _bounds.dreg_gradient
    ),
    Implementation(
        "dreg_pathwise_correct", "dreg_pathwise", "DReG at given noise", _bounds.dreg_at
    ),
    Implementation(
        "vimco_gradient_correct",
        "vimco_gradient",
        "leave-one-out (geometric mean) baselines",
        _bounds.vimco_gradient,
    ),
    Implementation(
        "iwae_batched_correct",
        "iwae_batched",
        "minibatch IWAE, log weights (k, B) reduced over axis 0",
        _bounds.batched_iwae,
    ),
)

BUGS = (
    *BUGS,
    Implementation(
        "iwae_missing_log_k",
        "iwae_estimator",
        "logsumexp(log_w) without - log k",
        _batched(_bounds.iwae, "missing_log_k"),
        diagnosis="the -log n of the log-mean-exp is missing",
    ),
    Implementation(
        "iwae_logsumexp_of_losses",
        "iwae_estimator",
        "-(logsumexp(-log_w) - log k): the log-mean-exp of the losses",
        _batched(_bounds.iwae, "losses"),
        diagnosis="the log-mean-exp is applied to the losses",
    ),
    Implementation(
        "iwae_mean_of_log_weights",
        "iwae_estimator",
        "mean(log_w): the ELBO estimate for every k",
        _batched(_bounds.iwae, "mean_log_w"),
        diagnosis="the mean of the log weights",
    ),
    Implementation(
        "iwae_returns_loss",
        "iwae_estimator",
        "the loss -IWAE returned",
        _batched(_bounds.iwae, "loss"),
        diagnosis="the negated estimate",
    ),
    Implementation(
        "iwae_cov_as_scale",
        "iwae_estimator",
        "samples z = m + S eps with the covariance as the scale",
        _batched(_bounds.iwae, "cov_as_scale"),
    ),
    Implementation(
        "iwae_max_log_weight",
        "iwae_pathwise",
        "max(log_w) in place of the log-mean-exp",
        _batched(_bounds.iwae_at, "max"),
        diagnosis="the largest log weight",
    ),
    Implementation(
        "iwae_first_sample_only",
        "iwae_pathwise",
        "log_w[0]: one sample of k",
        _batched(_bounds.iwae_at, "first_sample"),
        diagnosis="only one of the n samples is used",
    ),
    Implementation(
        "renyi_missing_factor",
        "renyi_estimator",
        "logsumexp((1-a) log_w) - log k without the 1/(1-a)",
        _batched(_bounds.renyi, "missing_factor"),
        diagnosis="the 1/(1 - alpha) factor is missing",
    ),
    Implementation(
        "renyi_alpha_sign",
        "renyi_estimator",
        "(1+a) where (1-a) belongs",
        _batched(_bounds.renyi, "alpha_sign"),
        diagnosis="alpha has the wrong sign",
    ),
    Implementation(
        "renyi_factor_sign",
        "renyi_estimator",
        "1/(a-1) in place of 1/(1-a)",
        _batched(_bounds.renyi, "factor_sign"),
        diagnosis="the negated estimate",
    ),
    Implementation(
        "iwae_gradient_weights_not_detached",
        "iwae_gradient",
        "gradient of sum_k w_k log w_k with the normalised weights not detached",
        _batched(_bounds.iwae_gradient, "weights_not_detached"),
        diagnosis="the importance weights are not detached",
    ),
    Implementation(
        "iwae_gradient_uniform_weights",
        "iwae_gradient",
        "every sample weighted 1/k: the ELBO's gradient",
        _batched(_bounds.iwae_gradient, "uniform_weights"),
        diagnosis="the gradient of the mean log weight",
    ),
    Implementation(
        "dreg_weights_not_squared",
        "dreg_gradient",
        "sum_k w_k path_k (STL) for DReG",
        _batched(_bounds.dreg_gradient, "not_squared"),
        diagnosis="the DReG weights are not squared",
    ),
    Implementation(
        "dreg_score_kept",
        "dreg_gradient",
        "q's parameters not detached in log q(z): the score term kept",
        _batched(_bounds.dreg_gradient, "score_kept"),
        diagnosis="q's parameters are not detached in log q(z)",
    ),
    Implementation(
        "dreg_weights_not_detached",
        "dreg_pathwise",
        "the squared weights differentiated along the path",
        _batched(_bounds.dreg_at, "not_detached"),
        diagnosis="the squared DReG weights are not detached",
    ),
    Implementation(
        "vimco_no_baseline",
        "vimco_gradient",
        "learning signal L for every sample (no leave-one-out baseline)",
        _batched(_bounds.vimco_gradient, "no_baseline"),
        diagnosis="VIMCO without its leave-one-out baseline",
    ),
    Implementation(
        "iwae_batched_batch_axis",
        "iwae_batched",
        "log weights (k, B) reduced over axis 1, the batch (k == B, so the shape is right)",
        _batched(_bounds.batched_iwae, "batch_axis"),
        diagnosis="the log-mean-exp is taken over the batch axis",
    ),
)
