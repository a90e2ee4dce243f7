"""The Rényi / CUBO / importance-weight oracle: identities, stability at alpha = 1,
domain, batching, gradients and error messages.

Independent routes (quadrature, Monte Carlo, mpmath) are in ``tests/test_renyi_routes.py``.
Every tolerance that is not exact equality is the error bound the oracle reports
(``renyi_bound(..., return_error_bound=True)``, ``model.elbo``'s and
``model.log_evidence``'s), or a stated Taylor remainder.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

from elbo_check import Gaussian, InvalidInputError, InvalidTypeError, ppca
from elbo_check._gradients import VariationalGradients
from elbo_check._importance_weights import ImportanceWeightStats
from elbo_check._random import random_gaussian, random_model
from elbo_check._renyi import (
    cubo,
    importance_weight_moment,
    importance_weight_stats,
    renyi_alpha_interval,
    renyi_bound,
    renyi_bound_grad_variational,
    renyi_divergence_to_posterior,
)
from elbo_check._renyi_core import log1p_excess_ratio, log1p_ratio
from elbo_check.strategies import elbo_problems

pytestmark = pytest.mark.filterwarnings(
    "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
)

EPS = float(np.finfo(np.float64).eps)
small_problems = elbo_problems(max_data_dim=3, max_latent_dim=3)


def _dense_posterior(model, x):
    """Posterior mean and precision from dense formulas (Bishop 2.116-2.117)."""
    psi = model.dense_noise_cov()
    noise_solved = np.linalg.solve(psi, model.weights)
    precision = np.linalg.inv(model.prior.cov) + model.weights.T @ noise_solved
    rhs = (x - model.bias) @ noise_solved + np.linalg.solve(model.prior.cov, model.prior.mean)
    return np.linalg.solve(precision, rhs), 0.5 * (precision + precision.T)


def _generalised_eigenvalues(model, q, x):
    """gamma_i of (S, Sigma), densely: eig(Lambda S)."""
    _, precision = _dense_posterior(model, x)
    return scipy.linalg.eigvalsh(q.cov, np.linalg.inv(precision))


def _log_weight_moments(model, q, x):
    """(kappa_i, Var_q log w) densely: Var = tr((I - Lambda S)^2) / 2 + d' Lambda S Lambda d."""
    mean, precision = _dense_posterior(model, x)
    kappa = 1.0 - _generalised_eigenvalues(model, q, x)
    d = q.mean - mean
    return kappa, 0.5 * np.sum(kappa**2) + d @ precision @ q.cov @ precision @ d


def _problem(seed: int, k: int = 2, d: int = 3, q_scale: float = 1.0):
    rng = np.random.default_rng(seed)
    model = random_model(rng, data_dim=d, latent_dim=k, condition_number=10.0)
    x = model.marginal_mean + rng.standard_normal(d) * np.sqrt(model.marginal_variances())
    post = model.posterior(x)
    cov_scale = q_scale * float(np.mean(post.variances))
    q = random_gaussian(rng, k, condition_number=5.0, cov_scale=cov_scale)
    q = Gaussian(post.mean + 0.7 * np.sqrt(post.variances) * rng.standard_normal(k), q.scale_tril)
    return model, q, x


# ---------------------------------------------------------------------------- identities
@given(problem=small_problems)
def test_alpha_one_is_the_elbo_and_alpha_zero_the_evidence(problem):
    """Bit for bit: L_1 is model.elbo, L_0 is model.log_evidence, D_1 is the KL."""
    model, q, x = problem.model, problem.q, problem.x
    assert renyi_bound(model, q, x, 1.0) == model.elbo(q, x)
    assert renyi_bound(model, q, x, 0) == model.log_evidence(x)
    assert renyi_divergence_to_posterior(model, q, x, 1.0) == model.kl_to_posterior(q, x)
    assert renyi_divergence_to_posterior(model, q, x, 0.0) == 0.0
    assert importance_weight_moment(model, q, x, 0.0) == 0.0
    assert importance_weight_moment(model, q, x, 1.0) == model.log_evidence(x)
    assert cubo(model, q, x, n=1) == model.log_evidence(x)


