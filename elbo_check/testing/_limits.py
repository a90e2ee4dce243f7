"""Thread limits while a verifier runs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from .._threads import limited_when_alone, user_code_knobs

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
    """

    @functools.wraps(verifier)
    def limited(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        with limited_when_alone(user_code_knobs(), 1):
            return verifier(*args, **kwargs)

    return limited  # type: ignore[return-value]
