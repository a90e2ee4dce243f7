"""Amortised variational inference with a linear encoder (the linear VAE).

The encoder maps each observation to a Gaussian with a shared covariance,
:math:`q(z\\mid x) = \\mathcal N(Ax + c, S)`. In a linear-Gaussian model the exact
posterior has exactly this form, so the optimal encoder attains
:math:`\\sum_n \\log p(x_n)` — the setting studied by Lucas et al. (2019).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._errors import InvalidInputError, InvalidTypeError
from ._gaussian import Gaussian
from ._linalg import check_scale_tril, cholesky
from ._validation import as_event_array, as_real_array, check_shape, describe_shape, freeze

if TYPE_CHECKING:
    from ._marginal import MarginalFactorization

__all__ = [
    "EncoderGradients",
    "LinearEncoder",
    "check_encoder",
    "encoder_gradients",
    "optimal_encoder",
]

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class EncoderGradients:
    """Gradients of the dataset ELBO with respect to the encoder's parameters.

    Attributes
    ----------
    matrix : ndarray, shape (K, D)
        With respect to :math:`A`.
    offset : ndarray, shape (K,)
        With respect to :math:`c`.
    scale_tril : ndarray, shape (K, K)
        With respect to the Cholesky factor of the shared covariance (lower triangular).
    """

    matrix: FloatArray
    offset: FloatArray
    scale_tril: FloatArray


def _rebuild_encoder(matrix: Any, offset: Any, scale_tril: Any) -> LinearEncoder:
    return LinearEncoder(matrix=matrix, offset=offset, scale_tril=scale_tril)


class LinearEncoder:
    r"""A linear Gaussian encoder :math:`q(z\mid x) = \mathcal N(Ax + c,\ L L^\top)`.

    Parameters
    ----------
    matrix : array_like, shape (K, D)
        :math:`A`.
    offset : array_like, shape (K,)
        :math:`c`.
    scale_tril : array_like, shape (K, K)
        Lower Cholesky factor of the shared covariance, positive diagonal.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import LinearEncoder
    >>> encoder = LinearEncoder(matrix=[[1.0, 0.0]], offset=[0.5], scale_tril=[[0.1]])
    >>> encoder(np.array([[2.0, 3.0], [0.0, 1.0]])).mean
    array([[2.5],
           [0.5]])
    """

    def __init__(self, *, matrix: ArrayLike, offset: ArrayLike, scale_tril: ArrayLike) -> None:
        factor = as_real_array("scale_tril", scale_tril, ndim=2)
        check_scale_tril("scale_tril", factor)
        self._init_checked(matrix, offset, factor)

    def _init_checked(self, matrix: ArrayLike, offset: ArrayLike, factor: FloatArray) -> None:
        a = as_real_array("matrix", matrix, ndim=2)
        k = factor.shape[0]
        if a.shape[0] != k or a.shape[1] == 0:
            raise InvalidInputError(
                f"matrix must have shape (K, D) with K = {k} to match the covariance and "
                f"D >= 1; got shape {describe_shape(a.shape)}"
            )
        c = as_real_array("offset", offset, ndim=1)
        check_shape("offset", c, (k,), "(K,)")
        self._matrix = freeze(a)
        self._offset = freeze(c)
        self._scale_tril = freeze(factor)

    @classmethod
    def from_covariance(
        cls, *, matrix: ArrayLike, offset: ArrayLike, cov: ArrayLike
    ) -> LinearEncoder:
        """An encoder whose shared covariance is given as a matrix."""
        self = cls.__new__(cls)
        self._init_checked(matrix, offset, cholesky("cov", as_real_array("cov", cov, ndim=2)))
        return self

    @property
    def matrix(self) -> FloatArray:
        """:math:`A`, shape ``(K, D)``."""
        return self._matrix

    @property
    def offset(self) -> FloatArray:
        """:math:`c`, shape ``(K,)``."""
        return self._offset

    @property
    def scale_tril(self) -> FloatArray:
        """Lower Cholesky factor of the shared covariance, shape ``(K, K)``."""
        return self._scale_tril

    @property
    def cov(self) -> FloatArray:
        """The shared covariance, shape ``(K, K)`` (read-only)."""
        product = self._scale_tril @ self._scale_tril.T
        return freeze(0.5 * product + 0.5 * product.T)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Copies and pickles are rebuilt through the constructor (validated and frozen)."""
        return (_rebuild_encoder, (self._matrix, self._offset, self._scale_tril))

    @property
    def latent_dim(self) -> int:
        """``K``."""
        return int(self._matrix.shape[0])

    @property
    def data_dim(self) -> int:
        """``D``."""
        return int(self._matrix.shape[1])

    def __repr__(self) -> str:
        return f"LinearEncoder(data_dim={self.data_dim}, latent_dim={self.latent_dim})"

    def __call__(self, x: ArrayLike) -> Gaussian:
        """:math:`q(z\\mid x)` for one row or a batch of rows (a batched Gaussian)."""
        data = as_event_array("x", x, self.data_dim, "D")
        return Gaussian._trusted(data @ self._matrix.T + self._offset, self._scale_tril)


# ---------------------------------------------------------------------- the model's side
def check_encoder(encoder: Any, data_dim: int, latent_dim: int) -> LinearEncoder:
    """``encoder`` if it is a :class:`LinearEncoder` from ``data_dim`` to ``latent_dim``."""
    if not isinstance(encoder, LinearEncoder):
        raise InvalidTypeError(f"encoder must be a LinearEncoder; got {type(encoder).__name__}")
    if (encoder.data_dim, encoder.latent_dim) != (data_dim, latent_dim):
        raise InvalidInputError(
            f"encoder must map D = {data_dim} to K = {latent_dim} dimensions; "
            f"got D = {encoder.data_dim}, K = {encoder.latent_dim}"
        )
    return encoder


def encoder_gradients(
    mean_grads: FloatArray, factor_grads: FloatArray, data: FloatArray
) -> EncoderGradients:
    r"""The chain rule through :math:`m_n = Ax_n + c`, from per-row gradients.

    :math:`\nabla_A = \sum_n g_n x_n^\top`, :math:`\nabla_c = \sum_n g_n`, and
    :math:`\nabla_L` the sum of the per-row factor gradients; ``data`` is ``(N, D)``.
    """
    return EncoderGradients(
        matrix=mean_grads.T @ data,
        offset=mean_grads.sum(axis=0),
        scale_tril=factor_grads.sum(axis=0),
    )


def optimal_encoder(marginal: MarginalFactorization) -> LinearEncoder:
    """The encoder whose q(z|x) is the exact posterior, from the marginal's factors.

    ``m(x) = mu0 + (L0 R^{-1}) Q1^T Psi^{-1/2} (x - xbar)``, so ``A = L0 R^{-1}
    (Psi^{-T/2} Q1)^T`` and ``c = mu0 - A xbar``; the covariance is the posterior's.
    """
    projected = marginal.noise.whiten_columns_transposed(marginal.basis)  # Psi^{-T/2} Q1
    matrix = marginal.posterior_map @ projected.T
    offset = marginal.prior.mean - matrix @ marginal.mean
    encoder = LinearEncoder.__new__(LinearEncoder)
    encoder._init_checked(matrix, offset, np.array(marginal.posterior_scale_tril))
    return encoder
