"""How long a verifier call takes: an up-front estimate, progress lines, a time budget.

Each verifier call runs inside one :class:`Progress` (set by the verifier wrapper in
:mod:`._limits`); every call of the user's function ticks it (:func:`._returns.invoke`).
The search and the statistical loop announce how many calls they plan. Once
:data:`ESTIMATE_AFTER_SECONDS` have passed, a call that is projected to run longer than
:data:`ANNOUNCE_AFTER_SECONDS` says so on standard error, once, with the per-call time
and how to shorten it, and then reports progress every :data:`REPORT_EVERY_SECONDS`.
With a ``time_budget`` the deterministic search stops generating cases when it runs out
(a failure already found is still shrunk and reported), and the statistical checks stop
between problems; the report says so.
"""

from __future__ import annotations

import contextvars
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = [
    "ANNOUNCE_AFTER_SECONDS",
    "ESTIMATE_AFTER_CALLS",
    "ESTIMATE_AFTER_SECONDS",
    "REPORT_EVERY_SECONDS",
    "BudgetReached",
    "Progress",
    "current",
    "running",
]

#: A verifier call projected to take longer than this says so up front.
ANNOUNCE_AFTER_SECONDS = 60.0
#: The projection is made once the user's function has run for this long in total.
ESTIMATE_AFTER_SECONDS = 1.0
#: Progress lines of a long call come this often.
REPORT_EVERY_SECONDS = 30.0
#: The projection uses the median time between calls, over at least this many calls:
#: a first call that compiles (JAX, torch.jit) or warms a cache is one outlier among
#: them, not the rate (the mean of one compiling call once projected 25807 s for a
#: 29 s check).
ESTIMATE_AFTER_CALLS = 3


#: Intervals kept for the median (the first ones: the projection is made early).
_KEPT_INTERVALS = 64


class Progress:
    """Calls made and planned in one verifier call, against an optional time budget."""

    def __init__(self, name: str, time_budget: float | None) -> None:
        self.name = name
        self.time_budget = time_budget
        self.start = time.perf_counter()
        self.calls = 0
        self.planned = 0
        self.stopped_early = False
        self.seed = -1  # set when the verifier resolves its seed
        #: The precision the user's code computes in: declared (``dtype=``) or the
        #: coarsest floating dtype its returns have had so far; None means float64.
        self.dtype: np.dtype[Any] | None = None
        self.declared_dtype = False
        #: Whether the caller left ``rtol`` at its default, so that it may follow dtype.
        self.default_rtol = True
        #: Whether a tolerance was widened for ``dtype`` (only deterministic checks are).
        self.tolerance_widened = False
        self.problems_planned = 0  # statistical checks: problems planned and started
        self.problems_started = 0
        self._announced = False
        self._last_report = self.start
        self._last_tick = self.start
        self._intervals: list[float] = []  # seconds between successive ticks

    def observe_dtype(self, dtype: np.dtype[Any] | None) -> None:
        """Note the floating dtype of a return (ignored when ``dtype=`` was given)."""
        if dtype is None or self.declared_dtype:
            return
        if self.dtype is None or np.finfo(dtype).eps > np.finfo(self.dtype).eps:
            self.dtype = dtype

    def plan(self, calls: int) -> None:
        """Add ``calls`` to the calls this verifier expects to make."""
        self.planned += calls

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def exhausted(self) -> bool:
        """Whether the time budget (if any) is used up."""
        return self.time_budget is not None and self.elapsed >= self.time_budget

    def per_call(self) -> float:
        """Typical seconds per call: the median time between calls so far."""
        return float(np.median(self._intervals)) if self._intervals else math.inf

    def projected(self) -> float | None:
        """Seconds the planned calls will take in all: the time so far, plus the calls
        still planned at the typical (median) time per call."""
        if self.calls == 0 or self.planned == 0:
            return None
        return self.elapsed + self.per_call() * max(self.planned - self.calls, 0)

    def tick(self) -> None:
        """One call of the user's function has been made."""
        self.calls += 1
        now = time.perf_counter()
        if len(self._intervals) < _KEPT_INTERVALS:
            self._intervals.append(now - self._last_tick)
        self._last_tick = now
        elapsed = self.elapsed
        if elapsed < ESTIMATE_AFTER_SECONDS or (
            self.calls < ESTIMATE_AFTER_CALLS and elapsed < ANNOUNCE_AFTER_SECONDS
        ):
            return
        projected = self.projected()
        if not self._announced:
            self._announced = True
            if projected is not None and projected > ANNOUNCE_AFTER_SECONDS:
                per_call = self.per_call()
                budget = (
                    f"; it will stop after the time_budget of {self.time_budget:g} s"
                    if self.time_budget is not None
                    else "; pass time_budget=SECONDS to bound it, or fewer calls/max_examples"
                )
                self._write(
                    f"{self.name}: your function takes about {per_call:.3g} s per call and "
                    f"about {self.planned} calls are planned: about {projected:.0f} s in "
                    f"all{budget}"
                )
                self._last_report = time.perf_counter()
            return
        if self._announced and projected is not None and projected > ANNOUNCE_AFTER_SECONDS:
            now = time.perf_counter()
            if now - self._last_report >= REPORT_EVERY_SECONDS:
                self._last_report = now
                self._write(
                    f"{self.name}: {self.calls} of about {self.planned} calls made, "
                    f"{self.elapsed:.0f} s"
                )

    def _write(self, line: str) -> None:
        print(f"[elbo_check] {line}", file=sys.stderr, flush=True)


class BudgetReached(Exception):
    """Raised between statistical problems when the time budget is used up."""

    def __init__(self, completed: int, planned: int) -> None:
        super().__init__(f"{completed} of {planned} problems completed")
        self.completed, self.planned = completed, planned

    def report(self, progress: Progress) -> Any:
        """The report of the problems completed, or an error when there are none."""
        from .._errors import InvalidInputError
        from ._report import VerificationReport

        if self.completed == 0:
            per_call = progress.elapsed / max(progress.calls, 1)
            raise InvalidInputError(
                f"time_budget={progress.time_budget:g} s ran out before the first of "
                f"{self.planned} problems was complete ({progress.calls} calls made, about "
                f"{per_call:.3g} s per call): no verdict. Raise time_budget or lower calls"
            )
        return VerificationReport(
            check=progress.name,
            cases=self.completed,
            worst_error=math.nan,
            tolerance=f"stopped by the time budget after {self.completed} of {self.planned} "
            "problems, each tested at the level planned for all of them",
            seed=progress.seed,
            details={
                "stopped_by_time_budget": progress.time_budget,
                "worst_error_is": "not tracked when stopped early (each problem passed)",
            },
        )


_current: contextvars.ContextVar[Progress | None] = contextvars.ContextVar(
    "elbo_check_progress", default=None
)


def current() -> Progress | None:
    """The verifier call running on this thread (None outside a verifier)."""
    return _current.get()


@contextmanager
def running(name: str, time_budget: float | None) -> Iterator[Progress]:
    """Run a verifier call inside a fresh :class:`Progress`."""
    progress = Progress(name, time_budget)
    token = _current.set(progress)
    try:
        yield progress
    finally:
        _current.reset(token)
