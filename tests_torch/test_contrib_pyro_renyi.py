"""elbo_check.contrib.pyro's Rényi checks: Pyro's RenyiELBO and its gradient.

Pyro's RenyiELBO passes at several alphas and particle counts, looped and vectorised,
with autoguides and a hand-written guide; planted bugs (the -log k dropped, the ELBO
where the IWAE bound belongs, log q detached) are caught and named; bad options, and
the low-rank guide for gradients, are refused with errors that say what was expected.
Run where Pyro is installed: ``python -m pytest tests_torch``. One problem and 80 to
160 calls per check keep the file well under a minute.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pyro = pytest.importorskip("pyro")

import pyro.distributions as dist  # noqa: E402

from elbo_check import InvalidInputError, InvalidTypeError  # noqa: E402
from elbo_check.contrib import pyro as ec_pyro  # noqa: E402
from elbo_check.testing import DiagonalSoftplusScale, FullCholesky  # noqa: E402

STATISTICAL = {"n_problems": 1, "calls": 80}
F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------- guides and bugs
def cholesky_guide(x: Any) -> None:
    """A full Gaussian in its mean and Cholesky factor: FullCholesky's keys."""
    loc, scale_tril = pyro.param("loc"), pyro.param("scale_tril")
    pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=scale_tril))


class DetachedLogProb(dist.Normal):
    """log q evaluated with its parameters detached: its value is right, the score
    term -grad log q of the Rényi gradient is lost."""

    def log_prob(self, value: Any) -> Any:
        return dist.Normal(self.loc.detach(), self.scale.detach()).log_prob(value)


def detached_guide(x: Any) -> None:
    loc = pyro.param("loc", torch.zeros(2, dtype=F64))
    scale = torch.nn.functional.softplus(pyro.param("raw_scale", torch.zeros(2, dtype=F64)))
    pyro.sample("z", DetachedLogProb(loc, scale).to_event(1))


class WithoutLogK(pyro.infer.RenyiELBO):  # type: ignore[misc]
    """Drops the -log(num_particles) of the log-mean-exp: log-sum-exp instead."""

    def loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        value = super().loss(model, guide, *args, **kwargs)
        return float(value) - math.log(self.num_particles) / (1.0 - self.alpha)


def renyi(alpha: float, k: int, vectorize: bool) -> Any:
    return pyro.infer.RenyiELBO(alpha=alpha, num_particles=k, vectorize_particles=vectorize)


# ---------------------------------------------------------------------- correct losses pass
@pytest.mark.parametrize(
    ("alpha", "k", "vectorize", "guide"),
    [
        (0.0, 5, True, "AutoMultivariateNormal"),  # IWAE
        (0.5, 2, False, "AutoNormal"),
        (-1.0, 5, False, "AutoMultivariateNormal"),
        (2.0, 2, True, "AutoNormal"),
    ],
)
def test_renyi_elbo_estimates_pass(alpha: float, k: int, vectorize: bool, guide: str) -> None:
    loss = renyi(alpha, k, vectorize)
    report = ec_pyro.verify_renyi_estimator(loss, guide=guide, **STATISTICAL)
    assert report.check == f"verify_renyi_estimator(alpha={alpha:g}, k={k})"
    assert (report.details["alpha"], report.details["k"]) == (alpha, k)
    # at q = p(z|x) every estimate is log p(x): checked where the guide holds that q
    assert report.details["posterior_checked"] == (guide == "AutoMultivariateNormal")
    assert loss.max_plate_nesting == math.inf  # the checks set their copy's, not yours


@pytest.mark.parametrize(
    ("alpha", "k", "vectorize", "guide"),
    [
        (0.0, 5, True, "AutoMultivariateNormal"),
        (0.5, 2, False, "AutoNormal"),
        (-1.0, 3, True, "AutoDiagonalNormal"),
    ],
)
def test_renyi_elbo_gradients_pass(alpha: float, k: int, vectorize: bool, guide: str) -> None:
    report = ec_pyro.verify_renyi_gradient(renyi(alpha, k, vectorize), guide=guide, **STATISTICAL)
    assert report.check == (
        f"verify_renyi_gradient(alpha={alpha:g}, k={k}, estimator='reparameterised')"
    )


def test_the_low_rank_guide_is_checked_for_its_estimate_and_its_gradient_means() -> None:
    loss = renyi(0.5, 3, True)
    report = ec_pyro.verify_renyi_estimator(loss, guide="AutoLowRankMultivariateNormal",
                                            **STATISTICAL)  # fmt: skip
    assert report.details["posterior_checked"]
    # z = loc + W eps_W + sqrt(D) eps_D: the right mean gradient, another distribution,
    # so only the means are tested (asking for more is refused)
    report = ec_pyro.verify_renyi_gradient(loss, guide="AutoLowRankMultivariateNormal",
                                           **STATISTICAL)  # fmt: skip
    assert report.details["ks_level"] is None
    with pytest.raises(InvalidInputError, match=r"W eps_W \+ sqrt\(D\) eps_D"):
        ec_pyro.verify_renyi_gradient(
            loss, guide="AutoLowRankMultivariateNormal", distribution_test=True
        )


def test_a_hand_written_guide_passes_in_its_own_parameters() -> None:
    loss = renyi(0.5, 3, True)
    options = {"guide": cholesky_guide, "parametrisation": FullCholesky(), "n_problems": 1}
    report = ec_pyro.verify_renyi_estimator(loss, calls=160, **options)
    assert report.details["posterior_checked"]
    ec_pyro.verify_renyi_gradient(loss, calls=80, **options)


