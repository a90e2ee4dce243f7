"""Thread limits while a verifier runs."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from .._threads import limited_when_alone, user_code_knobs
from ._options import check_time_budget
from ._precision import check_dtype
from ._progress import BudgetReached, running
from ._report import VerificationReport

FloatArray = NDArray[np.float64]


# ---------------------------------------------------------------------- threads
_Verifier = TypeVar("_Verifier", bound=Callable[..., Any])


def _single_blas_thread(verifier: _Verifier) -> _Verifier:
    """Run a verifier with one thread per pool when no other Python thread could see it.

    The pools are the BLAS's, OpenMP's and (when torch is imported) torch's intra-op
    pool (:func:`elbo_check._threads.user_code_knobs`).

    Verifiers make thousands of tiny (K x K, D x K) BLAS calls, for which thread pools
    only cost: on a loaded 2-core machine ``verify_elbo`` plus ``verify_elbo_estimator``
    took 15.8 s with OpenBLAS's two threads and 0.7 s with one. The BLAS thread count is
    process-wide (each of them), so it is limited only while the calling thread is the only Python
    thread, and set back (unless someone else has set it meanwhile) when the verifier
    returns or raises; the user's function, and any threads it starts, run under the
    limit. With other Python threads alive the verifier changes nothing and runs with
    the BLAS threads it finds, which can be much slower (limit them yourself, e.g. with
    ``threadpoolctl.threadpool_limits(1)``). :mod:`elbo_check._threads` says exactly
    what "the only Python thread" does and does not guarantee.

    It also gives every verifier its ``time_budget`` keyword (seconds, default None),
    its ``dtype`` keyword (the precision the user's code computes in; by default, that
    of its returns: see :mod:`._precision`) and the :class:`._progress.Progress` its
    calls are counted in.
    """

    @functools.wraps(verifier)
    def limited(
        *args: Any, time_budget: float | None = None, dtype: Any = None, **kwargs: Any
    ) -> Any:
        __tracebackhide__ = True
        budget = check_time_budget("time_budget", time_budget)
        declared = check_dtype(dtype)
        name = verifier.__name__
        with limited_when_alone(user_code_knobs(), 1), running(name, budget) as progress:
            progress.default_rtol = "rtol" not in kwargs
            if declared is not None:
                progress.dtype, progress.declared_dtype = declared, True
            try:
                report = verifier(*args, **kwargs)
            except BudgetReached as stop:
                return stop.report(progress)
        if not isinstance(report, VerificationReport):
            return report
        details = dict(report.details)
        if progress.stopped_early:
            details["stopped_by_time_budget"] = budget
        # Only where a tolerance was widened: the statistical tests do not follow dtype.
        if progress.tolerance_widened and progress.dtype is not None:
            details["precision"] = str(progress.dtype)
        return dataclasses.replace(report, details=details) if details != report.details else report

    signature = inspect.signature(verifier)
    keyword = inspect.Parameter.KEYWORD_ONLY
    extra = [
        inspect.Parameter("time_budget", keyword, default=None, annotation="float | None"),
        inspect.Parameter("dtype", keyword, default=None, annotation="Any"),
    ]
    parameters = list(signature.parameters.values())
    at = next((i for i, p in enumerate(parameters) if p.kind is p.VAR_KEYWORD), len(parameters))
    limited.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*parameters[:at], *extra, *parameters[at:]]
    )
    return limited  # type: ignore[return-value]
