"""The Gaussian-process rows of ``python -m elbo_check selftest`` (issue 15)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from elbo_check import Gaussian
from elbo_check.__main__ import main
from elbo_check._selftest_gp import GP_CASES, gp_rows
from elbo_check.gp import GPRegression, SparseGP, SVGPGradients

GP_IDENTITIES = (
    "GP log ML = Cholesky",
    "GP log ML = linear-Gaussian oracle",
    "Z = X, no jitter: bounds = log ML",
    "SVGP ELBO(q*) = collapsed bound",
    "collapsed <= log ML <= upper",
    "SVGP ELBO whitened = unwhitened",
    "SVGP KL gap = dense KL to posterior",
    "SVGP gradient = finite differences",
    "SVGP minibatch over a partition = ELBO",
)


def _failed(seed: int, draws: int = 1) -> set[str]:
    return {row.identity for row in gp_rows(seed, draws) if not row.passed}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_gp_row_appears_for_every_case_and_passes(seed: int) -> None:
    """Nine relations for each input dimension, each with a finite positive tolerance."""
    rows = gp_rows(seed, 2)
    assert [(r.family, r.size, r.identity) for r in rows] == [
        ("gp", size, identity) for size, _ in GP_CASES for identity in GP_IDENTITIES
    ]
    for row in rows:
        assert row.passed, row
        assert 0.0 < row.tolerance < np.inf, row
        if row.identity != "SVGP gradient = finite differences":  # absolute, not relative
            assert row.tolerance < 1e-4, row  # relative: far below any real error
        assert row.draws >= 2


def test_gp_rows_are_in_the_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    """``selftest --json`` carries the GP rows with their verdicts."""
    import json

    assert main(["selftest", "--n", "1", "--seed", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    gp = [row for row in report["results"] if row["family"] == "gp"]
    assert {row["identity"] for row in gp} == set(GP_IDENTITIES)
    assert all(row["passed"] for row in gp)


def _shifted(original: Any) -> Any:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return original(self, *args, **kwargs) + 1e-6

    return method


@pytest.mark.parametrize(
    ("cls", "name", "expected"),
    [
        (GPRegression, "log_marginal_likelihood", {"GP log ML = Cholesky"}),
        (SparseGP, "collapsed_bound", {"SVGP ELBO(q*) = collapsed bound"}),
        (SparseGP, "upper_bound", {"Z = X, no jitter: bounds = log ML"}),
        (SparseGP, "kl_gap", {"SVGP KL gap = dense KL to posterior"}),
        (SparseGP, "svgp_elbo_minibatch", {"SVGP minibatch over a partition = ELBO"}),
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_a_method_off_by_1e6_fails_its_row(
    monkeypatch: pytest.MonkeyPatch, cls: type, name: str, expected: set[str], seed: int
) -> None:
    """Adding 1e-6 to one GP method fails the rows that check it, and only those."""
    monkeypatch.setattr(cls, name, _shifted(getattr(cls, name)))
    failed = _failed(seed)
    assert expected <= failed
    assert "SVGP ELBO whitened = unwhitened" not in failed  # untouched relation


def test_a_gradient_off_by_1e5_fails_the_finite_difference_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A central difference resolves a directional derivative to about (N + M) eps
    |terms| / h (1e-7 to 1e-5 here), so a 1e-5 error in the gradient is caught, while
    1e-6 is caught only on some seeds."""
    original = SparseGP.svgp_elbo_grad

    def shifted(self: SparseGP, *args: Any, **kwargs: Any) -> SVGPGradients:
        grads = original(self, *args, **kwargs)
        return SVGPGradients(mean=grads.mean + 1e-5, scale_tril=grads.scale_tril)

    monkeypatch.setattr(SparseGP, "svgp_elbo_grad", shifted)
    for seed in (0, 1):
        assert _failed(seed) == {"SVGP gradient = finite differences"}


def test_a_wrong_unwhitened_elbo_fails_the_whitening_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unwhitened ELBO off by 1e-6 (the whitened one right) breaks whitened = unwhitened."""
    original = SparseGP.svgp_elbo

    def broken(self: SparseGP, q_u: Gaussian, y: Any, *, whiten: bool = False) -> float:
        return original(self, q_u, y, whiten=whiten) + (0.0 if whiten else 1e-6)

    monkeypatch.setattr(SparseGP, "svgp_elbo", broken)
    assert "SVGP ELBO whitened = unwhitened" in _failed(0)


def test_a_broken_gp_method_makes_the_cli_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI prints FAIL on the GP row and exits 1 (only the GP rows are affected)."""
    monkeypatch.setattr(SparseGP, "kl_gap", _shifted(SparseGP.kl_gap))
    assert main(["selftest", "--n", "1"]) == 1
    failing = [line for line in capsys.readouterr().out.splitlines() if "FAIL" in line]
    assert failing
    assert all(line.startswith("gp ") for line in failing)
    assert any("SVGP KL gap = dense KL to posterior" in line for line in failing)


def test_gp_rows_are_reproducible() -> None:
    first = [(r.identity, r.residual, r.tolerance) for r in gp_rows(5, 1)]
    again = [(r.identity, r.residual, r.tolerance) for r in gp_rows(5, 1)]
    assert first == again
    assert np.isfinite([residual for _, residual, _ in first]).all()
