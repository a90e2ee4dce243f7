"""The verifiers for JAX code: JAX arrays in, jitted for you, jax.grad done for you.

The verifiers of :mod:`elbo_check.testing` hand your function numpy objects. The
wrappers here, with the same names and options, hand it JAX arrays instead:

- a :class:`JaxModel` in place of a :class:`~elbo_check.LinearGaussianModel`, a
  :class:`JaxGaussian` in place of a :class:`~elbo_check.Gaussian` (both frozen
  dataclasses registered as JAX pytrees), ``x`` and ``eps`` as JAX arrays, all in the
  ``dtype`` you choose;
- a typed :mod:`jax.random` key in place of the verifier's
  :class:`numpy.random.Generator` (drawn from it, so a check stays reproducible from the
  verifier's ``seed``);
- for gradients, your function returns the ELBO (or its estimate) and
  :func:`verify_elbo_gradient` runs :func:`jax.grad` itself, in q's mean and
  scale_tril or in a parametrisation's parameters.

With ``jit=True`` (the default) your function runs under :func:`jax.jit`, with the
arrays, the key and the pytrees as arguments and integer options (``n_samples``)
static: each distinct shape compiles once, and the compilation is reused across
problems and verifier calls (JAX's own cache; like any jitted function, ``fn`` must be
pure: a global it reads is frozen at its first trace). ``jit=False`` runs it eagerly.

**What a check costs: compilations.** XLA takes about 0.3 to 2 s to compile a small
ELBO (more for its gradient); a compiled call then takes well under a millisecond. The
statistical modes meet one shape per problem (the default 4 problems: 4
compilations, then thousands of fast calls: 10 to 20 s). The exact and pathwise
modes search hypothesis-drawn models of 1 to 6 data and latent dimensions (pathwise:
times 1 to 4 noise samples): with the default 100 examples, measured, 22 distinct
shapes for :func:`verify_elbo` and 30 for the pathwise estimator check, 15 to 45 s on
two shared cores. To spend less, draw smaller models (``max_data_dim=3,
max_latent_dim=3``: at most 9 shapes, 14 to 18 s instead of 40 for :func:`verify_elbo`),
pass fewer ``max_examples`` or a ``time_budget``. A second check of the same ``fn``
reuses the compilations.

**float64.** JAX computes in float32 unless 64-bit mode is on, a process-wide flag.
The default ``dtype=jnp.float64`` turns it on only around each call of your code,
with the scoped :func:`jax.enable_x64` context manager (thread-local), so the caller's
setting is never changed. Below float64 (``dtype=jnp.float32``) the caller's setting
is kept and the verifier is told the dtype, so it compares at float32 tolerances.
Returns are read with :func:`numpy.asarray` (float32 stays float32).

JAX is an optional dependency, installed separately (the CPU wheel is enough)::

    pip install jax

Examples
--------
>>> import pytest; jax = pytest.importorskip("jax")
>>> import jax.numpy as jnp
>>> from jax.scipy.stats import multivariate_normal as mvn
>>> from elbo_check.contrib.jax import verify_elbo_gradient
>>> def elbo(model, q, x, eps):  # a reparameterised estimate, joint form
...     z = q.mean + eps @ q.scale_tril.T
...     lik = mvn.logpdf(x, z @ model.weights.T + model.bias, model.noise_cov)
...     prior = mvn.logpdf(z, model.prior_mean, model.prior_cov)
...     return jnp.mean(lik + prior - mvn.logpdf(z, q.mean, q.cov))
>>> small = {"max_data_dim": 2, "max_latent_dim": 2}  # few shapes: few compilations
>>> print(verify_elbo_gradient(elbo, mode="pathwise", max_examples=5, **small).check)
verify_elbo_gradient(mode='pathwise')
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

from .._errors import InvalidInputError, InvalidTypeError
from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ..testing import Parametrisation, VerificationReport
from ..testing import verify_elbo as _verify_elbo
from ..testing import verify_elbo_estimator as _verify_elbo_estimator
from ..testing import verify_elbo_gradient as _verify_elbo_gradient
from ..testing import verify_kl as _verify_kl
from ..testing import verify_log_evidence as _verify_log_evidence

try:
    import jax
    import jax.numpy as jnp
except ImportError as err:  # pragma: no cover - exercised without jax
    raise ImportError(
        "elbo_check.contrib.jax needs JAX, which is not installed; install the CPU "
        "build with: pip install jax"
    ) from err

from ._jax_calls import KeyWords, Program, Setting, as_numpy, run

__all__ = [
    "JaxGaussian",
    "JaxModel",
    "as_jax",
    "verify_elbo",
    "verify_elbo_estimator",
    "verify_elbo_gradient",
    "verify_kl",
    "verify_log_evidence",
]

Array = jax.Array


# ---------------------------------------------------------------------- array views
@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class JaxModel:
    """A :class:`~elbo_check.LinearGaussianModel` as JAX arrays (copies); a pytree.

    ``z ~ N(prior_mean, prior_cov)``, ``x | z ~ N(weights @ z + bias, noise_cov)``.
    Every field is a pytree leaf, so a :class:`JaxModel` can be an argument of a
    jitted function.

    Attributes
    ----------
    weights : jax.Array
        ``W``, shape ``(D, K)``.
    bias : jax.Array
        ``b``, shape ``(D,)``.
    prior_mean, prior_cov, prior_scale_tril : jax.Array
        The prior's mean ``(K,)``, covariance and lower Cholesky factor ``(K, K)``.
    noise_cov : jax.Array
        The noise covariance as a dense ``(D, D)`` matrix, whatever its kind.
    """

    weights: Array
    bias: Array
    prior_mean: Array
    prior_cov: Array
    prior_scale_tril: Array
    noise_cov: Array


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class JaxGaussian:
    """A :class:`~elbo_check.Gaussian` as JAX arrays; batch shapes are kept; a pytree.

    Attributes
    ----------
    mean : jax.Array
        Shape ``(..., K)``.
    scale_tril : jax.Array
        Lower Cholesky factor of the covariance, ``(K, K)`` or ``(..., K, K)``.
    cov : jax.Array
        The covariance, of the shape of ``scale_tril``. In
        :func:`verify_elbo_gradient` it is ``scale_tril @ scale_tril.T`` (per member),
        so that gradients flow through it to ``scale_tril``.
    """

    mean: Array
    scale_tril: Array
    cov: Array


def _check_dtype(dtype: Any) -> np.dtype[Any]:
    chosen: np.dtype[Any] | None = None
    if dtype is not None and not isinstance(dtype, bool):
        try:
            chosen = jnp.dtype(dtype)
        except TypeError:
            chosen = None
    if chosen is None or not jnp.issubdtype(chosen, jnp.floating):
        raise InvalidTypeError(
            "dtype must be a floating dtype JAX knows (jnp.float64, jnp.float32, "
            f"jnp.bfloat16, 'float32', ...); got dtype={dtype!r}"
        )
    return chosen


@overload
def as_jax(value: LinearGaussianModel, dtype: Any = ...) -> JaxModel: ...
@overload
def as_jax(value: Gaussian, dtype: Any = ...) -> JaxGaussian: ...
def as_jax(
    value: LinearGaussianModel | Gaussian, dtype: Any = jnp.float64
) -> JaxModel | JaxGaussian:
    """JAX array copies of a model or a Gaussian.

    Parameters
    ----------
    value : LinearGaussianModel or Gaussian
        What to copy.
    dtype : dtype
        A floating dtype (default float64, which needs 64-bit JAX: call ``as_jax``
        inside ``with jax.enable_x64(True):``, as the verifiers here do, or with
        ``jax_enable_x64`` set).

    Returns
    -------
    JaxModel or JaxGaussian

    Raises
    ------
    InvalidInputError
        For ``dtype=float64`` while 64-bit JAX is off (JAX would truncate to float32).

    Examples
    --------
    >>> import pytest; jax = pytest.importorskip("jax")
    >>> from elbo_check.contrib.jax import as_jax
    >>> from elbo_check import Gaussian
    >>> q = Gaussian.from_diagonal(mean=[0.0, 1.0], variances=[4.0, 1.0])
    >>> q = as_jax(q, dtype=jax.numpy.float32)
    >>> q.scale_tril
    Array([[2., 0.],
           [0., 1.]], dtype=float32)
    """
    chosen = _check_dtype(dtype)
    if chosen.itemsize >= 8 and jax.dtypes.canonicalize_dtype(chosen) != chosen:
        raise InvalidInputError(
            f"dtype={chosen} needs 64-bit JAX, which is off (JAX would truncate to "
            "float32); call as_jax inside `with jax.enable_x64(True):` or pass "
            "dtype=jnp.float32"
        )
    return _views(value, Setting(chosen, jit=False).array)


def _views(value: Any, array: Callable[[Any], Any]) -> JaxModel | JaxGaussian:
    """The view of a model or a Gaussian with ``array`` applied to each of its arrays."""
    if isinstance(value, LinearGaussianModel):
        return JaxModel(
            weights=array(value.weights),
            bias=array(value.bias),
            prior_mean=array(value.prior.mean),
            prior_cov=array(value.prior.cov),
            prior_scale_tril=array(value.prior.scale_tril),
            noise_cov=array(value.dense_noise_cov()),
        )
    if isinstance(value, Gaussian):
        return JaxGaussian(
            mean=array(value.mean), scale_tril=array(value.scale_tril), cov=array(value.cov)
        )
    raise InvalidTypeError(
        f"as_jax takes a LinearGaussianModel or a Gaussian; got {type(value).__name__}"
    )


# ---------------------------------------------------------------------- plumbing
def _convert(value: Any, setting: Setting) -> Any:
    """Models and Gaussians as views, arrays in the dtype, a generator as a key's words:
    numpy leaves, which the jitted function receives in one transfer."""
    if isinstance(value, (LinearGaussianModel, Gaussian)):
        return _views(value, setting.host)
    if isinstance(value, np.ndarray):
        return setting.host(value)
    if isinstance(value, np.random.Generator):
        return KeyWords.drawn(value)
    return value


def _setting(fn: Any, dtype: Any, jit: Any) -> Setting:
    if not callable(fn):
        raise InvalidTypeError(f"fn must be callable; got {type(fn).__name__} {fn!r:.60}")
    if not isinstance(jit, bool):
        raise InvalidTypeError(f"jit must be True or False; got jit={jit!r}")
    return Setting(_check_dtype(dtype), jit)


def _options(setting: Setting, options: dict[str, Any]) -> dict[str, Any]:
    """The verifier's options: the user's, plus ``dtype=`` below float64 (its tolerances)."""
    if not setting.x64:
        return {**options, "dtype": setting.dtype}
    return options


def _wrapped(fn: Callable[..., Any], setting: Setting) -> Callable[..., Any]:
    """``fn`` called on JAX views of the verifier's arguments, its return as numpy."""
    program = Program(fn)

    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        with setting.precision():
            return as_numpy(run(program, setting, [_convert(a, setting) for a in args]))

    return call


