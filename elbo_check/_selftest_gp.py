"""Self-test rows for the Gaussian-process relations of :mod:`elbo_check.gp`.

Each draw builds a few random GP regression problems (a random kernel among RBF,
Matérn 1/2, 3/2, 5/2 and linear, with random variances and lengthscales; a zero,
constant or linear mean; 10-40 inputs in one or two dimensions; 3-8 inducing inputs;
a noise variance log-uniform in [1e-3, 1]) and yields, as :mod:`elbo_check._selftest`
does, ``(identity, residual, tolerance)`` for every exact relation among the exact log
marginal likelihood, the collapsed and upper bounds, the SVGP ELBO, its optimum, its
gradients and its minibatch estimate. Tolerances are first-order rounding estimates:
the unit roundoff times the dimension times the condition number of the route, times
:data:`~elbo_check._selftest.ROUNDING_SAFETY`, relative to the magnitudes of the
terms that are summed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.linalg
from numpy.typing import NDArray

from ._divergences import kl_divergence
from ._gaussian import Gaussian
from ._random import FAMILIES
from ._selftest import EPS, ROUNDING_SAFETY, CheckResult, _collect
from .gp import (
    RBF,
    ConstantMean,
    GPRegression,
    Kernel,
    Linear,
    LinearMean,
    Matern12,
    Matern32,
    Matern52,
    MeanFunction,
    SparseGP,
    ZeroMean,
)

__all__ = ["GP_CASES", "PROBLEMS_PER_DRAW", "gp_checks", "gp_rows"]

FloatArray = NDArray[np.float64]

#: (size-class label, input dimension) of the GP rows of the self-test.
GP_CASES: tuple[tuple[str, int], ...] = (("1-d inputs", 1), ("2-d inputs", 2))

#: Random GP problems drawn per self-test draw and case.
PROBLEMS_PER_DRAW = 2

#: The jitter of the sparse problems relative to the largest prior variance: the dense
#: oracle over (f, u) needs a positive definite joint prior, which a linear kernel (of
#: rank d) or inducing inputs close to the data otherwise do not give. Its size sets
#: the condition numbers that enter the tolerances (which are computed, not assumed).
RELATIVE_JITTER = 1e-6

#: The largest condition number of K_XX for the Z = X check without jitter (that of
#: the accuracy statement of ``IDENTITY_RTOL``).
MAX_CONDITION = 1e8


def _log_uniform(rng: np.random.Generator, low: float, high: float, size: int | None = None) -> Any:
    """Log-uniform draws in [low, high], a float (or an array of ``size``)."""
    return np.exp(rng.uniform(math.log(low), math.log(high), size))


def _random_kernel(rng: np.random.Generator, d: int, stationary_only: bool = False) -> Kernel:
    kinds: list[type[Kernel]] = [RBF, Matern12, Matern32, Matern52]
    if not stationary_only:
        kinds.append(Linear)
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind is Linear:
        return Linear(variance=_log_uniform(rng, 0.3, 3.0, d))
    return kind(  # type: ignore[call-arg]
        variance=float(_log_uniform(rng, 0.3, 3.0)),
        lengthscale=_log_uniform(rng, 0.3, 2.0, d),
    )


def _random_mean(rng: np.random.Generator, d: int) -> MeanFunction:
    choice = int(rng.integers(3))
    if choice == 0:
        return ZeroMean()
    if choice == 1:
        return ConstantMean(float(rng.normal()))
    return LinearMean(rng.normal(size=d), bias=float(rng.normal()))


def _random_q(rng: np.random.Generator, m: int) -> Gaussian:
    factor = np.tril(rng.normal(scale=0.3, size=(m, m)), -1) + np.diag(rng.uniform(0.3, 1.0, m))
    return Gaussian(rng.normal(size=m), factor)


def _sample_y(rng: np.random.Generator, gp: GPRegression) -> FloatArray:
    cov = gp.prior.cov + gp.noise_variance * np.eye(len(gp.inputs))
    draw = gp.prior.mean + np.linalg.cholesky(cov) @ rng.standard_normal(len(gp.inputs))
    return np.asarray(draw + 0.3 * rng.standard_normal(draw.shape))  # a little off-model


def _cond(matrix: FloatArray) -> float:
    """The 2-norm condition number of a symmetric positive (semi)definite matrix."""
    eigenvalues = np.linalg.eigvalsh(matrix)
    return float(eigenvalues[-1] / max(eigenvalues[0], eigenvalues[-1] * EPS))


def _dense_joint_q(sgp: SparseGP, q_u: Gaussian) -> Gaussian:
    """q(f, u) = p(f | u) q(u), formed densely from the kernel (as the tests do)."""
    x, z, k, jitter = sgp.inputs, sgp.inducing_inputs, sgp.kernel, sgp.jitter
    kff = k(x) + jitter * np.eye(len(x))
    kuu = k(z) + jitter * np.eye(len(z))
    kfu = k(x, z)
    p = np.linalg.solve(kuu, kfu.T)
    s = q_u.cov
    cov = np.block([[kff - kfu @ p + p.T @ s @ p, p.T @ s], [s @ p, s]])
    mean = np.concatenate([sgp.mean(x) + p.T @ (q_u.mean - sgp.mean(z)), q_u.mean])
    return Gaussian.from_covariance(mean=mean, cov=0.5 * (cov + cov.T))


def _elbo_magnitude(sgp: SparseGP, q_u: Gaussian, y: FloatArray, whiten: bool) -> float:
    """The sum of the magnitudes of the ELBO's terms (its scale before cancellation)."""
    terms, _, _ = sgp._expected_log_lik(q_u, y - sgp.mean(sgp.inputs), slice(None), whiten)
    kl = float(kl_divergence(q_u, sgp._q_prior(whiten)))
    return float(np.sum(np.abs(terms))) + abs(kl)


