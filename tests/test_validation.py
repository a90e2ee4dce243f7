"""Bad input: one table, every message pinned.

Each row builds something invalid and states the exception type and the exact message
(or its distinctive part): the argument's name, the requirement and what was seen.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from elbo_check import (
    ElboCheckError,
    Gaussian,
    InvalidInputError,
    InvalidTypeError,
    LinearEncoder,
    LinearGaussianModel,
    bayesian_linear_regression,
    factor_analysis,
    kl_divergence,
    ppca,
)

W = np.array([[1.0, 0.5], [0.0, 2.0], [1.0, -1.0]])  # D = 3, K = 2
B = np.array([0.1, -0.2, 0.3])
PRIOR = Gaussian.from_covariance(mean=[0.5, -0.5], cov=[[1.0, 0.2], [0.2, 2.0]])


def model(**overrides: Any) -> LinearGaussianModel:
    kwargs: dict[str, Any] = {"weights": W, "bias": B, "prior": PRIOR, "noise_cov": 0.5}
    kwargs.update(overrides)
    return LinearGaussianModel(**kwargs)


Q = Gaussian.from_diagonal(mean=[0.0, 0.0], variances=[1.0, 1.0])

CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    # --- Gaussian
    (
        "cov not symmetric",
        lambda: Gaussian.from_covariance(mean=[0, 0], cov=[[1.0, 0.5], [0.0, 1.0]]),
        InvalidInputError,
        "cov must be symmetric; largest |cov - cov.T| is 0.5; |cov[0, 1] - cov[1, 0]| = 0.5 "
        "is 0.5 times sqrt(cov[0, 0] * cov[1, 1]), more than SYMMETRY_RTOL = 1e-10",
    ),
    (
        "cov indefinite",
        lambda: Gaussian.from_covariance(mean=[0, 0], cov=[[1.0, 2.0], [2.0, 1.0]]),
        InvalidInputError,
        "cov must be symmetric positive definite; smallest eigenvalue -1",
    ),
    (
        "cov singular",
        lambda: Gaussian.from_covariance(mean=[0, 0], cov=[[1.0, 1.0], [1.0, 1.0]]),
        InvalidInputError,
        "cov must be symmetric positive definite; smallest eigenvalue 0, zero to rounding: "
        "it is numerically singular",
    ),
    (
        "cov not square",
        lambda: Gaussian.from_covariance(mean=[0, 0], cov=np.ones((2, 3))),
        InvalidInputError,
        "cov must be a square matrix or a batch of them, shape (..., K, K); got shape (2, 3)",
    ),
    (
        "cov empty",
        lambda: Gaussian.from_covariance(mean=np.zeros(0), cov=np.zeros((0, 0))),
        InvalidInputError,
        "cov must have at least one row; got shape (0, 0)",
    ),
    (
        "cov with nan",
        lambda: Gaussian.from_covariance(mean=[0, 0], cov=[[1.0, np.nan], [np.nan, 1.0]]),
        InvalidInputError,
        "cov must be finite; found 2 non-finite entries (nan at index (0, 1))",
    ),
    (
        "mean with inf",
        lambda: Gaussian.from_diagonal(mean=[0.0, np.inf], variances=[1.0, 1.0]),
        InvalidInputError,
        "mean must be finite; found 1 non-finite entry (inf at index (1,))",
    ),
    (
        "mean of the wrong length",
        lambda: Gaussian.from_diagonal(mean=[0.0, 0.0, 0.0], variances=[1.0, 1.0]),
        InvalidInputError,
        "mean must have shape (..., K) with K = 2 to match the 2x2 covariance; got shape (3,)",
    ),
    (
        "scalar mean",
        lambda: Gaussian.from_diagonal(mean=0.0, variances=[1.0]),
        InvalidInputError,
        "mean must have shape (..., K) with K = 1 to match the 1x1 covariance; got shape ()",
    ),
    (
        "zero variance",
        lambda: Gaussian.from_diagonal(mean=[0.0, 0.0], variances=[1.0, 0.0]),
        InvalidInputError,
        "variances must be positive; smallest value 0 at index 1",
    ),
    (
        "negative variance",
        lambda: Gaussian.from_diagonal(mean=[0.0, 0.0], variances=[-2.0, 1.0]),
        InvalidInputError,
        "variances must be positive; smallest value -2 at index 0",
    ),
    (
        "upper-triangular factor",
        lambda: Gaussian.from_cholesky(mean=[0, 0], scale_tril=[[1.0, 0.3], [0.0, 1.0]]),
        InvalidInputError,
        "scale_tril must be lower triangular (a transposed, upper factor is a common bug); "
        "found 0.3 above the diagonal at index (0, 1)",
    ),
    (
        "factor with a negative diagonal",
        lambda: Gaussian.from_cholesky(mean=[0, 0], scale_tril=[[1.0, 0.0], [0.3, -1.0]]),
        InvalidInputError,
        "scale_tril must have a strictly positive diagonal; smallest diagonal entry -1 at index 1",
    ),
    (
        "precision indefinite",
        lambda: Gaussian.from_precision(mean=[0, 0], precision=[[1.0, 0.0], [0.0, -1.0]]),
        InvalidInputError,
        "precision must be symmetric positive definite; its diagonal entry precision[1, 1] "
        "is -1, not positive",
    ),
    (
        "complex covariance",
        lambda: Gaussian.from_covariance(mean=[0, 0], cov=np.eye(2) * (1 + 1j)),
        InvalidTypeError,
        "cov must be a real (float or integer) array; got complex dtype complex128",
    ),
    (
        "boolean mean",
        lambda: Gaussian.from_diagonal(mean=[True, False], variances=[1.0, 1.0]),
        InvalidTypeError,
        "mean must be a real (float or integer) array; got dtype bool",
    ),
    (
        "string variances",
        lambda: Gaussian.from_diagonal(mean=[0.0], variances=["1"]),
        InvalidTypeError,
        "variances must be a real (float or integer) array; got dtype <U1",
    ),
    (
        "ragged covariance",
        lambda: Gaussian.from_covariance(mean=[0.0], cov=[[1.0], [1.0, 2.0]]),
        InvalidTypeError,
        "cov must be a real array; could not convert list",
    ),
    (
        "standard with zero dimensions",
        lambda: Gaussian.standard(0),
        InvalidInputError,
        "dim must be a positive integer; got dim=0",
    ),
    (
        "sample with a float rng",
        lambda: Q.sample(3, rng=0.5),  # type: ignore[arg-type]
        InvalidTypeError,
        "rng must be a numpy.random.Generator or a non-negative int seed; got 0.5 (float)",
    ),
    (
        "sample a negative count",
        lambda: Q.sample(-1, rng=0),
        InvalidInputError,
        "n must be a non-negative integer; got n=-1",
    ),
    (
        "log_prob at the wrong dimension",
        lambda: Q.log_prob([1.0, 2.0, 3.0]),
        InvalidInputError,
        "z must have shape (..., K) with K = 2; got shape (3,)",
    ),
    (
        "kl between different dimensions",
        lambda: kl_divergence(Q, Gaussian.standard(3)),
        InvalidInputError,
        "p and q must have the same dimension; got p.dim=2 and q.dim=3",
    ),
    (
        "kl with a non-Gaussian",
        lambda: kl_divergence(Q, np.eye(2)),  # type: ignore[arg-type]
        InvalidTypeError,
        "q must be a Gaussian; got ndarray",
    ),
    # --- the model
    (
        "weights of one dimension",
        lambda: model(weights=np.ones(3)),
        InvalidInputError,
        "weights must have 2 dimension(s); got shape (3,)",
    ),
    (
        "weights with K = 0",
        lambda: model(weights=np.ones((3, 0))),
        InvalidInputError,
        "weights must have shape (D, K) with D >= 1 and K >= 1; got shape (3, 0)",
    ),
    (
        "weights with D = 0",
        lambda: model(weights=np.ones((0, 2)), bias=np.zeros(0)),
        InvalidInputError,
        "weights must have shape (D, K) with D >= 1 and K >= 1; got shape (0, 2)",
    ),
    (
        "weights with nan",
        lambda: model(weights=np.where(W == 2.0, np.nan, W)),
        InvalidInputError,
        "weights must be finite; found 1 non-finite entry (nan at index (1, 1))",
    ),
    (
        "bias of the wrong length",
        lambda: model(bias=np.zeros(4)),
        InvalidInputError,
        "bias must have shape (D,) = (3,); got shape (4,)",
    ),
    (
        "prior of the wrong dimension",
        lambda: model(prior=Gaussian.standard(3)),
        InvalidInputError,
        "prior must be a Gaussian over K = 2 dimensions (weights has shape (3, 2)); "
        "got prior.dim = 3",
    ),
    (
        "prior given as an array",
        lambda: model(prior=np.eye(2)),
        InvalidTypeError,
        "prior must be a Gaussian; got ndarray",
    ),
    (
        "batched prior",
        lambda: model(prior=Gaussian.from_diagonal(mean=np.zeros((4, 2)), variances=[1, 1])),
        InvalidInputError,
        "prior must be a single Gaussian; got a batch of means of shape (4, 2)",
    ),
    (
        "zero isotropic noise",
        lambda: model(noise_cov=0.0),
        InvalidInputError,
        "noise_cov must be a positive variance; smallest value 0",
    ),
    (
        "negative diagonal noise",
        lambda: model(noise_cov=[1.0, -0.5, 1.0]),
        InvalidInputError,
        "noise_cov must be positive (variances); smallest value -0.5 at index 1",
    ),
    (
        "diagonal noise of the wrong length",
        lambda: model(noise_cov=[1.0, 1.0]),
        InvalidInputError,
        "noise_cov given as variances must have shape (D,) = (3,); got shape (2,)",
    ),
    (
        "full noise of the wrong shape",
        lambda: model(noise_cov=np.eye(2)),
        InvalidInputError,
        "noise_cov given as a matrix must have shape (D, D) = (3, 3); got shape (2, 2)",
    ),
    (
        "full noise not positive definite",
        lambda: model(noise_cov=np.diag([1.0, 1.0, -1.2e-3])),
        InvalidInputError,
        "noise_cov must be symmetric positive definite; its diagonal entry noise_cov[2, 2] "
        "is -0.0012, not positive",
    ),
    (
        "full noise not symmetric",
        lambda: model(noise_cov=np.eye(3) + np.triu(np.ones((3, 3)), 1) * 0.1),
        InvalidInputError,
        "noise_cov must be symmetric; largest |noise_cov - noise_cov.T| is 0.1",
    ),
    (
        "noise of three dimensions",
        lambda: model(noise_cov=np.ones((3, 3, 3))),
        InvalidInputError,
        "noise_cov must have 0 or 1 or 2 dimension(s); got shape (3, 3, 3)",
    ),
    (
        "noise as a string",
        lambda: model(noise_cov="diagonal"),
        InvalidTypeError,
        "noise_cov must be a real (float or integer) array; got dtype <U8 from str",
    ),
    (
        "noise as None",
        lambda: model(noise_cov=None),
        InvalidTypeError,
        "noise_cov must be a real array; got None",
    ),
    (
        "x of the wrong dimension",
        lambda: model().log_evidence(np.zeros(4)),
        InvalidInputError,
        "x must have shape (..., D) with D = 3; got shape (4,)",
    ),
    (
        "scalar x",
        lambda: model().posterior(1.0),
        InvalidInputError,
        "x must have shape (..., D) with D = 3; got shape ()",
    ),
    (
        "x with nan",
        lambda: model().elbo(Q, [0.0, np.nan, 1.0]),
        InvalidInputError,
        "x must be finite; found 1 non-finite entry (nan at index (1,))",
    ),
    (
        "q of the wrong dimension",
        lambda: model().elbo(Gaussian.standard(3), np.zeros(3)),
        InvalidInputError,
        "q must be a Gaussian over the latent space with K = 2 dimensions; got q.dim = 3",
    ),
    (
        "q given as a tuple",
        lambda: model().kl_to_posterior((np.zeros(2), np.eye(2)), np.zeros(3)),  # type: ignore[arg-type]
        InvalidTypeError,
        "q must be a Gaussian; got tuple",
    ),
    (
        "batches that do not broadcast",
        lambda: model().elbo(
            Gaussian.from_diagonal(mean=np.zeros((4, 2)), variances=[1, 1]), np.zeros((5, 3))
        ),
        InvalidInputError,
        "batch shapes (5,) and (4,) do not broadcast",
    ),
    (
        "z of the wrong dimension",
        lambda: model().log_joint(np.zeros(3), np.zeros(5)),
        InvalidInputError,
        "z must have shape (..., K) with K = 2; got shape (5,)",
    ),
    # --- encoder and families
    (
        "encoder matrix of the wrong shape",
        lambda: LinearEncoder(matrix=np.ones((3, 3)), offset=np.zeros(2), scale_tril=np.eye(2)),
        InvalidInputError,
        "matrix must have shape (K, D) with K = 2 to match the covariance and D >= 1; "
        "got shape (3, 3)",
    ),
    (
        "encoder offset of the wrong length",
        lambda: LinearEncoder(matrix=np.ones((2, 3)), offset=np.zeros(3), scale_tril=np.eye(2)),
        InvalidInputError,
        "offset must have shape (K,) = (2,); got shape (3,)",
    ),
    (
        "encoder for another model",
        lambda: model().dataset_elbo(
            LinearEncoder(matrix=np.ones((2, 4)), offset=np.zeros(2), scale_tril=np.eye(2)),
            np.zeros((1, 3)),
        ),
        InvalidInputError,
        "encoder must map D = 3 to K = 2 dimensions; got D = 4, K = 2",
    ),
    (
        "ppca with a negative variance",
        lambda: ppca(weights=W, mean=B, noise_variance=-1.0),
        InvalidInputError,
        "noise_variance must be a positive variance; smallest value -1",
    ),
    (
        "factor analysis with variances of the wrong length",
        lambda: factor_analysis(loadings=W, mean=B, noise_variances=[1.0, 1.0]),
        InvalidInputError,
        "noise_variances must have shape (D,) = (3,); got shape (2,)",
    ),
    (
        "regression with a prior of the wrong dimension",
        lambda: bayesian_linear_regression(
            design=np.ones((3, 2)), prior_mean=[0.0], prior_cov=np.eye(2), noise_variance=1.0
        ),
        InvalidInputError,
        "prior_mean must have shape (M,) with M the design's columns = (2,); got shape (1,)",
    ),
    (
        "regression with a singular prior covariance",
        lambda: bayesian_linear_regression(
            design=np.ones((3, 2)), prior_mean=[0, 0], prior_cov=np.ones((2, 2)), noise_variance=1
        ),
        InvalidInputError,
        "prior_cov must be symmetric positive definite; smallest eigenvalue",
    ),
    (
        "regression with an empty design",
        lambda: bayesian_linear_regression(
            design=np.ones((0, 2)), prior_mean=[0, 0], prior_cov=np.eye(2), noise_variance=1.0
        ),
        InvalidInputError,
        "design must have at least one row and one column; got shape (0, 2)",
    ),
    (
        "regression with a zero noise variance",
        lambda: bayesian_linear_regression(
            design=np.ones((3, 2)), prior_mean=[0, 0], prior_cov=np.eye(2), noise_variance=0.0
        ),
        InvalidInputError,
        "noise_variance must be a positive variance; smallest value 0",
    ),
]


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [pytest.param(build, error, message, id=label) for label, build, error, message in CASES],
)
def test_bad_input_raises_a_clear_error(
    build: Callable[[], object], error: type[Exception], message: str
) -> None:
    """Each bad input raises the stated type whose message starts with the pinned text."""
    with pytest.raises(error) as caught:
        build()
    assert isinstance(caught.value, ElboCheckError)
    assert str(caught.value).startswith(message), str(caught.value)


def test_errors_are_builtin_subclasses() -> None:
    """Callers that know nothing of elbo_check can catch ValueError and TypeError."""
    assert issubclass(InvalidInputError, ValueError)
    assert issubclass(InvalidTypeError, TypeError)


def test_linalg_error_is_chained_not_raw() -> None:
    """The LinAlgError from a failed Cholesky is kept as the cause, never raised bare."""
    with pytest.raises(InvalidInputError) as caught:
        model(noise_cov=[[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert isinstance(caught.value.__cause__, np.linalg.LinAlgError)


def test_tiny_asymmetry_from_rounding_is_accepted() -> None:
    """A covariance asymmetric only at the level of float64 rounding is symmetrised."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 4))
    cov = a @ np.diag([1.0, 2.0, 3.0, 4.0]) @ a.T + np.eye(4)
    cov[0, 1] *= 1 + 1e-15
    g = Gaussian.from_covariance(mean=np.zeros(4), cov=cov)
    assert np.allclose(g.cov, cov, rtol=1e-13, atol=0)


