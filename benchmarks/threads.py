"""How fast log_evidence runs under each way of sharing the cores with the BLAS.

    python benchmarks/threads.py                    # (N, D, K) = (100k, 1000, 20), 9 rounds
    python benchmarks/threads.py --rows 20000 --rounds 5

Each round times ``X @ W`` (the floor: one read of X and its product with the loadings)
and then, right after it, ``log_evidence`` in each variant, so a change in the load of
the machine hits a pair alike; the ratio of each pair is reported with its median and
range over the rounds, next to the median and range of the times themselves. One
warm-up call of each precedes the rounds. Variants:

``shipped``
    elbo_check as it is, called while this is the only Python thread: row blocks on
    worker threads, the BLAS limited to one thread for the call.
``shipped-not-alone``
    elbo_check as it is, with an idle Python thread alive, so the BLAS limit is not
    touched: the blocks run serially, ``UNLIMITED_BLOCK_FACTOR`` times larger, and the
    BLAS uses its threads inside each block's products.
``a-serial``
    Option (a): blocks of the usual size one after another on the calling thread; no limit.
``b-threads``
    Option (b): worker threads as in ``shipped`` but no limit: each block's products may use all
    the BLAS's threads as well (oversubscription).

The model is a factor-analysis model (diagonal noise) with standard-normal loadings.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import elbo_check._blocks as blocks  # noqa: E402
from elbo_check import factor_analysis  # noqa: E402
from elbo_check._threads import blas_libraries  # noqa: E402

ForEachBlock = Callable[..., None]


def _serial_blocks(n_rows: int, width: int, work: Callable[..., None], *, buffers: int = 1) -> None:
    """Variant (a): blocks of the usual size on the calling thread, the BLAS untouched."""
    step = max(1, blocks.BLOCK_ENTRIES // max(1, width))
    scratch = [np.empty((min(step, n_rows), width)) for _ in range(buffers)]
    for start in range(0, n_rows, step):
        work(slice(start, min(n_rows, start + step)), *scratch)


def _threaded_blocks(
    n_rows: int, width: int, work: Callable[..., None], *, buffers: int = 1
) -> None:
    """Variant (b): as many worker threads as the shipped code uses, the BLAS untouched."""
    step = max(1, blocks.BLOCK_ENTRIES // max(1, width))
    workers = blocks.worker_count(-(-n_rows // step))
    lock = threading.Lock()
    shared = iter([slice(s, min(n_rows, s + step)) for s in range(0, n_rows, step)])

    def run() -> None:
        scratch = [np.empty((min(step, n_rows), width)) for _ in range(buffers)]
        while True:
            with lock:
                block = next(shared, None)
            if block is None:
                return
            work(block, *scratch)

    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(run) for _ in range(workers)]:
            future.result()


@contextmanager
def _for_each_block(replacement: ForEachBlock | None) -> Iterator[None]:
    """Use ``replacement`` wherever elbo_check's modules imported ``for_each_block``."""
    if replacement is None:
        yield
        return
    original = blocks.for_each_block
    modules = [
        module
        for module in list(sys.modules.values())
        if getattr(module, "__name__", "").startswith("elbo_check")
        and getattr(module, "for_each_block", None) is original
    ]
    for module in modules:
        module.for_each_block = replacement  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module in modules:
            module.for_each_block = original  # type: ignore[attr-defined]


@contextmanager
def _another_thread(alive: bool) -> Iterator[None]:
    if not alive:
        yield
        return
    stop = threading.Event()
    idle = threading.Thread(target=stop.wait)
    idle.start()
    try:
        yield
    finally:
        stop.set()
        idle.join()


#: name -> (replacement for for_each_block or None for the shipped one, another thread?)
VARIANTS: dict[str, tuple[ForEachBlock | None, bool]] = {
    "shipped": (None, False),
    "shipped-not-alone": (None, True),
    "a-serial": (_serial_blocks, False),
    "b-threads": (_threaded_blocks, False),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1000)
    parser.add_argument("--latent", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated names from the list"
    )
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.variants.split(",")]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")

    rng = np.random.default_rng(0)
    n, d, k = args.rows, args.dim, args.latent
    w = rng.standard_normal((d, k))
    model = factor_analysis(
        loadings=w, mean=rng.standard_normal(d), noise_variances=rng.uniform(0.5, 2.0, d)
    )
    x = np.empty((n, d))
    for start in range(0, n, 10_000):
        stop = min(n, start + 10_000)
        x[start:stop] = rng.standard_normal((stop - start, d))

    def timed(fn: Callable[[], Any]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def call(name: str) -> float:
        replacement, other_thread = VARIANTS[name]
        with _for_each_block(replacement), _another_thread(other_thread):
            return timed(lambda: model.log_evidence(x))

    threads = [int(lib.get_num_threads()) for lib in blas_libraries()]
    print(f"(N, D, K) = ({n}, {d}, {k}); BLAS threads {threads}; {args.rounds} rounds")
    reference = model.log_evidence(x)
    timed(lambda: x @ w)
    for name in names:  # warm-up, and every variant computes the same values
        replacement, other_thread = VARIANTS[name]
        with _for_each_block(replacement), _another_thread(other_thread):
            np.testing.assert_allclose(model.log_evidence(x), reference, rtol=1e-12)
    floor: list[float] = []
    pairs: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            product = timed(lambda: x @ w)
            floor.append(product)
            pairs[name].append((call(name), product))

    def span(values: list[float], scale: float = 1.0, fmt: str = ".0f") -> str:
        mid, low, high = statistics.median(values), min(values), max(values)
        return f"{mid * scale:{fmt}} [{low * scale:{fmt}}, {high * scale:{fmt}}]"

    print(f"{'X @ W':18s} {span(floor, 1e3)} ms")
    for name in names:
        times = [t for t, _ in pairs[name]]
        ratios = [t / p for t, p in pairs[name]]
        print(
            f"{name:18s} {span(times, 1e3)} ms; / X @ W (paired): {span(ratios, fmt='.2f')}",
            flush=True,
        )


if __name__ == "__main__":
    main()
