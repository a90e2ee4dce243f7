"""How :mod:`elbo_check.contrib.torch` calls the user's function: tensor views, autograd.

Private; :mod:`elbo_check.contrib.torch` re-exports :class:`TorchModel` and
:class:`TorchGaussian` and documents the behaviour. Here: the tensor views of a model
and a Gaussian, the checks of ``dtype`` and ``device``, the wrapper that hands the
user's function tensors and reads its return back as numpy, and the gradient function
that runs :func:`torch.autograd.grad` of the user's value.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._errors import InvalidInputError, InvalidTypeError
from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ..testing import Parametrisation

try:
    import torch
except ImportError as err:  # pragma: no cover - exercised without torch
    raise ImportError(
        "elbo_check.contrib.torch needs PyTorch, which is not installed; install the CPU "
        "wheel with: pip install torch --index-url https://download.pytorch.org/whl/cpu"
    ) from err

Tensor = torch.Tensor


# ---------------------------------------------------------------------- tensor views
@dataclass(frozen=True)
class TorchModel:
    """A :class:`~elbo_check.LinearGaussianModel` as tensors (copies).

    ``z ~ N(prior_mean, prior_cov)``, ``x | z ~ N(weights @ z + bias, noise_cov)``. The
    verifiers of :mod:`elbo_check.contrib.torch` hand your function one in place of the
    model; :func:`~elbo_check.contrib.torch.as_torch` makes one. The fields are stored
    as given (no checks), as attributes of the same names; the instance is frozen.

    Parameters
    ----------
    weights : torch.Tensor
        ``W``, shape ``(D, K)``.
    bias : torch.Tensor
        ``b``, shape ``(D,)``.
    prior_mean : torch.Tensor
        The prior mean ``mu0``, shape ``(K,)``.
    prior_cov : torch.Tensor
        The prior covariance ``S0``, shape ``(K, K)``.
    prior_scale_tril : torch.Tensor
        The lower Cholesky factor of ``prior_cov``, shape ``(K, K)``.
    noise_cov : torch.Tensor
        The noise covariance ``Psi`` as a dense ``(D, D)`` matrix, whatever its kind
        (isotropic and diagonal noise included).
    numpy : LinearGaussianModel
        The model these tensors were copied from, with its exact oracle methods
        (``numpy.log_evidence(x)``, ``numpy.elbo(q, x)``, ...).

    Raises
    ------
    TypeError
        If a field is missing or unknown (the generated ``__init__``); the values are
        not checked.

    Examples
    --------
    The marginal ``x ~ N(W mu0 + b, W S0 W^T + Psi)`` from the tensors, against the
    oracle's log-evidence:

    >>> import pytest; torch = pytest.importorskip("torch")
    >>> from elbo_check import ppca
    >>> from elbo_check.contrib.torch import as_torch
    >>> model = as_torch(ppca(weights=[[1.0, 0.5]], mean=[0.2], noise_variance=0.5))
    >>> model.weights.shape, model.noise_cov
    (torch.Size([1, 2]), tensor([[0.5000]], dtype=torch.float64))
    >>> marginal = torch.distributions.MultivariateNormal(
    ...     model.weights @ model.prior_mean + model.bias,
    ...     model.weights @ model.prior_cov @ model.weights.mT + model.noise_cov)
    >>> x = torch.tensor([0.7], dtype=torch.float64)
    >>> print(f"{marginal.log_prob(x).item():.6f} {model.numpy.log_evidence([0.7]):.6f}")
    -1.270175 -1.270175
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

    The verifiers of :mod:`elbo_check.contrib.torch` hand your function one for each
    Gaussian (``q``; ``p`` and ``q`` of a KL); :func:`~elbo_check.contrib.torch.as_torch`
    makes one. The fields are stored as given (no checks), as attributes of the same
    names; the instance is frozen.

    Parameters
    ----------
    mean : torch.Tensor
        The mean, shape ``(..., K)``.
    scale_tril : torch.Tensor
        The lower Cholesky factor ``L`` of the covariance, ``(K, K)`` (shared by a
        batch) or ``(..., K, K)`` (one per member).
    cov : torch.Tensor
        The covariance ``L L^T``, of the shape of ``scale_tril``. In
        :func:`~elbo_check.contrib.torch.verify_elbo_gradient` it is computed as
        ``scale_tril @ scale_tril.mT``, so that gradients flow through it to
        ``scale_tril``.

    Raises
    ------
    TypeError
        If a field is missing or unknown (the generated ``__init__``); the values are
        not checked.

    Examples
    --------
    >>> import pytest; torch = pytest.importorskip("torch")
    >>> from elbo_check import Gaussian
    >>> from elbo_check.contrib.torch import as_torch
    >>> q = as_torch(Gaussian.from_covariance(mean=[0.0, 1.0], cov=[[4.0, 1.0], [1.0, 2.0]]))
    >>> bool(torch.allclose(q.scale_tril @ q.scale_tril.mT, q.cov))
    True
    >>> q.mean.dtype, q.scale_tril.shape
    (torch.float64, torch.Size([2, 2]))
    """

    mean: Tensor
    scale_tril: Tensor
    cov: Tensor


def tensor(value: Any, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A copy of ``value`` (numpy arrays may be read-only) as a tensor."""
    return torch.tensor(np.array(value, dtype=np.float64), dtype=dtype, device=device)


