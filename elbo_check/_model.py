"""The linear-Gaussian latent model and every exact quantity it defines.

.. math::
    z \\sim \\mathcal N(\\mu_0, \\Sigma_0), \\qquad
    x \\mid z \\sim \\mathcal N(W z + b, \\Psi).

:class:`LinearGaussianModel` validates its parameters once and is a thin public layer
over :class:`~elbo_check._marginal.MarginalFactorization` (the whitened QR factorisation
and the Mahalanobis routes). The marginal and the posterior are here; the joint density
and the ELBO are in :mod:`~elbo_check._model_elbo`, the closed-form gradients in
:mod:`~elbo_check._gradients`, amortised inference in :mod:`~elbo_check._encoder` and
the Rényi bounds, the CUBO and the importance weights in :mod:`~elbo_check._renyi`, bound
into the class as its methods. Every per-row operation costs O(D K) for isotropic or
diagonal noise, and no ``(D, D)`` matrix is built unless the noise itself is a full
matrix.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _encoder, _gradients, _model_elbo, _renyi
from ._elbo_terms import ElboTerms
from ._error_bounds import LogEvidenceErrorBound
from ._errors import InvalidInputError, InvalidTypeError
from ._gaussian import LOG_2PI, Gaussian, _scalar_or_array
from ._gradients import ModelGradients, VariationalGradients
from ._linalg import tril_of_gram
from ._marginal import MarginalFactorization
from ._noise import NoiseCovariance
from ._validation import as_event_array, as_real_array, check_shape, describe_shape, freeze

__all__ = ["ElboTerms", "LinearGaussianModel", "ModelGradients", "VariationalGradients"]

FloatArray = NDArray[np.float64]


def _rebuild_model(weights: Any, bias: Any, prior: Gaussian, noise_cov: Any) -> LinearGaussianModel:
    return LinearGaussianModel(weights=weights, bias=bias, prior=prior, noise_cov=noise_cov)


class LinearGaussianModel:
    r"""The linear-Gaussian latent model, in which every quantity of VI is exact.

    .. math::
        z\sim\mathcal N(\mu_0,\Sigma_0),\qquad x\mid z\sim\mathcal N(Wz+b,\Psi),

    with ``K`` latent and ``D`` observed dimensions. Every quantity is exact: the
    evidence :math:`\log p(x)`, the posterior :math:`p(z\mid x)`, the ELBO of any
    Gaussian :math:`q(z) = \mathcal N(m, S)` and its
    :math:`\mathrm{KL}(q\,\|\,p(z\mid x))`, and their gradients; and beyond the ELBO,
    the Rényi bounds (:meth:`renyi_bound`), the CUBO (:meth:`cubo`) and the moments of
    the importance weight :math:`p(x, z)/q(z)` (:meth:`importance_weight_stats`).

    The methods take one observation ``x`` of shape ``(D,)`` or a batch ``(..., D)``;
    those that pair ``x`` with a Gaussian ``q`` broadcast the batch shapes of the two
    (one ``q`` for every row, or one member of ``q`` per row). Results are per row,
    not summed, except :meth:`elbo_grad_model`, :meth:`dataset_elbo` and
    :meth:`dataset_elbo_grad`, which sum over the rows.

    Parameters
    ----------
    weights : array_like, shape (D, K)
        The loading matrix :math:`W`.
    bias : array_like, shape (D,)
        The offset :math:`b`.
    prior : Gaussian
        The prior :math:`p(z) = \mathcal N(\mu_0, \Sigma_0)` over ``K`` dimensions
        (unbatched).
    noise_cov : float or array_like, shape (D,) or (D, D)
        :math:`\Psi`: a positive scalar (isotropic noise :math:`\sigma^2 I`), positive
        variances (diagonal noise) or a symmetric positive-definite matrix. The form
        given is kept: gradients with respect to the noise come back in it.

    Raises
    ------
    InvalidInputError
        If ``weights`` is not 2-d with ``D >= 1`` and ``K >= 1``; if ``bias`` is not of
        shape ``(D,)``; if ``prior`` is not over ``K`` dimensions or is a batch; if
        ``noise_cov`` is not a positive scalar, ``D`` positive variances or a
        ``(D, D)`` symmetric positive-definite matrix; if any array holds NaN or inf;
        or if the whitened loadings :math:`\Psi^{-1/2}WL_0` overflow float64 (a
        signal-to-noise ratio beyond about :math:`10^{308}`).
    InvalidTypeError
        If ``prior`` is not a :class:`Gaussian`, or ``weights``, ``bias`` or
        ``noise_cov`` is not a real array (``None``, strings, booleans, complex).

    See Also
    --------
    ppca, factor_analysis, bayesian_linear_regression : The classic special cases.

    Notes
    -----
    The marginal is :math:`p(x) = \mathcal N(x; W\mu_0 + b,\ W\Sigma_0W^\top + \Psi)`
    and the posterior has precision
    :math:`\Lambda = \Sigma_0^{-1} + W^\top\Psi^{-1}W` and mean
    :math:`\Lambda^{-1}(W^\top\Psi^{-1}(x-b) + \Sigma_0^{-1}\mu_0)` [1]_. A model is
    immutable: its parameters are read-only arrays, and copies and pickles are rebuilt
    through the constructor.

    References
    ----------
    .. [1] C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer, 2006,
       §2.3.3 (Bayes' theorem for Gaussian variables), eqs. (2.113)–(2.117).

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian, LinearGaussianModel
    >>> prior = Gaussian.from_covariance(mean=[0.5], cov=[[2.0]])
    >>> model = LinearGaussianModel(weights=[[1.0], [2.0]], bias=[0.0, 1.0],
    ...                             prior=prior, noise_cov=0.5)
    >>> x = np.array([1.0, 2.0])
    >>> q = Gaussian.from_covariance(mean=[0.3], cov=[[0.1]])
    >>> bool(np.isclose(model.elbo(q, x) + model.kl_to_posterior(q, x),
    ...                 model.log_evidence(x), rtol=1e-14))
    True
    >>> LinearGaussianModel(weights=[[1.0], [2.0]], bias=[0.0, 1.0, 2.0],
    ...                     prior=prior, noise_cov=0.5)
    Traceback (most recent call last):
        ...
    elbo_check._errors.InvalidInputError: bias must have shape (D,) = (2,); got shape (3,)
    """

    def __init__(
        self, *, weights: ArrayLike, bias: ArrayLike, prior: Gaussian, noise_cov: Any
    ) -> None:
        w = as_real_array("weights", weights, ndim=2)
        d, k = w.shape
        if d == 0 or k == 0:
            raise InvalidInputError(
                f"weights must have shape (D, K) with D >= 1 and K >= 1; "
                f"got shape {describe_shape(w.shape)}"
            )
        b = as_real_array("bias", bias, ndim=1)
        check_shape("bias", b, (d,), "(D,)")
        if not isinstance(prior, Gaussian):
            raise InvalidTypeError(f"prior must be a Gaussian; got {type(prior).__name__}")
        if prior.dim != k:
            raise InvalidInputError(
                f"prior must be a Gaussian over K = {k} dimensions (weights has shape "
                f"{describe_shape(w.shape)}); got prior.dim = {prior.dim}"
            )
        if prior.batch_shape:
            raise InvalidInputError(
                f"prior must be a single Gaussian; got a batch of means of shape "
                f"{describe_shape(prior.mean.shape)}"
            )
        self._weights = freeze(w)
        self._bias = freeze(b)
        self._prior = prior
        self._noise = NoiseCovariance.from_value(noise_cov, d)
        self._marginal = MarginalFactorization(self._weights, self._bias, prior, self._noise)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Copies and pickles are rebuilt through the constructor, so they are validated,
        factored and frozen exactly as the original was."""
        return (_rebuild_model, (self._weights, self._bias, self._prior, self._noise.given))

    # ------------------------------------------------------------------ attributes
    @property
    def weights(self) -> FloatArray:
        """:math:`W`, shape ``(D, K)`` (read-only)."""
        return self._weights

    @property
    def bias(self) -> FloatArray:
        """:math:`b`, shape ``(D,)`` (read-only)."""
        return self._bias

    @property
    def prior(self) -> Gaussian:
        """The prior :math:`p(z)`."""
        return self._prior

    @property
    def noise_cov(self) -> Any:
        """:math:`\\Psi` as given: a float, a ``(D,)`` vector or a ``(D, D)`` matrix."""
        return self._noise.given

    @property
    def noise_kind(self) -> str:
        """``"isotropic"``, ``"diagonal"`` or ``"full"``."""
        return self._noise.kind

    @property
    def marginal_mean(self) -> FloatArray:
        r""":math:`W\mu_0 + b`, the mean of :math:`p(x)`, shape ``(D,)`` (read-only)."""
        return self._marginal.mean

    def marginal_variances(self) -> FloatArray:
        r"""The variances of the marginal :math:`p(x)`, in O(D K^2).

        The diagonal of :math:`C = W\Sigma_0W^\top + \Psi`, computed as the row norms
        of :math:`WL_0` plus the noise variances, without forming :math:`C`.

        Returns
        -------
        ndarray, shape (D,)
            :math:`\operatorname{diag}(W\Sigma_0W^\top + \Psi)`; a new array.

        Examples
        --------
        >>> import numpy as np
        >>> from elbo_check import factor_analysis
        >>> model = factor_analysis(loadings=[[1.0], [0.5]], mean=[0.0, 1.0],
        ...                         noise_variances=[0.1, 0.3])
        >>> model.marginal_variances()
        array([1.1 , 0.55])
        >>> np.diag(model.marginal().cov)
        array([1.1 , 0.55])
        """
        spread = self._weights @ self._prior.scale_tril
        variances: FloatArray = np.einsum("ij,ij->i", spread, spread) + self._noise.variances
        return variances

    def dense_noise_cov(self) -> FloatArray:
        r""":math:`\Psi` as a dense ``(D, D)`` matrix, whatever form it was given in.

        Returns
        -------
        ndarray, shape (D, D)
            The noise covariance, rebuilt from its stored factor (a new array; O(D^2)
            memory). Use :attr:`noise_cov` for the form it was given in.

        Examples
        --------
        >>> from elbo_check import factor_analysis
        >>> model = factor_analysis(loadings=[[1.0], [0.5]], mean=[0.0, 1.0],
        ...                         noise_variances=[0.25, 0.5])
        >>> model.noise_cov
        array([0.25, 0.5 ])
        >>> model.dense_noise_cov()
        array([[0.25, 0.  ],
               [0.  , 0.5 ]])
        """
        return self._noise.dense()

    @property
    def data_dim(self) -> int:
        """``D``, the dimension of an observation."""
        return int(self._weights.shape[0])

    @property
    def latent_dim(self) -> int:
        """``K``, the dimension of the latent variable."""
        return int(self._weights.shape[1])

    def __repr__(self) -> str:
        return (
            f"LinearGaussianModel(data_dim={self.data_dim}, latent_dim={self.latent_dim}, "
            f"noise_kind={self.noise_kind!r})"
        )

    # ------------------------------------------------------------------ validation
    def _check_x(self, x: ArrayLike, name: str = "x") -> FloatArray:
        return as_event_array(name, x, self.data_dim, "D")

    def _data_rows(self, x: ArrayLike) -> FloatArray:
        """``x`` as float64 without a copy or a finiteness pass (see :meth:`_finite_or_raise`)."""
        return as_event_array("x", x, self.data_dim, "D", hot=True)

    def _finite_or_raise(self, x: ArrayLike, results: FloatArray) -> None:
        """A non-finite input makes a non-finite result: only then re-check the input."""
        if not np.all(np.isfinite(results)):
            as_event_array("x", x, self.data_dim, "D")

    def _paired_rows(
        self, q: Gaussian, x: ArrayLike
    ) -> tuple[tuple[int, ...], FloatArray, FloatArray]:
        """Broadcast batch shape, and x rows ``(n, D)`` with q's means ``(n, K)`` paired.

        x is read without a copy when its batch already has the broadcast shape (the
        usual case: one q mean per row); callers check their results with
        :meth:`_finite_or_raise`.
        """
        data = self._data_rows(x)
        batch = self._batch_shape(data.shape[:-1], q.batch_shape)
        n = int(np.prod(batch, dtype=int))
        rows = np.broadcast_to(data, (*batch, self.data_dim)).reshape(n, self.data_dim)
        means = np.broadcast_to(q.mean, (*batch, self.latent_dim)).reshape(n, self.latent_dim)
        return batch, rows, means

    def _check_z(self, z: ArrayLike, name: str = "z") -> FloatArray:
        return as_event_array(name, z, self.latent_dim, "K")

    def _check_q(self, q: Any) -> Gaussian:
        if not isinstance(q, Gaussian):
            raise InvalidTypeError(f"q must be a Gaussian; got {type(q).__name__}")
        if q.dim != self.latent_dim:
            raise InvalidInputError(
                f"q must be a Gaussian over the latent space with K = {self.latent_dim} "
                f"dimensions; got q.dim = {q.dim}"
            )
        return q

    @staticmethod
    def _batch_shape(*shapes: tuple[int, ...]) -> tuple[int, ...]:
        try:
            return tuple(np.broadcast_shapes(*shapes))
        except ValueError as err:
            described = " and ".join(describe_shape(s) for s in shapes)
            raise InvalidInputError(f"batch shapes {described} do not broadcast") from err

    # ------------------------------------------------------------------ marginal
    def marginal(self) -> Gaussian:
        r"""The marginal :math:`p(x)` as a dense Gaussian over ``D`` dimensions.

        Builds a ``(D, D)`` factor: O(D^2 (D + K)) time. Use :meth:`log_evidence` for
        densities; this is for inspection and for cross-checks.

        Returns
        -------
        Gaussian
            :math:`\mathcal N(W\mu_0 + b,\ W\Sigma_0W^\top + \Psi)`, unbatched, over
            ``D`` dimensions.

        Notes
        -----
        Integrating out :math:`z` [1]_:

        .. math::
            p(x) = \int p(x\mid z)\,p(z)\,dz
                = \mathcal N\bigl(x;\ W\mu_0 + b,\ C\bigr),\qquad
            C = W\Sigma_0W^\top + \Psi.

        The lower factor of :math:`C = [WL_0,\ L_\Psi][WL_0,\ L_\Psi]^\top`
        (:math:`L_\Psi` the Cholesky factor of :math:`\Psi`) is read from a QR
        decomposition of :math:`[WL_0,\ L_\Psi]^\top`, so :math:`C` is never formed
        and factored.

        References
        ----------
        .. [1] C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer,
           2006, eq. (2.115).

        Examples
        --------
        >>> import numpy as np
        >>> from elbo_check import Gaussian, LinearGaussianModel
        >>> prior = Gaussian.from_covariance(mean=[0.5, -1.0], cov=[[1.0, 0.3], [0.3, 2.0]])
        >>> model = LinearGaussianModel(weights=[[1.0, 0.0], [0.5, 1.0], [0.0, 2.0]],
        ...                             bias=[0.1, 0.2, 0.3], prior=prior,
        ...                             noise_cov=[0.5, 1.0, 2.0])
        >>> marginal = model.marginal()
        >>> marginal.mean
        array([ 0.6 , -0.55, -1.7 ])
        >>> np.round(marginal.cov, 6)
        array([[ 1.5 ,  0.8 ,  0.6 ],
               [ 0.8 ,  3.55,  4.3 ],
               [ 0.6 ,  4.3 , 10.  ]])
        >>> W, S0 = model.weights, model.prior.cov
        >>> bool(np.allclose(marginal.cov, W @ S0 @ W.T + model.dense_noise_cov()))
        True
        """
        noise_factor = self._noise.scale_tril()
        generator = noise_factor @ np.hstack(
            [self._marginal.whitened_loadings, np.eye(self.data_dim)]
        )
        return Gaussian._trusted(np.array(self._marginal.mean), tril_of_gram(generator))

    def log_evidence(self, x: ArrayLike, *, return_error_bound: bool = False) -> Any:
        r"""Exact log marginal likelihood (evidence) :math:`\log p(x)`, one per row.

        Parameters
        ----------
        x : array_like, shape (..., D)
            One observation or a batch of them.
        return_error_bound : bool, optional
            Also return, for each value, a bound on its distance from the exact
            :math:`\log p(x)` of the float64 inputs as given (default False).

        Returns
        -------
        value : float or ndarray of shape ``x.shape[:-1]``
            :math:`\log p(x)` in nats, one per row (a float for one observation);
            ``-inf`` where the Mahalanobis term overflows (the exact value is then
            below the most negative float).
        bound : float or ndarray of shape ``x.shape[:-1]``
            Only with ``return_error_bound=True``: the error bound of
            :doc:`reference/accuracy` ("An error bound with every value"), a formula in
            the computed quantities (measured against 50-digit arithmetic: the error stays
            below 0.08 of the bound, and the bound overestimates it by a factor of
            about 100 to 2000).

        Raises
        ------
        InvalidInputError
            If the last axis of ``x`` is not ``D`` or ``x`` holds NaN or inf; and,
            without ``return_error_bound``, if a row's value is not determined by
            float64 arithmetic at all (its bound exceeds its magnitude: an observation
            on the signal subspace of a model with a signal-to-noise ratio beyond about
            :math:`10^{15}`), rather than returning digits that mean nothing.
        InvalidTypeError
            If ``x`` is not a real array.

        Notes
        -----
        The log density of the marginal (:meth:`marginal`) [1]_:

        .. math::
            \log p(x) = -\tfrac12\bigl(D\log 2\pi + \log\det C
                + (x-\bar x)^\top C^{-1}(x-\bar x)\bigr),\quad
            C = W\Sigma_0W^\top + \Psi,\ \bar x = W\mu_0 + b.

        :math:`C` is never formed. With the whitened loadings
        :math:`\tilde W = \Psi^{-1/2}WL_0` and the QR factorisation
        :math:`[\tilde W; I_K] = QR`, :math:`\log\det C = \log\det\Psi + 2\sum_i\log
        R_{ii}` (the matrix determinant lemma), and with :math:`y = \Psi^{-1/2}(x - \bar
        x)` the Mahalanobis term equals :math:`\min_u \lVert y - \tilde W u\rVert^2 +
        \lVert u\rVert^2`, the squared residual of the stacked least-squares problem (the
        Woodbury identity without the cancellation of its textbook form); cost
        O(N D K) for N rows with diagonal noise. See the documentation's accuracy page
        for the routes and the error bound.

        References
        ----------
        .. [1] C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer,
           2006, eq. (2.115) (the marginal) with the density (2.43).

        Examples
        --------
        >>> import numpy as np
        >>> from scipy.stats import multivariate_normal
        >>> from elbo_check import Gaussian, LinearGaussianModel
        >>> prior = Gaussian.from_covariance(mean=[0.5, -1.0], cov=[[1.0, 0.3], [0.3, 2.0]])
        >>> model = LinearGaussianModel(weights=[[1.0, 0.0], [0.5, 1.0], [0.0, 2.0]],
        ...                             bias=[0.1, 0.2, 0.3], prior=prior,
        ...                             noise_cov=[0.5, 1.0, 2.0])
        >>> x = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])
        >>> np.round(model.log_evidence(x), 6)
        array([-5.405177, -5.203379])

        The same from the dense marginal covariance :math:`W\Sigma_0W^\top + \Psi`:

        >>> W = model.weights
        >>> C = W @ model.prior.cov @ W.T + model.dense_noise_cov()
        >>> np.round(multivariate_normal(model.marginal_mean, C).logpdf(x), 6)
        array([-5.405177, -5.203379])

        With an error bound, for one observation:

        >>> value, bound = model.log_evidence(x[0], return_error_bound=True)
        >>> round(value, 6), bool(bound < 1e-13)
        (-5.405177, True)
        """
        data = self._data_rows(x)
        flat = data.reshape(-1, self.data_dim)
        constant = self.data_dim * LOG_2PI + self._marginal.log_det
        routes = np.empty(flat.shape[0], dtype=np.int8)
        squares = self._marginal.mahalanobis(flat, routes)
        out = -0.5 * (constant + squares)
        beyond = np.flatnonzero(squares == np.inf)
        if beyond.size:  # M overflows, log p = -(constant + M) / 2 may not: halve first
            out[beyond] = -0.5 * constant - self._marginal.half_squares(flat[beyond])
        self._finite_or_raise(x, out)
        value = _scalar_or_array(out.reshape(data.shape[:-1]))
        if not return_error_bound:
            self._error_bound.refuse_undetermined(data.shape[:-1], flat, squares, routes, out)
            return value
        bound = self._error_bound.rows(flat, squares, routes, out)
        return value, _scalar_or_array(bound.reshape(data.shape[:-1]))

    @cached_property
    def _error_bound(self) -> LogEvidenceErrorBound:
        return LogEvidenceErrorBound(self._marginal)

    # ------------------------------------------------------------------ posterior
    def posterior(self, x: ArrayLike) -> Gaussian:
        r"""Exact posterior :math:`p(z\mid x)`; a batch of means for a batch of rows.

        Parameters
        ----------
        x : array_like, shape (..., D)
            One observation or a batch of them.

        Returns
        -------
        Gaussian
            :math:`\mathcal N(m_x, \Lambda^{-1})` over the ``K`` latent dimensions:
            means of shape ``x.shape[:-1] + (K,)``, one per row, sharing one ``(K, K)``
            covariance (the posterior covariance does not depend on ``x``).

        Raises
        ------
        InvalidInputError
            If the last axis of ``x`` is not ``D``, or ``x`` holds NaN or inf.
        InvalidTypeError
            If ``x`` is not a real array.

        Notes
        -----
        Bayes' theorem for Gaussian variables [1]_:

        .. math::
            \Lambda = \Sigma_0^{-1} + W^\top\Psi^{-1}W,\qquad
            m_x = \Lambda^{-1}\bigl(W^\top\Psi^{-1}(x - b) + \Sigma_0^{-1}\mu_0\bigr)
                = \mu_0 + \Lambda^{-1}W^\top\Psi^{-1}(x - W\mu_0 - b).

        Computed as :math:`m_x = \mu_0 + L_0R^{-1}Q_1^\top y`, with
        :math:`y = \Psi^{-1/2}(x - W\mu_0 - b)` and the QR factors of
        :meth:`log_evidence`, and :math:`\Lambda^{-1} = (L_0R^{-1})(L_0R^{-1})^\top`,
        whose Cholesky factor comes from a QR decomposition rather than from forming
        and inverting :math:`\Lambda`.

        References
        ----------
        .. [1] C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer,
           2006, eqs. (2.116)–(2.117).

        Examples
        --------
        >>> import numpy as np
        >>> from elbo_check import Gaussian, LinearGaussianModel
        >>> prior = Gaussian.from_covariance(mean=[0.5, -1.0], cov=[[1.0, 0.3], [0.3, 2.0]])
        >>> model = LinearGaussianModel(weights=[[1.0, 0.0], [0.5, 1.0], [0.0, 2.0]],
        ...                             bias=[0.1, 0.2, 0.3], prior=prior,
        ...                             noise_cov=[0.5, 1.0, 2.0])
        >>> x = np.array([1.0, 0.0, 2.0])
        >>> posterior = model.posterior(x)
        >>> np.round(posterior.mean, 6), np.round(posterior.cov, 6)
        (array([0.702641, 0.186444]), array([[ 0.306397, -0.02982 ],
               [-0.02982 ,  0.286706]]))

        The dense textbook formulas agree, and the ELBO is tight at the posterior:

        >>> W, psi_inv = model.weights, np.linalg.inv(model.dense_noise_cov())
        >>> precision = np.linalg.inv(model.prior.cov) + W.T @ psi_inv @ W
        >>> bool(np.allclose(posterior.cov, np.linalg.inv(precision)))
        True
        >>> round(model.elbo(posterior, x), 6), round(model.log_evidence(x), 6)
        (-5.405177, -5.405177)
        """
        data = self._data_rows(x)
        coefficients = self._marginal.coefficients(data.reshape(-1, self.data_dim))
        means = coefficients @ self._marginal.posterior_map.T
        self._finite_or_raise(x, means)
        means += self._prior.mean
        return Gaussian._trusted(
            means.reshape(*data.shape[:-1], self.latent_dim), self._marginal.posterior_scale_tril
        )

    @property
    def posterior_precision(self) -> FloatArray:
        r""":math:`\Lambda = \Sigma_0^{-1} + W^\top\Psi^{-1}W`, shape ``(K, K)`` (read-only)."""
        return self._marginal.posterior_precision

    # ------------------------------------------------------------------ bound methods
    # These methods are defined, with their documentation, in the modules of their
    # concept and bound here (each takes the model as ``self``): the joint density and
    # the ELBO in ._model_elbo, the gradients in ._gradients, amortised inference in
    # ._encoder, the Rényi bounds, the CUBO and the importance-weight moments in ._renyi.
    # They are the class's own attributes, so help(), autodoc and pickling treat them as
    # methods defined here.
    log_likelihood = _model_elbo.log_likelihood
    log_joint = _model_elbo.log_joint
    sample = _model_elbo.sample
    elbo_terms = _model_elbo.elbo_terms
    elbo = _model_elbo.elbo
    kl_to_posterior = _model_elbo.kl_to_posterior
    elbo_grad_variational = _gradients.elbo_grad_variational
    elbo_grad_model = _gradients.elbo_grad_model
    dataset_elbo = _encoder.dataset_elbo
    dataset_elbo_grad = _encoder.dataset_elbo_grad
    optimal_encoder = _encoder.optimal_encoder
    renyi_bound = _renyi.renyi_bound
    renyi_divergence_to_posterior = _renyi.renyi_divergence_to_posterior
    renyi_alpha_interval = _renyi.renyi_alpha_interval
    cubo = _renyi.cubo
    importance_weight_moment = _renyi.importance_weight_moment
    importance_weight_stats = _renyi.importance_weight_stats
    renyi_bound_grad_variational = _renyi.renyi_bound_grad_variational
