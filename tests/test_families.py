"""The named families against their textbook formulas, computed densely and independently.

Tolerances: every reference below is a dense, backward-stable computation (Cholesky,
eigendecomposition or LU solves) with matrices of condition number at most ``kappa``
and inner products of length at most ``D + K``; both it and the package's QR route
are then accurate to about ``(D + K) * kappa * eps`` relative to the magnitude of the
terms before they cancel (``|log det| + Mahalanobis + D log 2 pi`` for a log-density,
``|A^{-1}| |b|`` for a solve).  ``ROUNDING`` is the safety factor on that bound.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import scipy.stats
from hypothesis import example, given
from hypothesis import strategies as st

from elbo_check import (
    InvalidInputError,
    InvalidTypeError,
    bayesian_linear_regression,
    factor_analysis,
    ppca,
)

EPS = float(np.finfo(np.float64).eps)
LOG_2PI = math.log(2.0 * math.pi)
ROUNDING = 16.0

dims = st.integers(1, 6)
seeds = st.integers(0, 2**32 - 1)


def log_density_bound(cov: np.ndarray, x: np.ndarray, mean: np.ndarray, dim_sum: int) -> np.ndarray:
    """ROUNDING * (D + K) * kappa * eps * (D log 2 pi + |log det C| + Mahalanobis), per row."""
    residual = x - mean
    maha = np.einsum("...i,...i->...", residual, np.linalg.solve(cov, residual.T).T)
    magnitude = cov.shape[0] * LOG_2PI + abs(np.linalg.slogdet(cov)[1]) + maha
    return ROUNDING * dim_sum * np.linalg.cond(cov) * EPS * magnitude


def posterior_mean_bound(
    post_cov: np.ndarray,
    noise_cov: np.ndarray,
    w: np.ndarray,
    x: np.ndarray,
    offset: np.ndarray,
    prior_mean: np.ndarray,
    prior_cov: np.ndarray,
    kappa: float,
) -> np.ndarray:
    """Per-row bound on |package - dense| for posterior means m0 + S_N W^T Psi^{-1}(x - xbar).

    The package's Householder route is normwise accurate: with ||L0 R^{-1}|| = ||S_N||^{1/2}
    its error is about eps (|m0| + (||S_N|| ||Psi^{-1}||)^{1/2} |(|x| + |xbar|)|); the dense
    solve adds about kappa eps ||S_N|| (||W|| ||Psi^{-1}|| |(|x| + |xbar|)| + ||S0^{-1}|| |m0|).
    """
    norm = np.linalg.norm
    post, psi_inv = norm(post_cov, 2), norm(np.linalg.inv(noise_cov), 2)
    centre = norm(np.abs(x) + np.abs(w) @ np.abs(prior_mean) + np.abs(offset), axis=-1)
    magnitude = (
        norm(prior_mean) * (1.0 + post * norm(np.linalg.inv(prior_cov), 2))
        + (math.sqrt(post * psi_inv) + post * norm(w, 2) * psi_inv) * centre
    )
    dims = int(sum(w.shape))
    return ROUNDING * dims * kappa * EPS * np.asarray(magnitude)[..., None]


# --------------------------------------------------------------------------- PPCA
@given(seed=seeds, d=dims, k=dims, n=st.integers(1, 5))
@example(seed=1, d=2, k=5, n=3)
def test_ppca_matches_tipping_bishop(seed: int, d: int, k: int, n: int) -> None:
    """PPCA evidence via scipy.stats with C = WW^T + s2 I; posterior via M = W^TW + s2 I."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((d, k)) / np.sqrt(k)
    mu = rng.standard_normal(d)
    sigma2 = float(rng.uniform(0.05, 2.0))
    x = mu + rng.standard_normal((n, d)) * 1.5
    model = ppca(weights=w, mean=mu, noise_variance=sigma2)

    cov = w @ w.T + sigma2 * np.eye(d)
    expected = scipy.stats.multivariate_normal(mean=mu, cov=cov).logpdf(x)
    got = model.log_evidence(x)
    assert got.shape == (n,)
    np.testing.assert_array_less(np.abs(got - expected), log_density_bound(cov, x, mu, d + k))

    # Tipping & Bishop (1999), eq. 6-7: z | x ~ N(M^{-1} W^T (x - mu), s2 M^{-1}).
    m_matrix = w.T @ w + sigma2 * np.eye(k)
    rhs = (x - mu) @ w
    post_mean = np.linalg.solve(m_matrix, rhs.T).T
    post_cov = sigma2 * np.linalg.inv(m_matrix)
    posterior = model.posterior(x)
    bound = posterior_mean_bound(
        post_cov, sigma2 * np.eye(d), w, x, mu, np.zeros(k), np.eye(k), np.linalg.cond(m_matrix)
    )
    assert np.all(np.abs(posterior.mean - post_mean) <= bound)
    got_cov = posterior.scale_tril @ posterior.scale_tril.T
    cov_bound = ROUNDING * (d + k) * np.linalg.cond(m_matrix) * EPS * np.linalg.norm(post_cov, 2)
    assert np.max(np.abs(got_cov - post_cov)) <= cov_bound


