r"""The loss doctor's designed problems, their exact pieces, and the fit of a loss to them.

A loss is probed at a *design point* (batch size :math:`B`, data dimension :math:`D`,
latent dimension :math:`K`, samples :math:`n`) on a dozen problems that differ in the
model, :math:`q` and the data, and its values are fitted, by (weighted) least squares,
to the exact per-row pieces of the ELBO with their constants stripped:

.. math::
    F_i &= \mathbb E_q \log p(x_i\mid z) + \tfrac D2\log 2\pi + \tfrac12\log\det\Psi
        \quad\text{(the data fit)},\\
    P &= -\tfrac12\log\det\Psi,\\
    C_i &= \mathbb E_q[-\log p(z)] - \tfrac K2\log 2\pi \quad\text{(the prior's
        cross-entropy)},\\
    H_i &= H(q_i) - \tfrac K2(1 + \log 2\pi) \quad\text{(the entropy)},

so that :math:`\mathrm{ELBO}_i = F_i + P - C_i + H_i + \kappa` with the constant
:math:`\kappa = -\tfrac D2\log 2\pi + \tfrac K2`. A loss that returns one number gets
the columns :math:`\sum_i F_i, BP, \sum_i C_i, \sum_i H_i, 1`; one that returns a value
per row gets each row's own pieces, the batch sums (a term summed over the batch and
added to every row shows there) and 1. Each column carries the constant its complete
term would add, so the fitted intercept says which constants the loss keeps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from .._gaussian import LOG_2PI, Gaussian
from .._model import LinearGaussianModel
from .._random import random_gaussian, random_spd
from ._returns import BadReturn, invoke, return_dtype, to_array

FloatArray = NDArray[np.float64]

#: The axes a loss can reduce over, in the order the report lists them.
AXES = ("rows", "features", "latent", "samples")


@dataclass(frozen=True)
class Design:
    """A design point: batch size, data and latent dimension, samples (0: deterministic)."""

    rows: int = 3
    features: int = 4
    latent: int = 2
    samples: int = 0

    def size(self, axis: str) -> int:
        return int(getattr(self, axis))

    def doubled(self, axis: str) -> Design:
        return replace(self, **{axis: 2 * self.size(axis)})

    def text(self) -> str:
        parts = [f"B = {self.rows}", f"D = {self.features}", f"K = {self.latent}"]
        return ", ".join(parts + ([f"n = {self.samples}"] if self.samples else []))


@dataclass(frozen=True)
class ProblemClass:
    """The problems a loss is probed on: q's covariance, the prior and the noise."""

    q_kind: str  # "full" or "diagonal"
    prior_kind: str  # "general" or "standard"
    noise_kind: str  # "diagonal" or "unit"

    def text(self) -> str:
        q = "a full-covariance q" if self.q_kind == "full" else "a diagonal q"
        prior = "a general prior" if self.prior_kind == "general" else "a standard-normal prior"
        noise = "diagonal noise" if self.noise_kind == "diagonal" else "unit noise variance"
        return f"{q}, {prior}, {noise}"


#: From the most general problems to the ones most VAE code assumes: a diagonal q, a
#: N(0, I) prior and (for a squared-error reconstruction) unit noise variance. The
#: doctor reports on the first class on which the loss is a combination of the pieces.
PROBLEM_CLASSES = (
    ProblemClass("full", "general", "diagonal"),
    ProblemClass("diagonal", "standard", "diagonal"),
    ProblemClass("diagonal", "standard", "unit"),
)


