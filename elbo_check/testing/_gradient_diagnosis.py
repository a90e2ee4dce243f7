"""Naming a gradient's bug on independent problems.

A suspect explains a failing gradient only when it reproduces the user's gradient on
the failing problem and on an independent one (:func:`~._diagnosis.match_suspects_across`):
on one problem alone several bugs can agree (a standard prior makes the prior's
gradient vanish at its mean, a diagonal q hides a transposed factor). The independent
problems keep what the user's code may be specialised to -- the dimensions, the noise
kind, the prior kind and q's covariance kind -- and are drawn from a seed fixed by the
dimensions, so the names do not depend on the verifier's seed or on the case the search
shrank to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from .._random import random_gaussian, random_model, random_spd
from ._cases import kind_of
from ._diagnosis import Probe, Suspect, match_suspects_across
from ._gradient_cases import _Case

__all__ = ["gradient_suspects_across", "independent_gradient_problems"]

FloatArray = NDArray[np.float64]
Problem = tuple[LinearGaussianModel, Gaussian, FloatArray]


def _prior_like(prior: Gaussian, rng: np.random.Generator) -> Gaussian:
    k = prior.dim
    if np.all(prior.mean == 0.0) and np.all(prior.scale_tril == np.eye(k)):
        return Gaussian.standard(k)
    general = random_gaussian(rng, k, condition_number=6.0, mean_scale=1.0)
    if kind_of(prior) == "full":
        return general
    return Gaussian._trusted(general.mean, np.diag(rng.uniform(0.5, 1.8, size=k)))


def _q_like(q: Gaussian, rng: np.random.Generator) -> Gaussian:
    k = q.dim
    general = random_gaussian(rng, k, condition_number=8.0, cov_scale=0.6)
    kind = kind_of(q)
    if kind == "full":
        return general
    scales = rng.uniform(0.4, 1.2, size=k)
    if kind == "isotropic":
        scales[:] = scales[0]
    return Gaussian._trusted(general.mean, np.diag(scales))


def independent_gradient_problems(
    model: LinearGaussianModel, q: Gaussian, count: int = 2
) -> list[Problem]:
    """``count`` problems of ``model``'s dimensions, noise kind and prior kind (standard,
    diagonal or full), with a q of ``q``'s covariance kind; seeded by the dimensions."""
    d, k = model.data_dim, model.latent_dim
    out = []
    for i in range(count):
        rng = np.random.default_rng([d, k, 211 + i])
        base = random_model(rng, data_dim=d, latent_dim=k, family="general")
        noise: Any
        if model.noise_kind == "isotropic":
            noise = float(rng.uniform(0.2, 1.5))
        elif model.noise_kind == "diagonal":
            noise = rng.uniform(0.2, 2.0, size=d)
        else:
            noise = random_spd(rng, d, condition_number=8.0, scale=0.4)
        other = LinearGaussianModel(
            weights=base.weights,
            bias=base.bias,
            prior=_prior_like(model.prior, rng),
            noise_cov=noise,
        )
        x = other.marginal_mean + 1.5 * rng.standard_normal(d)
        out.append((other, _q_like(q, rng), x))
    return out


def moved(q: Gaussian) -> Gaussian:
    """A variation of q: the mean moved, the factor scaled (same covariance kind)."""
    return Gaussian._trusted(q.mean + 0.5, q.scale_tril * 1.3)


def gradient_suspects_across(
    fn: Callable[..., Any],
    prepare: Callable[[LinearGaussianModel, Gaussian, FloatArray, int], _Case],
    case: _Case,
    suspects: Sequence[Suspect],
    rtol: float,
    atol: float,
) -> list[Suspect]:
    """``suspects`` that reproduce ``fn``'s gradient on the failing ``case``, on q moved
    (``prepare(model, q, x, variant)`` with ``variant`` 1) and on independent problems
    (variants 2, 3), and explain the failure on at least two of the problems."""
    arguments: list[tuple[int, Problem]] = [
        (0, (case.model, moved(case.q), case.x)),
        *(
            (number, problem)
            for number, problem in enumerate(
                independent_gradient_problems(case.model, case.q), start=1
            )
        ),
    ]
    cases = [(0, case)]
    for variant, (number, (model, q, x)) in enumerate(arguments, start=1):
        try:
            cases.append((number, prepare(model, q, x, variant)))
        except Exception:  # a parametrisation that cannot represent this q
            continue
    probes = []
    for number, probe_case in cases:
        try:
            got = probe_case.convert(probe_case.call(fn))
        except Exception:
            continue
        probes.append(_probe(probe_case, got, number, rtol, atol))
    return match_suspects_across(suspects, probes)


def _probe(case: _Case, got: FloatArray, number: int, rtol: float, atol: float) -> Probe:
    # Probe carries arrays here: match_suspects_across compares entry by entry.
    values: Any = (got, case.expected, case.tolerance(rtol, atol))
    scale = float(np.max(np.abs(case.expected))) + 1.0
    return Probe(case.arguments, values[0], values[1], values[2], scale, number)
