r"""The base class of the three forms of a Monte-Carlo ELBO (see :mod:`._forms`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from .._errors import InvalidInputError
from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ._diagnosis import Suspect
from ._form_pieces import GradientPair, _check_problem, _check_rows, _Pieces, _sample_pieces

if TYPE_CHECKING:
    from ._form_suspects import _Bug

__all__ = ["ElboForm"]

FloatArray = NDArray[np.float64]


# ---------------------------------------------------------------------- forms
class ElboForm:
    r"""How an ELBO estimate combines sampled terms with analytic ones.

    Each form's estimate averages a per-sample value over samples
    :math:`z_i = m + L\varepsilon_i` of :math:`q`; the three forms differ in which terms
    they sample and which they take in closed form:

    .. math::
        \text{joint:}\quad & \frac1n\sum_i \bigl[\log p(x, z_i) - \log q(z_i)\bigr],\\
        \text{analytic\_kl:}\quad & \frac1n\sum_i \log p(x\mid z_i)
            - \mathrm{KL}\bigl(q\,\|\,p(z)\bigr),\\
        \text{analytic\_entropy:}\quad & \frac1n\sum_i \log p(x, z_i) + H(q).

    All three have the ELBO as their expectation under :math:`q` (so a statistical check
    has one target), but different values for given noise (what a pathwise check
    compares), different variances and different typical bugs. The analytic-KL form is
    the one of Pyro's ``TraceMeanField_ELBO`` and of most VAE code [1]_, the
    analytic-entropy form the one of ADVI [2]_.

    The verifiers accept the three instances :data:`JOINT`, :data:`ANALYTIC_KL` and
    :data:`ANALYTIC_ENTROPY` (or their names, through :func:`check_form`); the class is
    not meant to be subclassed. Its methods give each form's exact value
    (:meth:`pathwise_value`) and exact gradient at fixed noise
    (:meth:`pathwise_gradient`) from the oracle, and the catalogues of its known bugs
    (the ``*_suspects`` methods) that a failure's diagnosis is matched against.

    Attributes
    ----------
    name : str
        The string that selects the form, e.g. ``"analytic_kl"``.
    title : str
        The form in words, e.g. ``"the analytic-KL form"``.
    formula : str
        The per-sample average in plain text.

    References
    ----------
    .. [1] D. P. Kingma and M. Welling, "Auto-encoding variational Bayes", ICLR 2014,
       arXiv:1312.6114 (eq. 10: the reconstruction sampled, the KL in closed form).
    .. [2] A. Kucukelbir, D. Tran, R. Ranganath, A. Gelman and D. M. Blei, "Automatic
       differentiation variational inference", JMLR 18(14):1-45, 2017 (the entropy in
       closed form).

    Examples
    --------
    For given samples the forms differ; averaged over many they all estimate the ELBO
    (within their Monte-Carlo error, about 0.02 here):

    >>> import numpy as np
    >>> from elbo_check import Gaussian, ppca
    >>> from elbo_check.testing import FORMS
    >>> model = ppca(weights=[[1.0, 0.5], [0.2, -0.3], [0.0, 1.0]],
    ...              mean=[0.0, 1.0, -1.0], noise_variance=0.4)
    >>> q = Gaussian.from_covariance(mean=[0.3, -0.2], cov=[[0.5, 0.2], [0.2, 0.8]])
    >>> x = np.array([0.5, 1.0, -2.0])
    >>> z = q.mean + np.random.default_rng(0).standard_normal((20_000, 2)) @ q.scale_tril.T
    >>> for name, form in FORMS.items():
    ...     one, many = form.pathwise_value(model, q, x, z[:1]), form.pathwise_value(model, q, x, z)
    ...     print(f"{name:16s} one sample {one:7.3f}, mean of 20000 {many:6.2f}")
    joint            one sample  -2.755, mean of 20000  -4.74
    analytic_kl      one sample  -2.372, mean of 20000  -4.74
    analytic_entropy one sample  -1.771, mean of 20000  -4.74
    >>> print(f"exact ELBO {model.elbo(q, x):.3f}")
    exact ELBO -4.749
    """

    name: str = ""
    title: str = ""
    formula: str = ""
    #: What to compare when no suspect explains a pathwise mismatch.
    fallback: str = ""

    def __repr__(self) -> str:
        return f"ElboForm({self.name!r})"

    def describe(self) -> str:
        """One line naming the form and its per-sample value, as failure messages show it.

        Returns
        -------
        str
            The form's title, its ``form=`` name and its formula.

        Examples
        --------
        >>> from elbo_check.testing import ANALYTIC_KL
        >>> print(ANALYTIC_KL.describe())  # doctest: +NORMALIZE_WHITESPACE
        the analytic-KL form (form='analytic_kl'): mean_i log p(x | z_i) - KL(q || p(z)),
        z_i = m + L eps_i
        """
        return f"{self.title} (form={self.name!r}): {self.formula}, z_i = m + L eps_i"

    # -- values
    def assemble(self, model: LinearGaussianModel, q: Gaussian, pieces: _Pieces) -> FloatArray:
        r"""The per-sample values of the estimate, from its sampled terms.

        Parameters
        ----------
        model : LinearGaussianModel
            The model (its prior enters the closed-form KL of the analytic-KL form).
        q : Gaussian
            One Gaussian of the model's dimension ``K`` (its entropy enters the
            analytic-entropy form).
        pieces : object
            The sampled terms, as attributes ``log_likelihood``, ``log_prior`` and
            ``log_q`` (arrays of shape ``(n,)``: :math:`\log p(x\mid z_i)`,
            :math:`\log p(z_i)`, :math:`\log q(z_i)`; or scalars, their expectations
            under some law of :math:`z`) and ``n`` (the sample count).

        Returns
        -------
        ndarray, shape (n,) or ()
            The per-sample values (their mean is the estimate), or their expectation.

        Raises
        ------
        InvalidInputError
            Analytic-KL form: if ``q``'s dimension is not the prior's.

        Examples
        --------
        >>> import numpy as np
        >>> from types import SimpleNamespace
        >>> from elbo_check import Gaussian, kl_divergence, ppca
        >>> from elbo_check.testing import ANALYTIC_KL, JOINT
        >>> model = ppca(weights=[[1.0, 0.5], [0.2, -0.3], [0.0, 1.0]],
        ...              mean=[0.0, 1.0, -1.0], noise_variance=0.4)
        >>> q = Gaussian.from_covariance(mean=[0.3, -0.2], cov=[[0.5, 0.2], [0.2, 0.8]])
        >>> pieces = SimpleNamespace(log_likelihood=np.array([-1.0, -2.0]), n=2,
        ...                          log_prior=np.array([-0.5, -0.7]), log_q=np.array([-1.2, -1.1]))
        >>> JOINT.assemble(model, q, pieces)  # log p(x | z_i) + log p(z_i) - log q(z_i)
        array([-0.3, -1.6])
        >>> kl = kl_divergence(q, model.prior)
        >>> np.allclose(ANALYTIC_KL.assemble(model, q, pieces), pieces.log_likelihood - kl)
        True
        """
        raise NotImplementedError

    def pathwise_value(
        self, model: LinearGaussianModel, q: Gaussian, x: FloatArray, z: FloatArray
    ) -> float:
        r"""The form's estimate for given samples: the mean over them of its per-sample value.

        Parameters
        ----------
        model : LinearGaussianModel
            The model.
        q : Gaussian
            One Gaussian of the model's dimension ``K``: the variational distribution.
        x : array_like, shape (D,)
            One observation.
        z : array_like, shape (n, K)
            The samples, usually :math:`z_i = m + L\\varepsilon_i` (shape ``(K,)``: one
            sample).

        Returns
        -------
        float
            The estimate, in nats.

        Raises
        ------
        InvalidInputError
            If ``x`` does not have shape ``(D,)`` or ``z`` a last axis of ``K`` (or
            ``q`` another dimension), or either holds NaN or infinity.

        Examples
        --------
        With :math:`q` the exact posterior every sample of the joint form is
        :math:`\log p(x)`:

        >>> import numpy as np
        >>> from elbo_check import ppca
        >>> from elbo_check.testing import JOINT
        >>> model = ppca(weights=[[1.0, 0.5], [0.2, -0.3], [0.0, 1.0]],
        ...              mean=[0.0, 1.0, -1.0], noise_variance=0.4)
        >>> x = np.array([0.5, 1.0, -2.0])
        >>> posterior = model.posterior(x)
        >>> z = np.array([[0.0, 0.0], [3.0, -1.0]])
        >>> round(JOINT.pathwise_value(model, posterior, x, z), 6), round(model.log_evidence(x), 6)
        (-3.428691, -3.428691)
        """
        return float(np.mean(self.assemble(model, q, _sample_pieces(model, q, x, z))))

    def magnitude(
        self, model: LinearGaussianModel, q: Gaussian, x: FloatArray, z: FloatArray
    ) -> float:
        r"""The size of the terms the estimate is computed from: the scale of its tolerance.

        The verifiers compare an estimate within ``rtol * (magnitude + 1) + atol``: a
        difference of large terms keeps their rounding error. The terms are, averaged
        over the samples, :math:`|\log p(x, z_i)| + |\log q(z_i)|` (joint);
        :math:`|\log p(x\mid z_i)|` plus the absolute cross-entropy and entropy the KL
        is the difference of (analytic KL); :math:`|\log p(x, z_i)|` plus
        :math:`	frac K2(1 + \log 2\pi) + 	frac12|\log\det S|` (analytic entropy).

        Parameters
        ----------
        model : LinearGaussianModel
            The model.
        q : Gaussian
            One Gaussian of the model's dimension ``K``.
        x : array_like, shape (D,)
            One observation.
        z : array_like, shape (n, K)
            The samples.

        Returns
        -------
        float
            A non-negative size, in nats; at least ``abs(pathwise_value(...))``.

        Raises
        ------
        InvalidInputError
            As :meth:`pathwise_value`.

        Examples
        --------
        >>> import numpy as np
        >>> from elbo_check import Gaussian, ppca
        >>> from elbo_check.testing import ANALYTIC_KL, JOINT
        >>> model = ppca(weights=[[1.0, 0.5], [0.2, -0.3], [0.0, 1.0]],
        ...              mean=[0.0, 1.0, -1.0], noise_variance=0.4)
        >>> q = Gaussian.from_covariance(mean=[0.3, -0.2], cov=[[0.5, 0.2], [0.2, 0.8]])
        >>> x = np.array([0.5, 1.0, -2.0])
        >>> z = np.array([[0.0, 0.0], [3.0, -1.0]])
        >>> value = JOINT.pathwise_value(model, q, x, z)
        >>> round(JOINT.magnitude(model, q, x, z), 6), round(abs(value), 6)
        (15.787586, 3.227927)
        """
        raise NotImplementedError

    # -- gradients
    def pathwise_gradient(
        self, model: LinearGaussianModel, q: Gaussian, x: FloatArray, eps: FloatArray
    ) -> GradientPair:
        r"""The exact gradient in :math:`(m, L)` of :meth:`pathwise_value` at fixed noise.

        The estimate at :math:`z_i = m + L\varepsilon_i`, differentiated with respect to
        q's mean :math:`m` and lower Cholesky factor :math:`L` holding ``eps`` fixed:
        what autodiff of a reparameterised estimate gives [1]_. Its expectation over the
        noise is the ELBO's gradient, for every form. The formulas are in
        :func:`verify_elbo_gradient`'s Notes.

        Parameters
        ----------
        model : LinearGaussianModel
            The model.
        q : Gaussian
            One Gaussian of the model's dimension ``K``.
        x : array_like, shape (D,)
            One observation.
        eps : array_like, shape (n, K)
            Standard-normal noise, one row per sample.

        Returns
        -------
        grad_mean : ndarray, shape (K,)
            The gradient with respect to :math:`m`.
        grad_scale_tril : ndarray, shape (K, K)
            The gradient with respect to :math:`L`, lower triangular.

        Raises
        ------
        InvalidTypeError
            If ``model`` is not a LinearGaussianModel or ``q`` not a Gaussian.
        InvalidInputError
            If ``q`` is a batch or not of dimension ``K``, ``x`` does not have shape
            ``(D,)`` or ``eps`` shape ``(n, K)``, or either holds NaN or infinity.

        References
        ----------
        .. [1] D. P. Kingma and M. Welling, "Auto-encoding variational Bayes", ICLR
           2014, arXiv:1312.6114.

        Examples
        --------
        Averaged over many draws of the noise, the pathwise gradient is the ELBO's:

        >>> import numpy as np
        >>> from elbo_check import Gaussian, ppca
        >>> from elbo_check.testing import ANALYTIC_KL, JOINT
        >>> model = ppca(weights=[[1.0, 0.5], [0.2, -0.3], [0.0, 1.0]],
        ...              mean=[0.0, 1.0, -1.0], noise_variance=0.4)
        >>> q = Gaussian.from_covariance(mean=[0.3, -0.2], cov=[[0.5, 0.2], [0.2, 0.8]])
        >>> x = np.array([0.5, 1.0, -2.0])
        >>> eps = np.random.default_rng(0).standard_normal((20_000, 2))
        >>> grad_mean, grad_scale_tril = ANALYTIC_KL.pathwise_gradient(model, q, x, eps)
        >>> grad_mean.round(1), model.elbo_grad_variational(q, x).mean.round(1)
        (array([ 0.4, -1.3]), array([ 0.4, -1.3]))
        """
        return self.pathwise_gradient_with_sizes(model, q, x, eps)[0]

    def pathwise_gradient_with_sizes(
        self, model: LinearGaussianModel, q: Gaussian, x: FloatArray, eps: FloatArray
    ) -> tuple[GradientPair, GradientPair]:
        """:meth:`pathwise_gradient`, and the size of the terms each entry is a sum of.

        The sizes scale the verifiers' tolerance entry by entry: a gradient entry that
        is a small difference of large terms keeps their rounding error.

        Parameters
        ----------
        model : LinearGaussianModel
            The model.
        q : Gaussian
            One Gaussian of the model's dimension ``K``.
        x : array_like, shape (D,)
            One observation.
        eps : array_like, shape (n, K)
            Standard-normal noise, one row per sample.

        Returns
        -------
        gradient : tuple of ndarray
            ``(grad_mean, grad_scale_tril)``, shapes ``(K,)`` and ``(K, K)``, as
            :meth:`pathwise_gradient` returns it.
        sizes : tuple of ndarray
            For each entry of the gradient, the sum of the absolute values of the terms
            it is computed from (same shapes; at least the entry's absolute value).

        Raises
        ------
        InvalidTypeError
            As :meth:`pathwise_gradient`.
        InvalidInputError
            As :meth:`pathwise_gradient`.

        Examples
        --------
        >>> import numpy as np
        >>> from elbo_check import Gaussian, ppca
        >>> from elbo_check.testing import ANALYTIC_KL, JOINT
        >>> model = ppca(weights=[[1.0, 0.5], [0.2, -0.3], [0.0, 1.0]],
        ...              mean=[0.0, 1.0, -1.0], noise_variance=0.4)
        >>> q = Gaussian.from_covariance(mean=[0.3, -0.2], cov=[[0.5, 0.2], [0.2, 0.8]])
        >>> x = np.array([0.5, 1.0, -2.0])
        >>> eps = np.array([[0.5, -1.0], [1.5, 0.2]])
        >>> (gm, gl), (size_m, size_l) = JOINT.pathwise_gradient_with_sizes(model, q, x, eps)
        >>> bool(np.all(np.abs(gm) <= size_m) and np.all(np.abs(gl) <= size_l))
        True
        """
        data = _check_problem(model, q, x)
        return self._path_gradient(model, q, data, _check_rows(model, eps, "eps"))

    def sampled_scores(
        self, model: LinearGaussianModel, x: FloatArray, z: FloatArray
    ) -> FloatArray:
        r"""The gradient in :math:`z` of the form's sampled term, at each sample.

        The sampled term is :math:`\log p(x, z)` for the joint and the
        analytic-entropy forms (the score :math:`g(z) = W^\top\Psi^{-1}(x - Wz - b) -
        \Sigma_0^{-1}(z - \mu_0)`) and :math:`\log p(x\mid z)` for the analytic-KL
        form (its likelihood part :math:`g^{\mathrm{lik}}(z)`).

        Parameters
        ----------
        model : LinearGaussianModel
            The model.
        x : array_like, shape (D,)
            One observation.
        z : array_like, shape (n, K)
            The samples.

        Returns
        -------
        ndarray, shape (n, K)
            One gradient per sample (row).

        Raises
        ------
        InvalidTypeError
            If ``model`` is not a LinearGaussianModel.
        InvalidInputError
            If ``x`` does not have shape ``(D,)`` or ``z`` shape ``(n, K)``, or either
            holds NaN or infinity.

        Examples
        --------
        The joint density is largest at the posterior mean, where its score is 0:

        >>> import numpy as np
        >>> from elbo_check import ppca
        >>> from elbo_check.testing import JOINT
        >>> model = ppca(weights=[[1.0, 0.5], [0.2, -0.3], [0.0, 1.0]],
        ...              mean=[0.0, 1.0, -1.0], noise_variance=0.4)
        >>> x = np.array([0.5, 1.0, -2.0])
        >>> mode = model.posterior(x).mean
        >>> bool(np.abs(JOINT.sampled_scores(model, x, mode[None, :])).max() < 1e-12)
        True
        """
        data = _check_problem(model, None, x)
        return self._sampled_scores(model, data, _check_rows(model, z, "z"))

    def _path_gradient(
        self, model: LinearGaussianModel, q: Gaussian, x: FloatArray, eps: FloatArray
    ) -> tuple[GradientPair, GradientPair]:
        raise NotImplementedError

    def _sampled_scores(
        self, model: LinearGaussianModel, x: FloatArray, z: FloatArray
    ) -> FloatArray:
        raise NotImplementedError

    # -- suspects (catalogues in ._form_suspects)
    def _bugs(self) -> tuple[_Bug, ...]:
        """The form's own bugs, written on the sample pieces (both modes)."""
        return ()

    def estimator_suspects(self, n_samples: int) -> tuple[Suspect, ...]:
        """The known bugs of an estimator of this form, as the mean estimate each gives.

        The statistical check (:func:`verify_elbo_estimator`) names a suspect when the
        user's mean estimate agrees with its prediction, within the test's noise, on the
        failing problem and on an independent one.

        Parameters
        ----------
        n_samples : int
            The samples per estimate (some bugs, a sum for a mean, scale with it).

        Returns
        -------
        tuple of Suspect
            Each with ``name`` (the bug in words), ``advice`` (the fix) and
            ``predict(model, q, x)``: the expected estimate of an estimator with that
            bug (None where the bug is not defined).

        Raises
        ------
        InvalidInputError
            If ``n_samples`` is not a positive integer.

        Examples
        --------
        >>> import numpy as np
        >>> from elbo_check import Gaussian, ppca
        >>> from elbo_check.testing import ANALYTIC_KL, JOINT
        >>> model = ppca(weights=[[1.0, 0.5], [0.2, -0.3], [0.0, 1.0]],
        ...              mean=[0.0, 1.0, -1.0], noise_variance=0.4)
        >>> q = Gaussian.from_covariance(mean=[0.3, -0.2], cov=[[0.5, 0.2], [0.2, 0.8]])
        >>> x = np.array([0.5, 1.0, -2.0])
        >>> suspect = next(s for s in JOINT.estimator_suspects(8) if "sum over" in s.name)
        >>> suspect.name, suspect.advice
        ('the sum over samples is returned instead of the mean', 'divide by n_samples')
        >>> round(suspect.predict(model, q, x) / model.elbo(q, x), 6)
        8.0
        """
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)):
            raise InvalidInputError(f"n_samples must be a positive integer; got {n_samples!r}")
        if n_samples < 1:
            raise InvalidInputError(f"n_samples must be a positive integer; got {n_samples!r}")
        return self._estimator_suspects(int(n_samples))

    def _estimator_suspects(self, n_samples: int) -> tuple[Suspect, ...]:
        from ._form_suspects import estimator_suspects

        return estimator_suspects(self, n_samples)

    def pathwise_suspects(self) -> tuple[Suspect, ...]:
        """The known bugs of an estimator of this form, as its value at given noise.

        Returns
        -------
        tuple of Suspect
            Each with ``name``, ``advice`` and ``predict(model, q, x, eps)``: the value
            an estimator with that bug returns for the noise ``eps`` (shape ``(n, K)``).
            The catalogue includes a correct estimate of each other form and the loss
            -ELBO returned.

        Examples
        --------
        >>> import numpy as np
        >>> from elbo_check import Gaussian, ppca
        >>> from elbo_check.testing import ANALYTIC_KL, JOINT
        >>> model = ppca(weights=[[1.0, 0.5], [0.2, -0.3], [0.0, 1.0]],
        ...              mean=[0.0, 1.0, -1.0], noise_variance=0.4)
        >>> q = Gaussian.from_covariance(mean=[0.3, -0.2], cov=[[0.5, 0.2], [0.2, 0.8]])
        >>> x = np.array([0.5, 1.0, -2.0])
        >>> eps = np.array([[0.5, -1.0], [1.5, 0.2]])
        >>> negated = next(s for s in JOINT.pathwise_suspects() if "loss" in s.name)
        >>> z = q.mean + eps @ q.scale_tril.T
        >>> round(negated.predict(model, q, x, eps) + JOINT.pathwise_value(model, q, x, z), 6)
        0.0
        """
        from ._form_suspects import pathwise_suspects

        return pathwise_suspects(self)

    def gradient_suspects(self) -> tuple[Suspect, ...]:
        """The known bugs of an ELBO gradient, as the expected gradient each gives.

        For the exact and the statistical modes of :func:`verify_elbo_gradient`.

        Returns
        -------
        tuple of Suspect
            Each with ``name``, ``advice`` and ``predict(model, q, x)``: the (expected)
            gradient with that bug, flat: the mean's entries, then the lower triangle of
            :math:`L` row by row.

        Examples
        --------
        >>> import numpy as np
        >>> from elbo_check import Gaussian, ppca
        >>> from elbo_check.testing import ANALYTIC_KL, JOINT
        >>> model = ppca(weights=[[1.0, 0.5], [0.2, -0.3], [0.0, 1.0]],
        ...              mean=[0.0, 1.0, -1.0], noise_variance=0.4)
        >>> q = Gaussian.from_covariance(mean=[0.3, -0.2], cov=[[0.5, 0.2], [0.2, 0.8]])
        >>> x = np.array([0.5, 1.0, -2.0])
        >>> sign = next(s for s in JOINT.gradient_suspects() if "wrong sign" in s.name)
        >>> g = model.elbo_grad_variational(q, x)
        >>> np.allclose(sign.predict(model, q, x)[:2], -g.mean)
        True
        """
        from ._form_suspects import gradient_suspects

        return gradient_suspects(self)

    def pathwise_gradient_suspects(self) -> tuple[Suspect, ...]:
        """The known bugs of a pathwise gradient of this form, as the gradient each gives.

        Returns
        -------
        tuple of Suspect
            Each with ``name``, ``advice`` and ``predict(model, q, x, eps)``: the flat
            gradient (the mean's entries, then the lower triangle of :math:`L` row by
            row) with that bug at the noise ``eps``.

        Examples
        --------
        >>> from elbo_check.testing import ANALYTIC_KL
        >>> [s.name for s in ANALYTIC_KL.pathwise_gradient_suspects()][2]
        "the KL's gradient is missing (only the reconstruction is differentiated)"
        """
        from ._form_suspects import pathwise_gradient_suspects

        return pathwise_gradient_suspects(self)
