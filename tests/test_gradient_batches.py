"""verify_elbo_gradient(fn, batch_size=B): a minibatch's gradients in every mode.

The gradients here are written from scratch in numpy, the way batched VAE code is (no
oracle): ``q.mean`` (B, K), ``q.scale_tril`` (B, K, K), ``x`` (B, D), noise ``eps`` of
shape (n, B, K) (sample axis first), and one gradient per member with the batch axis
first: the gradient of the SUM of the members' ELBOs with respect to each member's own
parameters. Correct code passes every mode, in (m, L) and in log-scales; batch-axis
mistakes fail with the mistake named.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from elbo_check import Gaussian, InvalidInputError, LinearGaussianModel
from elbo_check.strategies import ElboProblem
from elbo_check.testing import verify_elbo_gradient
from elbo_check.testing._parametrisations import DiagonalLogScale

#: Few examples, calls and problems: the whole file in well under 40 s.
EXACT: dict[str, Any] = {"max_examples": 15}
PATH: dict[str, Any] = {"mode": "pathwise", "max_examples": 15}
STAT: dict[str, Any] = {"mode": "statistical", "calls": 80, "n_problems": 1, "n_samples": 16}
MODES = {"exact": EXACT, "pathwise": PATH, "statistical": STAT}


# ---------------------------------------------------------------------- a user's batched code
def dense_noise(model: LinearGaussianModel) -> np.ndarray:
    noise = np.asarray(model.noise_cov, dtype=float)
    if noise.ndim == 0:
        return float(noise) * np.eye(model.data_dim)
    return np.diag(noise) if noise.ndim == 1 else noise


def diag_embed(values: np.ndarray) -> np.ndarray:
    """(B, K) -> (B, K, K) diagonal matrices."""
    return values[..., None] * np.eye(values.shape[-1])


def log_q_gradient(factor: np.ndarray) -> np.ndarray:
    """d/dL of sum(log diag L), per member: diag(1 / L_ii), shape (B, K, K)."""
    return diag_embed(1.0 / np.diagonal(factor, axis1=-2, axis2=-1))


def scores(model: LinearGaussianModel, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """grad_z log p(x, z) for z (..., B, K) and x (B, D)."""
    w = model.weights
    noise_inv = np.linalg.inv(dense_noise(model))
    prior_inv = np.linalg.inv(model.prior.cov)
    residual = x - np.einsum("dk,...bk->...bd", w, z) - model.bias
    likelihood = np.einsum("dk,de,...be->...bk", w, noise_inv, residual)
    return likelihood - np.einsum("kj,...bj->...bk", prior_inv, z - model.prior.mean)


def exact_gradient(
    model: LinearGaussianModel, mean: np.ndarray, factor: np.ndarray, x: np.ndarray, bug: str
) -> tuple[np.ndarray, np.ndarray]:
    """The closed-form gradient of each member's ELBO: (B, K) and (B, K, K)."""
    w = model.weights
    precision = np.linalg.inv(model.prior.cov) + w.T @ np.linalg.solve(dense_noise(model), w)
    grad_mean = scores(model, x, mean)
    grad_factor = -np.einsum("kj,bjl->bkl", precision, factor)
    if bug != "no entropy":
        grad_factor = grad_factor + log_q_gradient(factor)
    return grad_mean, np.tril(grad_factor)


def pathwise_gradient(
    model: LinearGaussianModel,
    mean: np.ndarray,
    factor: np.ndarray,
    x: np.ndarray,
    eps: Any,
    bug: str,
) -> tuple[np.ndarray, np.ndarray]:
    """The gradient of the joint form's estimate at noise eps (n, B, K)."""
    z = mean + np.einsum("bij,nbj->nbi", factor, eps)
    g = scores(model, x, z)  # (n, B, K)
    grad_factor = np.einsum("nbi,nbj->bij", g, eps) / eps.shape[0]
    if bug != "no entropy":
        grad_factor = grad_factor + log_q_gradient(factor)
    return g.mean(axis=0), np.tril(grad_factor)


def with_bug(grads: tuple[np.ndarray, np.ndarray], bug: str) -> Any:
    gm, gl = grads
    if bug == "summed over the batch":
        return gm.sum(axis=0), gl.sum(axis=0)
    if bug == "batch mean":  # autodiff of elbo.mean(): every member's gradient / B
        return gm / gm.shape[0], gl / gm.shape[0]
    return gm, gl


