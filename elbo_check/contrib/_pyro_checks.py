"""The setup of :mod:`elbo_check.contrib.pyro`'s checks: the guide, the loss, the options.

Private; :mod:`elbo_check.contrib.pyro` documents the behaviour. A :class:`Spec` is a
guide as the checks build it (an autoguide's name, or the user's guide and its
parametrisation, both checked); the other functions check the loss and the verifier's
options, and find the ELBO form the loss computes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .._errors import InvalidInputError, InvalidTypeError
from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ..testing import (
    DiagonalSoftplusScale,
    FullUnitCholeskyScale,
    Parametrisation,
    ScaledLowRank,
)
from . import _pyro_handlers as _h

try:
    import pyro
    import torch
    from pyro import poutine
except ImportError as err:  # pragma: no cover - _pyro_handlers raised already
    raise ImportError("elbo_check.contrib.pyro needs Pyro: pip install pyro-ppl") from err

#: The autoguides a guide may be named by.
AUTOGUIDES: tuple[str, ...] = tuple(_h.AUTOGUIDES)

#: The modes of the Monte-Carlo checks here ("exact" is meaningless for a sampled loss).
MODES = ("statistical", "pathwise")

#: Parameter kinds whose entries are not all free, and the mask of the free ones.
_MASKS: dict[str, Callable[[Any], Any]] = {
    "lower": np.tril,
    "strict_lower": lambda g: np.tril(g, -1),
}


# ---------------------------------------------------------------------- guides
class Spec:
    """A guide as the checks build it: an autoguide's name or the user's callable, and
    the parametrisation its parameters follow."""

    def __init__(
        self, guide: Any, parametrisation: Any, rank: int | None, default_rank: int
    ) -> None:
        if parametrisation is not None and not isinstance(parametrisation, Parametrisation):
            raise InvalidTypeError(
                "parametrisation must be None or an elbo_check.testing.Parametrisation "
                f"(FullCholesky(), DiagonalSoftplusScale(), ...); got "
                f"{type(parametrisation).__name__}"
            )
        if rank is not None and guide != "AutoLowRankMultivariateNormal":
            raise InvalidInputError(
                f"rank= is an option of 'AutoLowRankMultivariateNormal' only; got rank={rank!r} "
                f"with guide={guide!r}"
            )
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise InvalidInputError(f"rank must be a positive integer; got rank={rank!r}")
        self.rank = default_rank if rank is None else rank
        #: the q kinds whose every member the guide holds (the estimator's q must be one)
        self.member_kinds: tuple[str, ...] = ()
        if isinstance(guide, str):
            if guide not in AUTOGUIDES:
                raise InvalidInputError(
                    f"guide must be one of {', '.join(map(repr, AUTOGUIDES))} or your guide "
                    f"(a callable); got guide={guide!r}"
                )
            own = autoguide_parametrisation(guide, self.rank)
            if parametrisation is not None and repr(parametrisation) != repr(own):
                raise InvalidInputError(
                    f"{guide} holds its q as {own!r}; leave parametrisation out (got "
                    f"{parametrisation!r})"
                )
            self.name: str | None = guide
            self.guide: Callable[..., Any] | None = None
            self.parametrisation: Parametrisation = own
            self.probe_dim: int | None = None
            self.member_kinds = own.cov_kinds if self.rank >= default_rank else ("isotropic",)
            return
        if not callable(guide):
            raise InvalidTypeError(
                f"guide must be one of {', '.join(map(repr, AUTOGUIDES))} or a callable "
                f"guide(x); got {type(guide).__name__} {guide!r:.60}"
            )
        if parametrisation is None:
            raise InvalidInputError(
                f"a guide callable needs parametrisation=: an elbo_check.testing."
                "Parametrisation whose keys are the guide's pyro.param names (e.g. "
                "FullCholesky() for pyro.param('loc') and pyro.param('scale_tril')); got "
                f"guide={getattr(guide, '__name__', guide)!r} without one"
            )
        self.name, self.guide, self.parametrisation = None, guide, parametrisation
        self.member_kinds = parametrisation.cov_kinds
        self.probe_dim = _h.check_user_guide(guide, parametrisation)

    def build(self, model: LinearGaussianModel, params: Mapping[str, Any]) -> _h.Built:
        if self.name is not None:
            return _h.build_autoguide(self.name, model, params, self.rank)
        assert self.guide is not None
        return _h.build_user_guide(self.guide, model, params)

    def params_of(self, q: Gaussian) -> dict[str, Any]:
        try:
            return self.parametrisation.from_gaussian(q)
        except InvalidInputError as err:
            raise InvalidInputError(
                f"q is not in the family of {self.parametrisation!r} (the guide's): {err}"
            ) from err


def autoguide_parametrisation(name: str, rank: int) -> Parametrisation:
    if name in ("AutoNormal", "AutoDiagonalNormal"):
        return DiagonalSoftplusScale()
    if name == "AutoMultivariateNormal":
        return FullUnitCholeskyScale(scale_transform="softplus")
    return ScaledLowRank(rank, scale_transform="softplus")


# ---------------------------------------------------------------------- shared checks
def check_loss(loss: Any) -> None:
    if not isinstance(loss, pyro.infer.ELBO):
        raise InvalidTypeError(
            "loss must be a pyro.infer.ELBO instance (pyro.infer.Trace_ELBO(), "
            "TraceMeanField_ELBO(), TraceGraph_ELBO(), JitTrace_ELBO(), RenyiELBO(), ...); "
            f"got {type(loss).__name__} {loss!r:.60}"
        )


def check_mode(options: dict[str, Any]) -> str:
    mode = options.setdefault("mode", "statistical")
    if mode not in MODES:
        raise InvalidInputError(
            f"mode must be 'statistical' or 'pathwise' for a Pyro loss (its value is a "
            f"Monte-Carlo estimate: there is no exact mode); got mode={mode!r}"
        )
    return str(mode)


def form(loss: Any, spec: Spec) -> str:
    """``"analytic_kl"`` when ``loss`` is a TraceMeanField_ELBO and Pyro has the KL of
    the guide's site ``"z"`` against the prior (an autoguide's ``"z"`` is a Delta: its
    "KL" is ``-log p(z)``, the joint form); ``"joint"`` otherwise. Found by running the
    guide once on a small problem, which also warms up Pyro (the first guide built in a
    process takes about a second)."""
    k = spec.probe_dim or 2
    model = LinearGaussianModel(
        weights=np.ones((1, k)), bias=np.zeros(1), prior=Gaussian.standard(k), noise_cov=[1.0]
    )
    built = spec.build(model, spec.params_of(Gaussian.standard(k)))
    x = torch.zeros(1, dtype=torch.float64)
    with _h.seeded_torch(0), _h.private_store(built.state), poutine.block():
        guide_trace = poutine.trace(built.guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(built.model, guide_trace)).get_trace(x)
    if "z" not in guide_trace.nodes:
        raise InvalidInputError(
            "the guide must sample the model's latent site 'z' (pyro.sample('z', ...)); "
            f"it samples {[n for n, s in guide_trace.nodes.items() if s['type'] == 'sample']}"
        )
    if not isinstance(loss, pyro.infer.TraceMeanField_ELBO):
        return "joint"
    q_site: Any = guide_trace.nodes["z"]["fn"]
    p_site: Any = model_trace.nodes["z"]["fn"]
    if isinstance(q_site, pyro.distributions.Delta):
        return "joint"
    try:
        torch.distributions.kl_divergence(q_site, p_site)
    except NotImplementedError:
        return "joint"
    return "analytic_kl"


def max_latent_dim(options: Mapping[str, Any]) -> int:
    """The largest K of the problems (the default rank of a low-rank guide: all q fit)."""
    return int(options.get("max_latent_dim", 6))


def checked_options(
    loss: Any, spec: Spec, options: dict[str, Any], *, estimator: bool
) -> dict[str, Any]:
    """The verifier's options: form, n_samples, q_kinds and dimensions for the guide
    (the estimator's q must be in the guide's family; the gradient's is projected)."""
    mode = check_mode(options)
    particles = int(getattr(loss, "num_particles", 1))
    if options.setdefault("n_samples", particles) != particles:
        raise InvalidInputError(
            f"n_samples is the loss's num_particles ({particles}); got "
            f"n_samples={options['n_samples']!r}"
        )
    options.setdefault("form", form(loss, spec))
    return guide_kinds(spec, options, mode, estimator=estimator)


def guide_kinds(
    spec: Spec, options: dict[str, Any], mode: str, *, estimator: bool
) -> dict[str, Any]:
    """``options`` with ``q_kinds`` checked against the guide's family, or set to it
    where the verifier's default (``("full",)`` in statistical mode) is not in it."""
    kinds = spec.member_kinds if estimator else spec.parametrisation.cov_kinds
    if options.get("q_kinds") is not None:
        unsupported = [k for k in options["q_kinds"] if k not in kinds]
        if unsupported:
            raise InvalidInputError(
                f"the guide holds q as {spec.parametrisation!r}, which does not hold every q "
                f"of kinds {unsupported}; q_kinds must be among {kinds}"
            )
    elif mode == "pathwise" or "full" not in kinds:
        options["q_kinds"] = kinds
    return options


def masked(par: Parametrisation, grads: dict[str, Any]) -> dict[str, Any]:
    """The gradient with entries that are not parameters zeroed (autograd fills them)."""
    kinds = dict(zip(par.keys, getattr(par, "_key_kinds", ()), strict=False))
    return {k: _MASKS[kinds[k]](g) if kinds.get(k) in _MASKS else g for k, g in grads.items()}
