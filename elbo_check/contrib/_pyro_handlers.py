"""Building blocks of :mod:`elbo_check.contrib.pyro`: Pyro models and guides for a problem.

Private: the model function of a :class:`~elbo_check.LinearGaussianModel`, the four
autoguides set to a given q in their own (unconstrained) parameters, a user's guide with
its parameters substituted, private parameter stores, a seeded fork of torch's global
generator, and the messenger that pins a guide's Gaussian sample to given noise.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import InvalidInputError
from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ..testing import Parametrisation

try:
    import pyro
    import pyro.distributions as dist
    import torch
    from pyro import poutine
    from pyro.infer import autoguide
    from pyro.ops.jit import CompiledFunction
    from pyro.params.param_store import StateDict
    from pyro.poutine.messenger import Messenger
except ImportError as err:  # pragma: no cover - exercised without pyro
    raise ImportError(
        "elbo_check.contrib.pyro needs Pyro (and PyTorch), which is not installed; install "
        "them with: pip install torch --index-url https://download.pytorch.org/whl/cpu && "
        "pip install pyro-ppl"
    ) from err

Tensor = torch.Tensor
Params = dict[str, Any]
StoreState = StateDict

#: The autoguides, each with its Pyro parameters: (elbo_check key, attribute) pairs, the
#: attribute's unconstrained tensor being the parameter (``scale`` is held as softplus's
#: argument, ``scale_tril`` as a matrix whose strict lower triangle is used).
AUTOGUIDES: dict[str, tuple[tuple[str, str], ...]] = {
    "AutoNormal": (("loc", "locs.z"), ("raw_scale", "scales.z")),
    "AutoDiagonalNormal": (("loc", "loc"), ("raw_scale", "scale")),
    "AutoMultivariateNormal": (
        ("loc", "loc"),
        ("raw_scale", "scale"),
        ("unit_scale_tril", "scale_tril"),
    ),
    "AutoLowRankMultivariateNormal": (
        ("loc", "loc"),
        ("raw_scale", "scale"),
        ("cov_factor", "cov_factor"),
    ),
}


def tensor(value: Any) -> Tensor:
    """A float64 copy of ``value`` (numpy arrays may be read-only)."""
    return torch.tensor(np.array(value, dtype=np.float64), dtype=torch.float64)


# ---------------------------------------------------------------------- global state
@contextmanager
def seeded_torch(seed: int) -> Iterator[None]:
    """Torch's global CPU generator seeded with ``seed``, restored on exit (Pyro samples
    from it); CUDA generators are neither touched nor saved."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


@contextmanager
def private_store(state: StoreState) -> Iterator[None]:
    """Pyro's parameter store holding ``state`` only; on exit ``state`` holds what the
    store then holds, and the caller's store is put back as it was: the same dicts.

    Not ``ParamStoreDict.scope()``: its ``get_state`` deletes the ``unconstrained``
    attribute of the caller's parameter tensors (``pyro.param(name).unconstrained()``
    then fails until ``pyro.param`` is called again).
    """
    store = pyro.get_param_store()
    saved = (store._params, store._param_to_name, store._constraints)
    store.clear()  # new dicts: the caller's are not touched
    store.set_state(state)
    try:
        yield
    finally:
        state["params"], state["constraints"] = dict(store._params), dict(store._constraints)
        store._params, store._param_to_name, store._constraints = saved


def fresh_loss(loss: Any) -> Any:
    """A shallow copy of ``loss`` without compiled functions (a ``Jit*`` loss compiles on
    its first call and keys the result by the ids of model and guide, which a new
    problem's functions may reuse)."""
    copied = copy.copy(loss)
    for name, value in list(vars(copied).items()):
        if isinstance(value, CompiledFunction):
            delattr(copied, name)
    return copied


