"""verify_elbo_gradient: exact and stochastic gradients in (m, L) or the user's parameters.

With ``parametrisation=None`` the user's function receives q (a Gaussian) and returns the
gradient in q's mean and Cholesky factor; with a :class:`Parametrisation` it receives
that parametrisation's dict of arrays and returns the gradient in them, which is
compared with the oracle's gradient pulled back through the map's exact Jacobian (or,
for :class:`Custom`, a central-difference Jacobian whose error bound joins the
tolerance).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats
from hypothesis import strategies as st
from numpy.typing import NDArray

from .._errors import InvalidInputError, InvalidTypeError
from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ..strategies import (
    COV_KINDS,
    ElboProblem,
    elbo_problems,
    linear_gaussian_models,
    observations,
    variational_gaussians,
)
from ._cases import as_elbo_cases, check_q_kinds, statistical_cases
from ._diagnosis import Suspect, match_suspects
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
from ._parametrisations import (
    Custom,
    FullCovariance,
    FullPrecision,
    FullUnitCholeskyScale,
    Parametrisation,
    _Diagonal,
)
from ._problems import (
    _flat_gradient,
    _flatten,
)
from ._report import (
    VerificationReport,
    _describe_gaussian,
    _describe_model,
    _diagnosis,
    _fmt,
)
from ._returns import InputMutated, invoke, to_array
from ._searching import _deterministic_check
from ._statistics import _batch_t, _repeated_calls, _statistical_calls
from ._suspects import (
    _gradient_suspects,
)

FloatArray = NDArray[np.float64]
Params = dict[str, FloatArray]


# ---------------------------------------------------------------------- gradients in (m, L)
def _gradient_pair(value: Any, k: int) -> tuple[FloatArray, FloatArray]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise InvalidInputError(
            f"fn must return a pair (grad_mean, grad_scale_tril); got {type(value).__name__}"
        )
    grad_mean = to_array(value[0], "grad_mean").reshape(-1)
    grad_factor = to_array(value[1], "grad_scale_tril")
    if grad_mean.shape != (k,) or grad_factor.shape != (k, k):
        raise InvalidInputError(
            f"fn must return grad_mean of shape ({k},) and grad_scale_tril of shape ({k}, {k}); "
            f"got {grad_mean.shape} and {grad_factor.shape}"
        )
    return grad_mean, np.tril(grad_factor)


def _flat_gradient_pair(value: Any, k: int) -> FloatArray:
    """A user's ``(grad_mean, grad_scale_tril)`` as one vector (lower triangle only)."""
    return _flatten(_gradient_pair(value, k))


# ---------------------------------------------------------------------- gradients in params
def _read_gradient(par: Parametrisation, value: Any, params: Params) -> Params:
    """A user's gradient (a dict with ``par.keys``, or a tuple in that order) as arrays of
    the parameters' shapes; a clear error for anything else."""
    if isinstance(value, Mapping):
        par._check_keys(value, "the gradient fn returned")
        items = [value[key] for key in par.keys]
    elif isinstance(value, (tuple, list)) and len(value) == len(par.keys):
        items = list(value)
    else:
        length = f" of length {len(value)}" if isinstance(value, (tuple, list)) else ""
        raise InvalidInputError(
            f"fn must return a dict with keys {par.keys} or a tuple of {len(par.keys)} "
            f"arrays in that order for {par!r}; got {type(value).__name__}{length}"
        )
    out = {}
    for key, item in zip(par.keys, items, strict=True):
        array = to_array(item, f"fn (gradient {key!r})")
        shape = params[key].shape
        if array.shape != shape and not (len(shape) == 1 and array.size == shape[0]):
            raise InvalidInputError(
                f"fn's gradient {key!r} must have the shape {shape} of params[{key!r}]; "
                f"got {array.shape}"
            )
        out[key] = array.reshape(shape)
    return out


