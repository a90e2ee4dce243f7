r"""Parametrisations of a Gaussian ``q``: the user's parameters and the chain rule to them.

Real guides hold unconstrained parameters (log-scales, softplus-scales, log-variances,
unit-lower factors times scales); the oracle differentiates in q's mean :math:`m` and
Cholesky factor :math:`L`. A :class:`Parametrisation` maps parameters (a dict of named
float64 arrays, :attr:`~Parametrisation.keys` in order) to a Gaussian and back, and
pulls a gradient in :math:`(m, L)` back to them exactly (a vector-Jacobian product), so
that :func:`~elbo_check.testing.verify_elbo_gradient` checks the user's own gradients.

Entries that are not parameters (above the diagonal of a Cholesky factor, the unit
diagonal of a unit-lower factor) have gradient 0: an optimiser step must not move
them. For a symmetric matrix parameter (covariance, precision) only the symmetric part
of a gradient is defined; the pullback returns the symmetric gradient :math:`G` with
:math:`d\,\mathrm{ELBO} = \sum_{ij} G_{ij}\, dS_{ij}` for every symmetric :math:`dS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.special
from numpy.typing import NDArray

from .._errors import InvalidInputError, InvalidTypeError
from .._gaussian import Gaussian
from .._validation import as_real_array

__all__ = ["FloatArray", "Parametrisation", "Params"]

FloatArray = NDArray[np.float64]
Params = dict[str, FloatArray]

#: Kinds of parameter arrays (which entries are free, how a gradient is compared):
#: "vector", "free": every entry; "lower", "strict_lower": that triangle (other entries
#: must have gradient 0); "symmetric": the symmetric part.


# ---------------------------------------------------------------------- positive maps
@dataclass(frozen=True)
class _Positive:
    """A map ``u -> s > 0`` of the array ``key``, ``ds/du`` (of ``u, s``) and its inverse."""

    key: str
    kind: str
    forward: Callable[[FloatArray], FloatArray]
    derivative: Callable[[FloatArray, FloatArray], FloatArray]
    inverse: Callable[[FloatArray], FloatArray]


_POSITIVE = {
    "identity": _Positive("scale", "identity", np.copy, lambda u, s: np.ones_like(u), np.copy),
    "exp": _Positive("log_scale", "exp", np.exp, lambda u, s: s, np.log),
    # softplus(u) = log(1 + e^u); inverse log(e^s - 1) = s + log(1 - e^-s), no overflow
    "softplus": _Positive(
        "raw_scale",
        "softplus",
        lambda u: np.logaddexp(0.0, u),
        lambda u, s: np.asarray(scipy.special.expit(u), dtype=np.float64),
        lambda s: s + np.log(-np.expm1(-s)),
    ),
    "log_variance": _Positive(
        "log_variance",
        "log_variance",
        lambda u: np.exp(0.5 * u),
        lambda u, s: 0.5 * s,
        lambda s: 2.0 * np.log(s),
    ),
}


def _scales(transform: _Positive, params: Params) -> FloatArray:
    scale = transform.forward(params[transform.key])
    if not np.all(scale > 0) or not np.all(np.isfinite(scale)):
        raise InvalidInputError(
            f"params[{transform.key!r}] must give positive, finite scales; got {scale!r}"
        )
    return scale


# ---------------------------------------------------------------------- base class
class Parametrisation:
    r"""How the user's parameters define q, and the exact chain rule from :math:`(m, L)`.

    Notes
    -----
    With :math:`g_m = \partial\,\mathrm{ELBO}/\partial m` and :math:`G_L` the (lower
    triangular) gradient with respect to :math:`L`, the gradient with respect to a
    parameter :math:`\theta` is the vector-Jacobian product

    .. math::
        \frac{\partial\,\mathrm{ELBO}}{\partial\theta}
        = g_m^\top \frac{\partial m}{\partial\theta}
        + \sum_{i \ge j} (G_L)_{ij} \frac{\partial L_{ij}}{\partial\theta}.
    """

    #: Names of the parameters, in the order of a gradient returned as a tuple.
    keys: tuple[str, ...] = ()
    #: Kinds of covariance (``strategies.gaussians`` ``cov_kinds``) the family holds.
    cov_kinds: tuple[str, ...] = ("isotropic", "diagonal", "full")
    #: The kind (see ``_KINDS``) of each key, in the order of :attr:`keys`.
    _key_kinds: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def to_gaussian(self, params: Mapping[str, Any]) -> Gaussian:
        """The Gaussian ``q`` the parameters describe."""
        return self._to_gaussian(self.check_params(params))

    def from_gaussian(self, q: Gaussian) -> Params:
        """Parameters of ``q`` (the inverse of :meth:`to_gaussian` on the family).

        For a diagonal family, ``q`` must have a diagonal covariance; use
        :meth:`project` first for any other ``q``.
        """
        return self._from_gaussian(self._check_q(q))

    def project(self, q: Gaussian) -> Gaussian:
        """A member of the family close to ``q`` (``q`` itself for full families)."""
        return self._check_q(q, exact=False)

    def pullback(
        self, point: Gaussian | Mapping[str, Any], grad_mean: Any, grad_scale_tril: Any
    ) -> Params:
        """The gradient with respect to the parameters, from the one in ``(m, L)``.

        ``point`` is the parameters or q (then :meth:`from_gaussian` gives them);
        ``grad_scale_tril`` is read below and on the diagonal only.
        """
        params = self.from_gaussian(point) if isinstance(point, Gaussian) else point
        return self.pullback_with_error(params, grad_mean, grad_scale_tril)[0]

    def pullback_with_error(
        self, params: Mapping[str, Any], grad_mean: Any, grad_scale_tril: Any
    ) -> tuple[Params, Params]:
        """:meth:`pullback` at ``params`` and a bound on its error (zeros when exact)."""
        checked = self.check_params(params)
        k = self._dim(checked)
        gm = np.asarray(grad_mean, dtype=np.float64).reshape(-1)
        gl = np.tril(np.asarray(grad_scale_tril, dtype=np.float64))
        if gm.shape != (k,) or gl.shape != (k, k):
            raise InvalidInputError(
                f"grad_mean must have shape ({k},) and grad_scale_tril ({k}, {k}); "
                f"got {gm.shape} and {gl.shape}"
            )
        return self._pullback_with_error(checked, gm, gl)

    # ------------------------------------------------------------------ validation
    def check_params(self, params: Mapping[str, Any], what: str = "params") -> Params:
        """``params`` as a dict of finite float64 arrays with the expected keys and
        shapes (a clear error naming the key otherwise)."""
        if not isinstance(params, Mapping):
            raise InvalidTypeError(
                f"{what} must be a dict with keys {self.keys} for {self!r}; "
                f"got {type(params).__name__}"
            )
        self._check_keys(params, what)
        out = {key: as_real_array(f"{what}[{key!r}]", params[key]) for key in self.keys}
        self._check_shapes(out, what)
        return out

    # ------------------------------------------------------------------ subclass hooks
    def _kind(self, key: str) -> str:
        return self._key_kinds[self.keys.index(key)]

    def _dim(self, params: Params) -> int:
        return int(params["loc"].shape[0])

    def _check_keys(self, mapping: Mapping[str, Any], what: str) -> None:
        unknown = [key for key in mapping if key not in self.keys]
        missing = [key for key in self.keys if key not in mapping]
        if unknown or missing:
            raise InvalidInputError(
                f"{what} must have exactly the keys {self.keys} for {self!r}; "
                + (f"unknown {unknown}" if unknown else "")
                + ("; " if unknown and missing else "")
                + (f"missing {missing}" if missing else "")
            )

    def _check_shapes(self, params: Params, what: str) -> None:
        loc = params["loc"]
        if loc.ndim != 1 or loc.shape[0] < 1:
            raise InvalidInputError(
                f"{what}['loc'] must have shape (K,) with K >= 1 (one q, not a batch); "
                f"got {loc.shape}"
            )
        k = loc.shape[0]
        for key in self.keys[1:]:
            shape = (k,) if self._kind(key) == "vector" else (k, k)
            if params[key].shape != shape:
                raise InvalidInputError(
                    f"{what}[{key!r}] must have shape {shape} to match {what}['loc'] of "
                    f"shape ({k},); got {params[key].shape}"
                )

    def _check_q(self, q: Gaussian, exact: bool = True) -> Gaussian:
        if not isinstance(q, Gaussian) or q.batch_shape != ():
            raise InvalidInputError(f"q must be one Gaussian (not a batch); got {q!r}")
        return q

    def _to_gaussian(self, params: Params) -> Gaussian:
        raise NotImplementedError

    def _from_gaussian(self, q: Gaussian) -> Params:
        raise NotImplementedError

    def _pullback(self, params: Params, gm: FloatArray, gl: FloatArray) -> Params:
        raise NotImplementedError

    def _pullback_with_error(
        self, params: Params, gm: FloatArray, gl: FloatArray
    ) -> tuple[Params, Params]:
        grads = self._pullback(params, gm, gl)
        return grads, {key: np.zeros_like(value) for key, value in grads.items()}