# ---------------------------------------------------------------------- the model
def model_function(model: LinearGaussianModel) -> Callable[..., Any]:
    """``model_fn(x)``: site ``"z"`` from the prior, site ``"x"`` observed (a batch of
    ``N`` observations ``(N, D)`` under ``pyro.plate("data", N)``, sharing ``z``)."""
    weights, bias = tensor(model.weights), tensor(model.bias)
    prior = dist.MultivariateNormal(
        tensor(model.prior.mean), scale_tril=tensor(model.prior.scale_tril), validate_args=False
    )
    noise_scale_tril = torch.linalg.cholesky(tensor(model.dense_noise_cov()))
    d = weights.shape[0]

    def model_fn(x: Tensor) -> Tensor:
        if torch.jit.is_tracing():  # type: ignore[attr-defined, no-untyped-call]  # Jit* losses
            pass
        elif not isinstance(x, Tensor) or x.dim() not in (1, 2) or x.shape[-1] != d:
            raise InvalidInputError(
                f"x must be a tensor of shape ({d},) or (N, {d}) for this model; got "
                + (f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__)
            )
        z = pyro.sample("z", prior)
        likelihood = dist.MultivariateNormal(
            z @ weights.mT + bias, scale_tril=noise_scale_tril, validate_args=False
        )
        if x.dim() == 1:
            pyro.sample("x", likelihood, obs=x)
        else:
            with pyro.plate("data", x.shape[0]):
                pyro.sample("x", likelihood, obs=x)
        return z

    return model_fn


# ---------------------------------------------------------------------- guides
@dataclass
class Built:
    """One problem's model and guide: ``guide`` runs only in ``private_store(state)``;
    ``leaves`` are the tensors the gradient is read from, by elbo_check key."""

    model: Callable[..., Any]
    guide: Callable[..., Any]
    state: StoreState
    leaves: dict[str, Tensor]

    def zero_grad(self) -> None:
        for leaf in self.leaves.values():
            leaf.grad = None

    def gradient(self, scale: float) -> dict[str, Any]:
        """``scale`` times the gradient accumulated in the leaves, as numpy arrays."""
        return {
            key: (np.zeros(leaf.shape) if leaf.grad is None else scale * leaf.grad.numpy())
            for key, leaf in self.leaves.items()
        }


def build_autoguide(
    name: str, model: LinearGaussianModel, params: Mapping[str, Any], rank: int
) -> Built:
    """Pyro's autoguide ``name`` on the model, its unconstrained parameters set to
    ``params`` (the keys of its parametrisation, see :data:`AUTOGUIDES`)."""
    model_fn = model_function(model)
    state: StoreState = {"params": {}, "constraints": {}}
    options = {"rank": rank} if name == "AutoLowRankMultivariateNormal" else {}
    with seeded_torch(0), private_store(state):  # initialisation samples from the prior
        guide = getattr(autoguide, name)(model_fn, **options)
        with poutine.block():
            guide(torch.zeros(model.data_dim, dtype=torch.float64))
        store = pyro.get_param_store()
        leaves = {}
        for key, attribute in AUTOGUIDES[name]:
            leaf = store._params[f"{name}.{attribute}"]
            value = tensor(params[key])
            if leaf.shape != value.shape:
                raise InvalidInputError(
                    f"{name}'s parameter {attribute!r} has shape {tuple(leaf.shape)}; the "
                    f"parametrisation gives {key!r} of shape {tuple(value.shape)}"
                )
            with torch.no_grad():
                leaf.copy_(value)
            leaves[key] = leaf
    return Built(model_fn, guide, state, leaves)


def build_user_guide(
    guide: Callable[..., Any], model: LinearGaussianModel, params: Mapping[str, Any]
) -> Built:
    """The user's guide with its ``pyro.param`` sites replaced by leaf tensors of
    ``params`` (the constrained values the guide sees)."""
    leaves = {key: tensor(value).requires_grad_() for key, value in params.items()}
    state: StoreState = {"params": {}, "constraints": {}}
    return Built(model_function(model), poutine.substitute(guide, data=leaves), state, leaves)


