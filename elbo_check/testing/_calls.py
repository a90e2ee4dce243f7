"""Calling the user's function: conversion of its returns, batching, batch interaction."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ._batching import (
    evaluate_members,
    stack_gaussians,
)
from ._returns import invoke, to_scalar

FloatArray = NDArray[np.float64]
_Problem = tuple[LinearGaussianModel, Gaussian, FloatArray]


def _call(fn: Callable[..., Any], *args: Any) -> float:
    """The user's scalar result on private copies of ``args`` (see :mod:`._returns`)."""
    return to_scalar(invoke(fn, *args))


def _one_at_a_time(fn: Callable[..., Any]) -> Callable[[list[Any]], list[float | None]]:
    """The user's unbatched function on each tuple of arguments (None where it raises)."""

    def values(problems: list[Any]) -> list[float | None]:
        out: list[float | None] = []
        for problem in problems:
            try:
                out.append(_call(fn, *problem))
            except Exception:
                out.append(None)
        return out

    return values


def _packed(fn: Callable[..., Any], size: int) -> Callable[[list[_Problem]], list[float | None]]:
    """The user's batched ELBO on each single problem, packed ``size`` to a call."""

    def values(problems: list[_Problem]) -> list[float | None]:
        out: list[float | None] = [None] * len(problems)
        for model in {id(m): m for m, _, _ in problems}.values():
            indices = [i for i, (m, _, _) in enumerate(problems) if m is model]

            def build(
                members: Sequence[tuple[Gaussian, FloatArray]], model: LinearGaussianModel = model
            ) -> tuple[Any, ...]:
                return (
                    model,
                    stack_gaussians([q for q, _ in members]),
                    np.stack([x for _, x in members]),
                )

            got = evaluate_members(
                fn, build, [(problems[i][1], problems[i][2]) for i in indices], size, "ELBO"
            )
            for i, value in zip(indices, got, strict=True):
                out[i] = None if np.isnan(value) else float(value)
        return out

    return values


def _worst_member(got: FloatArray, expected: FloatArray, tolerance: FloatArray) -> int:
    """The member that fails worst: the first non-finite value, else the largest gap/tol."""
    bad = ~np.isfinite(got)
    if np.any(bad):
        return int(np.flatnonzero(bad)[0])
    return int(np.argmax(np.abs(got - expected) / tolerance))


def _worst_of(
    compare: Callable[[Any], tuple[FloatArray, FloatArray, FloatArray]],
) -> Callable[[Any], tuple[float, float, float]]:
    """``evaluate`` for a per-member ``compare``: the worst member's (got, expected, tol)."""

    def evaluate(case: Any) -> tuple[float, float, float]:
        got, expected, tolerance = compare(case)
        i = _worst_member(got, expected, tolerance)
        return float(got[i]), float(expected[i]), float(tolerance[i])

    return evaluate


def _failing_members(got: FloatArray, expected: FloatArray, tolerance: FloatArray) -> int:
    return int(np.count_nonzero(~(np.abs(got - expected) <= tolerance)))


_BATCH_AXIS_HINT = (
    "Hint: an error that appears only with batches usually comes from an operation on "
    "the wrong axis: np.diagonal(a) and a.T act on the first axes of a (B, K, K) array "
    "(use np.diagonal(a, axis1=-2, axis2=-1) and a.swapaxes(-1, -2)); sums and means "
    "need axis=-1 for the latent axis"
)


def _interaction(
    values_of: Callable[[list[Any]], list[float | None]],
    single: Any,
    others: list[Any],
    got: float,
    tolerance: float,
    size: int,
) -> str | None:
    """A diagnosis if a member's value changes with the rest of its batch.

    The member is evaluated first in a batch of copies of itself, then in a batch
    with ``others`` (different problems) after it; a correct batched function gives
    the same value in both and in the original batch.
    """
    if size == 1 or not others:
        return None
    fill = [others[i % len(others)] for i in range(size - 1)]
    among_copies = values_of([single] * size)[0]
    among_others = values_of([single, *fill])[0]
    seen = [v for v in (among_copies, among_others) if v is not None]
    if all(abs(v - got) <= tolerance for v in seen):
        return None
    contexts = [f"{got:.12g} in its batch"]
    if among_copies is not None:
        contexts.append(f"{among_copies:.12g} in a batch of {size} copies of it")
    if among_others is not None:
        contexts.append(f"{among_others:.12g} in a batch with other members")
    return (
        f"Diagnosis: the members of a batch interact: this member's value is "
        f"{', '.join(contexts)}.\n"
        "  Fix: compute each member from its own row only; look for a sum or mean over "
        "the batch axis (axis 0) where the latent axis was meant, broadcasting of a "
        "(B,) array against (B, K), np.diagonal or .T on a (B, K, K) array (both act on "
        "the first axes; use np.diagonal(a, axis1=-2, axis2=-1) and a.swapaxes(-1, -2)), "
        "or q.scale_tril[0] used for every row"
    )
