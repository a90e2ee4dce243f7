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
from ._marginal import (
    CANCELLATION_LIMIT,
    DOUBLED_ROUTE,
    FAST_ROUTE,
    RESIDUAL_ROUTE,
    MarginalFactorization,
)
from ._noise import DenseNoise
from ._validation import freeze

__all__ = ["BOUND_SLACK", "ElboErrorBound", "LogEvidenceErrorBound", "kl_scale", "row_norms"]

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
            m.r_factor, m.basis.T, lower=False, check_finite=False
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

    @cached_property
    def _centre_part(self) -> FloatArray:
        """``|b| + |W| |mu0|``: the size of what centring subtracts, before whitening."""
        m = self.marginal
        return freeze(np.abs(m.bias) + np.abs(m.weights) @ np.abs(m.prior.mean))

    def _solve_spread(self, rows: FloatArray) -> FloatArray:
        """``|| |L^-1| |L| |v| ||`` per row: how far a solve with Psi's factor may move v."""
        noise = self.marginal.noise
        if not isinstance(noise, DenseNoise):
            return row_norms(rows)
        return row_norms(self._abs_whiten(np.abs(rows) @ np.abs(noise.scale_tril()).T))

    def _row_terms(
        self,
        x: FloatArray,
        y: FloatArray,
        centre: FloatArray,
        maha: FloatArray,
        route: NDArray[np.int8],
    ) -> tuple[FloatArray, FloatArray]:
        """``A + (Cholesky term)`` and ``T`` for rows ``x`` whitened and centred to ``y``
        (``centre``: :attr:`_centre_part` at the rows' scale)."""
        m = self.marginal
        noise = m.noise
        coefficients = y @ m.basis
        offsets = scipy.linalg.solve_triangular(
            m.r_factor, coefficients.T, lower=False, check_finite=False
        ).T  # u = R^-1 Q1^T y
        residual = y - coefficients @ m.basis.T  # (I - Q1 Q1^T) y, = L^T C^-1 r
        if not isinstance(noise, DenseNoise):
            cholesky = row_norms(residual) ** 2
        else:  # the backward error |dPsi| <= gamma |L||L^T| of Psi's factor
            solved = noise.whiten_columns_transposed(residual.T).T  # C^-1 r
            cholesky = row_norms(np.abs(solved) @ np.abs(noise.scale_tril())) ** 2
        abs_factor = np.abs(m.prior.scale_tril)
        spread = self._abs_whiten((np.abs(offsets) @ abs_factor.T) @ np.abs(m.weights).T)
        centring = self._abs_whiten(np.abs(x) + centre)
        size = self._solve_spread(y) + row_norms(spread) + row_norms(centring)
        root = np.sqrt(np.abs(maha))
        fast = row_norms(y) ** 2 + row_norms(coefficients) ** 2 + 2.0 * root * size
        residual_route = maha + 2.0 * root * size
        doubled = maha + 2.0 * root * self._solve_spread(residual)
        first = cholesky + np.where(
            route == FAST_ROUTE, fast, np.where(route == DOUBLED_ROUTE, doubled, residual_route)
        )
        return first, size

    def _rescaled_terms(
        self,
        x: FloatArray,
        maha: FloatArray,
        route: NDArray[np.int8],
        e: NDArray[np.intc],
    ) -> tuple[FloatArray, FloatArray]:
        """:meth:`_row_terms` at the scale ``2^-e`` at which the oracle evaluates rows whose
        whitening overflows (``A`` and ``T`` are homogeneous of degree 2 and 1 in the row
        and the mean); ``maha`` is the Mahalanobis term at that scale."""
        m = self.marginal
        scaled = np.ldexp(x, -e[:, None])
        whitened = m.noise.whiten(scaled - np.ldexp(m.mean[None, :], -e[:, None]))
        part = np.ldexp(self._centre_part[None, :], -e[:, None])
        return self._row_terms(scaled, whitened, part, maha, route)

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
        gamma = self.gamma
        out = np.empty(flat.shape[0])

        def work(block: slice, buffer: FloatArray) -> None:
            x = flat[block]
            maha = squares[block]
            route = routes[block]
            with np.errstate(over="ignore", invalid="ignore", under="ignore"):
                y = m.whiten_centred(x, buffer)
                first, size = self._row_terms(x, y, self._centre_part, maha, route)
                rows_part = 0.5 * (gamma * first + (gamma * size) ** 2)
                huge = np.flatnonzero(~np.isfinite(np.einsum("ij,ij->i", y, y)))
                if huge.size:  # rows whose whitening overflows: terms at the oracle's scale
                    scaled, _, e = m.rescaled_squares(x[huge])
                    first_e, size_e = self._rescaled_terms(x[huge], scaled, route[huge], e)
                    # halved before scaling back: the bound on log p (half of M's) may be
                    # finite where M's is not
                    rows_part[huge] = np.ldexp(
                        0.5 * (gamma * first_e + (gamma * size_e) ** 2), 2 * e
                    )
                bound = rows_part + gamma * self.log_det_term + EPS * np.abs(values[block])
            out[block] = np.where(np.isnan(bound), np.inf, bound)

        for_each_block(flat.shape[0], m.data_dim, work)
        return out

    def overflow_is_certain(self, rows: FloatArray) -> NDArray[np.bool_]:
        """For finite rows whose log p(x) came out ``-inf``: whether the exact value is below
        the float64 range for certain (half the computed Mahalanobis term minus its error
        bound, both at the oracle's scale ``2^-e``, still overflows when scaled back), so
        that ``-inf`` is the correctly rounded answer."""
        m = self.marginal
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            maha, doubled, e = m.rescaled_squares(rows)
            route = np.where(doubled, DOUBLED_ROUTE, RESIDUAL_ROUTE).astype(np.int8)
            first, size = self._rescaled_terms(rows, maha, route, e)
            lower = maha - (self.gamma * first + (self.gamma * size) ** 2)
            # log p = -(constant + M) / 2 is below -1.8e308 for certain
            certain: NDArray[np.bool_] = (lower > 0) & ~np.isfinite(np.ldexp(0.5 * lower, 2 * e))
        return certain

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
        infinite = rows[values[rows] == -np.inf]
        if infinite.size:
            doubtful = infinite[~self.overflow_is_certain(flat[infinite])]
            if doubtful.size:
                first = int(doubtful[0])
                where = (
                    f"x[{', '.join(map(str, np.unravel_index(first, batch)))}]" if batch else "x"
                )
                raise InvalidInputError(
                    f"{where} must be an observation whose log p(x) float64 can determine; "
                    f"got one whose Mahalanobis term overflows float64 as computed, but "
                    f"whose exact value may not (it lies near the signal subspace of a "
                    f"nearly noiseless model). Rescale the model and data"
                )
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


