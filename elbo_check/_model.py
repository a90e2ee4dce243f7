"""The linear-Gaussian latent model and every exact quantity it defines.

.. math::
    z \\sim \\mathcal N(\\mu_0, \\Sigma_0), \\qquad
    x \\mid z \\sim \\mathcal N(W z + b, \\Psi).

All closed forms are evaluated in whitened coordinates: with
:math:`\\Sigma_0 = L_0 L_0^\\top` and :math:`\\tilde W = \\Psi^{-1/2} W L_0` (shape
``(D, K)``), one thin QR factorisation :math:`[\\tilde W;\\ I_K] = Q R` taken at
construction gives everything else:

* :math:`\\log\\det C = \\log\\det\\Psi + 2\\sum_i\\log R_{ii}` for the marginal
  covariance :math:`C = W\\Sigma_0 W^\\top + \\Psi` (matrix-determinant lemma);
* the Mahalanobis term :math:`(x-\\bar x)^\\top C^{-1}(x-\\bar x)` as the squared
  residual of a least-squares problem (Woodbury, without the cancellation of its
  textbook form);
* the posterior :math:`p(z\\mid x)` with precision
  :math:`L_0^{-\\top} R^\\top R L_0^{-1}`.

So every per-row operation costs O(D K) and no ``(D, D)`` matrix is built unless the
noise itself is a full matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import scipy.linalg
from numpy.typing import ArrayLike, NDArray

from ._blocks import for_each_block
from ._encoder import EncoderGradients, LinearEncoder
from ._errors import InvalidInputError, InvalidTypeError
from ._gaussian import (
    LOG_2PI,
    Gaussian,
    _scalar_or_array,
    as_generator,
    kl_divergence,
)
from ._linalg import gram_diag_log_term, logdet_from_tril, solve_tril, solve_tril_rows, tril_of_gram
from ._noise import NoiseCovariance
from ._validation import as_event_array, as_real_array, check_shape, describe_shape, freeze

__all__ = [
    "ElboTerms",
    "LinearGaussianModel",
    "ModelGradients",
    "VariationalGradients",
]

FloatArray = NDArray[np.float64]

#: The Mahalanobis term is first computed as ``|y|^2 - |Q^T y|^2``; where that
#: difference is smaller than this fraction of ``|y|^2`` it has lost more than
#: ``log2(1/CANCELLATION_LIMIT)`` bits to cancellation, and the row is recomputed as
#: the explicit squared norm of the least-squares residual ``(I - Q Q^T) y``.
CANCELLATION_LIMIT = 2.0**-6

#: Where the least-squares residual is still smaller than this fraction of ``|y|^2``
#: (more than 10 bits of ``y - W~ u`` cancel), rounding ``y`` and ``W~`` alone costs
#: ``eps |y| / |r|`` of its relative accuracy; such rows form it again in data
#: coordinates, ``x - W mu0 - b - W L0 u``, in doubled precision (:func:`_minus_products`).
DOUBLING_LIMIT = 2.0**-20

_VELTKAMP = 134217729.0  # 2**27 + 1


def _halves(a: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Veltkamp's split ``a = hi + lo`` into halves of 26 bits: their products are exact."""
    scaled = _VELTKAMP * a
    high = scaled - (scaled - a)
    return high, a - high


def _two_sum(a: FloatArray, b: FloatArray) -> tuple[FloatArray, FloatArray]:
    """``a + b`` and its rounding error, exactly (Knuth's TwoSum)."""
    total = a + b
    virtual = total - a
    return total, (a - (total - virtual)) + (b - virtual)


def _minus_products(
    total: FloatArray,
    error: FloatArray,
    matrix: FloatArray,
    halves: tuple[FloatArray, FloatArray],
    vectors: FloatArray,
) -> tuple[FloatArray, FloatArray]:
    """``(total + error) - vectors @ matrix.T`` as an unevaluated pair ``(total, error)``.

    Dot2 of Ogita, Rump & Oishi (2005): every product and every sum is split into its
    rounded value and its exact error (Dekker's product from the Veltkamp ``halves`` of
    ``matrix``, Knuth's TwoSum), the errors are summed apart, and ``total + error`` is
    as accurate as if computed in twice the working precision. ``matrix`` is ``(D, K)``,
    ``vectors`` ``(n, K)``; ``total`` and ``error`` broadcast to ``(n, D)``. About 20
    flops per product without a fused multiply-add.
    """
    matrix_high, matrix_low = halves
    vector_high, vector_low = _halves(vectors)
    error = np.array(np.broadcast_to(error, (vectors.shape[0], matrix.shape[0])))
    for j in range(matrix.shape[1]):
        a, a_high, a_low = matrix[:, j], matrix_high[:, j], matrix_low[:, j]
        b, b_high, b_low = vectors[:, j, None], vector_high[:, j, None], vector_low[:, j, None]
        product = b * a
        product_error = ((b_high * a_high - product) + b_low * a_high + b_high * a_low) + (
            b_low * a_low
        )
        total, sum_error = _two_sum(total, -product)
        error += sum_error
        error -= product_error
    return total, error


def _rows_by_size(matrix: FloatArray) -> NDArray[np.intp]:
    """Row order by decreasing largest entry: Householder QR of the rows in this order is
    row-wise backward stable (Powell & Reid 1969; Cox & Higham 1998)."""
    order: NDArray[np.intp] = np.argsort(-np.max(np.abs(matrix), axis=1), kind="stable")
    return order


