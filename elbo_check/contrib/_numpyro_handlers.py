"""The machinery behind :mod:`elbo_check.contrib.numpyro`: the model, the guides and
their parameter maps, the pinned noise of pathwise mode, the compiled losses and the
calls the verifiers make.

Nothing here is public: :mod:`elbo_check.contrib.numpyro` documents the behaviour.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._errors import InvalidInputError
from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ..testing import (
    DiagonalSoftplusScale,
    FullUnitCholeskyScale,
    Parametrisation,
    ScaledLowRank,
)

try:
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro import handlers
    from numpyro.distributions import constraints
    from numpyro.distributions.kl import kl_divergence
    from numpyro.distributions.transforms import biject_to
    from numpyro.infer import autoguide
except ImportError as err:  # pragma: no cover - exercised without numpyro
    raise ImportError(
        "elbo_check.contrib.numpyro needs NumPyro and JAX, which are not installed; "
        "install them with: pip install numpyro jax"
    ) from err

FloatArray = NDArray[np.float64]
Params = dict[str, FloatArray]
Arrays = tuple[FloatArray, ...]

#: The latent site of the model every guide must cover.
LATENT, OBSERVED = "z", "x"

#: The autoguides checked by name, in the order error messages list them.
AUTOGUIDE_NAMES = (
    "AutoNormal",
    "AutoDiagonalNormal",
    "AutoMultivariateNormal",
    "AutoLowRankMultivariateNormal",
)


# ---------------------------------------------------------------------- the model
def numpyro_model(
    x: Any,
    weights: Any,
    bias: Any,
    prior_mean: Any,
    prior_scale_tril: Any,
    noise_scale_tril: Any,
) -> None:
    """``z ~ N(prior_mean, L0 L0^T)``, ``x | z ~ N(W z + b, Lpsi Lpsi^T)`` (observed)."""
    z = numpyro.sample(LATENT, dist.MultivariateNormal(prior_mean, scale_tril=prior_scale_tril))
    mean = weights @ z + bias
    numpyro.sample(OBSERVED, dist.MultivariateNormal(mean, scale_tril=noise_scale_tril), obs=x)


def model_arrays(model: LinearGaussianModel) -> Arrays:
    """The model's arrays, in the order :func:`numpyro_model` takes them."""
    noise = np.linalg.cholesky(np.asarray(model.dense_noise_cov(), dtype=np.float64))
    return (
        np.array(model.weights, dtype=np.float64),
        np.array(model.bias, dtype=np.float64),
        np.array(model.prior.mean, dtype=np.float64),
        np.array(model.prior.scale_tril, dtype=np.float64),
        noise,
    )


# ---------------------------------------------------------------------- guides
@dataclass(frozen=True)
class GuideSpec:
    """A guide and the exact map between a parametrisation's parameters and its own.

    ``to_free`` turns the parametrisation's parameters (numpy) into the values the
    gradient is taken in (``free``: the unconstrained values SVI optimises for an
    autoguide, the guide's ``numpyro.param`` values for a user's guide); ``constrain``
    (traced) gives the ``param_map`` the loss reads; ``from_free`` maps a gradient in
    ``free`` back to the parametrisation's keys.
    """

    name: str
    key: Hashable
    parametrisation: Parametrisation
    build: Callable[[Callable[..., Any]], Callable[..., Any]]
    to_free: Callable[[Mapping[str, FloatArray]], Params]
    from_free: Callable[[Mapping[str, Any]], Params]
    constrain: Callable[[Mapping[str, Any]], dict[str, Any]]
    is_auto: bool
    #: ``constrain`` in numpy, from the parametrisation's parameters (model_and_guide's
    #: eager path: op-by-op JAX would compile every operation).
    constrained: Callable[[Mapping[str, FloatArray]], Params]
    #: The covariance kinds of q the estimator check draws (members of the family).
    estimator_kinds: tuple[str, ...] | None = None


#: The largest latent dimension of the verifiers' default problems: the default rank of
#: ``guide="AutoLowRankMultivariateNormal"`` (NumPyro's default, ``round(sqrt(K))``,
#: changes with K, and a check needs one parametrisation; at rank >= K every q fits).
DEFAULT_MAX_LATENT_DIM = 6


def _np_softplus(value: FloatArray) -> FloatArray:
    return np.asarray(np.logaddexp(0.0, value), dtype=np.float64)


def _softplus(value: Any) -> Any:
    return biject_to(constraints.softplus_positive)(value)