def test_integer_input_is_converted_to_float64() -> None:
    """Integer arrays are accepted and stored as float64."""
    g = Gaussian.from_covariance(mean=[1, 2], cov=[[2, 1], [1, 2]])
    assert g.mean.dtype == np.float64
    assert g.scale_tril.dtype == np.float64


@pytest.mark.parametrize("attribute", ["mean", "scale_tril", "cov"])
def test_arrays_are_read_only(attribute: str) -> None:
    """Stored arrays cannot be mutated behind the factorisation's back."""
    array = getattr(PRIOR, attribute)
    with pytest.raises(ValueError, match="read-only"):
        array[..., 0] = 1.0


def test_model_copies_its_input() -> None:
    """Changing the caller's array afterwards does not change the model."""
    weights = W.copy()
    m = model(weights=weights)
    before = m.log_evidence(np.zeros(3))
    weights[:] = 0.0
    assert m.log_evidence(np.zeros(3)) == before
    assert re.search("noise_kind='isotropic'", repr(m))


# ---------------------------------------------------------------- matrix checks
RANK_TWO = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])


@pytest.mark.parametrize("batched", [False, True])
def test_numerically_singular_covariance_is_rejected(batched: bool) -> None:
    """A A^T of rank 2 factors on rounding alone; it is rejected with its condition number.

    The estimate of cond(H), H the unit-diagonal scaling, is about 8e16 (3.4e16 exactly
    computed by numpy from the rounded factor), far above 1 / (3 eps) = 1.5e15.
    """
    cov = RANK_TWO @ RANK_TWO.T
    label = "cov"
    if batched:
        cov, label = np.stack([np.eye(3), cov]), "cov[1]"
    with pytest.raises(InvalidInputError) as caught:
        Gaussian.from_covariance(mean=np.zeros(3), cov=cov)
    message = str(caught.value)
    pattern = (
        rf"{re.escape(label)} must be symmetric positive definite; it is numerically "
        r"singular: condition number of its unit-diagonal scaling about (\S+), more than "
        r"the 1\.5e\+15 float64 can resolve for K = 3$"
    )
    found = re.match(pattern, message)
    assert found, message
    assert float(found.group(1)) > 1e16


