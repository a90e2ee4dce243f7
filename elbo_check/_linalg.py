"""The few numerical kernels everything else is built from.

All covariance work goes through a lower Cholesky factor ``L`` with a positive
diagonal: log-determinants are ``2 * sum(log(diag(L)))``, whitening and Mahalanobis
terms are triangular solves, and nothing ever calls ``inv`` or ``det``.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import scipy.linalg.lapack
from numpy.typing import NDArray

from ._errors import InvalidInputError
from ._validation import describe_shape

__all__ = [
    "SINGULAR_CONDITION",
    "SYMMETRY_RTOL",
    "batched_cholesky",
    "check_scale_tril",
    "cholesky",
    "condition_limit",
    "gram_diag_log_term",
    "logdet_from_tril",
    "logdets_from_tril",
    "solve_tril",
    "solve_tril_rows",
    "symmetric_part",
    "tril_of_gram",
]

FloatArray = NDArray[np.float64]

#: A matrix ``A`` counts as symmetric when, for every entry,
#: ``|A[i, j] - A[j, i]| <= SYMMETRY_RTOL * sqrt(A[i, i] * A[j, j])``. The bound is
#: relative to the diagonal because a positive-definite matrix has
#: ``|A[i, j]| <= sqrt(A[i, i] * A[j, j])``: it is the natural scale of entry ``(i, j)``
#: whatever the scales of the other rows (a test relative to ``max|A|`` would let a
#: large variance hide an asymmetry of order one in a small block). Products such as
#: ``W @ S @ W.T`` computed in float64 are asymmetric at the level of a few ulps of
#: that scale; anything larger is a bug in the caller (a transposed factor, a
#: one-sided update) and is reported rather than silently symmetrised.
SYMMETRY_RTOL = 1e-10

#: A symmetric positive-definite ``A`` of order ``K`` is rejected as numerically
#: singular when the (estimated, 1-norm) condition number of its unit-diagonal scaling
#: ``H = D^{-1/2} A D^{-1/2}``, ``D = diag(A)``, exceeds ``SINGULAR_CONDITION / K``,
#: i.e. ``1 / (K * eps)`` with ``eps = 2.2e-16`` (``1.5e15`` for ``K = 3``).
#:
#: The accuracy of a Cholesky factor is governed by ``cond(H)``, not ``cond(A)``
#: (van der Sluis 1969; Demmel 1989): the computed factor is the exact factor of
#: ``A + E`` with ``|E[i, j]| <= c K eps sqrt(A[i, i] A[j, j])``, so
#: ``diag(1, 1e-17)`` and ``diag(1e-160, 1e160)`` (``H = I``) are exactly determined,
#: while once ``K * eps * cond(H)`` reaches one that perturbation can move the
#: smallest eigenvalue of ``H`` to zero: the matrix is indistinguishable from a
#: singular one, and its log-determinant and inverse are noise. ``cond(H)`` is
#: estimated in O(K^2) from the factor ``L_H = D^{-1/2} L`` by LAPACK's ``dpocon``.
SINGULAR_CONDITION = 1.0 / float(np.finfo(np.float64).eps)


def condition_limit(k: int) -> float:
    """Largest accepted condition number of the unit-diagonal scaling of a ``K x K``
    matrix: ``SINGULAR_CONDITION / K`` (see :data:`SINGULAR_CONDITION`)."""
    return SINGULAR_CONDITION / k


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


def _member_name(name: str, index: tuple[int, ...]) -> str:
    """``name`` for a single matrix, ``name[3]`` or ``name[1, 2]`` for a batch member."""
    return f"{name}[{', '.join(map(str, index))}]" if index else name


def _members(name: str, matrix: FloatArray) -> list[tuple[str, FloatArray]]:
    """``(name[i, j], member)`` for every matrix of a batch ``(..., K, K)``."""
    return [(_member_name(name, index), matrix[index]) for index in np.ndindex(*matrix.shape[:-2])]


def _product_text(mantissa: float, scale: float) -> str:
    """``mantissa * scale`` formatted with 3 digits, or left unevaluated if it overflows
    (a message about a finite input never shows ``inf``)."""
    value = mantissa * scale
    return f"{value:.3g}" if math.isfinite(value) else f"{mantissa:.3g} * {scale:.3g}"


def _eigenvalue_text(matrix: FloatArray) -> str:
    """The smallest eigenvalue of a symmetric ``matrix`` whose Cholesky factorisation
    failed, formatted without overflow.

    The eigenvalues are computed for ``matrix / max|matrix|`` (no entry can overflow)
    and scaled back. A non-negative smallest eigenvalue (of a matrix that is singular
    to working precision) is said to be so, rather than shown as if it were the reason.
    """
    scale = float(np.max(np.abs(matrix)))
    smallest = float(np.linalg.eigvalsh(matrix / scale)[0]) if scale > 0 else 0.0
    text = _product_text(smallest, scale)
    if smallest >= 0:
        return f"smallest eigenvalue {text}, zero to rounding: it is numerically singular"
    return f"smallest eigenvalue {text}"


def symmetric_part(name: str, matrix: FloatArray) -> FloatArray:
    """Check that ``matrix`` (``(K, K)`` or a batch ``(..., K, K)``) can be symmetric
    positive definite and return its symmetric part, computed without overflow.

    Each diagonal entry must be positive (a positive-definite matrix has a positive
    diagonal) and each pair must satisfy the :data:`SYMMETRY_RTOL` test. The
    off-diagonal entries are averaged as ``0.5 * a + 0.5 * b`` (the same for either
    order, and finite for every finite input); the diagonal is kept exactly.

    Raises
    ------
    InvalidInputError
        Naming ``name`` (and the batch member), the index of the first bad diagonal
        entry, or the pair whose asymmetry is largest relative to its scale.
    """
    diagonal = np.diagonal(matrix, axis1=-2, axis2=-1)
    if not np.all(diagonal > 0):
        *member, i = (int(v) for v in np.argwhere(~(diagonal > 0))[0])
        label = _member_name(name, tuple(member))
        raise InvalidInputError(
            f"{label} must be symmetric positive definite; its diagonal entry "
            f"{label}[{i}, {i}] is {diagonal[(*member, i)]:.3g}, not positive"
        )
    halves = 0.5 * matrix
    transposed_halves = np.swapaxes(halves, -1, -2)
    half_gap = np.abs(halves - transposed_halves)  # |A - A.T| / 2: cannot overflow
    roots = np.sqrt(diagonal)
    with np.errstate(over="ignore"):  # inf: far beyond the tolerance, and rejected
        relative = 2.0 * (half_gap / roots[..., :, None] / roots[..., None, :])
    if not np.all(relative <= SYMMETRY_RTOL):
        worst = np.unravel_index(int(np.argmax(relative)), relative.shape)
        *member, i, j = (int(v) for v in worst)
        i, j = min(i, j), max(i, j)
        label = _member_name(name, tuple(member))
        largest = _product_text(float(np.max(half_gap[tuple(member)])), 2.0)
        gap = _product_text(float(half_gap[(*member, i, j)]), 2.0)
        ratio = float(relative[(*member, i, j)])
        seen = f"{ratio:.3g}" if math.isfinite(ratio) else f"more than {np.finfo(float).max:.2g}"
        raise InvalidInputError(
            f"{label} must be symmetric; largest |{label} - {label}.T| is {largest}; "
            f"|{label}[{i}, {j}] - {label}[{j}, {i}]| = {gap} is {seen} times "
            f"sqrt({label}[{i}, {i}] * {label}[{j}, {j}]), more than "
            f"SYMMETRY_RTOL = {SYMMETRY_RTOL:.3g}"
        )
    symmetric: FloatArray = halves + transposed_halves
    k = matrix.shape[-1]
    symmetric[..., np.arange(k), np.arange(k)] = diagonal
    return symmetric


def _check_resolvable(name: str, factor: FloatArray, symmetric: FloatArray) -> None:
    """Raise if ``symmetric`` (with lower Cholesky factor ``factor``; either may be a
    batch) is numerically singular: :data:`SINGULAR_CONDITION` explains the test."""
    k = factor.shape[-1]
    limit = condition_limit(k)
    roots = np.sqrt(np.diagonal(symmetric, axis1=-2, axis2=-1))
    scaled_factor = factor / roots[..., :, None]  # L_H = D^{-1/2} L: entries in [-1, 1]
    scaled = symmetric / roots[..., :, None] / roots[..., None, :]  # H, unit diagonal
    norms = np.max(np.sum(np.abs(scaled), axis=-2), axis=-1)  # ||H||_1, O(K^2)
    suspects: list[tuple[int, ...]] = list(np.ndindex(*factor.shape[:-2]))
    if factor.ndim > 2:
        # One vectorised screen instead of a LAPACK call per member: since
        # H^-1 = L_H^-T L_H^-1, cond_1(H) <= ||H||_1 ||L_H^-1||_1 ||L_H^-1||_inf. Only
        # members whose bound comes within a factor 2 of the limit are estimated.
        eye = np.broadcast_to(np.eye(k), scaled_factor.shape)
        with np.errstate(all="ignore"):  # an overflow makes the bound inf: estimated below
            inverse = np.abs(_substitute(scaled_factor, eye, trans=False))
            bound = norms * np.max(np.sum(inverse, axis=-2), -1) * np.max(np.sum(inverse, -1), -1)
        suspects = [tuple(int(i) for i in index) for index in np.argwhere(~(2 * bound < limit))]
    for index in suspects:
        member = np.asfortranarray(scaled_factor[index])
        rcond, info = scipy.linalg.lapack.dpocon(member, float(norms[index]), uplo="L")
        if info != 0:  # pragma: no cover - only for invalid arguments
            raise AssertionError(f"dpocon failed with info={info}")
        if rcond * limit >= 1.0:
            continue
        tiny = float(np.finfo(np.float64).tiny)
        seen = f"about {1.0 / rcond:.2g}" if rcond > tiny else "beyond the float64 range"
        raise InvalidInputError(
            f"{_member_name(name, index)} must be symmetric positive definite; it is "
            f"numerically singular: condition number of its unit-diagonal scaling {seen}, "
            f"more than the {limit:.2g} float64 can resolve for K = {k}"
        )


def batched_cholesky(name: str, matrix: FloatArray) -> FloatArray:
    """:func:`cholesky` of each matrix of a batch ``(..., K, K)`` (or of one matrix).

    The valid case is vectorised; when any member fails, the first failing one is
    reported by its index (``cov[3] must be symmetric positive definite; ...``).
    """
    check_square(name, matrix, batched=True)
    if matrix.ndim == 2:
        return cholesky(name, matrix)
    symmetric = symmetric_part(name, matrix)
    try:
        factor = np.asarray(np.linalg.cholesky(symmetric), dtype=np.float64)
    except np.linalg.LinAlgError:
        for member_name, member in _members(name, symmetric):
            cholesky(member_name, member)  # raises for the first invalid member
        raise  # pragma: no cover - every member factored on its own
    _check_factor(name, factor, symmetric)
    return np.ascontiguousarray(factor)


def _check_factor(name: str, factor: FloatArray, symmetric: FloatArray) -> None:
    """Raise unless ``factor`` (of ``symmetric``) is finite with a positive diagonal and
    ``symmetric`` is not numerically singular."""
    diagonal = np.diagonal(factor, axis1=-2, axis2=-1)
    if not (np.all(diagonal > 0) and np.all(np.isfinite(factor))):
        for index in np.ndindex(*factor.shape[:-2]):
            if not (np.all(diagonal[index] > 0) and np.all(np.isfinite(factor[index]))):
                raise InvalidInputError(
                    f"{_member_name(name, index)} must be symmetric positive definite; "
                    f"{_eigenvalue_text(symmetric[index])}"
                )
    _check_resolvable(name, factor, symmetric)


def cholesky(name: str, matrix: FloatArray) -> FloatArray:
    """Lower Cholesky factor of a symmetric positive-definite ``matrix``.

    The input is checked and symmetrised by :func:`symmetric_part`, so that the factor
    does not depend on which triangle the caller happened to round, and a numerically
    singular matrix is rejected (see :data:`SINGULAR_CONDITION`).

    Raises
    ------
    InvalidInputError
        If ``matrix`` is not square, not symmetric, not positive definite or
        numerically singular; the message names ``name`` and shows the offending
        entry, the smallest eigenvalue or the condition number.
    """
    check_square(name, matrix)
    symmetric = symmetric_part(name, matrix)
    try:
        factor = scipy.linalg.cholesky(symmetric, lower=True, check_finite=False)
    except np.linalg.LinAlgError as err:
        raise InvalidInputError(
            f"{name} must be symmetric positive definite; {_eigenvalue_text(symmetric)}"
        ) from err
    _check_factor(name, factor, symmetric)
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
