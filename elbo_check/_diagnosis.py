"""Name the bug behind a mismatch: catalogues of common mistakes and term probes.

When a user's value disagrees with the oracle, the verifiers evaluate the user's
function on a few *probes* — the failing case and variations of it (q's mean moved,
q's covariance changed, another observation) — and compare the result with

1. a catalogue of *suspects*: the value each well-known bug would produce (entropy
   missing, KL averaged over dimensions, a transposed Cholesky factor, ...). A suspect
   is reported when it reproduces the user's value on every probe where it applies;
2. if no suspect fits, a description of what the gap depends on (nothing, q's mean,
   q's covariance, x) and whether it is a constant or a scale factor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._gaussian import LOG_2PI, Gaussian, kl_divergence
from ._linalg import cholesky, solve_tril
from ._model import LinearGaussianModel

__all__ = [
    "ELBO_SUSPECTS",
    "EVIDENCE_SUSPECTS",
    "KL_SUSPECTS",
    "Suspect",
    "describe_gap",
    "match_suspects",
]

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Suspect:
    """A known bug: its name, what to fix, and the value a function with it returns.

    ``predict`` receives the same arguments as the user's function and returns the
    buggy value, or ``None`` where the bug is not defined (a transposed factor of a
    1x1 matrix, say).
    """

    name: str
    advice: str
    predict: Callable[..., Any]


def _gaussian_with_cov(mean: FloatArray, cov: FloatArray) -> Gaussian | None:
    try:
        return Gaussian._trusted(mean, cholesky("cov", 0.5 * (cov + cov.T)))
    except ValueError:
        return None


def _model_like(model: LinearGaussianModel, **changes: Any) -> LinearGaussianModel | None:
    kwargs: dict[str, Any] = {
        "weights": model.weights,
        "bias": model.bias,
        "prior": model.prior,
        "noise_cov": model.noise_cov,
    }
    kwargs.update(changes)
    try:
        return LinearGaussianModel(**kwargs)
    except ValueError:
        return None


def _terms(model: LinearGaussianModel, q: Gaussian, x: FloatArray) -> dict[str, float]:
    """The pieces of the exact ELBO, for composing buggy variants."""
    t = model.elbo_terms(q, x)
    whitened_spread = model._marginal.whitened_weights @ q.scale_tril
    trace = 0.5 * float(np.sum(whitened_spread**2))
    return {
        "ell": float(t.expected_log_likelihood),
        "kl": float(t.kl_to_prior),
        "cross_entropy": float(t.cross_entropy),
        "entropy": float(t.entropy),
        "trace": trace,
        "log_det_q": q.log_det_cov,
    }


def _elbo_with_q(
    model: LinearGaussianModel | None, q: Gaussian | None, x: FloatArray
) -> float | None:
    if model is None or q is None:
        return None
    return float(model.elbo(q, x))


def _prior_trace(model: LinearGaussianModel, q: Gaussian) -> float:
    """tr(S0^-1 S) for q's covariance S and the prior's S0."""
    ratio = solve_tril(model.prior.scale_tril, q.scale_tril)
    return float(np.sum(ratio**2))


def _noise_power(model: LinearGaussianModel, power: float) -> Any:
    noise = np.asarray(model.noise_cov, dtype=np.float64)
    if noise.ndim < 2:
        return noise**power
    values, vectors = np.linalg.eigh(noise)
    return (vectors * values**power) @ vectors.T


def _elbo_suspects() -> tuple[Suspect, ...]:
    def t(m: LinearGaussianModel, q: Gaussian, x: FloatArray) -> dict[str, float]:
        return _terms(m, q, x)

    return (
        Suspect(
            "the sign is flipped (the negative ELBO, a loss, is returned)",
            "return E_q[log p(x|z)] - KL(q || p(z)), not its negative",
            lambda m, q, x: -float(m.elbo(q, x)),
        ),
        Suspect(
            "the entropy term H(q) is missing",
            "add H(q) = K/2 (1 + log 2 pi) + sum(log diag L_q)",
            lambda m, q, x: float(m.elbo(q, x)) - t(m, q, x)["entropy"],
        ),
        Suspect(
            "the entropy term has the wrong sign",
            "the ELBO is E_q[log p(x, z)] + H(q): add the entropy, do not subtract it",
            lambda m, q, x: float(m.elbo(q, x)) - 2.0 * t(m, q, x)["entropy"],
        ),
        Suspect(
            "the log-determinant of q's covariance is missing from the entropy",
            "H(q) includes + 1/2 log det S = sum(log diag L_q)",
            lambda m, q, x: float(m.elbo(q, x)) - 0.5 * q.log_det_cov,
        ),
        Suspect(
            "the trace term -1/2 tr(Psi^-1 W S W^T) of the reconstruction is missing "
            "(the likelihood is evaluated at q's mean only)",
            "E_q[(x - Wz - b)^T Psi^-1 (x - Wz - b)] = r^T Psi^-1 r + tr(Psi^-1 W S W^T)",
            lambda m, q, x: float(m.elbo(q, x)) + t(m, q, x)["trace"],
        ),
        Suspect(
            "the KL to the prior is averaged over latent dimensions instead of summed",
            "sum the per-dimension KL terms (do not take .mean() over K)",
            lambda m, q, x: (
                t(m, q, x)["ell"] - t(m, q, x)["kl"] / m.latent_dim if m.latent_dim > 1 else None
            ),
        ),
        Suspect(
            "the KL is subtracted once per data dimension (broadcast against the (D,) "
            "per-dimension log-likelihood terms and then summed)",
            "sum the log-likelihood over the D data dimensions first, then subtract the KL once",
            lambda m, q, x: (
                t(m, q, x)["ell"] - m.data_dim * t(m, q, x)["kl"] if m.data_dim > 1 else None
            ),
        ),
        Suspect(
            "the expected log-likelihood is averaged over data dimensions instead of summed",
            "sum log p(x_d | z) over the D data dimensions (do not take .mean() over D)",
            lambda m, q, x: (
                t(m, q, x)["ell"] / m.data_dim - t(m, q, x)["kl"] if m.data_dim > 1 else None
            ),
        ),
        Suspect(
            "the KL term is missing",
            "subtract KL(q || p(z))",
            lambda m, q, x: t(m, q, x)["ell"],
        ),
        Suspect(
            "the KL term has the wrong sign",
            "the ELBO is reconstruction MINUS KL(q || p(z))",
            lambda m, q, x: t(m, q, x)["ell"] + t(m, q, x)["kl"],
        ),
        Suspect(
            "the KL is taken in the wrong direction, KL(p(z) || q)",
            "the ELBO uses KL(q || p(z)) (q first)",
            lambda m, q, x: t(m, q, x)["ell"] - float(kl_divergence(m.prior, q)),
        ),
        Suspect(
            "the prior is taken to be the standard normal N(0, I)",
            "use the model's prior mean and covariance in the KL / cross-entropy term",
            lambda m, q, x: _elbo_with_q(
                _model_like(m, prior=Gaussian.standard(m.latent_dim)), q, x
            ),
        ),
        Suspect(
            "the prior mean is ignored (taken as zero)",
            "the prior term needs (m - mu0), not m",
            lambda m, q, x: _elbo_with_q(
                _model_like(
                    m,
                    prior=Gaussian._trusted(np.zeros(m.latent_dim), m.prior.scale_tril),
                ),
                q,
                x,
            ),
        ),
        Suspect(
            "the prior term uses (m + mu0) instead of (m - mu0)",
            "the prior's Mahalanobis term is (m - mu0)^T S0^-1 (m - mu0)",
            lambda m, q, x: _elbo_with_q(
                _model_like(m, prior=Gaussian._trusted(-m.prior.mean, m.prior.scale_tril)), q, x
            ),
        ),
        Suspect(
            "the trace term tr(S0^-1 S) of the KL uses only the diagonals (sum(diag S / diag S0))",
            "a full covariance needs the full trace: tr(S0^-1 S) = ||L0^-1 L_q||_F^2",
            lambda m, q, x: (
                float(m.elbo(q, x))
                + 0.5 * (_prior_trace(m, q) - float(np.sum(q.variances / m.prior.variances)))
            ),
        ),
        Suspect(
            "the offset b is ignored in the likelihood",
            "the reconstruction residual is x - W m - b",
            lambda m, q, x: _elbo_with_q(_model_like(m, bias=np.zeros(m.data_dim)), q, x),
        ),
        Suspect(
            "q's covariance is used where its scale (standard deviation / Cholesky factor) belongs",
            "sample z = m + L eps with L the Cholesky factor, not the covariance",
            lambda m, q, x: _elbo_with_q(m, _gaussian_with_cov(q.mean, q.cov @ q.cov), x),
        ),
        Suspect(
            "q's scale (standard deviation) is used where its variance belongs",
            "the covariance is L L^T; a variance is the square of a standard deviation",
            lambda m, q, x: (
                _elbo_with_q(m, _gaussian_with_cov(q.mean, np.diag(np.sqrt(np.diagonal(q.cov)))), x)
                if np.allclose(q.cov, np.diag(np.diagonal(q.cov)))
                else None
            ),
        ),
        Suspect(
            "q's Cholesky factor is transposed (L^T used as the lower factor)",
            "with S = L L^T, samples are m + L eps; L^T L is a different covariance",
            lambda m, q, x: _elbo_with_q(
                m, _gaussian_with_cov(q.mean, q.scale_tril.T @ q.scale_tril), x
            ),
        ),
        Suspect(
            "the noise variance is used where the noise standard deviation belongs",
            "Psi is a covariance; its square root is the scale",
            lambda m, q, x: _elbo_with_q(_model_like(m, noise_cov=_noise_power(m, 2.0)), q, x),
        ),
        Suspect(
            "the noise standard deviation is used where the noise variance belongs",
            "Psi is a covariance (sigma^2), not sigma",
            lambda m, q, x: _elbo_with_q(_model_like(m, noise_cov=_noise_power(m, 0.5)), q, x),
        ),
        Suspect(
            "the normalising constant -D/2 log(2 pi) of the likelihood is missing",
            "log N(x; mu, Psi) includes -D/2 log(2 pi) (or verify with up_to_constant=True)",
            lambda m, q, x: float(m.elbo(q, x)) + 0.5 * m.data_dim * LOG_2PI,
        ),
        Suspect(
            "the log-determinant -1/2 log det Psi of the likelihood is missing",
            "log N(x; mu, Psi) includes -1/2 log det Psi",
            lambda m, q, x: float(m.elbo(q, x)) + 0.5 * m._noise.logdet,
        ),
        Suspect(
            "log p(x) is returned instead of the ELBO",
            "the ELBO equals log p(x) only when q is the exact posterior",
            lambda m, q, x: float(m.log_evidence(x)),
        ),
    )


def _kl_suspects() -> tuple[Suspect, ...]:
    def parts(p: Gaussian, q: Gaussian) -> dict[str, float]:
        ratio = np.linalg.solve(q.scale_tril, p.scale_tril)
        w = np.linalg.solve(q.scale_tril, p.mean - q.mean)
        return {
            "trace": float(np.sum(ratio**2)),
            "mahalanobis": float(w @ w),
            "log_det": q.log_det_cov - p.log_det_cov,
        }

    def kl(p: Gaussian, q: Gaussian) -> float:
        return float(kl_divergence(p, q))

    return (
        Suspect(
            "the arguments are reversed (KL(q || p) returned for KL(p || q))",
            "KL is not symmetric: KL(p || q) = E_p[log p - log q]",
            lambda p, q: float(kl_divergence(q, p)),
        ),
        Suspect(
            "the KL is averaged over dimensions instead of summed",
            "sum over the K dimensions",
            lambda p, q: kl(p, q) / p.dim if p.dim > 1 else None,
        ),
        Suspect(
            "the factor 1/2 is missing",
            "KL = 1/2 (tr + Mahalanobis - K + log det ratio)",
            lambda p, q: 2.0 * kl(p, q),
        ),
        Suspect(
            "the log-determinant ratio has the wrong sign",
            "the term is + log det S_q - log det S_p",
            lambda p, q: kl(p, q) - parts(p, q)["log_det"],
        ),
        Suspect(
            "the mean term is missing",
            "add 1/2 (m_p - m_q)^T S_q^-1 (m_p - m_q)",
            lambda p, q: kl(p, q) - 0.5 * parts(p, q)["mahalanobis"],
        ),
        Suspect(
            "the mean term uses p's covariance instead of q's",
            "the Mahalanobis term is weighted by S_q^-1",
            lambda p, q: (
                kl(p, q)
                - 0.5 * parts(p, q)["mahalanobis"]
                + 0.5 * float(np.sum(np.linalg.solve(p.scale_tril, p.mean - q.mean) ** 2))
            ),
        ),
        Suspect(
            "the dimension term -K is missing",
            "KL = 1/2 (... - K ...)",
            lambda p, q: kl(p, q) + 0.5 * p.dim,
        ),
        Suspect(
            "a covariance is used where a standard deviation belongs",
            "square the scale to get the variance, not the variance",
            lambda p, q: _kl_or_none(
                _gaussian_with_cov(p.mean, p.cov @ p.cov), _gaussian_with_cov(q.mean, q.cov @ q.cov)
            ),
        ),
        Suspect(
            "a Cholesky factor is transposed",
            "with S = L L^T use L, not L^T, as the lower factor",
            lambda p, q: _kl_or_none(
                _gaussian_with_cov(p.mean, p.scale_tril.T @ p.scale_tril),
                _gaussian_with_cov(q.mean, q.scale_tril.T @ q.scale_tril),
            ),
        ),
        Suspect(
            "only the diagonals of the covariances are used",
            "a full covariance needs its off-diagonal entries (use the Cholesky factor)",
            lambda p, q: _kl_or_none(
                _gaussian_with_cov(p.mean, np.diag(np.diagonal(p.cov))),
                _gaussian_with_cov(q.mean, np.diag(np.diagonal(q.cov))),
            ),
        ),
    )


def _kl_or_none(p: Gaussian | None, q: Gaussian | None) -> float | None:
    if p is None or q is None:
        return None
    return float(kl_divergence(p, q))


def _evidence_suspects() -> tuple[Suspect, ...]:
    def with_model(model: LinearGaussianModel | None, x: FloatArray) -> float | None:
        return None if model is None else float(model.log_evidence(x))

    return (
        Suspect(
            "the sign is flipped (a negative log-likelihood is returned)",
            "return log p(x), not -log p(x)",
            lambda m, x: -float(m.log_evidence(x)),
        ),
        Suspect(
            "the prior covariance is taken to be the identity",
            "the marginal covariance is W S0 W^T + Psi",
            lambda m, x: with_model(
                _model_like(m, prior=Gaussian._trusted(m.prior.mean, np.eye(m.latent_dim))), x
            ),
        ),
        Suspect(
            "the prior mean is ignored (the marginal mean taken as b)",
            "the marginal mean is W mu0 + b",
            lambda m, x: with_model(
                _model_like(m, prior=Gaussian._trusted(np.zeros(m.latent_dim), m.prior.scale_tril)),
                x,
            ),
        ),
        Suspect(
            "the offset b is ignored",
            "the marginal mean is W mu0 + b",
            lambda m, x: with_model(_model_like(m, bias=np.zeros(m.data_dim)), x),
        ),
        Suspect(
            "the noise variance is used where the noise standard deviation belongs",
            "Psi is a covariance",
            lambda m, x: with_model(_model_like(m, noise_cov=_noise_power(m, 2.0)), x),
        ),
        Suspect(
            "the noise standard deviation is used where the noise variance belongs",
            "Psi is a covariance (sigma^2), not sigma",
            lambda m, x: with_model(_model_like(m, noise_cov=_noise_power(m, 0.5)), x),
        ),
        Suspect(
            "the normalising constant -D/2 log(2 pi) is missing",
            "log N(x; mu, C) includes -D/2 log(2 pi)",
            lambda m, x: float(m.log_evidence(x)) + 0.5 * m.data_dim * LOG_2PI,
        ),
        Suspect(
            "the factor 1/2 on the log-determinant is missing",
            "log N(x; mu, C) includes -1/2 log det C",
            lambda m, x: float(m.log_evidence(x)) - 0.5 * m._marginal.log_det,
        ),
        Suspect(
            "the W S0 W^T term of the marginal covariance is missing (C = Psi)",
            "the marginal covariance is W S0 W^T + Psi",
            lambda m, x: with_model(
                _model_like(m, weights=np.zeros_like(m.weights), bias=m.marginal_mean), x
            ),
        ),
        Suspect(
            "the latent variable is ignored altogether (p(x) taken as N(b, Psi))",
            "the marginal is N(W mu0 + b, W S0 W^T + Psi)",
            lambda m, x: with_model(_model_like(m, weights=np.zeros_like(m.weights)), x),
        ),
    )


ELBO_SUSPECTS = _elbo_suspects()
KL_SUSPECTS = _kl_suspects()
EVIDENCE_SUSPECTS = _evidence_suspects()


def match_suspects(
    suspects: Sequence[Suspect],
    probes: Sequence[tuple[tuple[Any, ...], Any, Any, Any]],
) -> list[Suspect]:
    """Suspects that reproduce the user's value on every probe where they apply.

    Each probe is ``(arguments, got, expected, tolerance)``; values may be scalars or
    arrays (compared entry by entry). A suspect must apply on at least two probes,
    match ``got`` within ``tolerance`` on all of them, and differ from ``expected`` by
    more than ``tolerance`` on at least one (else it explains nothing).
    """
    found = []
    for suspect in suspects:
        applied, informative, ok = 0, False, True
        for arguments, got, expected, tolerance in probes:
            try:
                predicted = suspect.predict(*arguments)
            except (ValueError, np.linalg.LinAlgError, FloatingPointError):
                predicted = None
            if predicted is None:
                continue
            predicted = np.asarray(predicted, dtype=np.float64)
            if not np.all(np.isfinite(predicted)):
                continue
            applied += 1
            if not np.all(np.abs(np.asarray(got) - predicted) <= tolerance):
                ok = False
                break
            informative = informative or bool(
                np.any(np.abs(predicted - np.asarray(expected)) > tolerance)
            )
        if ok and informative and applied >= 2:
            found.append(suspect)
    return found


def describe_gap(
    gaps: dict[str, float], values: dict[str, tuple[float, float]], tolerance: float
) -> str:
    """Say what the gap ``got - expected`` depends on, from probes that vary one thing.

    ``gaps`` maps a probe label (``"original"``, ``"mean moved"``, ``"cov changed"``,
    ``"x changed"``) to its gap; ``values`` maps it to ``(got, expected)``.
    """
    if any(not np.isfinite(got) for got, _ in values.values()):
        return (
            "fn returned a non-finite value where the exact one is finite: a determinant, "
            "product or exponential under- or overflowed; take log-determinants from a "
            "Cholesky factor (2 * sum(log(diag(L)))) instead of log(det(.))"
        )
    base = gaps["original"]
    varies = [label for label, gap in gaps.items() if abs(gap - base) > tolerance]
    ratios = [got / expected for got, expected in values.values() if expected != 0]
    if not varies:
        return (
            f"the gap is the same constant {base:.6g} on every probe (independent of q and "
            "x): a normalising constant is missing or extra; if dropping constants is "
            "intended, verify with up_to_constant=True"
        )
    if len(ratios) == len(values) and np.ptp(ratios) <= 1e-9 * max(1.0, abs(ratios[0])):
        return f"got / expected is the same factor {ratios[0]:.6g} on every probe: a scale factor"
    depends = ", ".join(varies)
    hints = []
    if "cov changed" in varies and "mean moved" not in varies:
        hints.append(
            "it depends on q's covariance but not its mean: look at the entropy, the trace "
            "term tr(Psi^-1 W S W^T) and the prior's tr(S0^-1 S)"
        )
    if "mean moved" in varies and "cov changed" not in varies:
        hints.append(
            "it depends on q's mean but not its covariance: look at the residual x - W m - b "
            "and the prior's (m - mu0)^T S0^-1 (m - mu0)"
        )
    if "x changed" in varies and len(varies) == 1:
        hints.append("it depends on x only: look at the likelihood's residual and noise")
    return f"the gap changes when: {depends}" + ("; " + "; ".join(hints) if hints else "")
