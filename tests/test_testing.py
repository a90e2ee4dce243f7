"""The verifiers' own behaviour: reports, seeds, options, error messages, false alarms.

Which bugs each verifier catches is the subject of ``test_kill_matrix.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given

from elbo_check import Gaussian, InvalidInputError, LinearGaussianModel, kl_divergence
from elbo_check._config import configure, default_profile, default_seed
from elbo_check._gaussian import LOG_2PI
from elbo_check.strategies import elbo_problems
from elbo_check.testing import (
    PROFILES,
    VerificationReport,
    check_elbo,
    verify_elbo,
    verify_elbo_estimator,
    verify_elbo_gradient,
    verify_kl,
    verify_log_evidence,
)


def exact_elbo(model: LinearGaussianModel, q: Gaussian, x: np.ndarray) -> float:
    return float(model.elbo(q, x))


def no_entropy(model: LinearGaussianModel, q: Gaussian, x: np.ndarray) -> float:
    return float(model.elbo(q, x)) - q.entropy()


def mc_elbo(
    model: LinearGaussianModel, q: Gaussian, x: np.ndarray, rng: np.random.Generator, n: int
) -> float:
    z = q.mean + rng.standard_normal((n, q.dim)) @ q.scale_tril.T
    return float(np.mean(model.log_joint(x, z) - q.log_prob(z)))


def test_success_returns_a_report() -> None:
    """A correct ELBO passes and the report says what was checked, how often, how well."""
    report = verify_elbo(exact_elbo, max_examples=30)
    assert isinstance(report, VerificationReport)
    assert report.check == "verify_elbo"
    assert report.cases == 30
    assert report.worst_error == 0.0
    assert "passed on 30 cases (seed 0)" in str(report)


def test_failure_message_has_the_case_numbers_and_diagnosis() -> None:
    """The AssertionError lists the model, q, x, expected, got, gap, tolerance and a diagnosis."""
    with pytest.raises(AssertionError) as caught:
        verify_elbo(no_entropy, max_examples=50)
    text = str(caught.value)
    for piece in (
        "model: D = 1, K = 1",
        "q.mean",
        "x = ",
        "expected",
        "got",
        "tolerance",
        "Diagnosis: the entropy term H(q) is missing",
    ):
        assert piece in text, piece


def test_the_same_seed_gives_the_same_counterexample() -> None:
    """Reruns with one seed fail identically; a Generator is accepted as a seed."""
    messages = []
    for _ in range(2):
        with pytest.raises(AssertionError) as caught:
            verify_elbo(no_entropy, seed=11, max_examples=50)
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
    with pytest.raises(AssertionError):
        verify_elbo(no_entropy, seed=np.random.default_rng(3), max_examples=50)


def test_a_user_exception_is_reraised_with_the_case() -> None:
    """An exception in fn becomes an AssertionError naming the minimal case, chained to it."""

    def crashes_for_k_above_one(model: LinearGaussianModel, q: Gaussian, x: np.ndarray) -> float:
        if model.latent_dim > 1:
            raise ValueError("shapes do not align")
        return float(model.elbo(q, x))

    with pytest.raises(AssertionError) as caught:
        verify_elbo(crashes_for_k_above_one, max_examples=100)
    assert "fn raised ValueError: shapes do not align" in str(caught.value)
    assert "K = 2" in str(caught.value)
    assert isinstance(caught.value.__cause__, ValueError)


def test_a_non_scalar_result_is_reported() -> None:
    """Returning a vector where a float belongs is a failure with a clear reason."""
    with pytest.raises(AssertionError, match="fn must return a scalar"):
        verify_elbo(lambda m, q, x: np.ones(2), max_examples=5)


def test_up_to_constant_accepts_dropped_constants_only() -> None:
    """Dropping -D/2 log 2 pi passes with up_to_constant=True and is named without it."""

    def dropped(model: LinearGaussianModel, q: Gaussian, x: np.ndarray) -> float:
        return float(model.elbo(q, x)) + 0.5 * model.data_dim * LOG_2PI

    verify_elbo(dropped, up_to_constant=True, max_examples=40)
    with pytest.raises(AssertionError, match="-D/2 log\\(2 pi\\) of the likelihood is missing"):
        verify_elbo(dropped, max_examples=40)
    with pytest.raises(AssertionError, match="not a dropped constant"):
        verify_elbo(no_entropy, up_to_constant=True, max_examples=40)


def test_model_options_restrict_the_search() -> None:
    """Code that only supports diagonal noise can restrict the drawn models."""

    def diagonal_only(model: LinearGaussianModel, q: Gaussian, x: np.ndarray) -> float:
        if model.noise_kind == "full":
            raise NotImplementedError
        return float(model.elbo(q, x))

    verify_elbo(diagonal_only, noise_kinds=("isotropic", "diagonal"), max_examples=40)
    with pytest.raises(AssertionError, match="NotImplementedError"):
        verify_elbo(diagonal_only, max_examples=200)


@given(elbo_problems())
def test_check_elbo_works_inside_given(problem: object) -> None:
    """The single-case check is the tool for a user's own @given tests."""
    check_elbo(problem.model.elbo(problem.q, problem.x), problem.model, problem.q, problem.x)  # type: ignore[attr-defined]
    with pytest.raises(AssertionError, match="ELBO mismatch"):
        check_elbo(
            problem.model.elbo(problem.q, problem.x) - 1.0,  # type: ignore[attr-defined]
            problem.model,
            problem.q,
            problem.x,  # type: ignore[attr-defined]
        )