@given(problem=small_problems, fractions=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=6))
def test_non_increasing_in_alpha_within_the_error_bounds(problem, fractions):
    """L_alpha at sorted alphas across the whole domain (negative and > 1 included)."""
    model, q, x = problem.model, problem.q, problem.x
    low, high = renyi_alpha_interval(model, q)
    lo, hi = max(low, -6.0), min(high, 6.0)
    alphas = sorted({lo + (hi - lo) * (0.001 + 0.998 * f) for f in fractions} | {0.0, 1.0})
    values, bounds = zip(
        *(renyi_bound(model, q, x, a, return_error_bound=True) for a in alphas), strict=False
    )
    for i in range(len(alphas) - 1):
        assert values[i + 1] <= values[i] + bounds[i] + bounds[i + 1]


@given(problem=small_problems)
def test_cubo_above_evidence_above_elbo(problem):
    """CUBO_2 >= log p(x) >= ELBO where CUBO_2 is finite, and CUBO_n grows with n."""
    model, q, x = problem.model, problem.q, problem.x
    low, _ = renyi_alpha_interval(model, q)
    evidence, evidence_bound = model.log_evidence(x, return_error_bound=True)
    elbo, elbo_bound = model.elbo(q, x, return_error_bound=True)
    assert evidence >= elbo - evidence_bound - elbo_bound
    if low >= -1.0:
        with pytest.raises(InvalidInputError, match=r"^n must lie in \[1, .*; got n = 2\.0$"):
            cubo(model, q, x, n=2)
        return
    upper, bound = renyi_bound(model, q, x, -1.0, return_error_bound=True)
    assert cubo(model, q, x) == upper
    assert upper >= evidence - bound - evidence_bound
    assert cubo(model, q, x, n=1.5) <= upper + bound


@given(problem=elbo_problems(max_data_dim=3, max_latent_dim=3, batch_shape=(3,)))
def test_at_the_posterior_every_weight_is_p_x(problem):
    """q = p(z|x): L_alpha = log p(x) for every alpha (exactly below 1/2; above, to the
    ELBO's and the evidence's error bounds: that route is the ELBO minus an excess that is
    exactly 0 here), Var(w) = 0, ESS = 1, zero gradients."""
    model, x = problem.model, problem.x
    posterior = model.posterior(x)
    evidence, evidence_bound = model.log_evidence(x, return_error_bound=True)
    _, elbo_bound = model.elbo(posterior, x, return_error_bound=True)
    low, high = renyi_alpha_interval(model, posterior)
    assert (low, high) == (-math.inf, math.inf)
    for alpha in (-50.0, -1.0, 0.0, 0.3, 0.5, 1.0, 1.0 + 1e-12, 2.0, 50.0):
        values = renyi_bound(model, posterior, x, alpha)
        assert np.all(np.abs(values - evidence) <= elbo_bound + evidence_bound)
        if alpha < 0.5:
            assert np.array_equal(values, evidence)  # the log p(x) route: D_alpha is 0 exactly
        divergence = renyi_divergence_to_posterior(model, posterior, x, alpha)
        if alpha < 0.5:
            assert np.all(divergence == 0.0)
        else:  # KL plus an excess that is exactly 0
            assert np.array_equal(divergence, model.kl_to_posterior(posterior, x))
        grads = renyi_bound_grad_variational(model, posterior, x, alpha)
        assert np.all(grads.mean == 0.0)
        assert np.all(
            np.abs(grads.scale_tril) <= 64 * EPS * np.abs(np.linalg.inv(posterior.scale_tril)).max()
        )
    stats = importance_weight_stats(model, posterior, x)
    assert np.all(stats.relative_variance == 0.0)
    assert np.all(stats.ess_per_sample == 1.0)
    assert np.all(stats.log_weight_variance == 0.0)
    assert np.all(stats.iwae_bias(7) == 0.0)


