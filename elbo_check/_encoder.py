"""Amortised variational inference with a linear encoder (the linear VAE).

The encoder maps each observation to a Gaussian with a shared covariance,
:math:`q(z\\mid x) = \\mathcal N(Ax + c, S)`. In a linear-Gaussian model the exact
posterior has exactly this form, so the optimal encoder attains
:math:`\\sum_n \\log p(x_n)` — the setting studied by Lucas et al. (2019).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._errors import InvalidInputError
from ._gaussian import Gaussian
from ._linalg import check_scale_tril, cholesky
from ._validation import as_event_array, as_real_array, check_shape, describe_shape, freeze

__all__ = ["EncoderGradients", "LinearEncoder"]

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

    @cached_property
    def cov(self) -> FloatArray:
        """The shared covariance, shape ``(K, K)``."""
        product = self._scale_tril @ self._scale_tril.T
        return freeze(0.5 * (product + product.T))

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
