"""From the fitted coefficients of a loss to its terms, its conventions and a verdict."""

from __future__ import annotations

from types import MappingProxyType

from ._doctor_probes import AXES, Fit, ProblemClass
from ._doctor_report import LossDiagnosis, Term, token
from ._doctor_terms import (
    SYMBOLS,
    Scaling,
    _number,
    combined,
    is_one,
    offset_allowance,
    ratio,
    scaling,
)


def _negated(value: Scaling) -> Scaling:
    return Scaling(-value.value, value.uncertainty, dict(value.exponents), value.design)


def _terms(base: Fit, doubled: dict[str, Fit], z: float, per_row: bool) -> list[Term]:
    def scale(name: str) -> Scaling:
        return scaling(name, base, doubled, z=z)

    terms = []
    for prefix in ("", "batch_") if per_row else ("",):
        label = "batch " if prefix else ""
        fit, ce, ent = (
            scale(prefix + "fit"),
            scale(prefix + "cross_entropy"),
            scale(prefix + "entropy"),
        )
        if fit.present:
            terms.append(Term(label + "reconstruction", "reconstruction", fit, per_row))
        kl = combined(ce, ent, -1.0)
        if kl is not None:
            if kl.present:
                terms.append(Term(label + "KL", "kl", kl, per_row))
            continue
        for name, part in (("cross-entropy", ce), ("entropy", _negated(ent))):
            if part.present:
                terms.append(Term(label + name, "kl", part, per_row))
    return terms


def _constants(
    base: Fit, doubled: dict[str, Fit], z: float, fit: Scaling
) -> tuple[dict[str, str], list[str]]:
    """The tokens for the log 2 pi and log det Psi constants, and the problems with them."""
    tokens, problems = {}, []
    allowance = offset_allowance(base, z)
    offset, likelihood = base.offset, base.likelihood_constant
    if abs(offset) <= allowance:
        tokens["log 2 pi"] = "kept"
    elif abs(offset + likelihood) <= allowance:
        tokens["log 2 pi"] = "dropped"
        problems.append(
            "the -D/2 log 2 pi terms of the log-likelihood are dropped: the same optimum "
            "and gradients, but the value is not a bound on log p(x)"
        )
    else:
        tokens["log 2 pi"] = "offset"
        problems.append(
            f"the values are off by a constant {offset:.6g} that no dropped log 2 pi "
            f"term explains (dropping them would give {-likelihood:.6g})"
        )
    if "logdet" in base.inactive:
        tokens["log det Psi"] = "n/a (unit noise)"
        return tokens, problems
    logdet = scaling("logdet", base, doubled, z=z)
    weight = ratio(logdet, fit)
    if is_one(weight):
        tokens["log det Psi"] = "kept"
    elif not logdet.present:
        tokens["log det Psi"] = "dropped"
        problems.append(
            "the -1/2 log det Psi term is dropped: constant in q, so harmless while only q "
            "is fitted, but the noise variances would grow without bound if they were learned"
        )
    else:
        tokens["log det Psi"] = f"weighted {weight.formula()}"
        problems.append(
            f"the -1/2 log det Psi term has {weight.formula()} times the weight of the "
            "rest of the log-likelihood"
        )
    return tokens, problems


def _summary(terms: list[Term], per_row: bool) -> str:
    """The loss in words: the shared reduction over rows first, then each signed term."""
    rows = {t.scaling.exponents.get("rows") for t in terms if not t.name.startswith("batch ")}
    shared = rows.pop() if len(rows) == 1 else None
    prefix, skip = "", False
    if per_row:
        prefix, skip = "one value per row: ", shared == 0
    elif shared in (0, -1):
        prefix = "the sum over the batch of " if shared == 0 else "the mean over the batch of "
        skip = True
    parts = []
    for i, term in enumerate(terms):
        constant = abs(term.scaling.constant)
        relative = term.scaling.uncertainty / max(abs(term.scaling.value), 1e-300)
        weight = (
            "" if abs(constant - 1.0) <= max(relative, 1e-9) else f"{_number(constant, relative)}·"
        )
        text = f"{weight}({term.words(skip_rows=skip)})"
        sign = "-" if term.scaling.value < 0 else "+"
        parts.append(("-" if sign == "-" else "") + text if i == 0 else f"{sign} {text}")
    body = " ".join(parts)
    return f"{prefix}[{body}]" if prefix else body


