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

    A parametrisation maps a dict of named arrays (its :attr:`keys`, e.g. ``{"loc": m,
    "log_scale": u}``) to one Gaussian :math:`q = \mathcal N(m, L L^\top)`
    (:meth:`to_gaussian`), a member of its family back to the arrays
    (:meth:`from_gaussian`), and pulls a gradient with respect to q's mean :math:`m` and
    lower Cholesky factor :math:`L` back to the parameters (:meth:`pullback`). Pass one
    to :func:`~elbo_check.testing.verify_elbo_gradient` (``parametrisation=``) to check
    a gradient computed in your own parameters.

    Use a built-in family (:class:`DiagonalLogScale`, :class:`DiagonalSoftplusScale`,
    :class:`DiagonalLogVariance`, :class:`FullCholesky`,
    :class:`FullUnitCholeskyScale`, :class:`FullCovariance`, :class:`FullPrecision`,
    :class:`ScaledLowRank`) or wrap your own map in :class:`Custom`; this base class is
    not used directly.

    Attributes
    ----------
    keys : tuple of str
        The names of the parameter arrays, in the order of a gradient returned as a
        tuple.
    cov_kinds : tuple of str
        The covariance kinds the family holds (some of ``"isotropic"``,
        ``"diagonal"``, ``"full"``): the verifiers draw q's of these kinds.

    See Also
    --------
    verify_elbo_gradient : Checks a gradient in these parameters against the oracle's.

    Notes
    -----
    With :math:`g_m = \partial\,\mathrm{ELBO}/\partial m` and :math:`G_L` the (lower
    triangular) gradient with respect to :math:`L`, the gradient with respect to a
    parameter :math:`\theta` is the vector-Jacobian product

    .. math::
        \frac{\partial\,\mathrm{ELBO}}{\partial\theta}
        = g_m^\top \frac{\partial m}{\partial\theta}
        + \sum_{i \ge j} (G_L)_{ij} \frac{\partial L_{ij}}{\partial\theta}.

    Entries that are not parameters (above the diagonal of a Cholesky factor, the unit
    diagonal of a unit-lower factor) get gradient 0. For a symmetric matrix parameter
    (a covariance or a precision) the pullback is the symmetric :math:`G` with
    :math:`d\,\mathrm{ELBO} = \sum_{ij} G_{ij}\, dS_{ij}` for every symmetric
    :math:`dS`.

    Examples
    --------
    The gradient in a log-scale parametrisation, from the oracle's gradient in
    :math:`(m, L)`, agrees with a central difference of the ELBO in the parameters:

    >>> import numpy as np
    >>> from elbo_check import ppca
    >>> from elbo_check.testing import DiagonalLogScale
    >>> model = ppca(weights=[[1.0, 0.5], [0.2, -0.3], [0.0, 1.0]],
    ...              mean=[0.0, 1.0, -1.0], noise_variance=0.4)
    >>> x = np.array([0.5, 1.0, -2.0])
    >>> par = DiagonalLogScale()
    >>> params = {"loc": np.array([0.3, -0.2]), "log_scale": np.array([-0.5, 0.1])}
    >>> q = par.to_gaussian(params)
    >>> g = model.elbo_grad_variational(q, x)
    >>> grads = par.pullback(params, g.mean, g.scale_tril)
    >>> round(float(grads["log_scale"][0]), 6)
    -0.324366
    >>> def elbo_at(log_scale):
    ...     return model.elbo(par.to_gaussian({"loc": params["loc"], "log_scale": log_scale}), x)
    >>> h = np.array([1e-5, 0.0])
    >>> difference = (elbo_at(params["log_scale"] + h) - elbo_at(params["log_scale"] - h)) / 2e-5
    >>> round(float(difference), 6)
    -0.324366
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
        """The Gaussian ``q`` that the parameters describe.

        Parameters
        ----------
        params : dict of str to array_like
            One array per name in :attr:`keys`, no other keys: ``params["loc"]`` of shape
            ``(K,)`` (one q, not a batch) and the others of the shapes the family
            documents, all finite and real (lists, numpy arrays and torch tensors are
            accepted).

        Returns
        -------
        Gaussian
            One Gaussian (no batch axes) of dimension ``K``.

        Raises
        ------
        InvalidTypeError
            If ``params`` is not a mapping, or one of its arrays is not real (None,
            booleans, complex numbers, strings).
        InvalidInputError
            If a key is missing or unknown, an array has the wrong shape or a NaN or
            infinite entry, or the arrays describe no valid q: scales that are not
            positive and finite (``exp`` of 1000 overflows), a covariance or precision
            that is not symmetric positive definite, a Cholesky factor with entries above
            or a non-positive diagonal, a ``unit_scale_tril`` without ones on its
            diagonal.

        Examples
        --------
        >>> import numpy as np
        >>> from elbo_check.testing import DiagonalLogScale
        >>> q = DiagonalLogScale().to_gaussian({"loc": [0.0, 1.0], "log_scale": [0.0, np.log(2.0)]})
        >>> q.mean, np.diagonal(q.cov)
        (array([0., 1.]), array([1., 4.]))
        >>> DiagonalLogScale().to_gaussian({"loc": [0.0, 1.0]})  # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
          ...
        elbo_check._errors.InvalidInputError: params must have exactly the keys
        ('loc', 'log_scale') for DiagonalLogScale(); missing ['log_scale']
        """
        return self._to_gaussian(self.check_params(params))

    def from_gaussian(self, q: Gaussian) -> Params:
        """The parameters of ``q``: the inverse of :meth:`to_gaussian` on the family.

        Parameters
        ----------
        q : Gaussian
            One Gaussian (no batch axes) that is a member of the family: for a diagonal
            family, a diagonal covariance; for :class:`ScaledLowRank`, an isotropic floor
            plus rank ``rank``. Use :meth:`project` first for any other ``q``.

        Returns
        -------
        dict of str to ndarray
            Fresh float64 arrays, one per name in :attr:`keys`, with
            ``to_gaussian(from_gaussian(q))`` equal to ``q`` up to rounding.

        Raises
        ------
        InvalidInputError
            If ``q`` is not one Gaussian (a batch, or another object), or is not a
            member of the family (the message names :meth:`project`). For
            :class:`Custom`, also if the user's ``from_gaussian`` returns arrays that
            fail :meth:`check_params`; an exception it raises propagates unchanged.

        Examples
        --------
        >>> from elbo_check import Gaussian
        >>> from elbo_check.testing import DiagonalSoftplusScale
        >>> q = Gaussian.from_diagonal(mean=[0.0, 1.0], variances=[1.0, 4.0])
        >>> params = DiagonalSoftplusScale().from_gaussian(q)
        >>> sorted(params), params["raw_scale"].round(6)
        (['loc', 'raw_scale'], array([0.541325, 1.854587]))
        >>> correlated = Gaussian.from_covariance(mean=[0.0, 1.0], cov=[[1.0, 0.5], [0.5, 4.0]])
        >>> DiagonalSoftplusScale().from_gaussian(correlated)  # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
          ...
        elbo_check._errors.InvalidInputError: DiagonalSoftplusScale() describes diagonal
        covariances; q's Cholesky factor has entries below the diagonal (project(q) gives
        a diagonal q)
        """
        return self._from_gaussian(self._check_q(q))

    def project(self, q: Gaussian) -> Gaussian:
        """A member of the family close to ``q``: ``q`` itself for the full families.

        A diagonal family keeps q's mean and marginal variances (the diagonal of its
        covariance); :class:`ScaledLowRank` keeps q's mean and its ``rank`` leading
        directions over an isotropic floor (see there); :class:`FullCholesky`,
        :class:`FullUnitCholeskyScale`, :class:`FullCovariance`, :class:`FullPrecision`
        and :class:`Custom` return ``q`` unchanged.

        Parameters
        ----------
        q : Gaussian
            One Gaussian (no batch axes).

        Returns
        -------
        Gaussian
            A member of the family, of q's dimension, that :meth:`from_gaussian` accepts.

        Raises
        ------
        InvalidInputError
            If ``q`` is not one Gaussian (a batch, or another object).

        Examples
        --------
        >>> from elbo_check import Gaussian
        >>> from elbo_check.testing import DiagonalLogScale
        >>> q = Gaussian.from_covariance(mean=[0.0, 1.0], cov=[[1.0, 0.5], [0.5, 4.0]])
        >>> DiagonalLogScale().project(q).cov
        array([[1., 0.],
               [0., 4.]])
        """
        return self._check_q(q, exact=False)

    def pullback(
        self, point: Gaussian | Mapping[str, Any], grad_mean: Any, grad_scale_tril: Any
    ) -> Params:
        r"""The gradient with respect to the parameters, from the one in :math:`(m, L)`.

        The vector-Jacobian product of the map ``params -> (m, L)`` at ``point`` (see
        Notes of :class:`Parametrisation`): exact for the built-in families, by central
        differences for :class:`Custom` (its error bound: :meth:`pullback_with_error`).

        Parameters
        ----------
        point : Gaussian or dict of str to array_like
            Where to differentiate: the parameters (as for :meth:`to_gaussian`), or a
            member ``q`` of the family (its parameters are :meth:`from_gaussian`'s).
        grad_mean : array_like, shape (K,)
            The gradient with respect to q's mean, :math:`g_m`.
        grad_scale_tril : array_like, shape (K, K)
            The gradient with respect to q's Cholesky factor, :math:`G_L`; only the
            lower triangle and the diagonal are read.

        Returns
        -------
        dict of str to ndarray
            One gradient per name in :attr:`keys`, each of its parameter's shape; 0 for
            entries that are not parameters, symmetric for a covariance or precision.

        Raises
        ------
        InvalidTypeError
            As :meth:`to_gaussian`, for parameters that are not a mapping of real arrays.
        InvalidInputError
            As :meth:`to_gaussian` or :meth:`from_gaussian` for ``point``, or if
            ``grad_mean`` does not have shape ``(K,)`` or ``grad_scale_tril`` shape
            ``(K, K)``.

        Examples
        --------
        For :math:`s = e^u`, :math:`\partial\,\mathrm{ELBO}/\partial u_i = (G_L)_{ii}\,
        s_i`; the entry above the diagonal (9.0) is not read:

        >>> import numpy as np
        >>> from elbo_check.testing import DiagonalLogScale
        >>> params = {"loc": [0.0, 1.0], "log_scale": [0.0, np.log(2.0)]}
        >>> grads = DiagonalLogScale().pullback(params, [1.0, -1.0], [[0.5, 9.0], [0.3, 0.25]])
        >>> grads["loc"], grads["log_scale"]
        (array([ 1., -1.]), array([0.5, 0.5]))
        """
        params = self.from_gaussian(point) if isinstance(point, Gaussian) else point
        return self.pullback_with_error(params, grad_mean, grad_scale_tril)[0]

    def pullback_with_error(
        self, params: Mapping[str, Any], grad_mean: Any, grad_scale_tril: Any
    ) -> tuple[Params, Params]:
        """:meth:`pullback` at ``params``, with a bound on its error.

        Parameters
        ----------
        params : dict of str to array_like
            The parameters, as for :meth:`to_gaussian`.
        grad_mean : array_like, shape (K,)
            The gradient with respect to q's mean.
        grad_scale_tril : array_like, shape (K, K)
            The gradient with respect to q's Cholesky factor (lower triangle and diagonal
            read).

        Returns
        -------
        grads : dict of str to ndarray
            The gradient in each parameter, as :meth:`pullback` returns it.
        errors : dict of str to ndarray
            A bound on the error of each entry of ``grads``: zeros for the built-in
            families (exact up to rounding), the central differences' error bound for
            :class:`Custom` (the verifiers add it to their tolerance).

        Raises
        ------
        InvalidTypeError
            As :meth:`to_gaussian`.
        InvalidInputError
            As :meth:`to_gaussian`, or if ``grad_mean`` does not have shape ``(K,)`` or
            ``grad_scale_tril`` shape ``(K, K)``.

        Examples
        --------
        >>> from elbo_check.testing import FullCholesky
        >>> params = {"loc": [0.0, 1.0], "scale_tril": [[1.0, 0.0], [0.5, 2.0]]}
        >>> grads, errors = FullCholesky().pullback_with_error(
        ...     params, [1.0, -1.0], [[0.5, 9.0], [0.3, 0.25]])
        >>> grads["scale_tril"], errors["scale_tril"]
        (array([[0.5 , 0.  ],
               [0.3 , 0.25]]), array([[0., 0.],
               [0., 0.]]))
        """
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
        """Validate ``params`` and return them as a dict of float64 arrays.

        The keys must be exactly :attr:`keys`, the arrays finite and real, of the
        family's shapes (any shapes for :class:`Custom`). Whether they describe a valid
        q (positive scales, a positive definite covariance) is left to
        :meth:`to_gaussian`.

        Parameters
        ----------
        params : dict of str to array_like
            The parameters to check.
        what : str, optional
            What to call ``params`` in error messages (default ``"params"``), e.g.
            ``"from_gaussian(q)"``.

        Returns
        -------
        dict of str to ndarray
            Float64 copies of the arrays, in the order of :attr:`keys`.

        Raises
        ------
        InvalidTypeError
            If ``params`` is not a mapping, or one of its arrays is not real.
        InvalidInputError
            If a key is missing or unknown, or an array has the wrong shape or a NaN or
            infinite entry; the message names the key.

        Examples
        --------
        >>> from elbo_check.testing import DiagonalLogVariance
        >>> DiagonalLogVariance().check_params({"loc": [0, 1], "log_variance": (0.5, -1)})
        {'loc': array([0., 1.]), 'log_variance': array([ 0.5, -1. ])}
        >>> bad = {"loc": [0, 1], "log_variance": [0.5]}
        >>> DiagonalLogVariance().check_params(bad, "guide")  # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
          ...
        elbo_check._errors.InvalidInputError: guide['log_variance'] must have shape (2,) to
        match guide['loc'] of shape (2,); got (1,)
        """
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
