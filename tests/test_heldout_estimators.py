"""Held-out estimator bugs: written after the estimator diagnosis, not from its catalogue.

The statistical estimator diagnosis (``elbo_check/testing/_estimator_diagnosis.py``)
gained suspects for issue 10 (the loss, the IWAE bound, a term scaled by a constant, a
mean-field estimator on correlated q). The first nine bugs below were written
afterwards, from what VAE and Pyro code gets wrong, without looking at which suspects
exist; each entry says which diagnoses would be right, or None where no name is
expected (then "no known bug matches" is the right answer). A wrong name sends the user
after the wrong term: worse than no name.

First measurement (seed 0, two problems sufficed for a name, any fitted scale to
two decimals): 4 of 9 named wrongly ("the estimate scaled by 0.74", "the KL scaled by
0.6", ...; a factor 100 named 101). That led to three changes: a name needs three
biased problems (a fitted scale leaves too few degrees of freedom with two), scales are
named only with simple constants (integers and reciprocals up to 100, one significant
digit), and an IWAE bound over k < n samples is a suspect. Re-measured: 6 of 6 named
right, 0 wrong, 3 "no known bug". The last four bugs were written after those changes,
as a fresh check: 2 of 2 nameable named right, 0 wrong, 2 "no known bug".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from elbo_check.testing import verify_elbo_estimator

LOG_2PI = float(np.log(2 * np.pi))


def _log_normal(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    factor = np.linalg.cholesky(cov)
    white = np.linalg.solve(factor, np.atleast_2d(x - mean).T)
    return -0.5 * (len(cov) * LOG_2PI + 2 * np.log(np.diag(factor)).sum() + (white**2).sum(0))


def _kl(m: np.ndarray, s: np.ndarray, m0: np.ndarray, s0: np.ndarray) -> float:
    d = m - m0
    return 0.5 * float(
        np.trace(np.linalg.solve(s0, s))
        + d @ np.linalg.solve(s0, d)
        - len(m)
        + np.linalg.slogdet(s0)[1]
        - np.linalg.slogdet(s)[1]
    )


def _pieces(model: Any, q: Any, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, ...]:
    psi = model.dense_noise_cov()
    log_lik = _log_normal(x - z @ model.weights.T - model.bias, np.zeros(len(x)), psi)
    log_prior = _log_normal(z, model.prior.mean, model.prior.cov)
    return log_lik, log_prior, _log_normal(z, q.mean, q.cov)


def _samples(q: Any, rng: Any, n: int) -> np.ndarray:
    return np.asarray(q.mean + rng.standard_normal((n, q.dim)) @ q.scale_tril.T)


def beta_kl(model: Any, q: Any, x: np.ndarray, rng: Any, n: int) -> float:
    """A beta-VAE objective (beta = 0.5) verified as the ELBO."""
    log_lik, _, _ = _pieces(model, q, x, _samples(q, rng, n))
    return float(log_lik.mean() - 0.5 * _kl(q.mean, q.cov, model.prior.mean, model.prior.cov))


def minibatch_rescaled(model: Any, q: Any, x: np.ndarray, rng: Any, n: int) -> float:
    """Dataset size / batch size (N / M = 1000 / 10) applied to the reconstruction only."""
    log_lik, _, _ = _pieces(model, q, x, _samples(q, rng, n))
    kl = _kl(q.mean, q.cov, model.prior.mean, model.prior.cov)
    return float(100.0 * log_lik.mean() - kl)


def per_dimension_mean(model: Any, q: Any, x: np.ndarray, rng: Any, n: int) -> float:
    """The whole estimate averaged over the D data dimensions ("mean reduction")."""
    log_lik, log_prior, log_q = _pieces(model, q, x, _samples(q, rng, n))
    return float(np.mean(log_lik + log_prior - log_q) / len(x))


def log_q_from_prior_cov(model: Any, q: Any, x: np.ndarray, rng: Any, n: int) -> float:
    """log q evaluated with the prior's covariance (a copy-paste of the prior line)."""
    z = _samples(q, rng, n)
    log_lik, log_prior, _ = _pieces(model, q, x, z)
    return float(np.mean(log_lik + log_prior - _log_normal(z, q.mean, model.prior.cov)))


