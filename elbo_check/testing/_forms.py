r"""The three forms in which users write a Monte-Carlo ELBO, with their exact values.

Every form has the same expectation under :math:`q` — the ELBO — but a different value
for given samples :math:`z_i = m + L\varepsilon_i`, a different variance, and different
typical bugs:

========================  ===================================================================
``"joint"``               :math:`\frac1n\sum_i \log p(x, z_i) - \log q(z_i)`
``"analytic_kl"``         :math:`\frac1n\sum_i \log p(x\mid z_i) - \mathrm{KL}(q\,\|\,p(z))`
``"analytic_entropy"``    :math:`\frac1n\sum_i \log p(x, z_i) + H(q)`
========================  ===================================================================

The analytic-KL form is the one of ``TraceMeanField_ELBO`` and of most VAE code; the
analytic-entropy form is the one of ADVI. Each form object (:data:`JOINT`,
:data:`ANALYTIC_KL`, :data:`ANALYTIC_ENTROPY`) gives its exact per-sample value
(:meth:`ElboForm.pathwise_value`) from the oracle's pieces and its catalogues of
suspects, the values its well-known bugs produce, for the statistical and the pathwise
estimator checks. :func:`check_form` turns a user's ``form=`` argument into one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._errors import InvalidInputError
from .._gaussian import LOG_2PI, Gaussian, kl_divergence
from .._linalg import cholesky
from .._model import LinearGaussianModel
from ._diagnosis import Suspect
from ._suspects import _estimator_suspects, _pathwise_suspects

__all__ = [
    "ANALYTIC_ENTROPY",
    "ANALYTIC_KL",
    "FORMS",
    "JOINT",
    "ElboForm",
    "check_form",
]

FloatArray = NDArray[np.float64]


# ---------------------------------------------------------------------- pieces
@dataclass(frozen=True)
class _Pieces:
    """The sample terms of an estimate: per-sample arrays at given ``z`` (pathwise) or
    their expectations under some law of ``z`` (statistical), and the sample count."""

    log_likelihood: FloatArray
    log_prior: FloatArray
    log_q: FloatArray
    n: int


def _sample_pieces(
    model: LinearGaussianModel, q: Gaussian, x: FloatArray, z: FloatArray
) -> _Pieces:
    return _Pieces(
        np.asarray(model.log_likelihood(x, z), dtype=np.float64),
        np.asarray(model.prior.log_prob(z), dtype=np.float64),
        np.asarray(q.log_prob(z), dtype=np.float64),
        int(z.shape[0]),
    )


def _expected_log_density(g: Gaussian, mean: FloatArray, cov: FloatArray) -> float:
    """E over z ~ N(mean, cov) of log g(z) (cov may be singular)."""
    precision = g.precision
    offset = mean - g.mean
    return -0.5 * (
        g.dim * LOG_2PI
        + float(g.log_det_cov)
        + float(np.sum(precision * cov))
        + float(offset @ precision @ offset)
    )


def _expected_pieces(
    model: LinearGaussianModel,
    q: Gaussian,
    x: FloatArray,
    n: int,
    law: tuple[FloatArray, FloatArray] | None = None,
) -> _Pieces:
    """Expectations of the sample terms over z ~ q, or over z ~ N(mean, cov) = ``law``."""
    if law is None:
        terms = model.elbo_terms(q, x)
        return _Pieces(
            np.asarray(terms.expected_log_likelihood, dtype=np.float64),
            np.asarray(-terms.cross_entropy, dtype=np.float64),
            np.asarray(-terms.entropy, dtype=np.float64),
            n,
        )
    mean, cov = law
    residual = model._noise.whiten(x - model.bias - model.weights @ mean)
    weights = model._marginal.whitened_weights
    ell = -0.5 * (
        model.data_dim * LOG_2PI
        + model._noise.logdet
        + float(residual @ residual)
        + float(np.sum((weights.T @ weights) * cov))
    )
    return _Pieces(
        np.asarray(ell),
        np.asarray(_expected_log_density(model.prior, mean, cov)),
        np.asarray(_expected_log_density(q, mean, cov)),
        n,
    )


def _is_standard(g: Gaussian) -> bool:
    return bool(np.all(g.mean == 0.0) and np.all(g.scale_tril == np.eye(g.dim)))


def _gaussian_with_cov(mean: FloatArray, cov: FloatArray) -> Gaussian | None:
    try:
        return Gaussian._trusted(mean, cholesky("cov", 0.5 * (cov + cov.T)))
    except ValueError:
        return None


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


# ---------------------------------------------------------------------- forms
class ElboForm:
    r"""How an ELBO estimate combines sampled terms with analytic ones.

    Subclasses define :meth:`assemble`, the per-sample value from the sample terms
    :math:`\log p(x\mid z_i)`, :math:`\log p(z_i)` and :math:`\log q(z_i)`; its mean over
    :math:`z_i = m + L\varepsilon_i` is :meth:`pathwise_value` and its expectation under
    :math:`q` is the ELBO for every form.

    Attributes
    ----------
    name : str
        The string that selects the form, e.g. ``"analytic_kl"``.
    title : str
        The form in words, e.g. ``"the analytic-KL form"``.
    formula : str
        The per-sample average in plain text.
    """

    name: str = ""
    title: str = ""
    formula: str = ""
    #: What to compare when no suspect explains a pathwise mismatch.
    fallback: str = ""

    def __repr__(self) -> str:
        return f"ElboForm({self.name!r})"

    def describe(self) -> str:
        """One line: the form's name and its per-sample value, e.g. for failure messages."""
        return f"{self.title} (form={self.name!r}): {self.formula}, z_i = m + L eps_i"

    # -- values
    def assemble(self, model: LinearGaussianModel, q: Gaussian, pieces: _Pieces) -> FloatArray:
        """The per-sample values (or their expectation) from the sample terms."""
        raise NotImplementedError

    def pathwise_value(
        self, model: LinearGaussianModel, q: Gaussian, x: FloatArray, z: FloatArray
    ) -> float:
        """The exact estimate for the samples ``z`` (shape ``(n, K)``): the mean over rows."""
        return float(np.mean(self.assemble(model, q, _sample_pieces(model, q, x, z))))

    def magnitude(
        self, model: LinearGaussianModel, q: Gaussian, x: FloatArray, z: FloatArray
    ) -> float:
        """The size of the terms the estimate is computed from, for relative tolerances."""
        raise NotImplementedError

    # -- suspects
    def _bugs(self) -> tuple[_Bug, ...]:
        """The form's own bugs, written on the sample pieces (both modes)."""
        return ()

    def _sampling_bugs(self) -> tuple[_Bug, ...]:
        return ()

    def estimator_suspects(self, n_samples: int) -> tuple[Suspect, ...]:
        """Suspects ``predict(model, q, x)``: the expected estimate each bug gives."""

        def expected(bug: _Bug) -> Callable[..., Any]:
            return lambda m, q, x: _scalar(bug.value(m, q, _expected_pieces(m, q, x, n_samples)))

        def wrong_law(cov_of: Callable[[Gaussian], FloatArray]) -> Callable[..., Any]:
            return lambda m, q, x: _scalar(
                self.assemble(m, q, _expected_pieces(m, q, x, n_samples, (q.mean, cov_of(q))))
            )

        sampling = tuple(
            Suspect(name, advice, wrong_law(cov_of)) for name, advice, _, cov_of in _SAMPLING_BUGS
        )
        return sampling + tuple(Suspect(b.name, b.advice, expected(b)) for b in self._bugs())

    def pathwise_suspects(self) -> tuple[Suspect, ...]:
        """Suspects ``predict(model, q, x, eps)``: the value each bug gives for ``eps``."""

        def at(transform: Callable[[Gaussian, FloatArray], FloatArray]) -> Callable[..., Any]:
            return lambda m, q, x, e: self.pathwise_value(m, q, x, transform(q, e))

        def sampled(bug: _Bug) -> Callable[..., Any]:
            return lambda m, q, x, e: _scalar(
                bug.value(m, q, _sample_pieces(m, q, x, q.mean + e @ q.scale_tril.T))
            )

        sampling = tuple(
            Suspect(name, advice, at(transform)) for name, advice, transform, _ in _SAMPLING_BUGS
        )
        own = tuple(Suspect(b.name, b.advice, sampled(b)) for b in self._bugs())
        return sampling + own + self._other_forms()

    def _other_forms(self) -> tuple[Suspect, ...]:
        """A correct estimate of another form: right in expectation, wrong per sample."""

        def value_of(form: ElboForm) -> Callable[..., Any]:
            return lambda m, q, x, e: form.pathwise_value(m, q, x, q.mean + e @ q.scale_tril.T)

        return tuple(
            Suspect(
                f"fn computes {form.title}, {form.formula}, not {self.title}",
                f"the forms agree in expectation but not per sample: verify with "
                f"form={form.name!r}",
                value_of(form),
            )
            for form in FORMS.values()
            if form.name != self.name
        )


