"""tools/check_docstrings.py: its rules catch what they name, and the package passes them.

Runs where numpydoc is installed (CI's frameworks job, which has the docs extra and
every framework, so the adapters in elbo_check.contrib are checked too).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("numpydoc")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import check_docstrings  # noqa: E402


def _complete(x: float, *, scale: float = 1.0) -> float:
    """Scale a number.

    Parameters
    ----------
    x : float
        The number.
    scale : float, optional
        The factor (default 1.0).

    Returns
    -------
    float
        ``scale * x``.

    Raises
    ------
    ValueError
        If ``scale`` is negative.

    Examples
    --------
    >>> _complete(2.0, scale=3.0)
    6.0
    """
    if scale < 0:
        raise ValueError("scale must be >= 0")
    return scale * x


def _without_raises(x: float) -> float:
    """Double a number.

    Parameters
    ----------
    x : float
        The number.

    Returns
    -------
    float
        ``2 x``.

    Examples
    --------
    >>> _without_raises(1.0)
    2.0
    """
    return 2 * x


def _bare(x: float, y: float) -> float:
    """Add two numbers."""
    return x + y


@pytest.fixture
def fake_module(monkeypatch: pytest.MonkeyPatch) -> str:
    """A module numpydoc can import the three functions from."""
    module = types.ModuleType("elbo_check_fake_docstrings")
    for function in (_complete, _without_raises, _bare):
        function.__module__ = module.__name__
        setattr(module, function.__name__, function)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module.__name__


def _codes(module: str, name: str) -> set[str]:
    function = getattr(sys.modules[module], name)
    return {finding.code for finding in check_docstrings.check(f"{module}.{name}", function)}


def test_a_complete_docstring_has_no_findings(fake_module: str) -> None:
    assert _codes(fake_module, "_complete") == set()


def test_a_missing_raises_section_is_found(fake_module: str) -> None:
    assert _codes(fake_module, "_without_raises") == {"XR01"}


def test_missing_parameters_returns_examples_and_raises_are_found(fake_module: str) -> None:
    assert {"PR01", "RT01", "EX01", "XR01"} <= _codes(fake_module, "_bare")


def test_a_closed_form_needs_its_formula_and_a_source(
    fake_module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = f"{fake_module}._complete"
    monkeypatch.setattr(check_docstrings, "CLOSED_FORMS", frozenset({path}))
    findings = check_docstrings.check(path, sys.modules[fake_module]._complete)
    messages = [f.message for f in findings if f.code == "XM01"]
    assert len(messages) == 2, messages


def test_every_public_callable_passes() -> None:
    """The CI check itself: no finding on any public callable (frameworks included)."""
    findings = check_docstrings.run()
    assert not findings, "\n".join(map(str, findings))
