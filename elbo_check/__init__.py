"""elbo_check: exact ELBO, KL and log-evidence for linear-Gaussian latent models.

In a linear-Gaussian model every quantity of variational inference is available in
closed form, so ``log p(x) = ELBO(q) + KL(q || p(z|x))`` can be checked exactly. This
package is the reference oracle for that identity.
"""

from __future__ import annotations

from ._elbo_terms import ElboTerms
from ._encoder import EncoderGradients, LinearEncoder
from ._errors import ElboCheckError, InvalidInputError, InvalidTypeError
from ._families import bayesian_linear_regression, factor_analysis, ppca
from ._gaussian import Gaussian, cross_entropy, kl_divergence
from ._gradients import ModelGradients, VariationalGradients
from ._importance_weights import ImportanceWeightStats
from ._model import LinearGaussianModel
from ._version import __version__

__all__ = [
    "ElboCheckError",
    "ElboTerms",
    "EncoderGradients",
    "Gaussian",
    "ImportanceWeightStats",
    "InvalidInputError",
    "InvalidTypeError",
    "LinearEncoder",
    "LinearGaussianModel",
    "ModelGradients",
    "VariationalGradients",
    "__version__",
    "bayesian_linear_regression",
    "cross_entropy",
    "factor_analysis",
    "kl_divergence",
    "ppca",
]
