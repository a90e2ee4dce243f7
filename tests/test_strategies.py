"""The hypothesis strategies: valid by construction, bounded, validated, and shrinking."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from elbo_check import Gaussian, LinearGaussianModel
from elbo_check.strategies import (
    elbo_problems,
    gaussians,
    linear_gaussian_models,
    observations,
    rotations,
    spd_matrices,
    variational_gaussians,
)

FIND = settings(max_examples=2000, database=None, deadline=None)
#: Reachability needs one example, not a minimal one: skip the (slow) shrink phase.
REACH = settings(FIND, phases=[Phase.generate])


@given(spd_matrices(st.integers(1, 6), max_condition_number=1e6))
def test_spd_matrices_are_symmetric_positive_definite_within_the_bound(matrix: np.ndarray) -> None:
    """Every draw is exactly symmetric, Cholesky-factorable, with cond <= the bound."""
    assert np.array_equal(matrix, matrix.T)
    eigenvalues = np.linalg.eigvalsh(matrix)
    assert eigenvalues[0] > 0
    assert eigenvalues[-1] / eigenvalues[0] <= 1e6 * (1 + 1e-8)


@given(rotations(st.integers(1, 5)))
def test_rotations_are_orthogonal(rotation: np.ndarray) -> None:
    """U^T U = I to working precision and det U = +1."""
    np.testing.assert_allclose(rotation.T @ rotation, np.eye(len(rotation)), atol=1e-12)
    assert np.linalg.det(rotation) == pytest.approx(1.0)


@given(gaussians(3, batch_shape=(2,), max_abs_mean=4.0))
def test_gaussians_respect_shape_and_mean_bounds(g: Gaussian) -> None:
    """Batch and event shapes are as asked; means stay within max_abs_mean."""
    assert g.mean.shape == (2, 3)
    assert np.all(np.abs(g.mean) <= 4.0)


@given(
    linear_gaussian_models(
        min_data_dim=2,
        max_data_dim=4,
        min_latent_dim=3,
        max_latent_dim=5,
        noise_kinds=("diagonal",),
        prior_kinds=("general",),
    )
)
def test_model_bounds_and_kinds_are_respected(model: LinearGaussianModel) -> None:
    """D, K, noise kind and a non-standard prior follow the keyword bounds."""
    assert 2 <= model.data_dim <= 4
    assert 3 <= model.latent_dim <= 5
    assert model.noise_kind == "diagonal"
    assert np.isfinite(model.log_evidence(model.bias))


@given(linear_gaussian_models(extreme_scales=True, max_data_dim=8))
def test_extreme_scales_stay_well_posed(model: LinearGaussianModel) -> None:
    """Scales of 1e-12..1e12 still give finite log-evidence (logs of factors, never det)."""
    assert np.isfinite(model.log_evidence(model.marginal_mean))


@given(st.data())
def test_problems_are_consistent(data: st.DataObject) -> None:
    """variational_gaussians and observations fit the model they were drawn for."""
    model = data.draw(linear_gaussian_models())
    q = data.draw(variational_gaussians(model, batch_shape=(3,)))
    x = data.draw(observations(model, batch_shape=(3,)))
    assert q.mean.shape == (3, model.latent_dim)
    assert x.shape == (3, model.data_dim)
    assert np.all(np.isfinite(model.elbo(q, x)))


@pytest.mark.parametrize(
    ("description", "condition"),
    [
        (
            "latent dimension larger than data dimension",
            lambda p: p.model.latent_dim > p.model.data_dim,
        ),
        ("full noise covariance", lambda p: p.model.noise_kind == "full"),
        (
            "anisotropic diagonal noise",
            lambda p: (
                p.model.noise_kind == "diagonal" and np.ptp(np.asarray(p.model.noise_cov)) > 1.0
            ),
        ),
        ("non-zero prior mean", lambda p: np.max(np.abs(p.model.prior.mean)) > 1.0),
        (
            "non-diagonal prior covariance",
            lambda p: np.max(np.abs(np.tril(p.model.prior.cov, -1))) > 0.1,
        ),
        ("non-zero offset", lambda p: np.max(np.abs(p.model.bias)) > 1.0),
        ("non-diagonal q covariance", lambda p: np.max(np.abs(np.tril(p.q.cov, -1))) > 0.1),
        ("ill-conditioned q", lambda p: np.linalg.cond(p.q.cov) > 50),
        (
            "ill-conditioned noise",
            lambda p: (
                p.model.noise_kind != "isotropic"
                and np.linalg.cond(np.atleast_2d(p.model.dense_noise_cov())) > 100
            ),
        ),
    ],
)
def test_defaults_reach_the_blind_spots(description: str, condition: object) -> None:
    """Each blind spot where ELBO bugs hide is reachable with the default arguments."""
    problem = find(elbo_problems(), condition, settings=REACH)  # type: ignore[arg-type]
    assert condition(problem), description  # type: ignore[operator]


def test_shrinking_goes_to_the_simplest_model() -> None:
    """The minimal model with K > D is D = 1, K = 2, zero weights, N(0, I) prior, unit noise."""
    model = find(linear_gaussian_models(), lambda m: m.latent_dim > m.data_dim, settings=FIND)
    assert (model.data_dim, model.latent_dim) == (1, 2)
    assert model.noise_kind == "isotropic"
    assert np.all(model.weights == 0)
    assert np.all(model.bias == 0)
    assert np.all(model.prior.mean == 0)
    assert np.array_equal(model.prior.cov, np.eye(2))


def test_shrinking_an_spd_matrix_removes_the_rotation() -> None:
    """A matrix needing cond > 100 shrinks to a diagonal one (rotation angles -> 0)."""
    matrix = find(
        spd_matrices(3, max_condition_number=1e6),
        lambda s: np.linalg.cond(s) > 100,
        settings=FIND,
    )
    assert np.array_equal(matrix, np.diag(np.diagonal(matrix)))


@given(
    gaussians(
        st.integers(1, 4), batch_shape=(3,), shared_covariance=False, max_condition_number=1e4
    )
)
def test_a_covariance_per_member_when_asked(g: Gaussian) -> None:
    assert g.batch_shape == (3,)
    assert g.scale_tril.shape == (3, g.dim, g.dim)
    assert np.all(np.triu(g.scale_tril, 1) == 0)
    assert np.all(np.diagonal(g.scale_tril, axis1=-2, axis2=-1) > 0)
    assert np.all(np.linalg.cond(g.cov) <= 1e4 * (1 + 1e-9))


def test_members_shrink_to_one_isotropic_covariance_each() -> None:
    """The minimal batch with differing covariances is isotropic members of two scales."""
    g = find(
        gaussians(2, batch_shape=(2,), shared_covariance=False),
        lambda g: not np.allclose(g.cov[0], g.cov[1]),
        settings=FIND,
    )
    for cov in g.cov:
        assert np.array_equal(cov, cov[0, 0] * np.eye(2))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: spd_matrices(0), "dim=0 must be an integer >= 1"),
        (lambda: spd_matrices(2, max_condition_number=0.5), "max_condition_number=0.5 must be"),
        (
            lambda: spd_matrices(2, min_scale=2.0, max_scale=1.0),
            "min_scale=2.0 must be <= max_scale=1.0",
        ),
        (lambda: gaussians(2, cov_kinds=("banded",)), "cov_kinds=('banded',) must be a non-empty"),
        (lambda: gaussians(2, batch_shape=(-1,)), "batch_shape=(-1,) must be a tuple"),
        (
            lambda: linear_gaussian_models(min_data_dim=3, max_data_dim=2),
            "min_data_dim=3 must be <= max_data_dim=2",
        ),
        (
            lambda: linear_gaussian_models(max_latent_dim=1.5),
            "max_latent_dim=1.5 must be an integer",
        ),
        (lambda: linear_gaussian_models(noise_kinds=()), "noise_kinds=() must be a non-empty"),
        (lambda: linear_gaussian_models(prior_kinds=("flat",)), "prior_kinds=('flat',) must be"),
        (lambda: linear_gaussian_models(max_abs_bias=float("nan")), "max_abs_bias=nan must be"),
        (lambda: variational_gaussians("model"), "model='model' must be a LinearGaussianModel"),
        (lambda: observations(None), "model=None must be a LinearGaussianModel"),
        (
            lambda: gaussians(2, shared_covariance="no"),
            "shared_covariance='no' must be True or False",
        ),
        (lambda: elbo_problems(shared_covariance=1), "shared_covariance=1 must be True or False"),
        (
            lambda: linear_gaussian_models(extreme_scales="yes"),
            "extreme_scales='yes' must be True or False",
        ),
    ],
)
def test_bad_arguments_echo_name_and_value(make: object, message: str) -> None:
    """InvalidArgument is raised when the strategy is built or first drawn, naming name=value."""

    def build_and_validate() -> None:
        make().validate()  # type: ignore[operator]

    with pytest.raises(InvalidArgument, match=re.escape(message)):
        build_and_validate()


@pytest.mark.parametrize(
    "make", [rotations, spd_matrices, gaussians], ids=["rotations", "spd", "gaussians"]
)
@pytest.mark.parametrize("drawn", [0, -1, 2.0])
def test_a_drawn_dimension_is_checked_when_drawn(make: object, drawn: object) -> None:
    """A strategy of dimensions is checked draw by draw: 0 gave empty matrices, -1 a
    numpy error that did not name the argument."""
    strategy = make(st.just(drawn))  # type: ignore[operator]
    with pytest.raises(InvalidArgument, match=re.escape(f"a drawn dim={drawn!r} must be")):
        find(strategy, lambda value: True, settings=settings(database=None))
