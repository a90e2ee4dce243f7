"""Objects stay what they were built as.

Every array that a Gaussian, a model or an encoder stores (and every array an object
hands out from its state) must be immutable for good: clearing the ``writeable`` flag
is not enough, since anyone may set it back. These tests are generic: they walk every
public name of an object (``dir(obj)``), read each attribute and property, call each
method that takes no argument, follow every array's ``.base`` chain and every object
returned, and then try to make each array writeable and to write into it. Whatever
happens, the object's results must not change. Nothing here knows the internals of
the classes, so the tests keep working when those are refactored.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from elbo_check import Gaussian, LinearEncoder, LinearGaussianModel
from elbo_check._validation import freeze, is_frozen

RNG = np.random.default_rng(2024)
D, K = 4, 2
X = RNG.standard_normal((3, D))
WEIGHTS = RNG.standard_normal((D, K))
BIAS = RNG.standard_normal(D)
FULL_NOISE = np.eye(D) + 0.3 * np.ones((D, D))
NOISES: dict[str, Any] = {
    "scalar": 0.7,
    "vector": np.array([0.5, 1.0, 1.5, 2.0]),
    "matrix": FULL_NOISE,
}
#: Depth to which objects returned by attributes and methods are followed.
MAX_DEPTH = 3
#: Value types that cannot hold an array and are not followed.
ATOMS = (type(None), bool, int, float, complex, str, bytes, np.generic, np.dtype, type)


def shared_gaussian() -> Gaussian:
    return Gaussian.from_covariance(mean=RNG.standard_normal(K), cov=[[2.0, 0.3], [0.3, 1.0]])


def batched_gaussian() -> Gaussian:
    return Gaussian.from_diagonal(
        mean=RNG.standard_normal((3, K)), variances=RNG.uniform(0.5, 2.0, (3, K))
    )


def build_model(noise: str) -> LinearGaussianModel:
    return LinearGaussianModel(
        weights=WEIGHTS, bias=BIAS, prior=shared_gaussian(), noise_cov=NOISES[noise]
    )


def build_encoder() -> LinearEncoder:
    return LinearEncoder(
        matrix=RNG.standard_normal((K, D)), offset=RNG.standard_normal(K), scale_tril=np.eye(K)
    )


# ---------------------------------------------------------------------- the walk
def _public_values(obj: Any) -> Iterator[tuple[str, Any, bool]]:
    """``(name, value, from_method)`` for every public attribute, property, and
    method that can be called without arguments."""
    for name in dir(obj):
        if name.startswith("_"):
            continue
        value = getattr(obj, name)
        if inspect.isclass(value):
            continue
        if callable(value):
            try:
                signature = inspect.signature(value)
            except (TypeError, ValueError):  # pragma: no cover - builtins
                continue
            required = [
                p
                for p in signature.parameters.values()
                if p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            ]
            if required:
                continue
            yield f"{name}()", value(), True
        else:
            yield name, value, False


def _children(value: Any) -> Iterator[tuple[str, Any]]:
    """The items of a container, as ``(suffix, item)``."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"[{key!r}]", item
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield f"[{index}]", item


def _base_chain(array: np.ndarray) -> Iterator[np.ndarray]:
    current: Any = array
    while isinstance(current, np.ndarray):
        yield current
        current = current.base


def walk(obj: Any, path: str = "obj") -> list[tuple[str, np.ndarray, bool]]:
    """Every array reachable from ``obj`` through public names: ``(path, array,
    handed_out)``, where ``handed_out`` marks results of methods (and everything
    reached from them), which may be fresh arrays owned by the caller."""
    found: list[tuple[str, np.ndarray, bool]] = []
    seen: set[int] = set()

    def visit(value: Any, where: str, depth: int, handed_out: bool) -> None:
        if isinstance(value, ATOMS) or id(value) in seen or depth > MAX_DEPTH:
            return
        seen.add(id(value))
        if isinstance(value, np.ndarray):
            for level, array in enumerate(_base_chain(value)):
                found.append((where + ".base" * level, array, handed_out))
            return
        if isinstance(value, (dict, list, tuple)):
            for suffix, item in _children(value):
                visit(item, where + suffix, depth, handed_out)
            return
        for name, item, from_method in _public_values(value):
            visit(item, f"{where}.{name}", depth + 1, handed_out or from_method)

    visit(obj, path, 0, False)
    return found


def state_arrays(obj: Any) -> list[np.ndarray]:
    """Every array stored on ``obj`` or on objects it stores, private ones included."""
    arrays: list[np.ndarray] = []
    seen: set[int] = set()

    def visit(value: Any, depth: int) -> None:
        if isinstance(value, ATOMS) or id(value) in seen or depth > MAX_DEPTH + 2:
            return
        seen.add(id(value))
        if isinstance(value, np.ndarray):
            arrays.extend(_base_chain(value))
            return
        if isinstance(value, (dict, list, tuple)):
            for _, item in _children(value):
                visit(item, depth)
            return
        if dataclasses.is_dataclass(value):
            for field in dataclasses.fields(value):
                visit(getattr(value, field.name), depth + 1)
        for item in getattr(value, "__dict__", {}).values():
            visit(item, depth + 1)
        for name in getattr(type(value), "__slots__", ()):
            visit(getattr(value, name, None), depth + 1)

    visit(obj, 0)
    return arrays


