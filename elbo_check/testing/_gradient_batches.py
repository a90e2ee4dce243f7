"""verify_elbo_gradient(fn, batch_size=B): the gradients of a minibatch's ELBOs.

Batched VAE code computes the ELBOs of a minibatch at once, one ``q(z | x_b)`` per row,
and autodiff of their sum gives, for each member ``b``, the gradient of member ``b``'s
ELBO with respect to member ``b``'s own parameters. With ``batch_size=B`` the gradient
check hands ``fn`` one model and a batch of ``B`` pairs ``(q_b, x_b)``: ``q.mean`` of
shape ``(B, K)``, a covariance per member (``q.scale_tril`` of shape ``(B, K, K)``),
``x`` of shape ``(B, D)`` (and in pathwise mode ``eps`` of shape ``(n, B, K)``, sample
axis first); with a :class:`Parametrisation`, every parameter has a leading batch axis.
``fn`` returns the gradient with that leading batch axis, and every member is compared
with its own exact gradient (a :class:`~._gradient_cases._Case` per member).

A failing batch is explained in steps: a return of the wrong shape (the members'
gradients summed or averaged over the batch axis); the gradient of the batch *mean* of
the ELBOs (every member's gradient divided by ``B``); members that interact (the failing
member's gradient changes when its batch-mates change); else the failing member, packed
at its position in a batch of copies of itself, is diagnosed as an unbatched gradient
(:func:`~._gradient_diagnosis.gradient_suspects_across`).

This module holds the batches and the exact and pathwise modes; the statistical mode is
in :mod:`._gradient_batch_statistics`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st
from numpy.typing import NDArray

from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from ..strategies import ElboProblem, elbo_problems
from ._batch_problems import as_batch
from ._batching import member, stack_gaussians
from ._calls import _BATCH_AXIS_HINT
from ._cases import as_elbo_cases
from ._forms import ElboForm
from ._gradient_cases import (
    _call_with_params,
    _Case,
    _direct,
    _legacy_case,
    _param_case,
    _pathwise_case,
    coordinate_rows,
)
from ._gradient_diagnosis import gradient_suspects_across
from ._parametrisations import Parametrisation
from ._pathwise_gradient import _noise
from ._report import VerificationReport, _describe_model, _diagnosis
from ._returns import BadReturn, InputMutated, invoke, to_array
from ._searching import _deterministic_check

__all__ = ["batched_gradient_problems", "packed_fn", "split_members", "verify_batched_gradient"]

FloatArray = NDArray[np.float64]
Triple = tuple[LinearGaussianModel, Gaussian, FloatArray]


# ---------------------------------------------------------------------- the user's return
def _shape_hint(
    arrays: Mapping[str, FloatArray], shapes: Mapping[str, tuple[int, ...]], size: int
) -> str:
    single = all(arrays[name].shape == shape for name, shape in shapes.items())
    if single:
        return (
            ": one gradient for the whole batch, as if the members' gradients were summed "
            "or averaged over the batch axis. Each member's gradient is the gradient of the "
            "SUM of the members' ELBOs with respect to that member's own parameters (what "
            "autodiff of elbo.sum() gives, one row per member)"
        )
    if any(a.shape == (*shapes[name], size) for name, a in arrays.items()):
        return ": is the batch axis last? It must be the first"
    return ""


def split_members(
    value: Any, par: Parametrisation | None, size: int, shapes: Mapping[str, tuple[int, ...]]
) -> list[Any]:
    """The user's batched gradient as one unbatched gradient per member (a pair
    ``(grad_mean, grad_scale_tril)``, or a dict of ``par``'s keys), ready for the member
    cases' ``convert``; :class:`BadReturn` naming the shapes for anything else.

    ``shapes`` are one member's shapes, by name (``grad_mean`` and ``grad_scale_tril``,
    or ``par``'s keys).
    """
    names = list(shapes)
    if par is None:
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise BadReturn(
                "fn must return a pair (grad_mean, grad_scale_tril) of shapes (B, K) and "
                f"(B, K, K); got {type(value).__name__}"
            )
        items = list(value)
    elif isinstance(value, Mapping):
        par._check_keys(value, "the gradient fn returned")
        items = [value[key] for key in par.keys]
    elif isinstance(value, (tuple, list)) and len(value) == len(par.keys):
        items = list(value)
    else:
        raise BadReturn(
            f"fn must return a dict with keys {par.keys} or a tuple of {len(par.keys)} "
            f"arrays in that order for {par!r}, each with a leading batch axis; got "
            f"{type(value).__name__}"
        )
    what = "{}" if par is None else "fn (gradient {!r})"
    arrays = {
        name: to_array(item, what.format(name)) for name, item in zip(names, items, strict=True)
    }
    if size == 1 and all(arrays[name].shape == shape for name, shape in shapes.items()):
        arrays = {name: a[None] for name, a in arrays.items()}  # no batch axis to mistake
    wrong = [name for name in names if arrays[name].shape != (size, *shapes[name])]
    if wrong:
        wanted = ", ".join(f"{name} of shape {(size, *shapes[name])}" for name in names)
        got = ", ".join(f"{name} {arrays[name].shape}" for name in names)
        raise BadReturn(
            f"fn must return one gradient per batch member, the batch axis first: {wanted}; "
            f"got {got}" + _shape_hint(arrays, shapes, size)
        )
    if par is None:
        return [(arrays[names[0]][b], arrays[names[1]][b]) for b in range(size)]
    return [{name: arrays[name][b] for name in names} for b in range(size)]


def _member_shapes(par: Parametrisation | None, case: _Case) -> dict[str, tuple[int, ...]]:
    if par is None:
        k = case.q.dim
        return {"grad_mean": (k,), "grad_scale_tril": (k, k)}
    return {key: case.point[key].shape for key in par.keys}


# ---------------------------------------------------------------------- one batch
class _Batch:
    """Member cases that share a model, as one call of the user's batched function."""

    def __init__(self, par: Parametrisation | None, members: Sequence[_Case]) -> None:
        self.par, self.members = par, list(members)
        self.model = self.members[0].model
        self.q = stack_gaussians([c.q for c in self.members])
        self.x = np.stack([c.x for c in self.members])
        self.point: Any = (
            self.q
            if self.par is None
            else {k: np.stack([c.point[k] for c in self.members]) for k in self.par.keys}
        )
        first = self.members[0]
        self.extra = (np.stack([c.extra[0] for c in self.members], axis=1),) if first.extra else ()

    @property
    def size(self) -> int:
        return len(self.members)

    def call(self, fn: Callable[..., Any], *rest: Any) -> Any:
        """``fn(model, q or params, x, *extra, *rest)`` on private copies."""
        if self.par is None:
            return invoke(fn, self.model, self.q, self.x, *self.extra, *rest)
        return _call_with_params(fn, self.model, self.point, self.x, *self.extra, *rest)

    def convert(self, value: Any) -> FloatArray:
        """The user's batched gradient as the members' flat coordinates, ``(B, C)``."""
        shapes = _member_shapes(self.par, self.members[0])
        parts = split_members(value, self.par, self.size, shapes)
        return np.stack([c.convert(p) for c, p in zip(self.members, parts, strict=True)])

    @property
    def expected(self) -> FloatArray:
        return np.stack([c.expected for c in self.members])

    def tolerance(self, rtol: float, atol: float) -> FloatArray:
        return np.stack([c.tolerance(rtol, atol) for c in self.members])

    def shapes(self) -> str:
        """What ``fn`` received, as shapes."""
        parts = [f"q.mean {self.q.mean.shape}, q.scale_tril {self.q.scale_tril.shape}"]
        if self.par is not None:
            parts = [f"params[{k!r}] {v.shape}" for k, v in self.point.items()]
        parts.append(f"x {self.x.shape}")
        if self.extra:
            parts.append(f"eps {self.extra[0].shape}")
        return f"  a batch of {self.size}: " + ", ".join(parts)


