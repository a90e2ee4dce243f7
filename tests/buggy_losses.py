"""Real losses with real conventions and bugs, for the loss doctor (``diagnose_loss``).

Each entry is written the way a VAE or VI user writes a loss: plain numpy over a batch
(``x`` of shape (B, D), ``q.mean`` / ``q.variances`` of shape (B, K)), most of them
with the standard-normal-prior KL of VAE code, never by calling the oracle. Every
entry states the conventions the doctor must name (a subset of
``LossDiagnosis.conventions``) and its verdict (``kind``, ``ok``).

``CASES`` are the cases of issue 14, from public issue trackers and fixing pull
requests (the source is in each name's comment), and the sensible conventions that
must never be called a bug. ``HELD_OUT`` are bugs written after the doctor was
designed and kept out of its design: how many of them it names is reported, not tuned.

Used by ``tests/test_doctor_catalogue.py`` and ``benchmarks/kill_matrix.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LOG_2PI = math.log(2.0 * math.pi)
FloatArray = Any  # user-style code: arrays of any dtype


@dataclass(frozen=True)
class Loss:
    """One loss: what it is, the code, the doctor's options and what it must say."""

    name: str
    description: str
    fn: Callable[..., Any]
    expected: dict[str, str]
    kind: str
    ok: bool
    options: dict[str, Any] = field(default_factory=dict)
    source: str = ""


# --------------------------------------------------------------------------- pieces
def log_lik_terms(model: Any, q: Any, x: FloatArray) -> FloatArray:
    """E_q log N(x_d; w_d z + b_d, psi_d) per row and feature, (B, D): diagonal q and noise."""
    w, b = model.weights, model.bias
    psi = np.broadcast_to(np.asarray(model.noise_cov, dtype=float), (x.shape[-1],))
    m, var = q.mean, q.variances
    square = (x - m @ w.T - b) ** 2 + var @ (w**2).T
    return -0.5 * (square / psi + np.log(2.0 * np.pi * psi))


def kl_terms(q: Any) -> FloatArray:
    """KL(N(m, diag var) || N(0, I)) per row and latent dimension, (B, K)."""
    m, var = q.mean, q.variances
    return 0.5 * (var + m**2 - 1.0 - np.log(var))


def sampled_log_lik(model: Any, q: Any, x: FloatArray, rng: Any, n: int) -> FloatArray:
    """log p(x | z_s) per sample and row, (n, B), z_s = m + sd * eps."""
    z = q.mean + np.sqrt(q.variances) * rng.standard_normal((n, *q.mean.shape))
    psi = np.broadcast_to(np.asarray(model.noise_cov, dtype=float), (x.shape[-1],))
    r = x - z @ model.weights.T - model.bias
    return -0.5 * (r**2 / psi + np.log(2.0 * np.pi * psi)).sum(-1)


def squared_error(model: Any, q: Any, x: FloatArray) -> FloatArray:
    """E_q ||x - W z - b||^2 per row and feature (an MSE loss's term), (B, D)."""
    w, b = model.weights, model.bias
    return (x - q.mean @ w.T - b) ** 2 + q.variances @ (w**2).T


# --------------------------------------------------------------------------- cases
def kl_summed_over_batch(model: Any, q: Any, x: FloatArray) -> float:
    # GNTPP #4, nvae #3: torch.sum(kl) without dim= is the whole batch's KL, added to
    # every row's reconstruction and then averaged.
    per_row = -log_lik_terms(model, q, x).sum(-1) + kl_terms(q).sum()
    return float(per_row.mean())


def kl_summed_over_batch_rows(model: Any, q: Any, x: FloatArray) -> FloatArray:
    # The same bug in code that returns one loss per row.
    return -log_lik_terms(model, q, x).sum(-1) + kl_terms(q).sum()


def entropy_summed_twice(model: Any, q: Any, x: FloatArray) -> float:
    # semi-supervised-pytorch #21: a log-determinant already summed over the batch
    # summed again -- here q's log-det (its entropy) in every row's KL.
    log_det = np.log(q.variances).sum()  # whole batch
    kl = 0.5 * (q.variances + q.mean**2 - 1.0).sum(-1) - 0.5 * log_det
    return float((-log_lik_terms(model, q, x).sum(-1) + kl).sum())


