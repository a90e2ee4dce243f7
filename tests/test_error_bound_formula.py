"""The error bounds' formulas, recomputed independently from their documentation.

``tests/test_error_bounds.py`` checks that the bounds of ``log_evidence`` and ``elbo``
cover the error against mpmath and are not vacuous; a change of the bound by a factor
below about 10 passes those checks. Here every term of the documented formulas
(``elbo_check/_error_bounds.py``: the module docstring for log p(x), the
``ElboErrorBound`` docstring for the ELBO, and the inline comments for the
Cholesky/solve and loadings terms the docstrings summarise) is recomputed in plain
numpy from dense matrices that share no code with the package: an explicit ``C``, an
explicit ``|Psi^-1/2|``, ``C^-1 r`` by a dense solve in place of the QR, ``R`` from the
Cholesky factor of ``I + W~^T W~``. The only package outputs used are the computed
Mahalanobis terms, the routes they took and the values (the bound is a-posteriori in
them). The bound is itself a rounded quantity; the comparison uses ``rtol=1e-6``, well
inside the smallest change worth catching (``1 / (D + K + 8)`` = 7% here).

It also checks the routes of :meth:`MarginalFactorization.mahalanobis` against the
cancellation of each row measured densely.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.linalg
from numpy.testing import assert_allclose
from threadpoolctl import threadpool_limits

import elbo_check._blocks as blocks
import elbo_check._marginal as marginal_module
from elbo_check import Gaussian, LinearGaussianModel
from elbo_check._errors import InvalidInputError

EPS = 2.0**-52
SLACK = 8  # BOUND_SLACK, as documented: gamma = (D + K + 8) eps
LOG_2PI = float(np.log(2.0 * np.pi))
FAST, RESIDUAL, DOUBLED = 0, 1, 2
KINDS = ["isotropic", "diagonal", "full"]
D, K = 5, 2
RTOL = 1e-6


def norms(rows: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum(rows * rows, axis=-1))


class Dense:
    """A model as explicit dense matrices, and both documented bounds from them."""

    def __init__(self, kind: str, rng: np.random.Generator, noise_scale: float) -> None:
        self.kind = kind
        self.weights = rng.standard_normal((D, K))
        self.bias = rng.standard_normal(D)
        self.mu0 = np.array([0.5, -1.0])
        self.l0 = np.array([[1.5, 0.0], [0.4, 0.7]])  # |log L0_ii| > 0
        if kind == "isotropic":
            self.noise_given: Any = noise_scale
            self.psi = noise_scale * np.eye(D)
        elif kind == "diagonal":
            self.noise_given = noise_scale * rng.uniform(0.5, 2.0, D)
            self.psi = np.diag(self.noise_given)
        else:
            a = rng.standard_normal((D, D))
            self.noise_given = noise_scale * (a @ a.T / D + np.eye(D))
            self.psi = self.noise_given
        self.noise_factor = np.linalg.cholesky(self.psi)  # Psi = Lp Lp^T
        # Psi^-1/2: the inverse Cholesky factor (diagonal for elementwise noise)
        self.whitener = scipy.linalg.solve_triangular(self.noise_factor, np.eye(D), lower=True)
        self.mean = self.weights @ self.mu0 + self.bias
        self.cov = self.weights @ self.l0 @ self.l0.T @ self.weights.T + self.psi
        self.loadings = self.whitener @ self.weights @ self.l0  # W~
        # R^T R = I + W~^T W~, R upper triangular with a positive diagonal
        self.r = np.linalg.cholesky(np.eye(K) + self.loadings.T @ self.loadings).T
        self.gamma = (D + K + SLACK) * EPS

    def model(self) -> LinearGaussianModel:
        return LinearGaussianModel(
            weights=self.weights,
            bias=self.bias,
            prior=Gaussian(self.mu0, self.l0),
            noise_cov=self.noise_given,
        )

    @property
    def dense_noise(self) -> bool:
        return self.kind == "full"

    def least_squares(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """(y, u, y - W~ u, M) per row: ``u`` minimises ``|y - W~ u|^2 + |u|^2`` (by
        numpy's SVD least squares, backward stable, not the package's QR), and
        ``M = |y - W~ u|^2 + |u|^2 = r^T C^-1 r``."""
        y = (x - self.mean) @ self.whitener.T
        stacked = np.vstack([self.loadings, np.eye(K)])
        target = np.hstack([y, np.zeros((y.shape[0], K))])
        u = np.linalg.lstsq(stacked, target.T, rcond=None)[0].T
        residual = y - u @ self.loadings.T
        return y, u, residual, norms(residual) ** 2 + norms(u) ** 2

    def log_evidence(self, x: np.ndarray) -> np.ndarray:
        maha = self.least_squares(x)[3]
        return -0.5 * (D * LOG_2PI + np.linalg.slogdet(self.cov)[1] + maha)

    def cancellation(self, x: np.ndarray) -> np.ndarray:
        """M / |y|^2 per row: the fraction of |y|^2 that |y|^2 - |Q1^T y|^2 keeps."""
        y, _, _, maha = self.least_squares(x)
        return maha / norms(y) ** 2

    # ------------------------------------------------------------------ log p(x)
    def log_det_scale(self) -> float:
        """L = 1/2 (D log 2pi + log-noise scale + 2 sum |log R_ii| + 2K + loadings term)."""
        abs_g, abs_lp = np.abs(self.whitener), np.abs(self.noise_factor)
        if self.dense_noise:
            # 2 sum |log Lp_ii|, and Cholesky's backward error gamma |Lp||Lp|^T seen by C^-1
            log_noise = 2.0 * np.sum(np.abs(np.log(np.diag(self.noise_factor))))
            log_noise += np.sum(np.abs(np.linalg.inv(self.cov)) * (abs_lp @ abs_lp.T))
        else:
            log_noise = np.sum(np.abs(np.log(np.diag(self.psi))))
        # The loadings term: |sensitivity| against the componentwise size of the rounded
        # W~ = Psi^-1/2 W L0, |Psi^-1/2| |W| |L0|. The sensitivity is the derivative
        # d log det(I + W~'W~) / d W~ = 2 W~ (I + W~'W~)^-1 = 2 W~ R^-1 R^-T.
        r_inv = np.linalg.inv(self.r)
        sensitivity = self.loadings @ r_inv @ r_inv.T
        abs_loadings = abs_g @ np.abs(self.weights) @ np.abs(self.l0)
        loadings_term = 2.0 * np.sum(np.abs(sensitivity) * abs_loadings)
        log_r = np.sum(np.abs(np.log(np.diag(self.r))))
        return 0.5 * (D * LOG_2PI + log_noise + 2.0 * log_r + 2.0 * K + loadings_term)

    def solve_spread(self, rows: np.ndarray) -> np.ndarray:
        """|| |Psi^-1/2| |Lp| |v| || (dense noise), ||v|| (elementwise)."""
        if not self.dense_noise:
            return norms(rows)
        return norms(np.abs(rows) @ np.abs(self.noise_factor).T @ np.abs(self.whitener).T)

    def row_terms(
        self, x: np.ndarray, maha: np.ndarray, routes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(A + the Cholesky term, T) per row, with the computed M and routes."""
        abs_g = np.abs(self.whitener)
        # u = R^-1 Q1^T y, the whitened posterior offset; (I - Q1 Q1^T) y = y - W~ u
        y, offsets, residual, exact_maha = self.least_squares(x)
        solved = residual @ self.whitener  # C^-1 r = Psi^-T/2 (y - W~ u)
        coefficient_squares = norms(y) ** 2 - exact_maha  # |Q1^T y|^2
        if self.dense_noise:
            cholesky = norms(np.abs(solved) @ np.abs(self.noise_factor)) ** 2
        else:
            cholesky = norms(residual) ** 2
        spread = np.abs(offsets) @ np.abs(self.l0).T @ np.abs(self.weights).T @ abs_g.T
        centring = (
            np.abs(x) + np.abs(self.bias) + np.abs(self.weights) @ np.abs(self.mu0)
        ) @ abs_g.T
        size = self.solve_spread(y) + norms(spread) + norms(centring)
        root = np.sqrt(maha)
        a = np.select(
            [routes == FAST, routes == RESIDUAL, routes == DOUBLED],
            [
                norms(y) ** 2 + coefficient_squares + 2.0 * root * size,
                maha + 2.0 * root * size,
                maha + 2.0 * root * self.solve_spread(residual),
            ],
            np.nan,
        )
        return cholesky + a, size

    def log_evidence_bound(
        self, x: np.ndarray, maha: np.ndarray, routes: np.ndarray, values: np.ndarray
    ) -> np.ndarray:
        """E = 1/2 (gamma A + gamma^2 T^2) + gamma L + eps |f|."""
        first, size = self.row_terms(x, maha, routes)
        g = self.gamma
        return 0.5 * (g * first + (g * size) ** 2) + g * self.log_det_scale() + EPS * np.abs(values)

    # ------------------------------------------------------------------ ELBO
    def elbo_bound(
        self, x: np.ndarray, means: np.ndarray, factors: np.ndarray, values: np.ndarray
    ) -> np.ndarray:
        """The ElboErrorBound formula for paired rows x (n, D), q means (n, K) and q
        factors (n, K, K)."""
        g_abs, lp_abs = np.abs(self.whitener), np.abs(self.noise_factor)
        w_abs = np.abs(self.weights)
        precision = np.linalg.inv(self.psi)  # Psi^-1
        # |W'| = |Psi^-1/2| |W| (with the solve's backward error for dense noise)
        abs_whitened = g_abs @ w_abs
        if self.dense_noise:
            abs_whitened = g_abs @ lp_abs @ abs_whitened
            log_scale = 2.0 * np.sum(np.abs(np.log(np.diag(self.noise_factor))))
            log_scale += np.sum(np.abs(precision) * (lp_abs @ lp_abs.T))
        else:
            log_scale = np.sum(np.abs(np.log(np.diag(self.psi))))
        # R_w with R_w^T R_w = W^T Psi^-1 W (its absolute value does not depend on signs)
        root = np.linalg.cholesky(self.weights.T @ precision @ self.weights).T
        gram = abs_whitened.T @ abs_whitened + np.abs(root).T @ np.abs(root)

        r = x - means @ self.weights.T - self.bias
        whitened = r @ self.whitener.T
        scale = (np.abs(x) + np.abs(means) @ w_abs.T + np.abs(self.bias)) @ g_abs.T
        data = 2.0 * np.sum(np.abs(whitened) * scale, axis=1)  # S_r
        total = norms((x - self.bias) @ self.whitener.T) ** 2
        quadratic = norms(means @ root.T) ** 2
        fast = norms(whitened) ** 2 >= 2.0**-6 * (total + quadratic)
        data += np.where(fast, total + quadratic, 0.0)  # S_fast
        if self.dense_noise:
            spread = np.abs(whitened) @ lp_abs.T @ g_abs.T
            data += 2.0 * norms(whitened) * norms(spread)
            data += norms(np.abs(r @ precision) @ lp_abs) ** 2
        abs_q = np.abs(factors)
        spread_gram = abs_q @ np.swapaxes(abs_q, -1, -2)
        trace = 2.0 * np.sum(gram * spread_gram, axis=(-2, -1))  # S_tr
        if self.dense_noise:
            cholesky = np.linalg.norm(lp_abs.T @ np.abs(precision @ self.weights), 2) ** 2
            trace += cholesky * np.sum(factors * factors, axis=(-2, -1))
        total_scale = 0.5 * (D * LOG_2PI + log_scale + data + trace) + self.kl_scale(means, factors)
        return self.gamma * total_scale + EPS * np.abs(values)

    def kl_scale(self, means: np.ndarray, factors: np.ndarray) -> np.ndarray:
        """The documented first-order scale of KL(q || p(z)), term by term."""
        inverse = np.linalg.inv(self.l0)
        ratio = inverse @ factors  # M = L_p^-1 L_q
        offsets = (means - self.mu0) @ inverse.T  # w
        products = np.sum(np.abs(ratio) * (np.abs(inverse) @ np.abs(factors)), axis=(-2, -1))
        shifts = np.sum(
            np.abs(offsets) * ((np.abs(means) + np.abs(self.mu0)) @ np.abs(inverse).T), axis=1
        )
        logs = np.sum(np.abs(np.log(np.diagonal(factors, axis1=-2, axis2=-1))), axis=-1)
        prior_logs = np.sum(np.abs(np.log(np.diag(self.l0))))
        return 0.5 * (2.0 * products + 2.0 * shifts + K + 2.0 * logs + 2.0 * prior_logs)


