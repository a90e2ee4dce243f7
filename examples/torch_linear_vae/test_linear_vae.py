"""Verify the PyTorch linear VAE in linear_vae.py against elbo_check's exact oracle.

Every check goes through the functions the VAE trains with (``LinearVAE.elbo_given_q``,
``mc_elbo_given_q``, ``mc_elbo_given_noise``, ``kl_to_prior``); the adapters below only
copy an elbo_check model's parameters into a ``LinearVAE``.

Run from the repository root: ``OMP_NUM_THREADS=1 python -m pytest examples``. The
problems are tiny (dimensions up to 6), and on a small shared machine multi-threaded
BLAS/LAPACK calls (numpy's OpenBLAS inside elbo_check, torch's MKL Cholesky) spend far
longer synchronising threads than computing: this file took ~55 s without the variable
and ~14 s with it on a loaded 2-core machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import pytest

pytest.importorskip("torch")

import scipy.linalg
import torch
from linear_vae import (
    LinearVAE,
    as_tensor,
    expected_log_likelihood,
    fit,
    gaussian_kl,
    synthetic_data,
)

from elbo_check import Gaussian, LinearGaussianModel
from elbo_check.testing import (
    verify_elbo,
    verify_elbo_estimator,
    verify_elbo_gradient,
    verify_kl,
)

#: The VAE's likelihood has diagonal noise: verify_elbo and verify_elbo_gradient(mode=
#: "exact") are told so. The estimator checks run on full-noise models too, through the
#: whitening adapter ``diagonalised`` (which is itself tested), so that they exercise it.
DIAGONAL_NOISE = ("isotropic", "diagonal")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded here: its problems are tiny (see the module docstring)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------- adapters
def noise_variances(model: LinearGaussianModel) -> np.ndarray:
    """The model's noise as a (D,) vector of variances; full noise is not supported."""
    if model.noise_kind == "full":
        raise NotImplementedError("LinearVAE has a diagonal likelihood; got full noise")
    return np.broadcast_to(np.asarray(model.noise_cov, dtype=np.float64), (model.data_dim,))


def vae_for(model: LinearGaussianModel) -> LinearVAE:
    """A LinearVAE whose decoder, noise and prior are those of ``model``."""
    return LinearVAE.with_generative(
        model.weights, model.bias, noise_variances(model), model.prior.mean, model.prior.cov
    )


@lru_cache(maxsize=64)
def diagonalised(model: LinearGaussianModel) -> tuple[LinearVAE, np.ndarray, float]:
    """(vae, whitening matrix T, offset) with ELBO_model(q, x) = ELBO_vae(q, T x) + offset.

    verify_elbo_estimator accepts no model options, and its fixed problems include
    full noise covariances Psi = C C^T, which the VAE's diagonal likelihood cannot
    represent. Whitening reduces them exactly to unit diagonal noise:
    log N(x; W z + b, C C^T) = log N(C^-1 x; C^-1 W z + C^-1 b, I) - sum(log diag C),
    so the estimator still runs through the VAE's own code. Diagonal models pass as
    they are (T = I, offset 0). Cached: the statistical check calls fn hundreds of
    times on each of a few models.
    """
    d = model.data_dim
    if model.noise_kind != "full":
        return vae_for(model), np.eye(d), 0.0
    factor = np.linalg.cholesky(model.noise_cov)
    whiten = scipy.linalg.solve_triangular(factor, np.eye(d), lower=True)
    vae = LinearVAE.with_generative(
        whiten @ model.weights, whiten @ model.bias, np.ones(d), model.prior.mean, model.prior.cov
    )
    return vae, whiten, -float(np.sum(np.log(np.diagonal(factor))))


def q_tensors(q: Gaussian) -> tuple[torch.Tensor, torch.Tensor]:
    return as_tensor(q.mean), as_tensor(q.scale_tril)


# ---------------------------------------------------------------------- functions under test
def analytic_elbo(model: LinearGaussianModel, q: Gaussian, x: np.ndarray) -> float:
    with torch.no_grad():
        return float(vae_for(model).elbo_given_q(as_tensor(x), *q_tensors(q)))


def minibatch_elbo(model: LinearGaussianModel, q: Gaussian, x: np.ndarray) -> np.ndarray:
    """The ELBOs of a minibatch, x (B, D), with a q per row: q.scale_tril is (B, K, K)."""
    with torch.no_grad():
        return vae_for(model).elbo_given_q(as_tensor(x), *q_tensors(q)).numpy()


def minibatch_kl(p: Gaussian, q: Gaussian) -> np.ndarray:
    """gaussian_kl on batches of Gaussians, a covariance per member (as the VAE calls it)."""
    with torch.no_grad():
        return gaussian_kl(*q_tensors(p), *q_tensors(q)).numpy()


def kl(p: Gaussian, q: Gaussian) -> float:
    """KL(p || q) through LinearVAE.kl_to_prior, with q as the VAE's prior."""
    vae = LinearVAE(1, p.dim, prior_mean=q.mean, prior_cov=q.cov)
    with torch.no_grad():
        return float(vae.kl_to_prior(*q_tensors(p)))


def mc_elbo(
    model: LinearGaussianModel, q: Gaussian, x: np.ndarray, rng: np.random.Generator, n: int
) -> float:
    vae, whiten, offset = diagonalised(model)
    generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
    with torch.no_grad():
        value = vae.mc_elbo_given_q(as_tensor(whiten @ x), *q_tensors(q), n, generator)
    return float(value) + offset


