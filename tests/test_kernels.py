"""Direct tests of the numerical kernels: ``_linalg``, ``_compensated`` and ``_noise``.

Each kernel is compared with a route that shares no code with it: ``scipy.linalg`` member
by member, dense ``numpy.linalg`` formulas, exact rational arithmetic with
:class:`fractions.Fraction` (every float64 is a rational number), or ``mpmath`` at 50
digits. Most of these behaviours are reached only indirectly by the model tests; here
each shape, flag and branch is checked on its own.
"""

from __future__ import annotations

import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
import scipy.linalg
from hypothesis import assume, given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from elbo_check._compensated import minus_products, split_halves, two_sum
from elbo_check._errors import InvalidInputError
from elbo_check._linalg import (
    SINGULAR_CONDITION,
    batched_cholesky,
    check_scale_tril,
    check_square,
    cholesky,
    condition_limit,
    gram_diag_log_term,
    logdet_from_tril,
    logdets_from_tril,
    solve_tril,
    solve_tril_rows,
    symmetric_part,
    tril_of_gram,
)
from elbo_check._noise import DenseNoise, DiagonalNoise, IsotropicNoise, NoiseCovariance

pytestmark = pytest.mark.filterwarnings(
    "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
)

#: Unit roundoff of float64.
UNIT = float(np.finfo(np.float64).eps) / 2
#: Relative tolerance of comparisons between two backward-stable solvers.
SOLVE_RTOL = 1e-10

finite_floats = st.floats(
    min_value=-1e250, max_value=1e250, allow_nan=False, allow_infinity=False, width=64
)


def _lower_factor(rng: np.random.Generator, k: int) -> np.ndarray:
    """A well-conditioned lower-triangular factor with a positive diagonal."""
    factor = np.tril(rng.standard_normal((k, k)), -1) * 0.3
    factor[np.diag_indices(k)] = rng.uniform(0.5, 2.0, k)
    return factor


def _factors(rng: np.random.Generator, batch: tuple[int, ...], k: int) -> np.ndarray:
    out = np.empty((*batch, k, k))
    for index in np.ndindex(*batch):
        out[index] = _lower_factor(rng, k)
    return out


def _spd(rng: np.random.Generator, k: int) -> np.ndarray:
    factor = _lower_factor(rng, k)
    return factor @ factor.T


def _scipy_solve(factor: np.ndarray, rhs: np.ndarray, trans: bool) -> np.ndarray:
    return scipy.linalg.solve_triangular(factor, rhs, lower=True, trans="T" if trans else "N")


# ------------------------------------------------------------------------- solve_tril
@pytest.mark.parametrize("trans", [False, True])
@pytest.mark.parametrize("rhs_shape", [(4,), (4, 3), (4, 4), (4, 1), (2, 4, 3), (2, 3, 4, 5)])
def test_solve_tril_with_one_factor_matches_scipy(
    trans: bool, rhs_shape: tuple[int, ...], rng: np.random.Generator
) -> None:
    factor = _lower_factor(rng, 4)
    rhs = rng.standard_normal(rhs_shape)
    result = solve_tril(factor, rhs, trans=trans)
    assert result.shape == rhs.shape
    if rhs.ndim <= 2:
        expected = _scipy_solve(factor, rhs, trans)
    else:
        expected = np.empty_like(rhs)
        for index in np.ndindex(*rhs.shape[:-2]):
            expected[index] = _scipy_solve(factor, rhs[index], trans)
    assert_allclose(result, expected, rtol=SOLVE_RTOL, atol=1e-12)