# ---------------------------------------------------------------------- results
def gaussian_results(g: Gaussian) -> list[Any]:
    points = np.linspace(-1.0, 1.0, 2 * g.dim).reshape(2, 1, g.dim)
    return [
        g.log_prob(points),
        g.entropy(),
        g.log_det_cov,
        np.array(g.cov),
        np.array(g.precision),
        np.array(g.variances),
        g.sample(2, 0),
    ]


def model_results(m: LinearGaussianModel) -> list[Any]:
    q = Gaussian.from_diagonal(mean=np.zeros(K), variances=[0.5, 2.0])
    posterior = m.posterior(X)
    encoder = m.optimal_encoder()
    return [
        m.log_evidence(X),
        m.elbo(q, X),
        m.kl_to_posterior(q, X),
        np.array(posterior.mean),
        np.array(posterior.cov),
        np.array(m.marginal().cov),
        m.dataset_elbo(encoder, X),
        np.array(encoder.cov),
        m.sample(2, 0),
    ]


def encoder_results(e: LinearEncoder) -> list[Any]:
    return [np.array(e.cov), np.array(e(X).mean), np.array(e(X).scale_tril)]


def assert_same(before: list[Any], after: list[Any]) -> None:
    for old, new in zip(before, after, strict=True):
        if isinstance(old, tuple):
            assert_same(list(old), list(new))
        else:
            np.testing.assert_array_equal(new, old)


# ---------------------------------------------------------------------- the checks
def attack(array: np.ndarray) -> list[str]:
    """Try to make ``array`` writeable and to write into it; what succeeded."""
    succeeded = []
    try:
        array.flags.writeable = True
    except ValueError:
        pass
    else:
        succeeded.append("made writeable")
    if array.size:
        try:
            array[(0,) * array.ndim] = np.nan if array.dtype.kind == "f" else 0
        except ValueError:
            pass
        else:
            succeeded.append("written into")
    return succeeded


def check_object(obj: Any, results: Callable[[Any], list[Any]]) -> None:
    """The full protocol: no stored array can be changed, a handed-out array is either
    frozen or the caller's own, and after every attempt the results are unchanged."""
    before = results(obj)
    state = state_arrays(obj)
    reachable = walk(obj)
    assert reachable, "nothing reachable: the walk is broken"
    problems: list[str] = []
    for path, array, handed_out in reachable:
        if handed_out and not is_frozen(array):
            # a fresh result is the caller's to edit, provided it is not the object's
            shared = [s for s in state if s is array or np.shares_memory(s, array)]
            if shared:
                problems.append(f"{path} hands out a writeable view of the object's state")
            continue
        succeeded = attack(array)
        if succeeded:
            problems.append(f"{path} ({array.shape}): {' and '.join(succeeded)}")
    for _, array, handed_out in reachable:
        if handed_out and not is_frozen(array):
            attack(array)  # the caller's own copy: editing it must change nothing
    assert not problems, "\n".join(problems)
    assert_same(before, results(obj))


def check_names_cannot_be_rebound(obj: Any) -> None:
    """Assigning to a public attribute or property raises instead of replacing it."""
    rebound = []
    for name, value, from_method in _public_values(obj):
        if from_method:
            continue
        try:
            setattr(obj, name, value)
        except (AttributeError, dataclasses.FrozenInstanceError):
            continue
        rebound.append(name)
    assert not rebound, f"can be reassigned: {rebound}"


# ---------------------------------------------------------------------- tests
def test_freeze_cannot_be_undone() -> None:
    """The old freeze only cleared the flag: setting it back let anyone edit the array."""
    original = np.arange(6.0).reshape(2, 3)
    frozen = freeze(original)
    assert is_frozen(frozen)
    np.testing.assert_array_equal(frozen, original)
    assert not np.shares_memory(frozen, original)
    for view in (frozen, frozen.T, frozen[1], frozen[:, ::2], *_base_chain(frozen)):
        assert attack(view) == []
    assert freeze(frozen) is frozen
    assert is_frozen(freeze(np.zeros((0, 3))))
    scalar = freeze(np.float64(2.5) * np.ones(()))
    assert is_frozen(scalar)
    assert scalar.shape == ()
    assert isinstance(shared_gaussian().log_det_cov, float)
    assert not is_frozen(original)
    assert not is_frozen(np.broadcast_to(original, (2, 2, 3)))


