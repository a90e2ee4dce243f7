r"""The low-rank-plus-diagonal family of Pyro's and NumPyro's ``AutoLowRankMultivariateNormal``.

Both libraries hold a mean, a factor :math:`F` of shape ``(K, rank)`` and positive row
scales :math:`s` (``softplus_positive``), and build

.. math::
    \Sigma = D\,(F F^\top + I)\,D, \qquad D = \operatorname{diag}(s),

as ``LowRankMultivariateNormal(loc, cov_factor=D F, cov_diag=s**2)``.
"""

from __future__ import annotations

import numpy as np

from .._errors import InvalidInputError
from .._gaussian import Gaussian
from ._parametrisation_base import _POSITIVE, FloatArray, Parametrisation, Params, _scales
from ._parametrisations import _symmetric_gradient

__all__ = ["ScaledLowRank"]

#: Relative gap (in the largest covariance entry) below which q counts as a member:
#: eigendecomposition and reassembly lose a few hundred ulps at most.
_MEMBER_RTOL = 1e-10


class ScaledLowRank(Parametrisation):
    r"""``{"loc": (K,), "cov_factor": (K, rank), <scale key>: (K,)}``: low rank plus diagonal.

    Pyro's and NumPyro's ``AutoLowRankMultivariateNormal`` (their ``loc``, ``cov_factor``
    and ``scale``; Pyro's default rank is ``round(sqrt(K))``).

    Parameters
    ----------
    rank : int
        Columns of ``cov_factor`` (at least 1).
    scale_transform : {"softplus", "exp", "identity"}
        How the scales are held: ``"softplus"`` as ``"raw_scale"`` (the unconstrained
        value the libraries optimise, default), ``"exp"`` as ``"log_scale"``,
        ``"identity"`` as ``"scale"`` (the constrained value).

    Notes
    -----
    With :math:`G_S` the symmetric gradient with respect to :math:`\Sigma` (from the
    one in the Cholesky factor, as for :class:`FullCovariance`), :math:`A = F F^\top +
    I` and :math:`s = f(u)`,

    .. math::
        \frac{\partial\,\mathrm{ELBO}}{\partial F} = 2\, D\, G_S\, D\, F, \qquad
        \frac{\partial\,\mathrm{ELBO}}{\partial u_i} = 2\, (G_S\, D\, A)_{ii}\; f'(u_i).

    :meth:`project` keeps q's mean and, for ``rank < K``, gives
    :math:`\Sigma' = \lambda_{\min} (F F^\top + I)` with :math:`F` the top ``rank``
    eigenpairs of :math:`\Sigma / \lambda_{\min} - I`: q's ``rank`` leading directions
    over an isotropic floor at q's smallest eigenvalue (:math:`\Sigma' = \Sigma` when
    q is in the family with isotropic scales). For ``rank >= K`` every q is a member.

    Raises
    ------
    InvalidInputError
        If ``rank`` is not an integer >= 1 (``1.0`` is refused too), or
        ``scale_transform`` is not ``"softplus"``, ``"exp"`` or ``"identity"``.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian
    >>> from elbo_check.testing import ScaledLowRank
    >>> par = ScaledLowRank(rank=1, scale_transform="identity")
    >>> par.keys
    ('loc', 'cov_factor', 'scale')
    >>> params = {"loc": [0.0, 0.0, 0.0], "cov_factor": [[1.0], [0.0], [2.0]],
    ...           "scale": [1.0, 2.0, 0.5]}
    >>> par.to_gaussian(params).cov  # D (F F^T + I) D
    array([[2.  , 0.  , 1.  ],
           [0.  , 4.  , 0.  ],
           [1.  , 0.  , 1.25]])

    A general q is not a member; its projection keeps its largest eigenvalue and
    raises the others to its smallest:

    >>> q = Gaussian.from_covariance(mean=[0.0, 0.0, 0.0],
    ...                              cov=[[2.0, 0.3, 0.1], [0.3, 1.0, 0.2], [0.1, 0.2, 1.5]])
    >>> np.linalg.eigvalsh(q.cov).round(6)
    array([0.871689, 1.507693, 2.120618])
    >>> np.linalg.eigvalsh(par.project(q).cov).round(6)
    array([0.871689, 0.871689, 2.120618])
    """

    _key_kinds = ("vector", "free", "vector")

    def __init__(self, rank: int, scale_transform: str = "softplus") -> None:
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1:
            raise InvalidInputError(f"rank must be an integer >= 1; got rank={rank!r}")
        if scale_transform not in ("identity", "exp", "softplus"):
            raise InvalidInputError(
                "scale_transform must be 'softplus', 'exp' or 'identity'; "
                f"got scale_transform={scale_transform!r}"
            )
        self.rank = int(rank)
        self._transform = _POSITIVE[scale_transform]
        self.keys = ("loc", "cov_factor", self._transform.key)

    def __repr__(self) -> str:
        return f"ScaledLowRank(rank={self.rank}, scale_transform={self._transform.kind!r})"

    def _check_shapes(self, params: Params, what: str) -> None:
        loc = params["loc"]
        if loc.ndim != 1 or loc.shape[0] < 1:
            raise InvalidInputError(
                f"{what}['loc'] must have shape (K,) with K >= 1 (one q, not a batch); "
                f"got {loc.shape}"
            )
        k, key = loc.shape[0], self._transform.key
        for name, shape in (("cov_factor", (k, self.rank)), (key, (k,))):
            if params[name].shape != shape:
                raise InvalidInputError(
                    f"{what}[{name!r}] must have shape {shape} (K={k}, rank={self.rank}); "
                    f"got {params[name].shape}"
                )

    def _check_q(self, q: Gaussian, exact: bool = True) -> Gaussian:
        q = super()._check_q(q)
        member = self._to_gaussian(self._from_gaussian(q))
        if exact:
            gap = float(np.max(np.abs(member.cov - q.cov)))
            if gap > _MEMBER_RTOL * float(np.max(np.abs(q.cov))):
                raise InvalidInputError(
                    f"{self!r} describes covariances of an isotropic floor plus rank "
                    f"{self.rank}; q's covariance is not one (off by {gap:.3g}; project(q) "
                    "gives a member)"
                )
            return q
        return member

    def _to_gaussian(self, params: Params) -> Gaussian:
        scale = _scales(self._transform, params)
        factor = params["cov_factor"]
        inner = factor @ factor.T + np.eye(scale.shape[0])
        return Gaussian.from_covariance(mean=params["loc"], cov=scale[:, None] * inner * scale)

    def _from_gaussian(self, q: Gaussian) -> Params:
        # Isotropic scales sigma: Sigma / sigma^2 - I must be PSD of rank <= rank. For
        # rank < K, sigma^2 = lambda_min leaves a zero eigenvalue; for rank >= K half of
        # it keeps every eigenvalue of F F^T positive.
        k = q.dim
        values, vectors = np.linalg.eigh(q.cov)
        floor = float(values[0]) * (0.5 if self.rank >= k else 1.0)
        excess = np.clip(values / floor - 1.0, 0.0, None)
        factor = np.zeros((k, self.rank))
        top = min(self.rank, k)
        factor[:, :top] = vectors[:, k - top :] * np.sqrt(excess[k - top :])
        scale = np.full(k, np.sqrt(floor))
        key = self._transform.key
        return {"loc": q.mean.copy(), "cov_factor": factor, key: self._transform.inverse(scale)}

    def _pullback(self, params: Params, gm: FloatArray, gl: FloatArray) -> Params:
        key = self._transform.key
        u, factor = params[key], params["cov_factor"]
        s = self._transform.forward(u)
        g_cov = _symmetric_gradient(self._to_gaussian(params).scale_tril, gl)
        inner = factor @ factor.T + np.eye(s.shape[0])
        scaled = s[:, None] * g_cov * s  # D G_S D
        return {
            "loc": gm.copy(),
            "cov_factor": 2.0 * scaled @ factor,
            key: 2.0 * np.einsum("ij,j,ji->i", g_cov, s, inner) * self._transform.derivative(u, s),
        }
