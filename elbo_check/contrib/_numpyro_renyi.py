"""verify_renyi_estimator and verify_renyi_gradient for a NumPyro ``RenyiELBO`` and guide.

Private: :mod:`elbo_check.contrib.numpyro` re-exports both and documents the conventions
they share with its other verifiers (the guide by name or with a parametrisation, the
compiled losses, one key per call, float64 in JAX's thread-local x64 context).

What NumPyro computes, read in numpyro 0.22's ``numpyro/infer/elbo.py``:

- ``RenyiELBO._single_particle_elbo`` (lines 529-601): one particle's log weight
  ``l = sum log p(model sites) - sum log q(guide sites)`` (lines 578-596), from
  ``get_importance_trace`` (``numpyro/infer/util.py``, lines 147-174), which traces the
  guide so that a reparameterised sample keeps its path to the parameters (line 155)
  and evaluates ``log q`` with the parameters live (lines 159-173).
- ``RenyiELBO.loss`` (lines 603-645): ``num_particles`` keys (line 629), the particles
  vectorised (``jax.vmap``), ``avg_log_exp = logsumexp((1 - alpha) * l) -
  log(num_particles)`` (lines 635-636), ``renyi_elbo = avg_log_exp / (1 - alpha)``
  (line 639), and ``loss = -(stop_gradient(renyi_elbo - weighted_elbo) +
  weighted_elbo)`` (line 643) with ``weighted_elbo = mean(stop_gradient(w) * l)`` and
  ``w = exp((1 - alpha) * l - avg_log_exp)`` (lines 638, 640). Its value is
  ``-renyi_elbo``, minus the estimate :func:`elbo_check.testing.verify_renyi_estimator`
  checks at ``k = num_particles``; its gradient is that of ``-sum_j softmax((1 - alpha)
  l)_j l_j`` with the weights held fixed: the gradient of the estimate itself, the
  ``"reparameterised"`` estimator of :func:`elbo_check.testing.verify_renyi_gradient`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..testing import Parametrisation, VerificationReport
from ..testing import verify_renyi_estimator as _verify_renyi_estimator
from ..testing import verify_renyi_gradient as _verify_renyi_gradient
from . import _numpyro_checks as _k
from . import _numpyro_handlers as _h
from ._bound_options import bound_options, low_rank_gradient_options


def _setup(
    loss: Any,
    guide: Any,
    parametrisation: Any,
    rank: Any,
    dtype: Any,
    options: dict[str, Any],
    *,
    estimator: bool,
) -> tuple[_h.Calls, bool, dict[str, Any]]:
    """The loss and guide checked, the precision, and the core verifier's options."""
    _k.check_loss(loss)
    max_k = int(options.get("max_latent_dim", _h.DEFAULT_MAX_LATENT_DIM))
    spec = _k.guide_spec(guide, parametrisation, rank, max_k)
    x64 = _k.check_dtype(dtype)
    chosen = bound_options(loss, options, library="NumPyro")
    if not estimator:
        chosen = low_rank_gradient_options(guide, chosen)
    with _k.precision(x64):
        _h.probe(loss, spec)  # the guide's params and its sample site "z"
    if estimator:
        chosen["q_kinds"] = _k.restricted_kinds(spec, chosen.get("q_kinds"))
    if not x64:
        chosen["dtype"] = np.float32
    return _h.Calls(loss, spec), x64, chosen