def graded_rows(dense: Dense, rng: np.random.Generator) -> np.ndarray:
    """Rows ``xbar + W z + t sqrt(psi) n`` for t over ten decades: on the loading subspace
    they cancel (doubled and residual routes), off it they do not (fast route)."""
    amplitudes = np.repeat(10.0 ** np.arange(-3.0, 7.0), 2)
    z = rng.standard_normal((amplitudes.size, K))
    n = rng.standard_normal((amplitudes.size, D)) @ dense.noise_factor.T
    return dense.mean + z @ dense.weights.T + amplitudes[:, None] * n


def routes_of(model: LinearGaussianModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    routes = np.full(x.shape[0], 7, dtype=np.int8)  # not a route: each must be written
    maha = model._marginal.mahalanobis(x, routes)
    return maha, routes


@pytest.fixture(params=KINDS)
def dense(request: pytest.FixtureRequest) -> Dense:
    return Dense(request.param, np.random.default_rng(KINDS.index(request.param)), 1e-8)


# ----------------------------------------------------------------------- routes
def test_routes_follow_the_measured_cancellation(dense: Dense) -> None:
    """Fast where M >= |y|^2 / 64, residual below that (including the band between 1/729
    and 1/64), doubled below 2^-20; away from the limits by a factor 2 either way."""
    rng = np.random.default_rng(3)
    model = dense.model()
    x = graded_rows(dense, rng)
    # rows whose cancellation falls in (1/729, 1/64): between 3^-6 and 2^-6
    direction = rng.standard_normal(D) @ dense.noise_factor.T
    t = np.geomspace(1.0, 1e6, 400)
    candidates = dense.mean + dense.weights @ np.array([1.0, -0.5]) + t[:, None] * direction
    fraction = dense.cancellation(candidates)
    band = candidates[(fraction > 2.0 / 729.0) & (fraction < 0.5 / 64.0)]
    assert band.shape[0] >= 2
    x = np.vstack([x, band[:: max(1, band.shape[0] // 4)]])
    fraction = dense.cancellation(x)
    maha, routes = routes_of(model, x)
    expected = np.where(
        fraction >= 2.0 / 64.0, FAST, np.where(fraction >= 2.0 * 2.0**-20, RESIDUAL, DOUBLED)
    )
    clear = (np.abs(np.log2(fraction / 2.0**-6)) > 1) & (np.abs(np.log2(fraction / 2.0**-20)) > 1)
    assert np.all(np.isin(routes, [FAST, RESIDUAL, DOUBLED]))
    assert_allclose(routes[clear], expected[clear])
    in_band = (fraction > 1.0 / 729.0) & (fraction < 1.0 / 64.0)
    assert np.any(in_band)
    assert np.all(routes[in_band] == RESIDUAL)
    for route in (FAST, RESIDUAL, DOUBLED):
        assert np.any(routes == route), route
    assert_allclose(maha, dense.least_squares(x)[3], rtol=1e-9)
    # the same rows one at a time (deferred rather than recomputed in their block)
    for i in np.flatnonzero(clear)[::5]:
        one_maha, one_route = routes_of(model, x[i : i + 1])
        assert one_route[0] == routes[i]
        assert_allclose(one_maha, maha[i : i + 1], rtol=1e-9)
    # without a routes array the values are the same
    assert_allclose(model._marginal.mahalanobis(x), maha, rtol=0, atol=0)


# ----------------------------------------------------------------------- log p(x)
def test_log_evidence_bound_is_the_documented_formula_on_every_route(dense: Dense) -> None:
    rng = np.random.default_rng(4)
    model = dense.model()
    x = graded_rows(dense, rng)
    values, bounds = model.log_evidence(x, return_error_bound=True)
    maha, routes = routes_of(model, x)
    assert {FAST, RESIDUAL, DOUBLED} <= set(routes.tolist())
    assert_allclose(values, dense.log_evidence(x), rtol=1e-8)
    expected = dense.log_evidence_bound(x, maha, routes, values)
    assert_allclose(bounds, expected, rtol=RTOL)


@pytest.mark.parametrize("kind", KINDS)
def test_log_evidence_bound_of_well_conditioned_rows(kind: str) -> None:
    """Noise comparable to the loadings: every term of the bound is of the same order,
    so each one shows (the fast route, rows near and far from the mean)."""
    rng = np.random.default_rng(10 + KINDS.index(kind))
    dense = Dense(kind, rng, 0.3)
    model = dense.model()
    x = dense.mean + np.vstack(
        [0.1 * rng.standard_normal((3, D)), rng.standard_normal((3, D)), 10 * np.ones((1, D))]
    )
    values, bounds = model.log_evidence(x, return_error_bound=True)
    maha, routes = routes_of(model, x)
    assert_allclose(values, dense.log_evidence(x), rtol=1e-12)
    assert_allclose(bounds, dense.log_evidence_bound(x, maha, routes, values), rtol=RTOL)


@pytest.mark.parametrize("route", [RESIDUAL, DOUBLED])
def test_log_evidence_bound_of_rows_forced_off_the_fast_route(
    dense: Dense, route: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every row sent down one route (as test_error_bounds does): the route's own term."""
    monkeypatch.setattr(marginal_module, "CANCELLATION_LIMIT", np.inf)
    monkeypatch.setattr(marginal_module, "DOUBLING_LIMIT", np.inf if route == DOUBLED else 0.0)
    rng = np.random.default_rng(5)
    model = dense.model()
    x = graded_rows(dense, rng)
    values, bounds = model.log_evidence(x, return_error_bound=True)
    maha, routes = routes_of(model, x)
    assert np.all(routes == route)
    assert_allclose(bounds, dense.log_evidence_bound(x, maha, routes, values), rtol=RTOL)


# ----------------------------------------------------------------------- ELBO
def q_factors(rng: np.random.Generator, n: int) -> np.ndarray:
    """Lower-triangular factors with diagonals away from 1 (so |log L_q,ii| shows)."""
    factors = np.tril(0.3 * rng.standard_normal((n, K, K)))
    diagonal = np.exp(rng.uniform(-2.0, 1.5, (n, K)))
    idx = np.arange(K)
    factors[:, idx, idx] = diagonal
    return factors


@pytest.mark.parametrize("noise_scale", [1e-3, 0.5])
@pytest.mark.parametrize("kind", KINDS)
def test_elbo_bound_is_the_documented_formula(kind: str, noise_scale: float) -> None:
    """Shared q (one mean, one factor) and per-row q (a mean and a factor each, some at
    the posterior, where the fast expansion cancels and is not used)."""
    rng = np.random.default_rng(20 + KINDS.index(kind))
    dense = Dense(kind, rng, noise_scale)
    model = dense.model()
    x = np.vstack(
        [
            dense.mean + rng.standard_normal((3, D)),
            model.sample(3, rng)[0],
        ]
    )
    n = x.shape[0]
    # shared q, broadcast over the rows
    factor = q_factors(rng, 1)[0]
    shared = Gaussian(np.array([1.5, -0.7]), factor)
    values, bounds = model.elbo(shared, x, return_error_bound=True)
    expected = dense.elbo_bound(
        x, np.broadcast_to(shared.mean, (n, K)), np.broadcast_to(factor, (n, K, K)), values
    )
    assert_allclose(bounds, expected, rtol=RTOL)
    # per-row q: posterior means for half the rows, random ones for the others
    posterior = model.posterior(x)
    means = np.where(np.arange(n)[:, None] % 2 == 0, posterior.mean, rng.standard_normal((n, K)))
    factors = q_factors(rng, n)
    batch = Gaussian(means, factors)
    values, bounds = model.elbo(batch, x, return_error_bound=True)
    assert np.shape(bounds) == (n,)
    assert_allclose(bounds, dense.elbo_bound(x, means, factors, values), rtol=RTOL)
    # and per-row q over a (2, 3) batch keeps the shape
    values2, bounds2 = model.elbo(
        Gaussian(means.reshape(2, 3, K), factors.reshape(2, 3, K, K)),
        x.reshape(2, 3, D),
        return_error_bound=True,
    )
    assert np.shape(bounds2) == (2, 3)
    assert_allclose(values2.reshape(n), values, rtol=1e-12)
    assert_allclose(bounds2.reshape(n), bounds, rtol=1e-12)


# ----------------------------------------------------------------------- route edges
@pytest.mark.parametrize("kind", KINDS)
def test_rows_are_recomputed_in_their_block_from_one_eighth_cancelling(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks of 16, 16 and 8 rows: 2 of 16 (exactly 1/8) and 1 of 8 cancelling rows are
    recomputed in their block, the 1 of 16 afterwards; every row keeps its value."""
    dense = Dense(kind, np.random.default_rng(30 + KINDS.index(kind)), 1e-8)
    model = dense.model()
    rng = np.random.default_rng(31)
    off = rng.standard_normal((40, D))
    off -= off @ np.linalg.pinv(dense.weights).T @ dense.weights.T  # off the loadings
    x = dense.mean + off  # these rows cancel little: fast route
    cancelling = [3, 9, 20, 35]
    x[cancelling] = dense.mean + rng.standard_normal((4, K)) @ dense.weights.T
    calls: list[int] = []
    original = marginal_module.MarginalFactorization.residual_squares

    def spy(self: Any, whitened: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        calls.append(whitened.shape[0])
        return original(self, whitened, *args, **kwargs)

    monkeypatch.setattr(marginal_module.MarginalFactorization, "residual_squares", spy)
    monkeypatch.setattr(blocks, "BLOCK_ENTRIES", 16 * D)
    with threadpool_limits(limits=1, user_api="blas"):
        maha, routes = routes_of(model, x)
    assert calls == [2, 1, 1], calls  # block 1 in place, block 3 in place, then row 20
    assert np.all((routes != FAST) == np.isin(np.arange(40), cancelling))
    assert_allclose(maha, dense.least_squares(x)[3], rtol=1e-9)


def test_a_row_at_the_doubling_limit_stays_on_the_residual_route() -> None:
    """The doubled route is for residuals *smaller* than DOUBLING_LIMIT |y|^2: rows whose
    computed residual equals it exactly do not take it. The rows differ only in a first
    coordinate near 0 (the model's mean is 0 there), stepped by 1e-20 across the
    crossing, where the computed residual (a few hundred ulps of rounding noise) meets
    the limit exactly on several rows."""
    dense = Dense("isotropic", np.random.default_rng(40), 1e-8)
    dense.bias[0] = -dense.weights[0] @ dense.mu0
    dense.mean = dense.weights @ dense.mu0 + dense.bias
    marginal = dense.model()._marginal
    assert marginal.mean[0] == 0.0
    rng = np.random.default_rng(41)
    z = rng.standard_normal(K)
    z[0] -= (dense.mean[0] + dense.weights[0] @ z) / dense.weights[0, 0]
    base = dense.mean + dense.weights @ z  # on the loadings, first coordinate ~0
    base[0] = 0.0
    direction = rng.standard_normal(D) * 1e-4
    direction[0] = 0.0

    def fraction(t: float) -> float:
        return float(dense.cancellation((base + t * direction)[None])[0])

    low, high = 0.0, 1e3  # the cancellation grows with t: bisect for 2^-20
    for _ in range(200):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if fraction(mid) < 2.0**-20 else (low, mid)
    row = base + low * direction
    limit = marginal_module.DOUBLING_LIMIT

    def squares_of(first: np.ndarray, doubling: float) -> tuple[np.ndarray, ...]:
        x = np.repeat(row[None], first.size, axis=0)
        x[:, 0] = first
        whitened = marginal.noise.whiten(x - marginal.mean)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(marginal_module, "DOUBLING_LIMIT", doubling)
            squares, doubled = marginal.residual_squares(
                whitened, whitened @ marginal.basis, np.empty_like(whitened), x, np.arange(len(x))
            )
        return squares, doubled, limit * np.einsum("ij,ij->i", whitened, whitened)

    steps = np.arange(-20000, 20001)
    # coarse (about 8 ulps of the residual a step), then fine (about 0.1 ulp) at the crossing
    plain, never, threshold = squares_of(steps * 1e-18, 0.0)  # the limit off: no row doubled
    assert not never.any()
    crossing = steps[np.argmax(plain >= threshold)] * 1e-18
    first = crossing + steps * 1e-20
    plain, _, threshold = squares_of(first, 0.0)
    squares, doubled, same = squares_of(first, limit)
    assert_allclose(same, threshold, rtol=0, atol=0)
    assert_allclose(squares[~doubled], plain[~doubled], rtol=0, atol=0)
    tie = plain == threshold
    assert tie.any(), "no exact tie among the rows: widen the scan"
    assert not doubled[tie].any()
    assert np.all(doubled == (plain < threshold))
    assert doubled.any()


def test_an_overflow_within_the_bound_of_the_float64_range_is_not_answered_minus_inf() -> None:
    """M = x1^2 / psi1 with psi1 = 2^-200, just above the float64 range (by 2e-16 to 3e-15,
    inside the bound of its computation at scale): -inf is not certain, so it is refused
    (its exact log p, about -M/2, is finite); four times further out it is given."""
    model = LinearGaussianModel(
        weights=[[0.0], [1.0]],
        bias=[0.0, 0.0],
        prior=Gaussian.standard(1),
        noise_cov=np.array([2.0**-200, 1.0]),
    )
    edge = np.sqrt(np.finfo(np.float64).max) * 2.0**-100
    for k in range(1, 8):
        x = np.array([edge * (1 + k * EPS), 0.0])
        try:
            value = model.log_evidence(x)
        except InvalidInputError as error:
            message = str(error)
        else:  # a finite -M/2 would be right too
            message = "finite"
            assert value == pytest.approx(-0.5 * (x[0] * 2.0**100) * (x[0] * 2.0**100), rel=1e-12)
        assert message == "finite" or "overflows float64 as computed" in message
    assert model.log_evidence(np.array([2 * edge, 0.0])) == -np.inf
