r"""The ELBO forms' catalogues of suspects: the values and gradients well-known bugs give.

Every form (:mod:`._forms`) has its own bugs, written on the sample terms (``_Bug``:
the KL added instead of subtracted, the entropy with the variance as its scale, ...),
and shares the wrong laws of the samples (a transposed factor, ...). From them come
the suspects of the statistical estimator check (expectations of the buggy values),
of the pathwise estimator check (the buggy value at the given noise), and of the
gradient checks: the expected gradient of a bug (exact and statistical modes) and the
gradient a buggy reparameterised estimate gives at the given noise (pathwise mode).

Pathwise gradient suspects
--------------------------
With :math:`g(z) = \nabla_z\log p(x, z)` and :math:`z_i = m + L\varepsilon_i`:

* *sticking the landing*: :math:`\log q`'s parameters detached, so only the path
  gradient of :math:`-\log q(z)` through :math:`z` is kept,
  :math:`\nabla_z(-\log q)(z_i) = L^{-\top}\varepsilon_i`, giving
  :math:`\frac1n\sum_i (g(z_i) + L^{-\top}\varepsilon_i)` in :math:`m` and
  :math:`\operatorname{tril}\frac1n\sum_i (g(z_i) + L^{-\top}\varepsilon_i)
  \varepsilon_i^\top` in :math:`L` (unbiased: the dropped score term
  :math:`\operatorname{diag}(1/L_{kk}) - \operatorname{tril}(L^{-\top}\varepsilon_i
  \varepsilon_i^\top)` has mean zero, but it is not the gradient of this estimate);
* the gradient of another form's estimate;
* the analytic term's (or :math:`\log q`'s) gradient missing;
* the noise not scaled (:math:`z_i = m + \varepsilon_i`): the sampled terms then do not
  depend on :math:`L`; in the joint form
  :math:`-\log q(m + \varepsilon_i) = \sum_k\log L_{kk} + \frac12|L^{-1}\varepsilon_i|^2
  + \mathrm{const}`, whose gradient in :math:`L` is
  :math:`\operatorname{diag}(1/L_{kk}) - \operatorname{tril}(L^{-\top}u_iu_i^\top)`,
  :math:`u_i = L^{-1}\varepsilon_i`;
* the outer product of the factor's path gradient transposed
  (:math:`\varepsilon_i g_i^\top` for :math:`g_i\varepsilon_i^\top`);
* the sign flipped (the gradient of the loss).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._gaussian import LOG_2PI, Gaussian, kl_divergence
from .._linalg import cholesky, solve_tril
from .._model import LinearGaussianModel
from ._diagnosis import Suspect
from ._form_pieces import (
    GradientPair,
    _expected_pieces,
    _joint_scores,
    _kl_gradient,
    _log_scale_gradient,
    _Pieces,
    _sample_pieces,
    _samples,
    _through_samples,
)
from ._forms import FORMS, ElboForm
from ._problems import _flat_gradient, _flatten
from ._suspects import _estimator_suspects, _gradient_suspects, _pathwise_suspects

FloatArray = NDArray[np.float64]


def _is_standard(g: Gaussian) -> bool:
    return bool(np.all(g.mean == 0.0) and np.all(g.scale_tril == np.eye(g.dim)))


def _gaussian_with_cov(mean: FloatArray, cov: FloatArray) -> Gaussian | None:
    try:
        return Gaussian._trusted(mean, cholesky("cov", 0.5 * (cov + cov.T)))
    except ValueError:
        return None


def _scalar(value: Any) -> float | None:
    if value is None:
        return None
    return float(np.mean(value))


#: Wrong laws of the samples, shared by every form: (name, advice, z from (q, eps),
#: covariance of z from q).
_SAMPLING_BUGS: tuple[
    tuple[
        str,
        str,
        Callable[[Gaussian, FloatArray], FloatArray],
        Callable[[Gaussian], FloatArray],
    ],
    ...,
] = (
    (
        "samples use the transposed Cholesky factor (z = m + L^T eps)",
        "z = m + L eps, i.e. eps @ L.T for row vectors, with L lower triangular",
        lambda q, e: q.mean + e @ q.scale_tril,
        lambda q: q.scale_tril.T @ q.scale_tril,
    ),
    (
        "samples use the covariance as the scale (z = m + S eps)",
        "the scale is the Cholesky factor L, not S = L L^T",
        lambda q, e: q.mean + e @ q.cov.T,
        lambda q: q.cov @ q.cov,
    ),
    (
        "one noise draw is shared across latent dimensions",
        "use every column of eps (shape (n_samples, K)), one independent normal per dimension",
        lambda q, e: q.mean + np.repeat(e[:, :1], q.dim, axis=1) @ q.scale_tril.T,
        lambda q: q.scale_tril @ np.ones((q.dim, q.dim)) @ q.scale_tril.T,
    ),
)


@dataclass(frozen=True)
class _Bug:
    """A bug of one form: the value it gives from the sample pieces (None: undefined)."""

    name: str
    advice: str
    value: Callable[[LinearGaussianModel, Gaussian, _Pieces], Any]


# ---------------------------------------------------------------------- estimates
def estimator_suspects(form: ElboForm, n_samples: int) -> tuple[Suspect, ...]:
    """Suspects ``predict(model, q, x)`` of ``form``: the expected estimate each bug gives."""

    def expected(bug: _Bug) -> Callable[..., Any]:
        return lambda m, q, x: _scalar(bug.value(m, q, _expected_pieces(m, q, x, n_samples)))

    def wrong_law(cov_of: Callable[[Gaussian], FloatArray]) -> Callable[..., Any]:
        return lambda m, q, x: _scalar(
            form.assemble(m, q, _expected_pieces(m, q, x, n_samples, (q.mean, cov_of(q))))
        )

    sampling = tuple(
        Suspect(name, advice, wrong_law(cov_of)) for name, advice, _, cov_of in _SAMPLING_BUGS
    )
    return sampling + tuple(Suspect(b.name, b.advice, expected(b)) for b in form._bugs())


def pathwise_suspects(form: ElboForm) -> tuple[Suspect, ...]:
    """Suspects ``predict(model, q, x, eps)`` of ``form``: the value each bug gives."""

    def at(transform: Callable[[Gaussian, FloatArray], FloatArray]) -> Callable[..., Any]:
        return lambda m, q, x, e: form.pathwise_value(m, q, x, transform(q, e))

    def sampled(bug: _Bug) -> Callable[..., Any]:
        return lambda m, q, x, e: _scalar(bug.value(m, q, _sample_pieces(m, q, x, _samples(q, e))))

    sampling = tuple(
        Suspect(name, advice, at(transform)) for name, advice, transform, _ in _SAMPLING_BUGS
    )
    own = tuple(Suspect(b.name, b.advice, sampled(b)) for b in form._bugs())
    negated = Suspect(
        "the loss -ELBO is returned instead of the ELBO",
        "return the estimate of the ELBO itself (a library's loss is -ELBO: negate it)",
        lambda m, q, x, e: -form.pathwise_value(m, q, x, _samples(q, e)),
    )
    return sampling + own + _other_forms(form) + (negated,)


def _other_forms(form: ElboForm) -> tuple[Suspect, ...]:
    """A correct estimate of another form: right in expectation, wrong per sample."""

    def value_of(other: ElboForm) -> Callable[..., Any]:
        return lambda m, q, x, e: other.pathwise_value(m, q, x, _samples(q, e))

    return tuple(
        Suspect(
            f"fn computes {other.title}, {other.formula}, not {form.title}",
            f"the forms agree in expectation but not per sample: verify with form={other.name!r}",
            value_of(other),
        )
        for other in FORMS.values()
        if other.name != form.name
    )


def joint_estimator_suspects(n_samples: int) -> tuple[Suspect, ...]:
    """The joint form's statistical suspects: the shared catalogue, then its own bugs."""
    own = estimator_suspects(FORMS["joint"], n_samples)[len(_SAMPLING_BUGS) :]
    return _estimator_suspects(n_samples) + own


