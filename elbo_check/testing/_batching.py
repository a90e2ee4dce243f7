"""Calling a user's batched function: members in, one value per member out.

Real VAE code evaluates a batch of rows at once, each row with its own ``q(z | x_n)``.
The verifiers' batched mode hands such code a batch of ``size`` independent problems
and checks every member. For a diagnosis it evaluates single problems (the failing
member and variations of it) by packing them into batches of the same size, padded with
copies, and it tests whether one member's value depends on the other members at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._errors import InvalidInputError
from .._gaussian import Gaussian
from ._returns import BadReturn, invoke, to_array

__all__ = [
    "as_values",
    "check_batch_size",
    "evaluate_members",
    "member",
    "stack_gaussians",
]

FloatArray = NDArray[np.float64]

#: Builds the arguments of one call of the user's function from a list of members.
ArgumentBuilder = Callable[[Sequence[Any]], tuple[Any, ...]]


def check_batch_size(batch_size: Any) -> int | None:
    """``None`` (unbatched) or an integer >= 1."""
    if batch_size is None:
        return None
    is_int = isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool)
    if not is_int or batch_size < 1:
        raise InvalidInputError(f"batch_size must be None or an int >= 1; got {batch_size!r}")
    return int(batch_size)


def as_values(value: Any, size: int, quantity: str) -> FloatArray:
    """The user's batched result as ``size`` floats; a clear error for any other shape."""
    array = to_array(value)
    if array.shape == (size,):
        return array
    if array.shape == (size, 1) or array.shape == (1, size):
        return array.reshape(size)
    hint = ""
    if array.size == 1:
        hint = (
            ": a single number for the whole batch, as if the values were summed or "
            "averaged over the batch axis"
        )
    elif array.ndim >= 1 and array.shape[-1] != size:
        hint = ": is a reduction taken over the wrong axis (the batch axis is the first)?"
    raise BadReturn(
        f"fn must return one {quantity} per batch member, shape ({size},); got shape "
        f"{array.shape}{hint}"
    )


def member(g: Gaussian, index: int) -> Gaussian:
    """Member ``index`` of a Gaussian with batch shape ``(n,)``, unbatched."""
    mean = np.broadcast_to(g.mean, (*g.batch_shape, g.dim))[index]
    factor = g.scale_tril if g.shares_covariance else g.scale_tril[index]
    return Gaussian._trusted(np.array(mean), np.array(factor))


def stack_gaussians(members: Sequence[Gaussian]) -> Gaussian:
    """A batch ``(len(members),)`` of Gaussians, one covariance factor per member."""
    means = np.stack([np.broadcast_to(g.mean, (g.dim,)) for g in members])
    factors = np.stack([g.scale_tril for g in members])
    return Gaussian._trusted(means, factors)


def evaluate_members(
    fn: Callable[..., Any],
    build: ArgumentBuilder,
    cases: Sequence[Any],
    size: int,
    quantity: str,
) -> FloatArray:
    """``fn``'s value on each case, the cases packed ``size`` at a time.

    The last batch is padded with copies of its last case. Where a call raises or
    returns the wrong shape, its members get NaN.
    """
    values = np.full(len(cases), np.nan)
    for start in range(0, len(cases), size):
        chunk = list(cases[start : start + size])
        padded = chunk + [chunk[-1]] * (size - len(chunk))
        try:
            out = as_values(invoke(fn, *build(padded)), size, quantity)
        except Exception:
            continue
        values[start : start + len(chunk)] = out[: len(chunk)]
    return values
