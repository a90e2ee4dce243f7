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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.special
from numpy.typing import NDArray

from .._errors import InvalidInputError, InvalidTypeError
from .._gaussian import Gaussian
from .._linalg import solve_tril
from .._validation import as_real_array
from ._returns import invoke, to_array

__all__ = [
    "Custom",
    "DiagonalLogScale",
    "DiagonalLogVariance",
    "DiagonalSoftplusScale",
    "FullCholesky",
    "FullCovariance",
    "FullPrecision",
    "FullUnitCholeskyScale",
    "Parametrisation",
]

FloatArray = NDArray[np.float64]
Params = dict[str, FloatArray]

#: Kinds of parameter arrays (which entries are free, how a gradient is compared):
#: "vector", "free": every entry; "lower", "strict_lower": that triangle (other entries
#: must have gradient 0); "symmetric": the symmetric part.

#: Relative step of the central differences of :class:`Custom`: ``eps**(1/3)``
#: balances the O(h^2) truncation error against the O(eps/h) rounding error.
_RELATIVE_STEP = float(np.finfo(np.float64).eps) ** (1.0 / 3.0)
_TRUNCATION_SAFETY, _ROUNDING_SAFETY = 2.0, 16.0  #: on the two terms of the error bound


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


# ---------------------------------------------------------------------- diagonal maps
class _Diagonal(Parametrisation):
    r"""``q = N(loc, diag(s)^2)`` with ``s = f(u)`` elementwise.

    Notes
    -----
    Only the diagonal of :math:`L = \operatorname{diag}(s)` moves, so
    :math:`\partial\,\mathrm{ELBO}/\partial u_i = (G_L)_{ii}\, f'(u_i)`.
    """

    cov_kinds = ("isotropic", "diagonal")
    _key_kinds = ("vector", "vector")
    _transform: ClassVar[_Positive]

    def __init__(self) -> None:
        self.keys = ("loc", self._transform.key)

    def _check_q(self, q: Gaussian, exact: bool = True) -> Gaussian:
        q = super()._check_q(q)
        if np.any(np.tril(q.scale_tril, -1) != 0):
            if exact:
                raise InvalidInputError(
                    f"{self!r} describes diagonal covariances; q's Cholesky factor has "
                    "entries below the diagonal (project(q) gives a diagonal q)"
                )
            return Gaussian.from_diagonal(mean=q.mean, variances=q.variances)
        return q

    def _to_gaussian(self, params: Params) -> Gaussian:
        scale = _scales(self._transform, params)
        return Gaussian.from_cholesky(mean=params["loc"], scale_tril=np.diag(scale))

    def _from_gaussian(self, q: Gaussian) -> Params:
        scale = np.diagonal(q.scale_tril).copy()
        return {"loc": q.mean.copy(), self._transform.key: self._transform.inverse(scale)}

    def _pullback(self, params: Params, gm: FloatArray, gl: FloatArray) -> Params:
        u = params[self._transform.key]
        factor = self._transform.derivative(u, self._transform.forward(u))
        return {"loc": gm.copy(), self._transform.key: np.diagonal(gl) * factor}


class DiagonalLogScale(_Diagonal):
    r"""``{"loc": (K,), "log_scale": (K,)}``: scales :math:`s = e^{u}`.

    A mean-field guide with an exponentiated scale (Pyro's ``AutoNormal`` with a
    ``positive`` scale constraint).

    Notes
    -----
    .. math::
        L = \operatorname{diag}(e^{u}), \qquad
        \frac{\partial\,\mathrm{ELBO}}{\partial u_i} = (G_L)_{ii}\, s_i.
    """

    _transform = _POSITIVE["exp"]


class DiagonalSoftplusScale(_Diagonal):
    r"""``{"loc": (K,), "raw_scale": (K,)}``: scales :math:`s = \log(1 + e^{u})`.

    Pyro's ``AutoNormal`` (``softplus_positive`` scale), GPyTorch's ``raw_*`` parameters.

    Notes
    -----
    .. math::
        \frac{\partial\,\mathrm{ELBO}}{\partial u_i} = (G_L)_{ii}\, \sigma(u_i),
        \qquad u = s + \log(1 - e^{-s}),

    with :math:`\sigma` the logistic function (the derivative of softplus).
    """

    _transform = _POSITIVE["softplus"]


