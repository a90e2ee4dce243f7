"""The README's example runs as printed (correct ``my_elbo``, ``my_batched_elbo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from elbo_check import Gaussian, kl_divergence

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    return [block.split("```", 1)[0] for block in text.split("```python")[1:]]


def test_readme_has_one_example() -> None:
    """The README stays short: one Python example."""
    assert len(_python_blocks()) == 1


@pytest.fixture
def dev_profile() -> Any:
    """The example as a user runs it: the default (dev) effort, also in CI."""
    from elbo_check import _config

    before = _config._settings["profile"]
    _config.configure(profile="dev", seed=_config._settings["seed"])
    yield
    _config._settings["profile"] = before


@pytest.mark.usefixtures("dev_profile")
def test_readme_example_runs_and_its_verifier_catches_a_bug() -> None:
    """With a correct ELBO the example passes; with the entropy dropped it raises."""
    (source,) = _python_blocks()

    def correct(model: object, q: object, x: object) -> object:
        return model.elbo(q, x)  # type: ignore[attr-defined]

    def mean_reduced(model: object, q: object, x: object) -> object:
        values = model.elbo(q, x)  # type: ignore[attr-defined]
        return values * 0 + values.mean()  # BUG: one value for the whole batch

    others = {
        "my_mc_elbo": _mc_elbo,
        "my_vae_loss": _analytic_kl,
        "my_grad": _log_scale_grad,
        "my_autodiff_grad": _analytic_kl_pathwise_grad,
    }
    exec(source, {"my_elbo": correct, "my_batched_elbo": correct, **others})
    with pytest.raises(AssertionError, match="entropy term H\\(q\\) is missing"):
        exec(
            source,
            {
                "my_elbo": lambda model, q, x: model.elbo(q, x) - q.entropy(),
                "my_batched_elbo": correct,
                **others,
            },
        )
    with pytest.raises(AssertionError, match="the members of a batch interact"):
        exec(source, {"my_elbo": correct, "my_batched_elbo": mean_reduced, **others})


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
