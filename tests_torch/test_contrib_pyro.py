"""elbo_check.contrib.pyro: Pyro's losses with its autoguides and a hand-written guide.

Correct losses pass in both modes; planted bugs (a guide whose scale is the variance,
log q detached, the likelihood scaled by 1/N, the loss's sign, IWAE as the ELBO) are
caught and named. Bad use is refused with errors that say what was expected. Run where
Pyro is installed: ``python -m pytest tests_torch``. Small budgets keep the file fast.
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
pyro = pytest.importorskip("pyro")

import pyro.distributions as dist  # noqa: E402
from pyro import poutine  # noqa: E402
from pyro.poutine.messenger import Messenger  # noqa: E402

from elbo_check import Gaussian, InvalidInputError, InvalidTypeError, ppca  # noqa: E402
from elbo_check.contrib import pyro as ec_pyro  # noqa: E402
from elbo_check.contrib._pyro_handlers import gaussian_parts  # noqa: E402
from elbo_check.testing import DiagonalSoftplusScale, FullCholesky  # noqa: E402

FAST = {"max_examples": 10}
STATISTICAL = {"n_problems": 1, "calls": 80}
F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------- hand-written guides
def softplus_guide(x: Any) -> None:
    """Mean field with a softplus scale: DiagonalSoftplusScale's keys."""
    loc = pyro.param("loc", torch.zeros(2, dtype=F64))
    scale = torch.nn.functional.softplus(pyro.param("raw_scale", torch.zeros(2, dtype=F64)))
    pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def cholesky_guide(x: Any) -> None:
    """A full Gaussian in its mean and Cholesky factor: FullCholesky's keys."""
    loc = pyro.param("loc", lambda: torch.zeros(3, dtype=F64))
    scale_tril = pyro.param("scale_tril", lambda: torch.eye(3, dtype=F64))
    pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=scale_tril))


def any_dimension_guide(x: Any) -> None:
    """No initial values: the guide works for any K (its values are substituted)."""
    loc, scale_tril = pyro.param("loc"), pyro.param("scale_tril")
    pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=scale_tril))


# ---------------------------------------------------------------------- planted bugs
def variance_guide(x: Any) -> None:
    """The scale set to the variance: Normal(loc, scale**2), the parametrisation claims scale."""
    loc = pyro.param("loc", torch.zeros(2, dtype=F64))
    scale = torch.nn.functional.softplus(pyro.param("raw_scale", torch.zeros(2, dtype=F64)))
    pyro.sample("z", dist.Normal(loc, scale**2).to_event(1))


class DetachedLogProb(dist.Normal):
    """log q evaluated with everything detached: its value is right, its gradient 0."""

    def log_prob(self, value: Any) -> Any:
        return dist.Normal(self.loc.detach(), self.scale.detach()).log_prob(value.detach())


def detached_guide(x: Any) -> None:
    loc = pyro.param("loc", torch.zeros(2, dtype=F64))
    scale = torch.nn.functional.softplus(pyro.param("raw_scale", torch.zeros(2, dtype=F64)))
    pyro.sample("z", DetachedLogProb(loc, scale).to_event(1))