def _scalar(value: Any) -> float | None:
    if value is None:
        return None
    return float(np.mean(value))


def _mean(values: FloatArray) -> float:
    return float(np.mean(values))


class JointForm(ElboForm):
    r"""The joint form: every term sampled.

    .. math::
        \widehat{\mathrm{ELBO}} = \frac1n\sum_{i=1}^n
            \bigl[\log p(x, z_i) - \log q(z_i)\bigr],\qquad z_i = m + L\varepsilon_i.

    Its expectation is the ELBO; with :math:`q` the exact posterior every sample equals
    :math:`\log p(x)` (zero variance).
    """

    name = "joint"
    title = "the joint form"
    formula = "mean_i [log p(x, z_i) - log q(z_i)]"
    fallback = "compare log p(x, z) and log q(z) at z = m + L eps"

    def assemble(self, model: LinearGaussianModel, q: Gaussian, pieces: _Pieces) -> FloatArray:
        return pieces.log_likelihood + pieces.log_prior - pieces.log_q

    def pathwise_value(
        self, model: LinearGaussianModel, q: Gaussian, x: FloatArray, z: FloatArray
    ) -> float:
        return float(np.mean(model.log_joint(x, z) - q.log_prob(z)))

    def magnitude(
        self, model: LinearGaussianModel, q: Gaussian, x: FloatArray, z: FloatArray
    ) -> float:
        return float(np.mean(np.abs(model.log_joint(x, z)) + np.abs(q.log_prob(z))))

    def _bugs(self) -> tuple[_Bug, ...]:
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

    def estimator_suspects(self, n_samples: int) -> tuple[Suspect, ...]:
        # The shared catalogue is the joint form's; its own bugs follow.
        own = super().estimator_suspects(n_samples)[len(_SAMPLING_BUGS) :]
        return _estimator_suspects(n_samples) + own

    def pathwise_suspects(self) -> tuple[Suspect, ...]:
        own = super().pathwise_suspects()[len(_SAMPLING_BUGS) :]
        return _pathwise_suspects() + own