def joint_pathwise_suspects() -> tuple[Suspect, ...]:
    own = pathwise_suspects(FORMS["joint"])[len(_SAMPLING_BUGS) :]
    return _pathwise_suspects() + own


# ---------------------------------------------------------------------- gradients
def _flat(pair: GradientPair) -> FloatArray:
    return _flatten((pair[0], np.tril(pair[1])))


def gradient_suspects(form: ElboForm) -> tuple[Suspect, ...]:
    """Suspects ``predict(model, q, x)``: the flat expected gradient of each bug.

    The shared catalogue (:func:`._suspects._gradient_suspects`), and for the
    analytic-KL form its closed-form KL's gradient missing: in expectation the
    likelihood's part of the ELBO's gradient alone.
    """
    shared = _gradient_suspects()
    if form.name != "analytic_kl":
        return shared

    def without_kl(m: LinearGaussianModel, q: Gaussian, x: FloatArray) -> FloatArray:
        (km, kl_factor), _ = _kl_gradient(m, q)
        return _flat_gradient(m, q, x) + _flat((km, kl_factor))

    return (
        *shared,
        Suspect(
            "the KL's gradient is missing (only the reconstruction is differentiated)",
            "subtract d KL / d m = S0^-1 (m - mu0) and d KL / d L = tril(S0^-1 L) - diag(1 / L_ii)",
            without_kl,
        ),
    )