def test_singular_precision_and_noise_are_rejected() -> None:
    """The same test guards the precision and full-noise routes."""
    singular = RANK_TWO @ RANK_TWO.T
    with pytest.raises(InvalidInputError, match=r"^precision must be .* numerically singular"):
        Gaussian.from_precision(mean=np.zeros(3), precision=singular)
    with pytest.raises(InvalidInputError, match=r"^noise_cov must be .* numerically singular"):
        model(noise_cov=singular)


@pytest.mark.parametrize(
    ("diagonal", "log_det"),
    [
        ([1.0, 1e-17], math.log(1e-17)),
        ([1e-160, 1e160], math.log(1e-160) + math.log(1e160)),
        ([1e-300, 1.0, 1e300], math.log(1e-300) + math.log(1e300)),
    ],
)
def test_badly_scaled_but_well_determined_matrices_are_accepted(
    diagonal: list[float], log_det: float
) -> None:
    """cond(A) is huge but the unit-diagonal scaling is I: every digit is determined."""
    builds: tuple[Callable[[], Gaussian], ...] = (
        lambda: Gaussian.from_covariance(mean=np.zeros(len(diagonal)), cov=np.diag(diagonal)),
        lambda: Gaussian.from_precision(
            mean=np.zeros(len(diagonal)), precision=np.diag(1.0 / np.array(diagonal))
        ),
        lambda: Gaussian.from_covariance(
            mean=np.zeros(len(diagonal)), cov=np.stack([np.diag(diagonal)] * 2)
        ),
    )
    for build in builds:
        g = build()
        assert np.allclose(g.log_det_cov, log_det, rtol=1e-15, atol=1e-13)


