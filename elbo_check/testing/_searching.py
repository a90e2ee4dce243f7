"""The deterministic search: hypothesis finds and shrinks a failing case."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import Phase, find, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample
from numpy.typing import NDArray

from ._report import (
    VerificationReport,
)
from ._returns import BadReturn

FloatArray = NDArray[np.float64]


class _Failure(Exception):
    """Raised internally to hand a failing case out of hypothesis' search."""


# ---------------------------------------------------------------------- search
def _search(
    strategy: st.SearchStrategy[Any],
    is_bad: Callable[[Any], bool],
    seed: int,
    max_examples: int,
) -> Any | None:
    """The minimal example ``is_bad`` accepts, or None if none is found."""
    try:
        return find(
            strategy,
            is_bad,
            # No Phase.explain: it re-runs the failing case many times to annotate lines
            # of the *test* function, which here is our own closure (about 20 s wasted).
            settings=settings(
                max_examples=max_examples,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
            ),
            random=random.Random(seed),
        )
    except NoSuchExample:
        return None


@dataclass
class _Tracker:
    cases: int = 0
    worst: float = 0.0
    error: BaseException | None = None


def _deterministic_check(
    *,
    name: str,
    strategy: st.SearchStrategy[Any],
    evaluate: Callable[[Any], tuple[float, float, float]],
    explain: Callable[[Any, float, float, float, BaseException | None], str],
    seed: int,
    max_examples: int,
    tolerance_text: str,
) -> VerificationReport:
    """Search for a case where ``evaluate`` returns ``|got - expected| > tolerance``.

    ``evaluate(case)`` returns ``(got, expected, tolerance)``. A user exception counts
    as a failure; the minimal failing case is explained and raised as AssertionError.
    """
    tracker = _Tracker()

    def is_bad(case: Any) -> bool:
        tracker.cases += 1
        try:
            got, expected, tolerance = evaluate(case)
        except Exception:  # the user's code raised: a failure to minimise
            return True
        gap = abs(got - expected)
        if not math.isfinite(got) or gap > tolerance:
            return True
        tracker.worst = max(tracker.worst, gap / tolerance if tolerance > 0 else 0.0)
        return False

    failing = _search(strategy, is_bad, seed, max_examples)
    if failing is None:
        return VerificationReport(
            check=name,
            cases=tracker.cases,
            worst_error=tracker.worst,
            tolerance=tolerance_text,
            seed=seed,
            details={"worst_error_is": "largest |got - expected| / tolerance"},
        )
    try:
        got, expected, tolerance = evaluate(failing)
        error: BaseException | None = None
    except Exception as err:
        got = expected = tolerance = math.nan
        error = err
    message = explain(failing, got, expected, tolerance, error)
    header = f"{name} failed (seed={seed}; minimal example after {tracker.cases} cases)"
    if isinstance(error, BadReturn):
        raise AssertionError(f"{header}: {error}\n{message}") from error
    if error is not None:
        raise AssertionError(
            f"{header}: fn raised {type(error).__name__}: {error}\n{message}"
        ) from error
    raise AssertionError(f"{header}\n{message}")
