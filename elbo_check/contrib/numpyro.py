"""The verifiers for NumPyro ELBO code: a loss and a guide in, the verdict out.

A NumPyro loss (``Trace_ELBO``, ``TraceMeanField_ELBO``, ``TraceGraph_ELBO``,
``RenyiELBO``, or your subclass) and a guide (an autoguide by name, or your own guide
function) are checked against the exact answers of the linear-Gaussian model
``z ~ N(mu0, S0)``, ``x | z ~ N(W z + b, Psi)``, written as a NumPyro model with the
sample sites ``"z"`` and ``"x"`` (observed)::

    import numpyro
    from elbo_check.contrib import numpyro as ec_numpyro
    ec_numpyro.verify_elbo_estimator(numpyro.infer.Trace_ELBO(), guide="AutoNormal")
    ec_numpyro.verify_elbo_gradient(numpyro.infer.Trace_ELBO(), guide="AutoMultivariateNormal")

What is checked is ``-loss.loss(key, params, model_fn, guide_fn, x)`` (the ELBO
estimate; with ``num_particles`` samples, passed to the verifier as ``n_samples``) and
its gradient by :func:`jax.grad`, in the parameters SVI optimises: for an autoguide
the unconstrained ones (see :func:`verify_elbo_gradient` for the map), for your guide
the values of its ``numpyro.param`` sites, named by the keys of a
:class:`~elbo_check.testing.Parametrisation`. A ``RenyiELBO`` (the Rényi bounds, IWAE at
``alpha = 0``) is checked by :func:`verify_renyi_estimator` and
:func:`verify_renyi_gradient` against the exact distribution of its
``num_particles``-sample estimate.

**Speed.** The loss is compiled with :func:`jax.jit` once per (loss, guide, shape): the
model's arrays, the guide's parameters, ``x`` and the random key are arguments of the
compiled function, so every problem of the same dimensions reuses it, and the compiled
functions are kept for later calls with an equal loss (same type and settings). A
report's ``details["compilations"]`` counts the compilations a call made. A
compilation takes a second or more, and the calls well under a millisecond, so the
number of shapes sets the time: statistical mode has one per problem (the default
problems: 4 shapes), pathwise mode one per (D, K) drawn, up to 36; bound them with
``min_latent_dim``, ``max_latent_dim``, ``min_data_dim`` and ``max_data_dim``.

**Randomness.** Each call of the loss gets one ``jax.random`` key, seeded from the
verifier's :class:`numpy.random.Generator` for that call, so a check is reproducible
from the verifier's ``seed``. No global seed is touched.

**Precision.** The verifiers run the loss in float64 inside JAX's thread-local
``jax.enable_x64(True)`` context (restored on return; the process-wide
``jax_enable_x64`` flag is never changed). ``dtype="float32"`` runs it in float32
instead (``jax.enable_x64(False)``) and tells the verifier, so its tolerances follow.

NumPyro and JAX are optional dependencies: ``pip install numpyro jax``.

Examples
--------
>>> import pytest; numpyro = pytest.importorskip("numpyro")
>>> from elbo_check.contrib import numpyro as ec_numpyro
>>> report = ec_numpyro.verify_elbo_estimator(
...     numpyro.infer.Trace_ELBO(), guide="AutoNormal", n_problems=1, calls=80)
>>> report.check
'verify_elbo_estimator'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .._errors import InvalidInputError, InvalidTypeError
from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ..testing import Parametrisation, VerificationReport
from ..testing import verify_elbo_estimator as _verify_elbo_estimator
from ..testing import verify_elbo_gradient as _verify_elbo_gradient

try:
    import jax.numpy as jnp
    from numpyro import handlers
except ImportError as err:  # pragma: no cover - exercised without numpyro
    raise ImportError(
        "elbo_check.contrib.numpyro needs NumPyro and JAX, which are not installed; "
        "install them with: pip install numpyro jax"
    ) from err

from . import _numpyro_checks as _k
from . import _numpyro_handlers as _h
from ._numpyro_renyi import verify_renyi_estimator, verify_renyi_gradient

__all__ = [
    "AUTOGUIDES",
    "model_and_guide",
    "verify_elbo_estimator",
    "verify_elbo_gradient",
    "verify_renyi_estimator",
    "verify_renyi_gradient",
]

#: The autoguides checked by name (``guide="AutoNormal"``, ...).
AUTOGUIDES = _h.AUTOGUIDE_NAMES

FloatArray = _h.FloatArray


# ---------------------------------------------------------------------- the model
def model_and_guide(
    model: LinearGaussianModel,
    q: Gaussian,
    *,
    guide: Any = "AutoNormal",
    parametrisation: Parametrisation | None = None,
    rank: int | None = None,
) -> tuple[Callable[..., None], Any]:
    """A NumPyro model function for ``model`` and a guide whose distribution is ``q``.

    Parameters
    ----------
    model : LinearGaussianModel
        The model; ``model_fn(x)`` samples ``"z"`` from its prior (a
        ``MultivariateNormal``) and observes ``"x"`` from ``MultivariateNormal(W z + b,
        Psi)``. Its arrays are constants of ``model_fn``.
    q : Gaussian
        One Gaussian over the latent dimensions, in the guide's family (diagonal for
        ``AutoNormal`` and ``AutoDiagonalNormal``).
    guide : str or callable, optional
        An autoguide's name (:data:`AUTOGUIDES`, default ``"AutoNormal"``) or your
        guide function ``guide(x)`` (then ``parametrisation`` is required).
    parametrisation : Parametrisation, optional
        For a guide function: its keys are the guide's ``numpyro.param`` names, its
        values what the guide sees (constrained values). Left out for an autoguide,
        which has its own (see :func:`verify_elbo_gradient`).
    rank : int, optional
        ``AutoLowRankMultivariateNormal``'s rank (default K: every q is a member).

    Returns
    -------
    model_fn : callable
        ``model_fn(x)``.
    guide_fn : numpyro.handlers.substitute
        The guide with its parameters set to ``q``'s (``guide_fn.data``, the
        constrained values its ``numpyro.param`` sites return; ``guide_fn.fn`` is the
        guide itself). Usable with the loss API and SVI, which start from these values:
        ``-Trace_ELBO().loss(key, {}, model_fn, guide_fn, x)`` estimates ``model.elbo(q,
        x)``.

    Raises
    ------
    InvalidTypeError
        If ``model`` is not a :class:`~elbo_check.LinearGaussianModel`, ``guide`` is
        neither a name nor a callable, or ``parametrisation`` is not a
        :class:`~elbo_check.testing.Parametrisation`.
    InvalidInputError
        If ``q`` is not one Gaussian of dimension K (a batch, another dimension, or not
        a Gaussian at all) or is not in the guide's family (a full covariance for
        ``AutoNormal``); for an unknown autoguide name, a parametrisation given with an
        autoguide, ``rank`` given with another guide or < 1, or a guide function
        without a parametrisation. (A guide function's ``numpyro.param`` names are not
        checked here: the verifiers check them.)

    Examples
    --------
    >>> import pytest; numpyro = pytest.importorskip("numpyro")
    >>> from elbo_check.contrib.numpyro import model_and_guide
    >>> import jax, numpy as np
    >>> from elbo_check import ppca
    >>> model = ppca(weights=np.ones((3, 2)), mean=np.zeros(3), noise_variance=0.5)
    >>> x = np.array([0.5, 1.0, -0.3])
    >>> q = model.posterior(x)  # then every estimate is log p(x)
    >>> model_fn, guide_fn = model_and_guide(model, q, guide="AutoMultivariateNormal")
    >>> sorted(guide_fn.data)
    ['auto_loc', 'auto_scale_tril']
    >>> loss = numpyro.infer.Trace_ELBO()
    >>> estimate = -jax.jit(lambda key: loss.loss(key, {}, model_fn, guide_fn, x))(
    ...     jax.random.PRNGKey(0))
    >>> bool(abs(estimate - model.log_evidence(x)) < 1e-4)  # float32: JAX's default
    True
    """
    if not isinstance(model, LinearGaussianModel):
        raise InvalidTypeError(f"model must be a LinearGaussianModel; got {type(model).__name__}")
    if not isinstance(q, Gaussian) or q.batch_shape != () or q.dim != model.latent_dim:
        raise InvalidInputError(
            f"q must be one Gaussian over the model's {model.latent_dim} latent dimensions; "
            f"got {q!r}"
        )
    spec = _k.guide_spec(guide, parametrisation, rank, q.dim)
    params = _h.parameters(spec, q)
    arrays = tuple(jnp.asarray(a) for a in _h.model_arrays(model))

    def model_fn(x: Any) -> None:
        _h.numpyro_model(x, *arrays)

    data = {k: jnp.asarray(v) for k, v in spec.constrained(params).items()}
    built = spec.build(model_fn) if spec.is_auto else guide  # the user's own guide(x)
    return model_fn, handlers.substitute(built, data=data)


def _common(
    loss: Any,
    guide: Any,
    parametrisation: Any,
    rank: Any,
    dtype: Any,
    options: dict[str, Any],
) -> tuple[_h.Calls, bool, dict[str, Any]]:
    """The checked loss and guide, the precision, and the verifier's options."""
    _k.check_loss(loss)
    max_k = int(options.get("max_latent_dim", _h.DEFAULT_MAX_LATENT_DIM))
    spec = _k.guide_spec(guide, parametrisation, rank, max_k)
    x64 = _k.check_dtype(dtype)
    mode = options.get("mode", "statistical")
    if mode not in ("statistical", "pathwise"):
        raise InvalidInputError(
            "mode must be 'statistical' or 'pathwise' (a NumPyro loss is a Monte-Carlo "
            f"estimate: there is no exact mode); got mode={mode!r}"
        )
    for name, why in (
        ("n_samples", "it is the loss's num_particles: set that on the loss"),
        ("batch_size", "the NumPyro model observes one x"),
    ):
        if options.get(name) is not None:
            raise InvalidInputError(
                f"{name}= cannot be given here: {why}; got {name}={options[name]!r}"
            )
    with _k.precision(x64):
        found = _h.probe(loss, spec)
    chosen = {**options, "mode": mode, "n_samples": int(loss.num_particles)}
    chosen.setdefault("form", "analytic_kl" if found.analytic_kl else "joint")
    if not x64:
        chosen["dtype"] = np.float32
    return _h.Calls(loss, spec), x64, chosen