def _inverse_transposed_rows(q: Gaussian, eps: FloatArray) -> FloatArray:
    r"""Rows :math:`L^{-\top}\varepsilon_i`: the gradient of :math:`-\log q` at
    :math:`z_i = m + L\varepsilon_i` (path only)."""
    return np.asarray(solve_tril(q.scale_tril, eps.T, trans=True).T)


def _sticking_the_landing(
    form: ElboForm, m: LinearGaussianModel, q: Gaussian, x: FloatArray, e: FloatArray
) -> FloatArray:
    scores = _joint_scores(m, x, _samples(q, e))[0] + _inverse_transposed_rows(q, e)
    return _flat(_through_samples(scores, e))


def _unscaled(
    form: ElboForm, m: LinearGaussianModel, q: Gaussian, x: FloatArray, e: FloatArray
) -> FloatArray:
    """The gradient when the samples are ``m + eps``: no path to L; the analytic term's
    (or log q's) own dependence on L remains."""
    gm = np.mean(form.sampled_scores(m, x, q.mean + e), axis=0)
    if form.name == "analytic_kl":
        (km, kl_factor), _ = _kl_gradient(m, q)
        return _flat((gm - km, -kl_factor))
    gl = _log_scale_gradient(q)
    if form.name == "joint":  # -log q(m + eps) = sum log L_kk + |L^-1 eps|^2 / 2 + const
        u = np.asarray(solve_tril(q.scale_tril, e.T).T)
        gl = gl - np.tril(_inverse_transposed_rows(q, u).T @ u) / e.shape[0]
    return _flat((gm, gl))


def _transposed_outer(
    form: ElboForm, m: LinearGaussianModel, q: Gaussian, x: FloatArray, e: FloatArray
) -> FloatArray:
    gm, gl = form.pathwise_gradient(m, q, x, e)
    scores = form.sampled_scores(m, x, _samples(q, e))
    path = scores.T @ e / e.shape[0]
    return _flat((gm, gl - np.tril(path) + np.tril(path.T)))


def _without_analytic(
    form: ElboForm, m: LinearGaussianModel, q: Gaussian, x: FloatArray, e: FloatArray
) -> FloatArray:
    return _flat(_through_samples(form.sampled_scores(m, x, _samples(q, e)), e))


