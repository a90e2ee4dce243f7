"""Gradients in the user's parametrisation: the maps, their exact pullbacks, the verifier.

Every pullback is checked against central differences of the oracle's ELBO through
``to_gaussian`` (an independent route: no chain rule involved), every map against its
inverse, and ``verify_elbo_gradient(parametrisation=...)`` against hand-written chain
rules in the form users write them (closed forms in the posterior precision, not the
library's pullback), correct and with the classic mistakes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.special

from elbo_check import Gaussian, InvalidInputError
from elbo_check._random import random_gaussian, random_model
from elbo_check.testing import verify_elbo_gradient
from elbo_check.testing._low_rank import ScaledLowRank
from elbo_check.testing._parametrisations import (
    Custom,
    DiagonalLogScale,
    DiagonalLogVariance,
    DiagonalSoftplusScale,
    FullCholesky,
    FullCovariance,
    FullPrecision,
    FullUnitCholeskyScale,
    Parametrisation,
)

FEW: dict[str, Any] = {"max_examples": 12, "seed": 3}

NAMED: list[Parametrisation] = [
    DiagonalLogScale(),
    DiagonalSoftplusScale(),
    DiagonalLogVariance(),
    FullCholesky(),
    FullUnitCholeskyScale(),
    FullUnitCholeskyScale("exp"),
    FullUnitCholeskyScale("softplus"),
    FullCovariance(),
    FullPrecision(),
]
IDS = [repr(p) for p in NAMED]
#: Families whose parameters are not unique (a rotation of the low-rank factor is the same q)
LOW_RANK: list[Parametrisation] = [
    ScaledLowRank(1),
    ScaledLowRank(2, "exp"),
    ScaledLowRank(3),
    ScaledLowRank(5, "identity"),
]


def _problem(seed: int, k: int = 3) -> tuple[Any, Gaussian, np.ndarray]:
    rng = np.random.default_rng(seed)
    model = random_model(rng, data_dim=4, latent_dim=k, family="full_noise", condition_number=10.0)
    x = model.sample(1, rng)[0][0]
    return model, random_gaussian(rng, k, condition_number=10.0), x


def _elbo_at(par: Parametrisation, params: dict[str, np.ndarray], model: Any, x: Any) -> float:
    return float(model.elbo(par.to_gaussian(params), x))


def _moved(params: dict[str, np.ndarray], key: str, direction: np.ndarray, h: float) -> Any:
    out = {name: value.copy() for name, value in params.items()}
    out[key] = out[key] + h * direction
    return out


# ---------------------------------------------------------------------- the maps
@pytest.mark.parametrize("par", NAMED + LOW_RANK, ids=IDS + [repr(p) for p in LOW_RANK])
@pytest.mark.parametrize("seed", [0, 1])
def test_pullback_matches_central_differences_of_the_oracle_elbo(
    par: Parametrisation, seed: int
) -> None:
    model, full, x = _problem(seed)
    params = par.from_gaussian(par.project(full))
    q = par.to_gaussian(params)
    grads = model.elbo_grad_variational(q, x)
    pulled = par.pullback(params, grads.mean, grads.scale_tril)
    kinds = dict(zip(par.keys, par._key_kinds, strict=True))
    for key, value in params.items():
        kind = kinds[key]
        for index in np.ndindex(*value.shape):
            direction = np.zeros_like(value)
            direction[index] = 1.0
            if kind == "symmetric":
                direction[index[::-1]] = 1.0  # a symmetric direction: <G, E> = G_ij + G_ji
            elif (kind == "lower" and index[1] > index[0]) or (
                kind == "strict_lower" and index[1] >= index[0]
            ):
                assert pulled[key][index] == 0.0, (key, index)  # not a parameter
                continue
            h = 1e-5 * max(1.0, abs(float(value[index])))
            numeric = (
                _elbo_at(par, _moved(params, key, direction, h), model, x)
                - _elbo_at(par, _moved(params, key, direction, -h), model, x)
            ) / (2 * h)
            exact = float(np.sum(pulled[key] * direction))
            assert abs(numeric - exact) <= 2e-6 * (1 + abs(exact)), (key, index, numeric, exact)


@pytest.mark.parametrize("par", NAMED, ids=IDS)
def test_from_gaussian_inverts_to_gaussian(par: Parametrisation) -> None:
    _, full, _ = _problem(5)
    params = par.from_gaussian(par.project(full))
    # parameters not derived from a Gaussian: perturb and map back
    rng = np.random.default_rng(7)
    for key, value in params.items():
        noise = 0.1 * rng.standard_normal(value.shape)
        if value.ndim == 2:
            noise = np.tril(noise, -1) if key == "unit_scale_tril" else np.tril(noise)
            if key in ("cov", "precision"):
                noise = 0.05 * (noise + noise.T)
        params[key] = value + noise
    again = par.from_gaussian(par.to_gaussian(params))
    assert set(again) == set(params) == set(par.keys)
    for key in par.keys:
        np.testing.assert_allclose(again[key], params[key], rtol=1e-12, atol=1e-12)
    q = par.to_gaussian(params)
    back = par.to_gaussian(par.from_gaussian(q))
    np.testing.assert_allclose(back.cov, q.cov, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(back.mean, q.mean, rtol=0, atol=0)


@pytest.mark.parametrize("par", LOW_RANK, ids=repr)
def test_low_rank_projection_is_a_member_and_idempotent(par: ScaledLowRank) -> None:
    _, full, _ = _problem(5)
    member = par.project(full)
    np.testing.assert_array_equal(member.mean, full.mean)
    params = par.from_gaussian(member)  # a member: no error
    assert params["cov_factor"].shape == (3, par.rank)
    np.testing.assert_allclose(par.to_gaussian(params).cov, member.cov, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(par.project(member).cov, member.cov, rtol=1e-12, atol=1e-14)
    if par.rank >= full.dim:  # every q is a member
        np.testing.assert_allclose(member.cov, full.cov, rtol=1e-12, atol=1e-14)
        return
    # rank < K: the floor is q's smallest eigenvalue, the top `rank` directions are kept
    want, got = np.linalg.eigvalsh(full.cov), np.linalg.eigvalsh(member.cov)
    np.testing.assert_allclose(got[-par.rank :], want[-par.rank :], rtol=1e-12)
    np.testing.assert_allclose(got[: -par.rank], want[0], rtol=1e-12)
    with pytest.raises(InvalidInputError, match="rank 1; q's covariance is not one"):
        ScaledLowRank(1).from_gaussian(full)


def test_low_rank_matches_pyros_and_numpyros_covariance() -> None:
    """Both build LowRankMultivariateNormal(loc, F * s[:, None], s**2): D (F F^T + I) D."""
    factor, scale = np.array([[1.0], [-2.0], [0.5]]), np.array([0.5, 1.0, 2.0])
    q = ScaledLowRank(1, "identity").to_gaussian(
        {"loc": np.zeros(3), "cov_factor": factor, "scale": scale}
    )
    low = factor * scale[:, None]
    np.testing.assert_allclose(q.cov, low @ low.T + np.diag(scale**2), rtol=1e-14)


def test_low_rank_arguments_are_checked() -> None:
    with pytest.raises(InvalidInputError, match="rank must be an integer >= 1; got rank=0"):
        ScaledLowRank(0)
    with pytest.raises(InvalidInputError, match="scale_transform"):
        ScaledLowRank(2, "log")
    with pytest.raises(InvalidInputError, match=r"\['cov_factor'\] must have shape \(2, 2\)"):
        ScaledLowRank(2).to_gaussian(
            {"loc": np.zeros(2), "cov_factor": np.zeros((2, 1)), "raw_scale": np.zeros(2)}
        )


def test_pyro_auto_multivariate_normal_convention_scales_rows() -> None:
    """Pyro: scale_tril = scale[..., None] * unit_scale_tril (row i scaled by scale_i)."""
    unit = np.array([[1.0, 0.0], [0.5, 1.0]])
    q = FullUnitCholeskyScale().to_gaussian(
        {"loc": np.zeros(2), "scale": np.array([2.0, 3.0]), "unit_scale_tril": unit}
    )
    np.testing.assert_allclose(q.scale_tril, [[2.0, 0.0], [1.5, 3.0]])


def test_softplus_inverse_is_stable_for_small_and_large_scales() -> None:
    par = DiagonalSoftplusScale()
    q = Gaussian.from_diagonal(mean=np.zeros(3), variances=np.array([1e-20, 1.0, 1e6]) ** 2)
    raw = par.from_gaussian(q)["raw_scale"]
    assert np.all(np.isfinite(raw))
    np.testing.assert_allclose(np.logaddexp(0.0, raw), [1e-20, 1.0, 1e6], rtol=1e-12)


def test_custom_pullback_agrees_with_the_exact_one_within_its_error_bound() -> None:
    custom = Custom(
        lambda p: Gaussian.from_cholesky(mean=p["loc"], scale_tril=np.diag(np.exp(p["log_scale"]))),
        lambda q: {"loc": q.mean, "log_scale": np.log(np.diagonal(q.scale_tril))},
        keys=("loc", "log_scale"),
    )
    model, full, x = _problem(2)
    params = DiagonalLogScale().from_gaussian(DiagonalLogScale().project(full))
    grads = model.elbo_grad_variational(DiagonalLogScale().to_gaussian(params), x)
    exact = DiagonalLogScale().pullback(params, grads.mean, grads.scale_tril)
    approx, error = custom.pullback_with_error(params, grads.mean, grads.scale_tril)
    for key in ("loc", "log_scale"):
        assert np.all(np.abs(approx[key] - exact[key]) <= error[key])
        assert np.all(error[key] < 1e-6 * (1 + np.abs(exact[key])))


# ---------------------------------------------------------------------- correct user code
def _closed_forms(model: Any, q: Gaussian, x: Any) -> tuple[np.ndarray, np.ndarray]:
    """A user's (m, S) gradients: grad_m and G_S = (S^-1 - Lambda) / 2."""
    grad_mean = model.elbo_grad_variational(q, x).mean
    return grad_mean, 0.5 * (np.linalg.inv(q.cov) - model.posterior_precision)


