"""The verifiers for Pyro code: a ``pyro.infer`` ELBO and a guide in, a verdict out.

``verify_elbo_estimator`` and ``verify_elbo_gradient`` check a Pyro loss;
``verify_renyi_estimator`` and ``verify_renyi_gradient`` check a ``RenyiELBO`` (the
Rényi bounds, IWAE at ``alpha = 0``) against the exact distribution of its
``num_particles``-sample estimate; ``verify_kl`` and ``verify_log_evidence`` check exact
code on Pyro objects. There is no ``verify_elbo``: a Pyro loss's value is a Monte-Carlo
estimate.

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

from collections.abc import Callable
from typing import Any

from .._errors import InvalidInputError, InvalidTypeError
from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ..testing import (
    Parametrisation,
    VerificationReport,
)
from ..testing import verify_elbo_estimator as _verify_elbo_estimator
from ..testing import verify_elbo_gradient as _verify_elbo_gradient
from ..testing import verify_kl as _verify_kl
from ..testing import verify_log_evidence as _verify_log_evidence
from . import _pyro_checks as _k
from . import _pyro_handlers as _h
from ._pyro_handlers import ScopedGuide
from ._pyro_renyi import verify_renyi_estimator, verify_renyi_gradient

try:
    import pyro
    import torch
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
    "verify_renyi_estimator",
    "verify_renyi_gradient",
]

#: The autoguides a guide may be named by.
AUTOGUIDES: tuple[str, ...] = _k.AUTOGUIDES


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
    guide : str or callable, optional
        One of :data:`AUTOGUIDES` (default ``"AutoNormal"``), or your guide
        ``guide(x)`` (then ``parametrisation`` is required).
    parametrisation : Parametrisation, optional
        For your guide: its keys are the guide's ``pyro.param`` names, its values what
        the guide sees (constrained values). Left out for an autoguide, which has its
        own (see :func:`verify_elbo_gradient`).
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

    Raises
    ------
    InvalidTypeError
        If ``model`` is not a :class:`~elbo_check.LinearGaussianModel`, ``guide`` is
        neither a name nor a callable, or ``parametrisation`` is not a
        :class:`~elbo_check.testing.Parametrisation`.
    InvalidInputError
        If ``q`` is not one Gaussian of dimension K (a batch, another dimension, or not
        a Gaussian at all) or is not in the guide's family (a full covariance for
        ``AutoNormal``); for an unknown autoguide name, a parametrisation given with
        an autoguide (other than its own), ``rank`` given with another guide or < 1,
        or your guide without a parametrisation or with ``pyro.param`` names that are
        not its keys.

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
    spec = _k.Spec(guide, parametrisation, rank, model.latent_dim)
    built = spec.build(model, spec.params_of(q))
    return built.model, ScopedGuide(built, spec.parametrisation)


# ---------------------------------------------------------------------- estimator
def verify_elbo_estimator(
    loss: Any,
    *,
    guide: Any,
    parametrisation: Parametrisation | None = None,
    rank: int | None = None,
    **options: Any,
) -> VerificationReport:
    """:func:`elbo_check.testing.verify_elbo_estimator` for a Pyro loss and guide.

    The estimate is ``-loss.loss(model_fn, guide_fn, x)`` for the model of each
    problem and the guide set to its q (:func:`model_and_guide`).

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
        One of :data:`AUTOGUIDES`, or your ``guide(x)`` with ``pyro.param`` sites and
        one Gaussian sample site ``"z"`` over the K latent dimensions.
    parametrisation : Parametrisation, optional
        Required with your guide (its ``pyro.param`` names and the values the guide
        sees, see :func:`model_and_guide`); left out with an autoguide.
    rank : int, optional
        ``AutoLowRankMultivariateNormal``'s rank (``ScaledLowRank(rank, "softplus")``).
        Default: the largest K of the problems (``max_latent_dim``, 6), so that every q
        is a member; with a smaller rank the estimator is checked on isotropic q (the
        members of every rank) and the gradient at q's projection onto the family.
    **options
        The keyword options of :func:`elbo_check.testing.verify_elbo_estimator` (see
        there): ``mode``, ``calls``, ``n_problems``, ``false_alarm_rate``,
        ``max_examples``, ``q_kinds``, ``form`` (to override the one found),
        ``batch_size``, ``problems``, ``seed``, ``profile``, ``rtol``, ``atol``,
        ``time_budget`` and the model options; ``n_samples``, if given, must be the
        loss's ``num_particles``.

    Returns
    -------
    report : VerificationReport
        The verifier's report, returned when the check passes (``report.check``,
        ``report.cases``, ``report.worst_error`` at most 1; ``report.details["form"]``
        the form checked).

    Raises
    ------
    AssertionError
        If the estimate is biased (statistical mode, at the stated false-alarm rate) or
        wrong at the pinned noise (pathwise mode), with the verifier's diagnosis; also
        when the loss or the guide raises while the check runs (e.g. a guide with more
        than one Gaussian sample site in pathwise mode).
    InvalidTypeError
        If ``loss`` is not a ``pyro.infer.ELBO``, ``guide`` is neither a name nor a
        callable, or ``parametrisation`` is not a
        :class:`~elbo_check.testing.Parametrisation`.
    InvalidInputError
        For an unknown autoguide name; a parametrisation given with an autoguide
        (other than its own); ``rank`` given with another guide, or not an integer
        >= 1; your guide without a parametrisation, with ``pyro.param`` names (or
        initial shapes) that are not the parametrisation's, or without a sample site
        ``"z"``; a ``mode`` other than ``"statistical"`` and ``"pathwise"`` (no
        ``"exact"`` mode for a Monte-Carlo loss); ``n_samples`` other than the loss's
        ``num_particles``; or ``q_kinds`` the guide cannot hold.
    InvalidTypeError, InvalidInputError, TypeError
        For another option :func:`elbo_check.testing.verify_elbo_estimator` refuses.

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
    _k.check_loss(loss)
    spec = _k.Spec(guide, parametrisation, rank, _k.max_latent_dim(options))
    options = _k.checked_options(loss, spec, dict(options), estimator=True)
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
    """:func:`elbo_check.testing.verify_elbo_gradient` for the gradient Pyro's SVI takes.

    That is ``loss.loss_and_grads(model_fn, guide_fn, x)``, then the ``.grad`` of the
    guide's parameters (negated: the loss is -ELBO).

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
        One of :data:`AUTOGUIDES`, or your ``guide(x)`` (as in
        :func:`verify_elbo_estimator`).
    parametrisation : Parametrisation, optional
        Required with your guide: the gradient is checked in its parameters.
    rank : int, optional
        ``AutoLowRankMultivariateNormal``'s rank (``ScaledLowRank(rank, "softplus")``).
        Default: the largest K of the problems (``max_latent_dim``, 6), so that every q
        is a member; with a smaller rank the estimator is checked on isotropic q (the
        members of every rank) and the gradient at q's projection onto the family.
    **options
        The keyword options of :func:`elbo_check.testing.verify_elbo_gradient` (see
        there): ``mode``, ``calls``, ``n_problems``, ``false_alarm_rate``,
        ``max_examples``, ``q_kinds``, ``form``, ``batch_size``, ``problems``,
        ``seed``, ``profile``, ``rtol``, ``atol``, ``time_budget`` and the model
        options; ``n_samples``, if given, must be the loss's ``num_particles``.

    Returns
    -------
    report : VerificationReport
        The verifier's report, returned when the check passes (``report.check``
        names the parametrisation checked, ``report.cases``, ``report.worst_error`` at
        most 1).

    Raises
    ------
    AssertionError
        When the gradient is wrong, with the verifier's diagnosis; also when the loss
        or the guide raises while the check runs.
    InvalidTypeError
        If ``loss`` is not a ``pyro.infer.ELBO``, ``guide`` is neither a name nor a
        callable, or ``parametrisation`` is not a
        :class:`~elbo_check.testing.Parametrisation`.
    InvalidInputError
        For an unknown autoguide name; a parametrisation given with an autoguide
        (other than its own); ``rank`` given with another guide, or not an integer
        >= 1; your guide without a parametrisation, with ``pyro.param`` names (or
        initial shapes) that are not the parametrisation's, or without a sample site
        ``"z"``; a ``mode`` other than ``"statistical"`` and ``"pathwise"`` (no
        ``"exact"`` mode for a Monte-Carlo loss); ``n_samples`` other than the loss's
        ``num_particles``; or ``q_kinds`` the guide cannot hold.
    InvalidTypeError, InvalidInputError, TypeError
        For another option :func:`elbo_check.testing.verify_elbo_gradient` refuses.

    Examples
    --------
    >>> import pytest; pyro = pytest.importorskip("pyro")
    >>> from elbo_check.contrib.pyro import verify_elbo_gradient
    >>> verify_elbo_gradient(pyro.infer.Trace_ELBO(), guide="AutoDiagonalNormal",
    ...                      mode="pathwise", max_examples=10).check
    "verify_elbo_gradient(parametrisation=DiagonalSoftplusScale(), mode='pathwise')"
    """
    __tracebackhide__ = True
    _k.check_loss(loss)
    spec = _k.Spec(guide, parametrisation, rank, _k.max_latent_dim(options))
    options = _k.checked_options(loss, spec, dict(options), estimator=False)
    par = spec.parametrisation
    problems = _h.Problems(spec, loss)

    def statistical(
        model: LinearGaussianModel, params: dict[str, Any], x: Any, rng: Any, n: int
    ) -> dict[str, Any]:
        built, fresh = problems.get(model, params)
        built.zero_grad()
        with _h.private_store(built.state), _h.seeded_torch(int(rng.integers(2**63))):
            fresh.loss_and_grads(built.model, built.guide, _h.tensor(x))
        return _k.masked(par, built.gradient(-1.0))

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
        return _k.masked(par, built.gradient(-1.0 / len(rows)))

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
    """:func:`elbo_check.testing.verify_log_evidence` for ``fn(model_fn, x)``.

    ``fn`` computes the log marginal likelihood ``log p(x)`` of a Pyro model function:
    ``model_fn(x)`` samples ``"z"`` from its ``MultivariateNormal`` prior and observes
    ``"x"`` from ``MultivariateNormal(W z + b, Psi)`` (as in :func:`model_and_guide`);
    ``x`` is a float64 tensor of shape ``(D,)`` (with ``batch_size=B``, ``(B, D)``, and
    ``fn`` returns the ``B`` values ``log p(x_b)``). A returned tensor is read with
    ``.detach().numpy()``.

    Parameters
    ----------
    fn : callable
        The exact log-evidence code under test, ``fn(model_fn, x)``, returning
        ``log p(x)`` in nats (a scalar tensor or a float).
    **options
        The keyword options of :func:`elbo_check.testing.verify_log_evidence` (see
        there): ``seed``, ``max_examples``, ``profile``, ``rtol``, ``atol``,
        ``batch_size``, ``problems``, ``time_budget``, ``dtype`` and the model
        options.

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
        If ``fn`` is a ``pyro.infer.ELBO`` (a Monte-Carlo estimate: check it with
        :func:`verify_elbo_estimator`) or not callable.
    InvalidTypeError, InvalidInputError, TypeError
        For an option :func:`elbo_check.testing.verify_log_evidence` refuses.

    Examples
    --------
    The marginal ``x ~ N(W mu0 + b, W S0 W^T + Psi)`` from the model's sites: the
    likelihood's mean at ``z = 0`` is ``b``, at ``z = e_k`` it is ``b + W e_k``:

    >>> import pytest; pyro = pytest.importorskip("pyro")
    >>> import torch
    >>> from pyro import poutine
    >>> from elbo_check.contrib.pyro import verify_log_evidence
    >>> def log_evidence(model_fn, x):
    ...     def likelihood(z):  # the distribution of site "x" given z
    ...         conditioned = poutine.condition(model_fn, data={"z": z})
    ...         return poutine.trace(conditioned).get_trace(x).nodes["x"]["fn"]
    ...     with torch.random.fork_rng():  # tracing model_fn samples z
    ...         prior = poutine.trace(model_fn).get_trace(x).nodes["z"]["fn"]
    ...     eye = torch.eye(prior.loc.shape[-1], dtype=x.dtype)
    ...     base = likelihood(0 * eye[0])
    ...     weights = torch.stack([likelihood(e).loc - base.loc for e in eye], -1)
    ...     cov = weights @ prior.covariance_matrix @ weights.mT + base.covariance_matrix
    ...     marginal = pyro.distributions.MultivariateNormal(weights @ prior.loc + base.loc, cov)
    ...     return marginal.log_prob(x)
    >>> verify_log_evidence(log_evidence, max_examples=10).check
    'verify_log_evidence'
    """
    __tracebackhide__ = True
    _check_fn(fn)

    def call(model: LinearGaussianModel, x: Any) -> Any:
        return _value(fn(_h.model_function(model), _h.tensor(x)))

    return _verify_log_evidence(call, **options)


