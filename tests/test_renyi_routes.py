"""The Rényi / CUBO / importance-weight oracle against routes that share none of its code.

The oracle whitens q and the posterior, diagonalises, and sums per-direction closed
forms. Each route here recomputes from the defining integral
:math:`\\mathbb E_q[w^\\beta] = \\int p(x,z)^\\beta q(z)^{1-\\beta}dz`, with log densities
from ``scipy.stats`` (or written out in ``mpmath``):

1. quadrature: ``scipy.integrate.quad`` for K = 1 and a Gauss–Hermite grid for K = 2,
   about a mode and a curvature found numerically (the log integrand's convexity also
   checks the domain's ends);
2. Monte Carlo with a two-sided false-alarm rate of ``ALPHA = 1e-6`` per assertion
   (``Z_CRIT = 4.89``), standard errors from the samples, only where the estimator's
   variance is finite (and its fourth moment, so the sample variance converges);
3. ``mpmath``: Gil, Alajaji & Linder's textbook formula at 60 digits on the exact
   float64 inputs (no cancellation left to fear), and ``mpmath.quad`` of the 1-D
   integral at 40 digits.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import scipy.integrate
import scipy.optimize
import scipy.special
import scipy.stats

from elbo_check import Gaussian
from elbo_check._random import random_gaussian, random_model
from elbo_check._renyi import (
    importance_weight_moment,
    importance_weight_stats,
    renyi_alpha_interval,
    renyi_bound,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
)

#: Per-assertion two-sided false-alarm rate of every statistical test in this module.
ALPHA = 1e-6
#: ``norm.isf(ALPHA / 2)`` ~= 4.8916.
Z_CRIT = float(scipy.stats.norm.isf(ALPHA / 2))
LOG_2PI = math.log(2 * math.pi)


def _problem(
    seed: int, k: int, d: int, q_scale: float, family: str = "general", spread: float = 2.0
):
    """A model, an x from its marginal and q = N(posterior mean + offset, S) with
    ``q_scale`` Sigma <= S <= ``q_scale * spread`` Sigma (``q_scale >= 1``: every moment
    of order beta > 0 is finite)."""
    rng = np.random.default_rng(seed)
    model = random_model(rng, data_dim=d, latent_dim=k, condition_number=10.0, family=family)
    x = model.marginal_mean + rng.standard_normal(d) * np.sqrt(model.marginal_variances())
    post = model.posterior(x)
    shape = random_gaussian(rng, k, condition_number=spread, cov_scale=1.0).cov
    root = np.linalg.cholesky(post.cov)
    cov = q_scale * root @ (shape / np.linalg.eigvalsh(shape)[0]) @ root.T  # S >= scale Sigma
    mean = post.mean + 0.5 * np.sqrt(post.variances) * rng.standard_normal(k)
    return model, Gaussian.from_covariance(mean=mean, cov=0.5 * (cov + cov.T)), x


def _log_integrand(model, q, x, beta):
    """z -> beta log p(x, z) + (1 - beta) log q(z), rows z of shape (n, K), from scipy."""
    noise = scipy.stats.multivariate_normal(np.zeros(model.data_dim), model.dense_noise_cov())
    prior = scipy.stats.multivariate_normal(model.prior.mean, model.prior.cov)
    proposal = scipy.stats.multivariate_normal(q.mean, q.cov)

    def f(z):
        z = np.atleast_2d(np.asarray(z, dtype=float)).reshape(-1, model.latent_dim)
        residual = x - z @ model.weights.T - model.bias
        joint = np.atleast_1d(noise.logpdf(residual)) + np.atleast_1d(prior.logpdf(z))
        return beta * joint + (1.0 - beta) * np.atleast_1d(proposal.logpdf(z))

    return f


def _finite_betas(model, q, candidates):
    low, high = renyi_alpha_interval(model, q)
    return [b for b in candidates if low < 1.0 - b < high]


# ---------------------------------------------------------------------------- quadrature
@pytest.mark.parametrize(("seed", "d", "q_scale"), [(0, 1, 0.7), (1, 2, 1.3), (2, 3, 3.0)])
def test_one_dimensional_quad_of_the_moments(seed, d, q_scale):
    """K = 1: log E_q[w^beta] = f* + log quad(exp(f - f*)) over the mode +- 40 sd of the
    integrand (a Gaussian: beyond that below exp(-800)), the mode by Brent's method and
    the sd from a second difference. Agreement to 1e-10 (quad's own error is ~1e-13)."""
    model, q, x = _problem(seed, 1, d, q_scale)
    candidates = [-2.0, -0.7, -1e-7, 0.3, 1.0, 1.6, 2.0, 3.0]
    betas = _finite_betas(model, q, candidates)
    assert len(betas) >= 5
    for beta in betas:
        f = _log_integrand(model, q, x, beta)
        scalar = lambda z, f=f: float(f(z)[0])  # noqa: E731
        mode = scipy.optimize.minimize_scalar(
            lambda z, s=scalar: -s(z), bracket=(q.mean[0] - 1.0, q.mean[0] + 1.0)
        ).x
        top = scalar(mode)
        step = 1e-2 * math.sqrt(q.cov[0, 0])
        curvature = -(scalar(mode + step) - 2 * top + scalar(mode - step)) / step**2
        assert curvature > 0
        sd = 1.0 / math.sqrt(curvature)
        integral, error = scipy.integrate.quad(
            lambda z, s=scalar, t=top: math.exp(s(z) - t),
            mode - 40 * sd,
            mode + 40 * sd,
            points=[mode],
            epsabs=0.0,
            epsrel=1e-13,
            limit=200,
        )
        assert error <= 1e-11 * integral
        expected = top + math.log(integral)
        assert importance_weight_moment(model, q, x, beta) == pytest.approx(
            expected, rel=1e-10, abs=1e-10
        )


def _hessian(f, point, step):
    """The Hessian of f at ``point`` by central second differences of width ``step``."""
    k = len(point)
    hessian = np.empty((k, k))
    basis = np.eye(k) * step
    for i in range(k):
        for j in range(k):
            corners = [point + basis[i] + basis[j], point + basis[i] - basis[j]]
            corners += [point - basis[i] + basis[j], point - basis[i] - basis[j]]
            values = f(np.array(corners))
            hessian[i, j] = (values[0] - values[1] - values[2] + values[3]) / (4 * step**2)
    return 0.5 * (hessian + hessian.T)


@pytest.mark.parametrize(("seed", "q_scale"), [(3, 0.6), (4, 0.8), (5, 2.5), (9, 0.3)])
def test_log_integrand_is_integrable_exactly_inside_the_interval(seed, q_scale):
    """The oracle's interval ends against the log integrand's curvature. The Hessians of
    log p(x, z) and log q(z) are taken by second differences of scipy's log densities
    (exact for these quadratics up to rounding); the integrand's is
    beta H_joint + (1 - beta) H_q. Just inside an end (1e-4 relative) it is negative
    definite, just outside it is not (so the integral diverges)."""
    model, q, x = _problem(seed, 2, 3, q_scale, spread=3.0)
    low, high = renyi_alpha_interval(model, q)
    step = math.sqrt(float(np.min(np.linalg.eigvalsh(q.cov))))
    joint = _hessian(_log_integrand(model, q, x, 1.0), q.mean, step)
    proposal = _hessian(_log_integrand(model, q, x, 0.0), q.mean, step)
    ends = [end for end in (low, high) if math.isfinite(end)]
    assert ends
    for end in ends:
        for factor, concave in ((1 - 1e-4, True), (1 + 1e-4, False)):
            beta = 1.0 - (0.5 + (end - 0.5) * factor)
            hessian = beta * joint + (1.0 - beta) * proposal
            assert (np.max(np.linalg.eigvalsh(hessian)) < 0) == concave


@pytest.mark.parametrize(("seed", "d", "q_scale"), [(6, 2, 0.8), (7, 3, 1.5), (8, 4, 4.0)])
def test_two_dimensional_gauss_hermite_of_the_moments(seed, d, q_scale):
    """K = 2: two Newton steps on the log integrand with finite-difference derivatives
    find its mode z* and curvature P; then int exp(f) dz = exp(f*) det(P)^-1/2 2 pi
    E_v[exp(f(z* + P^-1/2 v) - f* + |v|^2 / 2)], v ~ N(0, I), by a 40 x 40 probabilists'
    Gauss–Hermite grid. Agreement to 1e-9 of the moment."""
    model, q, x = _problem(seed, 2, d, q_scale)
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    weights = weights / math.sqrt(2 * math.pi)
    grid = np.stack(np.meshgrid(nodes, nodes, indexing="ij"), axis=-1).reshape(-1, 2)
    grid_weights = np.outer(weights, weights).reshape(-1)
    for beta in _finite_betas(model, q, [-1.5, -0.4, 0.5, 1.0, 2.0, 2.5]):
        f = _log_integrand(model, q, x, beta)
        step = 1e-2 * math.sqrt(float(np.min(np.linalg.eigvalsh(q.cov))))
        mode = np.array(q.mean)
        for _ in range(2):
            gradient = np.array(
                [(f(mode + e)[0] - f(mode - e)[0]) / (2 * step) for e in np.eye(2) * step]
            )
            hessian = _hessian(f, mode, step)
            mode = mode - np.linalg.solve(hessian, gradient)
        precision = -hessian
        root = np.linalg.cholesky(precision)  # P = R R'
        top = f(mode)[0]
        points = mode + np.linalg.solve(root.T, grid.T).T  # z = z* + R^-T v
        inner = np.exp(f(points) - top + 0.5 * np.sum(grid**2, axis=1))
        log_integral = (
            top + math.log(2 * math.pi * (grid_weights @ inner)) - np.sum(np.log(np.diag(root)))
        )
        assert importance_weight_moment(model, q, x, beta) == pytest.approx(
            log_integral, rel=1e-9, abs=1e-9
        )


# ---------------------------------------------------------------------------- Monte Carlo
def _log_weights(model, q, x, n, rng):
    """n draws z ~ q (numpy's generator and q's Cholesky factor) and log w(z), by scipy."""
    z = q.mean + rng.standard_normal((n, model.latent_dim)) @ np.linalg.cholesky(q.cov).T
    return _log_integrand(model, q, x, 1.0)(z) - scipy.stats.multivariate_normal(
        q.mean, q.cov
    ).logpdf(z)


@pytest.mark.parametrize(("seed", "d"), [(10, 2), (11, 3)])
def test_moments_against_monte_carlo(seed, d):
    """E_q[w^beta] / exp(oracle log E_q[w^beta]) = 1 within Z_CRIT standard errors, for
    alpha = 1 - beta in {2.5, 1.5, 0.5, 0, -1, -2} (negative: the CUBO): only where
    E[w^(2 beta)] and E[w^(4 beta)] are finite (the estimator's variance, and the
    variance of its sample variance), which the oracle's interval decides."""
    model, q, x = _problem(seed, 2, d, 1.05, spread=1.3)
    rng = np.random.default_rng(seed)
    log_w = _log_weights(model, q, x, 400_000, rng)
    tested = 0
    for beta in (-1.5, -0.5, 0.5, 1.0, 2.0, 3.0):
        if len(_finite_betas(model, q, [beta, 2 * beta, 4 * beta])) < 3:
            continue
        ratios = np.exp(beta * log_w - importance_weight_moment(model, q, x, beta))
        standard_error = np.std(ratios, ddof=1) / math.sqrt(len(ratios))
        assert abs(np.mean(ratios) - 1.0) <= Z_CRIT * standard_error
        tested += 1
    assert tested >= 5
    stats = importance_weight_stats(model, q, x)
    centred = log_w - np.mean(log_w)
    second = np.mean(centred**2)
    spread = math.sqrt((np.mean(centred**4) - second**2) / len(log_w))
    assert abs(np.var(log_w, ddof=1) - stats.log_weight_variance) <= Z_CRIT * spread


def test_relative_variance_ess_and_iwae_bias_against_monte_carlo():
    """chi^2 = E[(w/p)^2] - 1 by Monte Carlo (E[w^4] finite); and the IWAE bound's bias
    with n = 10 weights, over 80 000 independent bounds: the mean of log(mean w / p)
    against the oracle's first-order term plus the second-order term of the same
    expansion, mu3 / (3 n^2) - 3 mu2^2 / (4 n^2) (mu_j the central moments of w / p,
    from importance_weight_moment), within Z_CRIT standard errors plus a third-order
    allowance of |second-order term|."""
    model, q, x = _problem(12, 2, 3, 1.15)
    evidence = model.log_evidence(x)
    stats = importance_weight_stats(model, q, x)
    assert 0.05 < stats.relative_variance < 2.0
    assert stats.ess_per_sample == pytest.approx(1.0 / (1.0 + stats.relative_variance))
    rng = np.random.default_rng(12)
    n, replicates = 10, 80_000
    log_w = _log_weights(model, q, x, n * replicates, rng) - evidence
    squares = np.exp(2.0 * log_w)
    error = np.std(squares, ddof=1) / math.sqrt(len(squares))
    assert abs(np.mean(squares) - 1.0 - stats.relative_variance) <= Z_CRIT * error
    bounds = scipy.special.logsumexp(log_w.reshape(replicates, n), axis=1) - math.log(n)
    raw = [math.exp(importance_weight_moment(model, q, x, j) - j * evidence) for j in (2, 3)]
    mu2 = raw[0] - 1.0
    mu3 = raw[1] - 3.0 * raw[0] + 2.0
    second_order = mu3 / (3 * n**2) - 3 * mu2**2 / (4 * n**2)
    expected = stats.iwae_bias(n) + second_order
    assert stats.iwae_bias(n) == pytest.approx(-mu2 / (2 * n), rel=1e-12)
    standard_error = np.std(bounds, ddof=1) / math.sqrt(replicates)
    assert abs(np.mean(bounds) - expected) <= Z_CRIT * standard_error + abs(second_order)
    assert Z_CRIT * standard_error + abs(second_order) < 0.5 * abs(stats.iwae_bias(n))


# ---------------------------------------------------------------------------- mpmath
def _mp(array) -> mpmath.matrix:
    return mpmath.matrix(np.asarray(array, dtype=np.float64).tolist())


def _mp_log_det(matrix: mpmath.matrix):
    factor = mpmath.cholesky(matrix)
    return 2 * mpmath.fsum(mpmath.log(factor[i, i]) for i in range(matrix.rows))


def _mp_renyi_bound(model, q, x, alpha):
    """Gil, Alajaji & Linder's formula at the working precision, from the model's exact
    float64 inputs (the prior is L0 L0', q is L L', the noise as given)."""
    w, b = _mp(model.weights), _mp(model.bias)
    mu0, l0 = _mp(model.prior.mean), _mp(model.prior.scale_tril)
    s0 = l0 * l0.T
    given = np.asarray(model.noise_cov, dtype=float)
    psi = _mp(
        given * np.eye(model.data_dim)
        if given.ndim == 0
        else (np.diag(given) if given.ndim == 1 else given)
    )
    precision = s0**-1 + w.T * psi**-1 * w
    sigma = precision**-1
    data = _mp(x)
    mean = sigma * (w.T * psi**-1 * (data - b) + s0**-1 * mu0)
    marginal = w * s0 * w.T + psi
    offset = data - w * mu0 - b
    evidence = (
        -(
            model.data_dim * mpmath.log(2 * mpmath.pi)
            + _mp_log_det(marginal)
            + (offset.T * marginal**-1 * offset)[0]
        )
        / 2
    )
    lq = _mp(q.scale_tril)
    s = lq * lq.T
    d = _mp(q.mean) - mean
    a = mpmath.mpf(alpha)
    if a == 1:
        k = model.latent_dim
        trace = mpmath.fsum((precision * s)[i, i] for i in range(k))
        divergence = (
            trace - k + (d.T * precision * d)[0] + _mp_log_det(sigma) - _mp_log_det(s)
        ) / 2
    else:
        combined = a * sigma + (1 - a) * s
        log_dets = _mp_log_det(combined) - (1 - a) * _mp_log_det(s) - a * _mp_log_det(sigma)
        divergence = a / 2 * (d.T * combined**-1 * d)[0] - log_dets / (2 * (a - 1))
    return evidence - divergence


@pytest.mark.parametrize(
    ("seed", "k", "d", "q_scale", "family"),
    [
        (20, 1, 1, 0.5, "general"),
        (21, 2, 3, 2.0, "full_noise"),
        (22, 3, 2, 0.3, "factor_analysis"),
        (23, 3, 4, 1.0, "ppca"),
        (24, 2, 2, 5.0, "bayesian_linear_regression"),
    ],
)
def test_values_and_error_bounds_against_60_digits(seed, k, d, q_scale, family):
    """Every alpha of the list that is in the domain, and points 1e-3 and 1e-6 (relative)
    inside each finite end: the float64 value is within its reported error bound of
    the 60-digit value, and the bound is not vacuous (below 1e-9 relative away from the
    ends). Near alpha = 1 the textbook formula's 0/0 is harmless at 60 digits: it loses
    at most 14 of them."""
    model, q, x = _problem(seed, k, d, q_scale, family)
    low, high = renyi_alpha_interval(model, q)
    alphas = [
        1.0,
        1 + 1e-14,
        1 - 1e-12,
        1 + 1e-8,
        1 - 1e-5,
        0.0,
        1e-13,
        -1e-10,
        0.5,
        np.nextafter(0.5, 0.0),
        0.25,
        0.75,
        1.5,
        2.0,
        3.0,
        -0.5,
        -1.0,
        -2.5,
    ]
    near_ends = []
    for end in (low, high):
        if math.isfinite(end):
            near_ends += [end - 1e-3 * (end - 0.5), end - 1e-6 * (end - 0.5)]
    with mpmath.workdps(60):
        for alpha in [a for a in alphas if low < a < high] + near_ends:
            value, bound = renyi_bound(model, q, x, float(alpha), return_error_bound=True)
            exact = _mp_renyi_bound(model, q, x, alpha)
            assert abs(mpmath.mpf(value) - exact) <= bound
            if alpha not in near_ends:
                assert bound <= 1e-9 * (1.0 + abs(value))


@pytest.mark.parametrize("alpha", [2.0, 1.0 + 1e-10, 1.0 - 1e-9, 0.5, 1e-6, -0.5, -2.0])
def test_one_dimensional_mpmath_quadrature(alpha):
    """K = 1, D = 2: L_alpha = log(int p(x,z)^(1-alpha) q(z)^alpha dz) / (1 - alpha) by
    mpmath.quad at 40 digits, the log densities written out in mpmath from the exact
    inputs, the line split at the integrand's mode; against renyi_bound's error bound."""
    model, q, x = _problem(30, 1, 2, 0.8)
    low, high = renyi_alpha_interval(model, q)
    assert low < alpha < high
    beta = 1.0 - alpha
    w, b = [mpmath.mpf(v) for v in model.weights[:, 0]], [mpmath.mpf(v) for v in model.bias]
    psi = (
        [mpmath.mpf(float(model.noise_cov))] * 2
        if np.ndim(model.noise_cov) == 0
        else [mpmath.mpf(v) for v in np.asarray(model.noise_cov)]
    )
    mu0, s0 = mpmath.mpf(model.prior.mean[0]), mpmath.mpf(model.prior.scale_tril[0, 0]) ** 2
    m, s = mpmath.mpf(q.mean[0]), mpmath.mpf(q.scale_tril[0, 0]) ** 2

    def log_normal(value, mean, variance):
        return -(mpmath.log(2 * mpmath.pi * variance) + (value - mean) ** 2 / variance) / 2

    def log_integrand(z):
        joint = log_normal(z, mu0, s0) + mpmath.fsum(
            log_normal(mpmath.mpf(x[i]), w[i] * z + b[i], psi[i]) for i in range(2)
        )
        return beta * joint + (1 - beta) * log_normal(z, m, s)

    mode = scipy.optimize.minimize_scalar(lambda z: -float(log_integrand(z)), bracket=(-1, 1)).x
    with mpmath.workdps(40):
        top = log_integrand(mpmath.mpf(mode))
        integral = mpmath.quad(
            lambda z: mpmath.exp(log_integrand(z) - top), [-mpmath.inf, mode, mpmath.inf]
        )
        exact = (top + mpmath.log(integral)) / beta
    value, bound = renyi_bound(model, q, x, alpha, return_error_bound=True)
    assert abs(mpmath.mpf(value) - exact) <= bound
