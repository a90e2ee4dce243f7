"""Hypothesis strategies for linear-Gaussian models, variational Gaussians and data.

Every strategy builds a valid object directly — no filtering — from draws that
shrink toward the simplest case: eigenvalue exponents toward 0 (a scaled identity),
rotation angles toward 0 (no rotation), means, offsets and weights toward 0, kinds
toward the first listed one. A failing example therefore shrinks to the smallest
dimensions and the least structure that still exhibits the bug, while the defaults
reach the blind spots where bugs hide: non-zero offsets and prior means, full prior,
noise and variational covariances, anisotropic noise, condition numbers well above 1,
and latent dimension larger than data dimension.

Examples
--------
>>> from hypothesis import given
>>> from elbo_check.strategies import linear_gaussian_models
>>> @given(linear_gaussian_models(max_data_dim=3))
... def test_evidence_is_finite(model):
...     assert abs(model.log_evidence(model.bias)) < float("inf")
>>> test_evidence_is_finite()
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from numpy.typing import NDArray

from ._gaussian import Gaussian
from ._linalg import cholesky
from ._model import LinearGaussianModel

__all__ = [
    "NOISE_KINDS",
    "PRIOR_KINDS",
    "ElboProblem",
    "elbo_problems",
    "gaussians",
    "linear_gaussian_models",
    "observations",
    "rotations",
    "spd_matrices",
    "variational_gaussians",
]

FloatArray = NDArray[np.float64]

#: Noise covariance kinds, simplest first (hypothesis shrinks toward the first).
NOISE_KINDS = ("isotropic", "diagonal", "full")
#: Prior kinds, simplest first: N(0, I), N(mu0, diag), N(mu0, full S0).
PRIOR_KINDS = ("standard", "diagonal", "general")

_Dim = int | st.SearchStrategy[int]

#: With ``extreme_scales=True`` the variance scale is ``10**u``, ``|u| <= EXTREME_DECADES``.
EXTREME_DECADES = 160.0


# ---------------------------------------------------------------------- validation
def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidArgument(f"{name}={value!r} must be an integer >= {minimum}")


def _check_bounds(min_name: str, min_value: int, max_name: str, max_value: int) -> None:
    _check_int(min_name, min_value, 1)
    _check_int(max_name, max_value, 1)
    if min_value > max_value:
        raise InvalidArgument(f"{min_name}={min_value!r} must be <= {max_name}={max_value!r}")


def _check_real(name: str, value: Any, *, minimum: float, inclusive: bool = True) -> None:
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if ok:
        ok = math.isfinite(float(value)) and (value >= minimum if inclusive else value > minimum)
    if not ok:
        relation = ">=" if inclusive else ">"
        raise InvalidArgument(f"{name}={value!r} must be a finite number {relation} {minimum}")


def _check_kinds(name: str, value: Any, allowed: Sequence[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    kinds = tuple(value)
    unknown = [kind for kind in kinds if kind not in allowed]
    if not kinds or unknown:
        raise InvalidArgument(
            f"{name}={value!r} must be a non-empty selection from {tuple(allowed)!r}"
        )
    return tuple(kind for kind in allowed if kind in kinds)


def _check_batch_shape(batch_shape: Any) -> tuple[int, ...]:
    ok = isinstance(batch_shape, (tuple, list)) and all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0 for s in batch_shape
    )
    if not ok:
        raise InvalidArgument(f"batch_shape={batch_shape!r} must be a tuple of integers >= 0")
    return tuple(int(s) for s in batch_shape)


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidArgument(f"{name}={value!r} must be True or False")
    return bool(value)


def _dims(name: str, dim: _Dim) -> st.SearchStrategy[int]:
    if isinstance(dim, st.SearchStrategy):
        return dim
    _check_int(name, dim, 1)
    return st.just(int(dim))


# ---------------------------------------------------------------------- building blocks
#: Strategies are built once per set of arguments: hypothesis validates a strategy object
#: the first time it is drawn from, which cost more than the draws themselves when every
#: problem built its own (~40% of the time of generating a problem).
_cached = functools.lru_cache(maxsize=1024)


@_cached
def _floats(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(low, high)


@_cached
def _choices(kinds: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.sampled_from(kinds)


#: Bits of the fractional part of a drawn entry (see :func:`_vectors`).
FRACTION_BITS = 16
_CODES = np.arange(2**FRACTION_BITS)
#: ``_REVERSED[c]``: the bits of ``c`` in reverse order (0 -> 0, 1 -> 2**15, 2 -> 2**14, ...).
_REVERSED: NDArray[np.int64] = np.zeros(2**FRACTION_BITS, dtype=np.int64)
for _bit in range(FRACTION_BITS):
    _REVERSED |= ((_CODES >> _bit) & 1) << (FRACTION_BITS - 1 - _bit)
del _bit


@_cached
def _vectors(size: int, bound: float, *, signed: bool = True) -> st.SearchStrategy[FloatArray]:
    """Vectors of ``size`` entries in ``[-bound, bound]`` (``[0, bound]`` if not ``signed``).

    Hypothesis draws each float of a list separately, and generating a problem cost
    more than checking it. Here a vector is one byte string, three bytes per entry: a
    sign and an integer part ``n < ceil(bound)``, then a fractional part in steps of
    ``2**-16`` whose bits are read in reverse, so that the small codes the shrinker
    moves toward are the simple numbers (0, 1/2, 1/4, 3/4, ...). A failure therefore
    shrinks as it does with floats — toward small integers and short fractions, not
    toward the last value that still fails — at a quarter of the cost (100 problems:
    0.9 s against 1.9 s for lists of floats).
    """
    if size == 0:
        return st.just(np.zeros(0))
    whole = max(1, math.ceil(bound))

    def decode(raw: bytes) -> FloatArray:
        codes = np.frombuffer(raw, dtype=np.uint8).reshape(size, 3).astype(np.int64)
        negative = (codes[:, 0] & 1).astype(bool) if signed else np.zeros(size, dtype=bool)
        integer = ((codes[:, 0] >> 1) if signed else codes[:, 0]) % whole
        fraction = _REVERSED[(codes[:, 1] << 8) | codes[:, 2]] / 2.0**FRACTION_BITS
        magnitude = np.minimum(integer + fraction, bound)
        return np.asarray(np.where(negative, -magnitude, magnitude), dtype=np.float64)

    return st.binary(min_size=3 * size, max_size=3 * size).map(decode)


@_cached
@st.composite
def _rotation(draw: st.DrawFn, dim: int) -> FloatArray:
    """``expm(A - A.T)`` for strictly-lower ``A`` with angles in [-pi, pi]; 0 is I."""
    count = dim * (dim - 1) // 2
    if count == 0:
        return np.eye(dim)
    angles = draw(_vectors(count, math.pi))
    generator = np.zeros((dim, dim))
    generator[np.tril_indices(dim, -1)] = angles
    rotation = scipy.linalg.expm(generator - generator.T)
    q, r = np.linalg.qr(rotation)  # re-orthogonalise to working precision
    return np.asarray(q * np.where(np.diagonal(r) < 0, -1.0, 1.0), dtype=np.float64)


def rotations(dim: _Dim) -> st.SearchStrategy[FloatArray]:
    """Orthogonal ``(dim, dim)`` matrices (determinant +1) that shrink to the identity."""
    dims = _dims("dim", dim)
    return dims.flatmap(lambda d: _rotation(d))


@_cached
@st.composite
def _spd(
    draw: st.DrawFn, dim: int, max_condition_number: float, min_scale: float, max_scale: float
) -> FloatArray:
    log_scale = draw(_floats(math.log10(min_scale), math.log10(max_scale)))
    exponents = draw(_vectors(dim, 1.0, signed=False))
    eigenvalues = 10.0**log_scale * max_condition_number**exponents
    rotation = draw(_rotation(dim))
    matrix = (rotation * eigenvalues) @ rotation.T
    return np.asarray(0.5 * (matrix + matrix.T), dtype=np.float64)


def spd_matrices(
    dim: _Dim,
    *,
    max_condition_number: float = 100.0,
    min_scale: float = 0.1,
    max_scale: float = 10.0,
) -> st.SearchStrategy[FloatArray]:
    """Symmetric positive-definite matrices ``U diag(lambda) U^T``.

    The eigenvalues are ``s * max_condition_number**t`` with ``t`` in [0, 1] and the
    scale ``s`` log-uniform-ish in [min_scale, max_scale]; ``t`` shrinks to 0 and the
    rotation ``U`` to the identity, so examples shrink toward ``s * I``. The condition
    number never exceeds ``max_condition_number``.
    """
    _check_real("max_condition_number", max_condition_number, minimum=1.0)
    _check_real("min_scale", min_scale, minimum=0.0, inclusive=False)
    _check_real("max_scale", max_scale, minimum=0.0, inclusive=False)
    if min_scale > max_scale:
        raise InvalidArgument(f"min_scale={min_scale!r} must be <= max_scale={max_scale!r}")
    return _dims("dim", dim).flatmap(
        lambda d: _spd(d, float(max_condition_number), float(min_scale), float(max_scale))
    )


@_cached
@st.composite
def _gaussian(
    draw: st.DrawFn,
    dim: int,
    batch_shape: tuple[int, ...],
    max_abs_mean: float,
    max_condition_number: float,
    min_scale: float,
    max_scale: float,
    cov_kinds: tuple[str, ...],
    shared_covariance: bool = True,
) -> Gaussian:
    count = int(np.prod(batch_shape, dtype=int))
    size = count * dim
    mean = draw(_vectors(size, max_abs_mean)).reshape(*batch_shape, dim)

    def covariance() -> FloatArray:
        kind = draw(_choices(cov_kinds))
        if kind == "full":
            full: FloatArray = draw(_spd(dim, max_condition_number, min_scale, max_scale))
            return full
        log_scale = draw(_floats(math.log10(min_scale), math.log10(max_scale)))
        if kind == "isotropic":
            variances = np.full(dim, 10.0**log_scale)
        else:
            exponents = draw(_vectors(dim, 1.0, signed=False))
            variances = 10.0**log_scale * max_condition_number**exponents
        return np.diag(variances)

    if shared_covariance:
        return Gaussian._trusted(mean, cholesky("cov", covariance()))
    factors = np.array([cholesky("cov", covariance()) for _ in range(count)])
    return Gaussian._trusted(mean, factors.reshape(*batch_shape, dim, dim))


COV_KINDS = ("isotropic", "diagonal", "full")


def gaussians(
    dim: _Dim,
    *,
    batch_shape: tuple[int, ...] = (),
    max_abs_mean: float = 3.0,
    max_condition_number: float = 100.0,
    min_scale: float = 0.1,
    max_scale: float = 10.0,
    cov_kinds: Sequence[str] = COV_KINDS,
    shared_covariance: bool = True,
) -> st.SearchStrategy[Gaussian]:
    """Gaussians with non-zero means and (by default) full covariances.

    ``cov_kinds`` selects among ``"isotropic"``, ``"diagonal"`` and ``"full"``;
    examples shrink toward a zero mean and an isotropic covariance. With a
    ``batch_shape``, the members share one covariance unless
    ``shared_covariance=False``, which draws one per member (each of its own kind).
    """
    _check_real("max_abs_mean", max_abs_mean, minimum=0.0)
    _check_real("max_condition_number", max_condition_number, minimum=1.0)
    _check_real("min_scale", min_scale, minimum=0.0, inclusive=False)
    _check_real("max_scale", max_scale, minimum=0.0, inclusive=False)
    if min_scale > max_scale:
        raise InvalidArgument(f"min_scale={min_scale!r} must be <= max_scale={max_scale!r}")
    kinds = _check_kinds("cov_kinds", cov_kinds, COV_KINDS)
    shape = _check_batch_shape(batch_shape)
    shared = _check_flag("shared_covariance", shared_covariance)
    return _dims("dim", dim).flatmap(
        lambda d: _gaussian(
            d,
            shape,
            float(max_abs_mean),
            float(max_condition_number),
            float(min_scale),
            float(max_scale),
            kinds,
            shared,
        )
    )


# ---------------------------------------------------------------------- models
@st.composite
def _model(
    draw: st.DrawFn,
    data_dims: st.SearchStrategy[int],
    latent_dims: st.SearchStrategy[int],
    noise_kinds: tuple[str, ...],
    prior_kinds: tuple[str, ...],
    max_condition_number: float,
    max_abs_bias: float,
    max_abs_weight: float,
    extreme_scales: bool,
) -> LinearGaussianModel:
    d = draw(data_dims)
    k = draw(latent_dims)
    scale = 1.0
    if extreme_scales:
        # Overall variance scales of 1e-160 ... 1e160: for D >= 3 the product of the noise
        # variances, det(Psi), under- or overflows float64 (range 1e-308 ... 1e308), which
        # a log-determinant through det() cannot survive, while every quantity computed
        # from factors (and squares of the data, ~1e160) stays representable.
        scale = 10.0 ** draw(_floats(-EXTREME_DECADES, EXTREME_DECADES))
    root = math.sqrt(scale)
    weights = root * draw(_vectors(d * k, max_abs_weight)).reshape(d, k)
    bias = root * draw(_vectors(d, max_abs_bias))
    prior_kind = draw(_choices(prior_kinds))
    if prior_kind == "standard":
        prior = Gaussian.standard(k)
    else:
        prior = draw(
            _gaussian(
                k,
                (),
                max_abs_bias,
                max_condition_number,
                0.3,
                3.0,
                ("diagonal",) if prior_kind == "diagonal" else ("full",),
            )
        )
    noise_kind = draw(_choices(noise_kinds))
    log_noise = draw(_floats(-1.0, 0.5))
    if noise_kind == "isotropic":
        noise: Any = scale * 10.0**log_noise
    elif noise_kind == "diagonal":
        exponents = draw(_vectors(d, 1.0, signed=False))
        noise = scale * 10.0**log_noise * max_condition_number**exponents
    else:
        noise = scale * draw(_spd(d, max_condition_number, 0.1, 3.0))
    return LinearGaussianModel(weights=weights, bias=bias, prior=prior, noise_cov=noise)


def linear_gaussian_models(
    *,
    min_data_dim: int = 1,
    max_data_dim: int = 6,
    min_latent_dim: int = 1,
    max_latent_dim: int = 6,
    noise_kinds: Sequence[str] = NOISE_KINDS,
    prior_kinds: Sequence[str] = PRIOR_KINDS,
    max_condition_number: float = 1e3,
    max_abs_bias: float = 5.0,
    max_abs_weight: float = 2.0,
    extreme_scales: bool = False,
) -> st.SearchStrategy[LinearGaussianModel]:
    """Random well-posed :class:`~elbo_check.LinearGaussianModel` instances.

    Parameters
    ----------
    min_data_dim, max_data_dim, min_latent_dim, max_latent_dim : int
        Bounds on ``D`` and ``K``; by default ``K > D`` occurs as often as ``K < D``.
    noise_kinds : sequence of {"isotropic", "diagonal", "full"}
        Which forms of the noise covariance to draw.
    prior_kinds : sequence of {"standard", "diagonal", "general"}
        ``"standard"`` is ``N(0, I)``; the others have a non-zero mean.
    max_condition_number : float
        Bound on the condition number of prior, noise and (by extension) marginal
        covariances before the weights are applied.
    max_abs_bias, max_abs_weight : float
        Bounds on the entries of ``b`` (and the prior mean) and of ``W``.
    extreme_scales : bool
        Opt in to overall variance scales from 1e-160 to 1e160 (noise, and weights and
        offsets by the square root), where for ``D >= 3`` the determinant of the noise
        covariance under- or overflows float64 while log-determinants from factors do
        not.
    """
    _check_bounds("min_data_dim", min_data_dim, "max_data_dim", max_data_dim)
    _check_bounds("min_latent_dim", min_latent_dim, "max_latent_dim", max_latent_dim)
    _check_real("max_condition_number", max_condition_number, minimum=1.0)
    _check_real("max_abs_bias", max_abs_bias, minimum=0.0)
    _check_real("max_abs_weight", max_abs_weight, minimum=0.0)
    return _model(
        st.integers(min_data_dim, max_data_dim),
        st.integers(min_latent_dim, max_latent_dim),
        _check_kinds("noise_kinds", noise_kinds, NOISE_KINDS),
        _check_kinds("prior_kinds", prior_kinds, PRIOR_KINDS),
        float(max_condition_number),
        float(max_abs_bias),
        float(max_abs_weight),
        bool(extreme_scales),
    )


def _check_model(model: Any) -> LinearGaussianModel:
    if not isinstance(model, LinearGaussianModel):
        raise InvalidArgument(f"model={model!r} must be a LinearGaussianModel")
    return model


def variational_gaussians(
    model: LinearGaussianModel,
    *,
    batch_shape: tuple[int, ...] = (),
    max_abs_mean: float = 3.0,
    max_condition_number: float = 100.0,
    min_scale: float = 0.05,
    max_scale: float = 5.0,
    cov_kinds: Sequence[str] = COV_KINDS,
    shared_covariance: bool = True,
) -> st.SearchStrategy[Gaussian]:
    """Variational distributions ``q(z)`` over the latent space of ``model``.

    Means are centred on the prior mean (so they are of the model's scale) and
    shrink to it; covariances are full by default and shrink toward isotropic. A
    batch shares one covariance unless ``shared_covariance=False`` (an encoder that
    outputs a covariance per row).
    """
    model = _check_model(model)
    base = gaussians(
        model.latent_dim,
        batch_shape=batch_shape,
        max_abs_mean=max_abs_mean,
        max_condition_number=max_condition_number,
        min_scale=min_scale,
        max_scale=max_scale,
        cov_kinds=cov_kinds,
        shared_covariance=shared_covariance,
    )
    return base.map(lambda g: _centred_on_prior(model, g))


def _centred_on_prior(model: LinearGaussianModel, g: Gaussian) -> Gaussian:
    return Gaussian._trusted(g.mean + model.prior.mean, g.scale_tril)


def _around_mean(
    model: LinearGaussianModel, u: FloatArray, batch_shape: tuple[int, ...]
) -> FloatArray:
    spread = np.sqrt(model.marginal_variances())
    return np.asarray(
        model.marginal_mean + spread * u.reshape(*batch_shape, model.data_dim), np.float64
    )


def observations(
    model: LinearGaussianModel,
    *,
    batch_shape: tuple[int, ...] = (),
    max_abs_deviation: float = 4.0,
) -> st.SearchStrategy[FloatArray]:
    """Observations ``x`` of shape ``batch_shape + (D,)`` around the model's mean.

    ``x = mean + sqrt(diag C) * u`` with the marginal mean and variances and ``u``
    bounded by ``max_abs_deviation`` standard deviations; shrinks to the mean.
    """
    model = _check_model(model)
    _check_real("max_abs_deviation", max_abs_deviation, minimum=0.0)
    shape = _check_batch_shape(batch_shape)
    size = int(np.prod(shape, dtype=int)) * model.data_dim
    return _vectors(size, float(max_abs_deviation)).map(lambda u: _around_mean(model, u, shape))


@dataclass(frozen=True)
class ElboProblem:
    """A model, a variational distribution and an observation: one ELBO to compute.

    Attributes
    ----------
    model : LinearGaussianModel
        The model.
    q : Gaussian
        A variational distribution over the model's latent space.
    x : ndarray, shape batch_shape + (D,)
        The observation(s).
    """

    model: LinearGaussianModel
    q: Gaussian
    x: FloatArray


def elbo_problems(
    *,
    batch_shape: tuple[int, ...] = (),
    shared_covariance: bool = True,
    q_kinds: Sequence[str] = COV_KINDS,
    **model_options: Any,
) -> st.SearchStrategy[ElboProblem]:
    """``(model, q, x)`` triples; ``model_options`` go to :func:`linear_gaussian_models`.

    With a ``batch_shape``, ``q`` and ``x`` are batches of that shape (one q per row of
    x), and the q's have a covariance each when ``shared_covariance=False``. ``q_kinds``
    restricts q's covariance to some of ``"isotropic"``, ``"diagonal"`` (a mean-field
    guide such as Pyro's AutoNormal) and ``"full"``.
    """
    models = linear_gaussian_models(**model_options)
    shared = _check_flag("shared_covariance", shared_covariance)
    kinds = _check_kinds("q_kinds", q_kinds, COV_KINDS)

    shape = _check_batch_shape(batch_shape)
    count = int(np.prod(shape, dtype=int))

    @st.composite
    def problems(draw: st.DrawFn) -> ElboProblem:
        # The defaults of variational_gaussians and observations, from cached strategies.
        model = draw(models)
        k = model.latent_dim
        g = draw(_gaussian(k, shape, 3.0, 100.0, 0.05, 5.0, kinds, shared))
        u = draw(_vectors(count * model.data_dim, 4.0))
        return ElboProblem(model, _centred_on_prior(model, g), _around_mean(model, u, shape))

    return problems()
