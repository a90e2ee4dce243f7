r"""Reference values of multi-sample bound estimators (IWAE, Rényi) and their gradients.

Everything here is the verifier's own computation, from the model's closed forms, made
before a user's function runs. With :math:`z_k = m + L\varepsilon_k` (:math:`k = 1..n`)
and log weights :math:`\ell_k = \log p(x, z_k) - \log q(z_k)`, the Rényi estimate is

.. math::
    \hat L_\alpha = \frac{1}{1-\alpha}\log\frac1n\sum_k e^{(1-\alpha)\ell_k}
    \quad(\alpha \ne 1), \qquad \hat L_1 = \frac1n\sum_k \ell_k,

and :math:`\alpha = 0` is the IWAE estimate. Its gradient estimators in :math:`(m, L)`
are built from the per-sample *path* term :math:`\nabla_z\ell(z_k)` carried through
:math:`z_k = m + L\varepsilon_k`, and the *score* :math:`\nabla_\phi\log q_\phi(z_k)` at
fixed :math:`z_k` (which enters :math:`\ell_k` with a minus sign); with the normalised
weights :math:`\tilde w_k = \operatorname{softmax}((1-\alpha)\ell)_k`:

- ``"reparameterised"``: :math:`\sum_k\tilde w_k(\text{path}_k - \text{score}_k)`, the
  gradient of :math:`\hat L_\alpha` at fixed noise (what autodiff gives);
- ``"stl"`` (sticking the landing): :math:`\sum_k\tilde w_k\,\text{path}_k`;
- ``"dreg"`` (doubly reparameterised, IWAE only): :math:`\sum_k\tilde w_k^2\,\text{path}_k`;
- ``"vimco"`` (score function with leave-one-out baselines, IWAE only):
  :math:`\sum_k(\hat L - \hat L_{-k})\,\text{score}_k - \sum_k\tilde w_k\,\text{score}_k`,
  :math:`\hat L_{-k}` with :math:`\ell_k` replaced by the mean of the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy.linalg
import scipy.special
from hypothesis import strategies as st
from numpy.typing import NDArray

from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ._form_pieces import _joint_scores

FloatArray = NDArray[np.float64]

#: The gradient estimators, and the alphas each is defined for (None: every alpha).
GRADIENT_ESTIMATORS: dict[str, float | None] = {
    "reparameterised": None,
    "stl": None,
    "dreg": 0.0,
    "vimco": 0.0,
}

#: Estimators whose every draw is exactly zero at q = p(z|x) (the path term vanishes).
ZERO_AT_POSTERIOR = frozenset({"stl", "dreg"})

#: Reference draws are made in chunks of at most this many log weights.
_CHUNK = 2**18


#: The values pathwise searches draw noise entries from, in the order they shrink to: a
#: grid on [-3, 3] with a few generic values. One choice per entry keeps the search of
#: k x K entries cheap (a float per entry costs hypothesis ten times as much to shrink)
#: without losing anything an exact comparison needs.
NOISE_VALUES = (
    0.0,
    1.0,
    -1.0,
    0.5,
    -0.5,
    2.0,
    -2.0,
    1.5,
    -1.5,
    3.0,
    -3.0,
    2.5,
    -2.5,
    0.37,
    -1.23,
    2.71,
    -0.83,
)


def noise_entries(count: int) -> st.SearchStrategy[list[float]]:
    """``count`` noise entries for a pathwise search (see :data:`NOISE_VALUES`)."""
    return st.lists(st.sampled_from(NOISE_VALUES), min_size=count, max_size=count)


def samples(q: Gaussian, eps: FloatArray) -> FloatArray:
    """``z = m + L eps`` for noise of shape ``(..., K)``."""
    return q.mean + eps @ q.scale_tril.T


def log_weights(
    model: LinearGaussianModel, q: Gaussian, x: FloatArray, z: FloatArray
) -> FloatArray:
    r""":math:`\log p(x, z) - \log q(z)` over the leading axes of ``z``."""
    return np.asarray(model.log_joint(x, z) - q.log_prob(z), dtype=np.float64)


def renyi_estimates(log_w: FloatArray, alpha: float) -> FloatArray:
    r""":math:`\hat L_\alpha` over the last axis of ``log_w`` (the samples)."""
    n = log_w.shape[-1]
    if alpha == 1.0:
        return np.asarray(np.mean(log_w, axis=-1))
    scaled = (1.0 - alpha) * log_w
    return np.asarray((scipy.special.logsumexp(scaled, axis=-1) - math.log(n)) / (1.0 - alpha))


def log_weight_sizes(
    model: LinearGaussianModel, q: Gaussian, x: FloatArray, z: FloatArray
) -> FloatArray:
    r""":math:`|\log p(x, z)| + |\log q(z)|`: the size of the terms each log weight is a
    difference of (rounding errors are relative to it)."""
    return np.asarray(np.abs(model.log_joint(x, z)) + np.abs(q.log_prob(z)), dtype=np.float64)


def reference_estimates(
    model: LinearGaussianModel,
    q: Gaussian,
    x: FloatArray,
    n: int,
    count: int,
    rng: np.random.Generator,
    estimate: Callable[[FloatArray], FloatArray],
) -> FloatArray:
    """``count`` independent draws of ``estimate(log weights of n samples)``; the
    result has ``count`` rows (one value, or one row of suspect values, each)."""
    rows = max(1, _CHUNK // max(n * q.dim, 1))
    out = []
    done = 0
    while done < count:
        size = min(rows, count - done)
        eps = rng.standard_normal((size, n, q.dim))
        out.append(np.asarray(estimate(log_weights(model, q, x, samples(q, eps)))))
        done += size
    return np.concatenate(out, axis=0)


# ---------------------------------------------------------------------- gradients
Pieces = tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]
Coefficients = Callable[[FloatArray, float], tuple[FloatArray, FloatArray]]


def gradient_pieces(
    model: LinearGaussianModel, q: Gaussian, x: FloatArray, eps: FloatArray
) -> Pieces:
    """For noise ``(..., n, K)``: log weights ``(..., n)``, the path terms in m and L
    ``(..., n, K)`` and ``(..., n, K, K)``, and the scores in m and L (same shapes)."""
    factor = q.scale_tril
    z = samples(q, eps)
    joint, _ = _joint_scores(model, x, z.reshape(-1, q.dim))
    joint = joint.reshape(z.shape)
    # grad_z log q(z) = -Sigma^{-1}(z - m) = -L^{-T} eps, and the score in m is +L^{-T} eps
    solved = scipy.linalg.solve_triangular(
        factor.T, eps.reshape(-1, q.dim).T, lower=False
    ).T.reshape(eps.shape)
    path_m = joint + solved
    path_l = np.tril(path_m[..., :, None] * eps[..., None, :])
    inverse_t = scipy.linalg.solve_triangular(factor.T, np.eye(q.dim), lower=False)  # L^{-T}
    outer = eps[..., :, None] * eps[..., None, :] - np.eye(q.dim)
    score_l = np.tril(inverse_t @ outer)
    log_w = log_weights(model, q, x, z)
    return log_w, path_m, path_l, solved, score_l


def normalised_weights(log_w: FloatArray, alpha: float) -> FloatArray:
    r""":math:`\operatorname{softmax}((1-\alpha)\ell)` over the samples."""
    return np.asarray(scipy.special.softmax((1.0 - alpha) * log_w, axis=-1))


def _leave_one_out(log_w: FloatArray) -> FloatArray:
    r""":math:`\hat L - \hat L_{-k}` for each sample (VIMCO's geometric-mean baseline)."""
    n = log_w.shape[-1]
    others = (log_w.sum(axis=-1, keepdims=True) - log_w) / (n - 1)
    full = scipy.special.logsumexp(log_w, axis=-1)
    out = np.empty_like(log_w)
    for k in range(n):
        replaced = log_w.copy()
        replaced[..., k] = others[..., k]
        out[..., k] = full - scipy.special.logsumexp(replaced, axis=-1)
    return out


def _reparameterised(log_w: FloatArray, alpha: float) -> tuple[FloatArray, FloatArray]:
    weights = normalised_weights(log_w, alpha)
    return weights, -weights


def _stl(log_w: FloatArray, alpha: float) -> tuple[FloatArray, FloatArray]:
    weights = normalised_weights(log_w, alpha)
    return weights, np.zeros_like(weights)


def _dreg(log_w: FloatArray, alpha: float) -> tuple[FloatArray, FloatArray]:
    weights = normalised_weights(log_w, alpha)
    return weights**2, np.zeros_like(weights)


def _vimco(log_w: FloatArray, alpha: float) -> tuple[FloatArray, FloatArray]:
    weights = normalised_weights(log_w, alpha)
    return np.zeros_like(weights), _leave_one_out(log_w) - weights


#: Each estimator as coefficients of the per-sample path terms and scores.
COEFFICIENTS: dict[str, Coefficients] = {
    "reparameterised": _reparameterised,
    "stl": _stl,
    "dreg": _dreg,
    "vimco": _vimco,
}


def combine(pieces: Pieces, coefficients: tuple[FloatArray, FloatArray]) -> FloatArray:
    """The gradient ``sum_k a_k path_k + b_k score_k`` as rows ``(..., K + K(K+1)/2)``:
    m, then L's lower triangle row by row."""
    _, path_m, path_l, score_m, score_l = pieces
    a, b = coefficients
    grad_m = np.einsum("...n,...nk->...k", a, path_m) + np.einsum("...n,...nk->...k", b, score_m)
    grad_l = np.einsum("...n,...nkj->...kj", a, path_l) + np.einsum(
        "...n,...nkj->...kj", b, score_l
    )
    rows, cols = np.tril_indices(path_m.shape[-1])
    return np.concatenate([grad_m, grad_l[..., rows, cols]], axis=-1)


def flat_gradient_estimates(
    model: LinearGaussianModel,
    q: Gaussian,
    x: FloatArray,
    eps: FloatArray,
    alpha: float,
    estimator: str,
) -> FloatArray:
    """The estimator's gradient for noise ``(..., n, K)`` as rows ``(..., K + K(K+1)/2)``
    (see :func:`combine`)."""
    pieces = gradient_pieces(model, q, x, eps)
    return combine(pieces, COEFFICIENTS[estimator](pieces[0], alpha))


def gradient_sizes(
    model: LinearGaussianModel, q: Gaussian, x: FloatArray, eps: FloatArray
) -> FloatArray:
    """Per flat coordinate, the summed sizes of the per-sample terms a gradient estimate
    combines (its rounding errors are relative to them)."""
    log_w, path_m, path_l, score_m, score_l = gradient_pieces(model, q, x, eps)
    ones = np.ones_like(log_w)
    return combine(
        (log_w, np.abs(path_m), np.abs(path_l), np.abs(score_m), np.abs(score_l)), (ones, ones)
    )