class ElboErrorBound:
    r"""A bound on the rounding error of the ELBO, per row, in the same rounding model.

    .. math::
        E = \gamma\Bigl(\tfrac12\bigl(D\log 2\pi + S_\Psi + S_r + S_{\mathrm{fast}}
            + S_{\mathrm{tr}}\bigr) + S_{\mathrm{KL}}\Bigr) + \varepsilon\lvert\mathrm{ELBO}\rvert

    with the same :math:`\gamma` as for :math:`\log p(x)`, and, for
    :math:`r = x - Wm - b` and :math:`t = \lvert x\rvert + \lvert W\rvert\lvert m\rvert
    + \lvert b\rvert`: :math:`S_r = 2\,\lvert\Psi^{-1/2}r\rvert^\top
    (\lvert\Psi^{-1/2}\rvert t)` (the data term, each product bounded in absolute value),
    :math:`S_{\mathrm{fast}} = \lVert\Psi^{-1/2}(x-b)\rVert^2 + \lVert R_w m\rVert^2` for
    rows the fast expansion served, :math:`S_{\mathrm{tr}} = 2\sum(\lvert W'\rvert^\top
    \lvert W'\rvert + \lvert R_w\rvert^\top\lvert R_w\rvert)\odot(\lvert L_q\rvert
    \lvert L_q\rvert^\top)` (the trace term), :math:`S_\Psi` the rounding scale of
    :math:`\log\det\Psi`, and :math:`S_{\mathrm{KL}}` that of
    :math:`\mathrm{KL}(q\,\|\,p(z))` from the factors (:func:`kl_scale`). For dense noise
    the triangular solves' and the Cholesky factor's backward errors are added as for
    :math:`\log p(x)`.
    """

    def __init__(self, marginal: MarginalFactorization, log_evidence: LogEvidenceErrorBound):
        self.marginal = marginal
        self.gamma = log_evidence.gamma
        self._abs_whiten = log_evidence._abs_whiten  # |Psi^-1/2| v for rows v

    @cached_property
    def _model_terms(self) -> tuple[FloatArray, float]:
        """(M = |W'|^T |W'| + |R_w|^T |R_w|, the log det Psi scale)."""
        m = self.marginal
        noise = m.noise
        abs_weights = self._abs_whiten(np.abs(m.weights).T).T  # |G| |W|
        log_scale: float
        if isinstance(noise, DenseNoise):
            factor = np.abs(noise.scale_tril())
            abs_weights = self._abs_whiten((factor @ abs_weights).T).T  # solve error
            whitener = noise.whiten_columns(np.eye(m.data_dim))
            precision = whitener.T @ whitener
            log_scale = 2.0 * float(np.sum(np.abs(np.log(np.diagonal(factor)))))
            log_scale += float(np.sum(np.abs(precision) * (factor @ factor.T)))
        else:
            log_scale = float(np.sum(np.abs(np.log(noise.variances))))
        root = np.abs(m.weights_gram_root)
        gram = abs_weights.T @ abs_weights + root.T @ root
        return freeze(gram), log_scale

    @cached_property
    def _cholesky_trace_norm(self) -> float:
        """``|| |L^T| |Psi^-1 W| ||_2^2`` for dense noise ``Psi = L L^T`` (else 0)."""
        noise = self.marginal.noise
        if not isinstance(noise, DenseNoise):
            return 0.0
        solved = np.abs(noise.whiten_columns_transposed(self.marginal.whitened_weights))
        return float(np.linalg.norm(np.abs(noise.scale_tril()).T @ solved, 2) ** 2)

    def rows(
        self,
        q_mean: FloatArray,
        q_factor: FloatArray,
        rows: FloatArray,
        means: FloatArray,
        batch: tuple[int, ...],
        values: FloatArray,
    ) -> FloatArray:
        """The bound for paired rows ``(n, D)`` and means ``(n, K)`` of a q whose factor is
        ``q_factor`` (shared or batched), ``values`` the ELBOs; shape ``batch``."""
        m = self.marginal
        noise, weights = m.noise, m.weights
        d, k = m.data_dim, m.latent_dim
        n = rows.shape[0]
        gram, log_scale = self._model_terms
        dense = isinstance(noise, DenseNoise)
        abs_factor_noise = np.abs(noise.scale_tril()) if dense else None
        abs_weights, abs_bias = np.abs(weights), np.abs(m.bias)
        root = m.weights_gram_root
        data = np.empty(n)

        def work(block: slice, buffer: FloatArray) -> None:
            x, mean = rows[block], means[block]
            with np.errstate(over="ignore", invalid="ignore"):
                whitened = noise.whiten(x - mean @ weights.T - m.bias)  # G r
                scale = self._abs_whiten(np.abs(x) + np.abs(mean) @ abs_weights.T + abs_bias)
                term = 2.0 * np.einsum("ij,ij->i", np.abs(whitened), scale)
                y0 = noise.whiten(x - m.bias)
                total = row_norms(y0) ** 2
                quadratic = row_norms(mean @ root.T) ** 2
                fast = np.abs(row_norms(whitened) ** 2) >= CANCELLATION_LIMIT * (total + quadratic)
                term += np.where(fast, total + quadratic, 0.0)
                if abs_factor_noise is not None:
                    spread = self._abs_whiten(np.abs(whitened) @ abs_factor_noise.T)
                    term += 2.0 * row_norms(whitened) * row_norms(spread)
                    solved = noise.whiten_columns_transposed(whitened.T).T  # Psi^-1 r
                    term += row_norms(np.abs(solved) @ abs_factor_noise) ** 2
            data[block] = term

        for_each_block(n, d, work)
        factors = np.broadcast_to(q_factor, (*batch, k, k)).reshape(n, k, k)
        abs_q = np.abs(factors)
        spread_gram = abs_q @ np.swapaxes(abs_q, -1, -2)  # |L_q| |L_q|^T
        trace = 2.0 * np.einsum("ij,nij->n", gram, spread_gram)
        if abs_factor_noise is not None:  # the Cholesky error of Psi seen by the trace
            # || |L^T| |Psi^-1 W| |L_q| ||_F^2 <= || |L^T| |Psi^-1 W| ||_2^2 || L_q ||_F^2
            trace += self._cholesky_trace_norm * np.einsum("nij,nij->n", factors, factors)
        prior = m.prior
        q_means = np.broadcast_to(q_mean, (*batch, k)).reshape(n, k)
        kl = kl_scale(factors, q_means, prior.scale_tril, prior.mean)
        total_scale = 0.5 * (d * LOG_2PI + log_scale + data + trace) + kl
        bound = self.gamma * total_scale + EPS * np.abs(values.reshape(n))
        return np.where(np.isnan(bound), np.inf, bound).reshape(batch)


