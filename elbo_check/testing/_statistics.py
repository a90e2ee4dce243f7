"""Repeated calls and batch-means t statistics for the statistical verifiers."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._errors import InvalidInputError
from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ._options import (
    BATCHES,
    check_count,
)
from ._progress import BudgetReached, current
from ._report import (
    _describe_gaussian,
    _describe_model,
    _fmt,
)
from ._returns import invoke

FloatArray = NDArray[np.float64]


def _repeated_calls(
    name: str,
    fn: Callable[..., Any],
    convert: Callable[[Any], Any],
    case: tuple[LinearGaussianModel, Gaussian, FloatArray, int],
    seed: list[int],
    calls: int,
) -> FloatArray:
    """``convert(fn(model, q, x, rng, n_samples))`` for ``calls`` independent generators
    spawned from ``seed``, as rows of an array.

    A user exception becomes an AssertionError that shows the problem it failed on.
    """
    model, q, x, n_samples = case
    progress = current()
    if progress is not None:
        if progress.exhausted():  # stop between problems: each one is judged whole
            progress.stopped_early = True
            raise BudgetReached(progress.problems_started, progress.problems_planned)
        progress.problems_started += 1
    results = []
    for stream in np.random.SeedSequence(seed).spawn(calls):
        if progress is not None and progress.problems_started == 1 and progress.exhausted():
            raise BudgetReached(0, progress.problems_planned)
        generator = np.random.Generator(np.random.PCG64(stream))
        try:
            results.append(convert(invoke(fn, model, q, x, generator, n_samples)))
        except Exception as err:
            raise AssertionError(
                f"{name}: fn raised {type(err).__name__}: {err}\n"
                + _describe_model(model)
                + "\n"
                + _describe_gaussian("q", q)
                + f"\n  x = {_fmt(x)}\n  n_samples = {n_samples}"
            ) from err
    return np.asarray(results, dtype=np.float64).reshape(calls, -1)


def _statistical_calls(chosen: dict[str, int], calls: int | None, n_samples: int) -> int:
    """Validated calls per problem of a statistical check (and its ``n_samples``)."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise InvalidInputError(
            f"n_samples must be a positive integer; got n_samples={n_samples!r}"
        )
    return check_count("calls", calls, chosen["calls"], minimum=2 * BATCHES)


def _batch_t(values: FloatArray, target: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """t statistics of the mean of ``values`` (calls along axis 0) against ``target``."""
    calls = values.shape[0]
    usable = (calls // BATCHES) * BATCHES
    batches = values[:usable].reshape(BATCHES, usable // BATCHES, *values.shape[1:]).mean(axis=1)
    mean = values[:usable].mean(axis=0)
    standard_error = batches.std(axis=0, ddof=1) / math.sqrt(BATCHES)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (mean - target) / standard_error
    return mean, standard_error, t
