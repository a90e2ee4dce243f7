r"""Problems, balanced designs and the N/M-factor diagnosis of ``verify_minibatch_elbo``.

**Problems** (:func:`make_problem`): ``N`` rows of one model with a ``q_i`` per row (or
an encoder), or one Bayesian linear regression whose ``N`` observations are the rows,
a batch being the sub-model of its rows. **Designs** (:func:`balanced_batches`): a
permutation ``pi`` of the rows gives the ``N`` batches ``{pi(j), ..., pi(j + M - 1 mod
N)}``; every row lies in ``M`` of them, so the mean over them of a sum of per-row terms
is its mean over all ``C(N, M)`` batches.

**Diagnosis** (:func:`diagnose`). Over a balanced design the mean of such an estimator
is :math:`\bar y = a\,S_{\mathrm{lik}} + b\,S_{\mathrm{KL}}`, with
:math:`S_{\mathrm{lik}} = \sum_{i=1}^N \mathbb E_q\log p(x_i\mid z)` over *all* rows and
:math:`S_{\mathrm{KL}}` the global KL, or the sum of all rows' KL terms. A per-row term
multiplied by :math:`s` on each batch enters with :math:`a = s M/N`; a batch-independent
term (the global KL) with :math:`b = -s`. The fit of :math:`a, b` (weighted least
squares over the problems) is turned back into per-batch factors, each named from
:data:`CANDIDATES` and their negatives, in words where the bug is known, when one
candidate lies within three standard errors (:data:`MATCH_LEVEL`) and no other does, and
the named factors reproduce every problem's mean (:data:`RESIDUAL_LEVEL`, Bonferroni
over the problems); otherwise the fitted numbers are shown.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats
from numpy.typing import NDArray

from .._encoder import LinearEncoder
from .._errors import InvalidInputError
from .._gaussian import Gaussian
from .._model import LinearGaussianModel
from .._random import random_gaussian, random_spd
from ..strategies import NOISE_KINDS, PRIOR_KINDS
from ._options import check_choice, check_count, check_flag, check_kinds

__all__ = [
    "CANDIDATES",
    "Evidence",
    "Problem",
    "Setting",
    "balanced_batches",
    "call_text",
    "check_setting",
    "diagnose",
    "make_problem",
    "model_kinds",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

#: The per-batch factors a diagnosis can name, by their spelling in N and M.
CANDIDATES = ("N/M", "1", "M/N", "(N/M)^2", "1/M", "1/N", "N", "M", "0")

#: A named factor must lie within three standard errors of the fitted one: the
#: two-sided level of three standard errors of a normal, which in statistical mode is
#: widened to Student's t quantile of the same level (the errors are estimated).
MATCH_LEVEL = 0.0027

#: Two-sided level of the check that the named factors explain every problem.
RESIDUAL_LEVEL = 1e-3

#: The diagnosis when the mean over batches changed with the permutation.
INTERACTION = (
    "Diagnosis: the rows of a batch interact: fn's mean over the batches changed with the "
    "permutation, so its value on a batch is not a sum of per-row terms.\n  Fix: compute "
    "each row's terms from that row alone (and the batch-independent terms once); if the "
    "estimator is unbiased all the same, check it with mode='statistical'."
)


@dataclass(frozen=True)
class Setting:
    """The minibatch set-up: N, M, the kind of latent and the target's reduction."""

    dataset_size: int
    batch_size: int
    latent: str  # "local" or "global"
    reduction: str  # "sum" or "mean"

    @property
    def ratio(self) -> float:
        return self.dataset_size / self.batch_size

    def values(self) -> dict[str, float]:
        """Each candidate's value (and its negative, spelled with a minus)."""
        n, m = float(self.dataset_size), float(self.batch_size)
        values = (n / m, 1.0, m / n, (n / m) ** 2, 1.0 / m, 1.0 / n, n, m, 0.0)
        base = dict(zip(CANDIDATES, values, strict=True))
        return {**base, **{f"-{k}": -v for k, v in base.items() if v != 0.0}}

    def expected(self) -> tuple[float, float]:
        """The per-batch factors of the log-likelihood sum and of the (subtracted) KL."""
        per_row = self.ratio if self.reduction == "sum" else 1.0 / self.batch_size
        if self.latent == "local":
            return per_row, per_row
        return per_row, 1.0 if self.reduction == "sum" else 1.0 / self.dataset_size

    def label(self, value: float) -> str:
        """``value`` spelled by the candidates it equals (``"N/M = M = 2"``), else a number."""
        names = [k for k, v in self.values().items() if _same(v, value)]
        if not names:
            return f"{value:.4g}"
        plain = [k for k in names if k in ("0", "1", "-1")]
        if plain:
            return plain[0]
        return " = ".join(names) + f" = {value:.4g}"


