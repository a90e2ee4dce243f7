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

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

from .._errors import InvalidInputError, InvalidTypeError
from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ..testing import Parametrisation, VerificationReport
from ..testing import verify_elbo as _verify_elbo
from ..testing import verify_elbo_estimator as _verify_elbo_estimator
from ..testing import verify_elbo_gradient as _verify_elbo_gradient
from ..testing import verify_kl as _verify_kl
from ..testing import verify_log_evidence as _verify_log_evidence

try:
    import torch
except ImportError as err:  # pragma: no cover - exercised without torch
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

Tensor = torch.Tensor


# ---------------------------------------------------------------------- tensor views
@dataclass(frozen=True)
class TorchModel:
    """A :class:`~elbo_check.LinearGaussianModel` as tensors (copies).

    ``z ~ N(prior_mean, prior_cov)``, ``x | z ~ N(weights @ z + bias, noise_cov)``.

    Attributes
    ----------
    weights : torch.Tensor
        ``W``, shape ``(D, K)``.
    bias : torch.Tensor
        ``b``, shape ``(D,)``.
    prior_mean, prior_cov, prior_scale_tril : torch.Tensor
        The prior's mean ``(K,)``, covariance and lower Cholesky factor ``(K, K)``.
    noise_cov : torch.Tensor
        The noise covariance as a dense ``(D, D)`` matrix, whatever its kind.
    numpy : LinearGaussianModel
        The model these tensors were copied from (its exact oracle methods).
    """

    weights: Tensor
    bias: Tensor
    prior_mean: Tensor
    prior_cov: Tensor
    prior_scale_tril: Tensor
    noise_cov: Tensor
    numpy: LinearGaussianModel


@dataclass(frozen=True)
class TorchGaussian:
    """A :class:`~elbo_check.Gaussian` as tensors; batch shapes are kept.

    Attributes
    ----------
    mean : torch.Tensor
        Shape ``(..., K)``.
    scale_tril : torch.Tensor
        Lower Cholesky factor of the covariance, ``(K, K)`` or ``(..., K, K)``.
    cov : torch.Tensor
        The covariance, of the shape of ``scale_tril``. In
        :func:`verify_elbo_gradient` it is ``scale_tril @ scale_tril.mT``, so that
        gradients flow through it to ``scale_tril``.
    """

    mean: Tensor
    scale_tril: Tensor
    cov: Tensor


def _tensor(value: Any, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A copy of ``value`` (numpy arrays may be read-only) as a tensor."""
    return torch.tensor(np.array(value, dtype=np.float64), dtype=dtype, device=device)


def _check_dtype(dtype: Any) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InvalidTypeError(
            "dtype must be a torch floating dtype (torch.float64, torch.float32, ...); "
            f"got dtype={dtype!r}"
        )
    return dtype


def _check_device(device: Any) -> torch.device:
    try:
        chosen = torch.device(device)
        torch.empty(0, device=chosen)
    except (RuntimeError, TypeError, AssertionError) as err:
        raise InvalidInputError(
            f"device must be a device torch can use (e.g. 'cpu'); got device={device!r}: {err}"
        ) from err
    return chosen


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
    dtype : torch.dtype
        A floating dtype (default ``torch.float64``).
    device : str or torch.device
        Where the tensors live (default ``"cpu"``).

    Returns
    -------
    TorchModel or TorchGaussian

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
    """
    chosen, where = _check_dtype(dtype), _check_device(device)
    if isinstance(value, LinearGaussianModel):
        return TorchModel(
            weights=_tensor(value.weights, chosen, where),
            bias=_tensor(value.bias, chosen, where),
            prior_mean=_tensor(value.prior.mean, chosen, where),
            prior_cov=_tensor(value.prior.cov, chosen, where),
            prior_scale_tril=_tensor(value.prior.scale_tril, chosen, where),
            noise_cov=_tensor(value.dense_noise_cov(), chosen, where),
            numpy=value,
        )
    if isinstance(value, Gaussian):
        return TorchGaussian(
            mean=_tensor(value.mean, chosen, where),
            scale_tril=_tensor(value.scale_tril, chosen, where),
            cov=_tensor(value.cov, chosen, where),
        )
    raise InvalidTypeError(
        f"as_torch takes a LinearGaussianModel or a Gaussian; got {type(value).__name__}"
    )


# ---------------------------------------------------------------------- plumbing
@dataclass(frozen=True)
class _Setting:
    """The dtype and device the user's code runs in."""

    dtype: torch.dtype
    device: torch.device

    def convert(self, value: Any) -> Any:
        """Models and Gaussians as tensor views, arrays as tensors; anything else as is."""
        if isinstance(value, (LinearGaussianModel, Gaussian)):
            return as_torch(value, self.dtype, self.device)
        if isinstance(value, np.ndarray):
            return _tensor(value, self.dtype, self.device)
        if isinstance(value, np.random.Generator):
            generator = torch.Generator(device=self.device)
            return generator.manual_seed(int(value.integers(2**63)))
        return value


def _setting(fn: Any, dtype: Any, device: Any) -> _Setting:
    if not callable(fn):
        raise InvalidTypeError(f"fn must be callable; got {type(fn).__name__} {fn!r:.60}")
    return _Setting(_check_dtype(dtype), _check_device(device))


def _numpy(value: Any) -> Any:
    """A returned tensor (or a tuple or dict of them) as numpy; float32 stays float32."""
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, (tuple, list)):
        return type(value)(_numpy(v) for v in value)
    if isinstance(value, dict):
        return {k: _numpy(v) for k, v in value.items()}
    return value


