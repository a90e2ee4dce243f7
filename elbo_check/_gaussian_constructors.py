"""The named constructors of :class:`~elbo_check.Gaussian`.

Each function here is bound in the class body as a classmethod (``Gaussian.from_covariance``
and so on); they live in their own module only to keep :mod:`._gaussian` readable. Every
constructor validates its input and ends in ``Gaussian._init_checked`` with a checked
lower Cholesky factor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from ._errors import InvalidInputError
from ._linalg import batched_cholesky, check_square, solve_tril, symmetric_part
from ._validation import as_real_array, check_positive, describe_shape

if TYPE_CHECKING:
    from ._gaussian import Gaussian

__all__ = ["from_cholesky", "from_covariance", "from_diagonal", "from_precision", "standard"]


def from_cholesky(cls: type[Gaussian], *, mean: ArrayLike, scale_tril: ArrayLike) -> Gaussian:
    r"""A Gaussian from its lower Cholesky factor ``L`` (covariance ``L @ L.T``).

    The same as calling :class:`Gaussian` directly, with keyword arguments.

    Parameters
    ----------
    mean : array_like, shape (..., K)
        The mean, or a batch of means.
    scale_tril : array_like, shape (K, K) or (..., K, K)
        Lower-triangular factor ``L`` with a strictly positive diagonal and exact
        zeros above it; or a batch of them.

    Returns
    -------
    Gaussian
        :math:`\mathcal N(\text{mean}, LL^\top)`, batched as ``mean`` and
        ``scale_tril`` broadcast.

    Raises
    ------
    InvalidInputError
        If ``scale_tril`` is not square, has a non-zero entry above the diagonal or
        a diagonal entry that is not positive; if the last axis of ``mean`` is not
        ``K``; if the batch shapes do not broadcast; or if either holds NaN or inf.
    InvalidTypeError
        If ``mean`` or ``scale_tril`` is not a real array.

    Examples
    --------
    >>> from elbo_check import Gaussian
    >>> q = Gaussian.from_cholesky(mean=[0.0, 1.0], scale_tril=[[2.0, 0.0], [1.0, 0.5]])
    >>> q.cov
    array([[4.  , 2.  ],
           [2.  , 1.25]])

    An upper (transposed) factor is refused:

    >>> upper = [[2.0, 1.0], [0.0, 0.5]]
    >>> Gaussian.from_cholesky(mean=[0.0, 1.0], scale_tril=upper)  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
        ...
    elbo_check._errors.InvalidInputError: scale_tril must be lower triangular (a transposed,
    upper factor is a common bug); found 1 above the diagonal at index (0, 1)
    """
    return cls(mean, scale_tril)


def from_covariance(cls: type[Gaussian], *, mean: ArrayLike, cov: ArrayLike) -> Gaussian:
    r"""A Gaussian from a symmetric positive-definite covariance matrix.

    The covariance is factored once (Cholesky); every later quantity is computed
    from the factor.

    Parameters
    ----------
    mean : array_like, shape (..., K)
        The mean, or a batch of means.
    cov : array_like, shape (K, K) or (..., K, K)
        The covariance :math:`\Sigma`, symmetric and positive definite; or a batch
        of them, one per member. Symmetric means
        :math:`|\Sigma_{ij} - \Sigma_{ji}| \le 10^{-10}\sqrt{\Sigma_{ii}\Sigma_{jj}}`
        (the symmetric part is used).

    Returns
    -------
    Gaussian
        :math:`\mathcal N(\text{mean}, \Sigma)`, stored with
        ``scale_tril = cholesky(cov)``.

    Raises
    ------
    InvalidInputError
        If ``cov`` is not square, not symmetric, not positive definite or
        numerically singular (the message shows the offending entry, the smallest
        eigenvalue or the condition number, and names the batch member); if the
        last axis of ``mean`` is not ``K``; if the batch shapes do not broadcast; or
        if either holds NaN or inf.
    InvalidTypeError
        If ``mean`` or ``cov`` is not a real array.

    Examples
    --------
    >>> from elbo_check import Gaussian
    >>> q = Gaussian.from_covariance(mean=[0.0, 1.0], cov=[[4.0, 2.0], [2.0, 1.25]])
    >>> q.scale_tril
    array([[2. , 0. ],
           [1. , 0.5]])
    >>> Gaussian.from_covariance(mean=[0.0, 0.0],
    ...                          cov=[[1.0, 2.0], [2.0, 1.0]])  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
        ...
    elbo_check._errors.InvalidInputError: cov must be symmetric positive definite;
    smallest eigenvalue -1
    """
    cov_array = as_real_array("cov", cov)
    self = cls.__new__(cls)
    self._init_checked(mean, batched_cholesky("cov", cov_array))
    return self


def from_precision(cls: type[Gaussian], *, mean: ArrayLike, precision: ArrayLike) -> Gaussian:
    r"""A Gaussian from a symmetric positive-definite precision (inverse covariance).

    Parameters
    ----------
    mean : array_like, shape (..., K)
        The mean, or a batch of means.
    precision : array_like, shape (K, K) or (..., K, K)
        The precision :math:`P = \Sigma^{-1}`, symmetric and positive definite; or
        a batch of them.

    Returns
    -------
    Gaussian
        :math:`\mathcal N(\text{mean}, P^{-1})`.

    Raises
    ------
    InvalidInputError
        If ``precision`` is not square, not symmetric, not positive definite or
        numerically singular; if the last axis of ``mean`` is not ``K``; if the
        batch shapes do not broadcast; or if either holds NaN or inf.
    InvalidTypeError
        If ``mean`` or ``precision`` is not a real array.

    Notes
    -----
    With :math:`J` the exchange (reversal) matrix, the Cholesky factor
    :math:`J P J = M M^\top` gives an upper-triangular :math:`U = J M J` with
    :math:`P = U U^\top`, hence :math:`\Sigma = U^{-\top} U^{-1}` and the lower
    factor :math:`L = U^{-\top}`; the covariance is never formed by inversion.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian
    >>> precision = np.array([[2.0, 0.5], [0.5, 1.0]])
    >>> q = Gaussian.from_precision(mean=[0.0, 0.0], precision=precision)
    >>> np.round(q.cov, 6)
    array([[ 0.571429, -0.285714],
           [-0.285714,  1.142857]])
    >>> bool(np.allclose(q.cov, np.linalg.inv(precision), rtol=1e-14))
    True
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


