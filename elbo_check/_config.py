"""Process-wide defaults for the verifiers: seed and effort profile.

Resolution order for each setting: an explicit argument to a verifier, then a value
set with :func:`configure` (the pytest plugin does this from ``--elbo-check-seed`` and
``--elbo-check-profile``), then the environment variables ``ELBO_CHECK_SEED`` and
``ELBO_CHECK_PROFILE``, then the built-in default (seed 0, profile ``"dev"``).

Every value is checked where it enters: a bad one is reported with the name of the
variable (or argument) it came from and what was seen, not by ``int()`` or a
``KeyError`` somewhere inside a verifier.
"""

from __future__ import annotations

import numbers
import os

from ._errors import InvalidInputError, InvalidTypeError

__all__ = [
    "PROFILE_ENV",
    "PROFILE_NAMES",
    "SEED_ENV",
    "configure",
    "default_profile",
    "default_seed",
]

SEED_ENV = "ELBO_CHECK_SEED"
PROFILE_ENV = "ELBO_CHECK_PROFILE"
#: The effort profiles, the keys of :data:`elbo_check.testing.PROFILES` (repeated here
#: so that this module imports neither hypothesis nor pytest; a test checks they agree).
PROFILE_NAMES = ("dev", "ci", "thorough")

_settings: dict[str, object] = {"seed": None, "profile": None}


def _check_seed(name: str, seed: object) -> int:
    """``seed`` as an int, or an error naming ``name`` unless it is a non-negative int."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise InvalidTypeError(
            f"{name} must be a non-negative integer or None; got {type(seed).__name__} {seed!r}"
        )
    if seed < 0:
        raise InvalidInputError(f"{name} must be a non-negative integer; got {seed}")
    return int(seed)


def _check_profile(name: str, profile: object) -> str:
    """``profile``, or an error naming ``name`` unless it is one of :data:`PROFILE_NAMES`."""
    if profile not in PROFILE_NAMES:
        raise InvalidInputError(
            f"{name} must be one of {', '.join(map(repr, PROFILE_NAMES))}; got {profile!r}"
        )
    return str(profile)


def configure(*, seed: int | None = None, profile: str | None = None) -> None:
    """Set (or, with ``None``, clear) the process-wide default seed and profile.

    Raises
    ------
    InvalidInputError
        If ``seed`` is negative or ``profile`` is not one of :data:`PROFILE_NAMES`
        (nothing is changed then).
    InvalidTypeError
        If ``seed`` is not an integer.
    """
    if seed is not None:
        seed = _check_seed("seed", seed)
    if profile is not None:
        profile = _check_profile("profile", profile)
    _settings["seed"] = seed
    _settings["profile"] = profile


def default_seed() -> int:
    """The seed a verifier uses when none is passed.

    Raises
    ------
    InvalidInputError
        If ``$ELBO_CHECK_SEED`` is set but is not a non-negative integer.
    """
    value = _settings["seed"]
    if value is not None:
        return _check_seed("seed", value)
    text = os.environ.get(SEED_ENV, "").strip()
    if not text:
        return 0
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if seed < 0:
        raise InvalidInputError(
            f"the environment variable {SEED_ENV} must be a non-negative integer; "
            f"got {os.environ[SEED_ENV]!r}"
        )
    return seed


def default_profile() -> str:
    """The profile a verifier uses when none is passed.

    Raises
    ------
    InvalidInputError
        If ``$ELBO_CHECK_PROFILE`` is set but names no profile.
    """
    value = _settings["profile"]
    if value is not None:
        return _check_profile("profile", value)
    text = os.environ.get(PROFILE_ENV, "").strip()
    if not text:
        return "dev"
    return _check_profile(f"the environment variable {PROFILE_ENV}", text)
