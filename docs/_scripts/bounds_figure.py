"""Draw the Rényi-bound figure of docs/tutorials/multi-sample.md.

Usage: ``python docs/_scripts/bounds_figure.py OUTPUT.png``. The documentation build runs
it (``GENERATED_FIGURES`` in docs/conf.py) to write ``docs/_static/renyi-bounds.png``.

The model, the observation and q are the ones of the tutorial page; every value on the
curve is exact (``model.renyi_bound``). The IWAE expectations marked on the right panel
are Monte-Carlo estimates with a fixed seed (standard errors below 0.002 nats, far below
the spacing of the marks), so the figure is the same on every run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

# Draw the figure of the checkout this script belongs to, whether or not it is installed.
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from elbo_check import Gaussian, LinearGaussianModel  # noqa: E402

#: The numbers of importance samples whose expected IWAE bound is marked.
IWAE_SIZES = (2, 5)
SEED = 2024


def example() -> tuple[LinearGaussianModel, Any, Gaussian]:
    """The model, the observation and the mean-field q of the tutorial page."""
    prior = Gaussian.from_covariance(mean=[1.0, -0.5], cov=[[1.0, 0.3], [0.3, 0.6]])
    model = LinearGaussianModel(
        weights=[[1.0, 0.5], [-0.3, 0.8], [0.6, -1.0]],
        bias=[0.2, -0.1, 0.4],
        prior=prior,
        noise_cov=[0.3, 0.5, 0.4],
    )
    x = np.array([1.5, -0.2, 0.9])
    q = Gaussian.from_diagonal(mean=[1.5, 0.2], variances=[0.25, 0.13])
    return model, x, q


def expected_iwae(model: LinearGaussianModel, q: Gaussian, x: Any, k: int) -> float:
    """E[IWAE_k] by simulation: log p(x) minus the mean of u - log(1 + u), u = w_bar/p(x) - 1.

    E[u] = 0 exactly, so this is the plain average of log w_bar with a control variate.
    """
    rng = np.random.default_rng(SEED + k)
    replicates = max(2_000, 200_000 // k)
    z = q.sample(replicates * k, rng).reshape(replicates, k, q.dim)
    log_w = np.asarray(model.log_joint(x, z) - q.log_prob(z))
    log_px = float(model.log_evidence(x))
    peak = log_w.max(axis=1, keepdims=True)
    log_mean = peak[:, 0] + np.log(np.mean(np.exp(log_w - peak), axis=1))
    d = log_mean - log_px
    return log_px - float(np.mean(np.expm1(d) - d))


def nats(value: float) -> str:
    """``value`` to three decimals, with a typographic minus sign."""
    return f"{value:.3f}".replace("-", "\N{MINUS SIGN}")


def draw(path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, x, q = example()
    low, high = (float(end) for end in model.renyi_alpha_interval(q))
    log_px = float(model.log_evidence(x))
    elbo = float(model.elbo(q, x))
    chi2 = float(model.cubo(q, x))

    def bound(alphas: Any) -> Any:
        return np.array([model.renyi_bound(q, x, float(a)) for a in alphas])

    colours = {"curve": "#1f77b4", "evidence": "#d62728", "elbo": "#2ca02c", "chi2": "#9467bd"}
    figure, (wide, zoom) = plt.subplots(
        1, 2, figsize=(11.5, 4.6), gridspec_kw={"width_ratios": [1.0, 1.15]}
    )

    # Left: the whole interval where L_alpha is finite, and where it stops being finite.
    span = high - low
    alphas = np.linspace(low + 1e-3 * span, high - 1e-3 * span, 801)
    left_edge, right_edge = low - 0.9, high + 0.9
    y_limits = (-12.0, 12.0)
    wide.plot(alphas, bound(alphas), color=colours["curve"], lw=2.0)
    for end, start, stop in ((low, left_edge, low), (high, high, right_edge)):
        wide.axvspan(start, stop, color="#bbbbbb", alpha=0.45, lw=0)
        wide.axvline(end, color="#555555", lw=1.0, ls="--")
    wide.text(
        low - 0.45, 0.0, r"$\mathcal{L}_\alpha = +\infty$", rotation=90, ha="center", va="center"
    )
    wide.text(
        high + 0.45, 0.0, r"$\mathcal{L}_\alpha = -\infty$", rotation=90, ha="center", va="center"
    )
    wide.annotate(
        rf"$\alpha_{{\min}} = {low:.2f}$",
        xy=(low, -9.5),
        xytext=(low + 0.25, -9.5),
        va="center",
        fontsize=9,
    )
    wide.annotate(
        rf"$\alpha_{{\max}} = {high:.2f}$",
        xy=(high, 9.5),
        xytext=(high - 0.25, 9.5),
        ha="right",
        va="center",
        fontsize=9,
    )
    wide.axhline(log_px, color=colours["evidence"], lw=1.0, ls=":")
    zoom_x, zoom_y = (-1.5, 1.5), (-3.8, -2.5)
    wide.add_patch(
        matplotlib.patches.Rectangle(
            (zoom_x[0], zoom_y[0]),
            zoom_x[1] - zoom_x[0],
            zoom_y[1] - zoom_y[0],
            fill=False,
            edgecolor="#444444",
            lw=0.8,
        )
    )
    wide.text(
        0.0, zoom_y[0] - 0.4, "right panel", ha="center", va="top", fontsize=8.5, color="#444444"
    )
    wide.set_xlim(left_edge, right_edge)
    wide.set_ylim(*y_limits)
    wide.set_xlabel(r"order $\alpha$")
    wide.set_ylabel(r"$\mathcal{L}_\alpha(q; x)$  (nats)")
    wide.set_title(r"finite only for $\alpha_{\min} < \alpha < \alpha_{\max}$", fontsize=11)
    wide.grid(alpha=0.3)

    # Right: the bounds that have names, and the IWAE bounds between the ELBO and log p(x).
    alphas = np.linspace(*zoom_x, 301)
    zoom.plot(alphas, bound(alphas), color=colours["curve"], lw=2.0, label=r"$\mathcal{L}_\alpha$")
    zoom.axhline(log_px, color=colours["evidence"], lw=1.0, ls=":")
    marks = (
        (-1.0, chi2, colours["chi2"], r"$\chi^2$ upper bound $\mathrm{CUBO}_2$ = " + nats(chi2)),
        (0.0, log_px, colours["evidence"], r"$\log p(x)$ = " + nats(log_px)),
        (1.0, elbo, colours["elbo"], "ELBO = " + nats(elbo)),
    )
    for alpha, value, colour, label in marks:
        zoom.plot([alpha], [value], "o", color=colour, ms=8, zorder=3, label=label)
    for k in IWAE_SIZES:
        level = expected_iwae(model, q, x, k)
        zoom.plot([1.30, 1.50], [level, level], color="#333333", lw=1.6)
        zoom.text(1.27, level, f"K = {k}", ha="right", va="center", fontsize=8.5)
    zoom.plot([], [], color="#333333", lw=1.6, label=r"$\mathbb{E}[\mathrm{IWAE}_K]$")
    zoom.set_xlim(*zoom_x)
    zoom.set_ylim(*zoom_y)
    zoom.set_xlabel(r"order $\alpha$")
    zoom.set_ylabel(r"$\mathcal{L}_\alpha(q; x)$  (nats)")
    zoom.set_title(r"upper bounds for $\alpha < 0$, lower bounds for $\alpha > 0$", fontsize=11)
    zoom.grid(alpha=0.3)
    zoom.legend(loc="lower left", fontsize=9, framealpha=0.95)

    figure.suptitle(
        r"Rényi bounds $\mathcal{L}_\alpha = \frac{1}{1-\alpha}\log\mathbb{E}_q[w^{1-\alpha}]"
        r" = \log p(x) - D_\alpha(q\,\|\,p(z\mid x))$ of one mean-field $q$",
        fontsize=12,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110, format="png", metadata={"Software": None})
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="the PNG file to write")
    arguments = parser.parse_args(argv)
    draw(arguments.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
