"""Amortised variational inference with a linear encoder (the linear VAE).

The encoder maps each observation to a Gaussian with a shared covariance,
:math:`q(z\\mid x) = \\mathcal N(Ax + c, S)`. In a linear-Gaussian model the exact
posterior has exactly this form, so the optimal encoder attains
:math:`\\sum_n \\log p(x_n)` — the setting studied by Lucas et al. (2019).

:func:`dataset_elbo`, :func:`dataset_elbo_grad` and :func:`optimal_encoder` are the
methods of :class:`~elbo_check.LinearGaussianModel` of those names (bound in its class
body; they live here to keep :mod:`._model` readable).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._errors import InvalidInputError, InvalidTypeError
from ._gaussian import Gaussian
from ._linalg import check_scale_tril, cholesky
from ._validation import as_event_array, as_real_array, check_shape, describe_shape, freeze

if TYPE_CHECKING:
    from ._model import LinearGaussianModel

__all__ = [
    "EncoderGradients",
    "LinearEncoder",
    "check_encoder",
    "dataset_elbo",
    "dataset_elbo_grad",
    "encoder_gradients",
    "optimal_encoder",
]

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class EncoderGradients:
    """Gradients of the dataset ELBO with respect to the encoder's parameters.

    Returned by :meth:`LinearGaussianModel.dataset_elbo_grad`, which has the formulas;
    the parameters are stored as read-only attributes of the same names.

    Parameters
    ----------
    matrix : ndarray, shape (K, D)
        With respect to :math:`A`.
    offset : ndarray, shape (K,)
        With respect to :math:`c`.
    scale_tril : ndarray, shape (K, K)
        With respect to the Cholesky factor of the shared covariance (lower triangular).

    Raises
    ------
    TypeError
        If a field is missing or an unknown one is given (the dataclass constructor
        checks nothing else).

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import LinearEncoder, ppca
    >>> model = ppca(weights=[[1.0], [0.5]], mean=[0.0, 0.0], noise_variance=0.1)
    >>> encoder = LinearEncoder(matrix=[[1.0, 0.0]], offset=[0.5], scale_tril=[[0.1]])
    >>> x = np.array([[0.3, 0.2], [0.1, -0.1], [1.0, 0.4]])
    >>> grads = model.dataset_elbo_grad(encoder, x)
    >>> np.round(grads.matrix, 6), np.round(grads.offset, 6), np.round(grads.scale_tril, 6)
    (array([[-11.05,  -3.9 ]]), array([-22.65]), array([[25.95]]))
    """

    matrix: FloatArray
    offset: FloatArray
    scale_tril: FloatArray


def _rebuild_encoder(matrix: Any, offset: Any, scale_tril: Any) -> LinearEncoder:
    return LinearEncoder(matrix=matrix, offset=offset, scale_tril=scale_tril)


class LinearEncoder:
    r"""A linear Gaussian encoder :math:`q(z\mid x) = \mathcal N(Ax + c,\ L L^\top)`.

    An amortised variational family: one set of parameters maps every observation
    ``x`` (``D`` dimensions) to its own Gaussian over the ``K`` latent dimensions,
    with a mean affine in ``x`` and a covariance shared by all observations. Calling
    the encoder on a batch of rows gives a batched :class:`Gaussian`, one member per
    row, ready for :meth:`LinearGaussianModel.elbo`.

    Parameters
    ----------
    matrix : array_like, shape (K, D)
        :math:`A`, which maps an observation to the offset of its mean.
    offset : array_like, shape (K,)
        :math:`c`, the mean for :math:`x = 0`.
    scale_tril : array_like, shape (K, K)
        Lower Cholesky factor :math:`L` of the shared covariance, with a strictly
        positive diagonal and exact zeros above it (one factor, not a batch).

    Raises
    ------
    InvalidInputError
        If ``scale_tril`` is not a square 2-d array, has a non-zero entry above the
        diagonal or a diagonal entry that is not positive; if ``matrix`` is not of
        shape ``(K, D)`` with ``D >= 1``; if ``offset`` is not of shape ``(K,)``; or
        if any of them holds NaN or inf.
    InvalidTypeError
        If an argument is not a real array.

    See Also
    --------
    LinearGaussianModel.optimal_encoder : The encoder that is exact for a model.
    LinearGaussianModel.dataset_elbo : The ELBO of an encoder on a data set.

    Notes
    -----
    An encoder is immutable: its arrays are read-only, and copies and pickles keep
    them so.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import LinearEncoder
    >>> encoder = LinearEncoder(matrix=[[1.0, 0.0]], offset=[0.5], scale_tril=[[0.1]])
    >>> encoder(np.array([[2.0, 3.0], [0.0, 1.0]])).mean
    array([[2.5],
           [0.5]])
    >>> LinearEncoder(matrix=[[1.0, 0.0]], offset=[0.5, 0.0], scale_tril=[[0.1]])
    Traceback (most recent call last):
        ...
    elbo_check._errors.InvalidInputError: offset must have shape (K,) = (1,); got shape (2,)
    """

    def __init__(self, *, matrix: ArrayLike, offset: ArrayLike, scale_tril: ArrayLike) -> None:
        factor = as_real_array("scale_tril", scale_tril, ndim=2)
        check_scale_tril("scale_tril", factor)
        self._init_checked(matrix, offset, factor)

    def _init_checked(self, matrix: ArrayLike, offset: ArrayLike, factor: FloatArray) -> None:
        a = as_real_array("matrix", matrix, ndim=2)
        k = factor.shape[0]
        if a.shape[0] != k or a.shape[1] == 0:
            raise InvalidInputError(
                f"matrix must have shape (K, D) with K = {k} to match the covariance and "
                f"D >= 1; got shape {describe_shape(a.shape)}"
            )
        c = as_real_array("offset", offset, ndim=1)
        check_shape("offset", c, (k,), "(K,)")
        self._matrix = freeze(a)
        self._offset = freeze(c)
        self._scale_tril = freeze(factor)

    @classmethod
    def from_covariance(
        cls, *, matrix: ArrayLike, offset: ArrayLike, cov: ArrayLike
    ) -> LinearEncoder:
        r"""An encoder whose shared covariance is given as a matrix.

        Parameters
        ----------
        matrix : array_like, shape (K, D)
            :math:`A`.
        offset : array_like, shape (K,)
            :math:`c`.
        cov : array_like, shape (K, K)
            The shared covariance :math:`S`, symmetric positive definite (one matrix,
            not a batch); it is factored once, :math:`S = LL^\top`.

        Returns
        -------
        LinearEncoder
            :math:`q(z\mid x) = \mathcal N(Ax + c, S)`.

        Raises
        ------
        InvalidInputError
            If ``cov`` is not a square 2-d array, not symmetric, not positive definite
            or numerically singular; if ``matrix`` is not of shape ``(K, D)`` with
            ``D >= 1``; if ``offset`` is not of shape ``(K,)``; or if any argument
            holds NaN or inf.
        InvalidTypeError
            If an argument is not a real array.

        Examples
        --------
        >>> from elbo_check import LinearEncoder
        >>> encoder = LinearEncoder.from_covariance(matrix=[[1.0, 0.0]], offset=[0.5],
        ...                                         cov=[[0.04]])
        >>> encoder.scale_tril
        array([[0.2]])
        """
        self = cls.__new__(cls)
        self._init_checked(matrix, offset, cholesky("cov", as_real_array("cov", cov, ndim=2)))
        return self

    @property
    def matrix(self) -> FloatArray:
        """:math:`A`, shape ``(K, D)``."""
        return self._matrix

    @property
    def offset(self) -> FloatArray:
        """:math:`c`, shape ``(K,)``."""
        return self._offset

    @property
    def scale_tril(self) -> FloatArray:
        """Lower Cholesky factor of the shared covariance, shape ``(K, K)``."""
        return self._scale_tril

    @property
    def cov(self) -> FloatArray:
        """The shared covariance, shape ``(K, K)`` (read-only)."""
        product = self._scale_tril @ self._scale_tril.T
        return freeze(0.5 * product + 0.5 * product.T)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Copies and pickles are rebuilt through the constructor (validated and frozen)."""
        return (_rebuild_encoder, (self._matrix, self._offset, self._scale_tril))

    @property
    def latent_dim(self) -> int:
        """``K``."""
        return int(self._matrix.shape[0])

    @property
    def data_dim(self) -> int:
        """``D``."""
        return int(self._matrix.shape[1])

    def __repr__(self) -> str:
        return f"LinearEncoder(data_dim={self.data_dim}, latent_dim={self.latent_dim})"

    def __call__(self, x: ArrayLike) -> Gaussian:
        r""":math:`q(z\mid x)` for one row or a batch of rows (a batched Gaussian).

        Parameters
        ----------
        x : array_like, shape (..., D)
            One observation or a batch of them.

        Returns
        -------
        Gaussian
            Means :math:`Ax + c` of shape ``x.shape[:-1] + (K,)``, sharing the
            encoder's covariance.

        Raises
        ------
        InvalidInputError
            If the last axis of ``x`` is not ``D``, or ``x`` holds NaN or inf.
        InvalidTypeError
            If ``x`` is not a real array.
        """
        data = as_event_array("x", x, self.data_dim, "D")
        return Gaussian._trusted(data @ self._matrix.T + self._offset, self._scale_tril)


