"""A held-out set of realistic buggy ELBO / KL / log-evidence code, for the diagnosis.

Written BEFORE the diagnosis machinery (``elbo_check/testing/_diagnosis.py``,
``_suspects.py``) was changed to name them, and independently of the kill matrix
(``tests/buggy_implementations.py``): plain numpy on ``model.weights``, ``model.bias``,
``model.prior.mean`` / ``.cov``, ``model.noise_cov`` (scalar, ``(D,)`` variances or a
``(D, D)`` matrix) and ``q.mean`` / ``q.cov`` / ``q.scale_tril``, the way a user writes
it. Each entry names its mistake and lists what a correct diagnosis must say
(``accept``: alternatives, each a tuple of keywords that must all appear, case-
insensitively, in one name on a ``Diagnosis:`` line). Some bugs have no nameable
structure (``accept`` empty): for those any name is wrong and "no known bug matches" is
the right answer.

``measure(seed)`` runs every verifier with default settings and sorts the bugs into
named correctly / named wrongly / not named / not caught.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from elbo_check import testing

LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- helpers
def psi_of(model: Any) -> np.ndarray:
    noise = np.asarray(model.noise_cov, dtype=float)
    d = model.weights.shape[0]
    if noise.ndim == 0:
        return float(noise) * np.eye(d)
    if noise.ndim == 1:
        return np.diag(noise)
    return noise


def slogdet(a: np.ndarray) -> float:
    return float(np.linalg.slogdet(a)[1])


def ell_with(model: Any, m: np.ndarray, s: np.ndarray, x: np.ndarray, psi: np.ndarray) -> float:
    """E_q log N(x; W z + b, psi) for q = N(m, s)."""
    w, b = model.weights, model.bias
    inv = np.linalg.inv(psi)
    r = x - w @ m - b
    return float(
        -0.5 * (len(x) * LOG_2PI + slogdet(psi) + r @ inv @ r + np.trace(inv @ w @ s @ w.T))
    )


def kl_gauss(m1: np.ndarray, s1: np.ndarray, m0: np.ndarray, s0: np.ndarray) -> float:
    """KL(N(m1, s1) || N(m0, s0))."""
    inv = np.linalg.inv(s0)
    d = m1 - m0
    return float(0.5 * (np.trace(inv @ s1) + d @ inv @ d - len(m1) + slogdet(s0) - slogdet(s1)))


def log_gauss(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> float:
    d = x - mean
    return float(-0.5 * (len(x) * LOG_2PI + slogdet(cov) + d @ np.linalg.solve(cov, d)))


def _parts(model: Any, q: Any, x: np.ndarray) -> tuple[float, float]:
    ell = ell_with(model, q.mean, q.cov, x, psi_of(model))
    kl = kl_gauss(q.mean, q.cov, model.prior.mean, model.prior.cov)
    return ell, kl


# =========================================================================== ELBO
def elbo_isotropic_noise_assumed(model: Any, q: Any, x: np.ndarray) -> float:
    # "noise is sigma^2 I": sigma^2 taken as the average noise variance.
    psi = psi_of(model)
    sigma2 = float(np.mean(np.diag(psi)))
    ell = ell_with(model, q.mean, q.cov, x, sigma2 * np.eye(len(x)))
    return ell - kl_gauss(q.mean, q.cov, model.prior.mean, model.prior.cov)


def elbo_diagonal_noise_assumed(model: Any, q: Any, x: np.ndarray) -> float:
    # Mean-field noise: only the noise variances are read.
    psi = np.diag(np.diag(psi_of(model)))
    ell = ell_with(model, q.mean, q.cov, x, psi)
    return ell - kl_gauss(q.mean, q.cov, model.prior.mean, model.prior.cov)


def elbo_noise_precision_as_cov(model: Any, q: Any, x: np.ndarray) -> float:
    # The noise precision Psi^-1 plugged in where the covariance belongs.
    psi = np.linalg.inv(psi_of(model))
    ell = ell_with(model, q.mean, q.cov, x, psi)
    return ell - kl_gauss(q.mean, q.cov, model.prior.mean, model.prior.cov)


def elbo_prior_logdet_sign(model: Any, q: Any, x: np.ndarray) -> float:
    m, s, mu0, s0 = q.mean, q.cov, model.prior.mean, model.prior.cov
    inv = np.linalg.inv(s0)
    kl = 0.5 * (np.trace(inv @ s) + (m - mu0) @ inv @ (m - mu0) - len(m) - slogdet(s0) - slogdet(s))
    return ell_with(model, m, s, x, psi_of(model)) - float(kl)


def elbo_offset_sign(model: Any, q: Any, x: np.ndarray) -> float:
    w, b, m, s = model.weights, model.bias, q.mean, q.cov
    psi = psi_of(model)
    inv = np.linalg.inv(psi)
    r = x - w @ m + b  # sign slip
    ell = -0.5 * (len(x) * LOG_2PI + slogdet(psi) + r @ inv @ r + np.trace(inv @ w @ s @ w.T))
    return float(ell) - kl_gauss(m, s, model.prior.mean, model.prior.cov)


def elbo_likelihood_halved(model: Any, q: Any, x: np.ndarray) -> float:
    ell, kl = _parts(model, q, x)
    return 0.5 * ell - kl


def elbo_loss_returned(model: Any, q: Any, x: np.ndarray) -> float:
    ell, kl = _parts(model, q, x)
    return kl - ell  # the training loss


N_DATA = 200  # the dataset size the user's training loop divides by
BATCH = 16


def elbo_likelihood_over_n(model: Any, q: Any, x: np.ndarray) -> float:
    ell, kl = _parts(model, q, x)
    return ell / N_DATA - kl


def elbo_kl_beta(model: Any, q: Any, x: np.ndarray) -> float:
    beta = 4.0  # beta-VAE weight left in the evaluation code
    ell, kl = _parts(model, q, x)
    return ell - beta * kl


def elbo_kl_over_data_dim(model: Any, q: Any, x: np.ndarray) -> float:
    ell, kl = _parts(model, q, x)
    return ell - kl / len(x)


def elbo_kl_n_over_m(model: Any, q: Any, x: np.ndarray) -> float:
    # Minibatch rescaling N / M applied to the KL of a single observation.
    ell, kl = _parts(model, q, x)
    return ell - (N_DATA / BATCH) * kl


def elbo_mean_field_projection(model: Any, q: Any, x: np.ndarray) -> float:
    s = np.diag(np.diag(q.cov))  # "q is mean-field"
    ell = ell_with(model, q.mean, s, x, psi_of(model))
    return ell - kl_gauss(q.mean, s, model.prior.mean, model.prior.cov)


def elbo_log_q_at_mean(model: Any, q: Any, x: np.ndarray) -> float:
    # E_q[log p(x, z)] - log q(m): log q evaluated at q's mean, not averaged over q.
    m, s, mu0, s0 = q.mean, q.cov, model.prior.mean, model.prior.cov
    inv = np.linalg.inv(s0)
    e_log_prior = -0.5 * (
        len(m) * LOG_2PI + slogdet(s0) + np.trace(inv @ s) + (m - mu0) @ inv @ (m - mu0)
    )
    log_q_at_mean = -0.5 * (len(m) * LOG_2PI + slogdet(s))
    return ell_with(model, m, s, x, psi_of(model)) + float(e_log_prior) - log_q_at_mean


def elbo_prior_at_mean(model: Any, q: Any, x: np.ndarray) -> float:
    # log p(m) in place of E_q[log p(z)]: the prior's trace term is lost.
    m, s = q.mean, q.cov
    entropy = 0.5 * (len(m) * (1.0 + LOG_2PI) + slogdet(s))
    log_prior = log_gauss(m, model.prior.mean, model.prior.cov)
    return ell_with(model, m, s, x, psi_of(model)) + log_prior + entropy


def elbo_variance_as_scale_in_log_q(model: Any, q: Any, x: np.ndarray) -> float:
    # Entropy from "log det of the scale" computed on the covariance: log det S, not 1/2.
    m, s, mu0, s0 = q.mean, q.cov, model.prior.mean, model.prior.cov
    inv = np.linalg.inv(s0)
    e_log_prior = -0.5 * (
        len(m) * LOG_2PI + slogdet(s0) + np.trace(inv @ s) + (m - mu0) @ inv @ (m - mu0)
    )
    entropy = 0.5 * len(m) * (1.0 + LOG_2PI) + slogdet(s)
    return ell_with(model, m, s, x, psi_of(model)) + float(e_log_prior) + entropy


def elbo_float32(model: Any, q: Any, x: np.ndarray) -> float:
    f = np.float32
    w, b = model.weights.astype(f), model.bias.astype(f)
    psi = psi_of(model).astype(f)
    m, s = q.mean.astype(f), q.cov.astype(f)
    mu0, s0 = model.prior.mean.astype(f), model.prior.cov.astype(f)
    xf = np.asarray(x).astype(f)
    inv = np.linalg.inv(psi)
    r = xf - w @ m - b
    ell = -0.5 * (
        len(x) * f(LOG_2PI) + np.linalg.slogdet(psi)[1] + r @ inv @ r + np.trace(inv @ w @ s @ w.T)
    )
    s0i = np.linalg.inv(s0)
    dm = m - mu0
    kl = 0.5 * (
        np.trace(s0i @ s)
        + dm @ s0i @ dm
        - len(m)
        + np.linalg.slogdet(s0)[1]
        - np.linalg.slogdet(s)[1]
    )
    return float(ell - kl)


def elbo_iwae_returned(model: Any, q: Any, x: np.ndarray) -> float:
    # An importance-weighted bound (log-mean-exp over samples) returned as the ELBO.
    rng = np.random.default_rng(0)
    z = q.mean + rng.standard_normal((64, len(q.mean))) @ q.scale_tril.T
    psi = psi_of(model)
    log_w = np.array(
        [
            log_gauss(x, model.weights @ zi + model.bias, psi)
            + log_gauss(zi, model.prior.mean, model.prior.cov)
            - log_gauss(zi, q.mean, q.cov)
            for zi in z
        ]
    )
    top = log_w.max()
    return float(top + np.log(np.mean(np.exp(log_w - top))))


def elbo_trace_without_noise_inverse(model: Any, q: Any, x: np.ndarray) -> float:
    # Invented: tr(W S W^T) in the reconstruction, the Psi^-1 forgotten in that term only.
    w, b, m, s = model.weights, model.bias, q.mean, q.cov
    psi = psi_of(model)
    inv = np.linalg.inv(psi)
    r = x - w @ m - b
    ell = -0.5 * (len(x) * LOG_2PI + slogdet(psi) + r @ inv @ r + np.trace(w @ s @ w.T))
    return float(ell) - kl_gauss(m, s, model.prior.mean, model.prior.cov)


def elbo_kl_trace_prior_cov_not_inverse(model: Any, q: Any, x: np.ndarray) -> float:
    # Invented: tr(S0 S) in the KL where tr(S0^-1 S) belongs.
    m, s, mu0, s0 = q.mean, q.cov, model.prior.mean, model.prior.cov
    inv = np.linalg.inv(s0)
    kl = 0.5 * (np.trace(s0 @ s) + (m - mu0) @ inv @ (m - mu0) - len(m) + slogdet(s0) - slogdet(s))
    return ell_with(model, m, s, x, psi_of(model)) - float(kl)


def elbo_kl_plus_k(model: Any, q: Any, x: np.ndarray) -> float:
    # Invented: "+ K" in the KL instead of "- K".
    m, s, mu0, s0 = q.mean, q.cov, model.prior.mean, model.prior.cov
    inv = np.linalg.inv(s0)
    kl = 0.5 * (np.trace(inv @ s) + (m - mu0) @ inv @ (m - mu0) + len(m) + slogdet(s0) - slogdet(s))
    return ell_with(model, m, s, x, psi_of(model)) - float(kl)


def elbo_residual_at_prior_mean(model: Any, q: Any, x: np.ndarray) -> float:
    # Invented: the reconstruction residual uses the prior mean instead of q's mean.
    w, b, m, s = model.weights, model.bias, q.mean, q.cov
    psi = psi_of(model)
    inv = np.linalg.inv(psi)
    r = x - w @ model.prior.mean - b
    ell = -0.5 * (len(x) * LOG_2PI + slogdet(psi) + r @ inv @ r + np.trace(inv @ w @ s @ w.T))
    return float(ell) - kl_gauss(m, s, model.prior.mean, model.prior.cov)


def elbo_data_term_doubled(model: Any, q: Any, x: np.ndarray) -> float:
    # Invented: the squared residual without its 1/2.
    w, b, m, s = model.weights, model.bias, q.mean, q.cov
    psi = psi_of(model)
    inv = np.linalg.inv(psi)
    r = x - w @ m - b
    ell = -0.5 * (len(x) * LOG_2PI + slogdet(psi) + np.trace(inv @ w @ s @ w.T)) - r @ inv @ r
    return float(ell) - kl_gauss(m, s, model.prior.mean, model.prior.cov)


def elbo_entropy_without_2pi(model: Any, q: Any, x: np.ndarray) -> float:
    # Invented: cross-entropy form, H(q) written as K/2 + 1/2 log det S (log 2 pi dropped).
    m, s, mu0, s0 = q.mean, q.cov, model.prior.mean, model.prior.cov
    inv = np.linalg.inv(s0)
    e_log_prior = -0.5 * (
        len(m) * LOG_2PI + slogdet(s0) + np.trace(inv @ s) + (m - mu0) @ inv @ (m - mu0)
    )
    entropy = 0.5 * len(m) + 0.5 * slogdet(s)
    return ell_with(model, m, s, x, psi_of(model)) + float(e_log_prior) + entropy


# =========================================================================== KL
def kl_precision_in_trace(p: Any, q: Any) -> float:
    # tr(S_q S_p) instead of tr(S_q^-1 S_p).
    inv = np.linalg.inv(q.cov)
    d = q.mean - p.mean
    k = len(p.mean)
    log_dets = slogdet(q.cov) - slogdet(p.cov)
    return float(0.5 * (np.trace(q.cov @ p.cov) + d @ inv @ d - k + log_dets))


def kl_trace_without_half(p: Any, q: Any) -> float:
    inv = np.linalg.inv(q.cov)
    d = q.mean - p.mean
    k = len(p.mean)
    return float(np.trace(inv @ p.cov) + 0.5 * (d @ inv @ d - k + slogdet(q.cov) - slogdet(p.cov)))


def kl_q_mean_field(p: Any, q: Any) -> float:
    # Only q is treated as diagonal.
    sq = np.diag(np.diag(q.cov))
    return kl_gauss(p.mean, p.cov, q.mean, sq)


def kl_logdet_from_diagonal(p: Any, q: Any) -> float:
    # log det S taken as sum(log diag S) (true only for diagonal S).
    inv = np.linalg.inv(q.cov)
    d = q.mean - p.mean
    k = len(p.mean)
    log_dets = np.sum(np.log(np.diag(q.cov))) - np.sum(np.log(np.diag(p.cov)))
    return float(0.5 * (np.trace(inv @ p.cov) + d @ inv @ d - k + log_dets))


def kl_float32(p: Any, q: Any) -> float:
    f = np.float32
    sp, sq = p.cov.astype(f), q.cov.astype(f)
    inv = np.linalg.inv(sq)
    d = (q.mean - p.mean).astype(f)
    k = len(p.mean)
    value = 0.5 * (
        np.trace(inv @ sp) + d @ inv @ d - k + np.linalg.slogdet(sq)[1] - np.linalg.slogdet(sp)[1]
    )
    return float(value)


def kl_dimension_plus(p: Any, q: Any) -> float:
    # Invented: "+ K" where "- K" belongs.
    inv = np.linalg.inv(q.cov)
    d = q.mean - p.mean
    k = len(p.mean)
    return float(0.5 * (np.trace(inv @ p.cov) + d @ inv @ d + k + slogdet(q.cov) - slogdet(p.cov)))


def kl_negated(p: Any, q: Any) -> float:
    # Invented: returns E_p[log q - log p] (the sign of the whole KL flipped).
    return -kl_gauss(p.mean, p.cov, q.mean, q.cov)


# =========================================================================== evidence
def _marginal(model: Any, psi: np.ndarray, s0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    w = model.weights
    return w @ model.prior.mean + model.bias, w @ s0 @ w.T + psi


def evidence_isotropic_noise(model: Any, x: np.ndarray) -> float:
    psi = float(np.mean(np.diag(psi_of(model)))) * np.eye(len(x))
    mean, cov = _marginal(model, psi, model.prior.cov)
    return log_gauss(x, mean, cov)


def evidence_diagonal_noise(model: Any, x: np.ndarray) -> float:
    psi = np.diag(np.diag(psi_of(model)))
    mean, cov = _marginal(model, psi, model.prior.cov)
    return log_gauss(x, mean, cov)


def evidence_offset_sign(model: Any, x: np.ndarray) -> float:
    mean, cov = _marginal(model, psi_of(model), model.prior.cov)
    return log_gauss(x, mean - 2.0 * model.bias, cov)  # W mu0 - b


def evidence_prior_precision(model: Any, x: np.ndarray) -> float:
    mean, cov = _marginal(model, psi_of(model), np.linalg.inv(model.prior.cov))
    return log_gauss(x, mean, cov)


def evidence_marginal_precision_as_cov(model: Any, x: np.ndarray) -> float:
    mean, cov = _marginal(model, psi_of(model), model.prior.cov)
    return log_gauss(x, mean, np.linalg.inv(cov))


def evidence_mahalanobis_without_half(model: Any, x: np.ndarray) -> float:
    mean, cov = _marginal(model, psi_of(model), model.prior.cov)
    d = x - mean
    return float(-0.5 * (len(x) * LOG_2PI + slogdet(cov)) - d @ np.linalg.solve(cov, d))


def evidence_float32(model: Any, x: np.ndarray) -> float:
    f = np.float32
    mean, cov = _marginal(model, psi_of(model), model.prior.cov)
    cov32 = cov.astype(f)
    d = (np.asarray(x) - mean).astype(f)
    return float(
        -0.5 * (len(x) * f(LOG_2PI) + np.linalg.slogdet(cov32)[1] + d @ np.linalg.solve(cov32, d))
    )


def evidence_elbo_at_prior(model: Any, x: np.ndarray) -> float:
    # Invented: "log p(x) ~ ELBO" with q = the prior: E_prior[log p(x|z)].
    return ell_with(model, model.prior.mean, model.prior.cov, x, psi_of(model))


# =========================================================================== catalogue
@dataclass(frozen=True)
class HeldOut:
    name: str
    kind: str  # "elbo", "kl" or "evidence"
    fn: Callable[..., Any]
    accept: tuple[tuple[str, ...], ...]  # empty: nothing nameable; any name is wrong


_NOISE_ISO = (("isotropic",), ("noise", "scalar"))
_FLOAT32 = (("float32",), ("single precision",))
_LOSS = (("sign", "flipped"), ("loss",), ("negative",), ("elbo", "-1"))

HELDOUT: tuple[HeldOut, ...] = (
    HeldOut("elbo_isotropic_noise_assumed", "elbo", elbo_isotropic_noise_assumed, _NOISE_ISO),
    HeldOut(
        "elbo_diagonal_noise_assumed",
        "elbo",
        elbo_diagonal_noise_assumed,
        (("noise", "diagonal"), ("psi", "diagonal")),
    ),
    HeldOut(
        "elbo_noise_precision_as_cov",
        "elbo",
        elbo_noise_precision_as_cov,
        (("noise", "precision"), ("noise", "inverse"), ("psi", "inverse"), ("psi^-1",)),
    ),
    HeldOut(
        "elbo_prior_logdet_sign",
        "elbo",
        elbo_prior_logdet_sign,
        (("log det s0", "sign"), ("log det s0", "-1"), ("prior", "log det", "sign")),
    ),
    HeldOut(
        "elbo_offset_sign",
        "elbo",
        elbo_offset_sign,
        (("offset", "sign"), ("offset", "-b"), ("bias", "sign"), ("+ b",)),
    ),
    HeldOut(
        "elbo_likelihood_halved",
        "elbo",
        elbo_likelihood_halved,
        (("likelihood", "0.5"), ("likelihood", "1/2")),
    ),
    HeldOut("elbo_loss_returned", "elbo", elbo_loss_returned, _LOSS),
    HeldOut(
        "elbo_likelihood_over_n",
        "elbo",
        elbo_likelihood_over_n,
        (("likelihood", "0.005"), ("likelihood", "1/200")),
    ),
    HeldOut("elbo_kl_beta", "elbo", elbo_kl_beta, (("kl", "4"),)),
    HeldOut(
        "elbo_kl_over_data_dim",
        "elbo",
        elbo_kl_over_data_dim,
        (("kl", "1/d"), ("kl", "averaged", "data")),
    ),
    HeldOut("elbo_kl_n_over_m", "elbo", elbo_kl_n_over_m, (("kl", "12.5"),)),
    HeldOut(
        "elbo_mean_field_projection",
        "elbo",
        elbo_mean_field_projection,
        (("q", "diagonal"), ("mean-field",)),
    ),
    HeldOut(
        "elbo_log_q_at_mean",
        "elbo",
        elbo_log_q_at_mean,
        (("log q", "mean"), ("entropy", "k/2")),
    ),
    HeldOut(
        "elbo_prior_at_mean",
        "elbo",
        elbo_prior_at_mean,
        (("prior", "mean", "trace"), ("tr(s0^-1 s)", "missing"), ("log p(z)", "mean")),
    ),
    HeldOut(
        "elbo_variance_as_scale_in_log_q",
        "elbo",
        elbo_variance_as_scale_in_log_q,
        (("log det s", "2"), ("entropy", "log det", "2")),
    ),
    HeldOut("elbo_float32", "elbo", elbo_float32, (("float32",), ("single precision",))),
    HeldOut("elbo_iwae_returned", "elbo", elbo_iwae_returned, ()),
    HeldOut(
        "elbo_trace_without_noise_inverse",
        "elbo",
        elbo_trace_without_noise_inverse,
        (("trace", "psi", "identity"), ("trace", "psi^-1", "missing"), ("trace", "psi", "i")),
    ),
    HeldOut(
        "elbo_kl_trace_prior_cov_not_inverse",
        "elbo",
        elbo_kl_trace_prior_cov_not_inverse,
        (("tr(s0^-1 s)", "s0", "inverse"), ("trace", "s0", "inverse"), ("tr(s0 s)",)),
    ),
    HeldOut(
        "elbo_kl_plus_k",
        "elbo",
        elbo_kl_plus_k,
        (("k", "sign"), ("-k", "+k"), ("constant", "k")),
    ),
    HeldOut("elbo_residual_at_prior_mean", "elbo", elbo_residual_at_prior_mean, ()),
    HeldOut(
        "elbo_data_term_doubled",
        "elbo",
        elbo_data_term_doubled,
        (("residual", "2"), ("data term", "2"), ("mahalanobis", "2")),
    ),
    HeldOut(
        "elbo_entropy_without_2pi",
        "elbo",
        elbo_entropy_without_2pi,
        (("2 pi", "entropy"), ("log(2 pi)", "k")),
    ),
    HeldOut(
        "kl_precision_in_trace",
        "kl",
        kl_precision_in_trace,
        (("trace", "inverse"), ("trace", "precision"), ("tr(s_q s_p)",)),
    ),
    HeldOut(
        "kl_trace_without_half",
        "kl",
        kl_trace_without_half,
        (("trace", "2"), ("trace", "1/2")),
    ),
    HeldOut(
        "kl_q_mean_field",
        "kl",
        kl_q_mean_field,
        (("q", "diagonal"), ("second", "diagonal"), ("s_q", "diagonal")),
    ),
    HeldOut(
        "kl_logdet_from_diagonal",
        "kl",
        kl_logdet_from_diagonal,
        (("log det", "diagonal"), ("log-det", "diagonal")),
    ),
    HeldOut("kl_float32", "kl", kl_float32, (("float32",), ("single precision",))),
    HeldOut(
        "kl_dimension_plus",
        "kl",
        kl_dimension_plus,
        (("k", "sign"), ("dimension term", "sign"), ("-k", "+k")),
    ),
    HeldOut("kl_negated", "kl", kl_negated, (("sign",), ("negative",), ("-1",))),
    HeldOut("evidence_isotropic_noise", "evidence", evidence_isotropic_noise, _NOISE_ISO),
    HeldOut(
        "evidence_diagonal_noise",
        "evidence",
        evidence_diagonal_noise,
        (("noise", "diagonal"), ("psi", "diagonal")),
    ),
    HeldOut(
        "evidence_offset_sign",
        "evidence",
        evidence_offset_sign,
        (("offset", "sign"), ("offset", "-b"), ("bias", "sign")),
    ),
    HeldOut(
        "evidence_prior_precision",
        "evidence",
        evidence_prior_precision,
        (("prior", "precision"), ("s0", "inverse"), ("prior", "inverse")),
    ),
    HeldOut(
        "evidence_marginal_precision_as_cov",
        "evidence",
        evidence_marginal_precision_as_cov,
        (("marginal", "precision"), ("marginal", "inverse"), ("c^-1",)),
    ),
    HeldOut(
        "evidence_mahalanobis_without_half",
        "evidence",
        evidence_mahalanobis_without_half,
        (("mahalanobis", "2"), ("quadratic", "2"), ("residual", "2")),
    ),
    HeldOut("evidence_float32", "evidence", evidence_float32, _FLOAT32),
    HeldOut("evidence_elbo_at_prior", "evidence", evidence_elbo_at_prior, ()),
)

VERIFIERS: dict[str, Callable[..., Any]] = {
    "elbo": testing.verify_elbo,
    "kl": testing.verify_kl,
    "evidence": testing.verify_log_evidence,
}


def _normalise(text: str) -> str:
    text = text.lower().replace("log-det", "log det").replace("logdet", "log det")
    return re.sub(r"\s+", " ", text)


def diagnosed_names(message: str) -> list[str]:
    prefix = "Diagnosis: "
    return [
        line[len(prefix) :].rstrip(".")
        for line in message.splitlines()
        if line.startswith(prefix) and not line.startswith(prefix + "no known bug matches")
    ]


def judge(bug: HeldOut, message: str | None) -> tuple[str, list[str]]:
    """("right" | "wrong" | "none" | "missed", the names on the Diagnosis lines)."""
    if message is None:
        return "missed", []
    names = diagnosed_names(message)
    if not names:
        return "none", names
    for name in names:
        text = _normalise(name)
        if any(all(_normalise(k) in text for k in keys) for keys in bug.accept):
            return "right", names
    return "wrong", names


def run(bug: HeldOut, seed: int = 0) -> str | None:
    """The failure message of the bug's verifier with default settings (None: passed)."""
    try:
        VERIFIERS[bug.kind](bug.fn, seed=seed, profile="dev")  # a user's default, in CI too
    except AssertionError as error:
        return str(error)
    return None


def measure(seed: int = 0) -> dict[str, tuple[str, list[str]]]:
    return {bug.name: judge(bug, run(bug, seed)) for bug in HELDOUT}


if __name__ == "__main__":  # pragma: no cover - a measurement script
    import sys
    from collections import Counter

    seeds = [int(s) for s in sys.argv[1:]] or [0]
    for seed in seeds:
        results = measure(seed)
        for name, (verdict, names) in results.items():
            print(f"seed {seed} {verdict:6s} {name}: {names}")
        print(f"seed {seed}:", dict(Counter(v for v, _ in results.values())), "of", len(HELDOUT))
