"""The building blocks of :mod:`elbo_check.strategies`: checks, draws, matrices, Gaussians.

Private; :mod:`elbo_check.strategies` re-exports the public strategies defined here
(:func:`rotations`, :func:`spd_matrices`, :func:`gaussians`) and documents them. The
strategies validate their arguments with the ``check_*`` functions (hypothesis'
:class:`~hypothesis.errors.InvalidArgument`, naming ``name=value``) and compose the
cached draws: vectors of bounded entries encoded so that they shrink to simple numbers,
rotations, SPD matrices, Gaussians and linear-Gaussian models. Every draw is valid by
construction (no filtering).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.linalg
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from numpy.typing import NDArray

from ._gaussian import Gaussian
from ._linalg import cholesky
from ._model import LinearGaussianModel

FloatArray = NDArray[np.float64]

#: A dimension: an integer, or a strategy of them.
Dim = int | st.SearchStrategy[int]

#: Covariance kinds of a Gaussian, simplest first (hypothesis shrinks toward the first).
COV_KINDS = ("isotropic", "diagonal", "full")

#: With ``extreme_scales=True`` the variance scale is ``10**u``, ``|u| <= EXTREME_DECADES``.
EXTREME_DECADES = 160.0


# ---------------------------------------------------------------------- validation
def check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidArgument(f"{name}={value!r} must be an integer >= {minimum}")


def check_bounds(min_name: str, min_value: int, max_name: str, max_value: int) -> None:
    check_int(min_name, min_value, 1)
    check_int(max_name, max_value, 1)
    if min_value > max_value:
        raise InvalidArgument(f"{min_name}={min_value!r} must be <= {max_name}={max_value!r}")


def check_real(name: str, value: Any, *, minimum: float, inclusive: bool = True) -> None:
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if ok:
        ok = math.isfinite(float(value)) and (value >= minimum if inclusive else value > minimum)
    if not ok:
        relation = ">=" if inclusive else ">"
        raise InvalidArgument(f"{name}={value!r} must be a finite number {relation} {minimum}")


def check_kinds(name: str, value: Any, allowed: Sequence[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    kinds = tuple(value)
    unknown = [kind for kind in kinds if kind not in allowed]
    if not kinds or unknown:
        raise InvalidArgument(
            f"{name}={value!r} must be a non-empty selection from {tuple(allowed)!r}"
        )
    return tuple(kind for kind in allowed if kind in kinds)


def check_batch_shape(batch_shape: Any) -> tuple[int, ...]:
    ok = isinstance(batch_shape, (tuple, list)) and all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0 for s in batch_shape
    )
    if not ok:
        raise InvalidArgument(f"batch_shape={batch_shape!r} must be a tuple of integers >= 0")
    return tuple(int(s) for s in batch_shape)


def check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidArgument(f"{name}={value!r} must be True or False")
    return bool(value)


def dims(name: str, dim: Dim) -> st.SearchStrategy[int]:
    """``dim`` as a strategy; an integer is checked now, a strategy's draws when drawn."""
    if isinstance(dim, st.SearchStrategy):
        return dim.map(functools.partial(_checked_dim, name))
    check_int(name, dim, 1)
    return st.just(int(dim))


def _checked_dim(name: str, value: Any) -> int:
    check_int(f"a drawn {name}", value, 1)
    return int(value)


# ---------------------------------------------------------------------- building blocks
#: Strategies are built once per set of arguments: hypothesis validates a strategy object
#: the first time it is drawn from, which cost more than the draws themselves when every
#: problem built its own (~40% of the time of generating a problem).
cached = functools.lru_cache(maxsize=1024)