@pytest.mark.parametrize("trans", [False, True])
@pytest.mark.parametrize(
    ("factor_batch", "rhs_shape"),
    [
        ((3,), (4,)),  # one vector for every factor
        ((3,), (4, 2)),  # one matrix, n != K, for every factor
        ((3,), (3, 4, 5)),  # one matrix per factor
        ((3,), (3, 4, 4)),
        ((2, 3), (3, 4, 2)),  # rhs batch broadcasts against the leading factor axis
        ((2, 1), (3, 4, 2)),  # factor batch broadcasts against the rhs batch
    ],
)
def test_solve_tril_with_a_batch_of_factors_matches_scipy_member_by_member(
    trans: bool,
    factor_batch: tuple[int, ...],
    rhs_shape: tuple[int, ...],
    rng: np.random.Generator,
) -> None:
    factors = _factors(rng, factor_batch, 4)
    rhs = rng.standard_normal(rhs_shape)
    result = solve_tril(factors, rhs, trans=trans)
    columns = rhs if rhs.ndim > 1 else rhs[:, None]
    batch = np.broadcast_shapes(factor_batch, columns.shape[:-2])
    assert result.shape == (*batch, 4, columns.shape[-1])
    full_factors = np.broadcast_to(factors, (*batch, 4, 4))
    full_rhs = np.broadcast_to(columns, (*batch, *columns.shape[-2:]))
    for index in np.ndindex(*batch):
        expected = _scipy_solve(full_factors[index], full_rhs[index], trans)
        assert_allclose(result[index], expected, rtol=SOLVE_RTOL, atol=1e-12)


def test_solve_tril_inverts_the_factor_exactly_on_its_own_columns(
    rng: np.random.Generator,
) -> None:
    """``L^{-1} L`` is the identity to rounding, for a batch and both orientations."""
    factors = _factors(rng, (3,), 5)
    eye = np.broadcast_to(np.eye(5), factors.shape)
    assert_allclose(solve_tril(factors, factors), eye, atol=1e-14)
    transposed = np.swapaxes(factors, -1, -2)
    assert_allclose(solve_tril(factors, transposed, trans=True), eye, atol=1e-14)


@pytest.mark.parametrize("rows_shape", [(5, 4), (2, 3, 4), (4,)])
def test_solve_tril_rows_with_one_factor_matches_scipy(
    rows_shape: tuple[int, ...], rng: np.random.Generator
) -> None:
    factor = _lower_factor(rng, 4)
    rows = rng.standard_normal(rows_shape)
    result = solve_tril_rows(factor, rows)
    assert result.shape == rows.shape
    flat = rows.reshape(-1, 4)
    expected = _scipy_solve(factor, flat.T, trans=False).T.reshape(rows.shape)
    assert_allclose(result, expected, rtol=SOLVE_RTOL, atol=1e-12)


def test_solve_tril_rows_with_a_batch_of_factors_uses_member_i_for_row_i(
    rng: np.random.Generator,
) -> None:
    factors = _factors(rng, (3,), 4)
    rows = rng.standard_normal((3, 4))
    result = solve_tril_rows(factors, rows)
    assert result.shape == (3, 4)
    for i in range(3):
        assert_allclose(result[i], _scipy_solve(factors[i], rows[i], False), rtol=SOLVE_RTOL)


# ------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "shape", [(), (3,), (2, 3), (3, 2), (2, 3, 3), (0, 0)], ids=lambda s: str(s)
)
def test_check_square_rejects_what_is_not_one_non_empty_square_matrix(
    shape: tuple[int, ...],
) -> None:
    with pytest.raises(InvalidInputError, match=r"^cov must "):
        check_square("cov", np.ones(shape))


@pytest.mark.parametrize("shape", [(), (3,), (2, 3, 2), (2, 0, 0)], ids=lambda s: str(s))
def test_check_square_batched_rejects_non_square_batches(shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidInputError, match=r"^cov must "):
        check_square("cov", np.ones(shape), batched=True)


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (2, 3, 3), (2, 2, 1, 1)])
def test_check_square_accepts_squares_and_batches_of_them(shape: tuple[int, ...]) -> None:
    check_square("cov", np.ones(shape), batched=True)
    if len(shape) == 2:
        check_square("cov", np.ones(shape))