def gp_rows(seed: int, draws: int) -> list[CheckResult]:
    """The GP rows of the self-test: family ``gp``, one size class per input dimension."""
    rows: list[CheckResult] = []
    for size, input_dim in GP_CASES:
        rng = np.random.default_rng([seed, len(FAMILIES), input_dim])
        checks = (check for _ in range(draws) for check in gp_checks(rng, input_dim))
        rows.extend(_collect("gp", size, checks))
    return rows


def gp_checks(rng: np.random.Generator, input_dim: int) -> Iterator[tuple[str, float, float]]:
    """Yield ``(identity, residual, tolerance)`` for :data:`PROBLEMS_PER_DRAW` problems."""
    for _ in range(PROBLEMS_PER_DRAW):
        yield from _problem_checks(rng, input_dim)


def _problem_checks(rng: np.random.Generator, d: int) -> Iterator[tuple[str, float, float]]:
    n, m = int(rng.integers(10, 41)), int(rng.integers(3, 9))
    kernel, mean = _random_kernel(rng, d), _random_mean(rng, d)
    x = rng.uniform(-2.0, 2.0, size=(n, d))
    z = rng.uniform(-2.0, 2.0, size=(m, d))
    noise = float(_log_uniform(rng, 1e-3, 1.0))
    jitter = RELATIVE_JITTER * float(np.max(kernel.diag(np.vstack([x, z]))))
    gp = GPRegression(kernel, x, noise, mean=mean, jitter=jitter)
    sgp = SparseGP(kernel, x, noise, inducing_inputs=z, mean=mean, jitter=jitter)
    y = _sample_y(rng, gp)
    rounding = ROUNDING_SAFETY * EPS * float(n + m)

    # 1. The exact log ML against the dense oracle and a direct Cholesky computation.
    lml = gp.log_marginal_likelihood(y)
    marginal = gp.prior.cov + noise * np.eye(n)
    cond_marginal = _cond(marginal)
    factor = np.linalg.cholesky(marginal)
    alpha = scipy.linalg.solve_triangular(factor, y - gp.mean(x), lower=True)
    half_logdet = float(np.sum(np.log(np.diagonal(factor))))
    direct = -0.5 * float(alpha @ alpha) - half_logdet - 0.5 * n * math.log(2.0 * math.pi)
    lml_scale = 0.5 * float(alpha @ alpha) + abs(half_logdet) + 0.5 * n * math.log(2 * math.pi)
    # Cholesky is backward stable: a relative perturbation n eps of the marginal
    # covariance moves log det and the quadratic form by n eps cond relative to them.
    lml_tolerance = rounding * cond_marginal
    yield "GP log ML = Cholesky", abs(lml - direct) / lml_scale, lml_tolerance
    oracle = float(gp.as_linear_gaussian_model().log_evidence(y))
    # The oracle works through the prior covariance K + jitter I as well (its Cholesky).
    cond_prior = _cond(gp.prior.cov)
    yield (
        "GP log ML = linear-Gaussian oracle",
        abs(lml - oracle) / lml_scale,
        rounding * max(cond_marginal, cond_prior),
    )

    # 2. Z = X and no jitter: both bounds are the log ML.
    yield from _exact_at_the_data(rng, d)

    # 3. The SVGP ELBO at the optimal q(u) is the collapsed bound, whitened or not.
    collapsed = sgp.collapsed_bound(y)
    a = scipy.linalg.solve_triangular(
        np.linalg.cholesky(kernel(z) + jitter * np.eye(m)), kernel(z, x), lower=True
    )
    cond_b = _cond(np.eye(m) + a @ a.T / noise)
    cond_u = _cond(kernel(z) + jitter * np.eye(m))
    worst, tolerance = 0.0, 0.0
    for whiten in (False, True):
        q_star = sgp.optimal_inducing_distribution(y, whiten=whiten)
        at_optimum = sgp.svgp_elbo(q_star, y, whiten=whiten)
        scale = _elbo_magnitude(sgp, q_star, y, whiten) + abs(collapsed)
        residual = abs(at_optimum - collapsed) / scale
        # q* comes from the factor of B = I + A A^T / noise; unwhitened, it is mapped
        # through L_u and back through L_u^{-1} (cond(K_ZZ + jitter I)).
        allowed = rounding * cond_b * (cond_u if not whiten else 1.0)
        if worst <= 0 or residual / allowed > worst / tolerance:
            worst, tolerance = residual, allowed
    yield "SVGP ELBO(q*) = collapsed bound", worst, tolerance

    # 4. lower bound <= log ML <= upper bound.
    upper = sgp.upper_bound(y)
    violation = max(collapsed - lml, lml - upper, 0.0) / (abs(lml) + lml_scale)
    yield "collapsed <= log ML <= upper", violation, rounding * max(cond_marginal, cond_b)

    # 5. Whitened and unwhitened ELBO agree for the same q(f).
    q_v = _random_q(rng, m)
    factor_u = np.linalg.cholesky(kernel(z) + jitter * np.eye(m))
    q_u = Gaussian(sgp.mean(z) + factor_u @ q_v.mean, factor_u @ q_v.scale_tril)
    whitened = sgp.svgp_elbo(q_v, y, whiten=True)
    unwhitened = sgp.svgp_elbo(q_u, y)
    magnitude_v = _elbo_magnitude(sgp, q_v, y, True)
    magnitude_u = _elbo_magnitude(sgp, q_u, y, False)
    scale = magnitude_v + magnitude_u
    yield (
        "SVGP ELBO whitened = unwhitened",
        abs(whitened - unwhitened) / scale,
        rounding * cond_u,
    )

    # 6. log ML - ELBO = KL(p(f|u) q(u) || p(f, u | y)), the dense oracle over (f, u).
    model = sgp.as_linear_gaussian_model()
    q_joint = _dense_joint_q(sgp, q_u)
    dense_kl = float(model.kl_to_posterior(q_joint, y))
    gap = sgp.kl_gap(q_u, y)
    gap_scale = abs(lml) + lml_scale + magnitude_u + abs(dense_kl)
    cond_joint = _cond(model.prior.cov)
    kl_residual = abs(gap - dense_kl) / gap_scale
    yield "SVGP KL gap = dense KL to posterior", kl_residual, rounding * cond_joint

    # 7. Gradients against central differences along a random direction.
    yield _gradient_check(rng, sgp, y, (q_v, magnitude_v), (q_u, magnitude_u), rounding)

    # 8. The minibatch estimates of a partition, weighted by batch size, are the ELBO.
    order = rng.permutation(n)
    cuts = np.sort(rng.choice(np.arange(1, n), size=int(rng.integers(1, 3)), replace=False))
    worst = 0.0
    for whiten, q, exact, magnitude in (
        (True, q_v, whitened, magnitude_v),
        (False, q_u, unwhitened, magnitude_u),
    ):
        average = sum(
            len(rows) / n * sgp.svgp_elbo_minibatch(q, y[rows], rows, whiten=whiten)
            for rows in np.split(order, cuts)
        )
        worst = max(worst, abs(average - exact) / magnitude)
    # The same per-row terms summed in another order and rescaled: rounding only.
    yield "SVGP minibatch over a partition = ELBO", worst, rounding


