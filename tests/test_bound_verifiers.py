"""verify_iwae_estimator / verify_renyi_estimator / verify_iwae_gradient /
verify_renyi_gradient: the reference draws checked by independent routes, correct
estimators pass, every catalogued bug is caught and named, held-out bugs are caught."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from scipy.special import logsumexp, softmax

import elbo_check as ec
from elbo_check.testing import (
    DiagonalLogScale,
    verify_iwae_estimator,
    verify_iwae_gradient,
    verify_renyi_estimator,
    verify_renyi_gradient,
)
from elbo_check.testing._bound_reference import (
    COEFFICIENTS,
    combine,
    flat_gradient_estimates,
    gradient_pieces,
    log_weights,
    renyi_estimates,
    samples,
)
from elbo_check.testing._bound_suspects import bound_suspects, gradient_suspects

FAST = {"n_problems": 1, "calls": 160, "seed": 3}


def _problem(seed: int = 0) -> tuple[ec.LinearGaussianModel, ec.Gaussian, np.ndarray]:
    rng = np.random.default_rng(seed)
    model = ec.ppca(
        weights=rng.standard_normal((4, 2)), mean=rng.standard_normal(4), noise_variance=0.5
    )
    x = rng.standard_normal(4)
    post = model.posterior(x)
    q = ec.Gaussian.from_covariance(mean=post.mean + 0.3, cov=0.7 * post.cov + 0.05 * np.eye(2))
    return model, q, x


#: Two fixed problems for the catalogue tests (no search, no shrinking: fast).
PROBLEMS = [_problem(0), _problem(1)]


# ---------------------------------------------------------------------- user-style code
def _log_w(model, q, x, eps):
    z = q.mean + eps @ q.scale_tril.T
    return z, model.log_joint(x, z) - q.log_prob(z)


def iwae(model, q, x, rng, k):
    return iwae_at(model, q, x, rng.standard_normal((k, q.dim)))


def iwae_at(model, q, x, eps):
    _, log_w = _log_w(model, q, x, eps)
    return logsumexp(log_w) - math.log(len(eps))


def renyi_user(alpha):
    def estimate(model, q, x, rng, k):
        _, log_w = _log_w(model, q, x, rng.standard_normal((k, q.dim)))
        return (logsumexp((1 - alpha) * log_w) - math.log(k)) / (1 - alpha)

    return estimate


def _path(model, q, z):
    """grad_z log p(x, z) - grad_z log q(z) by dense solves (as a user would)."""
    prior, noise = model.prior, model.dense_noise_cov()

    def rows(cov, v):
        return np.linalg.solve(cov, v.T).T

    return lambda x: (
        rows(noise, x - model.bias - z @ model.weights.T) @ model.weights
        - rows(prior.cov, z - prior.mean)
        + rows(q.cov, z - q.mean)
    )


def user_gradient(estimator, alpha=0.0):
    """The four estimators written from their papers' formulas, at given noise."""

    def at(model, q, x, eps):
        z, log_w = _log_w(model, q, x, eps)
        path = _path(model, q, z)(x)
        w = softmax((1 - alpha) * log_w)
        inv_t = np.linalg.inv(q.scale_tril).T
        score_m = eps @ inv_t.T  # L^{-T} eps_k as rows
        score_l = np.stack([np.tril(inv_t @ (np.outer(e, e) - np.eye(q.dim))) for e in eps])
        path_l = np.stack([np.tril(np.outer(p, e)) for p, e in zip(path, eps, strict=True)])
        if estimator == "reparameterised":
            a, b = w, -w
        elif estimator == "stl":
            a, b = w, 0 * w
        elif estimator == "dreg":
            a, b = w**2, 0 * w
        else:  # vimco
            n = len(log_w)
            full = logsumexp(log_w)
            base = np.array(
                [
                    full
                    - logsumexp(
                        np.where(np.arange(n) == j, (log_w.sum() - log_w[j]) / (n - 1), log_w)
                    )
                    for j in range(n)
                ]
            )
            a, b = 0 * w, base - w
        return a @ path + b @ score_m, np.einsum("n,nij->ij", a, path_l) + np.einsum(
            "n,nij->ij", b, score_l
        )

    def statistical(model, q, x, rng, k):
        return at(model, q, x, rng.standard_normal((k, q.dim)))

    return statistical, at


