"""The verifiers for PyTorch code: tensors in, tensors out, autograd done for you.

The verifiers of :mod:`elbo_check.testing` hand your function numpy objects. The
wrappers here, with the same names and options, hand it tensors instead:

- a :class:`TorchModel` in place of a :class:`~elbo_check.LinearGaussianModel`, a
  :class:`TorchGaussian` in place of a :class:`~elbo_check.Gaussian`, ``x`` and ``eps``
  as tensors (all copies, in the ``dtype`` and on the ``device`` you choose);
- a :class:`torch.Generator` in place of the verifier's :class:`numpy.random.Generator`
  (seeded from it, so a check stays reproducible; no global seed is touched);
- for gradients, q's mean and scale_tril as leaf tensors: your function returns the
  ELBO (or its estimate) and :func:`verify_elbo_gradient` runs
  :func:`torch.autograd.grad` itself, so the gradient checked is the one autograd gives
  for your code.

Tensors your function returns are read with ``.detach().cpu().numpy()``; float32 code
(``dtype=torch.float32``) is compared at float32 tolerances.

torch is an optional dependency, installed separately (the CPU wheel is enough)::

    pip install torch --index-url https://download.pytorch.org/whl/cpu

Examples
--------
>>> import pytest; torch = pytest.importorskip("torch")
>>> from elbo_check.contrib.torch import verify_elbo_gradient
>>> def elbo(model, q, x, eps):  # a reparameterised estimate, joint form
...     z = q.mean + eps @ q.scale_tril.mT
...     prior = torch.distributions.MultivariateNormal(
...         model.prior_mean, scale_tril=model.prior_scale_tril)
...     lik = torch.distributions.MultivariateNormal(
...         z @ model.weights.mT + model.bias, covariance_matrix=model.noise_cov)
...     guide = torch.distributions.MultivariateNormal(q.mean, scale_tril=q.scale_tril)
...     return (lik.log_prob(x) + prior.log_prob(z) - guide.log_prob(z)).mean()
>>> print(verify_elbo_gradient(elbo, mode="pathwise", max_examples=10).check)
verify_elbo_gradient(mode='pathwise')
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ..testing import Parametrisation, VerificationReport
from ..testing import verify_elbo as _verify_elbo
from ..testing import verify_elbo_estimator as _verify_elbo_estimator
from ..testing import verify_elbo_gradient as _verify_elbo_gradient
from ..testing import verify_kl as _verify_kl
from ..testing import verify_log_evidence as _verify_log_evidence
from . import _torch_calls as _c
from ._torch_calls import TorchGaussian, TorchModel

try:
    import torch
except ImportError as err:  # pragma: no cover - _torch_calls raised already
    raise ImportError(
        "elbo_check.contrib.torch needs PyTorch, which is not installed; install the CPU "
        "wheel with: pip install torch --index-url https://download.pytorch.org/whl/cpu"
    ) from err

__all__ = [
    "TorchGaussian",
    "TorchModel",
    "as_torch",
    "verify_elbo",
    "verify_elbo_estimator",
    "verify_elbo_gradient",
    "verify_kl",
    "verify_log_evidence",
]


# ---------------------------------------------------------------------- tensor views
@overload
def as_torch(
    value: LinearGaussianModel, dtype: torch.dtype = ..., device: Any = ...
) -> TorchModel: ...
@overload
def as_torch(value: Gaussian, dtype: torch.dtype = ..., device: Any = ...) -> TorchGaussian: ...
def as_torch(
    value: LinearGaussianModel | Gaussian,
    dtype: torch.dtype = torch.float64,
    device: Any = "cpu",
) -> TorchModel | TorchGaussian:
    """Tensor copies of a model or a Gaussian.

    Parameters
    ----------
    value : LinearGaussianModel or Gaussian
        What to copy.
    dtype : torch.dtype, optional
        A floating dtype (default ``torch.float64``).
    device : str or torch.device, optional
        Where the tensors live (default ``"cpu"``); any device torch can allocate on.

    Returns
    -------
    TorchModel or TorchGaussian
        The tensor view (fresh copies, not sharing memory with ``value``): a
        :class:`TorchModel` for a model (with ``numpy`` the model itself), a
        :class:`TorchGaussian` for a Gaussian (batch shapes kept).

    Raises
    ------
    InvalidTypeError
        If ``value`` is neither a :class:`~elbo_check.LinearGaussianModel` nor a
        :class:`~elbo_check.Gaussian`, or ``dtype`` is not a torch floating dtype (a
        string such as ``"float32"`` is refused).
    InvalidInputError
        If torch cannot allocate on ``device`` (e.g. ``"cuda"`` without CUDA).

    Examples
    --------
    >>> import pytest; torch = pytest.importorskip("torch")
    >>> from elbo_check.contrib.torch import as_torch
    >>> from elbo_check import Gaussian
    >>> q = Gaussian.from_diagonal(mean=[0.0, 1.0], variances=[4.0, 1.0])
    >>> q = as_torch(q, dtype=torch.float32)
    >>> q.scale_tril
    tensor([[2., 0.],
            [0., 1.]])
    >>> as_torch(q)  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
        ...
    elbo_check._errors.InvalidTypeError: as_torch takes a LinearGaussianModel or a Gaussian;
    got TorchGaussian
    """
    chosen, where = _c.check_dtype(dtype), _c.check_device(device)
    return _c.views(value, chosen, where)


# ---------------------------------------------------------------------- value verifiers
def verify_elbo(
    fn: Callable[..., Any], *, dtype: Any = torch.float64, device: Any = "cpu", **options: Any
) -> VerificationReport:
    """:func:`elbo_check.testing.verify_elbo` for ``fn(model, q, x) -> Tensor``.

    Your function receives tensors, all copies in ``dtype`` on ``device``: ``model``
    a :class:`TorchModel`, ``q`` a :class:`TorchGaussian` and ``x`` of shape ``(D,)``
    (with ``batch_size=B``: ``q`` a batch of ``B`` with a covariance each and ``x`` of
    shape ``(B, D)``, and ``fn`` returns the ``B`` ELBOs). What it returns is read
    with ``.detach().cpu().numpy()`` and compared with the exact ELBO.

    Parameters
    ----------
    fn : callable
        The ELBO code under test, ``fn(model, q, x)``, returning a scalar tensor (or a
        float; shape ``(B,)`` with ``batch_size=B``).
    dtype : torch.dtype, optional
        The floating dtype of every tensor ``fn`` receives (default ``torch.float64``).
        Below float64 the verifier is told (its ``dtype=``), so it compares at that
        precision's tolerances.
    device : str or torch.device, optional
        Where those tensors live (default ``"cpu"``).
    **options
        The keyword options of :func:`elbo_check.testing.verify_elbo` (see there):
        ``seed``, ``max_examples``, ``profile``, ``rtol``, ``atol``,
        ``up_to_constant``, ``batch_size``, ``problems``, ``q_kinds``,
        ``time_budget`` and the model options.

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
        expected shape): the message shows the minimal counterexample and the
        verifier's diagnosis.
    InvalidTypeError
        If ``fn`` is not callable or ``dtype`` is not a torch floating dtype.
    InvalidInputError
        If torch cannot allocate on ``device``.
    InvalidTypeError, InvalidInputError, TypeError
        For an option :func:`elbo_check.testing.verify_elbo` refuses (a bad value, or
        a keyword it does not take: TypeError).

    Examples
    --------
    >>> import pytest; torch = pytest.importorskip("torch")
    >>> from torch.distributions import MultivariateNormal, kl_divergence
    >>> from elbo_check.contrib.torch import verify_elbo
    >>> def elbo(model, q, x):  # closed form: E_q log p(x | z) - KL(q || p(z))
    ...     lik = MultivariateNormal(model.weights @ q.mean + model.bias, model.noise_cov)
    ...     spread = torch.trace(torch.linalg.solve(
    ...         model.noise_cov, model.weights @ q.cov @ model.weights.mT))
    ...     prior = MultivariateNormal(model.prior_mean, scale_tril=model.prior_scale_tril)
    ...     guide = MultivariateNormal(q.mean, scale_tril=q.scale_tril)
    ...     return lik.log_prob(x) - 0.5 * spread - kl_divergence(guide, prior)
    >>> report = verify_elbo(elbo, max_examples=10)
    >>> report.check, report.cases, report.worst_error <= 1
    ('verify_elbo', 10, True)
    >>> verify_elbo(elbo, dtype=torch.float32, max_examples=10).details["precision"]
    'float32'

    Without the trace term the check fails and names it:

    >>> def no_spread(model, q, x):
    ...     lik = MultivariateNormal(model.weights @ q.mean + model.bias, model.noise_cov)
    ...     prior = MultivariateNormal(model.prior_mean, scale_tril=model.prior_scale_tril)
    ...     guide = MultivariateNormal(q.mean, scale_tril=q.scale_tril)
    ...     return lik.log_prob(x) - kl_divergence(guide, prior)
    >>> try:  # doctest: +NORMALIZE_WHITESPACE
    ...     verify_elbo(no_spread, max_examples=10)
    ... except AssertionError as failure:
    ...     print(next(s for s in str(failure).splitlines() if s.startswith("Diagnosis")))
    Diagnosis: the trace term -1/2 tr(Psi^-1 W S W^T) of the reconstruction is missing
    (the likelihood is evaluated at q's mean only).
    """
    __tracebackhide__ = True
    chosen = _c.setting(fn, dtype, device)
    return _verify_elbo(_c.wrapped(fn, chosen), **_c.options(chosen, options))


def verify_kl(
    fn: Callable[..., Any], *, dtype: Any = torch.float64, device: Any = "cpu", **options: Any
) -> VerificationReport:
    """:func:`elbo_check.testing.verify_kl` for ``fn(p, q) -> Tensor``, KL(p || q).

    ``p`` and ``q`` are :class:`TorchGaussian` objects (copies in ``dtype`` on
    ``device``; with ``batch_size=B``, batches of ``B`` with a covariance each, and
    ``fn`` returns the ``B`` divergences). What ``fn`` returns is read with
    ``.detach().cpu().numpy()`` and compared with the exact divergence.

    Parameters
    ----------
    fn : callable
        The KL code under test, ``fn(p, q)``, returning ``KL(p || q)`` in nats as a
        scalar tensor (or a float; shape ``(B,)`` with ``batch_size=B``).
    dtype : torch.dtype, optional
        The floating dtype of the tensors ``fn`` receives (default ``torch.float64``);
        below float64 the verifier compares at that precision's tolerances.
    device : str or torch.device, optional
        Where those tensors live (default ``"cpu"``).
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
        If ``fn`` is not callable or ``dtype`` is not a torch floating dtype.
    InvalidInputError
        If torch cannot allocate on ``device``.
    InvalidTypeError, InvalidInputError, TypeError
        For an option :func:`elbo_check.testing.verify_kl` refuses.

    Examples
    --------
    torch's own KL registry:

    >>> import pytest; torch = pytest.importorskip("torch")
    >>> from torch.distributions import MultivariateNormal, kl_divergence
    >>> from elbo_check.contrib.torch import verify_kl
    >>> def kl(p, q):
    ...     return kl_divergence(MultivariateNormal(p.mean, scale_tril=p.scale_tril),
    ...                          MultivariateNormal(q.mean, scale_tril=q.scale_tril))
    >>> verify_kl(kl, max_examples=20).check
    'verify_kl'
    >>> try:
    ...     verify_kl(lambda p, q: kl(q, p), max_examples=20)
    ... except AssertionError as failure:
    ...     print(next(s for s in str(failure).splitlines() if s.startswith("Diagnosis")))
    Diagnosis: the arguments are reversed (KL(q || p) returned for KL(p || q)).
    """
    __tracebackhide__ = True
    chosen = _c.setting(fn, dtype, device)
    return _verify_kl(_c.wrapped(fn, chosen), **_c.options(chosen, options))


def verify_log_evidence(
    fn: Callable[..., Any], *, dtype: Any = torch.float64, device: Any = "cpu", **options: Any
) -> VerificationReport:
    """:func:`elbo_check.testing.verify_log_evidence` for ``fn(model, x) -> Tensor``.

    ``model`` is a :class:`TorchModel` and ``x`` a tensor of shape ``(D,)`` (``(B, D)``
    with ``batch_size=B``, and ``fn`` returns the ``B`` values), copies in ``dtype`` on
    ``device``. What ``fn`` returns is read with ``.detach().cpu().numpy()`` and
    compared with the exact ``log p(x)``.

    Parameters
    ----------
    fn : callable
        The log-evidence code under test, ``fn(model, x)``, returning ``log p(x)`` in
        nats as a scalar tensor (or a float; shape ``(B,)`` with ``batch_size=B``).
    dtype : torch.dtype, optional
        The floating dtype of the tensors ``fn`` receives (default ``torch.float64``);
        below float64 the verifier compares at that precision's tolerances.
    device : str or torch.device, optional
        Where those tensors live (default ``"cpu"``).
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
        If ``fn`` is not callable or ``dtype`` is not a torch floating dtype.
    InvalidInputError
        If torch cannot allocate on ``device``.
    InvalidTypeError, InvalidInputError, TypeError
        For an option :func:`elbo_check.testing.verify_log_evidence` refuses.

    Examples
    --------
    The marginal ``x ~ N(W mu0 + b, W S0 W^T + Psi)``:

    >>> import pytest; torch = pytest.importorskip("torch")
    >>> from torch.distributions import MultivariateNormal
    >>> from elbo_check.contrib.torch import verify_log_evidence
    >>> def log_evidence(model, x):
    ...     mean = model.weights @ model.prior_mean + model.bias
    ...     cov = model.weights @ model.prior_cov @ model.weights.mT + model.noise_cov
    ...     return MultivariateNormal(mean, cov).log_prob(x)
    >>> verify_log_evidence(log_evidence, max_examples=20).check
    'verify_log_evidence'
    """
    __tracebackhide__ = True
    chosen = _c.setting(fn, dtype, device)
    return _verify_log_evidence(_c.wrapped(fn, chosen), **_c.options(chosen, options))


def verify_elbo_estimator(
    fn: Callable[..., Any], *, dtype: Any = torch.float64, device: Any = "cpu", **options: Any
) -> VerificationReport:
    """:func:`elbo_check.testing.verify_elbo_estimator` for torch estimators.

    ``mode="statistical"`` (default): ``fn(model, q, x, generator, n_samples)`` with a
    :class:`torch.Generator` seeded from the verifier's generator for that call (no
    global seed is touched), tested for unbiasedness. ``mode="pathwise"``: ``fn(model,
    q, x, eps)`` with the noise ``eps`` a tensor of shape ``(n, K)``, compared with the
    exact value of the estimate at that noise. ``model`` is a :class:`TorchModel`,
    ``q`` a :class:`TorchGaussian`, all tensors copies in ``dtype`` on ``device``.

    Parameters
    ----------
    fn : callable
        The estimator under test, with the signature of its mode (above), returning
        the estimate as a scalar tensor (or a float).
    dtype : torch.dtype, optional
        The floating dtype of the tensors ``fn`` receives (default ``torch.float64``);
        below float64 the verifier compares at that precision's tolerances.
    device : str or torch.device, optional
        Where those tensors and the generator live (default ``"cpu"``).
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
        If ``fn`` is not callable or ``dtype`` is not a torch floating dtype.
    InvalidInputError
        If torch cannot allocate on ``device``.
    InvalidTypeError, InvalidInputError, TypeError
        For an option :func:`elbo_check.testing.verify_elbo_estimator` refuses (e.g.
        an unknown ``mode``).

    Examples
    --------
    A reparameterised Monte-Carlo ELBO, joint form, drawing from the generator it is
    given (a small budget: one problem, 100 calls):

    >>> import pytest; torch = pytest.importorskip("torch")
    >>> from torch.distributions import MultivariateNormal
    >>> from elbo_check.contrib.torch import verify_elbo_estimator
    >>> def mc_elbo(model, q, x, generator, n_samples):
    ...     eps = torch.randn(n_samples, q.mean.shape[-1], generator=generator,
    ...                       dtype=q.mean.dtype)
    ...     z = q.mean + eps @ q.scale_tril.mT
    ...     lik = MultivariateNormal(z @ model.weights.mT + model.bias, model.noise_cov)
    ...     prior = MultivariateNormal(model.prior_mean, scale_tril=model.prior_scale_tril)
    ...     guide = MultivariateNormal(q.mean, scale_tril=q.scale_tril)
    ...     return (lik.log_prob(x) + prior.log_prob(z) - guide.log_prob(z)).mean()
    >>> report = verify_elbo_estimator(mc_elbo, n_problems=1, calls=100)
    >>> report.check, report.details["calls"]
    ('verify_elbo_estimator', 100)
    """
    __tracebackhide__ = True
    chosen = _c.setting(fn, dtype, device)
    return _verify_elbo_estimator(_c.wrapped(fn, chosen), **_c.options(chosen, options))


# ---------------------------------------------------------------------- gradients
def verify_elbo_gradient(
    fn: Callable[..., Any],
    *,
    dtype: Any = torch.float64,
    device: Any = "cpu",
    parametrisation: Parametrisation | None = None,
    **options: Any,
) -> VerificationReport:
    """:func:`elbo_check.testing.verify_elbo_gradient` for the gradient autograd gives.

    ``fn`` returns the *value* (a scalar tensor; with ``batch_size=B`` one per member,
    shape ``(B,)``, or their sum); this wrapper makes q's ``mean`` and ``scale_tril``
    leaf tensors that require grad, calls ``fn``, runs :func:`torch.autograd.grad` and
    hands the verifier the gradients (of ``scale_tril``, its lower triangle)::

        fn(model, q, x) -> Tensor                         # mode="exact": the ELBO
        fn(model, q, x, generator, n_samples) -> Tensor   # mode="statistical": an estimate
        fn(model, q, x, eps) -> Tensor                    # mode="pathwise": the estimate at eps

    ``q.cov`` is ``scale_tril @ scale_tril.mT``, in the graph. With a
    ``parametrisation``, ``fn`` receives its dict of parameters as leaf tensors in q's
    place, and the gradient is taken in them (entries that are not parameters, such as
    those above a factor's diagonal, are masked).

    Parameters
    ----------
    fn : callable
        The ELBO code under test, with the signature of its mode (above), returning the
        value as a tensor in autograd's graph.
    dtype : torch.dtype, optional
        The dtype of every tensor ``fn`` receives (default ``torch.float64``). Below
        float64 the verifier is told (its ``dtype=``), so its tolerances follow.
    device : str or torch.device, optional
        Where those tensors live (default ``"cpu"``).
    parametrisation : Parametrisation, optional
        Differentiate in these parameters instead of q's ``(mean, scale_tril)``
        (default None); ``fn`` then receives their dict as leaf tensors in q's place.
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
        When autograd's gradient of ``fn`` is wrong, with the verifier's diagnosis; also
        when ``fn`` raises or returns what autograd cannot differentiate (not a
        tensor, detached from q's tensors, or not of shape ``()`` or ``(B,)``): the
        failure names it.
    InvalidTypeError
        If ``fn`` is not callable or ``dtype`` is not a torch floating dtype.
    InvalidInputError
        If torch cannot allocate on ``device``.
    InvalidTypeError, InvalidInputError, TypeError
        For an option :func:`elbo_check.testing.verify_elbo_gradient` refuses (a
        ``parametrisation`` that is not a Parametrisation included).

    Examples
    --------
    >>> import pytest; torch = pytest.importorskip("torch")
    >>> from elbo_check.contrib.torch import verify_elbo_gradient
    >>> def elbo(model, q, x):  # closed form: E_q log p(x | z) - KL(q || p(z))
    ...     prior = torch.distributions.MultivariateNormal(
    ...         model.prior_mean, scale_tril=model.prior_scale_tril)
    ...     guide = torch.distributions.MultivariateNormal(q.mean, scale_tril=q.scale_tril)
    ...     noise = torch.distributions.MultivariateNormal(
    ...         model.weights @ q.mean + model.bias, covariance_matrix=model.noise_cov)
    ...     spread = torch.trace(torch.linalg.solve(
    ...         model.noise_cov, model.weights @ q.cov @ model.weights.T))
    ...     kl = torch.distributions.kl_divergence(guide, prior)
    ...     return noise.log_prob(x) - 0.5 * spread - kl
    >>> verify_elbo_gradient(elbo, max_examples=20).check
    'verify_elbo_gradient'
    """
    __tracebackhide__ = True
    chosen = _c.setting(fn, dtype, device)
    batched = options.get("batch_size") is not None
    gradient = _c.gradient_of(fn, chosen, parametrisation, batched)
    return _verify_elbo_gradient(
        gradient, parametrisation=parametrisation, **_c.options(chosen, options)
    )