def _exact_at_the_data(rng: np.random.Generator, d: int) -> Iterator[tuple[str, float, float]]:
    """Z = X with jitter 0: Q = K, so the trace gap is 0 and both bounds are log p(y)."""
    n = int(rng.integers(3, 9))
    kernel, mean = _random_kernel(rng, d, stationary_only=True), _random_mean(rng, d)
    x = rng.uniform(-2.0, 2.0, size=(n, d))
    noise = float(_log_uniform(rng, 1e-3, 1.0))
    # K_XX must be well conditioned for the factor of K_ZZ = K_XX without jitter: drop
    # inputs (a long lengthscale makes close inputs nearly collinear) until cond(K_XX)
    # is at most MAX_CONDITION, the range for which elbo_check states its accuracy.
    gram = kernel(x)
    while (cond_k := _cond(gram)) > MAX_CONDITION and n > 1:
        n -= 1
        x, gram = x[:n], gram[:n, :n]
    sgp = SparseGP(kernel, x, noise, inducing_inputs=x, mean=mean, jitter=0.0)
    y = _sample_y(rng, sgp.exact)
    lml = sgp.log_marginal_likelihood(y)
    marginal = gram + noise * np.eye(n)
    alpha = scipy.linalg.solve_triangular(np.linalg.cholesky(marginal), y - mean(x), lower=True)
    scale = abs(lml) + float(alpha @ alpha) + n
    # Q = A^T A with A = L^{-1} K: its error is at most n eps cond(K) ||K||; it enters the
    # bounds divided by the noise variance (trace term) and through cond(Q + noise I).
    trace_part = float(np.max(np.diagonal(gram))) * n / noise / scale
    tolerance = ROUNDING_SAFETY * EPS * n * cond_k * (trace_part + _cond(marginal))
    residual = max(abs(sgp.collapsed_bound(y) - lml), abs(sgp.upper_bound(y) - lml)) / scale
    yield "Z = X, no jitter: bounds = log ML", residual, tolerance


