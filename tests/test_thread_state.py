"""No process-wide thread limit that another thread could observe changes during a call.

Regression: ``log_evidence`` (through its row blocks) and the verifiers limited the BLAS
to one thread for the duration of the call. A user thread that entered its own
``threadpool_limits(2)`` meanwhile saved that 1 and "restored" it on leaving, and from
then on every BLAS call in the process ran on one thread.

The suite runs under a one-thread BLAS limit (conftest), under which a library that
also sets 1 changes nothing visible. Each test here therefore first sets a known
process-wide count (:data:`BASELINE`), and the user thread sets another one of its own
(:data:`USER`); both differ from 1. The interleavings are made deterministic with
events: the library call pauses inside itself (at its first and second row blocks, or
first and second calls of the user's function) while the user thread enters its block,
reads the counts, and leaves after the call has returned.

threadpoolctl 3.8 lets one thread at a time set a pthreads OpenBLAS's count (the first
to set it, until its ``threadpool_limits`` blocks end; other threads' settings are
silently ignored). The fixture that sets the baseline hands that ownership back, so the
user thread can set its own count, as it could in a program that had set none.
"""

from __future__ import annotations

import _thread
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import threadpoolctl
from threadpoolctl import threadpool_info, threadpool_limits

import elbo_check._blocks as blocks
from elbo_check import LinearGaussianModel
from elbo_check._random import random_gaussian, random_model
from elbo_check._threads import blas_libraries, limited_when_alone, only_python_thread
from elbo_check.testing import verify_elbo

EPS = np.finfo(float).eps
BASELINE = 3  # the process-wide BLAS thread count each test starts from
USER = 2  # the count the user thread sets inside its own threadpool_limits block
TIMEOUT = 60.0  # seconds any one step of an interleaving may wait before the test fails
ROUNDS = 3


def _blas_counts() -> list[int]:
    return [int(lib["num_threads"]) for lib in threadpool_info() if lib["user_api"] == "blas"]


@pytest.fixture
def baseline() -> Iterator[list[int]]:
    """The process-wide BLAS count set to :data:`BASELINE` for the test (then undone)."""
    if not _blas_counts():
        pytest.skip("no BLAS that threadpoolctl can control")
    with threadpool_limits(limits=BASELINE, user_api="blas"):
        counts = _blas_counts()
        assert counts == [BASELINE] * len(counts)
        _hand_back_ownership()
        yield counts


def _hand_back_ownership() -> None:
    """Let any thread set the OpenBLAS count again (threadpoolctl >= 3.8; see above)."""
    openblas = getattr(threadpoolctl, "OpenBLASController", None)
    clear = getattr(openblas, "clear_controlling_thread", None)
    if clear is not None:
        clear()


@pytest.fixture
def alone() -> None:
    """Skip when the test runner itself keeps other Python threads alive."""
    if not only_python_thread():
        pytest.skip("other Python threads are alive in this test process")


@contextmanager
def _another_thread() -> Iterator[None]:
    """An idle Python thread, alive for the block."""
    stop = threading.Event()
    idle = threading.Thread(target=stop.wait, name="idle-user-thread")
    idle.start()
    try:
        yield
    finally:
        stop.set()
        idle.join(TIMEOUT)


def _wait(event: threading.Event, what: str) -> None:
    if not event.wait(TIMEOUT):
        raise TimeoutError(f"gave up waiting for {what}")


