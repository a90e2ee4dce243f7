"""The few numerical kernels everything else is built from.

All covariance work goes through a lower Cholesky factor ``L`` with a positive
diagonal: log-determinants are ``2 * sum(log(diag(L)))``, whitening and Mahalanobis
terms are triangular solves, and nothing ever calls ``inv`` or ``det``.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from numpy.typing import NDArray

from ._errors import InvalidInputError
from ._validation import describe_shape

__all__ = [
    "SYMMETRY_RTOL",
    "check_scale_tril",
    "cholesky",
    "gram_diag_log_term",
    "logdet_from_tril",
    "solve_tril",
    "solve_tril_rows",
    "tril_of_gram",
]

FloatArray = NDArray[np.float64]

#: A matrix ``A`` counts as symmetric when ``max|A - A.T| <= SYMMETRY_RTOL * max|A|``.
#: Products such as ``W @ S @ W.T`` computed in float64 are asymmetric at the level of
#: a few ulps; anything larger is a bug in the caller (a transposed factor, a
#: one-sided update) and is reported rather than silently symmetrised.
SYMMETRY_RTOL = 1e-10


def check_square(name: str, matrix: FloatArray) -> None:
    """Raise unless ``matrix`` is a non-empty square 2-d array."""
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise InvalidInputError(
            f"{name} must be a square matrix; got shape {describe_shape(matrix.shape)}"
        )
    if matrix.shape[0] == 0:
        raise InvalidInputError(f"{name} must have at least one row; got shape (0, 0)")


def cholesky(name: str, matrix: FloatArray) -> FloatArray:
    """Lower Cholesky factor of a symmetric positive-definite ``matrix``.

    The input is symmetrised (after the :data:`SYMMETRY_RTOL` check) so that the
    factor does not depend on which triangle the caller happened to round.

    Raises
    ------
    InvalidInputError
        If ``matrix`` is not square, not symmetric, or not positive definite; the
        message names ``name`` and shows the asymmetry or the smallest eigenvalue.
    """
    check_square(name, matrix)
    scale = float(np.max(np.abs(matrix)))
    asymmetry = float(np.max(np.abs(matrix - matrix.T)))
    if asymmetry > SYMMETRY_RTOL * scale:
        raise InvalidInputError(
            f"{name} must be symmetric; largest |{name} - {name}.T| is {asymmetry:.3g} "
            f"while largest |{name}| is {scale:.3g}"
        )
    symmetric = 0.5 * (matrix + matrix.T)
    try:
        factor = scipy.linalg.cholesky(symmetric, lower=True, check_finite=False)
    except np.linalg.LinAlgError as err:
        smallest = float(np.linalg.eigvalsh(symmetric)[0])
        raise InvalidInputError(
            f"{name} must be symmetric positive definite; smallest eigenvalue {smallest:.3g}"
        ) from err
    diagonal = np.diagonal(factor)
    if not np.all(diagonal > 0) or not np.all(np.isfinite(factor)):
        smallest = float(np.linalg.eigvalsh(symmetric)[0])
        raise InvalidInputError(
            f"{name} must be symmetric positive definite; smallest eigenvalue {smallest:.3g}"
        )
    return np.ascontiguousarray(factor)


def check_scale_tril(name: str, factor: FloatArray) -> None:
    """Raise unless ``factor`` is square, lower triangular, with a positive diagonal.

    An entry above the diagonal is reported rather than ignored: it is the signature
    of a transposed (upper) Cholesky factor, one of the bugs this package hunts.
    """
    check_square(name, factor)
    upper = np.triu(factor, k=1)
    if np.any(upper != 0):
        i, j = np.unravel_index(int(np.argmax(np.abs(upper))), upper.shape)
        raise InvalidInputError(
            f"{name} must be lower triangular (a transposed, upper factor is a common bug); "
            f"found {upper[i, j]:.3g} above the diagonal at index ({i}, {j})"
        )
    diagonal = np.diagonal(factor)
    if not np.all(diagonal > 0):
        index = int(np.argmin(diagonal))
        raise InvalidInputError(
            f"{name} must have a strictly positive diagonal; smallest diagonal entry "
            f"{diagonal[index]:.3g} at index {index}"
        )


def logdet_from_tril(factor: FloatArray) -> float:
    """``log det(L @ L.T)`` as ``2 * sum(log(diag(L)))``."""
    return float(2.0 * np.sum(np.log(np.diagonal(factor))))


def solve_tril(factor: FloatArray, rhs: FloatArray, *, trans: bool = False) -> FloatArray:
    """Solve ``L @ X = rhs`` (or ``L.T @ X = rhs`` when ``trans``) for lower ``L``."""
    result: FloatArray = scipy.linalg.solve_triangular(
        factor, rhs, lower=True, trans=1 if trans else 0, check_finite=False
    )
    return result


def solve_tril_rows(factor: FloatArray, rows: FloatArray) -> FloatArray:
    """Apply ``L^{-1}`` to every vector along the last axis of ``rows`` (any batch shape)."""
    k = factor.shape[0]
    flat = rows.reshape(-1, k)
    solved = solve_tril(factor, flat.T).T
    return np.ascontiguousarray(solved).reshape(rows.shape)


def tril_of_gram(matrix: FloatArray) -> FloatArray:
    """Lower-triangular ``L`` with a positive diagonal and ``L @ L.T == B @ B.T``.

    Computed from a QR factorisation of ``B.T`` so that the Gram matrix ``B @ B.T``
    is never formed: its condition number is the square of ``B``'s.
    """
    r = scipy.linalg.qr(matrix.T, mode="r", check_finite=False)[0]
    k = matrix.shape[0]
    r = r[:k, :k]
    signs = np.where(np.diagonal(r) < 0, -1.0, 1.0)
    return np.ascontiguousarray((signs[:, None] * r).T)


#: Below this |d| the series of d - log1p(d) is used; its first omitted term is
#: |d|**(SERIES_TERMS + 1) / (SERIES_TERMS + 1) relative to d**2 / 2, i.e. below 1e-17.
SERIES_LIMIT = 0.1
SERIES_TERMS = 18


def gram_diag_log_term(diagonal: FloatArray) -> FloatArray:
    """``a**2 - 1 - 2*log(a)`` for ``a > 0``, to a few ulps of its value, never negative.

    This is the per-dimension contribution of a triangular factor's diagonal to
    ``tr(M M^T) - K - log det(M M^T)``. With ``d = (a - 1)(a + 1)`` it equals
    ``d - log1p(d)``: for ``|d| < SERIES_LIMIT`` that difference is summed as its
    alternating series ``sum_{n>=2} (-d)**n / n`` (no cancellation, so a KL near zero is
    accurate in relative terms), near ``a = 1`` it is evaluated directly, and away from
    1 the textbook form is used because ``1 + d`` would lose the digits of a tiny ``a``.
    """
    a = np.asarray(diagonal, dtype=np.float64)
    d = (a - 1.0) * (a + 1.0)
    near_one = np.abs(a - 1.0) <= 0.5
    safe_d = np.where(near_one, d, 0.0)
    safe_a = np.where(near_one, 1.0, a)
    result = np.where(near_one, safe_d - np.log1p(safe_d), d - 2.0 * np.log(safe_a))
    tiny = np.abs(d) < SERIES_LIMIT
    if np.any(tiny):
        t = d[tiny]
        series = np.zeros_like(t)
        for n in range(SERIES_TERMS, 1, -1):  # Horner in -t: sum_{n>=2} (-t)^n / n
            series = (series + 1.0 / n) * (-t)
        result[tiny] = series * (-t)
    return np.asarray(result, dtype=np.float64)