def from_diagonal(cls: type[Gaussian], *, mean: ArrayLike, variances: ArrayLike) -> Gaussian:
    """A Gaussian with independent coordinates of the given (positive) variances.

    Parameters
    ----------
    mean : array_like, shape (..., K)
        The mean, or a batch of means.
    variances : array_like, shape (K,) or (..., K)
        The variances of the coordinates, all positive. Shape ``(K,)`` gives one
        (shared) covariance ``diag(variances)``; ``(..., K)`` a batch of them.

    Returns
    -------
    Gaussian
        :math:`\\mathcal N(\text{mean}, \\operatorname{diag}(\text{variances}))`,
        stored with ``scale_tril = diag(sqrt(variances))``.

    Raises
    ------
    InvalidInputError
        If ``variances`` is a scalar or empty, or has an entry that is not positive;
        if the last axes of ``mean`` and ``variances`` differ; if the batch shapes
        do not broadcast; or if either holds NaN or inf.
    InvalidTypeError
        If ``mean`` or ``variances`` is not a real array.

    Examples
    --------
    >>> from elbo_check import Gaussian
    >>> Gaussian.from_diagonal(mean=[0.0, 0.0], variances=[4.0, 0.25]).scale_tril
    array([[2. , 0. ],
           [0. , 0.5]])
    >>> Gaussian.from_diagonal(mean=[0.0], variances=1.0)  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
        ...
    elbo_check._errors.InvalidInputError: variances must have shape (K,) or (..., K) with
    K >= 1; got shape ()
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


def standard(cls: type[Gaussian], dim: int) -> Gaussian:
    r"""The standard normal :math:`\mathcal N(0, I)` in ``dim`` dimensions.

    Parameters
    ----------
    dim : int
        The dimension ``K``, at least 1.

    Returns
    -------
    Gaussian
        Zero mean and identity covariance (``scale_tril`` the identity).

    Raises
    ------
    InvalidInputError
        If ``dim`` is not a positive integer (0, a negative number, a float or a
        bool).

    Examples
    --------
    >>> from elbo_check import Gaussian
    >>> q = Gaussian.standard(2)
    >>> q.mean, q.cov
    (array([0., 0.]), array([[1., 0.],
           [0., 1.]]))
    >>> round(q.log_prob([0.0, 0.0]), 6)  # -log(2 pi)
    -1.837877
    """
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise InvalidInputError(f"dim must be a positive integer; got dim={dim!r}")
    return cls._trusted(np.zeros(int(dim)), np.eye(int(dim)))
