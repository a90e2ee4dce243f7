"""The problems of a batched check: a user's batches checked, the verifier's own grown.

With ``batch_size=B`` every problem is one batch: one model, a q of batch shape ``(B,)``
with a covariance per member, and ``x`` of shape ``(B, D)``. A user's problems must be
batches already (:func:`as_batch` says clearly what was expected and seen); the
statistical checks grow each of their own realistic problems into a batch
(:func:`grown_batch`). Shared by the batched estimator and gradient checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st
from numpy.typing import NDArray

from .._errors import InvalidInputError
from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ..strategies import ElboProblem
from ._batching import member, stack_gaussians
from ._cases import kind_of, statistical_cases
from ._estimator_diagnosis import near_posterior

__all__ = ["as_batch", "batched_statistical_cases", "check_batches", "grown_batch"]

FloatArray = NDArray[np.float64]
Triple = tuple[LinearGaussianModel, Gaussian, FloatArray]


def as_batch(label: str, model: LinearGaussianModel, q: Gaussian, x: Any, size: int) -> Triple:
    """A user's batch problem, q with a covariance per member; a clear error otherwise."""
    data = np.asarray(x, dtype=np.float64)
    if q.batch_shape != (size,) or data.shape != (size, model.data_dim):
        raise InvalidInputError(
            f"{label}: with batch_size={size} every problem is one batch: q with "
            f"batch shape ({size},) (q.mean of shape ({size}, K), a scale_tril per member) "
            f"and x of shape ({size}, D) = ({size}, {model.data_dim}); got q of batch shape "
            f"{q.batch_shape} and x of shape {data.shape}"
        )
    return model, stack_gaussians([member(q, b) for b in range(size)]), data


def check_batches(problems: Sequence[ElboProblem], size: int) -> list[ElboProblem]:
    """The user's batch problems, checked (see :func:`as_batch`)."""
    return [
        ElboProblem(*as_batch(f"problems[{i}]", p.model, p.q, p.x, size))
        for i, p in enumerate(problems)
    ]


def grown_batch(
    model: LinearGaussianModel, q: Gaussian, x: FloatArray, size: int, seed: list[int]
) -> Triple:
    """A batch of ``size`` members sharing ``model``: ``(q, x)`` first, then observations
    drawn from the model, each with a q of q's covariance kind near its posterior."""
    rng = np.random.default_rng([*seed, 2025])
    members, rows = [q], [x]
    for _ in range(size - 1):
        row = model.sample(1, rng)[0][0]
        members.append(near_posterior(model, row, rng, kind_of(q)))
        rows.append(row)
    return model, stack_gaussians(members), np.stack(rows)


def batched_statistical_cases(
    problems: Any,
    n_problems: int | None,
    size: int,
    *,
    default_count: int,
    seed: int,
    q_kinds: Sequence[str],
    model_options: dict[str, Any],
    calls: int,
) -> list[Triple]:
    """The batches of a batched statistical check.

    The verifier's own: each of its ``n_problems`` problems grown into a batch sharing
    its model. The user's (a sequence or a strategy): every problem must be a batch of
    ``size`` members already.
    """
    cases = statistical_cases(
        problems,
        n_problems,
        default_count=default_count,
        seed=seed,
        q_kinds=q_kinds,
        model_options=model_options,
        calls=calls,
    )
    own = problems is None or (
        isinstance(problems, (int, np.integer)) and not isinstance(problems, bool)
    )  # an int is the deprecated count of the verifier's own problems
    if own:
        return [grown_batch(m, q, x, size, [seed, i]) for i, (m, q, x) in enumerate(cases)]
    drawn = isinstance(problems, st.SearchStrategy)
    return [
        as_batch("problems (a drawn problem)" if drawn else f"problems[{i}]", m, q, x, size)
        for i, (m, q, x) in enumerate(cases)
    ]
