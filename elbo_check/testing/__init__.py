"""Verify a user's ELBO, KL, log-evidence, Monte-Carlo estimator and gradient code.

Each ``verify_*`` function calls the user's code on many linear-Gaussian problems
drawn by :mod:`elbo_check.strategies`, compares with the exact oracle and, on a
mismatch, raises an :class:`AssertionError` that shows the *minimal* counterexample
hypothesis could shrink to (dimensions, parameters, expected, got, gap, tolerance)
and a diagnosis of which term is wrong. On success it returns a
:class:`VerificationReport`.

Deterministic checks (``verify_elbo``, ``verify_kl``, ``verify_log_evidence``, the
``"exact"`` and ``"pathwise"`` modes of the estimator and gradient checks) compare
within ``rtol`` of the magnitudes of the terms involved plus ``atol``. Statistical
checks (``mode="statistical"``: Monte-Carlo estimators of the ELBO and of its gradient)
are z-tests on batch means with a stated false-alarm rate, Bonferroni-corrected over
every comparison in the call. Every verifier takes the same options, spelled and
validated the same way (``problems``, ``q_kinds``, ``batch_size``, ``seed``,
``profile``, ``rtol``, ``atol``, ``dtype``, ``time_budget``, ...).

The verifiers are meant to be called from ordinary tests. Inside a test that is
itself decorated with ``@given`` use the single-case checks (:func:`check_elbo`, ...)
on the drawn objects instead.
"""

from __future__ import annotations

from inspect import isfunction as _isfunction

from ._check_bound_estimator import verify_iwae_estimator, verify_renyi_estimator
from ._check_bound_gradient import verify_iwae_gradient, verify_renyi_gradient
from ._check_elbo import verify_elbo
from ._check_estimator import verify_elbo_estimator
from ._check_gradient import verify_elbo_gradient
from ._check_kl import verify_kl
from ._check_log_evidence import verify_log_evidence
from ._check_minibatch import verify_minibatch_elbo
from ._check_one import check_elbo
from ._doctor import diagnose_loss
from ._doctor_report import LossDiagnosis
from ._forms import ANALYTIC_ENTROPY, ANALYTIC_KL, FORMS, JOINT, ElboForm, check_form
from ._low_rank import ScaledLowRank
from ._options import BATCHES, DEFAULT_FALSE_ALARM_RATE, PROFILES
from ._parametrisations import (
    Custom,
    DiagonalLogScale,
    DiagonalLogVariance,
    DiagonalSoftplusScale,
    FullCholesky,
    FullCovariance,
    FullPrecision,
    FullUnitCholeskyScale,
    Parametrisation,
)
from ._report import VerificationReport

__all__ = [
    "ANALYTIC_ENTROPY",
    "ANALYTIC_KL",
    "BATCHES",
    "DEFAULT_FALSE_ALARM_RATE",
    "FORMS",
    "JOINT",
    "PROFILES",
    "Custom",
    "DiagonalLogScale",
    "DiagonalLogVariance",
    "DiagonalSoftplusScale",
    "ElboForm",
    "FullCholesky",
    "FullCovariance",
    "FullPrecision",
    "FullUnitCholeskyScale",
    "LossDiagnosis",
    "Parametrisation",
    "ScaledLowRank",
    "VerificationReport",
    "check_elbo",
    "check_form",
    "diagnose_loss",
    "verify_elbo",
    "verify_elbo_estimator",
    "verify_elbo_gradient",
    "verify_iwae_estimator",
    "verify_iwae_gradient",
    "verify_kl",
    "verify_log_evidence",
    "verify_minibatch_elbo",
    "verify_renyi_estimator",
    "verify_renyi_gradient",
]

# Public objects say they live here, where the docs and users import them from. Their
# methods too: doctest's finder (``pytest --doctest-modules``) runs a method's examples
# only from the module its ``__module__`` names, and the class is found only here.
for _name in __all__:
    _obj = globals()[_name]
    if (isinstance(_obj, type) or _isfunction(_obj)) and _obj.__module__.startswith(
        f"{__name__}._"
    ):
        _obj.__module__ = __name__
        for _member in vars(_obj).values() if isinstance(_obj, type) else ():
            _function = getattr(_member, "__func__", _member)
            if _isfunction(_function) and _function.__module__.startswith(f"{__name__}._"):
                _function.__module__ = __name__
del _name, _obj, _member, _function
