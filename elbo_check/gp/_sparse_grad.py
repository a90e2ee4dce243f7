"""Closed-form gradients of the uncollapsed SVGP ELBO in q(u)'s mean and Cholesky factor."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .._divergences import kl_divergence
from .._errors import InvalidInputError, InvalidTypeError
from .._gaussian import Gaussian
from .._linalg import solve_tril
from .._validation import as_real_array, describe_shape

if TYPE_CHECKING:
    from ._sparse import SparseGP

__all__ = ["SVGPGradients", "svgp_elbo_grad", "svgp_elbo_minibatch", "svgp_gradients"]

FloatArray = NDArray[np.float64]


class SVGPGradients(NamedTuple):
    r"""The gradient of the SVGP ELBO with respect to :math:`q(u) = \mathcal N(m, LL^\top)`.

    Parameters
    ----------
    mean : numpy.ndarray, shape (M,)
        :math:`\partial\,\mathrm{ELBO} / \partial m`.
    scale_tril : numpy.ndarray, shape (M, M)
        :math:`\partial\,\mathrm{ELBO} / \partial L`, lower triangular (the entries
        above the diagonal are not parameters and are zero).

    Raises
    ------
    TypeError
        If a field is missing (as for any :class:`~typing.NamedTuple`).

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check.gp import SVGPGradients
    >>> SVGPGradients(mean=np.zeros(1), scale_tril=np.ones((1, 1))).scale_tril
    array([[1.]])
    """

    mean: FloatArray
    scale_tril: FloatArray


def svgp_gradients(
    projection: FloatArray,
    prior_factor: FloatArray | None,
    offset: FloatArray,
    factor: FloatArray,
    residual: FloatArray,
    noise_variance: float,
) -> SVGPGradients:
    r"""The gradient of the SVGP ELBO at :math:`q(u) = \mathcal N(m, LL^\top)`.

    ``projection`` is :math:`P` (M, N) with :math:`\mathbb E_q[f] = m(X) + P^\top
    (m - \mu_u)`; ``prior_factor`` the Cholesky factor :math:`L_u` of the prior
    covariance of u (``None`` for the whitened prior :math:`\mathcal N(0, I)`);
    ``offset`` is :math:`m - \mu_u`; ``residual`` is :math:`y - \mathbb E_q[f]`. With
    the ELBO :math:`\sum_i \mathbb E_q \log\mathcal N(y_i; f_i, \sigma^2) -
    \mathrm{KL}(q \,\|\, \mathcal N(\mu_u, K))`,

    .. math::
        \nabla_m = \frac{P e}{\sigma^2} - K^{-1}(m - \mu_u),\qquad
        \nabla_L = \operatorname{tril}\!\Big(-\frac{P P^\top L}{\sigma^2} - K^{-1} L
        + \operatorname{diag}(1 / L_{ii})\Big).

    Costs O(N M^2 + M^3).
    """
    pp = projection @ projection.T
    if prior_factor is None:
        kinv_offset = offset
        kinv_factor = factor
    else:
        kinv_offset = solve_tril(prior_factor, solve_tril(prior_factor, offset), trans=True)
        kinv_factor = solve_tril(prior_factor, solve_tril(prior_factor, factor), trans=True)
    grad_mean = projection @ residual / noise_variance - kinv_offset
    grad_factor = -(pp @ factor) / noise_variance - kinv_factor
    grad_factor[np.diag_indices_from(grad_factor)] += 1.0 / np.diagonal(factor)
    return SVGPGradients(mean=grad_mean, scale_tril=np.tril(grad_factor))


def svgp_elbo_minibatch(
    self: SparseGP, q_u: Gaussian, y_batch: ArrayLike, rows: ArrayLike, *, whiten: bool = False
) -> float:
    r"""The minibatch estimate of the SVGP ELBO, :math:`(N/B)` times the batch's terms.

    Parameters
    ----------
    q_u : Gaussian
        As in :meth:`svgp_elbo`.
    y_batch : array_like, shape (B,)
        The targets of the batch's rows.
    rows : array_like of int, shape (B,)
        Indices of the batch's rows among the ``N`` training inputs.
    whiten : bool, optional
        Whether ``q_u`` is over the whitened :math:`v`.

    Returns
    -------
    float
        :math:`\frac NB\sum_{i\in\text{batch}}\mathbb E_{q(f_i)}\log\mathcal
        N(y_i; f_i,\sigma^2) - \mathrm{KL}(q(u)\,\|\,p(u))`.

    Raises
    ------
    InvalidInputError
        If ``rows`` is empty, not 1-d, or has an index outside ``[0, N)``, or
        ``y_batch`` does not have one entry per row.
    InvalidTypeError
        If ``q_u`` is not a Gaussian or ``rows`` not an integer array.

    Notes
    -----
    For a batch drawn uniformly (or any design in which each row appears in the
    same fraction of batches, such as the batches of a partition), the
    expectation of this estimate is :meth:`svgp_elbo`: each row's term has
    weight :math:`(N/B)\cdot(B/N) = 1`. Costs O(B M^2 + M^3).

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
    >>> x = np.linspace(0.0, 2.0, 4)
    >>> sgp = SparseGP(RBF(), x, 0.1, inducing_inputs=[1.0])
    >>> q = sgp.inducing_prior
    >>> halves = [sgp.svgp_elbo_minibatch(q, x[r], r) for r in ([0, 1], [2, 3])]
    >>> bool(np.isclose(np.mean(halves), sgp.svgp_elbo(q, x), rtol=1e-12))
    True
    """
    q = self._check_q(q_u)
    index = np.asarray(rows)
    if index.dtype.kind not in "iu":
        raise InvalidTypeError(f"rows must be an integer array; got dtype {index.dtype}")
    n = self.num_data
    if index.ndim != 1 or index.size == 0 or np.any((index < 0) | (index >= n)):
        raise InvalidInputError(
            f"rows must be a non-empty 1-d array of indices in [0, N) with N = {n}; "
            f"got shape {describe_shape(index.shape)} and values {index.tolist()!r}"
        )
    yb = as_real_array("y_batch", y_batch)
    if yb.shape != index.shape:
        raise InvalidInputError(
            f"y_batch must have shape (B,) = ({index.size},), one target per row; "
            f"got shape {describe_shape(yb.shape)}"
        )
    terms, _, _ = self._expected_log_lik(q, yb - self._mean_x[index], index, whiten)
    scale = n / index.size
    return float(scale * np.sum(terms) - kl_divergence(q, self._q_prior(whiten)))


def svgp_elbo_grad(
    self: SparseGP, q_u: Gaussian, y: ArrayLike, *, whiten: bool = False
) -> SVGPGradients:
    r"""The gradient of :meth:`svgp_elbo` in ``q_u``'s mean and Cholesky factor.

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
    SVGPGradients
        ``mean`` (M,) and ``scale_tril`` (M, M, lower triangular).

    Raises
    ------
    InvalidInputError
        As :meth:`svgp_elbo`.
    InvalidTypeError
        As :meth:`svgp_elbo`.

    Notes
    -----
    With :math:`e = y - \mathbb E_q[f]` and :math:`K` the prior covariance of the
    variable ``q_u`` is over (:math:`I` when whitened),

    .. math::
        \nabla_\mu = \frac{P e}{\sigma^2} - K^{-1}(\mu - \mu_0),\qquad
        \nabla_L = \operatorname{tril}\Big(-\frac{PP^\top L}{\sigma^2} - K^{-1}L
        + \operatorname{diag}(1/L_{ii})\Big).

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
    >>> grad = sgp.svgp_elbo_grad(q, np.sin(x))
    >>> bool(np.abs(grad.mean).max() < 1e-6 and np.abs(grad.scale_tril).max() < 1e-6)
    True
    """
    q = self._check_q(q_u)
    _, e, p = self._expected_log_lik(q, self._residual(y), slice(None), whiten)
    offset = q.mean - (0.0 if whiten else self._mean_z)
    prior_factor = None if whiten else self._kuu_factor
    return svgp_gradients(p, prior_factor, offset, q.scale_tril, e, self.noise_variance)