@dataclass(frozen=True)
class Evidence:
    """One problem: its exact sums, the mean of the user's values, and their spread."""

    ell: float  # S_lik: the sum over all rows of E_q log p(x_i | z)
    kl: float  # S_KL: the global KL, or the sum of the rows' KL terms
    got: float  # the mean of the user's values over the design(s)
    standard_error: float  # statistical mode; 0 in exact mode
    tolerance: float


# ---------------------------------------------------------------------- options
def check_setting(
    dataset_size: Any, batch_size: Any, latent: Any, amortised: Any, mode: Any, reduction: Any
) -> Setting:
    n = check_count("dataset_size", dataset_size, 0)
    m = check_count("batch_size", batch_size, 0)
    if dataset_size is None or batch_size is None:
        missing = "dataset_size" if dataset_size is None else "batch_size"
        raise InvalidInputError(f"{missing} must be an integer >= 1; got {missing}=None")
    if m > n:
        raise InvalidInputError(
            f"batch_size must be at most dataset_size; got batch_size={m}, dataset_size={n}"
        )
    check_choice("latent", latent, ("local", "global"))
    check_choice("mode", mode, ("exact", "statistical"))
    check_choice("reduction", reduction, ("sum", "mean"))
    check_flag("amortised", amortised)
    if amortised and latent == "global":
        raise InvalidInputError(
            "amortised=True needs latent='local': a global latent has one q for the whole "
            "dataset, no encoder"
        )
    return Setting(n, m, latent, reduction)


