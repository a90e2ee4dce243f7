"""How :mod:`elbo_check.contrib.jax` calls the user's function: views, conversion, jit, grad.

Private; :mod:`elbo_check.contrib.jax` re-exports :class:`JaxModel` and
:class:`JaxGaussian` and documents the behaviour. The user's function is wrapped in a
:class:`Program` (a hashable value: the function plus what to do with its return) and,
with ``jit=True``, run through one module-level :func:`jax.jit` whose static arguments
are the program and the integer options (``n_samples``). JAX caches a compilation per
program and per shape of the dynamic arguments, so each distinct shape compiles once
and the compilation is reused across problems and across verifier calls (for as long
as JAX keeps it, as for any jitted function: like :func:`jax.jit`, ``fn`` must be
pure).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import InvalidInputError, InvalidTypeError
from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ..testing import Parametrisation

__all__ = [
    "JaxGaussian",
    "JaxModel",
    "KeyWords",
    "Program",
    "Setting",
    "as_numpy",
    "check_dtype",
    "checked_setting",
    "gradient_of",
    "run",
    "scalar",
    "verifier_options",
    "views",
    "wrapped",
]

Array = jax.Array

#: Entries of a parameter that are not free, by kind (their gradient must be 0).
_MASKS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "lower": jnp.tril,
    "strict_lower": lambda g: jnp.tril(g, k=-1),
}

#: What JAX raises when traced code needs a concrete value (numpy, float(), if, ...).
_TRACING_ERRORS = (
    jax.errors.TracerArrayConversionError,
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerIntegerConversionError,
)


# ---------------------------------------------------------------------- the setting
@dataclass(frozen=True)
class Setting:
    """The dtype the user's code runs in and whether it is compiled."""

    dtype: np.dtype[Any]
    jit: bool

    @property
    def x64(self) -> bool:
        return self.dtype.itemsize >= 8

    @contextlib.contextmanager
    def precision(self) -> Iterator[None]:
        """64-bit JAX for float64 code, scoped to this thread and this call
        (:func:`jax.enable_x64`); below float64 the caller's setting is kept."""
        if self.x64:
            with jax.enable_x64(True):
                yield
        else:
            yield

    def array(self, value: Any) -> jax.Array:
        """A copy of ``value`` as a JAX array in the setting's dtype."""
        return jnp.asarray(self.host(value))

    def host(self, value: Any) -> np.ndarray[Any, Any]:
        """A copy of ``value`` as a numpy array in the setting's dtype: what is handed to
        the jitted function (one transfer for all its arguments, not one per array)."""
        return np.array(value, dtype=np.float64).astype(self.dtype)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class KeyWords:
    """A :mod:`jax.random` key on its way to the user's function: two 32-bit words drawn
    from the verifier's generator (so its seed reproduces them; 64 bits whatever x64
    says), made a typed threefry key where the function is called (inside jit)."""

    words: Any

    @classmethod
    def drawn(cls, generator: np.random.Generator) -> KeyWords:
        return cls(generator.integers(0, 2**32, size=2, dtype=np.uint32))

    def key(self) -> jax.Array:
        key: jax.Array = jax.random.wrap_key_data(self.words, impl="threefry2x32")
        return key