def per_pixel_mean_consistent(model: Any, q: Any, x: FloatArray) -> float:
    # pytorch/examples VAE (#290): reconstruction a mean over all B * D pixel terms, the
    # KL divided by B * D: a consistent per-pixel mean.
    return float(-log_lik_terms(model, q, x).mean() + kl_terms(q).sum() / x.size)


def per_pixel_reconstruction_kl_per_row(model: Any, q: Any, x: FloatArray) -> float:
    # keras #3383: the reconstruction averaged over pixels (a mean over the last axis)
    # while the KL is summed over latent dimensions, per row.
    return float((-log_lik_terms(model, q, x).mean(-1) + kl_terms(q).sum(-1)).mean())


def kl_mean_over_latent(model: Any, q: Any, x: FloatArray) -> float:
    # grammarVAE #2, keras #19560: the KL averaged over latent dimensions.
    return float((-log_lik_terms(model, q, x).sum(-1) + kl_terms(q).mean(-1)).mean())


def per_particle_sum(model: Any, q: Any, x: FloatArray, rng: Any, n: int) -> float:
    # numpyro #1724: a per-particle ELBO summed over particles, missing 1/num_particles.
    per_particle = sampled_log_lik(model, q, x, rng, n) - kl_terms(q).sum(-1)
    return float(-per_particle.sum(0).sum())


def negative_elbo_as_elbo(model: Any, q: Any, x: FloatArray) -> float:
    # AntixK PyTorch-VAE #68, pyro #1982: the loss (-ELBO) logged where the ELBO is meant.
    return float((-log_lik_terms(model, q, x).sum(-1) + kl_terms(q).sum(-1)).sum())


def loss_sum(model: Any, q: Any, x: FloatArray) -> float:
    return float((-log_lik_terms(model, q, x).sum(-1) + kl_terms(q).sum(-1)).sum())


def loss_mean(model: Any, q: Any, x: FloatArray) -> float:
    return float((-log_lik_terms(model, q, x).sum(-1) + kl_terms(q).sum(-1)).mean())


def loss_rows(model: Any, q: Any, x: FloatArray) -> FloatArray:
    return -log_lik_terms(model, q, x).sum(-1) + kl_terms(q).sum(-1)


def elbo_mean(model: Any, q: Any, x: FloatArray) -> float:
    return -loss_mean(model, q, x)


def monte_carlo_mean(model: Any, q: Any, x: FloatArray, rng: Any, n: int) -> float:
    return float((-sampled_log_lik(model, q, x, rng, n).mean(0) + kl_terms(q).sum(-1)).mean())


def general_loss_sum(model: Any, q: Any, x: FloatArray) -> float:
    # Any q, any prior, diagonal noise: the KL between full Gaussians by hand.
    w, b = model.weights, model.bias
    psi = np.broadcast_to(np.asarray(model.noise_cov, dtype=float), (x.shape[-1],))
    cov, m = q.cov, q.mean
    spread = np.einsum("dk,bkl,dl->bd", w, cov, w)
    log_lik = -0.5 * (((x - m @ w.T - b) ** 2 + spread) / psi + np.log(2 * np.pi * psi))
    s0, m0 = model.prior.cov, model.prior.mean
    s0_inv = np.linalg.inv(s0)
    diff = m - m0
    kl = 0.5 * (
        np.einsum("kl,blk->b", s0_inv, cov)
        + np.einsum("bk,kl,bl->b", diff, s0_inv, diff)
        - m.shape[-1]
        + np.linalg.slogdet(s0)[1]
        - np.linalg.slogdet(cov)[1]
    )
    return float((-log_lik.sum(-1) + kl).sum())


_ELBO = {"reconstruction.features": "sum", "kl.latent": "sum", "beta": "1", "entropy": "with KL"}