def model_kinds(latent: str, options: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    unknown = sorted(set(options) - {"noise_kinds", "prior_kinds"})
    if unknown:
        raise InvalidInputError(
            f"verify_minibatch_elbo accepts only noise_kinds and prior_kinds as model "
            f"options; got {unknown}"
        )
    allowed = NOISE_KINDS if latent == "local" else ("isotropic", "diagonal")
    noise = check_kinds("noise_kinds", options.get("noise_kinds", allowed), NOISE_KINDS)
    if "full" in noise and latent == "global":
        raise InvalidInputError(
            "noise_kinds cannot include 'full' with latent='global': a full noise "
            "covariance couples the rows, so the dataset ELBO is no sum over rows and a "
            "minibatch has no sub-model; use 'isotropic' or 'diagonal'"
        )
    prior = check_kinds("prior_kinds", options.get("prior_kinds", PRIOR_KINDS), PRIOR_KINDS)
    return noise, prior


def call_text(setting: Setting, amortised: bool, mode: str) -> str:
    parts = [f"dataset_size={setting.dataset_size}", f"batch_size={setting.batch_size}"]
    if setting.latent != "local":
        parts.append(f"latent={setting.latent!r}")
    if amortised:
        parts.append("amortised=True")
    if mode != "exact":
        parts.append(f"mode={mode!r}")
    if setting.reduction != "sum":
        parts.append(f"reduction={setting.reduction!r}")
    return f"verify_minibatch_elbo({', '.join(parts)})"


#: (D, K) of the local-latent problems, in turn; K of the global ones (D = N).
_LOCAL_SHAPES = ((3, 2), (2, 3), (4, 2), (3, 3), (5, 1))
_GLOBAL_DIMS = (2, 3, 1, 2, 3)


# ---------------------------------------------------------------------- problems
class Problem:
    """One data set and its variational distribution(s), with the exact sums."""

    def __init__(
        self, latent: str, model: LinearGaussianModel, data: FloatArray, q: Any, kind: str
    ) -> None:
        self.latent, self.model, self.data, self.q, self.kind = latent, model, data, q, kind
        self._submodels: dict[bytes, LinearGaussianModel] = {}
        if latent == "global":
            terms = model.elbo_terms(q, data)
            self.ell = float(terms.expected_log_likelihood)
            self.kl = float(terms.kl_to_prior)
            self.row_ell = None
        else:
            rows_q = q(data) if isinstance(q, LinearEncoder) else q
            terms = model.elbo_terms(rows_q, data)
            self.row_ell = np.asarray(terms.expected_log_likelihood, dtype=np.float64)
            self.row_kl = np.asarray(terms.kl_to_prior, dtype=np.float64)
            self.ell = math.fsum(self.row_ell)
            self.kl = math.fsum(self.row_kl)

    @property
    def size(self) -> int:
        return int(self.data.shape[0])

    def target(self, reduction: str) -> float:
        """The exact dataset ELBO (``"sum"``) or per-datum ELBO (``"mean"``)."""
        value = self.ell - self.kl
        return value if reduction == "sum" else value / self.size

    def scale(self, reduction: str) -> float:
        value = abs(self.ell) + abs(self.kl) + 1.0
        return value if reduction == "sum" else value / self.size

    def arguments(self, rows: IntArray) -> tuple[Any, ...]:
        """``(model, q or encoder, x_batch)`` for the batch of ``rows``."""
        batch = np.array(self.data[rows])
        if self.latent == "global":
            key = rows.tobytes()
            sub = self._submodels.get(key)
            if sub is None:
                noise = self.model.noise_cov
                sub = LinearGaussianModel(
                    weights=self.model.weights[rows],
                    bias=self.model.bias[rows],
                    prior=self.model.prior,
                    noise_cov=noise if np.ndim(noise) == 0 else np.asarray(noise)[rows],
                )
                self._submodels[key] = sub
            return sub, self.q, batch
        if isinstance(self.q, LinearEncoder):
            return self.model, self.q, batch
        return self.model, Gaussian._trusted(self.q.mean[rows], self.q.scale_tril[rows]), batch

    def reference(self, rows: IntArray, setting: Setting) -> float:
        """The textbook unbiased estimate on the batch ``rows`` (shown for comparison)."""
        per_row, kl_factor = setting.expected()
        if self.latent == "global":
            terms = self.arguments(rows)[0].elbo_terms(self.q, self.data[rows])
            return per_row * float(terms.expected_log_likelihood) - kl_factor * self.kl
        assert self.row_ell is not None
        return per_row * float(np.sum(self.row_ell[rows] - self.row_kl[rows]))


def _prior(rng: np.random.Generator, k: int, kind: str) -> Gaussian:
    if kind == "standard":
        return Gaussian.standard(k)
    if kind == "diagonal":
        variances = 10.0 ** rng.uniform(-0.5, 0.5, size=k)
        return Gaussian._trusted(rng.standard_normal(k), np.diag(np.sqrt(variances)))
    return random_gaussian(rng, k, condition_number=10.0)


def _noise(rng: np.random.Generator, d: int, kind: str) -> Any:
    if kind == "isotropic":
        return float(rng.uniform(0.1, 1.0))
    if kind == "diagonal":
        return 0.3 * 10.0 ** rng.uniform(0.0, 1.0, size=d)
    return random_spd(rng, d, condition_number=10.0, scale=0.3)


def _skewed(rng: np.random.Generator, factor: FloatArray, count: int | None) -> FloatArray:
    """Cholesky factors near ``factor`` (one, or ``count`` of them): ``factor @ T`` with T
    lower triangular, positive diagonal, so the product is a Cholesky factor itself."""
    k = factor.shape[-1]
    shape = (k, k) if count is None else (count, k, k)
    t = np.tril(0.3 * rng.standard_normal(shape), -1)
    diagonal = np.exp(0.3 * rng.standard_normal(shape[:-1]))
    t = t + diagonal[..., None] * np.eye(k)
    return np.asarray(factor @ t, dtype=np.float64)


def _of_kind(mean: FloatArray, factors: FloatArray, kind: str) -> Gaussian:
    if kind == "full":
        return Gaussian._trusted(mean, factors)
    variances = np.sum(factors**2, axis=-1)  # the diagonal of L L^T
    if kind == "isotropic":
        variances = np.broadcast_to(np.mean(variances, axis=-1, keepdims=True), variances.shape)
    return Gaussian._trusted(mean, np.sqrt(variances)[..., None] * np.eye(mean.shape[-1]))


def make_problem(
    seed: int, index: int, setting: Setting, amortised: bool, kinds: Mapping[str, Sequence[str]]
) -> Problem:
    """Problem ``index``: each from its own stream, so adding problems changes none."""
    rng = np.random.default_rng([seed, 6101, index])
    noise_kind = kinds["noise"][index % len(kinds["noise"])]
    prior_kind = kinds["prior"][index % len(kinds["prior"])]
    q_kind = kinds["q"][index % len(kinds["q"])]
    n = setting.dataset_size
    if setting.latent == "global":
        k = _GLOBAL_DIMS[index % len(_GLOBAL_DIMS)]
        model = LinearGaussianModel(
            weights=rng.standard_normal((n, k)),
            bias=np.zeros(n),
            prior=_prior(rng, k, prior_kind),
            noise_cov=_noise(rng, n, noise_kind),
        )
        y = model.sample(1, rng)[0][0]
        posterior = model.posterior(y)
        mean = posterior.mean + posterior.scale_tril @ rng.standard_normal(k)
        q = _of_kind(mean, _skewed(rng, posterior.scale_tril, None), q_kind)
        return Problem("global", model, y, q, q_kind)
    d, k = _LOCAL_SHAPES[index % len(_LOCAL_SHAPES)]
    model = LinearGaussianModel(
        weights=rng.standard_normal((d, k)) / math.sqrt(k),
        bias=rng.standard_normal(d),
        prior=_prior(rng, k, prior_kind),
        noise_cov=_noise(rng, d, noise_kind),
    )
    x = model.sample(n, rng)[0]
    if amortised:
        best = model.optimal_encoder()
        factor = _of_kind(best.offset, _skewed(rng, best.scale_tril, None), q_kind).scale_tril
        encoder = LinearEncoder(
            matrix=best.matrix + 0.2 * rng.standard_normal(best.matrix.shape),
            offset=best.offset + 0.2 * rng.standard_normal(k),
            scale_tril=factor,
        )
        return Problem("local", model, x, encoder, q_kind)
    posterior = model.posterior(x)
    means = posterior.mean + rng.standard_normal((n, k)) @ posterior.scale_tril.T
    q = _of_kind(means, _skewed(rng, posterior.scale_tril, n), q_kind)
    return Problem("local", model, x, q, q_kind)


# ---------------------------------------------------------------------- designs
def balanced_batches(permutation: IntArray, batch_size: int) -> IntArray:
    """The N batches ``{pi(j), ..., pi(j + M - 1 mod N)}``, rows sorted, shape (N, M).

    Every row lies in exactly M of them, so the mean over them of any sum of per-row
    terms is its mean over all batches of M rows.
    """
    n = len(permutation)
    window = (np.arange(n)[:, None] + np.arange(batch_size)[None, :]) % n
    return np.sort(permutation[window], axis=1)


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


@dataclass(frozen=True)
class _Factor:
    value: float  # the fitted per-batch factor
    error: float  # its standard error
    named: float | None  # the one candidate value it matches, if any


def _name(value: float, error: float, setting: Setting, critical: float) -> float | None:
    """The one candidate value within ``critical`` errors of ``value`` (ties count once)."""
    bound = critical * error
    near = [v for v in setting.values().values() if abs(value - v) <= bound + 1e-6 * max(1, abs(v))]
    return near[0] if near and all(_same(near[0], v) for v in near) else None


def _critical(level: float, degrees: int | None) -> float:
    """The upper ``level`` quantile of the normal (exact values) or of Student's t."""
    return float(
        scipy.stats.norm.isf(level) if degrees is None else scipy.stats.t.isf(level, degrees)
    )


def _fit(
    evidence: Sequence[Evidence], setting: Setting, degrees: int | None
) -> tuple[_Factor, _Factor, np.ndarray] | None:
    """Per-batch factors of the likelihood and the KL, and each problem's sigma."""
    design = np.array([[e.ell, e.kl] for e in evidence])
    got = np.array([e.got for e in evidence])
    sigma = np.array([math.hypot(e.standard_error, e.tolerance) for e in evidence])
    if len(evidence) < 2 or not np.all(np.isfinite(got)) or not np.all(sigma > 0):
        return None
    weighted = design / sigma[:, None]
    coef, _, rank, _ = np.linalg.lstsq(weighted, got / sigma, rcond=None)
    if rank < 2:
        return None
    errors = np.sqrt(np.diag(np.linalg.inv(weighted.T @ weighted)))
    # Back to what the code applied on each batch: a per-row term scaled by s enters the
    # design mean as s M / N; the global KL (batch-independent) as -s.
    lik_scale = 1.0 / (setting.batch_size / setting.dataset_size)
    kl_scale = lik_scale if setting.latent == "local" else 1.0
    lik = (coef[0] * lik_scale, errors[0] * lik_scale)
    kl = (-coef[1] * kl_scale, errors[1] * kl_scale)
    critical = _critical(MATCH_LEVEL / 2, degrees)
    factors = tuple(_Factor(v, e, _name(v, e, setting, critical)) for v, e in (lik, kl))
    return factors[0], factors[1], sigma


def _explains(
    evidence: Sequence[Evidence],
    setting: Setting,
    sigma: np.ndarray,
    lik: float,
    kl: float,
    degrees: int | None,
) -> bool:
    """Whether per-batch factors ``lik`` and ``kl`` reproduce every problem's mean."""
    lik_design = lik * setting.batch_size / setting.dataset_size
    kl_design = kl * setting.batch_size / setting.dataset_size if setting.latent == "local" else kl
    critical = _critical(RESIDUAL_LEVEL / (2 * len(evidence)), degrees)
    for e, s in zip(evidence, sigma, strict=True):
        predicted = lik_design * e.ell - kl_design * e.kl
        if abs(e.got - predicted) > critical * s + 1e-9 * (abs(e.ell) + abs(e.kl)):
            return False
    return True


# ---------------------------------------------------------------------- words
def _whole(factor: float, setting: Setting) -> tuple[str, str] | None:
    """Words for an estimate that is right up to one factor on both terms."""
    n = setting.dataset_size
    if _same(factor, -1.0):
        return (
            "the sign is flipped (a loss): fn returns minus the ELBO estimate",
            "return the ELBO estimate itself (the negative of the loss you minimise)",
        )
    if setting.reduction == "sum" and _same(abs(factor), 1.0 / n):
        loss = " of the loss (its sign is flipped too)" if factor < 0 else ""
        return (
            f"the minibatch mean{loss}: this is ({'-' if factor < 0 else ''}1/N) times the "
            "dataset ELBO -- pass reduction='mean' if that is what you mean",
            "for the dataset ELBO sum the batch's rows and scale by N/M; for the "
            "per-datum ELBO keep the mean and pass reduction='mean'",
        )
    if setting.reduction == "mean" and _same(abs(factor), float(n)):
        loss = " of the loss (its sign is flipped too)" if factor < 0 else ""
        return (
            f"the dataset ELBO{loss}: this is {'-' if factor < 0 else ''}N times the "
            "per-datum ELBO that reduction='mean' targets -- pass reduction='sum' if that "
            "is what you mean",
            "for the per-datum ELBO divide the batch sum by M (the mean over the batch's "
            "rows); for the dataset ELBO pass reduction='sum'",
        )
    return None


def _term_words(term: str, kind: str, got: float, want: float, setting: Setting) -> tuple[str, str]:
    """Name and fix for one term (``kind`` "lik" or "kl") scaled by ``got``, not ``want``."""
    r = setting.ratio
    global_kl = kind == "kl" and setting.latent == "global"
    label, wanted = setting.label(got), setting.label(want)
    if _same(got, 0.0):
        return f"{term} is missing", f"add {term}, scaled by {wanted}"
    if _same(got, -want):
        if kind == "kl":
            return (
                f"{term} is added instead of subtracted",
                "the ELBO is the log-likelihood MINUS the KL",
            )
        return f"{term} has the wrong sign", "the ELBO is the log-likelihood MINUS the KL"
    if setting.reduction == "sum" and not _same(r, 1.0):
        if kind == "lik" and _same(got, 1.0) and _same(want, r):
            hint = (
                " (log p(batch) - KL instead of (N/M) log p(batch) - KL)"
                if setting.latent == "global"
                else ""
            )
            return (
                f"{term} is not scaled by N/M = {r:.4g}{hint}",
                "multiply the batch's summed log-likelihood by N/M = dataset_size / "
                "batch_size"
                + ("; the global KL stays unscaled" if setting.latent == "global" else ""),
            )
        if global_kl and _same(got, r) and _same(want, 1.0):
            return (
                f"{term} is scaled by N/M = {r:.4g}; it enters the dataset ELBO once",
                "subtract KL(q || p(w)) once per estimate, unscaled: (N/M) log p(batch) - KL",
            )
        if kind == "kl" and not global_kl and _same(got, 1.0) and _same(want, r):
            return (
                f"{term} are not scaled by N/M = {r:.4g}",
                "scale each batch row's whole ELBO, KL included: (N/M) sum over the batch of "
                "[E_q log p(x_i|z_i) - KL(q_i || p(z))]",
            )
        if _same(got, r * r) and _same(want, r):
            return (
                f"{term} {'are' if term.endswith('terms') else 'is'} scaled by (N/M)^2 = "
                f"{r * r:.4g} instead of N/M = {r:.4g}",
                "apply the N/M scale once (is it applied by hand and again by a "
                "scale, plate or subsample argument?)",
            )
        if _same(got, 1.0 / setting.batch_size) and _same(want, r):
            return (
                f"{term} {'are' if term.endswith('terms') else 'is'} averaged over the batch "
                f"(1/M = {1.0 / setting.batch_size:.4g}) instead of scaled by N/M = {r:.4g}: "
                "a minibatch mean where the sum estimate belongs",
                "sum over the batch's rows and multiply by N/M",
            )
    verb = "are" if term.endswith("terms") else "is"
    return f"{term} {verb} scaled by {label} instead of {wanted}", f"scale {term} by {wanted}"


def _describe_fit(lik: _Factor, kl: _Factor, setting: Setting, count: int, exact: bool) -> str:
    want_lik, want_kl = setting.expected()
    kl_what = "the global KL" if setting.latent == "global" else "the rows' KL terms"

    def show(f: _Factor) -> str:
        return f"{f.value:.6g}" + ("" if exact else f" +- {f.error:.2g}")

    return (
        f"  per-batch factors fitted over {count} problems: the batch's log-likelihood sum "
        f"x {show(lik)} (correct: {setting.label(want_lik)}); {kl_what}, subtracted, "
        f"x {show(kl)} (correct: {setting.label(want_kl)})"
    )


def diagnose(
    evidence: Sequence[Evidence],
    setting: Setting,
    *,
    degrees: int | None = None,
    interaction: bool = False,
) -> str:
    """The fitted factors and the ``Diagnosis:`` lines for a failing minibatch estimator.

    ``degrees`` are the degrees of freedom of the standard errors (None: exact values);
    ``interaction`` says that the mean over batches changed with the permutation.
    """
    fitted = _fit(evidence, setting, degrees)
    if fitted is None:
        return (
            "Diagnosis: no known bug matches; too few problems with finite values to fit "
            "the factors of the log-likelihood and the KL."
        )
    lik, kl, sigma = fitted
    lines = [_describe_fit(lik, kl, setting, len(evidence), degrees is None)]
    want_lik, want_kl = setting.expected()
    lik_term = "the batch log-likelihood"
    kl_term = "the global latent's KL" if setting.latent == "global" else "the batch rows' KL terms"
    terms = (("lik", lik_term, lik, want_lik), ("kl", kl_term, kl, want_kl))
    unexplained = None
    if lik.named is None or kl.named is None:
        named = [
            _term_words(t, k, f.named, w, setting)[0] + "; but "
            for k, t, f, w in terms
            if f.named is not None and not _same(f.named, w)
        ]
        unresolved = [
            f"the factor of {t}, {f.value:.4g}" + ("" if degrees is None else f" +- {f.error:.2g}")
            for _, t, f, _ in terms
            if f.named is None
        ]
        verb = "is no simple factor" if len(unresolved) == 1 else "are no simple factors"
        unexplained = f"{''.join(named)}{' and '.join(unresolved)} {verb} of N and M"
    elif not _explains(evidence, setting, sigma, lik.named, kl.named, degrees):
        unexplained = "no rescaling of the log-likelihood and KL sums reproduces every mean"
    elif _same(lik.named, want_lik) and _same(kl.named, want_kl):
        unexplained = "the gap is not a rescaling of the two terms"
    if unexplained is not None:
        if interaction:
            return "\n".join([*lines, INTERACTION])
        return "\n".join([*lines, f"Diagnosis: no known bug matches; {unexplained}."])
    assert lik.named is not None
    assert kl.named is not None
    f_lik, f_kl = lik.named / want_lik, kl.named / want_kl
    found: list[tuple[str, str]] = []
    whole = _whole(f_lik, setting) if _same(f_lik, f_kl) else None
    if whole is not None:
        found.append(whole)
    elif _same(f_lik, f_kl) and setting.latent == "local":
        term = "the batch estimate (log-likelihood and KL terms alike)"
        found.append(_term_words(term, "lik", lik.named, want_lik, setting))
    else:
        found += [
            _term_words(t, k, f.named, w, setting)
            for k, t, f, w in terms
            if f.named is not None and not _same(f.named, w)
        ]
    lines += [f"Diagnosis: {name}.\n  Fix: {fix}." for name, fix in found]
    return "\n".join(lines)
