"""The observation-noise covariance Psi in its cheapest faithful representation.

``noise_cov`` may be a positive scalar (isotropic, ``sigma**2 * I``), a vector of
positive variances (diagonal, as in factor analysis) or a full symmetric
positive-definite matrix. Isotropic and diagonal noise never build a ``(D, D)``
matrix; "whitening" means applying ``Psi^{-1/2}`` (for full noise, ``L^{-1}`` with
``Psi = L L^T``) to vectors along the last axis.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from ._errors import InvalidInputError
from ._linalg import cholesky, logdet_from_tril, solve_tril
from ._validation import as_real_array, check_positive, describe_shape, freeze

__all__ = ["NoiseCovariance"]

FloatArray = NDArray[np.float64]
NoiseKind = Literal["isotropic", "diagonal", "full"]


class NoiseCovariance:
    """Psi, validated and factored once; the three kinds share one interface."""

    kind: NoiseKind
    _root: FloatArray  # sqrt of the variances (isotropic and diagonal kinds)
    _inverse_root: float | FloatArray  # 1 / _root: a scalar for isotropic noise
    _factor: FloatArray  # lower Cholesky factor (full kind)

    def __init__(self, value: Any, dim: int, name: str = "noise_cov") -> None:
        array = as_real_array(name, value, ndim=(0, 1, 2))
        self.dim = dim
        if array.ndim == 0:
            check_positive(name, array, "a positive variance")
            self.kind = "isotropic"
            self._variance = float(array)
            self._root = np.full(dim, math.sqrt(self._variance))
            self.logdet = dim * math.log(self._variance)
            self.given: float | FloatArray = self._variance
        elif array.ndim == 1:
            if array.shape != (dim,):
                raise InvalidInputError(
                    f"{name} given as variances must have shape (D,) = ({dim},); "
                    f"got shape {describe_shape(array.shape)}"
                )
            check_positive(name, array, "positive (variances)")
            self.kind = "diagonal"
            self._root = np.sqrt(array)
            self.logdet = float(np.sum(np.log(array)))
            self.given = freeze(array)
        else:
            if array.shape != (dim, dim):
                raise InvalidInputError(
                    f"{name} given as a matrix must have shape (D, D) = ({dim}, {dim}); "
                    f"got shape {describe_shape(array.shape)}"
                )
            self.kind = "full"
            self._factor = freeze(cholesky(name, array))
            self.logdet = logdet_from_tril(self._factor)
            self.given = freeze(array)
        if self.kind != "full":
            freeze(self._root)
            # Whitening multiplies by this (one more rounding than dividing by the root,
            # but a multiply streams at memory speed where a divide does not).
            self._inverse_root = (
                1.0 / math.sqrt(self._variance)
                if self.kind == "isotropic"
                else freeze(1.0 / self._root)
            )

    # --------------------------------------------------------------------- queries
    @cached_property
    def variances(self) -> FloatArray:
        """``diag(Psi)``, shape ``(D,)``."""
        if self.kind == "full":
            return freeze(np.einsum("ij,ij->i", self._factor, self._factor))
        return freeze(self._root**2)

    def dense(self) -> FloatArray:
        """Psi as a ``(D, D)`` matrix (builds it: O(D^2) memory)."""
        if self.kind == "full":
            product = self._factor @ self._factor.T
            return 0.5 * (product + product.T)
        return np.diag(self._root**2)

    def scale_tril(self) -> FloatArray:
        """A lower Cholesky factor of Psi as a dense ``(D, D)`` matrix."""
        if self.kind == "full":
            return np.array(self._factor)
        return np.diag(self._root)

    # ------------------------------------------------------------------ operations
    def whiten(self, rows: FloatArray) -> FloatArray:
        """``Psi^{-1/2} r`` for every vector ``r`` along the last axis of ``rows``."""
        if self.kind != "full":
            return rows / self._root
        flat = rows.reshape(-1, self.dim)
        return np.ascontiguousarray(solve_tril(self._factor, flat.T).T).reshape(rows.shape)

    def whiten_offsets(self, rows: FloatArray, centre: FloatArray, out: FloatArray) -> FloatArray:
        """``Psi^{-1/2} (r - centre)`` for 2-d ``rows``, in the buffer ``out`` when possible.

        For isotropic and diagonal noise this is two in-place passes and no allocation;
        full noise needs a triangular solve and returns a new array.
        """
        np.subtract(rows, centre, out=out)
        if self.kind != "full":
            np.multiply(out, self._inverse_root, out=out)
            return out
        return np.ascontiguousarray(solve_tril(self._factor, out.T).T)

    def whiten_columns(self, matrix: FloatArray) -> FloatArray:
        """``Psi^{-1/2} M`` for a ``(D, n)`` matrix ``M``."""
        if self.kind != "full":
            return matrix / self._root[:, None]
        return solve_tril(self._factor, matrix)

    def whiten_columns_transposed(self, matrix: FloatArray) -> FloatArray:
        """``Psi^{-T/2} M`` for a ``(D, n)`` matrix ``M`` (``L^{-T} M`` for full noise)."""
        if self.kind != "full":
            return matrix / self._root[:, None]
        return solve_tril(self._factor, matrix, trans=True)

    def solve(self, rows: FloatArray) -> FloatArray:
        """``Psi^{-1} r`` for every vector ``r`` along the last axis of ``rows``."""
        if self.kind != "full":
            return rows / self._root**2
        flat = rows.reshape(-1, self.dim).T
        solved = solve_tril(self._factor, solve_tril(self._factor, flat), trans=True)
        return np.ascontiguousarray(solved.T).reshape(rows.shape)

    def sample(self, n: int, generator: np.random.Generator) -> FloatArray:
        """``n`` draws from ``N(0, Psi)``, shape ``(n, D)``."""
        standard = generator.standard_normal((n, self.dim))
        if self.kind != "full":
            return standard * self._root
        return standard @ self._factor.T
