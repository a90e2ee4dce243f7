"""Time to a verdict: how long each verifier takes on a user's correct code, as a user
calls it (default settings: seed 0, the ``dev`` profile, nothing else passed).

    python benchmarks/time_to_verdict.py              # numpy user code (+ torch if installed)
    python benchmarks/time_to_verdict.py --rounds 3   # median of 3 fresh runs per row

The user code is written from scratch the way a user writes it: plain numpy on
``model.weights``, ``model.bias``, ``model.prior``, ``model.noise_cov`` and q's mean and
Cholesky factor (dense Cholesky solves, no use of the oracle); the torch variant builds
``torch.distributions`` objects on every call, as Pyro-style code does. Each row is run
in a fresh subprocess (so no import, JIT or cache warm-up is shared) and reports the
wall time of the verifier call alone. Targets (issue 10): ``verify_elbo`` <= 2 s and
``verify_elbo_estimator`` <= 10 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap

CASES = {
    "verify_elbo (numpy)": "elbo",
    "verify_kl (numpy)": "kl",
    "verify_log_evidence (numpy)": "evidence",
    "verify_elbo_estimator (numpy)": "estimator",
    "verify_elbo_gradient exact (numpy)": "gradient",
    "verify_elbo_estimator (torch)": "torch_estimator",
}

TARGETS = {"verify_elbo (numpy)": 2.0, "verify_elbo_estimator (numpy)": 10.0}

CHILD = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from elbo_check.testing import (
        verify_elbo, verify_elbo_estimator, verify_elbo_gradient, verify_kl,
        verify_log_evidence,
    )
    LOG_2PI = float(np.log(2 * np.pi))

    def dense_noise(model):
        noise = np.asarray(model.noise_cov, dtype=float)
        d = model.data_dim
        if noise.ndim == 0:
            return noise * np.eye(d)
        return np.diag(noise) if noise.ndim == 1 else noise

    def gauss_logpdf(x, mean, cov):
        l = np.linalg.cholesky(cov)
        r = np.linalg.solve(l, (x - mean).T)
        return -0.5 * (len(mean) * LOG_2PI + 2 * np.sum(np.log(np.diag(l))) + np.sum(r * r, axis=0))

    def elbo(model, q, x):
        w, b, m, lq = model.weights, model.bias, q.mean, q.scale_tril
        lp = np.linalg.cholesky(dense_noise(model))
        a = np.linalg.solve(lp, x - w @ m - b)
        spread = np.linalg.solve(lp, w @ lq)
        log_det = 2 * np.sum(np.log(np.diag(lp)))
        ell = -0.5 * (len(x) * LOG_2PI + log_det + a @ a + np.sum(spread ** 2))
        return ell - kl(q, model.prior)

    def kl(p, q):
        lq_ = np.linalg.cholesky(q.cov)
        ratio = np.linalg.solve(lq_, p.scale_tril)
        c = np.linalg.solve(lq_, p.mean - q.mean)
        return 0.5 * (np.sum(ratio ** 2) + c @ c - p.dim + 2 * np.sum(np.log(np.diag(lq_)))
                      - 2 * np.sum(np.log(np.diag(p.scale_tril))))

    def evidence(model, x):
        cov = model.weights @ model.prior.cov @ model.weights.T + dense_noise(model)
        return float(gauss_logpdf(x[None], model.weights @ model.prior.mean + model.bias, cov)[0])

    def estimator(model, q, x, rng, n):
        z = q.mean + rng.standard_normal((n, q.dim)) @ q.scale_tril.T
        noise = dense_noise(model)
        l = np.linalg.cholesky(noise)
        r = np.linalg.solve(l, (x - z @ model.weights.T - model.bias).T)
        loglik = -0.5 * (len(x) * LOG_2PI + 2 * np.sum(np.log(np.diag(l))) + np.sum(r * r, axis=0))
        return float(np.mean(loglik + gauss_logpdf(z, model.prior.mean, model.prior.cov)
                             - gauss_logpdf(z, q.mean, q.cov)))

    def gradient(model, q, x):
        noise = dense_noise(model)
        precision = model.weights.T @ np.linalg.solve(noise, model.weights)
        precision = precision + np.linalg.inv(model.prior.cov)
        gm = model.weights.T @ np.linalg.solve(noise, x - model.weights @ q.mean - model.bias) \\
            - np.linalg.solve(model.prior.cov, q.mean - model.prior.mean)
        gl = np.tril(-precision @ q.scale_tril + np.diag(1 / np.diag(q.scale_tril)))
        return gm, gl

    def torch_estimator(model, q, x, rng, n):
        import torch
        t = lambda a: torch.tensor(np.array(a, dtype=float))
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        qd = torch.distributions.MultivariateNormal(t(q.mean), scale_tril=t(q.scale_tril))
        prior = torch.distributions.MultivariateNormal(
            t(model.prior.mean), covariance_matrix=t(model.prior.cov))
        z = qd.loc + torch.randn(n, q.dim, generator=gen, dtype=torch.float64) @ qd.scale_tril.T
        lik = torch.distributions.MultivariateNormal(z @ t(model.weights).T + t(model.bias),
                                                     covariance_matrix=t(dense_noise(model)))
        return (lik.log_prob(t(x)) + prior.log_prob(z) - qd.log_prob(z)).mean()

    kind = sys.argv[1]
    if kind == "torch_estimator":
        try:
            import torch  # noqa: F401
        except ImportError:
            print(json.dumps({"skipped": "torch is not installed"})); sys.exit(0)
    calls = {
        "elbo": lambda: verify_elbo(elbo),
        "kl": lambda: verify_kl(kl),
        "evidence": lambda: verify_log_evidence(evidence),
        "estimator": lambda: verify_elbo_estimator(estimator),
        "gradient": lambda: verify_elbo_gradient(gradient),
        "torch_estimator": lambda: verify_elbo_estimator(torch_estimator),
    }
    start = time.perf_counter()
    report = calls[kind]()
    print(json.dumps({"seconds": time.perf_counter() - start, "report": str(report)}))
    """
)


def run_once(kind: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, kind], check=True, capture_output=True, text=True
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="fresh runs per row (median)")
    args = parser.parse_args()
    print("| check | seconds (median) | target | verdict |")
    print("|---|---|---|---|")
    for label, kind in CASES.items():
        results = [run_once(kind) for _ in range(max(1, args.rounds))]
        if "skipped" in results[0]:
            print(f"| {label} | - | - | skipped: {results[0]['skipped']} |")
            continue
        seconds = statistics.median(float(r["seconds"]) for r in results)  # type: ignore[arg-type]
        target = TARGETS.get(label)
        mark = (
            ""
            if target is None
            else (f"<= {target:g} s" + ("" if seconds <= target else " MISSED"))
        )
        print(f"| {label} | {seconds:.2f} | {mark} | {str(results[0]['report'])[:60]}... |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