def _diagonal_user(par: Parametrisation, derivative: Any) -> Any:
    def fn(model: Any, params: dict[str, np.ndarray], x: Any) -> Any:
        q = par.to_gaussian(params)
        grad_mean, grad_cov = _closed_forms(model, q, x)
        s = np.sqrt(np.diagonal(q.cov))
        # d ELBO / d s_i = 2 s_i (G_S)_ii, then the user's chain rule d s / d u
        grad_scale = 2 * s * np.diagonal(grad_cov)
        return {"loc": grad_mean, par.keys[1]: grad_scale * derivative(params[par.keys[1]], s)}

    return fn


def _unit_user(par: FullUnitCholeskyScale, derivative: Any, keep_diagonal: bool = False) -> Any:
    def fn(model: Any, params: dict[str, np.ndarray], x: Any) -> Any:
        q = par.to_gaussian(params)
        grad_mean, grad_cov = _closed_forms(model, q, x)
        grad_l = np.tril(2 * grad_cov @ q.scale_tril)
        unit, key = params["unit_scale_tril"], par.keys[1]
        s = np.diagonal(q.scale_tril)
        grad_unit = s[:, None] * grad_l
        if not keep_diagonal:
            grad_unit = np.tril(grad_unit, -1)
        grad_s = np.sum(grad_l * unit, axis=1) * derivative(params[key], s)
        return (grad_mean, grad_s, grad_unit)  # a tuple in the order of par.keys

    return fn


