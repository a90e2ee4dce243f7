"""Named constructors for the classic linear-Gaussian latent models.

Each returns the one :class:`~elbo_check.LinearGaussianModel` class; they differ only
in how the parameters are spelled and which constraints they impose.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ._errors import InvalidInputError
from ._gaussian import Gaussian
from ._linalg import cholesky
from ._model import LinearGaussianModel
from ._validation import as_real_array, check_positive, check_shape, describe_shape

__all__ = ["bayesian_linear_regression", "factor_analysis", "ppca"]


def _latent_dim(name: str, matrix: ArrayLike) -> tuple[Any, int]:
    array = as_real_array(name, matrix, ndim=2)
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InvalidInputError(
            f"{name} must have at least one row and one column; "
            f"got shape {describe_shape(array.shape)}"
        )
    return array, int(array.shape[1])


def _vector(name: str, value: ArrayLike, length: int, symbol: str) -> Any:
    array = as_real_array(name, value, ndim=1)
    check_shape(name, array, (length,), symbol)
    return array


def _variance(name: str, value: Any) -> float:
    array = as_real_array(name, value, ndim=0)
    check_positive(name, array, "a positive variance")
    return float(array)


def ppca(*, weights: ArrayLike, mean: ArrayLike, noise_variance: float) -> LinearGaussianModel:
    r"""Probabilistic principal component analysis.

    .. math::
        z \sim \mathcal N(0, I_K),\qquad x\mid z \sim \mathcal N(Wz + \mu,\ \sigma^2 I_D),

    so that :math:`p(x) = \mathcal N(\mu,\ WW^\top + \sigma^2 I)` [1]_ and the posterior
    is :math:`p(z\mid x) = \mathcal N(M^{-1}W^\top(x - \mu),\ \sigma^2M^{-1})` with
    :math:`M = W^\top W + \sigma^2 I_K` ([2]_, eqs. (12.35)–(12.36) and
    (12.41)–(12.42)).

    Parameters
    ----------
    weights : array_like, shape (D, K)
        :math:`W`, the loadings of the ``K`` principal directions.
    mean : array_like, shape (D,)
        :math:`\mu`, the data mean (the model's bias).
    noise_variance : float
        :math:`\sigma^2 > 0`, the variance of the isotropic noise.

    Returns
    -------
    LinearGaussianModel
        With ``weights=W``, ``bias=mu``, the prior ``Gaussian.standard(K)`` and
        isotropic noise ``noise_cov=sigma^2``.

    Raises
    ------
    InvalidInputError
        If ``weights`` is not 2-d with at least one row and one column, ``mean`` is not
        of shape ``(D,)``, ``noise_variance`` is not a positive scalar, any argument
        holds NaN or inf, or the model's whitened loadings overflow float64 (see
        :class:`LinearGaussianModel`).
    InvalidTypeError
        If an argument is not a real number or array.

    References
    ----------
    .. [1] M. E. Tipping and C. M. Bishop, "Probabilistic principal component
       analysis", J. R. Statist. Soc. B 61(3), 611–622, 1999.
    .. [2] C. M. Bishop, *Pattern Recognition and Machine Learning*, 2006, §12.2.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.stats import multivariate_normal
    >>> from elbo_check import ppca
    >>> W, mu = np.array([[1.0], [0.5]]), np.array([0.0, 1.0])
    >>> model = ppca(weights=W, mean=mu, noise_variance=0.1)
    >>> model
    LinearGaussianModel(data_dim=2, latent_dim=1, noise_kind='isotropic')
    >>> x = np.array([0.3, 1.2])
    >>> round(model.log_evidence(x), 6)
    -0.894044
    >>> round(float(multivariate_normal(mu, W @ W.T + 0.1 * np.eye(2)).logpdf(x)), 6)
    -0.894044
    >>> M = W.T @ W + 0.1 * np.eye(1)
    >>> np.round(model.posterior(x).mean, 6), np.round(np.linalg.solve(M, W.T @ (x - mu)), 6)
    (array([0.296296]), array([0.296296]))
    """
    w, k = _latent_dim("weights", weights)
    bias = _vector("mean", mean, w.shape[0], "(D,)")
    variance = _variance("noise_variance", noise_variance)
    return LinearGaussianModel(weights=w, bias=bias, prior=Gaussian.standard(k), noise_cov=variance)


def factor_analysis(
    *, loadings: ArrayLike, mean: ArrayLike, noise_variances: ArrayLike
) -> LinearGaussianModel:
    r"""Factor analysis: a standard-normal prior and diagonal noise.

    .. math::
        z \sim \mathcal N(0, I_K),\qquad x\mid z \sim \mathcal N(Wz + \mu,\ \Psi),
        \quad \Psi = \operatorname{diag}(\psi_1, \dots, \psi_D),

    so that :math:`p(x) = \mathcal N(\mu,\ WW^\top + \Psi)` [1]_.

    Parameters
    ----------
    loadings : array_like, shape (D, K)
        The factor loadings :math:`W`.
    mean : array_like, shape (D,)
        :math:`\mu`, the data mean (the model's bias).
    noise_variances : array_like, shape (D,)
        The uniquenesses :math:`\psi_d > 0`, one noise variance per observed
        coordinate.

    Returns
    -------
    LinearGaussianModel
        With ``weights=W``, ``bias=mu``, the prior ``Gaussian.standard(K)`` and
        diagonal noise ``noise_cov=noise_variances``.

    Raises
    ------
    InvalidInputError
        If ``loadings`` is not 2-d with at least one row and one column, ``mean`` or
        ``noise_variances`` is not of shape ``(D,)``, a noise variance is not
        positive, any argument holds NaN or inf, or the model's whitened loadings
        overflow float64 (see :class:`LinearGaussianModel`).
    InvalidTypeError
        If an argument is not a real array.

    References
    ----------
    .. [1] C. M. Bishop, *Pattern Recognition and Machine Learning*, 2006, §12.2.4.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import factor_analysis
    >>> W, psi = np.array([[1.0], [0.5]]), np.array([0.1, 0.3])
    >>> model = factor_analysis(loadings=W, mean=[0.0, 1.0], noise_variances=psi)
    >>> model
    LinearGaussianModel(data_dim=2, latent_dim=1, noise_kind='diagonal')
    >>> model.marginal().cov
    array([[1.1 , 0.5 ],
           [0.5 , 0.55]])
    >>> bool(np.allclose(model.marginal().cov, W @ W.T + np.diag(psi)))
    True
    """
    w, k = _latent_dim("loadings", loadings)
    bias = _vector("mean", mean, w.shape[0], "(D,)")
    variances = _vector("noise_variances", noise_variances, w.shape[0], "(D,)")
    check_positive("noise_variances", variances, "positive (variances)")
    return LinearGaussianModel(
        weights=w, bias=bias, prior=Gaussian.standard(k), noise_cov=variances
    )


def bayesian_linear_regression(
    *,
    design: ArrayLike,
    prior_mean: ArrayLike,
    prior_cov: ArrayLike,
    noise_variance: float,
) -> LinearGaussianModel:
    r"""Bayesian linear regression: the latent variable is the weight vector.

    .. math::
        w \sim \mathcal N(m_0, S_0),\qquad t\mid w \sim \mathcal N(\Phi w,\ \beta^{-1} I_N),

    with the ``N`` targets :math:`t` as the observation (``D = N``) and the ``M``
    weights as the latent variable (``K = M``). :meth:`~LinearGaussianModel.log_evidence`
    is then the marginal likelihood used for evidence approximation and
    :meth:`~LinearGaussianModel.posterior` is the weight posterior [1]_.

    The weight posterior is :math:`\mathcal N(m_N, S_N)` with
    :math:`S_N^{-1} = S_0^{-1} + \beta\Phi^\top\Phi` and
    :math:`m_N = S_N(S_0^{-1}m_0 + \beta\Phi^\top t)` ([1]_, eqs. (3.49)–(3.51)).

    Parameters
    ----------
    design : array_like, shape (N, M)
        The design matrix :math:`\Phi` (row ``n`` holds the ``M`` basis functions at
        input ``n``).
    prior_mean : array_like, shape (M,)
        :math:`m_0`, the prior mean of the weights.
    prior_cov : array_like, shape (M, M)
        :math:`S_0`, the prior covariance of the weights, symmetric positive definite
        (use ``np.eye(M) / alpha`` for the isotropic prior of §3.3).
    noise_variance : float
        :math:`\beta^{-1} > 0`, the variance of the target noise.

    Returns
    -------
    LinearGaussianModel
        With ``weights=design``, ``bias=0``, the prior :math:`\mathcal N(m_0, S_0)`
        and isotropic noise; call its methods with the ``N`` targets as ``x``.

    Raises
    ------
    InvalidInputError
        If ``design`` is not 2-d with at least one row and one column,
        ``prior_mean`` is not of shape ``(M,)``, ``prior_cov`` is not an ``(M, M)``
        symmetric positive-definite matrix, ``noise_variance`` is not a positive
        scalar, any argument holds NaN or inf, or the model's whitened loadings
        overflow float64 (see :class:`LinearGaussianModel`).
    InvalidTypeError
        If an argument is not a real number or array.

    References
    ----------
    .. [1] C. M. Bishop, *Pattern Recognition and Machine Learning*, 2006, §3.3 and
       §3.5 (the evidence, eq. (3.86)), and §2.3.3.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import bayesian_linear_regression
    >>> design = np.column_stack([np.ones(4), np.linspace(0.0, 1.0, 4)])
    >>> model = bayesian_linear_regression(design=design, prior_mean=[0.0, 0.0],
    ...                                    prior_cov=np.eye(2), noise_variance=0.25)
    >>> targets = np.array([0.1, 0.4, 0.6, 1.1])
    >>> posterior = model.posterior(targets)
    >>> np.round(posterior.mean, 6)
    array([0.19206 , 0.691871])
    >>> precision = np.eye(2) + 4.0 * design.T @ design  # S_N^{-1}, beta = 4
    >>> np.round(np.linalg.solve(precision, 4.0 * design.T @ targets), 6)
    array([0.19206 , 0.691871])
    >>> round(model.log_evidence(targets), 6)  # ln p(t), eq. (3.86) with alpha = 1
    -3.314868
    """
    phi, m = _latent_dim("design", design)
    weights_mean = _vector("prior_mean", prior_mean, m, "(M,) with M the design's columns")
    weights_cov = as_real_array("prior_cov", prior_cov, ndim=2)
    check_shape("prior_cov", weights_cov, (m, m), "(M, M) with M the design's columns")
    prior = Gaussian._trusted(weights_mean, cholesky("prior_cov", weights_cov))
    return LinearGaussianModel(
        weights=phi,
        bias=np.zeros(phi.shape[0]),
        prior=prior,
        noise_cov=_variance("noise_variance", noise_variance),
    )
