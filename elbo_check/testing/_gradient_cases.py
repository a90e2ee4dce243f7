"""The gradient check's cases: reading a user's gradient, the expected one, its suspects.

For (m, L) gradients and for gradients in a :class:`Parametrisation`'s parameters, of
the ELBO (exact and statistical modes) or of a form's reparameterised estimate at given
noise (pathwise mode); used by :mod:`._check_gradient` and :mod:`._pathwise_gradient`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._errors import InvalidInputError
from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ._diagnosis import Suspect
from ._forms import ElboForm
from ._parametrisations import (
    FullCovariance,
    FullPrecision,
    FullUnitCholeskyScale,
    Parametrisation,
    _Diagonal,
)
from ._problems import (
    _flat_gradient,
    _flatten,
)
from ._report import (
    _describe_gaussian,
    _describe_model,
    _fmt,
)
from ._returns import InputMutated, invoke, to_array

FloatArray = NDArray[np.float64]
Params = dict[str, FloatArray]


# ---------------------------------------------------------------------- gradients in (m, L)
def _gradient_pair(value: Any, k: int) -> tuple[FloatArray, FloatArray]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise InvalidInputError(
            f"fn must return a pair (grad_mean, grad_scale_tril); got {type(value).__name__}"
        )
    grad_mean = to_array(value[0], "grad_mean").reshape(-1)
    grad_factor = to_array(value[1], "grad_scale_tril")
    if grad_mean.shape != (k,) or grad_factor.shape != (k, k):
        raise InvalidInputError(
            f"fn must return grad_mean of shape ({k},) and grad_scale_tril of shape ({k}, {k}); "
            f"got {grad_mean.shape} and {grad_factor.shape}"
        )
    return grad_mean, np.tril(grad_factor)


def _flat_gradient_pair(value: Any, k: int) -> FloatArray:
    """A user's ``(grad_mean, grad_scale_tril)`` as one vector (lower triangle only)."""
    return _flatten(_gradient_pair(value, k))


# ---------------------------------------------------------------------- gradients in params
def _read_gradient(par: Parametrisation, value: Any, params: Params) -> Params:
    """A user's gradient (a dict with ``par.keys``, or a tuple in that order) as arrays of
    the parameters' shapes; a clear error for anything else."""
    if isinstance(value, Mapping):
        par._check_keys(value, "the gradient fn returned")
        items = [value[key] for key in par.keys]
    elif isinstance(value, (tuple, list)) and len(value) == len(par.keys):
        items = list(value)
    else:
        length = f" of length {len(value)}" if isinstance(value, (tuple, list)) else ""
        raise InvalidInputError(
            f"fn must return a dict with keys {par.keys} or a tuple of {len(par.keys)} "
            f"arrays in that order for {par!r}; got {type(value).__name__}{length}"
        )
    out = {}
    for key, item in zip(par.keys, items, strict=True):
        array = to_array(item, f"fn (gradient {key!r})")
        shape = params[key].shape
        if array.shape != shape and not (len(shape) == 1 and array.size == shape[0]):
            raise InvalidInputError(
                f"fn's gradient {key!r} must have the shape {shape} of params[{key!r}]; "
                f"got {array.shape}"
            )
        out[key] = array.reshape(shape)
    return out


def _flatten_params(par: Parametrisation, grads: Mapping[str, FloatArray]) -> FloatArray:
    """The compared coordinates of a gradient as one vector: every entry, except that a
    symmetric matrix contributes the lower triangle of its symmetric part."""
    parts = []
    for key in par.keys:
        value = np.asarray(grads[key], dtype=np.float64)
        if par._kind(key) == "symmetric":
            rows, cols = np.tril_indices(value.shape[0])
            value = (0.5 * (value + value.T))[rows, cols]
        parts.append(value.reshape(-1))
    return np.concatenate(parts)


def _param_coordinates(par: Parametrisation, params: Params) -> list[tuple[str, bool]]:
    """Names of the coordinates of :func:`_flatten_params`, each with whether it is a free
    parameter (``False``: above the diagonal of a factor, or a unit diagonal)."""
    names: list[tuple[str, bool]] = []
    for key in par.keys:
        shape, kind = params[key].shape, par._kind(key)
        if kind == "symmetric":
            rows, cols = np.tril_indices(shape[0])
            names += [(f"{key}[{i},{j}]", True) for i, j in zip(rows, cols, strict=True)]
            continue
        for index in np.ndindex(*shape):
            free = not (
                (kind == "lower" and index[1] > index[0])
                or (kind == "strict_lower" and index[1] >= index[0])
            )
            names.append((f"{key}[{','.join(map(str, index))}]", free))
    return names


