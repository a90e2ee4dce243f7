r"""The built-in parametrisations: diagonal (mean-field) and full-covariance families.

Each maps a dict of named arrays to a Gaussian ``q`` and pulls a gradient in q's mean and
Cholesky factor back to its parameters exactly (see :mod:`._parametrisation_base`). The
base class and :class:`Custom` live in their own modules and are re-exported here, the
import path the rest of the package and the tests use.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .._errors import InvalidInputError
from .._gaussian import Gaussian
from .._linalg import solve_tril
from ._custom_parametrisation import Custom
from ._parametrisation_base import (
    _POSITIVE,
    FloatArray,
    Parametrisation,
    Params,
    _Positive,
    _scales,
)

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

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check.testing import DiagonalLogScale
    >>> par = DiagonalLogScale()
    >>> par.keys, par.cov_kinds
    (('loc', 'log_scale'), ('isotropic', 'diagonal'))
    >>> q = par.to_gaussian({"loc": [0.0, 1.0], "log_scale": [0.0, np.log(3.0)]})
    >>> np.diagonal(q.cov)
    array([1., 9.])

    The gradient in the log-scales is the one in the scales times :math:`s_i`:

    >>> par.pullback(q, grad_mean=[0.0, 0.0], grad_scale_tril=np.diag([0.5, 0.5]))
    {'loc': array([0., 0.]), 'log_scale': array([0.5, 1.5])}
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

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian
    >>> from elbo_check.testing import DiagonalSoftplusScale
    >>> par = DiagonalSoftplusScale()
    >>> params = par.from_gaussian(Gaussian.from_diagonal(mean=[0.0, 1.0], variances=[1.0, 4.0]))
    >>> params["raw_scale"].round(6)
    array([0.541325, 1.854587])
    >>> np.logaddexp(0.0, params["raw_scale"])  # softplus gives the scales back
    array([1., 2.])
    """

    _transform = _POSITIVE["softplus"]


class DiagonalLogVariance(_Diagonal):
    r"""``{"loc": (K,), "log_variance": (K,)}``: variances :math:`e^{v}` (a VAE's ``logvar``).

    Notes
    -----
    .. math::
        s = e^{v/2}, \qquad
        \frac{\partial\,\mathrm{ELBO}}{\partial v_i} = \tfrac12 (G_L)_{ii}\, s_i.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check.testing import DiagonalLogVariance
    >>> par = DiagonalLogVariance()
    >>> q = par.to_gaussian({"loc": [0.0], "log_variance": [np.log(4.0)]})
    >>> q.cov
    array([[4.]])
    >>> par.pullback(q, grad_mean=[0.0], grad_scale_tril=[[1.0]])["log_variance"]  # s / 2
    array([1.])
    """

    _transform = _POSITIVE["log_variance"]


# ---------------------------------------------------------------------- full maps
class FullCholesky(Parametrisation):
    r"""``{"loc": (K,), "scale_tril": (K, K)}``: q's mean and lower Cholesky factor.

    The identity map: the gradient for ``scale_tril`` is :math:`G_L`, 0 above the
    diagonal (those entries are not parameters). ``params["scale_tril"]`` must be lower
    triangular with a positive diagonal.

    Examples
    --------
    >>> from elbo_check.testing import FullCholesky
    >>> par = FullCholesky()
    >>> params = {"loc": [0.0, 1.0], "scale_tril": [[1.0, 0.0], [0.5, 2.0]]}
    >>> par.to_gaussian(params).cov
    array([[1.  , 0.5 ],
           [0.5 , 4.25]])
    >>> par.pullback(params, [1.0, 0.0], [[1.0, 7.0], [2.0, 3.0]])["scale_tril"]
    array([[1., 0.],
           [2., 3.]])
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

    Raises
    ------
    InvalidInputError
        If ``scale_transform`` is not ``"identity"``, ``"exp"`` or ``"softplus"``.

    Examples
    --------
    The factor's rows divided by their diagonal entries give the unit-lower factor:

    >>> import numpy as np
    >>> from elbo_check import Gaussian
    >>> from elbo_check.testing import FullUnitCholeskyScale
    >>> par = FullUnitCholeskyScale("softplus")
    >>> par.keys
    ('loc', 'raw_scale', 'unit_scale_tril')
    >>> q = Gaussian.from_cholesky(mean=[0.0, 1.0], scale_tril=[[2.0, 0.0], [1.0, 0.5]])
    >>> params = par.from_gaussian(q)
    >>> params["unit_scale_tril"]
    array([[1., 0.],
           [2., 1.]])
    >>> np.allclose(par.to_gaussian(params).cov, q.cov)
    True
    >>> FullUnitCholeskyScale("log")  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
      ...
    elbo_check._errors.InvalidInputError: scale_transform must be 'identity', 'exp' or
    'softplus'; got scale_transform='log'
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

    by two triangular solves. For the ELBO, :math:`G_S = \tfrac12 (S^{-1} - \Lambda)`
    with :math:`\Lambda` the precision of the exact posterior :math:`p(z \mid x)`.

    Examples
    --------
    The pullback of the oracle's gradient is :math:`\tfrac12 (S^{-1} - \Lambda)`:

    >>> import numpy as np
    >>> from elbo_check import Gaussian, ppca
    >>> from elbo_check.testing import FullCovariance
    >>> model = ppca(weights=[[1.0, 0.5], [0.2, -0.3], [0.0, 1.0]],
    ...              mean=[0.0, 1.0, -1.0], noise_variance=0.4)
    >>> x = np.array([0.5, 1.0, -2.0])
    >>> q = Gaussian.from_covariance(mean=[0.3, -0.2], cov=[[0.5, 0.2], [0.2, 0.8]])
    >>> g = model.elbo_grad_variational(q, x)
    >>> grad_cov = FullCovariance().pullback(q, g.mean, g.scale_tril)["cov"]
    >>> np.allclose(grad_cov, 0.5 * (q.precision - model.posterior(x).precision))
    True

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

    Examples
    --------
    :math:`G_P = -S\, G_S\, S`, with :math:`G_S` the gradient in the covariance:

    >>> import numpy as np
    >>> from elbo_check import Gaussian, ppca
    >>> from elbo_check.testing import FullCovariance, FullPrecision
    >>> model = ppca(weights=[[1.0, 0.5], [0.2, -0.3], [0.0, 1.0]],
    ...              mean=[0.0, 1.0, -1.0], noise_variance=0.4)
    >>> x = np.array([0.5, 1.0, -2.0])
    >>> q = Gaussian.from_covariance(mean=[0.3, -0.2], cov=[[0.5, 0.2], [0.2, 0.8]])
    >>> g = model.elbo_grad_variational(q, x)
    >>> grad_cov = FullCovariance().pullback(q, g.mean, g.scale_tril)["cov"]
    >>> grad_precision = FullPrecision().pullback(q, g.mean, g.scale_tril)["precision"]
    >>> np.allclose(grad_precision, -q.cov @ grad_cov @ q.cov)
    True
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
