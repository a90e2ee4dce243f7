"""Closed-form ELBO gradients against finite differences of an independent dense ELBO.

Finite-difference tolerance
---------------------------
Every directional derivative is estimated along a direction ``E`` of one parameter,
``g(t) = f(theta + t E)``, by Richardson extrapolation of central differences::

    D(h) = (g(h) - g(-h)) / (2h)    = g'(0) + h^2 g'''/6 + h^4 g'''''/120 + O(h^6)
    R    = (4 D(h/2) - D(h)) / 3    = g'(0)               - h^4 g'''''/480 + O(h^6)

Truncation.  ``D(h) - D(h/2) = h^2 g'''/8 + O(h^4)`` is the second-order error term that
R has cancelled; R's own error ``h^4 |g'''''|/480`` is below it whenever
``h^2 |g'''''/g'''| < 60``.  Along every direction used here ``g`` is a sum of
quadratics, ``log det(A + tE)`` and ``u^T (A + tE)^{-1} u`` (A = Psi, Sigma_0) or
``log(L_ii + t)``, whose n-th derivatives grow like ``(n-1)! rho^n`` with
``rho = ||A^{-1} E|| <= 2 / lambda_min(A)`` (resp. ``1 / L_ii``), so the ratio is about
``12 rho^2``; with ``h = STEP * lambda_min`` (resp. ``STEP * L_ii``) that is
``h^2 |g'''''/g'''| ~ 50 * STEP^2 = 5e-5``, far below 60.  So ``|D(h) - D(h/2)|`` bounds the
truncation error of R.  (For the quadratic directions -- means, W, b, off-diagonal L --
g''' = 0 and there is no truncation error at all.)

Rounding.  Each evaluation of g has an absolute error ``delta``; the dense reference
below does a few solves with matrices of condition number at most ``kappa`` and inner
products of length at most ``D + K``, and its terms of total magnitude ``F`` (summed
before they cancel) are each accurate to about ``(D + K) kappa eps`` relative, so
``delta <= ROUNDING * (D + K) * kappa * eps * F`` with a safety factor ``ROUNDING``.
R's rounding error is then ``(4 * 2 delta/h + delta/h) / 3 = 3 delta / h``.

Hence ``|closed form - R| <= |D(h) - D(h/2)| + 3 delta / h``.  With ``h = STEP * s``
(s the parameter's scale), ``STEP = 1e-3`` and ``delta ~ 1e-14 F`` this is about
``1e-7 s^2 |g'''| + 3e-11 F / s``: any wrong factor, sign, transpose or missing term in a
gradient shows up many orders of magnitude above it (measured worst |closed - R| / bound
over 150 random problems: 0.06).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pytest
import scipy.optimize
from hypothesis import example, given, settings
from hypothesis import strategies as st

from elbo_check import Gaussian, LinearGaussianModel
from elbo_check._random import FAMILIES, random_gaussian, random_model

EPS = float(np.finfo(np.float64).eps)
LOG_2PI = math.log(2.0 * math.pi)
#: Relative step: h = STEP * (natural scale of the parameter); see the module docstring.
STEP = 1e-3
#: Safety factor in the rounding bound delta = ROUNDING * (D + K) * kappa * eps * F.
ROUNDING = 4.0

FloatArray = np.ndarray


# --------------------------------------------------------------------------- reference
@dataclass(frozen=True)
class Params:
    """All model and variational parameters as plain arrays (noise in its given form)."""

    weights: FloatArray
    bias: FloatArray
    noise: Any  # float, (D,) or (D, D)
    prior_mean: FloatArray
    prior_cov: FloatArray
    q_mean: FloatArray
    q_tril: FloatArray

    def dense_noise(self) -> FloatArray:
        noise = np.asarray(self.noise, dtype=float)
        d = self.weights.shape[0]
        if noise.ndim == 0:
            return float(noise) * np.eye(d)
        if noise.ndim == 1:
            return np.diag(noise)
        return noise

    def model(self) -> LinearGaussianModel:
        return LinearGaussianModel(
            weights=self.weights,
            bias=self.bias,
            prior=Gaussian.from_covariance(mean=self.prior_mean, cov=self.prior_cov),
            noise_cov=self.noise,
        )

    def q(self) -> Gaussian:
        return Gaussian.from_cholesky(mean=self.q_mean, scale_tril=self.q_tril)


def reference_elbo(p: Params, x: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Per-row ELBO from the dense textbook formulas, and the rounding scale kappa * F.

    ELBO = log N(x; W m + b, Psi) - tr(Psi^{-1} W S W^T)/2 - KL(N(m, S) || N(mu0, S0)),
    with KL = (tr(S0^{-1} S) + d^T S0^{-1} d - K + log|S0| - log|S|)/2, d = m - mu0.
    """
    w, psi, s0 = p.weights, p.dense_noise(), p.prior_cov
    d_dim, k_dim = w.shape
    cov = p.q_tril @ p.q_tril.T
    residual = x - p.q_mean @ w.T - p.bias
    quad = np.einsum("...i,...i->...", residual, np.linalg.solve(psi, residual[..., None])[..., 0])
    trace = np.trace(np.linalg.solve(psi, w @ cov @ w.T))
    logdet_psi = np.linalg.slogdet(psi)[1]
    offset = p.q_mean - p.prior_mean
    maha = np.einsum("...i,...i->...", offset, np.linalg.solve(s0, offset[..., None])[..., 0])
    trace_prior = np.trace(np.linalg.solve(s0, cov))
    logdet_s0 = np.linalg.slogdet(s0)[1]
    logdet_q = 2.0 * np.sum(np.log(np.diagonal(p.q_tril)))
    expected = -0.5 * (d_dim * LOG_2PI + logdet_psi + quad + trace)
    kl = 0.5 * (trace_prior + maha - k_dim + logdet_s0 - logdet_q)
    value = expected - kl
    magnitude = 0.5 * (
        d_dim * LOG_2PI + abs(logdet_psi) + quad + trace
        + trace_prior + maha + k_dim + abs(logdet_s0) + abs(logdet_q)
    )  # fmt: skip
    kappa = max(np.linalg.cond(psi), np.linalg.cond(s0), np.linalg.cond(cov))
    value, magnitude = np.broadcast_arrays(value, magnitude)
    return np.array(value, dtype=float), np.array(kappa * magnitude, dtype=float)


