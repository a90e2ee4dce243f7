"""verify_minibatch_elbo: subsampled (minibatch) estimators of a dataset's ELBO."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.stats
from numpy.typing import NDArray

from .._encoder import LinearEncoder
from .._errors import InvalidInputError
from ..strategies import COV_KINDS
from ._cases import check_q_kinds
from ._limits import _single_blas_thread
from ._minibatch import (
    Evidence,
    Problem,
    Setting,
    balanced_batches,
    call_text,
    check_setting,
    diagnose,
    make_problem,
    model_kinds,
)
from ._options import (
    DEFAULT_FALSE_ALARM_RATE,
    _check_callable,
    _check_rate,
    _profile,
    _seed,
    check_count,
    check_tolerance,
)
from ._precision import widened
from ._progress import BudgetReached, current
from ._report import VerificationReport, _describe_gaussian, _describe_model, _fmt, _numbers
from ._returns import invoke, to_scalar
from ._statistics import _statistical_calls

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

#: Random permutations of the rows in exact mode, each giving one balanced design.
PERMUTATIONS = 2

#: Statistical mode: at least this many balanced designs per problem (the t-test on
#: their means has one degree of freedom fewer).
MIN_DESIGNS = 20

#: Problems the diagnosis fits the factors on (the check's own, plus more if fewer).
DIAGNOSIS_PROBLEMS = 4


# ---------------------------------------------------------------------- running
class _CallFailed(Exception):
    """The user's function raised or returned a bad value on one batch."""

    def __init__(self, rows: IntArray, error: BaseException | None, value: float) -> None:
        super().__init__("fn failed")
        self.rows, self.error, self.value = rows, error, value


def _value(
    fn: Callable[..., Any], problem: Problem, rows: IntArray, extra: tuple[Any, ...]
) -> float:
    try:
        value = to_scalar(invoke(fn, *problem.arguments(rows), *extra))
    except Exception as err:
        raise _CallFailed(rows, err, math.nan) from err
    if not math.isfinite(value):
        raise _CallFailed(rows, None, value)
    return value


@dataclass
class _Outcome:
    """One problem's result: the mean(s) of fn over its design(s) against the target."""

    index: int
    problem: Problem
    expected: float
    tolerance: float
    means: list[float]  # exact: one per permutation; statistical: one per design
    batches: IntArray  # the first design's batches
    values: FloatArray  # fn on them
    standard_error: float = 0.0
    ratio: float = 0.0
    critical: float = math.nan  # statistical mode: the t test's critical value
    notes: list[str] = field(default_factory=list)

    @property
    def got(self) -> float:
        return float(np.mean(self.means))


def _run(
    fn: Callable[..., Any],
    problem: Problem,
    index: int,
    seed: int,
    setting: Setting,
    designs: int,
    n_samples: int | None,
) -> tuple[list[float], IntArray, FloatArray]:
    """fn's mean over each of ``designs`` balanced designs (a permutation each), and the
    first design's batches and values. Statistical mode (``n_samples`` given) passes
    each call a generator of its own and ``n_samples``."""
    means: list[float] = []
    first: tuple[IntArray, FloatArray] | None = None
    for r in range(designs):
        tag = 6102 if n_samples is None else 6103
        order = np.random.default_rng([seed, tag, index, r]).permutation(problem.size)
        batches = balanced_batches(order, setting.batch_size)
        streams = np.random.SeedSequence([seed, 6104, index, r]).spawn(len(batches))
        values = np.array(
            [
                _value(
                    fn,
                    problem,
                    rows,
                    ()
                    if n_samples is None
                    else (np.random.Generator(np.random.PCG64(s)), n_samples),
                )
                for rows, s in zip(batches, streams, strict=True)
            ]
        )
        means.append(float(np.mean(values)))
        first = (batches, values) if first is None else first
    assert first is not None
    return means, first[0], first[1]