def _gradient_check(
    rng: np.random.Generator,
    sgp: SparseGP,
    y: FloatArray,
    whitened: tuple[Gaussian, float],
    unwhitened: tuple[Gaussian, float],
    rounding: float,
) -> tuple[str, float, float]:
    """The worst of the whitened and unwhitened directional derivatives (each q is
    given with the magnitude of its ELBO's terms)."""
    worst_ratio, worst = -1.0, (0.0, 0.0)
    step = EPS ** (1.0 / 3.0)
    m = whitened[0].dim
    for whiten, (q, magnitude) in ((True, whitened), (False, unwhitened)):
        grads = sgp.svgp_elbo_grad(q, y, whiten=whiten)
        direction_mean = rng.standard_normal(m)
        # Columns scaled by L_jj: an unwhitened factor L_u L_v can have a diagonal
        # entry far below 1 (inducing inputs nearly collinear in feature space), and a
        # unit move of it would make the truncation error of the step dominate.
        scales = np.abs(np.diagonal(q.scale_tril))
        direction_factor = np.tril(rng.standard_normal((m, m))) * scales

        def along(t: float) -> float:
            moved = Gaussian._trusted(
                q.mean + t * direction_mean,  # noqa: B023 (called in this iteration only)
                q.scale_tril + t * direction_factor,  # noqa: B023
            )
            return sgp.svgp_elbo(moved, y, whiten=whiten)  # noqa: B023

        numeric = (along(step) - along(-step)) / (2.0 * step)
        analytic = float(
            np.sum(grads.mean * direction_mean) + np.sum(grads.scale_tril * direction_factor)
        )
        # The ELBO is quadratic in (mean, L) but for -sum log L_ii, whose third
        # derivative along the direction is 2 (D_ii / L_ii)^3: the truncation error is
        # h^2/6 of that (times 3, as L_ii moves by up to h D_ii within the step); the
        # rounding error of an evaluation, a sum of N + 1 terms, is at most (N + M) eps
        # times the sum of their magnitudes (``rounding``), divided by h.
        diag_ratio = np.abs(np.diagonal(direction_factor) / np.diagonal(q.scale_tril))
        truncation = step**2 / 6.0 * float(np.sum(2.0 * diag_ratio**3)) * 3.0
        tolerance = rounding * magnitude / step + truncation
        residual = abs(numeric - analytic)
        if residual / tolerance > worst_ratio:
            worst_ratio, worst = residual / tolerance, (residual, tolerance)
    return "SVGP gradient = finite differences", worst[0], worst[1]