def _member_ratios(got: FloatArray, expected: FloatArray, tolerance: FloatArray) -> FloatArray:
    """Each member's worst ``|got - expected| / tolerance`` (inf where not finite)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.abs(got - expected) / tolerance
    worst: FloatArray = np.max(np.where(np.isfinite(ratio), ratio, np.inf), axis=1)
    return worst


def packed_fn(fn: Callable[..., Any], par: Parametrisation | None, size: int, position: int) -> Any:
    """An unbatched function from the user's batched ``fn``: its arguments (one
    problem) are packed into a batch of ``size`` copies, and the gradient at
    ``position`` is returned, as an unbatched gradient. For calls through
    :func:`invoke` (``_Case.call``, ``repeated_caller``), which counts them."""

    def unbatched(model: LinearGaussianModel, point: Any, x: FloatArray, *rest: Any) -> Any:
        if isinstance(point, Gaussian):
            q: Any = stack_gaussians([point] * size)
            shapes = {"grad_mean": (point.dim,), "grad_scale_tril": (point.dim, point.dim)}
        else:
            q = {k: np.stack([v] * size) for k, v in point.items()}
            shapes = {k: v.shape for k, v in point.items()}
        batch_x = np.stack([x] * size)
        extra = tuple(
            np.stack([r] * size, axis=1) if isinstance(r, np.ndarray) else r for r in rest
        )
        # Called through invoke (by _Case.call or _repeated_calls), which counts the call
        # and keeps the unbatched arguments private; the stacked ones are fresh copies.
        if isinstance(q, Gaussian):
            value = fn(model, q, batch_x, *extra)
        else:
            value = _call_with_params(fn, model, q, batch_x, *extra, call=_direct)
        return split_members(value, par, size, shapes)[position]

    return unbatched


# ---------------------------------------------------------------------- diagnosis
_INTERACTION_FIX = (
    "  Fix: compute each member's gradient from its own row only; look for a sum or mean "
    "over the batch axis (axis 0) where the latent axis was meant, broadcasting of a (B,) "
    "array against (B, K), np.diagonal or .T on a (B, K, K) array (use np.diagonal(a, "
    "axis1=-2, axis2=-1) and a.swapaxes(-1, -2)), or q.mean[0] / q.scale_tril[0] used "
    "for every row"
)


def _batch_mean(
    got: FloatArray, expected: FloatArray, allowance: FloatArray, size: int
) -> str | None:
    """The diagnosis when every member's gradient is its exact one divided by ``size``."""
    if size == 1:
        return None
    scaled = expected / size
    if not (
        np.all(np.abs(got - scaled) <= allowance) and np.any(np.abs(scaled - expected) > allowance)
    ):
        return None
    return (
        f"Diagnosis: the gradient is of the batch MEAN of the ELBOs (each member's "
        f"gradient divided by B = {size}).\n  Fix: return each member's own gradient, the "
        f"gradient of the SUM of the members' ELBOs (autodiff of elbo.sum(), not "
        f"elbo.mean()), or multiply by B = {size}"
    )


