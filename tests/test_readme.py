"""The README's example runs as pasted and prints what the README shows.

The one Python block is run as a user pastes it: it must raise the verifier's
``AssertionError`` with exactly the message shown under it, and with the bug fixed it
must pass with the report line shown. Each one-line call the README lists afterwards
(``verify_...(my_...)``) is run with a correct stand-in for the user's function.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import buggy_bounds
import buggy_minibatch
import numpy as np
import pytest

from elbo_check import Gaussian, LinearGaussianModel, kl_divergence
from elbo_check.testing import DiagonalLogScale

README = Path(__file__).resolve().parents[1] / "README.md"
BUG = " / q.dim"
DOCTOR_BUG = "nll.mean()"
DOCTOR_COMMAND = "$ python -m elbo_check doctor my_vae:loss\n"


def _blocks(language: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    return [block.split("```", 1)[0] for block in text.split(f"```{language}\n")[1:]]


def _normalised(text: str) -> str:
    """Hypothesis's case count and the last digits of a worst error may vary."""
    text = re.sub(r"after \d+ cases", "after N cases", text)
    text = re.sub(r"worst error [0-9.e+-]+", "worst error E", text)
    return text.strip()


def test_readme_has_two_python_examples_with_the_bug_marked() -> None:
    source, doctor_source = _blocks("python")
    assert source.count(BUG) == 1
    assert doctor_source.count(DOCTOR_BUG) == 1


@pytest.fixture
def dev_profile() -> Any:
    """The example as a user runs it: the default (dev) effort, also in CI."""
    from elbo_check import _config

    before = _config._settings["profile"]
    _config.configure(profile="dev", seed=_config._settings["seed"])
    yield
    _config._settings["profile"] = before


@pytest.mark.usefixtures("dev_profile")
def test_readme_example_fails_with_the_message_it_shows() -> None:
    source = _blocks("python")[0]
    shown_failure = _blocks("text")[0]
    with pytest.raises(AssertionError) as caught:
        exec(source, {"__name__": "__readme__"})
    assert _normalised(f"AssertionError: {caught.value}") == _normalised(shown_failure)


@pytest.mark.usefixtures("dev_profile")
def test_readme_example_passes_with_the_bug_deleted() -> None:
    source = _blocks("python")[0]
    shown_pass = _blocks("text")[1]
    fixed = source.replace(BUG, "").replace("verify_elbo(my_elbo)", "report = verify_elbo(my_elbo)")
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    exec(fixed, namespace)
    assert _normalised(str(namespace["report"])) == _normalised(shown_pass)


def test_readme_doctor_example_prints_what_it_shows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from elbo_check.__main__ import main

    source = _blocks("python")[1]
    (shown,) = [b for b in _blocks("text") if b.startswith(DOCTOR_COMMAND)]
    module = tmp_path / "my_vae.py"
    module.write_text(source)
    assert main(["doctor", f"{module}:loss"]) == 1
    residual = r"residual [0-9.e+-]+"
    got = re.sub(residual, "residual R", capsys.readouterr().out.strip())
    assert got == re.sub(residual, "residual R", shown.removeprefix(DOCTOR_COMMAND).strip())
    module.write_text(source.replace(DOCTOR_BUG, "nll.sum(-1).mean()"))
    assert main(["doctor", f"{module}:loss"]) == 0
    assert "This is the negative ELBO (a loss) averaged over the batch" in capsys.readouterr().out


def _listed_calls() -> list[str]:
    text = README.read_text(encoding="utf-8")
    return re.findall(r"^- `(verify_\w+\(my_\w+.*?\))`", text, flags=re.MULTILINE)


def test_readme_lists_every_verifier() -> None:
    called = {call.split("(", 1)[0] for call in _listed_calls()}
    assert {"verify_elbo", "verify_elbo_estimator", "verify_elbo_gradient", "verify_kl"} <= called


@pytest.mark.usefixtures("dev_profile")
@pytest.mark.parametrize("call", _listed_calls())
def test_readme_listed_call_runs_with_a_correct_function(call: str) -> None:
    from elbo_check import testing

    prior = Gaussian.from_covariance(mean=[0.5, -1.0], cov=[[1.0, 0.3], [0.3, 2.0]])
    model = LinearGaussianModel(
        weights=np.ones((3, 2)), bias=[0.1, 0.2, 0.3], prior=prior, noise_cov=[0.5, 1.0, 2.0]
    )
    q = Gaussian.from_diagonal(mean=[0, 0], variances=[0.2, 0.3])
    namespace = {
        **{name: getattr(testing, name) for name in testing.__all__},
        "DiagonalLogScale": DiagonalLogScale,
        "model": model,
        "q": q,
        "x": np.array([1.0, 0.0, 2.0]),
        "my_elbo": lambda model, q, x: model.elbo(q, x),
        "my_batched_elbo": lambda model, q, x: model.elbo(q, x),
        "my_mc_elbo": _mc_elbo,
        "my_vae_loss": _analytic_kl,
        "my_grad": _log_scale_grad,
        "my_autodiff_grad": _analytic_kl_pathwise_grad,
        "my_kl": kl_divergence,
        "my_log_evidence": lambda model, x: model.log_evidence(x),
        "my_iwae": buggy_bounds.iwae,
        "my_renyi": buggy_bounds.renyi,
        "my_dreg_grad": buggy_bounds.dreg_gradient,
        "my_minibatch_elbo": buggy_minibatch.CORRECT[0].fn,
    }
    report = eval(call, namespace)
    assert "passed" in str(report)


def _mc_elbo(model: Any, q: Any, x: np.ndarray, rng: Any, n: int) -> float:
    z = q.mean + rng.standard_normal((n, q.dim)) @ q.scale_tril.T
    return float(np.mean(model.log_joint(x, z) - q.log_prob(z)))


def _analytic_kl(model: Any, q: Any, x: np.ndarray, rng: Any, n: int) -> float:
    z = q.mean + rng.standard_normal((n, q.dim)) @ q.scale_tril.T
    log_likelihood = model.log_joint(x, z) - model.prior.log_prob(z)
    return float(np.mean(log_likelihood) - kl_divergence(q, model.prior))


def _log_scale_grad(model: Any, params: dict[str, np.ndarray], x: np.ndarray) -> Any:
    scale = np.exp(params["log_scale"])
    q = Gaussian.from_diagonal(mean=params["loc"], variances=scale**2)
    g = model.elbo_grad_variational(q, x)
    return {"loc": g.mean, "log_scale": np.diagonal(g.scale_tril) * scale}


def _analytic_kl_pathwise_grad(model: Any, q: Any, x: np.ndarray, eps: np.ndarray) -> Any:
    """d/d(m, L) of mean_i log p(x | z_i) - KL(q || p(z)) at z_i = m + L eps_i, by hand."""
    factor = q.scale_tril
    z = q.mean + eps @ factor.T
    residual = x - z @ model.weights.T - model.bias
    g = np.linalg.solve(model.dense_noise_cov(), residual.T).T @ model.weights
    s0 = model.prior.cov
    grad_kl_mean = np.linalg.solve(s0, q.mean - model.prior.mean)
    grad_kl_factor = np.tril(np.linalg.solve(s0, factor)) - np.diag(1 / np.diag(factor))
    return g.mean(axis=0) - grad_kl_mean, np.tril(g.T @ eps / len(eps)) - grad_kl_factor
