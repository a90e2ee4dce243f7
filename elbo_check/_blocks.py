"""Row blocks: bounded working memory, cache-sized units of work, and every allowed core.

Batched evaluations walk over the rows of ``x`` in blocks of about
:data:`BLOCK_ENTRIES` float64 entries. Each block is centred, whitened, projected and
reduced while it is still in the CPU cache, so ``x`` is read from memory once and the
working memory is a few blocks, whatever the number of rows.

Large evaluations run the blocks on several threads (numpy releases the GIL in ufuncs,
reductions and BLAS calls). The number of threads follows the BLAS: as many as the
BLAS itself is allowed to use (``OPENBLAS_NUM_THREADS``, ``threadpoolctl``), capped by
the usable CPUs. While the threads run, the BLAS is limited to one thread each, so the
two levels never oversubscribe the cores (a threaded BLAS is also slow on the small
products of a block: its threads wake for each call). Under
``threadpoolctl.threadpool_limits(1)`` (as inside the verifiers) everything runs on the
calling thread.

The BLAS thread count is process-wide, so it is limited only while the calling thread
is the only Python thread (:mod:`elbo_check._threads` says exactly what that
guarantees), and set back before returning. When other Python threads exist, nothing
process-wide is touched: the blocks run on the calling thread,
:data:`UNLIMITED_BLOCK_FACTOR` times larger, and the BLAS uses its threads inside each
block's products. That is slower: at (N, D, K) = (100k, 1000, 20) on a loaded 2-core
machine, about 4x the time of ``X @ W`` instead of 2.1x (``benchmarks/threads.py``;
blocks of the usual size took 7.8x, worker threads beside the BLAS's own 10-12x).

Every row's result depends only on that row, so the threading changes no value beyond
the rounding of a BLAS kernel chosen for another block shape.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.typing import NDArray

from ._threads import blas_libraries, limited_when_alone

__all__ = [
    "BLOCK_ENTRIES",
    "PARALLEL_MIN_BLOCKS",
    "UNLIMITED_BLOCK_FACTOR",
    "for_each_block",
    "worker_count",
]

FloatArray = NDArray[np.float64]

#: Rows are processed in blocks of about this many float64 entries (1 MiB): small enough
#: to stay in a core's cache between the passes over a block, large enough that the
#: per-block Python overhead is a few per cent (measured in ``benchmarks/run.py``).
BLOCK_ENTRIES = 1 << 17

#: Fewer blocks than this run on the calling thread: starting threads costs more than
#: it saves below a few milliseconds of work.
PARALLEL_MIN_BLOCKS = 8

#: With other Python threads alive the BLAS keeps its threads, which a product must be
#: large to pay for waking: blocks are then this many times :data:`BLOCK_ENTRIES`. At
#: (100k, 1000, 20) on a loaded 2-core machine, log_evidence / ``X @ W`` was 7.8 for
#: factor 1, 5.1 for 2, 4.3 for 4, 3.9 for 8 and 3.9 for 16.
UNLIMITED_BLOCK_FACTOR = 8


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _blas_threads() -> int:
    """The fewest threads any loaded BLAS may use now; 1 if none can be controlled."""
    counts = [int(library.get_num_threads()) for library in blas_libraries()]
    return max(1, min(counts, default=1))


def worker_count(n_blocks: int) -> int:
    """Threads to use for ``n_blocks`` blocks: 1 below :data:`PARALLEL_MIN_BLOCKS`, else
    the BLAS's current thread count capped by the usable CPUs and the blocks.

    With no BLAS that ``threadpoolctl`` can control, 1: threads could not be kept from
    oversubscribing the cores.
    """
    if n_blocks < PARALLEL_MIN_BLOCKS:
        return 1
    return max(1, min(_blas_threads(), _usable_cpus(), n_blocks))


def _serially(n_rows: int, step: int, width: int, work: Callable[..., None], buffers: int) -> None:
    """Run the blocks of ``step`` rows one after another on the calling thread."""
    scratch = [np.empty((min(step, n_rows), width)) for _ in range(buffers)]
    for start in range(0, n_rows, step):
        work(slice(start, min(n_rows, start + step)), *scratch)


def _in_parallel(
    n_rows: int, step: int, width: int, work: Callable[..., None], buffers: int, workers: int
) -> None:
    """Run the blocks of ``step`` rows on the calling thread and ``workers - 1`` helpers."""
    lock = threading.Lock()
    shared = iter([slice(start, min(n_rows, start + step)) for start in range(0, n_rows, step)])

    def pending() -> slice | None:
        with lock:
            return next(shared, None)

    def run() -> None:
        scratch = [np.empty((min(step, n_rows), width)) for _ in range(buffers)]
        while (block := pending()) is not None:
            work(block, *scratch)

    with ThreadPoolExecutor(workers - 1) as pool:
        helpers = [pool.submit(run) for _ in range(workers - 1)]
        try:
            run()
        finally:
            # Drain the queue so the helpers stop at their next block, then wait for
            # them, so no thread outlives the call (or the BLAS limit).
            with lock:
                for _ in shared:
                    pass
            errors = [h.exception() for h in helpers]
        for error in errors:
            if error is not None:
                raise error


def for_each_block(
    n_rows: int,
    width: int,
    work: Callable[..., None],
    *,
    buffers: int = 1,
) -> None:
    """Call ``work(rows, *scratch)`` for blocks of rows covering ``range(n_rows)``.

    ``rows`` is a slice; ``scratch`` is ``buffers`` arrays of shape ``(block rows,
    width)`` owned by the calling thread, reused from block to block (``work`` slices
    them to the block's length). ``work`` must write its results only to the rows it
    is given. Exceptions raised by ``work`` propagate to the caller.

    Nothing process-wide that another thread could observe changes: the BLAS is
    limited only while the calling thread is the only Python thread (see the module
    docstring).
    """
    step = max(1, BLOCK_ENTRIES // max(1, width))
    if n_rows * width < BLOCK_ENTRIES or _blas_threads() == 1:
        # Too small for the BLAS limit's cost (about 10 us) to pay, or already serial.
        _serially(n_rows, step, width, work, buffers)
        return
    workers = worker_count(-(-n_rows // step))
    with limited_when_alone(blas_libraries(), 1) as limited:
        if not limited:
            # Other Python threads could see a limit: leave the BLAS its threads, and
            # give them larger products to share.
            _serially(n_rows, step * UNLIMITED_BLOCK_FACTOR, width, work, buffers)
        elif workers == 1:
            # A threaded BLAS is slow on the small products of a block (its threads wake
            # for each call; a (50, 100) triangular solve took 1.6 ms instead of 0.02 ms).
            _serially(n_rows, step, width, work, buffers)
        else:
            _in_parallel(n_rows, step, width, work, buffers, workers)
