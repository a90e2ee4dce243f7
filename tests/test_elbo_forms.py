"""The three ELBO forms users write, under ``verify_elbo_estimator(form=...)``.

The joint form log p(x, z) - log q(z), the analytic-KL form log p(x | z) - KL(q || p(z))
and the analytic-entropy form log p(x, z) + H(q) have the same expectation but different
per-sample values. Each is implemented here from scratch, as a user would (dense numpy
on model.weights, model.bias, model.prior, model.noise_cov and q's mean and factor), and
must pass both modes of its form; another form's correct code must fail the pathwise
mode; realistic bugs must fail, with the form's own suspect named.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from elbo_check import Gaussian, InvalidInputError, LinearGaussianModel
from elbo_check.strategies import ElboProblem, elbo_problems
from elbo_check.testing import verify_elbo_estimator
from elbo_check.testing._forms import (
    ANALYTIC_ENTROPY,
    ANALYTIC_KL,
    FORMS,
    JOINT,
    ElboForm,
    check_form,
)

LOG_2PI = float(np.log(2.0 * np.pi))
FORM_NAMES = ("joint", "analytic_kl", "analytic_entropy")


# ---------------------------------------------------------------------- a user's code
def noise_matrix(model: LinearGaussianModel) -> np.ndarray:
    """Psi as a dense (D, D) matrix from a scalar, a (D,) vector of variances or a matrix."""
    noise = np.asarray(model.noise_cov, dtype=float)
    if noise.ndim == 0:
        return float(noise) * np.eye(model.data_dim)
    if noise.ndim == 1:
        return np.diag(noise)
    return noise


def log_normal(points: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """log N(points; mean, cov) for each row of points."""
    factor = np.linalg.cholesky(cov)
    whitened = np.linalg.solve(factor, (points - mean).T)
    return -0.5 * (
        len(cov) * LOG_2PI + 2.0 * np.sum(np.log(np.diag(factor))) + np.sum(whitened**2, axis=0)
    )


def log_likelihood(model: LinearGaussianModel, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    means = z @ model.weights.T + model.bias
    return log_normal(x - means, np.zeros(model.data_dim), noise_matrix(model))


def log_prior(model: LinearGaussianModel, z: np.ndarray) -> np.ndarray:
    return log_normal(z, model.prior.mean, model.prior.cov)


def kl_terms(
    mean: np.ndarray, cov: np.ndarray, prior_mean: np.ndarray, prior_cov: np.ndarray
) -> np.ndarray:
    """Per-dimension contributions that sum to KL(N(mean, cov) || N(prior_mean, prior_cov))."""
    precision = np.linalg.inv(prior_cov)
    offset = prior_mean - mean
    log_diag = np.log(np.diag(np.linalg.cholesky(prior_cov))) - np.log(
        np.diag(np.linalg.cholesky(cov))
    )
    return 0.5 * (np.diag(precision @ cov) + offset * (precision @ offset) - 1.0 + 2.0 * log_diag)


def kl(mean: np.ndarray, cov: np.ndarray, prior_mean: np.ndarray, prior_cov: np.ndarray) -> float:
    return float(np.sum(kl_terms(mean, cov, prior_mean, prior_cov)))


def entropy(cov: np.ndarray) -> float:
    sign, log_det = np.linalg.slogdet(cov)
    assert sign > 0
    return 0.5 * len(cov) * (1.0 + LOG_2PI) + 0.5 * log_det


def estimate(
    form: str,
    model: LinearGaussianModel,
    q: Gaussian,
    x: np.ndarray,
    eps: np.ndarray,
    bug: str | None = None,
) -> float:
    """The ``form`` estimate at noise ``eps``; ``bug`` names a mistake to make."""
    factor = q.scale_tril
    z = q.mean + (eps @ factor if bug == "transposed" else eps @ factor.T)
    likelihood = log_likelihood(model, x, z)
    prior = log_prior(model, z)
    log_q = log_normal(z, q.mean, q.cov)
    k = q.dim
    if form == "joint":
        if bug == "missing_log_q":
            return float(np.mean(likelihood + prior))
        if bug == "log_q_added":
            return float(np.mean(likelihood + prior + log_q))
        if bug == "no_log_prior":
            return float(np.mean(likelihood - log_q))
        return float(np.mean(likelihood + prior - log_q))
    if form == "analytic_kl":
        prior_mean, prior_cov = model.prior.mean, model.prior.cov
        if bug == "standard_prior":
            prior_mean, prior_cov = np.zeros(k), np.eye(k)
        terms = kl_terms(q.mean, q.cov, prior_mean, prior_cov)
        divergence = float(np.mean(terms) if bug == "kl_mean_over_dims" else np.sum(terms))
        if bug == "kl_reversed":
            divergence = kl(prior_mean, prior_cov, q.mean, q.cov)
        if bug == "kl_added":
            return float(np.mean(likelihood)) + divergence
        if bug == "log_joint":
            return float(np.mean(likelihood + prior)) - divergence
        return float(np.mean(likelihood)) - divergence
    assert form == "analytic_entropy"
    h = entropy(q.cov)
    if bug == "entropy_variance_scale":  # log det S where 1/2 log det S belongs
        h = 0.5 * k * (1.0 + LOG_2PI) + np.linalg.slogdet(q.cov)[1]
    if bug == "entropy_no_constant":
        h = 0.5 * np.linalg.slogdet(q.cov)[1]
    if bug == "entropy_sign":
        h = -h
    if bug == "no_log_prior":
        return float(np.mean(likelihood)) + h
    return float(np.mean(likelihood + prior)) + h


def pathwise(form: str, bug: str | None = None) -> Callable[..., float]:
    def fn(model: LinearGaussianModel, q: Gaussian, x: np.ndarray, eps: np.ndarray) -> float:
        return estimate(form, model, q, x, eps, bug)

    return fn


def statistical(form: str, bug: str | None = None) -> Callable[..., float]:
    def fn(
        model: LinearGaussianModel, q: Gaussian, x: np.ndarray, rng: np.random.Generator, n: int
    ) -> float:
        return estimate(form, model, q, x, rng.standard_normal((n, q.dim)), bug)

    return fn


def diagnosis(failure: pytest.ExceptionInfo[AssertionError]) -> str:
    return "\n".join(line for line in str(failure.value).splitlines() if "Diagnosis" in line)


# ---------------------------------------------------------------------- exact values
@st.composite
def problems_with_noise(draw: st.DrawFn) -> tuple[ElboProblem, np.ndarray]:
    problem = draw(elbo_problems(max_data_dim=4, max_latent_dim=3))
    n = draw(st.integers(1, 3))
    k = problem.model.latent_dim
    eps = draw(st.lists(st.floats(-3.0, 3.0), min_size=n * k, max_size=n * k))
    return problem, np.array(eps).reshape(n, k)


def scipy_pieces(problem: ElboProblem, z: np.ndarray) -> dict[str, Any]:
    """Every term from scipy.stats on dense matrices: an independent route."""
    model, q, x = problem.model, problem.q, problem.x
    psi = noise_matrix(model)
    likelihood = np.array(
        [
            scipy.stats.multivariate_normal(model.weights @ row + model.bias, psi).logpdf(x)
            for row in z
        ]
    )
    prior = scipy.stats.multivariate_normal(model.prior.mean, model.prior.cov)
    posterior = scipy.stats.multivariate_normal(q.mean, q.cov)
    prior_log = np.atleast_1d(prior.logpdf(z))
    q_log = np.atleast_1d(posterior.logpdf(z))
    # KL(q || p) by its textbook formula, H(q) from scipy.
    s0_inv = np.linalg.inv(model.prior.cov)
    offset = model.prior.mean - q.mean
    divergence = 0.5 * (
        np.trace(s0_inv @ q.cov)
        + offset @ s0_inv @ offset
        - q.dim
        + np.linalg.slogdet(model.prior.cov)[1]
        - np.linalg.slogdet(q.cov)[1]
    )
    return {
        "likelihood": likelihood,
        "prior": prior_log,
        "q": q_log,
        "kl": divergence,
        "entropy": float(posterior.entropy()),
    }


@given(problems_with_noise())
@settings(max_examples=40, deadline=None)
def test_each_form_exact_value_matches_scipy_on_dense_matrices(
    case: tuple[ElboProblem, np.ndarray],
) -> None:
    """pathwise_value of every form equals its formula evaluated with scipy.stats."""
    problem, eps = case
    z = problem.q.mean + eps @ problem.q.scale_tril.T
    p = scipy_pieces(problem, z)
    independent = {
        "joint": np.mean(p["likelihood"] + p["prior"] - p["q"]),
        "analytic_kl": np.mean(p["likelihood"]) - p["kl"],
        "analytic_entropy": np.mean(p["likelihood"] + p["prior"]) + p["entropy"],
    }
    for name, form in FORMS.items():
        got = form.pathwise_value(problem.model, problem.q, problem.x, z)
        scale = form.magnitude(problem.model, problem.q, problem.x, z) + 1.0
        assert abs(got - independent[name]) <= 1e-9 * scale, (name, got, independent[name])
        # The user-style implementation above agrees too (it is what the tests rely on).
        mine = estimate(name, problem.model, problem.q, problem.x, eps)
        assert abs(mine - independent[name]) <= 1e-9 * scale, (name, mine)


def test_the_forms_share_the_elbo_as_expectation_but_differ_per_sample() -> None:
    """Averaged over many samples every form approaches model.elbo; per sample they differ."""
    model = LinearGaussianModel(
        weights=[[1.0, -0.5], [0.3, 2.0], [0.0, 1.0]],
        bias=[0.2, -0.1, 0.4],
        prior=Gaussian.from_covariance(mean=[0.5, -1.0], cov=[[2.0, 0.3], [0.3, 0.5]]),
        noise_cov=[0.5, 1.0, 2.0],
    )
    x = np.array([1.0, -0.5, 0.3])
    q = Gaussian.from_covariance(mean=[0.1, -0.4], cov=[[0.3, 0.1], [0.1, 0.2]])
    eps = np.random.default_rng(1).standard_normal((200_000, 2))
    z = q.mean + eps @ q.scale_tril.T
    elbo = float(model.elbo(q, x))
    values = {name: form.pathwise_value(model, q, x, z) for name, form in FORMS.items()}
    for name, value in values.items():
        assert abs(value - elbo) < 0.02, (name, value, elbo)
    one = {name: form.pathwise_value(model, q, x, z[:2]) for name, form in FORMS.items()}
    assert len({round(v, 6) for v in one.values()}) == 3, one


# ---------------------------------------------------------------------- correct code passes
@pytest.mark.parametrize("form", FORM_NAMES)
def test_a_correct_implementation_of_each_form_passes_both_modes(form: str) -> None:
    report = verify_elbo_estimator(statistical(form), form=form, calls=120, n_problems=3)
    assert 0.0 < report.worst_error < 1.0
    assert report.details["form"] == form
    report = verify_elbo_estimator(pathwise(form), mode="pathwise", form=form, max_examples=40)
    assert report.cases == 40
    if form != "joint":
        assert f"form='{form}'" in report.check


def test_the_form_objects_are_accepted_as_well_as_their_names() -> None:
    verify_elbo_estimator(
        pathwise("analytic_kl"), mode="pathwise", form=ANALYTIC_KL, max_examples=10
    )
    verify_elbo_estimator(statistical("joint"), form=JOINT, calls=80, n_problems=1)


def test_the_statistical_target_is_the_elbo_for_every_form() -> None:
    """An unbiased estimator of one form passes the statistical check of another."""
    verify_elbo_estimator(statistical("analytic_kl"), form="joint", calls=80, n_problems=2)
    verify_elbo_estimator(statistical("joint"), form="analytic_entropy", calls=80, n_problems=2)


# ---------------------------------------------------------------------- forms differ per sample
@pytest.mark.parametrize(
    ("written", "checked"),
    [
        ("analytic_kl", "joint"),
        ("joint", "analytic_kl"),
        ("analytic_entropy", "analytic_kl"),
        ("joint", "analytic_entropy"),
    ],
)
def test_another_forms_correct_code_fails_pathwise_and_is_named(written: str, checked: str) -> None:
    with pytest.raises(AssertionError) as failure:
        verify_elbo_estimator(pathwise(written), mode="pathwise", form=checked, max_examples=30)
    text = diagnosis(failure)
    assert f"fn computes {FORMS[written].title}" in text, text
    assert f"form={written!r}" in str(failure.value)


# ---------------------------------------------------------------------- bugs
PATHWISE_BUGS = [
    ("joint", "missing_log_q", "log q(z) is missing"),
    ("joint", "log_q_added", "log q(z) is added instead of subtracted"),
    ("joint", "no_log_prior", "log p(z) is missing"),
    ("analytic_kl", "kl_added", "the KL is added instead of subtracted"),
    ("analytic_kl", "kl_mean_over_dims", "the KL is averaged over latent dimensions"),
    ("analytic_kl", "standard_prior", "computed against N(0, I)"),
    ("analytic_kl", "kl_reversed", "the KL is taken in the wrong direction"),
    ("analytic_kl", "log_joint", "log p(x, z) is used where log p(x | z) belongs"),
    ("analytic_entropy", "entropy_sign", "the entropy has the wrong sign"),
    ("analytic_entropy", "entropy_variance_scale", "the entropy uses the variance as the scale"),
    ("analytic_entropy", "entropy_no_constant", "constant K/2 (1 + log 2 pi) is missing"),
    ("analytic_entropy", "no_log_prior", "log p(z) is missing"),
]
#: A transposed factor needs K >= 2 and a full q: shrinking it takes 10-60 s, so it is
#: checked statistically and through the catalogue below instead.
SAMPLING_BUGS = [(form, "transposed", "transposed Cholesky factor") for form in FORM_NAMES]

#: Small models keep hypothesis' shrinking (most of the time of a failing check) short.
SMALL = {"max_data_dim": 1, "max_latent_dim": 2}


@pytest.mark.parametrize(("form", "bug", "named"), PATHWISE_BUGS)
def test_pathwise_bugs_fail_with_the_forms_suspect_named(form: str, bug: str, named: str) -> None:
    with pytest.raises(AssertionError) as failure:
        verify_elbo_estimator(
            pathwise(form, bug), mode="pathwise", form=form, max_examples=40, **SMALL
        )
    text = diagnosis(failure)
    assert named in text, text
    assert f"form: {FORMS[form].title}" in str(failure.value)


STATISTICAL_BUGS = [
    ("joint", "log_q_added", "log q(z) is added instead of subtracted"),
    ("joint", "transposed", "transposed Cholesky factor"),
    ("analytic_kl", "kl_added", "the KL is added instead of subtracted"),
    ("analytic_kl", "standard_prior", "computed against N(0, I)"),
    ("analytic_kl", "kl_mean_over_dims", "the KL is averaged over latent dimensions"),
    ("analytic_entropy", "entropy_sign", "the entropy has the wrong sign"),
    ("analytic_entropy", "entropy_variance_scale", "the entropy uses the variance as the scale"),
    ("analytic_entropy", "no_log_prior", "log p(z) is missing"),
    *SAMPLING_BUGS,
]


@pytest.mark.parametrize(("form", "bug", "named"), STATISTICAL_BUGS)
def test_statistical_bugs_are_biased_with_the_forms_suspect_named(
    form: str, bug: str, named: str
) -> None:
    with pytest.raises(AssertionError, match="the estimator is biased") as failure:
        verify_elbo_estimator(statistical(form, bug), form=form, calls=80, n_problems=2)
    text = diagnosis(failure)
    assert named in text, text


@pytest.mark.parametrize(("form", "bug", "named"), PATHWISE_BUGS + SAMPLING_BUGS)
def test_each_named_suspect_predicts_its_bug_exactly(form: str, bug: str, named: str) -> None:
    """On fixed problems (full q, general prior) the named pathwise suspect reproduces the
    buggy code's value, and no suspect of the form fits the correct code."""
    from elbo_check.testing._problems import _statistical_problems

    suspects = FORMS[form].pathwise_suspects()
    chosen = [s for s in suspects if named in s.name]
    assert len(chosen) == 1, [s.name for s in chosen]
    rng = np.random.default_rng(7)
    for model, q, x in _statistical_problems(0, 3, {}):
        eps = rng.standard_normal((3, q.dim))
        buggy = estimate(form, model, q, x, eps, bug)
        correct = estimate(form, model, q, x, eps)
        if buggy == pytest.approx(correct, rel=1e-12):
            continue  # no bug here: the N(0, I) KL where the prior is standard
        assert chosen[0].predict(model, q, x, eps) == pytest.approx(buggy, rel=1e-9, abs=1e-9)
        for suspect in suspects:
            predicted = suspect.predict(model, q, x, eps)
            assert predicted is None or abs(predicted - correct) > 1e-6, suspect.name