@given(problem=small_problems, alpha=st.floats(-3.0, 3.0), beta=st.floats(-2.0, 3.0))
def test_the_family_is_one_closed_form(problem, alpha, beta):
    """renyi_bound + divergence = log p(x); moment(beta) = beta L_(1-beta); CUBO_n = L_(1-n)."""
    model, q, x = problem.model, problem.q, problem.x
    low, high = renyi_alpha_interval(model, q)
    evidence, evidence_bound = model.log_evidence(x, return_error_bound=True)
    if low < alpha < high:
        value, bound = renyi_bound(model, q, x, alpha, return_error_bound=True)
        divergence = renyi_divergence_to_posterior(model, q, x, alpha)
        assert abs(value + divergence - evidence) <= bound + evidence_bound
        assert divergence >= 0.0 if alpha >= 0 else divergence <= 0.0
    else:
        with pytest.raises(InvalidInputError, match=r"^alpha must lie in the open interval"):
            renyi_bound(model, q, x, alpha)
    if low < 1.0 - beta < high:
        moment = importance_weight_moment(model, q, x, beta)
        assert moment == pytest.approx(
            beta * renyi_bound(model, q, x, 1.0 - beta), rel=1e-12, abs=1e-12
        )
        if beta >= 1.0:
            assert cubo(model, q, x, n=beta) == renyi_bound(model, q, x, 1.0 - beta)
    else:
        with pytest.raises(InvalidInputError, match=r"^beta must lie in the open interval"):
            importance_weight_moment(model, q, x, beta)


@given(
    problem=elbo_problems(max_data_dim=4, max_latent_dim=3, extreme_scales=True, batch_shape=(2,)),
    fraction=st.floats(0.0, 1.0),
)
def test_extreme_scales_keep_identities_and_finite_values(problem, fraction):
    """Variance scales from 1e-160 to 1e160: the closed form only sees ratios of
    factors, so the identities hold bit for bit, values and gradients stay finite and the
    error bound stays small."""
    model, q, x = problem.model, problem.q, problem.x
    assert np.array_equal(renyi_bound(model, q, x, 1.0), model.elbo(q, x))
    assert np.array_equal(renyi_bound(model, q, x, 0.0), model.log_evidence(x))
    low, high = renyi_alpha_interval(model, q)
    lo, hi = max(float(np.max(low)), -4.0), min(float(np.min(high)), 4.0)
    alpha = lo + (hi - lo) * (0.01 + 0.98 * fraction)
    value, bound = renyi_bound(model, q, x, alpha, return_error_bound=True)
    assert np.all(np.isfinite(value))
    assert np.all(bound <= 1e-8 * (1.0 + np.abs(value)))
    grads = renyi_bound_grad_variational(model, q, x, alpha)
    assert np.all(np.isfinite(grads.mean))
    assert np.all(np.isfinite(grads.scale_tril))
    assert not np.any(np.isnan(importance_weight_stats(model, q, x).relative_variance))


