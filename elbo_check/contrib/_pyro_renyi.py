"""verify_renyi_estimator and verify_renyi_gradient for a Pyro ``RenyiELBO`` and guide.

Private: :mod:`elbo_check.contrib.pyro` re-exports both and documents the conventions
they share with its other verifiers (the guide by name or with a parametrisation, the
private parameter store, torch's generator seeded per call).

What Pyro computes, read in pyro-ppl 1.9.2's ``pyro/infer/renyi_elbo.py``:

- ``RenyiELBO.loss`` (lines 93-136): per particle (``_get_traces``: a loop of
  ``num_particles`` traces, or one trace under an outer particle plate with
  ``vectorize_particles=True``) the log weight ``l_j = sum log p(model sites) - sum
  log q(guide sites)`` (lines 106-119), then ``log_mean_weight = logsumexp((1 - alpha)
  * l) - log(num_particles)`` (lines 128-131) and ``loss = -log_mean_weight / (1 -
  alpha)`` (lines 132-134): minus the estimate :func:`elbo_check.testing.
  verify_renyi_estimator` checks, at ``k = num_particles``.
- ``RenyiELBO.loss_and_grads`` (lines 138-233): the same log weights, detached
  (lines 161, 169), and a surrogate ``l_j`` that keeps both the path through the
  reparameterised sample and ``log q``'s own dependence on the parameters (lines
  162, 171-172: the score-function branch, lines 178-182, is only for sites without
  ``rsample``); ``backward`` runs on ``-sum_j w_j l_j / num_particles`` with the
  detached ``w_j = exp((1 - alpha) l_j - log_mean_weight)`` (lines 225-230), i.e. on
  ``-sum_j softmax((1 - alpha) l)_j l_j``: the gradient of the estimate itself, the
  ``"reparameterised"`` estimator of :func:`elbo_check.testing.verify_renyi_gradient`.
"""

from __future__ import annotations

import math
from typing import Any

from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ..testing import Parametrisation, VerificationReport
from ..testing import verify_renyi_estimator as _verify_renyi_estimator
from ..testing import verify_renyi_gradient as _verify_renyi_gradient
from . import _pyro_checks as _k
from . import _pyro_handlers as _h
from ._bound_options import bound_options, low_rank_gradient_options

try:
    import torch
except ImportError as err:  # pragma: no cover - _pyro_handlers raised already
    raise ImportError("elbo_check.contrib.pyro needs Pyro: pip install pyro-ppl") from err


def _setup(
    loss: Any,
    guide: Any,
    parametrisation: Any,
    rank: Any,
    options: dict[str, Any],
    *,
    estimator: bool,
) -> tuple[_k.Spec, dict[str, Any], _h.Problems]:
    """The checked guide, the core verifier's options and the problems' cache."""
    _k.check_loss(loss)
    spec = _k.Spec(guide, parametrisation, rank, _k.max_latent_dim(options))
    chosen = bound_options(loss, options, library="Pyro")
    if not estimator:
        chosen = low_rank_gradient_options(guide, chosen)
    chosen = _k.guide_kinds(spec, chosen, "statistical", estimator=estimator)
    _k.form(loss, spec)  # refuses a guide without the site "z"; warms Pyro up
    return spec, chosen, _h.Problems(spec, loss)


def _nest_particles(loss: Any, x: torch.Tensor) -> None:
    """Set a vectorised loss's ``max_plate_nesting`` to what Pyro would guess on its
    first call (by running model and guide once more, and logging the guess): the
    model's one plate, ``"data"`` for a batch of ``x``, plus the particle plate. The
    loss is the checks' own copy."""
    if getattr(loss, "vectorize_particles", False) and loss.max_plate_nesting == math.inf:
        loss.max_plate_nesting = (x.dim() - 1) + (1 if loss.num_particles > 1 else 0)


