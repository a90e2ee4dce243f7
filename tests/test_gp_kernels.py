"""elbo_check.gp kernels and mean functions against their formulas, written out directly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elbo_check import InvalidInputError, InvalidTypeError
from elbo_check.gp import (
    RBF,
    ConstantMean,
    FunctionMean,
    GramKernel,
    Kernel,
    Linear,
    LinearMean,
    Matern12,
    Matern32,
    Matern52,
    MeanFunction,
    ZeroMean,
)

PROFILES = {
    RBF: lambda r: math.exp(-0.5 * r * r),
    Matern12: lambda r: math.exp(-r),
    Matern32: lambda r: (1 + math.sqrt(3) * r) * math.exp(-math.sqrt(3) * r),
    Matern52: lambda r: (1 + math.sqrt(5) * r + 5 * r * r / 3) * math.exp(-math.sqrt(5) * r),
}


def _direct(cls: type, variance: float, ell: np.ndarray, x1: np.ndarray, x2: np.ndarray):
    """k(x, x') entry by entry, with the distance as a plain loop."""
    out = np.empty((len(x1), len(x2)))
    for i, a in enumerate(x1):
        for j, b in enumerate(x2):
            r = math.sqrt(sum(((a[k] - b[k]) / ell[k]) ** 2 for k in range(len(a))))
            out[i, j] = variance * PROFILES[cls](r)
    return out


@pytest.mark.parametrize("cls", list(PROFILES))
@pytest.mark.parametrize("per_dim", [False, True])
def test_stationary_kernels_match_their_formulas(
    cls: type, per_dim: bool, rng: np.random.Generator
) -> None:
    x1, x2 = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    ell = np.array([0.5, 1.0, 2.0]) if per_dim else np.full(3, 0.7)
    kernel = cls(variance=1.7, lengthscale=ell if per_dim else 0.7)
    np.testing.assert_allclose(kernel(x1, x2), _direct(cls, 1.7, ell, x1, x2), rtol=1e-13)
    np.testing.assert_allclose(kernel.diag(x1), np.diagonal(kernel(x1)), rtol=1e-15)
    assert kernel(x1).shape == (5, 5)


def test_linear_kernel_matches_its_formula(rng: np.random.Generator) -> None:
    x1, x2 = rng.normal(size=(5, 2)), rng.normal(size=(3, 2))
    kernel = Linear(variance=[2.0, 0.5])
    direct = np.array([[2.0 * a[0] * b[0] + 0.5 * a[1] * b[1] for b in x2] for a in x1])
    np.testing.assert_allclose(kernel(x1, x2), direct, rtol=1e-14)
    np.testing.assert_allclose(kernel.diag(x1), np.diagonal(kernel(x1)), rtol=1e-14)


def test_one_dimensional_inputs_are_columns() -> None:
    x = np.array([0.0, 0.3, 1.0])
    np.testing.assert_array_equal(Matern32()(x), Matern32()(x[:, None]))
    np.testing.assert_array_equal(RBF().diag(x), np.ones(3))


@settings(max_examples=15)
@given(
    kind=st.sampled_from([RBF, Matern12, Matern32, Matern52]),
    variance=st.floats(0.1, 10.0),
    lengthscale=st.floats(0.1, 5.0),
    seed=st.integers(0, 2**16),
)
def test_gram_matrices_are_positive_semidefinite(
    kind: type, variance: float, lengthscale: float, seed: int
) -> None:
    x = np.random.default_rng(seed).uniform(-3, 3, size=(8, 2))
    gram = kind(variance=variance, lengthscale=lengthscale)(x)
    np.testing.assert_array_equal(gram, gram.T)
    assert np.linalg.eigvalsh(gram).min() >= -1e-12 * variance * len(x)


def test_user_kernel_from_function_and_gram_kernel(rng: np.random.Generator) -> None:
    x = rng.normal(size=(4, 2))
    k = Kernel.from_function(lambda a, b: RBF()(a, b), name="my_rbf")
    assert isinstance(k, GramKernel)
    np.testing.assert_array_equal(k(x), RBF()(x))
    np.testing.assert_allclose(k.diag(x), np.ones(4))
    bad = GramKernel(lambda a, b: np.zeros((2, 2)), name="bad")
    with pytest.raises(InvalidInputError, match=r"bad\(inputs1, inputs2\) must return shape"):
        bad(x)
    with pytest.raises(InvalidTypeError, match="function must be callable"):
        GramKernel(3.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: RBF(variance=0.0), "variance must be positive"),
        (lambda: Matern52(lengthscale=-1.0), "lengthscale must be positive"),
        (lambda: Matern12(lengthscale=[1.0, 0.0]), "lengthscale must be positive"),
        (lambda: Linear(variance=[]), "variance must be a positive scalar or vector"),
        (lambda: RBF(variance=[1.0, 2.0]), "variance must have 0 dimension"),
        (lambda: RBF(lengthscale=[1.0, 2.0])(np.zeros((3, 3))), "inputs1 must have shape"),
        (lambda: RBF()(np.zeros((3, 2)), np.zeros((3, 1))), "inputs2 must have shape"),
        (lambda: RBF().diag(np.zeros((2, 2, 2))), "inputs must have 1 or 2"),
        (lambda: RBF()([np.nan]), "inputs1 must be finite"),
    ],
)
def test_kernel_argument_errors_name_the_argument(build, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        build()


def test_kernel_type_errors() -> None:
    with pytest.raises(InvalidTypeError, match="variance must be a real"):
        RBF(variance="big")  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError, match="inputs1 must be a real"):
        RBF()([True, False])