# ---------------------------------------------------------------------- value verifiers
def verify_elbo(
    fn: Callable[..., Any], *, dtype: Any = jnp.float64, jit: bool = True, **options: Any
) -> VerificationReport:
    """:func:`elbo_check.testing.verify_elbo` for ``fn(model, q, x) -> Array``.

    ``model`` is a :class:`JaxModel`, ``q`` a :class:`JaxGaussian`, ``x`` an array, all
    in ``dtype``; ``fn`` is jitted unless ``jit=False``; every other keyword is the
    verifier's.
    """
    __tracebackhide__ = True
    setting = _setting(fn, dtype, jit)
    return _verify_elbo(_wrapped(fn, setting), **_options(setting, options))


def verify_kl(
    fn: Callable[..., Any], *, dtype: Any = jnp.float64, jit: bool = True, **options: Any
) -> VerificationReport:
    """:func:`elbo_check.testing.verify_kl` for ``fn(p, q) -> Array``, KL(p || q) of two
    :class:`JaxGaussian` objects."""
    __tracebackhide__ = True
    setting = _setting(fn, dtype, jit)
    return _verify_kl(_wrapped(fn, setting), **_options(setting, options))


def verify_log_evidence(
    fn: Callable[..., Any], *, dtype: Any = jnp.float64, jit: bool = True, **options: Any
) -> VerificationReport:
    """:func:`elbo_check.testing.verify_log_evidence` for ``fn(model, x) -> Array``."""
    __tracebackhide__ = True
    setting = _setting(fn, dtype, jit)
    return _verify_log_evidence(_wrapped(fn, setting), **_options(setting, options))


