"""LinearEncoder and the amortised ELBO, against dense formulas and finite differences.

Tolerances: dense references do LU solves/inverses with matrices of condition number
at most ``kappa`` and inner products of length at most ``D + K``, so they (and the
package's QR route) are accurate to about ``(D + K) * kappa * eps`` relative to the
magnitude of the terms before they cancel; ``ROUNDING`` is the safety factor on that.
The finite-difference bound (Richardson extrapolation, truncation estimated by
``|D(h) - D(h/2)|``, rounding ``3 delta / h``) is derived in test_gradients.py.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import scipy.stats
from hypothesis import example, given
from hypothesis import strategies as st

from elbo_check import (
    InvalidInputError,
    InvalidTypeError,
    LinearEncoder,
    LinearGaussianModel,
)
from elbo_check._random import FAMILIES, random_model, random_spd

EPS = float(np.finfo(np.float64).eps)
LOG_2PI = math.log(2.0 * math.pi)
ROUNDING = 4.0
STEP = 1e-3

seeds = st.integers(0, 2**32 - 1)
dims = st.integers(1, 5)
families = st.sampled_from(FAMILIES)


def setup(seed: int, family: str, d: int, k: int, n: int) -> tuple[Any, Any, Any]:
    rng = np.random.default_rng(seed)
    model = random_model(rng, data_dim=d, latent_dim=k, family=family)  # type: ignore[arg-type]
    x = model.sample(n, rng)[0]
    return rng, model, x


def dense_optimum(model: LinearGaussianModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A* = Lambda^{-1} W^T Psi^{-1}, c* = mu0 - A*(W mu0 + b), S* = Lambda^{-1}, densely."""
    w = model.weights
    psi_inv = np.linalg.inv(model.dense_noise_cov())
    s0 = model.prior.scale_tril @ model.prior.scale_tril.T
    precision = np.linalg.inv(s0) + w.T @ psi_inv @ w
    cov = np.linalg.inv(precision)
    matrix = cov @ w.T @ psi_inv
    offset = model.prior.mean - matrix @ (w @ model.prior.mean + model.bias)
    return matrix, offset, cov


def dense_dataset_elbo(
    model: LinearGaussianModel, matrix: Any, offset: Any, tril: Any, x: Any
) -> tuple[float, float]:
    """sum_n ELBO(N(A x_n + c, L L^T); x_n) by textbook formulas, and its rounding scale."""
    w, b = model.weights, model.bias
    psi = model.dense_noise_cov()
    s0 = model.prior.scale_tril @ model.prior.scale_tril.T
    mu0 = model.prior.mean
    d, k = w.shape
    cov = tril @ tril.T
    means = x @ matrix.T + offset
    residual = x - means @ w.T - b
    quad = np.sum(residual * np.linalg.solve(psi, residual.T).T, axis=-1)
    trace = np.trace(np.linalg.solve(psi, w @ cov @ w.T))
    logdet_psi = np.linalg.slogdet(psi)[1]
    delta = means - mu0
    maha = np.sum(delta * np.linalg.solve(s0, delta.T).T, axis=-1)
    trace_prior = np.trace(np.linalg.solve(s0, cov))
    logdet_s0 = np.linalg.slogdet(s0)[1]
    logdet_q = 2.0 * np.sum(np.log(np.diagonal(tril)))
    elbo = -0.5 * (d * LOG_2PI + logdet_psi + quad + trace) - 0.5 * (
        trace_prior + maha - k + logdet_s0 - logdet_q
    )
    magnitude = 0.5 * (
        d * LOG_2PI + abs(logdet_psi) + quad + trace + trace_prior + maha + k
        + abs(logdet_s0) + abs(logdet_q)
    )  # fmt: skip
    kappa = max(np.linalg.cond(psi), np.linalg.cond(s0), np.linalg.cond(cov))
    return float(np.sum(elbo)), float(kappa * np.sum(magnitude))