def unpack(q: Gaussian, bug: str) -> tuple[np.ndarray, np.ndarray]:
    mean, factor = q.mean, q.scale_tril  # (B, K), (B, K, K)
    if bug == "member 0's q":
        return np.broadcast_to(mean[0], mean.shape), np.broadcast_to(factor[0], factor.shape)
    return mean, factor


def user(mode: str, bug: str = "") -> Callable[..., Any]:
    """The user's batched gradient in (m, L) for ``mode``."""
    if mode == "exact":

        def exact(model: LinearGaussianModel, q: Gaussian, x: np.ndarray) -> Any:
            return with_bug(exact_gradient(model, *unpack(q, bug), x, bug), bug)

        return exact
    if mode == "pathwise":

        def pathwise(model: LinearGaussianModel, q: Gaussian, x: np.ndarray, eps: Any) -> Any:
            return with_bug(pathwise_gradient(model, *unpack(q, bug), x, eps, bug), bug)

        return pathwise

    def statistical(
        model: LinearGaussianModel, q: Gaussian, x: np.ndarray, rng: Any, n: int
    ) -> Any:
        eps = rng.standard_normal((n, *q.batch_shape, q.dim))
        return with_bug(pathwise_gradient(model, *unpack(q, bug), x, eps, bug), bug)

    return statistical


def log_scale_user(mode: str) -> Callable[..., Any]:
    """The same gradients in DiagonalLogScale's parameters, loc (B, K), log_scale (B, K)."""

    def in_log_scales(
        model: LinearGaussianModel, params: dict[str, np.ndarray], x: Any, *rest: Any
    ) -> Any:
        scale = np.exp(params["log_scale"])
        mean, factor = params["loc"], diag_embed(scale)
        if mode == "exact":
            gm, gl = exact_gradient(model, mean, factor, x, "")
        else:
            eps = rest[0] if mode == "pathwise" else rest[0].standard_normal((rest[1], *mean.shape))
            gm, gl = pathwise_gradient(model, mean, factor, x, eps, "")
        return {"loc": gm, "log_scale": np.diagonal(gl, axis1=-2, axis2=-1) * scale}

    return in_log_scales


def diagnosis(failure: pytest.ExceptionInfo[AssertionError]) -> str:
    return "\n".join(line for line in str(failure.value).splitlines() if "Diagnosis" in line)


# ---------------------------------------------------------------------- correct code passes
@pytest.mark.parametrize("mode", list(MODES))
def test_correct_batched_gradients_pass_every_mode(mode: str) -> None:
    report = verify_elbo_gradient(user(mode), batch_size=3, **MODES[mode])
    assert "batch_size=3" in report.check
    assert report.details["batch_size"] == 3
    assert report.worst_error < 1.0


@pytest.mark.parametrize("mode", list(MODES))
def test_correct_batched_gradients_pass_in_log_scales(mode: str) -> None:
    report = verify_elbo_gradient(
        log_scale_user(mode), parametrisation=DiagonalLogScale(), batch_size=2, **MODES[mode]
    )
    assert "parametrisation=DiagonalLogScale()" in report.check
    assert "batch_size=2" in report.check


def test_a_batch_of_one_passes() -> None:
    verify_elbo_gradient(user("exact"), batch_size=1, **EXACT)


# ---------------------------------------------------------------------- batch-axis mistakes
@pytest.mark.parametrize("mode", list(MODES))
def test_a_gradient_summed_over_the_batch_is_a_wrong_shape(mode: str) -> None:
    with pytest.raises(AssertionError) as failure:
        verify_elbo_gradient(user(mode, "summed over the batch"), batch_size=3, **MODES[mode])
    message = str(failure.value)
    assert "one gradient per batch member" in message, message
    assert "grad_mean of shape (3, " in message
    assert "summed or averaged over the batch axis" in message


@pytest.mark.parametrize("mode", list(MODES))
def test_the_gradient_of_the_batch_mean_is_named(mode: str) -> None:
    with pytest.raises(AssertionError) as failure:
        verify_elbo_gradient(user(mode, "batch mean"), batch_size=3, **MODES[mode])
    assert "batch MEAN of the ELBOs (each member's gradient divided by B = 3)" in diagnosis(
        failure
    ), str(failure.value)


@pytest.mark.parametrize("mode", list(MODES))
def test_member_0s_q_for_every_row_is_an_interaction(mode: str) -> None:
    with pytest.raises(AssertionError) as failure:
        verify_elbo_gradient(user(mode, "member 0's q"), batch_size=3, **MODES[mode])
    message = str(failure.value)
    assert "the members of a batch interact" in diagnosis(failure), message
    assert "of the batch of 3" in message