def _from_coefficients(coefficients, alpha):
    def at(model, q, x, eps):
        flat = combine(
            gradient_pieces(model, q, x, eps),
            coefficients(log_weights(model, q, x, samples(q, eps)), alpha),
        )
        k = q.dim
        grad_l = np.zeros((k, k))
        grad_l[np.tril_indices(k)] = flat[k:]
        return flat[:k], grad_l

    def statistical(model, q, x, rng, k):
        return at(model, q, x, rng.standard_normal((k, q.dim)))

    return statistical, at


# ---------------------------------------------------------------------- reference
@pytest.mark.parametrize("alpha", [0.0, 0.5, -1.0, 1.0, 2.0])
def test_reparameterised_gradient_is_the_derivative_of_the_estimate(alpha):
    model, q, x = _problem()
    eps = np.random.default_rng(1).standard_normal((5, 2))
    got = flat_gradient_estimates(model, q, x, eps, alpha, "reparameterised")

    def estimate(m, factor):
        g = ec.Gaussian.from_cholesky(mean=m, scale_tril=factor)
        return float(renyi_estimates(log_weights(model, g, x, samples(g, eps)), alpha))

    h, numeric = 1e-6, []
    for i in range(2):
        step = np.eye(2)[i] * h
        numeric.append(
            (estimate(q.mean + step, q.scale_tril) - estimate(q.mean - step, q.scale_tril))
            / (2 * h)
        )
    for i, j in zip(*np.tril_indices(2), strict=True):
        step = np.zeros((2, 2))
        step[i, j] = h
        numeric.append(
            (estimate(q.mean, q.scale_tril + step) - estimate(q.mean, q.scale_tril - step))
            / (2 * h)
        )
    np.testing.assert_allclose(got, numeric, atol=2e-7, rtol=1e-6)


def test_reference_expectations_by_monte_carlo():
    """k = 1: every estimator's mean is the exact ELBO gradient; k = 5: reparameterised,
    DReG and VIMCO share one mean and STL's differs (z-scores, 2e5 draws; |z| < 5 fails
    a correct reference with probability below 1e-5 per coordinate)."""
    model, q, x = _problem()
    rng = np.random.default_rng(7)
    exact = model.elbo_grad_variational(q, x)
    target = np.concatenate([exact.mean, exact.scale_tril[np.tril_indices(2)]])
    eps = rng.standard_normal((200_000, 1, 2))
    for estimator in ("reparameterised", "stl", "dreg"):
        draws = flat_gradient_estimates(model, q, x, eps, 0.0, estimator)
        z = (draws.mean(0) - target) / (draws.std(0) / math.sqrt(len(draws)))
        assert np.all(np.abs(z) < 5), (estimator, z)
    eps = rng.standard_normal((40_000, 5, 2))
    dreg = flat_gradient_estimates(model, q, x, eps, 0.0, "dreg")
    for estimator in ("reparameterised", "vimco", "stl"):
        draws = flat_gradient_estimates(model, q, x, eps, 0.0, estimator)
        diff = draws - dreg
        z = diff.mean(0) / (diff.std(0) / math.sqrt(len(diff)))
        if estimator == "stl":
            assert np.max(np.abs(z)) > 20  # biased for k > 1
        else:
            assert np.all(np.abs(z) < 5), (estimator, z)


def test_exactness_at_the_posterior():
    model, _, x = _problem()
    post = model.posterior(x)
    eps = np.random.default_rng(2).standard_normal((10, 6, 2))
    for alpha in (0.0, 0.5, -1.0):
        values = renyi_estimates(log_weights(model, post, x, samples(post, eps)), alpha)
        np.testing.assert_allclose(values, model.log_evidence(x), rtol=0, atol=1e-13)
    for estimator in ("stl", "dreg"):
        assert np.max(np.abs(flat_gradient_estimates(model, post, x, eps, 0.0, estimator))) < 1e-12
    assert (
        np.max(np.abs(flat_gradient_estimates(model, post, x, eps, 0.0, "reparameterised"))) > 0.1
    )