def samples_from_the_prior(model: Any, q: Any, x: np.ndarray, rng: Any, n: int) -> float:
    """z drawn from the prior instead of q."""
    z = model.prior.mean + rng.standard_normal((n, q.dim)) @ model.prior.scale_tril.T
    log_lik, log_prior, log_q = _pieces(model, q, x, z)
    return float(np.mean(log_lik + log_prior - log_q))


def diagonal_of_the_factor(model: Any, q: Any, x: np.ndarray, rng: Any, n: int) -> float:
    """Samples scaled by diag(L) only (z = m + diag(L) * eps), log q with the full q."""
    z = q.mean + rng.standard_normal((n, q.dim)) * np.diag(q.scale_tril)
    log_lik, log_prior, log_q = _pieces(model, q, x, z)
    return float(np.mean(log_lik + log_prior - log_q))


def loss_of_the_analytic_kl_form(model: Any, q: Any, x: np.ndarray, rng: Any, n: int) -> float:
    """A VAE loss (-reconstruction + KL) returned where the ELBO is expected."""
    log_lik, _, _ = _pieces(model, q, x, _samples(q, rng, n))
    return float(-log_lik.mean() + _kl(q.mean, q.cov, model.prior.mean, model.prior.cov))


def entropy_twice(model: Any, q: Any, x: np.ndarray, rng: Any, n: int) -> float:
    """ADVI-style log p(x, z) + H(q), with log q(z) subtracted as well."""
    log_lik, log_prior, log_q = _pieces(model, q, x, _samples(q, rng, n))
    entropy = 0.5 * (q.dim * (1 + LOG_2PI) + float(np.linalg.slogdet(q.cov)[1]))
    return float(np.mean(log_lik + log_prior - log_q) + entropy)


def iwae_with_two_samples(model: Any, q: Any, x: np.ndarray, rng: Any, n: int) -> float:
    """An IWAE-2 bound on the first two samples (the others ignored)."""
    log_lik, log_prior, log_q = _pieces(model, q, x, _samples(q, rng, n))
    log_w = (log_lik + log_prior - log_q)[:2]
    return float(np.logaddexp(log_w[0], log_w[1]) - np.log(2.0))


# Written after the changes the first measurement led to (see the module docstring).
def kl_with_prior_covariance_not_inverted(
    model: Any, q: Any, x: np.ndarray, rng: Any, n: int
) -> float:
    """Analytic KL whose Mahalanobis and trace terms multiply by S0 instead of S0^-1."""
    log_lik, _, _ = _pieces(model, q, x, _samples(q, rng, n))
    s0, d = model.prior.cov, q.mean - model.prior.mean
    kl = 0.5 * float(
        np.trace(s0 @ q.cov)
        + d @ s0 @ d
        - q.dim
        + np.linalg.slogdet(s0)[1]
        - np.linalg.slogdet(q.cov)[1]
    )
    return float(log_lik.mean() - kl)


def averaged_over_latents(model: Any, q: Any, x: np.ndarray, rng: Any, n: int) -> float:
    """The joint-form estimate divided by K (a .mean() over a (n, K) array's last axis)."""
    log_lik, log_prior, log_q = _pieces(model, q, x, _samples(q, rng, n))
    return float(np.mean(log_lik + log_prior - log_q) / q.dim)


def noise_standard_deviation(model: Any, q: Any, x: np.ndarray, rng: Any, n: int) -> float:
    """The likelihood with Psi^(1/2) (the noise's scale) where Psi belongs."""
    z = _samples(q, rng, n)
    values, vectors = np.linalg.eigh(model.dense_noise_cov())
    root = (vectors * np.sqrt(values)) @ vectors.T  # BUG: the scale used as the covariance
    log_lik = _log_normal(x - z @ model.weights.T - model.bias, np.zeros(len(x)), root)
    log_prior = _log_normal(z, model.prior.mean, model.prior.cov)
    return float(np.mean(log_lik + log_prior - _log_normal(z, q.mean, q.cov)))


