r"""A computable bound on the rounding error of :math:`\log p(x)`, per observation.

:math:`f(x) = \log p(x) = -\tfrac12\bigl(D\log 2\pi + \log\det C + M\bigr)` with
:math:`C = W\Sigma_0W^\top + \Psi` and :math:`M` the squared Mahalanobis distance of
:math:`x` from :math:`\bar x = W\mu_0 + b`. The bound is on the *forward* error: the
distance between the float64 result and the exact value of :math:`f` at the float64
inputs as given. It follows the route each row took (:mod:`elbo_check._marginal`) and the
standard model :math:`fl(a \circ b) = (a \circ b)(1 + \delta)`,
:math:`\lvert\delta\rvert \le \varepsilon` (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., SIAM 2002, ch. 3, 18 and 19):

.. math::
    E(x) = \tfrac12\bigl(\gamma\,A(x) + \gamma^2\,T(x)^2\bigr) + \gamma\,L
        + \varepsilon\lvert f(x)\rvert,
    \qquad \gamma = (D + K + s)\,\varepsilon,

where :math:`\varepsilon = 2^{-52}`, :math:`s` = :data:`BOUND_SLACK`, and

* :math:`T = \lVert y\rVert + \lVert\,\lvert\Psi^{-1/2}\rvert\lvert W\rvert
  \lvert L_0\rvert\lvert u\rvert\,\rVert + T_c`, with ``y`` the whitened centred row,
  ``u`` the whitened posterior offset, and
  :math:`T_c = \lVert\,\lvert\Psi^{-1/2}\rvert(\lvert x\rvert + \lvert b\rvert +
  \lvert W\rvert\lvert\mu_0\rvert)\rVert` the size of what centring subtracts;
* :math:`A` depends on the route: :math:`\lVert y\rVert^2 + \lVert Q_1^\top y\rVert^2
  + 2\sqrt M\,T` for the fast route (a difference of two squares),
  :math:`M + 2\sqrt M\,T` for the residual route (a residual of size
  :math:`\sqrt M` formed from terms of size ``T``), and :math:`M` for the
  doubled-precision route (the residual is formed to :math:`\varepsilon^2`; the computed
  :math:`u` enters only through the stationary minimum, as :math:`\gamma^2 T^2`);
* :math:`L = \tfrac12\bigl(D\log 2\pi + \sum_d\lvert\log\psi_d\rvert + 2\sum_i\lvert\log
  R_{ii}\rvert + 2K\bigr)` covers the log-determinant (``K`` for the backward error of
  the row-sorted QR, whose effect on :math:`\log\det(I + \tilde W^\top\tilde W)` is at
  most :math:`\gamma K`).

The terms are derived from the rounding model; the multiplier :math:`D + K + s` is a
worst-case count of the roundings along the longest chain, and :data:`BOUND_SLACK` was
fixed from measurements against 50-digit arithmetic, which the test suite re-checks
(``tests/test_error_bounds.py``). It is an a-posteriori bound: it uses the computed
``M``, ``y`` and ``u``.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import scipy.linalg
from numpy.typing import NDArray

from ._blocks import for_each_block
from ._errors import InvalidInputError
from ._gaussian import LOG_2PI
from ._marginal import DOUBLED_ROUTE, FAST_ROUTE, MarginalFactorization
from ._noise import DenseNoise
from ._validation import freeze

__all__ = ["BOUND_SLACK", "LogEvidenceErrorBound", "row_norms"]

FloatArray = NDArray[np.float64]

EPS = float(np.finfo(np.float64).eps)

#: Added to ``D + K`` in the bound's multiplier ``gamma = (D + K + BOUND_SLACK) eps``.
BOUND_SLACK = 8


def row_norms(rows: FloatArray) -> FloatArray:
    """Euclidean norms of the rows of a 2-d array, without overflow or underflow: each row
    is scaled by a power of two near its largest entry first (exact)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        largest = np.max(np.abs(rows), axis=1) if rows.shape[1] else np.zeros(rows.shape[0])
        scale = np.where(
            (largest > 0) & np.isfinite(largest), np.exp2(np.floor(np.log2(largest))), 1.0
        )
        scaled = rows / scale[:, None]
        result: FloatArray = scale * np.sqrt(np.einsum("ij,ij->i", scaled, scaled))
    return result


