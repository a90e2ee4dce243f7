"""The identities of variational inference, as properties over random models.

Every model family, noise kind, K > D and condition numbers up to 1e8 are drawn; the
tolerance is the accuracy the package documents (``IDENTITY_RTOL``) relative to the
magnitudes of the terms involved.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import elbo_check._blocks as blocks_module
import elbo_check._marginal as marginal_module
from elbo_check import Gaussian, LinearGaussianModel, kl_divergence
from elbo_check._linalg import gram_diag_log_term
from elbo_check._random import FAMILIES, random_gaussian, random_model
from elbo_check._selftest import IDENTITY_RTOL


@st.composite
def cases(draw: st.DrawFn) -> tuple[LinearGaussianModel, Gaussian, np.ndarray]:
    """A random model, a batch of q's and a batch of observations (off-model too)."""
    seed = draw(st.integers(0, 2**32 - 1))
    family = draw(st.sampled_from(FAMILIES))
    d = draw(st.integers(1, 8))
    k = draw(st.integers(1, 8))
    condition = 10.0 ** draw(st.integers(0, 8))
    n = draw(st.integers(1, 4))
    rng = np.random.default_rng(seed)
    model = random_model(rng, data_dim=d, latent_dim=k, family=family, condition_number=condition)
    q = random_gaussian(rng, k, batch_shape=(n,), condition_number=10.0, mean_scale=2.0)
    x = model.sample(n, rng)[0] + rng.standard_normal((n, d))
    return model, q, x


def _scale(model: LinearGaussianModel, q: Gaussian, x: np.ndarray) -> np.ndarray:
    terms = model.elbo_terms(q, x)
    return (
        np.abs(terms.expected_log_likelihood)
        + np.abs(terms.kl_to_prior)
        + np.abs(model.kl_to_posterior(q, x))
        + np.abs(model.log_evidence(x))
    )


@given(cases())
def test_elbo_plus_kl_is_log_evidence(
    case: tuple[LinearGaussianModel, Gaussian, np.ndarray],
) -> None:
    """log p(x) = ELBO(q) + KL(q || p(z|x)) for every q."""
    model, q, x = case
    residual = model.elbo(q, x) + model.kl_to_posterior(q, x) - model.log_evidence(x)
    assert np.all(np.abs(residual) <= IDENTITY_RTOL * _scale(model, q, x))


@given(cases())
def test_kl_is_non_negative_and_elbo_is_a_lower_bound(
    case: tuple[LinearGaussianModel, Gaussian, np.ndarray],
) -> None:
    """KL(q || p(z|x)) >= 0 exactly, hence ELBO <= log p(x) up to rounding."""
    model, q, x = case
    assert np.all(model.kl_to_posterior(q, x) >= 0.0)
    excess = model.elbo(q, x) - model.log_evidence(x)
    assert np.all(excess <= IDENTITY_RTOL * _scale(model, q, x))


@given(cases())
def test_kl_vanishes_at_the_posterior_which_maximises_the_elbo(
    case: tuple[LinearGaussianModel, Gaussian, np.ndarray],
) -> None:
    """KL(p(z|x) || p(z|x)) = 0 and ELBO(posterior) = log p(x) >= ELBO(q)."""
    model, q, x = case
    posterior = model.posterior(x)
    assert np.all(np.abs(model.kl_to_posterior(posterior, x)) <= IDENTITY_RTOL)
    tight = model.elbo(posterior, x)
    assert np.allclose(tight, model.log_evidence(x), rtol=0, atol=0) or np.all(
        np.abs(tight - model.log_evidence(x)) <= IDENTITY_RTOL * _scale(model, posterior, x)
    )
    assert np.all(tight >= model.elbo(q, x) - IDENTITY_RTOL * _scale(model, q, x))


@given(cases(), st.integers(0, 2**32 - 1))
def test_log_evidence_does_not_depend_on_q(
    case: tuple[LinearGaussianModel, Gaussian, np.ndarray], seed: int
) -> None:
    """ELBO + KL is the same number for two unrelated q's: it is log p(x), constant in phi."""
    model, q, x = case
    other = random_gaussian(
        np.random.default_rng(seed), model.latent_dim, batch_shape=q.batch_shape, mean_scale=5.0
    )
    first = model.elbo(q, x) + model.kl_to_posterior(q, x)
    second = model.elbo(other, x) + model.kl_to_posterior(other, x)
    scale = np.maximum(_scale(model, q, x), _scale(model, other, x))
    assert np.all(np.abs(first - second) <= 2 * IDENTITY_RTOL * scale)


@given(cases(), st.integers(0, 2**32 - 1))
def test_chain_rule_of_the_evidence(
    case: tuple[LinearGaussianModel, Gaussian, np.ndarray], seed: int
) -> None:
    """log p(x) = log p(x, z) - log p(z | x) for arbitrary z (Bayes' rule)."""
    model, _, x = case
    z = 3.0 * np.random.default_rng(seed).standard_normal((x.shape[0], model.latent_dim))
    joint = model.log_joint(x, z)
    conditional = model.posterior(x).log_prob(z)
    evidence = model.log_evidence(x)
    scale = np.abs(joint) + np.abs(conditional) + np.abs(evidence)
    assert np.all(np.abs(joint - conditional - evidence) <= IDENTITY_RTOL * scale)


