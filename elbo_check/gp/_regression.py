"""Exact Gaussian-process regression: log marginal likelihood and predictions."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .._errors import InvalidInputError, InvalidTypeError
from .._gaussian import Gaussian
from .._linalg import cholesky, solve_tril
from .._model import LinearGaussianModel
from .._validation import as_real_array, describe_shape, freeze
from ._kernels import Kernel, as_inputs
from ._means import MeanFunction, ZeroMean

__all__ = ["GPRegression", "GPSetup"]

FloatArray = NDArray[np.float64]

#: The default jitter added to the diagonal of every prior covariance of f and u.
DEFAULT_JITTER = 1e-10

LOG_2PI = math.log(2.0 * math.pi)


class GPSetup:
    """The validated ingredients shared by the exact and the sparse GP (internal).

    Holds the kernel, the ``(N, d)`` inputs, the noise variance, the mean function and
    the jitter; :meth:`prior_cov` is :math:`K_{XX} + \\text{jitter}\\, I`.
    """

    def __init__(
        self,
        kernel: Any,
        inputs: ArrayLike,
        noise_variance: Any,
        mean: Any,
        jitter: Any,
    ) -> None:
        if not isinstance(kernel, Kernel):
            raise InvalidTypeError(
                f"kernel must be an elbo_check.gp.Kernel (wrap a function with "
                f"Kernel.from_function); got {type(kernel).__name__}"
            )
        if not isinstance(mean, MeanFunction):
            raise InvalidTypeError(
                f"mean must be an elbo_check.gp.MeanFunction (wrap a function with "
                f"MeanFunction.from_function); got {type(mean).__name__}"
            )
        x = as_inputs("inputs", inputs, kernel.input_dim)
        if x.shape[0] == 0:
            raise InvalidInputError("inputs must hold at least one row; got shape (0, d)")
        noise = as_real_array("noise_variance", noise_variance, ndim=0)
        if not noise > 0:
            raise InvalidInputError(f"noise_variance must be positive; got {float(noise):.3g}")
        jit = as_real_array("jitter", jitter, ndim=0)
        if not jit >= 0:
            raise InvalidInputError(f"jitter must be non-negative; got {float(jit):.3g}")
        self.kernel = kernel
        self.mean = mean
        self.inputs = freeze(x)
        self.noise_variance = float(noise)
        self.jitter = float(jit)

    @property
    def num_data(self) -> int:
        """N, the number of training inputs."""
        return int(self.inputs.shape[0])

    def prior_mean(self) -> FloatArray:
        """:math:`m(X)`, shape (N,)."""
        return self.mean(self.inputs)

    def prior_cov(self) -> FloatArray:
        """:math:`K_{XX} + \\text{jitter}\\, I`, shape (N, N)."""
        k = self.kernel(self.inputs)
        k[np.diag_indices_from(k)] += self.jitter
        return k

    def check_y(self, y: ArrayLike, name: str = "y") -> FloatArray:
        """``y`` as a finite float64 vector of shape (N,)."""
        array = as_real_array(name, y)
        if array.shape != (self.num_data,):
            raise InvalidInputError(
                f"{name} must have shape (N,) = ({self.num_data},), one target per input; "
                f"got shape {describe_shape(array.shape)}"
            )
        return array


class _GPAttributes:
    """The attributes both GP models read from their :class:`GPSetup`."""

    _setup: GPSetup

    @property
    def kernel(self) -> Kernel:
        """The covariance function."""
        return self._setup.kernel

    @property
    def mean(self) -> MeanFunction:
        """The mean function."""
        return self._setup.mean

    @property
    def inputs(self) -> FloatArray:
        """The training inputs :math:`X`, shape ``(N, d)`` (read-only)."""
        return self._setup.inputs

    @property
    def num_data(self) -> int:
        """N, the number of training inputs."""
        return self._setup.num_data

    @property
    def noise_variance(self) -> float:
        r"""The noise variance :math:`\sigma^2`."""
        return self._setup.noise_variance

    @property
    def jitter(self) -> float:
        r"""The jitter :math:`\epsilon` added to the prior covariances' diagonals."""
        return self._setup.jitter


