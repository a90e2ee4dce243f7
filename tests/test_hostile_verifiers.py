"""Verdicts that cannot be fooled: hostile user functions and hostile options.

Each case here fooled or crashed the verifiers before they called user code through
``elbo_check.testing._returns.invoke`` (private copies, checked returns) and validated
their options with one vocabulary (``elbo_check.testing._options``).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from elbo_check.testing import (
    _progress,
    verify_elbo,
    verify_elbo_estimator,
    verify_elbo_gradient,
    verify_iwae_estimator,
    verify_iwae_gradient,
    verify_kl,
    verify_log_evidence,
    verify_renyi_estimator,
    verify_renyi_gradient,
)

FEW = {"max_examples": 10}


def _elbo(m: Any, q: Any, x: np.ndarray) -> float:
    return float(m.elbo(q, x))


# ---------------------------------------------------------------------- mutated inputs
def test_an_elbo_that_edits_x_in_place_fails() -> None:
    """``x -= b`` before the correct value: the expected value can no longer be computed
    on the edited x, and the edit itself is the verdict."""
    with pytest.raises(AssertionError, match=r"changed its input x in place"):
        verify_elbo(lambda m, q, x: (x.__isub__(m.bias), m.elbo(q, x))[1], **FEW)


def test_a_log_evidence_that_edits_x_in_place_fails() -> None:
    def edits(model: Any, x: np.ndarray) -> float:
        value = float(model.log_evidence(x))
        x[...] = 0.0
        return value

    with pytest.raises(AssertionError, match=r"changed its input x in place"):
        verify_log_evidence(edits, **FEW)


def test_an_exact_gradient_that_edits_x_in_place_fails() -> None:
    def edits(model: Any, q: Any, x: np.ndarray) -> Any:
        grads = model.elbo_grad_variational(q, x)
        x *= 2.0
        return grads.mean, grads.scale_tril

    with pytest.raises(AssertionError, match=r"changed its input x in place"):
        verify_elbo_gradient(edits, **FEW)


def test_a_pathwise_estimator_that_edits_x_in_place_fails() -> None:
    def edits(model: Any, q: Any, x: np.ndarray, eps: np.ndarray) -> float:
        z = q.mean + eps @ q.scale_tril.T
        value = float(np.mean(model.log_joint(x, z) - q.log_prob(z)))
        x += 1.0
        return value

    with pytest.raises(AssertionError, match=r"changed its input x in place"):
        verify_elbo_estimator(edits, mode="pathwise", **FEW)


def test_q_cannot_be_edited_by_the_function() -> None:
    def edits(model: Any, q: Any, x: np.ndarray) -> float:
        with pytest.raises(ValueError, match=r"read-only|writeable"):
            q.mean.flags.writeable = True
        return float(model.log_evidence(x))  # log p(x), not the ELBO

    with pytest.raises(AssertionError, match="verify_elbo failed"):
        verify_elbo(edits, **FEW)


# ---------------------------------------------------------------------- bad returns
@pytest.mark.parametrize(
    ("returned", "said"),
    [
        (None, "got None"),
        ("-1.5", "got the string '-1.5'"),
        (1 + 2j, "got a complex"),
        (True, "got bool"),
        ([1.0, 2.0], "must return a scalar"),
        (object(), "not one|dtype object"),
    ],
)
def test_a_return_that_is_not_a_real_number_is_named(returned: Any, said: str) -> None:
    with pytest.raises(AssertionError, match=said):
        verify_log_evidence(lambda m, x: returned, **FEW)


def test_a_numeric_string_is_not_taken_for_a_number_by_the_kl_check() -> None:
    with pytest.raises(AssertionError, match="string"):
        verify_kl(lambda p, q: "0.0", **FEW)


# ---------------------------------------------------------------------- options
VERIFIERS: list[tuple[str, Callable[..., Any], Callable[..., Any]]] = [
    ("verify_elbo", verify_elbo, _elbo),
    ("verify_kl", verify_kl, lambda p, q: 0.0),
    ("verify_log_evidence", verify_log_evidence, lambda m, x: float(m.log_evidence(x))),
    ("verify_elbo_gradient", verify_elbo_gradient, lambda m, q, x: (0, 0)),
    ("verify_elbo_estimator(pathwise)", verify_elbo_estimator, lambda m, q, x, e: 0.0),
    ("verify_iwae_estimator(pathwise)", verify_iwae_estimator, lambda m, q, x, e: 0.0),
    (
        "verify_renyi_estimator(pathwise)",
        functools.partial(verify_renyi_estimator, alpha=0.5),
        lambda m, q, x, e: 0.0,
    ),
    ("verify_iwae_gradient(pathwise)", verify_iwae_gradient, lambda m, q, x, e: (0, 0)),
    (
        "verify_renyi_gradient(pathwise)",
        functools.partial(verify_renyi_gradient, alpha=2.0),
        lambda m, q, x, e: (0, 0),
    ),
]


@pytest.mark.parametrize(("name", "verifier", "fn"), VERIFIERS, ids=[v[0] for v in VERIFIERS])
@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("rtol", math.nan),
        ("atol", math.nan),
        ("atol", math.inf),
        ("rtol", -1e-6),
        ("rtol", "1e-6"),
        ("max_examples", 0),
        ("max_examples", -3),
        ("max_examples", 1.5),
        ("seed", -1),
        ("time_budget", 0.0),
        ("time_budget", math.nan),
    ],
)
def test_bad_options_are_refused_before_anything_runs(
    name: str, verifier: Callable[..., Any], fn: Callable[..., Any], option: str, value: Any
) -> None:
    extra = {"mode": "pathwise"} if "pathwise" in name else {}
    with pytest.raises(ValueError, match=option):
        verifier(fn, **{option: value}, **extra)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("n_problems", -1),
        ("n_problems", 0),
        ("n_problems", 1.5),
        ("problems", 1.5),
        ("problems", "four"),
        ("calls", 0),
        ("calls", 79),
    ],
)
@pytest.mark.parametrize(
    "verifier",
    [
        verify_elbo_estimator,
        verify_elbo_gradient,
        verify_iwae_estimator,
        verify_iwae_gradient,
        functools.partial(verify_renyi_estimator, alpha=-1.0),
        functools.partial(verify_renyi_gradient, alpha=0.5),
    ],
)
def test_bad_budgets_of_statistical_checks_are_refused(
    verifier: Callable[..., Any], option: str, value: Any
) -> None:
    mode = {"mode": "statistical"} if verifier is verify_elbo_gradient else {}
    with pytest.raises(ValueError, match=option):
        verifier(lambda *a: 0.0, **{option: value}, **mode)


def test_a_nan_false_alarm_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="false_alarm_rate"):
        verify_elbo_estimator(lambda *a: 0.0, false_alarm_rate=math.nan)


# ---------------------------------------------------------------------- behaviour
def test_a_function_wrong_on_every_seventh_call_gets_its_own_verdict() -> None:
    """Not hypothesis' raw FlakyFailure: a verdict naming the non-determinism with two
    outputs for one input."""
    calls = [0]

    def sometimes(m: Any, q: Any, x: np.ndarray) -> float:
        calls[0] += 1
        return _elbo(m, q, x) + (1.0 if calls[0] % 7 == 0 else 0.0)

    with pytest.raises(AssertionError, match="not deterministic") as info:
        verify_elbo(sometimes)
    assert "returned" in str(info.value)
    assert " and " in str(info.value)


def test_a_users_exception_surfaces_with_the_case() -> None:
    def raises(m: Any, q: Any, x: np.ndarray) -> float:
        if m.latent_dim > 1:
            raise ZeroDivisionError("boom")
        return _elbo(m, q, x)

    with pytest.raises(AssertionError, match="fn raised ZeroDivisionError: boom") as info:
        verify_elbo(raises)
    assert "weights" in str(info.value)
    assert "K = 2" in str(info.value) or "D = " in str(info.value)


def test_a_time_budget_stops_a_slow_search_and_says_so() -> None:
    def slow(m: Any, x: np.ndarray) -> float:
        time.sleep(0.01)
        return float(m.log_evidence(x))

    start = time.perf_counter()
    report = verify_log_evidence(slow, time_budget=0.3)
    assert time.perf_counter() - start < 3.0
    assert report.details["stopped_by_time_budget"] == 0.3
    assert "stopped early" in str(report)
    assert 0 < report.cases < 100


def test_a_time_budget_stops_statistical_checks_between_problems() -> None:
    rng_calls = [0]

    def estimator(m: Any, q: Any, x: np.ndarray, rng: Any, n: int) -> float:
        rng_calls[0] += 1
        time.sleep(0.0005)
        return _elbo(m, q, x) + float(rng.standard_normal())

    report = verify_elbo_estimator(estimator, calls=80, n_problems=60, time_budget=1.5)
    assert report.details["stopped_by_time_budget"] == 1.5
    assert 1 <= report.cases < 60
    assert rng_calls[0] == 80 * report.cases  # only whole problems
    with pytest.raises(ValueError, match="no verdict"):
        verify_elbo_estimator(
            lambda *a: (time.sleep(0.01), 0.0)[1], calls=800, n_problems=2, time_budget=0.2
        )


def test_a_long_check_says_so_up_front(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_progress, "ESTIMATE_AFTER_SECONDS", 0.05)
    monkeypatch.setattr(_progress, "ANNOUNCE_AFTER_SECONDS", 0.5)

    def slow(m: Any, x: np.ndarray) -> float:
        time.sleep(0.01)
        return float(m.log_evidence(x))

    verify_log_evidence(slow, max_examples=100, time_budget=0.4)
    err = capsys.readouterr().err
    assert "per call" in err
    assert "about 100 calls are planned" in err


def test_a_slow_first_call_is_not_projected_onto_the_rest(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A first call that compiles (JAX, torch.jit) is one outlier, not the rate."""
    monkeypatch.setattr(_progress, "ESTIMATE_AFTER_SECONDS", 0.05)
    monkeypatch.setattr(_progress, "ANNOUNCE_AFTER_SECONDS", 5.0)
    calls = []

    def compiles_once(m: Any, x: np.ndarray) -> float:
        calls.append(1)
        time.sleep(0.3 if len(calls) == 1 else 0.0005)
        return float(m.log_evidence(x))

    # the first call alone projected 100 x 0.3 s = 30 s; the check takes about 2 s
    verify_log_evidence(compiles_once, max_examples=100)
    assert "per call" not in capsys.readouterr().err
