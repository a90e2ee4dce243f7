"""What the docstrings of elbo_check.testing promise: errors that used to be a bare numpy
or Python error (or none), and report details that claimed what did not happen."""

from __future__ import annotations

import numpy as np
import pytest

from elbo_check import Gaussian, InvalidInputError, InvalidTypeError, ppca
from elbo_check.testing import ANALYTIC_KL, FORMS, JOINT

MODEL = ppca(
    weights=[[1.0, 0.5], [0.2, -0.3], [0.0, 1.0]], mean=[0.0, 1.0, -1.0], noise_variance=0.4
)
Q = Gaussian.from_covariance(mean=[0.3, -0.2], cov=[[0.5, 0.2], [0.2, 0.8]])
X = np.array([0.5, 1.0, -2.0])
EPS = np.array([[0.5, -1.0], [1.5, 0.2]])


@pytest.mark.parametrize("name", list(FORMS))
def test_pathwise_gradient_names_a_bad_argument(name: str) -> None:
    form = FORMS[name]
    with pytest.raises(InvalidInputError, match=r"eps must have shape \(n, K\)"):
        form.pathwise_gradient(MODEL, Q, X, EPS[0])  # one row without its sample axis
    with pytest.raises(InvalidInputError, match=r"eps must have shape \(n, K\)"):
        form.pathwise_gradient_with_sizes(MODEL, Q, X, np.zeros((2, 3)))
    with pytest.raises(InvalidInputError, match=r"x must be one observation"):
        form.pathwise_gradient(MODEL, Q, X[:2], EPS)
    with pytest.raises(InvalidInputError, match="q must be one Gaussian"):
        form.pathwise_gradient(MODEL, Gaussian.from_diagonal(mean=[0.0], variances=[1.0]), X, EPS)
    with pytest.raises(InvalidTypeError, match="model must be a LinearGaussianModel"):
        form.pathwise_gradient("model", Q, X, EPS)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="eps must be finite"):
        form.pathwise_gradient(MODEL, Q, X, np.full((1, 2), np.nan))


@pytest.mark.parametrize("name", list(FORMS))
def test_sampled_scores_names_a_bad_argument(name: str) -> None:
    form = FORMS[name]
    with pytest.raises(InvalidInputError, match=r"z must have shape \(n, K\)"):
        form.sampled_scores(MODEL, X, np.zeros((4, 3)))
    with pytest.raises(InvalidInputError, match=r"x must be one observation"):
        form.sampled_scores(MODEL, np.stack([X, X]), EPS)
    assert form.sampled_scores(MODEL, X, EPS).shape == (2, 2)


def test_valid_arguments_give_the_same_gradient_as_before() -> None:
    """The checks convert lists and pass on what the computation received before."""
    (gm, gl), _ = JOINT.pathwise_gradient_with_sizes(MODEL, Q, X.tolist(), EPS.tolist())
    expected_mean, expected_factor = JOINT.pathwise_gradient(MODEL, Q, X, EPS)
    assert np.array_equal(gm, expected_mean)
    assert np.array_equal(gl, expected_factor)
    assert np.array_equal(gl, np.tril(gl))


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "8"])
def test_estimator_suspects_need_a_positive_integer(bad: object) -> None:
    with pytest.raises(InvalidInputError, match="n_samples must be a positive integer"):
        ANALYTIC_KL.estimator_suspects(bad)  # type: ignore[arg-type]
    assert JOINT.estimator_suspects(np.int64(3))


def test_check_elbo_names_a_bad_value_model_or_batch() -> None:
    from elbo_check.testing import check_elbo

    with pytest.raises(InvalidInputError, match=r"^value must be a real number; got None$"):
        check_elbo(None, MODEL, Q, X)
    with pytest.raises(InvalidInputError, match="value must be a scalar"):
        check_elbo(np.zeros(2), MODEL, Q, X)
    with pytest.raises(InvalidTypeError, match="model must be a LinearGaussianModel"):
        check_elbo(0.0, "model", Q, X)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="q and x must not be batches"):
        check_elbo(0.0, MODEL, Q, np.stack([X, X]))
    check_elbo(MODEL.elbo(Q, X), MODEL, Q, X)


def test_a_statistical_report_does_not_claim_a_widened_tolerance() -> None:
    """Only the deterministic checks widen their tolerance for float32 code."""
    from elbo_check.testing import verify_elbo_estimator

    def estimate32(model, q, x, rng, n_samples):  # type: ignore[no-untyped-def]
        z = q.mean + rng.standard_normal((n_samples, q.dim)) @ q.scale_tril.T
        return np.float32(np.mean(model.log_joint(x, z) - q.log_prob(z)))

    report = verify_elbo_estimator(estimate32, n_problems=1, calls=80)
    assert "precision" not in report.details
    assert "widened" not in str(report)
