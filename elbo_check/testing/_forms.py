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
(:meth:`ElboForm.pathwise_value`) and the exact gradient of that value with respect to
:math:`(m, L)` at fixed noise (:meth:`ElboForm.pathwise_gradient`: what autodiff of a
reparameterised estimate gives) from the oracle's pieces, and its catalogues of
suspects, the values its well-known bugs produce (in :mod:`._form_suspects`).
:func:`check_form` turns a user's ``form=`` argument into one of them.

Pathwise gradients
------------------
With :math:`z_i = m + L\varepsilon_i` and the scores of the model

.. math::
    g^{\mathrm{lik}}(z) = \nabla_z \log p(x\mid z) = W^\top\Psi^{-1}(x - Wz - b),\qquad
    g(z) = \nabla_z \log p(x, z) = g^{\mathrm{lik}}(z) - \Sigma_0^{-1}(z - \mu_0),

a sampled term :math:`\frac1n\sum_i f(z_i)` has the gradient
:math:`\frac1n\sum_i \nabla f(z_i)` in :math:`m` and
:math:`\operatorname{tril}\bigl(\frac1n\sum_i \nabla f(z_i)\,\varepsilon_i^\top\bigr)` in
:math:`L`. At fixed noise :math:`\log q(z_i) = -\frac K2\log 2\pi - \sum_k\log L_{kk}
- \frac12|\varepsilon_i|^2` depends on :math:`L` only through its diagonal, so the joint
and the analytic-entropy forms have the same pathwise gradient.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .._errors import InvalidInputError
from .._gaussian import LOG_2PI, Gaussian, kl_divergence
from .._model import LinearGaussianModel
from ._diagnosis import Suspect
from ._elbo_form import ElboForm
from ._form_pieces import (
    GradientPair,
    _joint_path_gradient,
    _joint_scores,
    _kl_gradient,
    _likelihood_scores,
    _Pieces,
    _samples,
    _through_samples,
)

if TYPE_CHECKING:
    from ._form_suspects import _Bug

__all__ = [
    "ANALYTIC_ENTROPY",
    "ANALYTIC_KL",
    "FORMS",
    "JOINT",
    "ElboForm",
    "check_form",
]

FloatArray = NDArray[np.float64]


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

    def _path_gradient(
        self, model: LinearGaussianModel, q: Gaussian, x: FloatArray, eps: FloatArray
    ) -> tuple[GradientPair, GradientPair]:
        r"""At fixed noise :math:`-\log q(z_i) = \frac K2\log 2\pi + \sum_k\log L_{kk}
        + \frac12|\varepsilon_i|^2`, so

        .. math::
            \nabla_m = \frac1n\sum_i g(z_i),\qquad
            \nabla_L = \operatorname{tril}\Bigl(\frac1n\sum_i g(z_i)\varepsilon_i^\top\Bigr)
                + \operatorname{diag}(1/L_{kk}).
        """
        return _joint_path_gradient(model, q, x, eps)

    def _sampled_scores(
        self, model: LinearGaussianModel, x: FloatArray, z: FloatArray
    ) -> FloatArray:
        return _joint_scores(model, x, z)[0]

    def _bugs(self) -> tuple[_Bug, ...]:
        from ._form_suspects import joint_bugs

        return joint_bugs()

    def _estimator_suspects(self, n_samples: int) -> tuple[Suspect, ...]:
        from ._form_suspects import joint_estimator_suspects

        return joint_estimator_suspects(n_samples)

    def pathwise_suspects(self) -> tuple[Suspect, ...]:
        from ._form_suspects import joint_pathwise_suspects

        return joint_pathwise_suspects()


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

    def _path_gradient(
        self, model: LinearGaussianModel, q: Gaussian, x: FloatArray, eps: FloatArray
    ) -> tuple[GradientPair, GradientPair]:
        r"""The likelihood's path gradient minus the KL's closed-form gradient:

        .. math::
            \nabla_m = \frac1n\sum_i g^{\mathrm{lik}}(z_i) - \Sigma_0^{-1}(m - \mu_0),\qquad
            \nabla_L = \operatorname{tril}\Bigl(\frac1n\sum_i g^{\mathrm{lik}}(z_i)
                \varepsilon_i^\top - \Sigma_0^{-1}L\Bigr) + \operatorname{diag}(1/L_{kk}).
        """
        scores, sizes = _likelihood_scores(model, x, _samples(q, eps))
        gm, gl = _through_samples(scores, eps)
        mm, ml = _through_samples(sizes, np.abs(eps))
        (km, kl_factor), (kmm, kml) = _kl_gradient(model, q)
        return (gm - km, gl - kl_factor), (mm + kmm, ml + kml)

    def _sampled_scores(
        self, model: LinearGaussianModel, x: FloatArray, z: FloatArray
    ) -> FloatArray:
        return _likelihood_scores(model, x, z)[0]

    def _bugs(self) -> tuple[_Bug, ...]:
        from ._form_suspects import analytic_kl_bugs

        return analytic_kl_bugs()


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

    def _path_gradient(
        self, model: LinearGaussianModel, q: Gaussian, x: FloatArray, eps: FloatArray
    ) -> tuple[GradientPair, GradientPair]:
        r"""The log joint's path gradient plus :math:`\nabla_L H(q) =
        \operatorname{diag}(1/L_{kk})`:

        .. math::
            \nabla_m = \frac1n\sum_i g(z_i),\qquad
            \nabla_L = \operatorname{tril}\Bigl(\frac1n\sum_i g(z_i)\varepsilon_i^\top\Bigr)
                + \operatorname{diag}(1/L_{kk}),

        the joint form's pathwise gradient (the estimates differ by a constant in
        :math:`(m, L)` at fixed noise).
        """
        return _joint_path_gradient(model, q, x, eps)

    def _sampled_scores(
        self, model: LinearGaussianModel, x: FloatArray, z: FloatArray
    ) -> FloatArray:
        return _joint_scores(model, x, z)[0]

    def _bugs(self) -> tuple[_Bug, ...]:
        from ._form_suspects import analytic_entropy_bugs

        return analytic_entropy_bugs()


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

    Returns
    -------
    ElboForm
        One of the three form objects (``value`` itself when it is one).

    Raises
    ------
    InvalidInputError
        For any other value (another string, another object), naming the choices; a
        near miss such as ``"analytic-KL"`` gets a "did you mean".

    Examples
    --------
    >>> from elbo_check.testing import ANALYTIC_KL, check_form
    >>> check_form("analytic_kl") is ANALYTIC_KL
    True
    >>> check_form("analytic-KL")  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
      ...
    elbo_check._errors.InvalidInputError: form must be one of 'joint', 'analytic_kl',
    'analytic_entropy'; got form='analytic-KL' (did you mean 'analytic_kl'?)
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
