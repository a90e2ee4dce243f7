"""The loss doctor's report: what a loss computes, in words, and whether it is the ELBO."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ._doctor_probes import AXES, Design, ProblemClass
from ._doctor_terms import SYMBOLS, Scaling

__all__ = ["KINDS", "LossDiagnosis", "Term"]

#: The verdicts, from best to worst; ``ok`` is True for the first two (and for a beta
#: the caller declared).
KINDS = ("elbo", "multiple", "beta", "wrong sign", "other")

_NOUN = {
    "rows": "the batch",
    "features": "features",
    "latent": "latent dimensions",
    "samples": "samples",
}

#: (term role, axis) -> exponent -> token; anything else is written as a power.
_TOKENS: dict[tuple[str, str], dict[int, str]] = {
    ("reconstruction", "rows"): {0: "sum", -1: "mean", 1: "sum times B"},
    ("reconstruction", "features"): {0: "sum", -1: "mean"},
    ("reconstruction", "latent"): {0: "-", -1: "divided by K"},
    ("reconstruction", "samples"): {0: "mean", 1: "sum"},
    ("kl", "rows"): {0: "sum", -1: "mean", 1: "sum times B"},
    ("kl", "features"): {0: "-", -1: "divided by D", 1: "times D"},
    ("kl", "latent"): {0: "sum", -1: "mean"},
    ("kl", "samples"): {0: "-", 1: "sum", -1: "divided by n"},
}
_ROW_TOKENS = {0: "per row", -1: "per row, divided by B", 1: "per row, times B"}


def token(role: str, axis: str, power: int | None, per_row: bool = False) -> str:
    """The word for ``power`` of ``axis`` in a term of ``role`` ("sum", "mean", "-", ...)."""
    if power is None:
        return "irregular"
    if per_row and axis == "rows":
        return _ROW_TOKENS.get(power, f"per row, times B^{power}")
    return _TOKENS[(role, axis)].get(power, f"times {SYMBOLS[axis]}^{power}")


def _phrase(role: str, axis: str, word: str, design: Design) -> str:
    if axis == "rows":
        return {
            "sum": "summed over the batch",
            "mean": "averaged over the batch",
            "per row": "",
            "sum times B": "summed over the batch, times B",
        }.get(word, word)
    if word in ("sum", "mean"):
        count = f"the {design.size(axis)} " if axis != "samples" else "the "
        verb = "summed" if word == "sum" else "averaged"
        return f"{verb} over {count}{_NOUN[axis]}"
    return "" if word == "-" else word


def _wrapped(text: str, first: str = "  ", rest: str = "    ") -> str:
    return textwrap.fill(
        text, width=88, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False
    )


@dataclass(frozen=True)
class Term:
    """One term of the loss as the doctor identified it.

    Attributes
    ----------
    name : str
        ``"reconstruction"`` (E_q log p(x|z)), ``"KL"``, or, when they do not enter
        together, ``"cross-entropy"`` and ``"entropy"``; with a ``"batch "`` prefix for a
        term summed over the whole batch inside a per-row value.
    role : str
        ``"reconstruction"`` or ``"kl"``: which vocabulary its reductions use.
    scaling : Scaling
        Its coefficient at the base design, with the power of each axis.
    """

    name: str
    role: str
    scaling: Scaling
    per_row: bool = False

    def reductions(self) -> dict[str, str]:
        """axis -> token ("sum", "mean", "-", "divided by K", ...), for the axes probed."""
        return {
            axis: token(self.role, axis, self.scaling.exponents[axis], self.per_row)
            for axis in AXES
            if axis in self.scaling.exponents
        }

    def words(self, *, skip_rows: bool = False) -> str:
        design = self.scaling.design
        what = {
            "reconstruction": "log-likelihood",
            "KL": "KL",
            "cross-entropy": "prior cross-entropy",
            "entropy": "entropy of q",
        }.get(self.name.removeprefix("batch "), self.name)
        parts = [
            _phrase(self.role, axis, word, design)
            for axis, word in self.reductions().items()
            if not ((skip_rows or self.name.startswith("batch ")) and axis == "rows")
        ]
        if self.name.startswith("batch "):
            parts.insert(0, "summed over the whole batch, in every row")
        parts = [p for p in parts if p]
        return what + (" " + ", ".join(parts) if parts else "")


@dataclass(frozen=True)
class LossDiagnosis:
    """What :func:`diagnose_loss` found a loss to compute.

    :func:`diagnose_loss` returns one; ``str(report)`` is the text ``python -m
    elbo_check doctor`` prints, and the parameters below are also the report's
    attributes. A report is immutable.

    Parameters
    ----------
    kind : str
        One of :data:`KINDS`: ``"elbo"`` (the ELBO or its batch mean, with the sign of
        the declared objective), ``"multiple"`` (a positive multiple of it: fine for
        optimisation), ``"beta"`` (a beta-ELBO), ``"wrong sign"``, ``"other"``.
    ok : bool
        True when the loss is a positive multiple of the objective (or the beta-ELBO
        with the declared beta; up to constants with ``up_to_constant=True``).
    summary : str
        The loss in words, e.g. ``"the mean over the batch of [-(log-likelihood summed
        over the 4 features) + (KL averaged over the 2 latent dimensions)]"``.
    verdict : str
        Whether that is the ELBO, a multiple, a beta-ELBO or none of these, and why.
    terms : tuple of Term
        The terms found, with their coefficients and reductions.
    conventions : mapping
        The conventions as tokens (``"reconstruction.rows": "mean"``, ``"beta": "1/K"``,
        ``"log 2 pi": "dropped"``, ...): what tests and the kill matrix compare.
    scale : float or None
        The multiple of the objective at the base design (None unless ``kind`` is
        ``"elbo"``, ``"multiple"`` or ``"beta"``).
    beta : float or None
        The KL's weight relative to the reconstruction's, at the base design.
    problems : str
        The problems the loss was identified on (q, prior, noise).
    design : str
        The base design point (B, D, K, n).
    notes : tuple of str
        What else the doctor saw (classes of problems the loss did not fit, ...).

    Raises
    ------
    dataclasses.FrozenInstanceError
        On assignment to an attribute.

    Examples
    --------
    The loss -ELBO averaged over the batch, written with the oracle:

    >>> import numpy as np
    >>> from elbo_check.testing import diagnose_loss
    >>> report = diagnose_loss(lambda model, q, x: -np.mean(model.elbo(q, x)))
    >>> report.kind, report.ok, report.conventions["reconstruction.rows"]
    ('elbo', True, 'mean')
    >>> print(report.verdict)
    This is the negative ELBO (a loss) averaged over the batch (per data point).
    """

    kind: str
    ok: bool
    summary: str
    verdict: str
    terms: tuple[Term, ...]
    conventions: MappingProxyType[str, str]
    scale: float | None
    beta: float | None
    problems: ProblemClass | None
    design: Design
    notes: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        lines = [_wrapped(f"diagnose_loss: {self.summary}", "", "    "), _wrapped(self.verdict)]
        if self.terms:
            error = (
                " ± 1 standard error" if any(t.scaling.standard_error for t in self.terms) else ""
            )
            lines.append(f"  terms (coefficient at {self.design.text()}{error}):")
            for term in self.terms:
                s = term.scaling
                error = f" = {s.value:.4g} ± {s.standard_error:.2g}" if s.standard_error else ""
                text = f"{term.name}: {s.formula()}{error} ({term.words()})"
                lines.append(_wrapped(text, "    ", "      "))
        constants = [
            f"{name} {self.conventions[name]}"
            for name in ("log 2 pi", "log det Psi")
            if name in self.conventions
        ]
        if constants:
            lines.append("  constants: " + "; ".join(constants))
        if self.problems is not None:
            lines.append(_wrapped(f"probed on problems with {self.problems.text()}"))
        lines.extend(_wrapped(f"note: {note}") for note in self.notes)
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The findings as plain JSON types (what ``doctor --json`` prints).

        Returns
        -------
        dict
            ``kind``, ``ok``, ``summary``, ``verdict``, ``conventions``, ``scale``,
            ``beta``, ``terms`` (name, coefficient, uncertainty, formula, reductions),
            ``problems``, ``design`` and ``notes``.

        Examples
        --------
        >>> import json
        >>> from elbo_check.testing import diagnose_loss
        >>> report = diagnose_loss(lambda model, q, x: -model.elbo(q, x).sum())
        >>> json.loads(json.dumps(report.to_json()))["conventions"]["beta"]
        '1'
        """
        return {
            "kind": self.kind,
            "ok": self.ok,
            "summary": self.summary,
            "verdict": self.verdict,
            "conventions": dict(self.conventions),
            "scale": self.scale,
            "beta": self.beta,
            "terms": [
                {
                    "name": t.name,
                    "coefficient": t.scaling.value,
                    "uncertainty": t.scaling.uncertainty,
                    "standard_error": t.scaling.standard_error,
                    "formula": t.scaling.formula(),
                    "reductions": t.reductions(),
                }
                for t in self.terms
            ],
            "problems": self.problems.text() if self.problems else None,
            "design": self.design.text(),
            "notes": list(self.notes),
        }

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # IPython
        printer.text(str(self))
