"""verify_elbo_estimator(fn, batch_size=B): minibatch estimators in both modes.

The estimators here are written from scratch in numpy, the way batched VAE code is:
``q.mean`` (B, K), ``q.scale_tril`` (B, K, K), ``x`` (B, D), noise ``eps`` of shape
(n, B, K) (sample axis first), one estimate per row, shape (B,). Each form passes both
modes; batch-axis mistakes fail with the member and the kind of mistake named.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from elbo_check import Gaussian, InvalidInputError, LinearGaussianModel
from elbo_check.strategies import ElboProblem, elbo_problems
from elbo_check.testing import verify_elbo_estimator

LOG_2PI = float(np.log(2.0 * np.pi))
FORMS = ("joint", "analytic_kl", "analytic_entropy")
#: Few calls, problems and examples: each test well under a few seconds.
STAT = {"calls": 80, "n_problems": 2}
PATH = {"max_examples": 25}


# ---------------------------------------------------------------------- a user's batched code
def dense_noise(model: LinearGaussianModel) -> np.ndarray:
    noise = np.asarray(model.noise_cov, dtype=float)
    if noise.ndim == 0:
        return float(noise) * np.eye(model.data_dim)
    return np.diag(noise) if noise.ndim == 1 else noise


def log_normal(points: np.ndarray, mean: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """log N(points; mean, L L^T) over the last axis; factor (..., K, K) broadcasts."""
    diff = points - mean
    white = np.linalg.solve(factor, diff[..., None])[..., 0]
    log_det = 2.0 * np.sum(np.log(np.diagonal(factor, axis1=-2, axis2=-1)), axis=-1)
    k = points.shape[-1]
    return -0.5 * (k * LOG_2PI + log_det + np.sum(white**2, axis=-1))


def batched_estimate(
    form: str,
    model: LinearGaussianModel,
    q: Gaussian,
    x: np.ndarray,
    eps: np.ndarray,
    bug: str = "",
) -> Any:
    """Estimates of shape (B,) from noise (n, B, K); ``bug`` names a mistake to make."""
    mean, factor = q.mean, q.scale_tril  # (B, K), (B, K, K)
    if bug == "member 0's q":
        mean = np.broadcast_to(mean[0], mean.shape)
        factor = np.broadcast_to(factor[0], factor.shape)
    z = mean + np.einsum("bij,nbj->nbi", factor, eps)  # (n, B, K)
    noise_factor = np.linalg.cholesky(dense_noise(model))
    likelihood = log_normal(x, z @ model.weights.T + model.bias, noise_factor)  # (n, B)
    prior = log_normal(z, model.prior.mean, model.prior.scale_tril)
    log_q = log_normal(z, mean, factor)
    k = q.dim
    if form == "joint":
        values = np.mean(likelihood + prior - log_q, axis=0)
    elif form == "analytic_kl":
        s0 = model.prior.cov
        s0_inv = np.linalg.inv(s0)
        cov = factor @ np.swapaxes(factor, -1, -2)
        offset = model.prior.mean - mean
        kl = 0.5 * (
            np.einsum("ij,bji->b", s0_inv, cov)
            + np.einsum("bi,ij,bj->b", offset, s0_inv, offset)
            - k
            + np.linalg.slogdet(s0)[1]
            - 2.0 * np.sum(np.log(np.diagonal(factor, axis1=-2, axis2=-1)), axis=-1)
        )
        if bug == "KL averaged over the batch":
            kl = np.full_like(kl, np.mean(kl))
        values = np.mean(likelihood, axis=0) + (kl if bug == "KL added" else -kl)
    else:
        entropy = 0.5 * k * (1.0 + LOG_2PI) + np.sum(
            np.log(np.diagonal(factor, axis1=-2, axis2=-1)), axis=-1
        )
        values = np.mean(likelihood + prior, axis=0) + entropy
    if bug == "summed over the batch":
        return np.sum(values)
    if bug == "member 1 biased":
        values = values.copy()
        values[1] += 10.0
    return values


def pathwise(form: str, bug: str = "") -> Callable[..., Any]:
    def fn(model: LinearGaussianModel, q: Gaussian, x: np.ndarray, eps: np.ndarray) -> Any:
        return batched_estimate(form, model, q, x, eps, bug)

    return fn


def statistical(form: str, bug: str = "") -> Callable[..., Any]:
    def fn(
        model: LinearGaussianModel, q: Gaussian, x: np.ndarray, rng: np.random.Generator, n: int
    ) -> Any:
        eps = rng.standard_normal((n, *q.batch_shape, q.dim))
        return batched_estimate(form, model, q, x, eps, bug)

    return fn


# ---------------------------------------------------------------------- correct code passes
@pytest.mark.parametrize("form", FORMS)
def test_a_correct_batched_estimator_passes_both_modes(form: str) -> None:
    report = verify_elbo_estimator(statistical(form), form=form, batch_size=3, **STAT)
    assert report.check == "verify_elbo_estimator(batch_size=3)"
    assert report.details["members"] == 6
    assert 0.0 < report.worst_error < 1.0
    report = verify_elbo_estimator(pathwise(form), mode="pathwise", form=form, batch_size=3, **PATH)
    assert "batch_size=3" in report.check
    assert report.worst_error < 1.0


def test_fn_receives_a_batch_with_a_covariance_per_member() -> None:
    seen: list[tuple[Any, ...]] = []

    def spy(model: LinearGaussianModel, q: Gaussian, x: np.ndarray, eps: np.ndarray) -> Any:
        seen.append((q.mean.shape, q.scale_tril.shape, x.shape, eps.shape, model.latent_dim))
        return batched_estimate("joint", model, q, x, eps)

    verify_elbo_estimator(spy, mode="pathwise", batch_size=4, max_examples=10)
    for mean, factor, x, eps, k in seen:
        assert mean == (4, k)
        assert factor == (4, k, k)
        assert x[0] == 4
        assert eps[1:] == (4, k)  # (n, B, K): the sample axis first
    stat: list[bool] = []

    def stat_spy(model: LinearGaussianModel, q: Gaussian, x: np.ndarray, rng: Any, n: int) -> Any:
        stat.append(q.batch_shape == (4,) and not np.allclose(q.cov[0], q.cov[1]))
        return statistical("joint")(model, q, x, rng, n)

    verify_elbo_estimator(stat_spy, batch_size=4, **STAT)
    assert stat
    assert all(stat)


# ---------------------------------------------------------------------- batched bugs
def message(failure: pytest.ExceptionInfo[AssertionError]) -> str:
    return str(failure.value)


@pytest.mark.parametrize("mode", ["statistical", "pathwise"])
def test_summing_over_the_batch_is_a_wrong_shape(mode: str) -> None:
    fn = (statistical if mode == "statistical" else pathwise)("joint", "summed over the batch")
    options = STAT if mode == "statistical" else PATH
    with pytest.raises(AssertionError) as failure:
        verify_elbo_estimator(fn, mode=mode, batch_size=4, **options)
    text = message(failure)
    assert "fn must return one ELBO estimate per batch member, shape (4,); got shape ()" in text
    assert "summed or averaged over the batch axis" in text
    assert "a batch of 4" in text


@pytest.mark.parametrize(
    ("form", "bug"), [("analytic_kl", "KL averaged over the batch"), ("joint", "member 0's q")]
)
@pytest.mark.parametrize("mode", ["statistical", "pathwise"])
def test_members_that_interact_are_named(form: str, bug: str, mode: str) -> None:
    fn = (statistical if mode == "statistical" else pathwise)(form, bug)
    options = STAT if mode == "statistical" else PATH
    with pytest.raises(AssertionError) as failure:
        verify_elbo_estimator(fn, mode=mode, form=form, batch_size=3, **options)
    text = message(failure)
    assert "of the batch of 3 (" in text
    assert "members fail)" in text
    assert "Diagnosis: the members of a batch interact" in text, text


@pytest.mark.parametrize("mode", ["statistical", "pathwise"])
def test_a_bias_of_one_member_names_that_member(mode: str) -> None:
    fn = (statistical if mode == "statistical" else pathwise)("joint", "member 1 biased")
    options = STAT if mode == "statistical" else PATH
    with pytest.raises(AssertionError) as failure:
        verify_elbo_estimator(fn, mode=mode, batch_size=3, **options)
    text = message(failure)
    assert "member 1 of the batch of 3 (1 of 3 members fail)" in text, text
    assert "interact" not in text  # its value does not depend on its batch-mates


@pytest.mark.parametrize("mode", ["statistical", "pathwise"])
def test_the_forms_own_bug_is_named_in_a_batch(mode: str) -> None:
    """A batched estimator with an unbatched bug: the form's suspect, found by packing the
    failing member (and the diagnosis' other problems) into batches of copies."""
    fn = (statistical if mode == "statistical" else pathwise)("analytic_kl", "KL added")
    options = STAT if mode == "statistical" else PATH
    with pytest.raises(AssertionError) as failure:
        verify_elbo_estimator(fn, mode=mode, form="analytic_kl", batch_size=2, **options)
    text = message(failure)
    assert "Diagnosis: the KL is added instead of subtracted" in text, text
    assert "interact" not in text


def test_a_batched_estimator_that_edits_its_input_is_reported() -> None:
    def edits(
        model: LinearGaussianModel, q: Gaussian, x: np.ndarray, rng: np.random.Generator, n: int
    ) -> Any:
        values = statistical("joint")(model, q, x, rng, n)
        x -= 1.0
        return values

    with pytest.raises(AssertionError, match="fn changed its input x in place"):
        verify_elbo_estimator(edits, batch_size=2, **STAT)


# ---------------------------------------------------------------------- the arguments
@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True, "4"])
@pytest.mark.parametrize("mode", ["statistical", "pathwise"])
def test_batch_size_is_validated_before_fn_is_called(batch_size: Any, mode: str) -> None:
    called: list[int] = []

    def fn(*args: Any) -> float:
        called.append(1)
        return 0.0

    with pytest.raises(InvalidInputError, match=r"batch_size must be None or an int >= 1; got"):
        verify_elbo_estimator(fn, mode=mode, batch_size=batch_size)
    assert not called


