"""verify_minibatch_elbo: subsampled estimators of the dataset ELBO, local and global latents.

The estimators are the catalogue of ``tests/buggy_minibatch.py`` (plain numpy, written
as a user would). Correct ones pass on three seeds; every bug is caught and its
diagnosis names the misplaced N/M factor. The exact target and the balanced design are
checked independently: the dataset ELBO against a loop over rows, the design mean
against all C(N, M) batches.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
from buggy_minibatch import (
    BUGS,
    CORRECT,
    Implementation,
    local_elbo,
    local_kl_unscaled,
    regression_elbo,
    regression_log_lik,
    regression_unscaled,
)

from elbo_check import Gaussian, InvalidInputError, LinearGaussianModel
from elbo_check.testing import verify_minibatch_elbo
from elbo_check.testing._minibatch import Setting, balanced_batches, make_problem

#: Few problems and the fewest designs: every statistical call well under a second.
FAST = {"n_problems": 2, "calls": 240}
KINDS: dict[str, Any] = {
    "noise": ("isotropic", "diagonal"),
    "prior": ("standard", "diagonal", "general"),
    "q": ("full", "diagonal", "isotropic"),
}


def _options(impl: Implementation) -> dict[str, Any]:
    return FAST if impl.mode == "statistical" else {}


# ---------------------------------------------------------------------- the catalogue
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("impl", CORRECT, ids=[i.name for i in CORRECT])
def test_correct_estimators_pass(impl: Implementation, seed: int) -> None:
    report = impl.verify(seed=seed, **_options(impl))
    assert report.worst_error <= 1.0
    assert report.details["dataset_size"] == 12
    assert report.details["batch_size"] == 4


@pytest.mark.parametrize("impl", BUGS, ids=[i.name for i in BUGS])
def test_every_bug_is_caught_and_named(impl: Implementation) -> None:
    assert impl.diagnosis is not None
    with pytest.raises(AssertionError) as caught:
        impl.verify(seed=0, **_options(impl))
    message = str(caught.value)
    assert impl.diagnosis in message, message
    assert "Diagnosis: no known bug" not in message


def test_a_failure_lists_the_numbers() -> None:
    bug = next(b for b in BUGS if b.name.startswith("global unscaled"))
    with pytest.raises(AssertionError) as caught:
        bug.verify(seed=0)
    message = str(caught.value)
    for part in (
        "failed (seed=0; problem",
        "N = 12 scalar observations",
        "batches of M = 4 rows (N/M = 3)",
        "expected",
        "got",
        "gap (got - expected)",
        "tolerance",
        "exact terms over all 12 rows",
        "the textbook estimate there is",
        "per-batch factors fitted over 4 problems",
        "Fix: multiply the batch's summed log-likelihood by N/M",
    ):
        assert part in message, part


# ---------------------------------------------------------------------- the exact target
@pytest.mark.parametrize("latent", ["local", "global"])
@pytest.mark.parametrize("index", [0, 1, 2])
def test_balanced_design_mean_is_the_mean_over_all_batches(latent: str, index: int) -> None:
    n, m = 6, 2
    setting = Setting(n, m, latent, "sum")
    problem = make_problem(7, index, setting, False, KINDS)
    estimators = (
        (regression_elbo, regression_unscaled)
        if latent == "global"
        else (local_elbo, local_kl_unscaled)
    )
    for estimate in estimators:
        every = [
            estimate(*problem.arguments(np.array(rows)))
            for rows in itertools.combinations(range(n), m)
        ]
        assert len(every) == math.comb(n, m)
        for k in range(3):
            order = np.random.default_rng(k).permutation(n)
            design = [estimate(*problem.arguments(rows)) for rows in balanced_batches(order, m)]
            assert np.mean(design) == pytest.approx(np.mean(every), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize(("n", "m"), [(6, 2), (7, 3), (5, 5), (4, 1), (12, 4)])
def test_every_row_lies_in_exactly_m_batches(n: int, m: int) -> None:
    batches = balanced_batches(np.random.default_rng(n).permutation(n), m)
    assert batches.shape == (n, m)
    assert all(len(set(b)) == m for b in batches)
    assert np.array_equal(np.bincount(batches.ravel(), minlength=n), np.full(n, m))


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_the_local_target_is_the_sum_of_the_rows_elbos(index: int) -> None:
    setting = Setting(12, 4, "local", "sum")
    problem = make_problem(3, index, setting, False, KINDS)
    rows = [
        problem.model.elbo(Gaussian(problem.q.mean[i], problem.q.scale_tril[i]), problem.data[i])
        for i in range(12)
    ]
    assert problem.target("sum") == pytest.approx(math.fsum(rows), rel=1e-12)
    assert problem.target("mean") == pytest.approx(math.fsum(rows) / 12, rel=1e-12)
    amortised = make_problem(3, index, setting, True, KINDS)
    exact = amortised.model.dataset_elbo(amortised.q, amortised.data)
    assert amortised.target("sum") == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_the_global_target_and_sub_models(index: int) -> None:
    setting = Setting(12, 4, "global", "sum")
    problem = make_problem(3, index, setting, False, KINDS)
    model, q, y = problem.model, problem.q, problem.data
    assert problem.target("sum") == pytest.approx(float(model.elbo(q, y)), rel=1e-12)
    # the dataset ELBO is the sum of one-row sub-models' expected log-likelihoods minus
    # the KL once; a batch's sub-model holds exactly its rows
    ell = math.fsum(regression_log_lik(*problem.arguments(np.array([i]))) for i in range(12))
    kl = float(model.elbo_terms(q, y).kl_to_prior)
    assert problem.target("sum") == pytest.approx(ell - kl, rel=1e-12)
    rows = np.array([1, 5, 6, 10])
    sub, q_given, y_batch = problem.arguments(rows)
    assert isinstance(sub, LinearGaussianModel)
    assert np.array_equal(sub.weights, model.weights[rows])
    assert np.array_equal(y_batch, y[rows])
    assert sub.prior is model.prior
    assert q_given is q
    noise = np.asarray(model.noise_cov)
    assert np.array_equal(np.asarray(sub.noise_cov), noise if noise.ndim == 0 else noise[rows])
    assert problem.reference(rows, setting) == pytest.approx(regression_elbo(sub, q, y_batch))


def test_the_arguments_have_the_documented_shapes() -> None:
    seen: list[tuple[Any, ...]] = []

    def local(model: LinearGaussianModel, q: Gaussian, x: np.ndarray) -> float:
        seen.append((q.mean.shape, q.scale_tril.shape, x.shape, model.data_dim))
        return local_elbo(model, q, x)

    verify_minibatch_elbo(local, dataset_size=12, batch_size=4, n_problems=1, seed=0)
    (mean, factor, x, d) = seen[0]
    assert mean == (4, mean[1])
    assert factor == (4, mean[1], mean[1])
    assert x == (4, d)
    assert len(seen) == 2 * 12  # two permutations of 12 balanced batches


# ---------------------------------------------------------------------- modes
def test_an_exact_estimator_in_statistical_mode_passes_and_a_wrong_one_is_flagged() -> None:
    def exact(model: Any, q: Any, x: np.ndarray, rng: Any, n_samples: int) -> float:
        return local_elbo(model, q, x)

    def unscaled(model: Any, q: Any, x: np.ndarray, rng: Any, n_samples: int) -> float:
        return local_kl_unscaled(model, q, x)

    options = {"dataset_size": 12, "batch_size": 4, "mode": "statistical"}
    report = verify_minibatch_elbo(exact, seed=0, **options, **FAST)
    assert report.worst_error == 0.0
    with pytest.raises(AssertionError, match="does fn ignore its rng") as caught:
        verify_minibatch_elbo(unscaled, seed=0, **options, **FAST)
    assert "the batch rows' KL terms are not scaled by N/M = 3" in str(caught.value)


def test_rows_that_interact_are_reported_in_exact_mode() -> None:
    def pairwise(model: Any, q: Any, x: np.ndarray) -> float:
        return local_elbo(model, q, x) + 0.5 * float(x[0, 0] * x[1, 0])  # rows 0 and 1 interact

    with pytest.raises(AssertionError, match="rows of a batch interact"):
        verify_minibatch_elbo(pairwise, dataset_size=12, batch_size=4, seed=0)


def test_ties_between_candidate_factors_are_named_together() -> None:
    setting = Setting(4, 2, "local", "sum")
    assert setting.label(2.0) == "N/M = M = 2"
    assert setting.label(0.5) == "M/N = 1/M = 0.5"
    assert setting.label(1.7) == "1.7"
    assert Setting(9, 9, "global", "sum").label(1.0) == "1"  # not "N/M = M/N = ... = 1"


def test_the_report_says_what_was_checked() -> None:
    report = CORRECT[0].verify(seed=0)
    assert report.check == "verify_minibatch_elbo(dataset_size=12, batch_size=4)"
    assert report.cases == 4
    assert report.details["designs"] == 2
    assert "balanced batches" in str(report)
    stat = next(i for i in CORRECT if i.mode == "statistical").verify(seed=0, **FAST)
    assert stat.details["designs"] == 20
    assert stat.details["calls"] == 240
    assert stat.details["critical_t"] > 5


def test_a_spent_time_budget_gives_no_verdict() -> None:
    with pytest.raises(InvalidInputError, match="time_budget"):
        CORRECT[0].verify(seed=0, time_budget=1e-9)


# ---------------------------------------------------------------------- options
def _never(*args: Any) -> float:
    raise AssertionError("fn must not be called for a bad option")


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"dataset_size": 0}, "dataset_size"),
        ({"dataset_size": 12.0}, "dataset_size"),
        ({"dataset_size": True}, "dataset_size"),
        ({"dataset_size": None}, "dataset_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 13}, "batch_size must be at most dataset_size"),
        ({"batch_size": "4"}, "batch_size"),
        ({"latent": "both"}, "latent"),
        ({"amortised": "yes"}, "amortised"),
        ({"amortised": True, "latent": "global"}, "amortised=True needs latent='local'"),
        ({"mode": "pathwise"}, "mode"),
        ({"reduction": "avg"}, "reduction"),
        ({"n_samples": 0}, "n_samples"),
        ({"n_problems": 0}, "n_problems"),
        ({"calls": 10}, "calls"),
        ({"q_kinds": ("banana",)}, "q_kinds"),
        ({"q_kinds": ()}, "q_kinds"),
        ({"noise_kinds": ("full",), "latent": "global"}, "noise_kinds cannot include 'full'"),
        ({"noise_kinds": ("weird",)}, "noise_kinds"),
        ({"prior_kinds": ()}, "prior_kinds"),
        ({"max_latent_dim": 3}, "max_latent_dim"),
        ({"false_alarm_rate": 0.0}, "false_alarm_rate"),
        ({"rtol": math.nan}, "rtol"),
        ({"atol": -1.0}, "atol"),
        ({"seed": -1}, "seed"),
        ({"profile": "fast"}, "profile"),
        ({"time_budget": 0}, "time_budget"),
    ],
)
def test_bad_options_are_refused_before_fn_runs(options: dict[str, Any], named: str) -> None:
    given = {"dataset_size": 12, "batch_size": 4, **options}
    with pytest.raises(InvalidInputError, match=named.replace("(", r"\(").replace(")", r"\)")):
        verify_minibatch_elbo(_never, **given)


def test_fn_must_be_callable() -> None:
    with pytest.raises(InvalidInputError, match="fn must be callable"):
        verify_minibatch_elbo(3.0, dataset_size=12, batch_size=4)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- bad returns
@pytest.mark.parametrize(
    ("returned", "said"),
    [
        (None, "got None"),
        ("-1.5", "got the string"),
        (np.zeros(4), "must return a scalar; got an array of shape \\(4,\\)"),
        (math.nan, "fn returned nan \\(not a finite number\\)"),
        (math.inf, "fn returned inf"),
    ],
)
def test_a_bad_return_is_named_with_the_batch(returned: Any, said: str) -> None:
    with pytest.raises(AssertionError, match=said) as caught:
        verify_minibatch_elbo(lambda m, q, x: returned, dataset_size=12, batch_size=4, seed=0)
    assert "the batch: rows [" in str(caught.value)
    if isinstance(returned, np.ndarray):
        assert "one number per batch" in str(caught.value)


def test_a_users_exception_is_chained() -> None:
    def broken(model: Any, q: Any, x: np.ndarray) -> float:
        raise ValueError("shapes do not match")

    with pytest.raises(AssertionError, match="fn raised ValueError: shapes do not match") as caught:
        verify_minibatch_elbo(broken, dataset_size=12, batch_size=4, seed=0)
    assert isinstance(caught.value.__cause__, ValueError)


# ---------------------------------------------------------------------- fooling the verdict
def test_editing_x_batch_in_place_fails() -> None:
    def centring(model: Any, q: Any, x: np.ndarray) -> float:
        value = local_elbo(model, q, x)
        x -= model.bias  # in place
        return value

    with pytest.raises(AssertionError, match="changed its input x in place"):
        verify_minibatch_elbo(centring, dataset_size=12, batch_size=4, seed=0)


def test_the_arrays_handed_over_are_private_copies() -> None:
    """A function that keeps the batches it saw and scribbles on them later (after the
    in-place check of its call) cannot change the data the expected values come from."""
    kept: list[np.ndarray] = []

    def hoarder(model: Any, q: Any, x: np.ndarray) -> float:
        value = local_elbo(model, q, x)
        for old in kept:
            old[...] = 1e6
        kept.append(x)
        return value

    report = verify_minibatch_elbo(hoarder, dataset_size=12, batch_size=4, seed=0)
    assert report.worst_error <= 1.0
    clean = verify_minibatch_elbo(local_elbo, dataset_size=12, batch_size=4, seed=0)
    assert report.worst_error == clean.worst_error


def test_the_model_and_q_given_are_read_only() -> None:
    tried: list[str] = []

    def vandal(model: Any, q: Any, y: np.ndarray) -> float:
        for array in (q.mean, q.scale_tril, model.weights, model.prior.mean):
            try:
                array[...] = 0.0
            except ValueError:
                tried.append("refused")
        return regression_elbo(model, q, y)

    report = verify_minibatch_elbo(
        vandal, dataset_size=12, batch_size=4, latent="global", seed=0, n_problems=2
    )
    assert report.worst_error <= 1.0
    assert tried
    assert set(tried) == {"refused"}
