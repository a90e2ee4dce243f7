r"""The joint density :math:`p(x, z)` of a linear-Gaussian model and the ELBO, its
expectation under a Gaussian :math:`q(z)`.

Each function here is a method of :class:`~elbo_check.LinearGaussianModel`, bound in
its class body (``LinearGaussianModel.elbo`` and so on); they live in their own module
only to keep :mod:`._model` readable. They read the model's validated parameters and
its :class:`~elbo_check._marginal.MarginalFactorization`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._blocks import for_each_block
from ._elbo_terms import ElboTerms
from ._error_bounds import ElboErrorBound
from ._gaussian import LOG_2PI, Gaussian, _scalar_or_array, as_generator, kl_divergence
from ._linalg import gram_diag_log_term

if TYPE_CHECKING:
    from ._model import LinearGaussianModel

__all__ = ["elbo", "elbo_terms", "kl_to_posterior", "log_joint", "log_likelihood", "sample"]

FloatArray = NDArray[np.float64]


# ---------------------------------------------------------------------- the joint
def log_likelihood(self: LinearGaussianModel, x: ArrayLike, z: ArrayLike) -> Any:
    r"""The log-likelihood :math:`\log p(x\mid z) = \log\mathcal N(x; Wz+b, \Psi)`.

    Parameters
    ----------
    x : array_like, shape (..., D)
        One observation or a batch of them.
    z : array_like, shape (..., K)
        One latent value or a batch of them; its batch axes broadcast against those of
        ``x`` (e.g. ``z`` of shape ``(S, K)`` with one ``x`` of shape ``(D,)``
        evaluates ``S`` latent draws for the same observation).

    Returns
    -------
    float or ndarray of shape ``np.broadcast_shapes(x.shape[:-1], z.shape[:-1])``
        :math:`\log p(x\mid z)` in nats; a float for one ``x`` and one ``z``.

    Raises
    ------
    InvalidInputError
        If the last axis of ``x`` is not ``D`` or that of ``z`` is not ``K``, if their
        batch shapes do not broadcast, or if either holds NaN or inf.
    InvalidTypeError
        If ``x`` or ``z`` is not a real array.

    Notes
    -----
    The Gaussian likelihood of the model [1]_:

    .. math::
        \log p(x\mid z) = -\tfrac12\bigl(D\log 2\pi + \log\det\Psi
            + (x - Wz - b)^\top\Psi^{-1}(x - Wz - b)\bigr),

    with the quadratic form computed as :math:`\lVert\Psi^{-1/2}(x - Wz - b)\rVert^2`
    (:math:`\Psi^{-1/2}` the inverse Cholesky factor; an elementwise division for
    isotropic and diagonal noise).

    References
    ----------
    .. [1] C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer, 2006,
       eq. (2.114) (the linear-Gaussian likelihood) with the density (2.43).

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.stats import multivariate_normal
    >>> from elbo_check import Gaussian, LinearGaussianModel
    >>> prior = Gaussian.from_covariance(mean=[0.5, -1.0], cov=[[1.0, 0.3], [0.3, 2.0]])
    >>> model = LinearGaussianModel(weights=[[1.0, 0.0], [0.5, 1.0], [0.0, 2.0]],
    ...                             bias=[0.1, 0.2, 0.3], prior=prior, noise_cov=[0.5, 1.0, 2.0])
    >>> x, z = np.array([1.0, 0.0, 2.0]), np.array([0.0, 1.0])
    >>> round(model.log_likelihood(x, z), 6)
    -4.309316
    >>> likelihood = multivariate_normal(model.weights @ z + model.bias, model.dense_noise_cov())
    >>> round(float(likelihood.logpdf(x)), 6)
    -4.309316
    """
    data = self._check_x(x)
    latent = self._check_z(z)
    self._batch_shape(data.shape[:-1], latent.shape[:-1])
    residual = self._noise.whiten(data - self._bias - latent @ self._weights.T)
    squared = np.einsum("...i,...i->...", residual, residual)
    values = -0.5 * (self.data_dim * LOG_2PI + self._noise.logdet + squared)
    return _scalar_or_array(np.asarray(values))


def log_joint(self: LinearGaussianModel, x: ArrayLike, z: ArrayLike) -> Any:
    r"""The log joint density :math:`\log p(x, z) = \log p(x\mid z) + \log p(z)`.

    The integrand of the ELBO: :math:`\mathrm{ELBO}(q) = \mathbb E_q[\log p(x, z)]
    + H(q)`.

    Parameters
    ----------
    x : array_like, shape (..., D)
        One observation or a batch of them.
    z : array_like, shape (..., K)
        One latent value or a batch of them; its batch axes broadcast against those of
        ``x``.

    Returns
    -------
    float or ndarray of shape ``np.broadcast_shapes(x.shape[:-1], z.shape[:-1])``
        :math:`\log p(x, z)` in nats; a float for one ``x`` and one ``z``.

    Raises
    ------
    InvalidInputError
        If the last axis of ``x`` is not ``D`` or that of ``z`` is not ``K``, if their
        batch shapes do not broadcast, or if either holds NaN or inf.
    InvalidTypeError
        If ``x`` or ``z`` is not a real array.

    Notes
    -----
    With the prior and likelihood of the model [1]_,

    .. math::
        \log p(x, z) = \log\mathcal N(x; Wz + b, \Psi) + \log\mathcal N(z; \mu_0,
            \Sigma_0).

    By Bayes' theorem :math:`\log p(x, z) - \log p(z\mid x) = \log p(x)` for every
    :math:`z`, which the example checks.

    References
    ----------
    .. [1] C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer, 2006,
       eqs. (2.113)–(2.114).

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian, LinearGaussianModel
    >>> prior = Gaussian.from_covariance(mean=[0.5, -1.0], cov=[[1.0, 0.3], [0.3, 2.0]])
    >>> model = LinearGaussianModel(weights=[[1.0, 0.0], [0.5, 1.0], [0.0, 2.0]],
    ...                             bias=[0.1, 0.2, 0.3], prior=prior, noise_cov=[0.5, 1.0, 2.0])
    >>> x, z = np.array([1.0, 0.0, 2.0]), np.array([0.0, 1.0])
    >>> round(model.log_joint(x, z), 6)
    -7.805823
    >>> round(model.log_joint(x, z) - model.posterior(x).log_prob(z), 6)
    -5.405177
    >>> round(model.log_evidence(x), 6)
    -5.405177
    """
    return self.log_likelihood(x, z) + self._prior.log_prob(self._check_z(z))


def sample(
    self: LinearGaussianModel, n: int, rng: np.random.Generator | int
) -> tuple[FloatArray, FloatArray]:
    r"""Draw ``n`` independent pairs :math:`(x, z)` from the joint :math:`p(x, z)`.

    Each :math:`z` is drawn from the prior and :math:`x = Wz + b + \varepsilon` with
    :math:`\varepsilon\sim\mathcal N(0, \Psi)`, so the ``x`` alone are draws from the
    marginal :math:`p(x)`.

    Parameters
    ----------
    n : int
        Number of pairs, at least 0.
    rng : numpy.random.Generator or int
        Source of randomness: a generator (advanced by the call), or a non-negative int
        used as the seed of ``numpy.random.default_rng``, so that the same seed gives
        the same draws.

    Returns
    -------
    x : ndarray, shape ``(n, D)``
        The observations.
    z : ndarray, shape ``(n, K)``
        The latent values that generated them, row by row.

    Raises
    ------
    InvalidInputError
        If ``n`` is negative or not an integer (a float or a bool), or ``rng`` is a
        negative integer.
    InvalidTypeError
        If ``rng`` is neither a :class:`numpy.random.Generator` nor an integer.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian, LinearGaussianModel
    >>> prior = Gaussian.from_covariance(mean=[0.5, -1.0], cov=[[1.0, 0.3], [0.3, 2.0]])
    >>> model = LinearGaussianModel(weights=[[1.0, 0.0], [0.5, 1.0], [0.0, 2.0]],
    ...                             bias=[0.1, 0.2, 0.3], prior=prior, noise_cov=[0.5, 1.0, 2.0])
    >>> x, z = model.sample(20_000, rng=0)
    >>> x.shape, z.shape
    ((20000, 3), (20000, 2))
    >>> np.round(x.mean(axis=0), 2), model.marginal_mean
    (array([ 0.6 , -0.55, -1.7 ]), array([ 0.6 , -0.55, -1.7 ]))
    """
    generator = as_generator(rng)
    z = self._prior.sample(n, generator)
    x = z @ self._weights.T + self._bias + self._noise.sample(int(n), generator)
    return x, z


# ---------------------------------------------------------------------- the ELBO
def elbo_terms(self: LinearGaussianModel, q: Gaussian, x: ArrayLike) -> ElboTerms:
    r"""The ELBO of ``q`` at ``x`` split into its named terms, all in closed form.

    Parameters
    ----------
    q : Gaussian
        The variational distribution :math:`q(z) = \mathcal N(m, S)`,
        :math:`S = L_qL_q^\top`, over the ``K`` latent dimensions: one Gaussian, or a
        batch (e.g. one member per row of ``x``, as an encoder gives) whose batch shape
        broadcasts against that of ``x``.
    x : array_like, shape (..., D)
        One observation or a batch of them.

    Returns
    -------
    ElboTerms
        ``expected_log_likelihood``, ``kl_to_prior``, ``cross_entropy`` and
        ``entropy``, each a float or an array of the broadcast batch shape
        ``np.broadcast_shapes(x.shape[:-1], q.batch_shape)`` (one value per row, not
        summed; the terms that do not depend on ``x`` are repeated along it).
        ``ElboTerms.elbo`` is the ELBO.

    Raises
    ------
    InvalidTypeError
        If ``q`` is not a :class:`Gaussian`, or ``x`` is not a real array.
    InvalidInputError
        If ``q.dim`` is not ``K``, the last axis of ``x`` is not ``D``, ``x`` holds
        NaN or inf, or the batch shapes of ``x`` and ``q`` do not broadcast.

    See Also
    --------
    elbo : The sum of the terms, with an optional error bound.

    Notes
    -----
    With :math:`q = \mathcal N(m, S)` and the expectation of a Gaussian quadratic form
    [3]_,

    .. math::
        \mathbb E_q[\log p(x\mid z)] &= -\tfrac12\bigl(D\log2\pi + \log\det\Psi
            + (x - Wm - b)^\top\Psi^{-1}(x - Wm - b)
            + \operatorname{tr}(\Psi^{-1}WSW^\top)\bigr),

        \mathrm{KL}(q\,\|\,p(z)) &= \tfrac12\bigl(\operatorname{tr}(\Sigma_0^{-1}S)
            + (m - \mu_0)^\top\Sigma_0^{-1}(m - \mu_0) - K
            + \log\det\Sigma_0 - \log\det S\bigr),

        H(q) &= \tfrac K2(1 + \log 2\pi) + \tfrac12\log\det S,\qquad
        H(q, p(z)) = \mathrm{KL}(q\,\|\,p(z)) + H(q),

    and the ELBO in its two textbook forms [1]_ [2]_ is

    .. math::
        \mathrm{ELBO}(q) = \mathbb E_q[\log p(x\mid z)] - \mathrm{KL}(q\,\|\,p(z))
            = \mathbb E_q[\log p(x\mid z)] - H(q, p(z)) + H(q).

    The trace term is computed as :math:`\lVert\Psi^{-1/2}WL_q\rVert_F^2`, and the KL
    and entropy as in :func:`~elbo_check.kl_divergence` and
    :meth:`Gaussian.entropy`.

    References
    ----------
    .. [1] C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer, 2006,
       §10.1, eqs. (10.2)–(10.3).
    .. [2] D. P. Kingma and M. Welling, "Auto-encoding variational Bayes", ICLR 2014,
       eq. (3).
    .. [3] K. B. Petersen and M. S. Pedersen, *The Matrix Cookbook*, 2012, §8.2 (the
       mean of a quadratic form in a Gaussian vector).

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian, LinearGaussianModel
    >>> prior = Gaussian.from_covariance(mean=[0.5, -1.0], cov=[[1.0, 0.3], [0.3, 2.0]])
    >>> model = LinearGaussianModel(weights=[[1.0, 0.0], [0.5, 1.0], [0.0, 2.0]],
    ...                             bias=[0.1, 0.2, 0.3], prior=prior, noise_cov=[0.5, 1.0, 2.0])
    >>> x = np.array([1.0, 0.0, 2.0])
    >>> q = Gaussian.from_covariance(mean=[0.3, 0.2], cov=[[0.5, 0.1], [0.1, 0.4]])
    >>> terms = model.elbo_terms(q, x)
    >>> round(terms.expected_log_likelihood, 6), round(terms.kl_to_prior, 6)
    (-4.903066, 0.940305)
    >>> round(terms.elbo, 6), round(terms.elbo_joint_form, 6)
    (-5.84337, -5.84337)

    The reconstruction term against a Monte Carlo average over draws from ``q``:

    >>> z = q.sample(20_000, rng=0)
    >>> round(float(np.mean(model.log_likelihood(x, z))), 2)
    -4.9
    """
    q = self._check_q(q)
    batch, rows, means = self._paired_rows(q, x)
    squared = self._marginal.expected_squares(rows, means)
    self._finite_or_raise(x, squared)
    trace = self._marginal.spread_trace(q.scale_tril)
    expected = -0.5 * (
        self.data_dim * LOG_2PI + self._noise.logdet + squared.reshape(batch) + trace
    )

    def spread(value: Any) -> Any:
        return _scalar_or_array(np.broadcast_to(np.asarray(value, dtype=float), batch).copy())

    kl_to_prior = kl_divergence(q, self._prior)
    entropy = q.entropy()
    return ElboTerms(
        expected_log_likelihood=spread(expected),
        kl_to_prior=spread(kl_to_prior),
        cross_entropy=spread(kl_to_prior + entropy),  # H(q, p) = KL(q || p) + H(q)
        entropy=spread(entropy),
    )


def elbo(
    self: LinearGaussianModel, q: Gaussian, x: ArrayLike, *, return_error_bound: bool = False
) -> Any:
    r"""The exact ELBO :math:`\mathbb E_q[\log p(x,z) - \log q(z)]`, with no sampling.

    One value per row of ``x`` (per member of the broadcast batch), not summed: for
    the ELBO of a data set, sum the result (or see :meth:`dataset_elbo`).

    Parameters
    ----------
    q : Gaussian
        The variational distribution :math:`q(z) = \mathcal N(m, S)` over the ``K``
        latent dimensions; its batch broadcasts against the rows of ``x``.
    x : array_like, shape (..., D)
        One observation or a batch of them.
    return_error_bound : bool, optional
        Also return a bound on each value's distance from the exact ELBO of the
        float64 inputs (see :doc:`reference/accuracy`; default False).

    Returns
    -------
    value : float or ndarray of shape ``np.broadcast_shapes(x.shape[:-1], q.batch_shape)``
        The ELBO in nats; a float for one ``x`` and an unbatched ``q``. At most
        :meth:`log_evidence` (the gap is :meth:`kl_to_posterior`), with equality at
        the posterior.
    bound : float or ndarray
        Only with ``return_error_bound=True``: the error bound, of the same shape.

    Raises
    ------
    InvalidTypeError
        If ``q`` is not a :class:`Gaussian`, or ``x`` is not a real array.
    InvalidInputError
        If ``q.dim`` is not ``K``, the last axis of ``x`` is not ``D``, ``x`` holds
        NaN or inf, or the batch shapes of ``x`` and ``q`` do not broadcast.

    See Also
    --------
    elbo_terms : The ELBO's named terms and their formulas.
    kl_to_posterior : The gap :math:`\log p(x) - \mathrm{ELBO}(q)`.

    Notes
    -----
    The evidence lower bound and its decomposition [1]_ [2]_:

    .. math::
        \mathrm{ELBO}(q) = \mathbb E_q[\log p(x, z) - \log q(z)]
            = \mathbb E_q[\log p(x\mid z)] - \mathrm{KL}(q\,\|\,p(z))
            = \log p(x) - \mathrm{KL}(q\,\|\,p(z\mid x)).

    It is computed as the reconstruction term minus the KL to the prior, in closed
    form (:meth:`elbo_terms`); :meth:`log_evidence` and :meth:`kl_to_posterior` are
    computed by other routes, so the identity is a check between three independent
    numbers.

    References
    ----------
    .. [1] C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer, 2006,
       §10.1, eqs. (10.2)–(10.4).
    .. [2] D. M. Blei, A. Kucukelbir and J. D. McAuliffe, "Variational inference: a
       review for statisticians", *J. Am. Stat. Assoc.* 112(518):859–877, 2017, §2.2.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian, LinearGaussianModel
    >>> prior = Gaussian.from_covariance(mean=[0.5, -1.0], cov=[[1.0, 0.3], [0.3, 2.0]])
    >>> model = LinearGaussianModel(weights=[[1.0, 0.0], [0.5, 1.0], [0.0, 2.0]],
    ...                             bias=[0.1, 0.2, 0.3], prior=prior, noise_cov=[0.5, 1.0, 2.0])
    >>> x = np.array([1.0, 0.0, 2.0])
    >>> q = Gaussian.from_covariance(mean=[0.3, 0.2], cov=[[0.5, 0.1], [0.1, 0.4]])
    >>> round(model.elbo(q, x), 6)
    -5.84337
    >>> round(model.elbo(q, x) + model.kl_to_posterior(q, x), 6), round(model.log_evidence(x), 6)
    (-5.405177, -5.405177)
    >>> round(model.elbo(model.posterior(x), x), 6)  # the bound is tight at the posterior
    -5.405177

    A Monte Carlo estimate from draws of ``q``, and one ELBO per row of a batch:

    >>> z = q.sample(20_000, rng=0)
    >>> round(float(np.mean(model.log_joint(x, z) - q.log_prob(z))), 2)
    -5.84
    >>> np.round(model.elbo(q, np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])), 6)
    array([-5.84337, -5.89337])
    """
    value = self.elbo_terms(q, x).elbo
    if not return_error_bound:
        return value
    batch, rows, means = self._paired_rows(q, x)
    bound = ElboErrorBound(self._marginal, self._error_bound).rows(
        q.mean, q.scale_tril, rows, means, batch, np.asarray(value, dtype=float)
    )
    return value, _scalar_or_array(bound)


def kl_to_posterior(self: LinearGaussianModel, q: Gaussian, x: ArrayLike) -> Any:
    r"""The exact :math:`\mathrm{KL}(q\,\|\,p(z\mid x))`: the gap between evidence and ELBO.

    Parameters
    ----------
    q : Gaussian
        The variational distribution :math:`q(z) = \mathcal N(m, S)`,
        :math:`S = L_qL_q^\top`, over the ``K`` latent dimensions; its batch
        broadcasts against the rows of ``x``.
    x : array_like, shape (..., D)
        One observation or a batch of them.

    Returns
    -------
    float or ndarray of shape ``np.broadcast_shapes(x.shape[:-1], q.batch_shape)``
        The divergence in nats, one per row: never negative, and zero at the
        posterior.

    Raises
    ------
    InvalidTypeError
        If ``q`` is not a :class:`Gaussian`, or ``x`` is not a real array.
    InvalidInputError
        If ``q.dim`` is not ``K``, the last axis of ``x`` is not ``D``, ``x`` holds
        NaN or inf, or the batch shapes of ``x`` and ``q`` do not broadcast.

    Notes
    -----
    With the posterior :math:`p(z\mid x) = \mathcal N(m_x, \Lambda^{-1})` of
    :meth:`posterior` [1]_, the Gaussian KL divergence [2]_ is

    .. math::
        \mathrm{KL}(q\,\|\,p(z\mid x)) = \tfrac12\bigl(\operatorname{tr}(\Lambda S)
            - K - \log\det(\Lambda S) + (m - m_x)^\top\Lambda(m - m_x)\bigr).

    It is computed from the precision's square root :math:`G = RL_0^{-1}`
    (:math:`\Lambda = G^\top G`, :math:`R` from the model's QR factorisation) and a QR
    factorisation :math:`GL_q = UT` (:math:`U` orthogonal, :math:`T` upper
    triangular), as

    .. math::
        \mathrm{KL} = \tfrac12\Bigl(\sum_{i<j}T_{ij}^2 + \sum_i\bigl(T_{ii}^2 - 1
            - 2\log\lvert T_{ii}\rvert\bigr)
            + \lVert G(m - \mu_0) - Q_1^\top y\rVert^2\Bigr),
        \quad y = \Psi^{-1/2}(x - W\mu_0 - b),

    where :math:`G(m - m_x) = G(m - \mu_0) - Q_1^\top y`: a sum of non-negative terms,
    so directions in which the posterior is very narrow (tiny noise variances) keep
    full relative accuracy, and the posterior mean is never formed and subtracted.

    References
    ----------
    .. [1] C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer, 2006,
       eqs. (2.116)–(2.117) (the posterior) and (10.4) (this divergence as the ELBO's
       gap).
    .. [2] C. E. Rasmussen and C. K. I. Williams, *Gaussian Processes for Machine
       Learning*, MIT Press, 2006, Appendix A.5.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian, LinearGaussianModel, kl_divergence
    >>> prior = Gaussian.from_covariance(mean=[0.5, -1.0], cov=[[1.0, 0.3], [0.3, 2.0]])
    >>> model = LinearGaussianModel(weights=[[1.0, 0.0], [0.5, 1.0], [0.0, 2.0]],
    ...                             bias=[0.1, 0.2, 0.3], prior=prior, noise_cov=[0.5, 1.0, 2.0])
    >>> x = np.array([1.0, 0.0, 2.0])
    >>> q = Gaussian.from_covariance(mean=[0.3, 0.2], cov=[[0.5, 0.1], [0.1, 0.4]])
    >>> round(model.kl_to_posterior(q, x), 6)
    0.438193
    >>> round(kl_divergence(q, model.posterior(x)), 6)
    0.438193
    >>> round(model.log_evidence(x) - model.elbo(q, x), 6)
    0.438193
    """
    q = self._check_q(q)
    batch, rows, means = self._paired_rows(q, x)
    precision_root = self._marginal.precision_root  # G = R L0^{-1}
    triangle = np.linalg.qr(precision_root @ q.scale_tril, mode="r")
    diagonal = np.abs(np.diagonal(triangle, axis1=-2, axis2=-1))
    spread = np.sum(np.triu(triangle, k=1) ** 2, axis=(-2, -1)) + np.sum(
        gram_diag_log_term(diagonal), axis=-1
    )
    spread_rows = np.broadcast_to(spread, batch).reshape(-1)
    out = np.empty(rows.shape[0])
    marginal = self._marginal

    def work(block: slice, buffer: FloatArray) -> None:
        coefficients = marginal.whiten_centred(rows[block], buffer) @ marginal.basis
        offsets = (means[block] - self._prior.mean) @ precision_root.T - coefficients
        out[block] = 0.5 * (spread_rows[block] + np.einsum("ij,ij->i", offsets, offsets))

    for_each_block(rows.shape[0], self.data_dim, work)
    self._finite_or_raise(x, out)
    return _scalar_or_array(out.reshape(batch))