def test_a_strategy_of_batches_is_drawn_from() -> None:
    strategy = elbo_problems(batch_shape=(3,), shared_covariance=False, max_latent_dim=2)
    report = verify_elbo_estimator(
        statistical("analytic_kl"), form="analytic_kl", batch_size=3, problems=strategy, **STAT
    )
    assert report.cases == 2
    with pytest.raises(InvalidInputError, match=r"problems \(a drawn problem\): with batch_size=3"):
        verify_elbo_estimator(statistical("joint"), batch_size=3, problems=elbo_problems(), **STAT)


def _batch_of(size: int) -> ElboProblem:
    from elbo_check._random import random_gaussian, random_model

    rng = np.random.default_rng(5)
    model = random_model(rng, data_dim=3, latent_dim=2)
    q = random_gaussian(rng, 2, batch_shape=(size,), shared_covariance=False)
    return ElboProblem(model, q, model.sample(size, rng)[0])


@pytest.mark.parametrize("mode", ["statistical", "pathwise"])
def test_the_users_problems_are_batches(mode: str) -> None:
    fn = (statistical if mode == "statistical" else pathwise)("joint")
    options: dict[str, Any] = {"calls": 80} if mode == "statistical" else {"max_examples": 10}
    report = verify_elbo_estimator(fn, mode=mode, batch_size=3, problems=[_batch_of(3)], **options)
    assert report.worst_error < 1.0
    with pytest.raises(InvalidInputError) as refused:
        verify_elbo_estimator(fn, mode=mode, batch_size=2, problems=[_batch_of(3)], **options)
    text = str(refused.value)
    assert "problems[0]: with batch_size=2 every problem is one batch" in text
    assert "got q of batch shape (3,) and x of shape (3, 3)" in text