def pathwise_gradient_suspects(form: ElboForm) -> tuple[Suspect, ...]:
    """Suspects ``predict(model, q, x, eps)`` of ``form``'s pathwise gradient (flat)."""
    missing = {
        "joint": (
            "the gradient of -log q(z), diag(1 / L_ii), is missing",
            "at fixed eps, -log q(m + L eps) = sum(log diag L) + const: add diag(1 / L_ii)",
        ),
        "analytic_kl": (
            "the KL's gradient is missing (only the reconstruction is differentiated)",
            "subtract d KL / d m = S0^-1 (m - mu0) and d KL / d L = tril(S0^-1 L) - diag(1 / L_ii)",
        ),
        "analytic_entropy": (
            "the entropy's gradient diag(1 / L_ii) is missing",
            "d H(q) / d L = diag(1 / L_ii)",
        ),
    }[form.name]

    def bound(
        rule: Callable[[ElboForm, LinearGaussianModel, Gaussian, FloatArray, FloatArray], Any],
    ) -> Callable[..., Any]:
        return lambda m, q, x, e: rule(form, m, q, x, e)

    def of(other: ElboForm) -> Callable[..., Any]:
        return lambda m, q, x, e: _flat(other.pathwise_gradient(m, q, x, e))

    return (
        Suspect(
            "the gradient has the wrong sign (the gradient of the loss -ELBO)",
            "ascend the ELBO: return d ELBO / d (m, L)",
            lambda m, q, x, e: -_flat(form.pathwise_gradient(m, q, x, e)),
        ),
        Suspect(
            "log q(z)'s parameters are detached (sticking the landing): only the path "
            "gradient of -log q(z) through z is kept",
            "unbiased, but not the gradient of this estimate: verify it with "
            "mode='statistical', which accepts it",
            bound(_sticking_the_landing),
        ),
        Suspect(missing[0], missing[1], bound(_without_analytic)),
        Suspect(
            "the noise is not scaled (z = m + eps), so the samples do not depend on L",
            "z = m + L eps: differentiate through L too",
            bound(_unscaled),
        ),
        Suspect(
            "the outer product of the factor's path gradient is transposed "
            "(eps_i g_i^T for g_i eps_i^T)",
            "d/dL of g . (L eps) is g eps^T (row: the gradient, column: the noise)",
            bound(_transposed_outer),
        ),
        *(
            Suspect(
                f"fn returns the gradient of {other.title}, {other.formula}, not of {form.title}",
                f"the forms' gradients agree in expectation but not per sample: verify with "
                f"form={other.name!r}",
                of(other),
            )
            for other in FORMS.values()
            if other.name != form.name
        ),
    )


# ---------------------------------------------------------------------- catalogues
def joint_bugs() -> tuple[_Bug, ...]:
    """The joint form's own bugs."""
    return (
        _Bug(
            "log q(z) is added instead of subtracted",
            "the estimate is log p(x, z) - log q(z)",
            lambda m, q, p: p.log_likelihood + p.log_prior + p.log_q,
        ),
        _Bug(
            "log p(z) is missing (log p(x | z) used where log p(x, z) belongs)",
            "log p(x, z) = log p(x | z) + log p(z)",
            lambda m, q, p: p.log_likelihood - p.log_q,
        ),
        _Bug(
            "log q(z) is evaluated under the prior (log p(z) - log p(z) cancels)",
            "log q(z) uses q's mean and covariance, not the prior's",
            lambda m, q, p: p.log_likelihood,
        ),
    )


def analytic_kl_bugs() -> tuple[_Bug, ...]:
    """The analytic-KL form's own bugs."""

    def kl(m: LinearGaussianModel, q: Gaussian) -> float:
        return float(kl_divergence(q, m.prior))

    def kl_to(g: Gaussian | None, m: LinearGaussianModel) -> float | None:
        return None if g is None else float(kl_divergence(g, m.prior))

    def with_sd_as_variance(m: LinearGaussianModel, q: Gaussian) -> float | None:
        if not np.array_equal(q.cov, np.diag(np.diagonal(q.cov))):
            return None
        return kl_to(_gaussian_with_cov(q.mean, np.diag(np.sqrt(q.variances))), m)

    def unless_none(value: float | None, build: Callable[[float], Any]) -> Any:
        return None if value is None else build(value)

    return (
        _Bug(
            "the KL is added instead of subtracted",
            "the ELBO is the reconstruction MINUS KL(q || p(z))",
            lambda m, q, p: p.log_likelihood + kl(m, q),
        ),
        _Bug(
            "the KL is averaged over latent dimensions instead of summed",
            "sum the per-dimension KL terms over K (no .mean() over the latent axis)",
            lambda m, q, p: (
                p.log_likelihood - kl(m, q) / m.latent_dim if m.latent_dim > 1 else None
            ),
        ),
        _Bug(
            "the KL is computed against N(0, I) although the prior is not standard normal",
            "use the model's prior mean mu0 and covariance S0 in the KL",
            lambda m, q, p: (
                None
                if _is_standard(m.prior)
                else p.log_likelihood - float(kl_divergence(q, Gaussian.standard(q.dim)))
            ),
        ),
        _Bug(
            "the KL is taken in the wrong direction, KL(p(z) || q)",
            "the ELBO uses KL(q || p(z)) (q first)",
            lambda m, q, p: p.log_likelihood - float(kl_divergence(m.prior, q)),
        ),
        _Bug(
            "the KL term is missing",
            "subtract KL(q || p(z)) once",
            lambda m, q, p: p.log_likelihood,
        ),
        _Bug(
            "log p(x, z) is used where log p(x | z) belongs (the prior counted twice, "
            "in log p(z) and in the KL)",
            "with the KL in closed form, sample only the likelihood log p(x | z)",
            lambda m, q, p: p.log_likelihood + p.log_prior - kl(m, q),
        ),
        _Bug(
            "the reconstruction is summed over samples instead of averaged",
            "average log p(x | z_i) over the samples, then subtract the KL once",
            lambda m, q, p: p.n * p.log_likelihood - kl(m, q) if p.n > 1 else None,
        ),
        _Bug(
            "the KL is subtracted once per data dimension (broadcast against the (D,) "
            "per-dimension log-likelihood terms and then summed)",
            "sum the log-likelihood over the D data dimensions first, then subtract the KL",
            lambda m, q, p: p.log_likelihood - m.data_dim * kl(m, q) if m.data_dim > 1 else None,
        ),
        _Bug(
            "the KL lacks its factor 1/2",
            "KL = 1/2 (tr(S0^-1 S) + (m - mu0)^T S0^-1 (m - mu0) - K + log det S0 - log det S)",
            lambda m, q, p: p.log_likelihood - 2.0 * kl(m, q),
        ),
        _Bug(
            "the KL's dimension term -K is missing",
            "KL = 1/2 (... - K ...)",
            lambda m, q, p: p.log_likelihood - kl(m, q) - 0.5 * q.dim,
        ),
        _Bug(
            "the KL uses q's standard deviations where its variances belong",
            "the KL needs the variances sigma^2 (exp(log_var), not exp(0.5 * log_var))",
            lambda m, q, p: unless_none(
                with_sd_as_variance(m, q), lambda wrong: p.log_likelihood - wrong
            ),
        ),
    )