def test_mean_functions(rng: np.random.Generator) -> None:
    x = rng.normal(size=(4, 2))
    np.testing.assert_array_equal(ZeroMean()(x), np.zeros(4))
    np.testing.assert_array_equal(ConstantMean(1.5)(x), np.full(4, 1.5))
    np.testing.assert_allclose(LinearMean([1.0, -2.0], bias=0.5)(x), x @ [1.0, -2.0] + 0.5)
    user = MeanFunction.from_function(lambda z: z.sum(axis=1), name="total")
    assert isinstance(user, FunctionMean)
    np.testing.assert_allclose(user(x), x.sum(axis=1))
    with pytest.raises(InvalidInputError, match=r"inputs must have shape \(N, d\) with d = 2"):
        LinearMean([1.0, 2.0])(np.zeros((3, 3)))
    with pytest.raises(InvalidInputError, match=r"bad\(inputs\) must return shape \(N,\)"):
        FunctionMean(lambda z: z, name="bad")(x)
    with pytest.raises(InvalidInputError, match="constant must be finite"):
        ConstantMean(float("nan"))
    with pytest.raises(InvalidTypeError, match="function must be callable"):
        MeanFunction.from_function(None)  # type: ignore[arg-type]


def test_kernel_parameters_are_read_only() -> None:
    kernel = RBF(lengthscale=[1.0, 2.0])
    with pytest.raises(ValueError, match="read-only"):
        kernel.lengthscale[0] = 5.0


def test_gp_all_is_sorted_complete_and_real() -> None:
    """The conventions tests/test_public_api.py checks for the top-level modules."""
    import importlib
    import inspect
    import re

    gp = importlib.import_module("elbo_check.gp")

    def key(name: str) -> tuple[int, str]:
        if re.fullmatch(r"[A-Z0-9_]+", name):
            return (0, name)
        return (1, name) if name[:1].isupper() else (2, name)

    names = list(gp.__all__)
    assert names == sorted(names, key=key)
    assert len(set(names)) == len(names)
    assert all(hasattr(gp, name) for name in names)
    defined = {
        attr
        for attr, value in vars(gp).items()
        if not attr.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and getattr(value, "__module__", "").startswith("elbo_check.gp")
    }
    assert defined <= set(names)