def verify_renyi_estimator(
    loss: Any,
    *,
    guide: Any,
    parametrisation: Parametrisation | None = None,
    rank: int | None = None,
    dtype: Any = "float64",
    **options: Any,
) -> VerificationReport:
    r""":func:`elbo_check.testing.verify_renyi_estimator` for a NumPyro ``RenyiELBO`` and guide.

    The estimate is ``-loss.loss(key, params, model_fn, guide_fn, x)`` with the guide's
    parameters set to the verifier's q (drawn among the covariances the guide
    represents, as in :func:`verify_elbo_estimator`), one key per call seeded from the
    verifier's generator; ``alpha`` is the loss's ``alpha`` and ``k`` its
    ``num_particles``.

    NumPyro computes (numpyro 0.22, ``numpyro/infer/elbo.py``, ``RenyiELBO.loss``, lines
    603-645), from the log weights :math:`\ell_j = \log p(x, z_j) - \log q(z_j)` of its
    ``num_particles`` particles (vectorised with ``jax.vmap``),

    .. math::
        -\mathrm{loss} = \frac{1}{1-\alpha}\Bigl(\log\sum_{j=1}^k
        e^{(1-\alpha)\ell_j} - \log k\Bigr),

    the estimate the core verifier checks against its own draws of the estimate's exact
    distribution (the mean and the whole distribution), and, where the guide can hold
    q = p(z|x), against :math:`\log p(x)`, which every estimate must equal there.
    NumPyro refuses ``alpha = 1``; a loss without an ``alpha`` (``Trace_ELBO(
    num_particles=k)``, whose estimate is :math:`\frac1k\sum_j\ell_j`, the
    ``alpha = 1`` estimate) is checked against the bound named by ``alpha=``.

    Statistical mode only: the pathwise mode pins the guide's one Gaussian sample, so
    all particles would share it and the estimate collapse to one log weight. Each
    (loss, guide, shape) compiles once, as in :func:`verify_elbo_estimator`.

    Parameters
    ----------
    loss : numpyro.infer.elbo.ELBO
        ``RenyiELBO(alpha=..., num_particles=...)``, your subclass, or another loss
        with ``alpha=`` given.
    guide : str or callable
        One of :data:`AUTOGUIDES`, or your guide function ``guide(x)`` (then
        ``parametrisation`` is required).
    parametrisation : Parametrisation, optional
        For a guide function: a parametrisation whose keys are its ``numpyro.param``
        names, with the (constrained) values the guide sees.
    rank : int, optional
        ``AutoLowRankMultivariateNormal``'s rank (default: the largest latent dimension
        of the problems, so every q is a member).
    dtype : {"float64", "float32"}, optional
        The precision the loss runs in (default ``"float64"``; see the module's
        Precision).
    **options
        The keyword options of :func:`elbo_check.testing.verify_renyi_estimator` (see
        there): ``calls``, ``n_problems``, ``false_alarm_rate``, ``q_kinds``,
        ``problems``, ``seed``, ``profile``, ``rtol``, ``atol``, ``time_budget`` and
        the model options; ``alpha`` and ``k``, if given, must be the loss's ``alpha``
        and ``num_particles`` (``alpha`` is required for a loss without one).

    Returns
    -------
    VerificationReport
        ``report.check`` names ``alpha`` and ``k``; ``details["compilations"]`` counts
        the compilations of this call.

    Raises
    ------
    AssertionError
        If the estimates do not follow the estimator's distribution (at the stated
        false-alarm rate) or differ from :math:`\log p(x)` at q = p(z|x), with the
        verifier's diagnosis (the ``-log k`` missing, the ELBO's estimate, ...); also
        when the loss or the guide raises while the check runs.
    InvalidTypeError
        If ``loss`` is not a NumPyro ELBO, ``guide`` is neither a name nor a callable,
        ``parametrisation`` is not a :class:`~elbo_check.testing.Parametrisation`, or
        ``dtype`` is not float64 or float32.
    InvalidInputError
        For a ``mode`` other than ``"statistical"``; ``alpha`` or ``k`` other than the
        loss's; a loss without ``alpha`` and no ``alpha=``; ``n_samples`` given (the
        number of samples is ``k``); an unknown autoguide name; a parametrisation given
        with an autoguide; ``rank`` given with another guide, or not an integer >= 1;
        a guide function without a parametrisation, with ``numpyro.param`` names that
        are not its keys, or without a sample site ``"z"``; or ``q_kinds`` the guide
        does not represent.
    InvalidTypeError, InvalidInputError, TypeError
        For another option :func:`elbo_check.testing.verify_renyi_estimator` refuses.

    Examples
    --------
    >>> import pytest; numpyro = pytest.importorskip("numpyro")
    >>> from elbo_check.contrib.numpyro import verify_renyi_estimator
    >>> loss = numpyro.infer.RenyiELBO(alpha=0.5, num_particles=4)
    >>> verify_renyi_estimator(loss, guide="AutoMultivariateNormal", n_problems=1,
    ...                        calls=80).check
    'verify_renyi_estimator(alpha=0.5, k=4)'
    """
    __tracebackhide__ = True
    calls, x64, chosen = _setup(loss, guide, parametrisation, rank, dtype, options, estimator=True)
    with _k.precision(x64):
        return _k.counted(lambda: _verify_renyi_estimator(calls.estimate, **chosen))


