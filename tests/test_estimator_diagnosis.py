"""The estimator check names a bug only when it explains the bias on two problems.

A suspect matched on the failing problem alone can change with the seed (a bias of a
few standard errors is close to several suspects at once). The statistical diagnosis
runs further problems like the failing one and names a suspect only if it is
consistent with the mean estimate on every problem and predicts the bias on at least
two; the pathwise diagnosis matches suspects across the failing case and independent
problems. Measured here: the name is the same for seeds 0..3.

The estimators are written from scratch in numpy (tests/test_elbo_forms.py), with the
bugs a user makes: the entropy with the variance as its scale, the loss -ELBO returned,
the reconstruction divided by a dataset size N = 100, the IWAE bound returned as the
ELBO.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy.special import logsumexp
from test_elbo_forms import (
    SMALL,
    estimate,
    kl,
    log_likelihood,
    log_normal,
    log_prior,
    pathwise,
    statistical,
)

from elbo_check import Gaussian, LinearGaussianModel
from elbo_check.testing import verify_elbo_estimator
from elbo_check.testing._cases import _with_kind
from elbo_check.testing._estimator_diagnosis import kind_of, second_problem
from elbo_check.testing._problems import _statistical_problems

SEEDS = range(4)
Estimator = Callable[[LinearGaussianModel, Gaussian, np.ndarray, np.random.Generator, int], float]


def entropy_variance_scale(
    model: LinearGaussianModel, q: Gaussian, x: np.ndarray, rng: np.random.Generator, n: int
) -> float:
    eps = rng.standard_normal((n, q.dim))
    return estimate("analytic_entropy", model, q, x, eps, "entropy_variance_scale")


def loss(
    model: LinearGaussianModel, q: Gaussian, x: np.ndarray, rng: np.random.Generator, n: int
) -> float:
    return -estimate("joint", model, q, x, rng.standard_normal((n, q.dim)))


def likelihood_over_n(
    model: LinearGaussianModel, q: Gaussian, x: np.ndarray, rng: np.random.Generator, n: int
) -> float:
    z = q.mean + rng.standard_normal((n, q.dim)) @ q.scale_tril.T
    divergence = kl(q.mean, q.cov, model.prior.mean, model.prior.cov)
    return float(np.mean(log_likelihood(model, x, z)) / 100.0 - divergence)


def iwae(
    model: LinearGaussianModel, q: Gaussian, x: np.ndarray, rng: np.random.Generator, n: int
) -> float:
    z = q.mean + rng.standard_normal((n, q.dim)) @ q.scale_tril.T
    log_w = log_likelihood(model, x, z) + log_prior(model, z) - log_normal(z, q.mean, q.cov)
    return float(logsumexp(log_w) - np.log(n))


def mean_field(
    model: LinearGaussianModel, q: Gaussian, x: np.ndarray, rng: np.random.Generator, n: int
) -> float:
    """A mean-field VAE ELBO (analytic KL): right for diagonal q, given a full one."""
    scale = np.sqrt(np.diagonal(q.cov))
    z = q.mean + scale * rng.standard_normal((n, q.dim))
    divergence = kl(q.mean, np.diag(scale**2), model.prior.mean, model.prior.cov)
    return float(np.mean(log_likelihood(model, x, z)) - divergence)


def diagnoses(failure: pytest.ExceptionInfo[AssertionError]) -> list[str]:
    return [line for line in str(failure.value).splitlines() if "Diagnosis" in line]


STATISTICAL = [
    (
        "analytic_entropy",
        entropy_variance_scale,
        "Diagnosis: the entropy uses the variance as the scale",
    ),
    ("joint", loss, "Diagnosis: the loss -ELBO is returned instead of the ELBO."),
    (
        "analytic_kl",
        likelihood_over_n,
        "Diagnosis: the reconstruction E_q[log p(x | z)] is scaled by 0.01.",
    ),
    ("joint", iwae, "Diagnosis: fn returns an importance-weighted bound"),
]


@pytest.mark.parametrize(
    ("form", "fn", "named"), STATISTICAL, ids=[fn.__name__ for _, fn, _ in STATISTICAL]
)
def test_the_statistical_diagnosis_names_the_same_bug_for_every_seed(
    form: str, fn: Estimator, named: str
) -> None:
    seen = []
    for seed in SEEDS:
        with pytest.raises(AssertionError, match="the estimator is biased") as failure:
            verify_elbo_estimator(fn, form=form, seed=seed, calls=200, n_problems=2)
        lines = diagnoses(failure)
        assert len(lines) == 1, lines  # one name, not several candidates
        assert lines[0].startswith(named), lines
        assert "problem 2 (like the failing one" in str(failure.value)
        seen.append(lines[0])
    assert len(set(seen)) == 1


def test_a_mean_field_estimator_given_correlated_q_is_named_and_never_misnamed() -> None:
    """Measured at seeds 0..7 (calls=200): named at 7, "no known bug" once (seed 3: the
    skewed estimates of a strongly correlated q put the mean 3.9 standard errors from the
    prediction on the second problem). A wrong name would be worse than none."""
    named = 0
    for seed in SEEDS:
        with pytest.raises(AssertionError, match="the estimator is biased") as failure:
            verify_elbo_estimator(
                mean_field, form="analytic_kl", seed=seed, calls=200, n_problems=2
            )
        (line,) = diagnoses(failure)
        if line.startswith("Diagnosis: q's covariance is replaced by its diagonal"):
            named += 1
        else:
            assert line.startswith("Diagnosis: no known bug matches"), line
    assert named >= 3
    verify_elbo_estimator(mean_field, form="analytic_kl", q_kinds=("diagonal",), calls=200)


@pytest.mark.parametrize("form", ["joint", "analytic_kl", "analytic_entropy"])
def test_correct_estimators_still_pass_for_every_seed(form: str) -> None:
    for seed in SEEDS:
        report = verify_elbo_estimator(statistical(form), form=form, seed=seed, calls=120)
        assert report.worst_error < 1.0


PATHWISE = [
    ("analytic_kl", "kl_reversed", "Diagnosis: the KL is taken in the wrong direction"),
    ("analytic_entropy", "entropy_variance_scale", "Diagnosis: the entropy uses the variance"),
    ("joint", "log_q_added", "Diagnosis: log q(z) is added instead of subtracted"),
]


@pytest.mark.parametrize(("form", "bug", "named"), PATHWISE)
def test_the_pathwise_diagnosis_names_the_same_bug_for_every_seed(
    form: str, bug: str, named: str
) -> None:
    seen = []
    for seed in SEEDS:
        with pytest.raises(AssertionError) as failure:
            verify_elbo_estimator(
                pathwise(form, bug), mode="pathwise", form=form, seed=seed, max_examples=20, **SMALL
            )
        lines = diagnoses(failure)
        assert len(lines) == 1, lines
        assert lines[0].startswith(named), lines
        seen.append(lines[0])
    assert len(set(seen)) == 1


@pytest.mark.parametrize("form", ["joint", "analytic_kl", "analytic_entropy"])
def test_a_negated_pathwise_estimate_is_named_the_loss(form: str) -> None:
    """A library's loss is -ELBO; returned un-negated it is named in pathwise mode too
    (the statistical diagnosis already named it)."""

    def loss(model: LinearGaussianModel, q: Gaussian, x: np.ndarray, eps: np.ndarray) -> float:
        return -pathwise(form)(model, q, x, eps)

    with pytest.raises(AssertionError) as failure:
        verify_elbo_estimator(loss, mode="pathwise", form=form, max_examples=20, **SMALL)
    assert diagnoses(failure) == ["Diagnosis: the loss -ELBO is returned instead of the ELBO."]


def is_standard(g: Gaussian) -> bool:
    return bool(np.all(g.mean == 0.0) and np.array_equal(g.cov, np.eye(g.dim)))


def test_the_further_problems_are_like_the_failing_one() -> None:
    """Same D and K, noise kind, prior kind and q kind; another model, q and x; the same
    problem for the same seed."""
    for model, q, x in _statistical_problems(0, 5, {}):
        for kind in ("full", "diagonal", "isotropic"):
            qq = _with_kind(q, kind)
            other, q2, x2 = second_problem(model, qq, x, [0, 78, 1, 1])
            assert (other.data_dim, other.latent_dim) == (model.data_dim, model.latent_dim)
            assert other.noise_kind == model.noise_kind
            standard = bool(
                np.all(model.prior.mean == 0) and np.all(model.prior.cov == np.eye(q.dim))
            )
            assert standard == bool(
                np.all(other.prior.mean == 0) and np.all(other.prior.cov == np.eye(q.dim))
            )
            assert kind_of(q2) == kind_of(qq) == kind
            assert not np.allclose(x2, x)
            again = second_problem(model, qq, x, [0, 78, 1, 1])
            assert np.array_equal(again[2], x2)
