"""The named terms of the ELBO, as the oracle returns them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ElboTerms"]


@dataclass(frozen=True)
class ElboTerms:
    r"""The named pieces of the ELBO of ``q`` at ``x``; each a float or an array over rows.

    Both textbook forms of the ELBO can be read off [1]_:

    .. math::
        \mathrm{ELBO}
          = \underbrace{\mathbb E_q[\log p(x\mid z)]}_{\texttt{expected\_log\_likelihood}}
          - \underbrace{\mathrm{KL}(q\,\|\,p(z))}_{\texttt{kl\_to\_prior}}
        = \mathbb E_q[\log p(x\mid z)]
          - \underbrace{H(q, p(z))}_{\texttt{cross\_entropy}}
          + \underbrace{H(q)}_{\texttt{entropy}}.

    Returned by :meth:`LinearGaussianModel.elbo_terms`, which has the formulas; the
    parameters are stored as read-only attributes of the same names. All values are
    in nats, each a float for one ``x`` and an unbatched ``q``, else an array of the
    broadcast batch shape of ``x``'s rows and ``q`` (one value per row, not summed).

    Parameters
    ----------
    expected_log_likelihood : float or ndarray
        :math:`\mathbb E_q[\log p(x\mid z)]`, the reconstruction term.
    kl_to_prior : float or ndarray
        :math:`\mathrm{KL}(q\,\|\,p(z))`, never negative.
    cross_entropy : float or ndarray
        :math:`H(q, p(z)) = -\mathbb E_q[\log p(z)]`.
    entropy : float or ndarray
        :math:`H(q)`, the same for every row that shares q's covariance (it does not
        depend on the mean).

    Raises
    ------
    TypeError
        If a field is missing or an unknown one is given (the dataclass constructor
        checks nothing else).

    References
    ----------
    .. [1] M. D. Hoffman and M. J. Johnson, "ELBO surgery: yet another way to carve
       up the variational evidence lower bound", NIPS 2016 Workshop in Advances in
       Approximate Bayesian Inference.

    Examples
    --------
    >>> import numpy as np
    >>> from elbo_check import Gaussian, ppca
    >>> model = ppca(weights=[[1.0], [0.5]], mean=[0.0, 0.0], noise_variance=0.1)
    >>> q = Gaussian.from_diagonal(mean=[0.2], variances=[0.5])
    >>> terms = model.elbo_terms(q, np.array([0.3, 0.2]))
    >>> round(terms.expected_log_likelihood, 6), round(terms.kl_to_prior, 6)
    (-2.760292, 0.116574)
    >>> round(terms.elbo, 6), round(terms.elbo_joint_form, 6)
    (-2.876866, -2.876866)
    """

    expected_log_likelihood: Any
    kl_to_prior: Any
    cross_entropy: Any
    entropy: Any

    @property
    def reconstruction(self) -> Any:
        """Alias of ``expected_log_likelihood``, the VAE literature's name."""
        return self.expected_log_likelihood

    @property
    def expected_log_joint(self) -> Any:
        r""":math:`\mathbb E_q[\log p(x, z)]` = expected log-likelihood - cross-entropy."""
        return self.expected_log_likelihood - self.cross_entropy

    @property
    def elbo(self) -> Any:
        """Reconstruction minus KL to the prior (the "VAE" form)."""
        return self.expected_log_likelihood - self.kl_to_prior

    @property
    def elbo_joint_form(self) -> Any:
        r""":math:`\mathbb E_q[\log p(x,z)] + H(q)` (the "variational inference" form)."""
        return self.expected_log_joint + self.entropy