# ---------------------------------------------------------------------- problems
def draw_problem(
    rng: np.random.Generator, design: Design, kind: ProblemClass
) -> tuple[LinearGaussianModel, Gaussian, FloatArray]:
    """One problem of ``kind`` at ``design``: a model, q with one member per row, x (B, D).

    The data are drawn far from the model (residuals up to a few noise scales) and q's
    means and scales vary widely, so that the pieces vary over tens of nats between
    problems: a Monte-Carlo loss's noise is then small against the signal.
    """
    b, d, k = design.rows, design.features, design.latent
    weights = rng.standard_normal((d, k)) / math.sqrt(k)
    bias = rng.standard_normal(d)
    noise: float | FloatArray
    if kind.noise_kind == "unit":
        noise = 1.0
    else:
        noise = np.exp(rng.uniform(math.log(0.05), math.log(20.0), size=d))
    if kind.prior_kind == "standard":
        prior = Gaussian._trusted(np.zeros(k), np.eye(k))
    else:
        prior = random_gaussian(rng, k, condition_number=4.0, mean_scale=1.0)
    model = LinearGaussianModel(weights=weights, bias=bias, prior=prior, noise_cov=noise)
    spread = rng.uniform(0.5, 3.0)
    mean = prior.mean + spread * rng.standard_normal((b, k))
    # Under Monte Carlo q is narrow, so that sampled terms vary little within a problem
    # while q's entropy (log det of its covariance) still varies by nats between problems.
    low, high = (0.2, 2.0) if not design.samples else (0.002, 0.05)
    if kind.q_kind == "diagonal":
        scales = np.exp(rng.uniform(math.log(low), math.log(high), size=(b, k)))
        factors = scales[..., :, None] * np.eye(k)
    else:
        factors = np.array(
            [
                np.linalg.cholesky(
                    random_spd(rng, k, condition_number=5.0, scale=rng.uniform(low, high) ** 2)
                )
                for _ in range(b)
            ]
        )
    q = Gaussian._trusted(mean, factors)
    z = prior.mean + rng.standard_normal((b, k)) @ prior.scale_tril.T
    scale = np.sqrt(np.broadcast_to(np.asarray(noise, dtype=float), (d,)))
    x = z @ weights.T + bias + rng.uniform(1.0, 4.0) * scale * rng.standard_normal((b, d))
    return model, q, x


@dataclass(frozen=True)
class Pieces:
    """The exact pieces of one problem's rows (see the module docstring)."""

    fit: FloatArray  # (B,)
    logdet_term: float  # P
    cross_entropy: FloatArray  # (B,), C_i
    entropy: FloatArray  # (B,), H_i
    design: Design

    @classmethod
    def of(cls, model: LinearGaussianModel, q: Gaussian, x: FloatArray, design: Design) -> Pieces:
        terms = model.elbo_terms(q, x)
        noise = model.dense_noise_cov()
        logdet = float(np.linalg.slogdet(noise)[1])
        d, k = design.features, design.latent
        return cls(
            fit=np.asarray(terms.expected_log_likelihood) + 0.5 * d * LOG_2PI + 0.5 * logdet,
            logdet_term=-0.5 * logdet,
            cross_entropy=np.asarray(terms.cross_entropy) - 0.5 * k * LOG_2PI,
            entropy=np.asarray(terms.entropy) - 0.5 * k * (1.0 + LOG_2PI),
            design=design,
        )


#: Column names of the two layouts; the KL's pieces enter with the signs of a loss.
SCALAR_COLUMNS = ("fit", "logdet", "cross_entropy", "entropy", "constant")
ROW_COLUMNS = (
    "fit",
    "logdet",
    "cross_entropy",
    "entropy",
    "batch_fit",
    "batch_cross_entropy",
    "batch_entropy",
    "constant",
)