class DiagonalLogVariance(_Diagonal):
    r"""``{"loc": (K,), "log_variance": (K,)}``: variances :math:`e^{v}` (a VAE's ``logvar``).

    Notes
    -----
    .. math::
        s = e^{v/2}, \qquad
        \frac{\partial\,\mathrm{ELBO}}{\partial v_i} = \tfrac12 (G_L)_{ii}\, s_i.
    """

    _transform = _POSITIVE["log_variance"]


# ---------------------------------------------------------------------- full maps
class FullCholesky(Parametrisation):
    r"""``{"loc": (K,), "scale_tril": (K, K)}``: q's mean and lower Cholesky factor.

    The identity map: the gradient for ``scale_tril`` is :math:`G_L`, 0 above the
    diagonal (those entries are not parameters).
    """

    keys = ("loc", "scale_tril")
    _key_kinds = ("vector", "lower")

    def _to_gaussian(self, params: Params) -> Gaussian:
        return Gaussian.from_cholesky(mean=params["loc"], scale_tril=params["scale_tril"])

    def _from_gaussian(self, q: Gaussian) -> Params:
        return {"loc": q.mean.copy(), "scale_tril": q.scale_tril.copy()}

    def _pullback(self, params: Params, gm: FloatArray, gl: FloatArray) -> Params:
        return {"loc": gm.copy(), "scale_tril": gl.copy()}


class FullUnitCholeskyScale(Parametrisation):
    r"""Row scales times a unit-lower factor: Pyro's ``AutoMultivariateNormal``.

    Parameters
    ----------
    scale_transform : {"identity", "exp", "softplus"}
        How the row scales are held: ``"identity"`` as ``"scale"`` (positive: the
        constrained value Pyro's guide exposes), ``"exp"`` as ``"log_scale"``,
        ``"softplus"`` as ``"raw_scale"`` (Pyro's unconstrained value).

    Notes
    -----
    Keys ``("loc", <scale key>, "unit_scale_tril")``. Pyro's
    ``scale_tril = scale[..., None] * unit_scale_tril`` scales the *rows* of the unit
    lower-triangular :math:`U`; with :math:`s = f(u)`,

    .. math::
        L = \operatorname{diag}(s)\, U, \qquad
        \frac{\partial\,\mathrm{ELBO}}{\partial u_i}
        = f'(u_i) \sum_{j \le i} (G_L)_{ij} U_{ij}, \qquad
        \frac{\partial\,\mathrm{ELBO}}{\partial U_{ij}} = s_i\, (G_L)_{ij} \quad (i > j),

    and 0 for the diagonal and upper entries of :math:`U`, which are not parameters.
    """

    _key_kinds = ("vector", "vector", "strict_lower")

    def __init__(self, scale_transform: str = "identity") -> None:
        if scale_transform not in ("identity", "exp", "softplus"):
            raise InvalidInputError(
                "scale_transform must be 'identity', 'exp' or 'softplus'; "
                f"got scale_transform={scale_transform!r}"
            )
        self._transform = _POSITIVE[scale_transform]
        self.keys = ("loc", self._transform.key, "unit_scale_tril")

    def __repr__(self) -> str:
        return f"FullUnitCholeskyScale(scale_transform={self._transform.kind!r})"

    def _to_gaussian(self, params: Params) -> Gaussian:
        unit = params["unit_scale_tril"]
        if np.any(np.triu(unit, 1) != 0) or np.any(np.diagonal(unit) != 1):
            raise InvalidInputError(
                "params['unit_scale_tril'] must be lower triangular with ones on the "
                f"diagonal; got {unit!r}"
            )
        factor = _scales(self._transform, params)[:, None] * unit
        return Gaussian.from_cholesky(mean=params["loc"], scale_tril=factor)

    def _from_gaussian(self, q: Gaussian) -> Params:
        scale = np.diagonal(q.scale_tril).copy()
        unit = np.tril(q.scale_tril / scale[:, None], -1) + np.eye(q.dim)
        key = self._transform.key
        return {"loc": q.mean.copy(), key: self._transform.inverse(scale), "unit_scale_tril": unit}

    def _pullback(self, params: Params, gm: FloatArray, gl: FloatArray) -> Params:
        key = self._transform.key
        u, unit = params[key], params["unit_scale_tril"]
        s = self._transform.forward(u)
        return {
            "loc": gm.copy(),
            key: np.sum(gl * unit, axis=1) * self._transform.derivative(u, s),
            "unit_scale_tril": np.tril(s[:, None] * gl, -1),
        }


