"""The suspect catalogues of every verifier: the values well-known bugs produce."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._gaussian import LOG_2PI, Gaussian, kl_divergence
from .._gradients import prior_solve_rows
from .._linalg import cholesky, solve_tril
from .._model import LinearGaussianModel
from ._diagnosis import Suspect
from ._problems import (
    _expected_log_ratio,
    _flat_gradient,
    _flatten,
    _pathwise_value,
)

FloatArray = NDArray[np.float64]


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


def _estimator_suspects(n_samples: int) -> tuple[Suspect, ...]:
    def wrong_law(cov_of: Callable[[Gaussian], FloatArray]) -> Callable[..., float]:
        return lambda m, q, x: _expected_log_ratio(m, q, x, q.mean, cov_of(q))

    def k_ones(q: Gaussian) -> FloatArray:
        return np.ones((q.dim, q.dim))

    return (
        Suspect(
            "samples use the transposed Cholesky factor (z = m + L^T eps)",
            "draw z = m + L eps with L lower triangular, S = L L^T",
            wrong_law(lambda q: q.scale_tril.T @ q.scale_tril),
        ),
        Suspect(
            "samples use the covariance as the scale (z = m + S eps)",
            "the scale is the Cholesky factor L, not S = L L^T",
            wrong_law(lambda q: q.cov @ q.cov),
        ),
        Suspect(
            "one noise draw is shared across latent dimensions",
            "draw eps with shape (n_samples, K), one independent normal per dimension",
            wrong_law(lambda q: q.scale_tril @ k_ones(q) @ q.scale_tril.T),
        ),
        Suspect(
            "the sum over samples is returned instead of the mean",
            "divide by n_samples",
            lambda m, q, x: n_samples * float(m.elbo(q, x)),
        ),
        Suspect(
            "the sum over samples is divided by n_samples - 1",
            "divide by n_samples",
            lambda m, q, x: (
                n_samples / (n_samples - 1) * float(m.elbo(q, x)) if n_samples > 1 else None
            ),
        ),
        Suspect(
            "log q(z) is missing (the estimate is E_q[log p(x, z)])",
            "subtract log q(z) at the same samples, or add the entropy",
            lambda m, q, x: float(m.elbo(q, x)) - q.entropy(),
        ),
        Suspect(
            "log q(z) lacks the Jacobian term -sum(log diag L)",
            "log q(m + L eps) = log N(eps; 0, I) - sum(log diag L)",
            lambda m, q, x: float(m.elbo(q, x)) - 0.5 * q.log_det_cov,
        ),
    )


def _pathwise_suspects() -> tuple[Suspect, ...]:
    def at(transform: Callable[[Gaussian, FloatArray], FloatArray]) -> Callable[..., float]:
        return lambda m, q, x, eps: _pathwise_value(m, q, x, transform(q, eps))

    return (
        Suspect(
            "samples use the transposed Cholesky factor (z = m + L^T eps)",
            "z = m + L eps, i.e. eps @ L.T for row vectors",
            at(lambda q, e: q.mean + e @ q.scale_tril),
        ),
        Suspect(
            "samples use the covariance as the scale (z = m + S eps)",
            "the scale is the Cholesky factor L",
            at(lambda q, e: q.mean + e @ q.cov.T),
        ),
        Suspect(
            "one noise draw is shared across latent dimensions",
            "use every column of eps",
            at(lambda q, e: q.mean + np.repeat(e[:, :1], q.dim, axis=1) @ q.scale_tril.T),
        ),
        Suspect(
            "log q(z) is missing",
            "subtract log q(z) at the same samples",
            lambda m, q, x, e: float(np.mean(m.log_joint(x, q.mean + e @ q.scale_tril.T))),
        ),
        Suspect(
            "log q(z) lacks the Jacobian term -sum(log diag L)",
            "log q(m + L eps) = log N(eps; 0, I) - sum(log diag L)",
            lambda m, q, x, e: (
                _pathwise_value(m, q, x, q.mean + e @ q.scale_tril.T) - 0.5 * q.log_det_cov
            ),
        ),
        Suspect(
            "the sum over samples is returned instead of the mean",
            "divide by n_samples",
            lambda m, q, x, e: (
                e.shape[0] * _pathwise_value(m, q, x, q.mean + e @ q.scale_tril.T)
                if e.shape[0] > 1
                else None
            ),
        ),
    )


def _inverse_cov(q: Gaussian) -> FloatArray:
    """S^-1 = L^-T L^-1 from q's factor."""
    return solve_tril(q.scale_tril, solve_tril(q.scale_tril, np.eye(q.dim)), trans=True)


def _gradient_suspects() -> tuple[Suspect, ...]:
    def closed(m: LinearGaussianModel, q: Gaussian, x: FloatArray) -> Any:
        return m.elbo_grad_variational(q, x)

    def flat(mean: FloatArray, factor: FloatArray) -> FloatArray:
        return _flatten((mean, np.tril(factor)))

    return (
        Suspect(
            "the gradient has the wrong sign (the gradient of the loss -ELBO)",
            "ascend the ELBO: return d ELBO / d phi",
            lambda m, q, x: -_flat_gradient(m, q, x),
        ),
        Suspect(
            "the entropy's contribution diag(1 / L_ii) is missing from the factor gradient",
            "d/dL sum(log diag L) = diag(1 / diag L)",
            lambda m, q, x: flat(
                closed(m, q, x).mean,
                closed(m, q, x).scale_tril - np.diag(1 / np.diagonal(q.scale_tril)),
            ),
        ),
        Suspect(
            "the gradient with respect to the covariance S is returned for L",
            "chain rule: d/dL = tril(2 (dELBO/dS) L)",
            lambda m, q, x: flat(
                closed(m, q, x).mean,
                0.5 * (-m.posterior_precision + _inverse_cov(q)),
            ),
        ),
        Suspect(
            "the gradient is 0 in expectation: z is sampled without reparameterisation and "
            "the score-function term f(z) grad log q(z) is missing (what is left, the "
            "gradient of -log q(z) at fixed z, averages to 0)",
            "for a z that is not reparameterised, add f(z) * grad log q(z) with "
            "f = log p(x, z) - log q(z) held constant (a surrogate loss), or sample "
            "z = m + L eps and differentiate through it",
            lambda m, q, x: np.zeros_like(_flat_gradient(m, q, x)),
        ),
        Suspect(
            "the gradient is doubled: the reparameterised (pathwise) gradient and the "
            "score-function term f(z) grad log q(z) are both included",
            "use one estimator: differentiate through z = m + L eps, or keep z fixed and "
            "add the score-function term, not both",
            lambda m, q, x: 2.0 * _flat_gradient(m, q, x),
        ),
        Suspect(
            "the prior term's gradient is missing from the mean gradient",
            "d/dm includes -S0^-1 (m - mu0)",
            lambda m, q, x: flat(
                closed(m, q, x).mean + prior_solve_rows(m.prior, q.mean - m.prior.mean),
                closed(m, q, x).scale_tril,
            ),
        ),
    )
