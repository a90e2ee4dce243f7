"""The pytest plugin: options, header, fixtures and the verifiers' defaults under pytest.

Most tests run an inner pytest session in-process with ``pytester``; the plugin is
loaded there through its ``pytest11`` entry point, as it is for users.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from hypothesis import Phase, settings

import elbo_check._config as config_module
from elbo_check import pytest_plugin
from elbo_check.testing import PROFILES

pytest_plugins = ["pytester"]

HEADER = re.compile(
    r"^elbo-check: seed=(\d+), profile=(\w+) \(rerun with --elbo-check-seed=(\d+)\)$",
    re.MULTILINE,
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No CI / ELBO_CHECK_* variables leak in, and the outer defaults survive inner runs."""
    for name in ("CI", config_module.SEED_ENV, config_module.PROFILE_ENV):
        monkeypatch.delenv(name, raising=False)
    before = dict(config_module._settings)
    yield
    assert config_module._settings == before


def header(stdout: str) -> tuple[int, str]:
    """The seed and profile of the plugin's header line (which must be consistent)."""
    match = HEADER.search(stdout)
    assert match is not None, stdout
    assert match.group(1) == match.group(3)
    return int(match.group(1)), match.group(2)


# ---------------------------------------------------------------- options and header
def test_help_lists_the_option_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "elbo-check:",
            "*--elbo-check-seed=INT|random*",
            "*--elbo-check-profile={dev,ci,thorough}*",
        ]
    )


