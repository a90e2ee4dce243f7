"""The loss doctor: its pieces against scipy, conventions recovered for any combination,
the catalogue of real cases, option and return checks, and the command line."""

from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import multivariate_normal

from elbo_check import Gaussian, InvalidInputError
from elbo_check.__main__ import main
from elbo_check.testing import LossDiagnosis, diagnose_loss
from elbo_check.testing._doctor_probes import PROBLEM_CLASSES, Design, Pieces, draw_problem
from elbo_check.testing._returns import BadReturn, InputMutated

sys.path.insert(0, str(Path(__file__).parent))
import buggy_losses as catalogue

LOG_2PI = math.log(2 * math.pi)


# ---------------------------------------------------------------------- the pieces
@pytest.mark.parametrize("kind", PROBLEM_CLASSES, ids=lambda k: k.text())
def test_pieces_against_scipy(kind: Any) -> None:
    """F + P - C + H + constants is the ELBO, each piece from scipy on dense matrices."""
    design = Design(rows=3, features=4, latent=2)
    model, q, x = draw_problem(np.random.default_rng(5), design, kind)
    pieces = Pieces.of(model, q, x, design)
    w, b, psi = model.weights, model.bias, model.dense_noise_cov()
    prior = model.prior
    for i in range(design.rows):
        m, s = q.mean[i], q.cov[i]
        ell = multivariate_normal(w @ m + b, psi).logpdf(x[i]) - 0.5 * np.trace(
            np.linalg.solve(psi, w @ s @ w.T)
        )
        entropy = multivariate_normal(m, s).entropy()
        cross = -multivariate_normal(prior.mean, prior.cov).logpdf(m) + 0.5 * np.trace(
            np.linalg.solve(prior.cov, s)
        )
        logdet = np.linalg.slogdet(psi)[1]
        assert pieces.fit[i] == pytest.approx(ell + 2 * LOG_2PI + 0.5 * logdet, rel=1e-10)
        assert pieces.logdet_term == pytest.approx(-0.5 * logdet, rel=1e-12, abs=1e-12)
        assert pieces.cross_entropy[i] == pytest.approx(cross - LOG_2PI, rel=1e-10)
        assert pieces.entropy[i] == pytest.approx(entropy - (1 + LOG_2PI), rel=1e-10, abs=1e-10)
        rebuilt = (
            pieces.fit[i]
            + pieces.logdet_term
            - pieces.cross_entropy[i]
            + pieces.entropy[i]
            - 2 * LOG_2PI
            + 1.0  # -D/2 log 2 pi + K/2 with D = 4, K = 2
        )
        one = Gaussian.from_covariance(mean=m, cov=s)
        assert rebuilt == pytest.approx(float(model.elbo(one, x[i])), rel=1e-10)


# ---------------------------------------------------------------------- any convention
conventions = st.fixed_dictionaries(
    {
        "sign": st.sampled_from([-1.0, 1.0]),
        "rows": st.sampled_from(["sum", "mean", "per row"]),
        "features": st.sampled_from(["sum", "mean"]),
        "latent": st.sampled_from(["sum", "mean"]),
        "beta": st.sampled_from([0.5, 1.0, 3.0]),
        "drop_2pi": st.booleans(),
        "drop_logdet": st.booleans(),
    }
)


def _loss_of(c: dict[str, Any]) -> Any:
    def loss(model: Any, q: Any, x: Any) -> Any:
        psi = np.broadcast_to(np.asarray(model.noise_cov, dtype=float), (x.shape[-1],))
        square = catalogue.squared_error(model, q, x) / psi
        log_lik = -0.5 * (
            square + (0 if c["drop_logdet"] else np.log(psi)) + (0 if c["drop_2pi"] else LOG_2PI)
        )
        rec = log_lik.sum(-1) if c["features"] == "sum" else log_lik.mean(-1)
        kl = catalogue.kl_terms(q)
        kl_row = kl.sum(-1) if c["latent"] == "sum" else kl.mean(-1)
        rows = c["sign"] * (rec - c["beta"] * kl_row)
        return {"sum": np.sum, "mean": np.mean, "per row": np.asarray}[c["rows"]](rows)

    return loss