def kl_scale(
    q_factors: FloatArray, q_means: FloatArray, p_factor: FloatArray, p_mean: FloatArray
) -> FloatArray:
    r"""First-order rounding scale of :math:`\mathrm{KL}(q\,\|\,p)` from the factors.

    With :math:`M = L_p^{-1}L_q` and :math:`w = L_p^{-1}(m_q - m_p)`, the KL is
    :math:`\tfrac12(\lVert M\rVert_F^2 + \lVert w\rVert^2 - K + 2\sum\log L_{p,ii}
    - 2\sum\log L_{q,ii})`, and each product is bounded in absolute value:
    :math:`\tfrac12\bigl(2\sum\lvert M\rvert\odot(\lvert L_p^{-1}\rvert\lvert L_q\rvert)
    + 2\lvert w\rvert^\top\lvert L_p^{-1}\rvert(\lvert m_q\rvert + \lvert m_p\rvert) + K
    + 2\sum\lvert\log L_{q,ii}\rvert + 2\sum\lvert\log L_{p,ii}\rvert\bigr)`. ``q_factors``
    is ``(n, K, K)``, ``q_means`` ``(n, K)``; returns ``(n,)``.
    """
    k = p_factor.shape[-1]
    inverse = scipy.linalg.solve_triangular(p_factor, np.eye(k), lower=True, check_finite=False)
    abs_inverse = np.abs(inverse)
    ratio = inverse @ q_factors
    offsets = (q_means - p_mean) @ inverse.T
    products = np.einsum("nij,nij->n", np.abs(ratio), abs_inverse @ np.abs(q_factors))
    shifts = np.einsum(
        "ni,ni->n", np.abs(offsets), (np.abs(q_means) + np.abs(p_mean)) @ abs_inverse.T
    )
    logs = np.sum(np.abs(np.log(np.diagonal(q_factors, axis1=-2, axis2=-1))), axis=-1)
    prior_logs = float(np.sum(np.abs(np.log(np.diagonal(p_factor)))))
    result: FloatArray = 0.5 * (2.0 * products + 2.0 * shifts + k + 2.0 * logs + 2.0 * prior_logs)
    return result
