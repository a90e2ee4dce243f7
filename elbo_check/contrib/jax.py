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

from collections.abc import Callable
from typing import Any, overload

from .._errors import InvalidInputError
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

from . import _jax_calls as _c
from ._jax_calls import JaxGaussian, JaxModel

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
    dtype : dtype, optional
        A floating dtype JAX knows (``jnp.float64``, ``jnp.float32``, ``"float32"``,
        ...). The default, float64, needs 64-bit JAX: call ``as_jax`` inside ``with
        jax.enable_x64(True):``, as the verifiers here do, or with ``jax_enable_x64``
        set.

    Returns
    -------
    JaxModel or JaxGaussian
        The view (fresh arrays in ``dtype``): a :class:`JaxModel` for a model, a
        :class:`JaxGaussian` for a Gaussian (batch shapes kept); both are pytrees.

    Raises
    ------
    InvalidTypeError
        If ``value`` is neither a :class:`~elbo_check.LinearGaussianModel` nor a
        :class:`~elbo_check.Gaussian`, or ``dtype`` is not a floating dtype.
    InvalidInputError
        For ``dtype=float64`` while 64-bit JAX is off (JAX would truncate to float32).

    Examples
    --------
    >>> import pytest; jax = pytest.importorskip("jax")
    >>> from elbo_check.contrib.jax import as_jax
    >>> from elbo_check import Gaussian
    >>> q = Gaussian.from_diagonal(mean=[0.0, 1.0], variances=[4.0, 1.0])
    >>> as_jax(q, dtype=jax.numpy.float32).scale_tril
    Array([[2., 0.],
           [0., 1.]], dtype=float32)
    >>> with jax.enable_x64(True):
    ...     print(as_jax(q).mean.dtype)
    float64
    """
    chosen = _c.check_dtype(dtype)
    if chosen.itemsize >= 8 and jax.dtypes.canonicalize_dtype(chosen) != chosen:
        raise InvalidInputError(
            f"dtype={chosen} needs 64-bit JAX, which is off (JAX would truncate to "
            "float32); call as_jax inside `with jax.enable_x64(True):` or pass "
            "dtype=jnp.float32"
        )
    return _c.views(value, _c.Setting(chosen, jit=False).array)


# ---------------------------------------------------------------------- value verifiers
def verify_elbo(
    fn: Callable[..., Any], *, dtype: Any = jnp.float64, jit: bool = True, **options: Any
) -> VerificationReport:
    """:func:`elbo_check.testing.verify_elbo` for ``fn(model, q, x) -> Array``.

    ``model`` is a :class:`JaxModel`, ``q`` a :class:`JaxGaussian` and ``x`` an array
    of shape ``(D,)`` (with ``batch_size=B``: ``q`` a batch of ``B`` with a covariance
    each and ``x`` of shape ``(B, D)``, and ``fn`` returns the ``B`` ELBOs), all in
    ``dtype``. What ``fn`` returns is read with :func:`numpy.asarray` and compared
    with the exact ELBO.

    Parameters
    ----------
    fn : callable
        The ELBO code under test, ``fn(model, q, x)``, written with :mod:`jax.numpy`,
        returning a scalar array (shape ``(B,)`` with ``batch_size=B``).
    dtype : dtype, optional
        The floating dtype of every array ``fn`` receives (default ``jnp.float64``,
        run under a scoped :func:`jax.enable_x64`; see the module's float64 note).
        Below float64 the verifier compares at that precision's tolerances.
    jit : bool, optional
        Run ``fn`` under :func:`jax.jit` (default True): one compilation per shape,
        reused across cases and calls. False runs it eagerly, operation by operation
        (slower over many cases, but ``fn`` may then use Python control flow on
        values).
    **options
        The keyword options of :func:`elbo_check.testing.verify_elbo` (see there):
        ``seed``, ``max_examples``, ``profile``, ``rtol``, ``atol``,
        ``up_to_constant``, ``batch_size``, ``problems``, ``q_kinds``,
        ``time_budget`` and the model options (fewer dimensions: fewer
        compilations).

    Returns
    -------
    report : VerificationReport
        The verifier's report, returned when every case passes: ``report.check``
        names the check, ``report.cases`` counts the cases, ``report.worst_error`` is
        the largest error relative to the tolerance (at most 1).

    Raises
    ------
    AssertionError
        If ``fn`` is wrong on a case (or raises, or returns no real number of the
        expected shape; under jit, also when it needs a concrete value of a traced
        array): the message shows the minimal counterexample and the diagnosis.
    InvalidTypeError
        If ``fn`` is not callable, ``dtype`` is not a floating dtype, or ``jit`` is
        not a bool.
    InvalidTypeError, InvalidInputError, TypeError
        For an option :func:`elbo_check.testing.verify_elbo` refuses (a bad value, or
        a keyword it does not take: TypeError).

    Examples
    --------
    One model shape (D = K = 2), so one compilation:

    >>> import pytest; jax = pytest.importorskip("jax")
    >>> import jax.numpy as jnp
    >>> from jax.scipy.stats import multivariate_normal as mvn
    >>> from elbo_check.contrib.jax import verify_elbo
    >>> def elbo(model, q, x):  # closed form: E_q log p(x | z) - KL(q || p(z))
    ...     solve, logdet = jnp.linalg.solve, lambda s: jnp.linalg.slogdet(s)[1]
    ...     lik = mvn.logpdf(x, model.weights @ q.mean + model.bias, model.noise_cov)
    ...     spread = jnp.trace(solve(model.noise_cov, model.weights @ q.cov @ model.weights.T))
    ...     d = q.mean - model.prior_mean
    ...     kl = 0.5 * (jnp.trace(solve(model.prior_cov, q.cov)) - q.mean.shape[-1]
    ...                 + d @ solve(model.prior_cov, d) + logdet(model.prior_cov) - logdet(q.cov))
    ...     return lik - 0.5 * spread - kl
    >>> shape = {"min_data_dim": 2, "max_data_dim": 2, "min_latent_dim": 2, "max_latent_dim": 2}
    >>> report = verify_elbo(elbo, max_examples=10, **shape)
    >>> report.check, report.cases
    ('verify_elbo', 10)
    """
    __tracebackhide__ = True
    chosen = _c.checked_setting(fn, dtype, jit)
    return _verify_elbo(_c.wrapped(fn, chosen), **_c.verifier_options(chosen, options))


def verify_kl(
    fn: Callable[..., Any], *, dtype: Any = jnp.float64, jit: bool = True, **options: Any
) -> VerificationReport:
    """:func:`elbo_check.testing.verify_kl` for ``fn(p, q) -> Array``, KL(p || q).

    ``p`` and ``q`` are :class:`JaxGaussian` objects in ``dtype`` (with
    ``batch_size=B``, batches of ``B`` with a covariance each, and ``fn`` returns the
    ``B`` divergences). What ``fn`` returns is read with :func:`numpy.asarray` and
    compared with the exact divergence.

    Parameters
    ----------
    fn : callable
        The KL code under test, ``fn(p, q)``, written with :mod:`jax.numpy`, returning
        ``KL(p || q)`` in nats as a scalar array (shape ``(B,)`` with
        ``batch_size=B``).
    dtype : dtype, optional
        The floating dtype of the arrays ``fn`` receives (default ``jnp.float64``,
        under a scoped :func:`jax.enable_x64`); below float64 the verifier compares at
        that precision's tolerances.
    jit : bool, optional
        Run ``fn`` under :func:`jax.jit` (default True: one compilation per
        dimension); False runs it eagerly.
    **options
        The keyword options of :func:`elbo_check.testing.verify_kl` (see there):
        ``seed``, ``max_examples``, ``profile``, ``rtol``, ``atol``, ``max_dim``,
        ``max_condition_number``, ``batch_size``, ``problems``, ``q_kinds``,
        ``time_budget``.

    Returns
    -------
    report : VerificationReport
        The verifier's report, returned when every case passes (``report.check``,
        ``report.cases``, ``report.worst_error`` at most 1).

    Raises
    ------
    AssertionError
        If ``fn`` is wrong on a case (or raises, or returns no real number of the
        expected shape), with the minimal counterexample and the diagnosis.
    InvalidTypeError
        If ``fn`` is not callable, ``dtype`` is not a floating dtype, or ``jit`` is
        not a bool.
    InvalidTypeError, InvalidInputError, TypeError
        For an option :func:`elbo_check.testing.verify_kl` refuses.

    Examples
    --------
    The closed form
    ``KL(p || q) = 1/2 (tr(Sq^-1 Sp) - K + d^T Sq^-1 d + log det Sq - log det Sp)``
    with ``d = m_q - m_p``, on Gaussians of one or two dimensions (two compilations):

    >>> import pytest; jax = pytest.importorskip("jax")
    >>> import jax.numpy as jnp
    >>> from elbo_check.contrib.jax import verify_kl
    >>> def kl(p, q):
    ...     solve, logdet = jnp.linalg.solve, lambda s: jnp.linalg.slogdet(s)[1]
    ...     d = q.mean - p.mean
    ...     return 0.5 * (jnp.trace(solve(q.cov, p.cov)) - p.mean.shape[-1]
    ...                   + d @ solve(q.cov, d) + logdet(q.cov) - logdet(p.cov))
    >>> verify_kl(kl, max_examples=10, max_dim=2).check
    'verify_kl'
    """
    __tracebackhide__ = True
    chosen = _c.checked_setting(fn, dtype, jit)
    return _verify_kl(_c.wrapped(fn, chosen), **_c.verifier_options(chosen, options))


def verify_log_evidence(
    fn: Callable[..., Any], *, dtype: Any = jnp.float64, jit: bool = True, **options: Any
) -> VerificationReport:
    """:func:`elbo_check.testing.verify_log_evidence` for ``fn(model, x) -> Array``.

    ``model`` is a :class:`JaxModel` and ``x`` an array of shape ``(D,)`` (``(B, D)``
    with ``batch_size=B``, and ``fn`` returns the ``B`` values), in ``dtype``. What
    ``fn`` returns is read with :func:`numpy.asarray` and compared with the exact
    ``log p(x)``.

    Parameters
    ----------
    fn : callable
        The log-evidence code under test, ``fn(model, x)``, written with
        :mod:`jax.numpy`, returning ``log p(x)`` in nats as a scalar array (shape
        ``(B,)`` with ``batch_size=B``).
    dtype : dtype, optional
        The floating dtype of the arrays ``fn`` receives (default ``jnp.float64``,
        under a scoped :func:`jax.enable_x64`); below float64 the verifier compares at
        that precision's tolerances.
    jit : bool, optional
        Run ``fn`` under :func:`jax.jit` (default True: one compilation per shape);
        False runs it eagerly.
    **options
        The keyword options of :func:`elbo_check.testing.verify_log_evidence` (see
        there): ``seed``, ``max_examples``, ``profile``, ``rtol``, ``atol``,
        ``batch_size``, ``problems``, ``time_budget`` and the model options.

    Returns
    -------
    report : VerificationReport
        The verifier's report, returned when every case passes (``report.check``,
        ``report.cases``, ``report.worst_error`` at most 1).

    Raises
    ------
    AssertionError
        If ``fn`` is wrong on a case (or raises, or returns no real number of the
        expected shape), with the minimal counterexample and the diagnosis.
    InvalidTypeError
        If ``fn`` is not callable, ``dtype`` is not a floating dtype, or ``jit`` is
        not a bool.
    InvalidTypeError, InvalidInputError, TypeError
        For an option :func:`elbo_check.testing.verify_log_evidence` refuses.

    Examples
    --------
    The marginal ``x ~ N(W mu0 + b, W S0 W^T + Psi)``, on models with D = K = 2 (one
    compilation):

    >>> import pytest; jax = pytest.importorskip("jax")
    >>> from jax.scipy.stats import multivariate_normal as mvn
    >>> from elbo_check.contrib.jax import verify_log_evidence
    >>> def log_evidence(model, x):
    ...     mean = model.weights @ model.prior_mean + model.bias
    ...     cov = model.weights @ model.prior_cov @ model.weights.T + model.noise_cov
    ...     return mvn.logpdf(x, mean, cov)
    >>> shape = {"min_data_dim": 2, "max_data_dim": 2, "min_latent_dim": 2, "max_latent_dim": 2}
    >>> verify_log_evidence(log_evidence, max_examples=10, **shape).check
    'verify_log_evidence'
    """
    __tracebackhide__ = True
    chosen = _c.checked_setting(fn, dtype, jit)
    return _verify_log_evidence(_c.wrapped(fn, chosen), **_c.verifier_options(chosen, options))


def verify_elbo_estimator(
    fn: Callable[..., Any], *, dtype: Any = jnp.float64, jit: bool = True, **options: Any
) -> VerificationReport:
    """:func:`elbo_check.testing.verify_elbo_estimator` for JAX estimators.

    ``mode="statistical"`` (default): ``fn(model, q, x, key, n_samples)`` with a typed
    :mod:`jax.random` key drawn from the verifier's generator for that call
    (``n_samples`` is static under jit), tested for unbiasedness.
    ``mode="pathwise"``: ``fn(model, q, x, eps)`` with the noise ``eps`` an array of
    shape ``(n, K)``, compared with the exact value of the estimate at that noise.
    ``model`` is a :class:`JaxModel`, ``q`` a :class:`JaxGaussian`, all in ``dtype``.

    Parameters
    ----------
    fn : callable
        The estimator under test, with the signature of its mode (above), returning
        the estimate as a scalar array.
    dtype : dtype, optional
        The floating dtype of the arrays ``fn`` receives (default ``jnp.float64``,
        under a scoped :func:`jax.enable_x64`); below float64 the verifier compares at
        that precision's tolerances.
    jit : bool, optional
        Run ``fn`` under :func:`jax.jit` (default True: one compilation per shape and
        ``n_samples``); False runs it eagerly.
    **options
        The keyword options of :func:`elbo_check.testing.verify_elbo_estimator` (see
        there): ``mode``, ``form``, ``n_samples``, ``calls``, ``n_problems``,
        ``false_alarm_rate``, ``max_examples``, ``q_kinds``, ``batch_size``,
        ``problems``, ``seed``, ``profile``, ``rtol``, ``atol``, ``time_budget`` and
        the model options.

    Returns
    -------
    report : VerificationReport
        The verifier's report, returned when the check passes (``report.check``,
        ``report.cases``, ``report.worst_error`` at most 1).

    Raises
    ------
    AssertionError
        If the estimator is biased (statistical mode, at the stated false-alarm rate)
        or wrong at the given noise (pathwise mode), or raises: with the problem and
        the diagnosis.
    InvalidTypeError
        If ``fn`` is not callable, ``dtype`` is not a floating dtype, or ``jit`` is
        not a bool.
    InvalidTypeError, InvalidInputError, TypeError
        For an option :func:`elbo_check.testing.verify_elbo_estimator` refuses (e.g.
        an unknown ``mode``).

    Examples
    --------
    A reparameterised Monte-Carlo ELBO, joint form, on one problem (one compilation):

    >>> import pytest; jax = pytest.importorskip("jax")
    >>> import jax.numpy as jnp
    >>> from jax.scipy.stats import multivariate_normal as mvn
    >>> from elbo_check.contrib.jax import verify_elbo_estimator
    >>> def mc_elbo(model, q, x, key, n_samples):
    ...     eps = jax.random.normal(key, (n_samples, q.mean.shape[-1]), q.mean.dtype)
    ...     z = q.mean + eps @ q.scale_tril.T
    ...     lik = mvn.logpdf(x, z @ model.weights.T + model.bias, model.noise_cov)
    ...     prior = mvn.logpdf(z, model.prior_mean, model.prior_cov)
    ...     return jnp.mean(lik + prior - mvn.logpdf(z, q.mean, q.cov))
    >>> report = verify_elbo_estimator(mc_elbo, n_problems=1, calls=100)
    >>> report.check, report.details["calls"]
    ('verify_elbo_estimator', 100)
    """
    __tracebackhide__ = True
    chosen = _c.checked_setting(fn, dtype, jit)
    return _verify_elbo_estimator(_c.wrapped(fn, chosen), **_c.verifier_options(chosen, options))


# ---------------------------------------------------------------------- gradients
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
        The ELBO code under test, with the signature of its mode (above), written with
        :mod:`jax.numpy` and returning the value as a floating array.
    dtype : dtype, optional
        The dtype of every array ``fn`` receives (default ``jnp.float64``, computed
        under a scoped :func:`jax.enable_x64`). Below float64 the verifier is told (its
        ``dtype=``), so its tolerances follow.
    jit : bool, optional
        Compile the gradient with :func:`jax.jit` (default True): once per shape.
        False differentiates eagerly.
    parametrisation : Parametrisation, optional
        Differentiate in these parameters instead of q's ``(mean, scale_tril)``
        (default None); ``fn`` then receives their dict in q's place.
    **options
        The keyword options of :func:`elbo_check.testing.verify_elbo_gradient` (see
        there): ``mode``, ``form``, ``n_samples``, ``calls``, ``n_problems``,
        ``batch_size``, ``max_examples``, ``q_kinds``, ``problems``, ``seed``,
        ``profile``, ``rtol``, ``atol``, ``time_budget`` and the model options.

    Returns
    -------
    report : VerificationReport
        The verifier's report, returned when the check passes (``report.check``,
        ``report.cases``, ``report.worst_error`` at most 1).

    Raises
    ------
    AssertionError
        When jax.grad's gradient of ``fn`` is wrong, with the verifier's diagnosis;
        also when ``fn`` raises, returns what jax.grad cannot differentiate (not a
        floating JAX array computed from q's arrays, or not of shape ``()`` or
        ``(B,)``) or needs a concrete value of a traced array: the failure names it.
    InvalidTypeError
        If ``fn`` is not callable, ``dtype`` is not a floating dtype, or ``jit`` is
        not a bool.
    InvalidTypeError, InvalidInputError, TypeError
        For an option :func:`elbo_check.testing.verify_elbo_gradient` refuses (a
        ``parametrisation`` that is not a Parametrisation included).

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
    chosen = _c.checked_setting(fn, dtype, jit)
    batched = options.get("batch_size") is not None
    gradient = _c.gradient_of(fn, chosen, parametrisation, batched)
    return _verify_elbo_gradient(
        gradient, parametrisation=parametrisation, **_c.verifier_options(chosen, options)
    )