def pathwise_elbo(model: LinearGaussianModel, q: Gaussian, x: np.ndarray, eps: np.ndarray) -> float:
    vae, whiten, offset = diagonalised(model)
    with torch.no_grad():
        value = vae.mc_elbo_given_noise(as_tensor(whiten @ x), *q_tensors(q), as_tensor(eps))
    return float(value) + offset


def elbo_gradient(
    model: LinearGaussianModel, q: Gaussian, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """d ELBO / d (mean, scale_tril) of q by torch.autograd."""
    mean, scale_tril = (t.requires_grad_() for t in q_tensors(q))
    vae_for(model).elbo_given_q(as_tensor(x), mean, scale_tril).backward()
    assert mean.grad is not None
    assert scale_tril.grad is not None
    return mean.grad.numpy(), torch.tril(scale_tril.grad).numpy()


def elbo_kl_averaged_over_latents(model: LinearGaussianModel, q: Gaussian, x: np.ndarray) -> float:
    """A deliberate bug: the KL term is averaged over latent dimensions, not summed."""
    vae = vae_for(model)
    mean, scale_tril = q_tensors(q)
    with torch.no_grad():
        reconstruction = expected_log_likelihood(
            vae.decoder.weight, vae.decoder.bias, vae.noise_var, mean, scale_tril, as_tensor(x)
        )
        return float(reconstruction - vae.kl_to_prior(mean, scale_tril) / q.dim)


# ---------------------------------------------------------------------- tests
def test_analytic_elbo_is_exact() -> None:
    verify_elbo(analytic_elbo, noise_kinds=DIAGONAL_NOISE)


def test_kl_to_prior_is_exact() -> None:
    verify_kl(kl)


def test_minibatches_with_a_covariance_per_row_are_exact() -> None:
    """The code paths the VAE trains with, on batches: every row checked, rows independent."""
    verify_elbo(minibatch_elbo, batch_size=8, max_examples=50, noise_kinds=DIAGONAL_NOISE)
    verify_kl(minibatch_kl, batch_size=8, max_examples=50)


def test_mc_elbo_is_unbiased() -> None:
    verify_elbo_estimator(mc_elbo)


def test_mc_elbo_is_the_pathwise_estimate_of_its_noise() -> None:
    verify_elbo_estimator(pathwise_elbo, mode="pathwise")


def test_autograd_gradient_with_respect_to_q_is_exact() -> None:
    verify_elbo_gradient(elbo_gradient, mode="exact", noise_kinds=DIAGONAL_NOISE)


def test_whitening_adapter_is_exact() -> None:
    """The reduction used for full noise must itself be exact (on the analytic ELBO)."""

    def whitened_elbo(model: LinearGaussianModel, q: Gaussian, x: np.ndarray) -> float:
        vae, whiten, offset = diagonalised(model)
        with torch.no_grad():
            return float(vae.elbo_given_q(as_tensor(whiten @ x), *q_tensors(q))) + offset

    verify_elbo(whitened_elbo, max_examples=50, noise_kinds=("full",))


def test_verify_elbo_catches_kl_averaged_over_latent_dims() -> None:
    with pytest.raises(AssertionError, match="verify_elbo failed") as failure:
        verify_elbo(elbo_kl_averaged_over_latents, noise_kinds=DIAGONAL_NOISE)
    message = str(failure.value)
    # The counterexample is shrunk to the smallest case that shows the bug (K = 2) and
    # the diagnosis names it.
    assert "K = 2" in message
    assert "averaged over latent dimensions" in message


def test_trained_elbo_is_below_the_exact_evidence() -> None:
    x = synthetic_data(n=200, data_dim=4, latent_dim=2, seed=1)
    prior_mean, prior_cov = [0.5, -1.0], [[1.5, 0.4], [0.4, 0.8]]
    vae, history = fit(
        x, steps=150, latent_dim=2, seed=0, prior_mean=prior_mean, prior_cov=prior_cov
    )
    assert history[-1] > history[0] + 1.0, "training did not raise the ELBO"

    with torch.no_grad():
        x_t = as_tensor(x)
        elbo = vae.analytic_elbo(x_t).numpy()
        q_mean, q_scale_tril = (t.numpy() for t in vae.encode(x_t))
        fitted = LinearGaussianModel(
            weights=vae.decoder.weight.numpy(),
            bias=vae.decoder.bias.numpy(),
            prior=Gaussian.from_cholesky(
                mean=vae.prior_mean.numpy(), scale_tril=vae.prior_scale_tril.numpy()
            ),
            noise_cov=vae.noise_var.numpy(),
        )
    q = Gaussian.from_cholesky(mean=q_mean, scale_tril=q_scale_tril)
    log_evidence = fitted.log_evidence(x)
    gap = fitted.kl_to_posterior(q, x)
    scale = float(np.max(np.abs(log_evidence)))

    np.testing.assert_allclose(elbo, fitted.elbo(q, x), rtol=0, atol=1e-10 * scale)
    assert np.all(elbo < log_evidence)
    assert elbo.sum() < log_evidence.sum()
    np.testing.assert_allclose(gap, log_evidence - elbo, rtol=0, atol=1e-10 * scale)
    # A linear encoder can represent the exact posterior, so training makes the bound
    # nearly tight.
    assert float(np.mean(gap)) < 0.01