@cached
def floats(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(low, high)


@cached
def choices(kinds: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.sampled_from(kinds)


#: Bits of the fractional part of a drawn entry (see :func:`vectors`).
FRACTION_BITS = 16
_CODES = np.arange(2**FRACTION_BITS)
#: ``_REVERSED[c]``: the bits of ``c`` in reverse order (0 -> 0, 1 -> 2**15, 2 -> 2**14, ...).
_REVERSED: NDArray[np.int64] = np.zeros(2**FRACTION_BITS, dtype=np.int64)
for _bit in range(FRACTION_BITS):
    _REVERSED |= ((_CODES >> _bit) & 1) << (FRACTION_BITS - 1 - _bit)
del _bit


@cached
def vectors(size: int, bound: float, *, signed: bool = True) -> st.SearchStrategy[FloatArray]:
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


@cached
@st.composite
def rotation_strategy(draw: st.DrawFn, dim: int) -> FloatArray:
    """``expm(A - A.T)`` for strictly-lower ``A`` with angles in [-pi, pi]; 0 is I."""
    count = dim * (dim - 1) // 2
    if count == 0:
        return np.eye(dim)
    angles = draw(vectors(count, math.pi))
    generator = np.zeros((dim, dim))
    generator[np.tril_indices(dim, -1)] = angles
    rotation = scipy.linalg.expm(generator - generator.T)
    q, r = np.linalg.qr(rotation)  # re-orthogonalise to working precision
    return np.asarray(q * np.where(np.diagonal(r) < 0, -1.0, 1.0), dtype=np.float64)


@cached
@st.composite
def spd_strategy(
    draw: st.DrawFn, dim: int, max_condition_number: float, min_scale: float, max_scale: float
) -> FloatArray:
    log_scale = draw(floats(math.log10(min_scale), math.log10(max_scale)))
    exponents = draw(vectors(dim, 1.0, signed=False))
    eigenvalues = 10.0**log_scale * max_condition_number**exponents
    rotation = draw(rotation_strategy(dim))
    matrix = (rotation * eigenvalues) @ rotation.T
    return np.asarray(0.5 * (matrix + matrix.T), dtype=np.float64)


@cached
@st.composite
def gaussian_strategy(
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
    mean = draw(vectors(size, max_abs_mean)).reshape(*batch_shape, dim)

    def covariance() -> FloatArray:
        kind = draw(choices(cov_kinds))
        if kind == "full":
            full: FloatArray = draw(spd_strategy(dim, max_condition_number, min_scale, max_scale))
            return full
        log_scale = draw(floats(math.log10(min_scale), math.log10(max_scale)))
        if kind == "isotropic":
            variances = np.full(dim, 10.0**log_scale)
        else:
            exponents = draw(vectors(dim, 1.0, signed=False))
            variances = 10.0**log_scale * max_condition_number**exponents
        return np.diag(variances)

    if shared_covariance:
        return Gaussian._trusted(mean, cholesky("cov", covariance()))
    factors = np.array([cholesky("cov", covariance()) for _ in range(count)])
    return Gaussian._trusted(mean, factors.reshape(*batch_shape, dim, dim))


# ---------------------------------------------------------------------- matrices
def rotations(dim: Dim) -> st.SearchStrategy[FloatArray]:
    """Orthogonal ``(dim, dim)`` matrices (determinant +1) that shrink to the identity.

    Each draw is :math:`U = \\exp(A - A^\\top)` for a strictly lower-triangular
    :math:`A` whose ``dim * (dim - 1) / 2`` entries (rotation angles) lie in
    :math:`[-\\pi, \\pi]` and shrink toward 0, so a failing example shrinks toward
    :math:`U = I`; ``U`` is re-orthogonalised to working precision.

    Parameters
    ----------
    dim : int or SearchStrategy[int]
        The size of the matrices, an integer >= 1, or a strategy of such integers (each
        draw picks its size first; it shrinks as that strategy does).

    Returns
    -------
    SearchStrategy[ndarray]
        Draws float64 arrays of shape ``(dim, dim)`` with ``U.T @ U = I`` and
        ``det U = +1``; for ``dim=1``, ``[[1.0]]``.

    Raises
    ------
    hypothesis.errors.InvalidArgument
        At the call, if ``dim`` is not an integer >= 1 (a bool is refused); for a
        strategy, when a drawn size is not.

    See Also
    --------
    spd_matrices : Symmetric positive-definite matrices ``U diag(lambda) U^T``.

    Examples
    --------
    >>> import numpy as np
    >>> from hypothesis import find, given, settings, strategies as st
    >>> from elbo_check.strategies import rotations
    >>> @settings(max_examples=20, deadline=None)
    ... @given(rotations(3))
    ... def test_rotations_preserve_lengths(u):
    ...     assert np.allclose(u.T @ u, np.eye(3))
    ...     assert np.isclose(np.linalg.det(u), 1.0)
    >>> test_rotations_preserve_lengths()

    With a strategy of sizes, :func:`hypothesis.find` shrinks to the smallest size that
    satisfies the condition:

    >>> find(rotations(st.integers(1, 4)), lambda u: len(u) > 2).shape
    (3, 3)
    >>> rotations(0)
    Traceback (most recent call last):
        ...
    hypothesis.errors.InvalidArgument: dim=0 must be an integer >= 1
    """
    return dims("dim", dim).flatmap(lambda d: rotation_strategy(d))


def spd_matrices(
    dim: Dim,
    *,
    max_condition_number: float = 100.0,
    min_scale: float = 0.1,
    max_scale: float = 10.0,
) -> st.SearchStrategy[FloatArray]:
    """Symmetric positive-definite matrices ``U diag(lambda) U^T``.

    The eigenvalues are ``lambda_i = s * max_condition_number**t_i`` with each ``t_i``
    in [0, 1] and the scale ``s`` drawn on a log scale in [min_scale, max_scale]; ``U``
    is a draw of :func:`rotations`. So the eigenvalues lie in ``[min_scale, max_scale *
    max_condition_number]`` and the condition number never exceeds
    ``max_condition_number``. Each ``t_i`` shrinks to 0, ``s`` toward 1 (when 1 is in
    range) and ``U`` to the identity, so a failing example shrinks toward ``s * I``,
    and a matrix that must be ill-conditioned toward a diagonal one.

    Parameters
    ----------
    dim : int or SearchStrategy[int]
        The size of the matrices, an integer >= 1, or a strategy of such integers.
    max_condition_number : float, optional
        The largest ratio of eigenvalues, a finite number >= 1 (default 100.0; 1 draws
        only multiples of the identity).
    min_scale, max_scale : float, optional
        The range of the scale ``s``, the smallest possible eigenvalue: finite, > 0,
        with ``min_scale <= max_scale`` (defaults 0.1 and 10.0).

    Returns
    -------
    SearchStrategy[ndarray]
        Draws float64 arrays of shape ``(dim, dim)``, exactly symmetric and positive
        definite (a Cholesky factorisation succeeds).

    Raises
    ------
    hypothesis.errors.InvalidArgument
        At the call, if ``dim`` is not an integer >= 1, ``max_condition_number`` is
        not a finite number >= 1, ``min_scale`` or ``max_scale`` is not a finite
        number > 0, or ``min_scale > max_scale``; for a strategy of sizes, when a
        drawn size is not an integer >= 1.

    See Also
    --------
    gaussians : Gaussians whose full covariances are drawn here.

    Examples
    --------
    >>> import numpy as np
    >>> from hypothesis import find, given, settings
    >>> from elbo_check.strategies import spd_matrices
    >>> @settings(max_examples=20, deadline=None)
    ... @given(spd_matrices(4, max_condition_number=1e4))
    ... def test_spd_within_the_bound(s):
    ...     assert np.array_equal(s, s.T)
    ...     eigenvalues = np.linalg.eigvalsh(s)
    ...     assert eigenvalues[0] > 0 and eigenvalues[-1] / eigenvalues[0] <= 1e4 * (1 + 1e-9)
    >>> test_spd_within_the_bound()

    An ill-conditioned matrix shrinks to a diagonal one (no rotation left):

    >>> s = find(spd_matrices(3, max_condition_number=1e6), lambda s: np.linalg.cond(s) > 100)
    >>> bool(np.array_equal(s, np.diag(np.diagonal(s))))
    True
    """
    check_real("max_condition_number", max_condition_number, minimum=1.0)
    check_real("min_scale", min_scale, minimum=0.0, inclusive=False)
    check_real("max_scale", max_scale, minimum=0.0, inclusive=False)
    if min_scale > max_scale:
        raise InvalidArgument(f"min_scale={min_scale!r} must be <= max_scale={max_scale!r}")
    return dims("dim", dim).flatmap(
        lambda d: spd_strategy(d, float(max_condition_number), float(min_scale), float(max_scale))
    )


# ---------------------------------------------------------------------- Gaussians
def gaussians(
    dim: Dim,
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

    Each mean entry lies in ``[-max_abs_mean, max_abs_mean]``. Each covariance is of
    one of the ``cov_kinds``: ``"isotropic"`` (``s * I``), ``"diagonal"`` (variances
    ``s * max_condition_number**t_i``, ``t_i`` in [0, 1]) or ``"full"`` (a draw of
    :func:`spd_matrices`), with the scale ``s`` in [min_scale, max_scale]. Examples
    shrink toward a zero mean and an isotropic covariance (the simplest kind
    selected).

    Parameters
    ----------
    dim : int or SearchStrategy[int]
        The dimension ``K``, an integer >= 1, or a strategy of such integers.
    batch_shape : tuple of int, optional
        The batch shape (default ``()``: one Gaussian); entries >= 0.
    max_abs_mean : float, optional
        Bound on the absolute value of every mean entry, finite and >= 0 (default 3.0).
    max_condition_number : float, optional
        Bound on the condition number of each covariance, finite and >= 1 (default
        100.0).
    min_scale, max_scale : float, optional
        The range of the scale ``s`` of each covariance (its smallest variance or
        eigenvalue): finite, > 0, with ``min_scale <= max_scale`` (defaults 0.1 and
        10.0).
    cov_kinds : sequence of {"isotropic", "diagonal", "full"}, optional
        The covariance kinds to draw (default all three; a single string is one kind).
    shared_covariance : bool, optional
        With a ``batch_shape``: True (default) draws one covariance for all members
        (``scale_tril`` of shape ``(K, K)``), False one per member, each of its own
        kind (shape ``batch_shape + (K, K)``).

    Returns
    -------
    SearchStrategy[Gaussian]
        Draws :class:`~elbo_check.Gaussian` objects of dimension ``K`` with a mean of
        shape ``batch_shape + (K,)``.

    Raises
    ------
    hypothesis.errors.InvalidArgument
        At the call, if ``dim`` is not an integer >= 1, a bound is not a finite number
        in its range (above), ``min_scale > max_scale``, ``cov_kinds`` is empty or
        names an unknown kind, ``batch_shape`` is not a tuple (or list) of integers >= 0,
        or ``shared_covariance`` is not a bool; for a strategy of dimensions, when a
        drawn dimension is not an integer >= 1.

    See Also
    --------
    variational_gaussians : Gaussians over a model's latent space, centred on its prior.

    Examples
    --------
    >>> import numpy as np
    >>> from hypothesis import given, settings
    >>> from elbo_check.strategies import gaussians
    >>> @settings(max_examples=20, deadline=None)
    ... @given(gaussians(2, batch_shape=(3,), shared_covariance=False))
    ... def test_one_covariance_per_member(g):
    ...     assert g.mean.shape == (3, 2) and g.scale_tril.shape == (3, 2, 2)
    ...     assert np.all(np.abs(g.mean) <= 3.0)
    >>> test_one_covariance_per_member()
    >>> @settings(max_examples=20, deadline=None)
    ... @given(gaussians(3, cov_kinds=("diagonal",)))
    ... def test_mean_field(g):
    ...     assert np.array_equal(g.cov, np.diag(np.diagonal(g.cov)))
    >>> test_mean_field()
    """
    check_real("max_abs_mean", max_abs_mean, minimum=0.0)
    check_real("max_condition_number", max_condition_number, minimum=1.0)
    check_real("min_scale", min_scale, minimum=0.0, inclusive=False)
    check_real("max_scale", max_scale, minimum=0.0, inclusive=False)
    if min_scale > max_scale:
        raise InvalidArgument(f"min_scale={min_scale!r} must be <= max_scale={max_scale!r}")
    kinds = check_kinds("cov_kinds", cov_kinds, COV_KINDS)
    shape = check_batch_shape(batch_shape)
    shared = check_flag("shared_covariance", shared_covariance)
    return dims("dim", dim).flatmap(
        lambda d: gaussian_strategy(
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
def model_strategy(
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
        scale = 10.0 ** draw(floats(-EXTREME_DECADES, EXTREME_DECADES))
    root = math.sqrt(scale)
    weights = root * draw(vectors(d * k, max_abs_weight)).reshape(d, k)
    bias = root * draw(vectors(d, max_abs_bias))
    prior_kind = draw(choices(prior_kinds))
    if prior_kind == "standard":
        prior = Gaussian.standard(k)
    else:
        prior = draw(
            gaussian_strategy(
                k,
                (),
                max_abs_bias,
                max_condition_number,
                0.3,
                3.0,
                ("diagonal",) if prior_kind == "diagonal" else ("full",),
            )
        )
    noise_kind = draw(choices(noise_kinds))
    log_noise = draw(floats(-1.0, 0.5))
    if noise_kind == "isotropic":
        noise: Any = scale * 10.0**log_noise
    elif noise_kind == "diagonal":
        exponents = draw(vectors(d, 1.0, signed=False))
        noise = scale * 10.0**log_noise * max_condition_number**exponents
    else:
        noise = scale * draw(spd_strategy(d, max_condition_number, 0.1, 3.0))
    return LinearGaussianModel(weights=weights, bias=bias, prior=prior, noise_cov=noise)
