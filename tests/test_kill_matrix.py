"""Kill matrix: the verifiers catch realistic bugs, name them, and pass correct code.

``tests/buggy_implementations.py`` holds a catalogue of buggy ELBO, KL, log-evidence,
Monte-Carlo estimator and gradient code written from scratch in plain numpy, plus one
correct reference per kind. Here

* every bug is caught by its verifier call with default settings (seed, profile,
  ``max_examples``, ``problems``, ``calls``) -- ``pytest.raises(AssertionError)``. Only
  the ``np.linalg.det`` bug, which is right at ordinary scales, needs options
  (``extreme_scales=True`` and a large ``D``; see its catalogue entries);
* where a suspect catalogue (``elbo_check/testing/_suspects.py``) has a matching
  suspect, the diagnosis line of the failure names the bug;
* every correct implementation passes the same verifier calls for seeds 0..4 (the
  false-alarm side: a verifier that fails everything would otherwise "catch" every bug).

A bug whose verifier call does not catch it yet is a strict xfail that names the gap
(``Implementation.known_gap``); it turns into a failure once the verifier is fixed.

Runtime: about 55 s on one core with ``OPENBLAS_NUM_THREADS=1`` (half of it hypothesis
shrinking the failing cases of the deterministic verifiers; a statistical check takes
< 0.3 s). Without that setting OpenBLAS threads spin on tiny matrices: 65 s wall and
twice the CPU on an idle 2-core machine, several minutes on a loaded one.
``benchmarks/kill_matrix.py`` writes the same results as a table to
``docs/kill-matrix.md``.
"""

from __future__ import annotations

from typing import Any

import pytest
from buggy_implementations import (
    BUGS,
    CORRECT,
    KINDS,
    Implementation,
    diagnosed_names,
    elbo_logdet_via_det,
    suspect_names,
)

from elbo_check.testing import verify_elbo

SEEDS = range(5)

#: The multi-sample kinds run their correct code on two seeds here (each check draws its
#: own reference distribution, seconds per seed); benchmarks/kill_matrix.py runs all five.
BOUND_KINDS = frozenset(
    {
        "iwae_estimator",
        "iwae_pathwise",
        "renyi_estimator",
        "iwae_gradient",
        "dreg_gradient",
        "dreg_pathwise",
        "vimco_gradient",
        "iwae_batched",
    }
)

#: Failure messages by bug name, so the caught and diagnosis tests run each verifier once.
_MESSAGES: dict[str, str] = {}


def _failure_message(bug: Implementation) -> str:
    if bug.name not in _MESSAGES:
        with pytest.raises(AssertionError) as info:
            bug.verify()
        _MESSAGES[bug.name] = str(info.value)
    return _MESSAGES[bug.name]


def _bug_param(bug: Implementation) -> Any:
    marks = []
    if bug.known_gap:
        marks.append(pytest.mark.xfail(strict=True, reason=bug.known_gap))
    return pytest.param(bug, id=bug.name, marks=marks)


def _correct_params() -> list[Any]:
    """Each correct implementation on every verifier call its kind's bugs are checked with."""
    params = []
    for impl in CORRECT:
        option_sets: list[dict[str, Any]] = [{}]
        for bug in BUGS:
            if bug.kind == impl.kind and bug.options not in option_sets:
                option_sets.append(bug.options)
        for options in option_sets:
            label = ",".join(f"{k}={v}" for k, v in options.items()) or "default"
            seeds = range(2) if impl.kind in BOUND_KINDS else SEEDS
            params += [
                pytest.param(impl, options, seed, id=f"{impl.name}-{label}-seed{seed}")
                for seed in seeds
            ]
    return params


# --------------------------------------------------------------------------- catalogue
def test_catalogue_is_complete() -> None:
    assert len({bug.fn for bug in BUGS}) >= 24
    assert len({bug.name for bug in BUGS + CORRECT}) == len(BUGS) + len(CORRECT)
    assert {impl.kind for impl in CORRECT} == set(KINDS)
    assert {bug.kind for bug in BUGS} == set(KINDS)


@pytest.mark.parametrize("bug", [b for b in BUGS if b.diagnosis], ids=lambda b: b.name)
def test_expected_diagnosis_is_a_catalogued_suspect(bug: Implementation) -> None:
    assert any(bug.diagnosis in name for name in suspect_names(bug.kind)), (
        f"{bug.diagnosis!r} is not a suspect of the {bug.kind} verifier"
    )


# --------------------------------------------------------------------------- bugs
@pytest.mark.parametrize("bug", [_bug_param(b) for b in BUGS])
def test_bug_is_caught(bug: Implementation) -> None:
    message = _failure_message(bug)
    assert "failed" in message.splitlines()[0]


@pytest.mark.parametrize(
    "bug", [b for b in BUGS if b.diagnosis and not b.known_gap], ids=lambda b: b.name
)
def test_diagnosis_names_the_bug(bug: Implementation) -> None:
    message = _failure_message(bug)
    named = diagnosed_names(message)
    assert any(bug.diagnosis in name for name in named), (
        f"expected the diagnosis {bug.diagnosis!r}; the verifier said:\n{message}"
    )


def test_det_bug_is_invisible_at_ordinary_scales() -> None:
    """Why the np.linalg.det bug needs extreme scales: at ordinary ones its value is right."""
    report = verify_elbo(elbo_logdet_via_det)
    assert report.cases > 0


# --------------------------------------------------------------------------- false alarms
@pytest.mark.parametrize(("impl", "options", "seed"), _correct_params())
def test_correct_implementation_passes(
    impl: Implementation, options: dict[str, Any], seed: int
) -> None:
    report = impl.verify(seed=seed, **options)
    assert report.cases > 0
    if impl.kind in ("estimator", "statistical_gradient"):
        # A passing t-test reports its largest |t| / critical value; exactly 0 would mean
        # that no coordinate was actually tested.
        assert 0.0 < report.worst_error <= 1.0, f"implausible report: {report}"