class ScaleObserved(Messenger):
    """Scales the log-likelihood of observed sites only."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def _pyro_sample(self, msg: Any) -> None:
        if msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.factor


class LikelihoodOverN(pyro.infer.Trace_ELBO):  # type: ignore[misc]
    """The likelihood divided by a dataset size N = 10 (the KL is not)."""

    def _get_trace(self, model: Any, guide: Any, args: Any, kwargs: Any) -> Any:
        return super()._get_trace(ScaleObserved(0.1)(model), guide, args, kwargs)


class PlusElbo(pyro.infer.Trace_ELBO):  # type: ignore[misc]
    """Returns +ELBO (and its gradient) where the loss -ELBO belongs."""

    def loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        return -float(super().loss(model, guide, *args, **kwargs))

    def _differentiable_loss_particle(self, model_trace: Any, guide_trace: Any) -> Any:
        loss, surrogate = super()._differentiable_loss_particle(model_trace, guide_trace)
        return -loss, -surrogate


# ---------------------------------------------------------------------- import, building
def test_elbo_check_does_not_import_pyro_and_without_pyro_says_how_to_install_it() -> None:
    code = (
        "import sys, elbo_check, elbo_check.testing\n"
        "print('pyro' in sys.modules)\n"
        "sys.modules['pyro'] = None  # as if not installed\n"
        "try:\n    import elbo_check.contrib.pyro\nexcept ImportError as e:\n    print(e)"
    )
    root = Path(__file__).resolve().parents[1]  # this tree's elbo_check, not an installed one
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root
    )
    imported, message = out.stdout.split("\n", 1)
    assert imported == "False"
    assert "pip install pyro-ppl" in message


MODEL = ppca(weights=[[1.0, 0.5, -0.3], [0.2, -1.0, 0.4]], mean=[0.5, -1.0], noise_variance=0.4)
DIAGONAL_Q = Gaussian.from_diagonal(mean=[0.1, -0.2, 0.3], variances=[0.3, 0.6, 1.2])
FULL_Q = Gaussian.from_cholesky(
    mean=[0.1, -0.2, 0.3], scale_tril=[[0.5, 0.0, 0.0], [0.3, 0.8, 0.0], [-0.2, 0.1, 1.1]]
)


def guide_gaussian(guide_fn: Any, x: Any) -> tuple[Any, Any]:
    """Mean and covariance of the guide's one Gaussian site."""
    trace = poutine.trace(guide_fn).get_trace(x)
    for site in trace.nodes.values():
        parts = gaussian_parts(site["fn"]) if site["type"] == "sample" else None
        if parts is not None:
            mean, factor = (p.detach().numpy() for p in parts)
            return mean, factor @ factor.T
    raise AssertionError("no Gaussian site")


@pytest.mark.parametrize(
    ("guide", "q"),
    [
        ("AutoNormal", DIAGONAL_Q),
        ("AutoDiagonalNormal", DIAGONAL_Q),
        ("AutoMultivariateNormal", FULL_Q),
        ("AutoLowRankMultivariateNormal", FULL_Q),
    ],
)
def test_each_autoguide_is_set_to_q_exactly(guide: str, q: Gaussian) -> None:
    _, guide_fn = ec_pyro.model_and_guide(MODEL, q, guide=guide)
    x = torch.tensor([0.3, -0.4], dtype=F64)
    mean, cov = guide_gaussian(guide_fn, x)
    np.testing.assert_allclose(mean, q.mean, rtol=1e-12)
    np.testing.assert_allclose(cov, q.cov, rtol=1e-10, atol=1e-12)
    assert pyro.get_param_store().keys() == set()  # the guide's params are its own


def test_the_model_function_is_the_model() -> None:
    model_fn, guide_fn = ec_pyro.model_and_guide(
        MODEL, FULL_Q, guide=cholesky_guide, parametrisation=FullCholesky()
    )
    x = np.array([[0.3, -0.4], [1.0, 2.0]])
    trace = poutine.trace(model_fn).get_trace(torch.tensor(x))  # a batch, one shared z
    z = trace.nodes["z"]["value"].numpy()
    joint = sum(MODEL.log_likelihood(row, z) for row in x) + MODEL.prior.log_prob(z)
    assert float(trace.log_prob_sum()) == pytest.approx(float(joint), rel=1e-12)
    np.testing.assert_allclose(guide_gaussian(guide_fn, x[0])[1], FULL_Q.cov, rtol=1e-12)


