"""The problems a verifier runs on: its own, or the user's.

Every verifier takes ``problems=``: None (the verifier's own: hypothesis strategies for
the deterministic checks, a fixed set of realistic problems for the statistical ones),
a hypothesis strategy, or a sequence of concrete problems. Counts have their own names:
``max_examples`` (cases a deterministic search tries) and ``n_problems`` (problems a
statistical check tests, each with ``calls`` calls). A sequence is checked case by case
in order, without search or shrinking; a strategy given to a statistical check is drawn
from ``n_problems`` times with the check's seed.
"""

from __future__ import annotations

import contextlib
import inspect
import random
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hypothesis import Phase, find, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample
from numpy.typing import NDArray

from .._errors import InvalidInputError
from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ..strategies import COV_KINDS, ElboProblem, elbo_problems, linear_gaussian_models
from ._options import check_count
from ._problems import _statistical_problems
from ._progress import current

__all__ = [
    "as_elbo_cases",
    "as_evidence_cases",
    "as_kl_cases",
    "check_model_options",
    "check_q_kinds",
    "draw_examples",
    "statistical_cases",
]

FloatArray = NDArray[np.float64]
Triple = tuple[LinearGaussianModel, Gaussian, FloatArray]

#: The model options the fixed statistical problems can honour; any other option makes
#: a statistical check draw its problems from :func:`~elbo_check.strategies.elbo_problems`.
FIXED_PROBLEM_OPTIONS = frozenset({"noise_kinds", "prior_kinds"})


def check_q_kinds(q_kinds: Any) -> tuple[str, ...]:
    """A non-empty tuple of q covariance kinds from ``isotropic``, ``diagonal``, ``full``."""
    kinds = (q_kinds,) if isinstance(q_kinds, str) else tuple(q_kinds)
    if not kinds or any(kind not in COV_KINDS for kind in kinds):
        raise InvalidInputError(
            f"q_kinds must be a non-empty sequence of {COV_KINDS}; got q_kinds={q_kinds!r}"
        )
    return kinds


def _is_strategy(value: Any) -> bool:
    return isinstance(value, st.SearchStrategy)


def _sequence(problems: Any) -> list[Any]:
    if isinstance(problems, (str, bytes)) or not isinstance(problems, Sequence):
        raise InvalidInputError(
            "problems must be None, a hypothesis strategy or a sequence of problems; got "
            f"{type(problems).__name__}"
        )
    if not problems:
        raise InvalidInputError("problems must not be empty")
    return list(problems)


def _check_triple(index: int, item: Any) -> ElboProblem:
    if isinstance(item, ElboProblem):
        model, q, x = item.model, item.q, item.x
    elif isinstance(item, tuple) and len(item) == 3:
        model, q, x = item
    else:
        raise InvalidInputError(
            f"problems[{index}] must be an ElboProblem or a (model, q, x) tuple; got "
            f"{type(item).__name__}"
        )
    if not isinstance(model, LinearGaussianModel) or not isinstance(q, Gaussian):
        raise InvalidInputError(
            f"problems[{index}] must hold a LinearGaussianModel and a Gaussian; got "
            f"{type(model).__name__} and {type(q).__name__}"
        )
    if q.dim != model.latent_dim:
        raise InvalidInputError(
            f"problems[{index}]: q must have the model's K = {model.latent_dim} dimensions; "
            f"got q.dim = {q.dim}"
        )
    data = np.array(x, dtype=np.float64)
    if data.shape[-1:] != (model.data_dim,) or not np.all(np.isfinite(data)):
        raise InvalidInputError(
            f"problems[{index}]: x must be finite with last axis D = {model.data_dim}; got "
            f"shape {data.shape}"
        )
    return ElboProblem(model, q, data)


