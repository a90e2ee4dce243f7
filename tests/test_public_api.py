"""The public surface: each public module's ``__all__`` is sorted, complete and real."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

MODULES = ["elbo_check", "elbo_check.testing", "elbo_check.strategies", "elbo_check.gp"]


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's RUF022 order: SCREAMING_CASE, then CamelCase, then the rest."""
    if re.fullmatch(r"[A-Z0-9_]+", name):
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_and_every_name_exists(name: str) -> None:
    module = importlib.import_module(name)
    names = list(module.__all__)
    assert names == sorted(names, key=_isort_key)
    assert len(set(names)) == len(names)
    for public in names:
        assert hasattr(module, public), public


def _defined_in(module: str, package: str) -> bool:
    """Defined in ``package`` itself or in one of its private submodules."""
    return module == package or module.startswith(package + "._")


@pytest.mark.parametrize("name", MODULES)
def test_every_public_function_and_class_is_in_all(name: str) -> None:
    module = importlib.import_module(name)
    defined = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and _defined_in(getattr(value, "__module__", ""), name)
    }
    assert defined <= set(module.__all__), defined - set(module.__all__)


def test_testing_names_say_where_they_are_documented() -> None:
    testing = importlib.import_module("elbo_check.testing")
    for public in testing.__all__:
        value = getattr(testing, public)
        if inspect.isfunction(value) or inspect.isclass(value):
            assert value.__module__ == "elbo_check.testing", public
