"""verify_elbo_gradient(mode='pathwise') and the forms' pathwise gradients.

``ElboForm.pathwise_gradient`` is checked against central differences of
``ElboForm.pathwise_value`` (no gradient formula involved) for every form, q kind,
noise kind and prior kind, and through ``Parametrisation.to_gaussian`` in the user's
parameters. The verifier is then run on gradients written as a user writes them (dense
numpy on the model's public arrays), correct and with the mistakes users make; the
diagnosis must name the mistake, the same for every seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from elbo_check import Gaussian, InvalidInputError, LinearGaussianModel
from elbo_check._random import random_gaussian, random_spd
from elbo_check.testing import verify_elbo_gradient
from elbo_check.testing._forms import FORMS
from elbo_check.testing._parametrisations import (
    DiagonalLogScale,
    FullCholesky,
    FullCovariance,
    FullUnitCholeskyScale,
    Parametrisation,
)

FORM_NAMES = tuple(FORMS)
Q_KINDS = ("isotropic", "diagonal", "full")
NOISE_KINDS = ("isotropic", "diagonal", "full")
PRIOR_KINDS = ("standard", "diagonal", "full")

#: Central differences with step h = 1e-5 (1 + |theta|): truncation ~ h^2 |f'''| and
#: rounding ~ 1e-16 |f| / h stay below this fraction of 1 + |gradient| + term sizes.
FD_RTOL = 1e-6
FEW: dict[str, Any] = {"max_examples": 25}


# ---------------------------------------------------------------------- problems
def make_problem(
    seed: int, noise_kind: str, prior_kind: str, q_kind: str, d: int = 3, k: int = 3
) -> tuple[LinearGaussianModel, Gaussian, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((d, k))
    noise: Any = {
        "isotropic": lambda: float(rng.uniform(0.2, 1.5)),
        "diagonal": lambda: rng.uniform(0.2, 2.0, size=d),
        "full": lambda: random_spd(rng, d, condition_number=8.0, scale=0.5),
    }[noise_kind]()
    if prior_kind == "standard":
        prior = Gaussian.standard(k)
    elif prior_kind == "diagonal":
        prior = Gaussian.from_covariance(
            mean=rng.standard_normal(k), cov=np.diag(rng.uniform(0.5, 2.0, k))
        )
    else:
        prior = random_gaussian(rng, k, condition_number=5.0)
    model = LinearGaussianModel(
        weights=weights, bias=rng.standard_normal(d), prior=prior, noise_cov=noise
    )
    q = random_gaussian(rng, k, condition_number=6.0, cov_scale=0.5)
    if q_kind != "full":
        scales = rng.uniform(0.4, 1.2, k)
        if q_kind == "isotropic":
            scales[:] = scales[0]
        q = Gaussian.from_cholesky(mean=q.mean, scale_tril=np.diag(scales))
    return model, q, rng.standard_normal(d) + model.bias


# ---------------------------------------------------------------------- finite differences
def central(f: Callable[[float], float], value: float) -> float:
    h = 1e-5 * (1.0 + abs(value))
    return (f(h) - f(-h)) / (2 * h)


def differences_in_mean_and_factor(
    form: str, model: LinearGaussianModel, q: Gaussian, x: np.ndarray, eps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Central differences of the form's estimate in m and in each entry of tril(L)."""
    chosen = FORMS[form]
    k = q.dim

    def value(mean: np.ndarray, factor: np.ndarray) -> float:
        moved = Gaussian.from_cholesky(mean=mean, scale_tril=factor)
        return chosen.pathwise_value(model, moved, x, mean + eps @ factor.T)

    def along(direction_m: np.ndarray, direction_l: np.ndarray, size: float) -> float:
        return central(
            lambda h: value(q.mean + h * direction_m, q.scale_tril + h * direction_l), size
        )

    fd_mean = np.array([along(np.eye(k)[i], np.zeros((k, k)), q.mean[i]) for i in range(k)])
    fd_factor = np.zeros((k, k))
    for i, j in zip(*np.tril_indices(k), strict=True):
        step = np.zeros((k, k))
        step[i, j] = 1.0
        fd_factor[i, j] = along(np.zeros(k), step, q.scale_tril[i, j])
    return fd_mean, fd_factor


