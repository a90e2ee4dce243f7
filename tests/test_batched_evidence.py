"""verify_log_evidence(batch_size=B): batched log p(x) code passes, batch bugs are named.

The user code is written from scratch in numpy (a dense marginal covariance and a
Cholesky solve), not with the oracle: x (B, D) -> (B,).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from elbo_check import InvalidInputError, LinearGaussianModel, ppca
from elbo_check.testing import verify_log_evidence

LOG_2PI = float(np.log(2 * np.pi))


def _marginal_cov(model: LinearGaussianModel) -> Any:
    noise = np.asarray(model.noise_cov, dtype=float)
    d = model.data_dim
    dense = noise * np.eye(d) if noise.ndim == 0 else np.diag(noise) if noise.ndim == 1 else noise
    return model.weights @ model.prior.cov @ model.weights.T + dense


def batched_log_evidence(model: LinearGaussianModel, x: np.ndarray, bug: str = "") -> Any:
    factor = np.linalg.cholesky(_marginal_cov(model))
    mean = model.weights @ model.prior.mean + model.bias
    centred = x - mean
    if bug == "centred on the batch mean":
        centred = x - x.mean(axis=0)
    r = np.linalg.solve(factor, centred.T)
    log_det = 2 * np.sum(np.log(np.diag(factor)))
    if bug == "half the log-determinant":
        log_det = log_det / 2
    values = -0.5 * (x.shape[-1] * LOG_2PI + log_det + np.sum(r * r, axis=0))
    if bug == "summed over the batch":
        return np.sum(values)
    return values


def test_a_correct_batched_log_evidence_passes() -> None:
    report = verify_log_evidence(batched_log_evidence, batch_size=4, max_examples=40)
    assert report.check == "verify_log_evidence(batch_size=4)"
    assert report.cases == 40
    assert report.worst_error < 1.0


def test_the_rows_reach_the_function_as_one_batch() -> None:
    shapes: list[tuple[int, ...]] = []

    def spy(model: LinearGaussianModel, x: np.ndarray) -> Any:
        shapes.append(x.shape)
        return batched_log_evidence(model, x)

    verify_log_evidence(spy, batch_size=3, max_examples=10)
    assert shapes
    assert all(s[0] == 3 and len(s) == 2 for s in shapes)


@pytest.mark.parametrize(
    ("bug", "expected"),
    [
        ("summed over the batch", "fn must return one log p(x) per batch member, shape (4,)"),
        ("centred on the batch mean", "the members of a batch interact"),
        ("half the log-determinant", "log-determinant term -1/2 log det C is scaled by 0.5"),
    ],
)
def test_batched_bugs_are_caught_and_named(bug: str, expected: str) -> None:
    def buggy(model: LinearGaussianModel, x: np.ndarray) -> Any:
        return batched_log_evidence(model, x, bug)

    with pytest.raises(AssertionError) as caught:
        verify_log_evidence(buggy, batch_size=4)
    message = str(caught.value)
    assert expected in message, message
    assert "verify_log_evidence(batch_size=4) failed" in message


def test_your_own_batched_problems() -> None:
    model = ppca(
        weights=[[1.0, 0.5], [0.2, -0.3], [0.0, 1.0]], mean=[0.0, 1.0, -1.0], noise_variance=0.4
    )
    rows = np.array([[0.1, 0.2, 0.3], [1.0, -1.0, 0.0]])
    report = verify_log_evidence(batched_log_evidence, batch_size=2, problems=[(model, rows)])
    assert report.cases == 1
    with pytest.raises(InvalidInputError, match=r"x must be finite of shape \(2, 3\)"):
        verify_log_evidence(batched_log_evidence, batch_size=2, problems=[(model, rows[0])])


@pytest.mark.parametrize("bad", [0, -1, 1.5, "4", True])
def test_batch_size_is_validated(bad: Any) -> None:
    with pytest.raises(InvalidInputError, match="batch_size must be None or an int >= 1"):
        verify_log_evidence(batched_log_evidence, batch_size=bad)
