"""The benchmark harness ``benchmarks/run.py``: its correctness cross-checks, on tiny sizes.

Nothing here measures or asserts a time. The harness compares every peer (scipy's dense
multivariate normal, scikit-learn's FactorAnalysis, torch's LowRankMultivariateNormal, a
textbook Woodbury implementation) with elbo_check before timing it, and checks
elbo_check's own outputs against textbook formulas; these tests run those checks on
small problems, check that the checks do catch a wrong value, and run the whole
``--quick`` path end to end on tiny sizes (the hidden ``--tiny`` option, a few seconds).
The scikit-learn and torch parts are skipped when those are not installed.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "benchmarks" / "run.py"
SIZES = [(50, 12, 3), (7, 30, 5)]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("elbo_check_benchmarks_run", HARNESS)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _check(bench: ModuleType, name: str, n: int, d: int, k: int) -> float:
    problem = bench.make_problem(n, d, k, seed=3)
    log_p = bench._elbo_check_model(problem).log_evidence(problem.x)
    method = bench.METHOD_BY_NAME[name]
    values = method.call(method.setup(problem), problem.x)
    return float(bench.cross_check(name, values, problem, log_p))


@pytest.mark.parametrize(("n", "d", "k"), SIZES)
@pytest.mark.parametrize(
    "name", ["log_evidence", "posterior", "elbo", "kl_to_posterior", "scipy_dense", "woodbury"]
)
def test_elbo_check_and_numpy_peers_pass_the_cross_checks(
    bench: ModuleType, name: str, n: int, d: int, k: int
) -> None:
    """elbo_check's four timed operations against the textbook formulas; scipy and the
    textbook Woodbury code against elbo_check's log_evidence."""
    assert _check(bench, name, n, d, k) <= bench.CHECK_RTOL


@pytest.mark.parametrize(("n", "d", "k"), SIZES)
def test_sklearn_factor_analysis_agrees(bench: ModuleType, n: int, d: int, k: int) -> None:
    pytest.importorskip("sklearn")
    assert _check(bench, "sklearn_fa", n, d, k) <= bench.CHECK_RTOL


@pytest.mark.parametrize(("n", "d", "k"), SIZES)
def test_torch_low_rank_mvn_agrees(bench: ModuleType, n: int, d: int, k: int) -> None:
    pytest.importorskip("torch")
    assert _check(bench, "torch_lowrank", n, d, k) <= bench.CHECK_RTOL


@pytest.mark.parametrize(("n", "d", "k"), SIZES)
def test_elbo_plus_kl_is_log_evidence_on_the_benchmark_problems(
    bench: ModuleType, n: int, d: int, k: int
) -> None:
    assert bench.identity_error(bench.make_problem(n, d, k, seed=4)) <= bench.CHECK_RTOL


def test_cross_checks_catch_a_wrong_value(bench: ModuleType) -> None:
    """A relative error of 1e-6 in a peer's log p(x), or a biased posterior or KL, fails."""
    problem = bench.make_problem(40, 10, 2, seed=5)
    model = bench._elbo_check_model(problem)
    log_p = model.log_evidence(problem.x)
    assert bench.cross_check("woodbury", log_p * (1 + 1e-6), problem, log_p) > bench.CHECK_RTOL
    assert bench.cross_check("scipy_dense", log_p[:-1], problem, log_p) == np.inf
    posterior = model.posterior(problem.x)
    shifted = bench.Gaussian.from_cholesky(
        mean=posterior.mean + 1e-5, scale_tril=posterior.scale_tril
    )
    assert bench.cross_check("posterior", shifted, problem, log_p) > bench.CHECK_RTOL
    q = bench.Gaussian.from_cholesky(mean=problem.q_mean, scale_tril=problem.q_scale_tril)
    kl = model.kl_to_posterior(q, problem.x)
    assert bench.cross_check("kl_to_posterior", kl + 1e-4, problem, log_p) > bench.CHECK_RTOL


@pytest.mark.parametrize("family", ["ppca", "fa_signal", "fa_graded"])
@pytest.mark.parametrize("exponent", [2, 8, 13])
def test_conditioned_problems_reach_their_decade(
    bench: ModuleType, family: str, exponent: int
) -> None:
    """The accuracy study's models have cond(C) within a decade of the one asked for."""
    rng = np.random.default_rng(exponent)
    w, psi, mu = bench.conditioned_problem(family, exponent, rng)
    assert w.shape[0] <= 6
    cond = bench.ExactMarginal(w, psi, mu).cond
    assert abs(np.log10(cond) - exponent) <= 1.0


@pytest.mark.parametrize("family", ["ppca", "fa_signal", "fa_graded"])
def test_mpmath_reference_and_every_method_agree_when_well_conditioned(
    bench: ModuleType, family: str
) -> None:
    """At cond(C) ~ 1e2 the 50-digit reference and every method agree to ~1e-13."""
    rng = np.random.default_rng(11)
    w, psi, mu = bench.conditioned_problem(family, 2, rng)
    x = mu + w @ rng.standard_normal(w.shape[1]) + np.sqrt(psi) * rng.standard_normal(len(psi))
    reference, kappa = bench.ExactMarginal(w, psi, mu).log_pdf(x)
    assert kappa > 0
    values = bench.accuracy_values(family, w, psi, mu, x)
    assert {"elbo_check", "scipy", "scipy_singular", "woodbury"} <= set(values)
    for name, value in values.items():
        assert not isinstance(value, str), f"{name} raised {value}"
        assert abs(value - reference) <= 1e-13 * abs(reference), name


def _table_widths(page: str) -> list[set[int]]:
    """The set of cell counts of each pipe table of a Markdown page (one per table)."""
    tables: list[set[int]] = []
    inside = False
    for line in page.splitlines():
        if line.startswith("|"):
            if not inside:
                tables.append(set())
            tables[-1].add(line.strip().strip("|").count("|") + 1)
            inside = True
        else:
            inside = False
    return tables


def test_tiny_run_end_to_end(tmp_path: Path) -> None:
    """``run.py --tiny`` (the --quick path on tiny sizes): exit 0, every cross-check ok,
    a page with consistent pipe tables and consecutive headings, and the raw JSON."""
    page_path, json_path = tmp_path / "performance.md", tmp_path / "results.json"
    result = subprocess.run(
        [
            sys.executable,
            str(HARNESS),
            "--tiny",
            "--output",
            str(page_path),
            "--json",
            str(json_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(json_path.read_text())
    assert results["failures"] == []
    assert set(results["speed"]) == {"default", "one_thread"}
    for mode in results["speed"].values():
        for size in mode["sizes"]:
            assert size["identity_ok"]
            for record in size["methods"]:
                assert "skipped" in record or "call_s" in record
                assert record.get("check_ok", True), record
    assert results["accuracy"]["records"]
    page = page_path.read_text()
    assert page.startswith("(performance)=\n# Performance\n")
    for heading in ("## Machine", "## Speed", "## Memory", "## Accuracy", "## Analysis"):
        assert f"\n{heading}\n" in page
    levels = [len(m.group(1)) for m in re.finditer(r"^(#+) ", page, flags=re.MULTILINE)]
    assert levels[0] == 1
    assert all(b <= a + 1 for a, b in itertools.pairwise(levels))
    widths = _table_widths(page)
    assert widths
    assert all(len(w) == 1 for w in widths), widths