def _options(setting: _Setting, options: dict[str, Any]) -> dict[str, Any]:
    """The verifier's options: the user's, plus ``dtype=`` below float64 (its tolerances)."""
    if setting.dtype != torch.float64:
        return {**options, "dtype": setting.dtype}
    return options


def _wrapped(fn: Callable[..., Any], setting: _Setting) -> Callable[..., Any]:
    """``fn`` called on tensor views of the verifier's arguments, its return as numpy."""

    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        return _numpy(fn(*(setting.convert(a) for a in args)))

    return call


# ---------------------------------------------------------------------- value verifiers
def verify_elbo(
    fn: Callable[..., Any], *, dtype: Any = torch.float64, device: Any = "cpu", **options: Any
) -> VerificationReport:
    """:func:`elbo_check.testing.verify_elbo` for ``fn(model, q, x) -> Tensor``.

    ``model`` is a :class:`TorchModel`, ``q`` a :class:`TorchGaussian`, ``x`` a tensor,
    all in ``dtype`` on ``device``; every other keyword is the verifier's.
    """
    __tracebackhide__ = True
    setting = _setting(fn, dtype, device)
    return _verify_elbo(_wrapped(fn, setting), **_options(setting, options))


def verify_kl(
    fn: Callable[..., Any], *, dtype: Any = torch.float64, device: Any = "cpu", **options: Any
) -> VerificationReport:
    """:func:`elbo_check.testing.verify_kl` for ``fn(p, q) -> Tensor``, KL(p || q) of two
    :class:`TorchGaussian` objects."""
    __tracebackhide__ = True
    setting = _setting(fn, dtype, device)
    return _verify_kl(_wrapped(fn, setting), **_options(setting, options))


def verify_log_evidence(
    fn: Callable[..., Any], *, dtype: Any = torch.float64, device: Any = "cpu", **options: Any
) -> VerificationReport:
    """:func:`elbo_check.testing.verify_log_evidence` for ``fn(model, x) -> Tensor``."""
    __tracebackhide__ = True
    setting = _setting(fn, dtype, device)
    return _verify_log_evidence(_wrapped(fn, setting), **_options(setting, options))


def verify_elbo_estimator(
    fn: Callable[..., Any], *, dtype: Any = torch.float64, device: Any = "cpu", **options: Any
) -> VerificationReport:
    """:func:`elbo_check.testing.verify_elbo_estimator` for torch estimators.

    ``mode="statistical"`` (default): ``fn(model, q, x, generator, n_samples)`` with a
    :class:`torch.Generator` seeded from the verifier's generator for that call.
    ``mode="pathwise"``: ``fn(model, q, x, eps)`` with the noise ``eps`` a tensor.
    """
    __tracebackhide__ = True
    setting = _setting(fn, dtype, device)
    return _verify_elbo_estimator(_wrapped(fn, setting), **_options(setting, options))