@dataclass(frozen=True)
class ElboTerms:
    r"""The named pieces of the ELBO of ``q`` at ``x``; each a float or an array over rows.

    Both textbook forms of the ELBO can be read off:

    .. math::
        \mathrm{ELBO}
          = \underbrace{\mathbb E_q[\log p(x\mid z)]}_{\texttt{expected\_log\_likelihood}}
          - \underbrace{\mathrm{KL}(q\,\|\,p(z))}_{\texttt{kl\_to\_prior}}
        = \mathbb E_q[\log p(x\mid z)]
          - \underbrace{H(q, p(z))}_{\texttt{cross\_entropy}}
          + \underbrace{H(q)}_{\texttt{entropy}}.

    Attributes
    ----------
    expected_log_likelihood : float or ndarray
        :math:`\mathbb E_q[\log p(x\mid z)]`, the reconstruction term.
    kl_to_prior : float or ndarray
        :math:`\mathrm{KL}(q\,\|\,p(z))`.
    cross_entropy : float or ndarray
        :math:`H(q, p(z)) = -\mathbb E_q[\log p(z)]`.
    entropy : float or ndarray
        :math:`H(q)`, the same for every row (it does not depend on the mean).
    """

    expected_log_likelihood: Any
    kl_to_prior: Any
    cross_entropy: Any
    entropy: Any

    @property
    def reconstruction(self) -> Any:
        """Alias of :attr:`expected_log_likelihood`, the VAE literature's name."""
        return self.expected_log_likelihood

    @property
    def expected_log_joint(self) -> Any:
        r""":math:`\mathbb E_q[\log p(x, z)]` = expected log-likelihood - cross-entropy."""
        return self.expected_log_likelihood - self.cross_entropy

    @property
    def elbo(self) -> Any:
        """Reconstruction minus KL to the prior (the "VAE" form)."""
        return self.expected_log_likelihood - self.kl_to_prior

    @property
    def elbo_joint_form(self) -> Any:
        r""":math:`\mathbb E_q[\log p(x,z)] + H(q)` (the "variational inference" form)."""
        return self.expected_log_joint + self.entropy


@dataclass(frozen=True)
class VariationalGradients:
    """Gradients of the ELBO of each row with respect to q's mean and Cholesky factor.

    Attributes
    ----------
    mean : ndarray, shape batch_shape + (K,)
        The gradient with respect to q's mean.
    scale_tril : ndarray, shape batch_shape + (K, K)
        The gradient with respect to q's Cholesky factor; lower triangular (entries
        above the diagonal are not parameters).
    """

    mean: FloatArray
    scale_tril: FloatArray


@dataclass(frozen=True)
class ModelGradients:
    r"""Gradients of the ELBO, summed over all rows, with respect to the model parameters.

    Each field has the shape of the parameter it belongs to. Matrix gradients treat the
    entries as independent (the derivative of ``f`` along ``E`` is ``sum(G * E)``).

    Attributes
    ----------
    weights : ndarray, shape (D, K)
        With respect to :math:`W`.
    bias : ndarray, shape (D,)
        With respect to :math:`b`.
    noise_cov : float or ndarray, shape (D,) or (D, D)
        With respect to :math:`\Psi`, in the form the noise was given: the single
        variance, the ``D`` variances or the full matrix.
    prior_mean : ndarray, shape (K,)
        With respect to :math:`\mu_0`.
    prior_cov : ndarray, shape (K, K)
        With respect to :math:`\Sigma_0` (symmetric).
    """

    weights: FloatArray
    bias: FloatArray
    noise_cov: Any
    prior_mean: FloatArray
    prior_cov: FloatArray


