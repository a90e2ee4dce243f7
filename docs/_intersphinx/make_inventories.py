"""Write the small offline intersphinx inventories in this folder.

The documentation links to NumPy, SciPy, Hypothesis and Python, but neither CI nor the
developers' machines can download the projects' own ``objects.inv``. So the handful of
objects these docs and the package's docstrings refer to are listed below, each with its
page on the upstream site, and written as Sphinx inventories (format version 2) that
``docs/conf.py`` hands to :mod:`sphinx.ext.intersphinx` as local files::

    python -m pip install sphobjinv      # a build-time tool only
    python docs/_intersphinx/make_inventories.py

Add an entry here when the docs start to reference a new upstream object, rerun the
script and commit the regenerated ``*.inv`` files. URIs are relative to the base URL of
each project in ``intersphinx_mapping``; a trailing ``$`` stands for the object's name
(the usual inventory shorthand).
"""

from __future__ import annotations

from pathlib import Path

import sphobjinv as soi

HERE = Path(__file__).resolve().parent

# (name, domain:role, uri, display name) -- display name "-" means "same as name".
Entry = tuple[str, str, str, str]

PYTHON: list[Entry] = [
    ("bool", "py:class", "library/functions.html#$", "-"),
    ("bytes", "py:class", "library/stdtypes.html#$", "-"),
    ("callable", "py:function", "library/functions.html#$", "-"),
    ("dict", "py:class", "library/stdtypes.html#$", "-"),
    ("float", "py:class", "library/functions.html#$", "-"),
    ("int", "py:class", "library/functions.html#$", "-"),
    ("list", "py:class", "library/stdtypes.html#$", "-"),
    ("object", "py:class", "library/functions.html#$", "-"),
    ("property", "py:class", "library/functions.html#$", "-"),
    ("str", "py:class", "library/stdtypes.html#$", "-"),
    ("tuple", "py:class", "library/stdtypes.html#$", "-"),
    ("None", "py:data", "library/constants.html#$", "-"),
    ("True", "py:data", "library/constants.html#$", "-"),
    ("False", "py:data", "library/constants.html#$", "-"),
    ("Ellipsis", "py:data", "library/constants.html#$", "-"),
    ("AssertionError", "py:exception", "library/exceptions.html#$", "-"),
    ("Exception", "py:exception", "library/exceptions.html#$", "-"),
    ("RuntimeWarning", "py:exception", "library/exceptions.html#$", "-"),
    ("TypeError", "py:exception", "library/exceptions.html#$", "-"),
    ("ValueError", "py:exception", "library/exceptions.html#$", "-"),
    ("collections.abc.Callable", "py:class", "library/collections.abc.html#$", "-"),
    ("collections.abc.Iterator", "py:class", "library/collections.abc.html#$", "-"),
    ("collections.abc.Sequence", "py:class", "library/collections.abc.html#$", "-"),
    ("dataclasses.dataclass", "py:function", "library/dataclasses.html#$", "-"),
    ("functools.cached_property", "py:function", "library/functools.html#$", "-"),
    ("random.Random", "py:class", "library/random.html#$", "-"),
    ("typing.Any", "py:data", "library/typing.html#$", "-"),
    ("doctest", "py:module", "library/doctest.html#module-doctest", "-"),
    ("bltin-boolean-values", "std:label", "library/stdtypes.html#$", "Boolean Values"),
    ("iterable", "std:term", "glossary.html#term-iterable", "-"),
    ("sequence", "std:term", "glossary.html#term-sequence", "-"),
]

NUMPY: list[Entry] = [
    ("numpy", "py:module", "reference/index.html#module-numpy", "-"),
    ("numpy.ndarray", "py:class", "reference/generated/numpy.ndarray.html#$", "-"),
    ("numpy.float64", "py:attribute", "reference/arrays.scalars.html#$", "-"),
    ("numpy.integer", "py:class", "reference/arrays.scalars.html#$", "-"),
    ("numpy.isclose", "py:function", "reference/generated/numpy.isclose.html#$", "-"),
    (
        "numpy.linalg.cholesky",
        "py:function",
        "reference/generated/numpy.linalg.cholesky.html#$",
        "-",
    ),
    ("numpy.linalg.det", "py:function", "reference/generated/numpy.linalg.det.html#$", "-"),
    ("numpy.linalg.inv", "py:function", "reference/generated/numpy.linalg.inv.html#$", "-"),
    ("numpy.linalg.slogdet", "py:function", "reference/generated/numpy.linalg.slogdet.html#$", "-"),
    ("numpy.random.Generator", "py:class", "reference/random/generator.html#$", "-"),
    (
        "numpy.random.Generator.standard_normal",
        "py:method",
        "reference/random/generated/numpy.random.Generator.standard_normal.html#$",
        "-",
    ),
    ("numpy.random.default_rng", "py:function", "reference/random/generator.html#$", "-"),
    # The same class under the names annotations give it: its defining module, and
    # "np." in modules that import numpy only for type checking.
    (
        "numpy.random._generator.Generator",
        "py:class",
        "reference/random/generator.html#numpy.random.Generator",
        "numpy.random.Generator",
    ),
    (
        "np.random.Generator",
        "py:class",
        "reference/random/generator.html#numpy.random.Generator",
        "numpy.random.Generator",
    ),
    (
        "numpy.random.SeedSequence",
        "py:class",
        "reference/random/bit_generators/generated/numpy.random.SeedSequence.html#$",
        "-",
    ),
    ("numpy.random.RandomState", "py:class", "reference/random/legacy.html#$", "-"),
    # Type aliases, listed as classes so that annotations (py:class references) find them.
    ("numpy.typing.ArrayLike", "py:class", "reference/typing.html#$", "-"),
    ("numpy.typing.NDArray", "py:class", "reference/typing.html#$", "-"),
    ("array_like", "std:term", "glossary.html#term-array_like", "-"),
    ("arrays.scalars", "std:label", "reference/arrays.scalars.html#$", "Scalars"),
]