@pytest.mark.parametrize(
    ("mode", "named"),
    [
        ("exact", "the entropy's contribution diag(1 / L_ii) is missing"),
        ("pathwise", "the gradient of -log q(z), diag(1 / L_ii), is missing"),
    ],
)
def test_a_missing_entropy_gradient_is_named_through_packed_batches(mode: str, named: str) -> None:
    with pytest.raises(AssertionError, match="members fail") as failure:
        verify_elbo_gradient(user(mode, "no entropy"), batch_size=3, **MODES[mode])
    assert named in diagnosis(failure), str(failure.value)


def test_a_log_scale_gradient_summed_over_the_batch_is_a_wrong_shape() -> None:
    def summed(model: Any, params: dict[str, np.ndarray], x: Any) -> Any:
        grads = log_scale_user("exact")(model, params, x)
        return {key: value.sum(axis=0) for key, value in grads.items()}

    with pytest.raises(AssertionError, match="loc of shape \\(2, ") as failure:
        verify_elbo_gradient(summed, parametrisation=DiagonalLogScale(), batch_size=2, **EXACT)
    assert "summed or averaged over the batch axis" in str(failure.value)


def test_one_wrong_member_is_named_without_an_interaction() -> None:
    def member_1_off(model: LinearGaussianModel, q: Gaussian, x: np.ndarray) -> Any:
        gm, gl = exact_gradient(model, q.mean, q.scale_tril, x, "")
        gm = gm.copy()
        gm[1] += 10.0
        return gm, gl

    with pytest.raises(AssertionError) as failure:
        verify_elbo_gradient(member_1_off, batch_size=3, **EXACT)
    message = str(failure.value)
    assert "member 1 of the batch of 3 (1 of 3 members fail)" in message, message
    assert "interact" not in message
    assert "batch MEAN" not in message


def test_a_batch_axis_last_is_named() -> None:
    def last(model: LinearGaussianModel, q: Gaussian, x: np.ndarray) -> Any:
        gm, gl = exact_gradient(model, q.mean, q.scale_tril, x, "")
        return gm.T, np.moveaxis(gl, 0, -1)

    with pytest.raises(AssertionError, match="is the batch axis last"):
        verify_elbo_gradient(last, batch_size=3, **EXACT)


@pytest.mark.parametrize("mode", ["exact", "statistical"])
def test_an_input_edited_in_place_is_reported_as_such(mode: str) -> None:
    def editing(model: LinearGaussianModel, q: Gaussian, x: np.ndarray, *rest: Any) -> Any:
        x -= model.bias
        return user(mode)(model, q, x + model.bias, *rest)

    with pytest.raises(AssertionError, match="changed its input x in place") as failure:
        verify_elbo_gradient(editing, batch_size=2, **MODES[mode])
    assert "Hint: an error that appears only with batches" not in str(failure.value)


# ---------------------------------------------------------------------- the arguments
@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "3"])
def test_a_bad_batch_size_is_refused_before_fn_is_called(bad: Any) -> None:
    calls: list[int] = []

    def fn(*args: Any) -> Any:
        calls.append(1)

    with pytest.raises(InvalidInputError, match="batch_size must be None or an int >= 1"):
        verify_elbo_gradient(fn, batch_size=bad)
    assert not calls


def test_problems_must_be_batches() -> None:
    model = LinearGaussianModel(
        weights=np.eye(2), bias=np.zeros(2), prior=Gaussian.standard(2), noise_cov=1.0
    )
    single = ElboProblem(model, Gaussian.standard(2), np.zeros(2))
    with pytest.raises(InvalidInputError, match="every problem is one batch") as refused:
        verify_elbo_gradient(user("exact"), batch_size=3, problems=[single])
    assert "x of shape (3, D) = (3, 2)" in str(refused.value)
    q = Gaussian.from_cholesky(mean=np.zeros((3, 2)), scale_tril=np.stack([np.eye(2)] * 3))
    batch = ElboProblem(model, q, np.ones((3, 2)))
    report = verify_elbo_gradient(user("exact"), batch_size=3, problems=[batch])
    assert report.cases == 1


def test_batch_shape_options_are_refused_with_batch_size() -> None:
    with pytest.raises(InvalidInputError, match="batch_size=2"):
        verify_elbo_gradient(user("exact"), batch_size=2, batch_shape=(2,))
