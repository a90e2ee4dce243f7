"""The machinery of verify_iwae_gradient and verify_renyi_gradient: the point a user's
function sees, the verifier's own draws of the estimator and its suspects, the
statistical and pathwise checks, the check at the posterior and the diagnoses."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats
from hypothesis import strategies as st
from numpy.typing import NDArray

from .._errors import InvalidInputError
from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ..strategies import ElboProblem
from ._bound_estimator_checks import (
    POSTERIOR_CALLS,
    REFERENCE_FACTOR,
    fits,
)
from ._bound_reference import (
    COEFFICIENTS,
    GRADIENT_ESTIMATORS,
    ZERO_AT_POSTERIOR,
    combine,
    gradient_pieces,
    gradient_sizes,
    noise_entries,
)
from ._bound_suspects import GradientSuspect, gradient_suspects
from ._estimator_diagnosis import diagnosis_calls, second_problem
from ._gradient_cases import (
    _call_with_params,
    _coordinate_names,
    _flat_gradient_pair,
    _flatten_params,
    _param_coordinates,
    _read_gradient,
    repeated_caller,
)
from ._options import (
    BATCHES,
)
from ._parametrisations import Parametrisation
from ._report import VerificationReport, _describe_gaussian, _describe_model, _fmt
from ._returns import invoke
from ._searching import _deterministic_check
from ._statistics import _batch_t, _repeated_calls

FloatArray = NDArray[np.float64]
Triple = tuple[LinearGaussianModel, Gaussian, FloatArray]

#: Rows of the reference draws made at once (bounded memory for large k and K).
_ROWS = 2**20


@dataclass
class _Point:
    """One problem as the user's function sees it: q (or its parameters), the map from
    flat (m, L) gradients to the compared coordinates, their names, and the reader of
    the user's return."""

    model: LinearGaussianModel
    q: Gaussian
    x: FloatArray
    point: Any
    jacobian: FloatArray | None
    names: list[tuple[str, bool]]
    convert: Callable[[Any], FloatArray]

    def pull(self, flat: FloatArray) -> FloatArray:
        return flat if self.jacobian is None else flat @ self.jacobian.T

    def pull_size(self, flat: FloatArray) -> FloatArray:
        return flat if self.jacobian is None else flat @ np.abs(self.jacobian).T

    def call(self, fn: Callable[..., Any], *rest: Any) -> FloatArray:
        if isinstance(self.point, Gaussian):
            return self.convert(invoke(fn, self.model, self.point, self.x, *rest))
        return self.convert(_call_with_params(fn, self.model, self.point, self.x, *rest))

    def describe(self) -> str:
        parts = [_describe_model(self.model), _describe_gaussian("q", self.q)]
        if not isinstance(self.point, Gaussian):
            parts += [f"  params[{key!r}] = {_fmt(value)}" for key, value in self.point.items()]
        parts.append(f"  x = {_fmt(self.x)}")
        return "\n".join(parts)


def _point(
    par: Parametrisation | None, model: LinearGaussianModel, q: Gaussian, x: FloatArray
) -> _Point:
    k = q.dim
    if par is None:
        return _Point(
            model,
            q,
            x,
            q,
            None,
            [(n, True) for n in _coordinate_names(k)],
            functools.partial(_flat_gradient_pair, k=k),
        )
    params = par.from_gaussian(par.project(q))
    member = par.to_gaussian(params)
    rows, cols = np.tril_indices(k)
    columns = []
    for index in range(k + len(rows)):
        basis = np.zeros(k + len(rows))
        basis[index] = 1.0
        grad_l = np.zeros((k, k))
        grad_l[rows, cols] = basis[k:]
        columns.append(_flatten_params(par, par.pullback(params, basis[:k], grad_l)))
    return _Point(
        model,
        member,
        x,
        params,
        np.stack(columns, axis=1),
        _param_coordinates(par, params),
        lambda value: _flatten_params(par, _read_gradient(par, value, params)),
    )