@settings(max_examples=12, deadline=None)
@given(conventions)
def test_every_convention_is_named(c: dict[str, Any]) -> None:
    """A loss built from any combination of conventions gets each of them back."""
    report = diagnose_loss(_loss_of(c), q_kinds=("diagonal",), prior_kinds=("standard",))
    got = report.conventions
    assert got["sign"] == ("+" if c["sign"] > 0 else "-")
    assert got["reconstruction.rows"] == c["rows"]
    assert got["reconstruction.features"] == c["features"]
    assert got["kl.latent"] == c["latent"]
    assert got["log 2 pi"] == ("dropped" if c["drop_2pi"] else "kept")
    assert got["log det Psi"] == ("dropped" if c["drop_logdet"] else "kept")
    beta = c["beta"] * (4 if c["features"] == "mean" else 1) / (2 if c["latent"] == "mean" else 1)
    assert report.beta == pytest.approx(beta, rel=1e-6)
    dropped = c["drop_2pi"] or c["drop_logdet"]
    one = c["beta"] == 1 and c["features"] == "sum" and c["latent"] == "sum"  # beta == 1 always
    if c["sign"] > 0:
        assert report.kind == ("wrong sign" if one else "other")
    elif not one:
        assert report.kind == "beta"
    elif dropped:
        assert report.kind == "other"
    else:
        assert report.kind in ("elbo", "multiple")
    assert report.ok == (report.kind in ("elbo", "multiple"))


# ---------------------------------------------------------------------- the catalogue
def _check(case: catalogue.Loss) -> LossDiagnosis:
    options = dict(case.options)
    if options.get("mode") == "statistical":
        options.setdefault("calls", 32)
    report = diagnose_loss(case.fn, **options)
    wrong = {
        key: (want, report.conventions.get(key))
        for key, want in case.expected.items()
        if report.conventions.get(key) != want
    }
    assert not wrong, f"{case.name}: conventions (expected, got) {wrong}\n{report}"
    assert (report.kind, report.ok) == (case.kind, case.ok), str(report)
    return report


@pytest.mark.parametrize("case", catalogue.CASES, ids=lambda c: c.name)
def test_catalogue_case(case: catalogue.Loss) -> None:
    _check(case)


@pytest.mark.parametrize("case", catalogue.HELD_OUT, ids=lambda c: c.name)
def test_held_out_case(case: catalogue.Loss) -> None:
    _check(case)


def test_report_text_names_the_convention() -> None:
    report = _check(catalogue.CASES[0])  # the KL summed over the batch
    text = " ".join(str(report).split())  # unwrapped
    assert "beta = B = 3 here (B = 3), changing with the batch size" in text
    assert "KL summed over the batch" in text
    assert "log-likelihood averaged over the batch" in text
    assert json.loads(json.dumps(report.to_json()))["conventions"]["beta"] == "B"


def test_declared_beta_is_accepted_only_when_constant() -> None:
    def beta_two(model: Any, q: Any, x: Any) -> float:
        return float(catalogue.loss_sum(model, q, x) + catalogue.kl_terms(q).sum())

    assert diagnose_loss(beta_two, beta=2.0).ok
    assert not diagnose_loss(beta_two, beta=3.0).ok
    halved = diagnose_loss(catalogue.kl_mean_over_latent, beta=0.5)  # beta = 1/K, not 0.5
    assert not halved.ok
    assert "not the declared beta = 0.5" in halved.verdict


def test_up_to_constant_accepts_dropped_constants() -> None:
    def no_constants(model: Any, q: Any, x: Any) -> float:
        psi = np.asarray(model.noise_cov, dtype=float)
        rec = -0.5 * (catalogue.squared_error(model, q, x) / psi).sum(-1)
        return float((-rec + catalogue.kl_terms(q).sum(-1)).sum())

    strict = diagnose_loss(no_constants)
    assert (strict.kind, strict.ok) == ("other", False)
    relaxed = diagnose_loss(no_constants, up_to_constant=True)
    assert relaxed.ok
    assert relaxed.notes


def test_a_wrong_term_is_none_of_these() -> None:
    def variance_as_scale(model: Any, q: Any, x: Any) -> float:
        kl = 0.5 * (q.variances**2 + q.mean**2 - 1 - np.log(q.variances**2))
        return float((-catalogue.log_lik_terms(model, q, x).sum(-1) + kl.sum(-1)).sum())

    report = diagnose_loss(variance_as_scale)
    assert (report.kind, report.ok, report.terms) == ("other", False, ())
    assert "verify_elbo" in report.verdict
    assert len(report.notes) == 3


def test_float32_loss_gets_a_float32_tolerance() -> None:
    report = diagnose_loss(lambda m, q, x: np.float32(catalogue.loss_sum(m, q, x)))
    assert report.kind == "elbo"


