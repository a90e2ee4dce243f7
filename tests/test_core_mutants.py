"""The model's public quantities against dense textbook formulas and finite differences.

Written for a mutation-testing pass over ``_model``, ``_marginal``, ``_gradients``,
``_encoder``, ``_error_bounds`` and ``_gaussian``: every assertion compares the package
with a route that shares no code with it (``scipy.stats``, dense ``numpy.linalg``
formulas, central finite differences of a dense ELBO, ``mpmath`` at 50 digits), on small
fixed models with all three noise representations, batched rows and per-row
covariances, so the suite stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mpmath
import numpy as np
import pytest
import scipy.stats
from numpy.testing import assert_allclose, assert_array_equal

from elbo_check import Gaussian, LinearEncoder, LinearGaussianModel, kl_divergence

pytestmark = pytest.mark.filterwarnings(
    "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
)

KINDS = ["isotropic", "diagonal", "full"]
D, K = 4, 2


class Dense:
    """A model's parameters as plain arrays, and its quantities by dense formulas."""

    def __init__(
        self, weights: np.ndarray, bias: np.ndarray, mu0: np.ndarray, cov0: np.ndarray, psi: Any
    ) -> None:
        self.weights, self.bias, self.mu0, self.cov0 = weights, bias, mu0, cov0
        self.psi_given = psi
        psi = np.asarray(psi, dtype=float)
        d = weights.shape[0]
        self.psi = psi * np.eye(d) if psi.ndim == 0 else (np.diag(psi) if psi.ndim == 1 else psi)

    def model(self) -> LinearGaussianModel:
        prior = Gaussian.from_covariance(mean=self.mu0, cov=self.cov0)
        return LinearGaussianModel(
            weights=self.weights, bias=self.bias, prior=prior, noise_cov=self.psi_given
        )

    def marginal_cov(self) -> np.ndarray:
        return self.weights @ self.cov0 @ self.weights.T + self.psi

    def log_evidence(self, x: np.ndarray) -> np.ndarray:
        mean = self.weights @ self.mu0 + self.bias
        return np.asarray(scipy.stats.multivariate_normal(mean, self.marginal_cov()).logpdf(x))

    def precision(self) -> np.ndarray:
        return np.linalg.inv(self.cov0) + self.weights.T @ np.linalg.solve(self.psi, self.weights)

    def posterior_mean(self, x: np.ndarray) -> np.ndarray:
        # Bishop (2.116): Lambda^{-1} (W^T Psi^{-1} (x - b) + Sigma0^{-1} mu0)
        rhs = (x - self.bias) @ np.linalg.solve(self.psi, self.weights) + np.linalg.solve(
            self.cov0, self.mu0
        )
        flat = rhs.reshape(-1, rhs.shape[-1])
        return np.linalg.solve(self.precision(), flat.T).T.reshape(rhs.shape)

    def expected_log_likelihood(self, x: np.ndarray, m: np.ndarray, s: np.ndarray) -> Any:
        residual = x - m @ self.weights.T - self.bias
        psi_inv = np.linalg.inv(self.psi)
        quad = np.einsum("...i,ij,...j->...", residual, psi_inv, residual)
        trace = np.trace(psi_inv @ self.weights @ s @ self.weights.T, axis1=-2, axis2=-1)
        d = self.weights.shape[0]
        return -0.5 * (d * np.log(2 * np.pi) + np.linalg.slogdet(self.psi)[1] + quad + trace)

    def kl_to_prior(self, m: np.ndarray, s: np.ndarray) -> Any:
        return dense_kl(m, s, self.mu0, self.cov0)

    def elbo(self, x: np.ndarray, m: np.ndarray, s: np.ndarray) -> Any:
        return self.expected_log_likelihood(x, m, s) - self.kl_to_prior(m, s)


def dense_kl(m1: np.ndarray, s1: np.ndarray, m2: np.ndarray, s2: np.ndarray) -> Any:
    """KL(N(m1, s1) || N(m2, s2)) by the textbook formula (batches along leading axes)."""
    k = m1.shape[-1]
    s2_inv = np.linalg.inv(s2)
    delta = m2 - m1
    return 0.5 * (
        np.trace(s2_inv @ s1, axis1=-2, axis2=-1)
        + np.einsum("...i,...ij,...j->...", delta, s2_inv, delta)
        - k
        + np.linalg.slogdet(s2)[1]
        - np.linalg.slogdet(s1)[1]
    )