def columns(pieces: Pieces, per_row: bool) -> tuple[FloatArray, FloatArray]:
    """The design matrix rows of one problem and each column's constant.

    The constant of a column is what its complete term adds: ``kappa_F = -D/2 log 2 pi``
    per row for the data fit, ``K/2 log 2 pi`` for the cross-entropy and
    ``K/2 (1 + log 2 pi)`` for the entropy (summed over the batch for batch columns).
    """
    d, k, b = pieces.design.features, pieces.design.latent, pieces.design.rows
    kf, kc, kh = -0.5 * d * LOG_2PI, 0.5 * k * LOG_2PI, 0.5 * k * (1.0 + LOG_2PI)
    if not per_row:
        row = [
            pieces.fit.sum(),
            b * pieces.logdet_term,
            pieces.cross_entropy.sum(),
            pieces.entropy.sum(),
            1.0,
        ]
        return np.array([row]), np.array([b * kf, 0.0, b * kc, b * kh, 0.0])
    own = np.column_stack(
        [pieces.fit, np.full(b, pieces.logdet_term), pieces.cross_entropy, pieces.entropy]
    )
    batch = np.tile([pieces.fit.sum(), pieces.cross_entropy.sum(), pieces.entropy.sum()], (b, 1))
    matrix = np.column_stack([own, batch, np.ones(b)])
    return matrix, np.array([kf, 0.0, kc, kh, b * kf, b * kc, b * kh, 0.0])


# ---------------------------------------------------------------------- calling
@dataclass
class Probe:
    """What a loss returned at one design point: one row per problem (and row of x)."""

    design: Design
    matrix: FloatArray  # (observations, columns)
    constants: FloatArray  # (columns,)
    values: FloatArray  # (observations,): the mean over calls
    variances: FloatArray | None  # (observations,): of the mean; None when deterministic
    per_row: bool
    float32: bool


def _convert(value: Any, rows: int) -> FloatArray:
    array = to_array(value)
    if array.size == 1 and array.ndim <= 1:
        return array.reshape(1)
    if array.shape == (rows,):
        return array
    raise BadReturn(
        f"fn must return a scalar loss or one value per row (shape ({rows},)); "
        f"got an array of shape {array.shape}"
    )


def probe(
    fn: Callable[..., Any],
    design: Design,
    kind: ProblemClass,
    *,
    seed: Sequence[int],
    n_problems: int,
    calls: int,
) -> Probe:
    """Call ``fn`` on ``n_problems`` problems of ``kind`` at ``design`` and stack the results.

    Deterministic losses (``design.samples == 0``) are called once per problem as
    ``fn(model, q, x)``; Monte-Carlo ones ``calls`` times as ``fn(model, q, x, rng, n)``
    with independent generators spawned from ``seed``.
    """
    rng = np.random.default_rng(list(seed))
    blocks, constants, means, variances = [], None, [], []
    per_row: bool | None = None
    float32 = False
    for index in range(n_problems):
        model, q, x = draw_problem(rng, design, kind)
        pieces = Pieces.of(model, q, x, design)  # before fn runs: private, exact
        if design.samples:
            streams = np.random.SeedSequence([*seed, index]).spawn(calls)
            raw = [
                invoke(fn, model, q, x, np.random.Generator(np.random.PCG64(s)), design.samples)
                for s in streams
            ]
        else:
            raw = [invoke(fn, model, q, x)]
        float32 = float32 or any(return_dtype(r) == np.float32 for r in raw)
        got = np.array([_convert(r, design.rows) for r in raw])
        if not np.all(np.isfinite(got)):
            raise BadReturn(f"fn returned a value that is not finite: {got.ravel()[:4]}")
        this_per_row = got.shape[1] > 1
        if per_row is None:
            per_row = this_per_row
        elif per_row != this_per_row:
            raise BadReturn(
                "fn returned a scalar for one problem and one value per row for another"
            )
        matrix, constants = columns(pieces, per_row)
        blocks.append(matrix)
        means.append(got.mean(axis=0))
        if design.samples:
            variances.append(got.var(axis=0, ddof=1) / calls)
    if constants is None or per_row is None:  # pragma: no cover - n_problems >= 1
        raise AssertionError("no problem was probed")
    return Probe(
        design=design,
        matrix=np.vstack(blocks),
        constants=constants,
        values=np.concatenate(means),
        variances=np.concatenate(variances) if design.samples else None,
        per_row=per_row,
        float32=float32,
    )