def _flatten_params(par: Parametrisation, grads: Mapping[str, FloatArray]) -> FloatArray:
    """The compared coordinates of a gradient as one vector: every entry, except that a
    symmetric matrix contributes the lower triangle of its symmetric part."""
    parts = []
    for key in par.keys:
        value = np.asarray(grads[key], dtype=np.float64)
        if par._kind(key) == "symmetric":
            rows, cols = np.tril_indices(value.shape[0])
            value = (0.5 * (value + value.T))[rows, cols]
        parts.append(value.reshape(-1))
    return np.concatenate(parts)


def _param_coordinates(par: Parametrisation, params: Params) -> list[tuple[str, bool]]:
    """Names of the coordinates of :func:`_flatten_params`, each with whether it is a free
    parameter (``False``: above the diagonal of a factor, or a unit diagonal)."""
    names: list[tuple[str, bool]] = []
    for key in par.keys:
        shape, kind = params[key].shape, par._kind(key)
        if kind == "symmetric":
            rows, cols = np.tril_indices(shape[0])
            names += [(f"{key}[{i},{j}]", True) for i, j in zip(rows, cols, strict=True)]
            continue
        for index in np.ndindex(*shape):
            free = not (
                (kind == "lower" and index[1] > index[0])
                or (kind == "strict_lower" and index[1] >= index[0])
            )
            names.append((f"{key}[{','.join(map(str, index))}]", free))
    return names


def _call_with_params(fn: Callable[..., Any], model: Any, params: Params, *rest: Any) -> Any:
    """``fn(model, params, *rest)`` through :func:`invoke`, on a fresh dict of private
    copies; an in-place edit of one of them is reported as :class:`InputMutated`."""
    given = {key: value.copy() for key, value in params.items()}
    result = invoke(fn, model, given, *rest)
    for key, value in params.items():
        seen = given.get(key)
        if (
            not isinstance(seen, np.ndarray)
            or seen.shape != value.shape
            or not np.array_equal(seen, value)
        ):
            raise InputMutated(
                f"fn changed its input params[{key!r}] in place; the verifier passed it a "
                "private copy, so its verdict stands, but a function that edits its inputs "
                "corrupts its callers' data: work on a copy"
            )
    return result


# ---------------------------------------------------------------------- one case
@dataclass
class _Case:
    """One problem as the user's function sees it, with the exact answer.

    ``point`` is what ``fn`` receives in q's place (q itself, or the parameters);
    ``expected`` and ``error`` are flat (``error`` bounds the error of ``expected``: 0
    except for a :class:`Custom` map); ``suspects`` predict from ``(model, point, x)``.
    """

    model: LinearGaussianModel
    q: Gaussian
    x: FloatArray
    point: Any
    expected: FloatArray
    error: FloatArray
    names: list[tuple[str, bool]]
    convert: Callable[[Any], FloatArray]
    suspects: Sequence[Suspect]

    def call(self, fn: Callable[..., Any], *rest: Any) -> Any:
        if isinstance(self.point, Gaussian):
            return invoke(fn, self.model, self.point, self.x, *rest)
        return _call_with_params(fn, self.model, self.point, self.x, *rest)

    def describe(self) -> str:
        parts = [_describe_model(self.model), _describe_gaussian("q", self.q)]
        if not isinstance(self.point, Gaussian):
            parts += [f"  params[{key!r}] = {_fmt(value)}" for key, value in self.point.items()]
        return "\n".join([*parts, f"  x = {_fmt(self.x)}"])


def _legacy_case(model: LinearGaussianModel, q: Gaussian, x: FloatArray) -> _Case:
    k = q.dim
    expected = _flat_gradient(model, q, x)
    return _Case(
        model,
        q,
        x,
        q,
        expected,
        np.zeros_like(expected),
        [(name, True) for name in _coordinate_names(k)],
        functools.partial(_flat_gradient_pair, k=k),
        _gradient_suspects(),
    )