# ---------------------------------------------------------------------- the verifier
@_single_blas_thread
def verify_minibatch_elbo(
    fn: Callable[..., Any],
    *,
    dataset_size: int,
    batch_size: int,
    latent: str = "local",
    amortised: bool = False,
    mode: str = "exact",
    reduction: str = "sum",
    n_samples: int = 8,
    seed: int | np.random.Generator | None = None,
    n_problems: int | None = None,
    calls: int | None = None,
    q_kinds: Sequence[str] | None = None,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    profile: str | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    **model_options: Any,
) -> VerificationReport:
    r"""Check that a minibatch (subsampled) ELBO estimator is unbiased for the dataset ELBO.

    Stochastic variational inference estimates the ELBO of a data set of :math:`N` rows
    from a batch :math:`B` of :math:`M` of them [1]_ [2]_. With a latent :math:`z_i` per
    row (``latent="local"``: a VAE, amortised or not) and with one global latent
    :math:`w` (``latent="global"``: Bayesian linear regression's weights, a sparse GP's
    inducing outputs) the unbiased estimates are

    .. math::
        \frac NM \sum_{i\in B}\Bigl[\mathbb E_{q_i}\log p(x_i\mid z_i)
            - \mathrm{KL}\bigl(q_i\,\|\,p(z)\bigr)\Bigr]
        \qquad\text{and}\qquad
        \frac NM \sum_{i\in B}\mathbb E_q\log p(y_i\mid w) - \mathrm{KL}\bigl(q\,\|\,p(w)\bigr):

    the global KL enters once, unscaled. ``fn`` passes when the mean of its values over
    batches is the exact dataset ELBO (``reduction="sum"``; :meth:`~elbo_check.
    LinearGaussianModel.elbo` summed over the rows, or ``model.dataset_elbo(encoder,
    X)``), or the per-datum ELBO, the dataset ELBO over :math:`N`
    (``reduction="mean"``).

    Signatures, with ``x_batch`` the batch's rows (in increasing row order):

    ``latent="local"``
        ``fn(model, q, x_batch) -> float``: ``x_batch`` of shape ``(M, D)``, ``q`` a
        batched :class:`~elbo_check.Gaussian` of the batch's rows (``q.mean`` ``(M,
        K)``, ``q.scale_tril`` ``(M, K, K)``); with ``amortised=True``, ``fn(model,
        encoder, x_batch)`` with a :class:`~elbo_check.LinearEncoder`.
    ``latent="global"``
        ``fn(batch_model, q, y_batch) -> float``: the data set is one Bayesian linear
        regression whose :math:`N` scalar observations are the rows (``weights`` the
        design matrix ``(N, K)``, bias 0, isotropic or diagonal noise); ``batch_model``
        is its sub-model of the batch's rows (their design rows, bias and noise
        variances; the same prior), ``y_batch`` their targets, ``q`` one Gaussian.

    ``mode="statistical"`` checks a Monte-Carlo estimator: ``rng, n_samples`` follow.

    No batch is drawn at random: a random permutation :math:`\pi` of the rows gives the
    balanced design of the :math:`N` batches :math:`\{\pi(j), \dots, \pi(j + M - 1
    \bmod N)\}`, in which every row lies in exactly :math:`M` batches, so the mean over
    them of an estimator that is a sum of per-row terms plus terms that do not depend on
    the batch is its mean over all :math:`\binom NM` batches. ``mode="exact"`` requires,
    on each problem and for each of ``PERMUTATIONS`` = 2 permutations, that this mean be
    within ``rtol * (|sum_i E_q log p(x_i|z)| + KL + 1) + atol`` of the exact value
    (over :math:`N` for ``reduction="mean"``). An unbiased estimator whose rows interact
    (one that centres by the batch mean, say) fails it, with a note that the mean
    changed with the permutation: check it with ``mode="statistical"``, which assumes
    nothing, as each batch of a uniformly random permutation is a uniformly random batch.

    ``mode="statistical"``: :math:`R = \max(20, \mathrm{round}(\mathtt{calls} / N))`
    designs per problem, each with its own permutation and a generator per call, give
    :math:`R` independent unbiased design means; their mean :math:`\bar y` fails when
    :math:`|\bar y - \mathrm{ELBO}| > c\,s`, with :math:`s` their standard error and
    :math:`c` the two-sided critical value of Student's t with :math:`R - 1` degrees of
    freedom at level ``false_alarm_rate / n_problems`` (Bonferroni): a correct estimator
    fails a call with probability at most ``false_alarm_rate``, up to the normal
    approximation of the design means.

    A failure names the missing or misplaced factor: the design means over the problems
    are fitted as :math:`a\,S_{\mathrm{lik}} + b\,S_{\mathrm{KL}}` (the exact sums over
    all rows of :math:`\mathbb E_q\log p(x_i\mid z)` and of the KL terms), and each
    factor, turned back into what the code applied per batch, is named from
    :math:`\{1, N/M, M/N, (N/M)^2, 1/N, 1/M, N, M, 0\}` and their negatives ("the batch
    log-likelihood is not scaled by N/M", "the global latent's KL is scaled by N/M",
    "the minibatch mean", "the sign is flipped (a loss)", ...) when one candidate lies
    within three standard errors and no other does.

    Parameters
    ----------
    fn : callable
        The estimator under test, with the signature above. It must return one real
        number per batch (Python, numpy, torch or JAX), draw its randomness from ``rng``
        only (statistical mode) and leave its arguments unchanged (it gets private
        copies of the arrays; models, Gaussians and encoders are immutable).
    dataset_size : int
        :math:`N`, the rows of the data set, an integer >= 1 (required): the ``N`` in
        the ``N / M`` of your code.
    batch_size : int
        :math:`M`, the rows of a batch, an integer with ``1 <= M <= N`` (required).
    latent : {"local", "global"}, optional
        A latent per row or one for the data set (default ``"local"``).
    amortised : bool, optional
        With ``latent="local"``: ``fn`` gets a linear encoder instead of the rows' ``q``
        (default False).
    mode : {"exact", "statistical"}, optional
        Exact values, or a Monte-Carlo estimator tested for unbiasedness (default
        ``"exact"``).
    reduction : {"sum", "mean"}, optional
        The target: the dataset ELBO (default ``"sum"``) or the per-datum ELBO, the
        dataset ELBO over :math:`N` (``"mean"``).
    n_samples : int, optional
        Statistical mode: the ``n_samples`` passed to ``fn``, >= 1 (default 8).
    seed : int or numpy.random.Generator, optional
        An integer >= 0, or a generator to draw one from (default: the pytest plugin's
        ``--elbo-check-seed``, else ``$ELBO_CHECK_SEED``, else 0): it seeds the
        problems, the permutations and the generators given to ``fn``.
    n_problems : int, optional
        Data sets checked, >= 1 (default from ``profile``: 4 for ``"dev"``, 6 for
        ``"ci"``, 12 for ``"thorough"``). Their shapes, noise, prior and q kinds cycle.
    calls : int, optional
        Statistical mode: calls of ``fn`` per problem, at least 80, made as whole
        designs of :math:`N` calls and at least 20 designs (default from ``profile``:
        800, 1600 or 4000).
    q_kinds : sequence of str, optional
        Covariance kinds of the q's (of the encoder's shared covariance when
        amortised): some of ``"full"``, ``"diagonal"`` and ``"isotropic"`` (default: all
        three in exact mode, ``("full",)`` in statistical mode).
    false_alarm_rate : float, optional
        Statistical mode: the probability that a correct estimator fails the call, in
        (0, 1) (default ``DEFAULT_FALSE_ALARM_RATE`` = 1e-6).
    profile : {"dev", "ci", "thorough"}, optional
        Sets the defaults of ``n_problems`` and ``calls`` (default: the pytest plugin's
        ``--elbo-check-profile``, else ``$ELBO_CHECK_PROFILE``, else ``"dev"``).
    rtol, atol : float, optional
        The exact mode's tolerance (above; defaults 1e-6 and 1e-8 nats), and in
        statistical mode a slack: a mean within it passes whatever its t. Finite
        numbers >= 0. Left at its default, the exact mode's ``rtol`` follows the
        precision of ``fn`` (see ``dtype``).
    time_budget : float, optional
        Seconds the call may take, positive and finite (default None: no limit); the
        check stops between problems, and the report covers those completed.
    dtype : str or dtype, optional
        The floating precision ``fn`` computes in (default None: the coarsest floating
        dtype ``fn`` has returned). Below float64, and with ``rtol`` left at its
        default, the exact mode's tolerance widens as :func:`verify_elbo`'s does.
    **model_options
        ``noise_kinds`` (some of ``"isotropic"``, ``"diagonal"``, ``"full"``; with
        ``latent="global"`` not ``"full"``, which couples the rows) and ``prior_kinds``
        (some of ``"standard"``, ``"diagonal"``, ``"general"``), e.g.
        ``noise_kinds=("isotropic",)`` for code that takes the noise as one number.

    Returns
    -------
    VerificationReport
        When every problem passes: ``check`` (the call), ``cases`` (problems),
        ``worst_error`` (the largest ``|gap| / tolerance``, or ``|t| / c`` in
        statistical mode; at most 1), ``tolerance`` (in words), ``seed`` and
        ``details``: ``"dataset_size"``, ``"batch_size"``, ``"designs"`` (balanced
        designs per problem), ``"calls"`` (per problem), and in statistical mode
        ``"n_samples"`` and ``"critical_t"`` (:math:`c`).

    Raises
    ------
    AssertionError
        The verdict, when a problem fails: the data set, the expected and the mean value
        with the gap and the tolerance (or the mean estimate, its standard error, t and
        c), the exact sums of the two terms, ``fn`` beside the textbook estimate on one
        batch, the fitted per-batch factors and ``Diagnosis: ...``, ``Fix: ...``. Also
        when ``fn`` raises (chained as the cause), returns anything but one real number,
        NaN or infinity, or edits an argument in place, naming the batch's rows.
    InvalidInputError
        Before ``fn`` is called, for a bad option, naming it: ``fn`` not callable;
        ``dataset_size``, ``batch_size``, ``n_samples`` or ``n_problems`` not an integer
        >= 1, or ``batch_size > dataset_size``; an unknown ``latent``, ``mode`` or
        ``reduction``; ``amortised`` not a bool, or True with ``latent="global"``;
        ``calls`` below 80; ``q_kinds``, ``noise_kinds`` or ``prior_kinds`` empty or
        with another kind, or full noise with ``latent="global"``; another model option;
        a bad ``false_alarm_rate``, ``rtol``, ``atol``, ``seed``, ``profile``,
        ``time_budget`` or ``dtype``. Also when ``time_budget`` runs out before the
        first problem is complete.

    See Also
    --------
    verify_elbo : Checks the ELBO of single rows (``batch_size=B`` for batched code).
    verify_elbo_estimator : Checks a Monte-Carlo estimate of one row's ELBO.

    References
    ----------
    .. [1] M. D. Hoffman, D. M. Blei, C. Wang and J. Paisley, "Stochastic variational
       inference", Journal of Machine Learning Research 14:1303-1347, 2013.
    .. [2] J. Hensman, N. Fusi and N. D. Lawrence, "Gaussian processes for big data",
       UAI 2013 (the minibatch bound of a global latent).

    Examples
    --------
    Bayesian linear regression's ELBO from a batch of its rows, written by hand: the
    batch's expected log-likelihood scaled by N/M, minus the KL once.

    >>> import numpy as np
    >>> from elbo_check import kl_divergence
    >>> from elbo_check.testing import verify_minibatch_elbo
    >>> N, M = 12, 4
    >>> def batch_elbo(model, q, y, scale=N / M):
    ...     var, phi = np.broadcast_to(model.noise_cov, y.shape), model.weights
    ...     sq = (y - phi @ q.mean - model.bias) ** 2 + np.einsum("ik,kl,il->i", phi, q.cov, phi)
    ...     ell = -0.5 * np.sum(np.log(2 * np.pi * var) + sq / var)
    ...     return scale * ell - kl_divergence(q, model.prior)
    >>> report = verify_minibatch_elbo(batch_elbo, dataset_size=N, batch_size=M,
    ...                                latent="global", seed=0)
    >>> report.cases, report.details["designs"], report.worst_error <= 1
    (4, 2, True)

    Without the N/M (``log p(batch) - KL``) it fails, and the message says so:

    >>> verify_minibatch_elbo(lambda m, q, y: batch_elbo(m, q, y, scale=1.0),
    ...                       dataset_size=N, batch_size=M, latent="global", seed=0)
    Traceback (most recent call last):
      ...
    AssertionError: verify_minibatch_elbo(dataset_size=12, batch_size=4, latent='global') failed ...
    ...
    Diagnosis: the batch log-likelihood is not scaled by N/M = 3 (log p(batch) - KL instead ...
      Fix: multiply the batch's summed log-likelihood by N/M = dataset_size / batch_size; ...
    """
    __tracebackhide__ = True
    _check_callable(fn)
    _check_rate(false_alarm_rate)
    chosen = _profile(profile)
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    setting = check_setting(dataset_size, batch_size, latent, amortised, mode, reduction)
    total_calls = _statistical_calls(chosen, calls, n_samples)
    count = check_count("n_problems", n_problems, chosen["problems"])
    default_kinds = COV_KINDS if mode == "exact" else ("full",)
    kinds = {
        "q": check_q_kinds(default_kinds if q_kinds is None else q_kinds),
        **dict(zip(("noise", "prior"), model_kinds(setting.latent, model_options), strict=True)),
    }
    seed_value = _seed(seed)
    n = setting.dataset_size
    statistical = mode == "statistical"
    designs = max(MIN_DESIGNS, round(total_calls / n)) if statistical else PERMUTATIONS
    name = call_text(setting, bool(amortised), mode)
    level = false_alarm_rate / (2 * count)  # two-sided, Bonferroni over the problems
    plan = (
        (
            f"from {designs} balanced designs of {n} batches, n_samples={n_samples}",
            f"false-alarm rate {false_alarm_rate:g} over {count} problems",
        )
        if mode == "statistical"
        else None
    )
    critical = float(scipy.stats.t.isf(level, designs - 1)) if statistical else math.nan
    progress = current()
    if progress is not None:
        progress.problems_planned = count
        progress.plan(count * designs * n)

    def run(index: int) -> _Outcome:
        problem = make_problem(seed_value, index, setting, bool(amortised), kinds)
        expected = problem.target(setting.reduction)
        tolerance = rtol * problem.scale(setting.reduction) + atol
        try:
            means, batches, values = _run(
                fn, problem, index, seed_value, setting, designs, n_samples if statistical else None
            )
        except _CallFailed as failed:
            raise AssertionError(
                _call_failure(name, seed_value, index, count, problem, setting, failed)
            ) from failed.error
        outcome = _Outcome(index, problem, expected, tolerance, means, batches, values)
        if statistical:
            _judge_statistical(outcome, critical)
        else:
            outcome.tolerance = widened(progress, (problem.model, problem.q), tolerance)
            _judge_exact(outcome)
        return outcome

    outcomes = []
    for index in range(count):
        if progress is not None:
            if progress.exhausted():  # stop between problems: each is judged whole
                progress.stopped_early = True
                raise BudgetReached(index, count)
            progress.problems_started += 1
        outcomes.append(run(index))
    worst = max(outcomes, key=lambda o: o.ratio)
    if worst.ratio > 1.0:
        extra = []
        for index in range(count, DIAGNOSIS_PROBLEMS):
            try:
                extra.append(run(index))
            except AssertionError:
                continue
        evidence = [
            Evidence(o.problem.ell, o.problem.kl, o.got, o.standard_error, o.tolerance)
            for o in outcomes + extra
        ]
        interaction = any("permutation" in t for o in outcomes for t in o.notes)
        degrees = designs - 1 if statistical else None
        raise AssertionError(
            _failure(name, seed_value, count, worst, setting, plan)
            + "\n"
            + diagnose(evidence, setting, degrees=degrees, interaction=interaction)
        )
    tolerance_text = (
        f"|t| <= {critical:.3g} (false-alarm rate {false_alarm_rate:g}, {designs} balanced "
        f"designs of {n} batches x {n_samples} samples per problem)"
        if statistical
        else f"rtol={rtol:g} of the term magnitudes + atol={atol:g}, the mean over {n} "
        f"balanced batches of each of {PERMUTATIONS} permutations"
    )
    details: dict[str, Any] = {"dataset_size": n, "batch_size": setting.batch_size}
    details.update(designs=designs, calls=designs * n)
    if statistical:
        details.update(n_samples=n_samples, critical_t=critical)
    return VerificationReport(
        check=name,
        cases=count,
        worst_error=worst.ratio,
        tolerance=tolerance_text,
        seed=seed_value,
        details=details,
    )