def _interaction_text(
    case: _Case, got: FloatArray, seen: list[tuple[str, FloatArray]], off: FloatArray
) -> str:
    """The member's gradient in its batch and in the other contexts ``seen``, at the
    coordinate that changed most; ``off`` is each coordinate's change."""
    j = int(np.argmax(off))
    name = case.names[j][0]
    contexts = [f"{got[j]:.10g} in its batch"] + [f"{v[j]:.10g} {label}" for label, v in seen]
    return (
        "Diagnosis: the members of a batch interact: this member's gradient changes with "
        f"its batch-mates ({name}: " + ", ".join(contexts) + f"; exact "
        f"{case.expected[j]:.10g}).\n" + _INTERACTION_FIX
    )


def _interaction(
    fn: Callable[..., Any], batch: _Batch, i: int, got: FloatArray, tolerance: FloatArray
) -> str | None:
    """A diagnosis if member ``i``'s gradient changes when its batch-mates change: it is
    evaluated, at its position, among copies of itself and among the other members in
    reverse order."""
    size = batch.size
    if size == 1:
        return None
    members = batch.members
    others = [members[b] for b in reversed(range(size)) if b != i]
    reordered = [*others[:i], members[i], *others[i:]]
    seen = []
    for label, group in (
        (f"in a batch of {size} copies of it", [members[i]] * size),
        ("with its batch-mates reordered", reordered),
    ):
        try:
            other = _Batch(batch.par, group)
            seen.append((label, other.convert(other.call(fn))[i]))
        except Exception:
            continue
    changes = [np.abs(v - got) for _, v in seen]
    if all(np.all(change <= tolerance) for change in changes):
        return None
    return _interaction_text(members[i], got, seen, np.max(changes, axis=0))


# ---------------------------------------------------------------------- problems
def batched_gradient_problems(
    problems: Any, size: int, kinds: Sequence[str], model_options: dict[str, Any]
) -> st.SearchStrategy[ElboProblem]:
    """The deterministic modes' batches: drawn (one model, ``size`` pairs (q_b, x_b),
    a covariance per member), or the user's, each checked to be a batch."""
    user = as_elbo_cases(
        problems,
        lambda: elbo_problems(
            batch_shape=(size,), shared_covariance=False, q_kinds=kinds, **model_options
        ),
    )
    if isinstance(user, st.SearchStrategy):
        if problems is None:
            return user
        return user.map(
            lambda p: ElboProblem(*as_batch("problems (a drawn problem)", p.model, p.q, p.x, size))
        )
    return st.sampled_from(
        [
            ElboProblem(*as_batch(f"problems[{i}]", p.model, p.q, p.x, size))
            for i, p in enumerate(user)
        ]
    )


