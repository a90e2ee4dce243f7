"""Row blocks on several threads: same values, errors surface, the BLAS limit is undone.

The test session runs with one BLAS thread (conftest), under which evaluations stay on
the calling thread; these tests raise the limit to two so the threaded path runs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import elbo_check._blocks as blocks
import elbo_check._marginal as marginal_module
from elbo_check import Gaussian, LinearGaussianModel
from elbo_check._random import Family, random_gaussian, random_model

EPS = np.finfo(float).eps


@pytest.fixture
def two_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Two BLAS threads, two usable CPUs and tiny blocks, so every call below is threaded."""
    monkeypatch.setattr(blocks, "_usable_cpus", lambda: 2)
    monkeypatch.setattr(blocks, "BLOCK_ENTRIES", 64)
    monkeypatch.setattr(blocks, "PARALLEL_MIN_BLOCKS", 2)
    with threadpool_limits(limits=2, user_api="blas"):
        yield


def _blas_thread_counts() -> list[int]:
    return [int(lib["num_threads"]) for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_worker_count_follows_the_blas_and_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blocks, "_usable_cpus", lambda: 2)
    assert blocks.worker_count(blocks.PARALLEL_MIN_BLOCKS - 1) == 1
    with threadpool_limits(limits=1, user_api="blas"):
        assert blocks.worker_count(1000) == 1
    with threadpool_limits(limits=4, user_api="blas"):
        assert blocks.worker_count(1000) == 2
        assert blocks.worker_count(blocks.PARALLEL_MIN_BLOCKS) == 2
    monkeypatch.setattr(blocks, "_usable_cpus", lambda: 1)
    with threadpool_limits(limits=4, user_api="blas"):
        assert blocks.worker_count(1000) == 1


def test_every_row_is_visited_once_on_two_threads(two_threads: None) -> None:
    n, width = 1001, 10  # 6 rows per block, the last block short
    seen = np.zeros(n, dtype=int)
    names: set[str] = set()
    limits_inside: list[list[int]] = []

    def work(block: slice, buffer: np.ndarray) -> None:
        assert buffer.shape == (6, width)
        seen[block] += 1
        names.add(threading.current_thread().name)
        limits_inside.append(_blas_thread_counts())

    before = _blas_thread_counts()
    blocks.for_each_block(n, width, work)
    assert np.all(seen == 1)
    assert len(names) == 2, names  # the caller and one helper
    assert all(all(c == 1 for c in counts) for counts in limits_inside)
    assert _blas_thread_counts() == before  # the BLAS limit is undone


@pytest.mark.parametrize("where", ["caller", "helper"])
def test_an_error_in_a_block_reaches_the_caller(two_threads: None, where: str) -> None:
    caller = threading.current_thread()
    before = _blas_thread_counts()
    both_started = threading.Barrier(2, timeout=10)
    started: set[str] = set()

    def work(block: slice, buffer: np.ndarray) -> None:
        name = threading.current_thread().name
        if name not in started:  # each thread's first block waits for the other thread's
            started.add(name)
            both_started.wait()
        if (threading.current_thread() is caller) == (where == "caller"):
            raise ZeroDivisionError(f"block {block.start}")

    with pytest.raises(ZeroDivisionError, match="block"):
        blocks.for_each_block(1000, 10, work)
    assert threading.active_count() == 1 or all(
        not t.name.startswith("ThreadPoolExecutor") for t in threading.enumerate()
    )
    assert _blas_thread_counts() == before


def _evaluations(
    model: LinearGaussianModel, q: Gaussian, x: np.ndarray
) -> dict[str, Callable[[], np.ndarray]]:
    return {
        "log_evidence": lambda: model.log_evidence(x),
        "posterior": lambda: model.posterior(x).mean,
        "elbo": lambda: model.elbo(q, x),
        "kl_to_posterior": lambda: model.kl_to_posterior(q, x),
    }


@pytest.mark.parametrize("family", ["factor_analysis", "full_noise", "ppca"])
@pytest.mark.parametrize("operation", ["log_evidence", "posterior", "elbo", "kl_to_posterior"])
def test_threaded_results_match_the_serial_ones(
    monkeypatch: pytest.MonkeyPatch, family: Family, operation: str
) -> None:
    rng = np.random.default_rng(11)
    model = random_model(rng, data_dim=7, latent_dim=3, family=family, condition_number=1e4)
    x = model.sample(300, rng)[0]
    x[::7] *= 40.0  # some rows far out, so both Mahalanobis routes run
    q = random_gaussian(rng, 3, batch_shape=(300,), mean_scale=2.0)
    serial = _evaluations(model, q, x)[operation]()
    monkeypatch.setattr(blocks, "_usable_cpus", lambda: 2)
    monkeypatch.setattr(blocks, "BLOCK_ENTRIES", 70)  # 10 rows per block
    monkeypatch.setattr(blocks, "PARALLEL_MIN_BLOCKS", 2)
    with threadpool_limits(limits=2, user_api="blas"):
        assert blocks.worker_count(30) == 2
        threaded = _evaluations(model, q, x)[operation]()
    np.testing.assert_allclose(
        threaded, serial, rtol=8 * EPS, atol=8 * EPS * np.max(np.abs(serial))
    )


def test_both_residual_routes_agree_with_the_explicit_residual(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows that cancel are recomputed in-block (many per block) or afterwards (few).

    Rows of pure noise do not cancel; in the first half of x every 20th row lies along
    the loadings of a high signal-to-noise model (one cancelling row per block of 20:
    deferred), in the second half 15 of every 20 do (in-block). Both must equal the
    explicit residual route, forced for every row by ``CANCELLATION_LIMIT = inf``.
    """
    rng = np.random.default_rng(5)
    d, k = 12, 3
    model = LinearGaussianModel(  # signal-to-noise about 1e4: rows along W cancel
        weights=rng.standard_normal((d, k)),
        bias=rng.standard_normal(d),
        prior=Gaussian.standard(k),
        noise_cov=rng.uniform(0.5, 2.0, d) * 1e-4,
    )
    noise_only = np.sqrt(model.noise_cov) * rng.standard_normal((400, d))
    far = rng.standard_normal((400, k)) @ model.weights.T  # along the loadings
    x = model.marginal_mean + noise_only
    x[:200:20] += far[:200:20]
    many = np.arange(200, 400)[np.arange(200, 400) % 4 != 0]  # 15 of every 20 rows
    x[many] += far[many]
    calls: list[int] = []
    original = marginal_module.MarginalFactorization.residual_squares

    def spy(self: marginal_module.MarginalFactorization, *args: np.ndarray) -> np.ndarray:
        calls.append(args[0].shape[0])
        return original(self, *args)

    monkeypatch.setattr(marginal_module.MarginalFactorization, "residual_squares", spy)
    monkeypatch.setattr(blocks, "BLOCK_ENTRIES", 20 * d)
    routed = model.log_evidence(x)
    assert calls == [15] * 10 + [10], calls  # ten blocks in place, then the 10 deferred rows
    monkeypatch.setattr(marginal_module, "CANCELLATION_LIMIT", np.inf)
    explicit = model.log_evidence(x)
    np.testing.assert_allclose(routed, explicit, rtol=16 * EPS)