def as_elbo_cases(
    problems: Any, default: Callable[[], st.SearchStrategy[ElboProblem]]
) -> st.SearchStrategy[ElboProblem] | list[ElboProblem]:
    """The cases of an ELBO-family verifier: ``default()`` for None, a strategy as
    given, a sequence checked and converted to :class:`ElboProblem`."""
    if problems is None:
        return default()
    if _is_strategy(problems):
        return problems  # type: ignore[no-any-return]
    return [_check_triple(i, item) for i, item in enumerate(_sequence(problems))]


def as_kl_cases(
    problems: Any, default: Callable[[], st.SearchStrategy[tuple[Gaussian, Gaussian]]]
) -> st.SearchStrategy[tuple[Gaussian, Gaussian]] | list[tuple[Gaussian, Gaussian]]:
    """Pairs ``(p, q)`` of Gaussians of one dimension."""
    if problems is None:
        return default()
    if _is_strategy(problems):
        return problems  # type: ignore[no-any-return]
    pairs = []
    for index, item in enumerate(_sequence(problems)):
        ok = isinstance(item, tuple) and len(item) == 2
        if not ok or not all(isinstance(g, Gaussian) for g in item):
            raise InvalidInputError(f"problems[{index}] must be a pair (p, q) of Gaussians")
        if item[0].dim != item[1].dim:
            raise InvalidInputError(
                f"problems[{index}]: p and q must have one dimension; got "
                f"{item[0].dim} and {item[1].dim}"
            )
        pairs.append((item[0], item[1]))
    return pairs


def as_evidence_cases(
    problems: Any,
    default: Callable[[], st.SearchStrategy[tuple[LinearGaussianModel, Any]]],
    rows: int | None = None,
) -> st.SearchStrategy[tuple[LinearGaussianModel, Any]] | list[tuple[LinearGaussianModel, Any]]:
    """Pairs ``(model, x)``; an :class:`ElboProblem` or ``(model, q, x)`` is accepted too.

    ``x`` has shape ``(D,)``, or ``(rows, D)`` when ``rows`` (a batch size) is given.
    """
    if problems is None:
        return default()
    if _is_strategy(problems):
        return problems  # type: ignore[no-any-return]
    cases = []
    for index, item in enumerate(_sequence(problems)):
        if isinstance(item, ElboProblem) or (isinstance(item, tuple) and len(item) == 3):
            triple = _check_triple(index, item)
            model, x = triple.model, triple.x
        elif isinstance(item, tuple) and len(item) == 2:
            model, x = item
        else:
            raise InvalidInputError(f"problems[{index}] must be a pair (model, x)")
        if not isinstance(model, LinearGaussianModel):
            raise InvalidInputError(f"problems[{index}] must hold a LinearGaussianModel")
        data = np.array(x, dtype=np.float64)
        shape = (model.data_dim,) if rows is None else (rows, model.data_dim)
        if data.shape != shape or not np.all(np.isfinite(data)):
            raise InvalidInputError(
                f"problems[{index}]: x must be finite of shape {shape}"
                + ("" if rows is None else f" (batch_size={rows} rows)")
                + f"; got {data.shape}"
            )
        cases.append((model, data))
    return cases


def draw_examples(strategy: st.SearchStrategy[Any], count: int, seed: int) -> list[Any]:
    """``count`` examples of ``strategy``, the same ones for the same seed."""
    drawn: list[Any] = []

    def keep(value: Any) -> bool:
        drawn.append(value)
        return len(drawn) >= count

    with contextlib.suppress(NoSuchExample):
        find(
            strategy,
            keep,
            # From hypothesis' default profile: a profile loaded by the caller's test
            # suite (derandomize=True, say) must not change which problems a seed gives.
            settings=settings(
                settings.get_profile("default"),
                max_examples=count,
                database=None,
                deadline=None,
                derandomize=False,
                phases=[Phase.generate],
            ),
            random=random.Random(seed),
        )
    if len(drawn) < count:
        raise InvalidInputError(
            f"problems: the strategy gave {len(drawn)} examples where {count} were needed"
        )
    return drawn[:count]


