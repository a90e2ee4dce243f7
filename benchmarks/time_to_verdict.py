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
``verify_elbo_estimator`` <= 10 s on a 2-core machine; issue 11: Pyro's Trace_ELBO
estimator check <= 20 s, NumPyro's <= 30 s including compilation, gradient checks <= 2x
those. The Pyro, NumPyro and JAX rows time the adapter's import (for JAX, compilation
happens in the check) and the check, as a user's three lines run; each is skipped
when its library is not installed.
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
    "Pyro Trace_ELBO estimator, AutoNormal": "pyro_estimator",
    "Pyro Trace_ELBO gradient, AutoMultivariateNormal": "pyro_gradient",
    "NumPyro Trace_ELBO estimator, AutoNormal": "numpyro_estimator",
    "NumPyro Trace_ELBO gradient, AutoMultivariateNormal": "numpyro_gradient",
    "verify_elbo_estimator (JAX, jitted)": "jax_estimator",
}

#: Seconds. Issue 10: the numpy rows; issue 11: the PPL rows (gradient: twice the estimator),
#: NumPyro's including compilation.
TARGETS = {
    "verify_elbo (numpy)": 2.0,
    "verify_elbo_estimator (numpy)": 10.0,
    "Pyro Trace_ELBO estimator, AutoNormal": 20.0,
    "Pyro Trace_ELBO gradient, AutoMultivariateNormal": 40.0,
    "NumPyro Trace_ELBO estimator, AutoNormal": 30.0,
    "NumPyro Trace_ELBO gradient, AutoMultivariateNormal": 60.0,
}
#: The library each framework row needs (the row is skipped without it).
NEEDS = {
    "torch_estimator": "torch",
    "pyro_estimator": "pyro",
    "pyro_gradient": "pyro",
    "numpyro_estimator": "numpyro",
    "numpyro_gradient": "numpyro",
    "jax_estimator": "jax",
}

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

    def jax_estimator(model, q, x, key, n):
        import jax, jax.numpy as jnp
        from jax.scipy.stats import multivariate_normal as mvn
        z = q.mean + jax.random.normal(key, (n, q.mean.shape[-1]), q.mean.dtype) @ q.scale_tril.T
        lik = mvn.logpdf(x, z @ model.weights.T + model.bias, model.noise_cov)
        return jnp.mean(lik + mvn.logpdf(z, model.prior_mean, model.prior_cov)
                        - mvn.logpdf(z, q.mean, q.cov))

    def ppl(name, check, guide):
        # the user's lines: import the library and the adapter, call the verifier
        if name == "pyro":
            import pyro
            from elbo_check.contrib import pyro as adapter
            loss = pyro.infer.Trace_ELBO()
        else:
            import numpyro
            from elbo_check.contrib import numpyro as adapter
            loss = numpyro.infer.Trace_ELBO()
        return getattr(adapter, check)(loss, guide=guide)

    def jax_check():
        from elbo_check.contrib import jax as adapter
        return adapter.verify_elbo_estimator(jax_estimator)

    kind = sys.argv[1]
    needs = sys.argv[2] if len(sys.argv) > 2 else ""
    if needs:
        import importlib.util
        if importlib.util.find_spec(needs) is None:
            print(json.dumps({"skipped": f"{needs} is not installed"})); sys.exit(0)
    start = time.perf_counter()  # framework rows: from the adapter's import on
    calls = {
        "elbo": lambda: verify_elbo(elbo),
        "kl": lambda: verify_kl(kl),
        "evidence": lambda: verify_log_evidence(evidence),
        "estimator": lambda: verify_elbo_estimator(estimator),
        "gradient": lambda: verify_elbo_gradient(gradient),
        "torch_estimator": lambda: verify_elbo_estimator(torch_estimator),
        "pyro_estimator": lambda: ppl("pyro", "verify_elbo_estimator", "AutoNormal"),
        "pyro_gradient": lambda: ppl("pyro", "verify_elbo_gradient", "AutoMultivariateNormal"),
        "numpyro_estimator": lambda: ppl("numpyro", "verify_elbo_estimator", "AutoNormal"),
        "numpyro_gradient": lambda: ppl(
            "numpyro", "verify_elbo_gradient", "AutoMultivariateNormal"),
        "jax_estimator": jax_check,
    }
    if kind in ("elbo", "kl", "evidence", "estimator", "gradient", "torch_estimator"):
        start = time.perf_counter()
    report = calls[kind]()
    print(json.dumps({"seconds": time.perf_counter() - start, "report": str(report)}))
    """
)


def run_once(kind: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, kind, NEEDS.get(kind, "")],
        check=True,
        capture_output=True,
        text=True,
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