def diagnose(
    base: Fit,
    doubled: dict[str, Fit],
    *,
    z: float,
    per_row: bool,
    objective: str,
    declared_beta: float | None,
    up_to_constant: bool,
    problems: ProblemClass,
    notes: list[str],
) -> LossDiagnosis:
    """The report for a loss whose values are a combination of the pieces at every design point."""
    terms = _terms(base, doubled, z, per_row)
    names = {t.name: t for t in terms}
    fit = scaling("fit", base, doubled, z=z)
    conventions: dict[str, str] = {}
    reasons: list[str] = []
    major: list[str] = []
    want = -1.0 if objective == "loss" else 1.0
    conventions["sign"] = "-" if fit.value < 0 else "+"
    for role, term in (("reconstruction", names.get("reconstruction")), ("kl", names.get("KL"))):
        for axis in fit.exponents:
            conventions[f"{role}.{axis}"] = (
                token(role, axis, term.scaling.exponents[axis], per_row) if term else "absent"
            )
    if "KL" in names:
        conventions["entropy"] = "with KL"
    elif "cross-entropy" in names and "entropy" not in names:
        conventions["entropy"] = "missing"
        major.append(
            "the entropy of q is missing: the KL term has only its cross-entropy part "
            "E_q[-log p(z)]"
        )
    elif "entropy" in names or "cross-entropy" in names:
        conventions["entropy"] = "separate"
        ce, ent = names.get("cross-entropy"), names.get("entropy")
        detail = ", ".join(f"{t.name} {t.scaling.formula()} ({t.words()})" for t in (ce, ent) if t)
        major.append(f"the KL's two parts enter with different weights: {detail}")
    else:
        conventions["entropy"] = "absent"
    batch = [t for t in terms if t.name.startswith("batch ")]
    conventions["batch terms"] = ", ".join(t.name.removeprefix("batch ") for t in batch) or "none"
    for term in batch:
        major.append(
            f"each row's value contains the {term.name.removeprefix('batch ')} summed over the "
            "whole batch (a sum without an axis, broadcast back to every row)"
        )
    if not fit.present:
        major.append("there is no reconstruction (log-likelihood) term")
    batch_kl = any(t.role == "kl" for t in batch)
    if conventions["entropy"] == "absent" and not batch_kl:
        major.append("there is no KL term")
    if any(p is None for t in terms for p in t.scaling.exponents.values()):
        major.append("a term's coefficient does not scale as a power of B, D, K or n")
    tokens, constant_problems = _constants(base, doubled, z, fit) if fit.present else ({}, [])
    conventions.update(tokens)
    (reasons if not up_to_constant else notes).extend(constant_problems)
    if tokens.get("log 2 pi") == "offset" or tokens.get("log det Psi", "").startswith("weighted"):
        major.extend(p for p in constant_problems if p not in major)
    beta: Scaling | None = None
    if fit.present and conventions["entropy"] == "with KL":
        beta = _negated(ratio(names["KL"].scaling, fit))
        conventions["beta"] = beta.formula() if beta.whole else f"{beta.value:.4g}"
    wrong_sign = fit.present and fit.value * want < 0
    objective_text = "the negative ELBO (a loss)" if objective == "loss" else "the ELBO"
    scale = None if not fit.present else abs(fit.value)
    summary = _summary(terms, per_row) if terms else "no term of the ELBO"
    if major or beta is None:
        kind = "other"
        verdict = "None of these: " + "; ".join(major + reasons) + "."
    elif wrong_sign and is_one(beta):
        kind = "wrong sign"
        other = (
            "the ELBO, to be maximised,"
            if objective == "loss"
            else "the loss -ELBO, to be minimised,"
        )
        verdict = f"The sign is flipped: this is {other} where {objective_text} is meant."
        verdict += _also(reasons)
    elif wrong_sign:
        kind = "other"
        verdict = f"The sign is flipped and the KL is weighted beta = {conventions['beta']}."
    elif not is_one(beta):
        kind = "beta"
        verdict = _beta_verdict(beta, objective_text) + _also(reasons)
    elif reasons:
        kind = "other"
        verdict = (
            f"{objective_text[0].upper()}{objective_text[1:]} up to a constant, "
            "not a multiple of it: " + "; ".join(reasons) + "."
        )
    else:
        multiple = Scaling(scale or 0.0, fit.uncertainty, dict(fit.exponents), fit.design)
        exact = (
            abs(multiple.constant - 1.0)
            <= multiple.uncertainty / abs(fit.value) * abs(multiple.constant) + 1e-9
        )
        plain = all(fit.exponents.get(a, 0) == 0 for a in ("features", "latent", "samples"))
        rows_ok = fit.exponents.get("rows", 0) in ((0,) if per_row else (0, -1))
        if exact and plain and rows_ok:
            kind = "elbo"
            mean = fit.exponents.get("rows") == -1
            verdict = f"This is {objective_text}" + (
                " averaged over the batch (per data point)." if mean else "."
            )
        else:
            kind = "multiple"
            verdict = (
                f"A positive multiple of {objective_text}: {multiple.formula()} times it. "
                "Fine for optimisation (the same optimum; gradients scaled by that factor"
                + (
                    ", which changes with the number of samples: the samples are summed, "
                    "not averaged"
                    if multiple.exponents.get("samples")
                    else ""
                )
                + ")."
            )
    ok = kind in ("elbo", "multiple") or (
        kind == "beta"
        and not reasons
        and declared_beta is not None
        and beta is not None
        and all(p == 0 for p in beta.exponents.values())
        and abs(beta.value - declared_beta) <= max(beta.uncertainty, 1e-9 * abs(declared_beta))
    )
    if kind == "beta" and declared_beta is not None and not ok:
        verdict += f" It is not the declared beta = {declared_beta:g}."
    return LossDiagnosis(
        kind=kind,
        ok=ok,
        summary=summary,
        verdict=verdict,
        terms=tuple(terms),
        conventions=MappingProxyType(conventions),
        scale=scale if kind in ("elbo", "multiple", "beta") else None,
        beta=beta.value if beta is not None else None,
        problems=problems,
        design=base.design,
        notes=tuple(notes),
    )


def _also(reasons: list[str]) -> str:
    return "" if not reasons else " Also: " + "; ".join(reasons) + "."


def _beta_verdict(beta: Scaling, objective_text: str) -> str:
    value = beta.formula()
    varies = [a for a in AXES if beta.exponents.get(a)]
    where = ""
    if varies:
        sizes = ", ".join(f"{SYMBOLS[a]} = {beta.design.size(a)}" for a in varies)
        changing = " and ".join(_AXIS_NAMES[a] for a in varies)
        where = f" = {beta.value:.4g} here ({sizes}), changing with {changing}"
    head = f"A beta-weighted {objective_text.removeprefix('the ')}, beta = {value}{where}: "
    if beta.value >= 1.0 - beta.uncertainty:
        return (
            head + "still a lower bound on log p(x) (beta >= 1), a looser one whose optimum is "
            "not the posterior."
        )
    return head + (
        "NOT a bound (beta < 1): at the exact posterior it exceeds log p(x) by "
        "(1 - beta) KL(q || p(z)), and its optimum is overconfident."
    )


_AXIS_NAMES = {
    "rows": "the batch size",
    "features": "the data dimension",
    "latent": "the latent dimension",
    "samples": "the number of samples",
}
