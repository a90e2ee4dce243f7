"""elbo_check.contrib.jax: JAX ELBO code written from scratch, checked in one line each.

Correct code (jax.numpy, jax.scipy) passes; planted bugs are caught and named. Run where
JAX is installed: ``python -m pytest tests_jax``. Every jitted check compiles the user's
code once per distinct shape (about a second each on a loaded 2-core machine), so the
checks here draw small models (``DIMS``) and reuse the same functions, whose
compilations JAX keeps across checks: the file stays well under a minute.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
from jax.scipy.linalg import solve_triangular  # noqa: E402

from elbo_check import Gaussian, InvalidInputError, InvalidTypeError, ppca  # noqa: E402
from elbo_check.contrib.jax import (  # noqa: E402
    JaxGaussian,
    JaxModel,
    as_jax,
    verify_elbo,
    verify_elbo_estimator,
    verify_elbo_gradient,
    verify_kl,
    verify_log_evidence,
)
from elbo_check.testing import DiagonalLogScale, FullCholesky  # noqa: E402

Array = Any  # jax.Array, and tracers of it
LOG_2PI = math.log(2 * math.pi)

#: One model shape (D = K = 2), so one compilation per function (per noise shape in
#: pathwise mode, per batch size with batches).
DIMS: dict[str, Any] = {
    "min_data_dim": 2,
    "max_data_dim": 2,
    "min_latent_dim": 2,
    "max_latent_dim": 2,
}
FAST: dict[str, Any] = {"max_examples": 15, **DIMS}
STATISTICAL: dict[str, Any] = {"n_problems": 2, "calls": 200, **DIMS}


# ---------------------------------------------------------------------- the user's code
# Everything through Cholesky factors and triangular solves: besides being the stable
# way, it compiles about 40% faster than LU-based solve and slogdet.
def trisolve(factor: Array, b: Array) -> Array:
    return solve_triangular(factor, b, lower=True)


def half_logdet(factor: Array) -> Array:
    return jnp.log(jnp.abs(jnp.diagonal(factor, axis1=-2, axis2=-1))).sum(-1)


def log_normal(x: Array, mean: Array, factor: Array) -> Array:
    """log N(x; mean, factor factor^T), batched over leading axes (factor lower)."""
    white = trisolve(factor, (x - mean)[..., None])[..., 0]
    return -0.5 * (white**2).sum(-1) - half_logdet(factor) - 0.5 * x.shape[-1] * LOG_2PI


def log_likelihood(model: JaxModel, z: Array, x: Array) -> Array:
    mean = z @ model.weights.T + model.bias
    return log_normal(x, mean, jnp.linalg.cholesky(model.noise_cov))


def kl_divergence(p_mean: Array, p_factor: Array, q_mean: Array, q_factor: Array) -> Array:
    """KL(p || q) in closed form from the Cholesky factors, batched over leading axes."""
    ratio = trisolve(q_factor, p_factor)
    white = trisolve(q_factor, (q_mean - p_mean)[..., None])
    trace_term = (ratio**2).sum((-2, -1)) + (white**2).sum((-2, -1)) - p_mean.shape[-1]
    return 0.5 * trace_term + half_logdet(q_factor) - half_logdet(p_factor)


def reconstruction(model: JaxModel, q: JaxGaussian, x: Array) -> Array:
    """E_q log p(x | z) in closed form; batched over q's and x's leading axes."""
    noise = jnp.linalg.cholesky(model.noise_cov)
    spread = trisolve(noise, model.weights @ q.scale_tril)  # tr(Psi^-1 W S W^T) = |.|^2
    return log_likelihood(model, q.mean, x) - 0.5 * (spread**2).sum((-2, -1))


def kl_to_prior(model: JaxModel, q: JaxGaussian) -> Array:
    return kl_divergence(q.mean, q.scale_tril, model.prior_mean, model.prior_scale_tril)


def elbo(model: JaxModel, q: JaxGaussian, x: Array) -> Array:
    return reconstruction(model, q, x) - kl_to_prior(model, q)


def kl(p: JaxGaussian, q: JaxGaussian) -> Array:
    return kl_divergence(p.mean, p.scale_tril, q.mean, q.scale_tril)


def log_evidence(model: JaxModel, x: Array) -> Array:
    w = model.weights
    cov = w @ model.prior_cov @ w.T + model.noise_cov
    return log_normal(x, w @ model.prior_mean + model.bias, jnp.linalg.cholesky(cov))


def reparameterised(q: JaxGaussian, eps: Array) -> Array:
    """z = m + L eps for eps (n, K) or (n, B, K)."""
    return q.mean + (q.scale_tril @ eps[..., None])[..., 0]


def joint_estimate(model: JaxModel, q: JaxGaussian, x: Array, eps: Array) -> Array:
    z = reparameterised(q, eps)
    prior = log_normal(z, model.prior_mean, model.prior_scale_tril)
    return (log_likelihood(model, z, x) + prior - log_normal(z, q.mean, q.scale_tril)).mean(0)


def sampled_estimate(model: JaxModel, q: JaxGaussian, x: Array, key: Array, n: int) -> Array:
    eps = jax.random.normal(key, (n, *q.mean.shape), dtype=q.mean.dtype)
    return joint_estimate(model, q, x, eps)


# ---------------------------------------------------------------------- planted bugs
def entropy_dropped(model: JaxModel, q: JaxGaussian, x: Array) -> Array:
    """E_q log p(x | z) + E_q log p(z), without H(q)."""
    entropy = half_logdet(q.scale_tril) + 0.5 * q.mean.shape[-1] * (1 + LOG_2PI)
    return elbo(model, q, x) - entropy


def kl_sign_flipped(model: JaxModel, q: JaxGaussian, x: Array) -> Array:
    return reconstruction(model, q, x) + kl_to_prior(model, q)


def variance_as_scale(model: JaxModel, q: JaxGaussian, x: Array, key: Array, n: int) -> Array:
    eps = jax.random.normal(key, (n, *q.mean.shape), dtype=q.mean.dtype)
    wrong = JaxGaussian(q.mean, q.cov, q.cov)  # the covariance where its factor belongs
    z = reparameterised(wrong, eps)
    prior = log_normal(z, model.prior_mean, model.prior_scale_tril)
    return (log_likelihood(model, z, x) + prior - log_normal(z, q.mean, q.scale_tril)).mean(0)


def sticking_the_landing(model: JaxModel, q: JaxGaussian, x: Array, eps: Array) -> Array:
    z = reparameterised(q, eps)
    frozen = jax.lax.stop_gradient((q.mean, q.scale_tril))  # log q's parameters held fixed
    prior = log_normal(z, model.prior_mean, model.prior_scale_tril)
    return (log_likelihood(model, z, x) + prior - log_normal(z, *frozen)).mean(0)


def loss(model: JaxModel, q: JaxGaussian, x: Array) -> Array:
    return -elbo(model, q, x)


# ---------------------------------------------------------------------- import and views
IMPORTS = """
import sys
import elbo_check, elbo_check.testing
print("jax" in sys.modules)
sys.modules["jax"] = None  # as if jax were not installed
try:
    import elbo_check.contrib.jax
