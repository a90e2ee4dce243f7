"""Thread-pool limits that no other thread can see.

The thread counts of the BLAS (and of OpenMP, or torch's intra-op pool) are
process-wide: a limit set on one thread applies to all of them, and a thread that saves
a limit and later restores it (``threadpoolctl.threadpool_limits``) may save *our*
temporary value and restore it after we have undone it, leaving the whole process on
one thread. elbo_check therefore changes such a limit only while the calling thread is
the only Python thread (:func:`only_python_thread`), undoes it before returning, and
leaves alone a value that someone else has changed meanwhile. When other Python threads
exist it changes nothing and runs with the limits it finds.

What "the only Python thread" guarantees
----------------------------------------
The check is a snapshot: no thread started through :mod:`threading` is alive (nor a
foreign thread that has registered itself there), and no other thread is executing
Python code (:func:`sys._current_frames`, which also sees threads started with
``_thread.start_new_thread``). A thread can only be started by a running thread, so
until the limit is undone the only Python threads are the calling thread and the
threads elbo_check itself starts to run its own work. No other Python code can observe
the limit, and no ``threadpool_limits`` block elsewhere can save and later restore it.

It does not cover:

* native threads that never run Python code (the thread pools of C, C++ or Rust
  libraries): they see the limit while it is held, and a BLAS call they make meanwhile
  runs on one thread;
* a native thread that starts running Python code during the call (through
  ``PyGILState_Ensure``): it can see the limit;
* code that runs *on the calling thread* during the call: signal handlers (on the main
  thread), finalizers (``__del__``, weakref callbacks) run by the garbage collector, and
  profiling or tracing hooks see the limit, and so does any thread they start;
* in the verifiers, the user's own function and any threads it starts: it runs inside
  the limit (that is the point of the limit).

After the call, each limited library is set back to its earlier count only if it still
holds the count set here; if someone else has set another count meanwhile, theirs stays.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Protocol

from threadpoolctl import ThreadpoolController

__all__ = [
    "ThreadKnob",
    "blas_libraries",
    "limited_when_alone",
    "only_python_thread",
    "user_code_knobs",
]


class ThreadKnob(Protocol):
    """Anything with a process-wide thread count to read and set.

    ``threadpoolctl`` library controllers (BLAS, OpenMP) have these methods, and so does
    the ``torch`` module (``torch.get_num_threads``, ``torch.set_num_threads``).
    """

    def get_num_threads(self) -> Any:
        """The current thread count (an ``int``; anything else is left alone)."""

    def set_num_threads(self, num_threads: int) -> Any:
        """Set the thread count."""


def only_python_thread() -> bool:
    """Whether the calling thread is the only live Python thread.

    See the module docstring for what this does and does not guarantee.

    Returns
    -------
    bool
        ``True`` when no other thread is known to :mod:`threading` and no other thread
        is executing Python code.
    """
    if threading.active_count() != 1:
        return False
    current_frames = getattr(sys, "_current_frames", None)
    return current_frames is None or len(current_frames()) <= 1


def blas_libraries(*, rescan: bool = False) -> Sequence[ThreadKnob]:
    """The BLAS libraries loaded in this process, as ``threadpoolctl`` controllers.

    Parameters
    ----------
    rescan : bool, optional
        Look for loaded libraries again (a few milliseconds) instead of using the list
        found on the first call (numpy and scipy load theirs at import; a library
        loaded later, e.g. with torch, is only found by a rescan).

    Returns
    -------
    sequence of ThreadKnob
        One controller per library; empty when none can be controlled.
    """
    if rescan:
        return _scan_blas()
    return _cached_blas()


class _Library:
    """A ``threadpoolctl`` library controller as a :class:`ThreadKnob` that sets counts
    directly.

    threadpoolctl (3.8) lets only one thread at a time set a pthreads OpenBLAS's count:
    the first thread to set it owns it until that thread's ``threadpool_limits`` blocks
    end, and other threads' settings are silently ignored. A limit set here through its
    public setter would make the calling thread the owner for good (it is not a
    ``threadpool_limits`` block), and another thread's ``threadpool_limits`` would be
    ignored from then on. So the count is set with the library's own setter
    (threadpoolctl's ``_real_set_num_threads`` where it has one), which leaves the
    ownership as it was; the limit is only ever set while no other Python thread exists.
    """

    def __init__(self, controller: Any) -> None:
        self._controller = controller
        self._set = getattr(controller, "_real_set_num_threads", controller.set_num_threads)

    def get_num_threads(self) -> Any:
        return self._controller.get_num_threads()

    def set_num_threads(self, num_threads: int) -> Any:
        return self._set(num_threads)


def _scan_blas() -> Sequence[ThreadKnob]:
    controllers = ThreadpoolController().select(user_api="blas").lib_controllers
    return tuple(_Library(controller) for controller in controllers)


@lru_cache(maxsize=1)
def _cached_blas() -> Sequence[ThreadKnob]:
    return _scan_blas()


def user_code_knobs() -> Sequence[ThreadKnob]:
    """Every thread pool a verifier limits while it runs user code.

    The BLAS and OpenMP libraries loaded now (found afresh: torch or JAX may have loaded
    theirs since the last call), and torch's intra-op pool when torch is already
    imported (it is never imported here). One Trace_ELBO estimate of Pyro took 60 ms
    inside a verifier with only the BLAS limited, 3.5 ms with these limited too.

    Not covered: torch's inter-op pool (its size cannot change once torch has run any
    parallel work) and XLA's CPU thread pool in JAX (fixed when the backend starts;
    set ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false`` before importing jax).
    """
    controllers = ThreadpoolController().select(user_api=["blas", "openmp"]).lib_controllers
    knobs: list[ThreadKnob] = [_Library(controller) for controller in controllers]
    torch = sys.modules.get("torch")
    if torch is not None and callable(getattr(torch, "set_num_threads", None)):
        knobs.append(torch)
    return tuple(knobs)


@contextmanager
def limited_when_alone(knobs: Sequence[ThreadKnob], limit: int = 1) -> Iterator[bool]:
    """Hold every knob at ``limit`` threads or fewer for the block, if no one can see it.

    Parameters
    ----------
    knobs : sequence of ThreadKnob
        The thread counts to limit (e.g. :func:`blas_libraries`).
    limit : int, optional
        The most threads each knob may use inside the block.

    Yields
    ------
    bool
        ``True`` when the calling thread is the only Python thread, so the limit holds
        inside the block; ``False`` when other Python threads exist, in which case no
        knob is touched and the block runs with the counts it finds.

    Notes
    -----
    On leaving the block, a knob is set back to its earlier count only if it still holds
    ``limit``: a count that someone else set meanwhile is theirs and stays.
    """
    if not only_python_thread():
        yield False
        return
    changed: list[tuple[ThreadKnob, int]] = []
    try:
        for knob in knobs:
            before = knob.get_num_threads()
            if isinstance(before, int) and before > limit:
                knob.set_num_threads(limit)
                changed.append((knob, before))
        yield True
    finally:
        for knob, before in reversed(changed):
            if knob.get_num_threads() == limit:
                knob.set_num_threads(before)
