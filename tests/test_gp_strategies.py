"""The GP strategies: valid for the oracle, bounded, validated, shrinking, near duplicates."""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.spatial
from hypothesis import Phase, find, given, settings
from hypothesis.errors import InvalidArgument

from elbo_check.gp import RBF, GPRegression, Linear, SparseGP, ZeroMean
from elbo_check.strategies import (
    gp_inputs,
    gp_kernels,
    gp_problems,
    gp_regressions,
    sparse_gps,
)

FEW = settings(max_examples=25, deadline=None, database=None)
FIND = settings(max_examples=500, database=None, deadline=None)
REACH = settings(FIND, phases=[Phase.generate])


def _relative_gap(a: float, b: float) -> float:
    return 1e-7 * max(1.0, abs(a), abs(b))


@FEW
@given(gp_problems(max_size=12, max_inducing=5, input_dim=2))
def test_drawn_problems_are_valid_for_the_oracle_2d(problem: tuple[SparseGP, np.ndarray]) -> None:
    _check_problem(problem)


@FEW
@given(gp_problems(max_size=15, max_inducing=6))
def test_drawn_problems_are_valid_for_the_oracle(problem: tuple[SparseGP, np.ndarray]) -> None:
    _check_problem(problem)


def _check_problem(problem: tuple[SparseGP, np.ndarray]) -> None:
    """log ML, collapsed bound and SVGP ELBO(q*) finite; lower <= log ML <= upper."""
    sgp, y = problem
    assert y.shape == (sgp.num_data,)
    assert np.all(np.isfinite(y))
    lml = sgp.log_marginal_likelihood(y)
    lower = sgp.collapsed_bound(y)
    upper = sgp.upper_bound(y)
    elbo = sgp.svgp_elbo(sgp.optimal_inducing_distribution(y), y)
    assert all(np.isfinite(v) for v in (lml, lower, upper, elbo))
    assert lower <= lml + _relative_gap(lower, lml)
    assert lml <= upper + _relative_gap(lml, upper)
    assert abs(elbo - lower) <= 1e-5 * max(1.0, abs(lower))


@FEW
@given(gp_regressions(max_size=15, min_noise_variance=1e-10, max_noise_variance=1e-8))
def test_tiny_noise_regressions_are_valid(gp: GPRegression) -> None:
    """The smallest relative noise still factorises: the log ML is finite."""
    assert np.isfinite(gp.log_marginal_likelihood(gp.mean(gp.inputs)))
    scale = max(np.max(np.atleast_1d(gp.kernel.variance)), np.max(gp.kernel.diag(gp.inputs)))
    assert 1e-10 * scale * (1 - 1e-12) <= gp.noise_variance <= 1e-8 * scale * (1 + 1e-12)


@FEW
@given(
    gp_kernels(
        input_dim=3, min_lengthscale=0.5, max_lengthscale=2.0, min_variance=2.0, max_variance=3.0
    )
)
def test_kernel_parameters_within_bounds(kernel: object) -> None:
    variance = np.atleast_1d(kernel.variance)  # type: ignore[attr-defined]
    assert np.all((variance >= 2.0 * (1 - 1e-12)) & (variance <= 3.0 * (1 + 1e-12)))
    if not isinstance(kernel, Linear):
        ell = np.atleast_1d(kernel.lengthscale)  # type: ignore[attr-defined]
        assert ell.shape == (3,)
        assert np.all((ell >= 0.5 * (1 - 1e-12)) & (ell <= 2.0 * (1 + 1e-12)))


@FEW
@given(gp_inputs(min_size=3, max_size=7, input_dim=2))
def test_inputs_within_bounds(x: np.ndarray) -> None:
    assert x.dtype == np.float64
    assert x.shape[1] == 2
    assert 3 <= x.shape[0] <= 7
    assert np.all(np.abs(x) <= 5.0)


@FEW
@given(sparse_gps(min_size=2, max_size=6, min_inducing=2, max_inducing=3, input_dim=2))
def test_sparse_sizes_within_bounds(sgp: SparseGP) -> None:
    assert 2 <= sgp.num_data <= 6
    assert 2 <= sgp.num_inducing <= 3
    assert sgp.inducing_inputs.shape[1] == 2
    assert sgp.jitter > 0


def _min_distance(x: np.ndarray) -> float:
    return float(np.min(scipy.spatial.distance.pdist(x))) if len(x) > 1 else np.inf