def _param_case(
    par: Parametrisation, model: LinearGaussianModel, q: Gaussian, x: FloatArray
) -> _Case:
    """The case at ``par``'s parameters of (the family member nearest) ``q``; the exact
    gradient at ``par.to_gaussian(params)``, computed before ``fn`` sees anything."""
    params = par.from_gaussian(par.project(q))
    member = par.to_gaussian(params)
    grads = model.elbo_grad_variational(member, x)
    exact, error = par.pullback_with_error(params, grads.mean, grads.scale_tril)
    return _Case(
        model,
        member,
        x,
        params,
        _flatten_params(par, exact),
        _flatten_params(par, error),
        _param_coordinates(par, params),
        lambda value: _flatten_params(par, _read_gradient(par, value, params)),
        _param_suspects(par),
    )


def _param_suspects(par: Parametrisation) -> list[Suspect]:
    """The (m, L) gradient suspects pulled back through ``par``, and classic chain-rule
    mistakes of ``par``; each predicts from ``(model, params, x)``."""

    def pulled(suspect: Suspect) -> Suspect:
        def predict(model: LinearGaussianModel, params: Params, x: FloatArray) -> Any:
            q = par.to_gaussian(params)
            flat = suspect.predict(model, q, x)
            if flat is None:
                return None
            k = q.dim
            factor = np.zeros((k, k))
            factor[np.tril_indices(k)] = np.asarray(flat)[k:]
            return _flatten_params(par, par.pullback(params, np.asarray(flat)[:k], factor))

        return Suspect(suspect.name, suspect.advice, predict)

    def mistake(name: str, advice: str, wrong: _Wrong) -> Suspect:
        def predict(model: LinearGaussianModel, params: Params, x: FloatArray) -> Any:
            grads = model.elbo_grad_variational(par.to_gaussian(params), x)
            return _flatten_params(par, wrong(params, grads.mean, np.tril(grads.scale_tril)))

        return Suspect(name, advice, predict)

    return [pulled(s) for s in _gradient_suspects()] + [
        mistake(*entry) for entry in _chain_rule_mistakes(par)
    ]


_Wrong = Callable[[Params, FloatArray, FloatArray], Params]


def _chain_rule_mistakes(par: Parametrisation) -> list[tuple[str, str, _Wrong]]:
    """Classic chain-rule mistakes of ``par``: (name, fix, the gradient they give as a
    function of the parameters and the (m, L) gradient)."""
    if isinstance(par, _Diagonal):
        key = par._transform.key
        found: list[tuple[str, str, _Wrong]] = [
            (
                f"the gradient for {key!r} is d ELBO / d scale: the chain rule's factor "
                f"d scale / d {key} is missing",
                f"multiply diag(G_L) by d scale / d {key}",
                lambda params, gm, gl: {"loc": gm, key: np.diagonal(gl).copy()},
            )
        ]
        if par._transform.kind == "softplus":
            found.append(
                (
                    "the derivative of softplus(u) is taken as exp(u)",
                    "d softplus(u) / du = sigmoid(u) = 1 / (1 + exp(-u))",
                    lambda params, gm, gl: {
                        "loc": gm,
                        key: np.diagonal(gl) * np.exp(params[key]),
                    },
                )
            )
        return found
    if isinstance(par, FullUnitCholeskyScale):
        transform = par._transform

        def with_diagonal(params: Params, gm: FloatArray, gl: FloatArray) -> Params:
            scale = transform.forward(params[transform.key])
            return dict(par.pullback(params, gm, gl), unit_scale_tril=scale[:, None] * gl)

        return [
            (
                "the diagonal of unit_scale_tril is given a gradient, but it is fixed at 1",
                "exclude it: grad_unit = tril(scale[:, None] * G_L, -1)",
                with_diagonal,
            )
        ]
    if isinstance(par, FullCovariance):

        def doubled(params: Params, gm: FloatArray, gl: FloatArray) -> Params:
            right = par.pullback(params, gm, gl)["cov"]
            return {"loc": gm, "cov": 2.0 * right - np.diag(np.diagonal(right))}

        return [
            (
                "G_L (the gradient for the Cholesky factor) is returned for cov",
                "chain rule through the Cholesky factor: G_S = sym(L^-T Phi(L^T G_L) L^-1)",
                lambda params, gm, gl: {"loc": gm, "cov": gl},
            ),
            (
                "the off-diagonal entries of the symmetric gradient are doubled",
                "with G symmetric, dELBO = sum(G * dS): return G itself, or its lower "
                "triangle with doubled off-diagonals (not both)",
                doubled,
            ),
        ]
    if isinstance(par, FullPrecision):
        return [
            (
                "the gradient for the covariance is returned for the precision",
                "dS = -S dP S, so G_P = -S G_S S",
                lambda params, gm, gl: {
                    "loc": gm,
                    "precision": FullCovariance().pullback(par.to_gaussian(params), gm, gl)["cov"],
                },
            )
        ]
    return []