# ---------------------------------------------------------------------- correct losses pass
def test_trace_elbo_with_autoguides() -> None:
    elbo = pyro.infer.Trace_ELBO()
    ec_pyro.verify_elbo_estimator(elbo, guide="AutoNormal", **STATISTICAL)
    ec_pyro.verify_elbo_gradient(elbo, guide="AutoMultivariateNormal", **STATISTICAL)
    # pathwise: one loss call per row of eps, whatever num_particles (they are all equal)
    particles = pyro.infer.Trace_ELBO(num_particles=3)
    ec_pyro.verify_elbo_gradient(particles, guide="AutoNormal", mode="pathwise", **FAST)
    ec_pyro.verify_elbo_estimator(elbo, guide=cholesky_guide, parametrisation=FullCholesky(),
                                  mode="pathwise", **FAST)  # fmt: skip


def test_trace_mean_field_elbo_uses_the_analytic_kl_with_a_normal_guide() -> None:
    elbo = pyro.infer.TraceMeanField_ELBO()
    par = DiagonalSoftplusScale()
    report = ec_pyro.verify_elbo_gradient(
        elbo, guide=softplus_guide, parametrisation=par, mode="pathwise", **FAST
    )
    assert report.details["form"] == "analytic_kl"
    report = ec_pyro.verify_elbo_estimator(elbo, guide=softplus_guide, parametrisation=par,
                                           **STATISTICAL)  # fmt: skip
    assert report.details["form"] == "analytic_kl"
    # an autoguide's site "z" is a Delta: Pyro's "KL" is -log p(z), the joint form
    report = ec_pyro.verify_elbo_estimator(elbo, guide="AutoDiagonalNormal", mode="pathwise",
                                           **FAST)  # fmt: skip
    assert "log p(x, z_i) - log q(z_i)" in report.tolerance  # the joint form's terms


def test_trace_graph_elbo_with_the_low_rank_guide_and_a_full_guide() -> None:
    elbo = pyro.infer.TraceGraph_ELBO()
    ec_pyro.verify_elbo_estimator(elbo, guide="AutoLowRankMultivariateNormal", **STATISTICAL)
    report = ec_pyro.verify_elbo_gradient(
        elbo, guide="AutoLowRankMultivariateNormal", rank=1, mode="pathwise", **FAST
    )
    assert "ScaledLowRank(rank=1" in report.check
    ec_pyro.verify_elbo_gradient(elbo, guide=any_dimension_guide, parametrisation=FullCholesky(),
                                 **STATISTICAL)  # fmt: skip


# torch 2.13 deprecates torch.jit.trace, which Pyro's Jit* losses compile with
@pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning")
def test_jit_trace_elbo() -> None:
    # JitTrace_ELBO.loss is Trace_ELBO's (not compiled); loss_and_grads is compiled
    ec_pyro.verify_elbo_estimator(pyro.infer.JitTrace_ELBO(), guide="AutoNormal", **STATISTICAL)
    # the noise is a traced input (a constant baked into the trace would fail for n > 1)
    ec_pyro.verify_elbo_gradient(
        pyro.infer.JitTrace_ELBO(), guide="AutoMultivariateNormal", mode="pathwise", max_examples=3
    )


# ---------------------------------------------------------------------- planted bugs
def test_a_scale_set_to_the_variance_is_caught_and_named() -> None:
    with pytest.raises(AssertionError, match=r"covariance as the scale"):
        ec_pyro.verify_elbo_estimator(
            pyro.infer.Trace_ELBO(),
            guide=variance_guide,
            parametrisation=DiagonalSoftplusScale(),
            n_problems=2,
            calls=80,
            q_kinds=("diagonal",),  # an isotropic q near scale 1 hides it
        )


def test_a_detached_log_q_has_the_right_value_and_a_named_wrong_gradient() -> None:
    options = {"guide": detached_guide, "parametrisation": DiagonalSoftplusScale()}
    ec_pyro.verify_elbo_estimator(pyro.infer.Trace_ELBO(), mode="pathwise", **options, **FAST)
    with pytest.raises(AssertionError, match=r"gradient of -log q\(z\).*is missing"):
        ec_pyro.verify_elbo_gradient(pyro.infer.Trace_ELBO(), mode="pathwise", **options, **FAST)