# ---------------------------------------------------------------------- the model's side
def check_encoder(encoder: Any, data_dim: int, latent_dim: int) -> LinearEncoder:
    """``encoder`` if it is a :class:`LinearEncoder` from ``data_dim`` to ``latent_dim``."""
    if not isinstance(encoder, LinearEncoder):
        raise InvalidTypeError(f"encoder must be a LinearEncoder; got {type(encoder).__name__}")
    if (encoder.data_dim, encoder.latent_dim) != (data_dim, latent_dim):
        raise InvalidInputError(
            f"encoder must map D = {data_dim} to K = {latent_dim} dimensions; "
            f"got D = {encoder.data_dim}, K = {encoder.latent_dim}"
        )
    return encoder


def encoder_gradients(
    mean_grads: FloatArray, factor_grads: FloatArray, data: FloatArray
) -> EncoderGradients:
    r"""The chain rule through :math:`m_n = Ax_n + c`, from per-row gradients.

    :math:`\nabla_A = \sum_n g_n x_n^\top`, :math:`\nabla_c = \sum_n g_n`, and
    :math:`\nabla_L` the sum of the per-row factor gradients; ``data`` is ``(N, D)``.
    """
    return EncoderGradients(
        matrix=mean_grads.T @ data,
        offset=mean_grads.sum(axis=0),
        scale_tril=factor_grads.sum(axis=0),
    )