# --------------------------------------------------------------------------- FA
def fa_reference(w: np.ndarray, mu: np.ndarray, psi: np.ndarray, x: np.ndarray):  # type: ignore[no-untyped-def]
    """Dense FA: p(x) = N(mu, WW^T + Psi); z|x ~ N(G W^T Psi^{-1}(x - mu), G),
    G = (I + W^T Psi^{-1} W)^{-1} (Bishop PRML eq. 12.66 with the FA noise)."""
    d, k = w.shape
    cov = w @ w.T + np.diag(psi)
    residual = x - mu
    chol = np.linalg.cholesky(cov)
    white = np.linalg.solve(chol, residual.T)
    log_p = -0.5 * (d * LOG_2PI + 2.0 * np.sum(np.log(np.diag(chol))) + np.sum(white**2, axis=0))
    g_inv = np.eye(k) + w.T @ (w / psi[:, None])
    rhs = (residual / psi) @ w
    return cov, log_p, g_inv, np.linalg.solve(g_inv, rhs.T).T, np.linalg.inv(g_inv)


@given(seed=seeds, d=dims, k=dims, n=st.integers(1, 5))
@example(seed=2, d=1, k=4, n=4)
def test_factor_analysis_matches_dense_formula(seed: int, d: int, k: int, n: int) -> None:
    """FA evidence and posterior vs the dense Cholesky formula with C = WW^T + diag(psi)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((d, k))
    mu = rng.standard_normal(d)
    psi = 0.1 * 10.0 ** rng.uniform(0.0, 1.0, size=d)
    x = mu + 2.0 * rng.standard_normal((n, d))
    model = factor_analysis(loadings=w, mean=mu, noise_variances=psi)
    cov, log_p, g_inv, post_mean, post_cov = fa_reference(w, mu, psi, x)

    got = model.log_evidence(x)
    np.testing.assert_array_less(np.abs(got - log_p), log_density_bound(cov, x, mu, d + k))
    posterior = model.posterior(x)
    bound = posterior_mean_bound(
        post_cov, np.diag(psi), w, x, mu, np.zeros(k), np.eye(k), np.linalg.cond(g_inv)
    )
    assert np.all(np.abs(posterior.mean - post_mean) <= bound)
    got_cov = posterior.scale_tril @ posterior.scale_tril.T
    cov_bound = ROUNDING * (d + k) * np.linalg.cond(g_inv) * EPS * np.linalg.norm(post_cov, 2)
    assert np.max(np.abs(got_cov - post_cov)) <= cov_bound


def test_factor_analysis_matches_sklearn() -> None:
    """FA evidence vs sklearn FactorAnalysis.score_samples with its fitted attributes set."""
    decomposition = pytest.importorskip("sklearn.decomposition")
    rng = np.random.default_rng(5)
    d, k = 6, 2
    w = rng.standard_normal((d, k))
    mu = rng.standard_normal(d)
    psi = rng.uniform(0.1, 1.0, size=d)
    x = mu + rng.standard_normal((20, d))
    estimator = decomposition.FactorAnalysis(n_components=k)
    estimator.components_ = w.T
    estimator.noise_variance_ = psi
    estimator.mean_ = mu
    estimator.n_features_in_ = d
    expected = estimator.score_samples(x)
    got = factor_analysis(loadings=w, mean=mu, noise_variances=psi).log_evidence(x)
    cov = w @ w.T + np.diag(psi)
    np.testing.assert_array_less(np.abs(got - expected), log_density_bound(cov, x, mu, d + k))


# --------------------------------------------------------------------------- BLR
@given(seed=seeds, n_obs=st.integers(1, 8), m=dims)
@example(seed=3, n_obs=2, m=5)
def test_blr_posterior_matches_prml_3_53(seed: int, n_obs: int, m: int) -> None:
    """Weight posterior vs PRML eq. 3.53-3.54 with a general prior N(m0, S0)."""
    rng = np.random.default_rng(seed)
    phi = rng.standard_normal((n_obs, m))
    m0 = rng.standard_normal(m)
    root = rng.standard_normal((m, m))
    s0 = root @ root.T / m + 0.5 * np.eye(m)
    beta = float(rng.uniform(0.5, 20.0))
    t = phi @ rng.standard_normal(m) + rng.standard_normal(n_obs) / np.sqrt(beta)
    model = bayesian_linear_regression(
        design=phi, prior_mean=m0, prior_cov=s0, noise_variance=1.0 / beta
    )
    s_n_inv = np.linalg.inv(s0) + beta * phi.T @ phi  # eq. 3.54
    rhs = np.linalg.solve(s0, m0) + beta * phi.T @ t
    m_n = np.linalg.solve(s_n_inv, rhs)  # eq. 3.53
    posterior = model.posterior(t)
    assert posterior.mean.shape == (m,)
    s_n = np.linalg.inv(s_n_inv)
    kappa = np.linalg.cond(s_n_inv) * np.linalg.cond(s0)
    bound = posterior_mean_bound(s_n, np.eye(n_obs) / beta, phi, t, np.zeros(n_obs), m0, s0, kappa)
    assert np.all(np.abs(posterior.mean - m_n) <= bound[0])
    got_cov = posterior.scale_tril @ posterior.scale_tril.T
    cov_bound = ROUNDING * (n_obs + m) * np.linalg.cond(s_n_inv) * EPS * np.linalg.norm(s_n, 2)
    assert np.max(np.abs(got_cov - s_n)) <= cov_bound * np.linalg.cond(s0)


@given(seed=seeds, n_obs=st.integers(1, 8), m=dims)
@example(seed=4, n_obs=3, m=6)
def test_blr_log_evidence_matches_prml_3_86(seed: int, n_obs: int, m: int) -> None:
    """log p(t | alpha, beta) vs PRML eq. 3.86 (m0 = 0, S0 = I / alpha)."""
    rng = np.random.default_rng(seed)
    phi = rng.standard_normal((n_obs, m))
    alpha = float(rng.uniform(0.1, 10.0))
    beta = float(rng.uniform(0.5, 20.0))
    t = phi @ rng.standard_normal(m) + rng.standard_normal(n_obs) / np.sqrt(beta)
    model = bayesian_linear_regression(
        design=phi, prior_mean=np.zeros(m), prior_cov=np.eye(m) / alpha, noise_variance=1.0 / beta
    )
    a = alpha * np.eye(m) + beta * phi.T @ phi  # eq. 3.81
    m_n = beta * np.linalg.solve(a, phi.T @ t)  # eq. 3.84
    energy = 0.5 * beta * np.sum((t - phi @ m_n) ** 2) + 0.5 * alpha * m_n @ m_n  # eq. 3.82
    logdet_a = np.linalg.slogdet(a)[1]
    evidence = (
        0.5 * m * math.log(alpha) + 0.5 * n_obs * math.log(beta) - energy
        - 0.5 * logdet_a - 0.5 * n_obs * LOG_2PI
    )  # fmt: skip
    got = model.log_evidence(t)
    assert isinstance(got, float)
    magnitude = (
        abs(0.5 * m * math.log(alpha)) + abs(0.5 * n_obs * math.log(beta)) + abs(energy)
        + 0.5 * abs(logdet_a) + 0.5 * n_obs * LOG_2PI
    )  # fmt: skip
    bound = ROUNDING * (n_obs + m) * np.linalg.cond(a) * EPS * magnitude
    assert abs(got - evidence) <= bound, (got, evidence, bound)


# --------------------------------------------------------------------------- validation
W = [[1.0], [2.0]]
VALID = {
    "ppca": (ppca, {"weights": W, "mean": [0.0, 0.0], "noise_variance": 1.0}),
    "fa": (factor_analysis, {"loadings": W, "mean": [0.0, 0.0], "noise_variances": [1.0, 1.0]}),
    "blr": (
        bayesian_linear_regression,
        {"design": W, "prior_mean": [0.0], "prior_cov": [[1.0]], "noise_variance": 1.0},
    ),
}
#: (family, argument, bad value, error, names the message may start with)
BAD_ARGUMENTS = [
    ("ppca", "weights", [1.0, 2.0], InvalidInputError, "weights"),
    ("ppca", "weights", np.zeros((0, 1)), InvalidInputError, "weights"),
    ("ppca", "weights", "W", InvalidTypeError, "weights"),
    ("ppca", "mean", [0.0, 0.0, 0.0], InvalidInputError, "mean"),
    ("ppca", "noise_variance", -1.0, InvalidInputError, "noise_variance"),
    ("ppca", "noise_variance", 0.0, InvalidInputError, "noise_variance"),
    ("ppca", "noise_variance", [1.0], InvalidInputError, "noise_variance"),
    ("ppca", "noise_variance", np.nan, InvalidInputError, "noise_variance"),
    ("fa", "loadings", [1.0, 2.0], InvalidInputError, "loadings"),
    ("fa", "loadings", np.zeros((2, 0)), InvalidInputError, "loadings"),
    ("fa", "mean", [0.0], InvalidInputError, "mean"),
    ("fa", "noise_variances", [1.0, -1.0], InvalidInputError, "noise_variances"),
    ("fa", "noise_variances", [1.0, 1.0, 1.0], InvalidInputError, "noise_variances"),
    ("fa", "noise_variances", np.eye(2), InvalidInputError, "noise_variances"),
    ("blr", "design", [1.0, 2.0], InvalidInputError, "design"),
    ("blr", "noise_variance", 0.0, InvalidInputError, "noise_variance"),
    ("blr", "prior_mean", [0.0, 0.0], InvalidInputError, "prior_mean"),
    ("blr", "prior_cov", [[-1.0]], InvalidInputError, "prior_cov"),
    ("blr", "prior_cov", [[1.0, 0.0]], InvalidInputError, "prior_cov"),
    # Two columns in the design but a one-dimensional prior: any of the three is to blame.
    ("blr", "design", [[1.0, 2.0]], InvalidInputError, "design|prior_mean|prior_cov"),
]


@pytest.mark.parametrize(
    ("family", "argument", "value", "error", "names"),
    BAD_ARGUMENTS,
    ids=[f"{case[0]}-{case[1]}-{i}" for i, case in enumerate(BAD_ARGUMENTS)],
)
def test_family_validation_names_the_argument(
    family: str, argument: str, value: object, error: type, names: str
) -> None:
    """A bad family argument raises the package error whose message names that argument."""
    constructor, valid = VALID[family]
    with pytest.raises(error) as info:
        constructor(**{**valid, argument: value})
    assert isinstance(info.value, ValueError if error is InvalidInputError else TypeError)
    # Every message of the package reads "<name> must ...", with the caller's name.
    assert re.match(rf"({names}) must\b", str(info.value)), str(info.value)
