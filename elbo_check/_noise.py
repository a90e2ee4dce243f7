"""The observation-noise covariance Psi, one representation per class.

``noise_cov`` may be a positive scalar (isotropic, ``sigma**2 * I``), a vector of
positive variances (diagonal, as in factor analysis) or a full symmetric
positive-definite matrix. Each is its own subclass of :class:`NoiseCovariance`, built
by :meth:`~NoiseCovariance.from_scalar`, :meth:`~NoiseCovariance.from_diagonal` or
:meth:`~NoiseCovariance.from_dense` (the pattern of :class:`scipy.stats.Covariance`);
:meth:`~NoiseCovariance.from_value` picks one from the shape of a user's value, and
that is the only place the three are told apart. Isotropic and diagonal noise never
build a ``(D, D)`` matrix; "whitening" means applying ``Psi^{-1/2}`` (for dense noise
``L^{-1}`` with ``Psi = L L^T``) to vectors along the last axis.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from ._errors import InvalidInputError
from ._linalg import cholesky, logdet_from_tril, solve_tril
from ._validation import as_real_array, check_positive, describe_shape, freeze

__all__ = ["DenseNoise", "DiagonalNoise", "IsotropicNoise", "NoiseCovariance"]

FloatArray = NDArray[np.float64]


class NoiseCovariance(ABC):
    """Psi, validated and factored once; every representation has this interface.

    Attributes
    ----------
    kind : str
        ``"isotropic"``, ``"diagonal"`` or ``"full"`` (the model's ``noise_kind``).
    dim : int
        ``D``.
    logdet : float
        ``log det Psi``.
    """

    kind: ClassVar[str]
    dim: int
    logdet: float

    # ------------------------------------------------------------------ construction
    @staticmethod
    def from_value(value: Any, dim: int, name: str = "noise_cov") -> NoiseCovariance:
        """The representation a user's value asks for: a scalar, ``(D,)`` or ``(D, D)``."""
        array = as_real_array(name, value, ndim=(0, 1, 2))
        if array.ndim == 0:
            return IsotropicNoise.from_scalar(float(array), dim, name)
        if array.ndim == 1:
            if array.shape != (dim,):
                raise InvalidInputError(
                    f"{name} given as variances must have shape (D,) = ({dim},); "
                    f"got shape {describe_shape(array.shape)}"
                )
            return DiagonalNoise.from_diagonal(array, name)
        if array.shape != (dim, dim):
            raise InvalidInputError(
                f"{name} given as a matrix must have shape (D, D) = ({dim}, {dim}); "
                f"got shape {describe_shape(array.shape)}"
            )
        return DenseNoise.from_dense(array, name)

    @staticmethod
    def from_scalar(variance: float, dim: int, name: str = "noise_cov") -> IsotropicNoise:
        """Isotropic noise ``variance * I`` in ``dim`` dimensions."""
        return IsotropicNoise(variance, dim, name)

    @staticmethod
    def from_diagonal(variances: Any, name: str = "noise_cov") -> DiagonalNoise:
        """Independent noise with the given positive variances, shape ``(D,)``."""
        return DiagonalNoise(variances, name)

    @staticmethod
    def from_dense(matrix: Any, name: str = "noise_cov") -> DenseNoise:
        """Noise with a symmetric positive-definite ``(D, D)`` covariance."""
        return DenseNoise(matrix, name)

    # ------------------------------------------------------------------ queries
    @property
    @abstractmethod
    def given(self) -> Any:
        """Psi as the user gave it: a float, ``(D,)`` variances or a ``(D, D)`` matrix."""

    @property
    @abstractmethod
    def variances(self) -> FloatArray:
        """``diag(Psi)``, shape ``(D,)`` (read-only)."""

    @abstractmethod
    def dense(self) -> FloatArray:
        """Psi as a ``(D, D)`` matrix (builds it: O(D^2) memory)."""

    @abstractmethod
    def scale_tril(self) -> FloatArray:
        """A lower Cholesky factor of Psi as a dense ``(D, D)`` matrix."""

    # ------------------------------------------------------------------ operations
    @abstractmethod
    def whiten(self, rows: FloatArray) -> FloatArray:
        """``Psi^{-1/2} r`` for every vector ``r`` along the last axis of ``rows``."""

    @abstractmethod
    def whiten_offsets(self, rows: FloatArray, centre: FloatArray, out: FloatArray) -> FloatArray:
        """``Psi^{-1/2} (r - centre)`` for 2-d ``rows``, in the buffer ``out`` when possible."""

    @abstractmethod
    def whiten_columns(self, matrix: FloatArray) -> FloatArray:
        """``Psi^{-1/2} M`` for a ``(D, n)`` matrix ``M``."""

    @abstractmethod
    def whiten_columns_transposed(self, matrix: FloatArray) -> FloatArray:
        """``Psi^{-T/2} M`` for a ``(D, n)`` matrix ``M`` (``L^{-T} M`` for dense noise)."""

    @abstractmethod
    def solve(self, rows: FloatArray) -> FloatArray:
        """``Psi^{-1} r`` for every vector ``r`` along the last axis of ``rows``."""

    @abstractmethod
    def sample(self, n: int, generator: np.random.Generator) -> FloatArray:
        """``n`` draws from ``N(0, Psi)``, shape ``(n, D)``."""

    @abstractmethod
    def gradient(
        self, solved: FloatArray, spread: FloatArray, solved_weights: FloatArray, count: int
    ) -> Any:
        r"""The gradient of a sum of ``count`` expected log-likelihoods with respect to Psi.

        As a matrix it is :math:`G = \tfrac12(A - n\Psi^{-1})` with
        :math:`A = \Psi^{-1}(\sum_n r_n r_n^\top + W S W^\top)\Psi^{-1}` given as
        ``solved.T @ solved + spread @ solved_weights.T`` (``solved`` the rows
        :math:`\Psi^{-1}r_n`, ``spread`` :math:`\Psi^{-1}WS`, ``solved_weights``
        :math:`\Psi^{-1}W`). Returned in the representation's own parameters: the
        matrix, its diagonal, or its trace.
        """


class _ElementwiseNoise(NoiseCovariance):
    """Noise whose whitening is an elementwise product: isotropic and diagonal."""

    _root: FloatArray  # sqrt of the variances, shape (D,)
    # 1 / _root, multiplied in when whitening: one more rounding than dividing by the
    # root, but a multiply streams at memory speed where a divide does not.
    _inverse_root: float | FloatArray

    @property
    def variances(self) -> FloatArray:
        return freeze(self._root**2)

    def dense(self) -> FloatArray:
        return np.diag(self._root**2)

    def scale_tril(self) -> FloatArray:
        return np.diag(self._root)

    def whiten(self, rows: FloatArray) -> FloatArray:
        return rows / self._root

    def whiten_offsets(self, rows: FloatArray, centre: FloatArray, out: FloatArray) -> FloatArray:
        np.subtract(rows, centre, out=out)
        np.multiply(out, self._inverse_root, out=out)
        return out

    def whiten_columns(self, matrix: FloatArray) -> FloatArray:
        return matrix / self._root[:, None]

    def whiten_columns_transposed(self, matrix: FloatArray) -> FloatArray:
        return self.whiten_columns(matrix)

    def solve(self, rows: FloatArray) -> FloatArray:
        return rows / self._root**2

    def sample(self, n: int, generator: np.random.Generator) -> FloatArray:
        return generator.standard_normal((n, self.dim)) * self._root

    def _diagonal_gradient(
        self, solved: FloatArray, spread: FloatArray, solved_weights: FloatArray, count: int
    ) -> FloatArray:
        """The diagonal of the matrix gradient, without building it."""
        result: FloatArray = 0.5 * (
            np.sum(solved**2, axis=0)
            + np.einsum("ij,ij->i", spread, solved_weights)
            - count / self._root**2
        )
        return result


class IsotropicNoise(_ElementwiseNoise):
    """``sigma**2 * I``: one positive variance."""

    kind = "isotropic"

    def __init__(self, variance: float, dim: int, name: str = "noise_cov") -> None:
        check_positive(name, np.asarray(variance, dtype=np.float64), "a positive variance")
        self.dim = dim
        self._variance = float(variance)
        self._root = freeze(np.full(dim, math.sqrt(self._variance)))
        self._inverse_root = 1.0 / math.sqrt(self._variance)
        self.logdet = dim * math.log(self._variance)

    @property
    def given(self) -> float:
        return self._variance

    def gradient(
        self, solved: FloatArray, spread: FloatArray, solved_weights: FloatArray, count: int
    ) -> float:
        return float(np.sum(self._diagonal_gradient(solved, spread, solved_weights, count)))


class DiagonalNoise(_ElementwiseNoise):
    """``diag(psi)``: independent coordinates with positive variances."""

    kind = "diagonal"

    def __init__(self, variances: Any, name: str = "noise_cov") -> None:
        array = as_real_array(name, variances, ndim=1)
        if array.size == 0:
            raise InvalidInputError(f"{name} must have at least one variance; got shape (0,)")
        check_positive(name, array, "positive (variances)")
        self.dim = int(array.shape[0])
        self._given = freeze(array)
        self._root = freeze(np.sqrt(array))
        self._inverse_root = freeze(1.0 / self._root)
        self.logdet = float(np.sum(np.log(array)))

    @property
    def given(self) -> FloatArray:
        return self._given

    def gradient(
        self, solved: FloatArray, spread: FloatArray, solved_weights: FloatArray, count: int
    ) -> FloatArray:
        return self._diagonal_gradient(solved, spread, solved_weights, count)


class DenseNoise(NoiseCovariance):
    """A full symmetric positive-definite ``Psi = L L^T``, kept as its Cholesky factor."""

    kind = "full"

    def __init__(self, matrix: Any, name: str = "noise_cov") -> None:
        array = as_real_array(name, matrix, ndim=2)
        self._factor = freeze(cholesky(name, array))
        self.dim = int(array.shape[0])
        self._given = freeze(array)
        self.logdet = logdet_from_tril(self._factor)

    @property
    def given(self) -> FloatArray:
        return self._given

    @property
    def variances(self) -> FloatArray:
        return freeze(np.einsum("ij,ij->i", self._factor, self._factor))

    def dense(self) -> FloatArray:
        product = self._factor @ self._factor.T
        return 0.5 * (product + product.T)

    def scale_tril(self) -> FloatArray:
        return np.array(self._factor)

    def whiten(self, rows: FloatArray) -> FloatArray:
        flat = rows.reshape(-1, self.dim)
        return np.ascontiguousarray(solve_tril(self._factor, flat.T).T).reshape(rows.shape)

    def whiten_offsets(self, rows: FloatArray, centre: FloatArray, out: FloatArray) -> FloatArray:
        np.subtract(rows, centre, out=out)
        return np.ascontiguousarray(solve_tril(self._factor, out.T).T)

    def whiten_columns(self, matrix: FloatArray) -> FloatArray:
        return solve_tril(self._factor, matrix)

    def whiten_columns_transposed(self, matrix: FloatArray) -> FloatArray:
        return solve_tril(self._factor, matrix, trans=True)

    def solve(self, rows: FloatArray) -> FloatArray:
        flat = rows.reshape(-1, self.dim).T
        solved = solve_tril(self._factor, solve_tril(self._factor, flat), trans=True)
        return np.ascontiguousarray(solved.T).reshape(rows.shape)

    def sample(self, n: int, generator: np.random.Generator) -> FloatArray:
        standard = generator.standard_normal((n, self.dim))
        return standard @ self._factor.T

    def gradient(
        self, solved: FloatArray, spread: FloatArray, solved_weights: FloatArray, count: int
    ) -> FloatArray:
        precision = self.solve(np.eye(self.dim))
        outer = solved.T @ solved + spread @ solved_weights.T
        result: FloatArray = 0.5 * (outer - count * precision)
        return 0.5 * (result + result.T)