def _unit_cholesky(value: Any) -> Any:
    return biject_to(constraints.scaled_unit_lower_cholesky)(value)


def _diagonal_spec(name: str, loc: str, scale: str, build: Callable[..., Any]) -> GuideSpec:
    """AutoNormal and AutoDiagonalNormal: a loc and a ``softplus_positive`` scale."""
    return GuideSpec(
        name=name,
        key=name,
        parametrisation=DiagonalSoftplusScale(),
        build=build,
        to_free=lambda p: {loc: np.array(p["loc"]), scale: np.array(p["raw_scale"])},
        from_free=lambda g: {
            "loc": np.asarray(g[loc], dtype=np.float64),
            "raw_scale": np.asarray(g[scale], dtype=np.float64),
        },
        constrain=lambda f: {loc: f[loc], scale: _softplus(f[scale])},
        is_auto=True,
        constrained=lambda p: {loc: np.array(p["loc"]), scale: _np_softplus(p["raw_scale"])},
    )


def _multivariate_spec() -> GuideSpec:
    """AutoMultivariateNormal: ``auto_scale_tril`` under ``scaled_unit_lower_cholesky``,
    whose unconstrained vector is the strict lower triangle of the unit factor (row by
    row, as ``numpy.tril_indices(K, -1)``) followed by the K raw row scales (softplus)."""

    def to_free(p: Mapping[str, FloatArray]) -> Params:
        unit = np.asarray(p["unit_scale_tril"])
        rows, cols = np.tril_indices(unit.shape[0], -1)
        vector = np.concatenate([unit[rows, cols], np.asarray(p["raw_scale"])])
        return {"auto_loc": np.array(p["loc"]), "auto_scale_tril": vector}

    def from_free(g: Mapping[str, Any]) -> Params:
        loc = np.asarray(g["auto_loc"], dtype=np.float64)
        vector = np.asarray(g["auto_scale_tril"], dtype=np.float64)
        k = loc.shape[0]
        unit = np.zeros((k, k))
        unit[np.tril_indices(k, -1)] = vector[:-k]
        return {"loc": loc, "raw_scale": vector[-k:].copy(), "unit_scale_tril": unit}

    return GuideSpec(
        name="AutoMultivariateNormal",
        key="AutoMultivariateNormal",
        parametrisation=FullUnitCholeskyScale(scale_transform="softplus"),
        build=autoguide.AutoMultivariateNormal,
        to_free=to_free,
        from_free=from_free,
        constrain=lambda f: {
            "auto_loc": f["auto_loc"],
            "auto_scale_tril": _unit_cholesky(f["auto_scale_tril"]),
        },
        is_auto=True,
        constrained=lambda p: {
            "auto_loc": np.array(p["loc"]),
            "auto_scale_tril": _np_softplus(p["raw_scale"])[:, None] * p["unit_scale_tril"],
        },
    )


def _low_rank_spec(rank: int, max_latent_dim: int) -> GuideSpec:
    """AutoLowRankMultivariateNormal(rank=rank): ``auto_loc``, ``auto_cov_factor``
    (real) and ``auto_scale`` (``softplus_positive``); its covariance is
    ``diag(s) (F F^T + I) diag(s)``."""
    return GuideSpec(
        name="AutoLowRankMultivariateNormal",
        key=f"AutoLowRankMultivariateNormal(rank={rank})",
        parametrisation=ScaledLowRank(rank, scale_transform="softplus"),
        build=functools.partial(autoguide.AutoLowRankMultivariateNormal, rank=rank),
        to_free=lambda p: {
            "auto_loc": np.array(p["loc"]),
            "auto_cov_factor": np.array(p["cov_factor"]),
            "auto_scale": np.array(p["raw_scale"]),
        },
        from_free=lambda g: {
            "loc": np.asarray(g["auto_loc"], dtype=np.float64),
            "cov_factor": np.asarray(g["auto_cov_factor"], dtype=np.float64),
            "raw_scale": np.asarray(g["auto_scale"], dtype=np.float64),
        },
        constrain=lambda f: {
            "auto_loc": f["auto_loc"],
            "auto_cov_factor": f["auto_cov_factor"],
            "auto_scale": _softplus(f["auto_scale"]),
        },
        is_auto=True,
        constrained=lambda p: {
            "auto_loc": np.array(p["loc"]),
            "auto_cov_factor": np.array(p["cov_factor"]),
            "auto_scale": _np_softplus(p["raw_scale"]),
        },
        # an isotropic q is a member at every rank; any q at rank >= K - 1
        estimator_kinds=None if rank >= max_latent_dim - 1 else ("isotropic",),
    )