def _cholesky_user(model: Any, params: dict[str, np.ndarray], x: Any) -> Any:
    q = FullCholesky().to_gaussian(params)
    grad_mean, grad_cov = _closed_forms(model, q, x)
    return {"loc": grad_mean, "scale_tril": np.tril(2 * grad_cov @ q.scale_tril)}


def _covariance_user(model: Any, params: dict[str, np.ndarray], x: Any) -> Any:
    grad_mean, grad_cov = _closed_forms(model, FullCovariance().to_gaussian(params), x)
    return {"loc": grad_mean, "cov": grad_cov}


def _covariance_lower_user(model: Any, params: dict[str, np.ndarray], x: Any) -> Any:
    """Autodiff through a Cholesky reading the lower triangle: off-diagonals doubled."""
    grad_mean, grad_cov = _closed_forms(model, FullCovariance().to_gaussian(params), x)
    return {"loc": grad_mean, "cov": np.tril(2 * grad_cov) - np.diag(np.diagonal(grad_cov))}


def _precision_user(model: Any, params: dict[str, np.ndarray], x: Any) -> Any:
    q = FullPrecision().to_gaussian(params)
    grad_mean, grad_cov = _closed_forms(model, q, x)
    return {"loc": grad_mean, "precision": -q.cov @ grad_cov @ q.cov}