def verify_renyi_estimator(
    loss: Any,
    *,
    guide: Any,
    parametrisation: Parametrisation | None = None,
    rank: int | None = None,
    **options: Any,
) -> VerificationReport:
    r""":func:`elbo_check.testing.verify_renyi_estimator` for a Pyro ``RenyiELBO`` and guide.

    The estimate is ``-loss.loss(model_fn, guide_fn, x)`` for the model of each problem
    and the guide set to its q (:func:`model_and_guide`), each call with torch's global
    generator seeded from the verifier's generator (in :func:`torch.random.fork_rng`,
    restored after). ``alpha`` is the loss's ``alpha`` and ``k`` its
    ``num_particles``.

    Pyro computes (pyro-ppl 1.9.2, ``pyro/infer/renyi_elbo.py``, ``RenyiELBO.loss``,
    lines 93-136), from the log weights
    :math:`\ell_j = \log p(x, z_j) - \log q(z_j)` of its ``num_particles`` particles
    (drawn in a loop, or at once with ``vectorize_particles=True``),

    .. math::
        -\mathrm{loss} = \frac{1}{1-\alpha}\Bigl(\log\sum_{j=1}^k
        e^{(1-\alpha)\ell_j} - \log k\Bigr),

    the estimate the core verifier checks against its own draws of the estimate's exact
    distribution (the mean and the whole distribution), and, where the guide can hold
    q = p(z|x), against :math:`\log p(x)`, which every estimate must equal there.
    Pyro refuses ``alpha = 1``; a loss without an ``alpha`` (``Trace_ELBO(
    num_particles=k)``, whose estimate is :math:`\frac1k\sum_j\ell_j`, the
    ``alpha = 1`` estimate) is checked against the bound named by ``alpha=``.

    Statistical mode only: the pathwise mode pins the guide's one Gaussian sample, so
    all particles would share it and the estimate collapse to one log weight.
    ``q_kinds`` follows the guide (diagonal q for ``AutoNormal`` and
    ``AutoDiagonalNormal``, for which the check at p(z|x) is skipped: the posterior is
    not diagonal). A vectorised loss's ``max_plate_nesting``, when left at its default,
    is set (on the checks' copy of the loss) to what Pyro would guess on its first call.

    Parameters
    ----------
    loss : pyro.infer.ELBO
        ``RenyiELBO(alpha=..., num_particles=...)`` (looped or vectorised particles),
        your subclass, or another loss with ``alpha=`` given.
    guide : str or callable
        One of :data:`AUTOGUIDES`, or your ``guide(x)`` with ``pyro.param`` sites and
        one Gaussian sample site ``"z"`` over the K latent dimensions.
    parametrisation : Parametrisation, optional
        Required with your guide (its ``pyro.param`` names and the values the guide
        sees, see :func:`model_and_guide`); left out with an autoguide.
    rank : int, optional
        ``AutoLowRankMultivariateNormal``'s rank (default: the largest K of the
        problems; a smaller rank checks isotropic q, the members of every rank).
    **options
        The keyword options of :func:`elbo_check.testing.verify_renyi_estimator` (see
        there): ``calls``, ``n_problems``, ``false_alarm_rate``, ``q_kinds``,
        ``problems``, ``seed``, ``profile``, ``rtol``, ``atol``, ``time_budget`` and
        the model options; ``alpha`` and ``k``, if given, must be the loss's ``alpha``
        and ``num_particles`` (``alpha`` is required for a loss without one).

    Returns
    -------
    report : VerificationReport
        The verifier's report, returned when the check passes (``report.check`` names
        ``alpha`` and ``k``; ``report.details["posterior_checked"]`` says whether the
        check at p(z|x) ran).

    Raises
    ------
    AssertionError
        If the estimates do not follow the estimator's distribution (at the stated
        false-alarm rate) or differ from :math:`\log p(x)` at q = p(z|x), with the
        verifier's diagnosis (the ``-log k`` missing, the ELBO's estimate, ...); also
        when the loss or the guide raises while the check runs.
    InvalidTypeError
        If ``loss`` is not a ``pyro.infer.ELBO``, ``guide`` is neither a name nor a
        callable, or ``parametrisation`` is not a
        :class:`~elbo_check.testing.Parametrisation`.
    InvalidInputError
        For a ``mode`` other than ``"statistical"``; ``alpha`` or ``k`` other than the
        loss's; a loss without ``alpha`` and no ``alpha=``; ``n_samples`` given (the
        number of samples is ``k``); an unknown autoguide name; a parametrisation given
        with an autoguide (other than its own); ``rank`` given with another guide, or
        not an integer >= 1; your guide without a parametrisation, with ``pyro.param``
        names (or initial shapes) that are not the parametrisation's, or without a
        sample site ``"z"``; or ``q_kinds`` the guide cannot hold.
    InvalidTypeError, InvalidInputError, TypeError
        For another option :func:`elbo_check.testing.verify_renyi_estimator` refuses.

    Examples
    --------
    >>> import pytest; pyro = pytest.importorskip("pyro")
    >>> from elbo_check.contrib.pyro import verify_renyi_estimator
    >>> loss = pyro.infer.RenyiELBO(alpha=0.5, num_particles=4, vectorize_particles=True)
    >>> verify_renyi_estimator(loss, guide="AutoMultivariateNormal", n_problems=1,
    ...                        calls=80).check
    'verify_renyi_estimator(alpha=0.5, k=4)'
    """
    __tracebackhide__ = True
    _, chosen, problems = _setup(loss, guide, parametrisation, rank, options, estimator=True)

    def statistical(model: LinearGaussianModel, q: Gaussian, x: Any, rng: Any, k: int) -> float:
        built, fresh = problems.for_q(model, q)
        xs = _h.tensor(x)
        _nest_particles(fresh, xs)
        with _h.private_store(built.state), _h.seeded_torch(int(rng.integers(2**63))):
            return -float(fresh.loss(built.model, built.guide, xs))

    return _verify_renyi_estimator(statistical, **chosen)