def test_near_and_exact_duplicates_occur() -> None:
    near = find(gp_inputs(), lambda x: 1e-9 < _min_distance(x) < 1e-7, settings=REACH)
    assert 1e-9 < _min_distance(near) < 1e-7
    exact = find(gp_inputs(input_dim=2), lambda x: _min_distance(x) == 0.0, settings=REACH)
    assert _min_distance(exact) == 0.0


def test_inducing_placements_occur() -> None:
    """Inducing inputs equal to some input, and within 1e-2 of one but not equal."""

    def among(sgp: SparseGP) -> bool:
        d = scipy.spatial.distance.cdist(sgp.inducing_inputs, sgp.inputs)
        return bool(np.all(d.min(axis=1) == 0.0)) and sgp.num_data > 3

    def near(sgp: SparseGP) -> bool:
        d = scipy.spatial.distance.cdist(sgp.inducing_inputs, sgp.inputs).min(axis=1)
        return bool(np.all((d > 0) & (d <= 1.01e-2)))

    find(sparse_gps(), among, settings=REACH)
    find(sparse_gps(), near, settings=REACH)


def test_shrinks_to_documented_minimal_examples() -> None:
    kernel = find(gp_kernels(), lambda k: True, settings=FIND)
    assert repr(kernel) == "RBF(variance=1.0, lengthscale=1.0)"
    x = find(gp_inputs(), lambda x: len(x) >= 3, settings=FIND)
    np.testing.assert_array_equal(x.ravel(), [-5.0, 0.0, 5.0])
    gp = find(gp_regressions(), lambda g: len(g.inputs) >= 2, settings=FIND)
    assert isinstance(gp.kernel, RBF)
    assert isinstance(gp.mean, ZeroMean)
    assert gp.noise_variance == 1.0
    assert gp.jitter == 1e-10
    np.testing.assert_array_equal(gp.inputs.ravel(), [-5.0, 5.0])
    sgp = find(sparse_gps(), lambda s: s.num_inducing >= 3, settings=FIND)
    np.testing.assert_array_equal(sgp.inducing_inputs.ravel(), [-5.0, 0.0, 5.0])
    _, y = find(gp_problems(), lambda p: True, settings=FIND)
    np.testing.assert_array_equal(y, [0.0])


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: gp_kernels(kinds=()), "kinds=()"),
        (lambda: gp_kernels(kinds=("periodic",)), "kinds=('periodic',)"),
        (lambda: gp_kernels(input_dim=0), "input_dim=0"),
        (lambda: gp_kernels(min_lengthscale=0.0), "min_lengthscale=0.0"),
        (lambda: gp_kernels(max_lengthscale=float("inf")), "max_lengthscale=inf"),
        (lambda: gp_kernels(min_lengthscale=3.0, max_lengthscale=2.0), "min_lengthscale=3.0"),
        (lambda: gp_kernels(min_variance=-1.0), "min_variance=-1.0"),
        (lambda: gp_kernels(min_variance=5.0, max_variance=1.0), "min_variance=5.0"),
        (lambda: gp_inputs(min_size=0), "min_size=0"),
        (lambda: gp_inputs(min_size=5, max_size=4), "min_size=5"),
        (lambda: gp_inputs(input_dim=1.5), "input_dim=1.5"),
        (lambda: gp_inputs(near_duplicates=1), "near_duplicates=1"),
        (lambda: gp_regressions(min_noise_variance=0.0), "min_noise_variance=0.0"),
        (lambda: gp_regressions(max_noise_variance=1e-7), "min_noise_variance=1e-06"),
        (lambda: gp_regressions(kernels=RBF()), "kernels=RBF("),
        (lambda: gp_regressions(means=None), "means=None"),
        (lambda: gp_regressions(max_size=0), "max_size=0"),
        (lambda: sparse_gps(min_inducing=0), "min_inducing=0"),
        (lambda: sparse_gps(min_inducing=4, max_inducing=3), "min_inducing=4"),
        (lambda: sparse_gps(max_noise_variance=float("nan")), "max_noise_variance=nan"),
        (lambda: gp_problems(max_abs_deviation=-1.0), "max_abs_deviation=-1.0"),
        (lambda: gp_problems(input_dim=0), "input_dim=0"),
    ],
)
def test_bad_bounds_raise_invalid_argument_naming_the_argument(call: object, name: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(name)):
        call()  # type: ignore[operator]


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        gp_problems(max_sise=3)
