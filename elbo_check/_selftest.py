"""The command-line self-test: every identity on random models of every family.

Each check returns a *residual* (a non-negative number that is zero in exact
arithmetic) and a *tolerance* derived from the unit roundoff and the conditioning of
the case, so the table reads "how far from exact, against how far is allowed".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import scipy.stats
from numpy.typing import NDArray

from ._gaussian import Gaussian
from ._model import LinearGaussianModel
from ._random import FAMILIES, random_gaussian, random_model

__all__ = ["SIZE_CLASSES", "CheckResult", "SelftestReport", "run_selftest"]

FloatArray = NDArray[np.float64]
EPS = float(np.finfo(np.float64).eps)

#: (name, data_dim D, latent_dim K, condition number of prior/noise covariances)
SIZE_CLASSES: tuple[tuple[str, int, int, float], ...] = (
    ("small", 4, 2, 10.0),
    ("latent>data", 3, 6, 10.0),
    ("wide", 300, 10, 100.0),
    ("ill-conditioned", 8, 3, 1e8),
)

#: The accuracy elbo_check guarantees for its exact identities (ELBO + KL = log p(x),
#: the chain rule, the tight bound at the posterior, ...): the residual relative to the
#: magnitudes of the terms involved, for condition numbers of the prior, noise and
#: marginal covariances up to 1e8 and D + K up to about 1000. Measured worst case over
#: 10 seeds of this self-test at condition number 1e8: 7e-15 for ELBO + KL = log p(x),
#: 4.3e-13 for ELBO(posterior) = log p(x) (the closest to the bound), 8e-16 at cond 10.
IDENTITY_RTOL = 1e-12

#: Safety factor between a first-order rounding-error estimate (unit roundoff times
#: dimensions times the condition number of the route) and a tolerance, for checks
#: against other numerical routes (dense scipy, finite differences).
ROUNDING_SAFETY = 64.0


def _ratio(residual: float, tolerance: float) -> float:
    if not math.isfinite(residual):
        return math.inf
    if tolerance > 0:
        return residual / tolerance
    return math.inf if residual > 0 else 0.0


@dataclass
class CheckResult:
    """The worst residual of one identity over all draws of one (family, size) case."""

    family: str
    size: str
    identity: str
    residual: float = 0.0
    tolerance: float = math.inf
    draws: int = 0

    @property
    def passed(self) -> bool:
        return bool(self.residual <= self.tolerance)

    def update(self, residual: float, tolerance: float) -> None:
        """Keep the draw with the largest residual-to-tolerance ratio."""
        residual = float(residual)
        current = _ratio(self.residual, self.tolerance) if self.draws else -1.0
        if _ratio(residual, tolerance) > current:
            self.residual, self.tolerance = residual, float(tolerance)
        self.draws += 1


@dataclass
class SelftestReport:
    """All check results of one self-test run."""

    seed: int
    draws_per_case: int
    results: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)

    def to_json(self) -> dict[str, Any]:
        rows = [{**asdict(r), "passed": r.passed} for r in self.results]
        return {
            "seed": self.seed,
            "draws_per_case": self.draws_per_case,
            "passed": self.passed,
            "results": rows,
        }

    def format_table(self) -> str:
        header = ("family", "size", "identity", "worst residual", "tolerance", "verdict")
        rows = [
            (
                r.family,
                r.size,
                r.identity,
                f"{r.residual:.2e}",
                f"{r.tolerance:.2e}",
                "ok" if r.passed else "FAIL",
            )
            for r in self.results
        ]
        widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(6)]
        lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(header, widths, strict=True))]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
        failed = sum(not r.passed for r in self.results)
        lines.append("")
        lines.append(
            f"{len(self.results) - failed} passed, {failed} failed "
            f"(seed {self.seed}, {self.draws_per_case} draws per case)"
        )
        return "\n".join(lines)


def _central_difference(f: Callable[[float], float], step: float) -> float:
    return (f(step) - f(-step)) / (2.0 * step)


def _checks_for_draw(
    model: LinearGaussianModel, rng: np.random.Generator, condition: float
) -> Iterator[tuple[str, float, float]]:
    """Yield ``(identity, residual, tolerance)`` for one random model."""
    d, k = model.data_dim, model.latent_dim
    x, _ = model.sample(3, rng)
    x = x + rng.standard_normal(x.shape)  # also off the model's typical set
    qs = [
        random_gaussian(rng, k, batch_shape=(3,), condition_number=10.0, mean_scale=2.0)
        for _ in range(4)
    ]
    log_evidence = np.asarray(model.log_evidence(x))
    dims = float(d + k)
    rounding = ROUNDING_SAFETY * EPS * dims

    # 1. ELBO + KL = log p(x), and its constancy in q.
    sums, scales = [], []
    for q in qs:
        terms = model.elbo_terms(q, x)
        kl = np.asarray(model.kl_to_posterior(q, x))
        scale = (
            np.abs(terms.expected_log_likelihood)
            + np.abs(terms.kl_to_prior)
            + np.abs(kl)
            + np.abs(log_evidence)
        )
        total = terms.elbo + kl
        sums.append(total)
        scales.append(scale)
        yield (
            "ELBO + KL = log p(x)",
            float(np.max(np.abs(total - log_evidence) / scale)),
            (IDENTITY_RTOL),
        )
        yield "KL(q || posterior) >= 0", float(max(0.0, -np.min(kl))), 0.0
        above = np.maximum(terms.elbo - log_evidence, 0.0) / scale
        yield "ELBO <= log p(x)", float(np.max(above)), IDENTITY_RTOL
        two_forms = np.abs(terms.elbo - terms.elbo_joint_form) / (
            np.abs(terms.expected_log_likelihood)
            + np.abs(terms.cross_entropy)
            + abs(terms.entropy[0])
        )
        yield "two ELBO forms agree", float(np.max(two_forms)), IDENTITY_RTOL
    spread = np.ptp(np.stack(sums), axis=0) / np.max(np.stack(scales), axis=0)
    yield "log p(x) constant in q", float(np.max(spread)), IDENTITY_RTOL

    # 2. The posterior: KL zero, ELBO tight, gradients vanish.
    posterior = model.posterior(x)
    self_kl = float(np.max(np.abs(model.kl_to_posterior(posterior, x))))
    yield "KL(posterior || posterior) = 0", self_kl, IDENTITY_RTOL
    at_posterior = model.elbo_terms(posterior, x)
    tight = np.abs(at_posterior.elbo - log_evidence) / (
        np.abs(at_posterior.expected_log_likelihood)
        + np.abs(at_posterior.kl_to_prior)
        + np.abs(log_evidence)
    )
    yield "ELBO(posterior) = log p(x)", float(np.max(tight)), IDENTITY_RTOL
    grads = model.elbo_grad_variational(posterior, x)
    precision_scale = float(np.linalg.norm(model.posterior_precision, 2))
    gradient_scale = precision_scale * float(np.linalg.norm(posterior.scale_tril, 2))
    stationary = max(
        float(np.max(np.abs(grads.scale_tril))) / gradient_scale,
        float(np.max(np.abs(grads.mean)))
        / (precision_scale * (1.0 + float(np.max(np.abs(posterior.mean))))),
    )
    yield "gradient zero at posterior", stationary, IDENTITY_RTOL

    # 3. log p(x) = log p(x, z) - log p(z | x) for arbitrary z.
    z = rng.standard_normal((3, k)) * 2.0
    joint = np.asarray(model.log_joint(x, z))
    conditional = np.asarray(posterior.log_prob(z))
    chain = np.abs(joint - conditional - log_evidence) / (
        np.abs(joint) + np.abs(conditional) + np.abs(log_evidence)
    )
    yield "log p(x) = log p(x,z) - log p(z|x)", float(np.max(chain)), IDENTITY_RTOL

    # 4. An independent route: scipy on the dense marginal, built from the textbook formula.
    cov = model.weights @ model.prior.cov @ model.weights.T + model.dense_noise_cov()
    mean = model.weights @ model.prior.mean + model.bias
    cond_c = float(np.linalg.cond(cov))
    if cond_c < 1e9:  # scipy's own eigendecomposition route is unreliable beyond this
        dense = scipy.stats.multivariate_normal(mean, cov).logpdf(x)
        yield (
            "log p(x) = scipy dense",
            float(np.max(np.abs(dense - log_evidence) / np.abs(dense))),
            (rounding * cond_c),
        )

    # 5. Gradients against central finite differences along random directions.
    if d <= 16:
        q = qs[0]
        row = x[0]
        grads = model.elbo_grad_variational(q, row)
        direction_mean = rng.standard_normal(q.mean.shape)
        direction_factor = np.tril(rng.standard_normal((k, k)))
        step = EPS ** (1.0 / 3.0)

        def along(t: float) -> float:
            moved = Gaussian._trusted(
                q.mean + t * direction_mean, q.scale_tril + t * direction_factor
            )
            return float(np.sum(model.elbo(moved, row)))

        numeric = _central_difference(along, step)
        analytic = float(
            np.sum(grads.mean * direction_mean) + np.sum(grads.scale_tril * direction_factor)
        )
        # Truncation: h^2/6 |f'''|, where only sum(log diag L) has a third derivative
        # (2 t^3 / L_ii^3 along the direction); rounding: eps |f| / h per evaluation.
        magnitude = abs(along(0.0)) + float(np.sum(np.abs(grads.mean) * 2.0))
        diag_ratio = np.abs(np.diagonal(direction_factor) / np.diagonal(q.scale_tril))
        truncation = step**2 / 6.0 * float(np.sum(2.0 * diag_ratio**3)) * 3.0
        tolerance = ROUNDING_SAFETY * (EPS * magnitude / step) * math.sqrt(condition) + truncation
        yield "ELBO gradient = finite differences", abs(numeric - analytic), tolerance

    # 6. The optimal linear encoder attains the evidence.
    encoder = model.optimal_encoder()
    encoded = model.elbo_terms(encoder(x), x)
    encoder_scale = float(
        np.sum(
            np.abs(encoded.expected_log_likelihood)
            + np.abs(encoded.kl_to_prior)
            + np.abs(log_evidence)
        )
    )
    attained = abs(model.dataset_elbo(encoder, x) - float(np.sum(log_evidence))) / encoder_scale
    yield "optimal encoder ELBO = sum log p(x)", attained, IDENTITY_RTOL

    # 7. The Rényi bound (IWAE as K grows, the chi^2 bound at alpha = -1).
    yield from _renyi_checks(model, qs[0], x, log_evidence)


def _renyi_checks(
    model: LinearGaussianModel, q: Gaussian, x: Any, log_evidence: Any
) -> Iterator[tuple[str, float, float]]:
    """The Rényi bound's identities: its ends, E_q[w] = p(x), its order in alpha, and
    exactness at the posterior."""
    terms = model.elbo_terms(q, x)
    scale = (
        np.abs(terms.expected_log_likelihood)
        + np.abs(terms.kl_to_prior)
        + np.abs(log_evidence)
        + 1.0
    )
    ends = max(
        float(np.max(np.abs(model.renyi_bound(q, x, 0.0) - log_evidence) / scale)),
        float(np.max(np.abs(model.renyi_bound(q, x, 1.0) - terms.elbo) / scale)),
    )
    yield "L_0 = log p(x), L_1 = ELBO", ends, IDENTITY_RTOL
    # alpha = 1/2 by another route: log p(x) - 2 D_B(q, p(z|x)), the textbook
    # Bhattacharyya distance of two Gaussians from dense covariances.
    posterior = model.posterior(x)
    bhattacharyya = []
    for b in range(len(terms.elbo)):
        m1, m2 = q.mean[b], posterior.mean[b]
        s1, s2 = (g.cov if g.cov.ndim == 2 else g.cov[b] for g in (q, posterior))
        average = 0.5 * (s1 + s2)
        delta = m1 - m2
        logdets = [np.linalg.slogdet(c)[1] for c in (average, s1, s2)]
        bhattacharyya.append(
            0.125 * delta @ np.linalg.solve(average, delta)
            + 0.5 * (logdets[0] - 0.5 * (logdets[1] + logdets[2]))
        )
    half = np.asarray(model.renyi_bound(q, x, 0.5))
    other_route = log_evidence - 2.0 * np.array(bhattacharyya)
    yield (
        "L_1/2 = log p(x) - 2 D_Bhattacharyya",
        float(np.max(np.abs(half - other_route) / scale)),
        1e4 * IDENTITY_RTOL,
    )
    low, high = model.renyi_alpha_interval(q)
    alphas = np.linspace(max(low, -1.0) + 1e-3, min(high, 2.0) - 1e-3, 7)
    bounds = np.stack([np.asarray(model.renyi_bound(q, x, float(a))) for a in alphas])
    rises = np.maximum(np.diff(bounds, axis=0), 0.0) / scale
    yield "L_alpha decreasing in alpha", float(np.max(rises)), IDENTITY_RTOL
    exact = max(
        float(np.max(np.abs(model.renyi_bound(posterior, x, a) - log_evidence) / scale))
        for a in (-1.0, 0.5, 2.0)
    )
    yield "L_alpha(posterior) = log p(x)", exact, IDENTITY_RTOL


def _collect(
    family: str, size: str, checks: Iterator[tuple[str, float, float]]
) -> list[CheckResult]:
    """One row per identity: the worst residual-to-tolerance ratio over ``checks``."""
    results: dict[str, CheckResult] = {}
    for identity, residual, tolerance in checks:
        result = results.setdefault(identity, CheckResult(family, size, identity))
        result.update(residual, tolerance)
    return list(results.values())


def run_selftest(seed: int = 0, draws: int = 3) -> SelftestReport:
    """Check every identity on ``draws`` random models per (family, size class), and the
    Gaussian-process relations on ``draws`` draws of random GP problems per case."""
    from ._selftest_gp import gp_rows  # it imports this module's tolerances

    report = SelftestReport(seed=seed, draws_per_case=draws)
    for family in FAMILIES:
        for size, d, k, condition in SIZE_CLASSES:
            case_rng = np.random.default_rng([seed, FAMILIES.index(family), d, k])
            models = (
                random_model(
                    case_rng, data_dim=d, latent_dim=k, family=family, condition_number=condition
                )
                for _ in range(draws)
            )
            checks = (
                check for model in models for check in _checks_for_draw(model, case_rng, condition)
            )
            report.results.extend(_collect(family, size, checks))
    report.results.extend(gp_rows(seed, draws))
    return report
