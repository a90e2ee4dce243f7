"""Multivariate Gaussians stored as a mean and a lower Cholesky factor.

A :class:`Gaussian` is factored once, at construction; its log-determinant,
whitening, entropy, samples and KL divergences are all derived from that factor.
"""

from __future__ import annotations

import math
import reprlib
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._errors import InvalidInputError, InvalidTypeError
from ._linalg import (
    batched_cholesky,
    check_scale_tril,
    check_square,
    gram_diag_log_term,
    logdets_from_tril,
    solve_tril,
    solve_tril_rows,
    symmetric_part,
)
from ._validation import as_event_array, as_real_array, check_positive, describe_shape, freeze

__all__ = ["Gaussian", "as_generator", "cross_entropy", "kl_divergence"]

FloatArray = NDArray[np.float64]
LOG_2PI = math.log(2.0 * math.pi)


def as_generator(rng: Any, name: str = "rng") -> np.random.Generator:
    """Accept a :class:`numpy.random.Generator` or a non-negative integer seed.

    Raises
    ------
    InvalidInputError
        For a negative integer (numpy's ``default_rng`` would reject it with a bare
        ``ValueError``).
    InvalidTypeError
        For anything else, booleans and floats included (``True`` and ``1.0`` are
        almost always a mistake, not a seed).
    """
    if isinstance(rng, np.random.Generator):
        return rng
    requirement = f"{name} must be a numpy.random.Generator or a non-negative int seed"
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, (bool, np.bool_)):
        if rng < 0:
            raise InvalidInputError(f"{requirement}; got {int(rng)}")
        return np.random.default_rng(int(rng))
    raise InvalidTypeError(f"{requirement}; got {reprlib.repr(rng)} ({type(rng).__name__})")


def _scalar_or_array(values: FloatArray) -> Any:
    """Return a Python float for a 0-d result and the array otherwise."""
    return float(values) if values.ndim == 0 else values


