"""Batched mode of verify_elbo / verify_kl: batched code passes, batch-axis bugs are named.

The implementations under test (tests/buggy_implementations.py, shared with the kill
matrix) are written from scratch in numpy, independent of the oracle, the way a user's
batched VAE code would be: q.mean (B, K), q.scale_tril (B, K, K), x (B, D) -> (B,).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from buggy_implementations import batched_elbo, batched_kl

from elbo_check import Gaussian, InvalidInputError, LinearGaussianModel
from elbo_check.testing import verify_elbo, verify_kl


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
        (
            "summed over the batch",
            "fn must return one ELBO per batch member, shape (4,); got shape ()",
        ),
        ("np.diagonal on the batch", "Hint: an error that appears only with batches"),
    ],
)
def test_batch_shape_mistakes_are_explained(bug: str, expected: str) -> None:
    """A scalar for the batch, and an error raised only by batched input (np.diagonal on
    (B, K, K) takes log(0) off the diagonal). The other batch-axis bugs are in the kill
    matrix (tests/buggy_implementations.py)."""

    def buggy(model: LinearGaussianModel, q: Gaussian, x: np.ndarray) -> Any:
        return batched_elbo(model, q, x, bug)

    with pytest.raises(AssertionError) as caught:
        verify_elbo(buggy, batch_size=4)
    message = str(caught.value)
    assert expected in message, message
    assert "a batch of 4" in message


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


def test_a_correct_batched_kl_passes_and_bugs_are_named() -> None:
    assert verify_kl(batched_kl, batch_size=4, max_examples=60).worst_error < 1.0
    with pytest.raises(AssertionError, match="member"):
        verify_kl(lambda p, q: batched_kl(p, q, "arguments swapped"), batch_size=4)


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True, "4"])
def test_batch_size_is_validated(batch_size: Any) -> None:
    with pytest.raises(InvalidInputError, match="batch_size must be None or an int >= 1"):
        verify_elbo(batched_elbo, batch_size=batch_size)


def test_up_to_constant_cannot_be_batched() -> None:
    with pytest.raises(InvalidInputError, match="cannot be combined"):
        verify_elbo(batched_elbo, batch_size=2, up_to_constant=True)