SCIPY: list[Entry] = [
    (
        "scipy.linalg.cholesky",
        "py:function",
        "reference/generated/scipy.linalg.cholesky.html#$",
        "-",
    ),
    ("scipy.linalg.expm", "py:function", "reference/generated/scipy.linalg.expm.html#$", "-"),
    ("scipy.linalg.qr", "py:function", "reference/generated/scipy.linalg.qr.html#$", "-"),
    (
        "scipy.linalg.solve_triangular",
        "py:function",
        "reference/generated/scipy.linalg.solve_triangular.html#$",
        "-",
    ),
    (
        "scipy.stats.multivariate_normal",
        "py:data",
        "reference/generated/scipy.stats.multivariate_normal.html#$",
        "-",
    ),
    ("scipy.stats.t", "py:data", "reference/generated/scipy.stats.t.html#$", "-"),
]

HYPOTHESIS: list[Entry] = [
    ("hypothesis.given", "py:function", "reference/api.html#$", "-"),
    ("hypothesis.example", "py:class", "reference/api.html#$", "-"),
    ("hypothesis.settings", "py:class", "reference/api.html#$", "-"),
    ("hypothesis.HealthCheck", "py:class", "reference/api.html#$", "-"),
    ("hypothesis.Phase", "py:class", "reference/api.html#$", "-"),
    ("hypothesis.errors.InvalidArgument", "py:class", "reference/api.html#$", "-"),
    ("hypothesis.strategies.SearchStrategy", "py:class", "reference/strategies.html#$", "-"),
    ("hypothesis.strategies.DrawFn", "py:class", "reference/strategies.html#$", "-"),
    ("hypothesis.strategies.composite", "py:function", "reference/strategies.html#$", "-"),
    ("hypothesis.strategies.integers", "py:function", "reference/strategies.html#$", "-"),
    ("hypothesis.strategies.floats", "py:function", "reference/strategies.html#$", "-"),
    ("hypothesis.strategies.just", "py:function", "reference/strategies.html#$", "-"),
    ("hypothesis.strategies.sampled_from", "py:function", "reference/strategies.html#$", "-"),
    ("hypothesis.strategies.random_module", "py:function", "reference/strategies.html#$", "-"),
    ("hypothesis.register_random", "py:function", "reference/strategies.html#$", "-"),
]

#: file stem -> (project, version, entries); the base URLs live in docs/conf.py.
INVENTORIES: dict[str, tuple[str, str, list[Entry]]] = {
    "python": ("Python", "3", PYTHON),
    "numpy": ("NumPy", "stable", NUMPY),
    "scipy": ("SciPy", "stable", SCIPY),
    "hypothesis": ("Hypothesis", "latest", HYPOTHESIS),
}


def build(project: str, version: str, entries: list[Entry]) -> soi.Inventory:
    """An inventory holding ``entries``, sorted so that the output is reproducible."""
    inventory = soi.Inventory()
    inventory.project = project
    inventory.version = version
    for name, kind, uri, dispname in sorted(entries):
        domain, role = kind.split(":")
        inventory.objects.append(
            soi.DataObjStr(
                name=name, domain=domain, role=role, priority="1", uri=uri, dispname=dispname
            )
        )
    return inventory


def main() -> None:
    for stem, (project, version, entries) in INVENTORIES.items():
        names = [name for name, *_ in entries]
        if len(names) != len(set(names)):
            raise SystemExit(f"{stem}: duplicate names in the entry list")
        inventory = build(project, version, entries)
        target = HERE / f"{stem}.inv"
        soi.writebytes(str(target), soi.compress(inventory.data_file(contract=True)))
        print(f"wrote {target.name}: {len(entries)} objects")


if __name__ == "__main__":
    main()