@_single_blas_thread
def verify_elbo_gradient(
    fn: Callable[..., Any],
    *,
    parametrisation: Parametrisation | None = None,
    mode: str = "exact",
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
    **model_options: Any,
) -> VerificationReport:
    r"""Check gradients of the ELBO with respect to q's parameters.

    **Which signature.** With ``parametrisation=None`` (the default, and the original
    interface) ``fn`` receives q itself and differentiates in q's mean ``m`` and lower
    Cholesky factor ``L``::

        fn(model, q, x) -> (grad_mean, grad_scale_tril)                  # exact
        fn(model, q, x, rng, n_samples) -> (grad_mean, grad_scale_tril)  # stochastic

    (entries above the diagonal of ``grad_scale_tril`` are ignored). With a
    :class:`Parametrisation` (``DiagonalLogScale()``, ``FullUnitCholeskyScale()``,
    ``Custom(...)``, even ``FullCholesky()``) ``fn`` receives that parametrisation's
    dict of arrays ``params`` in q's place and returns the gradient in them, as a dict
    with the same keys or a tuple in the order of ``parametrisation.keys``::

        fn(model, params, x) -> {"loc": ..., "log_scale": ...}
        fn(model, params, x, rng, n_samples) -> (grad_loc, grad_log_scale)

    The expected value is the closed form pulled back through the map
    (:meth:`Parametrisation.pullback`). Entries that are not parameters (above the
    diagonal of a factor, the unit diagonal of ``unit_scale_tril``) must have gradient 0;
    a symmetric ``cov`` or ``precision`` gradient is compared through its symmetric part.
    Diagonal parametrisations are checked on diagonal q's.

    ``mode="exact"``: compared within ``rtol * (|g| + 1) + atol`` per coordinate, plus,
    for :class:`Custom`, the error bound of its finite-difference Jacobian; hypothesis
    shrinks a mismatch to a minimal example.

    ``mode="stochastic"``: ``fn`` must return an unbiased estimate (reparameterisation,
    score function, ...). Each coordinate is t-tested on batch means as in
    :func:`verify_elbo_estimator`, Bonferroni-corrected over all coordinates and
    problems, so a correct estimator fails a call with probability at most
    ``false_alarm_rate``.
    """
    __tracebackhide__ = True
    _check_callable(fn)
    _check_rate(false_alarm_rate)
    if parametrisation is not None and not isinstance(parametrisation, Parametrisation):
        raise InvalidTypeError(
            "parametrisation must be None or a Parametrisation (DiagonalLogScale(), "
            f"FullCholesky(), Custom(...), ...); got {type(parametrisation).__name__}"
        )
    chosen = _profile(profile)
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    seed_value = _seed(seed)
    if mode == "exact":
        return _verify_exact_gradient(
            fn,
            parametrisation,
            seed_value,
            check_count("max_examples", max_examples, chosen["max_examples"]),
            rtol,
            atol,
            model_options,
            problems,
            COV_KINDS if q_kinds is None else q_kinds,
        )
    if mode != "stochastic":
        raise InvalidInputError(f"mode must be 'exact' or 'stochastic'; got mode={mode!r}")
    total_calls = _statistical_calls(chosen, calls, n_samples)
    problems_list = statistical_cases(
        problems,
        n_problems,
        default_count=chosen["problems"],
        seed=seed_value,
        q_kinds=("full",) if q_kinds is None else q_kinds,
        model_options=model_options,
        calls=total_calls,
    )
    count = len(problems_list)
    cases = [
        _legacy_case(model, q, x)
        if parametrisation is None
        else _param_case(parametrisation, model, q, x)
        for model, q, x in problems_list
    ]
    comparisons = sum(case.expected.size for case in cases)
    critical = float(scipy.stats.t.isf(false_alarm_rate / (2 * comparisons), BATCHES - 1))
    label = _label(parametrisation, "stochastic")
    worst = 0.0
    for index, case in enumerate(cases):
        expected = case.expected
        draws = _repeated_calls(
            "verify_elbo_gradient",
            lambda model, q, x, rng, n, case=case: case.call(fn, rng, n),
            case.convert,
            (case.model, case.q, case.x, n_samples),
            [seed_value, 78, index],
            total_calls,
        )
        mean, standard_error, t = _batch_t(draws, expected)
        # Spread below the deterministic tolerance is rounding, not randomness (BLAS may
        # round a repeated computation differently): such coordinates, and any whose
        # bias is within that tolerance, are judged as deterministic values.
        tolerance = rtol * (np.abs(expected) + 1.0) + atol + case.error
        constant = standard_error <= tolerance
        exact_bad = constant & (np.abs(mean - expected) > tolerance)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(
                constant | (np.abs(mean - expected) <= tolerance), 0.0, np.abs(t) / critical
            )
        worst = max(worst, float(np.max(ratio)))
        if np.any(ratio > 1.0) or np.any(exact_bad) or not np.all(np.isfinite(mean)):
            rows = [
                f"    {name:>12s}: exact {expected[i]: .6g}, mean {mean[i]: .6g} "
                f"+- {standard_error[i]:.2g} (t = {t[i]:.3g})"
                + ("  <-- biased" if ratio[i] > 1.0 or exact_bad[i] else "")
                + ("" if free else "  (not a parameter: must be 0)")
                for i, (name, free) in enumerate(case.names)
            ]
            allowance = critical * standard_error + tolerance
            suspects = [
                suspect for suspect in case.suspects if _predicts(suspect, case, mean, allowance)
            ]
            rows.append(_diagnosis(suspects, "see the coordinates marked 'biased'"))
            raise AssertionError(
                f"{label} failed: biased coordinates (seed="
                f"{seed_value}, problem {index + 1} of {count}; critical |t| = {critical:.3g} "
                f"for false-alarm rate {false_alarm_rate:g} over {comparisons} coordinates)\n"
                + case.describe()
                + "\n"
                + "\n".join(rows)
            )
    return VerificationReport(
        check=label,
        cases=count,
        worst_error=worst,
        tolerance=f"|t| <= {critical:.3g} per coordinate (false-alarm rate {false_alarm_rate:g})",
        seed=seed_value,
        details={"calls": total_calls, "n_samples": n_samples, "critical_t": critical},
    )