@pytest.mark.parametrize("k", [2, 3, 6, 10])
def test_ill_conditioned_but_resolvable_matrices_are_accepted(k: int) -> None:
    """cond(A) = 1e13 (the largest the test suites use) stays accepted up to K = 10."""
    from elbo_check._random import random_spd

    rng = np.random.default_rng(k)
    covs = []
    for _ in range(20):
        cov = random_spd(rng, k, condition_number=1e13, scale=float(rng.uniform(0.1, 10)))
        Gaussian.from_covariance(mean=np.zeros(k), cov=cov)
        covs.append(cov)
        model_cov = random_spd(rng, 3, condition_number=1e13, scale=1.0)
        model(noise_cov=model_cov)
    batch = Gaussian.from_covariance(mean=np.zeros(k), cov=np.stack(covs))
    assert batch.batch_shape == (20,)


def test_asymmetry_is_judged_entry_by_entry() -> None:
    """A large variance elsewhere does not hide an asymmetry of order one in a small block."""
    with pytest.raises(InvalidInputError) as caught:
        Gaussian.from_covariance(mean=[0, 0], cov=[[1e10, 0.5], [0.0, 1.0]])
    assert str(caught.value) == (
        "cov must be symmetric; largest |cov - cov.T| is 0.5; |cov[0, 1] - cov[1, 0]| = 0.5 "
        "is 5e-06 times sqrt(cov[0, 0] * cov[1, 1]), more than SYMMETRY_RTOL = 1e-10"
    )
    with pytest.raises(InvalidInputError) as caught:  # the gap overflows; the message not
        Gaussian.from_covariance(mean=[0, 0], cov=[[1e-300, 1e308], [-1e308, 1e-300]])
    assert str(caught.value) == (
        "cov must be symmetric; largest |cov - cov.T| is 1e+308 * 2; |cov[0, 1] - cov[1, 0]| "
        "= 1e+308 * 2 is more than 1.8e+308 times sqrt(cov[0, 0] * cov[1, 1]), more than "
        "SYMMETRY_RTOL = 1e-10"
    )
    cov = np.diag([1e10, 1.0, 1.0])
    cov[2, 1], cov[1, 2] = 0.25, 0.25 + 1e-6  # hidden by a tolerance of 1e-10 * 1e10
    with pytest.raises(
        InvalidInputError,
        match=r"^cov\[1\] must be symmetric; .*\|cov\[1\]\[1, 2\] - cov\[1\]\[2, 1\]\| = 1e-06",
    ):
        Gaussian.from_covariance(mean=np.zeros(3), cov=np.stack([np.eye(3), cov]))
    # tiny asymmetry at the level of each entry's own scale is accepted (and averaged)
    cov = np.array([[1e-20, 3e-21], [3e-21 * (1 + 1e-14), 1e-20]])
    g = Gaussian.from_covariance(mean=[0, 0], cov=cov)
    assert g.cov[0, 1] == g.cov[1, 0]