def verify_renyi_gradient(
    loss: Any,
    *,
    guide: Any,
    parametrisation: Parametrisation | None = None,
    rank: int | None = None,
    **options: Any,
) -> VerificationReport:
    r""":func:`elbo_check.testing.verify_renyi_gradient` for the gradient Pyro's SVI takes.

    That is ``loss.loss_and_grads(model_fn, guide_fn, x)``, then the ``.grad`` of the
    guide's parameters (negated: the loss is minus the bound's estimate), in the
    guide's real parameters as in :func:`verify_elbo_gradient` (an autoguide's
    unconstrained tensors, your guide's ``pyro.param`` values named by
    ``parametrisation``), with ``alpha`` the loss's ``alpha`` and ``k`` its
    ``num_particles``.

    Pyro's ``RenyiELBO.loss_and_grads`` (pyro-ppl 1.9.2, ``pyro/infer/renyi_elbo.py``,
    lines 138-233) runs ``backward`` on the surrogate
    :math:`-\sum_j \tilde w_j\,\ell_j`, with :math:`\tilde w =
    \operatorname{softmax}((1-\alpha)\ell)` detached and :math:`\ell_j` keeping both
    the path through the reparameterised sample and ``log q``'s own dependence on the
    parameters (lines 160-172, 225-230). Its gradient is
    :math:`\sum_j\tilde w_j(\nabla_z\ell_j\,\partial z_j/\partial\phi -
    \nabla_\phi\log q_\phi(z_j))`, the gradient of the estimate itself: the
    ``"reparameterised"`` estimator, which is checked (``estimator=`` may name another
    one, for your subclass or guide that computes it: a guide whose ``log q`` detaches
    its parameters gives ``"stl"``). Statistical mode only, seeded as in
    :func:`verify_renyi_estimator`.

    The verifier compares the distribution of the gradient estimates, not only their
    mean, with its own draws at :math:`z_j = m + L\varepsilon_j`, ``L`` the Cholesky
    factor of q's covariance; the guide must sample that way, as ``Normal``,
    ``MultivariateNormal`` and the autoguides ``AutoNormal``, ``AutoDiagonalNormal``
    and ``AutoMultivariateNormal`` do. ``AutoLowRankMultivariateNormal`` samples
    :math:`z = m + W\varepsilon_W + D^{1/2}\varepsilon_D`: the same mean gradient,
    another distribution, so for it only the means are tested
    (``distribution_test=False``, see :func:`elbo_check.testing.verify_renyi_gradient`).

    Parameters
    ----------
    loss : pyro.infer.ELBO
        ``RenyiELBO(alpha=..., num_particles=...)``, your subclass, or another loss
        with ``alpha=`` given.
    guide : str or callable
        One of :data:`AUTOGUIDES`, or your ``guide(x)`` (as in
        :func:`verify_renyi_estimator`).
    parametrisation : Parametrisation, optional
        Required with your guide: the gradient is checked in its parameters.
    rank : int, optional
        ``AutoLowRankMultivariateNormal``'s rank, in the signature shared with the
        other verifiers; that guide is refused here (above), so leave it out.
    **options
        The keyword options of :func:`elbo_check.testing.verify_renyi_gradient` (see
        there): ``estimator`` (default ``"reparameterised"``), ``calls``,
        ``n_problems``, ``false_alarm_rate``, ``q_kinds``, ``problems``, ``seed``,
        ``profile``, ``rtol``, ``atol``, ``time_budget`` and the model options;
        ``alpha`` and ``k``, if given, must be the loss's (``alpha`` is required for a
        loss without one).

    Returns
    -------
    report : VerificationReport
        The verifier's report, returned when the check passes (``report.check`` names
        ``alpha``, ``k`` and the estimator).

    Raises
    ------
    AssertionError
        When the gradient's estimates do not follow the estimator's (biased
        coordinates or another distribution), with the verifier's diagnosis; also when
        the loss or the guide raises while the check runs.
    InvalidTypeError
        If ``loss`` is not a ``pyro.infer.ELBO``, ``guide`` is neither a name nor a
        callable, or ``parametrisation`` is not a
        :class:`~elbo_check.testing.Parametrisation`.
    InvalidInputError
        For a ``mode`` other than ``"statistical"``; ``alpha`` or ``k`` other than the
        loss's; a loss without ``alpha`` and no ``alpha=``; ``n_samples`` given;
        ``distribution_test=True`` with ``guide="AutoLowRankMultivariateNormal"``
        (above); and the guide errors of
        :func:`verify_renyi_estimator`.
    InvalidTypeError, InvalidInputError, TypeError
        For another option :func:`elbo_check.testing.verify_renyi_gradient` refuses
        (an unknown ``estimator``, ``"dreg"`` or ``"vimco"`` with ``alpha != 0``, ...).

    Examples
    --------
    >>> import pytest; pyro = pytest.importorskip("pyro")
    >>> from elbo_check.contrib.pyro import verify_renyi_gradient
    >>> loss = pyro.infer.RenyiELBO(alpha=0, num_particles=3)
    >>> verify_renyi_gradient(loss, guide="AutoNormal", n_problems=1, calls=80).check
    "verify_renyi_gradient(alpha=0, k=3, estimator='reparameterised')"
    """
    __tracebackhide__ = True
    spec, chosen, problems = _setup(loss, guide, parametrisation, rank, options, estimator=False)
    par = spec.parametrisation
    chosen.setdefault("estimator", "reparameterised")

    def statistical(
        model: LinearGaussianModel, params: dict[str, Any], x: Any, rng: Any, k: int
    ) -> dict[str, Any]:
        built, fresh = problems.get(model, params)
        xs = _h.tensor(x)
        _nest_particles(fresh, xs)
        built.zero_grad()
        with _h.private_store(built.state), _h.seeded_torch(int(rng.integers(2**63))):
            fresh.loss_and_grads(built.model, built.guide, xs)
        return _k.masked(par, built.gradient(-1.0))

    return _verify_renyi_gradient(statistical, parametrisation=par, **chosen)