def check_estimator(estimator: Any, alpha: float) -> str:
    """A gradient estimator's name, defined for ``alpha``."""
    if estimator not in GRADIENT_ESTIMATORS:
        raise InvalidInputError(
            f"estimator must be one of {sorted(GRADIENT_ESTIMATORS)}; got estimator={estimator!r}"
        )
    only = GRADIENT_ESTIMATORS[estimator]
    if only is not None and alpha != only:
        raise InvalidInputError(
            f"estimator={estimator!r} is defined for the IWAE bound (alpha=0) only; "
            f"got alpha={alpha!r}"
        )
    return str(estimator)


@dataclass(frozen=True)
class _Settings:
    label: str
    alpha: float
    n: int
    estimator: str
    par: Parametrisation | None
    seed: int
    rtol: float
    atol: float
    distribution: bool = True

    @property
    def suspects(self) -> list[GradientSuspect]:
        return gradient_suspects(self.estimator, self.alpha, self.n)

    def draws(self, point: _Point, count: int, stream: list[int]) -> FloatArray:
        """``count`` reference draws of the estimator and of each suspect: shape
        ``(count, 1 + suspects, coordinates)``."""
        q, dim = point.q, point.q.dim
        coefficient_sets = [COEFFICIENTS[self.estimator]] + [s.coefficients for s in self.suspects]
        rng = np.random.default_rng(stream)
        rows = max(1, _ROWS // (self.n * dim * dim))
        out = []
        done = 0
        while done < count:
            size = min(rows, count - done)
            pieces = gradient_pieces(
                point.model, q, point.x, rng.standard_normal((size, self.n, dim))
            )
            flat = np.stack(
                [combine(pieces, c(pieces[0], self.alpha)) for c in coefficient_sets], axis=1
            )
            out.append(point.pull(flat))
            done += size
        return np.concatenate(out, axis=0)


# ---------------------------------------------------------------------- statistical
def _means(values: FloatArray) -> tuple[FloatArray, FloatArray]:
    mean, standard_error, _ = _batch_t(values, np.zeros(values.shape[1:]))
    return mean, standard_error


def _ks_p(values: FloatArray, reference: FloatArray) -> float:
    """The two-sample Kolmogorov-Smirnov p-value (1 for two identical constants)."""
    if np.ptp(values) == 0.0 and np.ptp(reference) == 0.0 and values[0] == reference[0]:
        return 1.0
    return float(scipy.stats.ks_2samp(values, reference).pvalue)


def _matching(
    reference: FloatArray, settings: _Settings, values: FloatArray, slack: FloatArray
) -> list[GradientSuspect]:
    """Suspects whose every coordinate's mean and distribution the user's match."""
    found = []
    for index, suspect in enumerate(settings.suspects, start=1):
        column = reference[:, index, :]
        if all(
            fits(values[:, i], column[:, i], float(slack[i]), settings.distribution)
            for i in range(values.shape[1])
        ):
            found.append(suspect)
    return found


def _statistical(
    fn: Callable[..., Any], s: _Settings, cases: list[Triple], calls: int, rate: float
) -> VerificationReport:
    __tracebackhide__ = True
    points = [_point(s.par, *case) for case in cases]
    comparisons = sum(len(p.names) for p in points)
    # two tests per coordinate: its mean (two-sided t) and its distribution (KS)
    critical = float(scipy.stats.t.isf(rate / (4 * comparisons), BATCHES - 1))
    ks_level = rate / (2 * comparisons)
    posterior = s.estimator in ZERO_AT_POSTERIOR and (s.par is None or "full" in s.par.cov_kinds)
    worst = 0.0
    for index, point in enumerate(points):
        reference = s.draws(point, REFERENCE_FACTOR * calls, [s.seed, 96, index])
        expected = reference[:, 0, :].mean(axis=0)
        expected_error = reference[:, 0, :].std(axis=0) / math.sqrt(reference.shape[0])
        values = _repeated_calls(
            s.label,
            repeated_caller(fn, point.point),
            point.convert,
            (point.model, point.q, point.x, s.n),
            [s.seed, 97, index],
            calls,
        )
        mean, error = _means(values)
        slack = s.rtol * (np.abs(expected) + 1.0) + s.atol
        spread = np.hypot(error, expected_error)
        gap = np.abs(mean - expected)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(gap <= slack, 0.0, gap / (critical * spread))
        worst = max(worst, float(np.nanmax(ratio)) if ratio.size else 0.0)
        ks = [
            _ks_p(values[:, i], reference[:, 0, i]) if s.distribution else 1.0
            for i in range(values.shape[1])
        ]
        shape_bad = np.array(ks) < ks_level
        if np.any(ratio > 1.0) or np.any(shape_bad) or not np.all(np.isfinite(mean)):
            rows = [
                f"    {name:>12s}: reference {expected[i]: .6g} +- {expected_error[i]:.2g}, "
                f"mean {mean[i]: .6g} +- {error[i]:.2g}; KS p = {ks[i]:.2g}"
                + ("  <-- biased" if not ratio[i] <= 1.0 else "")
                + ("  <-- distribution differs" if shape_bad[i] else "")
                + ("" if free else "  (not a parameter: must be 0)")
                for i, (name, free) in enumerate(point.names)
            ]
            found = _matching(reference, s, values, slack)
            if found:
                found = _confirm(fn, s, point, found, calls, [s.seed, 98, index])
            what = (
                "biased coordinates"
                if np.any(ratio > 1.0)
                else "the estimates' distribution differs"
            )
            raise AssertionError(
                f"{s.label} failed: {what} (seed={s.seed}, problem {index + 1} of "
                f"{len(points)}; critical |t| = {critical:.3g} and Kolmogorov-Smirnov level "
                f"{ks_level:.3g} for false-alarm rate {rate:g} over {comparisons} coordinates "
                f"and both tests; reference: {reference.shape[0]} draws of the estimator by "
                "the verifier)\n"
                + point.describe()
                + "\n"
                + "\n".join(rows)
                + "\n"
                + _gradient_diagnosis(found)
            )
        if posterior:
            _check_zero_at_posterior(fn, s, point, [s.seed, 99, index])
    return VerificationReport(
        check=s.label,
        cases=len(points),
        worst_error=worst,
        tolerance=(
            f"|t| <= {critical:.3g}"
            + (f" and Kolmogorov-Smirnov p >= {ks_level:.3g}" if s.distribution else "")
            + f" per coordinate (false-alarm rate {rate:g})"
        ),
        seed=s.seed,
        details={
            "alpha": s.alpha,
            "k": s.n,
            "estimator": s.estimator,
            "calls": calls,
            "critical_t": critical,
            "ks_level": ks_level if s.distribution else None,
            "posterior_checked": posterior,
        },
    )


def _confirm(
    fn: Callable[..., Any],
    s: _Settings,
    point: _Point,
    found: list[GradientSuspect],
    calls: int,
    stream: list[int],
) -> list[GradientSuspect]:
    model, q, x = second_problem(point.model, point.q, point.x, stream)
    try:
        other = _point(s.par, model, q, x)
    except Exception:
        return []
    values = diagnosis_calls(
        repeated_caller(fn, other.point),
        other.convert,
        (model, other.q, x, s.n),
        [*stream, 1],
        calls,
    )
    if values is None:
        return []
    reference = s.draws(other, REFERENCE_FACTOR * calls, [*stream, 2])
    slack = s.rtol * (np.abs(reference[:, 0, :].mean(axis=0)) + 1.0) + s.atol
    names = {g.name for g in _matching(reference, s, values, slack)}
    return [g for g in found if g.name in names]


def _gradient_diagnosis(found: list[GradientSuspect]) -> str:
    if not found:
        return (
            "Diagnosis: no known bug matches on two problems; see the coordinates marked "
            "'biased' (the docstring of verify_renyi_gradient gives each estimator's formula)."
        )
    return "\n".join(f"Diagnosis: {g.name}.\n  Fix: {g.advice}." for g in found[:3])


def _check_zero_at_posterior(
    fn: Callable[..., Any], s: _Settings, point: _Point, stream: list[int]
) -> None:
    __tracebackhide__ = True
    at = _point(s.par, point.model, point.model.posterior(point.x), point.x)
    eps = np.random.default_rng([*stream, 1]).standard_normal((64, s.n, at.q.dim))
    size = at.pull_size(gradient_sizes(at.model, at.q, at.x, eps)).max(axis=0)
    tolerance = s.rtol * (4.0 * size + 1.0) + s.atol
    for seq in np.random.SeedSequence(stream).spawn(POSTERIOR_CALLS):
        rng = np.random.Generator(np.random.PCG64(seq))
        try:
            got = at.call(fn, rng, s.n)
        except Exception as err:
            raise AssertionError(
                f"{s.label}: fn raised {type(err).__name__}: {err}\n  at q = p(z|x)\n"
                + at.describe()
            ) from err
        if np.all(np.abs(got) <= tolerance):
            continue
        rows = [
            f"    {name:>12s}: got {got[i]: .6g}"
            + ("  <-- not 0" if abs(got[i]) > tolerance[i] else "")
            for i, (name, _) in enumerate(at.names)
        ]
        raise AssertionError(
            f"{s.label} failed at q = p(z|x): there the path term grad_z log w vanishes for "
            f"every draw, so every {s.estimator!r} estimate is exactly 0\n"
            + at.describe()
            + "\n"
            + "\n".join(rows)
            + "\n"
            + _gradient_diagnosis(
                [g for g in gradient_suspects(s.estimator, s.alpha, max(s.n, 2))][:1]
            )
        )


# ---------------------------------------------------------------------- pathwise
def _pathwise(
    fn: Callable[..., Any],
    s: _Settings,
    problems: st.SearchStrategy[ElboProblem],
    max_examples: int,
) -> VerificationReport:
    __tracebackhide__ = True

    @st.composite
    def cases(draw: st.DrawFn) -> tuple[ElboProblem, FloatArray, bool]:
        problem = draw(problems)
        dim = problem.model.latent_dim
        eps = np.array(draw(noise_entries(s.n * dim)))
        at_posterior = (
            draw(st.booleans())
            and problem.x.ndim == 1
            and (s.par is None or "full" in s.par.cov_kinds)
        )
        return problem, eps.reshape(s.n, dim), at_posterior

    def prepare(
        case: tuple[ElboProblem, FloatArray, bool],
    ) -> tuple[_Point, FloatArray, FloatArray]:
        p, eps, at_posterior = case
        point = _point(s.par, p.model, p.model.posterior(p.x) if at_posterior else p.q, p.x)
        pieces = gradient_pieces(point.model, point.q, point.x, eps)
        expected = point.pull(combine(pieces, COEFFICIENTS[s.estimator](pieces[0], s.alpha)))
        size = point.pull_size(gradient_sizes(point.model, point.q, point.x, eps))
        return point, expected, s.rtol * (np.abs(expected) + size + 1.0) + s.atol

    def evaluate(case: tuple[ElboProblem, FloatArray, bool]) -> tuple[float, float, float]:
        point, expected, tolerance = prepare(case)  # before fn runs
        got = point.call(fn, case[1])
        return float(np.max(np.abs(got - expected) / tolerance)), 0.0, 1.0

    def explain(
        case: tuple[ElboProblem, FloatArray, bool],
        got: float,
        expected: float,
        tol: float,
        error: BaseException | None,
    ) -> str:
        point, exact, tolerance = prepare(case)
        parts = [
            point.describe() + ("  (q = p(z|x))" if case[2] else ""),
            f"  eps = {_fmt(case[1])}",
        ]
        if error is None:
            values = point.call(fn, case[1])
            parts += [
                f"    {name:>12s}: expected {exact[i]: .10g}, got {values[i]: .10g}"
                + ("  <-- off" if abs(values[i] - exact[i]) > tolerance[i] else "")
                for i, (name, _) in enumerate(point.names)
            ]
            parts.append(_pathwise_diagnosis(fn, s, point, case[1], values, tolerance))
        return "\n".join(parts)

    return _deterministic_check(
        name=s.label,
        strategy=cases(),
        evaluate=evaluate,
        explain=explain,
        seed=s.seed,
        max_examples=max_examples,
        tolerance_text=(
            f"|got - exact| <= rtol={s.rtol:g} * (|exact| + magnitude + 1) + atol={s.atol:g} "
            "per entry, the magnitude being the summed sizes of the per-sample terms"
        ),
    )


def _pathwise_diagnosis(
    fn: Callable[..., Any],
    s: _Settings,
    point: _Point,
    eps: FloatArray,
    got: FloatArray,
    tolerance: FloatArray,
) -> str:
    # two generic noises besides the (often shrunk, degenerate) failing one
    others = np.random.default_rng([s.n, point.q.dim, 7]).standard_normal((2, s.n, point.q.dim))
    try:
        probes = [(eps, got)] + [(noise, point.call(fn, noise)) for noise in others]
    except Exception:
        return _gradient_diagnosis([])
    found = []
    for suspect in s.suspects:
        ok = True
        for noise, value in probes:
            pieces = gradient_pieces(point.model, point.q, point.x, noise)
            predicted = point.pull(combine(pieces, suspect.coefficients(pieces[0], s.alpha)))
            size = point.pull_size(gradient_sizes(point.model, point.q, point.x, noise))
            allowed = np.maximum(tolerance, 1e-6 * (np.abs(predicted) + size + 1.0))
            ok = ok and bool(np.all(np.abs(predicted - value) <= allowed))
        if ok:
            found.append(suspect)
    if found:
        return _gradient_diagnosis(found)
    exact = []
    for noise, _ in probes:
        pieces = gradient_pieces(point.model, point.q, point.x, noise)
        exact.append(point.pull(combine(pieces, COEFFICIENTS[s.estimator](pieces[0], s.alpha))))
    return (
        _gradient_diagnosis([])
        + "\n  "
        + describe_gradient_gap(
            [value for _, value in probes], exact, tolerance, [name for name, _ in point.names]
        )
    )


def describe_gradient_gap(
    got: list[FloatArray], exact: list[FloatArray], tolerance: FloatArray, names: list[str]
) -> str:
    """What the gaps at three noises say: which coordinates are off, and whether the
    returns are the right ones times one factor, zero, or off by the same amount."""
    gaps = [g - e for g, e in zip(got, exact, strict=True)]
    off = np.any([np.abs(gap) > tolerance for gap in gaps], axis=0)
    listed = [name for name, bad in zip(names, off, strict=True) if bad]
    where = f"Off coordinates: {', '.join(listed[:6])}{' ...' if len(listed) > 6 else ''}."
    if all(np.all(np.abs(g[off]) <= tolerance[off]) for g in got):
        return where + " Your values there are 0 at every noise."
    if all(
        np.allclose(gaps[0][off], gap[off], rtol=1e-6, atol=float(np.max(tolerance)))
        for gap in gaps[1:]
    ):
        return where + " The gap is the same at three noises: a term that does not depend on eps."
    ratios = np.concatenate(
        [
            g[off] / e[off]
            for g, e in zip(got, exact, strict=True)
            if np.all(np.abs(e[off]) > tolerance[off])
        ]
        or [np.array([])]
    )
    if ratios.size and np.allclose(ratios, ratios[0], rtol=1e-6):
        return where + f" Your values there are the right ones times {ratios[0]:.6g}."
    return where + (
        " The gap changes with the noise: compare your per-sample path terms "
        "grad_z log w(z_j) and weights with the formula of the estimator."
    )
