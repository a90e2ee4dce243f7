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

    so that :math:`p(x) = \mathcal N(\mu,\ WW^\top + \sigma^2 I)` [1]_.

    Parameters
    ----------
    weights : array_like, shape (D, K)
        :math:`W`.
    mean : array_like, shape (D,)
        :math:`\mu`, the data mean (the model's bias).
    noise_variance : float
        :math:`\sigma^2 > 0`.

    References
    ----------
    .. [1] M. E. Tipping and C. M. Bishop, "Probabilistic principal component
       analysis", J. R. Statist. Soc. B 61(3), 611–622, 1999.
    .. [2] C. M. Bishop, *Pattern Recognition and Machine Learning*, 2006, §12.2.

    Examples
    --------
    >>> from elbo_check import ppca
    >>> ppca(weights=[[1.0], [0.5]], mean=[0.0, 1.0], noise_variance=0.1)
    LinearGaussianModel(data_dim=2, latent_dim=1, noise_kind='isotropic')
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
        :math:`\mu`.
    noise_variances : array_like, shape (D,)
        The uniquenesses :math:`\psi_d > 0`.

    References
    ----------
    .. [1] C. M. Bishop, *Pattern Recognition and Machine Learning*, 2006, §12.2.4.

    Examples
    --------
    >>> from elbo_check import factor_analysis
    >>> factor_analysis(loadings=[[1.0], [0.5]], mean=[0.0, 1.0], noise_variances=[0.1, 0.3])
    LinearGaussianModel(data_dim=2, latent_dim=1, noise_kind='diagonal')
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

    Parameters
    ----------
    design : array_like, shape (N, M)
        The design matrix :math:`\Phi` (rows are basis functions at the inputs).
    prior_mean : array_like, shape (M,)
        :math:`m_0`.
    prior_cov : array_like, shape (M, M)
        :math:`S_0` (use ``np.eye(M) / alpha`` for the isotropic prior of §3.3).
    noise_variance : float
        :math:`\beta^{-1} > 0`.

    References
    ----------
    .. [1] C. M. Bishop, *Pattern Recognition and Machine Learning*, 2006, §3.3 and
       §3.5 (the evidence, eq. 3.86), and §2.3.3.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import bayesian_linear_regression
    >>> design = np.column_stack([np.ones(4), np.linspace(0.0, 1.0, 4)])
    >>> model = bayesian_linear_regression(design=design, prior_mean=[0.0, 0.0],
    ...                                    prior_cov=np.eye(2), noise_variance=0.25)
    >>> model.posterior(np.array([0.1, 0.4, 0.6, 1.1])).mean.shape
    (2,)
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