@pytest.mark.parametrize("form", FORM_NAMES)
@pytest.mark.parametrize("noise_kind", NOISE_KINDS)
@pytest.mark.parametrize("prior_kind", PRIOR_KINDS)
def test_pathwise_gradient_matches_central_differences_of_the_value(
    form: str, noise_kind: str, prior_kind: str
) -> None:
    for seed, q_kind in enumerate(Q_KINDS):
        model, q, x = make_problem(seed, noise_kind, prior_kind, q_kind)
        eps = np.random.default_rng(seed + 10).standard_normal((3, q.dim))
        (gm, gl), (mm, ml) = FORMS[form].pathwise_gradient_with_sizes(model, q, x, eps)
        assert np.array_equal(gl, np.tril(gl))
        fd_mean, fd_factor = differences_in_mean_and_factor(form, model, q, x, eps)
        assert np.all(np.abs(fd_mean - gm) <= FD_RTOL * (1 + np.abs(gm) + mm)), (fd_mean, gm)
        assert np.all(np.abs(fd_factor - gl) <= FD_RTOL * (1 + np.abs(gl) + ml)), (fd_factor, gl)


def test_the_joint_and_analytic_entropy_forms_share_their_pathwise_gradient() -> None:
    """At fixed noise log q(m + L eps) depends on (m, L) only through sum(log diag L)."""
    model, q, x = make_problem(4, "full", "full", "full")
    eps = np.random.default_rng(1).standard_normal((2, 3))
    joint = FORMS["joint"].pathwise_gradient(model, q, x, eps)
    entropy = FORMS["analytic_entropy"].pathwise_gradient(model, q, x, eps)
    kl = FORMS["analytic_kl"].pathwise_gradient(model, q, x, eps)
    np.testing.assert_allclose(joint[0], entropy[0], rtol=1e-12)
    np.testing.assert_allclose(joint[1], entropy[1], rtol=1e-12, atol=1e-12)
    assert np.max(np.abs(joint[0] - kl[0])) > 1e-3


PARAMETRISATIONS: list[Parametrisation] = [
    DiagonalLogScale(),
    FullCholesky(),
    FullUnitCholeskyScale("softplus"),
    FullCovariance(),
]


def difference_in_params(
    form: str,
    par: Parametrisation,
    model: LinearGaussianModel,
    params: dict[str, np.ndarray],
    x: np.ndarray,
    eps: np.ndarray,
    key: str,
    direction: np.ndarray,
    size: float,
) -> float:
    """The central difference of the estimate along ``direction`` of ``params[key]``."""

    def value(h: float) -> float:
        moved = {name: array.copy() for name, array in params.items()}
        moved[key] = moved[key] + h * direction
        g = par.to_gaussian(moved)
        return FORMS[form].pathwise_value(model, g, x, g.mean + eps @ g.scale_tril.T)

    return central(value, size)


@pytest.mark.parametrize("par", PARAMETRISATIONS, ids=repr)
@pytest.mark.parametrize("form", FORM_NAMES)
def test_the_pullback_matches_central_differences_in_the_users_parameters(
    par: Parametrisation, form: str
) -> None:
    model, full, x = make_problem(7, "diagonal", "full", "full")
    params = par.from_gaussian(par.project(full))
    q = par.to_gaussian(params)
    eps = np.random.default_rng(3).standard_normal((2, q.dim))
    expected = par.pullback(params, *FORMS[form].pathwise_gradient(model, q, x, eps))
    kinds = dict(zip(par.keys, par._key_kinds, strict=True))
    for key, array in params.items():
        for index in np.ndindex(*array.shape):
            if (kinds[key] == "lower" and index[1] > index[0]) or (
                kinds[key] == "strict_lower" and index[1] >= index[0]
            ):
                assert expected[key][index] == 0.0
                continue
            direction = np.zeros_like(array)
            direction[index] = 1.0
            if kinds[key] == "symmetric":
                direction[index[::-1]] = 1.0
            fd = difference_in_params(
                form, par, model, params, x, eps, key, direction, float(array[index])
            )
            exact = float(np.sum(expected[key] * direction))
            assert abs(fd - exact) <= FD_RTOL * 10 * (1 + abs(exact)), (key, index, fd, exact)


def gradient_of_value(value: Callable[[np.ndarray, np.ndarray], float], q: Gaussian) -> np.ndarray:
    """Central differences of ``value(m, L)`` at q, flat: m, then tril(L) row by row."""
    k = q.dim

    def along(direction_m: np.ndarray, direction_l: np.ndarray, size: float) -> float:
        return central(
            lambda h: value(q.mean + h * direction_m, q.scale_tril + h * direction_l), size
        )

    out = [along(np.eye(k)[i], np.zeros((k, k)), q.mean[i]) for i in range(k)]
    for i, j in zip(*np.tril_indices(k), strict=True):
        step = np.zeros((k, k))
        step[i, j] = 1.0
        out.append(along(np.zeros(k), step, q.scale_tril[i, j]))
    return np.array(out)