class ScopedGuide:
    """A guide that runs in its own parameter store (the caller's is untouched).

    :func:`~elbo_check.contrib.pyro.model_and_guide` returns one, set to its ``q``: call
    it as the guide itself (``guide_fn(x)``, or pass it to a loss or to SVI). Each call
    swaps Pyro's global parameter store for the guide's own and puts yours back
    afterwards, as it was.

    Parameters
    ----------
    built : object
        The problem's model, guide, parameter store and parameter tensors, as
        :func:`~elbo_check.contrib.pyro.model_and_guide` builds them (private; not
        meant to be built by hand).
    parametrisation : Parametrisation
        How the parameter tensors define q.

    Attributes
    ----------
    params : dict of str to torch.Tensor
        The tensors that define q, by the keys of :attr:`parametrisation` (for an
        autoguide its unconstrained parameters, leaf tensors whose ``.grad`` a loss's
        ``loss_and_grads`` fills; for your guide the values it sees).
    parametrisation : Parametrisation
        How :attr:`params` define q.

    Raises
    ------
    AttributeError
        If ``built`` is not what :func:`~elbo_check.contrib.pyro.model_and_guide`
        builds (it has no parameter tensors); nothing else is checked.

    Examples
    --------
    An ``AutoNormal`` guide holds q's scales as softplus arguments:

    >>> import pytest; pyro = pytest.importorskip("pyro")
    >>> import torch
    >>> from elbo_check import Gaussian, ppca
    >>> from elbo_check.contrib.pyro import model_and_guide
    >>> model = ppca(weights=[[1.0, 0.5]], mean=[0.0], noise_variance=0.5)
    >>> q = Gaussian.from_diagonal(mean=[0.1, -0.2], variances=[0.3, 0.6])
    >>> model_fn, guide_fn = model_and_guide(model, q, guide="AutoNormal")
    >>> guide_fn.parametrisation, sorted(guide_fn.params)
    (DiagonalSoftplusScale(), ['loc', 'raw_scale'])
    >>> scale = torch.nn.functional.softplus(guide_fn.params["raw_scale"])
    >>> [round(v, 6) for v in (scale**2).tolist()]
    [0.3, 0.6]
    >>> before = set(pyro.get_param_store().keys())
    >>> with torch.random.fork_rng():
    ...     trace = pyro.poutine.trace(guide_fn).get_trace(torch.tensor([0.7], dtype=torch.float64))
    >>> trace.nodes["z"]["value"].shape, set(pyro.get_param_store().keys()) == before
    (torch.Size([2]), True)
    """

    def __init__(self, built: Built, parametrisation: Any) -> None:
        self._built = built
        self.params = built.leaves
        self.parametrisation = parametrisation

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with private_store(self._built.state):
            return self._built.guide(*args, **kwargs)

    def __repr__(self) -> str:
        return f"ScopedGuide({self._built.guide!r}, parametrisation={self.parametrisation!r})"


def guide_param_sites(guide: Callable[..., Any], d: int) -> dict[str, tuple[int, ...] | None]:
    """The ``pyro.param`` names the guide uses, each with the shape of its initial value
    (None when not given), from one call on ``x = zeros(d)`` in a private store."""
    sites: dict[str, tuple[int, ...] | None] = {}

    class Record(Messenger):
        def _pyro_param(self, msg: Any) -> None:
            init = msg["args"][1] if len(msg["args"]) > 1 else msg["kwargs"].get("init_tensor")
            if callable(init) and not isinstance(init, Tensor):
                init = init()
            sites[msg["name"]] = tuple(init.shape) if isinstance(init, Tensor) else None

    state: StoreState = {"params": {}, "constraints": {}}
    with seeded_torch(0), private_store(state), poutine.block(), Record():
        guide(torch.zeros(d, dtype=torch.float64))
    return sites


# ---------------------------------------------------------------------- checks' plumbing
def check_user_guide(guide: Callable[..., Any], par: Parametrisation) -> int | None:
    """The guide's ``pyro.param`` names must be ``par``'s keys, and any initial values
    it gives must have ``par``'s shapes for one K; returns that K (None: any K)."""
    try:
        sites = guide_param_sites(guide, 1)
    except Exception:  # it may need a real x: then it is judged on the problems
        return None
    if set(sites) != set(par.keys):
        raise InvalidInputError(
            f"the parametrisation's keys {par.keys} must be the guide's pyro.param names; "
            f"the guide uses {tuple(sites)}"
            + (f" (missing {[k for k in par.keys if k not in sites]})" if sites else "")
        )
    loc = sites.get("loc")
    if loc is None or len(loc) != 1:
        return None
    k = loc[0]
    expected = par.from_gaussian(Gaussian.from_diagonal(mean=np.zeros(k), variances=np.ones(k)))
    for key, shape in sites.items():
        if shape is not None and tuple(expected[key].shape) != shape:
            raise InvalidInputError(
                f"the guide initialises pyro.param({key!r}) with shape {shape}, but "
                f"{par!r} gives {key!r} the shape {tuple(expected[key].shape)} for q of "
                f"dimension K={k} (the dimension of its 'loc')"
            )
    return k