# --------------------------------------------------------------------------- __call__
@pytest.mark.parametrize("batch", [(), (1,), (5,), (2, 3)])
def test_call_shapes_and_values(rng: np.random.Generator, batch: tuple[int, ...]) -> None:
    """q(z|x) means vs an explicit per-row loop A @ x_i + c; the factor is shared."""
    d, k = 3, 4
    a = rng.standard_normal((k, d))
    c = rng.standard_normal(k)
    tril = np.linalg.cholesky(random_spd(rng, k))
    encoder = LinearEncoder(matrix=a, offset=c, scale_tril=tril)
    assert (encoder.data_dim, encoder.latent_dim) == (d, k)
    x = rng.standard_normal((*batch, d))
    q = encoder(x)
    assert q.batch_shape == batch
    assert q.mean.shape == (*batch, k)
    assert np.array_equal(q.scale_tril, tril)
    for index in np.ndindex(*batch):
        expected = [sum(a[i, j] * x[index][j] for j in range(d)) + c[i] for i in range(k)]
        np.testing.assert_allclose(q.mean[index], expected, rtol=1e-14, atol=1e-14)


def test_call_rejects_wrong_data_dimension(rng: np.random.Generator) -> None:
    """A row of the wrong length or a scalar is refused with a message naming x."""
    encoder = LinearEncoder(matrix=np.ones((2, 3)), offset=np.zeros(2), scale_tril=np.eye(2))
    for bad in (np.ones(4), np.ones((5, 2)), 1.0):
        with pytest.raises(InvalidInputError, match=r"^x must have shape \(\.\.\., D\)"):
            encoder(bad)


def test_constructor_validation_names_arguments() -> None:
    """Upper factors, mismatched matrix and offset are refused naming the argument."""
    with pytest.raises(InvalidInputError, match=r"^scale_tril must be lower triangular"):
        LinearEncoder(matrix=np.ones((2, 3)), offset=np.zeros(2), scale_tril=[[1.0, 1.0], [0, 1]])
    with pytest.raises(InvalidInputError, match=r"^matrix must have shape \(K, D\)"):
        LinearEncoder(matrix=np.ones((3, 3)), offset=np.zeros(2), scale_tril=np.eye(2))
    with pytest.raises(InvalidInputError, match=r"^offset must have shape \(K,\)"):
        LinearEncoder(matrix=np.ones((2, 3)), offset=np.zeros(3), scale_tril=np.eye(2))
    with pytest.raises(InvalidInputError, match=r"^cov must be symmetric positive definite"):
        LinearEncoder.from_covariance(matrix=np.ones((2, 3)), offset=np.zeros(2), cov=-np.eye(2))


@given(seed=seeds, k=dims, d=dims)
def test_from_covariance_matches_direct(seed: int, k: int, d: int) -> None:
    """from_covariance(L L^T) has factor L (unique positive-diagonal Cholesky) and cov L L^T."""
    rng = np.random.default_rng(seed)
    tril = np.tril(rng.standard_normal((k, k)), -1) + np.diag(rng.uniform(0.5, 2.0, k))
    cov = tril @ tril.T
    cov = 0.5 * (cov + cov.T)
    a, c = rng.standard_normal((k, d)), rng.standard_normal(k)
    direct = LinearEncoder(matrix=a, offset=c, scale_tril=tril)
    indirect = LinearEncoder.from_covariance(matrix=a, offset=c, cov=cov)
    tol = ROUNDING * k * np.linalg.cond(cov) * EPS * np.max(np.abs(tril))
    assert np.max(np.abs(indirect.scale_tril - tril)) <= tol
    assert np.all(np.triu(indirect.scale_tril, 1) == 0.0)
    assert np.max(np.abs(direct.cov - cov)) <= ROUNDING * k * EPS * np.max(np.abs(cov))
    x = rng.standard_normal((4, d))
    assert np.array_equal(direct(x).mean, indirect(x).mean)