@given(cases())
def test_the_two_elbo_forms_agree(case: tuple[LinearGaussianModel, Gaussian, np.ndarray]) -> None:
    """E_q[log p(x|z)] - KL(q||p(z)) = E_q[log p(x,z)] + H(q), and KL = CE - H."""
    model, q, x = case
    t = model.elbo_terms(q, x)
    scale = np.abs(t.expected_log_likelihood) + np.abs(t.cross_entropy) + np.abs(t.entropy)
    assert np.all(np.abs(t.elbo - t.elbo_joint_form) <= IDENTITY_RTOL * scale)
    assert np.allclose(t.kl_to_prior, kl_divergence(q, model.prior))
    assert np.all(t.reconstruction == t.expected_log_likelihood)


@given(cases())
def test_batched_evaluation_equals_row_by_row(
    case: tuple[LinearGaussianModel, Gaussian, np.ndarray],
) -> None:
    """A batch of rows gives the same numbers as a loop over rows."""
    model, q, x = case
    batched = model.elbo(q, x)
    evidence = model.log_evidence(x)
    # Other shapes take other BLAS kernels: agreement to rounding of the terms' magnitudes.
    scale = _scale(model, q, x)
    for i in range(x.shape[0]):
        single = Gaussian.from_cholesky(mean=q.mean[i], scale_tril=q.scale_tril)
        tolerance = IDENTITY_RTOL * scale[i]
        assert model.elbo(single, x[i]) == pytest.approx(batched[i], rel=0, abs=tolerance)
        assert model.log_evidence(x[i]) == pytest.approx(evidence[i], rel=0, abs=tolerance)


def test_shapes_follow_the_last_axis_convention() -> None:
    """x (D,) gives a float; (N, D) gives (N,); (2, 3, D) gives (2, 3); q batches broadcast."""
    rng = np.random.default_rng(1)
    model = random_model(rng, data_dim=4, latent_dim=2)
    q = random_gaussian(rng, 2)
    assert isinstance(model.log_evidence(np.zeros(4)), float)
    assert isinstance(model.elbo(q, np.zeros(4)), float)
    assert model.log_evidence(np.zeros((5, 4))).shape == (5,)
    assert model.log_evidence(np.zeros((2, 3, 4))).shape == (2, 3)
    assert model.elbo(q, np.zeros((2, 3, 4))).shape == (2, 3)
    many_q = random_gaussian(rng, 2, batch_shape=(6,))
    assert model.elbo(many_q, np.zeros(4)).shape == (6,)
    assert model.kl_to_posterior(many_q, np.zeros(4)).shape == (6,)
    assert model.posterior(np.zeros((2, 3, 4))).mean.shape == (2, 3, 2)


def test_row_blocks_do_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """Processing rows in tiny blocks changes log-evidence and posterior means by rounding only.

    (Not bit-identical: BLAS picks other kernels for other shapes, e.g. gemv for one row.)
    """
    rng = np.random.default_rng(2)
    model = random_model(rng, data_dim=5, latent_dim=3, family="full_noise")
    x = rng.standard_normal((37, 5))
    whole = model.log_evidence(x)
    means = model.posterior(x).mean
    monkeypatch.setattr(blocks_module, "BLOCK_ENTRIES", 11)
    np.testing.assert_allclose(model.log_evidence(x), whole, rtol=4 * np.finfo(float).eps)
    np.testing.assert_allclose(model.posterior(x).mean, means, rtol=1e-14, atol=1e-15)


def test_cancellation_fallback_agrees_with_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forcing every row through the residual route changes log p(x) only by rounding."""
    rng = np.random.default_rng(3)
    model = random_model(rng, data_dim=6, latent_dim=4, condition_number=100.0)
    x = rng.standard_normal((50, 6)) * 3
    fast = model.log_evidence(x)
    monkeypatch.setattr(marginal_module, "CANCELLATION_LIMIT", np.inf)
    residual_route = model.log_evidence(x)
    np.testing.assert_allclose(residual_route, fast, rtol=1e-14)


@pytest.mark.parametrize(
    "a", [1e-9, 1e-4, 0.3, 0.5, 0.7, 0.9, 0.97, 1 - 1e-9, 1.0, 1 + 1e-7, 1.02, 1.2, 1.5, 2.0, 1e5]
)
def test_kl_diagonal_term_against_mpmath(a: float) -> None:
    """a^2 - 1 - 2 log a is within 16 ulps of its value for tiny, near-unit and huge a (6 seen).

    Regression: the d - log1p(d) form alone lost 1e-9 relative for a = 1.6e-4, which
    corrupted KL(q || prior) for ill-conditioned priors.
    """
    mpmath.mp.dps = 50
    exact = mpmath.mpf(a) ** 2 - 1 - 2 * mpmath.log(mpmath.mpf(a))
    got = float(gram_diag_log_term(np.array([a]))[0])
    assert got >= 0.0
    assert abs(got - float(exact)) <= 16 * np.finfo(float).eps * float(abs(exact)) + 1e-300