def _call_with_params(
    fn: Callable[..., Any],
    model: Any,
    params: Params,
    *rest: Any,
    call: Callable[..., Any] = invoke,
) -> Any:
    """``fn(model, params, *rest)`` through ``call`` (:func:`invoke`), on a fresh dict of
    private copies; an in-place edit of one of them is reported as :class:`InputMutated`."""
    given = {key: value.copy() for key, value in params.items()}
    result = call(fn, model, given, *rest)
    for key, value in params.items():
        seen = given.get(key)
        if (
            not isinstance(seen, np.ndarray)
            or seen.shape != value.shape
            or not np.array_equal(seen, value)
        ):
            raise InputMutated(
                f"fn changed its input params[{key!r}] in place; the verifier passed it a "
                "private copy, so its verdict stands, but a function that edits its inputs "
                "corrupts its callers' data: work on a copy"
            )
    return result


def repeated_caller(fn: Callable[..., Any], point: Any) -> Callable[..., Any]:
    """``fn`` as :func:`._statistics._repeated_calls` calls it, ``(model, q, x, rng, n)``
    with ``point`` (q itself, or the parameters) in q's place. ``_repeated_calls`` calls
    it through :func:`invoke` (private copies of ``x``, one call counted), so it is not
    wrapped in a second ``invoke``: only the parameters need their private copies here."""
    if isinstance(point, Gaussian):
        return fn

    def with_params(model: Any, q: Any, x: Any, *rest: Any) -> Any:
        return _call_with_params(fn, model, point, x, *rest, call=_direct)

    return with_params


