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
    be an unbiased estimate of the ELBO (:math:`\mathbb E_q[\log p(x, z) - \log
    q(z)]`, exact from :meth:`~elbo_check.LinearGaussianModel.elbo`). On each of
    ``n_problems`` fixed problems it is called ``calls`` times, each with an independent
    :class:`numpy.random.Generator`; the ``calls`` estimates are split into
    ``BATCHES`` = 40 consecutive batches, and the mean estimate :math:`\bar y` is
    t-tested against the exact ELBO with the standard error :math:`s` from the 40 batch
    means (Notes). It fails when :math:`|\bar y - \mathrm{ELBO}| > c\,s` with
    :math:`c` the two-sided critical value of Student's t with 39 degrees of freedom
    at level ``false_alarm_rate / n_problems`` (Bonferroni), so a correct estimator
    fails a call with probability at most ``false_alarm_rate`` (up to the normal
    approximation of batch means of ``calls / 40`` estimates).

    ``mode="pathwise"``: ``fn(model, q, x, eps) -> float`` with standard-normal noise
    ``eps`` of shape ``(n, K)`` given must return exactly the estimate of its ``form`` at
    :math:`z_i = m + L\varepsilon_i` [2]_: a deterministic check over hypothesis-drawn
    problems and noise (``n`` in 1..4, entries in [-3, 3]), with shrinking, within
    ``rtol * (magnitude + 1) + atol`` (:meth:`ElboForm.magnitude`).

    ``form`` says how the estimate combines sampled and analytic terms. All three forms
    have the ELBO as their expectation, so the statistical target is the same, but they
    differ per sample and in their typical bugs (see :class:`ElboForm`):

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
        The estimator under test, with the signature of its mode (above). It must return
        a real number (Python, numpy, torch or JAX) and leave its arguments unchanged;
        in statistical mode it must draw its randomness from ``rng`` only.
    mode : {"statistical", "pathwise"}, optional
        The check to run (default ``"statistical"``).
    form : {"joint", "analytic_kl", "analytic_entropy"} or ElboForm, optional
        The form of the estimate (default ``"joint"``): the exact target in pathwise
        mode, the bugs a diagnosis looks for in both.
    seed : int or numpy.random.Generator, optional
        Makes the check reproducible: an integer >= 0, or a generator to draw one from
        (default: the pytest plugin's ``--elbo-check-seed``, else
        ``$ELBO_CHECK_SEED``, else 0). It seeds the problems, the search and the
        generators passed to ``fn``.
    n_samples : int, optional
        Statistical mode: the ``n_samples`` argument passed to ``fn``, >= 1 (default
        8). The check tests unbiasedness whatever it is.
    calls : int, optional
        Statistical mode: calls of ``fn`` per problem (per batch with ``batch_size``),
        at least ``2 * BATCHES`` = 80 (default from ``profile``: 800 for ``"dev"``, 1600
        for ``"ci"``, 4000 for ``"thorough"``). More calls detect smaller biases (Notes).
    problems : strategy or sequence, optional
        Your own problems instead of the verifier's: a hypothesis strategy of
        :class:`~elbo_check.strategies.ElboProblem` (searched in pathwise mode, drawn
        from ``n_problems`` times in statistical mode) or a non-empty sequence of them
        or of ``(model, q, x)`` tuples (each checked, in order). With ``batch_size=B``
        each problem is one batch: a ``q`` of batch shape ``(B,)`` and ``x`` of shape
        ``(B, D)``, sharing the model. Default: in statistical mode ``n_problems``
        fixed realistic problems (q near the posterior; with ``batch_size``, each grown
        into a batch of ``B`` observations of its model, each with its own q), in
        pathwise mode problems drawn by :func:`~elbo_check.strategies.elbo_problems`.
    n_problems : int, optional
        Statistical mode: problems (batches) drawn from a strategy or the verifier's
        own, >= 1 (default from ``profile``: 4 for ``"dev"``, 6 for ``"ci"``, 12 for
        ``"thorough"``). Not with a sequence of problems.
    q_kinds : sequence of str, optional
        Covariance kinds of q: some of ``"full"``, ``"diagonal"`` and ``"isotropic"``
        (default: ``("full",)`` in statistical mode, all three in pathwise mode), e.g.
        ``("diagonal",)`` for a mean-field estimator.
    false_alarm_rate : float, optional
        Statistical mode: the probability that a correct estimator fails the call (all
        problems together), in (0, 1) (default ``DEFAULT_FALSE_ALARM_RATE`` = 1e-6).
        Smaller values raise the critical value :math:`c` and need larger biases to
        fail.
    profile : {"dev", "ci", "thorough"}, optional
        The effort profile that sets the defaults of ``calls``, ``n_problems`` and
        ``max_examples`` (default: the pytest plugin's ``--elbo-check-profile``, else
        ``$ELBO_CHECK_PROFILE``, else ``"dev"``).
    max_examples : int, optional
        Pathwise mode: cases the search tries, >= 1 (default from ``profile``: 100, 300
        or 2000).
    rtol, atol : float, optional
        Tolerances relative to the magnitude of the terms and in nats (defaults 1e-6
        and 1e-8): the comparison of the pathwise mode; in statistical mode a slack, a
        mean estimate within ``rtol * (|E_q log p(x|z)| + KL(q || p(z)) + 1) + atol`` of
        the ELBO passing whatever its t. Finite numbers >= 0.
    batch_size : int, optional
        Check batched code (above) on batches of this many members, >= 1 (default
        None: unbatched).
    time_budget : float, optional
        Seconds the call may take, positive and finite (default None: no limit). When
        they run out, a statistical check stops between problems: the report covers the
        problems completed, each tested at the planned level, with ``worst_error`` NaN
        (if not even the first problem is complete, InvalidInputError); the pathwise
        search stops drawing cases (a failure already found is still shrunk and
        reported). ``str(report)`` then says so and
        ``report.details["stopped_by_time_budget"]`` holds the budget.
    dtype : str or dtype, optional
        The floating precision ``fn`` computes in: ``"float16"``, ``"bfloat16"``,
        ``"float32"``, ``"float64"`` or a numpy, torch or JAX floating dtype (default
        None: the coarsest floating dtype ``fn`` has returned; float64 for Python
        floats). In pathwise mode, below float64 and with ``rtol`` left at its default,
        each case's relative tolerance widens to :math:`\max(10^{-6},\, 8\,\epsilon\,(D
        + K)\,\kappa)`, with :math:`\epsilon` the dtype's machine epsilon and
        :math:`\kappa` a bound on the case's condition numbers; the statistical test
        does not change.
    **model_options
        Restrict the models: ``noise_kinds`` and ``prior_kinds`` in both modes (e.g.
        ``noise_kinds=("isotropic", "diagonal")`` for code without full noise); in
        statistical mode any other option of
        :func:`~elbo_check.strategies.linear_gaussian_models` makes the problems drawn
        from :func:`~elbo_check.strategies.elbo_problems` instead of the fixed ones.

    Returns
    -------
    VerificationReport
        When the check passes: ``check`` (the call, with its mode and options),
        ``cases`` (problems tested, or batches; cases tried in pathwise mode),
        ``worst_error`` (the largest ``|t| / c`` in statistical mode, ``|gap| /
        tolerance`` in pathwise mode; at most 1), ``tolerance`` (in words), ``seed``
        and ``details``: in statistical mode ``"calls"``, ``"n_samples"``,
        ``"critical_t"`` (:math:`c`) and ``"form"``, with ``batch_size`` also
        ``"batch_size"`` and ``"members"``.

    Raises
    ------
    AssertionError
        The verdict, when the check fails. Statistical mode: the problem (model, ``q``,
        ``x``), the exact ELBO, the mean estimate with its standard error, :math:`t` and
        :math:`c`, the z-tests on further problems like it, and a diagnosis
        (``Diagnosis: ...``, ``Fix: ...``); also when estimates that do not vary across
        calls (is ``rng`` ignored?) are off, or are not finite. Pathwise mode: the
        minimal failing case with ``eps``, the expected and the returned value, the gap
        and the tolerance, and a diagnosis. In both, ``fn`` fails with the reason in the
        message when it raises (its exception is chained as the cause), returns
        something other than a real scalar (with ``batch_size``, anything but ``B`` values), or
        edits an argument in place; in pathwise mode also when it returns NaN or gives
        two values for one input.
    InvalidInputError
        Before ``fn`` is called, for a bad option: ``fn`` not callable, an unknown
        ``mode`` or ``form``, ``false_alarm_rate`` outside (0, 1), ``rtol`` or ``atol``
        not a finite number >= 0, ``seed`` negative or of another type, ``n_samples``,
        ``n_problems``, ``max_examples`` or ``batch_size`` not an integer >= 1,
        ``calls`` below 80, an unknown ``profile``, ``q_kinds`` empty or with another
        kind, ``problems`` of another type, empty or with a malformed problem,
        ``n_problems`` with a sequence of problems, a strategy that gives fewer than
        ``n_problems`` examples, ``time_budget`` not positive and finite, ``dtype`` not
        a floating dtype; in statistical mode a model option that
        :func:`~elbo_check.strategies.linear_gaussian_models` does not take, or noise
        and prior kinds no fixed problem has; or an invalid ``$ELBO_CHECK_SEED`` or
        ``$ELBO_CHECK_PROFILE`` when ``seed`` or ``profile`` is left to them. Also
        when ``time_budget`` runs out before the first statistical problem is complete
        (no verdict).
    TypeError
        Pathwise mode: if a model option is not a parameter of
        :func:`~elbo_check.strategies.linear_gaussian_models`.
    hypothesis.errors.InvalidArgument
        Pathwise mode: if a model option has an invalid value (when the first problem
        is drawn).

    Warns
    -----
    DeprecationWarning
        If ``problems`` is an integer, the former spelling of ``n_problems``.

    See Also
    --------
    verify_elbo : Checks an exact ELBO.
    verify_elbo_gradient : Checks the gradient of the ELBO, or of an estimate.

    Notes
    -----
    With :math:`y_1, \dots, y_N` the estimates of one problem (:math:`N` = ``calls``)
    and :math:`\bar y_1, \dots, \bar y_{40}` the means of 40 consecutive batches of
    them,

    .. math::
        \bar y = \frac1{40}\sum_{j=1}^{40}\bar y_j,\qquad
        s^2 = \frac{1}{40\cdot 39}\sum_{j=1}^{40}(\bar y_j - \bar y)^2,\qquad
        t = \frac{\bar y - \mathrm{ELBO}}{s},

    and :math:`c = t_{39}^{-1}\bigl(1 - \alpha / (2P)\bigr)` for ``false_alarm_rate``
    :math:`\alpha` over :math:`P` comparisons (problems, or batch members). Batch
    means make :math:`t` close to Student's t even when single estimates are skewed
    (the batch-means method [1]_). A bias :math:`b` of an estimator whose single
    estimates have standard deviation :math:`\sigma` is detected about half the time
    when :math:`|b| \approx c\,\sigma/\sqrt N` and almost always from
    :math:`(c + 2)\,\sigma/\sqrt N`: with the dev profile (:math:`N = 800`, four
    problems, :math:`c \approx 6.2`) biases above about :math:`0.3\,\sigma`.

    References
    ----------
    .. [1] B. Schmeiser, "Batch size effects in the analysis of simulation output",
       Operations Research 30(3):556-568, 1982.
    .. [2] D. P. Kingma and M. Welling, "Auto-encoding variational Bayes", ICLR 2014,
       arXiv:1312.6114 (the reparameterised estimator :math:`z = m + L\varepsilon`).

    Examples
    --------
    A reparameterised estimator of the joint form passes; its critical value is
    Student's t quantile at the Bonferroni-corrected level:

    >>> import numpy as np
    >>> from scipy.stats import t
    >>> from elbo_check.testing import verify_elbo_estimator
    >>> def elbo_estimate(model, q, x, rng, n_samples):
    ...     z = q.mean + rng.standard_normal((n_samples, q.dim)) @ q.scale_tril.T
    ...     return np.mean(model.log_joint(x, z) - q.log_prob(z))
    >>> report = verify_elbo_estimator(elbo_estimate, n_problems=2, calls=80, seed=0)
    >>> report.cases, report.details["calls"], report.worst_error <= 1
    (2, 80, True)
    >>> round(report.details["critical_t"], 4), round(float(t.isf(1e-6 / (2 * 2), df=39)), 4)
    (6.011, 6.011)

    Samples drawn with the covariance where its Cholesky factor belongs, in pathwise
    mode on a problem of your own (the statistical mode names the same bug):

    >>> from elbo_check import Gaussian, ppca
    >>> def cov_as_scale(model, q, x, eps):
    ...     z = q.mean + eps @ q.cov.T
    ...     return np.mean(model.log_joint(x, z) - q.log_prob(z))
    >>> model = ppca(weights=[[1.0, 0.5], [0.2, -0.3], [0.0, 1.0]],
    ...              mean=[0.0, 1.0, -1.0], noise_variance=0.4)
    >>> q = Gaussian.from_covariance(mean=[0.3, -0.2], cov=[[0.5, 0.2], [0.2, 0.8]])
    >>> x = np.array([0.5, 1.0, -2.0])
    >>> verify_elbo_estimator(cov_as_scale, mode="pathwise", problems=[(model, q, x)], seed=0)
    Traceback (most recent call last):
      ...
    AssertionError: verify_elbo_estimator(mode='pathwise') failed (seed=0; minimal example ...
    ...
    Diagnosis: samples use the covariance as the scale (z = m + S eps).
      Fix: the scale is the Cholesky factor L.
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
