"""The command line: ``python -m elbo_check selftest``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import elbo_check._selftest as selftest
from elbo_check.__main__ import PIPE_CLOSED_STATUS, main


def test_selftest_passes_and_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    """Every family and size class appears, and the run ends with a pass count."""
    assert main(["selftest", "--n", "1", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    for family in (
        "general",
        "full_noise",
        "ppca",
        "factor_analysis",
        "bayesian_linear_regression",
        "gp",
    ):
        assert family in out
    for size in ("small", "latent>data", "wide", "ill-conditioned", "1-d inputs", "2-d inputs"):
        assert size in out
    assert "FAIL" not in out
    assert out.rstrip().splitlines()[-1].endswith("(seed 7, 1 draws per case)")


def test_selftest_json_is_machine_readable(capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one JSON document with a verdict per identity."""
    assert main(["selftest", "--n", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True
    identities = {row["identity"] for row in report["results"]}
    assert "ELBO + KL = log p(x)" in identities
    assert "log p(x) = scipy dense" in identities
    assert all(row["residual"] <= row["tolerance"] for row in report["results"])


def test_selftest_fails_loudly_when_an_identity_breaks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broken ELBO (entropy dropped) makes the self-test exit 1 and print FAIL."""
    from elbo_check import LinearGaussianModel

    original = LinearGaussianModel.elbo

    def broken(self: LinearGaussianModel, q: object, x: object, **options: object) -> object:
        terms = self.elbo_terms(q, x)  # type: ignore[arg-type]
        # options: the Rényi bound calls elbo(..., return_error_bound=False)
        value = original(self, q, x, **options)  # type: ignore[arg-type]
        return value - np.asarray(terms.entropy)

    monkeypatch.setattr(LinearGaussianModel, "elbo", broken)
    assert main(["selftest", "--n", "1"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out
    assert "ELBO + KL = log p(x)" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["selftest", "--n", "0"], "--n must be a positive integer; got '0'"),
        (["selftest", "--n", "abc"], "--n must be a positive integer; got 'abc'"),
        (["selftest", "--n", "1.5"], "--n must be a positive integer; got '1.5'"),
        (["selftest", "--seed", "-1"], "--seed must be a non-negative integer; got '-1'"),
        (["selftest", "--seed", "x"], "--seed must be a non-negative integer; got 'x'"),
        (["demo", "--seed", "-3"], "--seed must be a non-negative integer; got '-3'"),
    ],
)
def test_bad_arguments_exit_with_usage(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad option value is rejected by the parser with a message naming the option."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.rstrip().endswith(f"error: {message}"), err


def _run_module(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "elbo_check", *args], capture_output=True, text=True, timeout=120
    )


def test_a_negative_seed_gives_usage_not_a_traceback() -> None:
    """``selftest --seed -1`` used to reach numpy's default_rng and print a traceback."""
    done = _run_module("selftest", "--seed", "-1")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "--seed must be a non-negative integer; got '-1'" in done.stderr


def test_a_closed_stdout_pipe_exits_quietly() -> None:
    """``demo --json | head -c 10``: the reader is gone before anything is written.

    The read end is closed at once, while the child is still importing, so its first
    write fails with EPIPE; it must end with status 141 and nothing on stderr.
    """
    child = subprocess.Popen(
        [sys.executable, "-m", "elbo_check", "demo", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None
    assert child.stderr is not None
    child.stdout.close()
    stderr = child.stderr.read().decode()
    child.stderr.close()
    status = child.wait(timeout=120)
    assert "Traceback" not in stderr, stderr
    assert stderr == ""
    assert status == PIPE_CLOSED_STATUS


def test_module_entry_point_runs() -> None:
    """``python -m elbo_check --version`` works as a subprocess."""
    done = subprocess.run(
        [sys.executable, "-m", "elbo_check", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0
    assert done.stdout.startswith("elbo_check ")


def test_check_result_keeps_the_worst_ratio() -> None:
    """The table reports the draw that came closest to (or furthest past) its tolerance."""
    result = selftest.CheckResult("f", "s", "i")
    result.update(1e-14, 1e-12)
    result.update(5e-13, 1e-12)
    result.update(1e-13, 1e-12)
    assert (result.residual, result.draws, result.passed) == (5e-13, 3, True)
    result.update(float("nan"), 1e-12)
    assert not result.passed
