"""pytest plugin: one seed and one effort profile for every elbo_check verifier in a run.

Installed with the package (entry point ``pytest11: elbo_check``); disable it with
``-p no:elbo_check``. Options, in the ``elbo-check`` group of ``pytest --help``:

``--elbo-check-seed=INT|random``
    The default seed of the verifiers and of the fixtures below (default:
    ``$ELBO_CHECK_SEED`` or 0). ``random`` draws a fresh one; it is printed in the
    header, so the run can be repeated by passing it back.
``--elbo-check-profile={dev,ci,thorough}``
    The default effort profile of the verifiers (default: ``$ELBO_CHECK_PROFILE``, else
    ``ci`` when the ``CI`` environment variable is set, else ``dev``).

Fixtures (session-scoped, so they are safe to request in tests decorated with
hypothesis' ``@given``):

``elbo_check_seed`` / ``elbo_check_profile``
    The seed (int) and profile (str) of this run.
``elbo_check_rng``
    A factory: ``elbo_check_rng(key=None)`` returns a fresh ``numpy.random.Generator``
    seeded from the run's seed, the test's node id, ``key`` and how many generators
    the test (or, under ``@given``, the current example) has already asked for with
    that key. Repeated calls give independent streams; a rerun with the same seed
    gives the same ones. Under ``@given`` every example starts afresh, as hypothesis
    does for the global ``random`` module, so a replayed example sees the same
    generators; to vary them between examples, pass a drawn value as ``key`` or use
    ``hypothesis.strategies.random_module()``.
``elbo_check_model``
    A factory: ``elbo_check_model(data_dim=3, latent_dim=2, family="general")``
    returns a random :class:`~elbo_check.LinearGaussianModel` drawn the same way.

This module is imported whenever pytest starts, so it imports nothing heavy at
module level (no scipy.stats, hypothesis or :mod:`elbo_check.testing`).
"""

from __future__ import annotations

import argparse
import hashlib
import operator
import os
import secrets
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import numpy as np

    from ._model import LinearGaussianModel

__all__ = [
    "GROUP",
    "PROFILE_CHOICES",
    "PROFILE_OPTION",
    "SEED_OPTION",
    "ModelFactory",
    "RngFactory",
]

#: Name of the option group in ``pytest --help``.
GROUP = "elbo-check"
#: The seed option; takes a non-negative integer or ``random``.
SEED_OPTION = "--elbo-check-seed"
#: The profile option.
PROFILE_OPTION = "--elbo-check-profile"
#: The keys of :data:`elbo_check.testing.PROFILES` (repeated here so that loading the
#: plugin does not import hypothesis; a test checks that the two agree).
PROFILE_CHOICES = ("dev", "ci", "thorough")
#: Value of ``--elbo-check-seed`` that draws a fresh seed.
RANDOM_SEED = "random"
#: Key under which the controller hands its seed to pytest-xdist workers.
_WORKER_SEED_KEY = "elbo_check_seed"

_KeyType = str | int | None


def _parse_seed(value: str) -> int | str:
    """argparse ``type=`` for the seed option: a non-negative int or ``random``."""
    text = value.strip()
    if text.lower() == RANDOM_SEED:
        return RANDOM_SEED
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if seed < 0:
        raise argparse.ArgumentTypeError(
            f"expected a non-negative integer or {RANDOM_SEED!r}; got {value!r}"
        )
    return seed