def _large_problem() -> tuple[LinearGaussianModel, np.ndarray]:
    """A model and enough rows that log_evidence takes several blocks (threaded on old code)."""
    rng = np.random.default_rng(31)
    d = 50
    model = random_model(rng, data_dim=d, latent_dim=3, family="factor_analysis")
    n = 12 * (blocks.BLOCK_ENTRIES // d)  # 12 blocks
    return model, model.sample(n, rng)[0]


def _paused_blocks(monkeypatch: pytest.MonkeyPatch, pause: Callable[[], None]) -> None:
    """Make every row block of the library's evaluations call ``pause()`` first.

    Wraps ``for_each_block`` wherever elbo_check's modules imported it, so the pause runs
    inside the call, where the library holds any limit it sets.
    """
    original = blocks.for_each_block

    def paused(n_rows: int, width: int, work: Callable[..., None], **options: Any) -> None:
        def paused_work(rows: slice, *scratch: np.ndarray) -> None:
            pause()
            work(rows, *scratch)

        original(n_rows, width, paused_work, **options)

    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", "")
        if name.startswith("elbo_check") and getattr(module, "for_each_block", None) is original:
            monkeypatch.setattr(module, "for_each_block", paused)


def _interleave_user_thread(call: Callable[[Callable[[], None]], object]) -> dict[str, Any]:
    """Run ``call(pause)`` here while a user thread opens and closes its own limit.

    The user thread reads the BLAS counts before its block, enters
    ``threadpool_limits(USER)`` once the call has paused inside itself, reads them again
    there, again while the call is paused a second time, again after the call has
    returned (still in its block) and once more after leaving its block.
    """
    ready, inside, entered = threading.Event(), threading.Event(), threading.Event()
    midway, checked, returned = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, Any] = {}
    pauses = 0
    lock = threading.Lock()

    def pause() -> None:
        nonlocal pauses
        with lock:
            pauses += 1
            step = pauses
        if step == 1:
            inside.set()
            _wait(entered, "the user thread to enter its block")
        elif step == 2:
            midway.set()
            _wait(checked, "the user thread to read the counts mid-call")

    def user() -> None:
        try:
            seen["before its block"] = _blas_counts()
            ready.set()
            _wait(inside, "the call to pause inside itself")
            with threadpool_limits(limits=USER, user_api="blas"):
                seen["on entering its block"] = _blas_counts()
                entered.set()
                _wait(midway, "the call to pause a second time")
                seen["in its block, mid-call"] = _blas_counts()
                checked.set()
                _wait(returned, "the call to return")
                seen["in its block, after the call"] = _blas_counts()
            seen["after its block"] = _blas_counts()
        except BaseException as error:  # reported by the main thread
            seen["error"] = error
            entered.set()
            checked.set()

    thread = threading.Thread(target=user, name="user-thread")
    thread.start()
    try:
        _wait(ready, "the user thread to start")
        call(pause)
    finally:
        returned.set()
        thread.join(TIMEOUT)
    assert not thread.is_alive()
    if "error" in seen:
        raise seen["error"]
    assert pauses >= 2, "the call did not pause twice inside itself"
    return seen