class AnalyticKLForm(ElboForm):
    r"""The analytic-KL form (``TraceMeanField_ELBO``, most VAE code): the
    reconstruction sampled, the KL to the prior in closed form.

    .. math::
        \widehat{\mathrm{ELBO}} = \frac1n\sum_{i=1}^n \log p(x\mid z_i)
            - \mathrm{KL}\bigl(q\,\|\,p(z)\bigr),\qquad z_i = m + L\varepsilon_i,

    with
    :math:`\mathrm{KL}(q\|p) = \tfrac12\bigl(\operatorname{tr}(\Sigma_0^{-1}S)
    + (m-\mu_0)^\top\Sigma_0^{-1}(m-\mu_0) - K + \log\det\Sigma_0 - \log\det S\bigr)`.
    """

    name = "analytic_kl"
    title = "the analytic-KL form"
    formula = "mean_i log p(x | z_i) - KL(q || p(z))"
    fallback = "compare log p(x | z) at z = m + L eps and the closed-form KL(q || p(z))"

    def assemble(self, model: LinearGaussianModel, q: Gaussian, pieces: _Pieces) -> FloatArray:
        return pieces.log_likelihood - float(kl_divergence(q, model.prior))

    def magnitude(
        self, model: LinearGaussianModel, q: Gaussian, x: FloatArray, z: FloatArray
    ) -> float:
        # The KL is a difference of the cross-entropy H(q, p) and the entropy H(q).
        entropy = float(q.entropy())
        cross = float(kl_divergence(q, model.prior)) + entropy
        return float(np.mean(np.abs(model.log_likelihood(x, z)))) + abs(cross) + abs(entropy)

    def _bugs(self) -> tuple[_Bug, ...]:
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
                lambda m, q, p: (
                    p.log_likelihood - m.data_dim * kl(m, q) if m.data_dim > 1 else None
                ),
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


