"""Row blocks: bounded working memory, cache-sized units of work, and every allowed core.

Batched evaluations walk over the rows of ``x`` in blocks of about
:data:`BLOCK_ENTRIES` float64 entries. Each block is centred, whitened, projected and
reduced while it is still in the CPU cache, so ``x`` is read from memory once and the
working memory is a few blocks, whatever the number of rows.

Large evaluations run the blocks on several threads (numpy releases the GIL in ufuncs,
reductions and BLAS calls). The number of threads follows the BLAS: as many as the
BLAS itself is allowed to use (``OPENBLAS_NUM_THREADS``, ``threadpoolctl``), capped by
the usable CPUs. While the threads run, the BLAS is limited to one thread each, so the
two levels never oversubscribe the cores. Under ``threadpoolctl.threadpool_limits(1)``
(as inside the verifiers) everything runs on the calling thread.

Every row's result depends only on that row, so the threading changes no value beyond
the rounding of a BLAS kernel chosen for another block shape.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import ThreadpoolController

__all__ = ["BLOCK_ENTRIES", "PARALLEL_MIN_BLOCKS", "for_each_block", "worker_count"]

FloatArray = NDArray[np.float64]

#: Rows are processed in blocks of about this many float64 entries (1 MiB): small enough
#: to stay in a core's cache between the passes over a block, large enough that the
#: per-block Python overhead is a few per cent (measured in ``benchmarks/run.py``).
BLOCK_ENTRIES = 1 << 17

#: Fewer blocks than this run on the calling thread: starting threads costs more than
#: it saves below a few milliseconds of work.
PARALLEL_MIN_BLOCKS = 8


@lru_cache(maxsize=1)
def _blas() -> ThreadpoolController:
    """The BLAS libraries of this process (found once: numpy and scipy load theirs at import)."""
    return ThreadpoolController().select(user_api="blas")


def _usable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _blas_threads() -> int:
    """The fewest threads any loaded BLAS may use now; 1 if none can be controlled."""
    controllers = _blas().lib_controllers
    if not controllers:
        return 1
    return max(1, min(int(c.num_threads) for c in controllers))


def worker_count(n_blocks: int) -> int:
    """Threads to use for ``n_blocks`` blocks: 1 below :data:`PARALLEL_MIN_BLOCKS`, else
    the BLAS's current thread count capped by the usable CPUs and the blocks.

    With no BLAS that ``threadpoolctl`` can control, 1: threads could not be kept from
    oversubscribing the cores.
    """
    if n_blocks < PARALLEL_MIN_BLOCKS:
        return 1
    return max(1, min(_blas_threads(), _usable_cpus(), n_blocks))


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
    """
    step = max(1, BLOCK_ENTRIES // max(1, width))
    blocks = [slice(start, min(n_rows, start + step)) for start in range(0, n_rows, step)]
    workers = worker_count(len(blocks))

    def run(pending: Callable[[], slice | None]) -> None:
        scratch = [np.empty((min(step, n_rows), width)) for _ in range(buffers)]
        while (block := pending()) is not None:
            work(block, *scratch)

    if workers == 1:
        iterator = iter(blocks)
        if n_rows * width < BLOCK_ENTRIES or _blas_threads() == 1:
            # Too small for the BLAS limit's cost (about 10 us) to pay, or already serial.
            run(lambda: next(iterator, None))
            return
        # A threaded BLAS is slow on the small products of a block (its threads wake
        # for each call; a (50, 100) triangular solve took 1.6 ms instead of 0.02 ms).
        with _blas().limit(limits=1):
            run(lambda: next(iterator, None))
        return

    lock = threading.Lock()
    shared = iter(blocks)

    def pending() -> slice | None:
        with lock:
            return next(shared, None)

    with _blas().limit(limits=1), ThreadPoolExecutor(workers - 1) as pool:
        helpers = [pool.submit(run, pending) for _ in range(workers - 1)]
        try:
            run(pending)
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
