"""Mean functions :math:`m(x)` of Gaussian processes, as immutable classes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .._errors import InvalidInputError, InvalidTypeError
from .._validation import as_real_array, describe_shape, freeze
from ._kernels import as_inputs

__all__ = ["ConstantMean", "FunctionMean", "LinearMean", "MeanFunction", "ZeroMean"]

FloatArray = NDArray[np.float64]


class MeanFunction:
    r"""Base class of the mean functions :math:`m(x)` of this package.

    Called on inputs of shape ``(N, d)`` (or ``(N,)``), a mean function returns the
    ``(N,)`` vector :math:`m(x_i)`. Subclasses implement ``_evaluate`` on validated
    inputs; :meth:`from_function` wraps a function of your own.

    Raises
    ------
    InvalidInputError
        From a call, if the inputs are not of shape ``(N, d)`` or ``(N,)``.

    Examples
    --------
    >>> from elbo_check.gp import ConstantMean
    >>> ConstantMean(2.5)([0.0, 1.0])
    array([2.5, 2.5])
    """

    #: Number of input dimensions the parameters fix (``None``: any).
    input_dim: int | None = None

    def _evaluate(self, x: FloatArray) -> FloatArray:
        raise NotImplementedError

    def __call__(self, inputs: ArrayLike) -> FloatArray:
        """The mean at each input.

        Parameters
        ----------
        inputs : array_like, shape (N, d) or (N,)
            The inputs.

        Returns
        -------
        numpy.ndarray, shape (N,)
            :math:`m(x_i)`.

        Raises
        ------
        InvalidInputError
            If ``inputs`` is not 1-d or 2-d, holds NaN or inf, or has the wrong number
            of input dimensions.
        InvalidTypeError
            If ``inputs`` is not a real array.

        Examples
        --------
        >>> from elbo_check.gp import ZeroMean
        >>> ZeroMean()([[1.0, 2.0]])
        array([0.])
        """
        return self._evaluate(as_inputs("inputs", inputs, self.input_dim))

    @classmethod
    def from_function(
        cls, function: Callable[[FloatArray], Any], *, name: str = "mean"
    ) -> FunctionMean:
        """A mean function from a function ``function(X) -> (N,)`` of your own.

        Parameters
        ----------
        function : callable
            Called with a float64 array of shape ``(N, d)``; returns shape ``(N,)``.
        name : str, optional
            A name for the repr and messages.

        Returns
        -------
        FunctionMean
            The wrapped mean function.

        Raises
        ------
        InvalidTypeError
            If ``function`` is not callable.

        Examples
        --------
        >>> from elbo_check.gp import MeanFunction
        >>> m = MeanFunction.from_function(lambda x: x[:, 0] ** 2)
        >>> m([1.0, 3.0])
        array([1., 9.])
        """
        return FunctionMean(function, name=name)


class ZeroMean(MeanFunction):
    """The zero mean function, :math:`m(x) = 0`.

    Raises
    ------
    InvalidInputError
        From a call, if the inputs are not of shape ``(N, d)`` or ``(N,)``.

    Examples
    --------
    >>> from elbo_check.gp import ZeroMean
    >>> ZeroMean()([1.0, 2.0])
    array([0., 0.])
    """

    def __repr__(self) -> str:
        return "ZeroMean()"

    def _evaluate(self, x: FloatArray) -> FloatArray:
        return np.zeros(x.shape[0])


class ConstantMean(MeanFunction):
    """A constant mean function, :math:`m(x) = c`.

    Parameters
    ----------
    constant : float
        The constant :math:`c`.

    Raises
    ------
    InvalidInputError
        If ``constant`` is not a finite scalar.
    InvalidTypeError
        If ``constant`` is not a real number.

    Examples
    --------
    >>> from elbo_check.gp import ConstantMean
    >>> ConstantMean(-1.0)([[0.0], [4.0]])
    array([-1., -1.])
    """

    def __init__(self, constant: float) -> None:
        self._constant = float(as_real_array("constant", constant, ndim=0))

    @property
    def constant(self) -> float:
        """The constant :math:`c`."""
        return self._constant

    def __repr__(self) -> str:
        return f"ConstantMean({self._constant!r})"

    def _evaluate(self, x: FloatArray) -> FloatArray:
        return np.full(x.shape[0], self._constant)


class LinearMean(MeanFunction):
    r"""A linear (affine) mean function, :math:`m(x) = a^\top x + c`.

    Parameters
    ----------
    weights : array_like, shape (d,)
        The slope :math:`a`, one entry per input dimension.
    bias : float, optional
        The offset :math:`c` (default 0).

    Raises
    ------
    InvalidInputError
        If ``weights`` is not a non-empty vector or ``bias`` not a scalar, or either
        holds NaN or inf.
    InvalidTypeError
        If either is not a real array.

    Examples
    --------
    >>> from elbo_check.gp import LinearMean
    >>> LinearMean([2.0, -1.0], bias=0.5)([[1.0, 1.0], [0.0, 3.0]])
    array([ 1.5, -2.5])
    """

    def __init__(self, weights: ArrayLike, bias: float = 0.0) -> None:
        a = as_real_array("weights", weights, ndim=(0, 1)).reshape(-1)
        if a.size == 0:
            raise InvalidInputError("weights must have shape (d,) with d >= 1; got shape (0,)")
        self._weights = freeze(a)
        self._bias = float(as_real_array("bias", bias, ndim=0))
        self.input_dim = int(a.size)

    @property
    def weights(self) -> FloatArray:
        """The slope :math:`a` (read-only)."""
        return self._weights

    @property
    def bias(self) -> float:
        """The offset :math:`c`."""
        return self._bias

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Copies and pickles are rebuilt through the constructor (validated, frozen)."""
        return (LinearMean, (self._weights.copy(), self._bias))

    def __repr__(self) -> str:
        return f"LinearMean({self._weights.tolist()!r}, bias={self._bias!r})"

    def _evaluate(self, x: FloatArray) -> FloatArray:
        result: FloatArray = x @ self._weights + self._bias
        return result


class FunctionMean(MeanFunction):
    """A mean function given by a function ``function(X) -> (N,)`` of your own.

    Parameters
    ----------
    function : callable
        Called with a float64 array of shape ``(N, d)``; returns shape ``(N,)``.
    name : str, optional
        A name for the repr and messages.

    Raises
    ------
    InvalidTypeError
        If ``function`` is not callable, or (from a call) returns a non-real array.
    InvalidInputError
        From a call, if ``function`` returns the wrong shape, or NaN or inf.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check.gp import FunctionMean
    >>> FunctionMean(lambda x: np.sin(x[:, 0]), name="sin")([0.0])
    array([0.])
    """

    def __init__(self, function: Callable[[FloatArray], Any], *, name: str = "mean") -> None:
        if not callable(function):
            raise InvalidTypeError(f"function must be callable; got {type(function).__name__}")
        self._function = function
        self._name = str(name)

    def __repr__(self) -> str:
        return f"FunctionMean({self._name})"

    def _evaluate(self, x: FloatArray) -> FloatArray:
        values = as_real_array(f"{self._name}(inputs)", self._function(x))
        if values.shape != (x.shape[0],):
            raise InvalidInputError(
                f"{self._name}(inputs) must return shape (N,) = ({x.shape[0]},); got shape "
                f"{describe_shape(values.shape)}"
            )
        return values