def analytic_entropy_bugs() -> tuple[_Bug, ...]:
    """The analytic-entropy form's own bugs."""

    def joint(p: _Pieces) -> FloatArray:
        return p.log_likelihood + p.log_prior

    def entropy(q: Gaussian) -> float:
        return float(q.entropy())

    return (
        _Bug(
            "the entropy has the wrong sign (H(q) subtracted)",
            "the ELBO is E_q[log p(x, z)] + H(q): add the entropy",
            lambda m, q, p: joint(p) - entropy(q),
        ),
        _Bug(
            "the entropy term H(q) is missing",
            "add H(q) = K/2 (1 + log 2 pi) + sum(log diag L)",
            lambda m, q, p: joint(p),
        ),
        _Bug(
            "the entropy uses the variance as the scale (log det S where 1/2 log det S belongs)",
            "H(q) = K/2 (1 + log 2 pi) + sum(log diag L) = ... + 1/2 sum(log variances)",
            lambda m, q, p: joint(p) + entropy(q) + 0.5 * float(q.log_det_cov),
        ),
        _Bug(
            "the log-determinant of q's covariance is missing from the entropy",
            "H(q) includes + 1/2 log det S = sum(log diag L)",
            lambda m, q, p: joint(p) + entropy(q) - 0.5 * float(q.log_det_cov),
        ),
        _Bug(
            "the entropy's constant K/2 (1 + log 2 pi) is missing",
            "H(q) = K/2 (1 + log 2 pi) + sum(log diag L)",
            lambda m, q, p: joint(p) + entropy(q) - 0.5 * q.dim * (1.0 + LOG_2PI),
        ),
        _Bug(
            "the entropy's K/2 is missing (K/2 log 2 pi used for K/2 (1 + log 2 pi))",
            "H(q) = K/2 (1 + log 2 pi) + sum(log diag L)",
            lambda m, q, p: joint(p) + entropy(q) - 0.5 * q.dim,
        ),
        _Bug(
            "the entropy is averaged over latent dimensions instead of summed",
            "sum the per-dimension entropies over K",
            lambda m, q, p: joint(p) + entropy(q) / q.dim if q.dim > 1 else None,
        ),
        _Bug(
            "log p(z) is missing (log p(x | z) used where log p(x, z) belongs)",
            "with the entropy in closed form, sample the joint log p(x | z) + log p(z)",
            lambda m, q, p: p.log_likelihood + entropy(q),
        ),
        _Bug(
            "the log joint is summed over samples instead of averaged",
            "average log p(x, z_i) over the samples, then add H(q) once",
            lambda m, q, p: p.n * joint(p) + entropy(q) if p.n > 1 else None,
        ),
    )