def test_precision_messages_name_the_callers_indices() -> None:
    """from_precision factors a reversed matrix; its messages still use the caller's indices."""
    with pytest.raises(InvalidInputError) as caught:
        Gaussian.from_precision(mean=[0, 0, 0], precision=np.diag([1.0, 2.0, 0.0]))
    assert str(caught.value).startswith(
        "precision must be symmetric positive definite; its diagonal entry precision[2, 2] is 0"
    )
    precision = np.eye(3)
    precision[0, 1] = 0.5
    with pytest.raises(InvalidInputError) as caught:
        Gaussian.from_precision(mean=[0, 0, 0], precision=precision)
    assert "|precision[0, 1] - precision[1, 0]| = 0.5" in str(caught.value)


@pytest.mark.parametrize("batched", [False, True])
def test_a_zero_or_negative_diagonal_entry_is_named(batched: bool) -> None:
    """A non-positive diagonal entry rules out positive definiteness; its index is named."""
    cov = np.diag([1.0, 1.0, 0.0])
    label, build_cov = "cov", cov
    if batched:
        label, build_cov = "cov[1]", np.stack([np.eye(3), cov])
    with pytest.raises(InvalidInputError) as caught:
        Gaussian.from_covariance(mean=np.zeros(3), cov=build_cov)
    assert str(caught.value) == (
        f"{label} must be symmetric positive definite; its diagonal entry {label}[2, 2] "
        "is 0, not positive"
    )


