"""Effort profiles, defaults, and the checks every verifier applies to its options."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._config import default_profile, default_seed
from .._errors import InvalidInputError
from ._progress import current

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
    value = _seed_value(seed)
    progress = current()
    if progress is not None:
        progress.seed = value
    return value


def _seed_value(seed: int | np.random.Generator | None) -> int:
    if seed is None:
        return default_seed()
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(0, 2**63 - 1))
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, (bool, np.bool_)):
        if seed < 0:
            raise InvalidInputError(f"seed must be an integer >= 0; got seed={seed!r}")
        return int(seed)
    raise InvalidInputError(
        f"seed must be an int, a numpy.random.Generator or None; got {type(seed).__name__}"
    )


def _check_callable(fn: Any) -> None:
    if not callable(fn):
        raise InvalidInputError(f"fn must be callable; got {type(fn).__name__}")


def _check_rate(false_alarm_rate: float) -> None:
    check_rate("false_alarm_rate", false_alarm_rate)


# ---------------------------------------------------------------------- one vocabulary
def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    """``value`` if it is one of the strings ``allowed``; else an error naming ``name``."""
    if not isinstance(value, str) or value not in allowed:
        raise InvalidInputError(f"{name} must be one of {list(allowed)}; got {name}={value!r}")
    return value


def check_flag(name: str, value: Any) -> bool:
    """``value`` as a bool if it is True or False (numpy's too); else an error naming ``name``."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidInputError(f"{name} must be True or False; got {name}={value!r}")
    return bool(value)


def check_kinds(name: str, value: Any, allowed: Sequence[str]) -> tuple[str, ...]:
    """A non-empty tuple of kinds from ``allowed`` (a string is one kind, as for q_kinds)."""
    kinds = (value,) if isinstance(value, str) else value
    if not isinstance(kinds, Sequence) or not kinds:
        raise InvalidInputError(
            f"{name} must be a non-empty sequence of {list(allowed)}; got {name}={value!r}"
        )
    unknown = [kind for kind in kinds if kind not in allowed]
    if unknown:
        raise InvalidInputError(f"{name} must hold only {list(allowed)}; got {unknown!r}")
    return tuple(kinds)


def check_tolerance(name: str, value: Any) -> float:
    """A finite real number >= 0 (``rtol``, ``atol``); a clear error for anything else,
    NaN and infinity included (a NaN tolerance would pass every value)."""
    if not _is_real(value) or not math.isfinite(float(value)) or float(value) < 0:
        raise InvalidInputError(f"{name} must be a finite real number >= 0; got {name}={value!r}")
    return float(value)


def check_count(name: str, value: Any, default: int, *, minimum: int = 1) -> int:
    """``default`` for None, else an integer >= ``minimum`` (never a silent default for
    0 or a negative count, never a float)."""
    if value is None:
        return default
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise InvalidInputError(
            f"{name} must be an integer >= {minimum} or None; got {name}={value!r} "
            f"({type(value).__name__})"
        )
    if value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}; got {name}={value!r}")
    return int(value)


def check_rate(name: str, value: Any) -> float:
    """A real number strictly between 0 and 1 (a false-alarm rate)."""
    if not _is_real(value) or not 0.0 < float(value) < 1.0:
        raise InvalidInputError(f"{name} must be a real number in (0, 1); got {name}={value!r}")
    return float(value)


def check_time_budget(name: str, value: Any) -> float | None:
    """None (no limit) or a positive, finite number of seconds."""
    if value is None:
        return None
    if not _is_real(value) or not math.isfinite(float(value)) or float(value) <= 0:
        raise InvalidInputError(
            f"{name} must be None or a positive, finite number of seconds; got {name}={value!r}"
        )
    return float(value)


def check_condition_number(name: str, value: Any) -> float:
    """A finite real number >= 1 (a bound on a condition number)."""
    if not _is_real(value) or not math.isfinite(float(value)) or float(value) < 1:
        raise InvalidInputError(f"{name} must be a finite real number >= 1; got {name}={value!r}")
    return float(value)