def test_trace_elbo_with_k_particles_is_the_alpha_1_estimate() -> None:
    # the mean of k log weights: what verify_renyi_estimator(alpha=1) expects
    loss = pyro.infer.Trace_ELBO(num_particles=4, vectorize_particles=True)
    report = ec_pyro.verify_renyi_estimator(loss, guide="AutoMultivariateNormal", alpha=1,
                                            **STATISTICAL)  # fmt: skip
    assert report.check == "verify_renyi_estimator(alpha=1, k=4)"


# ---------------------------------------------------------------------- planted bugs
def test_a_loss_without_the_minus_log_k_is_caught_and_named() -> None:
    with pytest.raises(AssertionError, match=r"the -log n of the log-mean-exp is missing"):
        ec_pyro.verify_renyi_estimator(
            WithoutLogK(alpha=0.5, num_particles=4, vectorize_particles=True),
            guide="AutoMultivariateNormal",
            **STATISTICAL,
        )


def test_the_elbo_where_the_iwae_bound_belongs_is_caught_and_named() -> None:
    # Trace_ELBO(num_particles=k) averages the log weights: its expectation is the ELBO
    loss = pyro.infer.Trace_ELBO(num_particles=4, vectorize_particles=True)
    options = {"guide": "AutoMultivariateNormal", "alpha": 0, **STATISTICAL}
    with pytest.raises(AssertionError, match=r"the mean of the log weights \(the ELBO estimate\)"):
        ec_pyro.verify_renyi_estimator(loss, **options)
    with pytest.raises(AssertionError, match=r"the gradient of the mean log weight \(the ELBO's\)"):
        ec_pyro.verify_renyi_gradient(loss, **options)


def test_a_detached_log_q_is_the_stl_gradient_caught_and_named() -> None:
    loss = renyi(0.0, 8, True)
    options = {"guide": detached_guide, "parametrisation": DiagonalSoftplusScale()}
    ec_pyro.verify_renyi_estimator(loss, **options, **STATISTICAL)  # its value is right
    # its gradient is sum_j w_j grad_z log w_j dz_j: sticking the landing, biased for k > 1
    with pytest.raises(AssertionError, match=r"failed(.|\n)*\(STL\) gradient"):
        ec_pyro.verify_renyi_gradient(loss, **options, n_problems=1, calls=160)
    ec_pyro.verify_renyi_gradient(loss, **options, estimator="stl", n_problems=1, calls=160)


# ---------------------------------------------------------------------- bad use
@pytest.mark.parametrize(
    ("loss", "options", "match"),
    [
        (renyi(0.5, 2, False), {"alpha": 0}, r"alpha is the loss's alpha \(0\.5\); got alpha=0"),
        (renyi(0.5, 2, False), {"k": 3}, r"k is the loss's num_particles \(2\); got k=3"),
        (renyi(0.5, 2, False), {"mode": "pathwise"}, r"mode must be 'statistical'.*particles"),
        (renyi(0.5, 2, False), {"mode": "exact"}, r"no exact mode"),
        (renyi(0.5, 2, False), {"n_samples": 2}, r"the number of samples is k"),
        (pyro.infer.Trace_ELBO(), {}, r"Trace_ELBO has no alpha.*pass alpha="),
        (renyi(0.5, 2, False), {"q_kinds": ["full"]}, r"q_kinds must be among"),
        (renyi(0.5, 2, False), {"alpha": math.nan}, r"alpha must be a finite real number"),
    ],
)
def test_bad_options_are_refused_before_the_loss_runs(
    loss: Any, options: dict[str, Any], match: str
) -> None:
    for verify in (ec_pyro.verify_renyi_estimator, ec_pyro.verify_renyi_gradient):
        if verify is ec_pyro.verify_renyi_gradient and "q_kinds" in options:
            continue  # the gradient projects q onto the guide's family
        with pytest.raises(InvalidInputError, match=match):
            verify(loss, guide="AutoNormal", **options)


def test_bad_losses_guides_and_estimators_are_refused() -> None:
    with pytest.raises(InvalidTypeError, match=r"loss must be a pyro\.infer\.ELBO"):
        ec_pyro.verify_renyi_estimator(object(), guide="AutoNormal")
    with pytest.raises(InvalidInputError, match=r"needs parametrisation="):
        ec_pyro.verify_renyi_estimator(renyi(0.0, 2, False), guide=cholesky_guide)
    with pytest.raises(InvalidInputError, match=r"guide must be one of"):
        ec_pyro.verify_renyi_gradient(renyi(0.0, 2, False), guide="AutoGuess")
    with pytest.raises(InvalidInputError, match=r"'dreg' is defined for the IWAE bound"):
        ec_pyro.verify_renyi_gradient(renyi(0.5, 2, False), guide="AutoNormal", estimator="dreg")


def test_the_callers_param_store_and_torch_generator_are_untouched() -> None:
    store = pyro.get_param_store()
    store.clear()
    mine = pyro.param("mine", torch.ones(2))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    try:
        ec_pyro.verify_renyi_gradient(renyi(0.0, 2, True), guide="AutoNormal", **STATISTICAL)
        assert torch.equal(torch.get_rng_state(), state)
        assert set(store.keys()) == {"mine"}
        assert store._params["mine"] is mine.unconstrained()
    finally:
        store.clear()
