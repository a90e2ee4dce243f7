"""Every verifier runs on the user's own problems: a strategy or a sequence, through
``problems=``; counts through ``max_examples`` / ``n_problems``; q kinds through
``q_kinds`` (elbo_check.testing._cases)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from elbo_check import Gaussian, InvalidInputError, kl_divergence, ppca
from elbo_check.strategies import elbo_problems
from elbo_check.testing import (
    verify_elbo,
    verify_elbo_estimator,
    verify_elbo_gradient,
    verify_kl,
    verify_log_evidence,
)
from elbo_check.testing._cases import draw_examples, statistical_cases

MODEL = ppca(weights=[[1.0], [0.5], [0.2]], mean=[0.1, 0.0, -0.3], noise_variance=0.3)
X = np.array([0.4, -0.2, 0.9])


def _diagonal_q(scales: list[float]) -> Gaussian:
    return Gaussian.from_covariance(mean=[0.3], cov=np.diag(np.square(scales)))


def _mean_field_estimator(model: Any, q: Any, x: np.ndarray, rng: Any, n: int) -> float:
    """AutoNormal-style: reads only q's marginal scales (right for diagonal q only)."""
    scale = np.sqrt(np.diagonal(q.cov))
    z = q.mean + rng.standard_normal((n, q.dim)) * scale
    return float(np.mean(model.log_joint(x, z) - q.log_prob(z)))


def test_a_diagonal_guide_is_checked_on_diagonal_q() -> None:
    """Feeding a mean-field estimator full q's gives a (correct) failure; with
    q_kinds=("diagonal",) it passes, and so does its own list of problems."""
    with pytest.raises(AssertionError, match="biased"):
        verify_elbo_estimator(_mean_field_estimator, calls=400, n_problems=3)
    verify_elbo_estimator(_mean_field_estimator, calls=400, n_problems=3, q_kinds=("diagonal",))
    verify_elbo_estimator(
        _mean_field_estimator,
        calls=400,
        problems=[(MODEL, _diagonal_q([0.7]), X), (MODEL, _diagonal_q([1.3]), X)],
    )


def _mean_field_elbo(model: Any, q: Any, x: np.ndarray) -> float:
    """A mean-field ELBO: q's covariance read as its diagonal (right for diagonal q only)."""
    diagonal_q = Gaussian.from_diagonal(mean=q.mean, variances=np.diagonal(q.cov))
    return float(model.elbo(diagonal_q, x))


def test_verify_elbo_takes_q_kinds_like_the_statistical_checks() -> None:
    with pytest.raises(AssertionError, match="verify_elbo failed"):
        verify_elbo(_mean_field_elbo, max_examples=50)
    for kinds in (("diagonal",), ("isotropic", "diagonal")):
        assert verify_elbo(_mean_field_elbo, q_kinds=kinds, max_examples=50).cases == 50
    with pytest.raises(InvalidInputError, match="q_kinds must be a non-empty sequence"):
        verify_elbo(_mean_field_elbo, q_kinds=("diag",))


def _diagonal_kl(p: Any, q: Any) -> Any:
    """KL between mean-field Gaussians (reads only the variances: wrong for full ones)."""
    vp = np.diagonal(p.cov, axis1=-2, axis2=-1)
    vq = np.diagonal(q.cov, axis1=-2, axis2=-1)
    d = p.mean - q.mean
    return 0.5 * np.sum(vp / vq + d * d / vq - 1 + np.log(vq) - np.log(vp), axis=-1)


def test_verify_kl_takes_q_kinds_for_both_gaussians() -> None:
    with pytest.raises(AssertionError, match="only the diagonals of the covariances"):
        verify_kl(_diagonal_kl, max_examples=50)
    assert verify_kl(_diagonal_kl, q_kinds=("diagonal",), max_examples=50).cases == 50
    assert verify_kl(_diagonal_kl, q_kinds="isotropic", batch_size=3, max_examples=20).cases


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"q_kinds": ()}, "q_kinds must be a non-empty sequence"),
        ({"max_dim": 0}, "max_dim must be an integer >= 1"),
        ({"max_dim": 2.5}, "max_dim must be an integer >= 1 or None"),
        ({"max_condition_number": 0.5}, "max_condition_number must be a finite real number >= 1"),
        ({"max_condition_number": float("inf")}, "max_condition_number must be a finite"),
    ],
)
def test_verify_kl_options_are_validated(options: dict[str, Any], said: str) -> None:
    with pytest.raises(InvalidInputError, match=said):
        verify_kl(_diagonal_kl, **options)