def test_kl_and_evidence_verifiers_pass_correct_code() -> None:
    """Correct KL and log-evidence code passes; a reversed KL is caught and named."""
    verify_kl(lambda p, q: kl_divergence(p, q), max_examples=40)
    verify_log_evidence(lambda m, x: m.log_evidence(x), max_examples=40)
    with pytest.raises(AssertionError, match="arguments are reversed"):
        verify_kl(lambda p, q: kl_divergence(q, p), max_examples=60)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: verify_elbo(exact_elbo, profile="fast"), "profile must be one of"),
        (lambda: verify_elbo(exact_elbo, seed="7"), "seed must be an int"),
        (lambda: verify_elbo("elbo"), "fn must be callable; got str"),
        (lambda: verify_elbo_estimator(mc_elbo, mode="exact"), "mode must be 'statistical'"),
        (lambda: verify_elbo_estimator(mc_elbo, n_samples=0), "n_samples must be a positive"),
        (lambda: verify_elbo_estimator(mc_elbo, calls=10), "calls must be an integer >= 80"),
        (lambda: verify_elbo_estimator(mc_elbo, false_alarm_rate=0.0), "false_alarm_rate must"),
        (
            lambda: verify_elbo_gradient(mc_elbo, mode="numeric"),
            "mode must be one of 'exact', 'statistical', 'pathwise'",
        ),
        (
            lambda: verify_elbo_gradient(mc_elbo, mode="statistical", n_samples=-2),
            "n_samples must be a positive integer; got n_samples=-2",
        ),
        (
            lambda: verify_elbo_gradient(mc_elbo, mode="statistical", calls=40),
            "calls must be an integer >= 80; got calls=40",
        ),
    ],
)
def test_bad_options_are_rejected(call: object, message: str) -> None:
    """Options are validated before any work is done, naming the option and value."""
    with pytest.raises(InvalidInputError, match=message):
        call()  # type: ignore[operator]


def test_profiles_and_seed_defaults_come_from_configure() -> None:
    """configure() (used by the pytest plugin) sets the defaults; None restores them."""
    try:
        configure(seed=5, profile="ci")
        assert (default_seed(), default_profile()) == (5, "ci")
        report = verify_elbo(exact_elbo)
        assert report.seed == 5
        assert report.cases == PROFILES["ci"]["max_examples"]
    finally:
        configure()
    assert (default_seed(), default_profile()) == (0, "dev")