def test_huge_entries_do_not_overflow_the_symmetrisation() -> None:
    """0.5 * (A + A.T) overflows for 1.5e308; the covariance is still accepted exactly."""
    g = Gaussian.from_covariance(mean=[0.0], cov=[[1.5e308]])
    assert g.log_det_cov == pytest.approx(math.log(1.5e308), rel=1e-15)
    cov = np.array([[1.5e308, 1e308], [1e308, 1.5e308]])
    g = Gaussian.from_covariance(mean=[0.0, 0.0], cov=cov)
    expected = math.log(1.25) + 2 * math.log(1e308)  # det = (1.5^2 - 1) 1e616
    assert g.log_det_cov == pytest.approx(expected, rel=1e-14)
    batch = Gaussian.from_covariance(mean=[0.0, 0.0], cov=np.stack([cov, np.eye(2)]))
    assert batch.log_det_cov[0] == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("batched", [False, True])
def test_an_eigenvalue_message_is_finite_for_finite_input(batched: bool) -> None:
    """The smallest eigenvalue of this matrix is -2.4e308: shown without overflowing."""
    cov = np.full((3, 3), -1.7e308)
    np.fill_diagonal(cov, 1e308)
    if batched:
        cov = np.stack([np.eye(3), cov])
    with pytest.raises(InvalidInputError) as caught:
        Gaussian.from_covariance(mean=np.zeros(3), cov=cov)
    message = str(caught.value)
    assert "must be symmetric positive definite; smallest eigenvalue" in message
    assert "inf" not in message, message
    assert "nan" not in message, message
    assert message.endswith("smallest eigenvalue -1.41 * 1.7e+308"), message


# ---------------------------------------------------------------- masked arrays
PPCA = ppca(weights=[[1.0], [0.5], [0.2]], mean=[0.0, 0.0, 0.0], noise_variance=1.0)


@pytest.mark.parametrize(
    "call",
    [
        PPCA.log_evidence,  # the hot path: as_event_array(..., hot=True)
        PPCA.posterior,
        lambda x: PPCA.elbo(Gaussian.standard(1), x),
    ],
    ids=["log_evidence", "posterior", "elbo"],
)
def test_a_masked_entry_is_rejected_not_used(call: Callable[[Any], object]) -> None:
    """The masked 999 used to be read as data; now the mask is reported."""
    x = np.ma.masked_array([1.0, 999.0, 2.0], mask=[False, True, False])
    with pytest.raises(InvalidInputError) as caught:
        call(x)
    assert str(caught.value) == (
        "x must have no masked entries (elbo_check has no notion of missing values); "
        "1 of 3 entries is masked: fill them with x.filled(value) or drop the rows that "
        "hold them"
    )


