"""Random, well-posed models and variational distributions from a numpy Generator.

Used by the command-line self-test and the test suite. Every construction is
direct (no rejection): covariances are ``U diag(lambda) U^T`` with a Haar-random
rotation ``U`` and eigenvalues spread log-uniformly between ``1`` and the requested
condition number, both ends included, so the condition number is exact.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import NDArray

from ._gaussian import Gaussian
from ._linalg import cholesky
from ._model import LinearGaussianModel

__all__ = [
    "FAMILIES",
    "Family",
    "random_gaussian",
    "random_model",
    "random_rotation",
    "random_spd",
]

FloatArray = NDArray[np.float64]
Family = Literal["general", "full_noise", "ppca", "factor_analysis", "bayesian_linear_regression"]
#: Every family the generators can draw, in the order the self-test reports them.
FAMILIES: tuple[Family, ...] = (
    "general",
    "full_noise",
    "ppca",
    "factor_analysis",
    "bayesian_linear_regression",
)


def random_rotation(rng: np.random.Generator, dim: int) -> FloatArray:
    """A Haar-distributed orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.where(np.diagonal(r) < 0, -1.0, 1.0)


def random_spd(
    rng: np.random.Generator, dim: int, *, condition_number: float = 10.0, scale: float = 1.0
) -> FloatArray:
    """A symmetric positive-definite matrix with exactly the given condition number.

    The eigenvalues are ``scale * condition_number**t`` for ``t`` uniform on [0, 1]
    with ``t = 0`` and ``t = 1`` always present (when ``dim >= 2``).
    """
    exponents = rng.uniform(0.0, 1.0, size=dim)
    exponents[0] = 0.0
    if dim >= 2:
        exponents[1] = 1.0
    eigenvalues = scale * condition_number**exponents
    rotation = random_rotation(rng, dim)
    matrix = (rotation * eigenvalues) @ rotation.T
    return 0.5 * (matrix + matrix.T)


def random_gaussian(
    rng: np.random.Generator,
    dim: int,
    *,
    batch_shape: tuple[int, ...] = (),
    condition_number: float = 10.0,
    mean_scale: float = 1.0,
    cov_scale: float = 1.0,
    shared_covariance: bool = True,
) -> Gaussian:
    """A Gaussian with a non-zero mean and a full covariance of the given conditioning.

    With ``shared_covariance=False`` every member of the batch gets its own covariance.
    """
    mean = mean_scale * rng.standard_normal((*batch_shape, dim))
    if shared_covariance:
        cov = random_spd(rng, dim, condition_number=condition_number, scale=cov_scale)
        return Gaussian._trusted(mean, cholesky("cov", cov))
    covs = [
        random_spd(rng, dim, condition_number=condition_number, scale=cov_scale)
        for _ in range(int(np.prod(batch_shape, dtype=int)))
    ]
    factors = np.array([cholesky("cov", c) for c in covs]).reshape(*batch_shape, dim, dim)
    return Gaussian._trusted(mean, factors)


def random_model(
    rng: np.random.Generator,
    *,
    data_dim: int,
    latent_dim: int,
    family: Family = "general",
    condition_number: float = 10.0,
) -> LinearGaussianModel:
    """A random model of the given family with non-zero offsets and prior means.

    ``condition_number`` is that of the prior and noise covariances (where the family
    has general ones), so the marginal covariance is at least as ill-conditioned.
    """
    d, k = data_dim, latent_dim
    weights = rng.standard_normal((d, k)) / np.sqrt(k)
    bias = rng.standard_normal(d)
    if family in ("ppca", "factor_analysis"):
        prior = Gaussian.standard(k)
    else:
        prior = random_gaussian(rng, k, condition_number=condition_number)
    noise: float | FloatArray
    if family == "full_noise":
        noise = random_spd(rng, d, condition_number=condition_number, scale=0.3)
    elif family in ("general", "factor_analysis"):
        noise = 0.3 * condition_number ** rng.uniform(0.0, 1.0, size=d)
    else:
        noise = float(rng.uniform(0.05, 1.0))
    if family == "bayesian_linear_regression":
        bias = np.zeros(d)
    return LinearGaussianModel(weights=weights, bias=bias, prior=prior, noise_cov=noise)