def _label(par: Parametrisation | None, mode: str) -> str:
    if par is None:
        return "verify_elbo_gradient" + ("" if mode == "exact" else "(mode='stochastic')")
    extra = "" if mode == "exact" else ", mode='stochastic'"
    return f"verify_elbo_gradient(parametrisation={par!r}{extra})"


def _predicts(suspect: Suspect, case: _Case, mean: FloatArray, allowance: FloatArray) -> bool:
    try:
        predicted = suspect.predict(case.model, case.point, case.x)
    except (ValueError, np.linalg.LinAlgError, FloatingPointError):
        return False
    return predicted is not None and bool(np.all(np.abs(mean - predicted) <= allowance))


def _coordinate_names(k: int) -> list[str]:
    rows, cols = np.tril_indices(k)
    return [f"mean[{i}]" for i in range(k)] + [
        f"L[{i},{j}]" for i, j in zip(rows, cols, strict=True)
    ]


def _parametrised_problems(
    par: Parametrisation, model_options: dict[str, Any]
) -> st.SearchStrategy[ElboProblem]:
    """Problems with one q of the kinds ``par`` holds (diagonal for diagonal maps)."""
    batched = sorted({"batch_shape", "shared_covariance"} & set(model_options))
    if batched:
        raise InvalidInputError(
            f"a parametrisation is checked on one q at a time; {batched} are not supported "
            "with parametrisation="
        )
    models = linear_gaussian_models(**model_options)

    @st.composite
    def problems(draw: st.DrawFn) -> ElboProblem:
        model = draw(models)
        q = draw(variational_gaussians(model, cov_kinds=par.cov_kinds))
        return ElboProblem(model, q, draw(observations(model)))

    return problems()


