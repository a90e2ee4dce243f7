"""Shared test configuration: hypothesis profiles and small fixtures.

Profiles: ``dev`` (quick, the local default), ``ci`` (thorough, chosen automatically
when the ``CI`` environment variable is set) and ``thorough`` (for a long soak). Pick
one explicitly with ``--hypothesis-profile=NAME`` or ``HYPOTHESIS_PROFILE=NAME``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from threadpoolctl import threadpool_limits

# The suite makes many tiny (K x K) BLAS calls, for which OpenBLAS thread pools only
# cost: on a loaded 2-core machine the suite took 4 min 18 s with two threads and about
# 80 s with one. The verifiers limit themselves; this covers the rest of the tests.
_ONE_BLAS_THREAD = threadpool_limits(limits=1, user_api="blas")

settings.register_profile(
    "dev", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci",
    max_examples=120,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh, fixed-seed generator per test (so tests do not share random state)."""
    return np.random.default_rng(20261125)