# ---------------------------------------------------------------------- gradients
#: Entries of a parameter that are not free, by kind (their gradient must be 0).
_MASKS: dict[str, Callable[[Tensor], Tensor]] = {
    "lower": torch.tril,
    "strict_lower": lambda g: torch.tril(g, diagonal=-1),
}


def _scalar(value: Any, batched: bool) -> Tensor:
    """The value to differentiate: a scalar, or the sum of a batch's ``(B,)`` values."""
    if not isinstance(value, Tensor):
        raise InvalidTypeError(
            "fn must return a torch.Tensor that autograd can differentiate (the ELBO or its "
            f"estimate); got {type(value).__name__} {value!r:.60}"
        )
    if value.numel() == 1:
        return value.reshape(())
    if batched and value.dim() == 1:
        return value.sum()  # member b's gradient in its own parameters: d(sum)/d(q_b)
    raise InvalidInputError(
        "fn must return a scalar tensor"
        + (" or one value per member, shape (B,)" if batched else "")
        + f"; got shape {tuple(value.shape)}"
    )


def _gradients(value: Tensor, leaves: Mapping[str, Tensor]) -> dict[str, Tensor]:
    if not value.requires_grad:
        raise InvalidInputError(
            "fn's return does not depend on q's parameters through autograd (computed "
            "under torch.no_grad(), detached, or through numpy?); return the ELBO as a "
            "tensor built from q's tensors"
        )
    grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
    return {
        key: torch.zeros_like(leaf) if grad is None else grad
        for (key, leaf), grad in zip(leaves.items(), grads, strict=True)
    }


def _gradient_of(
    fn: Callable[..., Any],
    setting: _Setting,
    parametrisation: Parametrisation | None,
    batched: bool,
) -> Callable[..., Any]:
    """A gradient function for the verifier: autograd of ``fn``'s value."""

    def leaf(array: Any) -> Tensor:
        return _tensor(array, setting.dtype, setting.device).requires_grad_()

    @functools.wraps(fn)
    def gradient(model: Any, q: Any, *rest: Any) -> Any:
        converted = [setting.convert(a) for a in rest]
        if parametrisation is None:
            mean, scale_tril = leaf(q.mean), leaf(q.scale_tril)
            view = TorchGaussian(mean, scale_tril, scale_tril @ scale_tril.mT)
            value = fn(setting.convert(model), view, *converted)
            grads = _gradients(_scalar(value, batched), {"mean": mean, "scale_tril": scale_tril})
            return _numpy((grads["mean"], torch.tril(grads["scale_tril"])))
        params = {key: leaf(q[key]) for key in parametrisation.keys}
        value = fn(setting.convert(model), params, *converted)
        grads = _gradients(_scalar(value, batched), params)
        kinds = getattr(parametrisation, "_key_kinds", ())
        kinds = kinds if len(kinds) == len(parametrisation.keys) else ("",) * len(grads)
        return {
            key: _numpy(_MASKS[kind](grad) if kind in _MASKS else grad)
            for (key, grad), kind in zip(grads.items(), kinds, strict=True)
        }

    return gradient


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
        The ELBO code under test, with the signature of its mode (above).
    dtype : torch.dtype
        The dtype of every tensor ``fn`` receives (default ``torch.float64``). Below
        float64 the verifier is told (its ``dtype=``), so its tolerances follow.
    device : str or torch.device
        Where those tensors live (default ``"cpu"``).
    parametrisation : Parametrisation, optional
        Differentiate in these parameters instead of q's ``(mean, scale_tril)``.
    **options
        Every other option of :func:`elbo_check.testing.verify_elbo_gradient`
        (``mode``, ``form``, ``batch_size``, ``max_examples``, ``calls``, ...).

    Returns
    -------
    VerificationReport

    Raises
    ------
    AssertionError
        When autograd's gradient of ``fn`` is wrong, with the verifier's diagnosis.
    InvalidTypeError, InvalidInputError
        For a ``fn`` that is not callable, a ``dtype`` that is not a torch floating dtype,
        a ``device`` torch cannot use, or a return autograd cannot differentiate.

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
    setting = _setting(fn, dtype, device)
    batched = options.get("batch_size") is not None
    gradient = _gradient_of(fn, setting, parametrisation, batched)
    return _verify_elbo_gradient(
        gradient, parametrisation=parametrisation, **_options(setting, options)
    )