class GPRegression(_GPAttributes):
    r"""Exact GP regression: :math:`f \sim \mathcal{GP}(m, k)`, :math:`y = f(X) + \varepsilon`.

    The finite model this class computes exactly is

    .. math::
        f = f(X) \sim \mathcal N\big(m(X),\ K_{XX} + \epsilon I\big),\qquad
        y \mid f \sim \mathcal N(f, \sigma^2 I),

    where :math:`\epsilon` is ``jitter``: it is added to the prior covariance of the
    latent values (not to the noise), so every answer is exact for this jittered
    model, which is a linear-Gaussian latent model (:meth:`as_linear_gaussian_model`).

    Parameters
    ----------
    kernel : Kernel
        The covariance function :math:`k`.
    inputs : array_like, shape (N, d) or (N,)
        The training inputs :math:`X`.
    noise_variance : float
        :math:`\sigma^2 > 0`.
    mean : MeanFunction, optional
        The mean function :math:`m` (default :class:`ZeroMean`).
    jitter : float, optional
        :math:`\epsilon \ge 0` added to the diagonal of :math:`K_{XX}` (default
        ``1e-10``).

    Raises
    ------
    InvalidInputError
        If ``inputs`` is not ``(N, d)`` or ``(N,)`` with ``N >= 1`` (or does not match
        the kernel's input dimension), ``noise_variance`` is not positive, ``jitter`` is
        negative, or the covariance :math:`K_{XX} + (\epsilon + \sigma^2) I` is not
        positive definite (a kernel that is not PSD).
    InvalidTypeError
        If ``kernel`` is not a :class:`Kernel` or ``mean`` not a :class:`MeanFunction`,
        or an array argument is not real.

    References
    ----------
    .. [1] C. E. Rasmussen and C. K. I. Williams, *Gaussian Processes for Machine
       Learning*, MIT Press, 2006, §2.2 and Algorithm 2.1.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check.gp import RBF, GPRegression
    >>> gp = GPRegression(RBF(), [0.0, 1.0, 2.0], noise_variance=0.1)
    >>> y = np.array([0.0, 1.0, 0.5])
    >>> lml = gp.log_marginal_likelihood(y)
    >>> bool(np.isclose(lml, gp.as_linear_gaussian_model().log_evidence(y), rtol=1e-12))
    True
    """

    def __init__(
        self,
        kernel: Kernel,
        inputs: ArrayLike,
        noise_variance: float,
        *,
        mean: MeanFunction | None = None,
        jitter: float = DEFAULT_JITTER,
    ) -> None:
        self._setup = GPSetup(
            kernel, inputs, noise_variance, ZeroMean() if mean is None else mean, jitter
        )
        self._prior_mean = freeze(self._setup.prior_mean())
        self._prior_cov = freeze(self._setup.prior_cov())
        marginal = self._prior_cov.copy()
        marginal[np.diag_indices_from(marginal)] += self._setup.noise_variance
        self._factor = freeze(cholesky("K_XX + (jitter + noise_variance) I", marginal))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Copies and pickles are rebuilt through the constructor (validated, frozen)."""
        return (
            _rebuild_regression,
            (self.kernel, self.inputs.copy(), self.noise_variance, self.mean, self.jitter),
        )

    @property
    def prior(self) -> Gaussian:
        r"""The prior of the latent values, :math:`\mathcal N(m(X), K_{XX} + \epsilon I)`."""
        return Gaussian.from_covariance(mean=self._prior_mean, cov=self._prior_cov)

    def __repr__(self) -> str:
        return (
            f"GPRegression({self.kernel!r}, N={self.num_data}, "
            f"noise_variance={self.noise_variance!r}, mean={self.mean!r}, jitter={self.jitter!r})"
        )

    # ------------------------------------------------------------------ closed forms
    def _whitened_residual(self, y: ArrayLike) -> FloatArray:
        residual = self._setup.check_y(y) - self._prior_mean
        return solve_tril(self._factor, residual)

    def log_marginal_likelihood(self, y: ArrayLike) -> float:
        r"""The exact log marginal likelihood :math:`\log p(y)`.

        Parameters
        ----------
        y : array_like, shape (N,)
            The targets, one per training input.

        Returns
        -------
        float
            :math:`\log \mathcal N(y;\ m(X),\ K_{XX} + (\epsilon + \sigma^2) I)`.

        Raises
        ------
        InvalidInputError
            If ``y`` is not of shape ``(N,)`` or holds NaN or inf.
        InvalidTypeError
            If ``y`` is not a real array.

        Notes
        -----
        With :math:`L L^\top = K_{XX} + (\epsilon + \sigma^2) I` and
        :math:`\alpha = L^{-1}(y - m(X))`,

        .. math::
            \log p(y) = -\tfrac12 \alpha^\top\alpha - \sum_i \log L_{ii}
                        - \tfrac N2 \log 2\pi.

        References
        ----------
        .. [1] C. E. Rasmussen and C. K. I. Williams, *Gaussian Processes for Machine
           Learning*, MIT Press, 2006, eq. (2.30) and Algorithm 2.1.

        Examples
        --------
        >>> from elbo_check.gp import Matern12, GPRegression
        >>> gp = GPRegression(Matern12(), [0.0], noise_variance=1.0, jitter=0.0)
        >>> round(gp.log_marginal_likelihood([0.0]), 6)  # log N(0; 0, 2)
        -1.265512
        """
        alpha = self._whitened_residual(y)
        n = self._setup.num_data
        return float(
            -0.5 * alpha @ alpha - np.sum(np.log(np.diagonal(self._factor))) - 0.5 * n * LOG_2PI
        )

    def predict(
        self, y: ArrayLike, new_inputs: ArrayLike, *, full_cov: bool = False
    ) -> tuple[FloatArray, FloatArray]:
        r"""The posterior predictive distribution of the latent :math:`f(X_*)` given ``y``.

        Parameters
        ----------
        y : array_like, shape (N,)
            The targets, one per training input.
        new_inputs : array_like, shape (P, d) or (P,)
            The inputs :math:`X_*` at which to predict.
        full_cov : bool, optional
            Return the ``(P, P)`` covariance instead of the ``(P,)`` variances.

        Returns
        -------
        mean : numpy.ndarray, shape (P,)
            :math:`\mathbb E[f_* \mid y]`.
        cov_or_var : numpy.ndarray, shape (P, P) or (P,)
            :math:`\operatorname{Cov}[f_* \mid y]` or its diagonal.

        Raises
        ------
        InvalidInputError
            If ``y`` is not of shape ``(N,)``, ``new_inputs`` has the wrong number of
            input dimensions, or either holds NaN or inf.
        InvalidTypeError
            If ``y`` or ``new_inputs`` is not a real array.

        Notes
        -----
        The jittered GP has :math:`\operatorname{Cov}[f(x), f(x')] = k(x, x') +
        \epsilon\,[x, x' \text{ are the same variable}]`: the cross-covariance
        :math:`K_{*X}` carries no jitter and the prior covariance of :math:`f_*` is
        :math:`K_{**} + \epsilon I`. With :math:`LL^\top = K_{XX} + (\epsilon+\sigma^2)I`
        and :math:`A = L^{-1} K_{X*}`,

        .. math::
            \mathbb E[f_*\mid y] = m(X_*) + A^\top L^{-1}(y - m(X)),\qquad
            \operatorname{Cov}[f_*\mid y] = K_{**} + \epsilon I - A^\top A.

        References
        ----------
        .. [1] C. E. Rasmussen and C. K. I. Williams, *Gaussian Processes for Machine
           Learning*, MIT Press, 2006, eqs. (2.23)–(2.24).

        Examples
        --------
        >>> from elbo_check.gp import RBF, GPRegression
        >>> gp = GPRegression(RBF(), [0.0], noise_variance=1.0, jitter=0.0)
        >>> mean, var = gp.predict([2.0], [0.0])
        >>> mean, var  # half-way between prior and data: equal variances
        (array([1.]), array([0.5]))
        """
        alpha = self._whitened_residual(y)
        x_new = as_inputs("new_inputs", new_inputs, self.inputs.shape[1])
        a = solve_tril(self._factor, self.kernel(self.inputs, x_new))
        mean = self.mean(x_new) + a.T @ alpha
        if full_cov:
            cov = self.kernel(x_new) - a.T @ a
            cov[np.diag_indices_from(cov)] += self.jitter
            return mean, 0.5 * (cov + cov.T)
        var = self.kernel.diag(x_new) + self.jitter - np.einsum("ij,ij->j", a, a)
        return mean, var

    def as_linear_gaussian_model(self) -> LinearGaussianModel:
        r"""The same model as an :class:`~elbo_check.LinearGaussianModel` over z = f.

        Returns
        -------
        LinearGaussianModel
            :math:`z = f \sim \mathcal N(m(X), K_{XX} + \epsilon I)`,
            :math:`y \mid z \sim \mathcal N(I z + 0, \sigma^2 I)`: its
            ``log_evidence(y)`` is :meth:`log_marginal_likelihood` and its
            ``posterior(y)`` is :meth:`predict` at the training inputs.

        Raises
        ------
        InvalidInputError
            If :math:`K_{XX} + \epsilon I` is numerically singular (raise ``jitter``).

        Examples
        --------
        >>> from elbo_check.gp import Matern32, GPRegression
        >>> gp = GPRegression(Matern32(), [0.0, 1.0], noise_variance=0.5)
        >>> gp.as_linear_gaussian_model().latent_dim
        2
        """
        n = self._setup.num_data
        return LinearGaussianModel(
            weights=np.eye(n),
            bias=np.zeros(n),
            prior=self.prior,
            noise_cov=self.noise_variance,
        )


def _rebuild_regression(
    kernel: Kernel, inputs: FloatArray, noise: float, mean: MeanFunction, jitter: float
) -> GPRegression:
    return GPRegression(kernel, inputs, noise, mean=mean, jitter=jitter)
