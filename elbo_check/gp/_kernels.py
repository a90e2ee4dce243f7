"""Covariance functions (kernels) of Gaussian processes, as immutable classes.

A kernel maps two sets of inputs, ``X1`` of shape ``(N1, d)`` and ``X2`` of shape
``(N2, d)``, to their cross-covariance (Gram) matrix of shape ``(N1, N2)``. One-dimensional
inputs of shape ``(N,)`` are read as ``(N, 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.spatial.distance
from numpy.typing import ArrayLike, NDArray

from .._errors import InvalidInputError, InvalidTypeError
from .._validation import as_real_array, check_positive, describe_shape, freeze

__all__ = [
    "RBF",
    "GramKernel",
    "Kernel",
    "Linear",
    "Matern12",
    "Matern32",
    "Matern52",
    "as_inputs",
]

FloatArray = NDArray[np.float64]


def as_inputs(name: str, value: ArrayLike, dim: int | None = None) -> FloatArray:
    """A finite float64 array of shape ``(N, d)``; ``(N,)`` is read as ``(N, 1)``."""
    array = as_real_array(name, value, ndim=(1, 2))
    if array.ndim == 1:
        array = array[:, None]
    if array.shape[1] == 0:
        raise InvalidInputError(
            f"{name} must have shape (N, d) with d >= 1; got shape {describe_shape(array.shape)}"
        )
    if dim is not None and array.shape[1] != dim:
        raise InvalidInputError(
            f"{name} must have shape (N, d) with d = {dim}; got shape {describe_shape(array.shape)}"
        )
    return np.ascontiguousarray(array)


def _positive_parameter(name: str, value: ArrayLike) -> FloatArray:
    """A positive scalar or a positive vector (one entry per input dimension)."""
    array = as_real_array(name, value, ndim=(0, 1))
    if array.ndim == 1 and array.size == 0:
        raise InvalidInputError(f"{name} must be a positive scalar or vector; got shape (0,)")
    check_positive(name, array)
    return freeze(array)


class Kernel:
    r"""Base class of the covariance functions :math:`k(x, x')` of this package.

    A kernel is called on two sets of inputs and returns their Gram matrix
    :math:`K_{ij} = k(x_i, x'_j)`; :meth:`diag` returns :math:`k(x_i, x_i)` in O(N).
    Subclasses implement ``_gram`` and ``_diag`` on validated ``(N, d)`` arrays.
    Use :meth:`from_function` to wrap a function of your own.

    Raises
    ------
    InvalidInputError
        From the methods, if the inputs are not of shape ``(N, d)`` or ``(N,)``.

    Examples
    --------
    >>> from elbo_check.gp import RBF
    >>> k = RBF(variance=2.0, lengthscale=0.5)
    >>> k([[0.0], [1.0]], [[0.0]]).round(4)
    array([[2.    ],
           [0.2707]])
    """

    #: Number of input dimensions a parameter vector fixes (``None``: any).
    input_dim: int | None = None

    def _gram(self, x1: FloatArray, x2: FloatArray) -> FloatArray:
        raise NotImplementedError

    def _diag(self, x: FloatArray) -> FloatArray:
        return np.diagonal(self._gram(x, x)).copy()

    def __call__(self, inputs1: ArrayLike, inputs2: ArrayLike | None = None) -> FloatArray:
        r"""The Gram matrix :math:`K_{ij} = k(x_i, x'_j)` of two sets of inputs.

        Parameters
        ----------
        inputs1 : array_like, shape (N1, d) or (N1,)
            The inputs :math:`x_i`.
        inputs2 : array_like, shape (N2, d) or (N2,), optional
            The inputs :math:`x'_j`; ``inputs1`` when omitted.

        Returns
        -------
        numpy.ndarray, shape (N1, N2)
            The Gram matrix.

        Raises
        ------
        InvalidInputError
            If an input is not 1-d or 2-d, holds NaN or inf, or does not have the
            kernel's number of input dimensions.
        InvalidTypeError
            If an input is not a real array.

        Examples
        --------
        >>> from elbo_check.gp import Matern12
        >>> Matern12()([0.0, 1.0]).round(4)
        array([[1.    , 0.3679],
               [0.3679, 1.    ]])
        """
        x1 = as_inputs("inputs1", inputs1, self.input_dim)
        x2 = x1 if inputs2 is None else as_inputs("inputs2", inputs2, x1.shape[1])
        return self._gram(x1, x2)

    def diag(self, inputs: ArrayLike) -> FloatArray:
        r"""The variances :math:`k(x_i, x_i)`, the diagonal of the Gram matrix, in O(N).

        Parameters
        ----------
        inputs : array_like, shape (N, d) or (N,)
            The inputs.

        Returns
        -------
        numpy.ndarray, shape (N,)
            :math:`k(x_i, x_i)` for each input.

        Raises
        ------
        InvalidInputError
            If ``inputs`` is not 1-d or 2-d, holds NaN or inf, or has the wrong number
            of input dimensions.
        InvalidTypeError
            If ``inputs`` is not a real array.

        Examples
        --------
        >>> from elbo_check.gp import RBF
        >>> RBF(variance=3.0).diag([0.0, 5.0])
        array([3., 3.])
        """
        return self._diag(as_inputs("inputs", inputs, self.input_dim))

    @classmethod
    def from_function(
        cls, function: Callable[[FloatArray, FloatArray], Any], *, name: str = "kernel"
    ) -> GramKernel:
        r"""A kernel from a function ``function(X1, X2) -> Gram`` of your own.

        Parameters
        ----------
        function : callable
            Called with two float64 arrays of shapes ``(N1, d)`` and ``(N2, d)``; must
            return an array of shape ``(N1, N2)``. It must be a positive semi-definite
            kernel: the oracle checks that through its Cholesky factors.
        name : str, optional
            A name used in the repr and in messages.

        Returns
        -------
        GramKernel
            The wrapped kernel.

        Raises
        ------
        InvalidTypeError
            If ``function`` is not callable.

        Examples
        --------
        >>> import numpy as np
        >>> from elbo_check.gp import Kernel
        >>> k = Kernel.from_function(lambda a, b: np.exp(-np.abs(a - b.T)))
        >>> k([0.0, 1.0]).round(4)
        array([[1.    , 0.3679],
               [0.3679, 1.    ]])
        """
        return GramKernel(function, name=name)


class _Stationary(Kernel):
    """A kernel :math:`\\sigma^2 g(r)` of the scaled distance ``r = |(x - x')/l|``."""

    def __init__(self, variance: ArrayLike = 1.0, lengthscale: ArrayLike = 1.0) -> None:
        var = as_real_array("variance", variance, ndim=0)
        check_positive("variance", var)
        self._variance = float(var)
        self._lengthscale = _positive_parameter("lengthscale", lengthscale)
        if self._lengthscale.ndim == 1:
            self.input_dim = int(self._lengthscale.size)

    @property
    def variance(self) -> float:
        """The signal variance :math:`\\sigma^2 = k(x, x)`."""
        return self._variance

    @property
    def lengthscale(self) -> FloatArray:
        """The lengthscale, a scalar or one per input dimension (read-only)."""
        return self._lengthscale

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Copies and pickles are rebuilt through the constructor (validated, frozen)."""
        return (type(self), (self._variance, self._lengthscale.copy()))

    def __repr__(self) -> str:
        ell = self._lengthscale.tolist()
        return f"{type(self).__name__}(variance={self._variance!r}, lengthscale={ell!r})"

    def _profile(self, r: FloatArray) -> FloatArray:
        raise NotImplementedError

    def _gram(self, x1: FloatArray, x2: FloatArray) -> FloatArray:
        scaled1, scaled2 = x1 / self._lengthscale, x2 / self._lengthscale
        squared = scipy.spatial.distance.cdist(scaled1, scaled2, "sqeuclidean")
        return self._variance * self._profile(np.sqrt(squared))

    def _diag(self, x: FloatArray) -> FloatArray:
        return np.full(x.shape[0], self._variance)


_STATIONARY_RAISES = """
    Raises
    ------
    InvalidInputError
        If ``variance`` is not a positive scalar, or ``lengthscale`` is not a positive
        scalar or vector; and, from the methods, if the inputs do not have as many
        dimensions as a vector ``lengthscale``.
    InvalidTypeError
        If a parameter is not a real number or array.
"""


class RBF(_Stationary):
    __doc__ = (
        r"""The squared-exponential (RBF) kernel.

    .. math::
        k(x, x') = \sigma^2 \exp\!\left(-\tfrac12 r^2\right),\qquad
        r^2 = \sum_{j} (x_j - x'_j)^2 / l_j^2.

    Parameters
    ----------
    variance : float, optional
        :math:`\sigma^2 > 0` (default 1).
    lengthscale : float or array_like, shape (d,), optional
        :math:`l > 0`, shared or one per input dimension (default 1).
    """
        + _STATIONARY_RAISES
        + r"""
    References
    ----------
    .. [1] C. E. Rasmussen and C. K. I. Williams, *Gaussian Processes for Machine
       Learning*, MIT Press, 2006, eq. (4.9).

    Examples
    --------
    >>> from elbo_check.gp import RBF
    >>> RBF(lengthscale=[1.0, 2.0])([[0.0, 0.0]], [[1.0, 2.0]]).round(6)
    array([[0.367879]])
    """
    )

    def _profile(self, r: FloatArray) -> FloatArray:
        return np.exp(-0.5 * r * r)


class Matern12(_Stationary):
    __doc__ = (
        r"""The Matérn kernel of smoothness 1/2 (the exponential kernel).

    .. math::
        k(x, x') = \sigma^2 \exp(-r),\qquad r = \lVert (x - x') / l \rVert.

    Parameters
    ----------
    variance : float, optional
        :math:`\sigma^2 > 0` (default 1).
    lengthscale : float or array_like, shape (d,), optional
        :math:`l > 0`, shared or one per input dimension (default 1).
    """
        + _STATIONARY_RAISES
        + r"""
    References
    ----------
    .. [1] C. E. Rasmussen and C. K. I. Williams, *Gaussian Processes for Machine
       Learning*, MIT Press, 2006, eqs. (4.14) and (4.17).

    Examples
    --------
    >>> from elbo_check.gp import Matern12
    >>> float(Matern12(variance=2.0)([[0.0]], [[1.0]])[0, 0])  # 2 exp(-1)
    0.7357588823428847
    """
    )

    def _profile(self, r: FloatArray) -> FloatArray:
        return np.exp(-r)


class Matern32(_Stationary):
    __doc__ = (
        r"""The Matérn kernel of smoothness 3/2.

    .. math::
        k(x, x') = \sigma^2 (1 + \sqrt3\, r) \exp(-\sqrt3\, r),\qquad
        r = \lVert (x - x') / l \rVert.

    Parameters
    ----------
    variance : float, optional
        :math:`\sigma^2 > 0` (default 1).
    lengthscale : float or array_like, shape (d,), optional
        :math:`l > 0`, shared or one per input dimension (default 1).
    """
        + _STATIONARY_RAISES
        + r"""
    References
    ----------
    .. [1] C. E. Rasmussen and C. K. I. Williams, *Gaussian Processes for Machine
       Learning*, MIT Press, 2006, eq. (4.17).

    Examples
    --------
    >>> from elbo_check.gp import Matern32
    >>> Matern32()([0.0, 1.0]).round(4)
    array([[1.    , 0.4834],
           [0.4834, 1.    ]])
    """
    )

    def _profile(self, r: FloatArray) -> FloatArray:
        s = math.sqrt(3.0) * r
        result: FloatArray = (1.0 + s) * np.exp(-s)
        return result


class Matern52(_Stationary):
    __doc__ = (
        r"""The Matérn kernel of smoothness 5/2.

    .. math::
        k(x, x') = \sigma^2 \left(1 + \sqrt5\, r + \tfrac53 r^2\right) \exp(-\sqrt5\, r),
        \qquad r = \lVert (x - x') / l \rVert.

    Parameters
    ----------
    variance : float, optional
        :math:`\sigma^2 > 0` (default 1).
    lengthscale : float or array_like, shape (d,), optional
        :math:`l > 0`, shared or one per input dimension (default 1).
    """
        + _STATIONARY_RAISES
        + r"""
    References
    ----------
    .. [1] C. E. Rasmussen and C. K. I. Williams, *Gaussian Processes for Machine
       Learning*, MIT Press, 2006, eq. (4.17).

    Examples
    --------
    >>> from elbo_check.gp import Matern52
    >>> Matern52()([0.0, 1.0]).round(3)
    array([[1.   , 0.524],
           [0.524, 1.   ]])
    """
    )

    def _profile(self, r: FloatArray) -> FloatArray:
        s = math.sqrt(5.0) * r
        result: FloatArray = (1.0 + s + s * s / 3.0) * np.exp(-s)
        return result


class Linear(Kernel):
    r"""The linear (dot-product) kernel.

    .. math::
        k(x, x') = \sum_j \sigma_j^2\, x_j x'_j.

    Parameters
    ----------
    variance : float or array_like, shape (d,), optional
        :math:`\sigma^2 > 0`, shared or one per input dimension (default 1).

    Raises
    ------
    InvalidInputError
        If ``variance`` is not a positive scalar or vector.
    InvalidTypeError
        If ``variance`` is not a real number or array.

    References
    ----------
    .. [1] C. E. Rasmussen and C. K. I. Williams, *Gaussian Processes for Machine
       Learning*, MIT Press, 2006, §4.2.2 (dot product covariance functions).

    Examples
    --------
    >>> from elbo_check.gp import Linear
    >>> Linear(variance=[1.0, 2.0])([[1.0, 1.0]], [[3.0, 1.0]])
    array([[5.]])
    """

    def __init__(self, variance: ArrayLike = 1.0) -> None:
        self._variance = _positive_parameter("variance", variance)
        if self._variance.ndim == 1:
            self.input_dim = int(self._variance.size)

    @property
    def variance(self) -> FloatArray:
        """The variance, a scalar or one per input dimension (read-only)."""
        return self._variance

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Copies and pickles are rebuilt through the constructor (validated, frozen)."""
        return (Linear, (self._variance.copy(),))

    def __repr__(self) -> str:
        return f"Linear(variance={self._variance.tolist()!r})"

    def _gram(self, x1: FloatArray, x2: FloatArray) -> FloatArray:
        result: FloatArray = (x1 * self._variance) @ x2.T
        return result

    def _diag(self, x: FloatArray) -> FloatArray:
        result: FloatArray = np.einsum("nj,nj->n", x * self._variance, x)
        return result


class GramKernel(Kernel):
    r"""A kernel given by a function of your own that returns Gram matrices.

    Parameters
    ----------
    function : callable
        ``function(X1, X2)`` with float64 arrays of shapes ``(N1, d)`` and ``(N2, d)``
        returns the ``(N1, N2)`` Gram matrix :math:`k(x_i, x'_j)`.
    name : str, optional
        A name for the repr and messages.

    Raises
    ------
    InvalidTypeError
        If ``function`` is not callable, or (from the methods) returns a non-real array.
    InvalidInputError
        From the methods, if ``function`` returns an array of the wrong shape or with
        NaN or inf.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check.gp import GramKernel
    >>> k = GramKernel(lambda a, b: (1.0 + a @ b.T) ** 2, name="quadratic")
    >>> k([[1.0], [2.0]])
    array([[ 4.,  9.],
           [ 9., 25.]])
    >>> k.diag([[1.0], [2.0]])
    array([ 4., 25.])
    """

    def __init__(
        self, function: Callable[[FloatArray, FloatArray], Any], *, name: str = "kernel"
    ) -> None:
        if not callable(function):
            raise InvalidTypeError(f"function must be callable; got {type(function).__name__}")
        self._function = function
        self._name = str(name)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Copies and pickles are rebuilt through :meth:`Kernel.from_function`."""
        return (_rebuild_gram_kernel, (self._function, self._name))

    def __repr__(self) -> str:
        return f"GramKernel({self._name})"

    def _gram(self, x1: FloatArray, x2: FloatArray) -> FloatArray:
        gram = as_real_array(f"{self._name}(inputs1, inputs2)", self._function(x1, x2))
        if gram.shape != (x1.shape[0], x2.shape[0]):
            raise InvalidInputError(
                f"{self._name}(inputs1, inputs2) must return shape (N1, N2) = "
                f"{describe_shape((x1.shape[0], x2.shape[0]))}; got shape "
                f"{describe_shape(gram.shape)}"
            )
        return gram

    def _diag(self, x: FloatArray) -> FloatArray:
        return np.array([self._gram(x[i : i + 1], x[i : i + 1])[0, 0] for i in range(len(x))])


def _rebuild_gram_kernel(
    function: Callable[[FloatArray, FloatArray], Any], name: str
) -> GramKernel:
    return GramKernel(function, name=name)
