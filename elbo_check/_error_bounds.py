r"""A computable bound on the rounding error of :math:`\log p(x)`, per observation.

:math:`f(x) = \log p(x) = -\tfrac12\bigl(D\log 2\pi + \log\det C + M\bigr)` with
:math:`C = W\Sigma_0W^\top + \Psi`, :math:`r = x - W\mu_0 - b`, :math:`M = r^\top C^{-1}r`
and :math:`a = C^{-1}r`. The oracle evaluates ``f`` from one QR factorisation (see
:mod:`elbo_check._marginal`); the bound returned here is

.. math::
    E(x) = \gamma\,\bigl(\kappa(x) + A(x) + L\bigr) + \gamma^2\,B(x),
    \qquad \gamma = n\,\varepsilon,\quad n = D + K + 8,

with :math:`\varepsilon = 2^{-52}` and

* :math:`\kappa(x) = \sum_\theta \lvert\partial f/\partial\theta\rvert\,\lvert\theta\rvert`,
  the componentwise condition number of ``f`` (times :math:`\lvert f\rvert`) in every
  float64 input :math:`\theta` -- the entries of ``x``, ``b``, ``W``, :math:`\mu_0`,
  :math:`L_0` and :math:`\Psi` -- plus a term for row-wise perturbations of
  :math:`WL_0` (the backward error of a row-sorted Householder QR) and the rounding of
  the final sum, each derivative bounded by the triangle inequality;
* :math:`A(x) = \tfrac12\bigl(M + 2\sqrt M\,T\bigr)`, the first-order error of the
  Mahalanobis routes, with :math:`T = \lVert y\rVert + \lVert\,\lvert\tilde W\rvert
  \lvert u\rvert\,\rVert` (``y`` the whitened row, ``u`` the whitened posterior offset);
* :math:`L = \tfrac12\bigl(D\log 2\pi + \sum\lvert\log\psi\rvert + 2\sum_i\lvert\log
  R_{ii}\rvert + 2K\bigr)`, the rounding of the log-determinant;
* :math:`B(x) = \tfrac12\bigl(\lVert\,\lvert\Psi^{-1/2}\rvert\,t\rVert^2 + T^2\bigr)` with
  :math:`t = \lvert x\rvert + \lvert b\rvert + \lvert W\rvert(\lvert\mu_0\rvert +
  \lvert L_0u\rvert)`: the second-order effect of perturbing the centred row, which
  dominates for observations on the signal subspace of a nearly noiseless model (there
  the first derivative is tiny but the curvature is :math:`C^{-1}`, as large as
  :math:`\Psi^{-1}`).

Perturbation theory bounds the effect of relative input perturbations of size
:math:`\gamma` by :math:`\gamma\kappa + O(\gamma^2)`; the algorithmic terms follow the
standard rounding-error model :math:`fl(a \circ b) = (a \circ b)(1 + \delta)`,
:math:`\lvert\delta\rvert\le\varepsilon` (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., SIAM 2002, ch. 3 and 19). The constant ``n`` is not a proof: it
was fixed from measurements against 50-digit arithmetic (see the accuracy page), which
the test suite re-checks.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import scipy.linalg
from numpy.typing import NDArray

from ._blocks import for_each_block
from ._gaussian import LOG_2PI
from ._marginal import MarginalFactorization
from ._noise import DenseNoise
from ._validation import freeze

__all__ = ["BOUND_SLACK", "LogEvidenceErrorBound"]

FloatArray = NDArray[np.float64]

EPS = float(np.finfo(np.float64).eps)

#: Added to ``D + K`` in the bound's multiplier ``gamma = (D + K + BOUND_SLACK) eps``.
BOUND_SLACK = 8


class LogEvidenceErrorBound:
    """The model-level parts of the bound, computed once; :meth:`rows` evaluates it.

    Parameters
    ----------
    marginal : MarginalFactorization
        The factorisation the oracle evaluates ``log p(x)`` from.
    """

    def __init__(self, marginal: MarginalFactorization) -> None:
        self.marginal = marginal
        d, k = marginal.data_dim, marginal.latent_dim
        self.gamma = (d + k + BOUND_SLACK) * EPS

    @cached_property
    def _constants(self) -> tuple[float, float]:
        """(the x-independent part of kappa, the log-determinant term L)."""
        m = self.marginal
        noise, weights, factor = m.noise, m.weights, m.prior.scale_tril
        whitened = m.whitened_weights  # Psi^-1/2 W
        projected = whitened - m.basis @ (m.basis.T @ whitened)  # (I - Q1 Q1^T) W'
        solved_weights = noise.whiten_columns_transposed(projected)  # C^-1 W
        prior_cov = factor @ factor.T
        abs_factor_gram = np.abs(factor) @ np.abs(factor).T
        loadings = weights @ factor  # G = W L0
        # d f / d W ~ - C^-1 W S0, d f / d S0 ~ - W^T C^-1 W / 2, d f / d Psi ~ - C^-1 / 2,
        # d f / d G (row-wise) ~ - C^-1 G.
        term_w = float(np.sum(np.abs(solved_weights @ prior_cov) * np.abs(weights)))
        gram = whitened.T @ projected  # W^T C^-1 W
        term_s = 0.5 * float(np.sum(np.abs(gram) * abs_factor_gram))
        row_g = np.sqrt(np.einsum("ij,ij->i", loadings, loadings))
        solved_loadings = solved_weights @ factor
        term_g = float(np.sqrt(np.einsum("ij,ij->i", solved_loadings, solved_loadings)) @ row_g)
        if isinstance(noise, DenseNoise):
            whitener = noise.whiten_columns(np.eye(m.data_dim))  # L^-1
            precision = noise.whiten_columns_transposed(
                whitener - m.basis @ (m.basis.T @ whitener)
            )  # C^-1 = L^-T (I - Q1 Q1^T) L^-1
            term_psi = 0.5 * float(np.sum(np.abs(precision) * np.abs(noise.given)))
            log_noise = float(np.sum(np.abs(np.log(np.diagonal(noise.scale_tril()))))) * 2
        else:
            leverage = np.einsum("ij,ij->i", m.basis, m.basis)
            term_psi = 0.5 * float(np.sum(np.abs(1.0 - leverage)))
            log_noise = float(np.sum(np.abs(np.log(noise.variances))))
        log_r = float(np.sum(np.abs(np.log(np.abs(np.diagonal(m.r_factor))))))
        log_det_term = 0.5 * (m.data_dim * LOG_2PI + log_noise + 2 * log_r + 2 * m.latent_dim)
        return term_w + term_s + term_g + term_psi, log_det_term

    @cached_property
    def _abs_whitener(self) -> FloatArray | None:
        """``|L^-1|`` for dense noise (None for elementwise noise)."""
        noise = self.marginal.noise
        if isinstance(noise, DenseNoise):
            return freeze(np.abs(noise.whiten_columns(np.eye(self.marginal.data_dim))))
        return None

    def rows(self, flat: FloatArray, squares: FloatArray, values: FloatArray) -> FloatArray:
        """The bound for each row of ``flat`` (shape ``(n, D)``), whose Mahalanobis terms
        are ``squares`` and log-evidences ``values``."""
        m = self.marginal
        noise, weights = m.noise, m.weights
        factor = m.prior.scale_tril
        abs_weights, abs_loadings = np.abs(weights), np.abs(m.whitened_loadings)
        abs_factor = np.abs(factor)
        abs_factor_gram = abs_factor @ abs_factor.T
        prior_cov = factor @ factor.T
        abs_mu0, abs_bias = np.abs(m.prior.mean), np.abs(m.bias)
        loadings = weights @ factor
        row_g = np.sqrt(np.einsum("ij,ij->i", loadings, loadings))
        constant, log_det_term = self._constants
        abs_whitener = self._abs_whitener
        abs_noise = np.abs(noise.given) if isinstance(noise, DenseNoise) else None
        gamma = self.gamma
        out = np.empty(flat.shape[0])

        def work(block: slice, buffer: FloatArray) -> None:
            x = flat[block]
            with np.errstate(over="ignore", invalid="ignore"):
                y = np.array(m.whiten_centred(x, buffer))
                coefficients = y @ m.basis
                offsets = _solve_upper(m.r_factor, coefficients)  # u = R^-1 Q1^T y
                projected = y - coefficients @ m.basis.T  # (I - Q1 Q1^T) y
                a = noise.whiten_columns_transposed(projected.T).T  # C^-1 r
                abs_a = np.abs(a)
                wa = a @ weights  # W^T a
                kappa = abs_a @ abs_bias + np.einsum("ij,ij->i", abs_a, np.abs(x))
                kappa += np.einsum(
                    "ij,ij->i", abs_a @ abs_weights, np.abs(wa @ prior_cov) + abs_mu0
                )
                kappa += 0.5 * np.einsum("ij,ij->i", np.abs(wa) @ abs_factor_gram, np.abs(wa))
                kappa += np.abs(wa) @ abs_mu0
                if abs_noise is None:
                    kappa += 0.5 * (a**2 @ noise.variances)
                else:
                    kappa += 0.5 * np.einsum("ij,ij->i", abs_a @ abs_noise, abs_a)
                ga = wa @ factor  # G^T a
                kappa += np.sqrt(np.einsum("ij,ij->i", ga, ga)) * (abs_a @ row_g)
                kappa += 0.5 * (np.abs(squares[block]) + np.abs(log_det_term)) + np.abs(
                    values[block]
                )
                spread = np.abs(offsets) @ abs_loadings.T  # |W~| |u|
                size = np.sqrt(np.einsum("ij,ij->i", y, y)) + np.sqrt(
                    np.einsum("ij,ij->i", spread, spread)
                )
                routes = 0.5 * (squares[block] + 2.0 * np.sqrt(squares[block]) * size)
                centred = (
                    np.abs(x) + abs_bias + (abs_mu0 + np.abs(offsets @ factor.T)) @ abs_weights.T
                )
                if abs_whitener is None:
                    whitened_centred = centred * np.sqrt(1.0 / noise.variances)
                else:
                    whitened_centred = centred @ abs_whitener.T
                second = 0.5 * (np.einsum("ij,ij->i", whitened_centred, whitened_centred) + size**2)
                out[block] = gamma * (kappa + constant + routes + log_det_term) + gamma**2 * second

        for_each_block(flat.shape[0], m.data_dim, work)
        return out


def _solve_upper(r_factor: FloatArray, rows: FloatArray) -> FloatArray:
    """``R^{-1} c`` for every row ``c`` of ``rows``."""
    solved: FloatArray = scipy.linalg.solve_triangular(
        r_factor, rows.T, lower=False, check_finite=False
    ).T
    return solved