class Gaussian:
    r"""A multivariate normal distribution :math:`\mathcal N(\mu, L L^\top)`.

    Build one with :meth:`from_covariance`, :meth:`from_cholesky`,
    :meth:`from_precision`, :meth:`from_diagonal` or :meth:`standard`; calling the
    class directly is the same as :meth:`from_cholesky`.

    Both the mean and the covariance may carry batch axes, which broadcast: a mean of
    shape ``(N, K)`` with one ``(K, K)`` factor describes ``N`` Gaussians sharing a
    covariance (an amortised family with a learned global covariance); with factors of
    shape ``(N, K, K)`` each member has its own (an encoder that outputs a covariance
    per row). The last axis of the mean and the last two of the factor are the event
    axes. Quantities that do not depend on the mean (entropy, log-determinant) are a
    float when the covariance is shared.

    Parameters
    ----------
    mean : array_like, shape (..., K)
        The mean, or a batch of means.
    scale_tril : array_like, shape (K, K) or (..., K, K)
        Lower-triangular Cholesky factor ``L`` of the covariance, with a strictly
        positive diagonal; or a batch of them.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian
    >>> q = Gaussian.from_covariance(mean=[1.0, -1.0], cov=[[2.0, 0.5], [0.5, 1.0]])
    >>> round(q.entropy(), 6)
    3.117685
    >>> q.log_prob([[1.0, -1.0], [0.0, 0.0]]).shape
    (2,)

    A batch of three Gaussians, each with its own diagonal covariance:

    >>> batch = Gaussian.from_diagonal(mean=np.zeros((3, 2)),
    ...                                variances=[[1.0, 1.0], [2.0, 0.5], [4.0, 4.0]])
    >>> batch.batch_shape, batch.scale_tril.shape
    ((3,), (3, 2, 2))
    >>> np.round(batch.entropy(), 4)
    array([2.8379, 2.8379, 4.2242])
    """

    def __init__(self, mean: ArrayLike, scale_tril: ArrayLike) -> None:
        factor = as_real_array("scale_tril", scale_tril)
        check_scale_tril("scale_tril", factor)
        self._init_checked(mean, factor)

    # ------------------------------------------------------------------ construction
    def _init_checked(self, mean: ArrayLike, factor: FloatArray) -> None:
        k = factor.shape[-1]
        mean_array = as_real_array("mean", mean)
        if mean_array.ndim == 0 or mean_array.shape[-1] != k:
            raise InvalidInputError(
                f"mean must have shape (..., K) with K = {k} to match the {k}x{k} covariance; "
                f"got shape {describe_shape(mean_array.shape)}"
            )
        try:
            np.broadcast_shapes(mean_array.shape[:-1], factor.shape[:-2])
        except ValueError as err:
            raise InvalidInputError(
                f"the batch shapes of mean {describe_shape(mean_array.shape[:-1])} and of "
                f"the covariance {describe_shape(factor.shape[:-2])} do not broadcast"
            ) from err
        self._mean = freeze(mean_array)
        self._scale_tril = freeze(factor)

    @classmethod
    def _trusted(cls, mean: FloatArray, scale_tril: FloatArray) -> Gaussian:
        """Build from arrays already known to be valid (internal fast path)."""
        self = cls.__new__(cls)
        self._mean = freeze(np.asarray(mean, dtype=np.float64))
        self._scale_tril = freeze(np.asarray(scale_tril, dtype=np.float64))
        return self

    @classmethod
    def from_cholesky(cls, *, mean: ArrayLike, scale_tril: ArrayLike) -> Gaussian:
        """A Gaussian from its lower Cholesky factor ``L`` (covariance ``L @ L.T``)."""
        return cls(mean, scale_tril)

    @classmethod
    def from_covariance(cls, *, mean: ArrayLike, cov: ArrayLike) -> Gaussian:
        """A Gaussian from a symmetric positive-definite covariance matrix."""
        cov_array = as_real_array("cov", cov)
        self = cls.__new__(cls)
        self._init_checked(mean, batched_cholesky("cov", cov_array))
        return self

    @classmethod
    def from_precision(cls, *, mean: ArrayLike, precision: ArrayLike) -> Gaussian:
        r"""A Gaussian from a symmetric positive-definite precision (inverse covariance).

        Notes
        -----
        With :math:`J` the exchange (reversal) matrix, the Cholesky factor
        :math:`J P J = M M^\top` gives an upper-triangular :math:`U = J M J` with
        :math:`P = U U^\top`, hence :math:`\Sigma = U^{-\top} U^{-1}` and the lower
        factor :math:`L = U^{-\top}`; the covariance is never formed by inversion.
        """
        precision_array = as_real_array("precision", precision)
        check_square("precision", precision_array, batched=True)
        # checked before the reversal, so that a message names the caller's indices
        symmetric = symmetric_part("precision", precision_array)
        reversed_factor = batched_cholesky("precision", symmetric[..., ::-1, ::-1])
        upper = np.ascontiguousarray(reversed_factor[..., ::-1, ::-1])
        k = upper.shape[-1]
        lower = np.ascontiguousarray(np.swapaxes(upper, -1, -2))
        factor = np.ascontiguousarray(np.tril(solve_tril(lower, np.eye(k))))
        self = cls.__new__(cls)
        self._init_checked(mean, factor)
        return self

    @classmethod
    def from_diagonal(cls, *, mean: ArrayLike, variances: ArrayLike) -> Gaussian:
        """A Gaussian with independent coordinates of the given (positive) variances.

        ``variances`` of shape ``(K,)`` give one covariance; ``(..., K)`` a batch.
        """
        variance_array = as_real_array("variances", variances)
        if variance_array.ndim == 0 or variance_array.shape[-1] == 0:
            raise InvalidInputError(
                "variances must have shape (K,) or (..., K) with K >= 1; "
                f"got shape {describe_shape(variance_array.shape)}"
            )
        check_positive("variances", variance_array)
        k = variance_array.shape[-1]
        factor = np.sqrt(variance_array)[..., :, None] * np.eye(k)
        self = cls.__new__(cls)
        self._init_checked(mean, factor)
        return self

    @classmethod
    def standard(cls, dim: int) -> Gaussian:
        """The standard normal :math:`\\mathcal N(0, I)` in ``dim`` dimensions."""
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise InvalidInputError(f"dim must be a positive integer; got dim={dim!r}")
        return cls._trusted(np.zeros(int(dim)), np.eye(int(dim)))

    # ------------------------------------------------------------------ attributes
    @property
    def mean(self) -> FloatArray:
        """The mean, shape ``batch_shape + (K,)`` (read-only)."""
        return self._mean

    @property
    def scale_tril(self) -> FloatArray:
        """Lower Cholesky factor ``L``: ``(K, K)``, or ``(..., K, K)`` for a batch of
        covariances (read-only)."""
        return self._scale_tril

    @property
    def cov(self) -> FloatArray:
        """The covariance ``L @ L.T``, of the factor's shape (read-only, computed once)."""
        cached: FloatArray | None = self.__dict__.get("_cov")
        if cached is None:
            factor = self._scale_tril
            product = factor @ np.swapaxes(factor, -1, -2)
            cached = self._cov = freeze(0.5 * product + 0.5 * np.swapaxes(product, -1, -2))
        return cached

    @property
    def precision(self) -> FloatArray:
        """The precision ``inv(cov)``, computed once from triangular solves (read-only)."""
        cached: FloatArray | None = self.__dict__.get("_precision")
        if cached is None:
            inverse_factor = solve_tril(self._scale_tril, np.eye(self.dim))
            product = np.swapaxes(inverse_factor, -1, -2) @ inverse_factor
            cached = self._precision = freeze(0.5 * product + 0.5 * np.swapaxes(product, -1, -2))
        return cached

    @property
    def variances(self) -> FloatArray:
        """The marginal variances ``diag(cov)``, shape ``(K,)`` or ``(..., K)`` (read-only)."""
        factor = self._scale_tril
        return freeze(np.einsum("...ij,...ij->...i", factor, factor))

    @property
    def dim(self) -> int:
        """The event dimension ``K``."""
        return int(self._scale_tril.shape[-1])

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Broadcast batch shape of the means and covariances (``()`` for one Gaussian)."""
        return tuple(np.broadcast_shapes(self._mean.shape[:-1], self._scale_tril.shape[:-2]))

    @property
    def shares_covariance(self) -> bool:
        """Whether every member of the batch has the same covariance (one ``(K, K)`` factor)."""
        return self._scale_tril.ndim == 2

    @property
    def log_det_cov(self) -> Any:
        """``log det(cov)`` as ``2 * sum(log(diag(L)))``: a float, or an array over the
        batch of covariances."""
        return _scalar_or_array(freeze(logdets_from_tril(self._scale_tril)))

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling (and ``copy.deepcopy``) rebuilds arrays as writeable copies; they
        are frozen again so that a copy stays what the original was built as."""
        self.__dict__.update(
            {
                key: freeze(value) if isinstance(value, np.ndarray) else value
                for key, value in state.items()
            }
        )

    def __repr__(self) -> str:
        batch = f", batch_shape={self.batch_shape}" if self.batch_shape else ""
        shared = "" if self.shares_covariance else ", one covariance per member"
        return f"Gaussian(dim={self.dim}{batch}{shared})"

    # ------------------------------------------------------------------ densities
    def _whitened_offsets(self, z: ArrayLike, name: str = "z") -> FloatArray:
        points = as_event_array(name, z, self.dim, "K")
        try:
            np.broadcast_shapes(points.shape[:-1], self.batch_shape)
        except ValueError as err:
            raise InvalidInputError(
                f"{name} of shape {describe_shape(points.shape)} does not broadcast against "
                f"the batch of Gaussians of shape {describe_shape(self.batch_shape)}"
            ) from err
        return solve_tril_rows(self._scale_tril, points - self._mean)

    def log_prob(self, z: ArrayLike) -> Any:
        r"""Log density at ``z``; shape ``(..., K)`` broadcast against the batch of means.

        .. math::
            \log \mathcal N(z; \mu, L L^\top) = -\tfrac12 \bigl(K \log 2\pi
            + 2 \textstyle\sum_i \log L_{ii} + \lVert L^{-1}(z - \mu) \rVert^2\bigr)
        """
        whitened = self._whitened_offsets(z)
        squared = np.einsum("...i,...i->...", whitened, whitened)
        values = -0.5 * (self.dim * LOG_2PI + self.log_det_cov + squared)
        return _scalar_or_array(np.asarray(values))

    def entropy(self) -> Any:
        r"""Differential entropy :math:`\tfrac K2 (1 + \log 2\pi) + \sum_i \log L_{ii}`.

        The entropy does not depend on the mean: a batch that shares its covariance has
        one value (a float); with a covariance per member it is an array over the batch.
        """
        values = 0.5 * self.dim * (1.0 + LOG_2PI) + 0.5 * logdets_from_tril(self._scale_tril)
        if self.shares_covariance:
            return float(values)
        return np.broadcast_to(values, self.batch_shape).copy()

    def sample(self, n: int, rng: np.random.Generator | int) -> FloatArray:
        """Draw ``n`` samples; shape ``(n,) + batch_shape + (K,)``.

        Parameters
        ----------
        n : int
            Number of draws (per member of the batch).
        rng : numpy.random.Generator or int
            Source of randomness; an int is used as a seed for ``default_rng``.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise InvalidInputError(f"n must be a non-negative integer; got n={n!r}")
        generator = as_generator(rng)
        noise = generator.standard_normal((int(n), *self.batch_shape, self.dim))
        if self.shares_covariance:
            return self._mean + noise @ self._scale_tril.T
        return self._mean + (self._scale_tril @ noise[..., None])[..., 0]


def _check_same_dim(p: Gaussian, q: Gaussian) -> None:
    for name, value in (("p", p), ("q", q)):
        if not isinstance(value, Gaussian):
            raise InvalidTypeError(f"{name} must be a Gaussian; got {type(value).__name__}")
    if p.dim != q.dim:
        raise InvalidInputError(
            f"p and q must have the same dimension; got p.dim={p.dim} and q.dim={q.dim}"
        )


def _mean_offsets(p: Gaussian, q: Gaussian) -> FloatArray:
    try:
        np.broadcast_shapes(p.batch_shape, q.batch_shape)
    except ValueError as err:
        raise InvalidInputError(
            f"the batch shapes of p {p.batch_shape} and q {q.batch_shape} do not broadcast"
        ) from err
    return np.asarray(p.mean - q.mean)


def _factor_ratio(p: Gaussian, q: Gaussian) -> FloatArray:
    """``L_q^{-1} L_p`` (lower triangular), for shared or batched factors."""
    if p.scale_tril.shape == q.scale_tril.shape and np.array_equal(p.scale_tril, q.scale_tril):
        # exact: a blocked LAPACK solve would leave O(eps) entries
        return np.broadcast_to(np.eye(p.dim), p.scale_tril.shape)
    return solve_tril(q.scale_tril, p.scale_tril)  # lower triangular: exact zeros above


def _sum_last_two(values: FloatArray) -> Any:
    return np.sum(values, axis=(-2, -1))


def kl_divergence(p: Gaussian, q: Gaussian) -> Any:
    r"""Kullback–Leibler divergence :math:`\mathrm{KL}(p \,\|\, q)` between two Gaussians.

    Batches of means and of covariances broadcast; a float is returned when neither
    argument is batched.

    Notes
    -----
    With :math:`M = L_q^{-1} L_p` (lower triangular) and
    :math:`w = L_q^{-1}(\mu_p - \mu_q)`,

    .. math::
        \mathrm{KL}(p\|q) = \tfrac12\Bigl(\sum_{i>j} M_{ij}^2
            + \sum_i \bigl(M_{ii}^2 - 1 - 2\log M_{ii}\bigr) + \lVert w\rVert^2\Bigr),

    which is the textbook
    :math:`\tfrac12(\operatorname{tr}\Sigma_q^{-1}\Sigma_p + w^\top w - K
    + \log\det\Sigma_q - \log\det\Sigma_p)` regrouped into terms that are each
    non-negative, so the result is never negative and is exactly zero for
    identical arguments.

    References
    ----------
    .. [1] S. Kullback and R. A. Leibler, "On information and sufficiency",
       Ann. Math. Statist. 22(1), 1951.

    Examples
    --------
    >>> from elbo_check import Gaussian, kl_divergence
    >>> p = Gaussian.from_diagonal(mean=[0.0], variances=[1.0])
    >>> q = Gaussian.from_diagonal(mean=[1.0], variances=[1.0])
    >>> kl_divergence(p, q)
    0.5
    """
    _check_same_dim(p, q)
    offsets = _mean_offsets(p, q)
    ratio = _factor_ratio(p, q)
    off_diagonal = _sum_last_two(np.tril(ratio, k=-1) ** 2)
    diagonal_terms = gram_diag_log_term(np.diagonal(ratio, axis1=-2, axis2=-1))
    whitened = solve_tril_rows(q.scale_tril, offsets)
    squared = np.einsum("...i,...i->...", whitened, whitened)
    values = 0.5 * (off_diagonal + np.sum(diagonal_terms, axis=-1) + squared)
    return _scalar_or_array(
        np.broadcast_to(values, np.broadcast_shapes(p.batch_shape, q.batch_shape)).copy()
    )


def cross_entropy(p: Gaussian, q: Gaussian) -> Any:
    r"""Cross-entropy :math:`-\mathbb E_p[\log q(z)]` of ``q`` relative to ``p``.

    .. math::
        H(p, q) = \tfrac12\bigl(K\log 2\pi + \log\det\Sigma_q
            + \lVert L_q^{-1}L_p\rVert_F^2 + \lVert L_q^{-1}(\mu_p-\mu_q)\rVert^2\bigr)

    It equals ``kl_divergence(p, q) + p.entropy()``.
    """
    _check_same_dim(p, q)
    offsets = _mean_offsets(p, q)
    trace = _sum_last_two(solve_tril(q.scale_tril, p.scale_tril) ** 2)
    whitened = solve_tril_rows(q.scale_tril, offsets)
    squared = np.einsum("...i,...i->...", whitened, whitened)
    values = 0.5 * (p.dim * LOG_2PI + logdets_from_tril(q.scale_tril) + trace + squared)
    return _scalar_or_array(
        np.broadcast_to(values, np.broadcast_shapes(p.batch_shape, q.batch_shape)).copy()
    )