# ---------------------------------------------------------------------- verdicts
def _judge_exact(outcome: _Outcome) -> None:
    gaps = [abs(m - outcome.expected) for m in outcome.means]
    outcome.ratio = max(gaps) / outcome.tolerance
    if max(outcome.means) - min(outcome.means) > outcome.tolerance:
        outcome.notes.append(
            "the mean over batches changed with the permutation ("
            + ", ".join(f"{m:.10g}" for m in outcome.means)
            + "): the rows of a batch interact"
        )


def _judge_statistical(outcome: _Outcome, critical: float) -> None:
    means = np.asarray(outcome.means)
    standard_error = float(np.std(means, ddof=1) / math.sqrt(len(means)))
    outcome.standard_error, outcome.critical = standard_error, critical
    gap = abs(outcome.got - outcome.expected)
    if not standard_error > outcome.tolerance:  # no variation beyond rounding
        outcome.ratio = 0.0 if gap <= outcome.tolerance else math.inf
        if gap > outcome.tolerance:
            outcome.notes.append(
                "the design means did not vary with the rng: does fn ignore its rng argument?"
            )
        return
    t = gap / standard_error
    outcome.ratio = t / critical if gap > outcome.tolerance else 0.0


# ---------------------------------------------------------------------- messages
def _describe(problem: Problem, setting: Setting) -> str:
    """The data set of a failure: N, M, dimensions, model, prior and q."""
    n, m = setting.dataset_size, setting.batch_size
    batches = f"batches of M = {m} rows (N/M = {n / m:.4g})"
    if problem.latent == "global":
        noise = problem.model.noise_cov
        kind = "isotropic noise variance" if np.ndim(noise) == 0 else "diagonal noise variances"
        return "\n".join(
            [
                f"  dataset: N = {n} scalar observations y_i = phi_i . w + noise (Bayesian "
                f"linear regression, design matrix ({n}, {problem.model.latent_dim})), one "
                f"global latent w of K = {problem.model.latent_dim}; {batches}",
                f"  {kind} {_fmt(noise)}",
                _describe_gaussian("prior", problem.model.prior),
                _describe_gaussian("q", problem.q),
            ]
        )
    q_text = (
        f"an encoder q(z|x) = N(A x + c, S), S {problem.kind}"
        if isinstance(problem.q, LinearEncoder)
        else f"a q_i per row ({problem.kind} covariances)"
    )
    model = problem.model
    return (
        f"  dataset: N = {n} rows x_i of D = {model.data_dim}, a latent z_i of K = "
        f"{model.latent_dim} per row, {q_text}; {batches}\n" + _describe_model(model)
    )