# ---------------------------------------------------------------------- factories
class RngFactory:
    """Hands out reproducible, independent numpy Generators; see the module docstring.

    It is also a Random-like object (``seed``/``getstate``/``setstate``) registered
    with hypothesis, which re-seeds it at the start of every example and restores it
    afterwards, so no state leaks from one example to the next.
    """

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._nodeid = ""
        self._salt = 0
        self._counts: dict[tuple[str, str], int] = {}

    # pytest calls this before each test's fixtures are set up
    def start(self, nodeid: str) -> None:
        self._nodeid = nodeid
        self._salt = 0
        self._counts = {}

    # hypothesis' register_random protocol
    def seed(self, a: int | None = 0) -> None:
        self._salt = operator.index(a) % 2**128 if a is not None else 0
        self._counts = {}

    def getstate(self) -> tuple[int, dict[tuple[str, str], int]]:
        return self._salt, dict(self._counts)

    def setstate(self, state: tuple[int, dict[tuple[str, str], int]]) -> None:
        self._salt, counts = state
        self._counts = dict(counts)

    def generator(self, namespace: str, key: _KeyType = None) -> np.random.Generator:
        """A fresh Generator for ``(namespace, key)`` in the current test or example."""
        import numpy as np

        if key is None or isinstance(key, str):
            key_text = repr(key)
        else:
            try:
                key_text = repr(operator.index(key))
            except TypeError:
                raise TypeError(
                    f"key must be a str, an int or None; got {type(key).__name__}"
                ) from None
        slot = (namespace, key_text)
        count = self._counts.get(slot, 0)
        self._counts[slot] = count + 1
        digest = hashlib.blake2b(
            "\0".join((self._nodeid, namespace, key_text)).encode(), digest_size=16
        ).digest()
        entropy = [self._seed, int.from_bytes(digest, "little"), self._salt, count]
        return np.random.default_rng(np.random.SeedSequence(entropy))

    def __call__(self, key: _KeyType = None) -> np.random.Generator:
        return self.generator("rng", key)

    def __repr__(self) -> str:
        return f"<elbo_check_rng seed={self._seed} test={self._nodeid!r}>"


class ModelFactory:
    """``factory(data_dim=3, latent_dim=2, family="general")``: a random model."""

    def __init__(self, rngs: RngFactory) -> None:
        self._rngs = rngs

    def __call__(
        self,
        *,
        data_dim: int = 3,
        latent_dim: int = 2,
        family: str = "general",
        condition_number: float = 10.0,
        key: _KeyType = None,
    ) -> LinearGaussianModel:
        from ._errors import InvalidInputError
        from ._random import FAMILIES, random_model

        for name, dim in (("data_dim", data_dim), ("latent_dim", latent_dim)):
            if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
                raise InvalidInputError(f"{name} must be a positive int; got {name}={dim!r}")
        if family not in FAMILIES:
            raise InvalidInputError(f"family must be one of {list(FAMILIES)}; got {family!r}")
        rng = self._rngs.generator("model", key)
        return random_model(
            rng,
            data_dim=data_dim,
            latent_dim=latent_dim,
            family=family,
            condition_number=condition_number,
        )

    def __repr__(self) -> str:
        return f"<elbo_check_model {self._rngs!r}>"


# ---------------------------------------------------------------------- state
@dataclass
class _State:
    seed: int
    profile: str
    previous: dict[str, object]
    nodeid: str = ""
    used: bool = False
    rngs: RngFactory | None = field(default=None, repr=False)

    def header(self) -> str:
        return (
            f"elbo-check: seed={self.seed}, profile={self.profile} "
            f"(rerun with {SEED_OPTION}={self.seed})"
        )

    def factory(self) -> RngFactory:
        if self.rngs is None:
            self.rngs = RngFactory(self.seed)
            self.rngs.start(self.nodeid)
            try:
                from hypothesis import register_random
            except ImportError:  # pragma: no cover - hypothesis is a test extra
                pass
            else:
                register_random(self.rngs)
        self.used = True
        return self.rngs


_STATE = pytest.StashKey[_State]()


def _state(config: pytest.Config) -> _State:
    return config.stash[_STATE]