CASES: list[Loss] = [
    Loss(
        "kl_summed_over_batch",
        "the KL summed over the whole batch, added to every row, averaged",
        kl_summed_over_batch,
        {"reconstruction.rows": "mean", "kl.rows": "sum", "beta": "B"},
        "beta",
        False,
        source="GNTPP #4, nvae #3",
    ),
    Loss(
        "kl_summed_over_batch_rows",
        "the same, one loss per row",
        kl_summed_over_batch_rows,
        {"batch terms": "KL", "reconstruction.rows": "per row"},
        "other",
        False,
        source="GNTPP #4",
    ),
    Loss(
        "entropy_summed_twice",
        "q's log-det summed over the batch, then again",
        entropy_summed_twice,
        {"entropy": "separate"},
        "other",
        False,
        source="semi-supervised-pytorch #21",
    ),
    Loss(
        "per_pixel_mean_consistent",
        "per-pixel mean, KL divided by B * D",
        per_pixel_mean_consistent,
        {
            "reconstruction.rows": "mean",
            "reconstruction.features": "mean",
            "kl.features": "divided by D",
            "beta": "1",
        },
        "multiple",
        True,
        source="pytorch/examples #290",
    ),
    Loss(
        "per_pixel_reconstruction",
        "reconstruction averaged over pixels, KL summed",
        per_pixel_reconstruction_kl_per_row,
        {"reconstruction.features": "mean", "kl.features": "-", "beta": "D"},
        "beta",
        False,
        source="keras #3383",
    ),
    Loss(
        "kl_mean_over_latent",
        "the KL averaged over latent dimensions",
        kl_mean_over_latent,
        {"kl.latent": "mean", "beta": "1/K", "reconstruction.rows": "mean"},
        "beta",
        False,
        source="grammarVAE #2, keras #19560",
    ),
    Loss(
        "per_particle_sum",
        "a per-particle ELBO summed over particles",
        per_particle_sum,
        {"reconstruction.samples": "sum", "kl.samples": "sum", "beta": "1"},
        "multiple",
        True,
        options={"mode": "statistical"},
        source="numpyro #1724",
    ),
    Loss(
        "loss_logged_as_elbo",
        "the loss -ELBO returned where the ELBO is meant",
        negative_elbo_as_elbo,
        {"sign": "-", **_ELBO},
        "wrong sign",
        False,
        options={"objective": "elbo"},
        source="AntixK PyTorch-VAE #68, pyro #1982",
    ),
    # The sensible conventions: never a bug.
    Loss(
        "sum",
        "-ELBO summed over the batch",
        loss_sum,
        {"sign": "-", "reconstruction.rows": "sum", **_ELBO},
        "elbo",
        True,
    ),
    Loss(
        "per_datum_mean",
        "-ELBO averaged over the batch",
        loss_mean,
        {"reconstruction.rows": "mean", "kl.rows": "mean", **_ELBO},
        "elbo",
        True,
    ),
    Loss(
        "per_row",
        "-ELBO per row",
        loss_rows,
        {"reconstruction.rows": "per row", "batch terms": "none", **_ELBO},
        "elbo",
        True,
    ),
    Loss(
        "elbo_objective",
        "the ELBO, declared as such",
        elbo_mean,
        {"sign": "+", **_ELBO},
        "elbo",
        True,
        options={"objective": "elbo"},
    ),
    Loss(
        "monte_carlo_mean",
        "a Monte-Carlo -ELBO, samples averaged",
        monte_carlo_mean,
        {"reconstruction.samples": "mean", **_ELBO},
        "elbo",
        True,
        options={"mode": "statistical"},
    ),
    Loss(
        "general_sum",
        "-ELBO for any q and prior",
        general_loss_sum,
        {"reconstruction.rows": "sum", **_ELBO},
        "elbo",
        True,
    ),
]


# --------------------------------------------------------------------------- held out
def held_out_dataset_kl(model: Any, q: Any, x: FloatArray) -> float:
    # The KL divided by a dataset size of 1000 ("per-datum KL") while the
    # reconstruction is per row.
    return float((-log_lik_terms(model, q, x).sum(-1) + kl_terms(q).sum(-1) / 1000).mean())


def held_out_both_means(model: Any, q: Any, x: FloatArray) -> float:
    # Everything averaged: reconstruction over rows and pixels, KL over rows and latents.
    return float(-log_lik_terms(model, q, x).mean() + kl_terms(q).mean())


