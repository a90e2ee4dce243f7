r"""``python -m elbo_check demo``: watch :math:`\log p(x) = \mathrm{ELBO} + \mathrm{KL}` move.

A small, exact and deterministic experiment on a linear-Gaussian model with ``D = 5``
observed and ``K = 2`` latent dimensions, a non-zero prior mean, diagonal noise and
``N = 10`` data rows. Every number is computed in closed form by elbo_check; nothing is
sampled after the data are drawn.

Phase 1 — the variational parameters :math:`\phi`.
    The model :math:`\theta_0` is held fixed. Each row has its own variational mean
    :math:`m_n`; all rows share one Cholesky factor :math:`L` (the exact posterior
    covariance does not depend on ``x`` in a linear-Gaussian model, so this family
    contains every posterior). Starting from :math:`q_n = \mathcal N(0, I)`, plain
    gradient ascent on the summed ELBO
    (:meth:`~elbo_check.LinearGaussianModel.elbo_grad_variational`) raises the ELBO;
    :math:`\log p_{\theta_0}(x)` does not move, so the gap
    :math:`\mathrm{KL}(q\,\|\,p(z\mid x))` shrinks by exactly what the ELBO gains.

Phase 2 — the model parameters :math:`\theta = (W, b, \log\psi)`.
    The prior stays fixed. Generalised EM: after ``m_steps`` gradient-ascent steps on
    the ELBO with ``q`` held fixed (M-steps,
    :meth:`~elbo_check.LinearGaussianModel.elbo_grad_model`), an E-step resets each
    :math:`q_n` to the exact posterior :math:`p_\theta(z\mid x_n)`. Now
    :math:`\log p_\theta(x)` changes. During M-steps the posterior moves away from the
    fixed ``q``, so a gap opens; an E-step closes it and the ELBO jumps up to
    :math:`\log p_\theta(x)`. Because each M-step raises the ELBO and an E-step makes the
    bound tight, :math:`\log p_\theta(x)` never decreases from one E-step to the next.

Step sizes: the mean step is :math:`\eta = 1/\lambda_{\max}(\Lambda)`, the reciprocal of
the largest curvature of the ELBO in :math:`m_n` (:math:`\Lambda` is the posterior
precision), the textbook safe step for gradient ascent; the shared factor moves by
:math:`\eta/N` times its summed gradient (the same step per row). The model moves by
``model_step / N`` times the summed gradient. Every step is checked: if the ELBO would
drop (or ``L`` lose a positive diagonal) the step is halved, so the ELBO never decreases
within a phase — and the recorded values are the ones checked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._errors import InvalidInputError
from ._gaussian import Gaussian
from ._model import LinearGaussianModel

__all__ = [
    "PLOT_EXTRA_HINT",
    "DemoResult",
    "TracePoint",
    "plot_demo",
    "run_demo",
]

FloatArray = NDArray[np.float64]

DATA_DIM = 5
LATENT_DIM = 2
ROWS = 10
PHI_STEPS = 40
EM_ITERATIONS = 20
M_STEPS = 10
MODEL_STEP = 0.2
#: Fixed prior of every model in the demo: a non-zero mean and correlated coordinates.
PRIOR_MEAN = (1.0, -0.5)
PRIOR_COV = ((1.0, 0.3), (0.3, 0.6))
#: How many times a step may be halved before it is abandoned (the point is kept).
MAX_HALVINGS = 60

PLOT_EXTRA_HINT = "install the plot extra: pip install -e '.[plot]' in the clone"


@dataclass(frozen=True)
class TracePoint:
    """Exact dataset totals (sums over the ``N`` rows) at one point of the experiment.

    ``step`` counts the gradient steps taken in the phase so far. ``event`` is
    ``"start"``, ``"phi step"``, ``"M-step"`` or ``"E-step"`` (an E-step shares the step
    number of the M-step before it).
    """

    phase: str
    step: int
    event: str
    elbo: float
    kl: float
    log_evidence: float

    @property
    def gap(self) -> float:
        """``log_evidence - elbo``, which the identity says equals ``kl``."""
        return self.log_evidence - self.elbo

    def to_json(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "step": self.step,
            "event": self.event,
            "elbo": self.elbo,
            "kl": self.kl,
            "log_evidence": self.log_evidence,
        }


@dataclass(frozen=True)
class DemoResult:
    """The data, the models and both traces of one run of the demo."""

    seed: int
    data: FloatArray
    true_model: LinearGaussianModel
    initial_model: LinearGaussianModel
    final_model: LinearGaussianModel
    phi_trace: tuple[TracePoint, ...]
    theta_trace: tuple[TracePoint, ...]
    #: M-steps (gradient steps on theta) between consecutive E-steps.
    m_steps: int = M_STEPS

    @property
    def true_log_density(self) -> float:
        """:math:`\\sum_n \\log p_{\\text{true}}(x_n)` under the model that drew the data.

        Known here only because the data are simulated; for real data it is unknown.
        """
        return float(np.sum(self.true_model.log_evidence(self.data)))

    @property
    def points(self) -> tuple[TracePoint, ...]:
        return self.phi_trace + self.theta_trace

    def to_json(self) -> dict[str, Any]:
        phi_end, theta_end = self.phi_trace[-1], self.theta_trace[-1]
        return {
            "seed": self.seed,
            "data_dim": DATA_DIM,
            "latent_dim": LATENT_DIM,
            "rows": int(self.data.shape[0]),
            "prior_mean": list(PRIOR_MEAN),
            "true_log_density": self.true_log_density,
            "summary": {
                "phi_start_elbo": self.phi_trace[0].elbo,
                "phi_start_kl": self.phi_trace[0].kl,
                "phi_end_elbo": phi_end.elbo,
                "phi_end_kl": phi_end.kl,
                "phi_log_evidence": phi_end.log_evidence,
                "theta_end_log_evidence": theta_end.log_evidence,
                "theta_largest_gap": max(p.kl for p in self.theta_trace),
            },
            "phi": [p.to_json() for p in self.phi_trace],
            "theta": [p.to_json() for p in self.theta_trace],
        }

    def format_table(self) -> str:
        """Selected steps of both phases as a text table."""
        header = ("phase", "step", "event", "ELBO", "KL(q||p(z|x))", "log p(x)", "ELBO+KL-log p(x)")
        phi_steps = {0, 1, 2, 3, 5, 10, 20, len(self.phi_trace) - 1}
        selected = [p for i, p in enumerate(self.phi_trace) if i in phi_steps]
        theta = self.theta_trace
        e_steps = [i for i, p in enumerate(theta) if p.event == "E-step"]
        keep = {0, 1, len(theta) - 1}
        for i in e_steps[:2] + e_steps[4::5]:
            keep.update({i - 1, i})
        selected += [p for i, p in enumerate(theta) if i in keep]
        rows = [
            (
                p.phase,
                str(p.step),
                p.event,
                f"{p.elbo:.6f}",
                f"{p.kl:.3e}",
                f"{p.log_evidence:.6f}",
                f"{p.elbo + p.kl - p.log_evidence:.1e}",
            )
            for p in selected
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = [
            f"elbo_check demo (seed {self.seed}): D = {DATA_DIM}, K = {LATENT_DIM}, "
            f"N = {self.data.shape[0]} rows, prior mean {list(PRIOR_MEAN)}; "
            "dataset totals (sums over rows)",
            "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)),
            "  ".join("-" * w for w in widths),
        ]
        lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        phi_end = self.phi_trace[-1]
        lines += [
            "",
            f"phi phase:   log p(x) fixed at {phi_end.log_evidence:.6f}; ELBO "
            f"{self.phi_trace[0].elbo:.6f} -> {phi_end.elbo:.6f}; KL "
            f"{self.phi_trace[0].kl:.3g} -> {phi_end.kl:.3g}",
            f"theta phase: log p(x) {theta[0].log_evidence:.6f} -> "
            f"{theta[-1].log_evidence:.6f} (generalised EM, {len(e_steps)} E-steps); "
            f"largest gap {max(p.kl for p in theta):.3g}",
            f"for reference, the data-generating model gives sum log p_true(x) = "
            f"{self.true_log_density:.6f}",
        ]
        return "\n".join(lines)


# ---------------------------------------------------------------------- experiment
def _model(
    weights: FloatArray, bias: FloatArray, log_noise: FloatArray, prior: Gaussian
) -> LinearGaussianModel:
    return LinearGaussianModel(weights=weights, bias=bias, prior=prior, noise_cov=np.exp(log_noise))


def _point(
    phase: str, step: int, event: str, model: LinearGaussianModel, q: Gaussian, x: FloatArray
) -> TracePoint:
    return TracePoint(
        phase=phase,
        step=step,
        event=event,
        elbo=float(np.sum(model.elbo(q, x))),
        kl=float(np.sum(model.kl_to_posterior(q, x))),
        log_evidence=float(np.sum(model.log_evidence(x))),
    )


def _ascend(
    params: Sequence[FloatArray],
    grads: Sequence[FloatArray],
    steps: Sequence[float],
    objective: Callable[[Sequence[FloatArray]], float | None],
    current: float,
) -> list[FloatArray]:
    """One gradient-ascent step, halved until ``objective`` (None: invalid) does not drop."""
    scale = 1.0
    for _ in range(MAX_HALVINGS):
        trial = [p + scale * s * g for p, g, s in zip(params, grads, steps, strict=True)]
        value = objective(trial)
        if value is not None and value >= current:
            return trial
        scale *= 0.5
    return list(params)


def run_demo(
    seed: int = 0,
    *,
    phi_steps: int = PHI_STEPS,
    em_iterations: int = EM_ITERATIONS,
    m_steps: int = M_STEPS,
    model_step: float = MODEL_STEP,
) -> DemoResult:
    """Run both phases of the demo; deterministic for a given seed."""
    for name, value in (
        ("phi_steps", phi_steps),
        ("em_iterations", em_iterations),
        ("m_steps", m_steps),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(f"{name} must be a positive integer; got {name}={value!r}")
    if not (math.isfinite(model_step) and model_step > 0):
        raise InvalidInputError(f"model_step must be positive; got model_step={model_step!r}")
    rng = np.random.default_rng([seed, 20250101])
    d, k, n = DATA_DIM, LATENT_DIM, ROWS
    prior = Gaussian.from_covariance(mean=PRIOR_MEAN, cov=PRIOR_COV)
    true_model = LinearGaussianModel(
        weights=rng.normal(size=(d, k)),
        bias=rng.normal(size=d),
        prior=prior,
        noise_cov=rng.uniform(0.2, 0.6, size=d),
    )
    x, _ = true_model.sample(n, rng)
    x = np.array(x)
    weights = 0.5 * rng.normal(size=(d, k))
    bias = np.zeros(d)
    log_noise = np.zeros(d)
    model = _model(weights, bias, log_noise, prior)
    initial_model = model

    # ------------------------------------------------------------ phase 1: phi
    means = np.zeros((n, k))
    factor = np.eye(k)
    q = Gaussian.from_cholesky(mean=means, scale_tril=factor)
    step = 1.0 / float(np.max(np.linalg.eigvalsh(model.posterior_precision)))

    def q_objective(trial: Sequence[FloatArray]) -> float | None:
        if not np.all(np.diagonal(trial[1]) > 0):
            return None
        candidate = Gaussian.from_cholesky(mean=trial[0], scale_tril=trial[1])
        return float(np.sum(model.elbo(candidate, x)))

    phi_trace = [_point("phi", 0, "start", model, q, x)]
    for i in range(1, phi_steps + 1):
        grads = model.elbo_grad_variational(q, x)
        means, factor = _ascend(
            [means, factor],
            [grads.mean, grads.scale_tril.sum(axis=0)],
            [step, 0.5 * step / n],
            q_objective,
            phi_trace[-1].elbo,
        )
        q = Gaussian.from_cholesky(mean=means, scale_tril=factor)
        phi_trace.append(_point("phi", i, "phi step", model, q, x))

    # ------------------------------------------------------------ phase 2: theta
    def theta_objective(trial: Sequence[FloatArray]) -> float | None:
        candidate = _model(trial[0], trial[1], trial[2], prior)
        value = float(np.sum(candidate.elbo(q, x)))
        return value if math.isfinite(value) else None

    theta_trace = [_point("theta", 0, "start", model, q, x)]
    count = 0
    for _ in range(em_iterations):
        for _ in range(m_steps):
            g = model.elbo_grad_model(q, x)
            noise_variances = np.exp(log_noise)
            weights, bias, log_noise = _ascend(
                [weights, bias, log_noise],
                [g.weights, g.bias, np.asarray(g.noise_cov) * noise_variances],
                [model_step / n] * 3,
                theta_objective,
                float(np.sum(model.elbo(q, x))),
            )
            model = _model(weights, bias, log_noise, prior)
            count += 1
            theta_trace.append(_point("theta", count, "M-step", model, q, x))
        q = model.posterior(x)
        theta_trace.append(_point("theta", count, "E-step", model, q, x))

    return DemoResult(
        seed=seed,
        data=x,
        true_model=true_model,
        initial_model=initial_model,
        final_model=model,
        phi_trace=tuple(phi_trace),
        theta_trace=tuple(theta_trace),
        m_steps=m_steps,
    )


# ---------------------------------------------------------------------- figure
def _import_pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as err:
        raise ModuleNotFoundError(f"--plot needs matplotlib; {PLOT_EXTRA_HINT}") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_demo(result: DemoResult, path: str) -> None:
    """Write the two-phase figure as a PNG to ``path`` (needs matplotlib).

    Top row: the ELBO and :math:`\\log p(x)` with the gap between them shaded; bottom
    row: the gap itself, :math:`\\mathrm{KL}(q\\,\\|\\,p(z\\mid x))` (log scale in the
    :math:`\\phi` phase, linear in the :math:`\\theta` phase).
    """
    plt = _import_pyplot()
    colours = {"elbo": "#1f77b4", "evidence": "#d62728", "gap": "#ff7f0e", "true": "#555555"}
    rows = int(result.data.shape[0])
    figure, axes = plt.subplots(
        2,
        2,
        figsize=(11.5, 6.8),
        sharex="col",
        gridspec_kw={"height_ratios": [3.0, 1.4], "width_ratios": [1.0, 1.6]},
    )
    panels = (
        (
            result.phi_trace,
            r"Phase 1: fit $q_\phi$ (model $\theta_0$ fixed)",
            r"gradient steps on $\phi$ (means and Cholesky factor of $q$; symlog axis)",
        ),
        (
            result.theta_trace,
            r"Phase 2: fit the model $\theta$ (generalised EM)",
            r"gradient steps on $\theta = (W, b, \log\psi)$; an E-step after every "
            f"{result.m_steps} sets $q$ to the posterior",
        ),
    )
    for column, (trace, title, xlabel) in enumerate(panels):
        top, bottom = axes[0, column], axes[1, column]
        steps = np.array([p.step for p in trace], dtype=float)
        elbo = np.array([p.elbo for p in trace])
        evidence = np.array([p.log_evidence for p in trace])
        kl = np.array([p.kl for p in trace])
        top.fill_between(
            steps,
            elbo,
            evidence,
            color=colours["gap"],
            alpha=0.35,
            linewidth=0,
            label=r"gap $= \mathrm{KL}(q\,\|\,p_\theta(z|x))$",
        )
        top.plot(steps, evidence, color=colours["evidence"], lw=2.2, label=r"$\log p_\theta(x)$")
        top.plot(steps, elbo, color=colours["elbo"], lw=1.6, label="ELBO")
        if column == 0:
            top.annotate(
                f"log p(x) = {evidence[0]:.2f} at every step:\nit does not depend on $\\phi$",
                xy=(0.97, 0.80),
                xycoords="axes fraction",
                ha="right",
                va="top",
                fontsize=9,
                color=colours["evidence"],
            )
            top.annotate(
                f"KL = {kl[0]:.1f} at the start",
                xy=(0.0, 0.5 * (elbo[0] + evidence[0])),
                xytext=(0.30, 0.30),
                textcoords="axes fraction",
                fontsize=9,
                arrowprops={"arrowstyle": "->", "color": "#444444"},
            )
        else:
            top.axhline(
                result.true_log_density,
                color=colours["true"],
                lw=1.0,
                ls=":",
                label=r"$\log p_{\mathrm{true}}(x)$ under the data-generating model",
            )
            top.annotate(
                f"log p(x): {evidence[0]:.2f} -> {evidence[-1]:.2f}",
                xy=(0.97, 0.86),
                xycoords="axes fraction",
                ha="right",
                va="top",
                fontsize=9,
                color=colours["evidence"],
            )
        top.set_title(title, fontsize=11)
        top.set_ylabel(f"nats (sum over {rows} rows)")
        top.grid(alpha=0.3)
        top.legend(loc="lower right", fontsize=9, framealpha=0.9)

        if column == 0:
            # The phi phase closes almost all of the gap in its first two steps: on a
            # linear step axis the shaded gap would fill 2 of 40 steps. A symlog axis
            # (linear to step 1, logarithmic after) shows those steps as wide as the
            # remaining 38. Values below 1e-16 are clipped for display (the KL is
            # computed directly, not as log p(x) - ELBO, so it keeps its accuracy far
            # below the rounding level of those two).
            bottom.semilogy(steps, np.maximum(kl, 1e-16), color=colours["gap"], lw=1.6)
            bottom.set_ylim(1e-16, 10 ** math.ceil(math.log10(kl.max())))
            bottom.set_ylabel("KL (log scale)")
            bottom.set_xscale("symlog", linthresh=1.0, linscale=1.0)
            bottom.set_xlim(0.0, steps[-1])
            ticks = [t for t in (0, 1, 2, 5, 10, 20, 40, 100) if t <= steps[-1]]
            bottom.set_xticks(ticks, [str(t) for t in ticks])
        else:
            bottom.fill_between(steps, 0.0, kl, color=colours["gap"], alpha=0.35, linewidth=0)
            bottom.plot(steps, kl, color=colours["gap"], lw=1.2)
            bottom.set_ylim(0.0, 1.1 * kl.max())
            bottom.set_ylabel("KL = gap")
        bottom.set_xlabel(xlabel, fontsize=9.5)
        bottom.grid(alpha=0.3)
    figure.suptitle(
        r"$\log p_\theta(x) = \mathrm{ELBO}(\phi, \theta)"
        r" + \mathrm{KL}(q_\phi(z|x)\,\|\,p_\theta(z|x))$:"
        r" moving $\phi$ closes the gap, moving $\theta$ moves $\log p_\theta(x)$",
        fontsize=12,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110, format="png")
    plt.close(figure)
