"""elbo_check.contrib.numpyro: NumPyro losses and guides, checked in one line each.

NumPyro's own losses with its autoguides and a hand-written guide pass; planted bugs
(in a guide or in a loss subclass) are caught and named. Run where NumPyro and JAX are
installed: ``python -m pytest tests_jax``. Every check runs on problems of one shape
(D=3, K=2: the first of the verifier's statistical problems, and the dimensions given
to pathwise mode), so each (loss, guide, kind) compiles once; small budgets keep the
file under a minute.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

numpyro = pytest.importorskip("numpyro")
jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro import handlers  # noqa: E402
from numpyro.distributions import constraints  # noqa: E402
from numpyro.distributions.transforms import biject_to  # noqa: E402
from numpyro.infer import (  # noqa: E402
    RenyiELBO,
    Trace_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
)

from elbo_check import Gaussian, InvalidInputError, InvalidTypeError, ppca  # noqa: E402
from elbo_check.contrib import _numpyro_handlers as handlers_module  # noqa: E402
from elbo_check.contrib import numpyro as ec_numpyro  # noqa: E402
from elbo_check.testing import (  # noqa: E402
    DiagonalLogScale,
    FullCholesky,
    FullUnitCholeskyScale,
)

#: Pathwise problems of the shape of the first statistical problem (D=3, K=2).
DIMS = {"min_latent_dim": 2, "max_latent_dim": 2, "min_data_dim": 3, "max_data_dim": 3}
STATISTICAL = {"n_problems": 1, "calls": 200}
PATHWISE = {"mode": "pathwise", "max_examples": 15, **DIMS}


# ---------------------------------------------------------------------- the user's guides
def mvn_guide(x: Any) -> None:
    loc = numpyro.param("loc", jnp.zeros(2))
    scale_tril = numpyro.param("scale_tril", jnp.eye(2), constraint=constraints.lower_cholesky)
    numpyro.sample("z", dist.MultivariateNormal(loc, scale_tril=scale_tril))


def variance_as_scale_guide(x: Any) -> None:
    loc = numpyro.param("loc", jnp.zeros(2))
    scale = jnp.exp(numpyro.param("log_scale", jnp.zeros(2)))
    numpyro.sample("z", dist.Normal(loc, scale**2).to_event(1))  # the variance as the scale


class DetachedLogProb(dist.MultivariateNormal):  # type: ignore[misc]
    """log q(z) behind stop_gradient: the right value, no gradient through it."""

    def log_prob(self, value: Any) -> Any:
        return jax.lax.stop_gradient(super().log_prob(value))


class NotReparameterised(dist.MultivariateNormal):  # type: ignore[misc]
    """A sampler with no pathwise derivative (has_rsample is False)."""

    reparametrized_params: list[str] = []  # noqa: RUF012

    def sample(self, key: Any, sample_shape: tuple[int, ...] = ()) -> Any:
        return jax.lax.stop_gradient(super().sample(key, sample_shape))


def detached_guide(x: Any) -> None:
    loc, scale_tril = numpyro.param("loc", jnp.zeros(2)), numpyro.param("scale_tril", jnp.eye(2))
    numpyro.sample("z", DetachedLogProb(loc, scale_tril=scale_tril))


def not_reparameterised_guide(x: Any) -> None:
    loc, scale_tril = numpyro.param("loc", jnp.zeros(2)), numpyro.param("scale_tril", jnp.eye(2))
    numpyro.sample("z", NotReparameterised(loc, scale_tril=scale_tril))


# ---------------------------------------------------------------------- the user's losses
class scale_observed(handlers.scale):  # type: ignore[misc]
    """handlers.scale on the observed sites only."""

    def process_message(self, msg: dict[str, Any]) -> None:
        if msg["type"] == "sample" and msg["is_observed"]:
            super().process_message(msg)


class LikelihoodOverN(Trace_ELBO):  # type: ignore[misc]
    """The likelihood scaled by 1/N, as for a minibatch of one of N = 10 points."""

    def loss(self, rng_key: Any, params: Any, model: Any, guide: Any, *args: Any) -> Any:
        return super().loss(rng_key, params, scale_observed(model, scale=0.1), guide, *args)


class WrongSign(Trace_ELBO):  # type: ignore[misc]
    def loss(self, *args: Any, **kwargs: Any) -> Any:
        return -super().loss(*args, **kwargs)


# ---------------------------------------------------------------------- import
def test_the_core_does_not_import_jax_and_without_them_the_error_says_how_to_install() -> None:
    code = (
        "import sys, elbo_check, elbo_check.testing\n"
        "print('numpyro' in sys.modules, 'jax' in sys.modules)\n"
        "sys.modules['numpyro'] = sys.modules['jax'] = None\n"
        "try:\n    import elbo_check.contrib.numpyro\n"
        "except ImportError as err:\n    print(err)\n"
    )
    root = Path(__file__).resolve().parents[1]  # this tree's elbo_check, not an installed one
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    first, message = out.stdout.split("\n", 1)
    assert first == "False False"
    assert "pip install numpyro jax" in message


# ---------------------------------------------------------------------- model and guide
def test_model_and_guide_sets_each_guides_params_to_q() -> None:
    """The constrained values the guide's numpyro.param sites return are q's: NumPyro's
    autoguides build q from them (the pathwise checks below confirm the distribution)."""
    model = ppca(weights=np.ones((3, 2)), mean=np.zeros(3), noise_variance=0.5)
    factor = np.array([[0.7, 0.0], [0.3, 0.9]])
    mean = [0.1, -0.2]
    full = Gaussian.from_cholesky(mean=mean, scale_tril=factor)
    diagonal = Gaussian.from_diagonal(mean=mean, variances=[0.25, 0.64])
    isotropic = Gaussian.from_diagonal(mean=mean, variances=[0.36, 0.36])
    cases = [
        ("AutoNormal", diagonal, None, {"z_auto_loc": mean, "z_auto_scale": [0.5, 0.8]}),
        ("AutoDiagonalNormal", diagonal, None, {"auto_loc": mean, "auto_scale": [0.5, 0.8]}),
        ("AutoMultivariateNormal", full, None, {"auto_loc": mean, "auto_scale_tril": factor}),
        (mvn_guide, full, FullCholesky(), {"loc": mean, "scale_tril": factor}),
    ]
    with jax.enable_x64(True):
        for guide, q, par, expected in cases:
            model_fn, guide_fn = ec_numpyro.model_and_guide(
                model, q, guide=guide, parametrisation=par
            )
            assert callable(model_fn)
            for name, value in expected.items():
                np.testing.assert_allclose(guide_fn.data[name], value, atol=1e-12, err_msg=name)
        assert guide_fn.fn is mvn_guide
        # low rank: rank 1 holds an isotropic q (floor 0.36, no low-rank part); the default
        # rank (K) any q, as D (F F^T + I) D
        _, guide_fn = ec_numpyro.model_and_guide(
            model, isotropic, guide="AutoLowRankMultivariateNormal", rank=1
        )
        np.testing.assert_allclose(guide_fn.data["auto_scale"], [0.6, 0.6], atol=1e-12)
        np.testing.assert_allclose(guide_fn.data["auto_cov_factor"], 0.0, atol=1e-7)
        _, guide_fn = ec_numpyro.model_and_guide(model, full, guide="AutoLowRankMultivariateNormal")
        scale, low = guide_fn.data["auto_scale"], guide_fn.data["auto_cov_factor"]
        assert low.shape == (2, 2)
        cov = scale[:, None] * (low @ low.T + np.eye(2)) * scale
        np.testing.assert_allclose(cov, full.cov, atol=1e-12)
    with pytest.raises(InvalidInputError, match="rank= is an option of"):
        ec_numpyro.model_and_guide(model, full, guide="AutoMultivariateNormal", rank=2)


def test_the_autoguides_constraints_are_the_ones_mapped() -> None:
    """The param sites' constraints are those the maps assume (softplus scales, the
    scaled unit lower Cholesky factor); traced abstractly."""
    expected = {
        "AutoNormal": {"z_auto_scale": constraints.softplus_positive},
        "AutoDiagonalNormal": {"auto_scale": constraints.softplus_positive},
        "AutoMultivariateNormal": {"auto_scale_tril": constraints.scaled_unit_lower_cholesky},
        "AutoLowRankMultivariateNormal": {
            "auto_scale": constraints.softplus_positive,
            "auto_cov_factor": constraints.real,
        },
    }
    x, arrays = handlers_module._tiny_problem()
    for name, wanted in expected.items():
        guide = handlers_module.autoguide_spec(name).build(handlers_module.numpyro_model)
        traces: list[Any] = []

        def run(guide: Any = guide, traces: list[Any] = traces) -> Any:
            with handlers.block():
                seeded = handlers.seed(guide, rng_seed=0)
                traces.append(handlers.trace(seeded).get_trace(x, *arrays))
            return jnp.zeros(())

        with jax.enable_x64(True):
            jax.eval_shape(run)
        for site, constraint in wanted.items():
            found = traces[0][site]["kwargs"].get("constraint", constraints.real)
            assert found == constraint, (name, site)


def test_the_unit_cholesky_map_matches_numpyros_unconstrained_layout() -> None:
    """AutoMultivariateNormal's unconstrained auto_scale_tril is the strict lower
    triangle of U (row by row), then the raw scales: L = diag(softplus(raw)) U."""
    rng = np.random.default_rng(0)
    k = 4
    unit = np.tril(rng.normal(size=(k, k)), -1) + np.eye(k)
    params = {"loc": rng.normal(size=k), "raw_scale": rng.normal(size=k), "unit_scale_tril": unit}
    spec = handlers_module.autoguide_spec("AutoMultivariateNormal")
    free = spec.to_free(params)
    with jax.enable_x64(True):
        transform = biject_to(constraints.scaled_unit_lower_cholesky)
        factor = jax.jit(lambda vector: transform(vector))(free["auto_scale_tril"])
    expected = FullUnitCholeskyScale("softplus").to_gaussian(params).scale_tril
    np.testing.assert_allclose(factor, expected, rtol=1e-14)
    back = spec.from_free(free)  # the map is a reshuffle: gradients go back the same way
    for key in ("loc", "raw_scale"):
        np.testing.assert_array_equal(back[key], params[key])
    np.testing.assert_array_equal(back["unit_scale_tril"], np.tril(unit, -1))


# ---------------------------------------------------------------------- correct code passes
def test_trace_elbo_with_autoguides_passes() -> None:
    loss = Trace_ELBO()
    report = ec_numpyro.verify_elbo_estimator(loss, guide="AutoNormal", **STATISTICAL)
    assert report.details["form"] == "joint"
    ec_numpyro.verify_elbo_gradient(loss, guide="AutoMultivariateNormal", **STATISTICAL)
    ec_numpyro.verify_elbo_gradient(loss, guide="AutoDiagonalNormal", **PATHWISE)


def test_trace_graph_elbo_passes() -> None:
    loss = TraceGraph_ELBO()
    ec_numpyro.verify_elbo_estimator(loss, guide="AutoLowRankMultivariateNormal", **PATHWISE)
    # its score-function term makes even a sampler without rsample unbiased
    ec_numpyro.verify_elbo_gradient(
        loss, guide=not_reparameterised_guide, parametrisation=FullCholesky(), **STATISTICAL
    )


def test_trace_mean_field_elbo_uses_the_analytic_kl_with_a_multivariate_normal_guide() -> None:
    """Checked pathwise: the exact gradient of the analytic-KL estimate at the noise."""
    report = ec_numpyro.verify_elbo_gradient(
        TraceMeanField_ELBO(), guide=mvn_guide, parametrisation=FullCholesky(), **PATHWISE
    )
    assert report.details["form"] == "analytic_kl"


@pytest.mark.parametrize("guide", ec_numpyro.AUTOGUIDES)
def test_trace_mean_field_elbo_with_an_autoguide_is_the_joint_form(guide: str) -> None:
    """No closed-form KL from a Delta (or an independent Normal) to the MVN prior."""
    spec = handlers_module.autoguide_spec(guide)
    with jax.enable_x64(True):
        assert not handlers_module.probe(TraceMeanField_ELBO(), spec).analytic_kl


# ---------------------------------------------------------------------- planted bugs
def test_the_variance_as_the_scale_is_caught_and_named() -> None:
    with pytest.raises(AssertionError, match="covariance as the scale"):
        ec_numpyro.verify_elbo_estimator(
            Trace_ELBO(),
            guide=variance_as_scale_guide,
            parametrisation=DiagonalLogScale(),
            **STATISTICAL,
        )


def test_a_detached_log_q_is_caught_and_named() -> None:
    missing = r"the gradient of -log q\(z\), diag\(1 / L_ii\), is missing"
    with pytest.raises(AssertionError, match=missing):
        ec_numpyro.verify_elbo_gradient(
            Trace_ELBO(), guide=detached_guide, parametrisation=FullCholesky(), **PATHWISE
        )


def test_the_likelihood_scaled_by_one_over_n_is_caught_and_named() -> None:
    with pytest.raises(AssertionError, match=r"reconstruction E_q\[log p\(x \| z\)\] is scaled by"):
        ec_numpyro.verify_elbo_estimator(LikelihoodOverN(), guide="AutoNormal", **STATISTICAL)


def test_the_loss_sign_is_caught_and_named() -> None:
    with pytest.raises(AssertionError, match="wrong sign"):
        ec_numpyro.verify_elbo_gradient(WrongSign(), guide="AutoNormal", **STATISTICAL)


def test_the_iwae_bound_as_the_elbo_is_caught_and_named() -> None:
    loss = RenyiELBO(alpha=0, num_particles=4)
    with pytest.raises(AssertionError, match=r"importance-weighted bound.*the IWAE bound"):
        ec_numpyro.verify_elbo_estimator(loss, guide="AutoNormal", **STATISTICAL)


def test_a_sample_without_reparameterisation_is_caught_and_named() -> None:
    """Trace_ELBO differentiates through the sample as if reparameterised: the gradient
    left is that of -log q(z) at fixed z, 0 in expectation."""
    with pytest.raises(AssertionError, match="score-function term"):
        ec_numpyro.verify_elbo_gradient(
            Trace_ELBO(),
            guide=not_reparameterised_guide,
            parametrisation=FullCholesky(),
            **STATISTICAL,
        )


# ---------------------------------------------------------------------- seeds, compilations
def test_a_check_is_reproducible_from_its_seed() -> None:
    def run(seed: int) -> float:
        report = ec_numpyro.verify_elbo_estimator(
            Trace_ELBO(), guide="AutoNormal", seed=seed, **STATISTICAL
        )
        return report.worst_error

    first = run(3)
    assert run(3) == first
    assert run(4) != first


def test_one_compilation_per_shape_shared_by_equal_losses() -> None:
    loss = Trace_ELBO(num_particles=2)  # a configuration no other test compiles
    first = ec_numpyro.verify_elbo_estimator(loss, guide="AutoNormal", **STATISTICAL)
    assert first.details["compilations"] == 1
    assert first.details["n_samples"] == 2
    again = ec_numpyro.verify_elbo_estimator(
        Trace_ELBO(num_particles=2), guide="AutoNormal", seed=1, **STATISTICAL
    )
    assert again.details["compilations"] == 0


def test_no_global_state_changes() -> None:
    x64 = jax.config.jax_enable_x64
    numpy_state = np.random.get_state()[1].copy()  # type: ignore[index]  # noqa: NPY002
    filters = list(warnings.filters)
    ec_numpyro.verify_elbo_estimator(Trace_ELBO(), guide="AutoNormal", seed=5, **STATISTICAL)
    assert jax.config.jax_enable_x64 == x64
    legacy = np.random.get_state()[1]  # type: ignore[index]  # noqa: NPY002
    np.testing.assert_array_equal(legacy, numpy_state)
    assert list(warnings.filters) == filters
    assert numpyro.primitives._PYRO_STACK == []


def test_float32_runs_under_jaxs_32_bit_setting_and_float32_tolerances() -> None:
    report = ec_numpyro.verify_elbo_estimator(
        Trace_ELBO(), guide=mvn_guide, parametrisation=FullCholesky(), dtype="float32", **PATHWISE
    )
    assert report.details["precision"] == "float32"


# ---------------------------------------------------------------------- bad use
def test_a_loss_that_is_not_an_elbo_is_refused() -> None:
    with pytest.raises(InvalidTypeError, match=r"loss must be a NumPyro ELBO instance.*got"):
        ec_numpyro.verify_elbo_estimator(lambda *a: 0.0, guide="AutoNormal")


def test_an_unknown_guide_name_lists_the_four() -> None:
    with pytest.raises(InvalidInputError, match=r"AutoNormal, AutoDiagonalNormal, .*AutoLowRank"):
        ec_numpyro.verify_elbo_gradient(Trace_ELBO(), guide="AutoIAFNormal")


def test_a_guide_function_needs_a_parametrisation() -> None:
    with pytest.raises(InvalidInputError, match="needs parametrisation="):
        ec_numpyro.verify_elbo_gradient(Trace_ELBO(), guide=mvn_guide)


def test_parametrisation_keys_that_are_not_the_guides_params_are_named() -> None:
    with pytest.raises(InvalidInputError, match=r"not in the guide: \['log_scale'\]"):
        ec_numpyro.verify_elbo_gradient(
            Trace_ELBO(), guide=mvn_guide, parametrisation=DiagonalLogScale()
        )


def test_a_parametrisation_shape_that_is_not_the_guides_is_named() -> None:
    def vector_guide(x: Any) -> None:
        loc = numpyro.param("loc", jnp.zeros(2))
        scale_tril = numpyro.param("scale_tril", jnp.ones(2))  # a vector, not (K, K)
        numpyro.sample("z", dist.Normal(loc, scale_tril).to_event(1))

    with pytest.raises(InvalidInputError, match=r"param 'scale_tril' has shape \(2,\)"):
        ec_numpyro.verify_elbo_estimator(
            Trace_ELBO(), guide=vector_guide, parametrisation=FullCholesky()
        )


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"mode": "exact"}, "no exact mode"),
        ({"n_samples": 4}, "num_particles"),
        ({"batch_size": 4}, "batch_size"),
        ({"dtype": "float16"}, "dtype must be"),
        ({"q_kinds": ("full",)}, "q_kinds must be kinds guide 'AutoNormal' represents"),
    ],
)
def test_options_that_do_not_apply_are_refused(options: dict[str, Any], match: str) -> None:
    with pytest.raises((InvalidInputError, InvalidTypeError), match=match):
        ec_numpyro.verify_elbo_estimator(Trace_ELBO(), guide="AutoNormal", **options)


def test_model_and_guide_refuses_a_q_outside_the_guides_family() -> None:
    model = ppca(weights=np.ones((3, 2)), mean=np.zeros(3), noise_variance=0.5)
    q = Gaussian.from_covariance(mean=[0.0, 0.0], cov=[[1.0, 0.5], [0.5, 1.0]])
    with pytest.raises(InvalidInputError, match="not in the family of guide 'AutoNormal'"):
        ec_numpyro.model_and_guide(model, q, guide="AutoNormal")