def verify_kl(fn: Callable[..., Any], **options: Any) -> VerificationReport:
    """:func:`elbo_check.testing.verify_kl` for ``fn(p, q)`` on Pyro distributions.

    ``p`` and ``q`` are two ``pyro.distributions.MultivariateNormal`` in float64 (with
    ``batch_size=B``, batches of ``B``, and ``fn`` returns the ``B`` divergences); a
    returned tensor is read with ``.detach().numpy()``.

    Parameters
    ----------
    fn : callable
        The KL code under test, ``fn(p, q)``, returning ``KL(p || q)`` in nats (a
        scalar tensor or a float), e.g. ``torch.distributions.kl_divergence``, the
        registry Pyro's losses use.
    **options
        The keyword options of :func:`elbo_check.testing.verify_kl` (see there):
        ``seed``, ``max_examples``, ``profile``, ``rtol``, ``atol``, ``max_dim``,
        ``max_condition_number``, ``batch_size``, ``problems``, ``q_kinds``,
        ``time_budget``, ``dtype``.

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
        If ``fn`` is a ``pyro.infer.ELBO`` or not callable.
    InvalidTypeError, InvalidInputError, TypeError
        For an option :func:`elbo_check.testing.verify_kl` refuses.

    Examples
    --------
    >>> import pytest; pyro = pytest.importorskip("pyro")
    >>> import torch
    >>> from elbo_check.contrib.pyro import verify_kl
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