def test_statistical_verifier_passes_a_correct_estimator_on_many_seeds() -> None:
    """No false alarm over 10 seeds; worst |t| / critical stays well below 1.

    With the stated false-alarm rate of 1e-6 per call a failure here would be a
    one-in-100000 event, so any failure means the test is miscalibrated.
    """
    worst = 0.0
    for seed in range(10):
        report = verify_elbo_estimator(mc_elbo, seed=seed, calls=200, n_problems=2)
        worst = max(worst, report.worst_error)
    assert worst < 1.0


def test_batch_t_statistics_are_calibrated() -> None:
    """Under the null the t statistics follow Student t(39): the 5% two-sided tail holds.

    400 problems' statistics; the count beyond the 5% point is Binomial(400, 0.05),
    whose 1e-6 two-sided acceptance interval is [3, 48] (exact binomial quantiles).
    """
    import scipy.stats

    from elbo_check.testing import BATCHES
    from elbo_check.testing._statistics import _batch_t

    rng = np.random.default_rng(0)
    values = rng.exponential(size=(400, 400)) - 1.0  # skewed single estimates, mean 0
    t = np.array([_batch_t(values[:, j], np.array(0.0))[2] for j in range(400)])
    beyond = int(np.sum(np.abs(t) > scipy.stats.t.isf(0.025, BATCHES - 1)))
    low, high = scipy.stats.binom.ppf([5e-7, 1 - 5e-7], 400, 0.05)
    assert low <= beyond <= high, (beyond, low, high)
    assert math.isfinite(float(np.max(np.abs(t))))


def test_an_estimator_that_ignores_its_rng_is_flagged() -> None:
    """Identical estimates across calls that differ from the ELBO are called out."""
    fixed = np.random.default_rng(0)
    state = fixed.bit_generator.state

    def ignores_rng(
        model: LinearGaussianModel, q: Gaussian, x: np.ndarray, rng: object, n: int
    ) -> float:
        own = np.random.default_rng(0)
        own.bit_generator.state = state
        return mc_elbo(model, q, x, own, n)

    with pytest.raises(AssertionError, match="does fn ignore its rng argument"):
        verify_elbo_estimator(ignores_rng, calls=80, n_problems=1)


