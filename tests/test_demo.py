"""The demo: ``python -m elbo_check demo`` and :mod:`elbo_check._demo`.

The traces are exact dataset totals, so the identity ELBO + KL = log p(x) must hold at
every recorded step, log p(x) must not move while only q moves, and the schedule's
guarantees (the ELBO never decreases; generalised EM never lowers log p(x) from one
E-step to the next) must show in the numbers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from elbo_check import InvalidInputError
from elbo_check.__main__ import main
from elbo_check._demo import PLOT_EXTRA_HINT, DemoResult, TracePoint, run_demo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SEEDS = (0, 1, 7)


@pytest.fixture(scope="module", params=SEEDS, ids=[f"seed{s}" for s in SEEDS])
def result(request: pytest.FixtureRequest) -> DemoResult:
    return run_demo(request.param)


def _scale(point: TracePoint) -> float:
    return max(abs(point.elbo), abs(point.log_evidence), abs(point.kl))


def test_identity_holds_at_every_step(result: DemoResult) -> None:
    """ELBO + KL(q || p(z|x)) = log p(x) to 1e-10 relative, in both phases."""
    for point in result.points:
        residual = point.elbo + point.kl - point.log_evidence
        assert abs(residual) <= 1e-10 * _scale(point), point
        assert point.kl >= 0.0


def test_log_evidence_is_constant_while_only_q_moves(result: DemoResult) -> None:
    values = np.array([p.log_evidence for p in result.phi_trace])
    assert np.all(np.abs(values - values[0]) <= 1e-12 * abs(values[0]))


def test_elbo_rises_and_kl_falls_in_the_phi_phase(result: DemoResult) -> None:
    elbo = np.array([p.elbo for p in result.phi_trace])
    kl = np.array([p.kl for p in result.phi_trace])
    assert np.all(np.diff(elbo) >= 0.0), "the ELBO decreased during the phi phase"
    assert kl[0] > 1.0, "the phi phase should start far from the posterior"
    assert kl[-1] < 1e-6
    # What the ELBO gained is exactly what the KL lost.
    np.testing.assert_allclose(elbo[-1] - elbo[0], kl[0] - kl[-1], rtol=1e-10)


def test_log_evidence_changes_in_the_theta_phase(result: DemoResult) -> None:
    theta = result.theta_trace
    assert theta[0].log_evidence == pytest.approx(result.phi_trace[-1].log_evidence, rel=1e-12)
    assert theta[-1].log_evidence > theta[0].log_evidence + 10.0
    # Generalised EM: log p(x) never decreases from one tight bound (E-step) to the next.
    tight = [theta[0]] + [p for p in theta if p.event == "E-step"]
    values = np.array([p.log_evidence for p in tight])
    assert np.all(np.diff(values) >= -1e-9)


def test_em_schedule_opens_and_closes_the_gap(result: DemoResult) -> None:
    theta = result.theta_trace
    e_steps = [p for p in theta if p.event == "E-step"]
    m_steps = [p for p in theta if p.event == "M-step"]
    assert len(e_steps) == 20
    assert len(m_steps) == 20 * result.m_steps
    assert all(p.kl < 1e-12 for p in e_steps), "an E-step leaves q at the exact posterior"
    assert max(p.kl for p in m_steps) > 0.1, "M-steps move the posterior away from q"
    # Each M-step raises the ELBO with q fixed and an E-step lifts it to log p(x), so the
    # ELBO never decreases in this phase either.
    elbo = np.array([p.elbo for p in theta])
    assert np.all(np.diff(elbo) >= -1e-12 * np.abs(elbo[1:]))


def test_the_fitted_model_is_not_the_data_distribution() -> None:
    """With 10 rows, maximum likelihood fits the sample better than the model that drew it."""
    result = run_demo(0)
    assert result.theta_trace[-1].log_evidence > result.true_log_density
    assert result.phi_trace[0].log_evidence < result.true_log_density


def test_demo_is_deterministic() -> None:
    first, second = run_demo(3, em_iterations=2), run_demo(3, em_iterations=2)
    assert first.points == second.points
    assert not np.array_equal(first.data, run_demo(4, em_iterations=2).data)


@pytest.mark.parametrize(
    "options",
    [{"phi_steps": 0}, {"em_iterations": -1}, {"m_steps": 1.5}, {"model_step": 0.0}],
)
def test_invalid_schedules_are_rejected(options: dict[str, float]) -> None:
    with pytest.raises(InvalidInputError, match="must be"):
        run_demo(0, **options)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- command line
def test_cli_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "elbo_check demo (seed 1)" in out
    for text in ("phi step", "M-step", "E-step", "KL(q||p(z|x))", "log p(x) fixed at"):
        assert text in out


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["seed"] == 0
    assert len(report["phi"]) == 41
    assert len(report["theta"]) == 1 + 20 * 11
    assert report["summary"]["phi_end_kl"] < 1e-6
    for row in report["phi"] + report["theta"]:
        residual = row["elbo"] + row["kl"] - row["log_evidence"]
        assert abs(residual) <= 1e-10 * abs(row["log_evidence"])


def test_cli_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    target = tmp_path / "trace.png"
    assert main(["demo", "--plot", str(target)]) == 0
    assert f"wrote {target}" in capsys.readouterr().out
    content = target.read_bytes()
    assert content.startswith(PNG_SIGNATURE)
    assert len(content) > 10_000


def test_cli_explains_a_missing_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    target = tmp_path / "trace.png"
    assert main(["demo", "--plot", str(target)]) == 2
    err = capsys.readouterr().err
    assert PLOT_EXTRA_HINT in err
    assert "pip install -e '.[plot]'" in err
    assert not target.exists()


def test_cli_reports_an_unwritable_plot_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    target = tmp_path / "missing-directory" / "trace.png"
    assert main(["demo", "--plot", str(target)]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_module_entry_point() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "elbo_check", "demo", "--seed", "2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "theta phase: log p(x)" in completed.stdout