def held_out_rows_over_batch(model: Any, q: Any, x: FloatArray) -> FloatArray:
    # Per-row losses already divided by the batch size.
    return loss_rows(model, q, x) / x.shape[0]


def held_out_log_std_noise(model: Any, q: Any, x: FloatArray) -> float:
    # log(2 pi psi^2) in the Gaussian's normaliser: log det Psi counted twice.
    psi = np.broadcast_to(np.asarray(model.noise_cov, dtype=float), (x.shape[-1],))
    square = squared_error(model, q, x) / psi
    log_lik = -0.5 * (square + np.log(2.0 * np.pi * psi**2))
    return float((-log_lik.sum(-1) + kl_terms(q).sum(-1)).sum())


def held_out_sampled_kl_summed(model: Any, q: Any, x: FloatArray, rng: Any, n: int) -> float:
    # A sampled KL (log q - log p at each z) summed over samples, the reconstruction
    # averaged over them.
    eps = rng.standard_normal((n, *q.mean.shape))
    sd = np.sqrt(q.variances)
    z = q.mean + sd * eps
    log_q = -0.5 * (eps**2 + np.log(2 * np.pi * q.variances)).sum(-1)
    log_p = -0.5 * (z**2 + LOG_2PI).sum(-1)
    psi = np.broadcast_to(np.asarray(model.noise_cov, dtype=float), (x.shape[-1],))
    r = x - z @ model.weights.T - model.bias
    log_lik = -0.5 * (r**2 / psi + np.log(2.0 * np.pi * psi)).sum(-1)
    return float((-log_lik.mean(0) + (log_q - log_p).sum(0)).sum())


def held_out_missing_entropy(model: Any, q: Any, x: FloatArray) -> float:
    # The joint form without -log q: E_q log p(x, z) only.
    cross_entropy = 0.5 * (q.variances + q.mean**2 + LOG_2PI).sum(-1)
    return float((-log_lik_terms(model, q, x).sum(-1) + cross_entropy).sum())


def held_out_offset(model: Any, q: Any, x: FloatArray) -> float:
    # A stray +1 (a "smoothing" constant) in every row.
    return float((-log_lik_terms(model, q, x).sum(-1) + kl_terms(q).sum(-1) + 1.0).sum())


def held_out_half_mse(model: Any, q: Any, x: FloatArray) -> float:
    # 0.5 * squared error + KL: the Gaussian loss with unit noise, constants dropped.
    return float((0.5 * squared_error(model, q, x).sum(-1) + kl_terms(q).sum(-1)).sum())


HELD_OUT: list[Loss] = [
    Loss("dataset_size_kl", "KL / 1000", held_out_dataset_kl, {"beta": "1/1000"}, "beta", False),
    Loss(
        "both_means",
        "all means",
        held_out_both_means,
        {"reconstruction.features": "mean", "kl.latent": "mean", "beta": "D/K"},
        "beta",
        False,
    ),
    Loss(
        "rows_over_batch",
        "per-row / B",
        held_out_rows_over_batch,
        {"reconstruction.rows": "per row, divided by B"},
        "multiple",
        True,
    ),
    Loss(
        "log_std_noise",
        "log det Psi twice",
        held_out_log_std_noise,
        {"log det Psi": "weighted 2"},
        "other",
        False,
    ),
    Loss(
        "sampled_kl_summed",
        "sampled KL summed over samples",
        held_out_sampled_kl_summed,
        {"kl.samples": "sum", "beta": "n"},
        "beta",
        False,
        options={"mode": "statistical"},
    ),
    Loss(
        "missing_entropy",
        "no entropy",
        held_out_missing_entropy,
        {"entropy": "missing"},
        "other",
        False,
    ),
    Loss("offset", "+1 per row", held_out_offset, {"log 2 pi": "offset"}, "other", False),
    Loss(
        "half_mse",
        "0.5 MSE + KL, unit noise",
        held_out_half_mse,
        {"log 2 pi": "dropped", "log det Psi": "n/a (unit noise)", "beta": "1"},
        "other",
        False,
    ),
]
