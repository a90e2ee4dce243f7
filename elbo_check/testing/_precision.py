r"""Tolerances that follow the precision of the user's code.

Correct code that computes in float32 differs from the float64 oracle by rounding far
above the float64 default ``rtol = 1e-6``. When the caller leaves ``rtol`` at its
default, the verifiers widen it for code whose returns are float32 (or float16,
bfloat16), or that declares ``dtype=``, to

.. math::
    \mathrm{rtol} = \max\bigl(10^{-6},\; s\,\varepsilon\,(D + K)\,\kappa\bigr),

with :math:`\varepsilon` the dtype's machine epsilon, :math:`\kappa` the largest
condition number among the problem's q covariances and a bound on those of its
marginal covariance and posterior precision,
:math:`\max(\kappa(\Sigma_0), \kappa(\Psi))\,(1 + \lVert V\rVert_2^2)` with :math:`V` the
whitened loadings :math:`\Psi^{-1/2} W L_0`, and :math:`s` = :data:`PRECISION_SAFETY`.
Measured on 400 problems drawn by :func:`elbo_check.strategies.elbo_problems`
(condition numbers 1 to 1e3), a textbook float32 ELBO (Cholesky solves) erred by at
most 0.59 :math:`\varepsilon (D+K)\kappa'` of the terms' magnitude with the smaller
:math:`\kappa'` of the prior, noise and q covariances alone, so
:data:`PRECISION_SAFETY` = 8 leaves a factor 14. That :math:`\kappa'` missed the
conditioning the loadings add: a float32 log-evidence with :math:`\kappa' = 1` and
:math:`\kappa(C) \approx 2\times 10^3` erred by 4.5e-6 relative, above its tolerance of
2.9e-6; the :math:`\kappa` above, never smaller than :math:`\kappa'`, covers it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from .._errors import InvalidInputError
from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ._progress import Progress

__all__ = ["DEFAULT_RTOL", "PRECISION_SAFETY", "check_dtype", "problem_size", "widened"]

#: The verifiers' default relative tolerance, for float64 code.
DEFAULT_RTOL = 1e-6

#: The factor :math:`s` in the float32 tolerance (see the module docstring).
PRECISION_SAFETY = 8.0

_NAMES = {"float16": np.float16, "float32": np.float32, "float64": np.float64}


def check_dtype(value: Any) -> np.dtype[Any] | None:
    """None, or the floating dtype named by ``value`` (a numpy, torch or JAX dtype, or
    one of ``"float16"``, ``"bfloat16"``, ``"float32"``, ``"float64"``)."""
    if value is None:
        return None
    name = str(value).replace("torch.", "").replace("<class 'numpy.", "").rstrip("'>")
    if name == "bfloat16":
        return np.dtype(np.float32)  # at least as coarse as float32 (8-bit mantissa)
    if name in _NAMES:
        named: np.dtype[Any] = np.dtype(_NAMES[name])
        return named
    dtype: np.dtype[Any] | None
    try:
        dtype = np.dtype(value)
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind != "f":
        raise InvalidInputError(
            "dtype must be None or a floating dtype (float16, bfloat16, float32, float64; "
            f"numpy, torch or JAX); got dtype={value!r}"
        )
    return dtype


def _tril_condition(factor: Any) -> float:
    diagonal = np.abs(np.diagonal(np.asarray(factor), axis1=-2, axis2=-1))
    return float((np.max(diagonal) / np.min(diagonal)) ** 2) if diagonal.size else 1.0


def _walk(case: Any, found: list[tuple[int, float]]) -> None:
    if isinstance(case, LinearGaussianModel):
        noise = np.asarray(case.noise_cov, dtype=np.float64)
        if noise.ndim == 2:
            eigenvalues = np.linalg.eigvalsh(noise)
            noise_condition = float(eigenvalues[-1] / eigenvalues[0])
        else:
            noise_condition = float(np.max(noise) / np.min(noise))
        # The marginal covariance C = Psi^1/2 (I + V V^T) Psi^1/2 (V = Psi^-1/2 W L0)
        # has cond(C) <= cond(Psi) (1 + |V|_2^2); the posterior precision
        # L0^-T (I + V^T V) L0^-1 likewise with cond(S0).
        spread = 1.0 + float(np.linalg.norm(case._marginal.whitened_loadings, 2)) ** 2
        prior_condition = _tril_condition(case.prior.scale_tril)
        condition = max(prior_condition, noise_condition) * spread
        found.append((case.data_dim + case.latent_dim, condition))
    elif isinstance(case, Gaussian):
        found.append((2 * case.dim, _tril_condition(case.scale_tril)))
    elif isinstance(case, (tuple, list)):
        for part in case:
            _walk(part, found)
    elif isinstance(case, dict):
        for part in case.values():
            _walk(part, found)
    elif dataclasses.is_dataclass(case) and not isinstance(case, type):
        for field in dataclasses.fields(case):
            _walk(getattr(case, field.name), found)


def problem_size(case: Any) -> tuple[int, float]:
    """``(D + K, kappa)`` of a verifier's case: the largest dimension count and condition
    number among the models and Gaussians it holds."""
    found: list[tuple[int, float]] = []
    _walk(case, found)
    if not found:
        return 1, 1.0
    return max(d for d, _ in found), max(1.0, *(c for _, c in found))


def precision_rtol(dtype: np.dtype[Any], case: Any) -> float:
    """The relative tolerance for code computing in ``dtype`` on ``case``."""
    dims, condition = problem_size(case)
    eps = float(np.finfo(dtype).eps)
    return max(DEFAULT_RTOL, PRECISION_SAFETY * eps * dims * condition)


def widened(progress: Progress | None, case: Any, tolerance: float) -> float:
    """``tolerance`` (computed with the default ``rtol``) widened for the precision of the
    user's code, when the caller left ``rtol`` at its default."""
    if progress is None or not progress.default_rtol or progress.dtype is None:
        return tolerance
    if progress.dtype.itemsize >= 8:
        return tolerance
    progress.tolerance_widened = True
    return tolerance * precision_rtol(progress.dtype, case) / DEFAULT_RTOL