CORRECT = [
    (DiagonalLogScale(), _diagonal_user(DiagonalLogScale(), lambda u, s: np.exp(u))),
    (
        DiagonalSoftplusScale(),
        _diagonal_user(DiagonalSoftplusScale(), lambda u, s: scipy.special.expit(u)),
    ),
    (DiagonalLogVariance(), _diagonal_user(DiagonalLogVariance(), lambda u, s: 0.5 * s)),
    (FullCholesky(), _cholesky_user),
    (FullUnitCholeskyScale(), _unit_user(FullUnitCholeskyScale(), lambda u, s: 1.0)),
    (
        FullUnitCholeskyScale("softplus"),
        _unit_user(FullUnitCholeskyScale("softplus"), lambda u, s: scipy.special.expit(u)),
    ),
    (FullCovariance(), _covariance_user),
    (FullCovariance(), _covariance_lower_user),
    (FullPrecision(), _precision_user),
]


@pytest.mark.parametrize(
    ("par", "fn"), CORRECT, ids=[f"{p!r}-{getattr(f, '__name__', 'fn')}" for p, f in CORRECT]
)
def test_a_correct_gradient_in_each_parametrisation_passes(par: Parametrisation, fn: Any) -> None:
    report = verify_elbo_gradient(fn, parametrisation=par, **FEW)
    assert report.cases >= 1
    assert report.worst_error <= 1.0
    assert repr(par) in report.check


def test_the_default_keeps_the_gaussian_signature() -> None:
    def legacy(model: Any, q: Gaussian, x: Any) -> Any:
        g = model.elbo_grad_variational(q, x)
        return g.mean, g.scale_tril + np.triu(np.ones_like(g.scale_tril), 1)  # upper ignored

    assert verify_elbo_gradient(legacy, **FEW).check == "verify_elbo_gradient"


# ---------------------------------------------------------------------- wrong chain rules
WRONG = [
    (
        DiagonalLogScale(),
        _diagonal_user(DiagonalLogScale(), lambda u, s: 1.0),
        "factor d scale / d log_scale",
    ),
    (
        DiagonalSoftplusScale(),
        _diagonal_user(DiagonalSoftplusScale(), lambda u, s: np.exp(u)),
        "softplus(u) is taken as exp(u)",
    ),
    (DiagonalLogVariance(), _diagonal_user(DiagonalLogVariance(), lambda u, s: s), "log_variance"),
    (
        FullUnitCholeskyScale(),
        _unit_user(FullUnitCholeskyScale(), lambda u, s: 1.0, keep_diagonal=True),
        "diagonal of unit_scale_tril",
    ),
]


@pytest.mark.parametrize(("par", "fn", "said"), WRONG, ids=[repr(w[0]) for w in WRONG])
def test_a_wrong_chain_rule_fails_and_is_named(par: Parametrisation, fn: Any, said: str) -> None:
    with pytest.raises(AssertionError, match="failed") as info:
        verify_elbo_gradient(fn, parametrisation=par, **FEW)
    assert said in str(info.value)
    assert "<-- off" in str(info.value)