@pytest.mark.parametrize("shape", [(), (3,)], ids=lambda s: str(s))
@pytest.mark.parametrize("routine", [cholesky, batched_cholesky, check_scale_tril])
def test_low_dimensional_input_is_refused_by_name(shape: tuple[int, ...], routine: object) -> None:
    with pytest.raises(InvalidInputError, match=r"^precision must be a square matrix"):
        routine("precision", np.ones(shape))  # type: ignore[operator]


def test_cholesky_matches_numpy_and_symmetrises_rounded_input(rng: np.random.Generator) -> None:
    matrix = _spd(rng, 5)
    lopsided = matrix.copy()
    lopsided[0, 1] *= 1 + 1e-13  # asymmetric by far less than SYMMETRY_RTOL
    factor = cholesky("cov", lopsided)
    expected = np.linalg.cholesky(0.5 * (lopsided + lopsided.T))
    assert_allclose(factor, expected, rtol=1e-12, atol=1e-14)
    assert_array_equal(np.triu(factor, 1), 0.0)
    assert np.all(np.diag(factor) > 0)


def test_symmetric_part_averages_off_diagonal_and_keeps_the_diagonal() -> None:
    matrix = np.array([[4.0, 1.0 + 2e-12], [1.0, 9.0]])
    symmetric = symmetric_part("cov", matrix)
    assert_array_equal(np.diag(symmetric), [4.0, 9.0])
    assert symmetric[0, 1] == symmetric[1, 0] == 0.5 * matrix[0, 1] + 0.5 * matrix[1, 0]


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ([[1.0, 0.5], [0.0, 1.0]], r"cov must be symmetric; .*cov\[0, 1\] - cov\[1, 0\]"),
        ([[1.0, 0.0], [0.0, -1.0]], r"cov\[1, 1\] is -1, not positive"),
        ([[1.0, 2.0], [2.0, 1.0]], r"smallest eigenvalue -1\b"),
        ([[1.0, 1.0], [1.0, 1.0 + 1e-15]], "numerically singular"),
    ],
)
def test_cholesky_refuses_invalid_matrices_with_the_reason(
    matrix: list[list[float]], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        cholesky("cov", np.array(matrix))
    with pytest.raises(InvalidInputError, match=message):
        batched_cholesky("cov", np.array(matrix))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([[1.0, 2.0], [2.0, 1.0]], "smallest eigenvalue"),
        ([[1.0, 1.0], [1.0, 1.0 + 1e-15]], "numerically singular"),
        ([[1.0, 0.5], [0.0, 1.0]], "largest"),
        ([[1.0, 0.0], [0.0, 0.0]], "not positive"),
    ],
)
def test_batched_cholesky_names_the_first_bad_member(
    bad: list[list[float]], message: str, rng: np.random.Generator
) -> None:
    batch = np.stack([_spd(rng, 2), _spd(rng, 2), np.array(bad), _spd(rng, 2)]).reshape(2, 2, 2, 2)
    with pytest.raises(InvalidInputError, match=rf"^cov\[1, 0\] must be .*{message}"):
        batched_cholesky("cov", batch)


def test_batched_cholesky_matches_numpy_member_by_member(rng: np.random.Generator) -> None:
    batch = np.stack([_spd(rng, 4) for _ in range(6)]).reshape(2, 3, 4, 4)
    factors = batched_cholesky("cov", batch)
    for index in np.ndindex(2, 3):
        assert_allclose(factors[index], np.linalg.cholesky(batch[index]), rtol=1e-12, atol=1e-14)
    assert factors.flags.c_contiguous