# ---------------------------------------------------------------------- checks
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"objective": "max"}, "objective must be one of"),
        ({"mode": "pathwise"}, "mode must be one of"),
        ({"beta": -1.0}, "beta must be a positive finite number"),
        ({"beta": math.nan}, "beta"),
        ({"up_to_constant": "yes"}, "up_to_constant must be True or False"),
        ({"n_problems": 3}, "n_problems"),
        ({"q_kinds": ()}, "q_kinds must be a non-empty sequence"),
        ({"prior_kinds": ("bent",)}, "prior_kinds must hold only"),
        ({"noise_kinds": ("full",)}, "noise_kinds must hold only"),
        ({"q_kinds": ("full",), "prior_kinds": ("standard",)}, "no class of problems"),
        ({"false_alarm_rate": 2.0}, "false_alarm_rate"),
        ({"mode": "statistical", "calls": 1}, "calls"),
    ],
)
def test_bad_options_are_named(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        diagnose_loss(catalogue.loss_sum, **options)


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (lambda m, q, x: None, "fn must return a real number"),
        (lambda m, q, x: np.zeros((2, 2)), r"scalar loss or one value per row \(shape \(3,\)\)"),
        (lambda m, q, x: math.nan, "not finite"),
    ],
)
def test_bad_returns_are_named(returned: Any, message: str) -> None:
    with pytest.raises(BadReturn, match=message):
        diagnose_loss(returned)


def test_a_function_that_raises_everywhere_is_reported() -> None:
    def broken(model: Any, q: Any, x: Any) -> float:
        raise KeyError("decoder")

    with pytest.raises(AssertionError, match="raised on every class") as info:
        diagnose_loss(broken)
    assert isinstance(info.value.__cause__, KeyError)


def test_input_mutation_is_reported_and_global_state_kept() -> None:
    def mutating(model: Any, q: Any, x: Any) -> float:
        x -= 1.0
        return catalogue.loss_sum(model, q, x)

    state = np.random.get_state()[1].copy()  # noqa: NPY002 - the legacy global state
    with pytest.raises(InputMutated, match="changed its input x"):
        diagnose_loss(mutating)
    diagnose_loss(catalogue.loss_sum)
    assert np.array_equal(np.random.get_state()[1], state)  # noqa: NPY002


def test_seed_repeats_a_monte_carlo_diagnosis() -> None:
    a = diagnose_loss(catalogue.monte_carlo_mean, mode="statistical", calls=8, seed=3)
    b = diagnose_loss(catalogue.monte_carlo_mean, mode="statistical", calls=8, seed=3)
    assert [t.scaling.value for t in a.terms] == [t.scaling.value for t in b.terms]


# ---------------------------------------------------------------------- command line
LOSS_FILE = textwrap.dedent(
    """
    import numpy as np

    def loss(model, q, x):
        fit = ((x - q.mean @ model.weights.T - model.bias) ** 2
               + q.variances @ (model.weights ** 2).T) / model.noise_cov
        log_lik = -0.5 * (fit + np.log(2 * np.pi * model.noise_cov)).sum(-1)
        kl = 0.5 * (q.variances + q.mean ** 2 - 1 - np.log(q.variances))
        return np.mean(-log_lik + WEIGHT * kl.sum(-1))

    WEIGHT = 1.0
    not_callable = 3
    """
)


def test_command_line_doctor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good_loss.py"
    good.write_text(LOSS_FILE)
    beta = tmp_path / "beta_loss.py"
    beta.write_text(LOSS_FILE.replace("WEIGHT = 1.0", "WEIGHT = 2.0"))
    assert main(["doctor", f"{good}:loss"]) == 0
    assert "This is the negative ELBO (a loss) averaged over the batch" in capsys.readouterr().out
    assert main(["doctor", f"{beta}:loss"]) == 1
    assert "beta = 2" in capsys.readouterr().out
    assert main(["doctor", f"{beta}:loss", "--beta", "2"]) == 0
    capsys.readouterr()
    assert main(["doctor", f"{good}:loss", "--objective", "elbo", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["kind"] == "wrong sign"
    for target, message in (
        (f"{good}:nothing", "has no attribute 'nothing'"),
        (f"{good}:not_callable", "is not callable"),
        ("no_such_module_xyz:loss", "cannot import no_such_module_xyz"),
        ("loss", "TARGET must look like package.module:function"),
    ):
        assert main(["doctor", target]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["doctor", f"{good}:loss", "--beta", "-1"])
    assert "--beta must be a positive number" in capsys.readouterr().err
