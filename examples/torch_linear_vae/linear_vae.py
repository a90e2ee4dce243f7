"""A small linear VAE in PyTorch, written as a user would, with no knowledge of elbo_check.

Generative model (the decoder), with a fixed Gaussian prior::

    z ~ N(mu0, S0),        x | z ~ N(W z + b, diag(exp(log_var)))

Inference model (the encoder): ``q(z | x) = N(A x + c, L L^T)`` with ``L`` a learned
lower-triangular matrix whose diagonal goes through softplus (so it stays positive).
In a linear-Gaussian model the exact posterior has exactly this form, so a trained
encoder can make the ELBO tight.

Every quantity is computed by the functions at module level, which take plain tensors
(``W, b, noise_var, prior_mean, prior_scale_tril, q_mean, q_scale_tril, x``); the ``LinearVAE``
methods only gather their parameters and call them. A test can therefore feed any
parameters and any ``q`` into the same code path the VAE trains with.

Everything is float64 (``DTYPE``); the global default dtype is never changed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

DTYPE = torch.float64
LOG_2PI = math.log(2.0 * math.pi)

__all__ = [
    "DTYPE",
    "LinearVAE",
    "as_tensor",
    "elbo_from_parameters",
    "expected_log_likelihood",
    "fit",
    "gaussian_kl",
    "mc_elbo_from_noise",
    "mc_elbo_from_parameters",
    "synthetic_data",
]


def as_tensor(value: object) -> Tensor:
    """A float64 tensor (copied from numpy arrays, which may be read-only)."""
    if isinstance(value, Tensor):
        return value.to(DTYPE)
    return torch.tensor(np.array(value, dtype=np.float64), dtype=DTYPE)


def _log_diag(scale_tril: Tensor) -> Tensor:
    return torch.log(torch.diagonal(scale_tril, dim1=-2, dim2=-1))


# ---------------------------------------------------------------------- closed forms
def gaussian_kl(
    q_mean: Tensor, q_scale_tril: Tensor, p_mean: Tensor, p_scale_tril: Tensor
) -> Tensor:
    """KL(N(q_mean, Lq Lq^T) || N(p_mean, Lp Lp^T)); batched over leading dimensions.

    ``0.5 * (|Lp^-1 Lq|_F^2 + |Lp^-1 (p_mean - q_mean)|^2 - K + log det Sp - log det Sq)``
    """
    k = q_mean.shape[-1]
    # torch.linalg's functions are untyped (Any): annotate what they return
    ratio: Tensor = torch.linalg.solve_triangular(p_scale_tril, q_scale_tril, upper=False)
    offset = (p_mean - q_mean).unsqueeze(-1)
    whitened: Tensor = torch.linalg.solve_triangular(p_scale_tril, offset, upper=False)
    whitened = whitened.squeeze(-1)
    trace = (ratio**2).sum(dim=(-2, -1))
    mahalanobis = (whitened**2).sum(dim=-1)
    log_det_ratio = 2.0 * (_log_diag(p_scale_tril).sum(-1) - _log_diag(q_scale_tril).sum(-1))
    return 0.5 * (trace + mahalanobis - k + log_det_ratio)


def expected_log_likelihood(
    W: Tensor, b: Tensor, noise_var: Tensor, q_mean: Tensor, q_scale_tril: Tensor, x: Tensor
) -> Tensor:
    """E_{z ~ q}[log N(x; W z + b, diag(noise_var))] in closed form.

    ``-0.5 * (D log 2pi + sum log v + sum (x - W m - b)^2 / v + |diag(v)^-1/2 W L|_F^2)``
    """
    d = x.shape[-1]
    residual = x - F.linear(q_mean, W, b)
    spread = W @ q_scale_tril  # (..., D, K)
    trace = (spread**2 / noise_var.unsqueeze(-1)).sum(dim=(-2, -1))
    return -0.5 * (
        d * LOG_2PI + torch.log(noise_var).sum() + (residual**2 / noise_var).sum(-1) + trace
    )


def elbo_from_parameters(
    W: Tensor,
    b: Tensor,
    noise_var: Tensor,
    prior_mean: Tensor,
    prior_scale_tril: Tensor,
    q_mean: Tensor,
    q_scale_tril: Tensor,
    x: Tensor,
) -> Tensor:
    """Analytic ELBO: expected log-likelihood minus KL(q || prior), one value per row of x.

    The prior is N(prior_mean, prior_scale_tril @ prior_scale_tril.T).
    """
    reconstruction = expected_log_likelihood(W, b, noise_var, q_mean, q_scale_tril, x)
    return reconstruction - gaussian_kl(q_mean, q_scale_tril, prior_mean, prior_scale_tril)


# ---------------------------------------------------------------------- Monte Carlo
def _log_normal_tril(z: Tensor, mean: Tensor, scale_tril: Tensor) -> Tensor:
    whitened: Tensor = torch.linalg.solve_triangular(
        scale_tril, (z - mean).unsqueeze(-1), upper=False
    )
    whitened = whitened.squeeze(-1)
    k = z.shape[-1]
    return -0.5 * (k * LOG_2PI + (whitened**2).sum(-1)) - _log_diag(scale_tril).sum(-1)


def mc_elbo_from_noise(
    W: Tensor,
    b: Tensor,
    noise_var: Tensor,
    prior_mean: Tensor,
    prior_scale_tril: Tensor,
    q_mean: Tensor,
    q_scale_tril: Tensor,
    x: Tensor,
    eps: Tensor,
) -> Tensor:
    """Reparameterised ELBO estimate from standard-normal noise ``eps`` of shape (..., n, K).

    ``z_i = m + L eps_i`` and the estimate is the mean over i of
    ``log p(x | z_i) + log p(z_i) - log q(z_i)``, one value per row of x.
    """
    z = q_mean.unsqueeze(-2) + eps @ q_scale_tril.transpose(-1, -2)  # (..., n, K)
    mean_x = F.linear(z, W, b)  # (..., n, D)
    log_lik = -0.5 * (
        LOG_2PI + torch.log(noise_var) + (x.unsqueeze(-2) - mean_x) ** 2 / noise_var
    ).sum(-1)
    log_prior = _log_normal_tril(z, prior_mean, prior_scale_tril)
    # log q(m + L eps) = log N(eps; 0, I) - sum(log diag L)
    k = eps.shape[-1]
    log_q = -0.5 * (k * LOG_2PI + (eps**2).sum(-1)) - _log_diag(q_scale_tril).sum(-1).unsqueeze(-1)
    return (log_lik + log_prior - log_q).mean(dim=-1)


def mc_elbo_from_parameters(
    W: Tensor,
    b: Tensor,
    noise_var: Tensor,
    prior_mean: Tensor,
    prior_scale_tril: Tensor,
    q_mean: Tensor,
    q_scale_tril: Tensor,
    x: Tensor,
    n_samples: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Monte-Carlo ELBO with ``n_samples`` reparameterised draws per row of x."""
    shape = (*q_mean.shape[:-1], n_samples, q_mean.shape[-1])
    eps = torch.randn(shape, generator=generator, dtype=DTYPE)
    return mc_elbo_from_noise(
        W, b, noise_var, prior_mean, prior_scale_tril, q_mean, q_scale_tril, x, eps
    )


