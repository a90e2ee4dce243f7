"""The model's closed forms checked against independent routes.

:class:`elbo_check.LinearGaussianModel` evaluates everything in whitened coordinates
from one QR factorisation. Each test here recomputes a quantity by a route that shares
no code with that: dense textbook formulas (Bishop, PRML eq. 2.113-2.117) with
``numpy.linalg.solve`` and ``scipy.stats.multivariate_normal``, numerical quadrature of
the defining integrals, Monte Carlo with a stated false-alarm rate, and ``mpmath`` at 50
significant digits on the exact float64 inputs.

Statistical tests use a two-sided false-alarm rate of ``ALPHA = 1e-6`` per assertion
(``Z_CRIT = norm.isf(ALPHA / 2) ~= 4.89``); with the ``ci`` profile that bounds the chance
of a spurious failure of any one test by about 1e-4.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

import elbo_check._marginal as marginal_module
from elbo_check import Gaussian, LinearGaussianModel, factor_analysis, ppca
from elbo_check._random import FAMILIES, random_gaussian, random_model, random_spd

#: Hypothesis imports libcst to write its failure patches, and libcst triggers a
#: DeprecationWarning from mypy_extensions; under ``filterwarnings = error`` that turns
#: the first failing example into a pytest INTERNALERROR that aborts the whole run.
pytestmark = pytest.mark.filterwarnings(
    "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
)

#: Per-assertion two-sided false-alarm rate of every statistical test in this module.
ALPHA = 1e-6
#: The matching two-sided normal critical value, ``norm.isf(ALPHA / 2)`` ~= 4.8916.
Z_CRIT = float(scipy.stats.norm.isf(ALPHA / 2))
#: float64 machine epsilon (``2**-52``).
EPS = float(np.finfo(np.float64).eps)
#: Working precision of every mpmath reference (decimal digits).
MP_DIGITS = 50
LOG_2PI = math.log(2 * math.pi)

seeds = st.integers(min_value=0, max_value=2**32 - 1)
families = st.sampled_from(FAMILIES)
conditions = st.sampled_from([1.0, 10.0, 1e3])


# ---------------------------------------------------------------------------- dense routes
def _dense_noise(model: LinearGaussianModel) -> np.ndarray:
    """Psi as a matrix, built from the noise exactly as it was given (not dense_noise_cov)."""
    given = np.asarray(model.noise_cov, dtype=np.float64)
    if given.ndim == 0:
        return float(given) * np.eye(model.data_dim)
    if given.ndim == 1:
        return np.diag(given)
    return given


def _dense_marginal(model: LinearGaussianModel) -> tuple[np.ndarray, np.ndarray]:
    """Bishop eq. 2.115: p(x) = N(W mu0 + b, Psi + W S0 W')."""
    w = model.weights
    cov = w @ model.prior.cov @ w.T + _dense_noise(model)
    return w @ model.prior.mean + model.bias, 0.5 * (cov + cov.T)


def _dense_posterior(model: LinearGaussianModel, x: np.ndarray):
    """Bishop eq. 2.116-2.117 with dense solves: (mean, cov, precision) of p(z | x).

    Lambda = S0^-1 + W' Psi^-1 W, Sigma = Lambda^-1,
    m = Sigma (W' Psi^-1 (x - b) + S0^-1 mu0); ``x`` may carry batch axes.
    """
    w, psi, s0 = model.weights, _dense_noise(model), model.prior.cov
    noise_solved = np.linalg.solve(psi, w)  # Psi^-1 W
    precision = np.linalg.inv(s0) + w.T @ noise_solved
    precision = 0.5 * (precision + precision.T)
    cov = np.linalg.inv(precision)
    cov = 0.5 * (cov + cov.T)
    rhs = (np.asarray(x) - model.bias) @ noise_solved + np.linalg.solve(s0, model.prior.mean)
    mean = np.linalg.solve(precision, rhs.reshape(-1, model.latent_dim).T).T
    return mean.reshape(rhs.shape), cov, precision


def _scipy_log_joint(model: LinearGaussianModel, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """log p(x | z) + log p(z) with scipy's multivariate normal, for rows z of shape (n, K)."""
    z = np.atleast_2d(z)
    residual = np.asarray(x) - z @ model.weights.T - model.bias
    noise = scipy.stats.multivariate_normal(np.zeros(model.data_dim), _dense_noise(model))
    prior = scipy.stats.multivariate_normal(model.prior.mean, model.prior.cov)
    return np.atleast_1d(noise.logpdf(residual)).reshape(len(z)) + np.atleast_1d(
        prior.logpdf(z)
    ).reshape(len(z))


def _draw_x(rng: np.random.Generator, model: LinearGaussianModel, shape) -> np.ndarray:
    """Observations from the dense marginal, drawn by numpy (not by model.sample)."""
    mean, cov = _dense_marginal(model)
    draws = rng.multivariate_normal(mean, cov, size=int(np.prod(shape, dtype=int)))
    return draws.reshape(*shape, model.data_dim)


def _model_strategy(max_dim: int = 6):
    return st.tuples(seeds, families, st.integers(1, max_dim), st.integers(1, max_dim), conditions)


def _build(params) -> tuple[np.random.Generator, LinearGaussianModel]:
    seed, family, d, k, condition_number = params
    rng = np.random.default_rng(seed)
    model = random_model(
        rng, data_dim=d, latent_dim=k, family=family, condition_number=condition_number
    )
    return rng, model


# ---------------------------------------------------------------------------- dense checks
@given(params=_model_strategy(), x_shape=st.sampled_from([(), (4,), (2, 3)]))
def test_log_evidence_matches_scipy_on_the_dense_marginal(params, x_shape):
    """log_evidence against scipy.stats.multivariate_normal.logpdf on W S0 W' + Psi.

    Every family of FAMILIES (hence isotropic, diagonal and full noise), K > D included,
    x of shapes (D,), (N, D) and (2, 3, D). scipy factors C by eigh, so the routes agree
    to ~ eps * cond(C) * (|log p| + D): measured <= 55 units of that over 9000 rows;
    asserted with 600.
    """
    rng, model = _build(params)
    x = _draw_x(rng, model, x_shape)
    ours = np.asarray(model.log_evidence(x))
    assert ours.shape == x_shape
    if x_shape == ():
        assert isinstance(model.log_evidence(x), float)
    mean, cov = _dense_marginal(model)
    expected = scipy.stats.multivariate_normal(mean, cov).logpdf(x.reshape(-1, model.data_dim))
    expected = np.atleast_1d(expected).reshape(x_shape)
    scale = np.abs(expected) + model.data_dim
    assert np.all(np.abs(ours - expected) <= 600 * EPS * np.linalg.cond(cov) * scale)


@pytest.mark.parametrize("kind", ["isotropic", "diagonal", "full"])
@pytest.mark.parametrize(("d", "k"), [(1, 1), (4, 2), (3, 5), (6, 6)])
def test_log_evidence_noise_kinds_and_batches(kind, d, k, rng):
    """Each noise kind, K < D, K = D and K > D, x of shape (D,), (N, D), (2, 3, D), vs scipy.

    Also checks dense_noise_cov() against the matrix built here from the given noise.
    """
    weights = rng.standard_normal((d, k))
    bias = rng.standard_normal(d)
    prior = random_gaussian(rng, k, condition_number=10.0)
    noise = {
        "isotropic": 0.7,
        "diagonal": rng.uniform(0.2, 2.0, size=d),
        "full": random_spd(rng, d, condition_number=10.0, scale=0.3),
    }[kind]
    model = LinearGaussianModel(weights=weights, bias=bias, prior=prior, noise_cov=noise)
    assert model.noise_kind == kind
    assert_allclose(model.dense_noise_cov(), _dense_noise(model), rtol=4e-15, atol=0)
    mean, cov = _dense_marginal(model)
    reference = scipy.stats.multivariate_normal(mean, cov)
    for shape in [(), (5,), (2, 3)]:
        x = _draw_x(rng, model, shape)
        ours = np.asarray(model.log_evidence(x))
        assert ours.shape == shape
        expected = np.atleast_1d(reference.logpdf(x.reshape(-1, d))).reshape(shape)
        assert_allclose(ours, expected, rtol=1e-13, atol=1e-13)


@given(params=_model_strategy(), n_rows=st.integers(0, 3))
def test_posterior_matches_bishop_2_116(params, n_rows):
    """posterior(x) mean/cov and posterior_precision against Bishop eq. 2.116-2.117, dense.

    ``n_rows = 0`` means a single x of shape (D,); otherwise a batch (N, D) whose posterior
    is a batch of means sharing one covariance.
    """
    rng, model = _build(params)
    x = _draw_x(rng, model, (n_rows,) if n_rows else ())
    post = model.posterior(x)
    mean, cov, precision = _dense_posterior(model, x)
    assert post.mean.shape == (*x.shape[:-1], model.latent_dim)
    # The dense route inverts S0 and Lambda, costing ~ eps * cond(Lambda): measured <= 310
    # units of that (relative to the largest entry, or per coordinate to |m| + sd) over
    # 3000 seeds; asserted with 3500.
    tol = 3500 * EPS * np.linalg.cond(precision)
    assert_allclose(post.cov, cov, rtol=0, atol=tol * np.abs(cov).max())
    assert_allclose(
        model.posterior_precision, precision, rtol=0, atol=tol * np.abs(precision).max()
    )
    spread = np.sqrt(np.diag(cov))
    assert np.all(np.abs(post.mean - mean) <= tol * (np.abs(mean) + spread))


@given(params=_model_strategy())
def test_marginal_matches_dense_formula(params):
    """marginal() mean and covariance against W mu0 + b and W S0 W' + Psi (Bishop 2.115)."""
    _, model = _build(params)
    marginal = model.marginal()
    mean, cov = _dense_marginal(model)
    # Measured over 5000 seeds: means identical, cov within 5.8e-15 of its largest entry.
    assert_allclose(marginal.mean, mean, rtol=1e-14, atol=1e-14)
    assert_allclose(marginal.cov, cov, rtol=0, atol=6e-14 * np.abs(cov).max())


@given(params=_model_strategy(), n_rows=st.integers(1, 3), n_z=st.integers(1, 3))
def test_bayes_rule_identity_at_random_z(params, n_rows, n_z):
    """log p(x) = log p(x, z) - log p(z | x) at arbitrary z (Bayes' rule).

    log p(x, z) is also checked against scipy's densities; z is drawn far from the
    posterior too (prior scale 3), so the identity is not tested only near the mode.
    """
    rng, model = _build(params)
    x = _draw_x(rng, model, (n_rows,))
    z = model.prior.mean + 3 * rng.standard_normal((n_z, n_rows, model.latent_dim))
    joint = model.log_joint(x, z)
    posterior = model.posterior(x).log_prob(z)
    assert joint.shape == (n_z, n_rows)
    scipy_joint = np.stack([_scipy_log_joint(model, x[j], z[:, j]) for j in range(n_rows)], 1)
    # Measured over 3000 seeds, relative to ``scale``: 5.4e-13 for the scipy comparison
    # (scipy's eigh of a prior with cond up to 1e3), 8.2e-15 for the identity.
    scale = np.abs(joint) + np.abs(posterior) + model.data_dim + model.latent_dim
    assert np.all(np.abs(joint - scipy_joint) <= 5e-12 * scale)
    evidence = np.broadcast_to(model.log_evidence(x), joint.shape)
    assert np.all(np.abs(joint - posterior - evidence) <= 1e-13 * scale)


@given(params=_model_strategy(4), batch=st.integers(0, 3))
def test_elbo_terms_match_dense_expectations(params, batch):
    """elbo_terms against dense closed forms written from the definitions.

    E_q[log p(x|z)] = log N(x; W m + b, Psi) - 1/2 tr(Psi^-1 W S W'), the KL and
    cross-entropy to the prior by the textbook formulas; the ELBO's two forms agree, and
    ELBO + KL(q || p(z|x)) = log p(x) with the KL from the dense posterior.
    """
    rng, model = _build(params)
    k = model.latent_dim
    batch_shape = (batch,) if batch else ()
    x = _draw_x(rng, model, batch_shape)
    mean, cov, _ = _dense_posterior(model, x)
    q = Gaussian.from_covariance(
        mean=mean + 0.3 * rng.standard_normal(mean.shape) * np.sqrt(np.diag(cov)),
        cov=cov * rng.uniform(0.5, 2.0),
    )
    terms = model.elbo_terms(q, x)
    w, psi, s0, mu0 = model.weights, _dense_noise(model), model.prior.cov, model.prior.mean
    s = q.cov
    for index in np.ndindex(*batch_shape):
        m, xi = q.mean[index], x[index]
        expected_ll = scipy.stats.multivariate_normal(w @ m + model.bias, psi).logpdf(
            xi
        ) - 0.5 * np.trace(np.linalg.solve(psi, w @ s @ w.T))
        offset = m - mu0
        kl = 0.5 * (
            np.trace(np.linalg.solve(s0, s))
            + offset @ np.linalg.solve(s0, offset)
            - k
            + np.linalg.slogdet(s0)[1]
            - np.linalg.slogdet(s)[1]
        )
        entropy = 0.5 * (k * (1 + LOG_2PI) + np.linalg.slogdet(s)[1])
        values = {
            "expected_log_likelihood": expected_ll,
            "kl_to_prior": kl,
            "cross_entropy": kl + entropy,
            "entropy": entropy,
        }
        for name, value in values.items():
            ours = np.asarray(getattr(terms, name))[index]
            assert_allclose(ours, value, rtol=1e-12, atol=1e-12, err_msg=name)
        kl_post = 0.5 * (
            np.trace(np.linalg.solve(cov, s))
            + (m - mean[index]) @ np.linalg.solve(cov, m - mean[index])
            - k
            + np.linalg.slogdet(cov)[1]
            - np.linalg.slogdet(s)[1]
        )
        elbo = np.asarray(terms.elbo)[index]
        logp = np.asarray(model.log_evidence(xi))
        magnitude = abs(elbo) + kl_post + abs(logp)
        # Measured <= 9.2e-14 over 3000 seeds (the dense KL inverts the posterior cov).
        assert abs(elbo + kl_post - logp) <= 1e-12 * magnitude
    assert_allclose(terms.elbo_joint_form, terms.elbo, rtol=1e-14, atol=1e-14)
    assert_allclose(model.elbo(q, x), terms.elbo, rtol=0, atol=0)


# ---------------------------------------------------------------------------- quadrature
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("d", [1, 3])
def test_one_dimensional_quadrature(family, d):
    """scipy.integrate.quad of p(x) = ∫ p(x|z) p(z) dz and of the ELBO, for K = 1.

    The integrands use scipy's densities only. The interval is the (dense) posterior or
    q mean +- 40 standard deviations, so the neglected tails are below exp(-800); quad is
    asked for 1e-13 relative accuracy and its own error estimate is checked too.
    """
    rng = np.random.default_rng(100 * FAMILIES.index(family) + d)
    model = random_model(rng, data_dim=d, latent_dim=1, family=family, condition_number=10.0)
    x = _draw_x(rng, model, ())
    noise = scipy.stats.multivariate_normal(np.zeros(d), _dense_noise(model))
    prior = scipy.stats.norm(model.prior.mean[0], math.sqrt(model.prior.cov[0, 0]))
    w, b = model.weights[:, 0], model.bias

    def log_joint(z: float) -> float:
        return float(noise.logpdf(x - w * z - b)) + float(prior.logpdf(z))

    mean, cov, _ = _dense_posterior(model, x)
    centre, sd = float(mean[0]), math.sqrt(cov[0, 0])
    shift = log_joint(centre)
    integral, error = scipy.integrate.quad(
        lambda z: math.exp(log_joint(z) - shift),
        centre - 40 * sd,
        centre + 40 * sd,
        points=[centre],
        epsabs=0,
        epsrel=1e-13,
        limit=200,
    )
    assert error <= 1e-11 * integral
    assert_allclose(model.log_evidence(x), math.log(integral) + shift, rtol=0, atol=1e-13)

    for q_mean, q_sd in [(centre + 0.7 * sd, 1.6 * sd), (centre - 3 * sd, 0.3 * sd)]:
        q = Gaussian.from_diagonal(mean=[q_mean], variances=[q_sd**2])
        q_density = scipy.stats.norm(q_mean, q_sd)

        def integrand(z: float, q_density=q_density) -> float:
            return float(q_density.pdf(z)) * (log_joint(z) - float(q_density.logpdf(z)))

        elbo, error = scipy.integrate.quad(
            integrand,
            q_mean - 40 * q_sd,
            q_mean + 40 * q_sd,
            points=[q_mean],
            epsabs=0,
            epsrel=1e-13,
            limit=200,
        )
        assert error <= 1e-10 * abs(elbo)
        assert_allclose(model.elbo(q, x), elbo, rtol=1e-13, atol=1e-13)


def _gauss_hermite_2d(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Tensor Gauss-Hermite nodes (n*n, 2) and log-weights for the weight exp(-|t|^2)."""
    nodes, weights = np.polynomial.hermite.hermgauss(n)
    grid = np.stack(np.meshgrid(nodes, nodes, indexing="ij"), -1).reshape(-1, 2)
    log_w = np.log(weights)
    return grid, (log_w[:, None] + log_w[None, :]).reshape(-1)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("d", [2, 4])
def test_two_dimensional_gauss_hermite_quadrature(family, d):
    """A tensor Gauss-Hermite grid for p(x) = ∫ p(x, z) dz and the ELBO, K = 2.

    Evidence: substitute z = c + A t with c off the posterior mean by (0.3, -0.3)
    posterior standard deviations and A = 1.3 sqrt(2) L_post (dense Bishop posterior),
    so that the remaining factor p(x, z) exp(|t|^2) is a smooth Gaussian exp(-0.69|t|^2 +
    linear) and 60 nodes per axis converge to rounding. ELBO: z = m_q + sqrt(2) L_q t turns
    E_q[log p(x, z) - log q(z)] into a Gauss-Hermite sum of a quadratic, exact for n >= 2.
    All densities are scipy's.
    """
    rng = np.random.default_rng(200 + 100 * FAMILIES.index(family) + d)
    model = random_model(rng, data_dim=d, latent_dim=2, family=family, condition_number=10.0)
    x = _draw_x(rng, model, ())
    mean, cov, _ = _dense_posterior(model, x)
    factor = np.linalg.cholesky(cov)
    grid, log_w = _gauss_hermite_2d(60)
    centre = mean + factor @ np.array([0.3, -0.3])
    transform = 1.3 * math.sqrt(2) * factor
    z = centre + grid @ transform.T
    log_terms = _scipy_log_joint(model, x, z) + np.sum(grid**2, axis=1) + log_w
    log_evidence = scipy.special.logsumexp(log_terms) + np.linalg.slogdet(transform)[1]
    assert_allclose(model.log_evidence(x), log_evidence, rtol=0, atol=2e-13)

    q = Gaussian.from_covariance(mean=mean + factor @ rng.standard_normal(2), cov=2.0 * cov)
    grid, log_w = _gauss_hermite_2d(6)
    z = q.mean + math.sqrt(2) * grid @ np.linalg.cholesky(q.cov).T
    integrand = _scipy_log_joint(model, x, z) - scipy.stats.multivariate_normal(
        q.mean, q.cov
    ).logpdf(z)
    elbo = np.sum(np.exp(log_w) * integrand) / math.pi
    assert_allclose(model.elbo(q, x), elbo, rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------------------- Monte Carlo
@given(params=_model_strategy(4))
@settings(max_examples=min(settings().max_examples, 30))
def test_elbo_matches_monte_carlo(params):
    """ELBO against the mean of log p(x, z) - log q(z) over z ~ q (numpy draws, scipy logs).

    z-test with the sample standard error: ``|mean - ELBO| <= Z_CRIT * s / sqrt(n)``,
    false-alarm rate ALPHA = 1e-6 (normal approximation, n = 20000 draws of a quadratic
    form in Gaussians).
    """
    rng, model = _build(params)
    x = _draw_x(rng, model, ())
    mean, cov, _ = _dense_posterior(model, x)
    q = Gaussian.from_covariance(
        mean=mean + rng.standard_normal(mean.shape) * np.sqrt(np.diag(cov)),
        cov=cov * rng.uniform(0.3, 3.0),
    )
    n = 20_000
    z = rng.multivariate_normal(q.mean, q.cov, size=n)
    values = _scipy_log_joint(model, x, z) - scipy.stats.multivariate_normal(q.mean, q.cov).logpdf(
        z
    )
    standard_error = values.std(ddof=1) / math.sqrt(n)
    assert abs(values.mean() - model.elbo(q, x)) <= Z_CRIT * standard_error


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("k", [1, 2, 3])
def test_log_evidence_matches_importance_sampling_with_hoeffding_bound(family, k):
    """log p(x) against importance sampling from an inflated posterior, with a sound bound.

    Proposal r = N(m, s^2 Sigma) with (m, Sigma) the dense Bishop posterior and s = 1.2.
    The weights w = p(x, z) / r(z) = p(x) p(z|x) / r(z) then satisfy
    0 < w / p(x) <= s^K, so Hoeffding's inequality gives, with probability >= 1 - ALPHA,
    ``|mean(w)/p(x) - 1| <= t = s^K sqrt(log(2/ALPHA) / (2n))``, hence
    ``|log mean(w) - log p(x)| <= -log(1 - t)``. No normal approximation is involved; the
    bound on w uses the dense posterior, whose rounding (~1e-12) is negligible against t.
    """
    rng = np.random.default_rng(300 + 100 * FAMILIES.index(family) + k)
    model = random_model(rng, data_dim=4, latent_dim=k, family=family, condition_number=10.0)
    x = _draw_x(rng, model, ())
    mean, cov, _ = _dense_posterior(model, x)
    inflation, n = 1.2, 100_000
    proposal = scipy.stats.multivariate_normal(mean, inflation**2 * cov)
    z = np.atleast_2d(proposal.rvs(size=n, random_state=rng)).reshape(n, k)
    log_w = _scipy_log_joint(model, x, z) - proposal.logpdf(z).reshape(n)
    estimate = scipy.special.logsumexp(log_w) - math.log(n)
    t = inflation**k * math.sqrt(math.log(2 / ALPHA) / (2 * n))
    assert abs(estimate - model.log_evidence(x)) <= -math.log1p(-t)


# ---------------------------------------------------------------------------- mpmath
def _mp(array) -> mpmath.matrix:
    """An exact mpmath copy of a float64 vector or matrix (every float64 is an mpf)."""
    return mpmath.matrix(np.asarray(array, dtype=np.float64).tolist())


def _mp_log_det(factor: mpmath.matrix) -> mpmath.mpf:
    return 2 * mpmath.fsum(mpmath.log(factor[i, i]) for i in range(factor.rows))


def _mp_dot(u: mpmath.matrix, v: mpmath.matrix) -> mpmath.mpf:
    return mpmath.fsum(u[i] * v[i] for i in range(u.rows))


def _mp_trace(a: mpmath.matrix) -> mpmath.mpf:
    return mpmath.fsum(a[i, i] for i in range(a.rows))


class _ExactModel:
    """The model's exact float64 inputs in mpmath; call inside ``mpmath.workdps``.

    The inputs are W, b, mu0, the prior's Cholesky factor L0 (the prior is defined by
    it: S0 = L0 L0') and Psi exactly as given.
    """

    def __init__(self, model: LinearGaussianModel) -> None:
        self.d, self.k = model.data_dim, model.latent_dim
        self.w, self.b = _mp(model.weights), _mp(model.bias)
        self.mu0, self.l0 = _mp(model.prior.mean), _mp(model.prior.scale_tril)
        self.s0 = self.l0 * self.l0.T
        self.psi = _mp(_dense_noise(model))
        self.c = self.w * self.s0 * self.w.T + self.psi
        self.c_inv = self.c**-1
        self.log_det_c = _mp_log_det(mpmath.cholesky(self.c))
        self.log_det_psi = _mp_log_det(mpmath.cholesky(self.psi))
        self.psi_inv, self.s0_inv = self.psi**-1, self.s0**-1
        self.xbar = self.w * self.mu0 + self.b
        self.abs_l0 = np.abs(model.prior.scale_tril)

    def log_evidence(self, x: np.ndarray) -> tuple[mpmath.mpf, mpmath.mpf]:
        """log p(x) and its componentwise condition number (see _check_log_evidence)."""
        offset = _mp(x) - self.xbar
        r = self.c_inv * offset  # C^-1 (x - xbar) = grad_b log p = -grad_x log p
        maha = _mp_dot(offset, r)
        value = -(self.d * LOG_2PI + self.log_det_c + maha) / 2
        m = r * r.T - self.c_inv  # 2 d log p / dC
        grad_w, grad_s0 = m * self.w * self.s0, self.w.T * m * self.w / 2
        grad_mu0 = self.w.T * r
        s0_abs = self.abs_l0 @ self.abs_l0.T  # bounds |dS0| for relative changes of L0
        d, k = self.d, self.k
        kappa = mpmath.fsum(abs(r[i]) * (abs(x[i]) + abs(self.b[i])) for i in range(d))
        kappa += mpmath.fsum(abs(grad_w[i, j] * self.w[i, j]) for i in range(d) for j in range(k))
        kappa += mpmath.fsum(abs(grad_s0[i, j]) * s0_abs[i, j] for i in range(k) for j in range(k))
        kappa += mpmath.fsum(abs(grad_mu0[i] * self.mu0[i]) for i in range(k))
        kappa += mpmath.fsum(abs(m[i, j] * self.psi[i, j]) / 2 for i in range(d) for j in range(d))
        # Rounding the final sum of its three terms is unavoidable too.
        kappa += (self.d * LOG_2PI + abs(self.log_det_c) + maha) / 2
        return value, kappa

    def elbo(self, q: Gaussian, x: np.ndarray) -> mpmath.mpf:
        """E_q[log p(x|z)] - KL(q || p(z)) from the definitions, q given by its mean and L_q."""
        lq, m = _mp(q.scale_tril), _mp(q.mean)
        s = lq * lq.T
        r = _mp(x) - self.w * m - self.b
        expected = (
            -(
                self.d * LOG_2PI
                + self.log_det_psi
                + _mp_dot(r, self.psi_inv * r)
                + _mp_trace(self.psi_inv * self.w * s * self.w.T)
            )
            / 2
        )
        offset = m - self.mu0
        kl = (
            _mp_trace(self.s0_inv * s)
            + _mp_dot(offset, self.s0_inv * offset)
            - self.k
            + _mp_log_det(self.l0)
            - _mp_log_det(lq)
        ) / 2
        return expected - kl


def _signal_weights(rng: np.random.Generator, d: int, k: int, top: float) -> np.ndarray:
    """W = U diag(top * (1 ... 1e-2)) V' with random orthonormal U (d x k) and V (k x k)."""
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0][:, :k]
    rotation = np.linalg.qr(rng.standard_normal((k, k)))[0]
    return (basis * (top * np.geomspace(1.0, 1e-2, k))) @ rotation.T


def _conditioned_model(family: str, rng: np.random.Generator, exponent: int):
    """A model with D <= 6 whose marginal covariance has condition number ~ 10**exponent.

    * ``ppca``: C = W W' + s2 I with top singular value sqrt(s2 (c - 1)): cond(C) = c.
    * ``fa_signal``: factor analysis, noise variances in [1, 2], strong signal sqrt(c).
    * ``full_noise``: full Psi and a general prior (both with eigenvalues in [1, 2]).
    * ``fa_graded``: factor analysis with O(1) loadings, K = D - 1 and noise variances
      spread over [10**-exponent, 1]; cond(C) stays small (~10-1e3) while the whitened
      weights Psi^-1/2 W span 10**(exponent/2) -- a graded, not an ill-conditioned,
      problem.
    """
    c = 10.0**exponent
    if family == "fa_graded":
        d = int(rng.integers(2, 6))
        k = d - 1
        variances = np.concatenate(
            [[1.0, 10.0**-exponent], 10.0 ** -rng.uniform(0, exponent, d - 2)]
        )
        rng.shuffle(variances)
        return factor_analysis(
            loadings=rng.standard_normal((d, k)),
            mean=rng.standard_normal(d),
            noise_variances=variances,
        )
    d = int(rng.integers(3, 7))
    k = int(rng.integers(1, d))
    if family == "ppca":
        variance = float(rng.uniform(0.5, 2.0))
        weights = _signal_weights(rng, d, k, math.sqrt(variance * (c - 1)))
        return ppca(weights=weights, mean=rng.standard_normal(d), noise_variance=variance)
    weights = _signal_weights(rng, d, k, math.sqrt(c))
    if family == "fa_signal":
        return factor_analysis(
            loadings=weights, mean=rng.standard_normal(d), noise_variances=rng.uniform(1, 2, d)
        )
    return LinearGaussianModel(
        weights=weights,
        bias=rng.standard_normal(d),
        prior=random_gaussian(rng, k, condition_number=2.0),
        noise_cov=random_spd(rng, d, condition_number=2.0),
    )


def _noise_whitener(model: LinearGaussianModel) -> np.ndarray:
    """L_Psi^-1 (dense; Psi = L_Psi L_Psi') -- diag(1/sqrt(psi)) for diagonal noise."""
    return np.linalg.inv(np.linalg.cholesky(_dense_noise(model)))


def _kl_scale(lq, mq, lp, mp, inverse=None) -> float:
    """First-order rounding scale of KL(N(mq, Lq Lq') || N(mp, Lp Lp')) from its factors.

    KL = 1/2 (|M|_F^2 + |w|^2 - K + 2 sum log diag Lp - 2 sum log diag Lq) with
    M = Lp^-1 Lq and w = Lp^-1 (mq - mp); relative perturbations eps of every input
    entry change it by at most eps times this (to first order). ``inverse`` may pass a
    precomputed Lp^-1.
    """
    inverse = np.linalg.inv(lp) if inverse is None else inverse
    ratio, offset = inverse @ lq, inverse @ (mq - mp)
    return 0.5 * (
        2 * np.sum(np.abs(ratio) * (np.abs(inverse) @ np.abs(lq)))
        + 2 * np.abs(offset) @ (np.abs(inverse) @ (np.abs(mq) + np.abs(mp)))
        + len(mq)
        + 2 * np.sum(np.abs(np.log(np.diag(lq))))
        + 2 * np.sum(np.abs(np.log(np.diag(lp))))
    )


def _elbo_scale(model: LinearGaussianModel, q: Gaussian, x: np.ndarray, cache: dict) -> float:
    """First-order rounding scale of the ELBO written term by term from its definition.

    ELBO = -1/2 (D log 2 pi + log|Psi| + |G r|^2 + |G W Lq|_F^2) - KL(q || p(z)) with
    G = L_Psi^-1 and r = x - W m - b. Each product is bounded with absolute values, so
    this is the error a term-by-term float64 evaluation is entitled to; it exceeds
    eps |ELBO| when the whitened terms cancel (e.g. graded noise variances). ``cache``
    keeps the per-model factors between calls (pass a fresh dict per model).
    """
    if not cache:
        cache["g"] = _noise_whitener(model)
        cache["log_det_psi"] = np.linalg.slogdet(_dense_noise(model))[1]
        cache["prior_inverse"] = np.linalg.inv(model.prior.scale_tril)
    g = cache["g"]
    w, m, lq = model.weights, q.mean, q.scale_tril
    residual_scale = np.abs(x) + np.abs(w) @ np.abs(m) + np.abs(model.bias)
    whitened_residual = g @ (x - w @ m - model.bias)
    spread = g @ w @ lq
    likelihood = (
        model.data_dim * LOG_2PI
        + abs(cache["log_det_psi"])
        + 2 * np.abs(whitened_residual) @ (np.abs(g) @ residual_scale)
        + 2 * np.sum(np.abs(spread) * (np.abs(g) @ np.abs(w) @ np.abs(lq)))
    )
    prior = model.prior
    prior_kl = _kl_scale(lq, m, prior.scale_tril, prior.mean, cache["prior_inverse"])
    return 0.5 * likelihood + prior_kl


EXPONENTS = range(2, 14)
FAMILIES_BY_CONDITION = ("ppca", "fa_signal", "full_noise", "fa_graded")
#: Models per (family, exponent) and observations per model in the mpmath test: one
#: model in the quick ``dev`` profile, two under ``ci``/``thorough`` (max_examples >= 100).
N_MODELS, N_X = (2 if settings().max_examples >= 100 else 1), 2

# Tolerances of the mpmath test, pinned from measurements on ppca, fa_signal and
# full_noise models (about 9000 (model, x, q) records over cond(C) = 1e2 ... 1e13, from
# seeds other than the test's) at 10x the largest value measured, rounded up to 1-2-5.
#
# Largest measured relative error of log_evidence, by decade of cond(C):
#   <=1e5: 2.0e-14   1e6: 1.2e-13   1e7: 2.1e-13   1e8: 4.0e-13   1e9: 2.3e-12
#   1e10: 5.1e-12    1e11: 8.5e-12  1e12: 4.1e-11  1e13: 7.7e-11
# The target of ~1e-11 up to cond 1e13 is therefore missed by up to ~8x at
# cond >= 1e12. At the same time error / (eps kappa) stayed <= 22: the error is what the
# conditioning of log p(x) in its float64 inputs allows (kappa grows like sqrt(cond(C))
# for x drawn from the model), so no float64 algorithm could meet the target there.
LOGP_RTOL = {1: 2e-13, 2: 2e-13, 3: 2e-13, 4: 2e-13, 5: 2e-13, 6: 2e-12, 7: 5e-12}
LOGP_RTOL |= {8: 5e-12, 9: 5e-11, 10: 1e-10, 11: 1e-10, 12: 5e-10, 13: 1e-9}
# Largest measured |ELBO + KL - log p| / max(|ELBO|, KL, |log p|), by decade of cond(C):
#   <=1e3: 1.6e-14   1e4: 4.2e-14   1e5: 5.3e-14   1e6: 2.3e-13   1e7: 6.1e-13
#   1e8: 8.3e-13     1e9: 2.8e-12   1e10: 8.7e-12  1e11: 2.4e-11  1e12: 7.6e-11
#   1e13: 3.2e-10
# so the target of ~1e-12 up to cond 1e8 is met (8.3e-13).
RESID_RTOL = {1: 2e-13, 2: 2e-13, 3: 2e-13, 4: 5e-13, 5: 1e-12, 6: 5e-12, 7: 1e-11}
RESID_RTOL |= {8: 1e-11, 9: 5e-11, 10: 1e-10, 11: 5e-10, 12: 1e-9, 13: 5e-9}
#: log_evidence error / (eps kappa): measured <= 22 (all three families, all cond).
KAPPA_LIMIT = 250.0
#: ELBO error / (eps _elbo_scale): measured <= 1.6, in all four families.
ELBO_SCALE_LIMIT = 20.0
#: |ELBO + KL - log p| / (eps (_elbo_scale + _kl_scale(q, posterior) + kappa)): <= 56.
RESID_SCALE_LIMIT = 600.0


def _decade(cond: float) -> int:
    """The tolerance tier of a condition number: its nearest power of ten, in 1..13."""
    return int(np.clip(round(math.log10(cond)), 1, 13))


def _mpmath_records(family: str, rng: np.random.Generator, n_models: int, n_x: int):
    """One record per (exponent, model, x, q) with cond(C) and the measured errors."""
    records = []
    with mpmath.workdps(MP_DIGITS):
        for exponent in EXPONENTS:
            for _ in range(n_models):
                model = _conditioned_model(family, rng, exponent)
                exact = _ExactModel(model)
                cond = float(np.linalg.cond(np.array(exact.c.tolist(), dtype=np.float64)))
                k, cache = model.latent_dim, {}
                for x in _draw_x(rng, model, (n_x,)):
                    reference, kappa = exact.log_evidence(x)
                    log_evidence = model.log_evidence(x)
                    error = abs(float(mpmath.mpf(log_evidence) - reference))
                    post = model.posterior(x)
                    post_inverse = np.linalg.inv(post.scale_tril)
                    shift = 0.1 * rng.standard_normal(k) * np.sqrt(np.diag(post.cov))
                    qs = {
                        "posterior": post,
                        "perturbed": Gaussian.from_covariance(
                            mean=post.mean + shift, cov=1.5 * post.cov
                        ),
                        "unrelated": random_gaussian(rng, k),
                    }
                    for name, q in qs.items():
                        elbo, kl = model.elbo(q, x), model.kl_to_posterior(q, x)
                        residual = abs(elbo + kl - log_evidence)
                        elbo_scale = _elbo_scale(model, q, x, cache)
                        kl_scale = _kl_scale(
                            q.scale_tril, q.mean, post.scale_tril, post.mean, post_inverse
                        )
                        elbo_error = abs(float(mpmath.mpf(elbo) - exact.elbo(q, x)))
                        records.append(
                            {
                                "exponent": exponent,
                                "cond": cond,
                                "q": name,
                                "logp": error / abs(float(reference)),
                                "kappa": error / (EPS * float(kappa)),
                                "elbo": elbo_error / (EPS * elbo_scale),
                                "resid": residual / max(abs(elbo), kl, abs(log_evidence)),
                                "resid_scale": residual
                                / (EPS * (elbo_scale + kl_scale + float(kappa))),
                            }
                        )
    return records


def _table(family: str, records) -> str:
    columns = ("logp", "kappa", "elbo", "resid", "resid_scale")
    lines = [
        f"{family}: exponent  cond(C) min..max   logp rel err  err/(eps kappa)  "
        "elbo err/(eps S)  resid/magnitude  resid/(eps S)"
    ]
    for exponent in EXPONENTS:
        rows = [r for r in records if r["exponent"] == exponent]
        worst = {c: max(r[c] for r in rows) for c in columns}
        conds = [r["cond"] for r in rows]
        lines.append(
            f"{family}: 1e{exponent:<2d}  {min(conds):8.1e}..{max(conds):8.1e}"
            f"  {worst['logp']:12.2e}  {worst['kappa']:15.3g}  {worst['elbo']:16.3g}"
            f"  {worst['resid']:15.2e}  {worst['resid_scale']:13.3g}"
        )
    return "\n".join(lines)


@pytest.mark.parametrize("family", FAMILIES_BY_CONDITION)
def test_log_evidence_and_elbo_identity_against_mpmath(family):
    """log p(x), ELBO and ELBO + KL - log p(x) against mpmath at 50 digits, cond 1e2..1e13.

    The exact float64 inputs of each model (``_conditioned_model``, D <= 6) are evaluated
    in mpmath: log p(x) from a 50-digit Cholesky of C = W S0 W' + Psi, the ELBO from its
    definition; x is drawn by numpy from the dense marginal. Three q's per x: the
    package's posterior, a perturbed posterior and an unrelated N(m, S). Asserted:

    * log_evidence: relative error <= LOGP_RTOL[decade of cond(C)], and error <=
      KAPPA_LIMIT * eps * kappa, kappa being the componentwise condition number of
      log p(x) in all inputs (the error any backward-stable float64 algorithm may make);
    * ELBO: error <= ELBO_SCALE_LIMIT * eps * _elbo_scale;
    * ELBO + KL - log p: <= RESID_SCALE_LIMIT * eps * (the three scales) and, for the
      families whose difficulty is cond(C) itself, <= RESID_RTOL[decade] * magnitude.

    Run with ``-s`` to see the table of the largest values per exponent.
    """
    rng = np.random.default_rng(FAMILIES_BY_CONDITION.index(family))
    records = _mpmath_records(family, rng, N_MODELS, N_X)
    table = _table(family, records)
    print("\n" + table)
    failures = []
    for r in records:
        tier = _decade(r["cond"])
        where = f"exponent {r['exponent']}, cond(C) {r['cond']:.2g}"
        if r["logp"] > LOGP_RTOL[tier]:
            failures.append(f"log_evidence rel err {r['logp']:.2e} > {LOGP_RTOL[tier]:g} ({where})")
        if r["kappa"] > KAPPA_LIMIT:
            failures.append(f"log_evidence err = {r['kappa']:.3g} eps kappa ({where})")
        where += f", q {r['q']}"
        if r["elbo"] > ELBO_SCALE_LIMIT:
            failures.append(f"elbo err = {r['elbo']:.3g} eps scale ({where})")
        if r["resid_scale"] > RESID_SCALE_LIMIT:
            failures.append(f"elbo + kl - logp = {r['resid_scale']:.3g} eps scale ({where})")
        if family != "fa_graded" and r["resid"] > RESID_RTOL[tier]:
            failures.append(
                f"elbo + kl - logp rel {r['resid']:.2e} > {RESID_RTOL[tier]:g} ({where})"
            )
    unique = list(dict.fromkeys(failures))
    assert not unique, f"{len(unique)} violations, e.g.\n" + "\n".join(unique[:8]) + "\n" + table


@pytest.mark.parametrize("noise", ["isotropic", "diagonal", "full"])
def test_deeply_cancelling_rows_are_exact_against_mpmath(
    noise: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows lying along the loadings of a signal-to-noise ~1e12 model: |x - W mu0 - b|
    is ~1e6 noise standard deviations while the Mahalanobis distance is a few, so the
    residual y - W~u cancels about 40 bits. Such rows are formed again in doubled
    precision: log p(x) must be within 1e-13 relative of mpmath, far below the
    float64 route's error (checked: with the doubled route switched off the same rows
    are off by more than 10x the bound, so the test can fail).
    """
    rng = np.random.default_rng(17)
    d, k = 6, 2
    scales = {"isotropic": 1e-12, "diagonal": 1e-12 * rng.uniform(0.5, 2.0, d)}
    noise_cov: object = scales.get(noise)
    if noise == "full":
        noise_cov = 1e-12 * random_spd(rng, d, condition_number=10.0)
    model = LinearGaussianModel(
        weights=rng.standard_normal((d, k)),
        bias=rng.standard_normal(d) * 3,
        prior=Gaussian.from_covariance(mean=[0.5, -1.0], cov=[[1.0, 0.3], [0.3, 2.0]]),
        noise_cov=noise_cov,
    )
    x = model.sample(8, rng)[0]
    with mpmath.workdps(MP_DIGITS):
        exact = _ExactModel(model)
        reference = np.array([float(exact.log_evidence(row)[0]) for row in x])
    doubled = model.log_evidence(x)
    assert np.max(np.abs(doubled - reference) / np.abs(reference)) <= 1e-13
    monkeypatch.setattr(marginal_module, "DOUBLING_LIMIT", 0.0)
    single = LinearGaussianModel(
        weights=model.weights, bias=model.bias, prior=model.prior, noise_cov=model.noise_cov
    ).log_evidence(x)
    assert np.max(np.abs(single - reference) / np.abs(reference)) > 1e-12
