"""The exception family raised by elbo_check.

Every error caused by a user's input is an instance of :class:`ElboCheckError` and
also of the builtin the user would reach for (``ValueError`` or ``TypeError``), so
``except ValueError`` keeps working in code that does not know this package.
"""

from __future__ import annotations

__all__ = ["ElboCheckError", "InvalidInputError", "InvalidTypeError"]


class ElboCheckError(Exception):
    """Base class of every exception raised by elbo_check for bad input."""


class InvalidInputError(ElboCheckError, ValueError):
    """An argument has the right type but a value, shape or structure that is not allowed.

    The message names the argument, states the requirement and shows what was seen.
    """


class InvalidTypeError(ElboCheckError, TypeError):
    """An argument has a type (or dtype) that cannot be used, such as a string or complex array."""
