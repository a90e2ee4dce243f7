"""Argument checks and shared plumbing of the Rényi-family functions.

Every public function of :mod:`elbo_check._renyi`, :mod:`elbo_check._importance_weights`
and :mod:`elbo_check._renyi_gradients` validates its arguments here, pairs ``q`` with the
exact posterior (through the model's public API only) and evaluates the closed form of
:mod:`elbo_check._renyi_core`.
"""

from __future__ import annotations

import numbers
import reprlib
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._errors import InvalidInputError, InvalidTypeError
from ._gaussian import Gaussian, _scalar_or_array
from ._renyi_core import EPS, Divergence, Order, Pair, evaluate, raise_outside, rounding_bound
from ._renyi_core import whiten as whiten_pair
from ._validation import as_event_array, describe_shape

if TYPE_CHECKING:
    from ._model import LinearGaussianModel

__all__ = ["bound_at", "check_model", "check_q", "divergence", "finished", "pair_with", "real"]

FloatArray = NDArray[np.float64]


def check_model(model: Any) -> LinearGaussianModel:
    """``model`` if it is a :class:`~elbo_check.LinearGaussianModel`, else raise.

    The public functions are bound as the model's methods, where ``self`` is always a
    model; this catches the unbound function called with something else.
    """
    from ._model import LinearGaussianModel  # here, not above: _model binds our functions

    if not isinstance(model, LinearGaussianModel):
        raise InvalidTypeError(f"model must be a LinearGaussianModel; got {type(model).__name__}")
    return model


def check_q(model: LinearGaussianModel, q: Any) -> Gaussian:
    """``q`` if it is a Gaussian over the model's latent space, else raise (the model's
    own check, so the Rényi methods refuse a ``q`` exactly as ``elbo`` does)."""
    return model._check_q(q)


def real(name: str, value: Any) -> float:
    """A finite real number (a Python or numpy int or float, or a 0-d real array; not a
    bool, which is almost always a mistake) as a float, or raise naming ``name``."""
    array = value if isinstance(value, np.ndarray) else None
    scalar = isinstance(value, numbers.Real) or (array is not None and array.ndim == 0)
    if isinstance(value, (bool, np.bool_)) or not scalar:
        raise InvalidTypeError(
            f"{name} must be a real number; got {reprlib.repr(value)} ({type(value).__name__})"
        )
    if array is not None and array.dtype.kind not in "iuf":
        raise InvalidTypeError(f"{name} must be a real number; got an array of dtype {array.dtype}")
    number = float(value)
    if not np.isfinite(number):
        raise InvalidInputError(f"{name} must be finite; got {name} = {number!r}")
    return number


def pair_with(model: LinearGaussianModel, q: Gaussian, x: ArrayLike) -> tuple[Pair, FloatArray]:
    """q and the exact posterior at ``x``, broadcast over their common batch; and ``x``."""
    data = as_event_array("x", x, model.data_dim, "D")
    try:
        batch = tuple(np.broadcast_shapes(data.shape[:-1], q.batch_shape))
    except ValueError as err:
        raise InvalidInputError(
            f"the batch shapes of q {describe_shape(q.batch_shape)} and of x "
            f"{describe_shape(data.shape[:-1])} do not broadcast"
        ) from err
    posterior = model.posterior(data)
    k = model.latent_dim
    offsets = np.broadcast_to(q.mean, (*batch, k)) - np.broadcast_to(posterior.mean, (*batch, k))
    pair = Pair(batch, q.scale_tril, posterior.scale_tril, offsets, q.mean, posterior.mean)
    return pair, data


def divergence(pair: Pair, order: Order, name: str, value: float, flip: bool) -> Divergence:
    """The divergence part at ``order``, or the domain error naming the caller's argument
    ``name = value`` (``flip``: that argument is ``1 - alpha``)."""
    found = evaluate(whiten_pair(pair, order.orientation), order)
    if found is None:
        raise_outside(pair, name, value, order.alpha, flip)
        raise AssertionError("unreachable")  # pragma: no cover
    return found


def finished(values: Any, batch: tuple[int, ...], name: str, value: float) -> Any:
    """``values`` broadcast to ``batch`` as a float or a fresh array; never a NaN."""
    result = np.array(np.broadcast_to(np.asarray(values, dtype=np.float64), batch))
    if np.any(np.isnan(result)):
        raise InvalidInputError(
            f"{name} = {value!r} gives a value that float64 cannot represent (the closed "
            "form's terms overflow)"
        )
    return _scalar_or_array(result)


def bound_at(
    model: LinearGaussianModel,
    q: Gaussian,
    x: ArrayLike,
    order: Order,
    argument: tuple[str, float, bool],
    with_bound: bool = False,
) -> tuple[FloatArray, FloatArray | None, tuple[int, ...]]:
    """``(L_alpha, its error bound or None, batch)``: the ELBO minus the divergence's
    excess for ``alpha >= 1/2``, ``log p(x)`` minus the divergence below.
    ``argument`` is the caller's ``(name, value, flip)`` for the domain error."""
    pair, data = pair_with(model, q, x)
    name, value, flip = argument
    found = divergence(pair, order, name, value, flip)
    if found.whitened.orientation == "posterior":
        base = model.elbo(q, data, return_error_bound=with_bound)
    else:
        base = model.log_evidence(data, return_error_bound=with_bound)
    base_bound: Any = 0.0
    if with_bound:
        base, base_bound = base
    with np.errstate(over="ignore", invalid="ignore"):
        result = np.asarray(np.asarray(base, dtype=np.float64) - found.value, dtype=np.float64)
    if not with_bound:
        return result, None, pair.batch
    bound = (
        np.asarray(base_bound) + rounding_bound(found, pair, model.data_dim) + EPS * np.abs(result)
    )
    return result, np.asarray(bound, dtype=np.float64), pair.batch