def verify_elbo_estimator(
    fn: Callable[..., Any], *, dtype: Any = jnp.float64, jit: bool = True, **options: Any
) -> VerificationReport:
    """:func:`elbo_check.testing.verify_elbo_estimator` for JAX estimators.

    ``mode="statistical"`` (default): ``fn(model, q, x, key, n_samples)`` with a
    :mod:`jax.random` key drawn from the verifier's generator for that call
    (``n_samples`` is static under jit). ``mode="pathwise"``: ``fn(model, q, x, eps)``
    with the noise ``eps`` an array.
    """
    __tracebackhide__ = True
    setting = _setting(fn, dtype, jit)
    return _verify_elbo_estimator(_wrapped(fn, setting), **_options(setting, options))


# ---------------------------------------------------------------------- gradients
def _gradient_of(
    fn: Callable[..., Any],
    setting: Setting,
    parametrisation: Parametrisation | None,
    batched: bool,
) -> Callable[..., Any]:
    """A gradient function for the verifier: :func:`jax.grad` of ``fn``'s value."""
    kinds = None
    if isinstance(parametrisation, Parametrisation):  # anything else: the verifier refuses it
        found = tuple(getattr(parametrisation, "_key_kinds", ()))
        if len(found) != len(parametrisation.keys):
            found = ("",) * len(parametrisation.keys)
        kinds = tuple(zip(parametrisation.keys, found, strict=True))
    program = Program(fn, gradient=True, batched=batched, kinds=kinds)

    @functools.wraps(fn)
    def gradient(model: Any, q: Any, *rest: Any) -> Any:
        with setting.precision():
            if parametrisation is None:
                leaves: Any = (setting.host(q.mean), setting.host(q.scale_tril))
            else:
                leaves = {key: setting.host(q[key]) for key in parametrisation.keys}
            args = [_convert(model, setting), leaves, *(_convert(a, setting) for a in rest)]
            return as_numpy(run(program, setting, args))

    return gradient


