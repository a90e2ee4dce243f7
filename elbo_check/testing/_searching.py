"""The deterministic search: hypothesis finds and shrinks a failing case."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import Phase, find, settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky, NoSuchExample
from numpy.typing import NDArray

from ._precision import DEFAULT_RTOL, precision_rtol, widened
from ._progress import Progress, current
from ._report import (
    VerificationReport,
)
from ._returns import BadReturn

FloatArray = NDArray[np.float64]


class _Failure(Exception):
    """Raised internally to hand a failing case out of hypothesis' search."""


#: Calls of the user's function spent shrinking a failure before the smallest failing
#: case found so far is reported. Ordinary failures shrink in a few hundred; a failure
#: at the edge of the tolerance (rounding) can take over 10,000 (two minutes), with a
#: case no more telling than the one reached here. A count, not a time: the reported
#: case is the same on every machine.
MAX_SHRINK_CALLS = 1000


class _StopSearch(BaseException):
    """Raised from inside the search when the time budget is used up before any failure:
    a BaseException, so hypothesis neither catches nor shrinks it."""


class _Unreliable(Exception):
    """Hypothesis saw a case fail once and pass when run again."""


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
    except (NoSuchExample, _StopSearch):
        return None
    except Flaky as err:
        raise _Unreliable() from err


@dataclass
class _Tracker:
    cases: int = 0
    worst: float = 0.0
    error: BaseException | None = None
    first_bad: tuple[Any, float] | None = None
    latest_bad: Any = None
    shrink_calls: int = 0


def _deterministic_check(
    *,
    name: str,
    strategy: st.SearchStrategy[Any] | Sequence[Any],
    evaluate: Callable[[Any], tuple[float, float, float]],
    explain: Callable[[Any, float, float, float, BaseException | None], str],
    seed: int,
    max_examples: int,
    tolerance_text: str,
) -> VerificationReport:
    """Search for a case where ``evaluate`` returns ``|got - expected| > tolerance``.

    ``evaluate(case)`` returns ``(got, expected, tolerance)``. A user exception counts
    as a failure; the minimal failing case is explained and raised as AssertionError.
    ``strategy`` may also be a sequence of the user's own cases: each is checked in
    order, and the first failing one is explained (no search, no shrinking).
    """
    tracker = _Tracker()
    progress = current()
    if progress is not None:
        progress.plan(max_examples)

    def is_bad(case: Any) -> bool:
        if progress is not None and tracker.first_bad is None and progress.exhausted():
            progress.stopped_early = True  # no failure yet: stop the search here
            raise _StopSearch
        if tracker.first_bad is not None:
            tracker.shrink_calls += 1
            if tracker.shrink_calls > MAX_SHRINK_CALLS:
                raise _StopSearch  # report the smallest failing case found so far
        tracker.cases += 1
        try:
            got, expected, tolerance = evaluate(case)
        except Exception:  # the user's code raised: a failure to minimise
            tracker.first_bad = tracker.first_bad or (case, math.nan)
            tracker.latest_bad = case
            return True
        tolerance = widened(progress, case, tolerance)
        gap = abs(got - expected)
        if not math.isfinite(got) or gap > tolerance:
            tracker.first_bad = tracker.first_bad or (case, got)
            tracker.latest_bad = case  # the shrinker only tries smaller cases
            return True
        tracker.worst = max(tracker.worst, gap / tolerance if tolerance > 0 else 0.0)
        return False

    header = f"{name} failed (seed={seed}"
    if not isinstance(strategy, st.SearchStrategy):  # the user's own cases, in order
        failing = next((case for case in strategy if is_bad(case)), None)
        if failing is not None:
            index = next(i for i, case in enumerate(strategy) if case is failing)
            header = f"{name} failed (problems[{index}] of {len(strategy)}"
    else:
        try:
            failing = _search(strategy, is_bad, seed, max_examples)
        except _Unreliable as err:
            assert tracker.first_bad is not None
            raise AssertionError(
                f"{header}): fn is not deterministic\n"
                + _unreliable(tracker.first_bad, evaluate, explain)
            ) from err.__cause__
    if failing is None and tracker.latest_bad is not None:
        failing = tracker.latest_bad  # shrinking stopped at MAX_SHRINK_CALLS
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
    header += (
        f"; minimal example after {tracker.cases} cases)"
        if isinstance(strategy, st.SearchStrategy)
        else ")"
    )
    if error is None and math.isfinite(got) and abs(got - expected) <= tolerance:
        # The search saw this case fail; evaluated again it passes.
        raise AssertionError(
            f"{header}: fn is not deterministic\n"
            + _unreliable((failing, math.nan), evaluate, explain)
        )
    message = explain(failing, got, expected, tolerance, error) + _precision_note(
        progress, failing, got, expected, tolerance
    )
    if isinstance(error, BadReturn):
        raise AssertionError(f"{header}: {error}\n{message}") from error
    if error is not None:
        raise AssertionError(
            f"{header}: fn raised {type(error).__name__}: {error}\n{message}"
        ) from error
    raise AssertionError(f"{header}\n{message}")


def _precision_note(
    progress: Progress | None, case: Any, got: float, expected: float, tolerance: float
) -> str:
    """A hint when the user's returns are below float64 precision."""
    if progress is None or progress.dtype is None or progress.dtype.itemsize >= 8:
        return ""
    rtol = precision_rtol(progress.dtype, case)
    allowed = tolerance * rtol / DEFAULT_RTOL
    if progress.default_rtol:
        return (
            f"\n  (fn computes in {progress.dtype}; the tolerance was widened for it to "
            f"rtol = {rtol:.3g}, from its epsilon, D + K and the problem's condition number)"
        )
    if abs(got - expected) <= allowed:
        return (
            f"\n  Note: fn computes in {progress.dtype}, and at that precision this gap is "
            f"rounding (within rtol = {rtol:.3g}): leave rtol at its default, which follows "
            "the precision of fn's returns, or pass dtype=..."
        )
    return ""


#: How often a case that failed once is evaluated again to show a second output.
REPEATS = 8


def _unreliable(
    first: tuple[Any, float],
    evaluate: Callable[[Any], tuple[float, float, float]],
    explain: Callable[[Any, float, float, float, BaseException | None], str],
) -> str:
    """The outputs of repeated calls on one input of a function that is not deterministic."""
    case, first_got = first
    outputs: list[str] = [] if math.isnan(first_got) else [f"{first_got:.15g}"]
    expected = tolerance = math.nan
    for _ in range(REPEATS):
        try:
            got, expected, tolerance = evaluate(case)
            outputs.append(f"{got:.15g}")
        except Exception as err:
            outputs.append(f"raised {type(err).__name__}: {err}")
        if len(set(outputs)) > 1:
            break
    distinct = list(dict.fromkeys(outputs))
    described = explain(case, math.nan, expected, tolerance, RuntimeError("not deterministic"))
    return (
        f"  called {len(outputs)} times on the same input (below), it returned "
        + (" and ".join(distinct[:2]) if len(distinct) > 1 else f"{distinct[0]} every time")
        + f"; expected {expected:.15g} (tolerance {tolerance:.3g}).\n"
        "  A verdict needs a function of its arguments alone: seed any randomness from the "
        "arguments (or use the statistical mode), and do not keep state between calls.\n"
        + described
    )