class LogEvidenceErrorBound:
    """The model-level parts of the bound, computed once; :meth:`rows` evaluates it.

    Parameters
    ----------
    marginal : MarginalFactorization
        The factorisation the oracle evaluates ``log p(x)`` from.
    """

    def __init__(self, marginal: MarginalFactorization) -> None:
        self.marginal = marginal
        self.gamma = (marginal.data_dim + marginal.latent_dim + BOUND_SLACK) * EPS

    @cached_property
    def log_det_term(self) -> float:
        """``L``: the rounding scale of ``D log 2 pi + log det C``."""
        m = self.marginal
        noise = m.noise
        abs_loadings = self._abs_whiten_columns(np.abs(m.weights) @ np.abs(m.prior.scale_tril))
        # d log det(I + W~' W~) / d W~ = 2 W~ (I + W~' W~)^-1 = 2 Q1 R^-T: the effect of
        # the componentwise rounding of W~ = Psi^-1/2 W L0.
        sensitivity = scipy.linalg.solve_triangular(
            m.r_factor, m.basis.T, lower=False, trans=1, check_finite=False
        ).T
        loadings_term = 2.0 * float(np.sum(np.abs(sensitivity) * abs_loadings))
        if isinstance(noise, DenseNoise):
            factor = noise.scale_tril()
            log_noise = 2.0 * float(np.sum(np.abs(np.log(np.diagonal(factor)))))
            # Cholesky's backward error |dPsi| <= gamma |L| |L|^T, seen through C^-1.
            whitener = noise.whiten_columns(np.eye(m.data_dim))
            precision = noise.whiten_columns_transposed(whitener - m.basis @ (m.basis.T @ whitener))
            log_noise += float(np.sum(np.abs(precision) * (np.abs(factor) @ np.abs(factor).T)))
        else:
            log_noise = float(np.sum(np.abs(np.log(noise.variances))))
        log_r = float(np.sum(np.abs(np.log(np.abs(np.diagonal(m.r_factor))))))
        return 0.5 * (
            m.data_dim * LOG_2PI + log_noise + 2.0 * log_r + 2.0 * m.latent_dim + loadings_term
        )

    @cached_property
    def _abs_whitener(self) -> FloatArray | None:
        """``|L^-1|`` for dense noise; None where whitening is elementwise."""
        noise = self.marginal.noise
        if isinstance(noise, DenseNoise):
            return freeze(np.abs(noise.whiten_columns(np.eye(self.marginal.data_dim))))
        return None

    def _abs_whiten(self, rows: FloatArray) -> FloatArray:
        """``|Psi^{-1/2}| v`` for non-negative rows ``v``."""
        whitener = self._abs_whitener
        if whitener is None:
            result: FloatArray = rows / np.sqrt(self.marginal.noise.variances)
            return result
        return rows @ whitener.T

    def _abs_whiten_columns(self, matrix: FloatArray) -> FloatArray:
        """``|Psi^{-1/2}| M`` for a non-negative ``(D, n)`` matrix ``M``."""
        return self._abs_whiten(matrix.T).T

    def rows(
        self,
        flat: FloatArray,
        squares: FloatArray,
        routes: NDArray[np.int8],
        values: FloatArray,
    ) -> FloatArray:
        """The bound for each row of ``flat`` (shape ``(n, D)``): ``squares`` are its
        Mahalanobis terms, ``routes`` the routes they took, ``values`` the log-evidences."""
        m = self.marginal
        abs_weights = np.abs(m.weights)
        abs_factor = np.abs(m.prior.scale_tril)
        centre_part = np.abs(m.bias) + abs_weights @ np.abs(m.prior.mean)
        gamma = self.gamma
        noise = m.noise
        dense = isinstance(noise, DenseNoise)
        abs_factor_noise = np.abs(noise.scale_tril()) if dense else None
        out = np.empty(flat.shape[0])

        def solve_spread(rows: FloatArray) -> FloatArray:
            """``|| |L^-1| |L| |v| ||`` per row: how far a solve with L may move ``v``."""
            if abs_factor_noise is None:
                return row_norms(rows)
            return row_norms(self._abs_whiten(np.abs(rows) @ abs_factor_noise.T))

        def work(block: slice, buffer: FloatArray) -> None:
            x = flat[block]
            maha = squares[block]
            with np.errstate(over="ignore", invalid="ignore"):
                y = m.whiten_centred(x, buffer)
                coefficients = y @ m.basis
                offsets = scipy.linalg.solve_triangular(
                    m.r_factor, coefficients.T, lower=False, check_finite=False
                ).T  # u = R^-1 Q1^T y
                residual = y - coefficients @ m.basis.T  # (I - Q1 Q1^T) y, = L^T C^-1 r
                if abs_factor_noise is None:
                    cholesky = row_norms(residual) ** 2
                else:  # the backward error |dPsi| <= gamma |L||L^T| of Psi's factor
                    solved = noise.whiten_columns_transposed(residual.T).T  # C^-1 r
                    cholesky = row_norms(np.abs(solved) @ abs_factor_noise) ** 2
                spread = self._abs_whiten((np.abs(offsets) @ abs_factor.T) @ abs_weights.T)
                centring = self._abs_whiten(np.abs(x) + centre_part)
                size = solve_spread(y) + row_norms(spread) + row_norms(centring)
                root = np.sqrt(np.abs(maha))
                route = routes[block]
                fast = row_norms(y) ** 2 + row_norms(coefficients) ** 2 + 2.0 * root * size
                residual_route = maha + 2.0 * root * size
                doubled = maha + 2.0 * root * solve_spread(residual)
                first = cholesky + np.where(
                    route == FAST_ROUTE,
                    fast,
                    np.where(route == DOUBLED_ROUTE, doubled, residual_route),
                )
                bound = (
                    0.5 * (gamma * first + (gamma * size) ** 2)
                    + gamma * self.log_det_term
                    + EPS * np.abs(values[block])
                )
            out[block] = np.where(np.isnan(bound), np.inf, bound)

        for_each_block(flat.shape[0], m.data_dim, work)
        return out

    def refuse_undetermined(
        self,
        batch: tuple[int, ...],
        flat: FloatArray,
        squares: FloatArray,
        routes: NDArray[np.int8],
        values: FloatArray,
    ) -> None:
        """Raise rather than return a finite log p(x) whose bound exceeds its magnitude.

        Only rows off the fast route can be affected (the fast route implies a bound of
        at most about ``130 gamma`` relative), so this costs nothing for them.
        """
        rows = np.flatnonzero(routes != FAST_ROUTE)
        if not rows.size:
            return
        bound = self.rows(flat[rows], squares[rows], routes[rows], values[rows])
        undetermined = np.isfinite(values[rows]) & ~(bound < np.abs(values[rows]))
        if np.any(undetermined):
            worst = int(np.argmax(undetermined))
            first = int(rows[worst])
            where = f"x[{', '.join(map(str, np.unravel_index(first, batch)))}]" if batch else "x"
            raise InvalidInputError(
                f"{where} must be an observation whose log p(x) float64 can determine; "
                f"got one on the signal subspace of a nearly noiseless model, where "
                f"rounding alone may move log p(x) (computed as {values[first]:.3g}) by up "
                f"to {bound[worst]:.3g}. Rescale the model and data, or call "
                f"log_evidence(x, return_error_bound=True) for the value with its bound"
            )
