"""Sparse variational GP regression with inducing variables: exact bounds and ELBOs.

Every quantity costs O(N M^2 + M^3) for N inputs and M inducing inputs, through the
Cholesky factor of :math:`K_{ZZ} + \\epsilon I` and triangular solves; only
:meth:`SparseGP.log_marginal_likelihood`, :meth:`SparseGP.kl_gap` and
:meth:`SparseGP.as_linear_gaussian_model` (the exact references) cost O(N^3).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .._divergences import kl_divergence
from .._errors import InvalidInputError, InvalidTypeError
from .._gaussian import Gaussian
from .._linalg import cholesky, solve_tril, tril_of_gram
from .._model import LinearGaussianModel
from .._validation import describe_shape, freeze
from . import _sparse_grad
from ._kernels import Kernel, as_inputs
from ._means import MeanFunction, ZeroMean
from ._regression import DEFAULT_JITTER, LOG_2PI, GPRegression, GPSetup, _GPAttributes

__all__ = ["SparseGP"]

FloatArray = NDArray[np.float64]


class SparseGP(_GPAttributes):
    r"""A GP regression model with inducing variables :math:`u = f(Z)`, computed exactly.

    The jittered joint prior of the latent values :math:`f = f(X)` and :math:`u` is

    .. math::
        \begin{pmatrix} f \\ u \end{pmatrix} \sim \mathcal N\!\left(
        \begin{pmatrix} m(X) \\ m(Z) \end{pmatrix},
        \begin{pmatrix} K_{XX} + \epsilon I & K_{XZ} \\ K_{ZX} & K_{ZZ} + \epsilon I
        \end{pmatrix}\right),\qquad y \mid f \sim \mathcal N(f, \sigma^2 I),

    with the jitter :math:`\epsilon` on the two prior covariances only (the
    cross-covariance has none), so every bound below is exact for this jittered
    model, and its marginal of :math:`f` is the :class:`GPRegression` model with the
    same jitter. Write :math:`L_u L_u^\top = K_{ZZ} + \epsilon I`,
    :math:`A = L_u^{-1} K_{ZX}` and :math:`Q = A^\top A`, the Nyström approximation
    of :math:`K_{XX}`.

    Parameters
    ----------
    kernel : Kernel
        The covariance function :math:`k`.
    inputs : array_like, shape (N, d) or (N,)
        The training inputs :math:`X`.
    noise_variance : float
        :math:`\sigma^2 > 0`.
    inducing_inputs : array_like, shape (M, d) or (M,)
        The inducing inputs :math:`Z`.
    mean : MeanFunction, optional
        The mean function :math:`m` (default :class:`ZeroMean`).
    jitter : float, optional
        :math:`\epsilon \ge 0` (default ``1e-10``).

    Raises
    ------
    InvalidInputError
        If ``inputs`` or ``inducing_inputs`` is not ``(N, d)`` / ``(M, d)`` with at
        least one row and the same ``d``, ``noise_variance`` is not positive,
        ``jitter`` is negative, or :math:`K_{ZZ} + \epsilon I` is not numerically
        positive definite (raise ``jitter`` or spread ``Z``).
    InvalidTypeError
        If ``kernel`` is not a :class:`Kernel`, ``mean`` not a :class:`MeanFunction`,
        or an array argument is not real.

    Notes
    -----
    Because :math:`u` carries its own jitter, inducing inputs equal to the training
    inputs (:math:`Z = X`) make the bounds equal :math:`\log p(y)` exactly only for
    ``jitter=0``; with a jitter the collapsed bound falls short by about
    :math:`N\epsilon/(2\sigma^2)` (6e-9 for N = 30, :math:`\epsilon` = 1e-10,
    :math:`\sigma^2` = 0.1). Every identity among the quantities here (the ELBO at
    the optimal :math:`q(u)`, the KL gap, whitened against unwhitened) is exact for
    any jitter.

    References
    ----------
    .. [1] M. K. Titsias, "Variational learning of inducing variables in sparse
       Gaussian processes", AISTATS 2009.
    .. [2] J. Hensman, N. Fusi and N. D. Lawrence, "Gaussian processes for big data",
       UAI 2013.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check.gp import RBF, SparseGP
    >>> x = np.linspace(0.0, 3.0, 20)
    >>> y = np.sin(x)
    >>> sgp = SparseGP(RBF(), x, 0.1, inducing_inputs=[0.5, 1.5, 2.5])
    >>> lower, lml, upper = sgp.collapsed_bound(y), sgp.log_marginal_likelihood(y), \
    ...     sgp.upper_bound(y)
    >>> bool(lower <= lml <= upper)
    True
    """

    def __init__(
        self,
        kernel: Kernel,
        inputs: ArrayLike,
        noise_variance: float,
        inducing_inputs: ArrayLike,
        *,
        mean: MeanFunction | None = None,
        jitter: float = DEFAULT_JITTER,
    ) -> None:
        setup = GPSetup(
            kernel, inputs, noise_variance, ZeroMean() if mean is None else mean, jitter
        )
        z = as_inputs("inducing_inputs", inducing_inputs, setup.inputs.shape[1])
        if z.shape[0] == 0:
            raise InvalidInputError("inducing_inputs must hold at least one row; got shape (0, d)")
        self._setup = setup
        self._z = freeze(z)
        self._mean_x = freeze(setup.prior_mean())
        self._mean_z = freeze(setup.mean(z))
        kuu = kernel(z)
        kuu[np.diag_indices_from(kuu)] += setup.jitter
        self._kuu_factor = freeze(cholesky("K_ZZ + jitter I", kuu))
        self._a = freeze(solve_tril(self._kuu_factor, kernel(z, setup.inputs)))
        self._kff_diag = freeze(kernel.diag(setup.inputs) + setup.jitter)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Copies and pickles are rebuilt through the constructor (validated, frozen)."""
        args = (self.kernel, self.inputs.copy(), self.noise_variance, self._z.copy())
        return (_rebuild_sparse, (*args, self.mean, self.jitter))

    # ------------------------------------------------------------------ attributes
    @property
    def inducing_inputs(self) -> FloatArray:
        """The inducing inputs :math:`Z`, shape ``(M, d)`` (read-only)."""
        return self._z

    @property
    def num_inducing(self) -> int:
        """M, the number of inducing inputs."""
        return int(self._z.shape[0])

    @property
    def inducing_prior(self) -> Gaussian:
        r"""The prior :math:`p(u) = \mathcal N(m(Z), K_{ZZ} + \epsilon I)`."""
        return Gaussian._trusted(self._mean_z, self._kuu_factor)

    def __repr__(self) -> str:
        return (
            f"SparseGP({self.kernel!r}, N={self.num_data}, M={self.num_inducing}, "
            f"noise_variance={self.noise_variance!r}, mean={self.mean!r}, jitter={self.jitter!r})"
        )

    @cached_property
    def exact(self) -> GPRegression:
        """The exact :class:`GPRegression` of the same (jittered) model, O(N^3)."""
        return GPRegression(
            self.kernel, self.inputs, self.noise_variance, mean=self.mean, jitter=self.jitter
        )

    # ------------------------------------------------------------------ helpers
    def _residual(self, y: ArrayLike, name: str = "y") -> FloatArray:
        return self._setup.check_y(y, name) - self._mean_x

    def _nystrom_gaussian(self, residual: FloatArray, noise: float) -> tuple[float, float, Any]:
        """``log det(Q + noise I)``, ``r^T (Q + noise I)^{-1} r`` and the factor of B."""
        n = self._a.shape[1]
        b = self._a @ self._a.T / noise
        b[np.diag_indices_from(b)] += 1.0
        factor_b = cholesky("I + A A^T / noise_variance", b)
        c = solve_tril(factor_b, self._a @ residual) / noise
        logdet = n * np.log(noise) + 2.0 * float(np.sum(np.log(np.diagonal(factor_b))))
        quad = float(residual @ residual) / noise - float(c @ c)
        return float(logdet), quad, (factor_b, c)

    def _trace_gap(self) -> float:
        return float(np.sum(self._kff_diag) - np.sum(self._a * self._a))

    def _check_q(self, q_u: Any) -> Gaussian:
        if not isinstance(q_u, Gaussian):
            raise InvalidTypeError(f"q_u must be a Gaussian; got {type(q_u).__name__}")
        if q_u.dim != self.num_inducing or q_u.batch_shape:
            raise InvalidInputError(
                f"q_u must be a single Gaussian over M = {self.num_inducing} inducing "
                f"variables; got mean of shape {describe_shape(q_u.mean.shape)} and "
                f"scale_tril of shape {describe_shape(q_u.scale_tril.shape)}"
            )
        return q_u

    def _q_prior(self, whiten: bool) -> Gaussian:
        return Gaussian.standard(self.num_inducing) if whiten else self.inducing_prior

    def _expected_log_lik(
        self, q: Gaussian, residual: FloatArray, rows: Any, whiten: bool
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Per-row E_q log N(y_i; f_i, s2), the residual y - E_q f and P (rows only)."""
        a = self._a[:, rows]
        p = a if whiten else solve_tril(self._kuu_factor, a, trans=True)
        offset = q.mean - (0.0 if whiten else self._mean_z)
        e = residual - p.T @ offset
        spread = q.scale_tril.T @ p
        var = self._kff_diag[rows] - np.sum(a * a, axis=0) + np.sum(spread * spread, axis=0)
        s2 = self.noise_variance
        terms = -0.5 * (LOG_2PI + np.log(s2)) - 0.5 * (e * e + var) / s2
        return terms, e, p

    # ------------------------------------------------------------------ bounds
    def log_marginal_likelihood(self, y: ArrayLike) -> float:
        r"""The exact :math:`\log p(y)` of the jittered model, in O(N^3).

        Parameters
        ----------
        y : array_like, shape (N,)
            The targets.

        Returns
        -------
        float
            :meth:`GPRegression.log_marginal_likelihood` of :attr:`exact`.

        Raises
        ------
        InvalidInputError
            If ``y`` is not of shape ``(N,)`` or holds NaN or inf.
        InvalidTypeError
            If ``y`` is not a real array.

        Examples
        --------
        >>> from elbo_check.gp import Matern12, SparseGP
        >>> sgp = SparseGP(Matern12(), [0.0], 1.0, inducing_inputs=[0.0], jitter=0.0)
        >>> round(sgp.log_marginal_likelihood([0.0]), 6)
        -1.265512
        """
        return self.exact.log_marginal_likelihood(y)

    def collapsed_bound(self, y: ArrayLike) -> float:
        r"""Titsias's collapsed lower bound on :math:`\log p(y)`, in O(N M^2 + M^3).

        Parameters
        ----------
        y : array_like, shape (N,)
            The targets.

        Returns
        -------
        float
            The bound; it is the SVGP ELBO maximised over :math:`q(u)`.

        Raises
        ------
        InvalidInputError
            If ``y`` is not of shape ``(N,)`` or holds NaN or inf.
        InvalidTypeError
            If ``y`` is not a real array.

        Notes
        -----
        .. math::
            \mathcal L = \log\mathcal N\big(y;\ m(X),\ Q + \sigma^2 I\big)
            - \frac{1}{2\sigma^2}\operatorname{tr}\big(K_{XX} + \epsilon I - Q\big),

        evaluated through :math:`B = I + AA^\top/\sigma^2` (Woodbury and the matrix
        determinant lemma): :math:`\log|Q+\sigma^2 I| = N\log\sigma^2 + \log|B|`.

        References
        ----------
        .. [1] M. K. Titsias, "Variational learning of inducing variables in sparse
           Gaussian processes", AISTATS 2009, eq. (9).
        .. [2] J. Hensman, N. Fusi and N. D. Lawrence, "Gaussian processes for big
           data", UAI 2013, eq. (4).

        Examples
        --------
        >>> import numpy as np
        >>> from elbo_check.gp import Matern32, SparseGP
        >>> x = np.linspace(0.0, 1.0, 5)
        >>> sgp = SparseGP(Matern32(), x, 0.2, inducing_inputs=x, jitter=0.0)
        >>> bool(np.isclose(sgp.collapsed_bound(x), sgp.log_marginal_likelihood(x)))
        True
        """
        residual = self._residual(y)
        s2 = self.noise_variance
        logdet, quad, _ = self._nystrom_gaussian(residual, s2)
        n = self.num_data
        return -0.5 * (n * LOG_2PI + logdet + quad) - 0.5 * self._trace_gap() / s2

    def upper_bound(self, y: ArrayLike) -> float:
        r"""An upper bound on :math:`\log p(y)`, in O(N M^2 + M^3).

        Parameters
        ----------
        y : array_like, shape (N,)
            The targets.

        Returns
        -------
        float
            The bound :math:`\mathcal U \ge \log p(y)`.

        Raises
        ------
        InvalidInputError
            If ``y`` is not of shape ``(N,)`` or holds NaN or inf.
        InvalidTypeError
            If ``y`` is not a real array.

        Notes
        -----
        With :math:`t = \operatorname{tr}(K_{XX} + \epsilon I - Q) \ge
        \lambda_{\max}(K_{XX} + \epsilon I - Q)` and :math:`r = y - m(X)`,

        .. math::
            \mathcal U = -\frac N2\log 2\pi - \frac12\log\big|Q + \sigma^2 I\big|
            - \frac12\, r^\top\big(Q + (\sigma^2 + t) I\big)^{-1} r,

        an upper bound because :math:`\log|K + \sigma^2 I| \ge \log|Q + \sigma^2 I|`
        (as :math:`K \succeq Q`) and :math:`K + \sigma^2 I \preceq Q + (\sigma^2 + t)I`.

        References
        ----------
        .. [1] M. K. Titsias, "Variational inference for Gaussian and determinantal
           point processes", NIPS Workshop on Advances in Variational Inference, 2014.
        .. [2] D. R. Burt, C. E. Rasmussen and M. van der Wilk, "Rates of convergence
           for sparse variational Gaussian process regression", ICML 2019, §3.

        Examples
        --------
        >>> import numpy as np
        >>> from elbo_check.gp import RBF, SparseGP
        >>> x = np.linspace(0.0, 2.0, 10)
        >>> sgp = SparseGP(RBF(), x, 0.1, inducing_inputs=[0.0, 2.0])
        >>> bool(sgp.upper_bound(np.cos(x)) >= sgp.log_marginal_likelihood(np.cos(x)))
        True
        """
        residual = self._residual(y)
        s2 = self.noise_variance
        logdet, _, _ = self._nystrom_gaussian(residual, s2)
        _, quad, _ = self._nystrom_gaussian(residual, s2 + max(self._trace_gap(), 0.0))
        return -0.5 * (self.num_data * LOG_2PI + logdet + quad)

    def svgp_elbo(self, q_u: Gaussian, y: ArrayLike, *, whiten: bool = False) -> float:
        r"""The uncollapsed SVGP ELBO of Hensman et al. for a Gaussian :math:`q(u)`.

        Parameters
        ----------
        q_u : Gaussian
            :math:`q(u) = \mathcal N(\mu, S)` over the ``M`` inducing variables; or,
            with ``whiten=True``, :math:`q(v)` over :math:`v` with
            :math:`u = m(Z) + L_u v` (the prior of ``v`` is :math:`\mathcal N(0, I)`).
        y : array_like, shape (N,)
            The targets.
        whiten : bool, optional
            Whether ``q_u`` is over the whitened :math:`v`.

        Returns
        -------
        float
            :math:`\sum_i \mathbb E_{q(f_i)}\log\mathcal N(y_i; f_i, \sigma^2)
            - \mathrm{KL}(q(u)\,\|\,p(u))`.

        Raises
        ------
        InvalidInputError
            If ``q_u`` is not over ``M`` dimensions or is a batch, or ``y`` is not of
            shape ``(N,)``.
        InvalidTypeError
            If ``q_u`` is not a :class:`~elbo_check.Gaussian` or ``y`` not real.

        Notes
        -----
        With :math:`P = (K_{ZZ}+\epsilon I)^{-1} K_{ZX}` (whitened: :math:`P = A`),
        :math:`q(f_i) = \mathcal N(\mu_i, s_i^2)` where
        :math:`\mu = m(X) + P^\top(\mu_u - m(Z))` and
        :math:`s_i^2 = K_{ii} + \epsilon - (A^\top A)_{ii} + (P^\top S P)_{ii}`, and

        .. math::
            \mathrm{ELBO} = \sum_{i=1}^N \Big[-\tfrac12\log 2\pi\sigma^2
            - \frac{(y_i - \mu_i)^2 + s_i^2}{2\sigma^2}\Big]
            - \mathrm{KL}\big(q(u)\,\|\,\mathcal N(m(Z), K_{ZZ} + \epsilon I)\big).

        References
        ----------
        .. [1] M. K. Titsias, "Variational learning of inducing variables in sparse
           Gaussian processes", AISTATS 2009, eq. (9).
        .. [2] J. Hensman, N. Fusi and N. D. Lawrence, "Gaussian processes for big
           data", UAI 2013, eq. (4).

        Examples
        --------
        >>> import numpy as np
        >>> from elbo_check.gp import RBF, SparseGP
        >>> x = np.linspace(0.0, 2.0, 8)
        >>> sgp = SparseGP(RBF(), x, 0.1, inducing_inputs=[0.5, 1.5])
        >>> q = sgp.optimal_inducing_distribution(np.sin(x))
        >>> bool(np.isclose(sgp.svgp_elbo(q, np.sin(x)), sgp.collapsed_bound(np.sin(x)),
        ...                 rtol=1e-12))
        True
        """
        q = self._check_q(q_u)
        terms, _, _ = self._expected_log_lik(q, self._residual(y), slice(None), whiten)
        return float(np.sum(terms) - kl_divergence(q, self._q_prior(whiten)))

    svgp_elbo_minibatch = _sparse_grad.svgp_elbo_minibatch
    svgp_elbo_grad = _sparse_grad.svgp_elbo_grad

    def kl_gap(self, q_u: Gaussian, y: ArrayLike, *, whiten: bool = False) -> float:
        r"""The gap :math:`\log p(y) - \mathrm{ELBO}(q)`, in O(N^3).

        Parameters
        ----------
        q_u : Gaussian
            As in :meth:`svgp_elbo`.
        y : array_like, shape (N,)
            The targets.
        whiten : bool, optional
            Whether ``q_u`` is over the whitened :math:`v`.

        Returns
        -------
        float
            :math:`\mathrm{KL}\big(p(f\mid u)q(u)\,\|\,p(f, u\mid y)\big) \ge 0`.

        Raises
        ------
        InvalidInputError
            As :meth:`svgp_elbo`.
        InvalidTypeError
            As :meth:`svgp_elbo`.

        Notes
        -----
        .. math::
            \log p(y) - \mathrm{ELBO}(q) = \mathrm{KL}\big(q(f, u)\,\|\,p(f, u\mid y)\big),
            \qquad q(f, u) = p(f\mid u)\,q(u).

        References
        ----------
        .. [1] M. K. Titsias, "Variational learning of inducing variables in sparse
           Gaussian processes", AISTATS 2009, eq. (9).
        .. [2] J. Hensman, N. Fusi and N. D. Lawrence, "Gaussian processes for big
           data", UAI 2013, eq. (4).

        Examples
        --------
        >>> import numpy as np
        >>> from elbo_check.gp import RBF, SparseGP
        >>> x = np.linspace(0.0, 2.0, 6)
        >>> sgp = SparseGP(RBF(), x, 0.1, inducing_inputs=[0.5, 1.5])
        >>> bool(sgp.kl_gap(sgp.inducing_prior, np.sin(x)) > 0)
        True
        """
        return self.log_marginal_likelihood(y) - self.svgp_elbo(q_u, y, whiten=whiten)

    def optimal_inducing_distribution(self, y: ArrayLike, *, whiten: bool = False) -> Gaussian:
        r"""The :math:`q(u)` that maximises the SVGP ELBO (its value: the collapsed bound).

        Parameters
        ----------
        y : array_like, shape (N,)
            The targets.
        whiten : bool, optional
            Return :math:`q(v)` for the whitened :math:`v` (:math:`u = m(Z) + L_u v`).

        Returns
        -------
        Gaussian
            The optimum, with a lower Cholesky factor computed without forming any
            inverse.

        Raises
        ------
        InvalidInputError
            If ``y`` is not of shape ``(N,)`` or holds NaN or inf.
        InvalidTypeError
            If ``y`` is not a real array.

        Notes
        -----
        With :math:`B = I + AA^\top/\sigma^2 = L_B L_B^\top` and :math:`r = y - m(X)`,
        the whitened optimum is :math:`q(v) = \mathcal N(B^{-1}Ar/\sigma^2,\ B^{-1})`,
        and :math:`q(u) = \mathcal N(m(Z) + L_u \mu_v,\ L_u B^{-1} L_u^\top)`; in the
        usual form, :math:`S = K\Sigma K`, :math:`\mu_u = m(Z) + K\Sigma K_{ZX} r /
        \sigma^2` with :math:`\Sigma = (K + K_{ZX}K_{XZ}/\sigma^2)^{-1}`,
        :math:`K = K_{ZZ} + \epsilon I`.

        .. math::
            q^\star(u) = \mathcal N\big(m(Z) + \sigma^{-2} K\Sigma K_{ZX} r,\
            K\Sigma K\big).

        References
        ----------
        .. [1] M. K. Titsias, "Variational learning of inducing variables in sparse
           Gaussian processes", AISTATS 2009, eq. (9).
        .. [2] J. Hensman, N. Fusi and N. D. Lawrence, "Gaussian processes for big
           data", UAI 2013, eq. (4).

        Examples
        --------
        >>> import numpy as np
        >>> from elbo_check.gp import RBF, SparseGP
        >>> x = np.linspace(0.0, 2.0, 8)
        >>> sgp = SparseGP(RBF(), x, 0.1, inducing_inputs=[0.5, 1.5])
        >>> sgp.optimal_inducing_distribution(np.sin(x), whiten=True).dim
        2
        """
        residual = self._residual(y)
        _, _, (factor_b, c) = self._nystrom_gaussian(residual, self.noise_variance)
        inv_t = solve_tril(factor_b, np.eye(self.num_inducing), trans=True)  # L_B^{-T}
        mean_v = inv_t @ c
        factor_v = tril_of_gram(inv_t)
        if whiten:
            return Gaussian._trusted(mean_v, factor_v)
        mean_u = self._mean_z + self._kuu_factor @ mean_v
        return Gaussian._trusted(mean_u, np.tril(self._kuu_factor @ factor_v))

    def as_linear_gaussian_model(self) -> LinearGaussianModel:
        r"""The joint model over :math:`z = (f, u)` as a :class:`~elbo_check.LinearGaussianModel`.

        Returns
        -------
        LinearGaussianModel
            :math:`z \sim` the jittered joint prior of :math:`(f, u)` (``N + M``
            dimensions), :math:`y \mid z \sim \mathcal N([I_N\ 0]\,z, \sigma^2 I)`; the
            exact reference for every bound here (O((N + M)^3)).

        Raises
        ------
        InvalidInputError
            If the joint prior covariance is numerically singular (e.g. ``Z`` equal to
            some inputs with ``jitter`` 0).

        Examples
        --------
        >>> from elbo_check.gp import RBF, SparseGP
        >>> sgp = SparseGP(RBF(), [0.0, 1.0, 2.0], 0.1, inducing_inputs=[0.5], jitter=1e-6)
        >>> sgp.as_linear_gaussian_model().latent_dim
        4
        """
        x, z, k = self.inputs, self._z, self.kernel
        n = self.num_data
        cov = np.block([[k(x), k(x, z)], [k(z, x), k(z)]])
        cov[np.diag_indices_from(cov)] += self.jitter
        mean = np.concatenate([self._mean_x, self._mean_z])
        weights = np.hstack([np.eye(n), np.zeros((n, self.num_inducing))])
        prior = Gaussian.from_covariance(mean=mean, cov=cov)
        return LinearGaussianModel(
            weights=weights, bias=np.zeros(n), prior=prior, noise_cov=self.noise_variance
        )


def _rebuild_sparse(
    kernel: Kernel,
    inputs: FloatArray,
    noise: float,
    inducing: FloatArray,
    mean: MeanFunction,
    jitter: float,
) -> SparseGP:
    return SparseGP(kernel, inputs, noise, inducing, mean=mean, jitter=jitter)
