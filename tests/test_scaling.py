"""Working memory: with isotropic or diagonal noise nothing of size D x D is ever built.

numpy reports its allocations to :mod:`tracemalloc`, so the peak of traced memory
during a call bounds the working set. With D = 20000 a single (D, D) float64 matrix
would be 3.2 GB; the bound asserted here is a few (N + K) x D arrays.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from elbo_check import Gaussian, LinearGaussianModel

D, K, N = 20_000, 4, 8


def _peak_bytes(call: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module", params=["isotropic", "diagonal"])
def big_model(request: pytest.FixtureRequest) -> LinearGaussianModel:
    rng = np.random.default_rng(5)
    noise = 0.5 if request.param == "isotropic" else rng.uniform(0.2, 2.0, D)
    prior = Gaussian.from_covariance(mean=rng.standard_normal(K), cov=np.eye(K) * 2.0)
    return LinearGaussianModel(
        weights=rng.standard_normal((D, K)),
        bias=rng.standard_normal(D),
        prior=prior,
        noise_cov=noise,
    )


@pytest.mark.parametrize(
    "operation",
    ["log_evidence", "posterior", "elbo", "kl_to_posterior", "grad_variational", "grad_model"],
)
def test_no_quadratic_memory_in_d(big_model: LinearGaussianModel, operation: str) -> None:
    """Peak traced memory stays within 16 arrays of shape (N + K, D), far below D^2."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((N, D))
    q = Gaussian.from_diagonal(mean=rng.standard_normal((N, K)), variances=np.ones(K))
    calls: dict[str, Callable[[], object]] = {
        "log_evidence": lambda: big_model.log_evidence(x),
        "posterior": lambda: big_model.posterior(x),
        "elbo": lambda: big_model.elbo(q, x),
        "kl_to_posterior": lambda: big_model.kl_to_posterior(q, x),
        "grad_variational": lambda: big_model.elbo_grad_variational(q, x),
        "grad_model": lambda: big_model.elbo_grad_model(q, x),
    }
    bound = 16 * (N + K) * D * 8
    peak = _peak_bytes(calls[operation])
    assert peak < bound, f"{operation} peaked at {peak / 1e6:.1f} MB (bound {bound / 1e6:.1f} MB)"
    assert bound < D * D * 8 / 100  # the bound itself is far from quadratic


def test_tracemalloc_sees_numpy_allocations() -> None:
    """The measuring instrument works: an 8 MB numpy array shows up in the peak."""
    assert _peak_bytes(lambda: np.ones((1000, 1000))) >= 8_000_000


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("operation", ["log_evidence", "posterior", "elbo", "kl_to_posterior"])
def test_working_memory_does_not_grow_with_rows(
    operation: str, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """80 MB of float64 rows are processed in blocks: no copy of x, no (N, D) temporary.

    The bound is two row blocks (``BLOCK_ENTRIES`` float64 each) per thread plus a few
    (N, K + 1) arrays (outputs and per-row latent quantities), under a third of the
    input's size; with two threads each has its own scratch blocks.
    """
    import elbo_check._blocks as blocks
    from elbo_check._blocks import BLOCK_ENTRIES

    monkeypatch.setattr(blocks, "_usable_cpus", lambda: threads)
    limits = threadpool_limits(limits=threads, user_api="blas")

    rng = np.random.default_rng(7)
    d, k, n = 500, 5, 20_000
    model = LinearGaussianModel(
        weights=rng.standard_normal((d, k)),
        bias=rng.standard_normal(d),
        prior=Gaussian.standard(k),
        noise_cov=rng.uniform(0.5, 2.0, d),
    )
    x = rng.standard_normal((n, d))
    q = Gaussian.from_diagonal(mean=rng.standard_normal((n, k)), variances=np.ones(k))
    calls: dict[str, Callable[[], object]] = {
        "log_evidence": lambda: model.log_evidence(x),
        "posterior": lambda: model.posterior(x),
        "elbo": lambda: model.elbo(q, x),
        "kl_to_posterior": lambda: model.kl_to_posterior(q, x),
    }
    try:
        assert blocks.worker_count(1000) == threads
        peak = _peak_bytes(calls[operation])
    finally:
        limits.restore_original_limits()
    bound = 2 * threads * BLOCK_ENTRIES * 8 + 8 * n * (k + 1) * 8
    assert peak < bound, f"{operation} peaked at {peak / 1e6:.1f} MB (bound {bound / 1e6:.1f} MB)"
    assert bound < x.nbytes / 3