def check_dtype(dtype: Any) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InvalidTypeError(
            "dtype must be a torch floating dtype (torch.float64, torch.float32, ...); "
            f"got dtype={dtype!r}"
        )
    return dtype


def check_device(device: Any) -> torch.device:
    try:
        chosen = torch.device(device)
        torch.empty(0, device=chosen)
    except (RuntimeError, TypeError, AssertionError) as err:
        raise InvalidInputError(
            f"device must be a device torch can use (e.g. 'cpu'); got device={device!r}: {err}"
        ) from err
    return chosen


def views(value: Any, dtype: torch.dtype, device: torch.device) -> TorchModel | TorchGaussian:
    """The tensor view of a model or a Gaussian, in a checked ``dtype`` and ``device``."""
    if isinstance(value, LinearGaussianModel):
        return TorchModel(
            weights=tensor(value.weights, dtype, device),
            bias=tensor(value.bias, dtype, device),
            prior_mean=tensor(value.prior.mean, dtype, device),
            prior_cov=tensor(value.prior.cov, dtype, device),
            prior_scale_tril=tensor(value.prior.scale_tril, dtype, device),
            noise_cov=tensor(value.dense_noise_cov(), dtype, device),
            numpy=value,
        )
    if isinstance(value, Gaussian):
        return TorchGaussian(
            mean=tensor(value.mean, dtype, device),
            scale_tril=tensor(value.scale_tril, dtype, device),
            cov=tensor(value.cov, dtype, device),
        )
    raise InvalidTypeError(
        f"as_torch takes a LinearGaussianModel or a Gaussian; got {type(value).__name__}"
    )


# ---------------------------------------------------------------------- plumbing
@dataclass(frozen=True)
class Setting:
    """The dtype and device the user's code runs in."""

    dtype: torch.dtype
    device: torch.device

    def convert(self, value: Any) -> Any:
        """Models and Gaussians as tensor views, arrays as tensors; anything else as is."""
        if isinstance(value, (LinearGaussianModel, Gaussian)):
            return views(value, self.dtype, self.device)
        if isinstance(value, np.ndarray):
            return tensor(value, self.dtype, self.device)
        if isinstance(value, np.random.Generator):
            generator = torch.Generator(device=self.device)
            return generator.manual_seed(int(value.integers(2**63)))
        return value


def setting(fn: Any, dtype: Any, device: Any) -> Setting:
    if not callable(fn):
        raise InvalidTypeError(f"fn must be callable; got {type(fn).__name__} {fn!r:.60}")
    return Setting(check_dtype(dtype), check_device(device))


def as_numpy(value: Any) -> Any:
    """A returned tensor (or a tuple or dict of them) as numpy; float32 stays float32."""
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, (tuple, list)):
        return type(value)(as_numpy(v) for v in value)
    if isinstance(value, dict):
        return {k: as_numpy(v) for k, v in value.items()}
    return value


def options(chosen: Setting, given: dict[str, Any]) -> dict[str, Any]:
    """The verifier's options: the user's, plus ``dtype=`` below float64 (its tolerances)."""
    if chosen.dtype != torch.float64:
        return {**given, "dtype": chosen.dtype}
    return given


def wrapped(fn: Callable[..., Any], chosen: Setting) -> Callable[..., Any]:
    """``fn`` called on tensor views of the verifier's arguments, its return as numpy."""

    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        return as_numpy(fn(*(chosen.convert(a) for a in args)))

    return call


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


def gradient_of(
    fn: Callable[..., Any],
    chosen: Setting,
    parametrisation: Parametrisation | None,
    batched: bool,
) -> Callable[..., Any]:
    """A gradient function for the verifier: autograd of ``fn``'s value."""

    def leaf(array: Any) -> Tensor:
        return tensor(array, chosen.dtype, chosen.device).requires_grad_()

    @functools.wraps(fn)
    def gradient(model: Any, q: Any, *rest: Any) -> Any:
        converted = [chosen.convert(a) for a in rest]
        if parametrisation is None:
            mean, scale_tril = leaf(q.mean), leaf(q.scale_tril)
            view = TorchGaussian(mean, scale_tril, scale_tril @ scale_tril.mT)
            value = fn(chosen.convert(model), view, *converted)
            grads = _gradients(_scalar(value, batched), {"mean": mean, "scale_tril": scale_tril})
            return as_numpy((grads["mean"], torch.tril(grads["scale_tril"])))
        params = {key: leaf(q[key]) for key in parametrisation.keys}
        value = fn(chosen.convert(model), params, *converted)
        grads = _gradients(_scalar(value, batched), params)
        kinds = getattr(parametrisation, "_key_kinds", ())
        kinds = kinds if len(kinds) == len(parametrisation.keys) else ("",) * len(grads)
        return {
            key: as_numpy(_MASKS[kind](grad) if kind in _MASKS else grad)
            for (key, grad), kind in zip(grads.items(), kinds, strict=True)
        }

    return gradient