# ---------------------------------------------------------------------- verifiers
def verify_elbo_estimator(
    loss: Any,
    *,
    guide: Any,
    parametrisation: Parametrisation | None = None,
    rank: int | None = None,
    dtype: Any = "float64",
    **options: Any,
) -> VerificationReport:
    """:func:`elbo_check.testing.verify_elbo_estimator` for a NumPyro loss and guide.

    The estimate is ``-loss.loss(key, params, model_fn, guide_fn, x)`` with the guide's
    parameters set to the verifier's q (drawn among the covariances the guide
    represents: diagonal for ``AutoNormal`` and ``AutoDiagonalNormal``, any for
    ``AutoLowRankMultivariateNormal`` at its default ``rank`` (the largest K of the
    problems; a smaller ``rank=`` draws isotropic q, the members of every rank), the
    kinds of ``parametrisation`` for your guide). ``n_samples`` is
    the loss's ``num_particles`` and ``form`` follows the loss: ``"analytic_kl"`` for
    ``TraceMeanField_ELBO`` when NumPyro has the KL of the guide's ``"z"`` distribution
    to the ``MultivariateNormal`` prior in closed form (a ``MultivariateNormal``
    guide), the joint form otherwise (autoguides: their ``"z"`` site is a ``Delta``, or a
    ``Normal`` without a closed-form KL to the prior). Pass ``form=`` to override.

    ``mode="statistical"`` (default) calls the loss with one key per call.
    ``mode="pathwise"`` pins the guide's Gaussian sample to ``z_i = m + L eps_i`` (the
    site's own loc and Cholesky factor; an autoguide's ``"z"`` follows from its
    auxiliary latent), one row of ``eps`` at a time, and averages. Every particle of a
    row sees the same ``z_i``, so a multi-sample bound (``RenyiELBO``, the IWAE bound)
    collapses to the ELBO there: check those in statistical mode.

    Parameters
    ----------
    loss : numpyro.infer.elbo.ELBO
        ``Trace_ELBO()``, ``TraceMeanField_ELBO()``, ``TraceGraph_ELBO()``,
        ``RenyiELBO()`` or a subclass.
    guide : str or callable
        One of :data:`AUTOGUIDES`, or your guide function ``guide(x)`` (then
        ``parametrisation`` is required).
    parametrisation : Parametrisation, optional
        For a guide function: a parametrisation whose keys are its ``numpyro.param``
        names, with the (constrained) values the guide sees.
    rank : int, optional
        ``AutoLowRankMultivariateNormal``'s rank (``ScaledLowRank(rank, "softplus")``);
        default: the largest latent dimension of the problems, so every q is a member.
    dtype : {"float64", "float32"}, optional
        The precision the loss runs in (default ``"float64"``; see the module's
        Precision).
    **options
        Every other option of :func:`elbo_check.testing.verify_elbo_estimator`
        (``mode``, ``calls``, ``n_problems``, ``q_kinds``, ``seed``, ``max_examples``,
        ...); not ``n_samples`` (the loss's ``num_particles``) or ``batch_size``.

    Returns
    -------
    VerificationReport
        ``details["compilations"]`` counts the compilations of this call.

    Raises
    ------
    AssertionError
        When the estimate is biased (statistical mode, at the stated false-alarm rate)
        or wrong at the pinned noise (pathwise mode), with the verifier's diagnosis;
        also when the loss or the guide raises while the check runs.
    InvalidTypeError
        If ``loss`` is not a NumPyro ELBO, ``guide`` is neither a name nor a callable,
        ``parametrisation`` is not a :class:`~elbo_check.testing.Parametrisation`, or
        ``dtype`` is not float64 or float32.
    InvalidInputError
        For an unknown autoguide name; a parametrisation given with an autoguide;
        ``rank`` given with another guide, or not an integer >= 1; a guide function
        without a parametrisation, with ``numpyro.param`` names that are not its keys,
        or without a sample site ``"z"``; a ``mode`` other than ``"statistical"`` and
        ``"pathwise"`` (no ``"exact"`` mode for a Monte-Carlo loss); ``n_samples`` or
        ``batch_size`` given; or ``q_kinds`` the guide does not represent.
    InvalidTypeError, InvalidInputError, TypeError
        For another option :func:`elbo_check.testing.verify_elbo_estimator` refuses.

    Examples
    --------
    >>> import pytest; numpyro = pytest.importorskip("numpyro")
    >>> from elbo_check.contrib.numpyro import verify_elbo_estimator
    >>> import jax.numpy as jnp, numpyro.distributions as dist
    >>> from elbo_check.testing import FullCholesky
    >>> def my_guide(x):
    ...     loc = numpyro.param("loc", jnp.zeros(2))
    ...     scale_tril = numpyro.param("scale_tril", jnp.eye(2),
    ...                                constraint=dist.constraints.lower_cholesky)
    ...     numpyro.sample("z", dist.MultivariateNormal(loc, scale_tril=scale_tril))
    >>> report = verify_elbo_estimator(
    ...     numpyro.infer.Trace_ELBO(), guide=my_guide, parametrisation=FullCholesky(),
    ...     mode="pathwise", max_examples=10, min_latent_dim=2, max_latent_dim=2,
    ...     min_data_dim=3, max_data_dim=3)  # one shape: at most one compilation
    >>> report.details["compilations"] <= 1
    True
    """
    __tracebackhide__ = True
    calls, x64, chosen = _common(loss, guide, parametrisation, rank, dtype, options)
    chosen["q_kinds"] = _k.restricted_kinds(calls.spec, options.get("q_kinds"))
    fn = calls.estimate if chosen["mode"] == "statistical" else calls.pathwise_estimate
    with _k.precision(x64):
        return _k.counted(lambda: _verify_elbo_estimator(fn, **chosen))