def verify_elbo_gradient(
    fn: Callable[..., Any],
    *,
    dtype: Any = jnp.float64,
    jit: bool = True,
    parametrisation: Parametrisation | None = None,
    **options: Any,
) -> VerificationReport:
    """:func:`elbo_check.testing.verify_elbo_gradient` for the gradient jax.grad gives.

    ``fn`` returns the *value* (a scalar array; with ``batch_size=B`` one per member,
    shape ``(B,)``, or their sum); this wrapper runs :func:`jax.grad` of it with
    respect to q's ``mean`` and ``scale_tril`` (jitted, unless ``jit=False``) and hands
    the verifier the gradients (of ``scale_tril``, its lower triangle)::

        fn(model, q, x) -> Array                    # mode="exact": the ELBO
        fn(model, q, x, key, n_samples) -> Array    # mode="statistical": an estimate
        fn(model, q, x, eps) -> Array               # mode="pathwise": the estimate at eps

    ``q.cov`` is ``scale_tril @ scale_tril.T``, inside the differentiated function.
    With a ``parametrisation``, ``fn`` receives its dict of parameters in q's place and
    the gradient is taken in them (entries that are not parameters, such as those above
    a factor's diagonal, are masked).

    Parameters
    ----------
    fn : callable
        The ELBO code under test, with the signature of its mode (above).
    dtype : dtype
        The dtype of every array ``fn`` receives (default float64, computed under a
        scoped :func:`jax.enable_x64`). Below float64 the verifier is told (its
        ``dtype=``), so its tolerances follow.
    jit : bool
        Compile the gradient with :func:`jax.jit` (default True): once per shape.
    parametrisation : Parametrisation, optional
        Differentiate in these parameters instead of q's ``(mean, scale_tril)``.
    **options
        Every other option of :func:`elbo_check.testing.verify_elbo_gradient`
        (``mode``, ``form``, ``batch_size``, ``max_examples``, ``calls``, ...).

    Returns
    -------
    VerificationReport

    Raises
    ------
    AssertionError
        When jax.grad's gradient of ``fn`` is wrong, with the verifier's diagnosis.
    InvalidTypeError, InvalidInputError
        For a ``fn`` that is not callable, a ``dtype`` that is not a floating dtype, or
        a return jax.grad cannot differentiate (inside the check, reported as a failure).

    Examples
    --------
    >>> import pytest; jax = pytest.importorskip("jax")
    >>> from elbo_check.contrib.jax import verify_elbo_gradient
    >>> import jax.numpy as jnp
    >>> from jax.scipy.stats import multivariate_normal as mvn
    >>> def elbo(model, q, x):  # closed form: E_q log p(x | z) - KL(q || p(z))
    ...     k = q.mean.shape[-1]
    ...     solve = jnp.linalg.solve
    ...     spread = jnp.trace(solve(model.noise_cov, model.weights @ q.cov @ model.weights.T))
    ...     lik = mvn.logpdf(x, model.weights @ q.mean + model.bias, model.noise_cov)
    ...     delta = q.mean - model.prior_mean
    ...     kl = 0.5 * (jnp.trace(solve(model.prior_cov, q.cov)) - k
    ...                 + delta @ solve(model.prior_cov, delta)
    ...                 + jnp.linalg.slogdet(model.prior_cov)[1] - jnp.linalg.slogdet(q.cov)[1])
    ...     return lik - 0.5 * spread - kl
    >>> verify_elbo_gradient(elbo, max_examples=10, max_data_dim=2, max_latent_dim=2).check
    'verify_elbo_gradient'
    """
    __tracebackhide__ = True
    setting = _setting(fn, dtype, jit)
    batched = options.get("batch_size") is not None
    gradient = _gradient_of(fn, setting, parametrisation, batched)
    return _verify_elbo_gradient(
        gradient, parametrisation=parametrisation, **_options(setting, options)
    )