class LinearGaussianModel:
    r"""The linear-Gaussian latent model :math:`z\sim\mathcal N(\mu_0,\Sigma_0)`,
    :math:`x\mid z\sim\mathcal N(Wz+b,\Psi)`.

    Every quantity is exact: the evidence :math:`\log p(x)`, the posterior
    :math:`p(z\mid x)`, the ELBO of any Gaussian :math:`q` and its
    :math:`\mathrm{KL}(q\,\|\,p(z\mid x))`, and their gradients.

    Parameters
    ----------
    weights : array_like, shape (D, K)
        The loading matrix :math:`W`.
    bias : array_like, shape (D,)
        The offset :math:`b`.
    prior : Gaussian
        The prior :math:`p(z) = \mathcal N(\mu_0, \Sigma_0)` over ``K`` dimensions
        (unbatched).
    noise_cov : float or array_like, shape (D,) or (D, D)
        :math:`\Psi`: a positive scalar (isotropic noise), positive variances
        (diagonal noise) or a symmetric positive-definite matrix.

    Notes
    -----
    The marginal is :math:`p(x) = \mathcal N(x; W\mu_0 + b,\ W\Sigma_0W^\top + \Psi)`
    and the posterior has precision
    :math:`\Lambda = \Sigma_0^{-1} + W^\top\Psi^{-1}W` and mean
    :math:`\Lambda^{-1}(W^\top\Psi^{-1}(x-b) + \Sigma_0^{-1}\mu_0)` [1]_.

    References
    ----------
    .. [1] C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer 2006,
       §2.3.3 (Bayes' theorem for Gaussian variables).

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian, LinearGaussianModel
    >>> prior = Gaussian.from_covariance(mean=[0.5], cov=[[2.0]])
    >>> model = LinearGaussianModel(weights=[[1.0], [2.0]], bias=[0.0, 1.0],
    ...                             prior=prior, noise_cov=0.5)
    >>> x = np.array([1.0, 2.0])
    >>> q = Gaussian.from_covariance(mean=[0.3], cov=[[0.1]])
    >>> bool(np.isclose(model.elbo(q, x) + model.kl_to_posterior(q, x),
    ...                 model.log_evidence(x), rtol=1e-14))
    True
    """

    def __init__(
        self, *, weights: ArrayLike, bias: ArrayLike, prior: Gaussian, noise_cov: Any
    ) -> None:
        w = as_real_array("weights", weights, ndim=2)
        d, k = w.shape
        if d == 0 or k == 0:
            raise InvalidInputError(
                f"weights must have shape (D, K) with D >= 1 and K >= 1; "
                f"got shape {describe_shape(w.shape)}"
            )
        b = as_real_array("bias", bias, ndim=1)
        check_shape("bias", b, (d,), "(D,)")
        if not isinstance(prior, Gaussian):
            raise InvalidTypeError(f"prior must be a Gaussian; got {type(prior).__name__}")
        if prior.dim != k:
            raise InvalidInputError(
                f"prior must be a Gaussian over K = {k} dimensions (weights has shape "
                f"{describe_shape(w.shape)}); got prior.dim = {prior.dim}"
            )
        if prior.batch_shape:
            raise InvalidInputError(
                f"prior must be a single Gaussian; got a batch of means of shape "
                f"{describe_shape(prior.mean.shape)}"
            )
        self._weights = freeze(w)
        self._bias = freeze(b)
        self._prior = prior
        self._noise = NoiseCovariance(noise_cov, d)
        self._factor()

    # ------------------------------------------------------------------ factorisation
    def _factor(self) -> None:
        d, k = self._weights.shape
        prior_factor = self._prior.scale_tril
        #: Psi^{-1/2} W, shape (D, K).
        self._whitened_weights = freeze(self._noise.whiten_columns(self._weights))
        whitened_loadings = self._whitened_weights @ prior_factor  # Psi^{-1/2} W L0
        stacked = np.vstack([whitened_loadings, np.eye(k)])
        # Householder QR is only normwise stable; with rows of very different sizes (noise
        # variances spread over many decades) the small rows of Q lose relative accuracy.
        # Sorting rows by decreasing size first makes the factorisation row-wise stable
        # (Powell & Reid 1969; Cox & Higham 1998); the permutation is undone on Q.
        order = _rows_by_size(stacked)
        q_sorted, r_factor = scipy.linalg.qr(stacked[order], mode="economic", check_finite=False)
        q_factor = np.empty_like(q_sorted)
        q_factor[order] = q_sorted
        signs = np.where(np.diagonal(r_factor) < 0, -1.0, 1.0)
        q_factor = q_factor * signs
        r_factor = signs[:, None] * r_factor
        #: Orthonormal basis of the stacked whitened weights (its D data rows), and the
        #: whitened loadings Psi^{-1/2} W L0 it spans, used for row-accurate residuals.
        self._basis_data = freeze(np.ascontiguousarray(q_factor[:d]))
        self._whitened_loadings = freeze(np.ascontiguousarray(whitened_loadings))
        #: Upper-triangular R with R^T R = I + (Psi^{-1/2} W L0)^T (Psi^{-1/2} W L0).
        self._r_factor = freeze(np.ascontiguousarray(r_factor))
        self._log_det_marginal = self._noise.logdet + logdet_from_tril(r_factor.T)
        #: L0 R^{-1}: maps basis coefficients to posterior-mean offsets; its Gram is the
        #: posterior covariance.
        posterior_map = scipy.linalg.solve_triangular(
            r_factor, prior_factor.T, trans=1, lower=False, check_finite=False
        ).T
        self._posterior_map = freeze(np.ascontiguousarray(posterior_map))
        self._posterior_scale_tril = freeze(tril_of_gram(posterior_map))
        self._marginal_mean = freeze(self._weights @ self._prior.mean + self._bias)

    @cached_property
    def _doubled_parts(self) -> tuple[tuple[FloatArray, FloatArray], tuple[FloatArray, FloatArray]]:
        """Veltkamp halves of W, and W mu0 + b as an unevaluated sum ``(high, low)``: what
        :meth:`_residual_squares` needs for residuals in doubled precision (built on first use)."""
        weights_high, weights_low = _halves(self._weights)
        halves = (freeze(weights_high), freeze(weights_low))
        high, low = _minus_products(
            self._bias, np.zeros(self.data_dim), self._weights, halves, -self._prior.mean[None]
        )
        high, low = _two_sum(high[0], low[0])
        return halves, (freeze(high), freeze(low))

    # ------------------------------------------------------------------ attributes
    @property
    def weights(self) -> FloatArray:
        """:math:`W`, shape ``(D, K)`` (read-only)."""
        return self._weights

    @property
    def bias(self) -> FloatArray:
        """:math:`b`, shape ``(D,)`` (read-only)."""
        return self._bias

    @property
    def prior(self) -> Gaussian:
        """The prior :math:`p(z)`."""
        return self._prior

    @property
    def noise_cov(self) -> Any:
        """:math:`\\Psi` as given: a float, a ``(D,)`` vector or a ``(D, D)`` matrix."""
        return self._noise.given

    @property
    def noise_kind(self) -> str:
        """``"isotropic"``, ``"diagonal"`` or ``"full"``."""
        return self._noise.kind

    @property
    def marginal_mean(self) -> FloatArray:
        r""":math:`W\mu_0 + b`, the mean of :math:`p(x)`, shape ``(D,)`` (read-only)."""
        return self._marginal_mean

    def marginal_variances(self) -> FloatArray:
        """``diag(W S0 W^T + Psi)``, the variances of :math:`p(x)`, in O(D K^2)."""
        spread = self._weights @ self._prior.scale_tril
        variances: FloatArray = np.einsum("ij,ij->i", spread, spread) + self._noise.variances
        return variances

    def dense_noise_cov(self) -> FloatArray:
        """:math:`\\Psi` as a dense ``(D, D)`` matrix, whatever form it was given in."""
        return self._noise.dense()

    @property
    def data_dim(self) -> int:
        """``D``, the dimension of an observation."""
        return int(self._weights.shape[0])

    @property
    def latent_dim(self) -> int:
        """``K``, the dimension of the latent variable."""
        return int(self._weights.shape[1])

    def __repr__(self) -> str:
        return (
            f"LinearGaussianModel(data_dim={self.data_dim}, latent_dim={self.latent_dim}, "
            f"noise_kind={self.noise_kind!r})"
        )

    # ------------------------------------------------------------------ validation
    def _check_x(self, x: ArrayLike, name: str = "x") -> FloatArray:
        return as_event_array(name, x, self.data_dim, "D")

    def _data_rows(self, x: ArrayLike) -> FloatArray:
        """``x`` as float64 without a copy or a finiteness pass (see :meth:`_finite_or_raise`)."""
        return as_event_array("x", x, self.data_dim, "D", hot=True)

    def _finite_or_raise(self, x: ArrayLike, results: FloatArray) -> None:
        """A non-finite input makes a non-finite result: only then re-check the input."""
        if not np.all(np.isfinite(results)):
            as_event_array("x", x, self.data_dim, "D")

    def _paired_rows(
        self, q: Gaussian, x: ArrayLike
    ) -> tuple[tuple[int, ...], FloatArray, FloatArray]:
        """Broadcast batch shape, and x rows ``(n, D)`` with q's means ``(n, K)`` paired.

        x is read without a copy when its batch already has the broadcast shape (the
        usual case: one q mean per row); callers check their results with
        :meth:`_finite_or_raise`.
        """
        data = self._data_rows(x)
        batch = self._batch_shape(data.shape[:-1], q.batch_shape)
        n = int(np.prod(batch, dtype=int))
        rows = np.broadcast_to(data, (*batch, self.data_dim)).reshape(n, self.data_dim)
        means = np.broadcast_to(q.mean, (*batch, self.latent_dim)).reshape(n, self.latent_dim)
        return batch, rows, means

    def _whitened(self, rows: FloatArray, buffer: FloatArray) -> FloatArray:
        """``Psi^{-1/2}(x - W mu0 - b)`` for a block of rows, in ``buffer`` when possible."""
        return self._noise.whiten_offsets(rows, self._marginal_mean, buffer[: rows.shape[0]])

    def _check_z(self, z: ArrayLike, name: str = "z") -> FloatArray:
        return as_event_array(name, z, self.latent_dim, "K")

    def _check_q(self, q: Any) -> Gaussian:
        if not isinstance(q, Gaussian):
            raise InvalidTypeError(f"q must be a Gaussian; got {type(q).__name__}")
        if q.dim != self.latent_dim:
            raise InvalidInputError(
                f"q must be a Gaussian over the latent space with K = {self.latent_dim} "
                f"dimensions; got q.dim = {q.dim}"
            )
        return q

    @staticmethod
    def _batch_shape(*shapes: tuple[int, ...]) -> tuple[int, ...]:
        try:
            return tuple(np.broadcast_shapes(*shapes))
        except ValueError as err:
            described = " and ".join(describe_shape(s) for s in shapes)
            raise InvalidInputError(f"batch shapes {described} do not broadcast") from err

    # ------------------------------------------------------------------ marginal
    def marginal(self) -> Gaussian:
        r"""The marginal :math:`p(x)` as a dense Gaussian over ``D`` dimensions.

        Builds a ``(D, D)`` factor: O(D^2 (D + K)) time. Use :meth:`log_evidence` for
        densities; this is for inspection and for cross-checks. The factor is the
        triangular factor of :math:`\Psi^{1/2}[\tilde W,\ I_D]` from a QR decomposition,
        so the covariance is never formed and squared.
        """
        noise_factor = self._noise.scale_tril()
        whitened = self._whitened_weights @ self._prior.scale_tril
        generator = noise_factor @ np.hstack([whitened, np.eye(self.data_dim)])
        return Gaussian._trusted(np.array(self._marginal_mean), tril_of_gram(generator))

    def _residual_squares(
        self,
        whitened: FloatArray,
        coefficients: FloatArray,
        spread: FloatArray,
        raw: FloatArray,
        index: Any,
    ) -> FloatArray:
        """``min_u |y - W~ u|^2 + |u|^2`` for whitened rows ``y`` with ``Q1^T y`` given.

        The minimiser is u = R^{-1} Q1^T y (the whitened posterior offset); the residual
        is taken against the exact loadings W~, not against Q1 c, so small rows keep
        their relative accuracy. Rows where it still cancels by more than
        ``DOUBLING_LIMIT`` form it again from their data rows ``raw[index]`` in doubled
        precision; the value is stationary in u, so u's own error enters only squared.
        Overwrites ``spread`` (a buffer of ``whitened``'s shape).
        """
        offsets = scipy.linalg.solve_triangular(
            self._r_factor, coefficients.T, lower=False, check_finite=False
        ).T
        residual = np.matmul(offsets, self._whitened_loadings.T, out=spread)
        np.subtract(whitened, residual, out=residual)
        offset_squares = np.einsum("ij,ij->i", offsets, offsets)
        squares: FloatArray = np.einsum("ij,ij->i", residual, residual) + offset_squares
        deep = np.flatnonzero(squares < DOUBLING_LIMIT * np.einsum("ij,ij->i", whitened, whitened))
        if deep.size:
            latent = offsets[deep] @ self._prior.scale_tril.T  # L0 u
            halves, (high, low) = self._doubled_parts
            with np.errstate(all="ignore"):  # where a split overflows, keep the first value
                total, error = _two_sum(np.take(raw, np.asarray(index)[deep], axis=0), -high)
                total, error = _minus_products(total, error - low, self._weights, halves, latent)
                doubled = self._noise.whiten(total + error)
                again = np.einsum("ij,ij->i", doubled, doubled) + offset_squares[deep]
            squares[deep] = np.where(np.isfinite(again), again, squares[deep])
        return squares

    def _mahalanobis(self, flat: FloatArray) -> FloatArray:
        """Squared Mahalanobis norms of the rows of ``flat`` (shape ``(n, D)``) under p(x).

        Fast route, per block: ``|y|^2 - |Q1^T y|^2`` with ``y`` the whitened row. Rows
        where that difference cancelled more than ``CANCELLATION_LIMIT`` allows are
        recomputed as the explicit least-squares residual (:meth:`_residual_squares`):
        at once while the block is in cache when many of its rows need it, otherwise
        collected and recomputed together after the first pass (a solve per block for
        a row or two would cost more than the block itself).
        """
        n = flat.shape[0]
        squared = np.empty(n)
        deferred = np.zeros(n, dtype=bool)
        coefficients = np.empty((n, self.latent_dim))

        def fast(block: slice, buffer: FloatArray, spread: FloatArray) -> None:
            whitened = self._whitened(flat[block], buffer)
            projected = np.matmul(whitened, self._basis_data, out=coefficients[block])
            total = np.einsum("ij,ij->i", whitened, whitened)
            squared[block] = total - np.einsum("ij,ij->i", projected, projected)
            lost = squared[block] < CANCELLATION_LIMIT * total
            count = int(np.count_nonzero(lost))
            if 8 * count >= lost.size:
                rows = np.flatnonzero(lost)
                squared[block][rows] = self._residual_squares(
                    whitened[rows], projected[rows], spread[: rows.size], flat[block], rows
                )
            elif count:
                deferred[block] = lost

        for_each_block(n, self.data_dim, fast, buffers=2)
        recompute = np.flatnonzero(deferred)

        def exact(block: slice, buffer: FloatArray, spread: FloatArray) -> None:
            rows = recompute[block]
            gathered = np.take(flat, rows, axis=0, out=buffer[: rows.size])
            whitened = self._whitened(gathered, buffer)
            squared[rows] = self._residual_squares(
                whitened, coefficients[rows], spread[: rows.size], flat, rows
            )

        if recompute.size:
            for_each_block(recompute.size, self.data_dim, exact, buffers=2)
        return squared

    def log_evidence(self, x: ArrayLike) -> Any:
        r"""Exact log marginal likelihood :math:`\log p(x)`.

        Parameters
        ----------
        x : array_like, shape (..., D)
            One observation or a batch of them.

        Returns
        -------
        float or ndarray of shape (...)

        Notes
        -----
        .. math::
            \log p(x) = -\tfrac12\bigl(D\log 2\pi + \log\det C
                + (x-\bar x)^\top C^{-1}(x-\bar x)\bigr),\quad
            C = W\Sigma_0W^\top + \Psi,\ \bar x = W\mu_0 + b.

        With :math:`y = \Psi^{-1/2}(x - \bar x)`, the Mahalanobis term equals
        :math:`\min_u \lVert y - \tilde W u\rVert^2 + \lVert u\rVert^2`, the squared
        residual of the stacked least-squares problem with matrix :math:`[\tilde W; I]`,
        computed from its QR factors; cost O(N D K) for N rows with diagonal noise.
        """
        data = self._data_rows(x)
        flat = data.reshape(-1, self.data_dim)
        constant = self.data_dim * LOG_2PI + self._log_det_marginal
        out = -0.5 * (constant + self._mahalanobis(flat))
        self._finite_or_raise(x, out)
        return _scalar_or_array(out.reshape(data.shape[:-1]))

    # ------------------------------------------------------------------ posterior
    def posterior(self, x: ArrayLike) -> Gaussian:
        r"""Exact posterior :math:`p(z\mid x)`; a batch of means for a batch of rows.

        Notes
        -----
        .. math::
            \Lambda = \Sigma_0^{-1} + W^\top\Psi^{-1}W,\qquad
            m = \mu_0 + \Lambda^{-1}W^\top\Psi^{-1}(x - W\mu_0 - b).

        Computed as :math:`m = \mu_0 + L_0R^{-1}Q_1^\top y` and
        :math:`\Lambda^{-1} = (L_0R^{-1})(L_0R^{-1})^\top`, whose Cholesky factor comes
        from a QR decomposition rather than from forming :math:`\Lambda`.
        """
        data = self._data_rows(x)
        flat = data.reshape(-1, self.data_dim)
        means = np.empty((flat.shape[0], self.latent_dim))

        def work(block: slice, buffer: FloatArray) -> None:
            coefficients = self._whitened(flat[block], buffer) @ self._basis_data
            means[block] = coefficients @ self._posterior_map.T

        for_each_block(flat.shape[0], self.data_dim, work)
        self._finite_or_raise(x, means)
        means += self._prior.mean
        return Gaussian._trusted(
            means.reshape(*data.shape[:-1], self.latent_dim), self._posterior_scale_tril
        )

    @cached_property
    def posterior_precision(self) -> FloatArray:
        r""":math:`\Lambda = \Sigma_0^{-1} + W^\top\Psi^{-1}W`, shape ``(K, K)`` (read-only)."""
        root = self._precision_root
        product = root.T @ root
        return freeze(0.5 * (product + product.T))

    # ------------------------------------------------------------------ joint
    def _whitened_residuals(self, x: FloatArray, z: FloatArray) -> FloatArray:
        """``Psi^{-1/2}(x - W z - b)`` broadcast over the batch axes of x and z."""
        return self._noise.whiten(x - self._bias - z @ self._weights.T)

    def log_likelihood(self, x: ArrayLike, z: ArrayLike) -> Any:
        r""":math:`\log p(x\mid z) = \log\mathcal N(x; Wz+b, \Psi)`; batches broadcast."""
        data = self._check_x(x)
        latent = self._check_z(z)
        self._batch_shape(data.shape[:-1], latent.shape[:-1])
        residual = self._whitened_residuals(data, latent)
        squared = np.einsum("...i,...i->...", residual, residual)
        values = -0.5 * (self.data_dim * LOG_2PI + self._noise.logdet + squared)
        return _scalar_or_array(np.asarray(values))

    def log_joint(self, x: ArrayLike, z: ArrayLike) -> Any:
        r""":math:`\log p(x, z) = \log p(x\mid z) + \log p(z)`; batches broadcast."""
        return self.log_likelihood(x, z) + self._prior.log_prob(self._check_z(z))

    def sample(self, n: int, rng: np.random.Generator | int) -> tuple[FloatArray, FloatArray]:
        """Draw ``n`` pairs from the joint; returns ``(x, z)`` of shapes ``(n, D)``, ``(n, K)``."""
        generator = as_generator(rng)
        z = self._prior.sample(n, generator)
        x = z @ self._weights.T + self._bias + self._noise.sample(int(n), generator)
        return x, z

    # ------------------------------------------------------------------ ELBO
    def elbo_terms(self, q: Gaussian, x: ArrayLike) -> ElboTerms:
        r"""The ELBO of ``q`` at ``x`` split into its named terms (all closed form).

        Notes
        -----
        With :math:`q = \mathcal N(m, S)`, :math:`S = L_qL_q^\top`:

        .. math::
            \mathbb E_q[\log p(x\mid z)] = -\tfrac12\bigl(D\log2\pi + \log\det\Psi
              + \lVert\Psi^{-1/2}(x - Wm - b)\rVert^2
              + \lVert\Psi^{-1/2}WL_q\rVert_F^2\bigr),

        and the KL to the prior, the cross-entropy and the entropy are those of
        :func:`~elbo_check.kl_divergence`, :meth:`Gaussian.entropy`.
        Batches of ``x`` rows and of q's means broadcast.
        """
        q = self._check_q(q)
        batch, rows, means = self._paired_rows(q, x)
        squared = np.empty(rows.shape[0])

        def work(block: slice, buffer: FloatArray, spread_buffer: FloatArray) -> None:
            # Psi^{-1/2}(x - b) - (Psi^{-1/2} W) m, in two reused buffers
            n = block.stop - block.start
            whitened = self._noise.whiten_offsets(rows[block], self._bias, buffer[:n])
            np.matmul(means[block], self._whitened_weights.T, out=spread_buffer[:n])
            np.subtract(whitened, spread_buffer[:n], out=whitened)
            squared[block] = np.einsum("ij,ij->i", whitened, whitened)

        for_each_block(rows.shape[0], self.data_dim, work, buffers=2)
        self._finite_or_raise(x, squared)
        squared = squared.reshape(batch)
        trace = self._spread_trace(q.scale_tril)
        expected = -0.5 * (self.data_dim * LOG_2PI + self._noise.logdet + squared + trace)

        def spread(value: Any) -> Any:
            return _scalar_or_array(np.broadcast_to(np.asarray(value, dtype=float), batch).copy())

        kl_to_prior = kl_divergence(q, self._prior)
        entropy = q.entropy()
        return ElboTerms(
            expected_log_likelihood=spread(expected),
            kl_to_prior=spread(kl_to_prior),
            cross_entropy=spread(kl_to_prior + entropy),  # H(q, p) = KL(q || p) + H(q)
            entropy=spread(entropy),
        )

    @cached_property
    def _weights_gram_root(self) -> FloatArray:
        """``R_w`` with ``R_w^T R_w = W^T Psi^{-1} W``, shape ``(min(D, K), K)``.

        From a Householder QR of ``Psi^{-1/2} W`` with its rows sorted by decreasing
        size, which makes the factor row-wise backward stable (as for the model's own
        factorisation): unsorted, noise variances spread over 11 decades cost 600 eps of
        the ELBO; sorted, 2.3 eps (the direct product: 0.9 eps; mpmath test, ci profile).
        """
        weights = self._whitened_weights
        order = _rows_by_size(weights)
        root: FloatArray = np.asarray(np.linalg.qr(weights[order], mode="r"))
        return freeze(root)

    def _spread_trace(self, scale_tril: FloatArray) -> Any:
        """``tr(W^T Psi^{-1} W S)`` = ``|Psi^{-1/2} W L|_F^2`` for one factor or a batch.

        One factor: the ``(D, K)`` product itself, O(D K^2), accurate componentwise. A
        batch of factors (a covariance per row): ``|R_w L|_F^2`` through the ``(K, K)``
        root of the Gram matrix, O(K^3) per member (orthogonal invariance of the
        Frobenius norm), which at (N, D, K) = (100k, 1000, 20) is 25x faster.
        """
        if scale_tril.ndim == 2:
            return float(np.sum((self._whitened_weights @ scale_tril) ** 2))
        spread = self._weights_gram_root @ scale_tril
        return np.sum(spread**2, axis=(-2, -1))

    def elbo(self, q: Gaussian, x: ArrayLike) -> Any:
        r"""Exact ELBO :math:`\mathbb E_q[\log p(x,z) - \log q(z)]`, with no sampling.

        Equals :math:`\log p(x) - \mathrm{KL}(q\,\|\,p(z\mid x))`; see :meth:`elbo_terms`.
        """
        return self.elbo_terms(q, x).elbo

    def kl_to_posterior(self, q: Gaussian, x: ArrayLike) -> Any:
        r"""Exact :math:`\mathrm{KL}(q\,\|\,p(z\mid x))`; never negative.

        Notes
        -----
        With the posterior precision :math:`\Lambda = G^\top G`, :math:`G = RL_0^{-1}`,
        and the QR factorisation :math:`GL_q = QT` (:math:`T` upper triangular),

        .. math::
            \mathrm{KL} = \tfrac12\Bigl(\sum_{i<j}T_{ij}^2 + \sum_i\bigl(T_{ii}^2 - 1
              - 2\log T_{ii}\bigr) + \lVert RL_0^{-1}(m_q-\mu_0) - Q_1^\top y\rVert^2\Bigr),

        a sum of non-negative terms computed from the precision's factor, so directions in
        which the posterior is very narrow (tiny noise variances) keep full relative
        accuracy; the posterior mean is never formed and subtracted.
        """
        q = self._check_q(q)
        batch, rows, means = self._paired_rows(q, x)
        precision_root = self._precision_root  # G = R L0^{-1}
        triangle = np.linalg.qr(precision_root @ q.scale_tril, mode="r")
        diagonal = np.abs(np.diagonal(triangle, axis1=-2, axis2=-1))
        spread = np.sum(np.triu(triangle, k=1) ** 2, axis=(-2, -1)) + np.sum(
            gram_diag_log_term(diagonal), axis=-1
        )
        spread_rows = np.broadcast_to(spread, batch).reshape(-1)
        out = np.empty(rows.shape[0])

        def work(block: slice, buffer: FloatArray) -> None:
            coefficients = self._whitened(rows[block], buffer) @ self._basis_data
            offsets = (means[block] - self._prior.mean) @ precision_root.T - coefficients
            out[block] = 0.5 * (spread_rows[block] + np.einsum("ij,ij->i", offsets, offsets))

        for_each_block(rows.shape[0], self.data_dim, work)
        self._finite_or_raise(x, out)
        return _scalar_or_array(out.reshape(batch))

    @cached_property
    def _precision_root(self) -> FloatArray:
        """``G = R L0^{-1}`` with ``G^T G`` the posterior precision, shape ``(K, K)``."""
        transposed = scipy.linalg.solve_triangular(
            self._prior.scale_tril, self._r_factor.T, trans=1, lower=True, check_finite=False
        )  # L0^{-T} R^T
        return freeze(np.ascontiguousarray(transposed.T))

    # ------------------------------------------------------------------ gradients
    def _prior_solve_rows(self, rows: FloatArray) -> FloatArray:
        """``Sigma_0^{-1} v`` for every vector along the last axis."""
        factor = self._prior.scale_tril
        once = solve_tril_rows(factor, rows)
        flat = once.reshape(-1, self.latent_dim)
        return np.ascontiguousarray(solve_tril(factor, flat.T, trans=True).T).reshape(rows.shape)

    def elbo_grad_variational(self, q: Gaussian, x: ArrayLike) -> VariationalGradients:
        r"""Gradient of each row's ELBO with respect to q's mean and Cholesky factor.

        Notes
        -----
        .. math::
            \nabla_m = W^\top\Psi^{-1}(x - Wm - b) - \Sigma_0^{-1}(m-\mu_0),\qquad
            \nabla_{L_q} = \operatorname{tril}\bigl(-\Lambda L_q
              + \operatorname{diag}(1/L_{q,ii})\bigr),

        with :math:`\Lambda` the posterior precision. At the posterior both vanish.
        """
        q = self._check_q(q)
        data = self._check_x(x)
        batch = self._batch_shape(data.shape[:-1], q.batch_shape)
        residual = self._whitened_residuals(data, q.mean)
        mean_grad = residual @ self._whitened_weights - self._prior_solve_rows(
            q.mean - self._prior.mean
        )
        mean_grad = np.broadcast_to(mean_grad, (*batch, self.latent_dim)).copy()
        scale = q.scale_tril
        factor_grad = np.tril(-self.posterior_precision @ scale)
        diagonal = np.arange(self.latent_dim)
        factor_grad[..., diagonal, diagonal] += 1.0 / np.diagonal(scale, axis1=-2, axis2=-1)
        factor_grad = np.broadcast_to(factor_grad, (*batch, *scale.shape[-2:])).copy()
        return VariationalGradients(mean=mean_grad, scale_tril=factor_grad)

    def elbo_grad_model(self, q: Gaussian, x: ArrayLike) -> ModelGradients:
        r"""Gradient of the ELBO summed over rows with respect to (W, b, Psi, mu0, Sigma0).

        Notes
        -----
        With :math:`r_n = x_n - Wm_n - b`, :math:`\delta_n = m_n-\mu_0`, :math:`S_n` the
        covariance of row n's q (the same for every row when q shares one) and :math:`N`
        rows:

        .. math::
            \nabla_b = \textstyle\sum_n \Psi^{-1}r_n,\qquad
            \nabla_W = \textstyle\sum_n \Psi^{-1}(r_nm_n^\top - WS_n),

            \nabla_\Psi = \tfrac12\textstyle\sum_n\bigl(\Psi^{-1}(r_nr_n^\top + WS_nW^\top)
              \Psi^{-1} - \Psi^{-1}\bigr),

            \nabla_{\mu_0} = \textstyle\sum_n\Sigma_0^{-1}\delta_n,\qquad
            \nabla_{\Sigma_0} = \tfrac12\textstyle\sum_n\bigl(\Sigma_0^{-1}(S_n+\delta_n
              \delta_n^\top)\Sigma_0^{-1} - \Sigma_0^{-1}\bigr).

        For diagonal noise the gradient is taken with respect to the variances (the
        diagonal of the matrix formula); for isotropic noise with respect to the single
        variance (its trace).
        """
        q = self._check_q(q)
        data = self._check_x(x)
        batch = self._batch_shape(data.shape[:-1], q.batch_shape)
        n = int(np.prod(batch)) if batch else 1
        means = np.broadcast_to(q.mean, (*batch, self.latent_dim)).reshape(n, self.latent_dim)
        rows = np.broadcast_to(data, (*batch, self.data_dim)).reshape(n, self.data_dim)
        residual = rows - self._bias - means @ self._weights.T
        solved = self._noise.solve(residual)  # Psi^{-1} r_n, shape (n, D)
        k = self.latent_dim
        if q.shares_covariance:
            cov_total = n * q.cov  # sum of q's covariances over the rows
        else:
            cov_total = np.broadcast_to(q.cov, (*batch, k, k)).reshape(n, k, k).sum(axis=0)
        noise_solved_weights = self._noise.solve(self._weights.T).T  # Psi^{-1} W, (D, K)
        grad_bias = solved.sum(axis=0)
        grad_weights = solved.T @ means - noise_solved_weights @ cov_total
        spread = noise_solved_weights @ cov_total  # Psi^{-1} W sum_n S_n
        if self._noise.kind == "full":
            precision = self._noise.solve(np.eye(self.data_dim))
            precision = 0.5 * (precision + precision.T)
            spread_outer = spread @ noise_solved_weights.T
            spread_outer = 0.5 * (spread_outer + spread_outer.T)
            grad_noise: Any = 0.5 * (solved.T @ solved + spread_outer - n * precision)
        else:
            per_dim = 0.5 * (
                np.sum(solved**2, axis=0)
                + np.einsum("ij,ij->i", spread, noise_solved_weights)
                - n / self._noise.variances
            )
            grad_noise = float(np.sum(per_dim)) if self._noise.kind == "isotropic" else per_dim
        offsets = means - self._prior.mean
        prior_solved = self._prior_solve_rows(offsets)  # Sigma0^{-1} delta_n
        grad_prior_mean = prior_solved.sum(axis=0)
        prior_precision = self._prior.precision
        cov_part = self._prior_solve_rows(self._prior_solve_rows(cov_total).T)  # S0^-1 S S0^-1
        grad_prior_cov = 0.5 * (cov_part + prior_solved.T @ prior_solved - n * prior_precision)
        grad_prior_cov = 0.5 * (grad_prior_cov + grad_prior_cov.T)
        return ModelGradients(
            weights=grad_weights,
            bias=grad_bias,
            noise_cov=grad_noise,
            prior_mean=grad_prior_mean,
            prior_cov=grad_prior_cov,
        )

    # ------------------------------------------------------------------ amortised q
    def _check_encoder(self, encoder: Any) -> LinearEncoder:
        if not isinstance(encoder, LinearEncoder):
            raise InvalidTypeError(f"encoder must be a LinearEncoder; got {type(encoder).__name__}")
        if (encoder.data_dim, encoder.latent_dim) != (self.data_dim, self.latent_dim):
            raise InvalidInputError(
                f"encoder must map D = {self.data_dim} to K = {self.latent_dim} dimensions; "
                f"got D = {encoder.data_dim}, K = {encoder.latent_dim}"
            )
        return encoder

    def dataset_elbo(self, encoder: LinearEncoder, x: ArrayLike) -> float:
        r"""The dataset ELBO :math:`\sum_n \mathrm{ELBO}(q(\cdot\mid x_n); x_n)` of an encoder.

        At :meth:`optimal_encoder` it equals ``log_evidence(x).sum()``.
        """
        encoder = self._check_encoder(encoder)
        data = self._check_x(x)
        return float(np.sum(self.elbo(encoder(data), data)))

    def dataset_elbo_grad(self, encoder: LinearEncoder, x: ArrayLike) -> EncoderGradients:
        r"""Gradient of :meth:`dataset_elbo` with respect to the encoder's ``A``, ``c``, ``L``.

        By the chain rule through :math:`m_n = Ax_n + c`: :math:`\nabla_A = \sum_n g_n
        x_n^\top` and :math:`\nabla_c = \sum_n g_n`, with :math:`g_n` the mean gradient of
        row ``n`` (:meth:`elbo_grad_variational`); :math:`\nabla_L` sums the per-row
        factor gradients.
        """
        encoder = self._check_encoder(encoder)
        data = self._check_x(x).reshape(-1, self.data_dim)
        grads = self.elbo_grad_variational(encoder(data), data)
        return EncoderGradients(
            matrix=grads.mean.T @ data,
            offset=grads.mean.sum(axis=0),
            scale_tril=grads.scale_tril.sum(axis=0),
        )

    def optimal_encoder(self) -> LinearEncoder:
        r"""The linear encoder whose :math:`q(z\mid x)` is the exact posterior for every x.

        The posterior mean is affine in ``x`` and its covariance does not depend on
        ``x``, so a linear encoder is exact [1]_:
        :math:`A^\star = \Lambda^{-1}W^\top\Psi^{-1}`,
        :math:`c^\star = \mu_0 - A^\star(W\mu_0 + b)`, :math:`S^\star = \Lambda^{-1}`.

        References
        ----------
        .. [1] J. Lucas, G. Tucker, R. Grosse and M. Norouzi, "Don't blame the ELBO! A
           linear VAE perspective on posterior collapse", NeurIPS 2019.
        """
        # m(x) = mu0 + (L0 R^{-1}) Q1^T Psi^{-1/2} (x - xbar)
        projected = self._noise.whiten_columns_transposed(self._basis_data)  # Psi^{-T/2} Q1
        matrix = self._posterior_map @ projected.T
        offset = self._prior.mean - matrix @ self._marginal_mean
        encoder = LinearEncoder.__new__(LinearEncoder)
        encoder._init_checked(matrix, offset, np.array(self._posterior_scale_tril))
        return encoder