class Problems:
    """One problem's model and guide at a time, built once and reused across calls (the
    statistical checks call the loss hundreds of times on each problem)."""

    def __init__(self, spec: Any, loss: Any) -> None:
        self.spec, self.loss = spec, loss
        self._key: Any = None
        self._entry: tuple[Any, Built, Any] | None = None

    def get(self, model: LinearGaussianModel, params: Mapping[str, Any]) -> tuple[Built, Any]:
        """For the parameters of q (the gradient check passes fresh copies each call)."""
        arrays = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
        key = (id(model), tuple((k, v.shape, v.tobytes()) for k, v in arrays.items()))
        return self._cached(key, model, lambda: arrays)

    def for_q(self, model: LinearGaussianModel, q: Gaussian) -> tuple[Built, Any]:
        """For q itself (immutable: the estimator passes the same object each call)."""
        return self._cached((id(model), id(q)), (model, q), lambda: self.spec.params_of(q))

    def _cached(
        self, key: Any, held: Any, params: Callable[[], Mapping[str, Any]]
    ) -> tuple[Built, Any]:
        if self._entry is None or key != self._key:
            model = held[0] if isinstance(held, tuple) else held
            built = self.spec.build(model, params())
            # what the key's ids refer to is held, so no id is reused while it lives
            self._key, self._entry = key, (held, built, fresh_loss(self.loss))
        return self._entry[1], self._entry[2]


# ---------------------------------------------------------------------- pinned noise
def gaussian_parts(fn: Any) -> tuple[Tensor, Tensor] | None:
    """``(mean, scale_tril)`` of a Gaussian guide distribution with one event dimension
    (``Normal(...).to_event(1)``, ``MultivariateNormal``, ``LowRankMultivariateNormal``)."""
    if isinstance(fn, torch.distributions.Independent):
        base = fn.base_dist
        if isinstance(base, torch.distributions.Normal) and fn.reinterpreted_batch_ndims == 1:
            return base.loc, torch.diag_embed(base.scale)
        return None
    if isinstance(fn, torch.distributions.MultivariateNormal):
        return fn.loc, fn.scale_tril
    if isinstance(fn, torch.distributions.LowRankMultivariateNormal):
        return fn.loc, torch.linalg.cholesky(fn.covariance_matrix)
    return None


class Pinned(Messenger):
    """Replaces the sample of each Gaussian site (:func:`gaussian_parts`) by
    ``mean + scale_tril @ eps``, differentiable in the site's parameters."""

    def __init__(self, eps: Tensor) -> None:
        super().__init__()
        self.eps = eps
        self.sites: list[str] = []

    def _pyro_sample(self, msg: Any) -> None:
        if msg["is_observed"] or msg["value"] is not None:
            return
        parts = gaussian_parts(msg["fn"])
        if parts is None:
            return
        mean, scale_tril = parts
        value = mean + (scale_tril @ self.eps.unsqueeze(-1)).squeeze(-1)
        msg["value"] = value.expand(msg["fn"].batch_shape + msg["fn"].event_shape)
        self.sites.append(msg["name"])


def pinned_pair(built: Built) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """``model(x, eps)`` and ``guide(x, eps)``: the noise passed as an argument (so a
    ``Jit*`` loss traces it as an input), the guide's Gaussian sample pinned to it."""

    def model(x: Tensor, eps: Tensor) -> Any:
        return built.model(x)

    def guide(x: Tensor, eps: Tensor) -> Any:
        with Pinned(eps) as pin:
            result = built.guide(x)
        if len(pin.sites) != 1:
            raise InvalidInputError(
                "mode='pathwise' pins the guide's one Gaussian sample site (Normal(...)"
                ".to_event(1), MultivariateNormal or LowRankMultivariateNormal over the K "
                f"latent dimensions); this guide has {len(pin.sites)}: {pin.sites}"
            )
        return result

    return model, guide
