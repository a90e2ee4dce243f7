"""Hypothesis strategies for Gaussian-process problems, re-exported by ``strategies``.

Kernels, inputs (with near-duplicate and duplicate rows), exact and sparse GP
regressions, and sparse problems with targets. Every draw is valid by construction:

* the noise variance of a regression is drawn *relative to the kernel's scale*
  ``s = max(sigma_k^2, max_i k(x_i, x_i))``: ``noise_variance = r * s`` with ``r``
  in ``[min_noise_variance, max_noise_variance]``, so ``K + (jitter + noise) I`` has
  its smallest eigenvalue at least ``r * s``, far above the rounding of ``K``;
* a sparse GP gets a jitter *relative to the kernel variance at its inducing inputs*:
  ``jitter = SPARSE_RELATIVE_JITTER * max(sigma_k^2, max_m k(z_m, z_m))``, so
  ``K_ZZ + jitter I`` is positive definite even when inducing inputs coincide.

Draws shrink toward an RBF kernel of unit lengthscale and variance, evenly spaced
inputs without duplicates, the zero mean, unit relative noise, evenly spaced inducing
inputs and targets equal to the prior mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from numpy.typing import NDArray

from . import _strategy_blocks as _b
from .gp import (
    RBF,
    ConstantMean,
    GPRegression,
    Kernel,
    Linear,
    LinearMean,
    Matern12,
    Matern32,
    Matern52,
    MeanFunction,
    SparseGP,
    ZeroMean,
)

FloatArray = NDArray[np.float64]

#: Kernel kinds, simplest first (hypothesis shrinks toward the first).
KERNEL_KINDS = ("rbf", "matern12", "matern32", "matern52", "linear")
_STATIONARY = {"rbf": RBF, "matern12": Matern12, "matern32": Matern32, "matern52": Matern52}
#: Inputs lie in ``[-INPUT_BOUND, INPUT_BOUND]`` in every coordinate.
INPUT_BOUND = 5.0
#: The jitter of a drawn sparse GP, relative to the kernel variance at its inducing inputs.
SPARSE_RELATIVE_JITTER = 1e-6
#: The smallest relative noise variance allowed (rounding of K is ~ N eps s).
MIN_RELATIVE_NOISE = 1e-10
#: Inducing-input placements, simplest first.
_PLACEMENTS = ("spread", "among", "near")


# ---------------------------------------------------------------------- validation
def _check_range(min_name: str, min_value: Any, max_name: str, max_value: Any, low: float) -> None:
    """Both finite and > ``low`` (>= for ``MIN_RELATIVE_NOISE``), with ``min <= max``."""
    inclusive = low > 0
    _b.check_real(min_name, min_value, minimum=low, inclusive=inclusive)
    _b.check_real(max_name, max_value, minimum=low, inclusive=inclusive)
    if min_value > max_value:
        raise InvalidArgument(f"{min_name}={min_value!r} must be <= {max_name}={max_value!r}")


def _check_strategy(name: str, value: Any) -> st.SearchStrategy[Any]:
    if not isinstance(value, st.SearchStrategy):
        raise InvalidArgument(f"{name}={value!r} must be a hypothesis strategy or None")
    return value


def _log_uniform(low: float, high: float) -> st.SearchStrategy[float]:
    """``10**u`` for ``u`` in ``[log10 low, log10 high]``: shrinks to 1 when in range."""
    return _b.floats(math.log10(low), math.log10(high)).map(lambda u: float(10.0**u))


# ---------------------------------------------------------------------- kernels
def gp_kernels(
    *,
    kinds: Sequence[str] = KERNEL_KINDS,
    input_dim: int = 1,
    min_lengthscale: float = 0.1,
    max_lengthscale: float = 10.0,
    min_variance: float = 0.1,
    max_variance: float = 10.0,
) -> st.SearchStrategy[Kernel]:
    """Covariance functions of :mod:`elbo_check.gp`: RBF, Matérn 1/2, 3/2, 5/2, linear.

    The kind is drawn from ``kinds``; the variance and the lengthscale(s) are
    log-uniform in their ranges (one lengthscale per input dimension when
    ``input_dim > 1``; a linear kernel has one shared variance and no lengthscale).
    Draws shrink toward the first kind listed with lengthscale and variance 1 (when
    1 is in their ranges): ``RBF(variance=1.0, lengthscale=1.0)`` by default.

    Parameters
    ----------
    kinds : sequence of {"rbf", "matern12", "matern32", "matern52", "linear"}, optional
        The kernels to draw (default :data:`KERNEL_KINDS`, all).
    input_dim : int, optional
        The input dimension ``d >= 1`` (default 1).
    min_lengthscale, max_lengthscale : float, optional
        The lengthscale range, finite, > 0, ``min <= max`` (defaults 0.1 and 10).
    min_variance, max_variance : float, optional
        The signal variance range, finite, > 0, ``min <= max`` (defaults 0.1 and 10).

    Returns
    -------
    SearchStrategy[Kernel]
        Draws :class:`~elbo_check.gp.Kernel` objects.

    Raises
    ------
    hypothesis.errors.InvalidArgument
        At the call, if ``kinds`` is empty or names an unknown kind, ``input_dim`` is
        not an integer >= 1, or a range bound is not a finite number > 0 or its
        minimum exceeds its maximum.

    Examples
    --------
    >>> from hypothesis import find
    >>> from elbo_check.strategies import gp_kernels
    >>> find(gp_kernels(), lambda k: True)
    RBF(variance=1.0, lengthscale=1.0)
    >>> gp_kernels(min_lengthscale=0.0)
    Traceback (most recent call last):
        ...
    hypothesis.errors.InvalidArgument: min_lengthscale=0.0 must be a finite number > 0.0
    """
    chosen = _b.check_kinds("kinds", kinds, KERNEL_KINDS)
    _b.check_int("input_dim", input_dim, 1)
    _check_range("min_lengthscale", min_lengthscale, "max_lengthscale", max_lengthscale, 0.0)
    _check_range("min_variance", min_variance, "max_variance", max_variance, 0.0)
    return _kernel_strategy(
        chosen,
        int(input_dim),
        float(min_lengthscale),
        float(max_lengthscale),
        float(min_variance),
        float(max_variance),
    )


@_b.cached
@st.composite
def _kernel_strategy(
    draw: st.DrawFn,
    kinds: tuple[str, ...],
    input_dim: int,
    min_lengthscale: float,
    max_lengthscale: float,
    min_variance: float,
    max_variance: float,
) -> Kernel:
    kind = draw(_b.choices(kinds))
    variance = draw(_log_uniform(min_variance, max_variance))
    # Lengthscales are drawn for every kind (a linear kernel ignores them), so that
    # all kinds cost the same draws and shrinking prefers the first kind listed.
    scales = _log_uniform(min_lengthscale, max_lengthscale)
    lengthscale = np.array([draw(scales) for _ in range(input_dim)])
    if kind == "linear":
        return Linear(variance)
    return _STATIONARY[kind](variance, lengthscale[0] if input_dim == 1 else lengthscale)


# ---------------------------------------------------------------------- inputs
def gp_inputs(
    *,
    min_size: int = 1,
    max_size: int = 20,
    input_dim: int = 1,
    near_duplicates: bool = True,
) -> st.SearchStrategy[FloatArray]:
    """Input arrays ``X`` of shape ``(N, d)`` in ``[-5, 5]^d``, with near-duplicate rows.

    ``X`` starts from ``N`` evenly spaced points on the diagonal of the box, moves
    each coordinate by up to the box's half-width (clipped to the box), then, with
    ``near_duplicates``, replaces some rows by copies of others displaced by a
    distance in {0 (an exact duplicate), 1e-4, 1e-5, 1e-6, 1e-7, 1e-8}. Draws shrink
    toward the evenly spaced points with no duplicates.

    Parameters
    ----------
    min_size, max_size : int, optional
        Bounds on ``N``, integers >= 1 with ``min <= max`` (defaults 1 and 20).
    input_dim : int, optional
        The input dimension ``d >= 1`` (default 1).
    near_duplicates : bool, optional
        Whether to draw duplicate and near-duplicate rows (default True).

    Returns
    -------
    SearchStrategy[ndarray]
        Draws float64 arrays of shape ``(N, d)`` with entries in ``[-5, 5]``.

    Raises
    ------
    hypothesis.errors.InvalidArgument
        At the call, if a size bound is not an integer >= 1 or ``min_size >
        max_size``, ``input_dim`` is not an integer >= 1, or ``near_duplicates`` is
        not a bool.

    Examples
    --------
    >>> from hypothesis import find
    >>> from elbo_check.strategies import gp_inputs
    >>> find(gp_inputs(min_size=3), lambda x: True).ravel().tolist()
    [-5.0, 0.0, 5.0]
    """
    _b.check_bounds("min_size", min_size, "max_size", max_size)
    _b.check_int("input_dim", input_dim, 1)
    near = _b.check_flag("near_duplicates", near_duplicates)
    return _inputs_strategy(int(min_size), int(max_size), int(input_dim), near)


def _grid(n: int, d: int) -> FloatArray:
    line = np.linspace(-INPUT_BOUND, INPUT_BOUND, n) if n > 1 else np.zeros(1)
    return np.repeat(line[:, None], d, axis=1)


@_b.cached
@st.composite
def _inputs_strategy(
    draw: st.DrawFn, min_size: int, max_size: int, input_dim: int, near: bool
) -> FloatArray:
    n = draw(st.integers(min_size, max_size))
    moves = draw(_b.vectors(n * input_dim, 1.0)).reshape(n, input_dim)
    x = np.clip(_grid(n, input_dim) + INPUT_BOUND * moves, -INPUT_BOUND, INPUT_BOUND)
    if near and n > 1:
        copies = draw(
            st.lists(
                st.tuples(st.integers(0, n - 1), st.integers(0, n - 1), st.integers(0, 5)),
                max_size=n,
            )
        )
        for source, target, level in copies:
            if source == target:
                continue
            distance = 0.0 if level == 0 else 10.0 ** -(3 + level)
            # Displaced towards the box's centre in every coordinate, so it stays inside.
            inward = np.where(x[source] > 0, -1.0, 1.0) / math.sqrt(input_dim)
            x[target] = x[source] + distance * inward
    return np.asarray(x, dtype=np.float64)


# ---------------------------------------------------------------------- means
@_b.cached
@st.composite
def _mean_strategy(draw: st.DrawFn, input_dim: int) -> MeanFunction:
    kind = draw(_b.choices(("zero", "constant", "linear")))
    if kind == "zero":
        return ZeroMean()
    if kind == "constant":
        return ConstantMean(float(draw(_b.vectors(1, 3.0))[0]))
    values = draw(_b.vectors(input_dim + 1, 1.0))
    return LinearMean(values[:input_dim], bias=float(values[input_dim]))


def _kernel_scale(kernel: Kernel, x: FloatArray) -> float:
    """``max(sigma_k^2, max_i k(x_i, x_i))``: positive, the scale of ``K``."""
    variance = float(np.max(getattr(kernel, "variance", 1.0)))
    return max(variance, float(np.max(kernel.diag(x))))


# ---------------------------------------------------------------------- regressions
def _regression_parts(
    min_size: int,
    max_size: int,
    input_dim: int,
    min_noise_variance: float,
    max_noise_variance: float,
    kernels: Any,
    means: bool,
) -> tuple[st.SearchStrategy[Any], ...]:
    _b.check_bounds("min_size", min_size, "max_size", max_size)
    _b.check_int("input_dim", input_dim, 1)
    _check_range(
        "min_noise_variance",
        min_noise_variance,
        "max_noise_variance",
        max_noise_variance,
        MIN_RELATIVE_NOISE,
    )
    kernel_st = gp_kernels(input_dim=input_dim) if kernels is None else kernels
    kernel_st = _check_strategy("kernels", kernel_st)
    mean_st = (
        _mean_strategy(int(input_dim)) if _b.check_flag("means", means) else st.just(ZeroMean())
    )
    return (
        kernel_st,
        _inputs_strategy(int(min_size), int(max_size), int(input_dim), True),
        _log_uniform(float(min_noise_variance), float(max_noise_variance)),
        mean_st,
    )


def gp_regressions(
    *,
    min_size: int = 1,
    max_size: int = 20,
    input_dim: int = 1,
    min_noise_variance: float = 1e-6,
    max_noise_variance: float = 1.0,
    kernels: st.SearchStrategy[Kernel] | None = None,
    means: bool = True,
) -> st.SearchStrategy[GPRegression]:
    """Exact GP regressions (:class:`~elbo_check.gp.GPRegression`), valid by construction.

    A kernel (``kernels``, default :func:`gp_kernels` of ``input_dim``), inputs as
    :func:`gp_inputs` draws them (near duplicates included), a mean function (zero,
    constant or linear when ``means``) and a noise variance ``r * s``: ``r`` is
    log-uniform in ``[min_noise_variance, max_noise_variance]`` and ``s = max(sigma_k^2,
    max_i k(x_i, x_i))`` is the kernel's scale, so the noise is small *relative to
    the kernel* and ``K + (jitter + noise) I`` (the model's default jitter) is
    numerically positive definite for every draw. Draws shrink toward one input, the
    RBF kernel of unit lengthscale and variance, the zero mean and ``r = 1``.

    Parameters
    ----------
    min_size, max_size : int, optional
        Bounds on ``N``, integers >= 1, ``min <= max`` (defaults 1 and 20).
    input_dim : int, optional
        The input dimension ``d >= 1`` (default 1).
    min_noise_variance, max_noise_variance : float, optional
        The range of the noise variance relative to the kernel's scale: finite,
        >= 1e-10, ``min <= max`` (defaults 1e-6 and 1).
    kernels : SearchStrategy[Kernel], optional
        The kernels to draw (default ``gp_kernels(input_dim=input_dim)``); they must
        accept ``input_dim``-dimensional inputs.
    means : bool, optional
        Whether to draw non-zero mean functions (default True).

    Returns
    -------
    SearchStrategy[GPRegression]
        Draws :class:`~elbo_check.gp.GPRegression` objects.

    Raises
    ------
    hypothesis.errors.InvalidArgument
        At the call, if a size bound or ``input_dim`` is not an integer >= 1 or
        ``min_size > max_size``, a noise bound is not a finite number >= 1e-10 or
        ``min_noise_variance > max_noise_variance``, ``kernels`` is not a strategy,
        or ``means`` is not a bool.

    Examples
    --------
    >>> import numpy as np
    >>> from hypothesis import given, settings
    >>> from elbo_check.strategies import gp_regressions
    >>> @settings(max_examples=20, deadline=None)
    ... @given(gp_regressions(max_size=8))
    ... def test_log_ml_is_finite(gp):
    ...     assert np.isfinite(gp.log_marginal_likelihood(gp.mean(gp.inputs)))
    >>> test_log_ml_is_finite()
    """
    kernel_st, input_st, ratio_st, mean_st = _regression_parts(
        min_size, max_size, input_dim, min_noise_variance, max_noise_variance, kernels, means
    )

    @st.composite
    def regressions(draw: st.DrawFn) -> GPRegression:
        kernel = draw(kernel_st)
        x = draw(input_st)
        noise = draw(ratio_st) * _kernel_scale(kernel, x)
        return GPRegression(kernel, x, noise, mean=draw(mean_st))

    return regressions()


# ---------------------------------------------------------------------- sparse
def sparse_gps(
    *,
    min_size: int = 1,
    max_size: int = 20,
    min_inducing: int = 1,
    max_inducing: int = 8,
    input_dim: int = 1,
    min_noise_variance: float = 1e-6,
    max_noise_variance: float = 1.0,
    kernels: st.SearchStrategy[Kernel] | None = None,
    means: bool = True,
) -> st.SearchStrategy[SparseGP]:
    """Sparse GPs (:class:`~elbo_check.gp.SparseGP`) with inducing inputs, valid by construction.

    The kernel, inputs, mean and noise are drawn as by :func:`gp_regressions`. The
    ``M`` inducing inputs are placed ``"spread"`` over the box (evenly spaced points
    moved as :func:`gp_inputs` moves them), ``"among"`` the inputs (rows of ``X``,
    repeats allowed) or ``"near"`` them (rows of ``X`` displaced by 1e-8 to 1e-2).
    Positive definiteness of ``K_ZZ + jitter I`` is guaranteed by the jitter, not by
    separating ``Z``: ``jitter = 1e-6 * max(sigma_k^2, max_m k(z_m, z_m))``
    (:data:`SPARSE_RELATIVE_JITTER`), so coinciding inducing inputs are allowed.
    Draws shrink toward evenly spaced inducing inputs.

    Parameters
    ----------
    min_size, max_size : int, optional
        Bounds on ``N`` (defaults 1 and 20), as for :func:`gp_regressions`.
    min_inducing, max_inducing : int, optional
        Bounds on ``M``, integers >= 1, ``min <= max`` (defaults 1 and 8).
    input_dim : int, optional
        The input dimension ``d >= 1`` (default 1).
    min_noise_variance, max_noise_variance : float, optional
        The noise variance relative to the kernel's scale (defaults 1e-6 and 1), as
        for :func:`gp_regressions`.
    kernels : SearchStrategy[Kernel], optional
        The kernels to draw (default ``gp_kernels(input_dim=input_dim)``).
    means : bool, optional
        Whether to draw non-zero mean functions (default True).

    Returns
    -------
    SearchStrategy[SparseGP]
        Draws :class:`~elbo_check.gp.SparseGP` objects.

    Raises
    ------
    hypothesis.errors.InvalidArgument
        At the call, for an argument :func:`gp_regressions` refuses, or an inducing
        bound that is not an integer >= 1 or ``min_inducing > max_inducing``.

    See Also
    --------
    gp_problems : A sparse GP together with targets ``y``.

    Examples
    --------
    >>> import numpy as np
    >>> from hypothesis import given, settings
    >>> from elbo_check.strategies import sparse_gps
    >>> @settings(max_examples=20, deadline=None)
    ... @given(sparse_gps(max_size=8, max_inducing=4))
    ... def test_collapsed_bound_is_below_log_ml(sgp):
    ...     y = sgp.mean(sgp.inputs)
    ...     assert sgp.collapsed_bound(y) <= sgp.log_marginal_likelihood(y) + 1e-6
    >>> test_collapsed_bound_is_below_log_ml()
    """
    parts = _regression_parts(
        min_size, max_size, input_dim, min_noise_variance, max_noise_variance, kernels, means
    )
    _b.check_bounds("min_inducing", min_inducing, "max_inducing", max_inducing)
    return _sparse_strategy(parts, int(min_inducing), int(max_inducing), int(input_dim))


@st.composite
def _sparse_strategy(
    draw: st.DrawFn,
    parts: tuple[st.SearchStrategy[Any], ...],
    min_inducing: int,
    max_inducing: int,
    input_dim: int,
) -> SparseGP:
    kernel_st, input_st, ratio_st, mean_st = parts
    kernel = draw(kernel_st)
    x = draw(input_st)
    noise = draw(ratio_st) * _kernel_scale(kernel, x)
    mean = draw(mean_st)
    m = draw(st.integers(min_inducing, max_inducing))
    placement = draw(_b.choices(_PLACEMENTS))
    if placement == "spread":
        moves = draw(_b.vectors(m * input_dim, 1.0)).reshape(m, input_dim)
        z = np.clip(_grid(m, input_dim) + INPUT_BOUND * moves, -INPUT_BOUND, INPUT_BOUND)
    else:
        rows = draw(st.lists(st.integers(0, x.shape[0] - 1), min_size=m, max_size=m))
        z = x[rows].copy()
        if placement == "near":
            levels = draw(st.lists(st.integers(2, 8), min_size=m, max_size=m))
            inward = np.where(z > 0, -1.0, 1.0) / math.sqrt(input_dim)  # stays in the box
            z = z + 10.0 ** -np.array(levels, dtype=float)[:, None] * inward
    jitter = SPARSE_RELATIVE_JITTER * _kernel_scale(kernel, z)
    return SparseGP(kernel, x, noise, z, mean=mean, jitter=jitter)


def gp_problems(
    *, max_abs_deviation: float = 3.0, **options: Any
) -> st.SearchStrategy[tuple[SparseGP, FloatArray]]:
    """``(sparse_gp, y)`` pairs: a :func:`sparse_gps` draw and finite targets of its scale.

    ``y = m(X) + sqrt(s + sigma^2) * u`` with the prior mean ``m(X)``, the kernel's
    scale ``s = max(sigma_k^2, max_i k(x_i, x_i))``, the noise variance ``sigma^2``
    and every entry of ``u`` in ``[-max_abs_deviation, max_abs_deviation]``; ``u``
    shrinks to 0, so ``y`` shrinks to the prior mean.

    Parameters
    ----------
    max_abs_deviation : float, optional
        Bound on ``|u|`` per entry, finite and >= 0 (default 3.0).
    **options
        Keyword arguments of :func:`sparse_gps` (``max_size``, ``input_dim``,
        ``kernels``, ...).

    Returns
    -------
    SearchStrategy[tuple[SparseGP, ndarray]]
        Draws pairs of a :class:`~elbo_check.gp.SparseGP` and a float64 vector of
        its ``N`` targets.

    Raises
    ------
    hypothesis.errors.InvalidArgument
        At the call, if ``max_abs_deviation`` is not a finite number >= 0 or an
        option is refused by :func:`sparse_gps`.
    TypeError
        At the call, for a keyword that is not an option of :func:`sparse_gps`.

    Examples
    --------
    >>> import numpy as np
    >>> from hypothesis import given, settings
    >>> from elbo_check.strategies import gp_problems
    >>> @settings(max_examples=20, deadline=None)
    ... @given(gp_problems(max_size=8, max_inducing=4))
    ... def test_bounds_sandwich_the_log_ml(problem):
    ...     sgp, y = problem
    ...     lml = sgp.log_marginal_likelihood(y)
    ...     assert sgp.collapsed_bound(y) <= lml + 1e-6 <= sgp.upper_bound(y) + 2e-6
    >>> test_bounds_sandwich_the_log_ml()
    """
    _b.check_real("max_abs_deviation", max_abs_deviation, minimum=0.0)
    bound = float(max_abs_deviation)
    sparse = sparse_gps(**options)

    @st.composite
    def problems(draw: st.DrawFn) -> tuple[SparseGP, FloatArray]:
        sgp = draw(sparse)
        x = sgp.inputs
        spread = math.sqrt(_kernel_scale(sgp.kernel, x) + sgp.noise_variance)
        u = draw(_b.vectors(x.shape[0], bound))
        return sgp, np.asarray(sgp.mean(x) + spread * u, dtype=np.float64)

    return problems()
