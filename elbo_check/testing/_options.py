"""Effort profiles, defaults, and the checks every verifier applies to its options."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._config import default_profile, default_seed
from .._errors import InvalidInputError

FloatArray = NDArray[np.float64]


PROFILES: dict[str, dict[str, int]] = {
    "dev": {"max_examples": 100, "calls": 800, "problems": 4},
    "ci": {"max_examples": 300, "calls": 1600, "problems": 6},
    "thorough": {"max_examples": 2000, "calls": 4000, "problems": 12},
}

#: Default false-alarm rate of one statistical verifier call.
DEFAULT_FALSE_ALARM_RATE = 1e-6

#: Batch means per problem in the statistical tests: each batch averages
#: ``calls / BATCHES`` independent estimates, so batch means are close to normal
#: even when single estimates are skewed, and the t-test has BATCHES - 1 degrees of
#: freedom.
BATCHES = 40


# ---------------------------------------------------------------------- options
def _profile(profile: str | None) -> dict[str, int]:
    name = profile or default_profile()
    if name not in PROFILES:
        raise InvalidInputError(f"profile must be one of {sorted(PROFILES)}; got profile={name!r}")
    return PROFILES[name]


def _seed(seed: int | np.random.Generator | None) -> int:
    if seed is None:
        return default_seed()
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(0, 2**63 - 1))
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        return int(seed)
    raise InvalidInputError(
        f"seed must be an int, a numpy.random.Generator or None; got {type(seed).__name__}"
    )


def _check_callable(fn: Any) -> None:
    if not callable(fn):
        raise InvalidInputError(f"fn must be callable; got {type(fn).__name__}")


def _check_rate(false_alarm_rate: float) -> None:
    if not (0.0 < false_alarm_rate < 1.0):
        raise InvalidInputError(
            f"false_alarm_rate must be in (0, 1); got false_alarm_rate={false_alarm_rate!r}"
        )