def autoguide_spec(
    name: str, rank: int | None = None, max_latent_dim: int = DEFAULT_MAX_LATENT_DIM
) -> GuideSpec:
    """The spec of a named autoguide (checked by the caller); ``rank`` is the low-rank
    guide's (default ``max_latent_dim``, the largest K of the problems: every q fits)."""
    if name == "AutoNormal":
        loc, scale = f"{LATENT}_auto_loc", f"{LATENT}_auto_scale"
        return _diagonal_spec(name, loc, scale, autoguide.AutoNormal)
    if name == "AutoDiagonalNormal":
        return _diagonal_spec(name, "auto_loc", "auto_scale", autoguide.AutoDiagonalNormal)
    if name == "AutoMultivariateNormal":
        return _multivariate_spec()
    if name == "AutoLowRankMultivariateNormal":
        return _low_rank_spec(max_latent_dim if rank is None else rank, max_latent_dim)
    raise InvalidInputError(f"guide must be one of {', '.join(AUTOGUIDE_NAMES)}; got {name!r}")


def user_spec(guide: Callable[..., Any], par: Parametrisation) -> GuideSpec:
    """A user's guide ``guide(x)`` whose ``numpyro.param`` values are ``par``'s keys."""
    kinds = dict(zip(par.keys, getattr(par, "_key_kinds", ()), strict=False))
    masks: dict[str, Callable[[FloatArray], FloatArray]] = {
        "lower": np.tril,
        "strict_lower": lambda g: np.tril(g, -1),
    }

    def from_free(g: Mapping[str, Any]) -> Params:
        out = {}
        for key in par.keys:
            value = np.asarray(g[key], dtype=np.float64)
            out[key] = masks[kinds[key]](value) if kinds.get(key) in masks else value
        return out

    def build(model: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(guide)
        def with_model_args(x: Any, *arrays: Any) -> Any:
            return guide(x)  # the user's guide sees x only, as model_fn(x) does

        return with_model_args

    try:
        key: Hashable = ("user", guide, par.keys)
        hash(key)
    except TypeError:
        key = ("user-id", id(guide), par.keys)
    return GuideSpec(
        name=getattr(guide, "__name__", type(guide).__name__),
        key=key,
        parametrisation=par,
        build=build,
        to_free=lambda p: {k: np.array(p[k], dtype=np.float64) for k in par.keys},
        from_free=from_free,
        constrain=lambda f: dict(f),
        is_auto=False,
        constrained=lambda p: {k: np.array(p[k], dtype=np.float64) for k in par.keys},
    )


# ---------------------------------------------------------------------- pathwise noise
def reparameterised(fn: Any, eps: Any) -> Any:
    """``m + L eps`` for a Gaussian site distribution (its own loc and factor), so the
    value is differentiable in the guide's parameters."""
    base = fn.base_dist if isinstance(fn, dist.Independent) else fn
    if isinstance(base, dist.Normal):
        return base.loc + base.scale * eps
    if isinstance(base, (dist.MultivariateNormal, dist.LowRankMultivariateNormal)):
        return base.loc + base.scale_tril @ eps
    raise InvalidInputError(
        "pathwise mode pins the guide's Gaussian sample z = m + L eps; the guide's "
        f"site has a {type(fn).__name__} distribution, which is not a Normal, "
        "MultivariateNormal or LowRankMultivariateNormal (use mode='statistical')"
    )


def _is_pinned_site(msg: Mapping[str, Any]) -> bool:
    return bool(
        msg["type"] == "sample" and not msg["is_observed"] and not isinstance(msg["fn"], dist.Delta)
    )


def pinned(guide: Callable[..., Any], eps: Any) -> Callable[..., Any]:
    """``guide`` with its Gaussian sample site(s) set to ``m + L eps`` (computed from the
    site's own distribution; deterministic Delta sites such as an autoguide's ``z``
    follow from it)."""

    def value_of(msg: dict[str, Any]) -> Any:
        return reparameterised(msg["fn"], eps) if _is_pinned_site(msg) else None

    substituted: Callable[..., Any] = handlers.substitute(guide, substitute_fn=value_of)
    return substituted


# ---------------------------------------------------------------------- probing
@dataclass(frozen=True)
class Probe:
    """What one eager run of the guide at a K=2 problem showed."""

    analytic_kl: bool  #: TraceMeanField_ELBO would use KL(q || p(z)) in closed form


def _tiny_problem() -> tuple[FloatArray, Arrays]:
    x = np.array([0.3, -0.2])
    return x, (np.eye(2), np.zeros(2), np.zeros(2), np.eye(2), np.eye(2))


def probe(loss: Any, spec: GuideSpec) -> Probe:
    """Trace the guide once (abstractly, K=2: :func:`jax.eval_shape` runs no kernel) to
    check its parameters and sites against the parametrisation and to find the form
    ``TraceMeanField_ELBO`` computes."""
    x, arrays = _tiny_problem()
    par = spec.parametrisation
    try:
        params = par.from_gaussian(par.project(Gaussian.standard(2)))
    except Exception:  # a Custom map for another dimension: nothing to probe with
        return Probe(analytic_kl=False)
    found: list[bool] = []

    def run(free: Any) -> Any:
        guide = handlers.substitute(spec.build(numpyro_model), data=spec.constrain(free))
        with handlers.block():
            trace = handlers.trace(handlers.seed(guide, rng_seed=0)).get_trace(x, *arrays)
        found.append(_inspect(trace, loss, spec, params))
        return jnp.zeros(())

    jax.eval_shape(run, spec.to_free(params))
    return Probe(analytic_kl=found[0])


def _inspect(trace: Mapping[str, Any], loss: Any, spec: GuideSpec, params: Params) -> bool:
    """Check the guide's trace; whether ``loss`` would use the KL in closed form."""
    if not spec.is_auto:
        _check_user_trace(trace, spec.parametrisation, params)
    latent = trace.get(LATENT)
    if latent is None or latent["type"] != "sample":
        raise InvalidInputError(
            f"the guide must sample the model's latent site {LATENT!r}; its sample sites "
            f"are {[n for n, s in trace.items() if s['type'] == 'sample']}"
        )
    sampled = [n for n, s in trace.items() if _is_pinned_site(s)]
    if len(sampled) != 1:
        raise InvalidInputError(
            "the guide must draw one Gaussian sample (the latent z, or an autoguide's "
            f"auxiliary latent); it draws {sampled or 'none'}"
        )
    if not isinstance(loss, numpyro.infer.TraceMeanField_ELBO):
        return False
    if isinstance(latent["fn"], dist.Delta):
        return False  # NumPyro's "KL" from a Delta is -log p(z): the joint form
    prior = dist.MultivariateNormal(jnp.zeros(2), scale_tril=jnp.eye(2))
    try:
        kl_divergence(latent["fn"], prior)
    except NotImplementedError:
        return False
    return True


def _check_user_trace(trace: Mapping[str, Any], par: Parametrisation, params: Params) -> None:
    """The user's guide's ``numpyro.param`` sites are exactly ``par``'s keys, with
    ``par``'s shapes."""
    sites = {n: s for n, s in trace.items() if s["type"] == "param"}
    unknown = sorted(set(sites) - set(par.keys))
    missing = sorted(set(par.keys) - set(sites))
    if unknown or missing:
        raise InvalidInputError(
            f"the parametrisation's keys {par.keys} must be the guide's numpyro.param "
            f"names; the guide has params {sorted(sites)}"
            + (f"; not in the parametrisation: {unknown}" if unknown else "")
            + (f"; not in the guide: {missing}" if missing else "")
        )
    for key in par.keys:
        declared = np.shape(sites[key]["args"][0]) if sites[key]["args"] else None
        given = np.shape(params[key])
        if declared is not None and declared != given:
            raise InvalidInputError(
                f"the guide's param {key!r} has shape {declared} (its initial value) at "
                f"K=2, but the parametrisation {par!r} gives {key!r} the shape {given}"
            )


# ---------------------------------------------------------------------- compiled losses
class _Counter:
    """Traces of the compiled losses (each one a compilation), process-wide."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            self.count += 1


TRACES = _Counter()

#: XLA options of the compiled losses: these programs are tiny and each runs for well
#: under a millisecond, so compiling is the cost; without LLVM's optimisations it took
#: a third less CPU time (15.6 s against 23.1 s for 8 autoguide losses, D=3, K=2) and
#: the calls were as fast (0.5 to 1 ms, on a loaded 2-core machine).
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
_CACHE: OrderedDict[Hashable, tuple[Any, Callable[..., Any]]] = OrderedDict()
_CACHE_SIZE = 64


def loss_key(loss: Any) -> Hashable:
    """The loss's type and configuration (equal losses share their compilations)."""
    try:
        key: Hashable = (type(loss), tuple(sorted(vars(loss).items())))
        hash(key)
    except TypeError:
        key = (type(loss), "id", id(loss))
    return key


def compiled(loss: Any, spec: GuideSpec, kind: str) -> Callable[..., Any]:
    """The jitted ``elbo(free, arrays, x, seed[, eps])`` (``kind`` "value", "grad",
    "pathwise_value", "pathwise_grad"), one per (loss, guide, kind); JAX compiles it
    once per shape and dtype."""
    key = (loss_key(loss), spec.key, kind)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key][1]
    path = kind.startswith("pathwise")

    def elbo(free: Any, arrays: Any, x: Any, seed: Any, eps: Any = None) -> Any:
        TRACES.tick()  # runs only while JAX traces, i.e. once per compilation
        guide = spec.build(numpyro_model)
        if path:
            guide = pinned(guide, eps)
        value = loss.loss(
            jax.random.PRNGKey(seed), spec.constrain(free), numpyro_model, guide, x, *arrays
        )
        return -value

    function = jax.jit(
        jax.value_and_grad(elbo) if kind.endswith("grad") else elbo,
        compiler_options=COMPILER_OPTIONS,
    )
    _CACHE[key] = (loss, function)  # the loss is kept: its id stays unique
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return function