def dataset_elbo(self: LinearGaussianModel, encoder: LinearEncoder, x: ArrayLike) -> float:
    r"""The dataset ELBO :math:`\sum_n \mathrm{ELBO}(q(\cdot\mid x_n); x_n)` of an encoder.

    The objective of amortised variational inference (a linear VAE's encoder step):
    the ELBO of every row of ``x`` under the Gaussian the encoder gives it, summed.

    Parameters
    ----------
    encoder : LinearEncoder
        The amortised variational family :math:`q(z\mid x) = \mathcal N(Ax + c,
        LL^\top)`, mapping ``D`` to ``K`` dimensions.
    x : array_like, shape (..., D)
        The data set: one observation or any batch of them (all rows are summed).

    Returns
    -------
    float
        The summed ELBO in nats; at most ``log_evidence(x).sum()``, which
        :meth:`optimal_encoder` attains.

    Raises
    ------
    InvalidTypeError
        If ``encoder`` is not a :class:`LinearEncoder`, or ``x`` is not a real array.
    InvalidInputError
        If ``encoder`` does not map ``D`` to ``K`` dimensions, the last axis of ``x``
        is not ``D``, or ``x`` holds NaN or inf.

    Notes
    -----
    .. math::
        \mathcal L(A, c, L) = \sum_{n=1}^N \mathrm{ELBO}\bigl(\mathcal N(Ax_n + c,
            LL^\top); x_n\bigr) = \sum_{n=1}^N \log p(x_n)
            - \sum_{n=1}^N \mathrm{KL}\bigl(q(z\mid x_n)\,\|\,p(z\mid x_n)\bigr),

    each term as in :meth:`elbo` [1]_; in a linear-Gaussian model the gap closes for
    the optimal linear encoder [2]_.

    References
    ----------
    .. [1] D. P. Kingma and M. Welling, "Auto-encoding variational Bayes", ICLR 2014,
       §2.2–2.3 (the per-datapoint bound, eq. (3), summed over the data set).
    .. [2] J. Lucas, G. Tucker, R. Grosse and M. Norouzi, "Don't blame the ELBO! A
       linear VAE perspective on posterior collapse", NeurIPS 2019.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian, LinearEncoder, LinearGaussianModel
    >>> prior = Gaussian.from_covariance(mean=[0.5, -1.0], cov=[[1.0, 0.3], [0.3, 2.0]])
    >>> model = LinearGaussianModel(weights=[[1.0, 0.0], [0.5, 1.0], [0.0, 2.0]],
    ...                             bias=[0.1, 0.2, 0.3], prior=prior, noise_cov=[0.5, 1.0, 2.0])
    >>> x = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])
    >>> encoder = LinearEncoder(matrix=np.zeros((2, 3)), offset=[0.0, 0.0],
    ...                         scale_tril=np.eye(2))
    >>> round(model.dataset_elbo(encoder, x), 6)
    -14.228823
    >>> round(model.dataset_elbo(model.optimal_encoder(), x), 6)
    -10.608556
    >>> round(float(model.log_evidence(x).sum()), 6)
    -10.608556
    """
    encoder = check_encoder(encoder, self.data_dim, self.latent_dim)
    data = self._check_x(x)
    return float(np.sum(self.elbo(encoder(data), data)))