def _expected_user_view(counts: list[int]) -> dict[str, list[int]]:
    user = [USER] * len(counts)
    return {
        "before its block": counts,
        "on entering its block": user,
        "in its block, mid-call": user,
        "in its block, after the call": user,
        "after its block": counts,
    }


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_log_evidence_leaves_a_user_threads_limits_alone(
    baseline: list[int], monkeypatch: pytest.MonkeyPatch, round_: int
) -> None:
    model, x = _large_problem()
    results: list[np.ndarray] = []

    def call(pause: Callable[[], None]) -> None:
        _paused_blocks(monkeypatch, pause)
        results.append(model.log_evidence(x))

    seen = _interleave_user_thread(call)
    assert seen == _expected_user_view(baseline)
    assert _blas_counts() == baseline
    expected = model.log_evidence(x)  # alone: the threaded path, where there is one
    np.testing.assert_allclose(
        results[0], expected, rtol=8 * EPS, atol=8 * EPS * np.max(np.abs(expected))
    )


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_a_verifier_leaves_a_user_threads_limits_alone(baseline: list[int], round_: int) -> None:
    def call(pause: Callable[[], None]) -> None:
        def correct_elbo(m: LinearGaussianModel, q: Any, x: np.ndarray) -> Any:
            pause()
            return m.elbo(q, x)

        verify_elbo(correct_elbo, max_examples=8, seed=round_)

    seen = _interleave_user_thread(call)
    assert seen == _expected_user_view(baseline)
    assert _blas_counts() == baseline


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_concurrent_log_evidence_calls_change_nothing_an_observer_sees(
    baseline: list[int], monkeypatch: pytest.MonkeyPatch, round_: int
) -> None:
    """Four threads call log_evidence; an observer reads the counts while all four are inside."""
    model, x = _large_problem()
    callers = 4
    all_inside = threading.Barrier(callers + 1, timeout=TIMEOUT)
    observed = threading.Barrier(callers + 1, timeout=TIMEOUT)
    paused: set[int] = set()
    lock = threading.Lock()
    caller_ids: set[int] = set()

    def pause() -> None:
        ident = threading.get_ident()
        with lock:
            first = ident in caller_ids and ident not in paused
            paused.add(ident)
        if first:  # each caller's first block: wait until all are inside and observed
            all_inside.wait()
            observed.wait()

    _paused_blocks(monkeypatch, pause)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            with lock:
                caller_ids.add(threading.get_ident())
            results[threading.get_ident()] = model.log_evidence(x)
        except BaseException as error:
            errors.append(error)
            all_inside.abort()

    threads = [threading.Thread(target=caller, name=f"caller-{i}") for i in range(callers)]
    for thread in threads:
        thread.start()
    try:
        all_inside.wait()
        during = _blas_counts()
    finally:
        observed.wait()
        for thread in threads:
            thread.join(TIMEOUT)
    assert not errors, errors
    assert during == baseline
    assert _blas_counts() == baseline
    assert len(results) == callers
    expected = model.log_evidence(x)
    for values in results.values():
        np.testing.assert_allclose(
            values, expected, rtol=8 * EPS, atol=8 * EPS * np.max(np.abs(expected))
        )


def test_a_free_running_user_thread_always_sees_its_own_limits(baseline: list[int]) -> None:
    """No events: a user thread enters and leaves threadpool_limits(USER) in a loop while
    this thread calls log_evidence; every reading must be the user's own setting."""
    model, x = _large_problem()
    stop = threading.Event()
    wrong: list[tuple[str, list[int]]] = []
    loops = 0

    def user() -> None:
        nonlocal loops
        while not stop.is_set():
            loops += 1
            if (counts := _blas_counts()) != baseline:
                wrong.append(("before", counts))
            with threadpool_limits(limits=USER, user_api="blas"):
                if (counts := _blas_counts()) != [USER] * len(baseline):
                    wrong.append(("inside", counts))
            if (counts := _blas_counts()) != baseline:
                wrong.append(("after", counts))

    thread = threading.Thread(target=user, name="user-thread")
    thread.start()
    try:
        for _ in range(ROUNDS):
            model.log_evidence(x)
    finally:
        stop.set()
        thread.join(TIMEOUT)
    assert loops > 0
    assert not wrong, wrong[:5]
    assert _blas_counts() == baseline