def test_cholesky_gradient_returned_for_the_covariance_is_named() -> None:
    def wrong(model: Any, params: dict[str, np.ndarray], x: Any) -> Any:
        out = _cholesky_user(
            model,
            FullCholesky().from_gaussian(
                Gaussian.from_covariance(mean=params["loc"], cov=params["cov"])
            ),
            x,
        )
        return {"loc": out["loc"], "cov": out["scale_tril"]}

    with pytest.raises(AssertionError, match="Cholesky factor") as info:
        verify_elbo_gradient(wrong, parametrisation=FullCovariance(), **FEW)
    assert "returned for cov" in str(info.value)


def test_an_upper_triangle_gradient_of_the_cholesky_factor_is_not_a_parameter() -> None:
    def dense(model: Any, params: dict[str, np.ndarray], x: Any) -> Any:
        q = FullCholesky().to_gaussian(params)
        grad_mean, grad_cov = _closed_forms(model, q, x)
        return {"loc": grad_mean, "scale_tril": 2 * grad_cov @ q.scale_tril}  # no tril

    with pytest.raises(AssertionError, match="not a parameter"):
        verify_elbo_gradient(dense, parametrisation=FullCholesky(), **FEW)


# ---------------------------------------------------------------------- statistical mode
def _reparameterised(scale_factor: float = 1.0) -> Any:
    """A numpy reparameterisation estimator in (loc, log_scale), analytic entropy."""

    def fn(model: Any, params: dict[str, np.ndarray], x: Any, rng: Any, n: int) -> Any:
        loc, log_scale = params["loc"], params["log_scale"]
        s = np.exp(log_scale)
        eps = rng.standard_normal((n, loc.size))
        z = loc + s * eps
        noise = model.dense_noise_cov()
        residual = x - model.bias - z @ model.weights.T
        score = (
            np.linalg.solve(noise, residual.T).T @ model.weights
            - np.linalg.solve(model.prior.cov, (z - model.prior.mean).T).T
        )
        grad_loc = score.mean(axis=0)
        grad_log_scale = (score * eps * s**scale_factor).mean(axis=0) + 1.0  # + d entropy
        return grad_loc, grad_log_scale

    return fn


def test_a_reparameterised_log_scale_estimator_passes_and_a_biased_one_fails() -> None:
    options: dict[str, Any] = {
        "mode": "statistical",
        "calls": 80,
        "n_problems": 2,
        "n_samples": 4,
        "seed": 11,
    }
    report = verify_elbo_gradient(_reparameterised(), parametrisation=DiagonalLogScale(), **options)
    assert report.cases == 2
    with pytest.raises(AssertionError, match="biased") as info:
        verify_elbo_gradient(
            _reparameterised(scale_factor=0.0), parametrisation=DiagonalLogScale(), **options
        )
    assert "log_scale[" in str(info.value)
    assert "params['log_scale']" in str(info.value)


# ---------------------------------------------------------------------- Custom maps
def _exp_diagonal_cholesky(p: dict[str, np.ndarray]) -> Gaussian:
    raw = p["raw_tril"]
    return Gaussian.from_cholesky(
        mean=p["mu"], scale_tril=np.tril(raw, -1) + np.diag(np.exp(np.diagonal(raw)))
    )


def _exp_diagonal_inverse(q: Gaussian) -> dict[str, np.ndarray]:
    factor = q.scale_tril
    return {"mu": q.mean, "raw_tril": np.tril(factor, -1) + np.diag(np.log(np.diagonal(factor)))}


CUSTOM = Custom(_exp_diagonal_cholesky, _exp_diagonal_inverse, keys=("mu", "raw_tril"))