# ---------------------------------------------------------------------- correct code passes
@pytest.mark.parametrize("seed", range(3))
def test_correct_iwae_passes_across_seeds(seed):
    report = verify_iwae_estimator(iwae, k=5, n_problems=2, calls=160, seed=seed)
    assert report.worst_error <= 1
    assert report.details["posterior_checked"]


@pytest.mark.parametrize("alpha", [0.5, -1.0, 2.0, 1.0])
def test_correct_renyi_passes(alpha):
    report = verify_renyi_estimator(
        renyi_user(alpha) if alpha != 1 else _mean_log_w, alpha=alpha, k=4, **FAST
    )
    assert report.details["alpha"] == alpha


def _mean_log_w(model, q, x, rng, k):
    return float(np.mean(_log_w(model, q, x, rng.standard_normal((k, q.dim)))[1]))


def test_pathwise_value_passes():
    verify_iwae_estimator(iwae_at, k=3, mode="pathwise", max_examples=40, seed=0)


@pytest.mark.parametrize("estimator", ["reparameterised", "stl", "dreg", "vimco"])
def test_correct_gradients_pass(estimator):
    statistical, at = user_gradient(estimator)
    verify_iwae_gradient(statistical, k=4, estimator=estimator, **FAST)
    verify_iwae_gradient(at, k=4, estimator=estimator, mode="pathwise", max_examples=25, seed=0)


def test_renyi_gradient_in_a_parametrisation():
    par = DiagonalLogScale()

    def at(model, params, x, eps):
        q = par.to_gaussian(params)
        gm, gl = user_gradient("reparameterised", alpha=0.5)[1](model, q, x, eps)
        return par.pullback(params, gm, gl)

    verify_renyi_gradient(
        at, alpha=0.5, k=3, parametrisation=par, mode="pathwise", max_examples=25, seed=0
    )


# ---------------------------------------------------------------------- the catalogue
@pytest.mark.parametrize("alpha", [0.0, 0.5, -1.0])
def test_every_value_suspect_is_caught_and_named(alpha):
    k = 4
    for suspect in bound_suspects(alpha, k):

        def at(model, q, x, eps, s=suspect):
            return float(s.estimate(log_weights(model, q, x, samples(q, eps))))

        with pytest.raises(AssertionError, match="Diagnosis") as info:
            verify_renyi_estimator(at, alpha=alpha, k=k, mode="pathwise", problems=PROBLEMS, seed=1)
        assert suspect.name in str(info.value), (suspect.name, str(info.value)[-400:])


@pytest.mark.parametrize("name", ["missing_log_k", "losses"])
def test_value_suspects_named_in_statistical_mode(name):
    def missing_log_k(model, q, x, rng, k):
        return iwae(model, q, x, rng, k) + math.log(k)

    def losses(model, q, x, rng, k):
        _, log_w = _log_w(model, q, x, rng.standard_normal((k, q.dim)))
        return -(logsumexp(-log_w) - math.log(k))

    fn = {"missing_log_k": missing_log_k, "losses": losses}[name]
    expected = {"missing_log_k": "-log n", "losses": "losses -log w"}[name]
    with pytest.raises(AssertionError, match=expected):
        verify_iwae_estimator(fn, k=5, **FAST)


@pytest.mark.parametrize("estimator", ["reparameterised", "stl", "dreg", "vimco"])
def test_every_gradient_suspect_is_caught_and_named(estimator):
    for suspect in gradient_suspects(estimator, 0.0, 4):
        _, at = _from_coefficients(suspect.coefficients, 0.0)
        with pytest.raises(AssertionError) as info:
            verify_iwae_gradient(
                at, k=4, estimator=estimator, mode="pathwise", problems=PROBLEMS, seed=1
            )
        assert suspect.name in str(info.value), (suspect.name, str(info.value)[-400:])


def test_gradient_suspects_named_in_statistical_mode():
    undetached = gradient_suspects("reparameterised", 0.0, 4)[0]
    statistical, _ = _from_coefficients(undetached.coefficients, 0.0)
    with pytest.raises(AssertionError, match="not detached in the surrogate"):
        verify_iwae_gradient(statistical, k=4, **FAST)
    # q's parameters live in log q(z) under DReG's squared weights
    kept = gradient_suspects("dreg", 0.0, 4)[0]
    statistical, _ = _from_coefficients(kept.coefficients, 0.0)
    with pytest.raises(AssertionError, match="score term is kept"):
        verify_iwae_gradient(statistical, k=4, estimator="dreg", **FAST)
    # the plain reparameterised gradient declared as DReG: same mean, other distribution
    statistical, _ = _from_coefficients(COEFFICIENTS["reparameterised"], 0.0)
    with pytest.raises(AssertionError, match="distribution differs"):
        verify_iwae_gradient(statistical, k=4, estimator="dreg", **FAST)


