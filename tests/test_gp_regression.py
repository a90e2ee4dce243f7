"""Exact GP regression against scipy on the dense covariance and the linear-Gaussian oracle."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from elbo_check import InvalidInputError, InvalidTypeError
from elbo_check.gp import RBF, ConstantMean, GPRegression, LinearMean, Matern32, Matern52

JITTER = 1e-8


def _problem(rng: np.random.Generator, n: int = 9, d: int = 2):
    x = rng.uniform(-2.0, 2.0, size=(n, d))
    y = np.sin(x.sum(axis=1)) + 0.3 * rng.normal(size=n)
    return x, y


@pytest.mark.parametrize(
    ("kernel", "mean"),
    [
        (RBF(variance=1.3, lengthscale=[0.8, 1.5]), None),
        (Matern32(variance=0.7), ConstantMean(0.4)),
        (Matern52(lengthscale=0.5), LinearMean([0.3, -1.0], bias=0.2)),
    ],
)
def test_log_marginal_likelihood_three_routes(kernel, mean, rng: np.random.Generator) -> None:
    x, y = _problem(rng)
    gp = GPRegression(kernel, x, 0.2, mean=mean, jitter=JITTER)
    m = np.zeros(len(x)) if mean is None else mean(x)
    dense = kernel(x) + (JITTER + 0.2) * np.eye(len(x))
    scipy_value = multivariate_normal(m, dense).logpdf(y)
    value = gp.log_marginal_likelihood(y)
    assert value == pytest.approx(scipy_value, rel=1e-12, abs=1e-12)
    assert value == pytest.approx(gp.as_linear_gaussian_model().log_evidence(y), rel=1e-12)


def test_predictive_against_dense_formulas(rng: np.random.Generator) -> None:
    x, y = _problem(rng)
    x_new = rng.uniform(-2.5, 2.5, size=(5, 2))
    kernel, mean = Matern52(variance=1.2, lengthscale=[0.6, 1.1]), ConstantMean(-0.3)
    gp = GPRegression(kernel, x, 0.15, mean=mean, jitter=JITTER)
    c = kernel(x) + (JITTER + 0.15) * np.eye(len(x))
    cross = kernel(x_new, x)
    dense_mean = mean(x_new) + cross @ np.linalg.solve(c, y - mean(x))
    dense_cov = kernel(x_new) + JITTER * np.eye(5) - cross @ np.linalg.solve(c, cross.T)
    got_mean, got_cov = gp.predict(y, x_new, full_cov=True)
    np.testing.assert_allclose(got_mean, dense_mean, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(got_cov, dense_cov, rtol=1e-10, atol=1e-12)
    got_mean2, got_var = gp.predict(y, x_new)
    np.testing.assert_array_equal(got_mean2, got_mean)
    np.testing.assert_allclose(got_var, np.diagonal(dense_cov), rtol=1e-10, atol=1e-12)


def test_prediction_at_training_inputs_is_the_oracle_posterior(rng: np.random.Generator) -> None:
    x, y = _problem(rng)
    # jitter 0: with a jitter, f(X_*) at X_* = X are new variables whose cross-covariance
    # with f(X) has no jitter, which differs from the posterior of f(X) by O(jitter)
    gp = GPRegression(RBF(lengthscale=0.9), x, 0.3, mean=LinearMean([1.0, 0.5]), jitter=0.0)
    posterior = gp.as_linear_gaussian_model().posterior(y)
    mean, cov = gp.predict(y, x, full_cov=True)
    np.testing.assert_allclose(mean, posterior.mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cov, posterior.cov, rtol=1e-9, atol=1e-12)


def test_jitter_goes_on_the_latent_prior() -> None:
    gp = GPRegression(Matern32(), [0.0, 5.0], 0.5, jitter=0.25)
    np.testing.assert_allclose(np.diagonal(gp.prior.cov), [1.25, 1.25], rtol=1e-15)
    assert gp.log_marginal_likelihood([0.0, 0.0]) == pytest.approx(
        multivariate_normal(np.zeros(2), Matern32()([0.0, 5.0]) + 0.75 * np.eye(2)).logpdf(
            [0.0, 0.0]
        ),
        rel=1e-14,
    )


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: GPRegression("rbf", [0.0], 1.0), InvalidTypeError, "kernel must be"),
        (lambda: GPRegression(RBF(), [0.0], 0.0), InvalidInputError, "noise_variance must be"),
        (lambda: GPRegression(RBF(), [0.0], -1.0), InvalidInputError, "noise_variance must be"),
        (lambda: GPRegression(RBF(), [0.0], 1.0, jitter=-1e-9), InvalidInputError, "jitter"),
        (lambda: GPRegression(RBF(), [0.0], 1.0, mean=0.0), InvalidTypeError, "mean must be"),
        (lambda: GPRegression(RBF(), np.zeros((0, 1)), 1.0), InvalidInputError, "inputs must"),
        (
            lambda: GPRegression(RBF(), [0.0, 1.0], 1.0).log_marginal_likelihood([1.0]),
            InvalidInputError,
            r"y must have shape \(N,\) = \(2,\)",
        ),
        (
            lambda: GPRegression(RBF(), np.zeros((2, 2)), 1.0).predict([0.0, 0.0], [[1.0]]),
            InvalidInputError,
            "new_inputs must have shape",
        ),
    ],
)
def test_argument_errors_name_the_argument(call, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call()


def test_a_kernel_that_is_not_psd_is_reported() -> None:
    from elbo_check.gp import Kernel

    bad = Kernel.from_function(lambda a, b: -np.ones((len(a), len(b))))
    with pytest.raises(InvalidInputError, match="K_XX"):
        GPRegression(bad, [0.0, 1.0], 0.1)


def test_copies_and_pickles_are_rebuilt_frozen_and_equal(rng: np.random.Generator) -> None:
    import copy
    import pickle

    from elbo_check._validation import is_frozen
    from elbo_check.gp import SparseGP

    x, y = _problem(rng)
    gp = GPRegression(Matern32(lengthscale=[0.5, 2.0]), x, 0.2, mean=LinearMean([1.0, 2.0]))
    sgp = SparseGP(RBF(), x, 0.2, inducing_inputs=x[:3], mean=ConstantMean(1.0))
    for clone in (pickle.loads(pickle.dumps(gp)), copy.deepcopy(gp)):
        assert clone.log_marginal_likelihood(y) == gp.log_marginal_likelihood(y)
        assert is_frozen(clone.inputs)
        assert is_frozen(clone.kernel.lengthscale)
        assert is_frozen(clone.mean.weights)
    for sclone in (pickle.loads(pickle.dumps(sgp)), copy.copy(sgp)):
        assert sclone.collapsed_bound(y) == sgp.collapsed_bound(y)
        assert is_frozen(sclone.inducing_inputs)
    with pytest.raises(ValueError, match="read-only"):
        gp.inputs[0, 0] = 1.0
