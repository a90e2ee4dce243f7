"""Gaussian densities and KL divergences checked against independent routes.

Every test compares :class:`elbo_check.Gaussian`, :func:`elbo_check.kl_divergence` and
:func:`elbo_check.cross_entropy` with a computation that shares no code with them:
``scipy.stats.multivariate_normal``, textbook dense formulas evaluated with
``numpy.linalg``, arbitrary-precision ``mpmath`` at 50 significant digits, or Monte Carlo
with a stated false-alarm rate.

Statistical tests use a two-sided false-alarm rate of ``ALPHA = 1e-6`` per assertion, so
``|z| <= Z_CRIT = norm.isf(ALPHA / 2) ~= 4.89``; with the ``ci`` profile (at most 120
examples per test) the chance that a correct implementation fails a given statistical test
is below 1.2e-4 (Bonferroni).
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from elbo_check import Gaussian, cross_entropy, kl_divergence
from elbo_check._random import random_gaussian, random_spd

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
#: Unit roundoff of float64 (``2**-53``); error bounds below are multiples of it.
UNIT = float(np.finfo(np.float64).eps) / 2
#: Working precision of every mpmath reference (decimal digits).
MP_DIGITS = 50

seeds = st.integers(min_value=0, max_value=2**32 - 1)
dims = st.integers(min_value=1, max_value=6)
conditions = st.sampled_from([1.0, 10.0, 1e3])


# ---------------------------------------------------------------------------- helpers
def _mp_matrix(array: np.ndarray) -> mpmath.matrix:
    """An exact mpmath copy of a float64 vector or matrix (every float64 is an mpf)."""
    return mpmath.matrix(np.asarray(array, dtype=np.float64).tolist())


def _mp_kl(p: Gaussian, q: Gaussian) -> mpmath.mpf:
    """KL(p || q) at MP_DIGITS digits from the exact float64 factors, textbook form."""
    with mpmath.workdps(MP_DIGITS):
        lp, lq = _mp_matrix(p.scale_tril), _mp_matrix(q.scale_tril)
        k = p.dim
        ratio = lq**-1 * lp
        trace = mpmath.fsum(ratio[i, j] ** 2 for i in range(k) for j in range(k))
        offset = lq**-1 * (_mp_matrix(p.mean) - _mp_matrix(q.mean))
        squared = mpmath.fsum(offset[i] ** 2 for i in range(k))
        log_det = 2 * mpmath.fsum(mpmath.log(lq[i, i]) - mpmath.log(lp[i, i]) for i in range(k))
        return (trace + squared - k + log_det) / 2


def _dense_kl(mean_p, cov_p, mean_q, cov_q) -> float:
    """The textbook KL between two Gaussians, with dense solves and log-determinants."""
    k = len(mean_p)
    offset = np.asarray(mean_p) - np.asarray(mean_q)
    trace = np.trace(np.linalg.solve(cov_q, cov_p))
    squared = offset @ np.linalg.solve(cov_q, offset)
    log_det = np.linalg.slogdet(cov_q)[1] - np.linalg.slogdet(cov_p)[1]
    return 0.5 * (trace + squared - k + log_det)


def _random_cov(rng: np.random.Generator, k: int, condition_number: float) -> np.ndarray:
    return random_spd(rng, k, condition_number=condition_number, scale=float(rng.uniform(0.2, 5)))


# ---------------------------------------------------------------------------- densities
@given(seed=seeds, k=dims, condition_number=conditions, batch=st.integers(0, 3))
def test_log_prob_and_entropy_match_scipy(seed, k, condition_number, batch):
    """log_prob and entropy against scipy.stats.multivariate_normal (its own eigh route).

    A batch of ``batch`` means (``batch = 0``: one Gaussian) is evaluated at points of
    shape ``(3, batch, K)`` and compared, member by member, with scipy's logpdf.
    """
    rng = np.random.default_rng(seed)
    cov = _random_cov(rng, k, condition_number)
    batch_shape = (batch,) if batch else ()
    mean = rng.standard_normal((*batch_shape, k))
    g = Gaussian.from_covariance(mean=mean, cov=cov)
    z = rng.standard_normal((3, *batch_shape, k)) * 2.0
    ours = np.asarray(g.log_prob(z))
    assert ours.shape == (3, *batch_shape)
    means = mean.reshape(-1, k)
    points = z.reshape(3, -1, k)
    expected = np.empty((3, means.shape[0]))
    for j, m in enumerate(means):
        expected[:, j] = scipy.stats.multivariate_normal(mean=m, cov=cov).logpdf(points[:, j])
    # scipy factors cov by eigh; both routes are backward stable, so they agree to a small
    # multiple of cond(cov) * eps relative to the size of the log density.
    assert_allclose(ours.reshape(3, -1), expected, rtol=1e-11, atol=1e-11)
    assert_allclose(
        g.entropy(), scipy.stats.multivariate_normal(mean=means[0], cov=cov).entropy(), rtol=1e-12
    )


@given(seed=seeds, k=dims, condition_number=conditions)
def test_constructors_describe_the_same_distribution(seed, k, condition_number):
    """from_covariance, from_cholesky, from_precision agree (the factor is unique).

    The Cholesky factor comes from numpy.linalg.cholesky and the precision from
    numpy.linalg.inv, both independent of the package; the lower factor with a positive
    diagonal is unique, so all three constructors must yield the same scale_tril, cov,
    precision, log_prob and entropy up to rounding (inv costs up to cond * eps).
    """
    rng = np.random.default_rng(seed)
    cov = _random_cov(rng, k, condition_number)
    mean = rng.standard_normal(k)
    built = [
        Gaussian.from_covariance(mean=mean, cov=cov),
        Gaussian.from_cholesky(mean=mean, scale_tril=np.linalg.cholesky(cov)),
        Gaussian.from_precision(mean=mean, precision=np.linalg.inv(cov)),
    ]
    z = mean + rng.standard_normal((4, k))
    tol = 50 * UNIT * condition_number * k
    scale = np.abs(np.linalg.cholesky(cov)).max()
    for g in built:
        assert_allclose(g.mean, mean, rtol=0, atol=0)
        assert_allclose(g.scale_tril, np.linalg.cholesky(cov), rtol=0, atol=tol * scale)
        assert_allclose(g.cov, cov, rtol=0, atol=tol * np.abs(cov).max())
        precision = np.linalg.inv(cov)
        assert_allclose(g.precision, precision, rtol=0, atol=tol * np.abs(precision).max())
        assert_allclose(g.log_prob(z), built[0].log_prob(z), rtol=tol, atol=tol)
        assert_allclose(g.entropy(), built[0].entropy(), rtol=tol, atol=tol)


@given(seed=seeds, k=dims)
def test_all_four_constructors_agree_on_a_diagonal_gaussian_and_standard(seed, k):
    """from_diagonal, from_covariance, from_cholesky and from_precision of one diagonal
    Gaussian agree, and match scipy.stats.norm; standard(k) matches N(0, I) likewise.

    For a diagonal covariance every route is exact up to a few roundings (square roots
    and reciprocals), so the tolerances are a few ulps.
    """
    rng = np.random.default_rng(seed)
    variances = np.exp(rng.uniform(-3, 3, size=k))
    mean = rng.standard_normal(k)
    diagonal = Gaussian.from_diagonal(mean=mean, variances=variances)
    built = [
        Gaussian.from_covariance(mean=mean, cov=np.diag(variances)),
        Gaussian.from_cholesky(mean=mean, scale_tril=np.diag(np.sqrt(variances))),
        Gaussian.from_precision(mean=mean, precision=np.diag(1.0 / variances)),
    ]
    z = rng.standard_normal((5, k))
    for g in [diagonal, *built]:
        assert_allclose(g.cov, np.diag(variances), rtol=32 * UNIT, atol=0)
        assert_allclose(g.scale_tril, np.diag(np.sqrt(variances)), rtol=32 * UNIT, atol=0)
        assert_allclose(g.precision, np.diag(1.0 / variances), rtol=32 * UNIT, atol=0)
        assert_allclose(g.log_prob(z), diagonal.log_prob(z), rtol=1e-14, atol=1e-14)
    expected = scipy.stats.norm(loc=mean, scale=np.sqrt(variances)).logpdf(z).sum(axis=-1)
    assert_allclose(diagonal.log_prob(z), expected, rtol=1e-14, atol=1e-14)

    standard = Gaussian.standard(k)
    assert_array_equal(standard.mean, np.zeros(k))
    assert_array_equal(standard.cov, np.eye(k))
    assert_allclose(
        standard.log_prob(z), scipy.stats.norm.logpdf(z).sum(axis=-1), rtol=1e-14, atol=1e-14
    )
    assert_allclose(standard.entropy(), 0.5 * k * (1 + math.log(2 * math.pi)), rtol=1e-15)


@pytest.mark.parametrize("seed", range(6))
def test_from_precision_ill_conditioned_matches_mpmath(seed):
    """from_precision with cond(P) = 1e8 against mpmath inversion at 50 digits.

    The exact float64 precision P is inverted in mpmath. Each quantity is held to a
    multiple of its own condition number (the change caused by perturbations of size
    eps in P), because no float64 algorithm can do better:

    * log det Sigma: ``eps * sum|Sigma_ij P_ij|``;
    * log_prob(z): that plus ``eps/2 * sum|d_i P_ij d_j| + eps |log p|``, ``d = z - mean``;
    * cov: entrywise ``eps * (|Sigma| |P| |Sigma|)_ij``;
    * precision (the round trip P -> factor -> precision): normwise
      ``eps * cond(U) * max|P|`` with ``P = U U'`` (one triangular inversion).

    Measured over 200 seeds (K = 2..5), error / bound was at most 0.57 for log det and
    cov, 0.29 for log_prob and 0.0099 for the precision; the limits in ``LIMITS`` are
    10x those. A textbook route through inv(P) loses as many digits as the bound allows;
    what is checked is that no more are lost.
    """
    rng = np.random.default_rng(1000 + seed)
    k = 2 + seed % 4
    precision = random_spd(rng, k, condition_number=1e8, scale=float(rng.uniform(0.1, 10)))
    mean = rng.standard_normal(k)
    g = Gaussian.from_precision(mean=mean, precision=precision)
    eps = 2 * UNIT
    with mpmath.workdps(MP_DIGITS):
        p_mp = _mp_matrix(precision)
        sigma_mp = p_mp**-1
        factor_mp = mpmath.cholesky(p_mp)
        log_det_p = 2 * mpmath.fsum(mpmath.log(factor_mp[i, i]) for i in range(k))
        sigma = np.array(sigma_mp.tolist(), dtype=np.float64)
        abs_sigma, abs_p = np.abs(sigma), np.abs(precision)
        ratios = {}
        bound = eps * float(np.sum(abs_sigma * abs_p))
        ratios["log_det"] = abs(g.log_det_cov + float(log_det_p)) / bound
        cov_bound = eps * abs_sigma @ abs_p @ abs_sigma
        ratios["cov"] = float(np.max(np.abs(g.cov - sigma) / cov_bound))
        upper = np.linalg.cholesky(precision[::-1, ::-1])[::-1, ::-1]
        ratios["precision"] = float(np.max(np.abs(g.precision - precision))) / (
            eps * np.linalg.cond(upper) * float(np.max(abs_p))
        )
        z = mean + rng.standard_normal((5, k)) @ np.linalg.cholesky(sigma).T
        ours = g.log_prob(z)
        worst = 0.0
        for i in range(len(z)):
            d = _mp_matrix(z[i]) - _mp_matrix(mean)
            quad = (d.T * p_mp * d)[0]
            exact = -(k * mpmath.log(2 * mpmath.pi) - log_det_p + quad) / 2
            d_abs = np.abs(z[i] - mean)
            lp_bound = bound + 0.5 * eps * float(d_abs @ abs_p @ d_abs) + eps * abs(float(exact))
            worst = max(worst, abs(float(mpmath.mpf(ours[i]) - exact)) / lp_bound)
        ratios["log_prob"] = worst
    print(
        f"\nfrom_precision cond=1e8 K={k}: error/bound", {a: f"{b:.2g}" for a, b in ratios.items()}
    )
    limits = {"log_det": 6.0, "cov": 6.0, "log_prob": 3.0, "precision": 0.1}
    for name, ratio in ratios.items():
        assert ratio <= limits[name], f"{name}: error is {ratio:.3g} x its conditioning bound"


# ---------------------------------------------------------------------------- KL
@given(seed=seeds, k=dims, condition_number=conditions)
def test_kl_matches_textbook_dense_formula(seed, k, condition_number):
    """kl_divergence against 1/2 (tr(Sq^-1 Sp) + dm' Sq^-1 dm - K + log|Sq|/|Sp|) dense."""
    rng = np.random.default_rng(seed)
    cov_p, cov_q = _random_cov(rng, k, condition_number), _random_cov(rng, k, condition_number)
    mean_p, mean_q = rng.standard_normal(k), rng.standard_normal(k)
    p = Gaussian.from_covariance(mean=mean_p, cov=cov_p)
    q = Gaussian.from_covariance(mean=mean_q, cov=cov_q)
    expected = _dense_kl(mean_p, cov_p, mean_q, cov_q)
    # The textbook form solves with cov_q and cancels terms of size ~ K down to the KL, so
    # the two routes differ by ~ eps * cond(cov_q) * (1 + KL): measured <= 6.8 units of
    # that over 6000 seeds; asserted with 70.
    bound = UNIT * np.linalg.cond(cov_q) * (1 + abs(expected))
    assert abs(kl_divergence(p, q) - expected) <= 70 * bound


@given(seed=seeds, k=st.integers(1, 5), condition_number=st.sampled_from([1.0, 1e3, 1e6]))
@settings(max_examples=min(settings().max_examples, 40))
def test_kl_matches_mpmath(seed, k, condition_number):
    """kl_divergence against a 50-digit mpmath evaluation on the exact float64 factors.

    The package's KL is a sum of non-negative terms of a triangular solve, whose relative
    forward error is ~ cond(L_q) * eps. Measured over 1500 seeds at cond(cov) = 1e6 the
    largest relative error was 1.6e-14; the tolerance 2e-13 is 12x that.
    """
    rng = np.random.default_rng(seed)
    p = random_gaussian(rng, k, condition_number=condition_number)
    q = random_gaussian(rng, k, condition_number=condition_number)
    exact = _mp_kl(p, q)
    assert_allclose(kl_divergence(p, q), float(exact), rtol=2e-13)


@pytest.mark.parametrize("delta", [1e-3, 1e-6, 1e-9, 1e-12])
@pytest.mark.parametrize("seed", range(5))
def test_kl_of_nearly_identical_gaussians_matches_mpmath(delta, seed):
    """KL(p || q) for q a delta-perturbation of p, against mpmath at 50 digits.

    KL ~ delta**2 here, so the textbook form (terms of size ~K that cancel) is left with
    an absolute error ~ K * eps ~ 1e-15 that swamps a KL of 1e-24. The package must stay
    non-negative and accurate in absolute terms: its error is first order in the
    perturbation, ``~ eps * cond(L_q) * delta``. Measured over 400 cases (K = 1..5,
    cond(cov) = 100): error <= 4.5 * eps * delta * cond(L_q); asserted with 50.
    """
    rng = np.random.default_rng(seed)
    k = 1 + seed % 5
    p = random_gaussian(rng, k, condition_number=100.0)
    wiggle = np.tril(rng.standard_normal((k, k))) * np.abs(p.scale_tril).max()
    q = Gaussian.from_cholesky(
        mean=p.mean + delta * rng.standard_normal(k), scale_tril=p.scale_tril + delta * wiggle
    )
    exact = _mp_kl(p, q)
    ours = kl_divergence(p, q)
    textbook = _dense_kl(p.mean, p.cov, q.mean, q.cov)
    error = abs(float(mpmath.mpf(ours) - exact))
    bound = 2 * UNIT * delta * np.linalg.cond(q.scale_tril)
    print(
        f"\ndelta={delta:.0e} K={k}: KL={float(exact):.3e} ours err={error:.1e} "
        f"textbook err={abs(float(mpmath.mpf(textbook) - exact)):.1e} "
        f"ours err / (eps delta cond(L_q))={error / bound:.2g}"
    )
    assert ours >= 0.0
    assert error <= 50 * bound


@given(seed=seeds, k=st.integers(1, 8), batch=st.integers(0, 3))
def test_kl_of_a_gaussian_with_itself_is_exactly_zero(seed, k, batch):
    """kl_divergence(p, p) == 0 exactly (documented: the regrouped terms vanish).

    Independent route: the definition, KL(p || p) = 0.
    """
    rng = np.random.default_rng(seed)
    batch_shape = (batch,) if batch else ()
    p = random_gaussian(rng, k, batch_shape=batch_shape, condition_number=1e3)
    assert_array_equal(kl_divergence(p, p), np.zeros(batch_shape))


@given(seed=seeds, k=dims, condition_number=conditions, batch=st.integers(0, 3))
def test_cross_entropy_is_kl_plus_entropy(seed, k, condition_number, batch):
    """cross_entropy(p, q) == kl_divergence(p, q) + p.entropy(), and both match dense forms.

    The dense route is -E_p[log q] = 1/2 (K log 2 pi + log|Sq| + tr(Sq^-1 Sp) + dm' Sq^-1 dm).
    """
    rng = np.random.default_rng(seed)
    batch_shape = (batch,) if batch else ()
    p = random_gaussian(rng, k, batch_shape=batch_shape, condition_number=condition_number)
    q = random_gaussian(rng, k, condition_number=condition_number)
    h = np.asarray(cross_entropy(p, q))
    assert h.shape == batch_shape
    total = np.asarray(kl_divergence(p, q)) + p.entropy()
    assert_allclose(h, total, rtol=1e-14, atol=1e-14)
    for index in np.ndindex(*batch_shape):
        offset = p.mean[index] - q.mean
        dense = 0.5 * (
            k * math.log(2 * math.pi)
            + np.linalg.slogdet(q.cov)[1]
            + np.trace(np.linalg.solve(q.cov, p.cov))
            + offset @ np.linalg.solve(q.cov, offset)
        )
        assert_allclose(h[index], dense, rtol=1e-12, atol=1e-12)


@given(seed=seeds, k=st.integers(1, 4))
@settings(max_examples=min(settings().max_examples, 30))
def test_kl_matches_monte_carlo(seed, k):
    """KL(p || q) against the Monte Carlo mean of log p(z) - log q(z), z ~ p.

    Sampling uses numpy's own multivariate_normal and the densities scipy's, so nothing
    is shared with the package. z-test: ``|mean - KL| <= Z_CRIT * s / sqrt(n)`` with the
    sample standard deviation s; false-alarm rate ALPHA = 1e-6 (normal approximation
    to the mean of n = 20000 draws of a quadratic form).
    """
    rng = np.random.default_rng(seed)
    p = random_gaussian(rng, k, condition_number=10.0)
    q = random_gaussian(rng, k, condition_number=10.0, cov_scale=2.0)
    n = 20_000
    z = rng.multivariate_normal(p.mean, p.cov, size=n)
    log_ratio = scipy.stats.multivariate_normal(p.mean, p.cov).logpdf(
        z
    ) - scipy.stats.multivariate_normal(q.mean, q.cov).logpdf(z)
    standard_error = log_ratio.std(ddof=1) / math.sqrt(n)
    assert abs(log_ratio.mean() - kl_divergence(p, q)) <= Z_CRIT * standard_error


# ---------------------------------------------------------------------------- sampling
@given(seed=seeds, k=st.integers(1, 4), batch=st.integers(0, 2))
@settings(max_examples=min(settings().max_examples, 30))
def test_sample_mean_and_covariance(seed, k, batch):
    """sample() against the mean and covariance it was built from, by exact tests.

    With the true mean mu and covariance S known, for each batch member:

    * mean: ``n (xbar - mu)' S^-1 (xbar - mu) ~ chi2(K)`` exactly; reject above
      ``chi2.isf(ALPHA, K)``;
    * covariance: for each direction v (the axes, pairwise sums and random directions),
      ``sum_i (v'(x_i - mu))^2 / v'Sv ~ chi2(n)`` exactly; two-sided, Bonferroni over the
      m directions, so each check has false-alarm rate ALPHA.

    A transposed factor (samples with covariance L'L instead of LL') changes v'Sv by far
    more than the ~sqrt(2/n) = 1% these tests resolve.
    """
    rng = np.random.default_rng(seed)
    cov = _random_cov(rng, k, 100.0)
    batch_shape = (batch,) if batch else ()
    mean = rng.standard_normal((*batch_shape, k))
    g = Gaussian.from_covariance(mean=mean, cov=cov)
    n = 20_000
    draws = g.sample(n, int(rng.integers(2**32)))
    assert draws.shape == (n, *batch_shape, k)
    directions = [np.eye(k)[i] for i in range(k)]
    directions += [np.eye(k)[i] + np.eye(k)[j] for i in range(k) for j in range(i)]
    directions += list(rng.standard_normal((3, k)))
    m = len(directions)
    low = scipy.stats.chi2.ppf(ALPHA / (2 * m), n)
    high = scipy.stats.chi2.isf(ALPHA / (2 * m), n)
    flat_draws = draws.reshape(n, -1, k)
    for j, mu in enumerate(mean.reshape(-1, k)):
        x = flat_draws[:, j]
        offset = x.mean(axis=0) - mu
        hotelling = n * offset @ np.linalg.solve(cov, offset)
        assert hotelling <= scipy.stats.chi2.isf(ALPHA, k)
        for v in directions:
            statistic = np.sum(((x - mu) @ v) ** 2) / (v @ cov @ v)
            assert low <= statistic <= high


def test_sample_is_reproducible_from_an_int_seed():
    """sample(n, seed) equals sample(n, default_rng(seed)) (numpy's documented seeding)."""
    g = Gaussian.from_covariance(mean=[1.0, -2.0], cov=[[2.0, 0.3], [0.3, 0.5]])
    assert_array_equal(g.sample(7, 123), g.sample(7, np.random.default_rng(123)))
    assert g.sample(0, 1).shape == (0, 2)


# ---------------------------------------------------------------------------- batches
@pytest.mark.parametrize(
    ("mean_shape", "z_shape", "expected"),
    [
        ((3,), (3,), ()),
        ((3,), (5, 3), (5,)),
        ((4, 3), (3,), (4,)),
        ((4, 3), (4, 3), (4,)),
        ((4, 3), (2, 1, 3), (2, 4)),
        ((2, 4, 3), (4, 3), (2, 4)),
    ],
)
def test_log_prob_broadcasts_over_batches(mean_shape, z_shape, expected, rng):
    """log_prob of a batched Gaussian: shape from numpy broadcasting, values from scipy."""
    cov = _random_cov(rng, 3, 10.0)
    mean = rng.standard_normal(mean_shape)
    z = rng.standard_normal(z_shape)
    g = Gaussian.from_covariance(mean=mean, cov=cov)
    ours = np.asarray(g.log_prob(z))
    assert ours.shape == expected
    if expected == ():
        assert isinstance(g.log_prob(z), float)
    means, points = np.broadcast_arrays(mean, z)
    for index in np.ndindex(*expected):
        reference = scipy.stats.multivariate_normal(means[index], cov).logpdf(points[index])
        assert_allclose(ours[index], reference, rtol=1e-14)
    assert g.batch_shape == mean_shape[:-1]
    assert g.sample(5, rng).shape == (5, *mean_shape)


@pytest.mark.parametrize(
    ("p_shape", "q_shape", "expected"),
    [((), (), ()), ((4,), (), (4,)), ((), (4,), (4,)), ((4,), (4,), (4,)), ((2, 1), (3,), (2, 3))],
)
def test_kl_and_cross_entropy_broadcast_over_batches(p_shape, q_shape, expected, rng):
    """Batched KL and cross-entropy equal the dense textbook value for each pair of means."""
    k = 3
    cov_p, cov_q = _random_cov(rng, k, 10.0), _random_cov(rng, k, 10.0)
    mean_p = rng.standard_normal((*p_shape, k))
    mean_q = rng.standard_normal((*q_shape, k))
    p = Gaussian.from_covariance(mean=mean_p, cov=cov_p)
    q = Gaussian.from_covariance(mean=mean_q, cov=cov_q)
    kl = np.asarray(kl_divergence(p, q))
    h = np.asarray(cross_entropy(p, q))
    assert kl.shape == expected
    assert h.shape == expected
    if expected == ():
        assert isinstance(kl_divergence(p, q), float)
    means_p, means_q = np.broadcast_arrays(mean_p, mean_q)
    for index in np.ndindex(*expected):
        dense = _dense_kl(means_p[index], cov_p, means_q[index], cov_q)
        assert_allclose(kl[index], dense, rtol=1e-13, atol=1e-14)
        assert_allclose(h[index], dense + p.entropy(), rtol=1e-13)