# --------------------------------------------------------------------------- optimum
@given(seed=seeds, family=families, d=dims, k=dims)
@example(seed=11, family="full_noise", d=2, k=5)
def test_optimal_encoder_is_the_posterior(seed: int, family: str, d: int, k: int) -> None:
    """optimal_encoder vs the dense A*, c*, S* and vs model.posterior(x) on 64 rows."""
    rng, model, x = setup(seed, family, d, k, 48)
    x = np.concatenate([x, 5.0 * rng.standard_normal((16, d))])  # also far from the data
    encoder = model.optimal_encoder()
    matrix, offset, cov = dense_optimum(model)
    psi = model.dense_noise_cov()
    kappa = np.linalg.cond(cov) * np.linalg.cond(psi)
    tol = ROUNDING * (d + k) * kappa * EPS
    # The package's A* = (L0 R^{-1})(Psi^{-1/2} Q1)^T comes from a Householder QR, which is
    # accurate normwise, not entrywise: its natural scale is ||L0 R^{-1}|| ||Psi^{-1/2}||
    # = (||S*|| ||Psi^{-1}||)^{1/2}, which also bounds ||A*||.
    root = math.sqrt(np.linalg.norm(cov, 2) * np.linalg.norm(np.linalg.inv(psi), 2))
    assert np.max(np.abs(encoder.matrix - matrix)) <= tol * root
    centre = np.abs(model.weights) @ np.abs(model.prior.mean) + np.abs(model.bias)
    offset_scale = np.linalg.norm(model.prior.mean) + root * np.linalg.norm(centre)
    assert np.max(np.abs(encoder.offset - offset)) <= tol * offset_scale
    assert np.max(np.abs(encoder.cov - cov)) <= tol * np.linalg.norm(cov, 2)

    q, posterior = encoder(x), model.posterior(x)
    assert q.mean.shape == posterior.mean.shape == (64, k)
    # Both are mu0 + A* (x - xbar) up to rounding of size |mu0| + root * (|x| + |xbar|).
    mean_scale = offset_scale + root * np.linalg.norm(x, axis=1)
    assert np.all(np.abs(q.mean - posterior.mean) <= tol * mean_scale[:, None])
    assert np.array_equal(q.scale_tril, posterior.scale_tril)


@given(seed=seeds, family=families, d=dims, k=dims, n=st.integers(1, 20))
@example(seed=12, family="general", d=1, k=5, n=7)
def test_dataset_elbo_at_optimum_is_log_evidence(
    seed: int, family: str, d: int, k: int, n: int
) -> None:
    """dataset_elbo(optimal) vs log_evidence(x).sum() and vs scipy's dense logpdf sum."""
    _, model, x = setup(seed, family, d, k, n)
    value = model.dataset_elbo(model.optimal_encoder(), x)
    assert isinstance(value, float)
    evidence = float(np.sum(model.log_evidence(x)))
    assert abs(value - evidence) <= 1e-12 * abs(evidence)
    marginal_cov = model.weights @ model.prior.cov @ model.weights.T + model.dense_noise_cov()
    marginal_mean = model.weights @ model.prior.mean + model.bias
    dense = scipy.stats.multivariate_normal(marginal_mean, marginal_cov).logpdf(x)
    _, scale = dense_dataset_elbo(model, *dense_optimum(model), x)
    assert abs(value - float(np.sum(dense))) <= ROUNDING * (d + k) * EPS * scale


@given(
    seed=seeds,
    family=families,
    d=dims,
    k=dims,
    n=st.integers(1, 10),
    which=st.sampled_from(["matrix", "offset", "scale_tril"]),
)
@example(seed=13, family="ppca", d=2, k=4, n=3, which="scale_tril")
def test_other_encoders_are_strictly_below(
    seed: int, family: str, d: int, k: int, n: int, which: str
) -> None:
    """Perturbed encoders lose exactly sum_n KL(q_n || p(z|x_n)), computed densely."""
    rng, model, x = setup(seed, family, d, k, n)
    best = model.optimal_encoder()
    parts = {"matrix": best.matrix, "offset": best.offset, "scale_tril": best.scale_tril}
    noise = 0.1 * rng.standard_normal(parts[which].shape)
    if which == "scale_tril":
        noise = np.tril(noise) * np.max(np.abs(best.scale_tril))
    parts = {**parts, which: parts[which] + noise}
    other = LinearEncoder(**parts)
    optimum = model.dataset_elbo(best, x)
    value = model.dataset_elbo(other, x)
    assert value < optimum

    # Independent route: the gap is sum_n KL(N(A x_n + c, S) || N(m*_n, S*)).
    matrix, offset, post_cov = dense_optimum(model)
    post_prec = np.linalg.inv(post_cov)
    cov = other.scale_tril @ other.scale_tril.T
    diff = x @ (other.matrix - matrix).T + (other.offset - offset)
    kl = 0.5 * (
        n * (np.trace(post_prec @ cov) - k - np.linalg.slogdet(post_prec @ cov)[1])
        + np.sum(diff * (diff @ post_prec))
    )
    _, scale = dense_dataset_elbo(model, *parts.values(), x)
    tol = ROUNDING * (d + k) * EPS * scale * np.linalg.cond(post_cov)
    assert abs((optimum - value) - kl) <= tol, (optimum - value, kl, tol)