except ImportError as err:
    print(err)
"""


def test_importing_elbo_check_does_not_import_jax_and_without_jax_says_how() -> None:
    root = Path(__file__).resolve().parents[1]  # this tree's elbo_check, not an installed one
    out = subprocess.run(
        [sys.executable, "-c", IMPORTS], capture_output=True, text=True, check=True, cwd=root
    )
    imported, message = out.stdout.strip().splitlines()
    assert imported == "False"
    assert "needs JAX" in message
    assert "pip install jax" in message


def test_as_jax_copies_into_the_chosen_dtype_as_pytrees() -> None:
    model = ppca(weights=np.ones((3, 2)), mean=np.zeros(3), noise_variance=0.5)
    view = as_jax(model, dtype=jnp.float32)
    assert view.weights.dtype == jnp.float32
    np.testing.assert_allclose(view.noise_cov, 0.5 * np.eye(3))
    assert len(jax.tree_util.tree_leaves(view)) == 6
    doubled = jax.jit(lambda m: jax.tree_util.tree_map(lambda a: 2 * a, m))(view)
    assert isinstance(doubled, JaxModel)
    np.testing.assert_allclose(doubled.weights, 2.0)

    q = Gaussian.from_cholesky(mean=np.zeros((4, 2)), scale_tril=np.eye(2) * np.ones((4, 1, 1)))
    with jax.enable_x64(True):
        tq = as_jax(q)
    assert tq.mean.shape == (4, 2)
    assert tq.scale_tril.shape == tq.cov.shape == (4, 2, 2)
    assert tq.mean.dtype == jnp.float64


def test_as_jax_refuses_float64_when_64_bit_jax_is_off() -> None:
    q = Gaussian.from_diagonal(mean=[0.0], variances=[1.0])
    with jax.enable_x64(False), pytest.raises(InvalidInputError, match="needs 64-bit JAX"):
        as_jax(q)


# ---------------------------------------------------------------------- values
def test_correct_values_pass() -> None:
    verify_elbo(elbo, **FAST)
    verify_kl(kl, max_examples=15, max_dim=2)
    verify_log_evidence(log_evidence, **FAST)


def test_the_kl_sign_is_caught_and_named() -> None:
    with pytest.raises(AssertionError, match="the KL term has the wrong sign"):
        verify_elbo(kl_sign_flipped, **FAST)


def test_estimators_pass_in_both_modes() -> None:
    verify_elbo_estimator(sampled_estimate, **STATISTICAL)
    verify_elbo_estimator(joint_estimate, mode="pathwise", **FAST)


def test_a_dropped_entropy_is_caught_and_named() -> None:
    with pytest.raises(AssertionError, match=r"the entropy term H\(q\) is missing"):
        verify_elbo(entropy_dropped, **FAST)


def test_variance_as_scale_is_caught_and_named() -> None:
    with pytest.raises(AssertionError, match="covariance as the scale"):
        verify_elbo_estimator(variance_as_scale, **STATISTICAL)


def test_the_key_is_a_typed_key_and_reproducible() -> None:
    typed: list[bool] = []
    drawn: list[Any] = []

    def estimate(model: JaxModel, q: JaxGaussian, x: Array, key: Array, n: int) -> Array:
        typed.append(jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key))  # while tracing
        value = sampled_estimate(model, q, x, key, n)
        jax.debug.callback(lambda v: drawn.append(float(v)), value, ordered=True)
        return value

    def estimates(seed: int) -> list[float]:
        drawn.clear()
        verify_elbo_estimator(estimate, seed=seed, n_problems=1, calls=80, **DIMS)
        return list(drawn)

    first, second, other = estimates(3), estimates(3), estimates(4)
    assert typed == [True]  # one shape: one trace
    assert len(first) == 80
    assert first == second != other


# ---------------------------------------------------------------------- gradients
def test_jax_grad_gradients_pass_in_every_mode() -> None:
    verify_elbo_gradient(elbo, **FAST)
    verify_elbo_gradient(elbo, batch_size=3, **FAST)
    verify_elbo_gradient(joint_estimate, mode="pathwise", **FAST)
    verify_elbo_gradient(sampled_estimate, mode="statistical", **STATISTICAL)


def test_gradient_in_a_parametrisation() -> None:
    def diagonal_elbo(model: JaxModel, params: dict[str, Array], x: Array) -> Array:
        scale = jnp.exp(params["log_scale"])
        return elbo(model, JaxGaussian(params["loc"], jnp.diag(scale), jnp.diag(scale**2)), x)

    verify_elbo_gradient(diagonal_elbo, parametrisation=DiagonalLogScale(), **FAST)

    def cholesky_elbo(model: JaxModel, params: dict[str, Array], x: Array) -> Array:
        factor = params["scale_tril"]  # used as given: jax.grad fills its upper triangle too
        return elbo(model, JaxGaussian(params["loc"], factor, factor @ factor.T), x)

    # the adapter masks the entries that are not parameters (above the diagonal)
    verify_elbo_gradient(cholesky_elbo, parametrisation=FullCholesky(), **FAST)


def test_log_q_under_stop_gradient_fails_pathwise_and_is_named() -> None:
    with pytest.raises(AssertionError, match="sticking the landing"):
        verify_elbo_gradient(sticking_the_landing, mode="pathwise", **FAST)


def test_the_loss_sign_is_caught_and_named() -> None:
    with pytest.raises(AssertionError, match=r"wrong sign \(the gradient of the loss"):
        verify_elbo_gradient(loss, **FAST)


# ---------------------------------------------------------------------- float32
def test_float32_code_passes_at_float32_tolerance() -> None:
    def checked(model: JaxModel, q: JaxGaussian, x: Array) -> Array:
        assert x.dtype == q.mean.dtype == model.weights.dtype == jnp.float32
        return elbo(model, q, x)

    report = verify_elbo(checked, dtype=jnp.float32, **FAST)
    assert "float32" in str(report)
    verify_elbo_gradient(checked, dtype=jnp.float32, **FAST)


# ---------------------------------------------------------------------- compilation
class CountedElbo:
    """The ELBO as a callable object that counts its traces; ``__eq__`` without
    ``__hash__`` makes it unhashable, as many callable objects are."""

    def __init__(self) -> None:
        self.traces = 0

    def __eq__(self, other: object) -> bool:
        return self is other

    def __call__(self, model: JaxModel, q: JaxGaussian, x: Array) -> Array:
        self.traces += 1  # Python runs only while jax traces: once per compilation
        return elbo(model, q, x)


def test_each_shape_compiles_once_and_the_compilation_is_reused() -> None:
    def problems(data_dim: int, count: int) -> list[tuple[Any, Gaussian, Any]]:
        rng = np.random.default_rng(data_dim)
        weights = rng.normal(size=(data_dim, 2))
        model = ppca(weights=weights, mean=np.zeros(data_dim), noise_variance=0.5)
        q = Gaussian.from_diagonal(mean=rng.normal(size=2), variances=[1.0, 2.0])
        return [(model, q, x) for x in rng.normal(size=(count, data_dim))]

    counted = CountedElbo()
    verify_elbo(counted, problems=problems(3, 5))
    assert counted.traces == 1
    verify_elbo(counted, problems=problems(3, 4), seed=1)  # JAX's cache, across checks
    assert counted.traces == 1
    verify_elbo(counted, problems=problems(3, 2) + problems(2, 3))  # a second shape
    assert counted.traces == 2


# ---------------------------------------------------------------------- global state
def test_the_callers_x64_setting_is_untouched() -> None:
    before = jax.config.jax_enable_x64
    seen: list[Any] = []

    def checked(model: JaxModel, q: JaxGaussian, x: Array) -> Array:
        seen.append(jnp.zeros(1).dtype)  # inside: 64-bit JAX
        return elbo(model, q, x)

    verify_elbo(checked, max_examples=3, **DIMS)
    assert seen
    assert all(d == jnp.float64 for d in seen)
    assert jax.config.jax_enable_x64 == before
    with pytest.raises(AssertionError):
        verify_elbo(kl_sign_flipped, max_examples=3, **DIMS)
    assert jax.config.jax_enable_x64 == before
    assert jnp.zeros(1).dtype == (jnp.float64 if before else jnp.float32)


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("dtype", [jnp.int32, None, "complex64", object])
def test_a_dtype_that_is_not_floating_is_refused(dtype: Any) -> None:
    with pytest.raises(InvalidTypeError, match=r"dtype must be a floating dtype.*got"):
        verify_elbo(elbo, dtype=dtype)


def test_fn_not_callable_and_jit_not_bool_are_refused() -> None:
    with pytest.raises(InvalidTypeError, match="fn must be callable"):
        verify_kl("kl")  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError, match="jit must be True or False"):
        verify_kl(kl, jit="yes")  # type: ignore[arg-type]


def test_returns_jax_grad_cannot_differentiate_are_named() -> None:
    def numpy_float(model: JaxModel, q: JaxGaussian, x: Array) -> Any:
        return np.float64(0.5)

    with pytest.raises(AssertionError, match="computed outside JAX"):
        verify_elbo_gradient(numpy_float, max_examples=2, **DIMS)

    def integer(model: JaxModel, q: JaxGaussian, x: Array) -> Array:
        return jnp.round(q.mean.sum()).astype(jnp.int32)

    with pytest.raises(AssertionError, match="floating-point JAX array"):
        verify_elbo_gradient(integer, max_examples=2, **DIMS)

    def per_dimension(model: JaxModel, q: JaxGaussian, x: Array) -> Array:
        return 2.0 * q.mean

    with pytest.raises(AssertionError, match="scalar JAX array"):
        verify_elbo_gradient(per_dimension, max_examples=2, **DIMS)


def test_numpy_inside_traced_code_is_explained() -> None:
    def through_numpy(model: JaxModel, q: JaxGaussian, x: Array) -> Any:
        return q.mean.sum() + np.sum(np.asarray(q.mean))

    with pytest.raises(AssertionError, match="jit=False"):
        verify_elbo(through_numpy, max_examples=2, **DIMS)
    # eager, numpy works in a value check, but jax.grad traces fn all the same
    with pytest.raises(AssertionError, match=r"write fn with jax\.numpy"):
        verify_elbo_gradient(through_numpy, jit=False, max_examples=2, **DIMS)