def test_masked_entries_are_counted_and_an_unmasked_array_passes() -> None:
    """Several masked entries are counted; a masked array with none is its data."""
    x = np.ma.masked_array(np.ones((4, 3)), mask=np.eye(4, 3, dtype=bool))
    with pytest.raises(InvalidInputError, match="; 3 of 12 entries are masked"):
        PPCA.log_evidence(x)
    with pytest.raises(InvalidInputError, match=r"^mean must have no masked entries"):
        Gaussian.from_diagonal(mean=np.ma.masked_less([0.0, -1.0], 0), variances=[1.0, 1.0])
    clean = np.ma.masked_array([1.0, 999.0, 2.0], mask=False)
    assert PPCA.log_evidence(clean) == PPCA.log_evidence(np.array([1.0, 999.0, 2.0]))


# ---------------------------------------------------------------- seeds
@pytest.mark.parametrize(
    ("rng", "error", "message"),
    [
        (-1, InvalidInputError, "got -1"),
        (np.int64(-5), InvalidInputError, "got -5"),
        (True, InvalidTypeError, "got True (bool)"),
        (np.bool_(False), InvalidTypeError, "got np.False_ (bool)"),
        (1.0, InvalidTypeError, "got 1.0 (float)"),
        ("0", InvalidTypeError, "got '0' (str)"),
    ],
)
def test_rng_must_be_a_generator_or_a_non_negative_seed(
    rng: object, error: type[Exception], message: str
) -> None:
    """Gaussian.sample and model.sample used to hand -1 to numpy (a bare ValueError)."""
    prefix = "rng must be a numpy.random.Generator or a non-negative int seed; "
    samplers: tuple[Callable[[int, Any], object], ...] = (Q.sample, model().sample)
    for sample in samplers:
        with pytest.raises(error) as caught:
            sample(3, rng)
        assert str(caught.value) == prefix + message


def test_seed_zero_and_numpy_integers_are_accepted() -> None:
    """0 is a seed; numpy integers are seeds; the same seed gives the same draws."""
    seed: Any = np.uint8(0)
    np.testing.assert_array_equal(Q.sample(2, 0), Q.sample(2, seed))


@pytest.fixture
def clean_config(monkeypatch: pytest.MonkeyPatch) -> Any:
    """No configured defaults (the pytest plugin sets some) and no environment values."""
    from elbo_check import _config

    monkeypatch.setattr(_config, "_settings", {"seed": None, "profile": None})
    monkeypatch.delenv(_config.SEED_ENV, raising=False)
    monkeypatch.delenv(_config.PROFILE_ENV, raising=False)
    return _config


@pytest.mark.parametrize("text", ["abc", "-1", "1.5", " -0x1 "])
def test_a_bad_seed_in_the_environment_is_named(
    text: str, clean_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ELBO_CHECK_SEED=abc used to give int()'s bare ValueError."""
    monkeypatch.setenv("ELBO_CHECK_SEED", text)
    with pytest.raises(InvalidInputError) as caught:
        clean_config.default_seed()
    assert str(caught.value) == (
        f"the environment variable ELBO_CHECK_SEED must be a non-negative integer; got {text!r}"
    )


def test_environment_defaults_are_read(clean_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Good values (surrounding blanks allowed) are used; unset or blank gives the default."""
    assert (clean_config.default_seed(), clean_config.default_profile()) == (0, "dev")
    monkeypatch.setenv("ELBO_CHECK_SEED", " 17 ")
    monkeypatch.setenv("ELBO_CHECK_PROFILE", "thorough")
    assert (clean_config.default_seed(), clean_config.default_profile()) == (17, "thorough")
    monkeypatch.setenv("ELBO_CHECK_SEED", "")
    monkeypatch.setenv("ELBO_CHECK_PROFILE", " ")
    assert (clean_config.default_seed(), clean_config.default_profile()) == (0, "dev")


def test_an_unknown_profile_in_the_environment_is_named(
    clean_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ELBO_CHECK_PROFILE=fast is reported where it is read, with the valid names."""
    monkeypatch.setenv("ELBO_CHECK_PROFILE", "fast")
    with pytest.raises(InvalidInputError) as caught:
        clean_config.default_profile()
    assert str(caught.value) == (
        "the environment variable ELBO_CHECK_PROFILE must be one of 'dev', 'ci', 'thorough'; "
        "got 'fast'"
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"seed": -1}, InvalidInputError, "seed must be a non-negative integer; got -1"),
        ({"seed": 1.0}, InvalidTypeError, "seed must be a non-negative integer or None"),
        ({"seed": True}, InvalidTypeError, "seed must be a non-negative integer or None"),
        ({"profile": "fast"}, InvalidInputError, "profile must be one of 'dev', 'ci'"),
    ],
)
def test_configure_rejects_bad_values_and_changes_nothing(
    kwargs: dict[str, Any], error: type[Exception], message: str, clean_config: Any
) -> None:
    """configure(seed=-1) used to be stored and fail later, far from its cause."""
    clean_config.configure(seed=3, profile="ci")
    with pytest.raises(error, match=f"^{re.escape(message)}"):
        clean_config.configure(**kwargs)
    assert (clean_config.default_seed(), clean_config.default_profile()) == (3, "ci")
    clean_config.configure(seed=np.int64(4))
    assert clean_config.default_seed() == 4