# ---------------------------------------------------------------------- the rule itself
class _Knob:
    """A thread count to limit, recording every change."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.sets: list[int] = []

    def get_num_threads(self) -> int:
        return self.count

    def set_num_threads(self, num_threads: int) -> None:
        self.sets.append(num_threads)
        self.count = num_threads


def test_knobs_are_limited_and_restored_when_alone(alone: None) -> None:
    knobs = [_Knob(4), _Knob(1), _Knob(2)]
    with limited_when_alone(knobs, 1) as limited:
        assert limited
        assert [k.count for k in knobs] == [1, 1, 1]
    assert [k.count for k in knobs] == [4, 1, 2]
    assert [k.sets for k in knobs] == [[1, 4], [], [1, 2]]  # an unchanged knob is not set


def test_knobs_are_restored_after_an_error(alone: None) -> None:
    knob = _Knob(4)
    with pytest.raises(ZeroDivisionError), limited_when_alone([knob], 1):
        raise ZeroDivisionError
    assert knob.count == 4


def test_a_count_someone_else_set_meanwhile_is_left_alone(alone: None) -> None:
    first, second = _Knob(4), _Knob(4)
    with limited_when_alone([first, second], 1):
        second.set_num_threads(3)  # e.g. code run by a finalizer on this thread
    assert first.count == 4
    assert second.count == 3
    assert second.sets == [1, 3]


def test_nothing_is_touched_while_another_python_thread_is_alive() -> None:
    knob = _Knob(4)
    with _another_thread():
        assert not only_python_thread()
        with limited_when_alone([knob], 1) as limited:
            assert not limited
            assert knob.count == 4
    assert knob.sets == []


def test_a_thread_started_without_the_threading_module_counts(alone: None) -> None:
    started, stop = threading.Event(), threading.Event()

    def raw() -> None:
        started.set()
        stop.wait(TIMEOUT)

    _thread.start_new_thread(raw, ())
    try:
        _wait(started, "the raw thread")
        assert threading.active_count() == 1  # invisible to threading ...
        assert not only_python_thread()  # ... but it runs Python code
    finally:
        stop.set()
        deadline = time.monotonic() + TIMEOUT  # gone before the next test looks
        while len(sys._current_frames()) > 1 and time.monotonic() < deadline:
            time.sleep(0.001)
    assert only_python_thread()


def test_the_real_blas_is_limited_and_restored_when_alone(baseline: list[int], alone: None) -> None:
    with limited_when_alone(blas_libraries(rescan=True), 1) as limited:
        assert limited
        assert _blas_counts() == [1] * len(baseline)
    assert _blas_counts() == baseline


def test_a_limit_set_alone_keeps_no_ownership_of_the_blas(baseline: list[int], alone: None) -> None:
    """After a limited call, a user thread's own threadpool_limits still takes effect."""
    model, x = _large_problem()
    model.log_evidence(x)  # alone: limits the BLAS inside, and must leave no trace
    seen: dict[str, list[int]] = {}

    def user() -> None:
        with threadpool_limits(limits=USER, user_api="blas"):
            seen["inside"] = _blas_counts()
        seen["after"] = _blas_counts()

    thread = threading.Thread(target=user, name="user-thread")
    thread.start()
    thread.join(TIMEOUT)
    assert seen == {"inside": [USER] * len(baseline), "after": baseline}


def test_verifiers_limit_the_blas_when_alone_and_not_otherwise(
    baseline: list[int], alone: None
) -> None:
    seen: list[list[int]] = []

    def spying_elbo(m: LinearGaussianModel, q: Any, x: np.ndarray) -> Any:
        seen.append(_blas_counts())
        return m.elbo(q, x)

    verify_elbo(spying_elbo, max_examples=3)
    assert seen
    assert all(counts == [1] * len(baseline) for counts in seen)
    assert _blas_counts() == baseline
    seen.clear()
    with _another_thread():
        verify_elbo(spying_elbo, max_examples=3)
    assert seen
    assert all(counts == baseline for counts in seen)
    assert _blas_counts() == baseline


def test_verifiers_limit_torch_intra_op_threads_when_alone(
    monkeypatch: pytest.MonkeyPatch, alone: None
) -> None:
    """An imported torch's intra-op pool is limited while user code runs and set back
    after; torch is never imported by elbo_check (a stand-in module records the calls),
    and with another Python thread alive it is not touched."""
    import types

    fake = types.ModuleType("torch")
    knob = _Knob(4)
    fake.get_num_threads = knob.get_num_threads  # type: ignore[attr-defined]
    fake.set_num_threads = knob.set_num_threads  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", fake)
    seen: list[int] = []

    def spying_elbo(m: LinearGaussianModel, q: Any, x: np.ndarray) -> Any:
        seen.append(knob.count)
        return m.elbo(q, x)

    verify_elbo(spying_elbo, max_examples=3)
    assert seen
    assert set(seen) == {1}
    assert knob.count == 4
    assert knob.sets == [1, 4]
    seen.clear()
    with _another_thread():
        verify_elbo(spying_elbo, max_examples=3)
    assert set(seen) == {4}
    assert knob.sets == [1, 4]


