"""Sparse GP bounds: the exact relations among them and dense linear-Gaussian routes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import multivariate_normal

from elbo_check import Gaussian, InvalidInputError, InvalidTypeError
from elbo_check.gp import RBF, ConstantMean, LinearMean, Matern12, Matern32, Matern52, SparseGP

JITTER = 1e-6  # the dense joint of (f, u) must be well conditioned for the oracle


def _problem(seed: int, n: int = 12, m: int = 4, d: int = 2, mean=None, kernel=None):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2.0, 2.0, size=(n, d))
    z = rng.uniform(-2.0, 2.0, size=(m, d))
    y = np.sin(x.sum(axis=1)) + 0.3 * rng.normal(size=n)
    kernel = kernel or Matern52(variance=1.3, lengthscale=np.linspace(0.7, 1.4, d))
    sgp = SparseGP(kernel, x, 0.2, inducing_inputs=z, mean=mean, jitter=JITTER)
    return sgp, y, rng


def _random_q(rng: np.random.Generator, m: int) -> Gaussian:
    factor = np.tril(rng.normal(scale=0.3, size=(m, m)), -1) + np.diag(rng.uniform(0.3, 1.0, m))
    return Gaussian(rng.normal(size=m), factor)


def _dense(sgp: SparseGP):
    """K_ff + jitter I, K_fu, K_uu + jitter I, m(X), m(Z), from the kernel directly."""
    x, z, k, j = sgp.inputs, sgp.inducing_inputs, sgp.kernel, sgp.jitter
    kff = k(x) + j * np.eye(len(x))
    kuu = k(z) + j * np.eye(len(z))
    return kff, k(x, z), kuu, sgp.mean(x), sgp.mean(z)


def _joint_q(sgp: SparseGP, q: Gaussian) -> Gaussian:
    """q(f, u) = p(f | u) q(u), formed densely."""
    kff, kfu, kuu, mx, mz = _dense(sgp)
    p = np.linalg.solve(kuu, kfu.T)  # (M, N)
    s = q.cov
    cov = np.block([[kff - kfu @ p + p.T @ s @ p, p.T @ s], [s @ p, s]])
    mean = np.concatenate([mx + p.T @ (q.mean - mz), q.mean])
    return Gaussian.from_covariance(mean=mean, cov=0.5 * (cov + cov.T))


def _unwhiten(sgp: SparseGP, q_v: Gaussian) -> Gaussian:
    lu = np.linalg.cholesky(_dense(sgp)[2])
    return Gaussian(sgp.mean(sgp.inducing_inputs) + lu @ q_v.mean, lu @ q_v.scale_tril)


MEANS = [None, ConstantMean(0.5), LinearMean([0.3, -0.7], bias=0.1)]


@pytest.mark.parametrize("mean", MEANS)
def test_collapsed_and_upper_bounds_against_dense_formulas(mean) -> None:
    sgp, y, _ = _problem(1, mean=mean)
    kff, kfu, kuu, mx, _ = _dense(sgp)
    q = kfu @ np.linalg.solve(kuu, kfu.T)
    n, s2 = len(y), sgp.noise_variance
    t = np.trace(kff - q)
    collapsed = multivariate_normal(mx, q + s2 * np.eye(n)).logpdf(y) - t / (2 * s2)
    assert sgp.collapsed_bound(y) == pytest.approx(collapsed, rel=1e-11)
    r = y - mx
    _, logdet = np.linalg.slogdet(q + s2 * np.eye(n))
    quad = r @ np.linalg.solve(q + (s2 + t) * np.eye(n), r)
    upper = -0.5 * (n * np.log(2 * np.pi) + logdet + quad)
    assert sgp.upper_bound(y) == pytest.approx(upper, rel=1e-11)


@pytest.mark.parametrize("kernel", [Matern12(), Matern32(lengthscale=0.3)])
def test_inducing_inputs_at_the_data_make_both_bounds_exact(kernel) -> None:
    rng = np.random.default_rng(3)
    x = np.sort(rng.uniform(0.0, 5.0, 10))
    y = np.cos(x) + 0.1 * rng.normal(size=10)
    sgp = SparseGP(kernel, x, 0.1, inducing_inputs=x, mean=ConstantMean(0.2), jitter=0.0)
    lml = sgp.log_marginal_likelihood(y)
    assert sgp.collapsed_bound(y) == pytest.approx(lml, rel=1e-12, abs=1e-12)
    assert sgp.upper_bound(y) == pytest.approx(lml, rel=1e-12, abs=1e-12)
    q = sgp.optimal_inducing_distribution(y)
    assert sgp.kl_gap(q, y) == pytest.approx(0.0, abs=1e-11)


@pytest.mark.parametrize("mean", MEANS)
@pytest.mark.parametrize("whiten", [False, True])
def test_elbo_at_the_optimal_q_is_the_collapsed_bound(mean, whiten: bool) -> None:
    sgp, y, rng = _problem(2, mean=mean)
    q = sgp.optimal_inducing_distribution(y, whiten=whiten)
    assert sgp.svgp_elbo(q, y, whiten=whiten) == pytest.approx(sgp.collapsed_bound(y), rel=1e-12)
    for _ in range(3):  # and it is the maximum
        other = _random_q(rng, sgp.num_inducing)
        assert sgp.svgp_elbo(other, y, whiten=whiten) < sgp.collapsed_bound(y)


def test_optimal_q_against_the_dense_formula() -> None:
    sgp, y, _ = _problem(4, mean=ConstantMean(-0.4))
    _, kfu, kuu, mx, mz = _dense(sgp)
    s2 = sgp.noise_variance
    sigma = np.linalg.inv(kuu + kfu.T @ kfu / s2)
    q = sgp.optimal_inducing_distribution(y)
    np.testing.assert_allclose(q.mean, mz + kuu @ sigma @ kfu.T @ (y - mx) / s2, rtol=1e-9)
    np.testing.assert_allclose(q.cov, kuu @ sigma @ kuu, rtol=1e-9, atol=1e-12)


@settings(max_examples=20)
@given(
    seed=st.integers(0, 2**20),
    m=st.integers(1, 6),
    kind=st.sampled_from([RBF, Matern12, Matern32, Matern52]),
    noise=st.floats(0.01, 2.0),
)
def test_lower_bound_below_log_ml_below_upper_bound(seed: int, m: int, kind, noise: float) -> None:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2.0, 2.0, size=(10, 1))
    y = rng.normal(size=10)
    z = rng.uniform(-2.0, 2.0, size=(m, 1))
    sgp = SparseGP(kind(lengthscale=0.8), x, noise, inducing_inputs=z, jitter=1e-8)
    lml = sgp.log_marginal_likelihood(y)
    slack = 1e-10 * (1 + abs(lml))
    assert sgp.collapsed_bound(y) <= lml + slack
    assert lml <= sgp.upper_bound(y) + slack
    q = _random_q(rng, m)
    assert sgp.svgp_elbo(q, y) <= sgp.collapsed_bound(y) + slack


@pytest.mark.parametrize("mean", MEANS)
def test_elbo_and_kl_gap_against_the_dense_oracle(mean) -> None:
    sgp, y, rng = _problem(5, mean=mean)
    model = sgp.as_linear_gaussian_model()
    assert model.log_evidence(y) == pytest.approx(sgp.log_marginal_likelihood(y), rel=1e-10)
    for _ in range(3):
        q = _random_q(rng, sgp.num_inducing)
        joint = _joint_q(sgp, q)
        assert sgp.svgp_elbo(q, y) == pytest.approx(model.elbo(joint, y), rel=1e-9)
        gap = sgp.kl_gap(q, y)
        assert gap == pytest.approx(model.kl_to_posterior(joint, y), rel=1e-8)
        assert gap > 0


@pytest.mark.parametrize("mean", MEANS)
def test_whitened_and_unwhitened_agree_for_the_same_q_f(mean) -> None:
    sgp, y, rng = _problem(6, mean=mean)
    for _ in range(3):
        q_v = _random_q(rng, sgp.num_inducing)
        q_u = _unwhiten(sgp, q_v)
        whitened = sgp.svgp_elbo(q_v, y, whiten=True)
        assert whitened == pytest.approx(sgp.svgp_elbo(q_u, y), rel=1e-10)
    q_v = sgp.optimal_inducing_distribution(y, whiten=True)
    q_u = sgp.optimal_inducing_distribution(y)
    np.testing.assert_allclose(_unwhiten(sgp, q_v).cov, q_u.cov, rtol=1e-9, atol=1e-13)


def _central_differences(sgp: SparseGP, q: Gaussian, y, whiten: bool, h: float = 1e-5):
    def elbo(mean, factor):
        return sgp.svgp_elbo(Gaussian(mean, factor), y, whiten=whiten)

    m = q.dim
    g_mean = np.zeros(m)
    g_factor = np.zeros((m, m))
    for i in range(m):
        e = np.zeros(m)
        e[i] = h
        g_mean[i] = (elbo(q.mean + e, q.scale_tril) - elbo(q.mean - e, q.scale_tril)) / (2 * h)
    for i, j in zip(*np.tril_indices(m), strict=True):
        e = np.zeros((m, m))
        e[i, j] = h
        g_factor[i, j] = (elbo(q.mean, q.scale_tril + e) - elbo(q.mean, q.scale_tril - e)) / (2 * h)
    return g_mean, g_factor


@pytest.mark.parametrize("whiten", [False, True])
@pytest.mark.parametrize("mean", [None, LinearMean([0.3, -0.7])])
def test_gradients_against_central_differences(whiten: bool, mean) -> None:
    sgp, y, rng = _problem(7, n=10, m=3, mean=mean, kernel=Matern32(lengthscale=1.2))
    q = _random_q(rng, 3)
    grad = sgp.svgp_elbo_grad(q, y, whiten=whiten)
    fd_mean, fd_factor = _central_differences(sgp, q, y, whiten)
    scale = 1 + np.abs(fd_mean).max() + np.abs(fd_factor).max()
    np.testing.assert_allclose(grad.mean, fd_mean, atol=1e-6 * scale)
    np.testing.assert_allclose(grad.scale_tril, fd_factor, atol=1e-6 * scale)
    np.testing.assert_array_equal(grad.scale_tril, np.tril(grad.scale_tril))


@pytest.mark.parametrize("whiten", [False, True])
def test_gradient_vanishes_at_the_optimum(whiten: bool) -> None:
    sgp, y, _ = _problem(8, mean=ConstantMean(0.3))
    grad = sgp.svgp_elbo_grad(sgp.optimal_inducing_distribution(y, whiten=whiten), y, whiten=whiten)
    assert np.abs(grad.mean).max() < 1e-8
    assert np.abs(grad.scale_tril).max() < 1e-8


@pytest.mark.parametrize("whiten", [False, True])
def test_minibatch_estimator_is_unbiased_over_a_balanced_design(whiten: bool) -> None:
    sgp, y, rng = _problem(9, n=8, m=3, mean=ConstantMean(0.2))
    q = _random_q(rng, 3)
    exact = sgp.svgp_elbo(q, y, whiten=whiten)
    # every 3-subset of the 8 rows: each row is in the same number of batches
    subsets = [np.array(rows) for rows in itertools.combinations(range(8), 3)]
    estimates = [sgp.svgp_elbo_minibatch(q, y[r], r, whiten=whiten) for r in subsets]
    assert np.mean(estimates) == pytest.approx(exact, rel=1e-12)
    partition = rng.permutation(8).reshape(4, 2)  # the batches of one epoch
    epoch = [sgp.svgp_elbo_minibatch(q, y[r], r, whiten=whiten) for r in partition]
    assert np.mean(epoch) == pytest.approx(exact, rel=1e-12)
    full = sgp.svgp_elbo_minibatch(q, y, np.arange(8), whiten=whiten)
    assert full == pytest.approx(exact, rel=1e-13)


def test_sparse_argument_errors_name_the_argument() -> None:
    sgp, y, _ = _problem(10, n=5, m=2)
    q = Gaussian.standard(2)
    cases = [
        (lambda: sgp.svgp_elbo(Gaussian.standard(3), y), InvalidInputError, "q_u must be"),
        (lambda: sgp.svgp_elbo("q", y), InvalidTypeError, "q_u must be a Gaussian"),
        (lambda: sgp.svgp_elbo(q, y[:3]), InvalidInputError, r"y must have shape \(N,\)"),
        (lambda: sgp.svgp_elbo_minibatch(q, y[:2], [0, 7]), InvalidInputError, "rows must"),
        (lambda: sgp.svgp_elbo_minibatch(q, y[:2], [0.0, 1.0]), InvalidTypeError, "rows must"),
        (lambda: sgp.svgp_elbo_minibatch(q, y[:3], [0, 1]), InvalidInputError, "y_batch must"),
        (
            lambda: SparseGP(RBF(), np.zeros((3, 2)), 0.1, inducing_inputs=np.zeros((2, 3))),
            InvalidInputError,
            "inducing_inputs must have shape",
        ),
        (
            lambda: SparseGP(RBF(), [0.0], 0.1, inducing_inputs=[0.0, 0.0], jitter=0.0),
            InvalidInputError,
            "K_ZZ",
        ),
        (lambda: SparseGP(RBF(), [0.0], 0.0, inducing_inputs=[0.0]), InvalidInputError, "noise"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
