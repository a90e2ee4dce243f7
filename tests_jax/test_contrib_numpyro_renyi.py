"""elbo_check.contrib.numpyro's Rényi checks: NumPyro's RenyiELBO and its gradient.

NumPyro's RenyiELBO passes at several alphas and particle counts, with autoguides and a
hand-written guide; planted bugs (the -log k dropped, the ELBO where the IWAE bound
belongs, log q's parameters detached) are caught and named; bad options, and the
low-rank guide for gradients, are refused with errors that say what was expected. Run
where NumPyro and JAX are installed: ``python -m pytest tests_jax``. Every check runs on
one problem (D=3, K=2: the first of the verifier's statistical problems), so each
(loss, guide, kind) compiles once; compilation is most of the file's time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

numpyro = pytest.importorskip("numpyro")
jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.distributions import constraints  # noqa: E402
from numpyro.infer import RenyiELBO, Trace_ELBO  # noqa: E402

from elbo_check import InvalidInputError, InvalidTypeError  # noqa: E402
from elbo_check.contrib import numpyro as ec_numpyro  # noqa: E402
from elbo_check.testing import FullCholesky  # noqa: E402

STATISTICAL = {"n_problems": 1, "calls": 80}


# ---------------------------------------------------------------------- guides and bugs
def mvn_guide(x: Any) -> None:
    loc = numpyro.param("loc", jnp.zeros(2))
    scale_tril = numpyro.param("scale_tril", jnp.eye(2), constraint=constraints.lower_cholesky)
    numpyro.sample("z", dist.MultivariateNormal(loc, scale_tril=scale_tril))


class ParametersDetached(dist.MultivariateNormal):  # type: ignore[misc]
    """log q(z) with q's parameters behind stop_gradient (z itself is not): the
    sticking-the-landing gradient, which drops the score term."""

    def log_prob(self, value: Any) -> Any:
        fixed = dist.MultivariateNormal(
            jax.lax.stop_gradient(self.loc), scale_tril=jax.lax.stop_gradient(self.scale_tril)
        )
        return fixed.log_prob(value)


def detached_guide(x: Any) -> None:
    loc = numpyro.param("loc", jnp.zeros(2))
    scale_tril = numpyro.param("scale_tril", jnp.eye(2), constraint=constraints.lower_cholesky)
    numpyro.sample("z", ParametersDetached(loc, scale_tril=scale_tril))


class WithoutLogK(RenyiELBO):  # type: ignore[misc]
    """Drops the -log(num_particles) of the log-mean-exp: log-sum-exp instead."""

    def loss(self, *args: Any, **kwargs: Any) -> Any:
        value = super().loss(*args, **kwargs)
        return value - jnp.log(self.num_particles) / (1.0 - self.alpha)


# ---------------------------------------------------------------------- correct losses pass
@pytest.mark.parametrize(
    ("alpha", "k", "guide"),
    [
        (0.0, 5, "AutoMultivariateNormal"),  # IWAE
        (0.5, 2, "AutoNormal"),
        (2.0, 5, "AutoDiagonalNormal"),
    ],
)
def test_renyi_elbo_estimates_pass(alpha: float, k: int, guide: str) -> None:
    loss = RenyiELBO(alpha=alpha, num_particles=k)
    report = ec_numpyro.verify_renyi_estimator(loss, guide=guide, **STATISTICAL)
    assert report.check == f"verify_renyi_estimator(alpha={alpha:g}, k={k})"
    assert (report.details["alpha"], report.details["k"]) == (alpha, k)
    assert report.details["posterior_checked"] == (guide == "AutoMultivariateNormal")
    assert report.details["compilations"] <= 1  # one shape


@pytest.mark.parametrize(("alpha", "k", "guide"), [(0.0, 5, "AutoMultivariateNormal"),
                                                   (0.5, 2, "AutoNormal")])  # fmt: skip
def test_renyi_elbo_gradients_pass(alpha: float, k: int, guide: str) -> None:
    loss = RenyiELBO(alpha=alpha, num_particles=k)
    report = ec_numpyro.verify_renyi_gradient(loss, guide=guide, **STATISTICAL)
    assert report.check == (
        f"verify_renyi_gradient(alpha={alpha:g}, k={k}, estimator='reparameterised')"
    )


def test_a_hand_written_guide_passes_in_its_own_parameters() -> None:
    loss = RenyiELBO(alpha=-1.0, num_particles=3)
    options = {"guide": mvn_guide, "parametrisation": FullCholesky(), **STATISTICAL}
    report = ec_numpyro.verify_renyi_estimator(loss, **options)
    assert report.details["posterior_checked"]
    ec_numpyro.verify_renyi_gradient(loss, **options)


# ---------------------------------------------------------------------- planted bugs
def test_a_loss_without_the_minus_log_k_is_caught_and_named() -> None:
    with pytest.raises(AssertionError, match=r"the -log n of the log-mean-exp is missing"):
        ec_numpyro.verify_renyi_estimator(
            WithoutLogK(alpha=0.5, num_particles=4), guide="AutoMultivariateNormal", **STATISTICAL
        )


def test_the_elbo_where_the_iwae_bound_belongs_is_caught_and_named() -> None:
    # Trace_ELBO(num_particles=k) averages the log weights: its expectation is the ELBO
    # (its gradient, the ELBO's, is caught likewise: tests_torch checks Pyro's)
    loss = Trace_ELBO(num_particles=4)
    with pytest.raises(AssertionError, match=r"the mean of the log weights \(the ELBO estimate\)"):
        ec_numpyro.verify_renyi_estimator(loss, guide="AutoMultivariateNormal", alpha=0,
                                          **STATISTICAL)  # fmt: skip


def test_log_q_with_its_parameters_detached_is_the_stl_gradient_caught_and_named() -> None:
    loss = RenyiELBO(alpha=0.0, num_particles=8)
    options = {"guide": detached_guide, "parametrisation": FullCholesky()}
    with pytest.raises(AssertionError, match=r"failed(.|\n)*\(STL\) gradient"):
        ec_numpyro.verify_renyi_gradient(loss, **options, n_problems=1, calls=160)
    # it is the STL estimator, exactly 0 at q = p(z|x)
    report = ec_numpyro.verify_renyi_gradient(loss, **options, estimator="stl", n_problems=1,
                                              calls=160)  # fmt: skip
    assert report.details["posterior_checked"]


# ---------------------------------------------------------------------- bad use
@pytest.mark.parametrize(
    ("loss", "options", "match"),
    [
        (RenyiELBO(alpha=0.5), {"alpha": 0}, r"alpha is the loss's alpha \(0\.5\); got alpha=0"),
        (RenyiELBO(alpha=0.5), {"k": 3}, r"k is the loss's num_particles \(2\); got k=3"),
        (RenyiELBO(alpha=0.5), {"mode": "pathwise"}, r"mode must be 'statistical'.*particles"),
        (RenyiELBO(alpha=0.5), {"mode": "exact"}, r"no exact mode"),
        (RenyiELBO(alpha=0.5), {"n_samples": 2}, r"the number of samples is k"),
        (Trace_ELBO(), {}, r"Trace_ELBO has no alpha.*pass alpha="),
        (RenyiELBO(alpha=0.5), {"alpha": np.inf}, r"alpha must be a finite real number"),
    ],
)
def test_bad_options_are_refused_before_the_loss_runs(
    loss: Any, options: dict[str, Any], match: str
) -> None:
    for verify in (ec_numpyro.verify_renyi_estimator, ec_numpyro.verify_renyi_gradient):
        with pytest.raises(InvalidInputError, match=match):
            verify(loss, guide="AutoNormal", **options)


def test_bad_losses_guides_dtypes_and_estimators_are_refused() -> None:
    loss = RenyiELBO(alpha=0.5)
    with pytest.raises(InvalidTypeError, match=r"loss must be a NumPyro ELBO"):
        ec_numpyro.verify_renyi_estimator(object(), guide="AutoNormal")
    with pytest.raises(InvalidInputError, match=r"needs parametrisation="):
        ec_numpyro.verify_renyi_estimator(loss, guide=mvn_guide)
    with pytest.raises(InvalidInputError, match=r"q_kinds must be kinds guide 'AutoNormal'"):
        ec_numpyro.verify_renyi_estimator(loss, guide="AutoNormal", q_kinds=["full"])
    with pytest.raises(InvalidTypeError, match=r"dtype must be 'float64' or 'float32'"):
        ec_numpyro.verify_renyi_gradient(loss, guide="AutoNormal", dtype="float16")
    with pytest.raises(InvalidInputError, match=r"'dreg' is defined for the IWAE bound"):
        ec_numpyro.verify_renyi_gradient(loss, guide="AutoNormal", estimator="dreg")
    # z = loc + W eps_W + sqrt(D) eps_D: only the means can be tested; more is refused
    with pytest.raises(InvalidInputError, match=r"W eps_W \+ sqrt\(D\) eps_D"):
        ec_numpyro.verify_renyi_gradient(
            loss, guide="AutoLowRankMultivariateNormal", distribution_test=True
        )