def richardson(
    g: Callable[[float], tuple[FloatArray, FloatArray]], h: float, dims: int
) -> tuple[FloatArray, FloatArray]:
    """Richardson-extrapolated central difference of g at 0 and its error bound."""
    (up, s1), (down, s2) = g(h), g(-h)
    (up2, s3), (down2, s4) = g(h / 2), g(-h / 2)
    d_full = (up - down) / (2.0 * h)
    d_half = (up2 - down2) / h
    estimate = (4.0 * d_half - d_full) / 3.0
    delta = ROUNDING * dims * EPS * np.maximum.reduce([s1, s2, s3, s4])
    return estimate, np.abs(d_full - d_half) + 3.0 * delta / h


class Discrepancies:
    """Collects |closed form - FD| / bound over many directions; asserts at the end."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.where = ""

    def add(self, label: str, closed: Any, estimate: Any, bound: Any) -> None:
        ratio = float(np.max(np.abs(np.asarray(closed) - estimate) / bound))
        if ratio > self.worst:
            self.worst, self.where = ratio, label

    def check(self) -> None:
        assert self.worst <= 1.0, f"worst |closed - FD| / bound = {self.worst:.3g} at {self.where}"


# --------------------------------------------------------------------------- problems
LAYOUTS = ("paired", "q_single", "x_single")


@dataclass(frozen=True)
class Problem:
    params: Params
    x: FloatArray
    batch: tuple[int, ...]

    @property
    def dims(self) -> int:
        return int(sum(self.params.weights.shape))


def make_problem(
    seed: int, family: str, d: int, k: int, batch: tuple[int, ...], layout: str
) -> Problem:
    """A random model of the family, a q with (possibly broadcast) means, and data rows."""
    rng = np.random.default_rng(seed)
    model = random_model(rng, data_dim=d, latent_dim=k, family=family)  # type: ignore[arg-type]
    x_batch = () if layout == "x_single" else batch
    q_batch = () if layout == "q_single" else batch
    n_rows = int(np.prod(x_batch)) if x_batch else 1
    x = model.sample(n_rows, rng)[0].reshape(*x_batch, d)
    q = random_gaussian(rng, k, batch_shape=q_batch, condition_number=10.0, cov_scale=0.5)
    noise = model.noise_cov
    params = Params(
        weights=np.array(model.weights),
        bias=np.array(model.bias),
        noise=noise if isinstance(noise, float) else np.array(noise),
        prior_mean=np.array(model.prior.mean),
        prior_cov=np.array(model.prior.cov),
        q_mean=np.array(q.mean),
        q_tril=np.array(q.scale_tril),
    )
    return Problem(params, x, tuple(np.broadcast_shapes(x_batch, q_batch)))


problem_args = {
    "seed": st.integers(0, 2**32 - 1),
    "d": st.integers(1, 4),
    "k": st.integers(1, 4),
    "batch": st.sampled_from([(), (1,), (3,), (2, 2)]),
    "layout": st.sampled_from(LAYOUTS),
}
#: K > D with batched rows, for each of the three layouts.
wide_examples = [example(seed=7, d=1, k=4, batch=(3,), layout=lay) for lay in LAYOUTS]


def with_wide_examples(test: Any) -> Any:
    for decorate in wide_examples:
        test = decorate(test)
    return test


def unit(shape: tuple[int, ...], index: tuple[int, ...]) -> FloatArray:
    out = np.zeros(shape)
    out[index] = 1.0
    return out


def symmetric_unit(dim: int, i: int, j: int) -> FloatArray:
    """E = e_i e_j^T + e_j e_i^T (so 2 e_i e_i^T on the diagonal)."""
    out = np.zeros((dim, dim))
    out[i, j] += 1.0
    out[j, i] += 1.0
    return out


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("family", FAMILIES)
@given(**problem_args)
@with_wide_examples
def test_reference_elbo_matches_package(
    family: str, seed: int, d: int, k: int, batch: tuple[int, ...], layout: str
) -> None:
    """The dense reference used as the FD target agrees with LinearGaussianModel.elbo."""
    problem = make_problem(seed, family, d, k, batch, layout)
    p = problem.params
    value, scale = reference_elbo(p, problem.x)
    package = np.asarray(p.model().elbo(p.q(), problem.x))
    assert package.shape == problem.batch
    bound = ROUNDING * problem.dims * EPS * scale
    assert np.all(np.abs(package - value) <= bound), np.max(np.abs(package - value) / bound)


@pytest.mark.parametrize("family", FAMILIES)
@given(**problem_args)
@with_wide_examples
def test_variational_gradients_match_finite_differences(
    family: str, seed: int, d: int, k: int, batch: tuple[int, ...], layout: str
) -> None:
    """elbo_grad_variational (per row) vs Richardson FD of the dense reference ELBO."""
    problem = make_problem(seed, family, d, k, batch, layout)
    p, x = problem.params, problem.x
    grads = p.model().elbo_grad_variational(p.q(), x)
    assert grads.mean.shape == (*problem.batch, k)
    assert grads.scale_tril.shape == (*problem.batch, k, k)
    assert np.all(np.triu(grads.scale_tril, 1) == 0.0), "entries above the diagonal"
    found = Discrepancies()

    # Mean: perturbing entry (j, c) of the array of means moves the ELBO of exactly
    # the rows that broadcast against mean j.
    q_batch = p.q_mean.shape[:-1]
    owner = np.broadcast_to(np.arange(max(1, int(np.prod(q_batch)))).reshape(q_batch), batch)
    owner = np.broadcast_to(owner, problem.batch)
    for flat in range(p.q_mean.size):
        index = np.unravel_index(flat, p.q_mean.shape)
        j, c = flat // k, int(index[-1])
        direction = unit(p.q_mean.shape, index)

        def g(t: float, direction: FloatArray = direction) -> tuple[FloatArray, FloatArray]:
            return reference_elbo(replace(p, q_mean=p.q_mean + t * direction), x)

        estimate, bound = richardson(g, STEP, problem.dims)
        closed = np.where(owner == j, grads.mean[..., c], 0.0)
        found.add(f"mean{index}", closed, estimate, bound)

    # Cholesky factor: lower-triangle entries only (an upper entry is not a parameter).
    for i in range(k):
        for j in range(i + 1):
            direction = unit((k, k), (i, j))
            h = STEP * (p.q_tril[i, i] if i == j else 1.0)

            def g(t: float, direction: FloatArray = direction) -> tuple[FloatArray, FloatArray]:
                return reference_elbo(replace(p, q_tril=p.q_tril + t * direction), x)

            estimate, bound = richardson(g, h, problem.dims)
            found.add(f"scale_tril[{i},{j}]", grads.scale_tril[..., i, j], estimate, bound)
    found.check()


def noise_directions(p: Params) -> list[tuple[str, Any, float]]:
    """(label, direction in the noise's own form, step) for every noise parameter."""
    noise = np.asarray(p.noise, dtype=float)
    if noise.ndim == 0:
        return [("noise", 1.0, STEP * float(noise))]
    if noise.ndim == 1:
        return [
            (f"noise[{i}]", unit(noise.shape, (i,)), STEP * noise[i]) for i in range(noise.size)
        ]
    h = STEP * float(np.linalg.eigvalsh(noise)[0])
    dim = noise.shape[0]
    return [
        (f"noise[{i},{j}]", symmetric_unit(dim, i, j), h) for i in range(dim) for j in range(i + 1)
    ]


@pytest.mark.parametrize("family", FAMILIES)
@given(**problem_args)
@with_wide_examples
def test_model_gradients_match_finite_differences(
    family: str, seed: int, d: int, k: int, batch: tuple[int, ...], layout: str
) -> None:
    """elbo_grad_model (summed over rows) vs Richardson FD of the summed dense ELBO."""
    problem = make_problem(seed, family, d, k, batch, layout)
    p, x = problem.params, problem.x
    grads = p.model().elbo_grad_model(p.q(), x)
    found = Discrepancies()

    def check(label: str, field: str, direction: Any, h: float, closed: float) -> None:
        def g(t: float) -> tuple[FloatArray, FloatArray]:
            value, scale = reference_elbo(
                replace(p, **{field: getattr(p, field) + t * direction}), x
            )
            return np.sum(value), np.sum(scale)

        estimate, bound = richardson(g, h, problem.dims)
        found.add(label, closed, estimate, bound)

    for i in range(d):
        check(f"bias[{i}]", "bias", unit((d,), (i,)), STEP, grads.bias[i])
        for j in range(k):
            check(f"weights[{i},{j}]", "weights", unit((d, k), (i, j)), STEP, grads.weights[i, j])
    for i in range(k):
        check(f"prior_mean[{i}]", "prior_mean", unit((k,), (i,)), STEP, grads.prior_mean[i])
    h_prior = STEP * float(np.linalg.eigvalsh(p.prior_cov)[0])
    for i in range(k):
        for j in range(i + 1):
            direction = symmetric_unit(k, i, j)
            closed = float(np.sum(grads.prior_cov * direction))
            check(f"prior_cov[{i},{j}]", "prior_cov", direction, h_prior, closed)
    for label, direction, h in noise_directions(p):
        closed = float(np.sum(np.asarray(grads.noise_cov) * direction))
        check(label, "noise", direction, h, closed)

    assert grads.weights.shape == (d, k)
    assert grads.prior_cov.shape == (k, k)
    assert np.shape(grads.noise_cov) == np.shape(p.noise)
    if isinstance(p.noise, float):
        assert isinstance(grads.noise_cov, float)
    # Only G + G^T is seen by symmetric perturbations; the independent-entry gradient of
    # a function of a symmetric matrix is itself symmetric, which pins down G.
    for name, matrix in (("prior_cov", grads.prior_cov), ("noise_cov", grads.noise_cov)):
        matrix = np.asarray(matrix)
        if matrix.ndim == 2:
            gap = np.max(np.abs(matrix - matrix.T))
            assert gap <= 1e-12 * (1.0 + np.max(np.abs(matrix))), f"{name} asymmetric"
    found.check()


def dense_posterior(p: Params, x: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Posterior precision and means by Bishop PRML eq. 2.116-2.117 with dense inverses."""
    psi_inv = np.linalg.inv(p.dense_noise())
    precision = np.linalg.inv(p.prior_cov) + p.weights.T @ psi_inv @ p.weights
    rhs = (x - p.bias) @ psi_inv @ p.weights + np.linalg.solve(p.prior_cov, p.prior_mean)
    return precision, np.linalg.solve(precision, rhs[..., None])[..., 0]


def gradient_scales(p: Params, x: FloatArray, precision: FloatArray) -> tuple[Any, float, float]:
    """Magnitudes of the terms of the two variational gradients at q = p(z|x), and kappa.

    The mean gradient W^T Psi^{-1}(x - W m - b) - S0^{-1}(m - mu0) is a difference of terms
    of size ``terms`` (componentwise, before cancellation).  The QR route computes the
    posterior mean mu0 + (L0 R^{-1}) Q1^T Psi^{-1/2}(x - W mu0 - b) normwise-accurately,
    ||L0 R^{-1}|| = ||Lambda^{-1}||^{1/2}, so its error is about eps times
    ``|mu0| + (||Lambda^{-1}|| ||Psi^{-1}||)^{1/2} |(|x| + |W||mu0| + |b|)|``, and the gradient
    moves by ||Lambda|| times that.  Likewise -Lambda L + diag(1/L) for the factor.
    """
    psi_inv = np.linalg.inv(p.dense_noise())
    s0_inv = np.linalg.inv(p.prior_cov)
    data = np.abs(x) + np.abs(p.bias) + np.abs(p.q_mean) @ np.abs(p.weights).T
    terms = data @ np.abs(p.weights.T @ psi_inv).T
    terms = terms + (np.abs(p.q_mean) + np.abs(p.prior_mean)) @ np.abs(s0_inv)
    centre = np.abs(x) + np.abs(p.weights) @ np.abs(p.prior_mean) + np.abs(p.bias)
    root = math.sqrt(np.linalg.norm(np.linalg.inv(precision), 2) * np.linalg.norm(psi_inv, 2))
    mean_error = np.linalg.norm(p.prior_mean) + root * np.linalg.norm(centre, axis=-1)
    norm = float(np.linalg.norm(precision, 2))
    mean_scale = np.max(terms, axis=-1) + norm * mean_error
    tril_terms = np.abs(precision) @ np.abs(p.q_tril) + np.diag(1.0 / np.diagonal(p.q_tril))
    tril_scale = float(np.max(tril_terms)) + norm * float(np.linalg.norm(p.q_tril, 2))
    return np.asarray(mean_scale)[..., None], tril_scale, float(np.linalg.cond(precision))


@pytest.mark.parametrize("family", FAMILIES)
@given(**problem_args)
@with_wide_examples
def test_variational_gradients_vanish_at_posterior(
    family: str, seed: int, d: int, k: int, batch: tuple[int, ...], layout: str
) -> None:
    """At q = posterior both gradients are zero up to the rounding of their terms."""
    problem = make_problem(seed, family, d, k, batch, layout)
    p, x = problem.params, problem.x
    model = p.model()
    posterior = model.posterior(x)
    grads = model.elbo_grad_variational(posterior, x)
    at = replace(p, q_mean=np.array(posterior.mean), q_tril=np.array(posterior.scale_tril))
    precision, _ = dense_posterior(p, x)
    mean_scale, tril_scale, kappa = gradient_scales(at, x, precision)
    tol = ROUNDING * problem.dims * kappa * EPS
    assert np.all(np.abs(grads.mean) <= tol * mean_scale), np.max(np.abs(grads.mean) / mean_scale)
    assert np.all(np.abs(grads.scale_tril) <= tol * tril_scale)


@pytest.mark.parametrize("family", FAMILIES)
@given(**problem_args)
@with_wide_examples
def test_encoder_gradients_vanish_at_optimal_encoder(
    family: str, seed: int, d: int, k: int, batch: tuple[int, ...], layout: str
) -> None:
    """dataset_elbo_grad at optimal_encoder is zero up to the rounding of its terms."""
    problem = make_problem(seed, family, d, k, batch, layout)
    p = problem.params
    x = problem.x.reshape(-1, d)
    model = p.model()
    encoder = model.optimal_encoder()
    grads = model.dataset_elbo_grad(encoder, x)
    means = x @ encoder.matrix.T + encoder.offset
    at = replace(p, q_mean=means, q_tril=np.array(encoder.scale_tril))
    precision, _ = dense_posterior(p, x)
    mean_scale, tril_scale, kappa = gradient_scales(at, x, precision)
    tol = ROUNDING * problem.dims * kappa * EPS
    assert np.all(np.abs(grads.matrix) <= tol * (mean_scale.T @ np.abs(x)))
    assert np.all(np.abs(grads.offset) <= tol * mean_scale.sum(axis=0))
    assert np.all(np.abs(grads.scale_tril) <= tol * len(x) * tril_scale)


def pack(means: FloatArray, tril: FloatArray) -> FloatArray:
    rows, cols = np.tril_indices(tril.shape[0])
    return np.concatenate([means.ravel(), tril[rows, cols]])


def unpack(theta: FloatArray, n: int, k: int) -> tuple[FloatArray, FloatArray]:
    tril = np.zeros((k, k))
    tril[np.tril_indices(k)] = theta[n * k :]
    return theta[: n * k].reshape(n, k), tril


@settings(max_examples=max(5, settings().max_examples // 5))
@given(
    seed=st.integers(0, 2**32 - 1),
    family=st.sampled_from(FAMILIES),
    d=st.integers(1, 4),
    k=st.integers(1, 4),
    n=st.integers(1, 3),
)
@example(seed=3, family="full_noise", d=2, k=4, n=3)
def test_elbo_maximiser_is_posterior(seed: int, family: str, d: int, k: int, n: int) -> None:
    """L-BFGS-B on (means, tril L) with the closed-form gradient converges to the posterior."""
    rng = np.random.default_rng(seed)
    model = random_model(rng, data_dim=d, latent_dim=k, family=family)  # type: ignore[arg-type]
    x = model.sample(n, rng)[0]
    diagonal = np.concatenate(
        [np.zeros(n * k, dtype=bool), np.eye(k, dtype=bool)[np.tril_indices(k)]]
    )

    def objective(theta: FloatArray) -> tuple[float, FloatArray]:
        means, tril = unpack(theta, n, k)
        q = Gaussian.from_cholesky(mean=means, scale_tril=tril)
        grads = model.elbo_grad_variational(q, x)
        return -float(np.sum(model.elbo(q, x))), -pack(grads.mean, grads.scale_tril.sum(axis=0))

    start = pack(np.zeros((n, k)), np.eye(k))
    bounds = [(1e-8, None) if flag else (None, None) for flag in diagonal]
    result = scipy.optimize.minimize(
        objective, start, jac=True, method="L-BFGS-B", bounds=bounds,
        options={"maxiter": 5000, "ftol": 0.0, "gtol": 1e-11},
    )  # fmt: skip
    means, tril = unpack(result.x, n, k)
    _, gradient = objective(result.x)
    # Line searches on f stall once f changes by ~eps |f|, i.e. at |gradient| ~
    # sqrt(eps |f| ||Lambda||) ~ 1e-7; demand convergence well past any O(1) error.
    assert np.max(np.abs(gradient)) <= 1e-5, result.message
    # The ELBO is concave with Hessian -Lambda in each mean and at most
    # -n lambda_min(Lambda) in L, so |theta - theta*| <= |gradient| / curvature.
    precision = model.posterior_precision
    eig = np.linalg.eigvalsh(precision)
    posterior = model.posterior(x)
    mean_gap = np.linalg.norm(means - posterior.mean, axis=-1)
    mean_bound = np.linalg.norm(gradient[: n * k].reshape(n, k), axis=-1) / eig[0]
    floor = 1e-12 * (eig[-1] / eig[0]) * (1.0 + np.abs(posterior.mean).max())
    assert np.all(mean_gap <= 2.0 * mean_bound + floor), (mean_gap, mean_bound)
    tril_gap = np.linalg.norm(tril - posterior.scale_tril)
    tril_bound = np.linalg.norm(gradient[n * k :]) / (n * eig[0])
    assert tril_gap <= 2.0 * tril_bound + floor * np.abs(posterior.scale_tril).max()