def test_the_likelihood_scaled_by_one_over_n_is_caught_and_named() -> None:
    with pytest.raises(AssertionError, match=r"reconstruction .* is scaled by 0\.1"):
        ec_pyro.verify_elbo_estimator(LikelihoodOverN(), guide="AutoNormal", **STATISTICAL)


def test_the_loss_sign_is_caught_and_named() -> None:
    with pytest.raises(AssertionError, match="wrong sign"):
        ec_pyro.verify_elbo_gradient(PlusElbo(), guide="AutoMultivariateNormal", mode="pathwise",
                                     **FAST)  # fmt: skip
    with pytest.raises(AssertionError, match=r"the loss -ELBO is returned instead of the ELBO"):
        ec_pyro.verify_elbo_estimator(PlusElbo(), guide="AutoNormal", **STATISTICAL)
    with pytest.raises(AssertionError, match=r"the loss -ELBO is returned instead of the ELBO"):
        ec_pyro.verify_elbo_estimator(PlusElbo(), guide="AutoNormal", mode="pathwise", **FAST)


def test_iwae_as_the_elbo_is_caught_and_named() -> None:
    iwae = pyro.infer.RenyiELBO(alpha=0, num_particles=4, vectorize_particles=True)
    with pytest.raises(AssertionError, match=r"n_samples = 4 samples \(the IWAE bound\)"):
        ec_pyro.verify_elbo_estimator(iwae, guide="AutoNormal", **STATISTICAL)


# ---------------------------------------------------------------------- global state
def test_the_callers_param_store_and_torch_generator_are_untouched() -> None:
    store = pyro.get_param_store()
    store.clear()
    mine = pyro.param("mine", torch.ones(2))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    try:
        ec_pyro.verify_elbo_estimator(pyro.infer.Trace_ELBO(), guide="AutoNormal", **STATISTICAL)
        ec_pyro.verify_elbo_gradient(
            pyro.infer.Trace_ELBO(), guide="AutoLowRankMultivariateNormal", mode="pathwise",
            max_examples=3,
        )  # fmt: skip
        assert torch.equal(torch.get_rng_state(), state)
        assert set(store.keys()) == {"mine"}
        assert store._params["mine"] is mine.unconstrained()  # still set: scope() drops it
    finally:
        store.clear()


def test_the_same_seed_gives_the_same_report() -> None:
    def run() -> Any:
        return ec_pyro.verify_elbo_estimator(
            pyro.infer.Trace_ELBO(), guide="AutoNormal", seed=7, **STATISTICAL
        )

    assert run().worst_error == run().worst_error


# ---------------------------------------------------------------------- bad use
def test_a_loss_that_is_not_an_elbo_is_refused() -> None:
    with pytest.raises(InvalidTypeError, match=r"loss must be a pyro.infer.ELBO.*got function"):
        ec_pyro.verify_elbo_estimator(lambda *a: 0.0, guide="AutoNormal")


def test_an_unknown_guide_name_lists_the_four() -> None:
    with pytest.raises(InvalidInputError, match=r"'AutoNormal', 'AutoDiagonalNormal', .*got"):
        ec_pyro.verify_elbo_gradient(pyro.infer.Trace_ELBO(), guide="AutoLaplace")


def test_a_guide_callable_without_parametrisation_is_refused() -> None:
    with pytest.raises(InvalidInputError, match=r"needs parametrisation="):
        ec_pyro.verify_elbo_estimator(pyro.infer.Trace_ELBO(), guide=softplus_guide)


def test_a_parametrisation_that_does_not_fit_the_guide_is_refused() -> None:
    elbo = pyro.infer.Trace_ELBO()
    with pytest.raises(InvalidInputError, match=r"keys .* must be the guide's pyro.param names"):
        ec_pyro.verify_elbo_estimator(elbo, guide=softplus_guide, parametrisation=FullCholesky())

    def bad_shape(x: Any) -> None:  # a (K,) "scale_tril": FullCholesky's is (K, K)
        loc = pyro.param("loc", torch.zeros(2, dtype=F64))
        pyro.sample("z", dist.Normal(loc, pyro.param("scale_tril", torch.ones(2))).to_event(1))

    with pytest.raises(InvalidInputError, match=r"'scale_tril'.* shape \(2,\).*\(2, 2\)"):
        ec_pyro.verify_elbo_gradient(elbo, guide=bad_shape, parametrisation=FullCholesky())


