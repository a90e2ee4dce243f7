"""Turn user input into float64 arrays once, with messages that name the argument.

Every public constructor funnels its arguments through these helpers, so the rest of
the package can assume finite, C-contiguous, read-only float64 arrays of known shape.
A message always has the form ``"<name> must <requirement>; <what was seen>"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._errors import InvalidInputError, InvalidTypeError

__all__ = [
    "as_event_array",
    "as_real_array",
    "check_positive",
    "check_shape",
    "describe_shape",
    "freeze",
    "is_frozen",
]

FloatArray = NDArray[np.float64]


def describe_shape(shape: Sequence[int]) -> str:
    """``(3,)`` and ``(2, 3)`` as Python prints them, ``()`` for a scalar."""
    return str(tuple(int(s) for s in shape))


def is_frozen(array: NDArray[Any]) -> bool:
    """Whether ``array`` is a view of an immutable ``bytes`` buffer (see :func:`freeze`).

    Such an array can never be made writeable again: numpy refuses
    ``flags.writeable = True`` on it and on every array of its ``.base`` chain, and no
    writeable view of its memory exists.
    """
    current: Any = array
    while isinstance(current, np.ndarray):
        if current.flags.owndata or current.flags.writeable:
            return False
        current = current.base
    return type(current) is bytes


def freeze(array: FloatArray) -> FloatArray:
    """A read-only copy of ``array`` that can never be made writeable again.

    Clearing ``flags.writeable`` is not enough: anyone may set it back and edit a
    shared factor behind our back. The copy returned here is backed by an immutable
    ``bytes`` object, so numpy refuses to make it (or any array on its ``.base``
    chain) writeable. An array that is already frozen is returned as it is.

    Callers must use the return value: ``array`` itself is left unchanged.
    """
    if is_frozen(array):
        return array
    contiguous = np.asarray(array, order="C")  # not ascontiguousarray: it makes 0-d 1-d
    frozen: FloatArray = np.frombuffer(contiguous.tobytes(), dtype=contiguous.dtype).reshape(
        contiguous.shape
    )
    return frozen


def _from_tensor(name: str, value: Any) -> Any:
    """A numpy array from a torch-like tensor (``detach``/``cpu``/``numpy`` methods).

    Converted explicitly rather than through ``__array__``, so that a tensor which
    requires grad gives no RuntimeError. numpy has no bfloat16 (and torch refuses some
    narrow float types in ``.numpy()``); such a floating tensor is widened with
    ``.float()`` to float32 first, which is exact for every float type of at most 32
    bits (bfloat16, float16, float8), and then to float64 by the caller.
    """
    tensor = value.detach().cpu()
    try:
        return tensor.numpy()
    except TypeError as err:
        dtype = getattr(tensor, "dtype", None)
        is_float = bool(getattr(dtype, "is_floating_point", False))
        is_complex = bool(getattr(dtype, "is_complex", False))
        if is_float and not is_complex and hasattr(tensor, "float"):
            try:
                return tensor.float().numpy()
            except TypeError:
                pass  # reported below, with the original error
        raise InvalidTypeError(
            f"{name} must be a real (float or integer) array; got a {type(value).__name__} "
            f"of dtype {dtype} that cannot be converted to numpy: {err}"
        ) from err


def _unmasked(name: str, value: np.ma.MaskedArray[Any, Any]) -> Any:
    """The data of a masked array that has no masked entry; raise for any masked one."""
    mask = np.ma.getmaskarray(value)
    count = int(np.count_nonzero(mask))
    if count:
        verb = "is" if count == 1 else "are"
        raise InvalidInputError(
            f"{name} must have no masked entries (elbo_check has no notion of missing "
            f"values); {count} of {mask.size} entries {verb} masked: fill them with "
            f"{name}.filled(value) or drop the rows that hold them"
        )
    return np.ma.getdata(value)


def as_real_array(
    name: str,
    value: Any,
    *,
    ndim: int | tuple[int, ...] | None = None,
    copy: bool = True,
    check_finite: bool = True,
) -> FloatArray:
    """Convert ``value`` to a finite float64 array or raise an error naming ``name``.

    Integers and floats of any precision are accepted (torch tensors too, bfloat16
    included); booleans, complex numbers, strings and objects are rejected with
    :class:`InvalidTypeError` because each of them is almost always a mistake in this
    setting. A numpy masked array is accepted only if no entry is masked: its mask
    would otherwise be silently dropped and the hidden values used.

    ``copy=False, check_finite=False`` is the hot-path form for data: no copy of a
    float64 C-contiguous input and no O(N D) boolean temporary; the caller then checks
    its (much smaller) results and calls again with ``check_finite=True`` to report a
    non-finite input.
    """
    if value is None:
        raise InvalidTypeError(f"{name} must be a real array; got None")
    if isinstance(value, np.ma.MaskedArray):
        value = _unmasked(name, value)
    elif hasattr(value, "detach") and hasattr(value, "numpy"):
        value = _from_tensor(name, value)
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as err:  # ragged nested sequences
        raise InvalidTypeError(
            f"{name} must be a real array; could not convert {type(value).__name__}: {err}"
        ) from err
    kind = array.dtype.kind
    if kind == "b":
        raise InvalidTypeError(f"{name} must be a real (float or integer) array; got dtype bool")
    if kind == "c":
        raise InvalidTypeError(
            f"{name} must be a real (float or integer) array; got complex dtype {array.dtype}"
        )
    if kind not in "iuf":
        raise InvalidTypeError(
            f"{name} must be a real (float or integer) array; got dtype {array.dtype} "
            f"from {type(value).__name__}"
        )
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if array.ndim not in allowed:
            wanted = " or ".join(str(d) for d in allowed)
            raise InvalidInputError(
                f"{name} must have {wanted} dimension(s); got shape {describe_shape(array.shape)}"
            )
    if copy:
        result = np.array(array, dtype=np.float64, order="C")
    else:
        result = np.asarray(array, dtype=np.float64, order="C")
    if check_finite and not np.all(np.isfinite(result)):
        bad = np.argwhere(~np.isfinite(result))
        first = tuple(int(i) for i in bad[0])
        where = f" at index {first}" if result.ndim else ""
        raise InvalidInputError(
            f"{name} must be finite; found {len(bad)} non-finite "
            f"entr{'y' if len(bad) == 1 else 'ies'} ({result[first]}{where})"
        )
    return result


def as_event_array(
    name: str, value: Any, dim: int, symbol: str, *, hot: bool = False
) -> FloatArray:
    """A finite float64 array of shape ``(..., dim)``: the last axis is the event axis.

    ``symbol`` names the dimension in the message, e.g. ``"D"`` gives
    ``"x must have shape (..., D) with D = 3; got shape (4,)"``. With ``hot=True`` the
    input is neither copied nor checked for non-finite entries (see :func:`as_real_array`).
    """
    array = as_real_array(name, value, copy=not hot, check_finite=not hot)
    if array.ndim == 0 or array.shape[-1] != dim:
        raise InvalidInputError(
            f"{name} must have shape (..., {symbol}) with {symbol} = {dim}; "
            f"got shape {describe_shape(array.shape)}"
        )
    return array


def check_shape(name: str, array: FloatArray, expected: tuple[int, ...], symbols: str) -> None:
    """Raise unless ``array.shape == expected``; ``symbols`` reads like ``"(D, K)"``."""
    if array.shape != expected:
        raise InvalidInputError(
            f"{name} must have shape {symbols} = {describe_shape(expected)}; "
            f"got shape {describe_shape(array.shape)}"
        )


def check_positive(name: str, array: FloatArray, what: str = "positive") -> None:
    """Raise unless every entry of ``array`` is strictly positive."""
    if array.size and not np.all(array > 0):
        index = int(np.argmin(array))
        location = f" at index {index}" if array.ndim else ""
        raise InvalidInputError(
            f"{name} must be {what}; smallest value {array.reshape(-1)[index]:.3g}{location}"
        )