# ---------------------------------------------------------------------- the module
class LinearVAE(nn.Module):
    """Linear encoder and decoder, diagonal Gaussian likelihood, fixed Gaussian prior."""

    # Buffers (register_buffer below): declared so that attribute access is typed as a
    # Tensor, not as nn.Module.__getattr__'s ``Tensor | Module``.
    prior_mean: Tensor
    prior_scale_tril: Tensor
    _offdiag_index: Tensor

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        prior_mean: object | None = None,
        prior_cov: object | None = None,
    ) -> None:
        super().__init__()
        k = latent_dim
        self.encoder = nn.Linear(data_dim, k, dtype=DTYPE)
        self.scale_raw_diag = nn.Parameter(torch.full((k,), math.log(math.e - 1.0), dtype=DTYPE))
        self.scale_offdiag = nn.Parameter(torch.zeros(k * (k - 1) // 2, dtype=DTYPE))
        self.decoder = nn.Linear(k, data_dim, dtype=DTYPE)
        self.noise_log_var = nn.Parameter(torch.zeros(data_dim, dtype=DTYPE))
        mean = torch.zeros(k, dtype=DTYPE) if prior_mean is None else as_tensor(prior_mean)
        cov = torch.eye(k, dtype=DTYPE) if prior_cov is None else as_tensor(prior_cov)
        self.register_buffer("prior_mean", mean)
        # The prior is fixed: factorise its covariance once, not at every step.
        self.register_buffer("prior_scale_tril", torch.linalg.cholesky(cov))
        self.register_buffer("_offdiag_index", torch.tril_indices(k, k, -1), persistent=False)

    @classmethod
    def with_generative(
        cls,
        weights: object,
        bias: object,
        noise_var: object,
        prior_mean: object,
        prior_cov: object,
    ) -> LinearVAE:
        """A VAE whose decoder, noise and prior are set to the given values."""
        W = as_tensor(weights)
        vae = cls(W.shape[0], W.shape[1], prior_mean=prior_mean, prior_cov=prior_cov)
        with torch.no_grad():
            vae.decoder.weight.copy_(W)
            vae.decoder.bias.copy_(as_tensor(bias))
            vae.noise_log_var.copy_(torch.log(as_tensor(noise_var)))
        return vae

    # -------------------------------------------------------------- parameters
    @property
    def noise_var(self) -> Tensor:
        return torch.exp(self.noise_log_var)

    @property
    def prior_cov(self) -> Tensor:
        return self.prior_scale_tril @ self.prior_scale_tril.T

    def _generative(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return (
            self.decoder.weight,
            self.decoder.bias,
            self.noise_var,
            self.prior_mean,
            self.prior_scale_tril,
        )

    def q_scale_tril(self) -> Tensor:
        """The encoder's lower-triangular scale L (shared by all x), diagonal > 0."""
        k = self.scale_raw_diag.shape[0]
        rows, cols = self._offdiag_index
        lower = torch.zeros(k, k, dtype=DTYPE).index_put((rows, cols), self.scale_offdiag)
        return lower + torch.diag(F.softplus(self.scale_raw_diag))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(z | x) as (mean (..., K), scale_tril (K, K))."""
        return self.encoder(x), self.q_scale_tril()

    # -------------------------------------------------------------- objectives
    def kl_to_prior(self, q_mean: Tensor, q_scale_tril: Tensor) -> Tensor:
        return gaussian_kl(q_mean, q_scale_tril, self.prior_mean, self.prior_scale_tril)

    def elbo_given_q(self, x: Tensor, q_mean: Tensor, q_scale_tril: Tensor) -> Tensor:
        return elbo_from_parameters(*self._generative(), q_mean, q_scale_tril, x)

    def mc_elbo_given_q(
        self,
        x: Tensor,
        q_mean: Tensor,
        q_scale_tril: Tensor,
        n_samples: int,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        return mc_elbo_from_parameters(
            *self._generative(), q_mean, q_scale_tril, x, n_samples, generator
        )

    def mc_elbo_given_noise(
        self, x: Tensor, q_mean: Tensor, q_scale_tril: Tensor, eps: Tensor
    ) -> Tensor:
        return mc_elbo_from_noise(*self._generative(), q_mean, q_scale_tril, x, eps)

    def analytic_elbo(self, x: Tensor) -> Tensor:
        """Closed-form ELBO of each row of x under the encoder's q(z | x)."""
        return self.elbo_given_q(x, *self.encode(x))

    def mc_elbo(
        self, x: Tensor, n_samples: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """Reparameterised Monte-Carlo ELBO of each row of x."""
        return self.mc_elbo_given_q(x, *self.encode(x), n_samples, generator)


# ---------------------------------------------------------------------- training
def fit(
    x_data: object,
    steps: int,
    *,
    latent_dim: int = 2,
    lr: float = 0.05,
    seed: int = 0,
    prior_mean: object | None = None,
    prior_cov: object | None = None,
    log_every: int = 0,
) -> tuple[LinearVAE, list[float]]:
    """Train a LinearVAE on ``x_data`` (N, D) with Adam on the mean analytic ELBO.

    Returns the model and the mean ELBO before each step (and after the last one).
    """
    x = as_tensor(x_data)
    torch.manual_seed(seed)
    vae = LinearVAE(x.shape[-1], latent_dim, prior_mean=prior_mean, prior_cov=prior_cov)
    optimiser = torch.optim.Adam(vae.parameters(), lr=lr)
    history = []
    for step in range(steps):
        optimiser.zero_grad()
        elbo = vae.analytic_elbo(x).mean()
        (-elbo).backward()
        optimiser.step()
        history.append(float(elbo.detach()))
        if log_every and step % log_every == 0:
            print(f"step {step:4d}  mean ELBO {history[-1]:10.4f}")
    with torch.no_grad():
        history.append(float(vae.analytic_elbo(x).mean()))
    if log_every:
        print(f"final      mean ELBO {history[-1]:10.4f}")
    return vae, history


def synthetic_data(
    n: int = 500, data_dim: int = 5, latent_dim: int = 2, seed: int = 0
) -> np.ndarray:
    """Data from a random linear-Gaussian model with diagonal noise and a standard prior."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(data_dim, latent_dim))
    b = rng.normal(size=data_dim)
    noise_std = rng.uniform(0.2, 0.8, size=data_dim)
    z = rng.normal(size=(n, latent_dim))
    return z @ W.T + b + noise_std * rng.normal(size=(n, data_dim))


if __name__ == "__main__":
    fit(synthetic_data(), steps=300, log_every=50)
