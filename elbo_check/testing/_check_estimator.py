"""verify_elbo_estimator: Monte-Carlo ELBO estimators, statistical and pathwise."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.stats
from hypothesis import strategies as st
from numpy.typing import NDArray

from .._errors import InvalidInputError
from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ..strategies import (
    COV_KINDS,
    ElboProblem,
    elbo_problems,
)
from ._batch_problems import batched_statistical_cases
from ._batching import check_batch_size
from ._calls import (
    _call,
)
from ._cases import as_elbo_cases, check_q_kinds, statistical_cases
from ._estimator_batches import batched_pathwise, batched_statistical, pathwise_batches
from ._estimator_diagnosis import (
    StatisticalEvidence,
    diagnosis_calls,
    pathwise_diagnosis,
    statistical_diagnosis,
)
from ._forms import ElboForm, check_form
from ._limits import _single_blas_thread
from ._options import (
    BATCHES,
    DEFAULT_FALSE_ALARM_RATE,
    _check_callable,
    _check_rate,
    _profile,
    _seed,
    check_count,
    check_tolerance,
)
from ._problems import (
    _elbo_scale,
)
from ._report import (
    VerificationReport,
    _describe_gaussian,
    _describe_model,
    _fmt,
    _numbers,
)
from ._returns import to_scalar
from ._searching import _deterministic_check
from ._statistics import _batch_t, _repeated_calls, _statistical_calls

FloatArray = NDArray[np.float64]


@_single_blas_thread
def verify_elbo_estimator(
    fn: Callable[..., Any],
    *,
    mode: str = "statistical",
    form: str | ElboForm = "joint",
    seed: int | np.random.Generator | None = None,
    n_samples: int = 8,
    calls: int | None = None,
    problems: Any = None,
    n_problems: int | None = None,
    q_kinds: Sequence[str] | None = None,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    profile: str | None = None,
    max_examples: int | None = None,
    rtol: float = 1e-6,
    atol: float = 1e-8,
    batch_size: int | None = None,
    **model_options: Any,
) -> VerificationReport:
    r"""Check a Monte-Carlo ELBO estimator.

    Two modes:

    ``mode="statistical"`` (default): ``fn(model, q, x, rng, n_samples) -> float`` must
    be an unbiased estimate of the ELBO. On each of ``problems`` fixed problems it is
    called ``calls`` times with independent ``numpy.random.Generator`` objects; the
    mean of the estimates is z-tested against the exact ELBO with the standard error
    estimated from ``BATCHES`` (40) batch means (a t-test with ``BATCHES - 1`` degrees
    of freedom). The per-problem level is ``false_alarm_rate / problems`` (Bonferroni), so
    a correct estimator fails a call with probability at most ``false_alarm_rate``
    (up to the normal approximation of batch means of ``calls / BATCHES`` estimates).

    ``mode="pathwise"``: ``fn(model, q, x, eps) -> float`` with standard-normal noise
    ``eps`` of shape ``(n, K)`` given must return exactly the estimate of its ``form`` at
    :math:`z_i = m + L\varepsilon_i`; a deterministic check over hypothesis-drawn problems
    and noise, with shrinking.

    ``form`` says how the estimate combines sampled and analytic terms. All three forms
    have the ELBO as their expectation, so the statistical target is the same, but they
    differ per sample and in their typical bugs (see :mod:`elbo_check.testing._forms`):

    ``"joint"`` (default)
        .. math:: \frac1n\sum_i \bigl[\log p(x, z_i) - \log q(z_i)\bigr]

    ``"analytic_kl"`` (``TraceMeanField_ELBO``, most VAE code)
        .. math:: \frac1n\sum_i \log p(x\mid z_i) - \mathrm{KL}\bigl(q\,\|\,p(z)\bigr)

    ``"analytic_entropy"`` (ADVI)
        .. math:: \frac1n\sum_i \log p(x, z_i) + H(q)

    A failure's diagnosis names the form's own bugs (the KL added instead of
    subtracted, the entropy with the variance as its scale, ...), the loss -ELBO or the
    IWAE bound returned, a term scaled by a constant (the reconstruction divided by N)
    and, in pathwise mode, a correct estimate of another form. A name is given only
    when it explains the failure on at least two independent problems: in statistical
    mode the z-test is run on up to three more problems like the failing one (same D,
    K and kinds; twice the calls each), so the name does not depend on the seed.

    ``**model_options`` restrict the models: ``noise_kinds`` and ``prior_kinds`` in both
    modes (e.g. ``noise_kinds=("isotropic", "diagonal")`` for code without full noise),
    any option of :func:`~elbo_check.strategies.linear_gaussian_models` in pathwise mode.

    ``batch_size=B`` checks code that estimates the ELBOs of a minibatch at once, one
    :math:`q(z\mid x_b)` per row: ``fn`` receives one ``model``, ``x`` of shape ``(B, D)``
    and a ``q`` with ``q.mean`` of shape ``(B, K)`` and a covariance per member
    (``q.scale_tril`` and ``q.cov`` of shape ``(B, K, K)``), and returns the ``B``
    estimates, shape ``(B,)``. In statistical mode ``fn(model, q, x, rng, n_samples)``;
    every member is z-tested against its own ELBO, with the Bonferroni correction over
    ``B`` times the number of batches. In pathwise mode ``fn(model, q, x, eps)`` with
    ``eps`` of shape ``(n, B, K)`` (sample axis first, then batch, then event, as in
    torch and numpyro) must return, per member, its form's value at
    :math:`z_{ib} = m_b + L_b\varepsilon_{ib}`. A failure names the worst member and how
    many fail, and says whether the return had the wrong shape (a reduction over the
    batch axis) or the members interact (a member's value changes with its batch-mates).

    Parameters
    ----------
    fn : callable
        The estimator under test (signatures above).
    mode : {"statistical", "pathwise"}
        The check to run.
    form : str or ElboForm
        ``"joint"``, ``"analytic_kl"`` or ``"analytic_entropy"``.
    seed : int or numpy.random.Generator, optional
        Makes the check reproducible (default: ``$ELBO_CHECK_SEED`` or 0).
    n_samples : int
        Statistical mode: the ``n_samples`` argument passed to ``fn``.
    calls : int, optional
        Statistical mode: calls per problem (per batch with ``batch_size``), at least
        ``2 * BATCHES``; default from ``profile``.
    problems : strategy or sequence, optional
        Your own problems: a hypothesis strategy of
        :class:`~elbo_check.strategies.ElboProblem` or a sequence of them (or of
        ``(model, q, x)`` tuples). With ``batch_size=B`` each problem is one batch: a
        ``q`` of batch shape ``(B,)`` and ``x`` of shape ``(B, D)``, sharing the model.
        Without, the verifier's own problems (with ``batch_size``: each grown into a
        batch of ``B`` observations of its model, each with its own q).
    n_problems : int, optional
        Statistical mode: problems (batches) drawn from a strategy or the verifier's own.
    q_kinds : sequence of str, optional
        Covariance kinds of q: ``"isotropic"``, ``"diagonal"``, ``"full"``.
    false_alarm_rate : float
        Statistical mode: the probability that a correct estimator fails a call.
    profile : str, optional
        ``"dev"`` or ``"ci"``: default counts.
    max_examples : int, optional
        Pathwise mode: cases to try.
    rtol, atol : float
        Tolerances relative to the magnitude of the terms (a deterministic comparison
        in pathwise mode, the slack of the z-test in statistical mode).
    batch_size : int, optional
        Check batched code on batches of this many members (``None``: unbatched).
    **model_options
        See above.

    Returns
    -------
    VerificationReport
        ``worst_error`` is the largest ``|t| / critical value`` (statistical) or
        ``|gap| / tolerance`` (pathwise).
    """
    __tracebackhide__ = True
    _check_callable(fn)
    _check_rate(false_alarm_rate)
    chosen = _profile(profile)
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    chosen_form = check_form(form)
    seed_value = _seed(seed)
    size = check_batch_size(batch_size)
    if mode == "pathwise":
        kinds = check_q_kinds(COV_KINDS if q_kinds is None else q_kinds)
        if size is not None:
            return batched_pathwise(
                fn,
                chosen_form,
                size,
                pathwise_batches(problems, size, kinds, model_options),
                seed=seed_value,
                max_examples=check_count("max_examples", max_examples, chosen["max_examples"]),
                rtol=rtol,
                atol=atol,
            )
        user = as_elbo_cases(problems, lambda: elbo_problems(q_kinds=kinds, **model_options))
        return _verify_pathwise(
            fn,
            chosen_form,
            seed_value,
            check_count("max_examples", max_examples, chosen["max_examples"]),
            rtol,
            atol,
            user if isinstance(user, st.SearchStrategy) else st.sampled_from(user),
        )
    if mode != "statistical":
        raise InvalidInputError(f"mode must be 'statistical' or 'pathwise'; got mode={mode!r}")
    total_calls = _statistical_calls(chosen, calls, n_samples)
    if size is not None:
        batches = batched_statistical_cases(
            problems,
            n_problems,
            size,
            default_count=chosen["problems"],
            seed=seed_value,
            q_kinds=("full",) if q_kinds is None else q_kinds,
            model_options=model_options,
            calls=total_calls,
        )
        return batched_statistical(
            fn,
            chosen_form,
            batches,
            size,
            seed=seed_value,
            n_samples=n_samples,
            calls=total_calls,
            false_alarm_rate=false_alarm_rate,
            rtol=rtol,
            atol=atol,
        )
    cases = statistical_cases(
        problems,
        n_problems,
        default_count=chosen["problems"],
        seed=seed_value,
        q_kinds=("full",) if q_kinds is None else q_kinds,
        model_options=model_options,
        calls=total_calls,
    )
    count = len(cases)
    critical = float(scipy.stats.t.isf(false_alarm_rate / (2 * count), BATCHES - 1))
    worst = 0.0
    for index, (model, q, x) in enumerate(cases):
        expected = float(model.elbo(q, x))
        estimates = _repeated_calls(
            "verify_elbo_estimator",
            fn,
            to_scalar,
            (model, q, x, n_samples),
            [seed_value, 77, index],
            total_calls,
        ).reshape(-1)
        mean, standard_error, t = (float(v) for v in _batch_t(estimates, np.array(expected)))
        scale = _elbo_scale(model, q, x)
        tolerance = rtol * scale + atol
        if standard_error <= tolerance or not math.isfinite(standard_error):
            # No variation across calls beyond rounding: compare as a deterministic value.
            if math.isfinite(mean) and abs(mean - expected) <= tolerance:
                continue
            note = (
                "the estimates did not vary across calls with different rng: does fn ignore "
                "its rng argument?"
                if math.isfinite(mean) and math.isfinite(standard_error)
                else "non-finite estimates"
            )
            raise AssertionError(
                "verify_elbo_estimator failed\n"
                + _describe_model(model)
                + "\n"
                + _describe_gaussian("q", q)
                + f"\n  x = {_fmt(x)}\n  form: {chosen_form.describe()}\n"
                + _numbers(mean, expected, tolerance)
                + f"\n  {note}"
            )
        ratio = abs(t) / critical if abs(mean - expected) > tolerance else 0.0
        worst = max(worst, ratio)
        if ratio > 1.0:
            first = StatisticalEvidence((model, q, x), mean, standard_error, critical, tolerance)

            def values_of(
                m: LinearGaussianModel, qq: Gaussian, xx: FloatArray, stream: list[int], n: int
            ) -> FloatArray | None:
                values = diagnosis_calls(fn, to_scalar, (m, qq, xx, n_samples), stream, n)
                return None if values is None else values.reshape(-1)

            raise AssertionError(
                f"verify_elbo_estimator failed: the estimator is biased (seed={seed_value}, "
                f"problem {index + 1} of {count})\n"
                + _describe_model(model)
                + "\n"
                + _describe_gaussian("q", q)
                + f"\n  x = {_fmt(x)}\n"
                f"  form: {chosen_form.describe()}\n"
                f"  exact ELBO       {expected:.10g}\n"
                f"  mean estimate    {mean:.10g} +- {standard_error:.3g} (standard error from "
                f"{BATCHES} batch means of {total_calls // BATCHES} calls, n_samples={n_samples})\n"
                f"  t = {t:.3g}; critical |t| = {critical:.3g} for false-alarm rate "
                f"{false_alarm_rate:g} over {count} problems\n"
                + statistical_diagnosis(
                    chosen_form,
                    n_samples,
                    first,
                    values_of,
                    [seed_value, 78, index],
                    total_calls,
                    critical,
                    rtol,
                    atol,
                )
            )
    return VerificationReport(
        check="verify_elbo_estimator",
        cases=count,
        worst_error=worst,
        tolerance=(
            f"|t| <= {critical:.3g} (false-alarm rate {false_alarm_rate:g}, "
            f"{total_calls} calls x {n_samples} samples per problem)"
        ),
        seed=seed_value,
        details={
            "calls": total_calls,
            "n_samples": n_samples,
            "critical_t": critical,
            "form": chosen_form.name,
        },
    )


def _verify_pathwise(
    fn: Callable[..., Any],
    form: ElboForm,
    seed: int,
    max_examples: int,
    rtol: float,
    atol: float,
    problems: st.SearchStrategy[ElboProblem],
) -> VerificationReport:

    @st.composite
    def cases(draw: st.DrawFn) -> tuple[ElboProblem, FloatArray]:
        problem = draw(problems)
        n = draw(st.integers(1, 4))
        k = problem.model.latent_dim
        eps = np.array(draw(st.lists(st.floats(-3.0, 3.0), min_size=n * k, max_size=n * k)))
        return problem, eps.reshape(n, k)

    def tolerance(model: LinearGaussianModel, q: Gaussian, x: FloatArray, z: FloatArray) -> float:
        return rtol * (form.magnitude(model, q, x, z) + 1.0) + atol

    def evaluate(case: tuple[ElboProblem, FloatArray]) -> tuple[float, float, float]:
        p, eps = case
        z = p.q.mean + eps @ p.q.scale_tril.T
        # The exact value first: nothing fn does can reach it.
        expected = form.pathwise_value(p.model, p.q, p.x, z)
        tol = tolerance(p.model, p.q, p.x, z)
        return _call(fn, p.model, p.q, p.x, eps), expected, tol

    def explain(
        case: tuple[ElboProblem, FloatArray],
        got: float,
        expected: float,
        tol: float,
        error: BaseException | None,
    ) -> str:
        p, eps = case
        parts = [
            _describe_model(p.model),
            _describe_gaussian("q", p.q),
            f"  x = {_fmt(p.x)}",
            f"  eps = {_fmt(eps)}",
            f"  form: {form.describe()}",
        ]
        if error is None:
            parts.append(_numbers(got, expected, tol))
            parts.append(
                pathwise_diagnosis(
                    lambda m, qq, xx, e: _call(fn, m, qq, xx, e),
                    form,
                    p.model,
                    p.q,
                    p.x,
                    eps,
                    rtol,
                    atol,
                )
            )
        return "\n".join(parts)

    suffix = "" if form.name == "joint" else f", form={form.name!r}"
    return _deterministic_check(
        name=f"verify_elbo_estimator(mode='pathwise'{suffix})",
        strategy=cases(),
        evaluate=evaluate,
        explain=explain,
        seed=seed,
        max_examples=max_examples,
        tolerance_text=f"rtol={rtol:g} of the magnitude of the terms of {form.formula} "
        f"+ atol={atol:g}",
    )