def buggy_values(
    form: str, model: LinearGaussianModel, q: Gaussian, x: np.ndarray, eps: np.ndarray
) -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:
    """Estimates whose exact gradients some suspects claim, as functions of (m, L):
    an independent route to the suspects' closed forms."""
    chosen = FORMS[form]

    def at(mean: np.ndarray, factor: np.ndarray) -> Gaussian:
        return Gaussian.from_cholesky(mean=mean, scale_tril=factor)

    def sticking(mean: np.ndarray, factor: np.ndarray) -> float:
        z = mean + eps @ factor.T  # log q's own parameters frozen at q
        return float(np.mean(model.log_joint(x, z) - q.log_prob(z)))

    def unscaled(mean: np.ndarray, factor: np.ndarray) -> float:
        return chosen.pathwise_value(model, at(mean, factor), x, mean + eps)

    def sampled_only(mean: np.ndarray, factor: np.ndarray) -> float:
        z = mean + eps @ factor.T
        sampled = model.log_likelihood(x, z)
        if form != "analytic_kl":
            sampled = sampled + model.prior.log_prob(z)
        return float(np.mean(sampled))

    return {
        "sticking the landing": sticking,
        "the noise is not scaled": unscaled,
        "is missing": sampled_only,
    }


@pytest.mark.parametrize("form", FORM_NAMES)
@pytest.mark.parametrize("q_kind", ["diagonal", "full"])
def test_the_gradient_suspects_are_gradients_of_the_buggy_estimates(form: str, q_kind: str) -> None:
    """Each suspect's closed form equals central differences of the estimate it claims
    (log q's parameters frozen, z = m + eps, the analytic term dropped); none fits the
    correct gradient."""
    model, q, x = make_problem(11, "full", "full", q_kind)
    eps = np.random.default_rng(12).standard_normal((3, q.dim))
    suspects = FORMS[form].pathwise_gradient_suspects()
    correct = np.concatenate(
        [
            FORMS[form].pathwise_gradient(model, q, x, eps)[0],
            FORMS[form].pathwise_gradient(model, q, x, eps)[1][np.tril_indices(q.dim)],
        ]
    )
    for label, value in buggy_values(form, model, q, x, eps).items():
        (suspect,) = [s for s in suspects if label in s.name]
        predicted = np.asarray(suspect.predict(model, q, x, eps))
        numeric = gradient_of_value(value, q)
        assert np.allclose(predicted, numeric, rtol=1e-6, atol=1e-6), (label, predicted, numeric)
    for suspect in suspects:
        predicted = np.asarray(suspect.predict(model, q, x, eps))
        same = np.allclose(predicted, correct, rtol=1e-9, atol=1e-9)
        # The joint and analytic-entropy forms share their pathwise gradient.
        assert (
            not same
            or "analytic-entropy form" in suspect.name
            or ("the joint form" in suspect.name)
        ), suspect.name


# ---------------------------------------------------------------------- a user's code
def noise_matrix(model: LinearGaussianModel) -> np.ndarray:
    noise = np.asarray(model.noise_cov, dtype=float)
    if noise.ndim == 0:
        return float(noise) * np.eye(model.data_dim)
    return np.diag(noise) if noise.ndim == 1 else noise