# ---------------------------------------------------------------------- exact and pathwise
def verify_batched_gradient(
    fn: Callable[..., Any],
    par: Parametrisation | None,
    form: ElboForm,
    size: int,
    *,
    pathwise: bool,
    label: str,
    seed: int,
    max_examples: int,
    rtol: float,
    atol: float,
    problems: st.SearchStrategy[ElboProblem],
    tolerance_text: str,
) -> VerificationReport:
    """The exact (``pathwise=False``) or pathwise mode on batches of ``size`` members."""
    suspects = form.gradient_suspects()
    Drawn = tuple[ElboProblem, "FloatArray | None"]

    def prepare(
        model: LinearGaussianModel, q: Gaussian, x: FloatArray, eps: FloatArray | None
    ) -> _Case:
        if eps is not None:
            return _pathwise_case(form, par, model, q, x, eps)
        if par is None:
            return _legacy_case(model, q, x, suspects)
        return _param_case(par, model, q, x, suspects)

    @st.composite
    def cases(draw: st.DrawFn) -> Drawn:
        problem = draw(problems)
        if not pathwise:
            return problem, None
        n, k = draw(st.integers(1, 4)), problem.model.latent_dim
        count = n * size * k
        eps = np.array(draw(st.lists(st.floats(-3.0, 3.0), min_size=count, max_size=count)))
        return problem, eps.reshape(n, size, k)

    def batch_of(drawn: Drawn) -> _Batch:
        p, eps = drawn
        return _Batch(
            par,
            [
                prepare(
                    p.model,
                    member(p.q, b),
                    np.array(p.x[b]),
                    None if eps is None else np.array(eps[:, b, :]),
                )
                for b in range(size)
            ],
        )

    def compare(batch: _Batch) -> tuple[FloatArray, FloatArray, FloatArray]:
        expected = batch.expected  # computed before fn sees anything
        return batch.convert(batch.call(fn)), expected, batch.tolerance(rtol, atol)

    def evaluate(drawn: Drawn) -> tuple[float, float, float]:
        return float(np.max(_member_ratios(*compare(batch_of(drawn))))), 0.0, 1.0

    def probe(model: LinearGaussianModel, q: Gaussian, x: FloatArray, variant: int) -> _Case:
        return prepare(model, q, x, _noise(variant, model.latent_dim) if pathwise else None)

    def explain(
        drawn: Drawn, got: float, expected: float, tol: float, error: BaseException | None
    ) -> str:
        try:
            batch = batch_of(drawn)
        except Exception as err:  # a Custom map that raised
            return f"  the parametrisation's map raised {type(err).__name__}: {err}"
        if error is not None:
            hint = [] if isinstance(error, InputMutated) else [_BATCH_AXIS_HINT]
            return "\n".join([_describe_model(batch.model), batch.shapes(), *hint])
        got_all, expected_all, tolerance_all = compare(batch)
        ratios = _member_ratios(got_all, expected_all, tolerance_all)
        i, failing = int(np.argmax(ratios)), int(np.count_nonzero(~(ratios <= 1.0)))
        case = batch.members[i]
        parts = [
            f"  member {i} of the batch of {size} ({failing} of {size} members fail):",
            case.describe().replace("  eps = ", f"  eps[:, {i}] = "),
        ]
        if pathwise:
            parts.append(f"  form: {form.describe()}")
        parts += coordinate_rows(case, got_all[i], expected_all[i], tolerance_all[i])
        found = _batch_mean(got_all, expected_all, tolerance_all, size) or _interaction(
            fn, batch, i, got_all[i], tolerance_all[i]
        )
        if found is None:
            suspected = gradient_suspects_across(
                packed_fn(fn, par, size, i), probe, case, case.suspects, rtol, atol
            )
            fallback = (
                form.fallback + "; " if pathwise else ""
            ) + "see the coordinates marked 'off'"
            found = _diagnosis(suspected, fallback)
        parts.append(found)
        return "\n".join(parts)

    return _deterministic_check(
        name=label,
        strategy=cases(),
        evaluate=evaluate,
        explain=explain,
        seed=seed,
        max_examples=max_examples,
        tolerance_text=tolerance_text + ", per member",
    )