def test_profile_names_agree_with_the_profiles() -> None:
    """_config repeats the profile names so as not to import hypothesis; they agree."""
    from elbo_check._config import PROFILE_NAMES
    from elbo_check.pytest_plugin import PROFILE_CHOICES
    from elbo_check.testing import PROFILES

    assert set(PROFILE_NAMES) == set(PROFILES) == set(PROFILE_CHOICES)


# ---------------------------------------------------------------- torch tensors
class _FakeDtype:
    """Mimics ``torch.dtype``: a name and the two predicates used."""

    def __init__(self, name: str, *, floating: bool = True, complex_: bool = False) -> None:
        self.name, self.is_floating_point, self.is_complex = name, floating, complex_

    def __repr__(self) -> str:
        return f"torch.{self.name}"


FAKE_FLOAT32 = _FakeDtype("float32")


class _FakeTensor:
    """Mimics a torch tensor whose dtype numpy does not have (``.numpy()`` raises
    TypeError as torch does for bfloat16); ``.float()`` widens to float32."""

    def __init__(self, values: Any, dtype: _FakeDtype) -> None:
        self.values, self.dtype = np.asarray(values, dtype=np.float32), dtype
        self.requires_grad = True

    def detach(self) -> _FakeTensor:
        return _FakeTensor(self.values, self.dtype)

    def cpu(self) -> _FakeTensor:
        return self

    def numpy(self) -> np.ndarray:
        if self.dtype is not FAKE_FLOAT32:
            raise TypeError(f"Got unsupported ScalarType {self.dtype.name}")
        return self.values

    def float(self) -> _FakeTensor:
        if self.dtype.is_complex:
            raise AssertionError("a complex tensor must not be narrowed to its real part")
        return _FakeTensor(self.values, FAKE_FLOAT32)


def test_a_tensor_of_a_dtype_numpy_lacks_is_widened_exactly() -> None:
    """bfloat16 gave 'unsupported ScalarType'; it is widened through float32 (exact)."""
    values = [0.5, -1.25, 3.0e38, 2.0**-133]  # representable in bfloat16
    tensor: Any = _FakeTensor(values, _FakeDtype("bfloat16"))
    g = Gaussian.from_diagonal(mean=tensor, variances=[1.0] * 4)
    np.testing.assert_array_equal(g.mean, np.array(values, dtype=np.float32))
    assert g.mean.dtype == np.float64
    half: Any = _FakeTensor([0.0, 1.0, 2.0], _FakeDtype("float16"))
    assert model().log_evidence(half) == (model().log_evidence([0.0, 1.0, 2.0]))


def test_a_tensor_that_cannot_be_converted_is_a_clear_type_error() -> None:
    """A complex (or non-floating) tensor numpy cannot take is named, never narrowed."""
    for dtype in (_FakeDtype("complex32", complex_=True), _FakeDtype("qint8", floating=False)):
        mean: Any = _FakeTensor([1.0], dtype)
        with pytest.raises(InvalidTypeError) as caught:
            Gaussian.from_diagonal(mean=mean, variances=[1.0])
        assert str(caught.value) == (
            f"mean must be a real (float or integer) array; got a _FakeTensor of dtype "
            f"torch.{dtype.name} that cannot be converted to numpy: "
            f"Got unsupported ScalarType {dtype.name}"
        )


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16", "float32", "float64"])
def test_real_torch_tensors_are_converted(dtype_name: str) -> None:
    """With torch installed: every floating dtype, requires_grad included."""
    torch = pytest.importorskip("torch")
    values = [0.5, -1.25, 2.0]
    tensor = torch.tensor(values, dtype=getattr(torch, dtype_name), requires_grad=True)
    g = Gaussian.from_diagonal(mean=tensor, variances=[1.0, 1.0, 1.0])
    np.testing.assert_array_equal(g.mean, values)