def parameters(spec: GuideSpec, q: Gaussian) -> dict[str, FloatArray]:
    """``q`` in the guide's parametrisation; an error naming the guide when ``q`` is not
    in its family."""
    try:
        return spec.parametrisation.from_gaussian(q)
    except InvalidInputError as err:
        raise InvalidInputError(
            f"q is not in the family of guide {spec.name!r} ({spec.parametrisation!r}): {err}"
        ) from err


# ---------------------------------------------------------------------- the calls
class Calls:
    """The functions the verifiers call: numpy in, the compiled loss, numpy out."""

    def __init__(self, loss: Any, spec: GuideSpec) -> None:
        self.loss, self.spec = loss, spec
        self._model: tuple[Any, Arrays] | None = None

    def arrays(self, model: LinearGaussianModel) -> Arrays:
        """The model's arrays (converted once per problem)."""
        if self._model is None or self._model[0] is not model:
            self._model = (model, model_arrays(model))
        return self._model[1]

    def free(self, params: Any) -> dict[str, FloatArray]:
        return self.spec.to_free(params)

    @staticmethod
    def seed(rng: np.random.Generator) -> np.uint32:
        return np.uint32(rng.integers(2**32))

    def estimate(
        self, model: LinearGaussianModel, q: Gaussian, x: FloatArray, rng: Any, n: int
    ) -> float:
        fn = compiled(self.loss, self.spec, "value")
        free = self.free(parameters(self.spec, q))
        return float(fn(free, self.arrays(model), np.asarray(x), self.seed(rng)))

    def pathwise_estimate(
        self, model: LinearGaussianModel, q: Gaussian, x: FloatArray, eps: FloatArray
    ) -> float:
        fn = compiled(self.loss, self.spec, "pathwise_value")
        free, arrays = self.free(parameters(self.spec, q)), self.arrays(model)
        seed = np.uint32(0)  # the sample is pinned; the key reaches nothing random
        values = [float(fn(free, arrays, np.asarray(x), seed, row)) for row in np.asarray(eps)]
        return float(np.mean(values))

    def gradient(
        self, model: LinearGaussianModel, params: Any, x: FloatArray, rng: Any, n: int
    ) -> dict[str, FloatArray]:
        fn = compiled(self.loss, self.spec, "grad")
        _, grads = fn(self.free(params), self.arrays(model), np.asarray(x), self.seed(rng))
        return self.spec.from_free(grads)

    def pathwise_gradient(
        self, model: LinearGaussianModel, params: Any, x: FloatArray, eps: FloatArray
    ) -> dict[str, FloatArray]:
        fn = compiled(self.loss, self.spec, "pathwise_grad")
        free, arrays = self.free(params), self.arrays(model)
        rows = [
            self.spec.from_free(fn(free, arrays, np.asarray(x), np.uint32(0), row)[1])
            for row in np.asarray(eps)
        ]
        return {k: np.mean([r[k] for r in rows], axis=0) for k in rows[0]}