def test_batched_cholesky_screens_ill_conditioned_members_exactly_like_single_ones() -> None:
    """A member near the singular limit is refused, one comfortably inside accepted."""
    k = 3
    limit = condition_limit(k)
    assert limit == SINGULAR_CONDITION / k
    good = np.diag([1.0, 1e-17, 1e160])  # unit-diagonal scaling is I: exactly determined
    eps = 1.0 / limit / 10  # condition number ~ 2 / eps, twenty times the limit
    near = np.array([[1.0, 1.0 - eps, 0.0], [1.0 - eps, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert_allclose(batched_cholesky("cov", np.stack([good, good])), np.sqrt(np.stack([good] * 2)))
    with pytest.raises(InvalidInputError, match=r"^cov\[1\] must .* numerically singular"):
        batched_cholesky("cov", np.stack([good, near]))
    with pytest.raises(InvalidInputError, match=r"^cov must .* numerically singular"):
        cholesky("cov", near)


@pytest.mark.parametrize(
    ("factor", "message"),
    [
        ([[1.0, 0.1], [0.0, 1.0]], r"lower triangular .* found 0.1 above the diagonal at index"),
        ([[1.0, 0.0], [0.3, -2.0]], r"smallest diagonal entry -2 at index 1"),
        ([[1.0, 0.0], [0.3, 0.0]], r"smallest diagonal entry 0 at index 1"),
    ],
)
def test_check_scale_tril_refuses_with_the_offending_entry(
    factor: list[list[float]], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=r"^scale_tril must .*" + message):
        check_scale_tril("scale_tril", np.array(factor))
    batch = np.stack([np.eye(2), np.eye(2), np.array(factor)])
    with pytest.raises(InvalidInputError, match=r"^scale_tril\[2\] must .*" + message):
        check_scale_tril("scale_tril", batch)


def test_check_scale_tril_accepts_valid_factors(rng: np.random.Generator) -> None:
    check_scale_tril("scale_tril", _lower_factor(rng, 3))
    check_scale_tril("scale_tril", _factors(rng, (2, 2), 3))


def test_logdets_from_tril_match_slogdet(rng: np.random.Generator) -> None:
    factors = _factors(rng, (2, 3), 4)
    gram = factors @ np.swapaxes(factors, -1, -2)
    sign, expected = np.linalg.slogdet(gram)
    assert np.all(sign == 1)
    assert_allclose(logdets_from_tril(factors), expected, rtol=1e-12)
    assert logdet_from_tril(factors[1, 2]) == pytest.approx(expected[1, 2], rel=1e-12)


@pytest.mark.parametrize("shape", [(3, 3), (3, 7), (1, 4), (4, 9)])
def test_tril_of_gram_is_the_cholesky_factor_of_the_gram_matrix(
    shape: tuple[int, int], rng: np.random.Generator
) -> None:
    for _ in range(5):  # QR's diagonal has random signs: several draws hit both
        matrix = rng.standard_normal(shape)
        factor = tril_of_gram(matrix)
        gram = matrix @ matrix.T
        assert factor.shape == (shape[0], shape[0])
        assert_array_equal(np.triu(factor, 1), 0.0)
        assert np.all(np.diag(factor) > 0)
        assert_allclose(factor, np.linalg.cholesky(gram), rtol=1e-10, atol=1e-12)


def _mp_gram_diag_log_term(a: float) -> float:
    with mpmath.workdps(50):
        value = mpmath.mpf(a) ** 2 - 1 - 2 * mpmath.log(mpmath.mpf(a))
        return float(value)


@given(
    st.one_of(
        st.floats(min_value=1e-300, max_value=1e150),
        st.floats(min_value=0.9, max_value=1.1),
        st.floats(min_value=0.4, max_value=1.6),
        st.floats(min_value=1 - 1e-6, max_value=1 + 1e-6),
    )
)
def test_gram_diag_log_term_matches_mpmath(a: float) -> None:
    expected = _mp_gram_diag_log_term(a)
    result = gram_diag_log_term(np.array([a, 2.0]))
    assert result[0] >= 0
    assert result[0] == pytest.approx(expected, rel=1e-13, abs=1e-300)
    assert result[1] == pytest.approx(3.0 - 2.0 * math.log(2.0), rel=1e-15)


def test_gram_diag_log_term_on_a_grid_through_every_branch() -> None:
    a = np.array([1e-10, 0.3, 0.55, 0.9, 0.97, 1.0 - 1e-9, 1.0, 1.0 + 1e-9, 1.03, 1.2, 1.6, 40.0])
    result = gram_diag_log_term(a)
    for value, got in zip(a, result, strict=True):
        assert got == pytest.approx(_mp_gram_diag_log_term(float(value)), rel=1e-13, abs=1e-300)


# ------------------------------------------------------------------------- compensated
def _fractions(array: np.ndarray) -> list[Fraction]:
    return [Fraction(float(v)) for v in np.ravel(array)]


@given(finite_floats, finite_floats)
def test_two_sum_is_error_free(a: float, b: float) -> None:
    total, error = two_sum(np.array([a]), np.array([b]))
    assert total[0] == a + b
    assert Fraction(float(total[0])) + Fraction(float(error[0])) == Fraction(a) + Fraction(b)
    assert abs(float(error[0])) <= UNIT * abs(float(total[0]))


@given(st.floats(min_value=-1e300, max_value=1e300, allow_nan=False, width=64))
def test_split_halves_is_exact_and_its_halves_multiply_exactly(a: float) -> None:
    assume(a == 0 or 1e-140 < abs(a) < 1e140)  # products of halves: no under/overflow
    high, low = split_halves(np.array([a, 1.0 / 3.0]))
    for x, hi, lo in zip([a, 1.0 / 3.0], high, low, strict=True):
        hi, lo = float(hi), float(lo)
        assert Fraction(hi) + Fraction(lo) == Fraction(x)
        for u in (hi, lo):
            for v in (hi, lo):  # 26-bit halves: every product is a float64, exactly
                assert Fraction(u * v) == Fraction(u) * Fraction(v)
        assert abs(lo) <= 2.0**-26 * abs(x) * (1 + 2**-20)


def test_split_halves_splits_into_two_non_trivial_halves() -> None:
    high, low = split_halves(np.array([1.0 / 3.0, math.pi]))
    assert np.all(low != 0)  # a full 53-bit significand needs both halves
    assert np.all(np.abs(low) < 2.0**-25 * np.abs(high))


@given(st.integers(min_value=0, max_value=2**32 - 1), st.integers(1, 5), st.integers(1, 4))
def test_minus_products_is_as_accurate_as_doubled_precision(seed: int, k: int, n: int) -> None:
    """``total + error`` against the exact rational ``(total0 + error0) - vectors @ M.T``.

    The inputs cancel: ``total0`` is the rounded product itself, so the working-precision
    result is pure rounding noise while the doubled one keeps its digits.
    """
    rng = np.random.default_rng(seed)
    d = 3
    matrix = rng.standard_normal((d, k)) * 10.0 ** rng.integers(-3, 4, (d, k))
    vectors = rng.standard_normal((n, k)) * 10.0 ** rng.integers(-3, 4, (n, k))
    total0 = vectors @ matrix.T
    error0 = rng.standard_normal((n, d)) * 1e-17 * np.abs(total0)
    total, error = minus_products(
        total0.copy(), error0.copy(), matrix, split_halves(matrix), vectors
    )
    assert total.shape == error.shape == (n, d)
    for r in range(n):
        for c in range(d):
            exact = Fraction(float(total0[r, c])) + Fraction(float(error0[r, c]))
            magnitude = abs(exact)
            for j in range(k):
                term = Fraction(float(vectors[r, j])) * Fraction(float(matrix[c, j]))
                exact -= term
                magnitude += abs(term)
            got = Fraction(float(total[r, c])) + Fraction(float(error[r, c]))
            bound = Fraction(4 * (k + 2) ** 2) * Fraction(UNIT) ** 2 * magnitude
            assert abs(got - exact) <= bound + Fraction(UNIT) * abs(exact)
            # the leading part alone is the working-precision result
            assert (
                abs(Fraction(float(total[r, c])) - exact)
                <= 2 * (k + 2) * Fraction(UNIT) * magnitude
            )


def test_minus_products_broadcasts_a_scalar_error(rng: np.random.Generator) -> None:
    matrix = rng.standard_normal((2, 3))
    vectors = rng.standard_normal((4, 3))
    total, error = minus_products(np.zeros(2), np.zeros(()), matrix, split_halves(matrix), vectors)
    assert total.shape == error.shape == (4, 2)
    assert_allclose(total + error, -(vectors @ matrix.T), rtol=1e-14, atol=1e-15)


# ------------------------------------------------------------------------------ noise
def _noises(rng: np.random.Generator, d: int) -> list[tuple[NoiseCovariance, np.ndarray]]:
    variances = rng.uniform(0.3, 3.0, d)
    dense = _spd(rng, d) + 0.2 * np.eye(d)
    return [
        (NoiseCovariance.from_value(1.7, d), 1.7 * np.eye(d)),
        (NoiseCovariance.from_value(variances, d), np.diag(variances)),
        (NoiseCovariance.from_value(dense, d), dense),
    ]


@pytest.mark.parametrize("which", [0, 1, 2], ids=["isotropic", "diagonal", "full"])
def test_noise_operations_match_dense_formulas(which: int, rng: np.random.Generator) -> None:
    d = 4
    noise, psi = _noises(rng, d)[which]
    assert type(noise) is (IsotropicNoise, DiagonalNoise, DenseNoise)[which]
    assert noise.dim == d
    factor = np.linalg.cholesky(psi)
    inverse_factor = np.linalg.inv(factor)
    assert_allclose(noise.dense(), psi, rtol=1e-13)
    assert_allclose(noise.variances, np.diag(psi), rtol=1e-13)
    tril = noise.scale_tril()
    assert_allclose(tril, factor, rtol=1e-12, atol=1e-14)
    assert noise.logdet == pytest.approx(np.linalg.slogdet(psi)[1], rel=1e-12)

    rows = rng.standard_normal((2, 3, d))
    assert_allclose(noise.whiten(rows), rows @ inverse_factor.T, rtol=1e-11, atol=1e-13)
    assert_allclose(noise.solve(rows), rows @ np.linalg.inv(psi), rtol=1e-11, atol=1e-13)
    flat = rows.reshape(-1, d)
    centre = rng.standard_normal(d)
    buffer = np.empty_like(flat)
    assert_allclose(
        noise.whiten_offsets(flat, centre, buffer),
        (flat - centre) @ inverse_factor.T,
        rtol=1e-11,
        atol=1e-13,
    )
    columns = rng.standard_normal((d, 3))
    assert_allclose(noise.whiten_columns(columns), inverse_factor @ columns, rtol=1e-11, atol=1e-13)
    assert_allclose(
        noise.whiten_columns_transposed(columns), inverse_factor.T @ columns, rtol=1e-11, atol=1e-13
    )


@pytest.mark.parametrize("which", [0, 1, 2], ids=["isotropic", "diagonal", "full"])
def test_noise_gradient_matches_the_dense_matrix_formula(
    which: int, rng: np.random.Generator
) -> None:
    """``G = (A - n Psi^{-1}) / 2``, reduced to the representation's own parameters."""
    d, k, count = 4, 2, 5
    noise, psi = _noises(rng, d)[which]
    precision = np.linalg.inv(psi)
    residuals = rng.standard_normal((count, d))
    weights = rng.standard_normal((d, k))
    spread_cov = _spd(rng, k)
    solved = residuals @ precision
    spread = precision @ weights @ spread_cov
    solved_weights = precision @ weights
    outer = precision @ (residuals.T @ residuals + weights @ spread_cov @ weights.T) @ precision
    matrix_gradient = 0.5 * (outer - count * precision)
    gradient = noise.gradient(solved, spread, solved_weights, count)
    expected = [np.trace(matrix_gradient), np.diag(matrix_gradient), matrix_gradient][which]
    assert_allclose(gradient, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("which", [0, 1, 2], ids=["isotropic", "diagonal", "full"])
def test_noise_gradient_matches_finite_differences_of_the_expected_log_likelihood(
    which: int, rng: np.random.Generator
) -> None:
    """The gradient is that of sum_n E log N(x_n; W z + b, Psi) in the given parameters."""
    d, k, count = 3, 2, 4
    noise, _ = _noises(rng, d)[which]
    residuals = rng.standard_normal((count, d))
    weights = rng.standard_normal((d, k))
    spread_cov = _spd(rng, k)
    extra = weights @ spread_cov @ weights.T

    def objective(given: np.ndarray) -> float:
        psi = NoiseCovariance.from_value(given, d).dense()
        precision = np.linalg.inv(psi)
        quad = np.trace(precision @ (residuals.T @ residuals + extra))
        return -0.5 * (count * np.linalg.slogdet(psi)[1] + quad)

    base = np.asarray(noise.given, dtype=np.float64)
    precision = np.linalg.inv(noise.dense())
    gradient = np.asarray(
        noise.gradient(
            residuals @ precision,
            precision @ weights @ spread_cov,
            precision @ weights,
            count,
        )
    )
    h = 1e-6
    numeric = np.zeros(base.shape)
    for index in np.ndindex(*base.shape):
        if base.ndim == 2 and index[0] != index[1]:
            continue  # a symmetric perturbation below
        step = np.zeros(base.shape)
        step[index] = h
        numeric[index] = (objective(base + step) - objective(base - step)) / (2 * h)
    if base.ndim == 2:  # d/dPsi_ij with Psi_ij = Psi_ji moved together is 2 G_ij
        for i in range(d):
            for j in range(i):
                step = np.zeros(base.shape)
                step[i, j] = step[j, i] = h
                value = (objective(base + step) - objective(base - step)) / (2 * h)
                numeric[i, j] = numeric[j, i] = value / 2
    assert_allclose(gradient, numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("which", [0, 1, 2], ids=["isotropic", "diagonal", "full"])
def test_noise_samples_have_covariance_psi(which: int, rng: np.random.Generator) -> None:
    d, n = 3, 40_000
    noise, psi = _noises(rng, d)[which]
    draws = noise.sample(n, np.random.default_rng(7))
    assert draws.shape == (n, d)
    sample_cov = draws.T @ draws / n
    # entrywise standard error of a sample covariance: sqrt((psi_ii psi_jj + psi_ij^2) / n)
    se = np.sqrt((np.outer(np.diag(psi), np.diag(psi)) + psi**2) / n)
    assert np.all(np.abs(sample_cov - psi) <= 6 * se)


def test_noise_from_value_refuses_shapes_that_do_not_fit_d() -> None:
    with pytest.raises(InvalidInputError, match=r"shape \(D,\) = \(3,\)"):
        NoiseCovariance.from_value(np.ones(2), 3)
    with pytest.raises(InvalidInputError, match=r"shape \(D, D\) = \(3, 3\)"):
        NoiseCovariance.from_value(np.eye(2), 3)
    with pytest.raises(InvalidInputError, match="at least one variance"):
        DiagonalNoise(np.ones(0))
    with pytest.raises(InvalidInputError):
        IsotropicNoise(0.0, 3)
    assert NoiseCovariance.from_scalar(2.0, 3).given == 2.0
    assert_array_equal(NoiseCovariance.from_diagonal([1.0, 2.0]).given, [1.0, 2.0])
    assert_array_equal(NoiseCovariance.from_dense(np.eye(2)).given, np.eye(2))
