"""Gaussian-process regression and its sparse variational bounds, computed exactly.

GP regression is a linear-Gaussian latent model: the latent values
:math:`f = f(X) \\sim \\mathcal N(m(X), K_{XX})` and :math:`y \\mid f \\sim
\\mathcal N(f, \\sigma^2 I)`; so are its sparse approximations with inducing variables
:math:`u = f(Z)`. This subpackage computes the exact log marginal likelihood and
predictions (:class:`GPRegression`), and, in O(N M^2 + M^3), the collapsed bound of
Titsias (2009), an upper bound (Titsias 2014; Burt et al. 2019), the uncollapsed SVGP
ELBO of Hensman et al. (2013) for any Gaussian :math:`q(u)`, whitened or not, its
optimum and its gradients (:class:`SparseGP`).
"""

from __future__ import annotations

from ._kernels import RBF, GramKernel, Kernel, Linear, Matern12, Matern32, Matern52
from ._means import ConstantMean, FunctionMean, LinearMean, MeanFunction, ZeroMean
from ._regression import GPRegression
from ._sparse import SparseGP
from ._sparse_grad import SVGPGradients

__all__ = [
    "RBF",
    "ConstantMean",
    "FunctionMean",
    "GPRegression",
    "GramKernel",
    "Kernel",
    "Linear",
    "LinearMean",
    "Matern12",
    "Matern32",
    "Matern52",
    "MeanFunction",
    "SVGPGradients",
    "SparseGP",
    "ZeroMean",
]
