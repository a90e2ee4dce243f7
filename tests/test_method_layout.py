"""The public classes keep their methods as their own attributes.

Some methods of :class:`~elbo_check.LinearGaussianModel` and the named constructors of
:class:`~elbo_check.Gaussian` are defined in private modules (to keep each module under
600 lines) and bound in the class body. They must stay attributes of the class itself,
not inherited from a mixin: autodoc's ``:members:``, ``help()`` and
``tools/check_docstrings.py`` only see what is in the class's own ``__dict__``.
"""

from __future__ import annotations

import copy
import pickle
import pydoc

import numpy as np

from elbo_check import Gaussian, LinearGaussianModel, ppca

MODEL_METHODS = [
    "marginal",
    "marginal_variances",
    "dense_noise_cov",
    "log_evidence",
    "posterior",
    "log_likelihood",
    "log_joint",
    "sample",
    "elbo_terms",
    "elbo",
    "kl_to_posterior",
    "elbo_grad_variational",
    "elbo_grad_model",
    "dataset_elbo",
    "dataset_elbo_grad",
    "optimal_encoder",
    "renyi_bound",
    "renyi_divergence_to_posterior",
    "renyi_alpha_interval",
    "cubo",
    "importance_weight_moment",
    "importance_weight_stats",
    "renyi_bound_grad_variational",
]
GAUSSIAN_CONSTRUCTORS = [
    "from_cholesky",
    "from_covariance",
    "from_precision",
    "from_diagonal",
    "standard",
]


def test_model_methods_are_the_class_own() -> None:
    assert LinearGaussianModel.__module__ == "elbo_check._model"
    assert LinearGaussianModel.__mro__ == (LinearGaussianModel, object)
    own = vars(LinearGaussianModel)
    for name in MODEL_METHODS:
        assert callable(own[name]), name
        assert own[name].__doc__, name
    text = pydoc.render_doc(LinearGaussianModel, renderer=pydoc.plaintext)
    defined_here = text.split("Methods defined here:")[1].split("properties defined here:")[0]
    for name in MODEL_METHODS:
        assert f"\n |  {name}(self" in defined_here, name


def test_gaussian_constructors_are_classmethods_of_the_class() -> None:
    assert Gaussian.__module__ == "elbo_check._gaussian"
    own = vars(Gaussian)
    for name in GAUSSIAN_CONSTRUCTORS:
        assert isinstance(own[name], classmethod), name
    q = Gaussian.from_covariance(mean=[0.0, 1.0], cov=[[4.0, 2.0], [2.0, 1.25]])
    assert type(q) is Gaussian
    np.testing.assert_array_equal(q.scale_tril, [[2.0, 0.0], [1.0, 0.5]])


def test_bound_methods_pickle_and_copy_with_their_model() -> None:
    model = ppca(weights=[[1.0], [0.5]], mean=[0.0, 0.0], noise_variance=0.1)
    x = np.array([0.3, 0.2])
    for method in (model.log_evidence, model.elbo, model.optimal_encoder, model.renyi_bound):
        restored = pickle.loads(pickle.dumps(method))
        assert restored.__name__ == method.__name__
    q = model.posterior(x)
    assert pickle.loads(pickle.dumps(model.elbo))(q, x) == model.elbo(q, x)
    assert copy.deepcopy(model).elbo(q, x) == model.elbo(q, x)
    assert pickle.loads(pickle.dumps(model.cubo))(q, x) == model.cubo(q, x)