def _verify_exact_gradient(
    fn: Callable[..., Any],
    par: Parametrisation | None,
    seed: int,
    max_examples: int,
    rtol: float,
    atol: float,
    model_options: dict[str, Any],
    problems: Any,
    q_kinds: Sequence[str],
) -> VerificationReport:
    def prepare(p: ElboProblem) -> _Case:
        if par is None:
            return _legacy_case(p.model, p.q, p.x)
        return _param_case(par, p.model, p.q, p.x)

    def compare(case: _Case) -> tuple[FloatArray, FloatArray, FloatArray]:
        expected = case.expected  # computed before fn sees anything
        got = case.convert(case.call(fn))
        return got, expected, rtol * (np.abs(expected) + 1.0) + atol + case.error

    def evaluate(p: ElboProblem) -> tuple[float, float, float]:
        got, expected, tolerance = compare(prepare(p))
        return float(np.max(np.abs(got - expected) / tolerance)), 0.0, 1.0

    def explain(
        p: ElboProblem, got: float, expected: float, tol: float, error: BaseException | None
    ) -> str:
        try:
            case = prepare(p)
        except Exception as err:  # a Custom map that raised
            return f"  the parametrisation's map raised {type(err).__name__}: {err}"
        parts = [case.describe()]
        if error is None:
            g, e, tolerance = compare(case)
            parts += [
                f"    {name:>12s}: expected {e[i]: .10g}, got {g[i]: .10g}, "
                f"gap {g[i] - e[i]:.3g}"
                + ("  <-- off" if abs(g[i] - e[i]) > tolerance[i] else "")
                + ("" if free else "  (not a parameter: must be 0)")
                for i, (name, free) in enumerate(case.names)
            ]
            probes = []
            moved = Gaussian._trusted(case.q.mean + 0.5, case.q.scale_tril * 1.3)
            for qq in (case.q, moved):
                try:
                    probe = prepare(ElboProblem(p.model, qq, p.x))
                    value = probe.convert(probe.call(fn))
                except Exception:
                    continue
                bound = rtol * (np.abs(probe.expected) + 1) + atol + probe.error
                probes.append(((p.model, probe.point, p.x), value, probe.expected, bound))
            found = match_suspects(case.suspects, probes)
            parts.append(_diagnosis(found, "see the coordinates marked 'off'"))
        return "\n".join(parts)

    kinds = check_q_kinds(q_kinds)
    strategy = as_elbo_cases(
        problems,
        lambda: (
            elbo_problems(q_kinds=kinds, **model_options)
            if par is None
            else _parametrised_problems(par, model_options)
        ),
    )
    extra = "" if not isinstance(par, Custom) else " + the Jacobian's difference error"
    return _deterministic_check(
        name=_label(par, "exact"),
        strategy=strategy,
        evaluate=evaluate,
        explain=explain,
        seed=seed,
        max_examples=max_examples,
        tolerance_text=f"|got - exact| <= rtol={rtol:g} * (|exact| + 1) + atol={atol:g}{extra} "
        "per entry",
    )
