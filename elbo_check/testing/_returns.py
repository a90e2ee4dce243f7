"""The user's function as the verifiers call it: private copies in, checked values out.

Every call of user code goes through :func:`invoke`, so no verdict can depend on what
the function does to its arguments: arrays are passed as fresh copies (the models and
Gaussians are immutable, with buffers that cannot be made writeable), and a function
that edits an array it was given is reported (:class:`InputMutated`). Its return goes
through :func:`to_scalar` or :func:`to_array`, which accept real numbers from numpy,
Python, PyTorch and JAX and say exactly what came back otherwise (:class:`BadReturn`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._errors import InvalidInputError
from ._progress import current

__all__ = ["BadReturn", "InputMutated", "invoke", "return_dtype", "to_array", "to_scalar"]

FloatArray = NDArray[np.float64]


class BadReturn(InvalidInputError):
    """The user's function returned something that is not a real number of the right shape."""


class InputMutated(BadReturn):
    """The user's function changed an array it was given."""


def _summary(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _from_framework(value: Any) -> Any:
    """A torch tensor or JAX array as a numpy array (detached, on the CPU)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch
        tensor = value.detach().cpu()
        if str(getattr(tensor, "dtype", "")) == "torch.bfloat16":
            tensor = tensor.float()  # numpy has no bfloat16
        return tensor.numpy()
    if hasattr(value, "__array__") and type(value).__module__.startswith(("jax", "jaxlib")):
        return np.asarray(value)
    return value


def to_array(value: Any, what: str = "fn", *, returned: bool = True) -> FloatArray:
    """A user's return as a float64 array; :class:`BadReturn` naming what came back for
    None, strings, booleans, complex numbers and objects that are not real numbers.

    ``returned=False`` words the errors for a value passed in (``"value must be a real
    number"``) rather than returned by ``what`` (``"fn must return a real number"``).
    """
    must = f"{what} must return" if returned else f"{what} must be"
    if value is None:
        hint = " (a missing return?)" if returned else ""
        raise BadReturn(f"{must} a real number; got None{hint}")
    if isinstance(value, (str, bytes)):
        raise BadReturn(f"{must} a real number; got the string {_summary(value)}")
    converted = _from_framework(value)
    try:
        array = np.asarray(converted)
    except (TypeError, ValueError) as err:
        raise BadReturn(
            f"{must} a real number; got a {type(value).__name__} that is not one"
        ) from err
    kind = array.dtype.kind
    if kind == "c":
        raise BadReturn(f"{must} a real number; got a complex {_summary(value)}")
    if kind not in "fiu":
        raise BadReturn(
            f"{must} a real number; got {type(value).__name__} "
            f"{_summary(value)} (dtype {array.dtype})"
        )
    return np.asarray(array, dtype=np.float64)


def to_scalar(value: Any, what: str = "fn", *, returned: bool = True) -> float:
    """A user's scalar return (Python, numpy, torch or JAX) as a float (see :func:`to_array`
    for ``returned``)."""
    array = to_array(value, what, returned=returned)
    if array.size != 1:
        must = f"{what} must return" if returned else f"{what} must be"
        raise BadReturn(f"{must} a scalar; got an array of shape {array.shape}")
    return float(array.reshape(()))


def return_dtype(value: Any) -> np.dtype[Any] | None:
    """The floating dtype of a user's return (float16, float32, float64, bfloat16 as
    float32), or None for Python numbers and integers."""
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return None
    name = str(dtype).replace("torch.", "")
    if name == "bfloat16":
        return np.dtype(np.float32)  # at least as coarse: 8 bits of mantissa
    try:
        result = np.dtype(name)
    except TypeError:
        return None
    return result if result.kind == "f" else None


def _private(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.copy()
    return value  # models and Gaussians are immutable; generators are the function's own


def _parameter_names(fn: Callable[..., Any], count: int) -> list[str]:
    """The names ``fn`` gives its first ``count`` positional parameters, where known."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    names = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return [names[i] if i < len(names) else f"argument {i + 1}" for i in range(count)]


def invoke(fn: Callable[..., Any], *args: Any, names: Sequence[str] | None = None) -> Any:
    """``fn(*args)`` on private copies of the array arguments.

    Raises :class:`InputMutated` when ``fn`` changed one of the arrays it was given,
    naming the argument (``names``) and the first entry that changed.
    """
    private = [_private(a) for a in args]
    result = fn(*private)
    progress = current()
    if progress is not None:
        progress.tick()
        parts = result.values() if isinstance(result, dict) else result
        for part in parts if isinstance(result, (tuple, list, dict)) else (result,):
            progress.observe_dtype(return_dtype(part))
    for index, (original, given) in enumerate(zip(args, private, strict=True)):
        if not isinstance(original, np.ndarray):
            continue
        same_shape = isinstance(given, np.ndarray) and given.shape == original.shape
        if same_shape and np.array_equal(given, original, equal_nan=True):
            continue
        name = (names or _parameter_names(fn, len(args)))[index]
        if not same_shape:
            change = f"its shape became {getattr(given, 'shape', None)}"
        else:
            where = np.unravel_index(
                int(np.argmax(~((given == original) | (np.isnan(given) & np.isnan(original))))),
                original.shape,
            )
            index_text = ", ".join(map(str, where))
            change = f"{name}[{index_text}] was {original[where]:.6g}, became {given[where]:.6g}"
        raise InputMutated(
            f"fn changed its input {name} in place ({change}); the verifier passed it a "
            "private copy, so its verdict stands, but a function that edits its inputs "
            "corrupts its callers' data: work on a copy (x = x - b, not x -= b)"
        )
    return result