def check_model_options(model_options: dict[str, Any]) -> None:
    """Refuse options :func:`~elbo_check.strategies.linear_gaussian_models` does not take."""
    try:
        linear_gaussian_models(**model_options)
    except TypeError as err:
        known = sorted(inspect.signature(linear_gaussian_models).parameters)
        raise InvalidInputError(
            f"model options must be options of linear_gaussian_models ({', '.join(known)}); "
            f"got {sorted(model_options)}"
        ) from err


def kind_of(q: Gaussian) -> str:
    """``"isotropic"``, ``"diagonal"`` or ``"full"``: the covariance kind of an unbatched q."""
    cov = q.cov
    diagonal = np.diagonal(cov)
    if not np.array_equal(cov, np.diag(diagonal)):
        return "full"
    return "isotropic" if np.all(diagonal == diagonal[0]) else "diagonal"


def _with_kind(q: Gaussian, kind: str) -> Gaussian:
    """q's nearest member of a covariance kind (the diagonal of its covariance, or the
    mean variance)."""
    if kind == "full":
        return q
    variances = np.diagonal(q.cov)
    if kind == "isotropic":
        variances = np.full_like(variances, float(np.mean(variances)))
    return Gaussian._trusted(np.array(q.mean), np.diag(np.sqrt(variances)))


def statistical_cases(
    problems: Any,
    n_problems: int | None,
    *,
    default_count: int,
    seed: int,
    q_kinds: Sequence[str],
    model_options: dict[str, Any],
    calls: int,
) -> list[Triple]:
    """The ``(model, q, x)`` problems of a statistical check.

    None: ``n_problems`` fixed realistic problems (q near the posterior, its
    covariance of each kind in ``q_kinds`` in turn), or, when ``model_options`` asks for
    more than noise and prior kinds, problems drawn from
    :func:`~elbo_check.strategies.elbo_problems` with them. A strategy: ``n_problems``
    draws. A sequence: its problems. An int (the old meaning of ``problems``): a count,
    with a DeprecationWarning.
    """
    if isinstance(problems, (int, np.integer)) and not isinstance(problems, bool):
        warnings.warn(
            "problems=N as a count is deprecated: pass n_problems=N (problems= takes your "
            "own problems: a hypothesis strategy or a sequence of (model, q, x))",
            DeprecationWarning,
            stacklevel=4,
        )
        if n_problems is not None:
            raise InvalidInputError("pass the count once: n_problems, not problems")
        n_problems, problems = check_count("problems", problems, default_count), None
    kinds = check_q_kinds(q_kinds)
    check_model_options(model_options)
    if problems is not None and not _is_strategy(problems):
        if n_problems is not None:
            raise InvalidInputError(
                "n_problems counts the problems drawn from a strategy or the verifier's "
                "own; with a sequence of problems, leave it out"
            )
        cases = [(p.model, p.q, p.x) for p in as_elbo_cases(problems, lambda: elbo_problems())]  # type: ignore[union-attr]
        _plan(len(cases), calls)
        return cases
    count = check_count("n_problems", n_problems, default_count)
    _plan(count, calls)
    if problems is not None:
        drawn = draw_examples(problems, count, seed)
        return [(p.model, p.q, p.x) for p in (_check_triple(i, d) for i, d in enumerate(drawn))]
    if set(model_options) - FIXED_PROBLEM_OPTIONS:
        strategy = elbo_problems(q_kinds=kinds, **model_options)
        return [(p.model, p.q, p.x) for p in draw_examples(strategy, count, seed)]
    fixed = _statistical_problems(seed, count, model_options)
    return [
        (model, _with_kind(q, kinds[i % len(kinds)]), x) for i, (model, q, x) in enumerate(fixed)
    ]


def _plan(count: int, calls: int) -> None:
    progress = current()
    if progress is not None:
        progress.problems_planned += count
        progress.plan(count * calls)
