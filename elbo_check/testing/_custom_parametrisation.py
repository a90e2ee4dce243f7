r"""The user's own parametrisation (:class:`Custom`), differentiated by central differences."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .._errors import InvalidInputError, InvalidTypeError
from .._gaussian import Gaussian
from ._parametrisation_base import FloatArray, Parametrisation, Params
from ._returns import invoke, to_array

__all__ = ["Custom"]

#: Relative step of the central differences of :class:`Custom`: ``eps**(1/3)``
#: balances the O(h^2) truncation error against the O(eps/h) rounding error.
_RELATIVE_STEP = float(np.finfo(np.float64).eps) ** (1.0 / 3.0)
_TRUNCATION_SAFETY, _ROUNDING_SAFETY = 2.0, 16.0  #: on the two terms of the error bound


class Custom(Parametrisation):
    r"""A user's map ``params -> Gaussian``, differentiated by central differences.

    Parameters
    ----------
    to_gaussian : callable
        ``to_gaussian(params) -> Gaussian`` for a dict of arrays ``params``; one q (not a
        batch), differentiable in every entry of every array.
    from_gaussian : callable
        ``from_gaussian(q) -> params``: parameters of a member of the family near ``q``
        (used to draw problems; the check runs at ``to_gaussian(params)``).
    keys : sequence of str
        The parameters' names, in the order of a gradient returned as a tuple.
    cov_kinds : sequence of {"isotropic", "diagonal", "full"}, optional
        The covariances drawn for ``q`` before ``from_gaussian`` (default all three).

    Raises
    ------
    InvalidTypeError
        If ``to_gaussian`` or ``from_gaussian`` is not callable.
    InvalidInputError
        If ``keys`` is not a non-empty sequence of strings (a single string is
        refused), or ``cov_kinds`` is empty or names another kind.

    Notes
    -----
    Each entry :math:`\theta_i` is stepped by :math:`h_i = \epsilon^{1/3}
    \max(|\theta_i|, \overline{|\theta|})` (the mean magnitude of its array, or 1 when
    that is 0). With :math:`c(\theta) = g_m^\top m(\theta) + \langle G_L,
    L(\theta)\rangle` and central differences :math:`D_h` and :math:`D_{2h}` (error
    :math:`O(h^2)`), the gradient is the Richardson value :math:`(4 D_h - D_{2h})/3`
    and its error bound, which the verifier adds to the tolerance, is

    .. math::
        2\,|D_h - D_{2h}| + 16\,\epsilon\, \frac{|g_m|^\top |m| + \langle |G_L|,
        |L|\rangle}{h_i},

    the first term :math:`\approx 6\times` the truncation error of :math:`D_h`, the
    second the rounding error of the differences. Every pullback calls ``to_gaussian``
    four times per parameter entry.

    The methods check what the two functions return: :meth:`to_gaussian` raises
    :class:`~elbo_check.InvalidInputError` when ``to_gaussian`` returns anything but one
    Gaussian; :meth:`from_gaussian` raises :class:`~elbo_check.InvalidTypeError` or
    :class:`~elbo_check.InvalidInputError` when ``from_gaussian`` returns anything but a
    dict of finite real arrays with exactly ``keys``. An exception raised by either
    function propagates unchanged.

    Examples
    --------
    An isotropic q held as its mean and one log standard deviation, a family no
    built-in parametrisation has:

    >>> import numpy as np
    >>> from elbo_check import Gaussian
    >>> from elbo_check.testing import Custom
    >>> def to_gaussian(params):
    ...     variances = np.exp(2 * params["log_sd"][0]) * np.ones(len(params["loc"]))
    ...     return Gaussian.from_diagonal(mean=params["loc"], variances=variances)
    >>> def from_gaussian(q):
    ...     return {"loc": q.mean, "log_sd": np.array([0.5 * np.log(np.mean(q.variances))])}
    >>> par = Custom(to_gaussian, from_gaussian, keys=("loc", "log_sd"), cov_kinds=("isotropic",))
    >>> params = {"loc": np.array([0.3, -0.2]), "log_sd": np.array([0.1])}
    >>> grads, errors = par.pullback_with_error(params, [1.0, 2.0], np.diag([0.5, 0.25]))

    The exact value is :math:`((G_L)_{11} + (G_L)_{22})\, e^{0.1}`:

    >>> round(float(grads["log_sd"][0]), 6), round(float(0.75 * np.exp(0.1)), 6)
    (0.828878, 0.828878)
    >>> bool(errors["log_sd"][0] < 1e-7)
    True
    """

    def __init__(
        self,
        to_gaussian: Callable[[Params], Gaussian],
        from_gaussian: Callable[[Gaussian], Mapping[str, Any]],
        *,
        keys: Sequence[str],
        cov_kinds: tuple[str, ...] = ("isotropic", "diagonal", "full"),
    ) -> None:
        for name, fn in (("to_gaussian", to_gaussian), ("from_gaussian", from_gaussian)):
            if not callable(fn):
                raise InvalidTypeError(f"{name} must be callable; got {type(fn).__name__}")
        if isinstance(keys, str) or not keys or not all(isinstance(k, str) for k in keys):
            raise InvalidInputError(f"keys must be a non-empty tuple of strings; got {keys!r}")
        kinds = tuple(cov_kinds)
        if not kinds or any(k not in ("isotropic", "diagonal", "full") for k in kinds):
            raise InvalidInputError(
                "cov_kinds must be a non-empty sequence of 'isotropic', 'diagonal', 'full'; "
                f"got cov_kinds={cov_kinds!r}"
            )
        self._map, self._inverse, self.cov_kinds = to_gaussian, from_gaussian, kinds
        self.keys, self._key_kinds = tuple(keys), ("free",) * len(keys)

    def __repr__(self) -> str:
        return f"Custom({getattr(self._map, '__name__', 'to_gaussian')})"

    def _dim(self, params: Params) -> int:
        return self._to_gaussian(params).dim

    def _check_shapes(self, params: Params, what: str) -> None:
        pass

    def _to_gaussian(self, params: Params) -> Gaussian:
        q = invoke(self._map, {key: value.copy() for key, value in params.items()})
        if not isinstance(q, Gaussian) or q.batch_shape != ():
            raise InvalidInputError(f"to_gaussian must return one Gaussian; got {q!r}")
        return q

    def _from_gaussian(self, q: Gaussian) -> Params:
        value = invoke(self._inverse, q)
        if isinstance(value, Mapping):  # a user's return: read through to_array
            value = {key: to_array(item, f"from_gaussian ({key!r})") for key, item in value.items()}
        return self.check_params(value, "from_gaussian(q)")

    def _pullback_with_error(
        self, params: Params, gm: FloatArray, gl: FloatArray
    ) -> tuple[Params, Params]:
        base = self._to_gaussian(params)
        size = float(np.abs(gm) @ np.abs(base.mean) + np.sum(np.abs(gl) * np.abs(base.scale_tril)))
        rounding = _ROUNDING_SAFETY * float(np.finfo(np.float64).eps) * size
        grads = {key: np.zeros_like(value) for key, value in params.items()}
        errors = {key: np.zeros_like(value) for key, value in params.items()}
        for key, value in params.items():
            typical = float(np.mean(np.abs(value))) or 1.0
            for index in np.ndindex(*value.shape):
                step = _RELATIVE_STEP * max(abs(float(value[index])), typical)
                one, two = (
                    self._difference(params, key, index, h, gm, gl) for h in (step, 2 * step)
                )
                grads[key][index] = (4.0 * one - two) / 3.0
                errors[key][index] = _TRUNCATION_SAFETY * abs(one - two) + rounding / step
        return grads, errors

    def _difference(
        self, params: Params, key: str, index: Any, step: float, gm: FloatArray, gl: FloatArray
    ) -> float:
        """The central difference of ``<g_m, m> + <G_L, L>`` along one entry."""
        moved = []
        for sign in (1.0, -1.0):
            shifted = dict(params, **{key: params[key].copy()})
            shifted[key][index] += sign * step
            moved.append((self._to_gaussian(shifted), shifted[key][index]))
        (up, high), (down, low) = moved
        change = (up.mean - down.mean) @ gm + np.sum((up.scale_tril - down.scale_tril) * gl)
        return float(change) / float(high - low)  # the step as stored, not as intended
