"""Multivariate Gaussians stored as a mean and a lower Cholesky factor.

A :class:`Gaussian` is factored once, at construction; its log-determinant,
whitening, entropy, samples and KL divergences are all derived from that factor. The
divergences between two Gaussians live in :mod:`._divergences` and are re-exported
here.
"""

from __future__ import annotations

import math
import reprlib
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _gaussian_constructors as _constructors
from ._errors import InvalidInputError, InvalidTypeError
from ._linalg import check_scale_tril, logdets_from_tril, solve_tril, solve_tril_rows
from ._validation import as_event_array, as_real_array, describe_shape, freeze

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
        The mean :math:`\mu`, or a batch of means.
    scale_tril : array_like, shape (K, K) or (..., K, K)
        Lower-triangular Cholesky factor ``L`` of the covariance :math:`LL^\top`, with
        a strictly positive diagonal; or a batch of them. Entries above the diagonal
        must be exactly zero: they are refused, not ignored (a transposed, upper factor
        is a common bug).

    Raises
    ------
    InvalidInputError
        If ``scale_tril`` is not square (shape ``(..., K, K)`` with ``K >= 1``), has a
        non-zero entry above the diagonal or a diagonal entry that is not positive;
        if the last axis of ``mean`` is not ``K``; if the batch shapes of ``mean`` and
        ``scale_tril`` do not broadcast; or if either holds NaN or inf.
    InvalidTypeError
        If ``mean`` or ``scale_tril`` is not a real array (``None``, strings, booleans,
        complex numbers).

    Notes
    -----
    A Gaussian is immutable: its arrays are read-only, and copies and pickles keep
    them so.

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

    # The named constructors are defined, with their documentation, in
    # ._gaussian_constructors (to keep each module readable) and bound here.
    from_cholesky = classmethod(_constructors.from_cholesky)
    from_covariance = classmethod(_constructors.from_covariance)
    from_precision = classmethod(_constructors.from_precision)
    from_diagonal = classmethod(_constructors.from_diagonal)
    standard = classmethod(_constructors.standard)

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
        r"""Log density at ``z``, for one point or a batch of points.

        Parameters
        ----------
        z : array_like, shape (..., K)
            The points. Their batch axes broadcast against the batch of Gaussians: with
            a batch of ``N`` Gaussians, ``z`` of shape ``(N, K)`` evaluates member
            ``n`` at ``z[n]``, and ``(S, N, K)`` evaluates each at ``S`` points.

        Returns
        -------
        float or ndarray of shape ``np.broadcast_shapes(z.shape[:-1], batch_shape)``
            :math:`\log q(z)` in nats; a float for one point and an unbatched Gaussian.

        Raises
        ------
        InvalidInputError
            If the last axis of ``z`` is not ``K``, if its batch shape does not
            broadcast against :attr:`batch_shape`, or if it holds NaN or inf.
        InvalidTypeError
            If ``z`` is not a real array.

        Notes
        -----
        The multivariate normal density [1]_, evaluated from the factor with one
        triangular solve:

        .. math::
            \log \mathcal N(z; \mu, L L^\top) = -\tfrac12 \bigl(K \log 2\pi
            + 2 \textstyle\sum_i \log L_{ii} + \lVert L^{-1}(z - \mu) \rVert^2\bigr).

        References
        ----------
        .. [1] C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer,
           2006, eq. (2.43).

        Examples
        --------
        >>> import numpy as np
        >>> from scipy.stats import multivariate_normal
        >>> from elbo_check import Gaussian
        >>> q = Gaussian.from_covariance(mean=[1.0, -1.0], cov=[[2.0, 0.5], [0.5, 1.0]])
        >>> round(q.log_prob([0.0, 0.5]), 6)
        -4.117685
        >>> z = np.array([[1.0, -1.0], [0.0, 0.5]])
        >>> np.round(q.log_prob(z), 6)
        array([-2.117685, -4.117685])
        >>> bool(np.allclose(q.log_prob(z), multivariate_normal(q.mean, q.cov).logpdf(z)))
        True
        """
        whitened = self._whitened_offsets(z)
        squared = np.einsum("...i,...i->...", whitened, whitened)
        values = -0.5 * (self.dim * LOG_2PI + self.log_det_cov + squared)
        return _scalar_or_array(np.asarray(values))

    def entropy(self) -> Any:
        r"""Differential entropy :math:`H(q) = -\mathbb E_q[\log q(z)]`, in nats.

        The entropy does not depend on the mean: a batch that shares its covariance has
        one value (a float); with a covariance per member it is an array over the batch.

        Returns
        -------
        float or ndarray of shape batch_shape
            The entropy in nats; a float when the covariance is shared (one
            ``(K, K)`` factor). It is negative for a sufficiently narrow Gaussian.

        Notes
        -----
        For :math:`\mathcal N(\mu, LL^\top)` in ``K`` dimensions [1]_,

        .. math::
            H = \tfrac K2 (1 + \log 2\pi) + \tfrac12\log\det(LL^\top)
              = \tfrac K2 (1 + \log 2\pi) + \textstyle\sum_i \log L_{ii}.

        References
        ----------
        .. [1] T. M. Cover and J. A. Thomas, *Elements of Information Theory*, 2nd ed.,
           Wiley, 2006, Theorem 8.4.1 (there in bits; here in nats).

        Examples
        --------
        >>> import numpy as np
        >>> from scipy.stats import multivariate_normal
        >>> from elbo_check import Gaussian
        >>> q = Gaussian.from_covariance(mean=[1.0, -1.0], cov=[[2.0, 0.5], [0.5, 1.0]])
        >>> round(q.entropy(), 6)
        3.117685
        >>> round(float(multivariate_normal(q.mean, q.cov).entropy()), 6)
        3.117685

        A Monte Carlo average of :math:`-\log q(z)` over draws from ``q``:

        >>> round(float(-np.mean(q.log_prob(q.sample(100_000, rng=0)))), 2)
        3.12
        """
        values = 0.5 * self.dim * (1.0 + LOG_2PI) + 0.5 * logdets_from_tril(self._scale_tril)
        if self.shares_covariance:
            return float(values)
        return np.broadcast_to(values, self.batch_shape).copy()

    def sample(self, n: int, rng: np.random.Generator | int) -> FloatArray:
        """Draw ``n`` independent samples, ``mean + L @ eps`` with standard normal ``eps``.

        Parameters
        ----------
        n : int
            Number of draws (per member of the batch), at least 0.
        rng : numpy.random.Generator or int
            Source of randomness: a generator (advanced by the call), or a non-negative
            int used as the seed of ``numpy.random.default_rng``, so that the same
            seed gives the same draws.

        Returns
        -------
        ndarray, shape ``(n,) + batch_shape + (K,)``
            The draws; a new, writeable array.

        Raises
        ------
        InvalidInputError
            If ``n`` is negative or not an integer (a float or a bool), or ``rng`` is a
            negative integer.
        InvalidTypeError
            If ``rng`` is neither a :class:`numpy.random.Generator` nor an integer
            (a float or a bool included).

        Examples
        --------
        >>> import numpy as np
        >>> from elbo_check import Gaussian
        >>> q = Gaussian.from_covariance(mean=[1.0, -1.0], cov=[[2.0, 0.5], [0.5, 1.0]])
        >>> np.round(q.sample(2, rng=0), 6)
        array([[ 1.177809, -1.07912 ],
               [ 1.905694, -0.675451]])
        >>> z = q.sample(100_000, rng=0)
        >>> z.shape
        (100000, 2)
        >>> np.round(z.mean(axis=0), 2), np.round(np.cov(z.T), 2)
        (array([ 1., -1.]), array([[2.01, 0.49],
               [0.49, 1.  ]]))
        >>> q.sample(-1, rng=0)
        Traceback (most recent call last):
            ...
        elbo_check._errors.InvalidInputError: n must be a non-negative integer; got n=-1
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise InvalidInputError(f"n must be a non-negative integer; got n={n!r}")
        generator = as_generator(rng)
        noise = generator.standard_normal((int(n), *self.batch_shape, self.dim))
        if self.shares_covariance:
            return self._mean + noise @ self._scale_tril.T
        return self._mean + (self._scale_tril @ noise[..., None])[..., 0]


# Defined in ._divergences (which needs Gaussian); re-exported for the package's modules
# that import them from here.
from ._divergences import cross_entropy, kl_divergence  # noqa: E402
