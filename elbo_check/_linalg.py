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
    "batched_cholesky",
    "check_scale_tril",
    "cholesky",
    "gram_diag_log_term",
    "logdet_from_tril",
    "logdets_from_tril",
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


def check_square(name: str, matrix: FloatArray, *, batched: bool = False) -> None:
    """Raise unless ``matrix`` is a non-empty square 2-d array (or, when ``batched``, a
    batch of them, shape ``(..., K, K)``)."""
    if matrix.ndim < 2 or (matrix.ndim > 2 and not batched) or matrix.shape[-1] != matrix.shape[-2]:
        wanted = "a square matrix"
        if batched:
            wanted += " or a batch of them, shape (..., K, K)"
        raise InvalidInputError(
            f"{name} must be {wanted}; got shape {describe_shape(matrix.shape)}"
        )
    if matrix.shape[-1] == 0:
        raise InvalidInputError(
            f"{name} must have at least one row; got shape {describe_shape(matrix.shape)}"
        )


def _members(name: str, matrix: FloatArray) -> list[tuple[str, FloatArray]]:
    """``(name[i, j], member)`` for every matrix of a batch ``(..., K, K)``."""
    return [
        (f"{name}[{', '.join(map(str, index))}]", matrix[index])
        for index in np.ndindex(*matrix.shape[:-2])
    ]


def batched_cholesky(name: str, matrix: FloatArray) -> FloatArray:
    """:func:`cholesky` of each matrix of a batch ``(..., K, K)`` (or of one matrix).

    The valid case is vectorised; when any member fails, the first failing one is
    reported by its index (``cov[3] must be symmetric positive definite; ...``).
    """
    check_square(name, matrix, batched=True)
    if matrix.ndim == 2:
        return cholesky(name, matrix)
    scale = np.max(np.abs(matrix), axis=(-2, -1))
    asymmetry = np.max(np.abs(matrix - np.swapaxes(matrix, -1, -2)), axis=(-2, -1))
    factor = None
    if np.all(asymmetry <= SYMMETRY_RTOL * scale):
        symmetric = 0.5 * (matrix + np.swapaxes(matrix, -1, -2))
        try:
            factor = np.linalg.cholesky(symmetric)
        except np.linalg.LinAlgError:
            factor = None
    if factor is not None:
        diagonal = np.diagonal(factor, axis1=-2, axis2=-1)
        if np.all(diagonal > 0) and np.all(np.isfinite(factor)):
            return np.ascontiguousarray(factor)
    for member_name, member in _members(name, matrix):
        cholesky(member_name, member)  # raises for the first invalid member
    raise InvalidInputError(f"{name} must be a batch of symmetric positive-definite matrices")


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

    A batch ``(..., K, K)`` is checked member by member; the first bad one is named.

    An entry above the diagonal is reported rather than ignored: it is the signature
    of a transposed (upper) Cholesky factor, one of the bugs this package hunts.
    """
    check_square(name, factor, batched=True)
    if factor.ndim > 2:
        upper_entries = np.any(np.triu(factor, k=1) != 0, axis=(-2, -1))
        positive = np.all(np.diagonal(factor, axis1=-2, axis2=-1) > 0, axis=-1)
        if np.all(positive & ~upper_entries):
            return
        for member_name, member in _members(name, factor):
            check_scale_tril(member_name, member)
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


def logdets_from_tril(factor: FloatArray) -> FloatArray:
    """``log det(L @ L.T)`` as ``2 * sum(log(diag(L)))`` for each factor of ``(..., K, K)``."""
    diagonal = np.diagonal(factor, axis1=-2, axis2=-1)
    result: FloatArray = 2.0 * np.sum(np.log(diagonal), axis=-1)
    return result


def logdet_from_tril(factor: FloatArray) -> float:
    """:func:`logdets_from_tril` of one ``(K, K)`` factor, as a float."""
    return float(logdets_from_tril(factor))


def _substitute(factor: FloatArray, rhs: FloatArray, trans: bool) -> FloatArray:
    """Forward (or, for ``trans``, backward) substitution vectorised over batch axes.

    ``factor`` has shape ``(..., K, K)``, ``rhs`` ``(..., K, n)``; their batch axes
    broadcast. The K steps are the textbook recurrence, so the result is backward
    stable like LAPACK's ``trsm``, and ``L^{-1} L`` is exactly the identity.
    """
    k = factor.shape[-1]
    batch = np.broadcast_shapes(factor.shape[:-2], rhs.shape[:-2])
    lower = np.broadcast_to(factor, (*batch, k, k))
    if trans:
        lower = np.swapaxes(lower, -1, -2)  # upper triangular: substitute backwards
    out = np.empty((*batch, k, rhs.shape[-1]))
    right = np.broadcast_to(rhs, out.shape)
    order = range(k - 1, -1, -1) if trans else range(k)
    for i in order:
        done = slice(i + 1, k) if trans else slice(0, i)
        known = np.einsum("...j,...jn->...n", lower[..., i, done], out[..., done, :])
        out[..., i, :] = (right[..., i, :] - known) / lower[..., i, i, None]
    return out


def solve_tril(factor: FloatArray, rhs: FloatArray, *, trans: bool = False) -> FloatArray:
    """Solve ``L @ X = rhs`` (or ``L.T @ X = rhs`` when ``trans``) for lower ``L``.

    ``factor`` is ``(K, K)`` or a batch ``(..., K, K)``; ``rhs`` is ``(K,)``, ``(K, n)``
    or a batch ``(..., K, n)`` broadcasting against it. One factor solves a batch of
    right-hand sides in a single LAPACK call.
    """
    if factor.ndim == 2 and rhs.ndim <= 2:
        result: FloatArray = scipy.linalg.solve_triangular(
            factor, rhs, lower=True, trans=1 if trans else 0, check_finite=False
        )
        return result
    if factor.ndim == 2:
        k, n = rhs.shape[-2:]
        columns = np.moveaxis(rhs, -2, 0).reshape(k, -1)  # (K, batch * n)
        solved = solve_tril(factor, columns, trans=trans)
        return np.moveaxis(solved.reshape(k, *rhs.shape[:-2], n), 0, -2)
    return _substitute(factor, rhs if rhs.ndim > 1 else rhs[:, None], trans)


def solve_tril_rows(factor: FloatArray, rows: FloatArray) -> FloatArray:
    """Apply ``L^{-1}`` to every vector along the last axis of ``rows`` (any batch shape).

    With a batch of factors ``(..., K, K)``, member ``i`` of the broadcast batch uses
    factor ``i``.
    """
    k = factor.shape[-1]
    if factor.ndim == 2:
        flat = rows.reshape(-1, k)
        solved = solve_tril(factor, flat.T).T
        return np.ascontiguousarray(solved).reshape(rows.shape)
    result: FloatArray = _substitute(factor, rows[..., None], trans=False)[..., 0]
    return result


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
