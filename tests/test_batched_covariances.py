"""A covariance per batch member: every batched result equals the member-by-member one.

The independent route is the unbatched code path (one ``(K, K)`` factor, LAPACK
solves) called once per member, and scipy.stats for densities; gradients of a whole
batch must be the sum of the per-row gradients.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

from elbo_check import Gaussian, InvalidInputError, cross_entropy, kl_divergence
from elbo_check._random import FAMILIES, Family, random_gaussian, random_model

EPS = np.finfo(float).eps


def _member(g: Gaussian, i: int) -> Gaussian:
    """Member ``i`` of a batch of shape ``(n,)`` as an unbatched Gaussian."""
    mean = np.broadcast_to(g.mean, (*g.batch_shape, g.dim))[i]
    factor = g.scale_tril if g.shares_covariance else g.scale_tril[i]
    return Gaussian.from_cholesky(mean=mean, scale_tril=factor)


def _close(batched: object, members: list[float], rtol: float = 1e-13) -> None:
    values = np.asarray(batched)
    expected = np.array(members)
    assert values.shape == expected.shape
    np.testing.assert_allclose(values, expected, rtol=rtol, atol=rtol * np.max(np.abs(expected)))


@st.composite
def batches(draw: st.DrawFn) -> tuple[np.random.Generator, int, int]:
    return (
        np.random.default_rng(draw(st.integers(0, 2**32 - 1))),
        draw(st.integers(1, 6)),
        draw(st.integers(1, 5)),
    )


@given(batches())
def test_densities_entropy_and_moments(case: tuple[np.random.Generator, int, int]) -> None:
    rng, k, n = case
    g = random_gaussian(rng, k, batch_shape=(n,), condition_number=1e3, shared_covariance=False)
    assert g.batch_shape == (n,)
    assert not g.shares_covariance
    z = rng.standard_normal((n, k)) * 2
    members = [_member(g, i) for i in range(n)]
    _close(g.log_prob(z), [float(m.log_prob(z[i])) for i, m in enumerate(members)])
    _close(
        g.log_prob(z),
        [
            scipy.stats.multivariate_normal(m.mean, m.cov).logpdf(z[i])
            for i, m in enumerate(members)
        ],
        rtol=1e-9,  # scipy's eigendecomposition route at condition number 1e3
    )
    _close(g.entropy(), [m.entropy() for m in members])
    _close(g.log_det_cov, [m.log_det_cov for m in members])
    for i, m in enumerate(members):
        np.testing.assert_allclose(g.cov[i], m.cov, rtol=1e-14, atol=1e-15 * np.abs(m.cov).max())
        np.testing.assert_allclose(g.precision[i] @ g.cov[i], np.eye(k), atol=1e-9)
        np.testing.assert_allclose(g.variances[i], np.diag(m.cov), rtol=1e-14)


def test_samples_follow_each_members_covariance() -> None:
    """Sample covariances of 40k draws per member lie within 5 standard errors of each cov."""
    rng = np.random.default_rng(4)
    g = random_gaussian(rng, 2, batch_shape=(3,), shared_covariance=False, mean_scale=3.0)
    draws = g.sample(40_000, rng)
    assert draws.shape == (40_000, 3, 2)
    for i in range(3):
        cov = g.cov[i]
        centred = draws[:, i] - g.mean[i]
        empirical = centred.T @ centred / draws.shape[0]
        # Var of a sample covariance entry (Gaussian): (S_ij^2 + S_ii S_jj) / n.
        standard_error = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / draws.shape[0])
        assert np.all(np.abs(empirical - cov) < 5 * standard_error)


@pytest.mark.parametrize("shared", ["p", "q", "neither"])
def test_kl_and_cross_entropy_member_by_member(shared: str) -> None:
    rng = np.random.default_rng(9)
    k, n = 4, 5
    p = random_gaussian(rng, k, batch_shape=(n,), shared_covariance=shared == "p")
    q = random_gaussian(rng, k, batch_shape=(n,), shared_covariance=shared == "q")
    pairs = [(_member(p, i), _member(q, i)) for i in range(n)]
    _close(kl_divergence(p, q), [kl_divergence(a, b) for a, b in pairs])
    _close(cross_entropy(p, q), [cross_entropy(a, b) for a, b in pairs])
    _close(cross_entropy(p, q) - np.asarray(p.entropy()), kl_divergence(p, q), rtol=1e-12)
    assert np.all(kl_divergence(p, p) == 0.0)  # identical members: exactly zero


@pytest.mark.parametrize("family", FAMILIES)
def test_elbo_kl_and_gradients_member_by_member(family: Family) -> None:
    rng = np.random.default_rng(13)
    d, k, n = 5, 3, 6
    model = random_model(rng, data_dim=d, latent_dim=k, family=family, condition_number=1e3)
    q = random_gaussian(rng, k, batch_shape=(n,), shared_covariance=False, mean_scale=2.0)
    x = model.sample(n, rng)[0]
    members = [_member(q, i) for i in range(n)]
    elbo = model.elbo(q, x)
    _close(elbo, [model.elbo(m, x[i]) for i, m in enumerate(members)])
    kl = model.kl_to_posterior(q, x)
    _close(kl, [model.kl_to_posterior(m, x[i]) for i, m in enumerate(members)])
    terms = model.elbo_terms(q, x)
    for name in ("expected_log_likelihood", "kl_to_prior", "cross_entropy", "entropy"):
        _close(
            getattr(terms, name),
            [float(getattr(model.elbo_terms(m, x[i]), name)) for i, m in enumerate(members)],
        )
    evidence = model.log_evidence(x)
    np.testing.assert_allclose(elbo + kl, evidence, rtol=1e-12)

    grads = model.elbo_grad_variational(q, x)
    for i, m in enumerate(members):
        one = model.elbo_grad_variational(m, x[i])
        np.testing.assert_allclose(grads.mean[i], one.mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(grads.scale_tril[i], one.scale_tril, rtol=1e-12, atol=1e-12)

    total = model.elbo_grad_model(q, x)
    per_row = [model.elbo_grad_model(m, x[i]) for i, m in enumerate(members)]
    for name in ("weights", "bias", "noise_cov", "prior_mean", "prior_cov"):
        summed = sum(np.asarray(getattr(g, name)) for g in per_row)
        np.testing.assert_allclose(getattr(total, name), summed, rtol=1e-11, atol=1e-11)


def test_one_q_per_row_broadcasts_against_a_batch_of_rows() -> None:
    """A batch of covariances (3,) against x of shape (2, 3, D): every pair evaluated."""
    rng = np.random.default_rng(21)
    model = random_model(rng, data_dim=4, latent_dim=2)
    q = random_gaussian(rng, 2, batch_shape=(3,), shared_covariance=False)
    x = rng.standard_normal((2, 3, 4))
    values = model.elbo(q, x)
    assert values.shape == (2, 3)
    for a in range(2):
        _close(values[a], [model.elbo(_member(q, i), x[a, i]) for i in range(3)])
    assert model.kl_to_posterior(q, x).shape == (2, 3)
    assert model.elbo_grad_variational(q, x).scale_tril.shape == (2, 3, 2, 2)


def test_constructors_accept_batches() -> None:
    rng = np.random.default_rng(3)
    g = random_gaussian(rng, 3, batch_shape=(4,), shared_covariance=False)
    from_cov = Gaussian.from_covariance(mean=g.mean, cov=g.cov)
    from_precision = Gaussian.from_precision(mean=g.mean, precision=g.precision)
    for other in (from_cov, from_precision):
        np.testing.assert_allclose(other.cov, g.cov, rtol=1e-12, atol=1e-12)
        assert np.all(np.triu(other.scale_tril, 1) == 0)
    diagonal = Gaussian.from_diagonal(
        mean=np.zeros(3), variances=[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    )
    assert diagonal.batch_shape == (2,)
    np.testing.assert_allclose(diagonal.variances, [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert "one covariance per member" in repr(diagonal)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: Gaussian.from_covariance(
                mean=np.zeros(2), cov=np.stack([np.eye(2), [[1.0, 2.0], [2.0, 1.0]]])
            ),
            "cov[1] must be symmetric positive definite; smallest eigenvalue -1",
        ),
        (
            lambda: Gaussian.from_covariance(
                mean=np.zeros(2), cov=np.stack([np.eye(2), [[1.0, 0.5], [0.0, 1.0]]])
            ),
            "cov[1] must be symmetric; largest |cov[1] - cov[1].T| is 0.5",
        ),
        (
            lambda: Gaussian.from_cholesky(
                mean=np.zeros(2), scale_tril=np.stack([np.eye(2), np.eye(2), [[1.0, 3.0], [0, 1]]])
            ),
            "scale_tril[2] must be lower triangular",
        ),
        (
            lambda: Gaussian.from_cholesky(
                mean=np.zeros((3, 2)), scale_tril=np.stack([np.eye(2), np.eye(2)])
            ),
            "the batch shapes of mean (3,) and of the covariance (2,) do not broadcast",
        ),
        (
            lambda: Gaussian.from_diagonal(mean=np.zeros(2), variances=[[1.0, 1.0], [1.0, -1.0]]),
            "variances must be",
        ),
    ],
)
def test_a_bad_member_is_named(build: object, message: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        build()  # type: ignore[operator]
    assert str(caught.value).startswith(message), str(caught.value)


def test_model_gradient_sums_the_covariances_of_all_rows() -> None:
    """With q shared across rows, the batched and the shared forms agree exactly in form."""
    rng = np.random.default_rng(8)
    model = random_model(rng, data_dim=4, latent_dim=2, family="full_noise")
    shared = random_gaussian(rng, 2, batch_shape=(5,))
    copied = Gaussian.from_cholesky(
        mean=shared.mean, scale_tril=np.broadcast_to(shared.scale_tril, (5, 2, 2))
    )
    x = rng.standard_normal((5, 4))
    a, b = model.elbo_grad_model(shared, x), model.elbo_grad_model(copied, x)
    for name in ("weights", "bias", "noise_cov", "prior_mean", "prior_cov"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-13, atol=1e-13)