# ---------------------------------------------------------------------- array views
@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class JaxModel:
    """A :class:`~elbo_check.LinearGaussianModel` as JAX arrays (copies); a pytree.

    ``z ~ N(prior_mean, prior_cov)``, ``x | z ~ N(weights @ z + bias, noise_cov)``. The
    verifiers of :mod:`elbo_check.contrib.jax` hand your function one in place of the
    model; :func:`~elbo_check.contrib.jax.as_jax` makes one. Every field is a pytree
    leaf, so a :class:`JaxModel` can be an argument of a jitted or differentiated
    function. The fields are stored as given (no checks), as attributes of the same
    names; the instance is frozen.

    Parameters
    ----------
    weights : jax.Array
        ``W``, shape ``(D, K)``.
    bias : jax.Array
        ``b``, shape ``(D,)``.
    prior_mean : jax.Array
        The prior mean ``mu0``, shape ``(K,)``.
    prior_cov : jax.Array
        The prior covariance ``S0``, shape ``(K, K)``.
    prior_scale_tril : jax.Array
        The lower Cholesky factor of ``prior_cov``, shape ``(K, K)``.
    noise_cov : jax.Array
        The noise covariance ``Psi`` as a dense ``(D, D)`` matrix, whatever its kind.

    Raises
    ------
    TypeError
        If a field is missing or unknown (the generated ``__init__``); the values are
        not checked.

    Examples
    --------
    The covariance of the marginal ``p(x)``, ``W S0 W^T + Psi``, from the arrays,
    against the oracle's:

    >>> import pytest; jax = pytest.importorskip("jax")
    >>> import numpy as np
    >>> from elbo_check import ppca
    >>> from elbo_check.contrib.jax import as_jax
    >>> oracle = ppca(weights=[[1.0, 0.5]], mean=[0.2], noise_variance=0.5)
    >>> with jax.enable_x64(True):
    ...     model = as_jax(oracle)
    ...     cov = model.weights @ model.prior_cov @ model.weights.T + model.noise_cov
    >>> print(np.asarray(cov), oracle.marginal().cov)
    [[1.75]] [[1.75]]
    >>> jax.tree_util.tree_map(jax.numpy.shape, model).weights  # its fields are leaves
    (1, 2)
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

    The verifiers of :mod:`elbo_check.contrib.jax` hand your function one for each
    Gaussian (``q``; ``p`` and ``q`` of a KL); :func:`~elbo_check.contrib.jax.as_jax`
    makes one. Every field is a pytree leaf. The fields are stored as given (no
    checks), as attributes of the same names; the instance is frozen.

    Parameters
    ----------
    mean : jax.Array
        The mean, shape ``(..., K)``.
    scale_tril : jax.Array
        The lower Cholesky factor ``L`` of the covariance, ``(K, K)`` (shared by a
        batch) or ``(..., K, K)`` (one per member).
    cov : jax.Array
        The covariance ``L L^T``, of the shape of ``scale_tril``. In
        :func:`~elbo_check.contrib.jax.verify_elbo_gradient` it is computed as
        ``scale_tril @ scale_tril.T`` (per member), inside the differentiated function,
        so that gradients flow through it to ``scale_tril``.

    Raises
    ------
    TypeError
        If a field is missing or unknown (the generated ``__init__``); the values are
        not checked.

    Examples
    --------
    >>> import pytest; jax = pytest.importorskip("jax")
    >>> import jax.numpy as jnp
    >>> from elbo_check import Gaussian
    >>> from elbo_check.contrib.jax import as_jax
    >>> q = as_jax(Gaussian.from_covariance(mean=[0.0, 1.0], cov=[[4.0, 1.0], [1.0, 2.0]]),
    ...            dtype=jnp.float32)
    >>> bool(jnp.allclose(q.scale_tril @ q.scale_tril.T, q.cov))
    True
    >>> q.mean.dtype, q.scale_tril.shape
    (dtype('float32'), (2, 2))
    """

    mean: Array
    scale_tril: Array
    cov: Array


def check_dtype(dtype: Any) -> np.dtype[Any]:
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


def views(value: Any, array: Callable[[Any], Any]) -> JaxModel | JaxGaussian:
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


# ---------------------------------------------------------------------- the program
def scalar(value: Any, batched: bool) -> jax.Array:
    """The value to differentiate: a scalar, or the sum of a batch's ``(B,)`` values."""
    if not isinstance(value, jax.Array):
        raise InvalidTypeError(
            "fn must return a JAX array computed with jax.numpy from q's arrays (the ELBO "
            f"or its estimate), which jax.grad can differentiate; got {type(value).__name__} "
            f"{value!r:.60} (computed outside JAX, with numpy or Python floats?)"
        )
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise InvalidTypeError(
            "fn must return a floating-point JAX array (jax.grad differentiates only real "
            f"floating values); got dtype {value.dtype}"
        )
    if value.size == 1:
        return value.reshape(())
    if batched and value.ndim == 1:
        return value.sum()  # member b's gradient in its own parameters: d(sum)/d(q_b)
    raise InvalidInputError(
        "fn must return a scalar JAX array"
        + (" or one value per member, shape (B,)" if batched else "")
        + f"; got shape {tuple(value.shape)}"
    )


@dataclass(frozen=True, eq=False)
class Program:
    """The user's ``fn`` and what is done with it: called (a value), or differentiated
    in q's ``(mean, scale_tril)`` or in a parametrisation's parameters (a gradient).

    A hashable value, so that it can be a static argument of :func:`jax.jit`: equal
    programs share their compilations. ``fn`` compares by identity (so a callable
    object that is not hashable works too; JAX's cache keeps it alive, so its id is
    not reused while a compilation refers to it).
    """

    fn: Callable[..., Any]
    gradient: bool = False
    batched: bool = False
    #: With a parametrisation, its ``(key, kind)`` pairs (for the masks); None: the
    #: gradient is in q's ``(mean, scale_tril)``.
    kinds: tuple[tuple[str, str], ...] | None = None

    def _key(self) -> tuple[int, bool, bool, tuple[tuple[str, str], ...] | None]:
        return id(self.fn), self.gradient, self.batched, self.kinds

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Program) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __call__(self, *given: Any) -> Any:
        args = [a.key() if isinstance(a, KeyWords) else a for a in given]
        if not self.gradient:
            return self.fn(*args)
        model, leaves, *rest = args
        grads = jax.grad(self._value)(leaves, model, *rest)
        if self.kinds is None:
            return grads[0], jnp.tril(grads[1])
        return {
            key: _MASKS[kind](grads[key]) if kind in _MASKS else grads[key]
            for key, kind in self.kinds
        }

    def _value(self, leaves: Any, model: Any, *rest: Any) -> jax.Array:
        if self.kinds is None:
            mean, factor = leaves
            q = JaxGaussian(mean, factor, factor @ jnp.swapaxes(factor, -1, -2))
            return scalar(self.fn(model, q, *rest), self.batched)
        return scalar(self.fn(model, leaves, *rest), self.batched)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _compiled(
    program: Program, statics: tuple[tuple[int, Hashable], ...], dynamics: tuple[Any, ...]
) -> Any:
    return program(*_merged(statics, dynamics))