def _direct(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


# ---------------------------------------------------------------------- one case
@dataclass
class _Case:
    """One problem as the user's function sees it, with the expected answer.

    ``point`` is what ``fn`` receives in q's place (q itself, or the parameters) and
    ``extra`` what it receives after ``x`` (the noise ``eps`` in pathwise mode);
    ``expected``, ``error`` and ``magnitude`` are flat (``error`` bounds the error of
    ``expected``: 0 except for a :class:`Custom` map; ``magnitude`` is the size of the
    terms ``expected`` is a sum of, 0 where only ``|expected|`` counts); ``suspects``
    predict from :attr:`arguments`.
    """

    model: LinearGaussianModel
    q: Gaussian
    x: FloatArray
    point: Any
    expected: FloatArray
    error: FloatArray
    names: list[tuple[str, bool]]
    convert: Callable[[Any], FloatArray]
    suspects: Sequence[Suspect]
    extra: tuple[Any, ...] = ()
    magnitude: FloatArray | None = field(default=None)

    @property
    def arguments(self) -> tuple[Any, ...]:
        """What ``fn`` and the suspects receive: ``(model, point, x, *extra)``."""
        return (self.model, self.point, self.x, *self.extra)

    def call(self, fn: Callable[..., Any], *rest: Any) -> Any:
        if isinstance(self.point, Gaussian):
            return invoke(fn, self.model, self.point, self.x, *self.extra, *rest)
        return _call_with_params(fn, self.model, self.point, self.x, *self.extra, *rest)

    def tolerance(self, rtol: float, atol: float) -> FloatArray:
        """``rtol * (|expected| + magnitude + 1) + atol + error``, entry by entry."""
        size = np.abs(self.expected) + (0.0 if self.magnitude is None else self.magnitude)
        return rtol * (size + 1.0) + atol + self.error

    def describe(self) -> str:
        parts = [_describe_model(self.model), _describe_gaussian("q", self.q)]
        if not isinstance(self.point, Gaussian):
            parts += [f"  params[{key!r}] = {_fmt(value)}" for key, value in self.point.items()]
        parts.append(f"  x = {_fmt(self.x)}")
        if self.extra:
            parts.append(f"  eps = {_fmt(self.extra[0])}")
        return "\n".join(parts)


def _legacy_case(
    model: LinearGaussianModel, q: Gaussian, x: FloatArray, suspects: Sequence[Suspect]
) -> _Case:
    k = q.dim
    expected = _flat_gradient(model, q, x)
    return _Case(
        model,
        q,
        x,
        q,
        expected,
        np.zeros_like(expected),
        [(name, True) for name in _coordinate_names(k)],
        functools.partial(_flat_gradient_pair, k=k),
        suspects,
    )


def _param_case(
    par: Parametrisation,
    model: LinearGaussianModel,
    q: Gaussian,
    x: FloatArray,
    suspects: Sequence[Suspect],
) -> _Case:
    """The case at ``par``'s parameters of (the family member nearest) ``q``; the exact
    gradient at ``par.to_gaussian(params)``, computed before ``fn`` sees anything;
    ``suspects`` in (m, L) are pulled back through ``par``."""
    params = par.from_gaussian(par.project(q))
    member = par.to_gaussian(params)
    grads = model.elbo_grad_variational(member, x)
    exact, error = par.pullback_with_error(params, grads.mean, grads.scale_tril)
    return _Case(
        model,
        member,
        x,
        params,
        _flatten_params(par, exact),
        _flatten_params(par, error),
        _param_coordinates(par, params),
        lambda value: _flatten_params(par, _read_gradient(par, value, params)),
        _param_suspects(par, suspects, _elbo_gradient),
    )


def _pathwise_case(
    form: ElboForm,
    par: Parametrisation | None,
    model: LinearGaussianModel,
    q: Gaussian,
    x: FloatArray,
    eps: FloatArray,
) -> _Case:
    """The pathwise case at noise ``eps``: the exact gradient of ``form``'s estimate at
    ``z = m + L eps`` (pulled back through ``par``), computed before ``fn`` runs."""
    suspects = form.pathwise_gradient_suspects()
    if par is None:
        (gm, gl), sizes = form.pathwise_gradient_with_sizes(model, q, x, eps)
        expected = _flatten((gm, gl))
        k = q.dim
        return _Case(
            model,
            q,
            x,
            q,
            expected,
            np.zeros_like(expected),
            [(name, True) for name in _coordinate_names(k)],
            functools.partial(_flat_gradient_pair, k=k),
            suspects,
            (eps,),
            _flatten(sizes),
        )
    params = par.from_gaussian(par.project(q))
    member = par.to_gaussian(params)
    (gm, gl), (mm, ml) = form.pathwise_gradient_with_sizes(model, member, x, eps)
    exact, error = par.pullback_with_error(params, gm, gl)
    # The sizes pulled back: exact for maps with a positive diagonal Jacobian (the
    # diagonal maps), a scale of the terms otherwise.
    pulled_sizes = np.abs(_flatten_params(par, par.pullback(params, mm, ml)))

    def gradient(
        m: LinearGaussianModel, g: Gaussian, xx: FloatArray, e: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
        return form.pathwise_gradient(m, g, xx, e)

    return _Case(
        model,
        member,
        x,
        params,
        _flatten_params(par, exact),
        _flatten_params(par, error),
        _param_coordinates(par, params),
        lambda value: _flatten_params(par, _read_gradient(par, value, params)),
        _param_suspects(par, suspects, gradient),
        (eps,),
        pulled_sizes,
    )


def _elbo_gradient(
    model: LinearGaussianModel, q: Gaussian, x: FloatArray
) -> tuple[FloatArray, FloatArray]:
    grads = model.elbo_grad_variational(q, x)
    return grads.mean, grads.scale_tril


def _param_suspects(
    par: Parametrisation,
    suspects: Sequence[Suspect],
    gradient_of: Callable[..., tuple[FloatArray, FloatArray]],
) -> list[Suspect]:
    """The (m, L) gradient ``suspects`` pulled back through ``par``, and classic
    chain-rule mistakes of ``par`` applied to the right (m, L) gradient
    ``gradient_of(model, q, x, *extra)``; each predicts from ``(model, params, x,
    *extra)``."""

    def pulled(suspect: Suspect) -> Suspect:
        def predict(model: LinearGaussianModel, params: Params, x: FloatArray, *extra: Any) -> Any:
            q = par.to_gaussian(params)
            flat = suspect.predict(model, q, x, *extra)
            if flat is None:
                return None
            k = q.dim
            factor = np.zeros((k, k))
            factor[np.tril_indices(k)] = np.asarray(flat)[k:]
            return _flatten_params(par, par.pullback(params, np.asarray(flat)[:k], factor))

        return Suspect(suspect.name, suspect.advice, predict)

    def mistake(name: str, advice: str, wrong: _Wrong) -> Suspect:
        def predict(model: LinearGaussianModel, params: Params, x: FloatArray, *extra: Any) -> Any:
            gm, gl = gradient_of(model, par.to_gaussian(params), x, *extra)
            return _flatten_params(par, wrong(params, gm, np.tril(gl)))

        return Suspect(name, advice, predict)

    return [pulled(s) for s in suspects] + [mistake(*entry) for entry in _chain_rule_mistakes(par)]


_Wrong = Callable[[Params, FloatArray, FloatArray], Params]


def _chain_rule_mistakes(par: Parametrisation) -> list[tuple[str, str, _Wrong]]:
    """Classic chain-rule mistakes of ``par``: (name, fix, the gradient they give as a
    function of the parameters and the (m, L) gradient)."""
    if isinstance(par, _Diagonal):
        key = par._transform.key
        found: list[tuple[str, str, _Wrong]] = [
            (
                f"the gradient for {key!r} is d ELBO / d scale: the chain rule's factor "
                f"d scale / d {key} is missing",
                f"multiply diag(G_L) by d scale / d {key}",
                lambda params, gm, gl: {"loc": gm, key: np.diagonal(gl).copy()},
            )
        ]
        if par._transform.kind == "softplus":
            found.append(
                (
                    "the derivative of softplus(u) is taken as exp(u)",
                    "d softplus(u) / du = sigmoid(u) = 1 / (1 + exp(-u))",
                    lambda params, gm, gl: {
                        "loc": gm,
                        key: np.diagonal(gl) * np.exp(params[key]),
                    },
                )
            )
        return found
    if isinstance(par, FullUnitCholeskyScale):
        transform = par._transform

        def with_diagonal(params: Params, gm: FloatArray, gl: FloatArray) -> Params:
            scale = transform.forward(params[transform.key])
            return dict(par.pullback(params, gm, gl), unit_scale_tril=scale[:, None] * gl)

        return [
            (
                "the diagonal of unit_scale_tril is given a gradient, but it is fixed at 1",
                "exclude it: grad_unit = tril(scale[:, None] * G_L, -1)",
                with_diagonal,
            )
        ]
    if isinstance(par, FullCovariance):

        def doubled(params: Params, gm: FloatArray, gl: FloatArray) -> Params:
            right = par.pullback(params, gm, gl)["cov"]
            return {"loc": gm, "cov": 2.0 * right - np.diag(np.diagonal(right))}

        return [
            (
                "G_L (the gradient for the Cholesky factor) is returned for cov",
                "chain rule through the Cholesky factor: G_S = sym(L^-T Phi(L^T G_L) L^-1)",
                lambda params, gm, gl: {"loc": gm, "cov": gl},
            ),
            (
                "the off-diagonal entries of the symmetric gradient are doubled",
                "with G symmetric, dELBO = sum(G * dS): return G itself, or its lower "
                "triangle with doubled off-diagonals (not both)",
                doubled,
            ),
        ]
    if isinstance(par, FullPrecision):
        return [
            (
                "the gradient for the covariance is returned for the precision",
                "dS = -S dP S, so G_P = -S G_S S",
                lambda params, gm, gl: {
                    "loc": gm,
                    "precision": FullCovariance().pullback(par.to_gaussian(params), gm, gl)["cov"],
                },
            )
        ]
    return []


def coordinate_rows(
    case: _Case, got: FloatArray, expected: FloatArray, tolerance: FloatArray
) -> list[str]:
    """One line per coordinate of ``case``: expected, got, gap; the ones off marked."""
    return [
        f"    {name:>12s}: expected {expected[i]: .10g}, got {got[i]: .10g}, "
        f"gap {got[i] - expected[i]:.3g}"
        + ("  <-- off" if not abs(got[i] - expected[i]) <= tolerance[i] else "")
        + ("" if free else "  (not a parameter: must be 0)")
        for i, (name, free) in enumerate(case.names)
    ]


def _coordinate_names(k: int) -> list[str]:
    rows, cols = np.tril_indices(k)
    return [f"mean[{i}]" for i in range(k)] + [
        f"L[{i},{j}]" for i, j in zip(rows, cols, strict=True)
    ]