def test_header_shows_default_seed_and_profile(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(
        ["elbo-check: seed=0, profile=dev (rerun with --elbo-check-seed=0)"]
    )
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("env", "args", "expected"),
    [
        ({"CI": "true"}, [], (0, "ci")),
        ({"CI": "true"}, ["--elbo-check-profile=thorough"], (0, "thorough")),
        ({"ELBO_CHECK_SEED": "5", "ELBO_CHECK_PROFILE": "thorough"}, [], (5, "thorough")),
        ({"ELBO_CHECK_SEED": "5"}, ["--elbo-check-seed=6"], (6, "dev")),
    ],
)
def test_environment_gives_the_defaults_and_options_override_it(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    args: list[str],
    expected: tuple[int, str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    pytester.makepyfile("def test_nothing(): pass")
    assert header(pytester.runpytest(*args).stdout.str()) == expected


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({}, ["--elbo-check-profile=fast"], "*--elbo-check-profile: invalid choice: 'fast'*"),
        ({}, ["--elbo-check-seed=-1"], "*--elbo-check-seed: expected a non-negative integer*"),
        ({}, ["--elbo-check-seed=abc"], "*--elbo-check-seed: expected a non-negative integer*"),
        ({"ELBO_CHECK_PROFILE": "fast"}, [], "*ELBO_CHECK_PROFILE: invalid profile 'fast'*"),
    ],
)
def test_invalid_values_are_usage_errors(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    args: list[str],
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_marker_is_registered(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.elbo_check
        def test_marked(): pass
        """
    )
    pytester.runpytest("--strict-markers").assert_outcomes(passed=1)
    pytester.runpytest("--markers").stdout.fnmatch_lines(
        ["@pytest.mark.elbo_check: tests that verify VI code with elbo_check"]
    )


# ---------------------------------------------------------------- seed and profile
def test_options_reach_fixtures_and_the_verifiers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from elbo_check import kl_divergence
        from elbo_check._config import default_profile, default_seed
        from elbo_check.testing import verify_kl

        def test_settings(elbo_check_seed, elbo_check_profile):
            assert elbo_check_seed == default_seed() == 1234
            assert elbo_check_profile == default_profile() == "ci"
            report = verify_kl(kl_divergence, max_examples=5)
            assert report.seed == 1234
        """
    )
    result = pytester.runpytest("--elbo-check-seed=1234", "--elbo-check-profile", "ci")
    result.assert_outcomes(passed=1)
    assert header(result.stdout.str()) == (1234, "ci")


def test_random_seed_is_printed_and_reproducible(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_draw(elbo_check_seed, elbo_check_rng):
            with open("draw.txt", "w") as f:
                f.write(f"{elbo_check_seed} {elbo_check_rng().integers(2**62)}")
        """
    )
    draw = pytester.path / "draw.txt"
    result = pytester.runpytest("--elbo-check-seed=random")
    result.assert_outcomes(passed=1)
    seed, _ = header(result.stdout.str())
    first = draw.read_text()
    assert first.split()[0] == str(seed)

    pytester.runpytest(f"--elbo-check-seed={seed}").assert_outcomes(passed=1)
    assert draw.read_text() == first

    pytester.runpytest(f"--elbo-check-seed={seed + 1}").assert_outcomes(passed=1)
    assert draw.read_text().split()[1] != first.split()[1]


# ---------------------------------------------------------------- fixtures
GIVEN_TESTS = """
import json

from hypothesis import given, settings, strategies as st

def record(name, value):
    with open(f"{name}.jsonl", "a") as f:
        f.write(json.dumps(value) + "\\n")

def draw(rng):
    return rng.integers(2**62, size=3).tolist()

@settings(max_examples=15, database=None, derandomize=True)
@given(key=st.integers(0, 10**6))
def test_given(elbo_check_rng, elbo_check_model, key):
    first, second = draw(elbo_check_rng()), draw(elbo_check_rng())
    model = elbo_check_model(data_dim=3, latent_dim=2, family="ppca")
    record("given", {"calls": [first, second], "keyed": [key, draw(elbo_check_rng(key))],
                     "model": model.weights.tolist()})

def test_plain(elbo_check_rng, elbo_check_model):
    models = [elbo_check_model(data_dim=4, latent_dim=2, family=f)
              for f in ("general", "general", "bayesian_linear_regression")]
    assert [m.weights.shape for m in models] == [(4, 2)] * 3
    record("plain", {"calls": [draw(elbo_check_rng()), draw(elbo_check_rng()),
                               draw(elbo_check_rng("a")), draw(elbo_check_rng("b"))],
                     "models": [m.weights.tolist() for m in models]})
"""


def read_jsonl(path: object) -> list[dict[str, list[object]]]:
    with open(str(path)) as f:
        return [json.loads(line) for line in f]


def test_rng_and_model_factories_under_given(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(GIVEN_TESTS)

    def run(seed: int) -> tuple[list[dict[str, list[object]]], dict[str, list[object]]]:
        for name in ("given.jsonl", "plain.jsonl"):
            (pytester.path / name).unlink(missing_ok=True)
        pytester.runpytest(f"--elbo-check-seed={seed}", "-p", "no:cacheprovider").assert_outcomes(
            passed=2
        )
        (plain,) = read_jsonl(pytester.path / "plain.jsonl")
        return read_jsonl(pytester.path / "given.jsonl"), plain

    given, plain = run(3)
    assert len(given) >= 10
    # repeated calls within one example (or one test) give independent generators
    calls = plain["calls"]
    assert len({json.dumps(c) for c in calls}) == len(calls)
    models = plain["models"]
    assert models[0] != models[1]
    for example in given:
        first, second = example["calls"]
        assert first != second
    # every example starts afresh (so a replayed failure sees the same draws) ...
    assert len({json.dumps(e["calls"]) for e in given}) == 1
    assert len({json.dumps(e["model"]) for e in given}) == 1
    # ... unless a drawn value is passed as the key
    keyed = {json.dumps(e["keyed"]) for e in given}  # distinct (key, draws) pairs
    keys = {json.dumps(e["keyed"][0]) for e in given}
    draws = {json.dumps(e["keyed"][1]) for e in given}
    assert len(keyed) == len(keys) == len(draws) > 1
    # different tests get different generators
    assert given[0]["calls"][0] != calls[0]

    assert run(3) == (given, plain)  # a rerun with the same seed repeats everything
    other_given, other_plain = run(4)
    assert other_given[0]["calls"] != given[0]["calls"]
    assert other_plain["calls"][0] != plain["calls"][0]


def test_failure_depending_on_the_rng_replays_without_flakiness(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from hypothesis import given, settings, strategies as st

        @settings(database=None, max_examples=50)
        @given(st.integers(0, 100))
        def test_threshold(elbo_check_rng, n):
            assert n < 20 + elbo_check_rng().random()
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    # n=21 is minimal only if every example (and the final replay) saw the same draw
    # the seed is repeated after the failures when elbo_check was in use
    result.stdout.fnmatch_lines(
        [
            "*: test_threshold(",  # "Falsifying example:" or, newer, "Failing test case:"
            "*n=21,",
            "elbo-check: seed=0, profile=dev (rerun with --elbo-check-seed=0)",
            "*short test summary info*",
        ]
    )
    result.stdout.no_fnmatch_line("*Flaky*")


def test_model_factory_rejects_bad_arguments(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest
        from elbo_check import InvalidInputError

        def test_bad(elbo_check_model, elbo_check_rng):
            with pytest.raises(InvalidInputError, match="family"):
                elbo_check_model(family="vae")
            with pytest.raises(InvalidInputError, match="latent_dim"):
                elbo_check_model(latent_dim=0)
            with pytest.raises(TypeError, match="key"):
                elbo_check_rng(1.5)
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)


# ---------------------------------------------------------------- verifiers
@pytest.fixture
def no_explain_phase() -> Iterator[None]:
    """Drop hypothesis' explain phase, which makes a failing verifier ~100x slower.

    The verifiers' ``find`` inherits the phases of the loaded hypothesis profile.
    """
    previous = settings.get_current_profile_name()
    phases = [p for p in settings.default.phases if p is not Phase.explain]
    settings.register_profile("elbo-check-plugin-test", parent=settings.default, phases=phases)
    settings.load_profile("elbo-check-plugin-test")
    yield
    settings.load_profile(previous)


@pytest.mark.usefixtures("no_explain_phase")
def test_verifier_passes_correct_and_reports_a_buggy_elbo(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        from elbo_check.testing import verify_elbo

        def correct(model, q, x):
            return model.elbo(q, x)

        def missing_entropy(model, q, x):
            terms = model.elbo_terms(q, x)
            return terms.expected_log_likelihood - terms.cross_entropy

        def test_correct():
            assert verify_elbo(correct, max_examples=20).seed == 7

        def test_missing_entropy():
            verify_elbo(missing_entropy, max_examples=20)
        """
    )
    result = pytester.runpytest("--elbo-check-seed=7")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*verify_elbo failed (seed=7; minimal example after * cases)",
            "*model: D = 1, K = 1*",
            "*Diagnosis: the entropy term H(q) is missing.",
        ]
    )
    result.stdout.fnmatch_lines(
        ["elbo-check: seed=7, profile=dev (rerun with --elbo-check-seed=7)"]
    )


# ---------------------------------------------------------------- the module itself
def test_importing_the_plugin_is_light() -> None:
    code = (
        "import sys, elbo_check.pytest_plugin\n"
        "heavy = ['scipy.stats', 'hypothesis', 'elbo_check.testing', 'elbo_check.strategies']\n"
        "loaded = [m for m in heavy if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)


def test_profile_choices_match_the_verifiers_profiles() -> None:
    assert tuple(PROFILES) == pytest_plugin.PROFILE_CHOICES


def test_xdist_workers_get_the_controllers_seed() -> None:
    node = SimpleNamespace(workerinput={})
    pytest_plugin._XdistHooks(4242).pytest_configure_node(node)
    worker = SimpleNamespace(
        workerinput=node.workerinput, getoption=lambda name: pytest.fail("not a worker")
    )
    assert pytest_plugin._resolve_seed(worker) == 4242  # type: ignore[arg-type]
