"""Check the docstring of every public callable against the project's numpydoc rules.

Usage::

    python tools/check_docstrings.py            # every public module, exit 1 on a finding
    python tools/check_docstrings.py --summary  # only the counts per rule
    python tools/check_docstrings.py --skip-unimportable   # without the frameworks

A *public callable* is a function or class named in the ``__all__`` of a public module
(:data:`PUBLIC_MODULES`), and every public method or classmethod of such a class
(properties and data are not callables and are left to the prose). Each is run through
numpydoc's own validation (:func:`numpydoc.validate.validate`) with the rules in
:data:`NUMPYDOC_RULES`, plus two rules of this project's:

``XR01``
    A callable that takes an argument has a ``Raises`` section: every public entry
    point validates its arguments and says which exception a bad one gets.
``XM01``
    A closed form (:data:`CLOSED_FORMS`) shows its formula (``.. math::``) and cites a
    source (a ``References`` section).

CI runs this in the job where every optional framework is installed (``.ci/run``), so
the adapters in ``elbo_check.contrib`` are checked too; ``tests/test_docstrings.py``
runs it over the modules that need no framework.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import inspect
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The modules whose ``__all__`` is the public surface.
PUBLIC_MODULES = (
    "elbo_check",
    "elbo_check.testing",
    "elbo_check.strategies",
    "elbo_check.gp",
    "elbo_check.contrib.torch",
    "elbo_check.contrib.pyro",
    "elbo_check.contrib.jax",
    "elbo_check.contrib.numpyro",
)

#: The modules that import an optional framework.
FRAMEWORK_MODULES = frozenset(name for name in PUBLIC_MODULES if ".contrib." in name)

#: numpydoc's rules that a public callable must pass (numpydoc.validate.ERROR_MSGS).
NUMPYDOC_RULES = frozenset(
    {
        "GL08",  # no docstring
        "SS01",  # no summary
        "SS02",  # summary does not start with a capital letter
        "SS03",  # summary does not end with a period
        "SS06",  # summary longer than one line
        "PR01",  # a parameter is not documented
        "PR02",  # a documented parameter does not exist
        "PR03",  # parameters documented in the wrong order
        "PR07",  # a parameter has no description
        "RT01",  # no Returns section for a callable that returns something
        "RT03",  # a return value has no description
        "YD01",  # no Yields section for a generator
        "EX01",  # no Examples section
    }
)

#: The closed forms: each shows its formula and cites its source (rule XM01).
CLOSED_FORMS = frozenset(
    {
        "elbo_check.kl_divergence",
        "elbo_check.cross_entropy",
        "elbo_check.Gaussian.log_prob",
        "elbo_check.Gaussian.entropy",
        "elbo_check.LinearGaussianModel.marginal",
        "elbo_check.LinearGaussianModel.log_evidence",
        "elbo_check.LinearGaussianModel.posterior",
        "elbo_check.LinearGaussianModel.log_likelihood",
        "elbo_check.LinearGaussianModel.log_joint",
        "elbo_check.LinearGaussianModel.elbo_terms",
        "elbo_check.LinearGaussianModel.elbo",
        "elbo_check.LinearGaussianModel.kl_to_posterior",
        "elbo_check.LinearGaussianModel.elbo_grad_variational",
        "elbo_check.LinearGaussianModel.elbo_grad_model",
        "elbo_check.LinearGaussianModel.dataset_elbo",
        "elbo_check.LinearGaussianModel.dataset_elbo_grad",
        "elbo_check.LinearGaussianModel.optimal_encoder",
        "elbo_check.LinearGaussianModel.renyi_bound",
        "elbo_check.LinearGaussianModel.renyi_divergence_to_posterior",
        "elbo_check.LinearGaussianModel.renyi_alpha_interval",
        "elbo_check.LinearGaussianModel.cubo",
        "elbo_check.LinearGaussianModel.importance_weight_moment",
        "elbo_check.LinearGaussianModel.importance_weight_stats",
        "elbo_check.LinearGaussianModel.renyi_bound_grad_variational",
        "elbo_check.gp.GPRegression.log_marginal_likelihood",
        "elbo_check.gp.GPRegression.predict",
        "elbo_check.gp.SparseGP.collapsed_bound",
        "elbo_check.gp.SparseGP.upper_bound",
        "elbo_check.gp.SparseGP.svgp_elbo",
        "elbo_check.gp.SparseGP.optimal_inducing_distribution",
        "elbo_check.gp.SparseGP.svgp_elbo_grad",
    }
)


@dataclass(frozen=True)
class Finding:
    """One rule that one public callable breaks."""

    path: str
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.code} {self.message}"


def _is_public_method(value: object) -> bool:
    function = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
    return inspect.isfunction(function)


def public_callables(*, skip_unimportable: bool = False) -> Iterator[tuple[str, object]]:
    """Yield ``(import path, object)`` for every public callable, each once."""
    seen: set[str] = set()
    for module_name in PUBLIC_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            if skip_unimportable and module_name in FRAMEWORK_MODULES:
                continue
            raise
        for name in module.__all__:
            value = getattr(module, name)
            if not (inspect.isclass(value) or inspect.isfunction(value)):
                continue
            path = f"{module_name}.{name}"
            if path in seen:
                continue
            seen.add(path)
            yield path, value
            if not inspect.isclass(value):
                continue
            for attribute, member in vars(value).items():
                if attribute.startswith("_") or not _is_public_method(member):
                    continue
                yield f"{path}.{attribute}", getattr(value, attribute)


def _takes_arguments(value: object) -> bool:
    # A class counts by its own __init__ or __new__ (a dataclass's generated __init__
    # included), not object's.
    if (
        inspect.isclass(value)
        and "__init__" not in vars(value)
        and "__new__" not in vars(value)
        and not hasattr(value, "__dataclass_fields__")
    ):
        return False
    try:
        signature = inspect.signature(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return any(name not in ("self", "cls") for name in signature.parameters)


def _sections(value: object) -> dict[str, object]:
    from numpydoc.docscrape import ClassDoc, FunctionDoc

    doc = ClassDoc(value) if inspect.isclass(value) else FunctionDoc(value)
    return {"Raises": doc["Raises"], "References": doc["References"]}


def check(path: str, value: object) -> list[Finding]:
    """The findings for one public callable."""
    from numpydoc.validate import validate

    findings = [
        Finding(path, code, message)
        for code, message in validate(path)["errors"]
        if code in NUMPYDOC_RULES
    ]
    if any(finding.code == "GL08" for finding in findings):
        return findings
    sections = _sections(value)
    if _takes_arguments(value) and not sections["Raises"]:
        findings.append(Finding(path, "XR01", "No Raises section for a callable with arguments"))
    if path in CLOSED_FORMS:
        docstring = inspect.getdoc(value) or ""
        if ".. math::" not in docstring:
            findings.append(Finding(path, "XM01", "A closed form without its formula (.. math::)"))
        if not sections["References"]:
            findings.append(Finding(path, "XM01", "A closed form without a References section"))
    return findings


def run(*, skip_unimportable: bool = False) -> list[Finding]:
    """Every finding over the public surface (see the module docstring)."""
    findings: list[Finding] = []
    checked: set[str] = set()
    for path, value in public_callables(skip_unimportable=skip_unimportable):
        checked.add(path)
        findings.extend(check(path, value))
    missing = sorted(CLOSED_FORMS - checked)
    findings.extend(Finding(path, "XM01", "listed closed form is not public") for path in missing)
    return findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summary", action="store_true", help="print only the counts")
    parser.add_argument(
        "--skip-unimportable",
        action="store_true",
        help="skip an elbo_check.contrib module whose framework is not installed",
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    findings = run(skip_unimportable=args.skip_unimportable)
    if not args.summary:
        for finding in findings:
            print(finding)
    counts = collections.Counter(finding.code for finding in findings)
    paths = {finding.path for finding in findings}
    total = sum(1 for _ in public_callables(skip_unimportable=args.skip_unimportable))
    print(
        f"{len(findings)} findings on {len(paths)} of {total} public callables"
        + (": " + ", ".join(f"{code} {n}" for code, n in sorted(counts.items())) if counts else "")
    )
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