def tempered_likelihood(model: Any, q: Any, x: np.ndarray, rng: Any, n: int) -> float:
    """A cold posterior: the likelihood raised to 1/T = 1/2 (a tempering left on)."""
    log_lik, log_prior, log_q = _pieces(model, q, x, _samples(q, rng, n))
    return float(np.mean(0.5 * log_lik + log_prior - log_q))


Estimator = Callable[..., float]
#: (bug, form, accepted diagnoses (substrings) or None where no suspect applies).
HELDOUT: list[tuple[Estimator, str, tuple[str, ...] | None]] = [
    # At K = 2 (the statistical problems' latent size) a KL weight of 1/2 and a KL
    # averaged over the latent dimensions give the same value: either name is right.
    (
        beta_kl,
        "analytic_kl",
        (
            "the KL term KL(q || p(z)) is scaled by 0.5",
            "the KL is averaged over latent dimensions",
        ),
    ),
    (minibatch_rescaled, "analytic_kl", ("the reconstruction E_q[log p(x | z)] is scaled by 100",)),
    (per_dimension_mean, "joint", ("the estimate (the whole ELBO) is scaled by 1/",)),
    (loss_of_the_analytic_kl_form, "analytic_kl", ("the loss -ELBO is returned",)),
    (entropy_twice, "joint", ("the entropy H(q) is scaled by 2",)),
    (log_q_from_prior_cov, "joint", None),
    (samples_from_the_prior, "joint", None),
    (diagonal_of_the_factor, "joint", None),
    (iwae_with_two_samples, "joint", ("importance-weighted bound over k = 2 samples",)),
    # written after the first measurement and the changes it led to:
    (kl_with_prior_covariance_not_inverted, "analytic_kl", None),
    (averaged_over_latents, "joint", ("the estimate (the whole ELBO) is scaled by 0.5",)),
    (noise_standard_deviation, "joint", None),
    (tempered_likelihood, "joint", ("the reconstruction E_q[log p(x | z)] is scaled by 0.5",)),
]


def _diagnosis(fn: Estimator, form: str) -> str:
    with pytest.raises(AssertionError, match="the estimator is biased") as failure:
        verify_elbo_estimator(fn, form=form, calls=400, seed=0)
    (line,) = [ln for ln in str(failure.value).splitlines() if ln.startswith("Diagnosis:")]
    return line


_SEEN: dict[str, str] = {}


def _judge(fn: Estimator, form: str, accepted: tuple[str, ...] | None) -> str:
    if fn.__name__ not in _SEEN:
        _SEEN[fn.__name__] = _diagnosis(fn, form)
    line = _SEEN[fn.__name__]
    if line.startswith("Diagnosis: no known bug matches"):
        return "none"
    if accepted is not None and any(name in line for name in accepted):
        return "right"
    return f"wrong: {line}"


@pytest.mark.parametrize(("fn", "form", "accepted"), HELDOUT, ids=[b[0].__name__ for b in HELDOUT])
def test_caught_and_never_named_wrongly(
    fn: Estimator, form: str, accepted: tuple[str, ...] | None
) -> None:
    verdict = _judge(fn, form, accepted)
    assert not verdict.startswith("wrong"), verdict


def test_the_record() -> None:
    """The measured record (seed 0), so that a change in it is seen."""
    verdicts = {fn.__name__: _judge(fn, form, accepted) for fn, form, accepted in HELDOUT}
    nameable = [fn.__name__ for fn, _, accepted in HELDOUT if accepted is not None]
    named = [name for name in nameable if verdicts[name] == "right"]
    assert len(named) == len(nameable), verdicts  # measured: 8 of 8