def _spd(rng: np.random.Generator, k: int, jitter: float = 0.3) -> np.ndarray:
    a = rng.standard_normal((k, k))
    return a @ a.T / k + jitter * np.eye(k)


def make_dense(kind: str, rng: np.random.Generator, d: int = D, k: int = K) -> Dense:
    psi: Any = {
        "isotropic": 0.7,
        "diagonal": rng.uniform(0.2, 2.0, d),
        "full": _spd(rng, d, 0.2),
    }[kind]
    return Dense(
        rng.standard_normal((d, k)),
        rng.standard_normal(d),
        rng.standard_normal(k),
        _spd(rng, k),
        psi,
    )


def central_difference(
    f: Callable[[np.ndarray], float], at: np.ndarray, h: float = 1e-6, symmetric: bool = False
) -> np.ndarray:
    """The gradient of ``f`` at ``at`` by central differences, entry by entry.

    With ``symmetric``, ``at`` is a symmetric matrix and each off-diagonal pair is moved
    together; the derivative is halved so that it is the entry of the symmetric gradient.
    """
    at = np.asarray(at, dtype=float)
    out = np.zeros(at.shape)
    for index in np.ndindex(*at.shape):
        if symmetric and index[0] < index[1]:
            continue
        step = np.zeros(at.shape)
        step[index] = h
        if symmetric:
            step[index[::-1]] = h
        value = (f(at + step) - f(at - step)) / (2 * h)
        if symmetric and index[0] != index[1]:
            value /= 2
            out[index[::-1]] = value
        out[index] = value
    return out


# --------------------------------------------------------------------- evidence, posterior
@pytest.mark.parametrize("kind", KINDS)
def test_log_evidence_marginal_and_posterior_match_dense_formulas(
    kind: str, rng: np.random.Generator
) -> None:
    dense = make_dense(kind, rng)
    model = dense.model()
    x = rng.standard_normal((2, 3, D)) * 2
    assert_allclose(model.log_evidence(x), dense.log_evidence(x), rtol=1e-12)
    assert model.log_evidence(x[0, 0]) == pytest.approx(dense.log_evidence(x[0, 0]), rel=1e-12)
    marginal = model.marginal()
    assert_allclose(marginal.mean, dense.weights @ dense.mu0 + dense.bias, rtol=1e-12)
    assert_allclose(marginal.cov, dense.marginal_cov(), rtol=1e-12)
    assert_allclose(model.marginal_variances(), np.diag(dense.marginal_cov()), rtol=1e-12)
    posterior = model.posterior(x)
    assert_allclose(posterior.mean, dense.posterior_mean(x), rtol=1e-11, atol=1e-12)
    assert_allclose(posterior.cov, np.linalg.inv(dense.precision()), rtol=1e-11)
    assert_allclose(model.posterior_precision, dense.precision(), rtol=1e-11)


