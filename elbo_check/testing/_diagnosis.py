"""Name the bug behind a mismatch: catalogues of common mistakes and term probes.

When a user's value disagrees with the oracle, the verifiers evaluate the user's
function on a few *probes* — the failing case and variations of it (q's mean moved,
q's covariance changed, another observation) — and compare the result with

1. a catalogue of *suspects*: the value each well-known bug would produce (entropy
   missing, KL averaged over dimensions, a transposed Cholesky factor, ...). A suspect
   is reported when it reproduces the user's value on every probe where it applies and
   explains the failure on at least two *independent* problems (``Probe.problem``:
   another model, q and x, not a variation of the failing case), so that the name does
   not depend on which case the search happened to shrink to;
2. a *term-level decomposition* (:func:`fit_terms`): the gap ``got - expected`` written
   as a sum of at most two term-level perturbations of the exact value (a term scaled
   by a constant fitted by least squares over all probes, dropped or sign-flipped; a
   parameter replaced by its inverse, square, square root, diagonal part, ...), named
   when it fits every probe within tolerance on at least two independent problems;
3. if neither fits, a description of what the gap depends on (nothing, q's mean,
   q's covariance, x) and whether it is a constant or a scale factor.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Suspect:
    """A known bug: its name, what to fix, and the value a function with it returns.

    ``predict`` receives the same arguments as the user's function and returns the
    buggy value, or ``None`` where the bug is not defined (a transposed factor of a
    1x1 matrix, say).
    """

    name: str
    advice: str
    predict: Callable[..., Any]


def match_suspects(
    suspects: Sequence[Suspect],
    probes: Sequence[tuple[tuple[Any, ...], Any, Any, Any]],
) -> list[Suspect]:
    """Suspects that reproduce the user's value on every probe where they apply.

    Each probe is ``(arguments, got, expected, tolerance)``; values may be scalars or
    arrays (compared entry by entry). A suspect must apply on at least two probes,
    match ``got`` within ``tolerance`` on all of them, and differ from ``expected`` by
    more than ``tolerance`` on at least one (else it explains nothing).
    """
    found = []
    for suspect in suspects:
        applied, informative, ok = 0, False, True
        for arguments, got, expected, tolerance in probes:
            try:
                predicted = suspect.predict(*arguments)
            except (ValueError, np.linalg.LinAlgError, FloatingPointError):
                predicted = None
            if predicted is None:
                continue
            predicted = np.asarray(predicted, dtype=np.float64)
            if not np.all(np.isfinite(predicted)):
                continue
            applied += 1
            if not np.all(np.abs(np.asarray(got) - predicted) <= tolerance):
                ok = False
                break
            informative = informative or bool(
                np.any(np.abs(predicted - np.asarray(expected)) > tolerance)
            )
        if ok and informative and applied >= 2:
            found.append(suspect)
    return found


@dataclass(frozen=True)
class Probe:
    """The user's value on one set of arguments, with the exact one and its tolerance.

    ``problem`` numbers the independent problem the arguments belong to (variations of
    one model, q and x share it); ``scale`` is the magnitude the tolerance is relative to.
    """

    arguments: tuple[Any, ...]
    got: float
    expected: float
    tolerance: float
    scale: float
    problem: int


def _predicted(suspect: Suspect, arguments: tuple[Any, ...]) -> FloatArray | None:
    try:
        value = suspect.predict(*arguments)
    except (ValueError, np.linalg.LinAlgError, FloatingPointError, ZeroDivisionError):
        return None
    if value is None:
        return None
    out = np.asarray(value, dtype=np.float64)
    return out if np.all(np.isfinite(out)) else None


def match_suspects_across(
    suspects: Sequence[Suspect], probes: Sequence[Probe], min_problems: int = 2
) -> list[Suspect]:
    """Suspects that reproduce every probe where they apply, on independent problems.

    A suspect must match ``got`` within tolerance wherever it is defined and differ from
    ``expected`` by more than the tolerance on probes of at least ``min_problems``
    different problems: one problem alone may be explained by several bugs at once
    (a standard prior makes "prior mean ignored" and "prior taken as N(0, I)" agree).
    """
    found = []
    for suspect in suspects:
        ok, explained = True, set()
        for probe in probes:
            predicted = _predicted(suspect, probe.arguments)
            if predicted is None:
                continue
            if not np.all(np.abs(probe.got - predicted) <= probe.tolerance):
                ok = False
                break
            if np.any(np.abs(predicted - probe.expected) > probe.tolerance):
                explained.add(probe.problem)
        if ok and len(explained) >= min_problems:
            found.append(suspect)
    return found


@dataclass(frozen=True)
class Term:
    """One term-level perturbation of the exact value, for :func:`fit_terms`.

    ``value(context)`` is the change of the value the perturbation makes on a probe
    (``None`` where it is undefined). A ``free`` term is a term of the exact value
    scaled by a coefficient fitted by least squares (the change is ``(s - 1) * term``,
    so ``value`` returns the term itself and ``describe(s)`` names the scaling); a fixed
    term is a replacement (a parameter inverted, squared, ...) and ``describe(1.0)``
    names it.
    """

    describe: Callable[[float], str]
    advice: str
    value: Callable[[Any], float | None]
    free: bool = False


def nice_number(value: float) -> str:
    """``value`` as a short decimal, an integer or a small fraction."""
    fraction = Fraction(value).limit_denominator(1000)
    if abs(float(fraction) - value) > 1e-6 * max(1.0, abs(value)):
        return f"{value:.6g}"
    if fraction.denominator == 1:
        return str(fraction.numerator)
    denominator = fraction.denominator
    while denominator % 2 == 0:
        denominator //= 2
    while denominator % 5 == 0:
        denominator //= 5
    if denominator == 1:
        return f"{float(fraction):g}"
    return f"{fraction.numerator}/{fraction.denominator}"


def scaled(label: str, special: dict[float, str] | None = None) -> Callable[[float], str]:
    """Describe ``label`` scaled by ``s``: missing (0), sign-flipped (-1) or scaled."""

    def describe(s: float) -> str:
        for target, text in (special or {}).items():
            if abs(s - target) <= 1e-6:
                return text
        if abs(s) <= 1e-6:
            return f"{label} is missing"
        if abs(s + 1.0) <= 1e-6:
            return f"{label} has the wrong sign"
        return f"{label} is scaled by {nice_number(s)}"

    return describe


def _feature_matrix(terms: Sequence[Term], contexts: Sequence[Any]) -> tuple[list[int], FloatArray]:
    usable, columns = [], []
    for index, term in enumerate(terms):
        column = []
        for context in contexts:
            try:
                v = None if context is None else term.value(context)
            except (ValueError, np.linalg.LinAlgError, FloatingPointError, ZeroDivisionError):
                v = None
            if v is None or not np.isfinite(v):
                break
            column.append(float(v))
        else:
            usable.append(index)
            columns.append(column)
    matrix = np.array(columns, dtype=np.float64).T if columns else np.zeros((len(contexts), 0))
    return usable, matrix


def fit_terms(
    terms: Sequence[Term],
    contexts: Sequence[Any],
    probes: Sequence[Probe],
    *,
    max_terms: int = 2,
    min_problems: int = 2,
    center: bool = False,
) -> Suspect | None:
    """The simplest combination of ``terms`` that explains ``got - expected`` everywhere.

    ``contexts[i]`` is what the terms are evaluated on for ``probes[i]``. Combinations
    of one term, then of two, are tried in the order of ``terms``; free coefficients are
    fitted by least squares weighted by the tolerances. The first combination that fits
    every probe within tolerance, needs every one of its terms, and explains the gap on
    at least ``min_problems`` independent problems is returned as a suspect. With
    ``center``, only changes within a problem count (gaps and terms minus their values
    on the problem's first probe): a constant offset per problem is allowed.
    """
    keep = [i for i, c in enumerate(contexts) if c is not None]
    if len(keep) < 3:
        return None
    probes = [probes[i] for i in keep]
    usable, matrix = _feature_matrix(terms, [contexts[i] for i in keep])
    gap = np.array([p.got - p.expected for p in probes])
    tol = np.array([p.tolerance for p in probes])
    problem = np.array([p.problem for p in probes])
    if not np.all(np.isfinite(gap)) or len(set(problem.tolist())) < min_problems:
        return None
    if center:
        for number in set(problem.tolist()):
            rows = np.flatnonzero(problem == number)
            gap[rows] -= gap[rows[0]]
            matrix[rows] -= matrix[rows[0]]
    for size in range(1, max_terms + 1):
        candidates: list[tuple[bool, int, str, str]] = []
        for combo in itertools.combinations(range(len(usable)), size):
            found = _try_combination([terms[usable[c]] for c in combo], matrix[:, combo], gap, tol)
            if found is None:
                continue
            correction, name, advice, nice = found
            explained = {int(g) for g in problem[np.abs(correction) > tol]}
            if len(explained) >= min_problems:
                candidates.append((not nice, len(candidates), name, advice))
        if candidates:
            # Collinear terms (K/2 and K/2 log 2 pi, say) fit equally well: prefer the
            # one whose coefficients are simple numbers, then catalogue order.
            _, _, name, advice = min(candidates)
            return Suspect(name, advice, lambda *_: None)
    return None


def is_nice(value: float) -> bool:
    """An integer, a short decimal (0.005, 12.5) or a fraction with a small denominator."""
    fraction = Fraction(value).limit_denominator(1000)
    if abs(float(fraction) - value) > 1e-6 * max(1.0, abs(value)):
        return False
    denominator = fraction.denominator
    if denominator <= 12:
        return True
    while denominator % 2 == 0:
        denominator //= 2
    while denominator % 5 == 0:
        denominator //= 5
    return denominator == 1


def _try_combination(
    chosen: Sequence[Term], features: FloatArray, gap: FloatArray, tol: FloatArray
) -> tuple[FloatArray, str, str, bool] | None:
    fixed = [i for i, t in enumerate(chosen) if not t.free]
    free = [i for i, t in enumerate(chosen) if t.free]
    target = gap - features[:, fixed].sum(axis=1)
    coefficients = np.zeros(0)
    if free:
        weighted = features[:, free] / tol[:, None]
        coefficients = np.linalg.lstsq(weighted, target / tol, rcond=None)[0]
    correction = gap - target + features[:, free] @ coefficients
    if not np.all(np.abs(gap - correction) <= tol):
        return None
    for i in fixed:  # every term must matter
        if not np.any(np.abs(features[:, i]) > tol):
            return None
    for i, a in zip(free, coefficients, strict=True):
        # A scale within 1e-3 of 1 fits rounding noise (float32 code), not a bug.
        if abs(a) < 1e-3 or not np.any(np.abs(a * features[:, i]) > tol):
            return None
    names = [chosen[i].describe(1.0) for i in fixed]
    names += [chosen[i].describe(1.0 + a) for i, a in zip(free, coefficients, strict=True)]
    advice = "; ".join(dict.fromkeys(t.advice for t in chosen))
    nice = all(is_nice(1.0 + a) for a in coefficients)
    return correction, "; and ".join(names), advice, nice


def rounding_suspect(probes: Sequence[Probe], min_problems: int = 2) -> Suspect | None:
    """Single precision: gaps tiny relative to the terms yet far above float64 rounding.

    Named when every gap is below 1e-4 of the magnitude of the terms and at least
    ``min_problems`` independent problems show gaps above 1e-9 of it (float64 code
    rounds at ~1e-15); called only when no structured explanation fits.
    """
    relative = [(p.problem, abs(p.got - p.expected) / p.scale) for p in probes if p.scale > 0]
    if not relative or max(r for _, r in relative) >= 1e-4:
        return None
    noisy = {g for g, r in relative if r > 1e-9}
    if len(noisy) < min_problems:
        return None
    return Suspect(
        "the value is computed in single precision (float32): the gap is rounding noise of "
        "about 1e-7 relative to the terms",
        "compute in float64, or verify with rtol of about 1e-4 if float32 is intended",
        lambda *_: None,
    )


def describe_gap(
    gaps: dict[str, float], values: dict[str, tuple[float, float]], tolerance: float
) -> str:
    """Say what the gap ``got - expected`` depends on, from probes that vary one thing.

    ``gaps`` maps a probe label (``"original"``, ``"mean moved"``, ``"cov changed"``,
    ``"x changed"``) to its gap; ``values`` maps it to ``(got, expected)``.
    """
    if any(not np.isfinite(got) for got, _ in values.values()):
        return (
            "fn returned a non-finite value where the exact one is finite: a determinant, "
            "product or exponential under- or overflowed; take log-determinants from a "
            "Cholesky factor (2 * sum(log(diag(L)))) instead of log(det(.))"
        )
    base = gaps["original"]
    varies = [label for label, gap in gaps.items() if abs(gap - base) > tolerance]
    ratios = [got / expected for got, expected in values.values() if expected != 0]
    if not varies:
        return (
            f"the gap is the same constant {base:.6g} on every probe (independent of q and "
            "x): a normalising constant is missing or extra; if dropping constants is "
            "intended, verify with up_to_constant=True"
        )
    if len(ratios) == len(values) and np.ptp(ratios) <= 1e-9 * max(1.0, abs(ratios[0])):
        return f"got / expected is the same factor {ratios[0]:.6g} on every probe: a scale factor"
    depends = ", ".join(varies)
    hints = []
    if "cov changed" in varies and "mean moved" not in varies:
        hints.append(
            "it depends on q's covariance but not its mean: look at the entropy, the trace "
            "term tr(Psi^-1 W S W^T) and the prior's tr(S0^-1 S)"
        )
    if "mean moved" in varies and "cov changed" not in varies:
        hints.append(
            "it depends on q's mean but not its covariance: look at the residual x - W m - b "
            "and the prior's (m - mu0)^T S0^-1 (m - mu0)"
        )
    if "x changed" in varies and len(varies) == 1:
        hints.append("it depends on x only: look at the likelihood's residual and noise")
    return f"the gap changes when: {depends}" + ("; " + "; ".join(hints) if hints else "")