def test_a_strategy_is_drawn_from_with_the_seed() -> None:
    strategy = elbo_problems(q_kinds=("isotropic",), max_latent_dim=2)
    first = draw_examples(strategy, 3, seed=5)
    again = draw_examples(strategy, 3, seed=5)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.q.scale_tril, b.q.scale_tril)
    report = verify_elbo_estimator(
        _mean_field_estimator, calls=200, problems=strategy, n_problems=3
    )
    assert report.cases == 3


def test_sequences_are_checked_in_order_and_the_failing_one_is_named() -> None:
    good = (MODEL, _diagonal_q([0.7]), X)
    other = (MODEL, _diagonal_q([0.2]), X + 1.0)
    verify_elbo(lambda m, q, x: float(m.elbo(q, x)), problems=[good, other])

    def wrong_on_large_x(m: Any, q: Any, x: np.ndarray) -> float:
        return float(m.elbo(q, x)) + (1.0 if x[0] > 1.0 else 0.0)

    with pytest.raises(AssertionError, match=r"problems\[1\] of 2"):
        verify_elbo(wrong_on_large_x, problems=[good, other])


def test_every_deterministic_verifier_takes_a_sequence() -> None:
    p = Gaussian.from_covariance(mean=[0.0, 1.0], cov=[[2.0, 0.3], [0.3, 1.0]])
    q = Gaussian.standard(2)
    verify_kl(lambda a, b: float(kl_divergence(a, b)), problems=[(p, q), (q, p)])
    verify_log_evidence(lambda m, x: float(m.log_evidence(x)), problems=[(MODEL, X)])

    def exact(m: Any, q: Any, x: np.ndarray) -> Any:
        g = m.elbo_grad_variational(q, x)
        return g.mean, g.scale_tril

    verify_elbo_gradient(exact, problems=[(MODEL, _diagonal_q([0.5]), X)])
    with pytest.raises(AssertionError, match=r"problems\[0\]"):
        verify_elbo_gradient(lambda m, q, x: exact(m, q, 2 * x), problems=[(MODEL, q1(), X)])

    def pathwise(m: Any, q: Any, x: np.ndarray, eps: np.ndarray) -> float:
        z = q.mean + eps @ q.scale_tril.T
        return float(np.mean(m.log_joint(x, z) - q.log_prob(z)))

    verify_elbo_estimator(pathwise, mode="pathwise", problems=[(MODEL, q1(), X)])


def q1() -> Gaussian:
    return _diagonal_q([0.5])


@pytest.mark.parametrize(
    ("problems", "said"),
    [
        ([], "must not be empty"),
        ("abc", "strategy or a sequence"),
        ([(MODEL, X)], r"problems\[0\] must be an ElboProblem"),
        ([(MODEL, Gaussian.standard(2), X)], "K = 1"),
        ([(MODEL, q1(), X[:2])], "last axis D = 3"),
        ([(MODEL, q1(), np.array([np.nan, 0.0, 0.0]))], "finite"),
    ],
)
def test_bad_problems_are_refused(problems: Any, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        verify_elbo(lambda m, q, x: 0.0, problems=problems)


def test_a_count_in_problems_is_deprecated_and_counts_are_not_given_twice() -> None:
    with pytest.warns(DeprecationWarning, match="n_problems"):
        verify_elbo_estimator(_mean_field_estimator, calls=80, problems=1, q_kinds="diagonal")
    with pytest.raises(ValueError, match="n_problems"):
        statistical_cases(
            [(MODEL, q1(), X)],
            2,
            default_count=4,
            seed=0,
            q_kinds=("full",),
            model_options={},
            calls=80,
        )
    with pytest.raises(ValueError, match="q_kinds"):
        verify_elbo_estimator(_mean_field_estimator, q_kinds=("banded",))


def test_statistical_checks_take_any_model_option() -> None:
    """Options the fixed problems cannot honour draw the problems from the strategies."""
    cases = statistical_cases(
        None,
        3,
        default_count=4,
        seed=1,
        q_kinds=("diagonal",),
        model_options={"max_data_dim": 2, "max_latent_dim": 1},
        calls=80,
    )
    assert len(cases) == 3
    for model, q, _ in cases:
        assert model.data_dim <= 2
        assert model.latent_dim == 1
        assert np.count_nonzero(np.tril(q.scale_tril, -1)) == 0