def test_verifiers_limit_openmp_too(alone: None) -> None:
    """Every OpenMP runtime threadpoolctl finds is one of the pools limited."""
    from elbo_check._threads import user_code_knobs

    apis = {getattr(k, "_controller", None).__class__.__name__ for k in user_code_knobs()}
    found = {info["user_api"] for info in threadpoolctl.threadpool_info() if info["user_api"]}
    assert len(user_code_knobs()) >= len(blas_libraries(rescan=True))
    if "openmp" in found:
        assert any("OpenMP" in name for name in apis), apis


# ---------------------------------------------------------------------- blocks, not alone
@pytest.fixture
def two_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two usable CPUs and tiny blocks, so that, alone, the blocks would run threaded."""
    monkeypatch.setattr(blocks, "_usable_cpus", lambda: 2)
    monkeypatch.setattr(blocks, "BLOCK_ENTRIES", 64)
    monkeypatch.setattr(blocks, "PARALLEL_MIN_BLOCKS", 2)


def test_with_another_thread_alive_blocks_run_here_unlimited(
    baseline: list[int], two_cpus: None
) -> None:
    """Every row once, on the calling thread, in blocks UNLIMITED_BLOCK_FACTOR times larger."""
    n, width = 1001, 10  # 6 rows per usual block, 48 per block here, the last one short
    assert blocks.UNLIMITED_BLOCK_FACTOR == 8
    seen = np.zeros(n, dtype=int)
    threads: set[str] = set()
    sizes: list[int] = []
    counts_inside: list[list[int]] = []

    def work(rows: slice, buffer: np.ndarray) -> None:
        assert buffer.shape == (48, width)
        seen[rows] += 1
        sizes.append(rows.stop - rows.start)
        threads.add(threading.current_thread().name)
        counts_inside.append(_blas_counts())

    with _another_thread():
        assert blocks.worker_count(100) == 2
        blocks.for_each_block(n, width, work)
    assert np.all(seen == 1)
    assert threads == {threading.current_thread().name}
    assert sizes == [48] * 20 + [41]
    assert all(counts == baseline for counts in counts_inside)
    assert _blas_counts() == baseline


def test_with_another_thread_alive_an_error_reaches_the_caller(
    baseline: list[int], two_cpus: None
) -> None:
    def work(rows: slice, buffer: np.ndarray) -> None:
        if rows.start > 500:
            raise ZeroDivisionError(f"block {rows.start}")

    with _another_thread(), pytest.raises(ZeroDivisionError, match="block"):
        blocks.for_each_block(1000, 10, work)
    assert _blas_counts() == baseline


@pytest.mark.parametrize("operation", ["log_evidence", "posterior", "elbo", "kl_to_posterior"])
def test_with_another_thread_alive_results_match(
    baseline: list[int], two_cpus: None, alone: None, operation: str
) -> None:
    """Alone (threaded blocks, BLAS limited) and not alone (serial) agree to 8 ulps."""
    rng = np.random.default_rng(11)
    model = random_model(rng, data_dim=7, latent_dim=3, family="full_noise", condition_number=1e4)
    x = model.sample(300, rng)[0]
    x[::7] *= 40.0
    q = random_gaussian(rng, 3, batch_shape=(300,), mean_scale=2.0)
    evaluations: dict[str, Callable[[], np.ndarray]] = {
        "log_evidence": lambda: model.log_evidence(x),
        "posterior": lambda: model.posterior(x).mean,
        "elbo": lambda: model.elbo(q, x),
        "kl_to_posterior": lambda: model.kl_to_posterior(q, x),
    }
    threaded = evaluations[operation]()
    with _another_thread():
        serial = evaluations[operation]()
    np.testing.assert_allclose(
        threaded, serial, rtol=8 * EPS, atol=8 * EPS * np.max(np.abs(serial))
    )