# --------------------------------------------------------------------------- gradient
def richardson(g: Any, h: float, dims_sum: int) -> tuple[float, float]:
    """Richardson central difference of g at 0 and its bound (see test_gradients.py)."""
    (up, s1), (down, s2), (up2, s3), (down2, s4) = g(h), g(-h), g(h / 2), g(-h / 2)
    d_full, d_half = (up - down) / (2.0 * h), (up2 - down2) / h
    delta = ROUNDING * dims_sum * EPS * max(s1, s2, s3, s4)
    return (4.0 * d_half - d_full) / 3.0, abs(d_full - d_half) + 3.0 * delta / h


@given(seed=seeds, family=families, d=dims, k=dims, n=st.integers(1, 6))
@example(seed=14, family="factor_analysis", d=1, k=4, n=5)
def test_dataset_elbo_grad_matches_finite_differences(
    seed: int, family: str, d: int, k: int, n: int
) -> None:
    """dataset_elbo_grad vs Richardson FD of the dense dataset ELBO (A, c, lower L entries)."""
    rng, model, x = setup(seed, family, d, k, n)
    best = model.optimal_encoder()
    parts = {
        "matrix": best.matrix + 0.3 * rng.standard_normal((k, d)),
        "offset": best.offset + 0.3 * rng.standard_normal(k),
        "scale_tril": np.linalg.cholesky(random_spd(rng, k, scale=0.3)),
    }
    grads = model.dataset_elbo_grad(LinearEncoder(**parts), x)
    assert grads.matrix.shape == (k, d)
    assert grads.offset.shape == (k,)
    assert grads.scale_tril.shape == (k, k)
    assert np.all(np.triu(grads.scale_tril, 1) == 0.0)
    worst, where = 0.0, ""
    for name, closed in (
        ("matrix", grads.matrix),
        ("offset", grads.offset),
        ("scale_tril", grads.scale_tril),
    ):
        for index in np.ndindex(*closed.shape):
            if name == "scale_tril" and index[1] > index[0]:
                continue  # not a parameter: the constructor rejects upper entries
            direction = np.zeros(closed.shape)
            direction[index] = 1.0
            is_diag = name == "scale_tril" and index[0] == index[1]
            h = STEP * (parts[name][index] if is_diag else 1.0)

            def g(t: float, name: str = name, direction: Any = direction) -> tuple[float, float]:
                moved = {**parts, name: parts[name] + t * direction}
                return dense_dataset_elbo(model, *moved.values(), x)

            estimate, bound = richardson(g, h, d + k)
            ratio = abs(closed[index] - estimate) / bound
            if ratio > worst:
                worst, where = ratio, f"{name}{index}"
    assert worst <= 1.0, f"worst |closed - FD| / bound = {worst:.3g} at {where}"


# --------------------------------------------------------------------------- mismatch
@pytest.mark.parametrize(("d_enc", "k_enc"), [(4, 2), (3, 3), (2, 1)])
@pytest.mark.parametrize("method", ["dataset_elbo", "dataset_elbo_grad"])
def test_wrong_dimension_encoder_is_refused(
    rng: np.random.Generator, method: str, d_enc: int, k_enc: int
) -> None:
    """An encoder with the wrong D or K raises InvalidInputError naming `encoder`."""
    model = random_model(rng, data_dim=3, latent_dim=2)
    encoder = LinearEncoder(
        matrix=np.ones((k_enc, d_enc)), offset=np.zeros(k_enc), scale_tril=np.eye(k_enc)
    )
    x = rng.standard_normal((4, 3))
    with pytest.raises(InvalidInputError, match=r"^encoder must map D = 3 to K = 2"):
        getattr(model, method)(encoder, x)


@pytest.mark.parametrize("method", ["dataset_elbo", "dataset_elbo_grad"])
def test_non_encoder_is_refused(rng: np.random.Generator, method: str) -> None:
    """A posterior Gaussian in place of an encoder raises InvalidTypeError naming `encoder`."""
    model = random_model(rng, data_dim=3, latent_dim=2)
    x = rng.standard_normal((4, 3))
    with pytest.raises(InvalidTypeError, match=r"^encoder must be a LinearEncoder"):
        getattr(model, method)(model.posterior(x), x)