def test_gradient_verifier_exact_and_statistical() -> None:
    """Closed-form gradients pass exactly; a reparameterised estimate passes statistically."""

    def exact(
        model: LinearGaussianModel, q: Gaussian, x: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        g = model.elbo_grad_variational(q, x)
        return g.mean, g.scale_tril

    def reparameterised(
        model: LinearGaussianModel, q: Gaussian, x: np.ndarray, rng: np.random.Generator, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        eps = rng.standard_normal((n, q.dim))
        z = q.mean + eps @ q.scale_tril.T
        residual = model.dense_noise_cov()
        score = (
            np.linalg.solve(residual, (x - model.bias - z @ model.weights.T).T).T @ model.weights
        )
        score -= np.linalg.solve(model.prior.cov, (z - model.prior.mean).T).T
        grad_factor = np.tril(score.T @ eps / n) + np.diag(1.0 / np.diagonal(q.scale_tril))
        return score.mean(axis=0), grad_factor

    assert verify_elbo_gradient(exact, max_examples=40).cases == 40
    report = verify_elbo_gradient(reparameterised, mode="statistical", calls=200, n_problems=2)
    assert 0.0 < report.worst_error < 1.0  # > 0: the t statistics were really computed


def test_a_score_function_gradient_passes_and_a_biased_one_fails() -> None:
    """The high-variance score-function estimator is unbiased and passes; a score of L that
    lacks its -L^-T term (d/dL of -log det L) is biased by -E[weight] diag(1/L) and fails.

    (Dropping log q from the weight biases the factor gradient by only -diag(1/L); with
    this estimator's variance that needs far more calls than the default to detect.)"""

    def score_function(
        model: LinearGaussianModel,
        q: Gaussian,
        x: np.ndarray,
        rng: np.random.Generator,
        n: int,
        complete_score: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        eps = rng.standard_normal((n, q.dim))
        z = q.mean + eps @ q.scale_tril.T
        weight = model.log_joint(x, z) - q.log_prob(z)
        inverse = np.linalg.inv(q.scale_tril)
        grad_mean = np.mean(weight[:, None] * (eps @ inverse), axis=0)
        outer = np.einsum("n,ni,nj->ij", weight, eps, eps) / n
        grad_factor = np.tril(inverse.T @ outer - complete_score * np.mean(weight) * inverse.T)
        return grad_mean, grad_factor

    report = verify_elbo_gradient(score_function, mode="statistical", calls=400, n_problems=2)
    assert 0.0 < report.worst_error < 1.0
    with pytest.raises(AssertionError, match="biased coordinates"):
        verify_elbo_gradient(
            lambda m, q, x, rng, n: score_function(m, q, x, rng, n, complete_score=False),
            mode="statistical",
            calls=400,
            n_problems=2,
        )


def test_statistical_checks_honour_model_options() -> None:
    """Estimators without full-noise support can be verified; unknown options are refused."""

    def diagonal_only(
        model: LinearGaussianModel, q: Gaussian, x: np.ndarray, rng: np.random.Generator, n: int
    ) -> float:
        if model.noise_kind == "full":
            raise NotImplementedError("diagonal noise only")
        return mc_elbo(model, q, x, rng, n)

    def diagonal_pathwise(
        model: LinearGaussianModel, q: Gaussian, x: np.ndarray, eps: np.ndarray
    ) -> float:
        if model.noise_kind == "full":
            raise NotImplementedError("diagonal noise only")
        z = q.mean + eps @ q.scale_tril.T
        return float(np.mean(model.log_joint(x, z) - q.log_prob(z)))

    def diagonal_gradient(
        model: LinearGaussianModel, q: Gaussian, x: np.ndarray, rng: object, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        if model.noise_kind == "full":
            raise NotImplementedError("diagonal noise only")
        g = model.elbo_grad_variational(q, x)
        return g.mean, g.scale_tril

    kinds = {"noise_kinds": ("isotropic", "diagonal")}
    with pytest.raises(AssertionError, match="NotImplementedError"):
        verify_elbo_estimator(diagonal_only, calls=80, n_problems=1)
    verify_elbo_estimator(diagonal_only, calls=80, n_problems=3, **kinds)
    verify_elbo_estimator(diagonal_pathwise, mode="pathwise", max_examples=30, **kinds)
    verify_elbo_gradient(diagonal_gradient, mode="statistical", calls=80, n_problems=3, **kinds)
    # Options the fixed problems cannot honour draw the problems from the strategies.
    verify_elbo_estimator(mc_elbo, max_data_dim=3, calls=80, n_problems=2)
    with pytest.raises(
        InvalidInputError, match="model options must be options of linear_gaussian_models"
    ):
        verify_elbo_estimator(mc_elbo, max_data_dimension=3)
    with pytest.raises(InvalidInputError, match="no statistical test problem has"):
        verify_elbo_estimator(mc_elbo, noise_kinds=("full",), prior_kinds=("standard",))


def test_verifiers_run_with_one_blas_thread_and_restore_it() -> None:
    """Tiny BLAS calls are much slower with thread pools: verifiers limit them to one."""
    from threadpoolctl import threadpool_info

    def blas_threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    before = blas_threads()
    seen: list[list[int]] = []

    def spying_elbo(model: LinearGaussianModel, q: Gaussian, x: np.ndarray) -> float:
        seen.append(blas_threads())
        return float(model.elbo(q, x))

    verify_elbo(spying_elbo, max_examples=5)
    assert seen
    assert all(threads == [1] * len(threads) for threads in seen)
    assert blas_threads() == before
