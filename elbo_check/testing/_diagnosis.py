"""Name the bug behind a mismatch: catalogues of common mistakes and term probes.

When a user's value disagrees with the oracle, the verifiers evaluate the user's
function on a few *probes* — the failing case and variations of it (q's mean moved,
q's covariance changed, another observation) — and compare the result with

1. a catalogue of *suspects*: the value each well-known bug would produce (entropy
   missing, KL averaged over dimensions, a transposed Cholesky factor, ...). A suspect
   is reported when it reproduces the user's value on every probe where it applies;
2. if no suspect fits, a description of what the gap depends on (nothing, q's mean,
   q's covariance, x) and whether it is a constant or a scale factor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class Suspect:
    """A known bug: its name, what to fix, and the value a function with it returns.

    ``predict`` receives the same arguments as the user's function and returns the
    buggy value, or ``None`` where the bug is not defined (a transposed factor of a
    1x1 matrix, say).
    """

    name: str
    advice: str
    predict: Callable[..., Any]


def match_suspects(
    suspects: Sequence[Suspect],
    probes: Sequence[tuple[tuple[Any, ...], Any, Any, Any]],
) -> list[Suspect]:
    """Suspects that reproduce the user's value on every probe where they apply.

    Each probe is ``(arguments, got, expected, tolerance)``; values may be scalars or
    arrays (compared entry by entry). A suspect must apply on at least two probes,
    match ``got`` within ``tolerance`` on all of them, and differ from ``expected`` by
    more than ``tolerance`` on at least one (else it explains nothing).
    """
    found = []
    for suspect in suspects:
        applied, informative, ok = 0, False, True
        for arguments, got, expected, tolerance in probes:
            try:
                predicted = suspect.predict(*arguments)
            except (ValueError, np.linalg.LinAlgError, FloatingPointError):
                predicted = None
            if predicted is None:
                continue
            predicted = np.asarray(predicted, dtype=np.float64)
            if not np.all(np.isfinite(predicted)):
                continue
            applied += 1
            if not np.all(np.abs(np.asarray(got) - predicted) <= tolerance):
                ok = False
                break
            informative = informative or bool(
                np.any(np.abs(predicted - np.asarray(expected)) > tolerance)
            )
        if ok and informative and applied >= 2:
            found.append(suspect)
    return found


def describe_gap(
    gaps: dict[str, float], values: dict[str, tuple[float, float]], tolerance: float
) -> str:
    """Say what the gap ``got - expected`` depends on, from probes that vary one thing.

    ``gaps`` maps a probe label (``"original"``, ``"mean moved"``, ``"cov changed"``,
    ``"x changed"``) to its gap; ``values`` maps it to ``(got, expected)``.
    """
    if any(not np.isfinite(got) for got, _ in values.values()):
        return (
            "fn returned a non-finite value where the exact one is finite: a determinant, "
            "product or exponential under- or overflowed; take log-determinants from a "
            "Cholesky factor (2 * sum(log(diag(L)))) instead of log(det(.))"
        )
    base = gaps["original"]
    varies = [label for label, gap in gaps.items() if abs(gap - base) > tolerance]
    ratios = [got / expected for got, expected in values.values() if expected != 0]
    if not varies:
        return (
            f"the gap is the same constant {base:.6g} on every probe (independent of q and "
            "x): a normalising constant is missing or extra; if dropping constants is "
            "intended, verify with up_to_constant=True"
        )
    if len(ratios) == len(values) and np.ptp(ratios) <= 1e-9 * max(1.0, abs(ratios[0])):
        return f"got / expected is the same factor {ratios[0]:.6g} on every probe: a scale factor"
    depends = ", ".join(varies)
    hints = []
    if "cov changed" in varies and "mean moved" not in varies:
        hints.append(
            "it depends on q's covariance but not its mean: look at the entropy, the trace "
            "term tr(Psi^-1 W S W^T) and the prior's tr(S0^-1 S)"
        )
    if "mean moved" in varies and "cov changed" not in varies:
        hints.append(
            "it depends on q's mean but not its covariance: look at the residual x - W m - b "
            "and the prior's (m - mu0)^T S0^-1 (m - mu0)"
        )
    if "x changed" in varies and len(varies) == 1:
        hints.append("it depends on x only: look at the likelihood's residual and noise")
    return f"the gap changes when: {depends}" + ("; " + "; ".join(hints) if hints else "")