@pytest.mark.parametrize("kind", KINDS)
def test_log_likelihood_and_joint_match_scipy(kind: str, rng: np.random.Generator) -> None:
    dense = make_dense(kind, rng)
    model = dense.model()
    x = rng.standard_normal((3, D))
    z = rng.standard_normal((3, K))
    expected = [
        scipy.stats.multivariate_normal(dense.weights @ z[i] + dense.bias, dense.psi).logpdf(x[i])
        for i in range(3)
    ]
    assert_allclose(model.log_likelihood(x, z), expected, rtol=1e-12)
    prior = scipy.stats.multivariate_normal(dense.mu0, dense.cov0).logpdf(z)
    assert_allclose(model.log_joint(x, z), np.asarray(expected) + prior, rtol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_samples_follow_the_joint_distribution(kind: str, rng: np.random.Generator) -> None:
    dense = make_dense(kind, rng, d=3, k=2)
    n = 40_000
    x, z = dense.model().sample(n, 11)
    joint = np.hstack([x, z])
    w = dense.weights
    mean = np.concatenate([w @ dense.mu0 + dense.bias, dense.mu0])
    cov = np.block([[dense.marginal_cov(), w @ dense.cov0], [dense.cov0 @ w.T, dense.cov0]])
    sample_mean = joint.mean(axis=0)
    assert np.all(np.abs(sample_mean - mean) <= 6 * np.sqrt(np.diag(cov) / n))
    centred = joint - mean
    sample_cov = centred.T @ centred / n
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert np.all(np.abs(sample_cov - cov) <= 6 * se)


# --------------------------------------------------------------------------------- ELBO
def _q(rng: np.random.Generator, batch: tuple[int, ...], per_row: bool) -> Gaussian:
    means = rng.standard_normal((*batch, K))
    if per_row:
        covs = np.stack([_spd(rng, K) for _ in range(int(np.prod(batch)))]).reshape(*batch, K, K)
        return Gaussian.from_covariance(mean=means, cov=covs)
    return Gaussian.from_covariance(mean=means, cov=_spd(rng, K))


@pytest.mark.parametrize("per_row", [False, True], ids=["shared", "per-row"])
@pytest.mark.parametrize("kind", KINDS)
def test_elbo_terms_and_kl_to_posterior_match_dense_formulas(
    kind: str, per_row: bool, rng: np.random.Generator
) -> None:
    dense = make_dense(kind, rng)
    model = dense.model()
    q = _q(rng, (3,), per_row)
    x = rng.standard_normal((3, D)) * 2
    s = q.cov
    terms = model.elbo_terms(q, x)
    expected_ll = dense.expected_log_likelihood(x, q.mean, s)
    kl_prior = dense.kl_to_prior(q.mean, s)
    entropy = 0.5 * (K * np.log(2 * np.pi * np.e) + np.linalg.slogdet(s)[1])
    assert_allclose(terms.expected_log_likelihood, expected_ll, rtol=1e-12)
    assert_allclose(terms.reconstruction, expected_ll, rtol=1e-12)
    assert_allclose(terms.kl_to_prior, kl_prior, rtol=1e-11)
    assert_allclose(terms.entropy, np.broadcast_to(entropy, (3,)), rtol=1e-12)
    assert_allclose(terms.cross_entropy, kl_prior + entropy, rtol=1e-12)
    assert_allclose(terms.elbo, expected_ll - kl_prior, rtol=1e-12)
    assert_allclose(terms.elbo_joint_form, expected_ll - kl_prior, rtol=1e-12)
    assert_allclose(terms.expected_log_joint, expected_ll - kl_prior - entropy, rtol=1e-12)
    assert_allclose(model.elbo(q, x), expected_ll - kl_prior, rtol=1e-12)
    posterior_cov = np.linalg.inv(dense.precision())
    kl_post = dense_kl(q.mean, s, dense.posterior_mean(x), posterior_cov)
    assert_allclose(model.kl_to_posterior(q, x), kl_post, rtol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_elbo_terms_broadcast_one_q_over_a_batch_of_rows(
    kind: str, rng: np.random.Generator
) -> None:
    dense = make_dense(kind, rng)
    model = dense.model()
    q = _q(rng, (), per_row=False)
    x = rng.standard_normal((2, 3, D))
    terms = model.elbo_terms(q, x)
    for name in ("expected_log_likelihood", "kl_to_prior", "cross_entropy", "entropy"):
        assert np.shape(getattr(terms, name)) == (2, 3)
    assert_allclose(terms.elbo, dense.elbo(x, q.mean, q.cov), rtol=1e-12)
    kl = dense_kl(q.mean, q.cov, dense.posterior_mean(x), np.linalg.inv(dense.precision()))
    assert_allclose(model.kl_to_posterior(q, x), kl, rtol=1e-10)


def test_kl_to_posterior_keeps_relative_accuracy_near_the_posterior(
    rng: np.random.Generator,
) -> None:
    """Near q = p(z|x) the KL is tiny; it is compared with a 50-digit evaluation."""
    dense = make_dense("diagonal", rng)
    model = dense.model()
    x = rng.standard_normal(D)
    posterior = model.posterior(x)
    nudged = Gaussian.from_cholesky(
        mean=posterior.mean + 1e-6, scale_tril=posterior.scale_tril * (1 + 1e-6)
    )
    with mpmath.workdps(50):
        m1 = mpmath.matrix(nudged.mean.tolist())
        l1 = mpmath.matrix(nudged.scale_tril.tolist())
        s1 = l1 * l1.T
        cov0 = mpmath.matrix(dense.cov0.tolist())
        w = mpmath.matrix(dense.weights.tolist())
        psi = mpmath.matrix(dense.psi.tolist())
        precision = cov0**-1 + w.T * psi**-1 * w
        rhs = w.T * psi**-1 * (mpmath.matrix(x.tolist()) - mpmath.matrix(dense.bias.tolist()))
        rhs += cov0**-1 * mpmath.matrix(dense.mu0.tolist())
        m2 = precision**-1 * rhs
        delta = m2 - m1
        trace = sum((precision * s1)[i, i] for i in range(K))
        quad = (delta.T * precision * delta)[0, 0]
        value = 0.5 * (trace + quad - K - mpmath.log(mpmath.det(precision * s1)))
        expected = float(value)
    assert model.kl_to_posterior(nudged, x) == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("per_row", [False, True], ids=["shared", "per-row"])
@pytest.mark.parametrize("kind", KINDS)
def test_variational_gradients_match_finite_differences(
    kind: str, per_row: bool, rng: np.random.Generator
) -> None:
    dense = make_dense(kind, rng)
    model = dense.model()
    q = _q(rng, (2,), per_row)
    x = rng.standard_normal((2, D))
    grads = model.elbo_grad_variational(q, x)
    assert grads.mean.shape == (2, K)
    assert grads.scale_tril.shape == (2, K, K)
    factors = np.broadcast_to(q.scale_tril, (2, K, K))
    for row in range(2):
        m, factor = q.mean[row], factors[row]

        def of_mean(mean: np.ndarray, row: int = row, factor: np.ndarray = factor) -> float:
            return float(dense.elbo(x[row], mean, factor @ factor.T))

        def of_factor(f: np.ndarray, row: int = row, m: np.ndarray = m) -> float:
            f = np.tril(f)
            return float(dense.elbo(x[row], m, f @ f.T))

        assert_allclose(grads.mean[row], central_difference(of_mean, m), rtol=1e-6, atol=1e-7)
        numeric = np.tril(central_difference(of_factor, factor))
        assert_allclose(grads.scale_tril[row], numeric, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("per_row", [False, True], ids=["shared", "per-row"])
@pytest.mark.parametrize("kind", KINDS)
def test_model_gradients_match_finite_differences(
    kind: str, per_row: bool, rng: np.random.Generator
) -> None:
    dense = make_dense(kind, rng)
    q = _q(rng, (3,), per_row)
    x = rng.standard_normal((3, D))
    grads = dense.model().elbo_grad_model(q, x)
    s = q.cov

    def total(**changes: Any) -> float:
        params = {
            "weights": dense.weights,
            "bias": dense.bias,
            "mu0": dense.mu0,
            "cov0": dense.cov0,
            "psi": dense.psi_given,
        }
        params.update(changes)
        return float(np.sum(Dense(**params).elbo(x, q.mean, s)))

    checks = [
        (grads.weights, central_difference(lambda v: total(weights=v), dense.weights)),
        (grads.bias, central_difference(lambda v: total(bias=v), dense.bias)),
        (grads.prior_mean, central_difference(lambda v: total(mu0=v), dense.mu0)),
        (
            grads.prior_cov,
            central_difference(lambda v: total(cov0=v), dense.cov0, symmetric=True),
        ),
        (
            grads.noise_cov,
            central_difference(
                lambda v: total(psi=v), np.asarray(dense.psi_given), symmetric=kind == "full"
            ),
        ),
    ]
    for got, numeric in checks:
        assert np.shape(got) == numeric.shape
        assert_allclose(got, numeric, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------ encoder
@pytest.mark.parametrize("kind", KINDS)
def test_optimal_encoder_is_the_dense_posterior_map(kind: str, rng: np.random.Generator) -> None:
    dense = make_dense(kind, rng)
    model = dense.model()
    encoder = model.optimal_encoder()
    cov = np.linalg.inv(dense.precision())
    matrix = cov @ dense.weights.T @ np.linalg.inv(dense.psi)
    offset = dense.mu0 - matrix @ (dense.weights @ dense.mu0 + dense.bias)
    assert_allclose(encoder.matrix, matrix, rtol=1e-11, atol=1e-13)
    assert_allclose(encoder.offset, offset, rtol=1e-11, atol=1e-13)
    assert_allclose(encoder.cov, cov, rtol=1e-11)
    x = rng.standard_normal((5, D))
    assert model.dataset_elbo(encoder, x) == pytest.approx(
        float(np.sum(dense.log_evidence(x))), rel=1e-12
    )


@pytest.mark.parametrize("kind", KINDS)
def test_dataset_elbo_and_its_gradient_match_dense_formulas(
    kind: str, rng: np.random.Generator
) -> None:
    dense = make_dense(kind, rng)
    model = dense.model()
    matrix = rng.standard_normal((K, D)) * 0.5
    offset = rng.standard_normal(K)
    factor = np.linalg.cholesky(_spd(rng, K))
    encoder = LinearEncoder(matrix=matrix, offset=offset, scale_tril=factor)
    x = rng.standard_normal((4, D))

    def objective(a: np.ndarray, c: np.ndarray, f: np.ndarray) -> float:
        f = np.tril(f)
        return float(np.sum(dense.elbo(x, x @ a.T + c, f @ f.T)))

    assert model.dataset_elbo(encoder, x) == pytest.approx(
        objective(matrix, offset, factor), rel=1e-12
    )
    grads = model.dataset_elbo_grad(encoder, x)
    numeric_a = central_difference(lambda a: objective(a, offset, factor), matrix)
    numeric_c = central_difference(lambda c: objective(matrix, c, factor), offset)
    numeric_f = np.tril(central_difference(lambda f: objective(matrix, offset, f), factor))
    assert_allclose(grads.matrix, numeric_a, rtol=1e-6, atol=1e-7)
    assert_allclose(grads.offset, numeric_c, rtol=1e-6, atol=1e-7)
    assert_allclose(grads.scale_tril, numeric_f, rtol=1e-6, atol=1e-7)


def test_encoder_maps_rows_to_gaussians(rng: np.random.Generator) -> None:
    matrix = rng.standard_normal((K, D))
    offset = rng.standard_normal(K)
    cov = _spd(rng, K)
    encoder = LinearEncoder.from_covariance(matrix=matrix, offset=offset, cov=cov)
    x = rng.standard_normal((3, D))
    q = encoder(x)
    assert_allclose(q.mean, x @ matrix.T + offset, rtol=1e-13)
    assert_allclose(q.cov, cov, rtol=1e-12)
    assert (encoder.latent_dim, encoder.data_dim) == (K, D)


# ------------------------------------------------------------------------------ gaussian
def test_kl_divergence_matches_the_dense_formula_for_batches(rng: np.random.Generator) -> None:
    means = rng.standard_normal((3, K))
    covs = np.stack([_spd(rng, K) for _ in range(3)])
    p = Gaussian.from_covariance(mean=means, cov=covs)
    q = Gaussian.from_covariance(mean=rng.standard_normal(K), cov=_spd(rng, K))
    assert_allclose(kl_divergence(p, q), dense_kl(p.mean, p.cov, q.mean, q.cov), rtol=1e-11)
    assert_allclose(kl_divergence(q, p), dense_kl(q.mean, q.cov, p.mean, p.cov), rtol=1e-11)


# ----------------------------------------------------------------- cancelling rows, routes
def _mp_mahalanobis(dense: Dense, x: np.ndarray) -> tuple[list[float], list[float], float]:
    """``(x - xbar)^T C^{-1} (x - xbar)``, ``log p(x)`` and ``D log 2 pi + log det C`` at 50
    digits from the float64 parameters."""
    with mpmath.workdps(50):
        w = mpmath.matrix(dense.weights.tolist())
        cov0 = mpmath.matrix(dense.cov0.tolist())
        psi = mpmath.matrix(dense.psi.tolist())
        c = w * cov0 * w.T + psi
        c_inv = c**-1
        mean = w * mpmath.matrix(dense.mu0.tolist()) + mpmath.matrix(dense.bias.tolist())
        constant = len(x[0]) * mpmath.log(2 * mpmath.pi) + mpmath.log(mpmath.det(c))
        squares, log_p = [], []
        for row in x:
            r = mpmath.matrix(row.tolist()) - mean
            square = (r.T * c_inv * r)[0, 0]
            squares.append(float(square))
            log_p.append(float(-(constant + square) / 2))
        return squares, log_p, float(constant)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cancelling", [1, 12], ids=["deferred", "in-block"])
def test_mahalanobis_of_cancelling_rows_matches_mpmath_on_every_route(
    kind: str, cancelling: int, rng: np.random.Generator
) -> None:
    """Rows on the signal subspace of a model with tiny noise cancel in the fast route's
    ``|y|^2 - |Q^T y|^2``; they must be recomputed to full relative accuracy. A single one
    among many rows is deferred to a later pass, many are redone in their block."""
    d, k = 5, 2
    scale = 1e-12
    psi: Any = {
        "isotropic": scale,
        "diagonal": scale * rng.uniform(0.5, 2.0, d),
        "full": scale * _spd(rng, d, 0.5),
    }[kind]
    dense = Dense(
        rng.standard_normal((d, k)),
        rng.standard_normal(d),
        rng.standard_normal(k),
        _spd(rng, k),
        psi,
    )
    model = dense.model()
    mean = dense.weights @ dense.mu0 + dense.bias
    latent = rng.standard_normal((cancelling, k))
    on_subspace = mean + latent @ dense.weights.T + 1e-7 * rng.standard_normal((cancelling, d))
    ordinary = mean + rng.standard_normal((16 - cancelling, d))
    x = np.vstack([ordinary[:3], on_subspace, ordinary[3:]])
    log_p = np.asarray(model.log_evidence(x))
    exact, exact_log_p, constant = _mp_mahalanobis(dense, x)
    recovered = -2.0 * log_p - constant  # the Mahalanobis terms, to about eps * |constant|
    assert_allclose(recovered, exact, rtol=1e-9, atol=1e-12 * abs(constant))
    value, bound = model.log_evidence(x, return_error_bound=True)
    assert np.all(np.abs(value - np.asarray(exact_log_p)) <= bound)


# ------------------------------------------------------------------- edges and messages
def test_error_bounds_keep_the_batch_shape_and_overflowing_rows_get_an_infinite_bound(
    rng: np.random.Generator,
) -> None:
    dense = make_dense("full", rng)
    model = dense.model()
    x = rng.standard_normal((2, 3, D))
    value, bound = model.log_evidence(x, return_error_bound=True)
    assert np.shape(value) == np.shape(bound) == (2, 3)
    assert np.all(np.abs(value - dense.log_evidence(x)) <= bound + 1e-12 * np.abs(value))
    one_value, one_bound = model.log_evidence(x[1, 2], return_error_bound=True)
    assert np.shape(one_bound) == ()
    assert one_value == pytest.approx(value[1, 2], rel=1e-13)
    # |Psi^-1/2 (x - xbar)|^2 overflows: log p(x) < -1.8e308, -inf is due, with no bound
    wide = LinearGaussianModel(
        weights=[[1e150], [2e150]], bias=[0.0, 0.0], prior=Gaussian.standard(1), noise_cov=1.0
    )
    values, bounds = wide.log_evidence(
        np.array([[1e160, 1e160], [1.0, 2.0]]), return_error_bound=True
    )
    assert values[0] == -np.inf
    assert not np.isnan(bounds[0])
    assert np.isfinite(values[1])
    assert np.isfinite(bounds[1])


def test_an_undetermined_single_observation_is_named_x() -> None:
    """The refusal names ``x`` for one observation and ``x[i, j]`` within a batch."""
    model = LinearGaussianModel(
        weights=[[1e150], [2e150]], bias=[0.0, 0.0], prior=Gaussian.standard(1), noise_cov=1.0
    )
    x = np.array([1e155, 2e155])
    with pytest.raises(ValueError, match=r"^x must be an observation whose log p\(x\)"):
        model.log_evidence(x)
    batch = np.stack([model.marginal_mean, model.marginal_mean, x, model.marginal_mean])
    with pytest.raises(ValueError, match=r"^x\[1, 0\] must be"):
        model.log_evidence(batch.reshape(2, 2, 2))


@pytest.mark.parametrize("kind", KINDS)
def test_non_finite_rows_are_refused_by_every_row_method(
    kind: str, rng: np.random.Generator
) -> None:
    model = make_dense(kind, rng).model()
    x = rng.standard_normal((2, D))
    x[1, 2] = np.nan
    q = Gaussian.standard(K)
    for method in (
        model.log_evidence,
        model.posterior,
        lambda v: model.elbo(q, v),
        lambda v: model.kl_to_posterior(q, v),
    ):
        with pytest.raises(ValueError, match="finite"):
            method(x)


def test_encoder_refuses_a_matrix_without_columns() -> None:
    with pytest.raises(ValueError, match=r"matrix must have shape \(K, D\)"):
        LinearEncoder(matrix=np.zeros((K, 0)), offset=np.zeros(K), scale_tril=np.eye(K))
    with pytest.raises(ValueError, match=r"matrix must have shape \(K, D\)"):
        LinearEncoder(matrix=np.zeros((K + 1, D)), offset=np.zeros(K), scale_tril=np.eye(K))


def test_covariances_and_precisions_are_exactly_symmetric(rng: np.random.Generator) -> None:
    """Symmetric to the last bit (they are handed to Cholesky routines and symmetric
    solvers that read one triangle), not merely to rounding."""
    k = 5
    factors = np.stack([np.linalg.cholesky(_spd(rng, k)) for _ in range(3)])
    gaussian = Gaussian.from_cholesky(mean=np.zeros((3, k)), scale_tril=factors)
    encoder = LinearEncoder(matrix=np.ones((k, 2)), offset=np.zeros(k), scale_tril=factors[0])
    dense = make_dense("full", rng, d=6, k=k)
    model = dense.model()
    for matrix in (
        gaussian.precision,
        gaussian.cov,
        encoder.cov,
        model.posterior_precision,
        model.dense_noise_cov(),
        model.marginal().cov,
    ):
        assert_array_equal(matrix, np.swapaxes(matrix, -1, -2))


@pytest.mark.parametrize("kind", ["diagonal", "full"])
def test_deferred_rows_spanning_several_blocks_match_mpmath(
    kind: str, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One cancelling row per block of 16 is deferred; 40 of them are recomputed in a
    second pass of blocks of 16, 16 and 8 rows (the last one shorter than its buffers)."""
    import elbo_check._blocks as blocks_module

    d, k, step = 5, 2, 16
    monkeypatch.setattr(blocks_module, "BLOCK_ENTRIES", step * d)
    psi: Any = 1e-12 * (rng.uniform(0.5, 2.0, d) if kind == "diagonal" else _spd(rng, d, 0.5))
    dense = Dense(
        rng.standard_normal((d, k)),
        rng.standard_normal(d),
        rng.standard_normal(k),
        _spd(rng, k),
        psi,
    )
    model = dense.model()
    mean = dense.weights @ dense.mu0 + dense.bias
    x = mean + rng.standard_normal((40 * step, d))
    deep = np.arange(40) * step + 5
    x[deep] = (
        mean + rng.standard_normal((40, k)) @ dense.weights.T + 1e-7 * rng.standard_normal((40, d))
    )
    log_p = np.asarray(model.log_evidence(x))
    exact, _, constant = _mp_mahalanobis(dense, x[deep])
    assert_allclose(-2.0 * log_p[deep] - constant, exact, rtol=1e-9, atol=1e-12 * abs(constant))
    ordinary = np.delete(np.arange(x.shape[0]), deep)[:5]
    _, ordinary_log_p, _ = _mp_mahalanobis(dense, x[ordinary])
    assert_allclose(log_p[ordinary], ordinary_log_p, rtol=1e-10)
