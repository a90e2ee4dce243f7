"""Batched mode of verify_elbo / verify_kl: batched code passes, batch-axis bugs are named.

The implementations under test are written here from scratch in numpy (dense
formulas, np.linalg), independent of the oracle, the way a user's batched VAE code
would be: q.mean (B, K), q.scale_tril (B, K, K), x (B, D) -> (B,) values.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from elbo_check import Gaussian, InvalidInputError, LinearGaussianModel
from elbo_check.testing import verify_elbo, verify_kl

LOG_2PI = math.log(2 * math.pi)


def _logdet(factor: np.ndarray, bug: str) -> np.ndarray:
    if bug == "np.diagonal on the batch":
        return 2 * np.sum(np.log(np.abs(np.diagonal(factor))), axis=0)  # axes 0 and 1
    return 2 * np.sum(np.log(np.diagonal(factor, axis1=-2, axis2=-1)), axis=-1)


def batched_elbo(model: LinearGaussianModel, q: Gaussian, x: np.ndarray, bug: str = "") -> Any:
    w, b = model.weights, model.bias
    d, k = w.shape
    psi = model.dense_noise_cov()
    psi_inv = np.linalg.inv(psi)
    m, factor = q.mean, q.scale_tril
    if bug == "first row's covariance for all":
        factor = np.broadcast_to(factor[0], factor.shape)
    cov = factor @ np.swapaxes(factor, -1, -2)
    if bug == ".T on the batch":
        cov = factor @ factor.T  # (B, K, K) @ (K, K, B): wrong for B > 1
    r = x - m @ w.T - b
    trace = np.einsum("ij,bji->b", w.T @ psi_inv @ w, cov)
    ell = -0.5 * (
        d * LOG_2PI + np.linalg.slogdet(psi)[1] + np.einsum("bi,ij,bj->b", r, psi_inv, r) + trace
    )
    s0, mu0 = model.prior.cov, model.prior.mean
    s0_inv = np.linalg.inv(s0)
    delta = m - mu0
    kl_terms = np.einsum("ij,bji->b", s0_inv, cov) + np.einsum("bi,ij,bj->b", delta, s0_inv, delta)
    kl = 0.5 * (kl_terms - k + np.linalg.slogdet(s0)[1] - _logdet(factor, bug))
    if bug == "KL averaged over the batch":
        kl = np.full_like(kl, kl.mean())
    if bug == "summed over the batch":
        return float(np.sum(ell - kl))
    if bug == "entropy missing":  # E_q log p(x, z) only: KL replaced by the cross-entropy
        kl = kl + (0.5 * k * (1 + LOG_2PI) + 0.5 * _logdet(factor, ""))
    return ell - kl


def test_a_correct_batched_elbo_passes() -> None:
    report = verify_elbo(batched_elbo, batch_size=5, max_examples=60)
    assert report.check == "verify_elbo(batch_size=5)"
    assert report.worst_error < 1.0


def test_every_member_has_its_own_covariance() -> None:
    seen: list[tuple[tuple[int, ...], bool]] = []

    def spy(model: LinearGaussianModel, q: Gaussian, x: np.ndarray) -> Any:
        seen.append((q.scale_tril.shape, bool(np.all(q.scale_tril == q.scale_tril[:1]))))
        assert x.shape == (3, model.data_dim)
        return model.elbo(q, x)

    verify_elbo(spy, batch_size=3, max_examples=30)
    assert all(shape[0] == 3 for shape, _ in seen)
    assert not all(identical for _, identical in seen)  # not one covariance copied


@pytest.mark.parametrize(
    ("bug", "expected"),
    [
        ("first row's covariance for all", "the members of a batch interact"),
        ("KL averaged over the batch", "the members of a batch interact"),
        (".T on the batch", "the members of a batch interact"),
        ("np.diagonal on the batch", "the members of a batch interact"),
        ("entropy missing", "the entropy term H(q) is missing"),
        ("summed over the batch", "fn must return one ELBO per batch member, shape (4,)"),
    ],
)
def test_batch_axis_bugs_are_caught_and_named(bug: str, expected: str) -> None:
    def buggy(model: LinearGaussianModel, q: Gaussian, x: np.ndarray) -> Any:
        return batched_elbo(model, q, x, bug)

    with pytest.raises(AssertionError) as caught:
        verify_elbo(buggy, batch_size=4, max_examples=100)
    message = str(caught.value)
    if ".T" in bug or "diagonal" in bug:
        # Depending on K these bugs raise a broadcasting error or mix the members.
        assert expected in message or "Hint: an error that appears only with batches" in message
    else:
        assert expected in message, message
    assert "batch of 4" in message


def test_the_failing_member_is_reported() -> None:
    """Only member 2 is wrong: the report shows member 2 and counts one failure."""

    def wrong_third(model: LinearGaussianModel, q: Gaussian, x: np.ndarray) -> Any:
        values = batched_elbo(model, q, x)
        values[2] += 1.0
        return values

    with pytest.raises(AssertionError) as caught:
        verify_elbo(wrong_third, batch_size=3)
    message = str(caught.value)
    assert "member 2 of the batch of 3 (1 of 3 members fail)" in message
    assert "gap (got - expected) = 1;" in message


def batched_kl(p: Gaussian, q: Gaussian, bug: str = "") -> Any:
    k = p.dim
    q_inv = np.linalg.inv(q.cov)
    delta = q.mean - p.mean
    trace = np.einsum("bij,bji->b", q_inv, p.cov)
    if bug == "summed over the batch axis":
        trace = np.full_like(trace, np.einsum("bij,bji->", q_inv, p.cov))
    mahalanobis = np.einsum("bi,bij,bj->b", delta, q_inv, delta)
    log_dets = np.linalg.slogdet(q.cov)[1] - np.linalg.slogdet(p.cov)[1]
    if bug == "arguments swapped":
        log_dets = -log_dets
    return 0.5 * (trace + mahalanobis - k + log_dets)


def test_a_correct_batched_kl_passes_and_bugs_are_named() -> None:
    assert verify_kl(batched_kl, batch_size=4, max_examples=60).worst_error < 1.0
    with pytest.raises(AssertionError, match="the members of a batch interact"):
        verify_kl(lambda p, q: batched_kl(p, q, "summed over the batch axis"), batch_size=4)
    with pytest.raises(AssertionError, match="member"):
        verify_kl(lambda p, q: batched_kl(p, q, "arguments swapped"), batch_size=4)


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True, "4"])
def test_batch_size_is_validated(batch_size: Any) -> None:
    with pytest.raises(InvalidInputError, match="batch_size must be None or an int >= 1"):
        verify_elbo(batched_elbo, batch_size=batch_size)


def test_up_to_constant_cannot_be_batched() -> None:
    with pytest.raises(InvalidInputError, match="cannot be combined"):
        verify_elbo(batched_elbo, batch_size=2, up_to_constant=True)
