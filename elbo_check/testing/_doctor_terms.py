r"""How each term of a loss scales with the batch, the features, the latent dimensions and
the samples, read off its coefficients at design points that double one axis each.

A term's coefficient is modelled as a monomial :math:`c\,B^{p_B} D^{p_D} K^{p_K}
n^{p_n}`: doubling an axis multiplies the coefficient by :math:`2^{p}`, so each
exponent is :math:`\log_2` of a ratio of two fitted coefficients. Against the term
summed over rows, features and latent dimensions and averaged over samples (the
ELBO's own convention), :math:`p = -1` is a mean, :math:`p = 0` a sum (or, for
samples, a mean), :math:`p = +1` an extra factor of the axis' size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from ._doctor_probes import AXES, Design, Fit

#: Symbols of the axes in formulas.
SYMBOLS = {"rows": "B", "features": "D", "latent": "K", "samples": "n"}


@dataclass(frozen=True)
class Scaling:
    """A coefficient as ``constant * B**p_B * D**p_D * K**p_K * n**p_n`` (exponents that
    are not whole numbers, or could not be measured, are None)."""

    value: float
    uncertainty: float
    exponents: dict[str, int | None] = field(default_factory=dict)
    design: Design = field(default_factory=Design)
    standard_error: float = 0.0  # Monte Carlo only

    @property
    def present(self) -> bool:
        return abs(self.value) > self.uncertainty

    @property
    def whole(self) -> bool:
        return all(p is not None for p in self.exponents.values())

    @property
    def constant(self) -> float:
        """The coefficient with the axes' powers divided out (at the base design)."""
        scale = 1.0
        for axis, power in self.exponents.items():
            if power:
                scale *= float(self.design.size(axis)) ** power
        return self.value / scale

    def formula(self) -> str:
        """E.g. ``-1/B``, ``1/(B·K)``, ``2·n``, ``0.37``: the monomial in symbols."""
        top: list[str] = []
        bottom: list[str] = []
        for axis in AXES:
            power = self.exponents.get(axis)
            if not power:
                continue
            symbol = SYMBOLS[axis] + (f"^{abs(power)}" if abs(power) > 1 else "")
            (top if power > 0 else bottom).append(symbol)
        sign = "-" if self.constant < 0 else ""
        number = _number(abs(self.constant), self.uncertainty / max(abs(self.value), 1e-300))
        if number == "1" and top:
            numerator = "·".join(top)
        else:
            numerator = "·".join([number, *top]) if top else number
        if not bottom:
            return sign + numerator
        denominator = bottom[0] if len(bottom) == 1 else "(" + "·".join(bottom) + ")"
        return f"{sign}{numerator}/{denominator}"


def _number(value: float, relative_error: float) -> str:
    """The fraction with the smallest denominator within the error, else 4 digits.

    The denominators searched grow as the error shrinks (up to Q = 0.2 / sqrt(error), at
    least 8, at most 10^4): the ~0.3 Q^2 fractions of [0, 1] with denominators up to Q,
    each with a window of +-error, cover about 0.6 Q^2 error = 2.4% of it, so a number
    with no simple form is printed as a fraction with about that chance. An exact
    coefficient of 1/1000 is found; a Monte-Carlo one of 0.2452 +- 0.01 is not called 12/49.
    """
    error = max(relative_error, 1e-9)
    allowed = error * abs(value)
    largest = int(min(10_000, max(8, 0.2 / math.sqrt(error))))
    for denominator in range(1, largest + 1):
        numerator = round(value * denominator)
        if numerator and abs(numerator / denominator - value) <= allowed:
            return str(Fraction(numerator, denominator))
    return f"{value:.4g}"


def _log2_ratio(
    base: float, base_error: float, other: float, other_error: float
) -> tuple[float, float]:
    ratio = other / base
    if ratio <= 0:
        return math.nan, math.inf
    error = (base_error / abs(base) + other_error / abs(other)) / math.log(2.0)
    return math.log2(ratio), error


def scaling(name: str, base: Fit, doubled: dict[str, Fit], *, z: float) -> Scaling:
    """The scaling of column ``name`` across the design points (``z``: the standard
    errors a Monte-Carlo coefficient may be off by)."""
    value = base.coefficient(name)
    error = _allowance(base, name, z)
    exponents: dict[str, int | None] = {}
    for axis, other_fit in doubled.items():
        other, other_error = other_fit.coefficient(name), _allowance(other_fit, name, z)
        if abs(value) <= error or abs(other) <= other_error:
            exponents[axis] = 0 if abs(value) <= error and abs(other) <= other_error else None
            continue
        power, power_error = _log2_ratio(value, error, other, other_error)
        nearest = round(power) if math.isfinite(power) else None
        ok = nearest is not None and abs(power - nearest) <= max(power_error, 1e-6)
        exponents[axis] = int(nearest) if ok and nearest is not None else None
    i = base.names.index(name)
    return Scaling(
        value=value,
        uncertainty=error,
        exponents=exponents,
        design=base.design,
        standard_error=float(base.standard_errors[i]),
    )


def _allowance(found: Fit, name: str, z: float) -> float:
    i = found.names.index(name)
    return float(max(z * found.standard_errors[i], found.tolerance[i]))


def combined(first: Scaling, second: Scaling, sign: float) -> Scaling | None:
    """``first`` when ``second == sign * first`` within both uncertainties at every axis
    (the KL's cross-entropy and entropy entering together), else None."""
    if abs(first.value - sign * second.value) > first.uncertainty + second.uncertainty:
        return None
    if first.exponents != second.exponents and first.present:
        return None
    return Scaling(
        value=0.5 * (first.value + sign * second.value),
        uncertainty=first.uncertainty + second.uncertainty,
        exponents=dict(first.exponents),
        design=first.design,
        standard_error=0.5 * math.hypot(first.standard_error, second.standard_error),
    )


def ratio(numerator: Scaling, denominator: Scaling) -> Scaling:
    """The scaling of ``numerator / denominator`` (a beta, or log det Psi's weight)."""
    exponents: dict[str, int | None] = {}
    for axis in numerator.exponents:
        a, b = numerator.exponents.get(axis), denominator.exponents.get(axis)
        exponents[axis] = None if a is None or b is None else a - b
    value = numerator.value / denominator.value
    error = abs(value) * (
        numerator.uncertainty / max(abs(numerator.value), 1e-300)
        + denominator.uncertainty / max(abs(denominator.value), 1e-300)
    )
    return Scaling(value=value, uncertainty=error, exponents=exponents, design=numerator.design)


def is_one(value: Scaling) -> bool:
    """Exactly 1 (within its uncertainty) at every design point."""
    return abs(value.value - 1.0) <= max(value.uncertainty, 1e-9) and all(
        p == 0 for p in value.exponents.values()
    )


def offset_allowance(found: Fit, z: float) -> float:
    """How far the fitted intercept may be from the constants it should carry."""
    errors = np.maximum(z * found.standard_errors, found.tolerance)
    return float(errors[found.names.index("constant")] + np.abs(found.constants) @ errors)