def verify_elbo_gradient(
    loss: Any,
    *,
    guide: Any,
    parametrisation: Parametrisation | None = None,
    rank: int | None = None,
    dtype: Any = "float64",
    **options: Any,
) -> VerificationReport:
    """:func:`elbo_check.testing.verify_elbo_gradient` for ``jax.grad`` of a NumPyro loss.

    The gradient checked is :func:`jax.grad` of ``-loss.loss(key, params, model_fn,
    guide_fn, x)`` in the parameters SVI optimises, compared through the verifier's
    parametrisation:

    ========================================  =============================================
    guide                                     parametrisation (its keys: NumPyro's params)
    ========================================  =============================================
    ``"AutoNormal"``                          ``DiagonalSoftplusScale()``: ``loc``:
                                              ``z_auto_loc``, ``raw_scale``: the
                                              unconstrained ``z_auto_scale``
    ``"AutoDiagonalNormal"``                  ``DiagonalSoftplusScale()``: ``auto_loc``,
                                              unconstrained ``auto_scale``
    ``"AutoMultivariateNormal"``              ``FullUnitCholeskyScale("softplus")``:
                                              ``loc``: ``auto_loc``; the unconstrained
                                              ``auto_scale_tril`` (a vector) is the strict
                                              lower triangle of ``unit_scale_tril``, row by
                                              row, then ``raw_scale``
                                              (``scaled_unit_lower_cholesky``:
                                              ``L = diag(softplus(raw)) U``)
    ``"AutoLowRankMultivariateNormal"``       ``ScaledLowRank(rank, "softplus")``:
                                              ``loc``: ``auto_loc``, ``cov_factor``:
                                              ``auto_cov_factor`` (K, rank),
                                              ``raw_scale``: unconstrained
                                              ``auto_scale``; built with ``rank=`` (default
                                              the largest K: NumPyro's own default,
                                              ``round(sqrt(K))``, changes with K)
    your guide function                       your ``parametrisation``: the gradient in
                                              its ``numpyro.param`` values (entries that
                                              are not parameters, such as those above a
                                              factor's diagonal, are masked)
    ========================================  =============================================

    Modes as in :func:`verify_elbo_estimator`: ``"statistical"`` (default; unbiased
    gradient estimates, one key per call) and ``"pathwise"`` (the gradient at the
    pinned sample ``z_i = m + L eps_i``, averaged over the rows of ``eps``); there is
    no ``"exact"`` mode for a Monte-Carlo loss. ``n_samples`` is the loss's
    ``num_particles``; ``form`` follows the loss as in :func:`verify_elbo_estimator`.

    Parameters
    ----------
    loss : numpyro.infer.elbo.ELBO
        The loss SVI would use (as in :func:`verify_elbo_estimator`).
    guide : str or callable
        One of :data:`AUTOGUIDES`, or your guide function ``guide(x)`` (then
        ``parametrisation`` is required).
    parametrisation : Parametrisation, optional
        For a guide function: the gradient is checked in its ``numpyro.param`` values,
        by these keys (table above).
    rank : int, optional
        ``AutoLowRankMultivariateNormal``'s rank (default: the largest latent dimension
        of the problems).
    dtype : {"float64", "float32"}, optional
        The precision the loss and its gradient run in (default ``"float64"``).
    **options
        The keyword options of :func:`elbo_check.testing.verify_elbo_gradient` (see
        there): ``mode``, ``calls``, ``n_problems``, ``q_kinds`` (q outside the
        guide's family is projected onto it), ``seed``, ``max_examples``, ...; not
        ``n_samples`` (the loss's ``num_particles``) or ``batch_size``.

    Returns
    -------
    VerificationReport
        ``details["compilations"]`` counts the compilations of this call.

    Raises
    ------
    AssertionError
        When the gradient is wrong, with the verifier's diagnosis; also when the loss
        or the guide raises while the check runs.
    InvalidTypeError
        If ``loss`` is not a NumPyro ELBO, ``guide`` is neither a name nor a callable,
        ``parametrisation`` is not a :class:`~elbo_check.testing.Parametrisation`, or
        ``dtype`` is not float64 or float32.
    InvalidInputError
        For an unknown autoguide name; a parametrisation given with an autoguide;
        ``rank`` given with another guide, or not an integer >= 1; a guide function
        without a parametrisation, with ``numpyro.param`` names that are not its keys,
        or without a sample site ``"z"``; a ``mode`` other than ``"statistical"`` and
        ``"pathwise"`` (no ``"exact"`` mode for a Monte-Carlo loss); ``n_samples`` or
        ``batch_size`` given.
    InvalidTypeError, InvalidInputError, TypeError
        For another option :func:`elbo_check.testing.verify_elbo_gradient` refuses.

    Examples
    --------
    >>> import pytest; numpyro = pytest.importorskip("numpyro")
    >>> from elbo_check.contrib.numpyro import verify_elbo_gradient
    >>> report = verify_elbo_gradient(numpyro.infer.Trace_ELBO(), guide="AutoNormal",
    ...                               n_problems=1, calls=80)
    >>> report.details["form"]
    'joint'
    """
    __tracebackhide__ = True
    calls, x64, chosen = _common(loss, guide, parametrisation, rank, dtype, options)
    fn = calls.gradient if chosen["mode"] == "statistical" else calls.pathwise_gradient
    par = calls.spec.parametrisation
    with _k.precision(x64):
        return _k.counted(lambda: _verify_elbo_gradient(fn, parametrisation=par, **chosen))