@given(
    problem=elbo_problems(
        max_data_dim=3, max_latent_dim=3, batch_shape=(2, 3), shared_covariance=False
    ),
    alpha=st.sampled_from([-0.5, 0.0, 0.25, 0.75, 1.0, 1.1]),
)
def test_batches_equal_their_members(problem, alpha):
    """A (2, 3) batch of q's with a covariance each, against each member alone."""
    model, q, x = problem.model, problem.q, problem.x
    low, high = renyi_alpha_interval(model, q)
    assert np.shape(low) == np.shape(high) == (2, 3)
    if not np.all((low < alpha) & (alpha < high)):
        with pytest.raises(InvalidInputError, match=r"of member \[\d, \d\]"):
            renyi_bound(model, q, x, alpha)
        return
    values = renyi_bound(model, q, x, alpha)
    grads = renyi_bound_grad_variational(model, q, x, alpha)
    stats = importance_weight_stats(model, q, x)
    assert values.shape == (2, 3)
    assert grads.scale_tril.shape == (2, 3, *q.scale_tril.shape[-2:])
    for index in np.ndindex(2, 3):
        member = Gaussian(q.mean[index], q.scale_tril[index])
        one = renyi_bound(model, member, x[index], alpha)
        assert isinstance(one, float)
        assert values[index] == pytest.approx(one, rel=1e-13, abs=1e-13)
        grad = renyi_bound_grad_variational(model, member, x[index], alpha)
        np.testing.assert_allclose(grads.mean[index], grad.mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(grads.scale_tril[index], grad.scale_tril, rtol=1e-12, atol=1e-12)
        alone = importance_weight_stats(model, member, x[index])
        assert stats.relative_variance[index] == pytest.approx(alone.relative_variance, rel=1e-12)


def test_one_q_against_a_batch_of_x_and_shapes():
    model, q, _ = _problem(1)
    x = np.random.default_rng(2).standard_normal((4, 2, model.data_dim))
    values = renyi_bound(model, q, x, 0.5)
    assert values.shape == (4, 2)
    for index in np.ndindex(4, 2):
        assert values[index] == pytest.approx(renyi_bound(model, q, x[index], 0.5), rel=1e-14)
    assert importance_weight_stats(model, q, x).ess_per_sample.shape == (4, 2)
    assert renyi_bound_grad_variational(model, q, x, 0.5).mean.shape == (4, 2, model.latent_dim)


# ---------------------------------------------------------------------------- stability
@pytest.mark.parametrize("seed", range(6))
def test_continuous_at_alpha_one_with_the_known_slope(seed):
    """L_(1+h) = ELBO - h V / 2 + h^2 c2 + r(h), all from dense matrices.

    In the posterior-whitened eigenbasis (g_i, eps_i; kappa = 1 - g) the series of
    log1p and of 1 / (1 + y) give V = Var_q(log w) = sum kappa^2 / 2 + sum g eps^2,
    c2 = sum (kappa^3 / 3 + g kappa eps^2) / 2 and
    |r(h)| <= |h|^3 (sum kappa^4 / 4 + sum g kappa^2 eps^2) / (2 (1 - |h| max|kappa|)).
    Quadratic forms are rotation invariant, so they are taken densely with
    G = W' S W and e = W' (m - mu), Lambda = W W'. For h = 1e-3 ... 1e-14 (both signs)
    the value stays within r(h) plus its own error bound, and that bound does not grow
    as h -> 0 (no cancellation).
    """
    model, q, x = _problem(seed, k=1 + seed % 3, q_scale=[0.3, 1.0, 2.0][seed % 3])
    elbo, elbo_bound = model.elbo(q, x, return_error_bound=True)
    mean, precision = _dense_posterior(model, x)
    whitener = np.linalg.cholesky(precision)
    gram = whitener.T @ q.cov @ whitener
    e = whitener.T @ (q.mean - mean)
    kappa = 1.0 - np.linalg.eigvalsh(gram)
    spread = np.eye(len(kappa)) - gram
    variance = 0.5 * np.sum(kappa**2) + e @ gram @ e
    second = 0.5 * (np.sum(kappa**3) / 3.0 + e @ gram @ spread @ e)
    third = 0.5 * (np.sum(kappa**4) / 4.0 + e @ gram @ spread @ spread @ e)
    stats = importance_weight_stats(model, q, x)
    assert stats.log_weight_variance == pytest.approx(variance, rel=1e-10)
    assert variance == pytest.approx(_log_weight_moments(model, q, x)[1], rel=1e-10)
    for h in (1e-3, 1e-4, 1e-6, 1e-8, 1e-10, 1e-12, 1e-14):
        for step in (h, -h):
            value, bound = renyi_bound(model, q, x, 1.0 + step, return_error_bound=True)
            expansion = elbo - 0.5 * step * variance + step**2 * second
            remainder = h**3 * third / (1.0 - h * np.max(np.abs(kappa)))
            assert abs(value - expansion) <= remainder + bound + 1e-12 * h**2 * abs(second)
            if h <= 1e-8:  # continuity to rounding, with a bound that does not grow
                assert bound <= 2.0 * elbo_bound
                assert abs(value - elbo) <= h * variance + bound


def test_the_log1p_ratios_against_mpmath():
    """(log1p(y) - y) / y (series below |y| = 0.1) within 16 units of 2**-53, and
    log1p(y) / y within 4, for |y| from 1e-300 to 0.999 of either sign and up to 1e300;
    each exactly its limit at y = 0."""
    magnitudes = np.geomspace(1e-300, 0.999, 400)
    points = np.concatenate([magnitudes, -magnitudes, np.geomspace(1.0, 1e300, 60)])
    points = np.concatenate([points, 0.1 * (1 + np.linspace(-1e-3, 1e-3, 21)), [-0.1, 0.1]])
    excess, ratio = log1p_excess_ratio(points), log1p_ratio(points)
    unit = 2.0**-53
    for y, got_excess, got_ratio in zip(points, excess, ratio, strict=True):
        digits = 30 + 2 * max(0, int(-math.log10(abs(y))))
        with mpmath.workdps(digits):
            exact = mpmath.log1p(mpmath.mpf(y)) / y
            assert abs(got_ratio / exact - 1) <= 4 * unit
            assert abs(got_excess / (exact - 1) - 1) <= 16 * unit
    assert log1p_excess_ratio(np.array(0.0)) == 0.0
    assert log1p_ratio(np.array(0.0)) == 1.0


def test_the_textbook_form_is_unstable_where_this_one_is_not():
    """The naive 1 / (alpha - 1) * log-det combination in float64 loses ~ eps / h; this
    function's value differs from the ELBO by the slope term only."""
    model, q, x = _problem(3, k=3)
    mean, precision = _dense_posterior(model, x)
    sigma = np.linalg.inv(precision)
    _, variance = _log_weight_moments(model, q, x)
    h = 1e-13
    alpha = 1.0 + h
    a = alpha * sigma + (1 - alpha) * q.cov
    d = q.mean - mean
    log_dets = (
        np.linalg.slogdet(a)[1] - (1 - alpha) * q.log_det_cov - alpha * np.linalg.slogdet(sigma)[1]
    )
    naive = model.log_evidence(x) - (
        alpha / 2 * d @ np.linalg.solve(a, d) - log_dets / (2 * (alpha - 1))
    )
    ours = renyi_bound(model, q, x, alpha)
    elbo = model.elbo(q, x)
    assert abs(ours - (elbo - h * variance / 2)) <= 1e-13
    assert abs(naive - elbo) > 1e3 * abs(ours - elbo)


def test_continuous_across_the_switch_of_routes_at_one_half():
    """alpha < 1/2 goes through log p(x), alpha >= 1/2 through the ELBO: they meet."""
    for seed in range(4):
        model, q, x = _problem(seed, k=2, q_scale=0.5)
        below, below_bound = renyi_bound(model, q, x, np.nextafter(0.5, 0), return_error_bound=True)
        at, at_bound = renyi_bound(model, q, x, 0.5, return_error_bound=True)
        slope = abs(renyi_bound(model, q, x, 0.6) - renyi_bound(model, q, x, 0.4)) / 0.2
        assert abs(below - at) <= below_bound + at_bound + 2 * slope * EPS


# ---------------------------------------------------------------------------- domain
@pytest.mark.parametrize("seed", range(5))
def test_the_interval_from_dense_generalised_eigenvalues(seed):
    """alpha_max = g/(g - 1) for the largest gamma > 1, alpha_min = -g/(1 - g) for the
    smallest gamma < 1 (scipy.linalg.eigh(S, Sigma)); just inside is finite, just outside
    raises an error that names alpha, the interval and the value."""
    model, q, x = _problem(seed, k=1 + seed % 3, q_scale=[0.4, 1.0, 3.0][seed % 3])
    gamma = _generalised_eigenvalues(model, q, x)
    low, high = renyi_alpha_interval(model, q)
    expected_high = gamma[-1] / (gamma[-1] - 1.0) if gamma[-1] > 1 else math.inf
    expected_low = -gamma[0] / (1.0 - gamma[0]) if gamma[0] < 1 else -math.inf
    assert high == pytest.approx(expected_high, rel=1e-10)
    assert low == pytest.approx(expected_low, rel=1e-10)
    for end, inward in ((high, -1.0), (low, 1.0)):
        if not math.isfinite(end):
            continue
        assert math.isfinite(renyi_bound(model, q, x, end + inward * 1e-6 * abs(end)))
        outside = end - inward * 1e-6 * abs(end)
        with pytest.raises(InvalidInputError) as info:
            renyi_bound(model, q, x, outside)
        message = str(info.value)
        assert message.startswith("alpha must lie in the open interval (")
        assert f"got alpha = {outside!r}" in message
        assert f"{high:.17g}" in message or f"{low:.17g}" in message
        assert "positive definite" in message
        with pytest.raises(InvalidInputError, match=r"^beta must lie in the open interval"):
            importance_weight_moment(model, q, x, 1.0 - outside)
        with pytest.raises(InvalidInputError, match=r"^alpha must lie"):
            renyi_bound_grad_variational(model, q, x, outside)


def test_at_the_boundary_it_raises_and_never_returns_nan():
    """ppca with one latent and posterior variance 1/2: q of variance 1 gives alpha_max = 2."""
    model = ppca(weights=[[1.0]], mean=[0.0], noise_variance=1.0)
    q = Gaussian.from_covariance(mean=[3.0], cov=[[1.0]])
    _, high = renyi_alpha_interval(model, q)
    assert high == pytest.approx(2.0, rel=4 * EPS)
    with pytest.raises(InvalidInputError, match="must lie in the open interval"):
        renyi_bound(model, q, [0.5], high)
    for alpha in np.nextafter(high, 0) - np.array([0.0, 1e-15, 1e-12, 1e-9]):
        value = renyi_bound(model, q, [0.5], float(alpha))
        assert value < 0
        assert not math.isnan(value)
    stats = importance_weight_stats(model, Gaussian.from_covariance(mean=[0.0], cov=[[0.2]]), [0.5])
    assert stats.relative_variance == math.inf
    assert stats.ess_per_sample == 0.0
    assert stats.iwae_bias(3) == -math.inf


def test_ess_closed_form_in_one_dimension():
    """1-D: q = N(m, s), posterior N(mu, v): E_q[w^2] / p(x)^2 = int p(z|x)^2 / q(z) dz
    = s / sqrt(v (2s - v)) * exp((m - mu)^2 / (2s - v)) for 2s > v, by completing the
    square by hand."""
    model = ppca(weights=[[1.0]], mean=[0.0], noise_variance=1.0)  # posterior N(x/2, 1/2)
    x = 0.8
    v, mu = 0.5, 0.4
    for s, m in ((0.3, 0.4), (0.26, 0.5), (0.5, 1.0), (2.0, -0.3)):
        q = Gaussian.from_covariance(mean=[m], cov=[[s]])
        ratio = s / math.sqrt(v * (2 * s - v)) * math.exp((m - mu) ** 2 / (2 * s - v))
        stats = importance_weight_stats(model, q, [x])
        assert stats.relative_variance == pytest.approx(ratio - 1.0, rel=1e-13, abs=1e-15)
        assert stats.ess_per_sample == pytest.approx(1.0 / ratio, rel=1e-13)
        assert stats.iwae_bias(4) == pytest.approx(-(ratio - 1.0) / 8, rel=1e-13, abs=1e-16)


# ---------------------------------------------------------------------------- gradients
@settings(max_examples=10)
@given(
    problem=elbo_problems(max_data_dim=3, max_latent_dim=3, q_kinds=["full"]),
    alpha=st.sampled_from([-0.7, 0.0, 0.3, 0.5, 0.8, 1.0, 1.0 + 1e-9, 1.3]),
)
def test_gradients_against_central_differences(problem, alpha):
    """Every entry of the mean and lower-factor gradients against a central difference
    (step 1e-6 relative): agreement to 1e-6 of the gradient's scale."""
    model, q, x = problem.model, problem.q, problem.x
    low, high = renyi_alpha_interval(model, q)
    if not low < alpha < high:
        return
    grads = renyi_bound_grad_variational(model, q, x, alpha)
    assert isinstance(grads, VariationalGradients)
    assert np.all(np.triu(grads.scale_tril, 1) == 0.0)
    k = model.latent_dim
    scale = 1.0 + np.abs(grads.mean).max() + np.abs(grads.scale_tril).max()

    def value(mean, factor):
        return renyi_bound(model, Gaussian(mean, factor), x, alpha)

    for i in range(k):
        step = 1e-6 * (1.0 + abs(q.mean[i]))
        e = np.zeros(k)
        e[i] = step
        numeric = (value(q.mean + e, q.scale_tril) - value(q.mean - e, q.scale_tril)) / (2 * step)
        assert abs(numeric - grads.mean[i]) <= 1e-5 * scale
        for j in range(i + 1):
            step = 1e-6 * abs(q.scale_tril[i, j]) + 1e-8
            e = np.zeros((k, k))
            e[i, j] = step
            if i == j and q.scale_tril[i, i] <= step:
                continue
            numeric = (value(q.mean, q.scale_tril + e) - value(q.mean, q.scale_tril - e)) / (
                2 * step
            )
            assert abs(numeric - grads.scale_tril[i, j]) <= 1e-5 * scale


@given(problem=small_problems)
def test_gradients_at_alpha_one_are_the_elbos(problem):
    model, q, x = problem.model, problem.q, problem.x
    ours = renyi_bound_grad_variational(model, q, x, 1.0)
    elbo = model.elbo_grad_variational(q, x)
    scale = 1.0 + np.abs(elbo.mean).max() + np.abs(elbo.scale_tril).max()
    np.testing.assert_allclose(ours.mean, elbo.mean, rtol=0, atol=1e-10 * scale)
    np.testing.assert_allclose(ours.scale_tril, elbo.scale_tril, rtol=0, atol=1e-10 * scale)
    zero = renyi_bound_grad_variational(model, q, x, 0.0)
    assert np.all(zero.mean == 0.0)
    assert np.all(zero.scale_tril == 0.0)


# ---------------------------------------------------------------------------- messages
def test_argument_errors_name_the_argument_requirement_and_value():
    model, q, x = _problem(0)
    for bad, kind in (
        (True, InvalidTypeError),
        ("1", InvalidTypeError),
        (None, InvalidTypeError),
        (1j, InvalidTypeError),
        (np.array([1.0]), InvalidTypeError),
        (math.nan, InvalidInputError),
        (math.inf, InvalidInputError),
    ):
        with pytest.raises(kind, match=r"^alpha must be"):
            renyi_bound(model, q, x, bad)
        with pytest.raises(kind, match=r"^beta must be"):
            importance_weight_moment(model, q, x, bad)
        with pytest.raises(kind, match=r"^n must be"):
            cubo(model, q, x, n=bad)
    assert renyi_bound(model, q, x, np.float32(0.5)) == renyi_bound(model, q, x, 0.5)
    assert renyi_bound(model, q, x, np.array(1)) == model.elbo(q, x)
    with pytest.raises(InvalidInputError, match=r"^n must be >= 1 .*; got n = 0\.5$"):
        cubo(model, q, x, n=0.5)
    with pytest.raises(InvalidTypeError, match=r"^model must be a LinearGaussianModel; got str"):
        renyi_bound("model", q, x, 0.5)
    with pytest.raises(InvalidTypeError, match=r"^q must be a Gaussian; got list"):
        importance_weight_stats(model, [0.0, 0.0], x)
    with pytest.raises(
        InvalidInputError, match=r"^q must be a Gaussian over the latent space with K = 2"
    ):
        renyi_bound(model, Gaussian.standard(3), x, 0.5)
    with pytest.raises(InvalidInputError, match=r"^x must have shape \(\.\.\., D\) with D = 3"):
        renyi_bound(model, q, [1.0, 2.0], 0.5)
    with pytest.raises(InvalidInputError, match=r"^x must be finite"):
        renyi_bound(model, q, [1.0, np.nan, 2.0], 0.5)
    batched = Gaussian(np.zeros((3, 2)), q.scale_tril)
    with pytest.raises(InvalidInputError, match=r"batch shapes of q \(3,\) and of x \(4,\)"):
        renyi_bound(model, batched, np.zeros((4, 3)), 0.5)
    stats = importance_weight_stats(model, q, x)
    for bad in (0, -2, 1.5, True, "3"):
        with pytest.raises(InvalidInputError, match=r"^num_samples must be a positive integer"):
            stats.iwae_bias(bad)
    assert isinstance(stats, ImportanceWeightStats)


@pytest.mark.parametrize("variance", [1e-300, 1e-100, 1e100, 1e300])
@pytest.mark.parametrize("mean", [0.2, 1e150, -1e300])
def test_absurd_q_never_gives_nan_or_a_warning(variance, mean):
    """q's scale 1e300 away from the posterior's (under the suite's warnings-as-errors):
    every function returns a value that is not NaN or raises InvalidInputError; L_0 and
    L_1 are still log p(x) and the ELBO whenever those are finite."""
    model = ppca(weights=[[1.0], [0.5]], mean=[0.0, 0.0], noise_variance=0.1)
    x = np.array([0.3, 0.2])
    q = Gaussian.from_diagonal(mean=[mean], variances=[variance])
    calls = [
        lambda a: renyi_bound(model, q, x, a, return_error_bound=True),
        lambda a: renyi_divergence_to_posterior(model, q, x, a),
        lambda a: importance_weight_moment(model, q, x, 1.0 - a),
        lambda a: renyi_bound_grad_variational(model, q, x, a).scale_tril,
        lambda a: importance_weight_stats(model, q, x).relative_variance,
    ]
    for alpha in (-1e-3, 0.0, 1e-300, 0.3, 0.7, 1.0, 1.0001):
        for call in calls:
            try:
                result = call(alpha)
            except InvalidInputError:
                continue
            assert not np.any(np.isnan(np.asarray(result, dtype=float)))
    assert renyi_bound(model, q, x, 0.0) == model.log_evidence(x)
    elbo = model.elbo(q, x)
    if math.isfinite(elbo):
        assert renyi_bound(model, q, x, 1.0) == elbo


def test_the_functions_are_the_models_own_methods():
    """Bound in LinearGaussianModel's class body: ``model.renyi_bound(q, x, a)`` is
    ``renyi_bound(model, q, x, a)``, and every one is the class's own attribute."""
    from elbo_check import LinearGaussianModel, _renyi

    model = ppca(weights=[[1.0], [0.5]], mean=[0.0, 0.0], noise_variance=0.1)
    x = np.array([[0.3, 0.2], [-1.0, 0.4]])
    q = Gaussian.from_diagonal(mean=[0.3], variances=[0.2])
    for alpha in (-0.5, 0.0, 0.5, 1.0, 1.5):
        np.testing.assert_array_equal(
            model.renyi_bound(q, x, alpha), renyi_bound(model, q, x, alpha)
        )
    np.testing.assert_array_equal(model.cubo(q, x, n=3.0), cubo(model, q, x, 3.0))
    method, function = model.importance_weight_stats(q, x), importance_weight_stats(model, q, x)
    for field in ("relative_variance", "ess_per_sample", "log_weight_variance"):
        np.testing.assert_array_equal(getattr(method, field), getattr(function, field))
    own = vars(LinearGaussianModel)
    for name in _renyi.__all__:
        if name == "ImportanceWeightStats":
            continue
        assert own[name] is getattr(_renyi, name), name
        assert getattr(model, name).__self__ is model, name