def _phi(matrix: FloatArray) -> FloatArray:
    """The lower triangle of ``matrix`` with its diagonal halved."""
    lower = np.tril(matrix)
    lower[np.diag_indices_from(lower)] *= 0.5
    return lower


def _symmetric_gradient(factor: FloatArray, gl: FloatArray) -> FloatArray:
    r"""The symmetric :math:`G_S` with :math:`\langle G_L, dL\rangle = \langle G_S, dS\rangle`."""
    left = solve_tril(factor, _phi(factor.T @ gl), trans=True)  # L^{-T} Phi
    both = solve_tril(factor, left.T, trans=True).T  # L^{-T} Phi L^{-1}
    return np.asarray(0.5 * (both + both.T), dtype=np.float64)


class FullCovariance(Parametrisation):
    r"""``{"loc": (K,), "cov": (K, K)}``: q's mean and covariance :math:`S = L L^\top`.

    The pullback gives the symmetric gradient; a user's return is compared through its
    symmetric part, so the gradient in the lower triangle's entries (off-diagonals
    doubled, as autodiff through a one-triangle Cholesky gives) passes too.

    Notes
    -----
    Through the derivative of the Cholesky factorisation [1]_, with
    :math:`\Phi` the lower triangle with the diagonal halved,

    .. math::
        G_S = \operatorname{sym}\bigl(L^{-\top}\, \Phi(L^\top G_L)\, L^{-1}\bigr),

    by two triangular solves; for the ELBO :math:`G_S = \tfrac12 (S^{-1} - \Lambda)`.

    References
    ----------
    .. [1] I. Murray, "Differentiation of the Cholesky decomposition",
       arXiv:1602.07527, 2016.
    """

    keys = ("loc", "cov")
    _key_kinds = ("vector", "symmetric")

    def _to_gaussian(self, params: Params) -> Gaussian:
        return Gaussian.from_covariance(mean=params["loc"], cov=params["cov"])

    def _from_gaussian(self, q: Gaussian) -> Params:
        return {"loc": q.mean.copy(), "cov": q.cov.copy()}

    def _pullback(self, params: Params, gm: FloatArray, gl: FloatArray) -> Params:
        factor = self._to_gaussian(params).scale_tril
        return {"loc": gm.copy(), "cov": _symmetric_gradient(factor, gl)}


class FullPrecision(Parametrisation):
    r"""``{"loc": (K,), "precision": (K, K)}``: q's mean and precision :math:`P = S^{-1}`.

    The gradient for ``precision`` is symmetric and compared through its symmetric
    part, as for :class:`FullCovariance`.

    Notes
    -----
    :math:`dS = -S\, dP\, S`, so :math:`G_P = -S\, G_S\, S`; with :math:`G_S` of
    :class:`FullCovariance` this is, without any solve,

    .. math::
        G_P = -\operatorname{sym}\bigl(L\, \Phi(L^\top G_L)\, L^\top\bigr).
    """

    keys = ("loc", "precision")
    _key_kinds = ("vector", "symmetric")

    def _to_gaussian(self, params: Params) -> Gaussian:
        return Gaussian.from_precision(mean=params["loc"], precision=params["precision"])

    def _from_gaussian(self, q: Gaussian) -> Params:
        return {"loc": q.mean.copy(), "precision": q.precision.copy()}

    def _pullback(self, params: Params, gm: FloatArray, gl: FloatArray) -> Params:
        factor = self._to_gaussian(params).scale_tril
        product = factor @ _phi(factor.T @ gl) @ factor.T
        return {"loc": gm.copy(), "precision": -0.5 * (product + product.T)}


# ---------------------------------------------------------------------- user maps
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
    keys : tuple of str
        The parameters' names, in the order of a gradient returned as a tuple.
    cov_kinds : sequence of {"isotropic", "diagonal", "full"}
        The covariances drawn for ``q`` before ``from_gaussian``.

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
    second the rounding error of the differences.
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
