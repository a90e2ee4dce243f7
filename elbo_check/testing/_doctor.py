r"""The loss doctor: say which convention a loss implements (reductions, scale, sign, beta,
constants), not only whether it is the ELBO."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats

from .._errors import InvalidInputError
from ._doctor_probes import (
    PROBLEM_CLASSES,
    ROW_COLUMNS,
    Design,
    Fit,
    ProblemClass,
    fit,
    probe,
)
from ._doctor_report import LossDiagnosis
from ._doctor_verdict import diagnose
from ._options import (
    DEFAULT_FALSE_ALARM_RATE,
    _check_callable,
    _is_real,
    _seed,
    check_choice,
    check_count,
    check_flag,
    check_kinds,
    check_rate,
    check_tolerance,
)
from ._returns import BadReturn

__all__ = ["diagnose_loss"]

_KINDS = {
    "q_kinds": ("full", "diagonal"),
    "prior_kinds": ("general", "standard"),
    "noise_kinds": ("diagonal", "isotropic"),
}


def _classes(q_kinds: Any, prior_kinds: Any, noise_kinds: Any) -> list[ProblemClass]:
    q, prior, noise = (
        _KINDS[name] if value is None else check_kinds(name, value, _KINDS[name])
        for name, value in (
            ("q_kinds", q_kinds),
            ("prior_kinds", prior_kinds),
            ("noise_kinds", noise_kinds),
        )
    )
    noise_of = {"diagonal": "diagonal", "unit": "isotropic"}
    chosen = [
        c
        for c in PROBLEM_CLASSES
        if c.q_kind in q and c.prior_kind in prior and noise_of[c.noise_kind] in noise
    ]
    if not chosen:
        raise InvalidInputError(
            f"no class of problems has q_kinds={q}, prior_kinds={prior} and noise_kinds={noise}: "
            "the doctor probes a full or diagonal q with a general prior and diagonal noise, "
            "or a diagonal q with a standard-normal prior and diagonal or unit noise"
        )
    return chosen


def _assumptions(general: ProblemClass, found: ProblemClass) -> str:
    """What a loss identified only on ``found`` assumes that ``general`` does not have."""
    parts = []
    if general.q_kind != found.q_kind:
        parts.append("a diagonal q (it reads only q's variances)")
    if general.prior_kind != found.prior_kind:
        parts.append("a standard-normal prior")
    if general.noise_kind != found.noise_kind:
        parts.append("unit noise variance (a squared-error reconstruction)")
    return "the loss assumes " + " and ".join(parts) + " (as most VAE code does)"


def diagnose_loss(
    fn: Callable[..., Any],
    *,
    objective: str = "loss",
    mode: str = "exact",
    beta: float | None = None,
    up_to_constant: bool = False,
    n_samples: int = 4,
    calls: int | None = None,
    n_problems: int | None = None,
    q_kinds: Sequence[str] | None = None,
    prior_kinds: Sequence[str] | None = None,
    noise_kinds: Sequence[str] | None = None,
    seed: int | np.random.Generator | None = None,
    rtol: float = 1e-6,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
) -> LossDiagnosis:
    r"""Name the convention a batched loss implements: reductions, scale, sign, beta, constants.

    ``fn(model, q, x)`` (``mode="exact"``) or ``fn(model, q, x, rng, n_samples)``
    (``mode="statistical"``, a Monte-Carlo loss) gets a batch: ``x`` of shape ``(B,
    D)`` and ``q`` with one member per row, and returns the loss over the batch (a
    scalar) or one value per row (shape ``(B,)``). The doctor calls it on designed
    problems at a base design point :math:`(B, D, K, n) = (3, 4, 2, n)` and at the
    points that double one of them, fits its values to the exact per-row pieces of the
    ELBO (the expected log-likelihood's data fit and :math:`\log\det\Psi` term, the
    prior's cross-entropy, q's entropy, batch sums, a constant) and reads off

    * the coefficient of each term and how it scales with :math:`B, D, K, n`: a sum or
      a mean over the rows, the features, the latent dimensions, the samples;
    * the sign, a beta (the KL's weight against the reconstruction's), whether the
      entropy enters with the cross-entropy, terms summed over the whole batch inside
      a per-row value, and which constants (:math:`\tfrac D2\log 2\pi`,
      :math:`\tfrac12\log\det\Psi`) are kept.

    The report says whether the loss is the ELBO (summed or averaged over the batch,
    with the sign of ``objective``), a positive multiple of it (fine for optimisation:
    the same optimum), a beta-ELBO (for :math:`\beta \ge 1` still a lower bound, a
    looser one; for :math:`\beta < 1` not a bound) or none of these, and why.

    Losses that assume a diagonal q, a standard-normal prior or unit noise (most VAE
    code) are recognised: the doctor tries those problems when the loss is not a
    combination of the pieces on more general ones, and says so.

    Parameters
    ----------
    fn : callable
        The loss, batched; see above.
    objective : {"loss", "elbo"}
        What ``fn`` is meant to return: a loss to minimise (a positive multiple of
        :math:`-\mathrm{ELBO}`; default) or the ELBO to maximise.
    mode : {"exact", "statistical"}
        A deterministic loss, or a Monte-Carlo one called ``calls`` times per problem
        with independent generators (coefficients then carry standard errors).
    beta : float, optional
        A KL weight you chose on purpose: a beta-ELBO with this (constant) beta is then
        ``ok``.
    up_to_constant : bool
        Accept dropped constants (:math:`\tfrac D2\log 2\pi`, :math:`\log\det\Psi`).
    n_samples : int
        Samples per call at the base design (``mode="statistical"``); doubled once.
    calls : int, optional
        Calls per problem in statistical mode (default 64).
    n_problems : int, optional
        Problems per design point (default 12).
    q_kinds, prior_kinds, noise_kinds : sequence of str, optional
        Restrict the problems: q ``"full"`` / ``"diagonal"``, prior ``"general"`` /
        ``"standard"``, noise ``"diagonal"`` / ``"isotropic"`` (unit variance).
    seed : int or numpy.random.Generator, optional
        Seeds the problems and the generators handed to ``fn``.
    rtol : float
        Round-off allowance of a deterministic loss, relative to the magnitude of the
        terms (raised to 1e-4 when ``fn`` returns float32).
    false_alarm_rate : float
        In statistical mode, the probability that a loss of some convention is given
        another (Bonferroni over every coefficient and fit).

    Returns
    -------
    LossDiagnosis
        ``str(report)`` says what the loss is; ``report.ok``, ``report.kind``,
        ``report.conventions`` and ``report.terms`` hold the findings.

    Raises
    ------
    InvalidInputError
        For an invalid option, or when ``fn`` returns something that is not a finite
        scalar or one value per row.
    AssertionError
        When ``fn`` raises on every class of problems (the error is chained).

    See Also
    --------
    verify_elbo : Checks an ELBO term by term and names a wrong term.

    Notes
    -----
    At each design point the values :math:`y` are fitted by least squares (weighted by
    their Monte-Carlo variances) to :math:`y = a_F F + a_P P + a_C C + a_H H + c`, with
    :math:`F` the data fit :math:`-\tfrac12\mathbb E_q\lVert x - Wz - b\rVert^2_{\Psi^{-1}}`,
    :math:`P = -\tfrac12\log\det\Psi`, :math:`C` the prior's cross-entropy and
    :math:`H` q's entropy, each without its constant and summed over the batch. The
    ELBO summed over the batch has :math:`a_F = a_P = 1`, :math:`a_C = -a_H = -1` and
    :math:`c` equal to its constants. A coefficient that halves when :math:`B` doubles
    is a mean over rows; one that halves when :math:`K` doubles, a mean over latent
    dimensions; and so on. Exact losses must fit within ``rtol``; Monte-Carlo ones pass
    a chi-squared test of the residuals, and their coefficients are compared within
    :math:`z` standard errors, :math:`z` the normal quantile of the Bonferroni-corrected
    ``false_alarm_rate``.

    Examples
    --------
    A VAE loss that averages its KL over the latent dimensions is a beta-ELBO with
    beta = 1/K, which is not a bound:

    >>> import numpy as np
    >>> from elbo_check.testing import diagnose_loss
    >>> def loss(model, q, x):
    ...     w, b, psi = model.weights, model.bias, model.noise_cov
    ...     m, var = q.mean, q.variances                     # (B, K): diagonal q
    ...     fit = ((x - m @ w.T - b) ** 2 + var @ (w**2).T) / psi
    ...     log_lik = -0.5 * (fit + np.log(2 * np.pi * psi)).sum(-1)
    ...     kl = 0.5 * (var + m**2 - 1 - np.log(var))       # N(0, I) prior
    ...     return np.mean(-log_lik + kl.mean(-1))
    >>> report = diagnose_loss(loss)
    >>> print(report.summary)  # doctest: +NORMALIZE_WHITESPACE
    the mean over the batch of [-(log-likelihood summed over the 4 features)
                                + (KL averaged over the 2 latent dimensions)]
    >>> report.kind, report.conventions["beta"], report.ok
    ('beta', '1/K', False)
    """
    __tracebackhide__ = True
    _check_callable(fn)
    objective = check_choice("objective", objective, ("loss", "elbo"))
    mode = check_choice("mode", mode, ("exact", "statistical"))
    up_to_constant = check_flag("up_to_constant", up_to_constant)
    if beta is not None:
        if not _is_real(beta) or not 0 < beta < math.inf:
            raise InvalidInputError(f"beta must be a positive finite number; got beta={beta!r}")
        beta = float(beta)
    samples = check_count("n_samples", n_samples, 4) if mode == "statistical" else 0
    calls = check_count("calls", calls, 64, minimum=4) if mode == "statistical" else 1
    problems = check_count("n_problems", n_problems, 12, minimum=len(ROW_COLUMNS) + 2)
    rtol = check_tolerance("rtol", rtol)
    false_alarm_rate = check_rate("false_alarm_rate", false_alarm_rate)
    classes = _classes(q_kinds, prior_kinds, noise_kinds)
    root = _seed(seed)
    base = Design(samples=samples)
    axes = ("rows", "features", "latent") + (("samples",) if samples else ())
    comparisons = len(ROW_COLUMNS) * (len(axes) + 1)
    z = float(stats.norm.isf(false_alarm_rate / (2 * comparisons)))
    level = false_alarm_rate / (len(axes) + 1)
    notes: list[str] = []
    failure: Exception | None = None
    for index, kind in enumerate(classes):

        def measure(
            design: Design, salt: int, kind: ProblemClass = kind, index: int = index
        ) -> Fit:
            found = probe(
                fn, design, kind, seed=[root, index, salt], n_problems=problems, calls=calls
            )
            return fit(found, rtol=max(rtol, 1e-4) if found.float32 else rtol, level=level)

        try:
            at_base = measure(base, 0)
        except BadReturn:
            raise
        except Exception as err:  # the loss may support only simpler problems
            failure = err
            notes.append(f"on problems with {kind.text()} fn raised {type(err).__name__}: {err}")
            continue
        if not at_base.fits:
            notes.append(
                f"on problems with {kind.text()} the values are not a combination of the "
                f"ELBO's terms (largest residual {at_base.residual:.3g})"
            )
            continue
        doubled = {axis: measure(base.doubled(axis), i + 1) for i, axis in enumerate(axes)}
        misfit = [a for a, f in doubled.items() if not f.fits]
        if misfit:
            notes.append(
                f"the values stop being a combination of the terms when {misfit[0]} doubles"
            )
            continue
        if index:  # simpler problems than the first: say what the loss assumes
            notes.insert(0, _assumptions(classes[0], kind))
        return diagnose(
            at_base,
            doubled,
            z=z if mode == "statistical" else 1.0,
            per_row=at_base.names == ROW_COLUMNS,
            objective=objective,
            declared_beta=beta,
            up_to_constant=up_to_constant,
            problems=kind,
            notes=notes,
        )
    if failure is not None and all("raised" in note for note in notes):
        raise AssertionError(
            "diagnose_loss: fn raised on every class of problems it was given:\n  "
            + "\n  ".join(notes)
        ) from failure
    return LossDiagnosis(
        kind="other",
        ok=False,
        summary="not a combination of the ELBO's terms",
        verdict=(
            "None of these: on no class of problems are the values a combination of the "
            "reconstruction, the KL (or its cross-entropy and entropy) and a constant, so "
            "a term is computed wrongly, not only scaled or reduced; verify_elbo (or "
            "verify_elbo_estimator) names which."
        ),
        terms=(),
        conventions={},  # type: ignore[arg-type]
        scale=None,
        beta=None,
        problems=None,
        design=base,
        notes=tuple(notes),
    )