def verify_renyi_gradient(
    loss: Any,
    *,
    guide: Any,
    parametrisation: Parametrisation | None = None,
    rank: int | None = None,
    dtype: Any = "float64",
    **options: Any,
) -> VerificationReport:
    r""":func:`elbo_check.testing.verify_renyi_gradient` for ``jax.grad`` of a NumPyro loss.

    The gradient checked is :func:`jax.grad` of ``-loss.loss(key, params, model_fn,
    guide_fn, x)`` in the parameters SVI optimises (the map of
    :func:`verify_elbo_gradient`: an autoguide's unconstrained parameters, your guide's
    ``numpyro.param`` values named by ``parametrisation``), with ``alpha`` the loss's
    ``alpha`` and ``k`` its ``num_particles``.

    NumPyro's ``RenyiELBO.loss`` (numpyro 0.22, ``numpyro/infer/elbo.py``, lines
    603-645) returns ``-(stop_gradient(renyi_elbo - weighted_elbo) + weighted_elbo)``
    (line 643), whose gradient is that of
    :math:`-\sum_j \tilde w_j\,\ell_j` with :math:`\tilde w =
    \operatorname{softmax}((1-\alpha)\ell)` held fixed (lines 638-640) and
    :math:`\ell_j` keeping both the path through the reparameterised sample and
    ``log q``'s own dependence on the parameters (``get_importance_trace``,
    ``numpyro/infer/util.py``, lines 147-174). That is
    :math:`\sum_j\tilde w_j(\nabla_z\ell_j\,\partial z_j/\partial\phi -
    \nabla_\phi\log q_\phi(z_j))`, the gradient of the estimate itself: the
    ``"reparameterised"`` estimator, which is checked (``estimator=`` may name another
    one, for your subclass or guide that computes it: a guide whose ``log q`` stops
    the gradient of its parameters gives ``"stl"``). Statistical mode only.

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
    loss : numpyro.infer.elbo.ELBO
        ``RenyiELBO(alpha=..., num_particles=...)``, your subclass, or another loss
        with ``alpha=`` given.
    guide : str or callable
        One of :data:`AUTOGUIDES`, or your guide function ``guide(x)`` (then
        ``parametrisation`` is required).
    parametrisation : Parametrisation, optional
        For a guide function: the gradient is checked in its ``numpyro.param`` values,
        by these keys.
    rank : int, optional
        ``AutoLowRankMultivariateNormal``'s rank, in the signature shared with the
        other verifiers; that guide is refused here (above), so leave it out.
    dtype : {"float64", "float32"}, optional
        The precision the loss and its gradient run in (default ``"float64"``).
    **options
        The keyword options of :func:`elbo_check.testing.verify_renyi_gradient` (see
        there): ``estimator`` (default ``"reparameterised"``), ``calls``,
        ``n_problems``, ``false_alarm_rate``, ``q_kinds``, ``problems``, ``seed``,
        ``profile``, ``rtol``, ``atol``, ``time_budget`` and the model options;
        ``alpha`` and ``k``, if given, must be the loss's (``alpha`` is required for a
        loss without one).

    Returns
    -------
    VerificationReport
        ``report.check`` names ``alpha``, ``k`` and the estimator;
        ``details["compilations"]`` counts the compilations of this call.

    Raises
    ------
    AssertionError
        When the gradient's estimates do not follow the estimator's (biased
        coordinates or another distribution), with the verifier's diagnosis; also when
        the loss or the guide raises while the check runs.
    InvalidTypeError
        If ``loss`` is not a NumPyro ELBO, ``guide`` is neither a name nor a callable,
        ``parametrisation`` is not a :class:`~elbo_check.testing.Parametrisation`, or
        ``dtype`` is not float64 or float32.
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
    >>> import pytest; numpyro = pytest.importorskip("numpyro")
    >>> from elbo_check.contrib.numpyro import verify_renyi_gradient
    >>> loss = numpyro.infer.RenyiELBO(alpha=0, num_particles=3)
    >>> verify_renyi_gradient(loss, guide="AutoNormal", n_problems=1, calls=80).check
    "verify_renyi_gradient(alpha=0, k=3, estimator='reparameterised')"
    """
    __tracebackhide__ = True
    calls, x64, chosen = _setup(loss, guide, parametrisation, rank, dtype, options, estimator=False)
    chosen.setdefault("estimator", "reparameterised")
    par = calls.spec.parametrisation
    with _k.precision(x64):
        return _k.counted(
            lambda: _verify_renyi_gradient(calls.gradient, parametrisation=par, **chosen)
        )