def test_unbiased_noise_is_caught_at_the_posterior():
    """Zero-mean noise added to a correct estimate: invisible to the mean test, caught
    by the exact check at q = p(z|x)."""

    def noisy(model, q, x, rng, k):
        return iwae(model, q, x, rng, k) + 1e-4 * rng.standard_normal()

    with pytest.raises(AssertionError, match="q = p\\(z\\|x\\)"):
        verify_iwae_estimator(noisy, k=5, **FAST)


# ---------------------------------------------------------------------- held-out bugs
def _held_out_value_bugs():
    def shared_draw(model, q, x, eps):  # one z repeated k times
        return iwae_at(model, q, x, np.repeat(eps[:1], len(eps), axis=0))

    def prior_as_q(model, q, x, eps):  # weights p(x|z) instead of p(x,z)/q(z)
        z = q.mean + eps @ q.scale_tril.T
        return logsumexp(model.log_likelihood(x, z)) - math.log(len(eps))

    def cov_as_scale(model, q, x, eps):
        z = q.mean + eps @ q.cov.T
        return logsumexp(model.log_joint(x, z) - q.log_prob(z)) - math.log(len(eps))

    def mean_of_weights_log(model, q, x, eps):  # log of k, not of 1/k, sign slip
        return iwae_at(model, q, x, eps) + 2 * math.log(len(eps))

    def half_weights(model, q, x, eps):  # log w / 2 inside the logsumexp
        _, log_w = _log_w(model, q, x, eps)
        return logsumexp(0.5 * log_w) - math.log(len(eps))

    return [shared_draw, prior_as_q, cov_as_scale, mean_of_weights_log, half_weights]


def test_held_out_value_bugs_are_caught(capsys):
    """Bugs kept out of the catalogue's design: each is caught; the count the diagnosis
    names (a suspect) or describes usefully (a log(k) multiple, a constant, a factor) is
    printed, not asserted."""
    named = described = 0
    bugs = _held_out_value_bugs()
    for bug in bugs:
        with pytest.raises(AssertionError) as info:
            verify_iwae_estimator(bug, k=4, mode="pathwise", problems=PROBLEMS, seed=2)
        text = str(info.value)
        named += "no known bug matches" not in text
        described += "log(k)" in text or "constant" in text or "times" in text
    with capsys.disabled():
        print(
            f"\nheld-out IWAE value bugs: {len(bugs)} caught, {named} named, "
            f"{described} described by the gap"
        )


# ---------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: verify_renyi_estimator(iwae, alpha=float("nan")), "alpha must be a finite"),
        (lambda: verify_iwae_estimator(iwae, k=0), "k must be an integer >= 1"),
        (lambda: verify_iwae_estimator(iwae, mode="exact"), "mode must be"),
        (lambda: verify_iwae_gradient(iwae, estimator="score"), "estimator must be one of"),
        (lambda: verify_renyi_gradient(iwae, alpha=0.5, estimator="dreg"), "alpha=0"),
        (lambda: verify_iwae_gradient(iwae, k=1, estimator="vimco"), "k >= 2"),
        (lambda: verify_iwae_gradient(iwae, calls=10), "calls"),
        (lambda: verify_iwae_estimator(iwae, false_alarm_rate=2.0), "false_alarm_rate"),
    ],
)
def test_bad_options_are_refused(call, match):
    with pytest.raises(ec.InvalidInputError, match=match):
        call()


def test_bad_parametrisation_type():
    with pytest.raises(ec.InvalidTypeError, match="parametrisation"):
        verify_iwae_gradient(iwae, parametrisation="diagonal")


# ---------------------------------------------------------------------- batches
def _batched_log_w(model, q, x, eps):
    z = q.mean + np.einsum("bij,kbj->kbi", q.scale_tril, eps)
    return model.log_joint(x, z) - q.log_prob(z)  # (k, B)


