"""elbo_check.contrib.torch: torch ELBO code written from scratch, checked in one line each.

Correct code (torch.distributions, torch.linalg) passes; planted bugs are caught and
named. Run where torch is installed: ``python -m pytest tests_torch`` (.ci/run does,
after installing the CPU wheel). Small budgets keep the file well under a minute.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import Tensor  # noqa: E402
from torch.distributions import (  # noqa: E402
    LowRankMultivariateNormal,
    MultivariateNormal,
    kl_divergence,
)

from elbo_check import Gaussian, InvalidInputError, InvalidTypeError, ppca  # noqa: E402
from elbo_check.contrib.torch import (  # noqa: E402
    TorchGaussian,
    TorchModel,
    as_torch,
    verify_elbo,
    verify_elbo_estimator,
    verify_elbo_gradient,
    verify_kl,
    verify_log_evidence,
)
from elbo_check.testing import DiagonalLogScale, FullCholesky, ScaledLowRank  # noqa: E402

FAST = {"max_examples": 30}
STATISTICAL = {"n_problems": 2, "calls": 200}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Tiny problems: torch's thread pool only costs here (see examples/torch_linear_vae)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------- the user's code
def prior(model: TorchModel) -> MultivariateNormal:
    return MultivariateNormal(model.prior_mean, scale_tril=model.prior_scale_tril)


def guide(q: TorchGaussian) -> MultivariateNormal:
    return MultivariateNormal(q.mean, scale_tril=q.scale_tril)


def log_likelihood(model: TorchModel, z: Tensor, x: Tensor) -> Tensor:
    mean = z @ model.weights.mT + model.bias
    return MultivariateNormal(mean, covariance_matrix=model.noise_cov).log_prob(x)


def reconstruction(model: TorchModel, q: TorchGaussian, x: Tensor) -> Tensor:
    """E_q log p(x | z) in closed form; batched over q's and x's leading axes."""
    spread = torch.linalg.solve(model.noise_cov, model.weights @ q.cov @ model.weights.mT)
    return log_likelihood(model, q.mean, x) - 0.5 * torch.diagonal(spread, 0, -2, -1).sum(-1)


def elbo(model: TorchModel, q: TorchGaussian, x: Tensor) -> Tensor:
    return reconstruction(model, q, x) - kl_divergence(guide(q), prior(model))


def kl(p: TorchGaussian, q: TorchGaussian) -> Tensor:
    return kl_divergence(guide(p), guide(q))


def log_evidence(model: TorchModel, x: Tensor) -> Tensor:
    w = model.weights
    cov = w @ model.prior_cov @ w.mT + model.noise_cov
    return MultivariateNormal(w @ model.prior_mean + model.bias, cov).log_prob(x)


def reparameterised(mean: Tensor, factor: Tensor, eps: Tensor) -> Tensor:
    """z = m + L eps for eps (n, K) or (n, B, K) (not eps @ L.mT: wrong with a batch of L)."""
    return mean + (factor @ eps.unsqueeze(-1)).squeeze(-1)


def joint_estimate(model: TorchModel, q: TorchGaussian, x: Tensor, eps: Tensor) -> Tensor:
    z = reparameterised(q.mean, q.scale_tril, eps)
    return (log_likelihood(model, z, x) + prior(model).log_prob(z) - guide(q).log_prob(z)).mean(0)


def sampled_estimate(
    model: TorchModel, q: TorchGaussian, x: Tensor, generator: Any, n: int
) -> Tensor:
    assert isinstance(generator, torch.Generator)
    shape = (n, *q.mean.shape)
    eps = torch.randn(shape, generator=generator, dtype=q.mean.dtype, device=q.mean.device)
    return joint_estimate(model, q, x, eps)


# ---------------------------------------------------------------------- planted bugs
def variance_as_scale(model: TorchModel, q: TorchGaussian, x: Tensor, eps: Tensor) -> Tensor:
    z = reparameterised(q.mean, q.cov, eps)  # the covariance where its factor belongs
    return (log_likelihood(model, z, x) + prior(model).log_prob(z) - guide(q).log_prob(z)).mean(0)


def sticking_the_landing(model: TorchModel, q: TorchGaussian, x: Tensor, eps: Tensor) -> Tensor:
    z = reparameterised(q.mean, q.scale_tril, eps)
    frozen = MultivariateNormal(q.mean.detach(), scale_tril=q.scale_tril.detach())
    return (log_likelihood(model, z, x) + prior(model).log_prob(z) - frozen.log_prob(z)).mean(0)


def loss(model: TorchModel, q: TorchGaussian, x: Tensor) -> Tensor:
    return -elbo(model, q, x)


def kl_averaged(model: TorchModel, q: TorchGaussian, x: Tensor) -> Tensor:
    return reconstruction(model, q, x) - kl_divergence(guide(q), prior(model)) / q.mean.shape[-1]


# ---------------------------------------------------------------------- import and views
def test_importing_elbo_check_does_not_import_torch() -> None:
    code = "import sys, elbo_check, elbo_check.testing; print('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]  # this tree's elbo_check, not an installed one
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    assert out.stdout.strip() == "False"


def test_as_torch_copies_into_the_chosen_dtype() -> None:
    model = ppca(weights=np.ones((3, 2)), mean=np.zeros(3), noise_variance=0.5)
    view = as_torch(model, dtype=torch.float32)
    assert view.numpy is model
    assert view.weights.dtype == torch.float32
    assert view.noise_cov.shape == (3, 3)
    torch.testing.assert_close(view.noise_cov, 0.5 * torch.eye(3))
    view.weights[0, 0] = 7.0  # a copy: writeable, and the model is untouched
    assert model.weights[0, 0] == 1.0

    q = Gaussian.from_cholesky(mean=np.zeros((4, 2)), scale_tril=np.eye(2) * np.ones((4, 1, 1)))
    tq = as_torch(q)
    assert tq.mean.shape == (4, 2)
    assert tq.scale_tril.shape == tq.cov.shape == (4, 2, 2)
    assert tq.mean.dtype == torch.float64


# ---------------------------------------------------------------------- values
def test_correct_values_pass() -> None:
    verify_elbo(elbo, **FAST)
    verify_elbo(elbo, batch_size=4, **FAST)
    verify_kl(kl, **FAST)
    verify_log_evidence(log_evidence, **FAST)


def test_kl_averaged_over_latent_dims_is_caught_and_named() -> None:
    with pytest.raises(AssertionError, match="averaged over latent dimensions"):
        verify_elbo(kl_averaged, **FAST)


def test_estimators_pass_in_both_modes() -> None:
    verify_elbo_estimator(sampled_estimate, **STATISTICAL)
    verify_elbo_estimator(joint_estimate, mode="pathwise", **FAST)
    verify_elbo_estimator(joint_estimate, mode="pathwise", batch_size=3, **FAST)


def test_the_torch_generator_is_reproducible() -> None:
    first = verify_elbo_estimator(sampled_estimate, seed=3, **STATISTICAL)
    second = verify_elbo_estimator(sampled_estimate, seed=3, **STATISTICAL)
    assert first.worst_error == second.worst_error


def test_variance_as_scale_is_caught_and_named() -> None:
    with pytest.raises(AssertionError, match="covariance as the scale"):
        verify_elbo_estimator(variance_as_scale, mode="pathwise", **FAST)


# ---------------------------------------------------------------------- gradients
def test_autograd_gradients_pass_in_every_mode() -> None:
    verify_elbo_gradient(elbo, **FAST)
    verify_elbo_gradient(elbo, batch_size=3, **FAST)
    verify_elbo_gradient(joint_estimate, mode="pathwise", **FAST)
    verify_elbo_gradient(sampled_estimate, mode="statistical", **STATISTICAL)


def test_gradient_in_a_parametrisation() -> None:
    def diagonal_elbo(model: TorchModel, params: dict[str, Tensor], x: Tensor) -> Tensor:
        scale = params["log_scale"].exp()
        q = TorchGaussian(params["loc"], torch.diag(scale), torch.diag(scale**2))
        return elbo(model, q, x)

    verify_elbo_gradient(diagonal_elbo, parametrisation=DiagonalLogScale(), **FAST)

    def cholesky_elbo(model: TorchModel, params: dict[str, Tensor], x: Tensor) -> Tensor:
        factor = params["scale_tril"]  # used as given: autograd fills its upper triangle too
        return elbo(model, TorchGaussian(params["loc"], factor, factor @ factor.mT), x)

    # the adapter masks the entries that are not parameters (above the diagonal)
    verify_elbo_gradient(cholesky_elbo, parametrisation=FullCholesky(), **FAST)


def test_low_rank_pullback_agrees_with_torchs_low_rank_normal() -> None:
    """ScaledLowRank's closed-form chain rule against autograd through torch's own
    LowRankMultivariateNormal (Pyro's and NumPyro's AutoLowRankMultivariateNormal)."""

    def low_rank_elbo(model: TorchModel, params: dict[str, Tensor], x: Tensor) -> Tensor:
        scale = torch.nn.functional.softplus(params["raw_scale"])
        low = LowRankMultivariateNormal(
            params["loc"], params["cov_factor"] * scale[:, None], scale**2
        )
        q = TorchGaussian(low.loc, low.scale_tril, low.covariance_matrix)
        return elbo(model, q, x)

    for rank in (1, 2, 4):
        verify_elbo_gradient(low_rank_elbo, parametrisation=ScaledLowRank(rank), **FAST)

    def scale_as_variance(model: TorchModel, params: dict[str, Tensor], x: Tensor) -> Tensor:
        scale = torch.nn.functional.softplus(params["raw_scale"])
        low = LowRankMultivariateNormal(params["loc"], params["cov_factor"] * scale[:, None], scale)
        return elbo(model, TorchGaussian(low.loc, low.scale_tril, low.covariance_matrix), x)

    with pytest.raises(AssertionError):
        verify_elbo_gradient(scale_as_variance, parametrisation=ScaledLowRank(2), **FAST)


def test_sticking_the_landing_fails_pathwise_and_is_named() -> None:
    with pytest.raises(AssertionError, match="sticking the landing"):
        verify_elbo_gradient(sticking_the_landing, mode="pathwise", **FAST)


def test_sticking_the_landing_is_unbiased_so_passes_statistical() -> None:
    def sampled(model: TorchModel, q: TorchGaussian, x: Tensor, generator: Any, n: int) -> Tensor:
        eps = torch.randn((n, *q.mean.shape), generator=generator, dtype=q.mean.dtype)
        return sticking_the_landing(model, q, x, eps)

    verify_elbo_gradient(sampled, mode="statistical", **STATISTICAL)


def test_the_loss_sign_is_caught_and_named() -> None:
    with pytest.raises(AssertionError, match="wrong sign"):
        verify_elbo_gradient(loss, **FAST)


# ---------------------------------------------------------------------- float32
def test_float32_code_passes_at_float32_tolerance() -> None:
    def checked(model: TorchModel, q: TorchGaussian, x: Tensor) -> Tensor:
        assert x.dtype == q.mean.dtype == model.weights.dtype == torch.float32
        return elbo(model, q, x)

    report = verify_elbo(checked, dtype=torch.float32, **FAST)
    assert "float32" in str(report)
    verify_elbo_gradient(checked, dtype=torch.float32, **FAST)
    verify_kl(kl, dtype=torch.float32, **FAST)


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("dtype", [torch.int64, "float64", np.float64, None])
def test_a_dtype_that_is_not_a_torch_floating_dtype_is_refused(dtype: Any) -> None:
    with pytest.raises(InvalidTypeError, match=r"dtype must be a torch floating dtype.*got"):
        verify_elbo(elbo, dtype=dtype)


@pytest.mark.parametrize("device", ["nowhere", "cuda:7", 3.5])
def test_a_device_torch_cannot_use_is_refused(device: Any) -> None:
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(InvalidInputError, match="device must be a device torch can use"):
        verify_elbo_gradient(elbo, device=device)


def test_fn_not_callable_is_refused() -> None:
    with pytest.raises(InvalidTypeError, match="fn must be callable"):
        verify_kl("kl")


def test_a_value_autograd_cannot_differentiate_is_named() -> None:
    def detached(model: TorchModel, q: TorchGaussian, x: Tensor) -> Tensor:
        with torch.no_grad():
            return elbo(model, q, x)

    with pytest.raises(AssertionError, match="does not depend on q's parameters"):
        verify_elbo_gradient(detached, max_examples=5)


def test_the_tutorials_pytorch_example_runs_as_printed() -> None:
    """docs/tutorials/your-code.md's PyTorch block (not run by the docs build, which has
    no torch) runs here as printed, and its check catches a dropped entropy."""
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "docs" / "tutorials" / "your-code.md"
    section = page.read_text(encoding="utf-8").split("## Your framework: PyTorch")[1]
    source = section.split("```python")[1].split("```")[0]
    exec(source, {})
    broken = source.replace(" - guide.log_prob(z)", "")  # the entropy term dropped
    with pytest.raises(AssertionError, match="failed"):
        exec(broken, {})