def dataset_elbo_grad(
    self: LinearGaussianModel, encoder: LinearEncoder, x: ArrayLike
) -> EncoderGradients:
    r"""Gradient of :meth:`dataset_elbo` with respect to the encoder's ``A``, ``c``, ``L``.

    Parameters
    ----------
    encoder : LinearEncoder
        The amortised variational family :math:`q(z\mid x) = \mathcal N(Ax + c,
        LL^\top)`, mapping ``D`` to ``K`` dimensions.
    x : array_like, shape (..., D)
        The data set: one observation or any batch of them (all rows are summed).

    Returns
    -------
    EncoderGradients
        ``matrix`` ``(K, D)``, ``offset`` ``(K,)`` and ``scale_tril`` ``(K, K)``
        (lower triangular): the gradients of the summed ELBO.

    Raises
    ------
    InvalidTypeError
        If ``encoder`` is not a :class:`LinearEncoder`, or ``x`` is not a real array.
    InvalidInputError
        If ``encoder`` does not map ``D`` to ``K`` dimensions, the last axis of ``x``
        is not ``D``, or ``x`` holds NaN or inf.

    Notes
    -----
    By the chain rule through :math:`m_n = Ax_n + c`, with :math:`g_n` the gradient of
    row ``n``'s ELBO with respect to its mean (:meth:`elbo_grad_variational` [1]_) and
    :math:`N` rows,

    .. math::
        \nabla_A = \sum_{n=1}^N g_n x_n^\top,\qquad \nabla_c = \sum_{n=1}^N g_n,
        \qquad \nabla_L = N\bigl(\operatorname{tril}(-\Lambda L)
            + \operatorname{diag}(1/L_{11}, \dots, 1/L_{KK})\bigr),

    :math:`g_n = W^\top\Psi^{-1}(x_n - Wm_n - b) - \Sigma_0^{-1}(m_n - \mu_0)`. All
    three vanish at :meth:`optimal_encoder` [2]_.

    References
    ----------
    .. [1] M. Titsias and M. Lázaro-Gredilla, "Doubly stochastic variational Bayes for
       non-conjugate inference", ICML 2014, §2.
    .. [2] J. Lucas, G. Tucker, R. Grosse and M. Norouzi, "Don't blame the ELBO! A
       linear VAE perspective on posterior collapse", NeurIPS 2019.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian, LinearEncoder, LinearGaussianModel
    >>> prior = Gaussian.from_covariance(mean=[0.5, -1.0], cov=[[1.0, 0.3], [0.3, 2.0]])
    >>> model = LinearGaussianModel(weights=[[1.0, 0.0], [0.5, 1.0], [0.0, 2.0]],
    ...                             bias=[0.1, 0.2, 0.3], prior=prior, noise_cov=[0.5, 1.0, 2.0])
    >>> x = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]])
    >>> encoder = LinearEncoder(matrix=np.zeros((2, 3)), offset=[0.0, 0.0],
    ...                         scale_tril=np.eye(2))
    >>> grads = model.dataset_elbo_grad(encoder, x)
    >>> np.round(grads.offset, 6)
    array([ 3.261257, -0.204188])

    A central finite difference along the first entry of the offset:

    >>> def shifted(h):
    ...     return LinearEncoder(matrix=encoder.matrix, offset=encoder.offset + [h, 0.0],
    ...                          scale_tril=encoder.scale_tril)
    >>> h = 1e-6
    >>> fd = (model.dataset_elbo(shifted(h), x) - model.dataset_elbo(shifted(-h), x)) / (2 * h)
    >>> round(fd, 6)
    3.261257
    """
    encoder = check_encoder(encoder, self.data_dim, self.latent_dim)
    data = self._check_x(x).reshape(-1, self.data_dim)
    grads = self.elbo_grad_variational(encoder(data), data)
    return encoder_gradients(grads.mean, grads.scale_tril, data)