@pytest.mark.parametrize("build", [shared_gaussian, batched_gaussian], ids=["shared", "batched"])
def test_gaussian_stays_what_it_was_built_as(build: Callable[[], Gaussian]) -> None:
    """mean, scale_tril, cov, precision, variances: none can be made writeable."""
    g = build()
    check_object(g, gaussian_results)
    check_names_cannot_be_rebound(g)


@pytest.mark.parametrize(
    "duplicate",
    [copy.copy, copy.deepcopy, lambda g: pickle.loads(pickle.dumps(g))],
    ids=["copy", "deepcopy", "pickle"],
)
@pytest.mark.parametrize("build", [shared_gaussian, batched_gaussian], ids=["shared", "batched"])
def test_copies_of_a_gaussian_stay_frozen(
    build: Callable[[], Gaussian], duplicate: Callable[[Gaussian], Gaussian]
) -> None:
    """Unpickling rebuilt the arrays as ordinary writeable ones."""
    g = build()
    _ = g.cov, g.precision  # cached arrays are copied too
    twin = duplicate(g)
    check_object(twin, gaussian_results)
    assert_same(gaussian_results(g), gaussian_results(twin))


def test_a_gaussians_cached_covariance_follows_its_factor() -> None:
    """Editing a made-writeable scale_tril used to leave cov computed from the old one."""
    g = shared_gaussian()
    cov = np.array(g.cov)
    with pytest.raises(ValueError, match="WRITEABLE"):
        g.scale_tril.flags.writeable = True
    np.testing.assert_array_equal(g.scale_tril @ g.scale_tril.T, cov)


def test_trusted_gaussians_freeze_their_inputs() -> None:
    """Gaussian._trusted (used by every model method) does not keep the caller's arrays."""
    mean, factor = np.zeros(2), np.eye(2)
    g = Gaussian._trusted(mean, factor)
    mean[:] = 5.0
    factor[:] = 7.0
    np.testing.assert_array_equal(g.mean, np.zeros(2))
    np.testing.assert_array_equal(g.scale_tril, np.eye(2))
    assert is_frozen(g.mean)
    assert is_frozen(g.scale_tril)


@pytest.mark.parametrize("noise", sorted(NOISES))
def test_model_stays_what_it_was_built_as(noise: str) -> None:
    """Weights, bias, noise, prior and every cached factor are immutable for good."""
    m = build_model(noise)
    before = model_results(m)
    with pytest.raises(ValueError, match="WRITEABLE"):
        m.weights.flags.writeable = True
    check_object(m, model_results)
    check_names_cannot_be_rebound(m)
    assert_same(before, model_results(m))


@pytest.mark.parametrize("noise", sorted(NOISES))
def test_objects_returned_by_the_model_stay_what_they_were_built_as(noise: str) -> None:
    """posterior(x), marginal(), optimal_encoder(), elbo_terms() and the gradients: no
    array they hold can be changed, and none is a writeable view of the model's state."""
    m = build_model(noise)
    q = Gaussian.from_diagonal(mean=np.zeros((3, K)), variances=[0.5, 2.0])
    before = model_results(m)
    returned: list[Any] = [
        m.posterior(X),
        m.posterior(X[0]),
        m.marginal(),
        m.optimal_encoder(),
        m.elbo_terms(q, X),
        m.elbo_grad_variational(q, X),
        m.elbo_grad_model(q, X),
        m.dataset_elbo_grad(m.optimal_encoder(), X),
    ]
    state = state_arrays(m)
    for obj in returned:
        for path, array, _ in walk(obj, type(obj).__name__):
            if is_frozen(array):
                assert attack(array) == [], path
                continue
            assert not any(s is array or np.shares_memory(s, array) for s in state), (
                f"{path} is a writeable view of the model's state"
            )
            attack(array)
    assert_same(before, model_results(m))
    for obj in returned[:4]:
        check_object(obj, gaussian_results if isinstance(obj, Gaussian) else encoder_results)


def test_encoder_stays_what_it_was_built_as() -> None:
    """matrix, offset, scale_tril, cov and the Gaussians it returns."""
    e = build_encoder()
    check_object(e, encoder_results)
    check_names_cannot_be_rebound(e)
    check_object(e(X), gaussian_results)


DUPLICATES = [copy.copy, copy.deepcopy, lambda obj: pickle.loads(pickle.dumps(obj))]


@pytest.mark.parametrize("duplicate", DUPLICATES, ids=["copy", "deepcopy", "pickle"])
@pytest.mark.parametrize("noise", sorted(NOISES))
def test_copies_of_a_model_and_an_encoder_stay_frozen(
    noise: str, duplicate: Callable[[Any], Any]
) -> None:
    """Copies used to come back with writeable weights, bias, noise and factors."""
    m = build_model(noise)
    twin = duplicate(m)
    check_object(twin, model_results)
    assert_same(model_results(m), model_results(twin))
    e = build_encoder()
    twin_encoder = duplicate(e)
    check_object(twin_encoder, encoder_results)
    assert_same(encoder_results(e), encoder_results(twin_encoder))
