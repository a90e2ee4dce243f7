"""Score-function mistakes in gradient estimators are named (issue 10's list: "a missing
score-function term").

A Pyro-style surrogate for a latent that is sampled, not reparameterised, must add
``f(z) grad log q(z)`` with ``f = log p(x, z) - log q(z)`` held constant. Without it,
what autodiff returns is the gradient of ``-log q(z)`` at fixed z, which averages to 0;
with it AND a reparameterised z, the gradient is counted twice. Both estimators are
written from scratch in numpy, as that autodiff would compute them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from elbo_check.testing import verify_elbo_gradient


def _grad_log_joint(model: Any, x: np.ndarray, z: np.ndarray) -> Any:
    psi, s0 = model.dense_noise_cov(), model.prior.cov
    residual = x - z @ model.weights.T - model.bias
    return (
        np.linalg.solve(psi, residual.T).T @ model.weights
        - np.linalg.solve(s0, (z - model.prior.mean).T).T
    )


def _log_normal(z: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> Any:
    factor = np.linalg.cholesky(cov)
    white = np.linalg.solve(factor, (z - mean).T)
    return -0.5 * (
        len(mean) * np.log(2 * np.pi) + 2 * np.log(np.diag(factor)).sum() + (white**2).sum(0)
    )


def _score_terms(model: Any, q: Any, x: np.ndarray, eps: np.ndarray) -> tuple[Any, Any]:
    """The score-function estimate mean_i f(z_i) grad log q(z_i) in (m, L)."""
    factor = q.scale_tril
    z = q.mean + eps @ factor.T
    psi = model.dense_noise_cov()
    log_lik = _log_normal(x - z @ model.weights.T - model.bias, np.zeros(len(x)), psi)
    f = log_lik + _log_normal(z, model.prior.mean, model.prior.cov) - _log_normal(z, q.mean, q.cov)
    inv_t = np.linalg.inv(factor).T
    score_mean = eps @ inv_t.T
    score_factor = np.tril(np.einsum("ij,nj,nk->nik", inv_t, eps, eps)) - np.diag(
        1 / np.diag(factor)
    )
    return (f[:, None] * score_mean).mean(0), (f[:, None, None] * score_factor).mean(0)


def score_term_missing(model: Any, q: Any, x: np.ndarray, rng: Any, n: int) -> Any:
    """z sampled (not reparameterised); autodiff of f(z) = log p - log q at fixed z."""
    factor = q.scale_tril
    eps = rng.standard_normal((n, q.dim))
    z = q.mean + eps @ factor.T
    inv_cov = np.linalg.inv(q.cov)
    grad_mean = -((z - q.mean) @ inv_cov).mean(0)  # d/dm of -log q(z), z fixed
    inv_t = np.linalg.inv(factor).T
    grad_factor = np.diag(1 / np.diag(factor)) - np.tril(
        np.einsum("ij,nj,nk->ik", inv_t, eps, eps) / n
    )
    return grad_mean, grad_factor


def score_and_pathwise(model: Any, q: Any, x: np.ndarray, rng: Any, n: int) -> Any:
    """A reparameterised z differentiated through AND the score term added."""
    factor = q.scale_tril
    eps = rng.standard_normal((n, q.dim))
    g = _grad_log_joint(model, x, q.mean + eps @ factor.T)
    path = g.mean(0), np.tril(g.T @ eps / n) + np.diag(1 / np.diag(factor))
    score = _score_terms(model, q, x, eps)
    return path[0] + score[0], path[1] + score[1]


@pytest.mark.parametrize(
    ("fn", "named"),
    [
        (score_term_missing, "the gradient is 0 in expectation"),
        (score_and_pathwise, "the gradient is doubled"),
    ],
)
def test_score_function_mistakes_are_named(fn: Any, named: str) -> None:
    with pytest.raises(AssertionError, match="biased") as failure:
        verify_elbo_gradient(fn, mode="statistical", calls=400)
    lines = [line for line in str(failure.value).splitlines() if "Diagnosis" in line]
    assert len(lines) == 1, lines
    assert named in lines[0], lines


def test_the_score_function_estimator_itself_passes() -> None:
    def score(model: Any, q: Any, x: np.ndarray, rng: Any, n: int) -> Any:
        return _score_terms(model, q, x, rng.standard_normal((n, q.dim)))

    assert verify_elbo_gradient(score, mode="statistical", calls=800, n_samples=32).cases