def batched_iwae_at(model, q, x, eps, axis=0):
    log_w = _batched_log_w(model, q, x, eps)
    return logsumexp(log_w, axis=axis) - math.log(log_w.shape[axis])


def batched_iwae(model, q, x, rng, k, axis=0):
    return batched_iwae_at(model, q, x, rng.standard_normal((k, *q.mean.shape)), axis)


def test_batched_iwae_passes():
    report = verify_iwae_estimator(batched_iwae, k=3, batch_size=4, **FAST)
    assert report.details["members"] == 4
    verify_iwae_estimator(
        batched_iwae_at, k=3, batch_size=2, mode="pathwise", max_examples=20, seed=0
    )


@pytest.mark.parametrize(("k", "size"), [(3, 4), (4, 4)])
@pytest.mark.parametrize("mode", ["statistical", "pathwise"])
def test_log_mean_exp_over_the_batch_axis_is_named(k, size, mode):
    fn = (
        functools.partial(batched_iwae, axis=1)
        if mode == "statistical"
        else functools.partial(batched_iwae_at, axis=1)
    )
    options = FAST if mode == "statistical" else {"max_examples": 20, "seed": 0}
    with pytest.raises(AssertionError, match="batch axis instead of the sample axis"):
        verify_iwae_estimator(fn, k=k, batch_size=size, mode=mode, **options)


def test_batched_members_are_checked_at_their_posteriors():
    def noisy(model, q, x, rng, k):
        return batched_iwae(model, q, x, rng, k) + 1e-4 * rng.standard_normal(len(x))

    with pytest.raises(AssertionError, match="q_b = p\\(z\\|x_b\\)"):
        verify_iwae_estimator(noisy, k=3, batch_size=3, **FAST)


# ---------------------------------------------------------------------- held-out gradients
def _held_out_gradient(variant):
    """DReG (or reparameterised) gradients with a bug kept out of the catalogue's design."""

    def at(model, q, x, eps):
        z, log_w = _log_w(model, q, x, eps)
        prior, noise = model.prior, model.dense_noise_cov()
        likelihood = np.linalg.solve(noise, (x - model.bias - z @ model.weights.T).T).T
        likelihood = likelihood @ model.weights
        prior_score = -np.linalg.solve(prior.cov, (z - prior.mean).T).T
        q_score = np.linalg.solve(q.cov, (z - q.mean).T).T
        path = likelihood + (0 if variant == "no_prior_score" else prior_score) + q_score
        w = softmax(model.log_joint(x, z) if variant == "weights_from_joint" else log_w)
        a = w**2
        if variant == "renormalised_squares":
            a = a / a.sum()
        if variant == "transposed_outer":
            path_l = np.stack([np.tril(np.outer(e, p)) for p, e in zip(path, eps, strict=True)])
        else:
            path_l = np.stack([np.tril(np.outer(p, e)) for p, e in zip(path, eps, strict=True)])
        return a @ path, np.einsum("n,nij->ij", a, path_l)

    return at


def test_held_out_gradient_bugs_are_caught(capsys):
    variants = ["no_prior_score", "weights_from_joint", "renormalised_squares", "transposed_outer"]
    named = 0
    for variant in variants:
        with pytest.raises(AssertionError) as info:
            verify_iwae_gradient(
                _held_out_gradient(variant),
                k=4,
                estimator="dreg",
                mode="pathwise",
                problems=PROBLEMS,
                seed=2,
            )
        named += "no known bug matches" not in str(info.value)
    with capsys.disabled():
        print(f"\nheld-out DReG gradient bugs: {len(variants)} caught, {named} named")


def test_means_only_when_the_sampler_differs():
    """distribution_test=False (for a sampler other than z = m + L eps): only the means
    are tested, and the report says so."""
    statistical, _ = user_gradient("dreg")
    options = {"k": 4, "estimator": "dreg", "n_problems": 1, "calls": 160, "seed": 0}
    report = verify_iwae_gradient(statistical, distribution_test=False, **options)
    assert report.details["ks_level"] is None
    assert "Kolmogorov" not in report.tolerance
    with pytest.raises(ec.InvalidTypeError, match="distribution_test"):
        verify_iwae_gradient(statistical, distribution_test="no", **options)