def _call_failure(
    name: str,
    seed: int,
    index: int,
    count: int,
    problem: Problem,
    setting: Setting,
    failed: _CallFailed,
) -> str:
    error = failed.error
    if error is None:
        what = f"fn returned {failed.value} (not a finite number)"
    elif isinstance(error, InvalidInputError) and str(error).startswith("fn "):
        what = str(error)
    else:
        what = f"fn raised {type(error).__name__}: {error}"
    lines = [
        f"{name} failed (seed={seed}; problem {index + 1} of {count}): {what}",
        _describe(problem, setting),
        f"  the batch: rows {failed.rows.tolist()} (M = {setting.batch_size} of N = "
        f"{setting.dataset_size})",
    ]
    if error is not None and "scalar" in str(error):
        lines.append(
            "  fn must return one number per batch: its estimate of the dataset ELBO "
            "(reduction='sum') or of the per-datum ELBO (reduction='mean'), not a value "
            "per row"
        )
    return "\n".join(lines)


def _failure(
    name: str,
    seed: int,
    count: int,
    outcome: _Outcome,
    setting: Setting,
    plan: tuple[str, str] | None,
) -> str:
    """The verdict of the worst problem; ``plan`` says how a statistical test was made."""
    n, m = setting.dataset_size, setting.batch_size
    problem = outcome.problem
    target = "dataset ELBO" if setting.reduction == "sum" else "per-datum ELBO (dataset ELBO / N)"
    where = f"seed={seed}; problem {outcome.index + 1} of {count}"
    if plan is not None:
        gap, spread = outcome.got - outcome.expected, outcome.standard_error
        t = gap / spread if spread > 0 else math.copysign(math.inf, gap)
        lines = [
            f"{name} failed: the estimator is biased for the {target} ({where})",
            _describe(problem, setting),
            f"  exact {target:<16} {outcome.expected:.10g}",
            f"  mean estimate    {outcome.got:.10g} +- {outcome.standard_error:.3g} "
            f"(standard error {plan[0]})",
            f"  t = {t:.3g}; critical |t| = {outcome.critical:.3g} ({plan[1]})",
        ]
    else:
        k = int(np.argmax([abs(v - outcome.expected) for v in outcome.means]))
        lines = [
            f"{name} failed ({where}): the mean over batches is not the {target}",
            _describe(problem, setting),
            f"  a balanced design: {n} batches of {m} rows, each row in {m} of them "
            f"(permutation {k + 1} of {len(outcome.means)})",
            _numbers(outcome.means[k], outcome.expected, outcome.tolerance),
        ]
    kl_text = "KL(q || p(w))" if setting.latent == "global" else "sum_i KL(q_i || p(z))"
    lines.append(
        f"  exact terms over all {n} rows: sum_i E_q[log p(x_i|z)] = {problem.ell:.6g}, "
        f"{kl_text} = {problem.kl:.6g}"
    )
    rows = outcome.batches[0]
    lines.append(
        f"  batch 1 (rows {rows.tolist()}): fn returned {outcome.values[0]:.10g}; the textbook "
        f"estimate there is {problem.reference(rows, setting):.10g}"
    )
    lines += [f"  {note}" for note in outcome.notes]
    return "\n".join(lines)
