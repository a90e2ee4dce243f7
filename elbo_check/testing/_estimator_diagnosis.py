"""Naming the bug of a failing ELBO estimator, on two independent problems.

A suspect named from one problem alone can change with the seed: on one problem
several bugs may bias the mean by about the same amount, and a bias of the size of a
few standard errors is matched by whichever suspect is closest. So a failure of the
estimator check is explained on two problems:

* statistical mode: the z-test runs on one more problem (:func:`second_problem`: the
  failing problem's dimensions, noise kind, prior kind and q kind, drawn from the
  check's seed; its own calls). A suspect is named only if its predicted mean is
  consistent with the mean estimate on *both* problems (within ``critical * SE +
  tolerance``) and differs from the exact ELBO by more than that on both: it explains
  the bias twice, not once by chance. Failing the catalogue, a term of the ELBO (the
  whole estimate, ``E_q[log p(x|z)]``, the KL, the entropy) scaled by one simple
  constant on both problems is named (``-1``: the loss was returned; ``1/N``: the
  reconstruction divided by a dataset size);
* pathwise mode: the failing case, its variations and two independent problems of
  other dimensions (:func:`~._term_fit.independent_elbo_problems`) are probes for
  :func:`~._diagnosis.match_suspects_across`, which names a suspect only when it
  reproduces every probe and explains problems of at least two independent draws.

The estimates the diagnosis needs come from ``values_of`` callbacks, so the same code
serves the unbatched check and the batched one (where a single problem is evaluated in
a batch of copies of itself).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import logsumexp

from .._gaussian import Gaussian
from .._linalg import cholesky
from .._model import LinearGaussianModel
from .._random import random_gaussian, random_model, random_spd
from ._cases import _with_kind
from ._diagnosis import Probe, Suspect, is_nice, match_suspects_across, scaled
from ._forms import ElboForm
from ._problems import _elbo_scale, _elbo_variants
from ._report import _diagnosis
from ._returns import invoke
from ._statistics import _batch_t
from ._term_fit import independent_elbo_problems

__all__ = [
    "StatisticalEvidence",
    "diagnosis_calls",
    "kind_of",
    "near_posterior",
    "pathwise_diagnosis",
    "second_problem",
    "statistical_diagnosis",
]

FloatArray = NDArray[np.float64]
Triple = tuple[LinearGaussianModel, Gaussian, FloatArray]
#: The user's estimates on one unbatched problem, seeded by a list of ints; None if it raised.
ValuesOf = Callable[[LinearGaussianModel, Gaussian, FloatArray, list[int]], FloatArray | None]


# ---------------------------------------------------------------------- problems
def kind_of(q: Gaussian) -> str:
    """``"isotropic"``, ``"diagonal"`` or ``"full"``: the covariance kind of an unbatched q."""
    cov = q.cov
    diagonal = np.diagonal(cov)
    if not np.array_equal(cov, np.diag(diagonal)):
        return "full"
    return "isotropic" if np.all(diagonal == diagonal[0]) else "diagonal"


def near_posterior(
    model: LinearGaussianModel, x: FloatArray, rng: np.random.Generator, kind: str
) -> Gaussian:
    """A q of covariance ``kind`` near the posterior at ``x`` (as the fixed problems'),
    where a correct estimator has small variance and biases stand out."""
    k = model.latent_dim
    posterior = model.posterior(x)
    skew = random_gaussian(rng, k, condition_number=10.0).scale_tril
    product = posterior.scale_tril @ skew
    factor = cholesky("cov", product @ product.T)
    mean = posterior.mean + posterior.scale_tril @ rng.standard_normal(k)
    return _with_kind(Gaussian._trusted(mean, factor), kind)


def _prior_like(prior: Gaussian, rng: np.random.Generator) -> Gaussian:
    k = prior.dim
    if np.all(prior.mean == 0.0) and np.array_equal(prior.scale_tril, np.eye(k)):
        return Gaussian.standard(k)
    if np.array_equal(prior.cov, np.diag(np.diagonal(prior.cov))):
        return Gaussian.from_diagonal(
            mean=rng.standard_normal(k), variances=rng.uniform(0.3, 3.0, size=k)
        )
    return random_gaussian(rng, k, condition_number=6.0)


def second_problem(
    model: LinearGaussianModel, q: Gaussian, x: FloatArray, seed: list[int]
) -> Triple:
    """An independent problem like the failing one: its D and K, noise kind, prior kind
    (standard, diagonal, general) and q kind, drawn from ``seed``. Code that supports
    only some shapes or kinds runs on it as on the failing problem."""
    rng = np.random.default_rng([*seed, 4321])
    d, k = model.data_dim, model.latent_dim
    base = random_model(rng, data_dim=d, latent_dim=k, family="general", condition_number=8.0)
    noise: Any
    if model.noise_kind == "isotropic":
        noise = float(rng.uniform(0.1, 1.0))
    elif model.noise_kind == "diagonal":
        noise = rng.uniform(0.2, 2.0, size=d)
    else:
        noise = random_spd(rng, d, condition_number=8.0, scale=0.3)
    other = LinearGaussianModel(
        weights=base.weights, bias=base.bias, prior=_prior_like(model.prior, rng), noise_cov=noise
    )
    data = other.sample(1, rng)[0][0]
    return other, near_posterior(other, data, rng, kind_of(q)), data


# ---------------------------------------------------------------------- calls
def diagnosis_calls(
    fn: Callable[..., Any],
    convert: Callable[[Any], Any],
    arguments: tuple[LinearGaussianModel, Gaussian, FloatArray, int],
    seed: list[int],
    calls: int,
) -> FloatArray | None:
    """``convert(fn(model, q, x, rng, n_samples))`` for ``calls`` generators spawned from
    ``seed`` (rows of an array), or None if ``fn`` raised: a diagnosis runs after the
    verdict, so it neither stops at the time budget nor turns an error into a failure."""
    model, q, x, n_samples = arguments
    rows = []
    for stream in np.random.SeedSequence(seed).spawn(calls):
        generator = np.random.Generator(np.random.PCG64(stream))
        try:
            rows.append(convert(invoke(fn, model, q, x, generator, n_samples)))
        except Exception:
            return None
    return np.asarray(rows, dtype=np.float64).reshape(calls, -1)


# ---------------------------------------------------------------------- statistical
class StatisticalEvidence:
    """A z-test of the mean estimate on one problem: numbers and the allowed distance."""

    def __init__(
        self, problem: Triple, mean: float, standard_error: float, critical: float, tolerance: float
    ) -> None:
        self.problem = problem
        self.expected = float(problem[0].elbo(problem[1], problem[2]))
        self.mean = mean
        self.standard_error = standard_error
        self.allowed = critical * standard_error + tolerance
        self.t = (mean - self.expected) / standard_error if standard_error > 0 else math.inf

    @property
    def biased(self) -> bool:
        return not abs(self.mean - self.expected) <= self.allowed

    def explains(self, predicted: float | None) -> bool:
        """The prediction matches the mean and differs from the exact ELBO."""
        if predicted is None or not math.isfinite(predicted):
            return False
        return (
            abs(self.mean - predicted) <= self.allowed
            and abs(predicted - self.expected) > self.allowed
        )


def _iwae_bound(n_samples: int) -> Callable[..., float | None]:
    """E of log mean_i w_i over n_samples draws of z ~ q (the IWAE bound), by Monte Carlo
    with a fixed seed and enough replicates that its own error is a small fraction of the
    user's standard error."""

    def predict(model: LinearGaussianModel, q: Gaussian, x: FloatArray) -> float | None:
        if n_samples < 2:
            return None
        replicates = max(2000, 200_000 // n_samples)
        eps = np.random.default_rng(20240).standard_normal((replicates * n_samples, q.dim))
        z = q.mean + eps @ q.scale_tril.T
        log_w = np.asarray(model.log_joint(x, z) - q.log_prob(z)).reshape(replicates, n_samples)
        return float(np.mean(logsumexp(log_w, axis=1) - math.log(n_samples)))

    return predict


def extra_estimator_suspects(n_samples: int) -> tuple[Suspect, ...]:
    """Form-independent estimator bugs beyond the forms' catalogues."""
    return (
        Suspect(
            f"fn returns an importance-weighted bound, log mean_i exp(log p(x, z_i) - "
            f"log q(z_i)) over the n_samples = {n_samples} samples (the IWAE bound), not "
            "the ELBO: it is larger than the ELBO in expectation",
            "average the log weights (mean of log p(x, z_i) - log q(z_i)), not the weights; "
            "the IWAE bound is a different objective",
            _iwae_bound(n_samples),
        ),
    )


#: Terms of the ELBO a scale bug multiplies: (label, the signed term from ElboTerms,
#: special names of scale factors, advice).
_SCALED_TERMS: tuple[tuple[str, Callable[[Any], float], dict[float, str], str], ...] = (
    (
        "the estimate (the whole ELBO)",
        lambda t: float(t.elbo),
        {-1.0: "the loss -ELBO is returned instead of the ELBO"},
        "return the ELBO itself: no sign flip (the loss is -ELBO), no division by N or B",
    ),
    (
        "the reconstruction E_q[log p(x | z)]",
        lambda t: float(t.expected_log_likelihood),
        {},
        "sum log p(x | z) over the D data dimensions, and do not divide it by a dataset "
        "or batch size N (scale the whole ELBO, if at all)",
    ),
    (
        "the KL term KL(q || p(z))",
        lambda t: -float(t.kl_to_prior),
        {},
        "subtract KL(q || p(z)) once, unweighted (a beta or warm-up weight is not the ELBO)",
    ),
    (
        "the entropy H(q)",
        lambda t: float(t.entropy),
        {},
        "add H(q) (or subtract log q(z)) once",
    ),
)


def _scaled_term(evidence: list[StatisticalEvidence]) -> Suspect | None:
    """A term of the ELBO scaled by one simple constant that explains the bias on every
    problem (weighted least squares over the problems)."""
    gaps = np.array([e.mean - e.expected for e in evidence])
    allowed = np.array([e.allowed for e in evidence])
    for label, term_of, special, advice in _SCALED_TERMS:
        terms = np.array(
            [term_of(e.problem[0].elbo_terms(e.problem[1], e.problem[2])) for e in evidence]
        )
        if np.any(np.abs(terms) <= allowed):
            continue  # the term is too small here to tell its scale
        weighted = terms / allowed
        excess = float(weighted @ (gaps / allowed) / (weighted @ weighted))
        scale = 1.0 + excess
        if not is_nice(scale) or abs(excess) < 1e-3:
            continue
        correction = excess * terms
        if np.all(np.abs(gaps - correction) <= allowed) and np.all(np.abs(correction) > allowed):
            return Suspect(scaled(label, special)(scale), advice, lambda *_: None)
    return None


def statistical_diagnosis(
    form: ElboForm,
    n_samples: int,
    first: StatisticalEvidence,
    values_of: ValuesOf,
    seed: list[int],
    critical: float,
    rtol: float,
    atol: float,
) -> str:
    """The second problem's z-test and the Diagnosis line (see the module docstring)."""
    model, q, x = first.problem
    other = second_problem(model, q, x, seed)
    estimates = values_of(*other, seed)
    if estimates is None:
        return (
            "  On a second independent problem (same D, K and kinds) fn raised: no "
            "suspect can be confirmed.\n"
            + _diagnosis([], "the bias does not match a known estimator bug")
        )
    expected = float(other[0].elbo(other[1], other[2]))
    mean, standard_error, _ = (float(v) for v in _batch_t(estimates, np.array(expected)))
    tolerance = rtol * _elbo_scale(*other) + atol
    second = StatisticalEvidence(other, mean, standard_error, critical, tolerance)
    line = (
        f"  second independent problem (D = {other[0].data_dim}, K = {other[0].latent_dim}, "
        f"a {kind_of(other[1])} q): exact ELBO {second.expected:.10g}, mean estimate "
        f"{second.mean:.10g} +- {second.standard_error:.3g}, t = {second.t:.3g}"
    )
    if not second.biased:
        return (
            line
            + "\n  The estimates are unbiased there: the bias depends on the problem.\n"
            + _diagnosis([], "the bias does not match a known estimator bug")
        )
    evidence = [first, second]
    found = []
    for suspect in form.estimator_suspects(n_samples) + extra_estimator_suspects(n_samples):
        try:
            ok = all(e.explains(_predict(suspect, e.problem)) for e in evidence)
        except (ValueError, np.linalg.LinAlgError, FloatingPointError, ZeroDivisionError):
            ok = False
        if ok:
            found.append(suspect)
    if not found:
        fitted = _scaled_term(evidence)
        found = [fitted] if fitted is not None else []
    return (
        line
        + "\n"
        + _diagnosis(found, "the bias does not match a known estimator bug on both problems")
    )


def _predict(suspect: Suspect, problem: Triple) -> float | None:
    value = suspect.predict(*problem)
    return None if value is None else float(value)


# ---------------------------------------------------------------------- pathwise
def pathwise_diagnosis(
    value_of: Callable[[LinearGaussianModel, Gaussian, FloatArray, FloatArray], float],
    form: ElboForm,
    model: LinearGaussianModel,
    q: Gaussian,
    x: FloatArray,
    eps: FloatArray,
    rtol: float,
    atol: float,
) -> str:
    """The Diagnosis line of a pathwise failure: suspects matched across the failing case
    (its noise varied, then q, x and the prior at fixed noise: bugs in an analytic term
    differ only when q or the prior moves) and two independent problems."""
    rng = np.random.default_rng(3)
    k = model.latent_dim
    noises = (eps, rng.standard_normal((3, k)), rng.standard_normal((2, k)))
    arguments: list[tuple[int, Triple, FloatArray]] = [(0, (model, q, x), e) for e in noises]
    arguments += [
        (0, variant, noises[1])
        for label, variant in _elbo_variants(model, q, x).items()
        if label != "original"
    ]
    kind = kind_of(q)
    for number, (mm, qq, xx) in enumerate(independent_elbo_problems(model), start=1):
        other_rng = np.random.default_rng([number, 17])
        for n in (3, 2):
            noise = other_rng.standard_normal((n, mm.latent_dim))
            arguments.append((number, (mm, _with_kind(qq, kind), xx), noise))
    probes = []
    for number, (mm, qq, xx), noise in arguments:
        z = qq.mean + noise @ qq.scale_tril.T
        exact = form.pathwise_value(mm, qq, xx, z)
        scale = form.magnitude(mm, qq, xx, z) + 1.0
        try:
            value = value_of(mm, qq, xx, noise)
        except Exception:
            continue
        if not math.isfinite(value):
            continue
        probes.append(Probe((mm, qq, xx, noise), value, exact, rtol * scale + atol, scale, number))
    return _diagnosis(match_suspects_across(form.pathwise_suspects(), probes), form.fallback)
