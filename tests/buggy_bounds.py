"""Multi-sample bound code for the kill matrix: IWAE and Rényi estimates and their gradient
estimators (reparameterised, DReG, VIMCO), each correct or with one realistic bug.

Written from scratch in plain numpy the way a user would (dense solves, explicit
formulas from the papers), independent of :mod:`elbo_check.testing._bound_reference`.
The entries that use them are at the end of ``buggy_implementations.py``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

FloatArray = np.ndarray


def logsumexp(values: FloatArray) -> float:
    """log sum exp over a 1-d array, shifted by its maximum (a user's own helper)."""
    top = float(np.max(values))
    return top + math.log(float(np.sum(np.exp(values - top))))


def softmax(values: FloatArray) -> FloatArray:
    shifted = np.exp(values - np.max(values))
    return np.asarray(shifted / shifted.sum())


def _draws(
    model: Any, q: Any, x: FloatArray, eps: FloatArray, *, cov_as_scale: bool = False
) -> tuple[FloatArray, FloatArray]:
    scale = q.cov if cov_as_scale else q.scale_tril
    z = q.mean + eps @ scale.T
    return z, model.log_joint(x, z) - q.log_prob(z)


# --------------------------------------------------------------------------- values
def iwae(model: Any, q: Any, x: FloatArray, rng: Any, k: int, bug: str = "") -> float:
    eps = rng.standard_normal((k, q.dim))
    return iwae_at(model, q, x, eps, bug)


def iwae_at(model: Any, q: Any, x: FloatArray, eps: FloatArray, bug: str = "") -> float:
    k = len(eps)
    _, log_w = _draws(model, q, x, eps, cov_as_scale=bug == "cov_as_scale")
    if bug == "missing_log_k":
        return float(logsumexp(log_w))
    if bug == "losses":  # loss_k = -log w_k, then the log-mean-exp of the losses
        return float(-(logsumexp(-log_w) - math.log(k)))
    if bug == "mean_log_w":
        return float(np.mean(log_w))
    if bug == "loss":
        return float(-(logsumexp(log_w) - math.log(k)))
    if bug == "max":
        return float(np.max(log_w))
    if bug == "first_sample":
        return float(log_w[0])
    return float(logsumexp(log_w) - math.log(k))


def renyi(model: Any, q: Any, x: FloatArray, rng: Any, k: int, bug: str = "") -> float:
    alpha = 0.5  # the kind's alpha
    _, log_w = _draws(model, q, x, rng.standard_normal((k, q.dim)))
    if bug == "missing_factor":
        return float(logsumexp((1 - alpha) * log_w) - math.log(k))
    if bug == "alpha_sign":
        return float((logsumexp((1 + alpha) * log_w) - math.log(k)) / (1 + alpha))
    if bug == "factor_sign":
        return float((logsumexp((1 - alpha) * log_w) - math.log(k)) / (alpha - 1))
    return float((logsumexp((1 - alpha) * log_w) - math.log(k)) / (1 - alpha))


# --------------------------------------------------------------------------- gradients
def _terms(model: Any, q: Any, x: FloatArray, eps: FloatArray) -> tuple[FloatArray, Any, Any]:
    """Per sample: log w, the path term grad_z log w(z) carried to (m, L), and the score
    grad log q(z) at fixed z in (m, L)."""
    z, log_w = _draws(model, q, x, eps)
    noise = model.dense_noise_cov()
    prior = model.prior
    grad_joint = (
        np.linalg.solve(noise, (x - model.bias - z @ model.weights.T).T).T @ model.weights
        - np.linalg.solve(prior.cov, (z - prior.mean).T).T
    )
    precision_times = np.linalg.solve(q.cov, (z - q.mean).T).T  # Sigma^{-1}(z - m)
    path_m = grad_joint + precision_times
    path_l = np.tril(np.einsum("ni,nj->nij", path_m, eps))
    inverse_t = np.linalg.inv(q.scale_tril).T
    score_m = precision_times
    outer = np.einsum("ni,nj->nij", eps, eps) - np.eye(q.dim)
    score_l = np.tril(np.einsum("ij,njk->nik", inverse_t, outer))
    return log_w, (path_m, path_l), (score_m, score_l)


def _combine(a: FloatArray, path: Any, b: FloatArray, score: Any) -> tuple[Any, Any]:
    grad_m = a @ path[0] + b @ score[0]
    grad_l = np.einsum("n,nij->ij", a, path[1]) + np.einsum("n,nij->ij", b, score[1])
    return grad_m, grad_l


def iwae_gradient(model: Any, q: Any, x: FloatArray, rng: Any, k: int, bug: str = "") -> Any:
    """Reparameterised IWAE gradient: sum_k w_k (path_k - score_k)."""
    eps = rng.standard_normal((k, q.dim))
    log_w, path, score = _terms(model, q, x, eps)
    w = softmax(log_w)
    if bug == "weights_not_detached":  # surrogate sum_k w_k log w_k, w_k differentiated
        coef = w * (1.0 + log_w - w @ log_w)
        return _combine(coef, path, -coef, score)
    if bug == "uniform_weights":
        u = np.full(k, 1.0 / k)
        return _combine(u, path, -u, score)
    return _combine(w, path, -w, score)


def dreg_gradient(model: Any, q: Any, x: FloatArray, rng: Any, k: int, bug: str = "") -> Any:
    """DReG: sum_k w_k^2 path_k."""
    eps = rng.standard_normal((k, q.dim))
    return dreg_at(model, q, x, eps, bug)


def dreg_at(model: Any, q: Any, x: FloatArray, eps: FloatArray, bug: str = "") -> Any:
    log_w, path, score = _terms(model, q, x, eps)
    w = softmax(log_w)
    zero = np.zeros_like(w)
    if bug == "not_squared":
        return _combine(w, path, zero, score)
    if bug == "score_kept":
        return _combine(w**2, path, -(w**2), score)
    if bug == "not_detached":  # surrogate sum_k w_k^2 log w_k along the path
        coef = w**2 + 2.0 * log_w * w**2 - 2.0 * w * (log_w @ w**2)
        return _combine(coef, path, zero, score)
    return _combine(w**2, path, zero, score)


def vimco_gradient(model: Any, q: Any, x: FloatArray, rng: Any, k: int, bug: str = "") -> Any:
    """VIMCO: sum_k (L - L_{-k}) score_k - sum_k w_k score_k, geometric-mean baselines."""
    eps = rng.standard_normal((k, q.dim))
    log_w, path, score = _terms(model, q, x, eps)
    w = softmax(log_w)
    estimate = logsumexp(log_w) - math.log(k)
    baselines = np.empty(k)
    for j in range(k):
        others = np.delete(log_w, j)
        baselines[j] = logsumexp(np.append(others, others.mean())) - math.log(k)
    signal = estimate - baselines
    if bug == "no_baseline":
        signal = np.full(k, estimate)
    return _combine(np.zeros(k), path, signal - w, score)


# --------------------------------------------------------------------------- batches
def batched_iwae(model: Any, q: Any, x: FloatArray, rng: Any, k: int, bug: str = "") -> Any:
    """A minibatch: x (B, D), q with a covariance per member, log weights (k, B)."""
    eps = rng.standard_normal((k, *q.mean.shape))
    z = q.mean + np.einsum("bij,kbj->kbi", q.scale_tril, eps)
    log_w = model.log_joint(x, z) - q.log_prob(z)
    axis = 1 if bug == "batch_axis" else 0
    top = np.max(log_w, axis=axis, keepdims=True)
    total = np.log(np.sum(np.exp(log_w - top), axis=axis)) + np.squeeze(top, axis=axis)
    return total - math.log(log_w.shape[axis])
