"""The command line: ``python -m elbo_check selftest``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import elbo_check._selftest as selftest
from elbo_check.__main__ import main


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
    ):
        assert family in out
    for size in ("small", "latent>data", "wide", "ill-conditioned"):
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

    def broken(self: LinearGaussianModel, q: object, x: object) -> object:
        terms = self.elbo_terms(q, x)  # type: ignore[arg-type]
        return original(self, q, x) - np.asarray(terms.entropy)  # type: ignore[arg-type]

    monkeypatch.setattr(LinearGaussianModel, "elbo", broken)
    assert main(["selftest", "--n", "1"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out
    assert "ELBO + KL = log p(x)" in out


def test_bad_arguments_exit_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    """--n 0 is rejected by the parser with a message naming the option."""
    with pytest.raises(SystemExit) as exit_info:
        main(["selftest", "--n", "0"])
    assert exit_info.value.code == 2
    assert "--n: must be a positive integer; got 0" in capsys.readouterr().err


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
