"""The verifiers for Pyro code: a ``pyro.infer`` ELBO and a guide in, a verdict out.

``verify_elbo_estimator`` and ``verify_elbo_gradient`` check a Pyro loss;
``verify_kl`` and ``verify_log_evidence`` check exact code on Pyro objects. There is no
``verify_elbo``: a Pyro loss's value is a Monte-Carlo estimate.

Pyro's losses are checked as they run in :class:`pyro.infer.SVI`: the estimate is
``-loss.loss(model_fn, guide_fn, x)`` and the gradient is what
``loss.loss_and_grads`` leaves in the guide's parameters' ``.grad``, for a Pyro model of
each of the verifier's linear-Gaussian problems (:func:`model_and_guide`) and a guide
whose distribution is the verifier's q:

- one of Pyro's autoguides by name (``"AutoNormal"``, ``"AutoDiagonalNormal"``,
  ``"AutoMultivariateNormal"``, ``"AutoLowRankMultivariateNormal"``), its parameters set
  so that its q is the verifier's, gradients taken in its own unconstrained parameters;
- or your guide, a callable ``guide(x)`` with ``pyro.param`` sites, and a
  :class:`~elbo_check.testing.Parametrisation` whose keys are its parameter names and
  whose values are the values your guide sees (the constrained ones).

Global state is left as it was. The checks run in a private parameter store, swapped
in for each call, yours put back afterwards as it was (the same dicts and tensors; not
``ParamStoreDict.scope()``, which drops the ``unconstrained`` attribute of your
parameter tensors). Pyro samples from torch's global generator, so each call runs in
:func:`torch.random.fork_rng` with the generator seeded from the verifier's generator
(reproducible from the verifier's ``seed``) and restored afterwards. Pyro's validation
setting is yours: it catches invalid guide parameters with a clear error, and a check
takes about half as long under ``with pyro.validation_enabled(False):``.

Pyro is an optional dependency, installed separately::

    pip install torch --index-url https://download.pytorch.org/whl/cpu
    pip install pyro-ppl

Examples
--------
>>> import pytest; pyro = pytest.importorskip("pyro")
>>> from elbo_check.contrib import pyro as ec_pyro
>>> report = ec_pyro.verify_elbo_estimator(pyro.infer.Trace_ELBO(), guide="AutoNormal",
...                                        n_problems=1, calls=80)
>>> report.check
'verify_elbo_estimator'
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
    VerificationReport,
)
from ..testing import verify_elbo_estimator as _verify_elbo_estimator
from ..testing import verify_elbo_gradient as _verify_elbo_gradient
from ..testing import verify_kl as _verify_kl
from ..testing import verify_log_evidence as _verify_log_evidence
from . import _pyro_handlers as _h
from ._pyro_handlers import ScopedGuide

try:
    import pyro
    import torch
    from pyro import poutine
except ImportError as err:  # pragma: no cover - _pyro_handlers raised already
    raise ImportError("elbo_check.contrib.pyro needs Pyro: pip install pyro-ppl") from err

__all__ = [
    "AUTOGUIDES",
    "ScopedGuide",
    "model_and_guide",
    "verify_elbo_estimator",
    "verify_elbo_gradient",
    "verify_kl",
    "verify_log_evidence",
]

#: The autoguides a guide may be named by.
AUTOGUIDES: tuple[str, ...] = tuple(_h.AUTOGUIDES)

#: The modes of the Monte-Carlo checks here ("exact" is meaningless for a sampled loss).
_MODES = ("statistical", "pathwise")

#: Parameter kinds whose entries are not all free, and the mask of the free ones.
_MASKS: dict[str, Callable[[Any], Any]] = {
    "lower": np.tril,
    "strict_lower": lambda g: np.tril(g, -1),
}


# ---------------------------------------------------------------------- guides
class _Spec:
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
            own = _autoguide_parametrisation(guide, self.rank)
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


def _autoguide_parametrisation(name: str, rank: int) -> Parametrisation:
    if name in ("AutoNormal", "AutoDiagonalNormal"):
        return DiagonalSoftplusScale()
    if name == "AutoMultivariateNormal":
        return FullUnitCholeskyScale(scale_transform="softplus")
    return ScaledLowRank(rank, scale_transform="softplus")


# ---------------------------------------------------------------------- building blocks
def model_and_guide(
    model: LinearGaussianModel,
    q: Gaussian,
    *,
    guide: Any = "AutoNormal",
    parametrisation: Parametrisation | None = None,
    rank: int | None = None,
) -> tuple[Callable[..., Any], ScopedGuide]:
    """A Pyro model function for ``model`` and a guide whose distribution is ``q``.

    Parameters
    ----------
    model : LinearGaussianModel
        ``z ~ N(mu0, S0)``, ``x | z ~ N(W z + b, Psi)``.
    q : Gaussian
        One Gaussian over the K latent dimensions, in the guide's family (diagonal for
        ``AutoNormal`` and ``AutoDiagonalNormal``).
    guide : str or callable
        One of :data:`AUTOGUIDES`, or your guide ``guide(x)`` (then ``parametrisation`` is
        required).
    parametrisation : Parametrisation, optional
        For your guide: keys its ``pyro.param`` names, values what it sees.
    rank : int, optional
        ``AutoLowRankMultivariateNormal``'s rank (default K: every q is a member).

    Returns
    -------
    model_fn : callable
        ``model_fn(x)``: site ``"z"`` (``MultivariateNormal`` prior, event dim K) and the
        observed site ``"x"``; ``x`` of shape ``(D,)``, or ``(N, D)`` under
        ``pyro.plate("data", N)`` (N observations sharing ``z``).
    guide_fn : ScopedGuide
        Calls the guide in its own parameter store (your store is untouched); its
        ``params`` are the tensors that define q (for an autoguide its unconstrained
        parameters, leaf tensors that ``loss_and_grads`` fills the ``.grad`` of).

    Examples
    --------
    >>> import pytest; pyro = pytest.importorskip("pyro")
    >>> from elbo_check.contrib.pyro import model_and_guide
    >>> import torch
    >>> from elbo_check import Gaussian, ppca
    >>> model = ppca(weights=[[1.0, 0.5]], mean=[0.0], noise_variance=0.5)
    >>> q = Gaussian.from_diagonal(mean=[0.1, -0.2], variances=[0.3, 0.6])
    >>> model_fn, guide_fn = model_and_guide(model, q, guide="AutoNormal")
    >>> loss = pyro.infer.Trace_ELBO(num_particles=20000, vectorize_particles=True,
    ...                              max_plate_nesting=1)
    >>> x = torch.tensor([0.7], dtype=torch.float64)
    >>> with torch.random.fork_rng():
    ...     _ = torch.manual_seed(0)
    ...     estimate = -loss.loss(model_fn, guide_fn, x)
    >>> bool(abs(estimate - model.elbo(q, [0.7])) < 0.02)
    True
    """
    if not isinstance(model, LinearGaussianModel):
        raise InvalidTypeError(
            f"model must be an elbo_check.LinearGaussianModel; got {type(model).__name__}"
        )
    if not isinstance(q, Gaussian) or q.batch_shape != () or q.dim != model.latent_dim:
        raise InvalidInputError(
            f"q must be one Gaussian of the model's latent dimension K={model.latent_dim}; "
            f"got {q!r:.80}"
        )
    spec = _Spec(guide, parametrisation, rank, model.latent_dim)
    built = spec.build(model, spec.params_of(q))
    return built.model, ScopedGuide(built, spec.parametrisation)


# ---------------------------------------------------------------------- shared checks
def _check_loss(loss: Any) -> None:
    if not isinstance(loss, pyro.infer.ELBO):
        raise InvalidTypeError(
            "loss must be a pyro.infer.ELBO instance (pyro.infer.Trace_ELBO(), "
            "TraceMeanField_ELBO(), TraceGraph_ELBO(), JitTrace_ELBO(), RenyiELBO(), ...); "
            f"got {type(loss).__name__} {loss!r:.60}"
        )


def _check_mode(options: dict[str, Any]) -> str:
    mode = options.setdefault("mode", "statistical")
    if mode not in _MODES:
        raise InvalidInputError(
            f"mode must be 'statistical' or 'pathwise' for a Pyro loss (its value is a "
            f"Monte-Carlo estimate: there is no exact mode); got mode={mode!r}"
        )
    return str(mode)


def _form(loss: Any, spec: _Spec) -> str:
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


def _max_latent_dim(options: Mapping[str, Any]) -> int:
    """The largest K of the problems (the default rank of a low-rank guide: all q fit)."""
    return int(options.get("max_latent_dim", 6))


def _checked_options(
    loss: Any, spec: _Spec, options: dict[str, Any], *, estimator: bool
) -> dict[str, Any]:
    """The verifier's options: form, n_samples, q_kinds and dimensions for the guide
    (the estimator's q must be in the guide's family; the gradient's is projected)."""
    mode = _check_mode(options)
    particles = int(getattr(loss, "num_particles", 1))
    if options.setdefault("n_samples", particles) != particles:
        raise InvalidInputError(
            f"n_samples is the loss's num_particles ({particles}); got "
            f"n_samples={options['n_samples']!r}"
        )
    options.setdefault("form", _form(loss, spec))
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


def _masked(par: Parametrisation, grads: dict[str, Any]) -> dict[str, Any]:
    """The gradient with entries that are not parameters zeroed (autograd fills them)."""
    kinds = dict(zip(par.keys, getattr(par, "_key_kinds", ()), strict=False))
    return {k: _MASKS[kinds[k]](g) if kinds.get(k) in _MASKS else g for k, g in grads.items()}


# ---------------------------------------------------------------------- estimator
def verify_elbo_estimator(
    loss: Any,
    *,
    guide: Any,
    parametrisation: Parametrisation | None = None,
    rank: int | None = None,
    **options: Any,
) -> VerificationReport:
    """:func:`elbo_check.testing.verify_elbo_estimator` for a Pyro loss: the estimate is
    ``-loss.loss(model_fn, guide_fn, x)``.

    ``mode="statistical"`` (default): each call runs with torch's global generator
    seeded from the verifier's generator (in :func:`torch.random.fork_rng`, restored
    after), ``n_samples`` is the loss's ``num_particles``.

    ``mode="pathwise"``: the verifier's noise ``eps`` (n, K) pins the guide's Gaussian
    sample to ``z_i = m + L eps_i`` (computed from the site's own distribution, so it
    stays differentiable), the loss is called once per row and the values averaged. A
    multi-sample bound (``RenyiELBO``, IWAE) collapses to the ELBO when its particles
    are equal, so this mode is for single-sample objectives.

    ``form`` is chosen from the loss (``"analytic_kl"`` for ``TraceMeanField_ELBO``
    when Pyro uses the KL of the guide's site ``"z"``, ``"joint"`` otherwise) and
    ``q_kinds`` from the guide (diagonal q for ``AutoNormal`` and
    ``AutoDiagonalNormal``). Your guide's ``pyro.param`` sites are substituted, so
    their initial values are not used: a guide written with ``pyro.param("loc",
    torch.zeros(2))`` is checked at every K (its initial shapes must be the
    parametrisation's at K=2).

    Parameters
    ----------
    loss : pyro.infer.ELBO
        ``Trace_ELBO()``, ``TraceMeanField_ELBO()``, ``TraceGraph_ELBO()``,
        ``JitTrace_ELBO()``, ``RenyiELBO()``, your subclass, ...
    guide : str or callable
        One of :data:`AUTOGUIDES`, or your ``guide(x)``.
    parametrisation : Parametrisation, optional
        Required with your guide (see :func:`model_and_guide`).
    rank : int, optional
        ``AutoLowRankMultivariateNormal``'s rank (``ScaledLowRank(rank, "softplus")``).
        Default: the largest K of the problems (``max_latent_dim``, 6), so that every q
        is a member; with a smaller rank the estimator is checked on isotropic q (the
        members of every rank) and the gradient at q's projection onto the family.
    **options
        Every other option of :func:`elbo_check.testing.verify_elbo_estimator`.

    Returns
    -------
    VerificationReport

    Examples
    --------
    >>> import pytest; pyro = pytest.importorskip("pyro")
    >>> from elbo_check.contrib.pyro import verify_elbo_estimator
    >>> from elbo_check.testing import FullCholesky
    >>> import pyro.distributions as dist
    >>> import torch
    >>> def my_guide(x):
    ...     loc = pyro.param("loc", torch.zeros(2, dtype=torch.float64))
    ...     scale_tril = pyro.param("scale_tril", torch.eye(2, dtype=torch.float64))
    ...     pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=scale_tril))
    >>> verify_elbo_estimator(pyro.infer.Trace_ELBO(), guide=my_guide,
    ...     parametrisation=FullCholesky(), mode="pathwise", max_examples=10).check
    "verify_elbo_estimator(mode='pathwise')"
    """
    __tracebackhide__ = True
    _check_loss(loss)
    spec = _Spec(guide, parametrisation, rank, _max_latent_dim(options))
    options = _checked_options(loss, spec, dict(options), estimator=True)
    problems = _h.Problems(spec, loss)

    def statistical(model: LinearGaussianModel, q: Gaussian, x: Any, rng: Any, n: int) -> float:
        built, fresh = problems.for_q(model, q)
        with _h.private_store(built.state), _h.seeded_torch(int(rng.integers(2**63))):
            return -float(fresh.loss(built.model, built.guide, _h.tensor(x)))

    def pathwise(model: LinearGaussianModel, q: Gaussian, x: Any, eps: Any) -> float:
        built, fresh = problems.for_q(model, q)
        pinned_model, pinned_guide = _h.pinned_pair(built)
        xs, rows = _h.tensor(x), _h.tensor(eps)
        with _h.private_store(built.state), _h.seeded_torch(0):
            total = sum(float(fresh.loss(pinned_model, pinned_guide, xs, r)) for r in rows)
        return -total / len(rows)

    fn = pathwise if options["mode"] == "pathwise" else statistical
    return _verify_elbo_estimator(fn, **options)


# ---------------------------------------------------------------------- gradient
def verify_elbo_gradient(
    loss: Any,
    *,
    guide: Any,
    parametrisation: Parametrisation | None = None,
    rank: int | None = None,
    **options: Any,
) -> VerificationReport:
    """:func:`elbo_check.testing.verify_elbo_gradient` for the gradient Pyro's SVI takes:
    ``loss.loss_and_grads(model_fn, guide_fn, x)``, then the ``.grad`` of the guide's
    parameters (negated: the loss is -ELBO).

    The parameters are the guide's real ones: for an autoguide its unconstrained
    tensors (``AutoNormal`` and ``AutoDiagonalNormal``: ``DiagonalSoftplusScale()``,
    ``loc`` and the softplus argument ``raw_scale`` of the scale;
    ``AutoMultivariateNormal``: ``FullUnitCholeskyScale("softplus")``;
    ``AutoLowRankMultivariateNormal``: ``ScaledLowRank(rank, "softplus")``); for your guide
    the values it sees, as leaf tensors substituted for its ``pyro.param`` sites, so
    the ``parametrisation`` you give is the one checked.

    Modes, noise, seeding, ``form`` and ``q_kinds`` as in
    :func:`verify_elbo_estimator` (``mode="statistical"`` by default; in
    ``mode="pathwise"`` the gradients of the per-row losses are averaged).

    Parameters
    ----------
    loss : pyro.infer.ELBO
        The loss SVI would use.
    guide : str or callable
        One of :data:`AUTOGUIDES`, or your ``guide(x)``.
    parametrisation : Parametrisation, optional
        Required with your guide.
    rank : int, optional
        ``AutoLowRankMultivariateNormal``'s rank (``ScaledLowRank(rank, "softplus")``).
        Default: the largest K of the problems (``max_latent_dim``, 6), so that every q
        is a member; with a smaller rank the estimator is checked on isotropic q (the
        members of every rank) and the gradient at q's projection onto the family.
    **options
        Every other option of :func:`elbo_check.testing.verify_elbo_gradient`.

    Returns
    -------
    VerificationReport

    Raises
    ------
    AssertionError
        When the gradient is wrong, with the verifier's diagnosis.
    InvalidTypeError, InvalidInputError
        For a loss that is not a ``pyro.infer.ELBO``, an unknown guide, a guide without
        parametrisation or with one that does not fit it, or ``mode="exact"``.

    Examples
    --------
    >>> import pytest; pyro = pytest.importorskip("pyro")
    >>> from elbo_check.contrib.pyro import verify_elbo_gradient
    >>> verify_elbo_gradient(pyro.infer.Trace_ELBO(), guide="AutoDiagonalNormal",
    ...                      mode="pathwise", max_examples=10).check
    "verify_elbo_gradient(parametrisation=DiagonalSoftplusScale(), mode='pathwise')"
    """
    __tracebackhide__ = True
    _check_loss(loss)
    spec = _Spec(guide, parametrisation, rank, _max_latent_dim(options))
    options = _checked_options(loss, spec, dict(options), estimator=False)
    par = spec.parametrisation
    problems = _h.Problems(spec, loss)

    def statistical(
        model: LinearGaussianModel, params: dict[str, Any], x: Any, rng: Any, n: int
    ) -> dict[str, Any]:
        built, fresh = problems.get(model, params)
        built.zero_grad()
        with _h.private_store(built.state), _h.seeded_torch(int(rng.integers(2**63))):
            fresh.loss_and_grads(built.model, built.guide, _h.tensor(x))
        return _masked(par, built.gradient(-1.0))

    def pathwise(
        model: LinearGaussianModel, params: dict[str, Any], x: Any, eps: Any
    ) -> dict[str, Any]:
        built, fresh = problems.get(model, params)
        pinned_model, pinned_guide = _h.pinned_pair(built)
        xs, rows = _h.tensor(x), _h.tensor(eps)
        built.zero_grad()
        with _h.private_store(built.state), _h.seeded_torch(0):
            for row in rows:
                fresh.loss_and_grads(pinned_model, pinned_guide, xs, row)
        return _masked(par, built.gradient(-1.0 / len(rows)))

    fn = pathwise if options["mode"] == "pathwise" else statistical
    return _verify_elbo_gradient(fn, parametrisation=par, **options)


# ---------------------------------------------------------------------- exact values
def _check_fn(fn: Any) -> None:
    if isinstance(fn, pyro.infer.ELBO):
        raise InvalidTypeError(
            "a pyro.infer.ELBO's value is a Monte-Carlo estimate, not the exact value this "
            "verifier checks; use verify_elbo_estimator(loss, guide=...) or "
            "verify_elbo_gradient(loss, guide=...)"
        )
    if not callable(fn):
        raise InvalidTypeError(f"fn must be callable; got {type(fn).__name__} {fn!r:.60}")


def _value(value: Any) -> Any:
    return value.detach().numpy() if isinstance(value, torch.Tensor) else value


def verify_log_evidence(fn: Callable[..., Any], **options: Any) -> VerificationReport:
    """:func:`elbo_check.testing.verify_log_evidence` for ``fn(model_fn, x)``, the log
    marginal likelihood of a Pyro model function (see :func:`model_and_guide`)."""
    __tracebackhide__ = True
    _check_fn(fn)

    def call(model: LinearGaussianModel, x: Any) -> Any:
        return _value(fn(_h.model_function(model), _h.tensor(x)))

    return _verify_log_evidence(call, **options)


def verify_kl(fn: Callable[..., Any], **options: Any) -> VerificationReport:
    """:func:`elbo_check.testing.verify_kl` for ``fn(p, q)`` on two
    ``pyro.distributions.MultivariateNormal`` (float64), e.g. Pyro's own registry.

    Examples
    --------
    >>> import pytest; pyro = pytest.importorskip("pyro")
    >>> verify_kl(torch.distributions.kl_divergence, max_examples=20).check
    'verify_kl'
    """
    __tracebackhide__ = True
    _check_fn(fn)

    def mvn(g: Gaussian) -> Any:
        return pyro.distributions.MultivariateNormal(
            _h.tensor(g.mean), scale_tril=_h.tensor(g.scale_tril)
        )

    def call(p: Gaussian, q: Gaussian) -> Any:
        return _value(fn(mvn(p), mvn(q)))

    return _verify_kl(call, **options)