def _merged(statics: tuple[tuple[int, Hashable], ...], dynamics: tuple[Any, ...]) -> list[Any]:
    args = list(dynamics)
    for position, value in statics:
        args.insert(position, value)
    return args


def _is_static(value: Any) -> bool:
    """Python numbers, strings and None: options such as ``n_samples`` (shapes depend on
    them, so each value compiles once); everything else is an array or a pytree."""
    return value is None or isinstance(value, (bool, int, float, str, np.integer))


def run(program: Program, setting: Setting, args: list[Any]) -> Any:
    """``program(*args)`` on converted ``args``, jitted or not; tracing errors explained."""
    statics = tuple(
        (i, int(a) if isinstance(a, np.integer) else a) for i, a in enumerate(args) if _is_static(a)
    )
    dynamics = tuple(a for a in args if not _is_static(a))
    try:
        if not setting.jit:  # JAX arrays for eager code, in one transfer
            return program(*_merged(statics, jax.device_put(dynamics)))
        return _compiled(program, statics, dynamics)
    except _TRACING_ERRORS as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = "jax.grad" + (" under jax.jit" if setting.jit else "")
        if not program.gradient:
            where = "jax.jit"
        hint = "" if program.gradient else " (or pass jit=False to run it eagerly)"
        raise InvalidInputError(
            f"fn needs a concrete value of a traced JAX array, which {where} cannot give: "
            "it converts one to numpy or a Python number (np.asarray, float(), .item()) or "
            f"branches on one; write fn with jax.numpy and jax.lax{hint}. JAX said: {first}"
        ) from err


# ---------------------------------------------------------------------- returns
def as_numpy(value: Any) -> Any:
    """A return (or a tuple, list or dict of them) as numpy; float32 stays float32
    (bfloat16, which numpy lacks, becomes float32)."""
    if isinstance(value, jax.Array):
        array = np.asarray(value)
        if array.dtype.kind == "V" or str(array.dtype) == "bfloat16":
            return array.astype(np.float32)
        return array
    if isinstance(value, (tuple, list)):
        return type(value)(as_numpy(v) for v in value)
    if isinstance(value, Mapping):
        return {k: as_numpy(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------- the calls
def convert(value: Any, setting: Setting) -> Any:
    """Models and Gaussians as views, arrays in the dtype, a generator as a key's words:
    numpy leaves, which the jitted function receives in one transfer."""
    if isinstance(value, (LinearGaussianModel, Gaussian)):
        return views(value, setting.host)
    if isinstance(value, np.ndarray):
        return setting.host(value)
    if isinstance(value, np.random.Generator):
        return KeyWords.drawn(value)
    return value


def checked_setting(fn: Any, dtype: Any, jit: Any) -> Setting:
    if not callable(fn):
        raise InvalidTypeError(f"fn must be callable; got {type(fn).__name__} {fn!r:.60}")
    if not isinstance(jit, bool):
        raise InvalidTypeError(f"jit must be True or False; got jit={jit!r}")
    return Setting(check_dtype(dtype), jit)


def verifier_options(setting: Setting, options: dict[str, Any]) -> dict[str, Any]:
    """The verifier's options: the user's, plus ``dtype=`` below float64 (its tolerances)."""
    if not setting.x64:
        return {**options, "dtype": setting.dtype}
    return options


def wrapped(fn: Callable[..., Any], setting: Setting) -> Callable[..., Any]:
    """``fn`` called on JAX views of the verifier's arguments, its return as numpy."""
    program = Program(fn)

    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        with setting.precision():
            return as_numpy(run(program, setting, [convert(a, setting) for a in args]))

    return call


def gradient_of(
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
            args = [convert(model, setting), leaves, *(convert(a, setting) for a in rest)]
            return as_numpy(run(program, setting, args))

    return gradient