def user_gradient(
    form: str,
    model: LinearGaussianModel,
    mean: np.ndarray,
    factor: np.ndarray,
    x: np.ndarray,
    eps: np.ndarray,
    bug: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The gradient in (m, L) of ``form``'s estimate at noise ``eps``, as a user derives it."""
    n = eps.shape[0]
    z = mean + eps @ factor.T
    w, s0, mu0 = model.weights, model.prior.cov, model.prior.mean
    likelihood = np.linalg.solve(noise_matrix(model), (x - model.bias - z @ w.T).T).T @ w
    prior = -np.linalg.solve(s0, (z - mu0).T).T
    log_scale = np.diag(1.0 / np.diag(factor))
    if form == "analytic_kl":
        grad_mean = likelihood.mean(axis=0)
        grad_factor = np.tril(likelihood.T @ eps / n)
        if bug != "no_analytic":
            grad_mean = grad_mean - np.linalg.solve(s0, mean - mu0)
            grad_factor = grad_factor - np.tril(np.linalg.solve(s0, factor)) + log_scale
        return grad_mean, grad_factor
    scores = likelihood + prior
    if bug == "stl":  # -log q's path gradient L^-T eps, its score term detached
        scores = scores + np.linalg.solve(factor.T, eps.T).T
    grad_factor = np.tril((eps.T @ scores if bug == "transposed_outer" else scores.T @ eps) / n)
    if bug not in ("stl", "no_analytic"):
        grad_factor = grad_factor + log_scale
    return scores.mean(axis=0), grad_factor


def pathwise(form: str, bug: str | None = None) -> Callable[..., Any]:
    def fn(model: LinearGaussianModel, q: Gaussian, x: np.ndarray, eps: np.ndarray) -> Any:
        return user_gradient(form, model, q.mean, q.scale_tril, x, eps, bug)

    return fn


def statistical(form: str, bug: str | None = None) -> Callable[..., Any]:
    def fn(model: LinearGaussianModel, q: Gaussian, x: np.ndarray, rng: Any, n: int) -> Any:
        eps = rng.standard_normal((n, q.dim))
        return user_gradient(form, model, q.mean, q.scale_tril, x, eps, bug)

    return fn


def log_scale_user(form: str) -> Callable[..., Any]:
    def fn(model: LinearGaussianModel, params: dict[str, np.ndarray], x: Any, eps: Any) -> Any:
        scale = np.exp(params["log_scale"])
        gm, gl = user_gradient(form, model, params["loc"], np.diag(scale), x, eps)
        return {"loc": gm, "log_scale": np.diag(gl) * scale}

    return fn


def cholesky_user(form: str) -> Callable[..., Any]:
    def fn(model: LinearGaussianModel, params: dict[str, np.ndarray], x: Any, eps: Any) -> Any:
        gm, gl = user_gradient(form, model, params["loc"], params["scale_tril"], x, eps)
        return (gm, gl)  # a tuple in the order of FullCholesky().keys

    return fn


def diagnosis(failure: pytest.ExceptionInfo[AssertionError]) -> str:
    return "\n".join(line for line in str(failure.value).splitlines() if "Diagnosis" in line)


# ---------------------------------------------------------------------- correct code
@pytest.mark.parametrize("form", FORM_NAMES)
def test_a_correct_pathwise_gradient_passes_for_every_form(form: str) -> None:
    report = verify_elbo_gradient(pathwise(form), mode="pathwise", form=form, **FEW)
    assert report.cases == FEW["max_examples"]
    assert report.details["form"] == form
    assert "mode='pathwise'" in report.check
    assert "magnitude" in report.tolerance


@pytest.mark.parametrize("form", ["joint", "analytic_kl"])
@pytest.mark.parametrize(
    ("par", "user"), [(DiagonalLogScale(), log_scale_user), (FullCholesky(), cholesky_user)]
)
def test_a_correct_pathwise_gradient_passes_in_the_users_parameters(
    form: str, par: Parametrisation, user: Callable[[str], Any]
) -> None:
    report = verify_elbo_gradient(
        user(form), mode="pathwise", form=form, parametrisation=par, **FEW
    )
    assert repr(par) in report.check


def test_sticking_the_landing_passes_the_statistical_mode() -> None:
    report = verify_elbo_gradient(
        statistical("joint", "stl"), mode="statistical", calls=120, n_problems=2, seed=2
    )
    assert 0.0 < report.worst_error < 1.0


# ---------------------------------------------------------------------- wrong code
PATHWISE_BUGS = [
    ("joint", "joint", "stl", "sticking the landing"),
    ("analytic_kl", "joint", None, "fn returns the gradient of the analytic-KL form"),
    ("joint", "analytic_kl", None, "fn returns the gradient of the joint form"),
    ("analytic_entropy", "analytic_entropy", "no_analytic", "the entropy's gradient"),
    ("joint", "joint", "no_analytic", "the gradient of -log q(z), diag(1 / L_ii), is missing"),
    ("analytic_kl", "analytic_kl", "no_analytic", "the KL's gradient is missing"),
    ("analytic_entropy", "analytic_entropy", "transposed_outer", "outer product"),
]


@pytest.mark.parametrize(("written", "checked", "bug", "named"), PATHWISE_BUGS)
def test_a_wrong_pathwise_gradient_fails_with_its_mistake_named(
    written: str, checked: str, bug: str | None, named: str
) -> None:
    with pytest.raises(AssertionError, match="<-- off") as failure:
        verify_elbo_gradient(pathwise(written, bug), mode="pathwise", form=checked, **FEW)
    assert named in diagnosis(failure), str(failure.value)


@pytest.mark.parametrize(
    ("bug", "named"),
    [
        ("no_analytic", "the entropy's gradient"),
        ("no_chain_rule", "the chain rule's factor d scale / d log_scale is missing"),
    ],
)
def test_a_wrong_pathwise_gradient_in_log_scales_is_named(bug: str, named: str) -> None:
    def wrong(model: Any, params: dict[str, np.ndarray], x: Any, eps: Any) -> Any:
        scale = np.exp(params["log_scale"])
        gm, gl = user_gradient(
            "analytic_entropy", model, params["loc"], np.diag(scale), x, eps, bug
        )
        return {"loc": gm, "log_scale": np.diag(gl) * (1.0 if bug == "no_chain_rule" else scale)}

    with pytest.raises(AssertionError, match="log_scale") as failure:
        verify_elbo_gradient(
            wrong,
            mode="pathwise",
            form="analytic_entropy",
            parametrisation=DiagonalLogScale(),
            **FEW,
        )
    assert named in diagnosis(failure), str(failure.value)


# ---------------------------------------------------------------------- the arguments
@pytest.mark.parametrize("mode", ["exact", "statistical", "pathwise"])
def test_a_bad_form_is_refused_in_every_mode_before_fn_is_called(mode: str) -> None:
    calls: list[int] = []

    def fn(*args: Any) -> Any:
        calls.append(1)
        return None

    with pytest.raises(InvalidInputError, match="form must be one of 'joint'") as refused:
        verify_elbo_gradient(fn, mode=mode, form="kl")
    assert "got form='kl'" in str(refused.value)
    assert not calls


def test_a_bad_mode_names_the_modes() -> None:
    with pytest.raises(InvalidInputError) as refused:
        verify_elbo_gradient(pathwise("joint"), mode="reparameterised")
    message = str(refused.value)
    assert "'exact', 'statistical', 'pathwise'" in message
    assert "got mode='reparameterised'" in message


def test_stochastic_is_a_deprecated_name_of_statistical() -> None:
    options: dict[str, Any] = {"calls": 80, "n_problems": 1, "seed": 5}
    with pytest.warns(DeprecationWarning, match="mode='statistical'") as caught:
        old = verify_elbo_gradient(statistical("joint"), mode="stochastic", **options)
    assert caught[0].filename == __file__  # points at the caller
    new = verify_elbo_gradient(statistical("joint"), mode="statistical", **options)
    assert old == new
    assert new.check == "verify_elbo_gradient(mode='statistical')"


def test_the_form_is_recorded_in_the_exact_and_statistical_modes() -> None:
    def exact(model: Any, q: Gaussian, x: Any) -> Any:
        g = model.elbo_grad_variational(q, x)
        return g.mean, g.scale_tril

    report = verify_elbo_gradient(exact, form="analytic_kl", max_examples=5)
    assert report.details["form"] == "analytic_kl"
    report = verify_elbo_gradient(
        statistical("analytic_kl"),
        mode="statistical",
        form="analytic_entropy",
        calls=80,
        n_problems=1,
    )
    assert report.details["form"] == "analytic_entropy"


def test_a_missing_kl_gradient_is_named_in_the_statistical_mode() -> None:
    with pytest.raises(AssertionError, match="biased") as failure:
        verify_elbo_gradient(
            statistical("analytic_kl", "no_analytic"),
            mode="statistical",
            form="analytic_kl",
            calls=80,
            n_problems=1,
        )
    assert "the KL's gradient is missing" in diagnosis(failure), str(failure.value)


# ---------------------------------------------------------------------- seed independence
def gradient_wrt_covariance(model: Any, q: Gaussian, x: Any) -> Any:
    """dELBO/dS = (S^-1 - Lambda) / 2 returned where dELBO/dL belongs."""
    g = model.elbo_grad_variational(q, x)
    inverse = np.linalg.inv(q.cov)
    return g.mean, 0.5 * (inverse - model.posterior_precision)


SEEDED = [
    ("exact", gradient_wrt_covariance, {}, "the covariance S is returned for L"),
    ("pathwise", pathwise("joint", "no_analytic"), {}, "diag(1 / L_ii), is missing"),
    (
        "statistical",
        statistical("joint", "no_analytic"),
        {"calls": 120, "n_problems": 1, "n_samples": 32},
        "diag(1 / L_ii) is missing",
    ),
]


@pytest.mark.parametrize(("mode", "fn", "options", "named"), SEEDED, ids=[s[0] for s in SEEDED])
def test_the_names_do_not_depend_on_the_seed(
    mode: str, fn: Any, options: dict[str, Any], named: str
) -> None:
    seen = set()
    for seed in range(4):
        with pytest.raises(AssertionError) as failure:
            verify_elbo_gradient(fn, mode=mode, seed=seed, max_examples=25, **options)
        text = diagnosis(failure)
        assert named in text, str(failure.value)
        seen.add(text)
    assert len(seen) == 1, seen