def _custom_user(forget_exp: bool) -> Any:
    def fn(model: Any, params: dict[str, np.ndarray], x: Any) -> Any:
        q = _exp_diagonal_cholesky(params)
        grad_mean, grad_cov = _closed_forms(model, q, x)
        grad_l = np.tril(2 * grad_cov @ q.scale_tril)
        factor = 1.0 if forget_exp else np.exp(np.diagonal(params["raw_tril"]))
        return {
            "mu": grad_mean,
            "raw_tril": np.tril(grad_l, -1) + np.diag(np.diagonal(grad_l) * factor),
        }

    return fn


def test_a_custom_map_passes_a_correct_gradient_and_fails_a_wrong_one() -> None:
    report = verify_elbo_gradient(_custom_user(False), parametrisation=CUSTOM, **FEW)
    assert "difference error" in report.tolerance
    with pytest.raises(AssertionError, match="raw_tril"):
        verify_elbo_gradient(_custom_user(True), parametrisation=CUSTOM, **FEW)


# ---------------------------------------------------------------------- bad inputs
def test_unknown_and_missing_keys_are_named() -> None:
    with pytest.raises(ValueError, match=r"unknown \['scale'\].*missing \['log_scale'\]"):
        DiagonalLogScale().to_gaussian({"loc": np.zeros(2), "scale": np.ones(2)})


def test_a_wrong_shape_is_named() -> None:
    with pytest.raises(ValueError, match=r"params\['log_scale'\] must have shape \(2,\)"):
        DiagonalLogScale().to_gaussian({"loc": np.zeros(2), "log_scale": np.zeros(3)})
    with pytest.raises(ValueError, match=r"unit_scale_tril.*ones on the diagonal"):
        FullUnitCholeskyScale().to_gaussian(
            {"loc": np.zeros(2), "scale": np.ones(2), "unit_scale_tril": 2 * np.eye(2)}
        )


def test_a_diagonal_map_refuses_a_full_q_and_projects_it() -> None:
    q = Gaussian.from_covariance(mean=np.zeros(2), cov=[[2.0, 0.5], [0.5, 1.0]])
    with pytest.raises(ValueError, match="diagonal"):
        DiagonalLogScale().from_gaussian(q)
    np.testing.assert_allclose(DiagonalLogScale().project(q).variances, [2.0, 1.0])


@pytest.mark.parametrize(
    ("returned", "said"),
    [
        (lambda p: {"loc": p["loc"], "log_scale": p["log_scale"], "x": 0}, "unknown"),
        (lambda p: {"loc": p["loc"]}, "missing"),
        (lambda p: (p["loc"],), "tuple of 2"),
        (lambda p: {"loc": p["loc"], "log_scale": np.zeros((2, 9))}, "must have the shape"),
        (lambda p: {"loc": p["loc"], "log_scale": None}, "None"),
    ],
)
def test_a_malformed_gradient_return_is_named(returned: Any, said: str) -> None:
    with pytest.raises(AssertionError, match=said):
        verify_elbo_gradient(lambda m, p, x: returned(p), parametrisation=DiagonalLogScale(), **FEW)


def test_an_edit_of_params_in_place_is_a_failing_verdict() -> None:
    def edits(model: Any, params: dict[str, np.ndarray], x: Any) -> Any:
        out = _cholesky_user(model, params, x)
        params["loc"] += 1.0
        return out

    with pytest.raises(AssertionError, match=r"params\['loc'\] in place"):
        verify_elbo_gradient(edits, parametrisation=FullCholesky(), **FEW)


def test_bad_parametrisation_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="parametrisation"):
        verify_elbo_gradient(_cholesky_user, parametrisation="log_scale")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scale_transform"):
        FullUnitCholeskyScale("log")
    with pytest.raises(TypeError, match="to_gaussian"):
        Custom(None, _exp_diagonal_inverse, keys=("mu",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keys"):
        Custom(_exp_diagonal_cholesky, _exp_diagonal_inverse, keys="mu")
    with pytest.raises(ValueError, match="batch_shape"):
        verify_elbo_gradient(
            _cholesky_user, parametrisation=FullCholesky(), batch_shape=(2,), **FEW
        )
