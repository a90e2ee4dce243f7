"""Process-wide defaults for the verifiers: seed and effort profile.

Resolution order for each setting: an explicit argument to a verifier, then a value
set with :func:`configure` (the pytest plugin does this from ``--elbo-check-seed`` and
``--elbo-check-profile``), then the environment variables ``ELBO_CHECK_SEED`` and
``ELBO_CHECK_PROFILE``, then the built-in default (seed 0, profile ``"dev"``).
"""

from __future__ import annotations

import os

__all__ = ["PROFILE_ENV", "SEED_ENV", "configure", "default_profile", "default_seed"]

SEED_ENV = "ELBO_CHECK_SEED"
PROFILE_ENV = "ELBO_CHECK_PROFILE"

_settings: dict[str, object] = {"seed": None, "profile": None}


def configure(*, seed: int | None = None, profile: str | None = None) -> None:
    """Set (or, with ``None``, clear) the process-wide default seed and profile."""
    _settings["seed"] = seed
    _settings["profile"] = profile


def default_seed() -> int:
    """The seed a verifier uses when none is passed."""
    value = _settings["seed"]
    if value is None:
        value = os.environ.get(SEED_ENV, "0")
    return int(str(value))


def default_profile() -> str:
    """The profile a verifier uses when none is passed."""
    value = _settings["profile"] or os.environ.get(PROFILE_ENV) or "dev"
    return str(value)
