"""The named terms of the ELBO, as the oracle returns them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ElboTerms"]


@dataclass(frozen=True)
class ElboTerms:
    r"""The named pieces of the ELBO of ``q`` at ``x``; each a float or an array over rows.

    Both textbook forms of the ELBO can be read off:

    .. math::
        \mathrm{ELBO}
          = \underbrace{\mathbb E_q[\log p(x\mid z)]}_{\texttt{expected\_log\_likelihood}}
          - \underbrace{\mathrm{KL}(q\,\|\,p(z))}_{\texttt{kl\_to\_prior}}
        = \mathbb E_q[\log p(x\mid z)]
          - \underbrace{H(q, p(z))}_{\texttt{cross\_entropy}}
          + \underbrace{H(q)}_{\texttt{entropy}}.

    Attributes
    ----------
    expected_log_likelihood : float or ndarray
        :math:`\mathbb E_q[\log p(x\mid z)]`, the reconstruction term.
    kl_to_prior : float or ndarray
        :math:`\mathrm{KL}(q\,\|\,p(z))`.
    cross_entropy : float or ndarray
        :math:`H(q, p(z)) = -\mathbb E_q[\log p(z)]`.
    entropy : float or ndarray
        :math:`H(q)`, the same for every row (it does not depend on the mean).
    """

    expected_log_likelihood: Any
    kl_to_prior: Any
    cross_entropy: Any
    entropy: Any

    @property
    def reconstruction(self) -> Any:
        """Alias of :attr:`expected_log_likelihood`, the VAE literature's name."""
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