@pytest.mark.parametrize("mode", ["exact", "stochastic", 3])
def test_a_mode_without_meaning_for_a_sampled_loss_is_refused(mode: Any) -> None:
    with pytest.raises(InvalidInputError, match=r"'statistical' or 'pathwise'.*no exact mode"):
        ec_pyro.verify_elbo_gradient(pyro.infer.Trace_ELBO(), guide="AutoNormal", mode=mode)


def no_z_guide(x: Any) -> None:
    loc, scale_tril = pyro.param("loc"), pyro.param("scale_tril")
    pyro.sample("w", dist.MultivariateNormal(loc, scale_tril=scale_tril))  # not "z"


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"guide": "AutoNormal", "rank": 2}, InvalidInputError, r"rank= is an option of"),
        ({"guide": "AutoLowRankMultivariateNormal", "rank": 0}, InvalidInputError, r"positive"),
        ({"guide": "AutoNormal", "parametrisation": FullCholesky()}, InvalidInputError,
         r"AutoNormal holds its q as DiagonalSoftplusScale\(\); leave parametrisation out"),
        ({"guide": softplus_guide, "parametrisation": "loc"}, InvalidTypeError,
         r"parametrisation must be None or an elbo_check.testing.Parametrisation"),
        ({"guide": 3}, InvalidTypeError, r"guide must be one of .* or a callable"),
        ({"guide": no_z_guide, "parametrisation": FullCholesky()}, InvalidInputError,
         r"must sample the model's latent site 'z'.*\['w'\]"),
        ({"guide": "AutoLowRankMultivariateNormal", "rank": 1, "q_kinds": ("full",)},
         InvalidInputError, r"does not hold every q of kinds \['full'\]"),
        ({"guide": "AutoNormal", "n_samples": 5}, InvalidInputError,
         r"n_samples is the loss's num_particles \(1\)"),
    ],
)  # fmt: skip
def test_guides_and_options_that_do_not_fit_are_refused(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        ec_pyro.verify_elbo_estimator(pyro.infer.Trace_ELBO(), **options)


def test_q_kinds_the_guide_cannot_hold_are_refused() -> None:
    with pytest.raises(InvalidInputError, match=r"q_kinds must be among"):
        ec_pyro.verify_elbo_estimator(
            pyro.infer.Trace_ELBO(), guide="AutoNormal", q_kinds=("full",)
        )


# ---------------------------------------------------------------------- KL, evidence
def test_pyros_kl_and_a_log_evidence_from_the_model_function() -> None:
    ec_pyro.verify_kl(torch.distributions.kl_divergence, **FAST)

    def log_evidence(model_fn: Any, x: Any) -> Any:
        """Reads the model's prior and (linear) likelihood off traces at z = 0 and e_k."""

        def site(z: Any, name: str) -> Any:
            conditioned = poutine.condition(model_fn, data={"z": z})
            return poutine.trace(conditioned).get_trace(x).nodes[name]["fn"]

        with torch.random.fork_rng():  # the prior's site samples z
            prior = poutine.trace(model_fn).get_trace(x).nodes["z"]["fn"]
        k = prior.loc.shape[-1]
        base = site(torch.zeros(k, dtype=F64), "x")
        weights = torch.stack(
            [site(torch.eye(k, dtype=F64)[i], "x").loc - base.loc for i in range(k)], -1
        )
        cov = weights @ prior.covariance_matrix @ weights.mT + base.covariance_matrix
        mean = weights @ prior.loc + base.loc
        return dist.MultivariateNormal(mean, cov).log_prob(x)

    ec_pyro.verify_log_evidence(log_evidence, **FAST)