# ---------------------------------------------------------------------- the argument
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("kl", "form must be one of 'joint', 'analytic_kl', 'analytic_entropy'; got form='kl'"),
        ("Analytic-KL", "did you mean 'analytic_kl'"),
        ("", "got form=''"),
        (None, "got form=None (NoneType)"),
        (2, "got form=2 (int)"),
        (ElboForm(), "got form=ElboForm('') (ElboForm)"),
    ],
)
@pytest.mark.parametrize("mode", ["statistical", "pathwise"])
def test_a_bad_form_is_refused_before_fn_is_called(value: Any, message: str, mode: str) -> None:
    calls: list[int] = []

    def fn(*args: Any) -> float:
        calls.append(1)
        return 0.0

    with pytest.raises(InvalidInputError) as refused:
        verify_elbo_estimator(fn, mode=mode, form=value)
    assert message in str(refused.value)
    assert not calls


def test_check_form_returns_the_form_objects() -> None:
    assert check_form("joint") is JOINT
    assert check_form("analytic_kl") is ANALYTIC_KL
    assert check_form(ANALYTIC_ENTROPY) is ANALYTIC_ENTROPY
    assert list(FORMS) == list(FORM_NAMES)
    for form in FORMS.values():
        assert form.name in form.describe()
        assert form.formula in form.describe()