class _XdistHooks:
    """Registered only when pytest-xdist is active: every worker gets the controller's seed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[_WORKER_SEED_KEY] = self.seed


# ---------------------------------------------------------------------- hooks
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(GROUP, GROUP)
    group.addoption(
        SEED_OPTION,
        action="store",
        type=_parse_seed,
        default=None,
        metavar="INT|random",
        help=(
            "Default seed of the elbo_check verifiers and fixtures: a non-negative "
            "integer, or 'random' to draw (and print) a fresh one. "
            "Default: $ELBO_CHECK_SEED or 0."
        ),
    )
    group.addoption(
        PROFILE_OPTION,
        action="store",
        choices=PROFILE_CHOICES,
        default=None,
        help=(
            "Default effort profile of the elbo_check verifiers. Default: "
            "$ELBO_CHECK_PROFILE, else 'ci' if $CI is set, else 'dev'."
        ),
    )


def _resolve_seed(config: pytest.Config) -> int:
    workerinput = getattr(config, "workerinput", None)
    if isinstance(workerinput, dict) and _WORKER_SEED_KEY in workerinput:
        return int(workerinput[_WORKER_SEED_KEY])
    value = config.getoption(SEED_OPTION)
    if value is None:
        from ._config import SEED_ENV

        env = os.environ.get(SEED_ENV, "").strip()
        if not env:
            return 0
        try:
            value = _parse_seed(env)
        except argparse.ArgumentTypeError as err:
            raise pytest.UsageError(f"${SEED_ENV}: {err}") from None
    if value == RANDOM_SEED:
        return secrets.randbelow(2**32)
    return int(value)


def _resolve_profile(config: pytest.Config) -> str:
    value = config.getoption(PROFILE_OPTION)
    if value is not None:
        return str(value)
    from ._config import PROFILE_ENV

    env = os.environ.get(PROFILE_ENV, "").strip()
    if env:
        if env not in PROFILE_CHOICES:
            choices = ", ".join(PROFILE_CHOICES)
            raise pytest.UsageError(
                f"${PROFILE_ENV}: invalid profile {env!r} (choose from {choices})"
            )
        return env
    return "ci" if os.environ.get("CI") else "dev"


def pytest_configure(config: pytest.Config) -> None:
    from . import _config

    config.addinivalue_line("markers", "elbo_check: tests that verify VI code with elbo_check")
    state = _State(
        seed=_resolve_seed(config),
        profile=_resolve_profile(config),
        previous=dict(_config._settings),
    )
    config.stash[_STATE] = state
    _config.configure(seed=state.seed, profile=state.profile)
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(state.seed), "elbo_check_xdist")


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None:
        return
    from . import _config

    seed, profile = state.previous.get("seed"), state.previous.get("profile")
    _config.configure(
        seed=seed if isinstance(seed, int) else None,
        profile=profile if isinstance(profile, str) else None,
    )
    del config.stash[_STATE]


def pytest_report_header(config: pytest.Config) -> str:
    return _state(config).header()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    state = _state(item.config)
    state.nodeid = item.nodeid
    if state.rngs is not None:
        state.rngs.start(item.nodeid)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """On failure, repeat the seed next to the failures if elbo_check was in use."""
    state = config.stash.get(_STATE, None)
    if state is None or exitstatus != pytest.ExitCode.TESTS_FAILED:
        return
    if state.used or "elbo_check.testing" in sys.modules:
        terminalreporter.write_line(state.header())


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def elbo_check_seed(pytestconfig: pytest.Config) -> int:
    """The seed of this run (``--elbo-check-seed``); the verifiers' default seed."""
    return _state(pytestconfig).seed


@pytest.fixture(scope="session")
def elbo_check_profile(pytestconfig: pytest.Config) -> str:
    """The profile of this run (``--elbo-check-profile``); the verifiers' default."""
    return _state(pytestconfig).profile


@pytest.fixture(scope="session")
def elbo_check_rng(request: pytest.FixtureRequest) -> RngFactory:
    """Factory of fresh, reproducible numpy Generators: ``elbo_check_rng(key=None)``."""
    return _state(request.config).factory()


@pytest.fixture(scope="session")
def elbo_check_model(elbo_check_rng: RngFactory) -> ModelFactory:
    """Factory of random models: ``elbo_check_model(data_dim=, latent_dim=, family=)``."""
    return ModelFactory(elbo_check_rng)
