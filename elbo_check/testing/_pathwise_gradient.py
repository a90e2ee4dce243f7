"""verify_elbo_gradient(mode='pathwise'): the exact gradient of a reparameterised estimate.

``fn(model, q, x, eps)`` (or ``fn(model, params, x, eps)``) must return the gradient of
its form's estimate at ``z_i = m + L eps_i`` with respect to (m, L) (or the parameters)
at fixed noise: what autodiff of the estimate gives. The target is
:meth:`ElboForm.pathwise_gradient`, computed before ``fn`` runs; the search draws
problems and noise and shrinks a mismatch to a minimal example.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import strategies as st
from numpy.typing import NDArray

from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ..strategies import ElboProblem
from ._forms import ElboForm
from ._gradient_cases import _Case, _pathwise_case, coordinate_rows
from ._gradient_diagnosis import gradient_suspects_across
from ._parametrisations import Custom, Parametrisation
from ._report import VerificationReport, _diagnosis
from ._searching import _deterministic_check

__all__ = ["verify_pathwise_gradient"]

FloatArray = NDArray[np.float64]


def _noise(variant: int, k: int) -> FloatArray:
    """Fixed noise for the diagnosis' probes: (3, K) for even variants, (2, K) for odd."""
    return np.random.default_rng([k, 5, variant]).standard_normal((3 - variant % 2, k))


def verify_pathwise_gradient(
    fn: Callable[..., Any],
    par: Parametrisation | None,
    form: ElboForm,
    *,
    label: str,
    seed: int,
    max_examples: int,
    rtol: float,
    atol: float,
    problems: st.SearchStrategy[ElboProblem],
) -> VerificationReport:
    """The pathwise mode on problems drawn from ``problems`` (see
    :func:`verify_elbo_gradient`)."""

    @st.composite
    def cases(draw: st.DrawFn) -> tuple[ElboProblem, FloatArray]:
        problem = draw(problems)
        n = draw(st.integers(1, 4))
        k = problem.model.latent_dim
        eps = np.array(draw(st.lists(st.floats(-3.0, 3.0), min_size=n * k, max_size=n * k)))
        return problem, eps.reshape(n, k)

    def prepare(model: LinearGaussianModel, q: Gaussian, x: FloatArray, eps: FloatArray) -> _Case:
        return _pathwise_case(form, par, model, q, x, eps)

    def compare(case: _Case) -> tuple[FloatArray, FloatArray, FloatArray]:
        expected = case.expected  # computed before fn sees anything
        got = case.convert(case.call(fn))
        return got, expected, case.tolerance(rtol, atol)

    def evaluate(drawn: tuple[ElboProblem, FloatArray]) -> tuple[float, float, float]:
        p, eps = drawn
        got, expected, tolerance = compare(prepare(p.model, p.q, p.x, eps))
        return float(np.max(np.abs(got - expected) / tolerance)), 0.0, 1.0

    def explain(
        drawn: tuple[ElboProblem, FloatArray],
        got: float,
        expected: float,
        tol: float,
        error: BaseException | None,
    ) -> str:
        p, eps = drawn
        try:
            case = prepare(p.model, p.q, p.x, eps)
        except Exception as err:  # a Custom map that raised
            return f"  the parametrisation's map raised {type(err).__name__}: {err}"
        parts = [case.describe(), f"  form: {form.describe()}"]
        if error is None:
            parts += coordinate_rows(case, *compare(case))

            def probe(
                model: LinearGaussianModel, q: Gaussian, x: FloatArray, variant: int
            ) -> _Case:
                return prepare(model, q, x, _noise(variant, model.latent_dim))

            found = gradient_suspects_across(fn, probe, case, case.suspects, rtol, atol)
            parts.append(_diagnosis(found, form.fallback + "; see the coordinates marked 'off'"))
        return "\n".join(parts)

    extra = "" if not isinstance(par, Custom) else " + the Jacobian's difference error"
    return _deterministic_check(
        name=label,
        strategy=cases(),
        evaluate=evaluate,
        explain=explain,
        seed=seed,
        max_examples=max_examples,
        tolerance_text=(
            f"|got - exact| <= rtol={rtol:g} * (|exact| + magnitude + 1) + atol={atol:g}"
            f"{extra} per entry, the magnitude being the sum of the absolute values of the "
            f"terms of the gradient of {form.formula}"
        ),
    )
