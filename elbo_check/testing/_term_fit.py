"""Term-level decompositions of the ELBO, the Gaussian KL and log p(x), and the
independent problems the diagnosis probes them on.

Each kind of value is written as a sum of signed *atoms* computed from dense
parameters (``_elbo_atoms``: the expected log-likelihood's constant, log-det, residual
and trace terms; the KL's trace, Mahalanobis, constant and log-det terms). The terms
:func:`~._diagnosis.fit_terms` combines are

* a term (an atom, or a group: the whole value, E_q log p(x|z), the KL, the entropy,
  the prior's cross-entropy) scaled by a fitted constant -- dropped (0), sign-flipped
  (-1), halved, scaled by 1/N or beta, ...;
* a term scaled by 1/D, 1/K, D or K (these change between independent problems);
* a parameter replaced (by its inverse, square, square root, diagonal part, an
  isotropic or identity matrix, zero, its negative), in every term that reads it or in
  one term only.

The independent problems keep the failing case's noise kind (the user's code may
support only that kind) but not its dimensions: the constants D/2 log(2 pi), K/2 and
K/2 log(2 pi) are told apart by problems of other D and K. They are drawn from a fixed
seed, so the diagnosis does not depend on the verifier's seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._gaussian import LOG_2PI, Gaussian
from .._model import LinearGaussianModel
from .._random import random_gaussian, random_model, random_spd
from ._diagnosis import Term, scaled

FloatArray = NDArray[np.float64]
Params = dict[str, Any]
Scopes = tuple[tuple[tuple[str, ...], str], ...]


def _text(text: str) -> Callable[[float], str]:
    return lambda _s: text


# ---------------------------------------------------------------------- problems
def independent_models(model: LinearGaussianModel, count: int = 2) -> list[LinearGaussianModel]:
    """Models of other dimensions with the same noise kind, non-zero offsets, general priors."""
    d, k = model.data_dim, model.latent_dim
    out = []
    for i, (dd, kk) in enumerate(((d + 2, k + 1), (d + 1, k + 2), (d + 3, k + 1))[:count]):
        rng = np.random.default_rng([dd, kk, 97 + i])
        base = random_model(rng, data_dim=dd, latent_dim=kk, family="general")
        noise: Any
        if model.noise_kind == "isotropic":
            noise = float(rng.uniform(0.2, 1.5))
        elif model.noise_kind == "diagonal":
            noise = rng.uniform(0.2, 2.0, size=dd)
        else:
            noise = random_spd(rng, dd, condition_number=8.0, scale=0.4)
        prior = random_gaussian(rng, kk, condition_number=6.0, mean_scale=1.0)
        out.append(
            LinearGaussianModel(weights=base.weights, bias=base.bias, prior=prior, noise_cov=noise)
        )
    return out


def independent_elbo_problems(
    model: LinearGaussianModel, count: int = 2
) -> list[tuple[LinearGaussianModel, Gaussian, FloatArray]]:
    out = []
    for i, other in enumerate(independent_models(model, count)):
        rng = np.random.default_rng([other.data_dim, other.latent_dim, 31 + i])
        q = random_gaussian(rng, other.latent_dim, condition_number=8.0, cov_scale=0.6)
        x = other.marginal_mean + 1.5 * rng.standard_normal(other.data_dim)
        out.append((other, q, x))
    return out


def independent_kl_pairs(dim: int) -> list[tuple[Gaussian, Gaussian]]:
    """Pairs of dimensions dim + 1 and dim + 2 (K-dependent constants vary)."""
    out = []
    for kk in (dim + 1, dim + 2):
        rng = np.random.default_rng([kk, 53])
        out.append(
            (
                random_gaussian(rng, kk, condition_number=8.0, cov_scale=1.3),
                random_gaussian(rng, kk, condition_number=8.0, cov_scale=0.7),
            )
        )
    return out


# ---------------------------------------------------------------------- matrices
def _log_det(a: FloatArray) -> float:
    sign, value = np.linalg.slogdet(a)
    if sign <= 0:
        raise ValueError("not positive definite")
    return float(value)


def _power(a: FloatArray, p: float) -> FloatArray:
    values, vectors = np.linalg.eigh(0.5 * (a + a.T))
    if np.any(values <= 0):
        raise ValueError("not positive definite")
    out: FloatArray = (vectors * values**p) @ vectors.T
    return out


def _transposed_factor(a: FloatArray) -> FloatArray:
    factor = np.linalg.cholesky(a)
    out: FloatArray = factor.T @ factor
    return out


#: name -> (matrix function, description of the replacement)
_MATRIX_MAPS: dict[str, tuple[Callable[[FloatArray], FloatArray], str]] = {
    "inverse": (
        lambda a: np.asarray(np.linalg.inv(a)),
        "its inverse (a precision used where a covariance belongs)",
    ),
    "diagonal": (lambda a: np.diag(np.diag(a)), "its diagonal part"),
    "isotropic": (
        lambda a: float(np.mean(np.diag(a))) * np.eye(len(a)),
        "an isotropic mean(diag) * I (isotropic noise assumed)",
    ),
    "first": (
        lambda a: float(a[0, 0]) * np.eye(len(a)),
        "a scalar times the identity, a[0, 0] * I (isotropic noise assumed)",
    ),
    "identity": (lambda a: np.eye(len(a)), "the identity"),
    "square": (lambda a: a @ a, "its square (a variance used where a standard deviation belongs)"),
    "sqrt": (
        lambda a: _power(a, 0.5),
        "its square root (a standard deviation used where a variance belongs)",
    ),
    "transposed": (_transposed_factor, "L^T L (its Cholesky factor transposed)"),
}


def _replacement(
    atoms: Callable[[Params], dict[str, float]],
    key: str,
    label: str,
    new: Callable[[Any], Any],
    what: str,
    scope: tuple[str, ...],
    where: str,
    advice: str,
) -> Term:
    def value(context: tuple[Params, dict[str, float]]) -> float:
        params, exact = context
        changed = atoms({**params, key: new(params[key])})
        return float(sum(changed[a] - exact[a] for a in scope))

    return Term(_text(f"{label} is replaced by {what}{where}"), advice, value)


def _group(names: tuple[str, ...], extra: Callable[[Params], float] | None = None) -> Any:
    def value(context: tuple[Params, dict[str, float]]) -> float:
        params, exact = context
        return float(sum(exact[a] for a in names)) + (extra(params) if extra else 0.0)

    return value


def _dimension_scaled(names: tuple[str, ...], label: str, dim: str, advice: str) -> list[Term]:
    out = []
    for factor_text, factor in (
        (f"1/{dim}", lambda n: 1.0 / n),
        (dim, lambda n: float(n)),
    ):

        def value(
            context: tuple[Params, dict[str, float]], factor: Callable[[int], float] = factor
        ) -> float:
            params, exact = context
            return (factor(params[dim]) - 1.0) * float(sum(exact[a] for a in names))

        out.append(Term(_text(f"{label} is scaled by {factor_text}"), advice, value))
    return out


# ---------------------------------------------------------------------- ELBO
def elbo_context(
    model: LinearGaussianModel, q: Gaussian, x: FloatArray
) -> tuple[Params, dict[str, float]]:
    params: Params = {
        "W": np.array(model.weights),
        "b": np.array(model.bias),
        "mu0": np.array(model.prior.mean),
        "S0": np.array(model.prior.cov),
        "Psi": np.array(model.dense_noise_cov()),
        "m": np.array(q.mean),
        "S": np.array(q.cov),
        "x": np.asarray(x, dtype=np.float64),
        "D": model.data_dim,
        "K": model.latent_dim,
    }
    return params, _elbo_atoms(params)


def _elbo_atoms(p: Params) -> dict[str, float]:
    w, psi, s, s0 = p["W"], p["Psi"], p["S"], p["S0"]
    r = p["x"] - w @ p["m"] - p["b"]
    delta = p["m"] - p["mu0"]
    return {
        "ll_const": -0.5 * p["D"] * LOG_2PI,
        "ll_logdet": -0.5 * _log_det(psi),
        "ll_data": -0.5 * float(r @ np.linalg.solve(psi, r)),
        "ll_trace": -0.5 * float(np.trace(np.linalg.solve(psi, w @ s @ w.T))),
        "kl_trace": -0.5 * float(np.trace(np.linalg.solve(s0, s))),
        "kl_maha": -0.5 * float(delta @ np.linalg.solve(s0, delta)),
        "kl_const": 0.5 * p["K"],
        "kl_logdet_prior": -0.5 * _log_det(s0),
        "kl_logdet_q": 0.5 * _log_det(s),
    }


_ELL = ("ll_const", "ll_logdet", "ll_data", "ll_trace")
_KL = ("kl_trace", "kl_maha", "kl_const", "kl_logdet_prior", "kl_logdet_q")
_AT_MEAN = "(evaluated at q's mean instead of averaged over q)"


def _elbo_terms() -> tuple[Term, ...]:
    def free(names: tuple[str, ...], label: str, advice: str, **special: str) -> Term:
        table = {float(k.replace("m", "-").replace("_", ".")): v for k, v in special.items()}
        return Term(scaled(label, table), advice, _group(names), free=True)

    check = "compare this term with the closed form"
    terms = [
        free(
            _ELL + _KL,
            "the whole ELBO",
            "return E_q[log p(x|z)] - KL(q || p(z)), unscaled",
            m1="the whole ELBO has the wrong sign (the loss -ELBO is returned)",
        ),
        free(_ELL, "E_q log p(x|z) (the expected log-likelihood)", "do not rescale it"),
        free(_KL, "the KL term KL(q || p(z))", "subtract KL(q || p(z)) once, unscaled"),
        Term(
            scaled("the entropy H(q)"),
            "H(q) = K/2 (1 + log 2 pi) + 1/2 log det S",
            _group(("kl_const", "kl_logdet_q"), lambda p: 0.5 * p["K"] * LOG_2PI),
            free=True,
        ),
        Term(
            scaled("the prior term E_q log p(z) (minus the cross-entropy)"),
            "E_q log p(z) = -1/2 (K log 2 pi + log det S0 + tr(S0^-1 S) + Mahalanobis)",
            _group(("kl_trace", "kl_maha", "kl_logdet_prior"), lambda p: -0.5 * p["K"] * LOG_2PI),
            free=True,
        ),
        free(("ll_const",), "the constant -D/2 log(2 pi) of E_q log p(x|z)", check),
        free(("ll_logdet",), "the log-determinant term -1/2 log det Psi of E_q log p(x|z)", check),
        free(
            ("ll_data",),
            "the residual (data) term -1/2 (x - W m - b)^T Psi^-1 (x - W m - b) of E_q log p(x|z)",
            check,
        ),
        free(
            ("ll_trace",),
            "the trace term -1/2 tr(Psi^-1 W S W^T) of E_q log p(x|z)",
            "E_q (x - Wz - b)^T Psi^-1 (x - Wz - b) = r^T Psi^-1 r + tr(Psi^-1 W S W^T)",
            **{"0": f"the trace term -1/2 tr(Psi^-1 W S W^T) is missing: log p(x|z) {_AT_MEAN}"},
        ),
        free(
            ("kl_trace",),
            "the KL's trace term 1/2 tr(S0^-1 S)",
            "E_q log p(z) includes -1/2 tr(S0^-1 S)",
            **{"0": f"the KL's trace term tr(S0^-1 S) is missing: the prior log p(z) {_AT_MEAN}"},
        ),
        free(("kl_maha",), "the KL's Mahalanobis term 1/2 (m - mu0)^T S0^-1 (m - mu0)", check),
        free(
            ("kl_const",),
            "the constant K/2 (the KL's -K/2, the entropy's K/2)",
            "KL = 1/2 (tr + Mahalanobis - K + log det S0 - log det S); H(q) includes K/2",
            **{
                "0": "the constant K/2 is missing (the KL's -K/2 or the entropy's K/2): "
                f"log q(z) {_AT_MEAN}",
                "m1": "the constant K/2 has the wrong sign (+K where the KL has -K)",
            },
        ),
        free(
            ("kl_logdet_prior",),
            "the KL's 1/2 log det S0 (the prior's log-determinant)",
            "KL includes + 1/2 log det S0",
        ),
        free(
            ("kl_logdet_q",),
            "the 1/2 log det S of q (the entropy's; the KL's -1/2 log det S)",
            "H(q) includes + 1/2 log det S = sum(log diag L)",
        ),
        Term(
            scaled("the constant K/2 log(2 pi) (of the entropy or of the prior's cross-entropy)"),
            "H(q) = K/2 (1 + log 2 pi) + ...; E_q log p(z) = -K/2 log 2 pi - ...",
            lambda c: 0.5 * c[0]["K"] * LOG_2PI,
            free=True,
        ),
    ]
    for names, label, dim in (
        (_KL, "the KL term", "D"),
        (_KL, "the KL term", "K"),
        (_ELL, "E_q log p(x|z) (the expected log-likelihood)", "D"),
        (_ELL + _KL, "the whole ELBO", "D"),
    ):
        terms += _dimension_scaled(names, label, dim, "sum, do not average, over dimensions")
    replace = _replacements_elbo()
    return (*terms, *replace)


def _replacements_elbo() -> list[Term]:
    out = []
    psi_scopes: Scopes = (
        (_ELL, ""),
        (("ll_logdet",), " in the log-determinant of E_q log p(x|z) only"),
        (("ll_data",), " in the residual term of E_q log p(x|z) only"),
        (("ll_trace",), " in the trace term tr(Psi^-1 W S W^T) only"),
    )
    for name in ("isotropic", "first", "diagonal", "inverse", "square", "sqrt", "identity"):
        fn, what = _MATRIX_MAPS[name]
        for scope, where in psi_scopes:
            out.append(
                _replacement(
                    _elbo_atoms, "Psi", "the noise covariance Psi", fn, what, scope, where,
                    "use model.noise_cov as given (a covariance; full if it is a matrix)",
                )
            )  # fmt: skip
    s0_scopes: Scopes = (
        (("kl_trace", "kl_maha", "kl_logdet_prior"), ""),
        (("kl_trace",), " in the KL's trace term tr(S0^-1 S) only"),
        (("kl_maha",), " in the KL's Mahalanobis term only"),
        (("kl_logdet_prior",), " in the KL's log det S0 only"),
    )
    for name in ("inverse", "identity", "diagonal", "square", "sqrt"):
        fn, what = _MATRIX_MAPS[name]
        for scope, where in s0_scopes:
            out.append(
                _replacement(
                    _elbo_atoms, "S0", "the prior covariance S0", fn, what, scope, where,
                    "use model.prior.cov as the prior covariance",
                )
            )  # fmt: skip
    s_scopes: Scopes = (
        (("ll_trace", "kl_trace", "kl_logdet_q"), ""),
        (("ll_trace",), " in E_q log p(x|z) only"),
        (("kl_trace", "kl_logdet_q"), " in the KL / entropy only"),
        (("kl_logdet_q",), " in log det S only"),
    )
    for name in ("diagonal", "transposed", "square", "sqrt", "inverse"):
        fn, what = _MATRIX_MAPS[name]
        if name == "diagonal":
            what = "its diagonal part (a mean-field projection of q)"
        for scope, where in s_scopes:
            out.append(
                _replacement(
                    _elbo_atoms, "S", "q's covariance S", fn, what, scope, where,
                    "q's covariance is q.cov = L L^T with L = q.scale_tril",
                )
            )  # fmt: skip
    for key, label, scope in (
        ("b", "the offset b", ("ll_data",)),
        ("mu0", "the prior mean mu0", ("kl_maha",)),
    ):
        out.append(
            _replacement(
                _elbo_atoms, key, label, lambda v: -v, "its negative (its sign is flipped)",
                scope, "", f"use {label} with its sign",
            )
        )  # fmt: skip
    return out


# ---------------------------------------------------------------------- KL
def kl_context(p: Gaussian, q: Gaussian) -> tuple[Params, dict[str, float]]:
    params: Params = {
        "mp": np.array(p.mean),
        "Sp": np.array(p.cov),
        "mq": np.array(q.mean),
        "Sq": np.array(q.cov),
        "K": p.dim,
    }
    return params, _kl_atoms(params)


def _kl_atoms(p: Params) -> dict[str, float]:
    sp, sq = p["Sp"], p["Sq"]
    delta = p["mq"] - p["mp"]
    return {
        "trace": 0.5 * float(np.trace(np.linalg.solve(sq, sp))),
        "maha": 0.5 * float(delta @ np.linalg.solve(sq, delta)),
        "const": -0.5 * p["K"],
        "logdet_q": 0.5 * _log_det(sq),
        "logdet_p": -0.5 * _log_det(sp),
    }


_KL_ALL = ("trace", "maha", "const", "logdet_q", "logdet_p")


def _kl_terms() -> tuple[Term, ...]:
    formula = "KL(p || q) = 1/2 (tr(S_q^-1 S_p) + (m_q - m_p)^T S_q^-1 (m_q - m_p) - K + ...)"

    def free(names: tuple[str, ...], label: str, **special: str) -> Term:
        table = {float(k.replace("m", "-")): v for k, v in special.items()}
        return Term(scaled(label, table), formula, _group(names), free=True)

    terms = [
        free(_KL_ALL, "the whole KL"),
        free(("trace",), "the trace term 1/2 tr(S_q^-1 S_p)"),
        free(("maha",), "the Mahalanobis term 1/2 (m_q - m_p)^T S_q^-1 (m_q - m_p)"),
        free(("const",), "the dimension term -K/2"),
        free(("logdet_q", "logdet_p"), "the log-determinant ratio 1/2 log(det S_q / det S_p)"),
        free(("logdet_q",), "the term 1/2 log det S_q"),
        free(("logdet_p",), "the term -1/2 log det S_p"),
        *_dimension_scaled(_KL_ALL, "the whole KL", "K", "sum over the K dimensions"),
    ]
    kl_scopes: tuple[tuple[str, str, Scopes], ...] = (
        (
            "Sq",
            "q's covariance S_q",
            (
                (("trace", "maha", "logdet_q"), ""),
                (("trace",), " in the trace term only"),
                (("maha",), " in the Mahalanobis term only"),
                (("logdet_q",), " in the log-determinant only"),
            ),
        ),
        (
            "Sp",
            "p's covariance S_p",
            (
                (("trace", "logdet_p"), ""),
                (("trace",), " in the trace term only"),
                (("logdet_p",), " in the log-determinant only"),
            ),
        ),
    )
    for key, label, scopes in kl_scopes:
        for name in ("inverse", "diagonal", "square", "sqrt", "transposed", "identity"):
            fn, what = _MATRIX_MAPS[name]
            for scope, where in scopes:
                terms.append(_replacement(_kl_atoms, key, label, fn, what, scope, where, formula))
    for name in ("diagonal", "transposed", "square"):
        fn, what = _MATRIX_MAPS[name]
        both_scopes: Scopes = (
            (_KL_ALL, ""),
            (("logdet_q", "logdet_p"), " in the log-determinants only"),
        )
        for scope, where in both_scopes:

            def both(
                context: tuple[Params, dict[str, float]],
                fn: Callable[[FloatArray], FloatArray] = fn,
                scope: tuple[str, ...] = scope,
            ) -> float:
                params, exact = context
                changed = _kl_atoms({**params, "Sp": fn(params["Sp"]), "Sq": fn(params["Sq"])})
                return float(sum(changed[a] - exact[a] for a in scope))

            text = f"both covariances are replaced by {what.replace('its', 'their')}{where}"
            terms.append(Term(_text(text), formula, both))
    return tuple(terms)


# ---------------------------------------------------------------------- evidence
def evidence_context(model: LinearGaussianModel, x: FloatArray) -> tuple[Params, dict[str, float]]:
    params: Params = {
        "W": np.array(model.weights),
        "b": np.array(model.bias),
        "mu0": np.array(model.prior.mean),
        "S0": np.array(model.prior.cov),
        "Psi": np.array(model.dense_noise_cov()),
        "x": np.asarray(x, dtype=np.float64),
        "C": lambda c: c,
        "D": model.data_dim,
        "K": model.latent_dim,
    }
    return params, _evidence_atoms(params)


def _evidence_atoms(p: Params) -> dict[str, float]:
    w = p["W"]
    cov = p["C"](w @ p["S0"] @ w.T + p["Psi"])
    r = p["x"] - w @ p["mu0"] - p["b"]
    return {
        "const": -0.5 * p["D"] * LOG_2PI,
        "logdet": -0.5 * _log_det(cov),
        "maha": -0.5 * float(r @ np.linalg.solve(cov, r)),
    }


def _constant(fn: Callable[[FloatArray], FloatArray]) -> Callable[[Any], Any]:
    return lambda _old: fn


def _evidence_terms() -> tuple[Term, ...]:
    formula = "log p(x) = log N(x; W mu0 + b, C) with C = W S0 W^T + Psi"
    all3 = ("const", "logdet", "maha")

    def free(names: tuple[str, ...], label: str) -> Term:
        return Term(scaled(label), formula, _group(names), free=True)

    terms = [
        free(all3, "the whole log p(x)"),
        free(("const",), "the constant -D/2 log(2 pi)"),
        free(("logdet",), "the log-determinant term -1/2 log det C"),
        free(("maha",), "the Mahalanobis term -1/2 (x - mu)^T C^-1 (x - mu) of log p(x)"),
        *_dimension_scaled(all3, "the whole log p(x)", "D", "sum over the D dimensions"),
    ]
    scopes: Scopes = (
        (all3, ""),
        (("logdet",), " in the log-determinant only"),
        (("maha",), " in the Mahalanobis term only"),
    )
    for name in ("isotropic", "first", "diagonal", "inverse", "square", "sqrt", "identity"):
        fn, what = _MATRIX_MAPS[name]
        for scope, where in scopes:
            terms.append(
                _replacement(_evidence_atoms, "Psi", "the noise covariance Psi", fn, what,
                             scope, where, formula)
            )  # fmt: skip
    for name in ("inverse", "identity", "diagonal", "square", "sqrt"):
        fn, what = _MATRIX_MAPS[name]
        terms.append(
            _replacement(_evidence_atoms, "S0", "the prior covariance S0", fn, what, all3, "",
                         formula)
        )  # fmt: skip
    for name in ("inverse", "diagonal"):
        fn, what = _MATRIX_MAPS[name]
        for scope, where in scopes:
            terms.append(
                _replacement(
                    _evidence_atoms, "C", "the marginal covariance C = W S0 W^T + Psi",
                    _constant(fn), what, scope, where, formula,
                )
            )  # fmt: skip
    for key, label in (("b", "the offset b"), ("mu0", "the prior mean mu0")):
        terms.append(
            _replacement(_evidence_atoms, key, label, lambda v: -v,
                         "its negative (its sign is flipped)", ("maha",), "", formula)
        )  # fmt: skip
    return tuple(terms)


ELBO_TERMS = _elbo_terms()
KL_TERMS = _kl_terms()
EVIDENCE_TERMS = _evidence_terms()


def safe_context(make: Callable[..., Any], *arguments: Any) -> Any:
    """``make(*arguments)``, or None where a parameter is singular or not finite."""
    try:
        return make(*arguments)
    except (ValueError, np.linalg.LinAlgError, FloatingPointError):
        return None
