"""The mutation-testing script tools/mutation.py: mutant generation and bookkeeping.

Fast unit tests of the tool itself; no mutant is run here.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
import textwrap
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

TOOL = Path(__file__).resolve().parent.parent / "tools" / "mutation.py"


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("elbo_check_mutation_tool", TOOL)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


mutation = _load_tool()

SAMPLE = textwrap.dedent(
    '''\
    """Module docstring 1 + 2."""

    import numpy as np

    __all__ = ["f", "g"]
    LIMIT: Annotated[float, 7] = 0.5


    def f(a: np.ndarray, k: int = 2) -> np.ndarray:
        """Docstring with 0 and True."""
        if a.ndim < 2 and not k:
            raise ValueError(f"bad {k + 1}")
        b = np.swapaxes(a, -1, -2) * 1.0
        c = np.sum(a.T - b, axis=-1)
        total = 0
        total += k ** 2
        return scipy_like(c[:k], lower=True, check_finite=False)


    def g(x: list[int]) -> None:
        """Validate only."""
        check(
            x,
            1,
        )
        y = -x[0]  # pragma: no mutate
        print(y == 3 or y != 4)
    '''
)


@pytest.fixture(scope="module")
def mutants() -> list[Any]:
    return list(mutation.generate_mutants("pkg/sample.py", SAMPLE))


def _lines(mutants: list[Any]) -> set[int]:
    return {m.line for m in mutants}


def test_every_operator_is_generated(mutants: list[Any]) -> None:
    counts = Counter(m.operator for m in mutants)
    assert set(counts) == set(mutation.OPERATORS)


def test_mutants_parse_differ_and_have_unique_stable_ids(mutants: list[Any]) -> None:
    ids = [m.id for m in mutants]
    assert len(ids) == len(set(ids))
    again = [m.id for m in mutation.generate_mutants("pkg/sample.py", SAMPLE)]
    assert again == ids
    for m in mutants:
        mutated = m.apply(SAMPLE)
        assert mutated != SAMPLE
        ast.parse(mutated)
    module, line, col, operator, index = ids[0].rsplit(":", 4)
    assert module == "pkg/sample.py"
    assert (int(line), int(col), int(index)) == (mutants[0].line, mutants[0].col, 0)
    assert operator in mutation.OPERATORS


def test_skipped_regions(mutants: list[Any]) -> None:
    lines = _lines(mutants)
    assert not lines & {1, 5, 10, 12}  # docstrings, __all__, raise
    assert 26 not in lines  # pragma: no mutate
    assert 6 in lines  # the value of an annotated assignment is mutated
    descriptions = {(m.line, m.description) for m in mutants}
    assert (9, "2 -> 3") in descriptions  # a default value is mutated
    assert (6, "7 -> 8") not in descriptions  # an annotation is not


@pytest.mark.parametrize(
    ("line", "old", "new"),
    [
        (11, "a.ndim < 2 and not k", "a.ndim < 2 or not k"),
        (11, "<", "<="),
        (11, "<", ">"),
        (11, "not k", "k"),
        (13, "np.swapaxes(a, -1, -2)", "a"),
        (13, "1.0", "0.0"),
        (14, "a.T", "a"),
        (14, "-1", "-2"),
        (14, "-", "+"),
        (16, "total += k ** 2", "pass"),
        (16, "**", "*"),
        (16, "+=", "-="),
        (17, "c[:k]", "c[k:]"),
        (17, "lower=True", "lower=False"),
        (17, "scipy_like(c[:k], lower=True)", None),
        (27, "y == 3 or y != 4", "y == 3 and y != 4"),
    ],
)
def test_expected_mutations(mutants: list[Any], line: int, old: str, new: str | None) -> None:
    source_line = SAMPLE.splitlines()[line - 1]
    mutated_lines = {m.apply(SAMPLE).splitlines()[line - 1] for m in mutants if m.line == line}
    if new is None:  # keyword removal: the expected line contains ``old`` verbatim
        assert any(old in text for text in mutated_lines), mutated_lines
        return
    assert old in source_line
    assert source_line.replace(old, new, 1) in mutated_lines, mutated_lines


def test_statement_deletion_keeps_line_numbers(mutants: list[Any]) -> None:
    (call,) = [m for m in mutants if m.operator == "stmt_delete" and m.line == 22]
    mutated = call.apply(SAMPLE)
    assert len(mutated.splitlines()) == len(SAMPLE.splitlines())
    assert mutated.splitlines()[21].strip() == "pass"
    assert mutated.splitlines()[25] == SAMPLE.splitlines()[25]


def test_early_return_only_for_functions_returning_none(mutants: list[Any]) -> None:
    (early,) = [m for m in mutants if m.operator == "early_return"]
    assert early.line == 22
    assert '"""Validate only."""; return' in early.apply(SAMPLE)


def test_diff_is_a_unified_diff(mutants: list[Any]) -> None:
    diff = mutants[0].diff(SAMPLE)
    assert diff.startswith("--- a/pkg/sample.py\n+++ b/pkg/sample.py\n@@")


def _record(ident: str, status: str) -> dict[str, object]:
    module = ident.rsplit(":", 4)[0]
    return {
        "kind": "mutant",
        "id": ident,
        "module": module,
        "status": status,
        "source_sha": "x",
        "diff": f"diff of {ident}",
    }


def test_summary_scores_and_equivalents(tmp_path: Path) -> None:
    records = [
        _record("m.py:1:0:number:0", "killed"),
        _record("m.py:2:0:number:0", "timeout"),
        _record("m.py:3:0:number:0", "survived"),
        _record("m.py:4:0:number:0", "survived"),
        _record("n.py:1:0:arith:0", "survived"),
        _record("n.py:1:0:arith:0", "killed"),  # a later record of the same mutant wins
    ]
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"kind": "mu')
    loaded = mutation.load_results(path)  # the cut-short last line is ignored
    assert len(loaded) == len(records)
    equivalents_file = tmp_path / "equivalent.txt"
    equivalents_file.write_text("# comment\nm.py:4:0:number:0  same value either way\n")
    equivalents = mutation.load_equivalents(equivalents_file)
    assert equivalents == {"m.py:4:0:number:0": "same value either way"}
    text = mutation.summarize(loaded, equivalents)
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line[:1].isalpha()}
    # columns: killed timeout survived error equivalent total score
    assert rows["m.py"][1:] == ["1", "1", "1", "0", "1", "4", "66.7%"]
    assert rows["n.py"][1:] == ["1", "0", "0", "0", "0", "1", "100.0%"]
    assert rows["overall"][1:] == ["2", "1", "1", "0", "1", "5", "75.0%"]
    assert "survivors: 1" in text
    assert "diff of m.py:3:0:number:0" in text
    assert "m.py:4:0:number:0  same value either way" in text


def test_test_selection(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("from pkg import _thing\n")
    (tmp_path / "tests" / "test_b.py").write_text("nothing here\n")
    overrides = mutation._overrides(["pkg/_x.py=tests/test_b.py", "tests/test_c.py"])
    assert overrides == {"pkg/_x.py": ["tests/test_b.py"], "*": ["tests/test_c.py"]}
    assert mutation.tests_for("pkg/_x.py", overrides, tmp_path) == ["tests/test_b.py"]
    assert mutation.tests_for("pkg/_y.py", overrides, tmp_path) == ["tests/test_c.py"]
    assert mutation.tests_for("pkg/_thing.py", {}, tmp_path) == ["tests/test_a.py"]
    assert mutation.tests_for("pkg/_other.py", {}, tmp_path) == ["tests"]