class AnalyticEntropyForm(ElboForm):
    r"""The analytic-entropy form (ADVI): the log joint sampled, the entropy of
    :math:`q` in closed form.

    .. math::
        \widehat{\mathrm{ELBO}} = \frac1n\sum_{i=1}^n \log p(x, z_i) + H(q),\qquad
        H(q) = \tfrac K2(1 + \log 2\pi) + \textstyle\sum_k \log L_{kk}.
    """

    name = "analytic_entropy"
    title = "the analytic-entropy form"
    formula = "mean_i log p(x, z_i) + H(q)"
    fallback = "compare log p(x, z) at z = m + L eps and the closed-form entropy H(q)"

    def assemble(self, model: LinearGaussianModel, q: Gaussian, pieces: _Pieces) -> FloatArray:
        return pieces.log_likelihood + pieces.log_prior + float(q.entropy())

    def magnitude(
        self, model: LinearGaussianModel, q: Gaussian, x: FloatArray, z: FloatArray
    ) -> float:
        entropy_terms = 0.5 * q.dim * (1.0 + LOG_2PI) + 0.5 * abs(float(q.log_det_cov))
        return float(np.mean(np.abs(model.log_joint(x, z)))) + entropy_terms

    def _bugs(self) -> tuple[_Bug, ...]:
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
                "the entropy uses the variance as the scale (log det S where 1/2 log det S "
                "belongs)",
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


JOINT: ElboForm = JointForm()
ANALYTIC_KL: ElboForm = AnalyticKLForm()
ANALYTIC_ENTROPY: ElboForm = AnalyticEntropyForm()

#: The forms by name, in the order they are offered.
FORMS: dict[str, ElboForm] = {form.name: form for form in (JOINT, ANALYTIC_KL, ANALYTIC_ENTROPY)}


def check_form(value: Any) -> ElboForm:
    """The :class:`ElboForm` a ``form=`` argument names; a clear error for anything else.

    Parameters
    ----------
    value : str or ElboForm
        ``"joint"``, ``"analytic_kl"`` or ``"analytic_entropy"``, or one of
        :data:`JOINT`, :data:`ANALYTIC_KL`, :data:`ANALYTIC_ENTROPY`.

    Raises
    ------
    InvalidInputError
        For any other value, naming the choices.
    """
    if isinstance(value, ElboForm) and FORMS.get(value.name) is value:
        return value
    choices = ", ".join(repr(name) for name in FORMS)
    if isinstance(value, str):
        if value in FORMS:
            return FORMS[value]
        hint = ""
        normalised = value.strip().lower().replace("-", "_").replace(" ", "_")
        if normalised in FORMS:
            hint = f" (did you mean {normalised!r}?)"
        raise InvalidInputError(f"form must be one of {choices}; got form={value!r}{hint}")
    raise InvalidInputError(
        f"form must be one of {choices} (a string); got form={value!r} ({type(value).__name__})"
    )