def optimal_encoder(self: LinearGaussianModel) -> LinearEncoder:
    r"""The linear encoder whose :math:`q(z\mid x)` is the exact posterior for every x.

    The posterior mean is affine in ``x`` and its covariance does not depend on
    ``x``, so a linear encoder is exact [1]_ [2]_: its :meth:`dataset_elbo` is
    ``log_evidence(x).sum()`` for every data set.

    Returns
    -------
    LinearEncoder
        :math:`A^\star`, :math:`c^\star` and the Cholesky factor of
        :math:`S^\star = \Lambda^{-1}`.

    Notes
    -----
    From the posterior :math:`p(z\mid x) = \mathcal N(\mu_0 + \Lambda^{-1}W^\top
    \Psi^{-1}(x - W\mu_0 - b),\ \Lambda^{-1})` of :meth:`posterior`,

    .. math::
        A^\star = \Lambda^{-1}W^\top\Psi^{-1},\qquad
        c^\star = \mu_0 - A^\star(W\mu_0 + b),\qquad
        S^\star = \Lambda^{-1},\qquad
        \Lambda = \Sigma_0^{-1} + W^\top\Psi^{-1}W.

    They are computed from the model's QR factorisation as
    :math:`A^\star = L_0R^{-1}(\Psi^{-\top/2}Q_1)^\top`, without forming or
    inverting :math:`\Lambda`.

    References
    ----------
    .. [1] J. Lucas, G. Tucker, R. Grosse and M. Norouzi, "Don't blame the ELBO! A
       linear VAE perspective on posterior collapse", NeurIPS 2019.
    .. [2] C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer, 2006,
       eqs. (2.116)–(2.117).

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import ppca
    >>> model = ppca(weights=[[1.0], [0.5]], mean=[0.0, 0.0], noise_variance=0.1)
    >>> encoder = model.optimal_encoder()
    >>> np.round(encoder.matrix, 6), np.round(encoder.offset, 6)
    (array([[0.740741, 0.37037 ]]), array([0.]))
    >>> x = np.array([0.3, 0.2])
    >>> np.round(encoder(x).mean, 6), np.round(model.posterior(x).mean, 6)
    (array([0.296296]), array([0.296296]))
    >>> bool(np.allclose(encoder.cov, model.posterior(x).cov, rtol=1e-14))
    True
    """
    marginal = self._marginal
    projected = marginal.noise.whiten_columns_transposed(marginal.basis)  # Psi^{-T/2} Q1
    matrix = marginal.posterior_map @ projected.T
    offset = marginal.prior.mean - matrix @ marginal.mean
    encoder = LinearEncoder.__new__(LinearEncoder)
    encoder._init_checked(matrix, offset, np.array(marginal.posterior_scale_tril))
    return encoder
