"""Doubled-precision arithmetic for the few places where cancellation demands it.

Error-free transformations turn a rounded floating-point operation into its rounded
value plus the exact rounding error: Knuth's TwoSum for a sum, Dekker's product from
Veltkamp's split for a product. Carrying those errors alongside gives results as
accurate as if computed in twice the working precision (Ogita, Rump & Oishi 2005),
at a cost of about 20 flops per product without a fused multiply-add.

References
----------
.. [1] T. Ogita, S. M. Rump and S. Oishi, "Accurate sum and dot product", SIAM J.
   Sci. Comput. 26(6), 2005.
.. [2] T. J. Dekker, "A floating-point technique for extending the available
   precision", Numer. Math. 18, 1971.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["minus_products", "split_halves", "two_sum"]

FloatArray = NDArray[np.float64]

#: Veltkamp's splitting constant ``2**27 + 1`` for float64 (53-bit significand).
VELTKAMP = 134217729.0


def split_halves(a: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Veltkamp's split ``a = high + low`` into halves of 26 bits: their products are exact.

    Overflows (to inf or nan) for ``|a|`` above about ``1e300``; callers keep their
    first result where the doubled one is not finite.
    """
    scaled = VELTKAMP * a
    high = scaled - (scaled - a)
    return high, a - high


def two_sum(a: FloatArray, b: FloatArray) -> tuple[FloatArray, FloatArray]:
    """``a + b`` and its rounding error, exactly (Knuth's TwoSum)."""
    total = a + b
    virtual = total - a
    return total, (a - (total - virtual)) + (b - virtual)


def minus_products(
    total: FloatArray,
    error: FloatArray,
    matrix: FloatArray,
    halves: tuple[FloatArray, FloatArray],
    vectors: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """``(total + error) - vectors @ matrix.T`` as an unevaluated pair ``(total, error)``.

    Dot2 of Ogita, Rump & Oishi: every product and every sum is split into its rounded
    value and its exact error (Dekker's product from the Veltkamp ``halves`` of
    ``matrix``, Knuth's TwoSum), the errors are summed apart, and ``total + error`` is
    as accurate as if computed in twice the working precision. ``matrix`` is ``(D, K)``,
    ``vectors`` ``(n, K)``; ``total`` and ``error`` broadcast to ``(n, D)``.
    """
    matrix_high, matrix_low = halves
    vector_high, vector_low = split_halves(vectors)
    error = np.array(np.broadcast_to(error, (vectors.shape[0], matrix.shape[0])))
    for j in range(matrix.shape[1]):
        a, a_high, a_low = matrix[:, j], matrix_high[:, j], matrix_low[:, j]
        b, b_high, b_low = vectors[:, j, None], vector_high[:, j, None], vector_low[:, j, None]
        product = b * a
        product_error = ((b_high * a_high - product) + b_low * a_high + b_high * a_low) + (
            b_low * a_low
        )
        total, sum_error = two_sum(total, -product)
        error += sum_error
        error -= product_error
    return total, error