# ---------------------------------------------------------------------- fitting
@dataclass(frozen=True)
class Fit:
    """The coefficients of a loss at one design point, with standard errors and the fit's quality.

    ``standard_errors`` are 0 for a deterministic loss; ``tolerance`` is then the
    round-off allowance of each coefficient. ``lack_of_fit`` is the largest residual
    relative to its allowance (deterministic) or the chi-squared p-value of the
    residuals (Monte Carlo); ``fits`` says whether the values are a combination of the
    pieces at all.
    """

    design: Design
    names: tuple[str, ...]
    coefficients: FloatArray
    standard_errors: FloatArray
    tolerance: FloatArray
    constants: FloatArray
    fits: bool
    residual: float
    lack_of_fit: float
    inactive: tuple[str, ...] = ()

    def coefficient(self, name: str) -> float:
        return float(self.coefficients[self.names.index(name)])

    def uncertainty(self, name: str) -> float:
        i = self.names.index(name)
        return float(max(self.standard_errors[i], self.tolerance[i]))

    @property
    def offset(self) -> float:
        """The intercept beyond the constants the loss's terms carry when complete."""
        return self.coefficient("constant") - float(self.coefficients @ self.constants)

    @property
    def likelihood_constant(self) -> float:
        """The ``-D/2 log 2 pi`` constants the data-fit columns carry (times their coefficients)."""
        index = [i for i, n in enumerate(self.names) if n in ("fit", "batch_fit")]
        return float(self.coefficients[index] @ self.constants[index])


def fit(found: Probe, *, rtol: float, level: float) -> Fit:
    """Least squares of the probe's values on its columns (weighted by 1/variance under
    Monte Carlo); columns that are identically zero (log det Psi under unit noise) are
    fixed at 0."""
    names = SCALAR_COLUMNS if not found.per_row else ROW_COLUMNS
    x, y = found.matrix, found.values
    active = np.flatnonzero(np.abs(x).max(axis=0) > 0)
    magnitude = np.abs(x) @ np.ones(x.shape[1]) + np.abs(y) + 1.0
    if found.variances is None:
        weights = 1.0 / magnitude
    else:
        floor = (rtol * magnitude) ** 2
        weights = 1.0 / np.sqrt(found.variances + floor)
    xa = x[:, active] * weights[:, None]
    solution, *_ = np.linalg.lstsq(xa, y * weights, rcond=None)
    coefficients = np.zeros(x.shape[1])
    coefficients[active] = solution
    residuals = y - x @ coefficients
    covariance = np.linalg.pinv(xa.T @ xa)
    errors = np.zeros(x.shape[1])
    tolerance = np.zeros(x.shape[1])
    dof = max(len(y) - len(active), 1)
    if found.variances is None:
        allowance = rtol * magnitude
        worst = float(np.max(np.abs(residuals) / allowance))
        # An error vector e in the values moves a coefficient by at most |e| times the
        # norm of its row of the pseudo-inverse (Cauchy-Schwarz). |e| is estimated from
        # the residuals, the part of e the fit can see (|r| ~ |e| sqrt(dof / n) for
        # round-off), with a safety factor of 4 and a floor at float64's resolution.
        seen = float(np.linalg.norm(residuals * weights)) * math.sqrt(len(y) / dof)
        error_norm = 4.0 * max(seen, 1e-14 * math.sqrt(len(y)))
        tolerance[active] = error_norm * np.sqrt(np.diag(covariance))
        fits, lack = worst <= 1.0, worst
    else:
        errors[active] = np.sqrt(np.diag(covariance))
        chi2 = float(np.sum((residuals * weights) ** 2))
        lack = float(stats.chi2.sf(chi2, dof))
        fits = lack >= level
        tolerance[active] = rtol * np.abs(solution) + 1e-12
    return Fit(
        design=found.design,
        names=names,
        coefficients=coefficients,
        standard_errors=errors,
        tolerance=tolerance,
        constants=found.constants,
        fits=fits,
        residual=float(np.max(np.abs(residuals))),
        lack_of_fit=lack,
        inactive=tuple(n for i, n in enumerate(names) if i not in set(active.tolist())),
    )
