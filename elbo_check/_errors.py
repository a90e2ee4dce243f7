"""The exception family raised by elbo_check.

Every error caused by a user's input is an instance of :class:`ElboCheckError` and
also of the builtin the user would reach for (``ValueError`` or ``TypeError``), so
``except ValueError`` keeps working in code that does not know this package.
"""

from __future__ import annotations

__all__ = ["ElboCheckError", "InvalidInputError", "InvalidTypeError"]


class ElboCheckError(Exception):
    """Base class of every exception raised by elbo_check for bad input.

    Catch it to handle any rejected argument of this package, whatever its kind; each
    instance is also a :class:`ValueError` (:class:`InvalidInputError`) or a
    :class:`TypeError` (:class:`InvalidTypeError`).

    Examples
    --------
    >>> from elbo_check import ElboCheckError, Gaussian
    >>> try:
    ...     Gaussian.standard(0)
    ... except ElboCheckError as err:
    ...     print(type(err).__name__, "-", err)
    InvalidInputError - dim must be a positive integer; got dim=0
    """


class InvalidInputError(ElboCheckError, ValueError):
    """An argument has the right type but a value, shape or structure that is not allowed.

    The message names the argument, states the requirement and shows what was seen.
    It is a :class:`ValueError`, so code that does not know this package can catch it
    as one.

    Examples
    --------
    >>> from elbo_check import Gaussian
    >>> q = Gaussian.standard(2)
    >>> try:
    ...     q.log_prob([0.0, 0.0, 0.0])
    ... except ValueError as err:
    ...     print(type(err).__name__, "-", err)
    InvalidInputError - z must have shape (..., K) with K = 2; got shape (3,)
    """


class InvalidTypeError(ElboCheckError, TypeError):
    """An argument has a type (or dtype) that cannot be used, such as a string or complex array.

    Booleans, complex numbers, strings, ``None`` and objects are refused where a real
    array is expected, as is a non-:class:`~elbo_check.Gaussian` where a Gaussian is. It
    is a :class:`TypeError`, so code that does not know this package can catch it as
    one.

    Examples
    --------
    >>> from elbo_check import Gaussian, kl_divergence
    >>> try:
    ...     kl_divergence(Gaussian.standard(1), 0.0)
    ... except TypeError as err:
    ...     print(type(err).__name__, "-", err)
    InvalidTypeError - q must be a Gaussian; got float
    """
