#!/usr/bin/env python3
"""Small, dependency-free, AST-based mutation testing for elbo_check.

Mutants are generated from the AST of a module but applied as text: each mutation
replaces the source segment of one node (or one operator token), so the rest of the
file keeps its text and, where practical, its line numbers. Every mutant runs in a
private copy of the tree (one per worker), never in the working tree, with the test
files mapped to its module. See tools/README.md for usage.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import dataclasses
import difflib
import hashlib
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

REPO = Path(__file__).resolve().parent.parent
EQUIVALENT_FILE = REPO / "tools" / "equivalent_mutants.txt"
PRAGMA = "pragma: no mutate"

#: Which test files exercise which module (found by grepping the tests for what they
#: import and call; the public API is re-exported from elbo_check/__init__.py, so the
#: table lists the tests that reach a module's code, not only those naming it).
#: Override with ``--tests MODULE=FILE[,FILE...]``; a module missing here gets the
#: test files that mention its name, else the whole suite.
DEFAULT_TESTS: dict[str, tuple[str, ...]] = {
    "elbo_check/_linalg.py": (
        "tests/test_gaussian.py",
        "tests/test_validation.py",
        "tests/test_identities.py",
        "tests/test_batched_covariances.py",
    ),
    "elbo_check/_gaussian.py": (
        "tests/test_gaussian.py",
        "tests/test_validation.py",
        "tests/test_batched_covariances.py",
    ),
    "elbo_check/_noise.py": (
        "tests/test_reference_routes.py",
        "tests/test_validation.py",
        "tests/test_identities.py",
    ),
    "elbo_check/_model.py": (
        "tests/test_reference_routes.py",
        "tests/test_identities.py",
        "tests/test_gradients.py",
        "tests/test_blocks.py",
        "tests/test_validation.py",
        "tests/test_batched_covariances.py",
    ),
    "elbo_check/_encoder.py": (
        "tests/test_encoder.py",
        "tests/test_gradients.py",
        "tests/test_validation.py",
    ),
    "elbo_check/_marginal.py": (
        "tests/test_reference_routes.py",
        "tests/test_identities.py",
        "tests/test_blocks.py",
        "tests/test_validation.py",
    ),
    "elbo_check/_compensated.py": (  # used through _marginal
        "tests/test_reference_routes.py",
        "tests/test_identities.py",
    ),
    "elbo_check/_gradients.py": (
        "tests/test_gradients.py",
        "tests/test_encoder.py",
        "tests/test_batched_covariances.py",
    ),
    "elbo_check/_blocks.py": (
        "tests/test_blocks.py",
        "tests/test_scaling.py",
        "tests/test_identities.py",
    ),
    "elbo_check/_validation.py": ("tests/test_validation.py",),
    "elbo_check/_families.py": ("tests/test_families.py",),
}

PYTEST_ARGS = ("-x", "-q", "-p", "no:randomly", "-p", "no:cacheprovider")
COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    "__pycache__",
    "*.pyc",
    "*.egg-info",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    ".tox",
    "build",
    "dist",
    "_build",
)
LOGGING_NAMES = frozenset({"logging", "logger", "log", "_log", "_logger", "LOGGER", "LOG"})
TRANSPOSE_FUNCS = frozenset({"swapaxes", "transpose", "moveaxis", "matrix_transpose"})
AXIS_KEYWORDS = frozenset({"axis", "axis1", "axis2"})
AXIS_VALUES = (-1, -2, 0)

ARITH_SWAPS: dict[type[ast.operator], tuple[type[ast.operator], ...]] = {
    ast.Add: (ast.Sub,),
    ast.Sub: (ast.Add,),
    ast.Mult: (ast.Div,),
    ast.Div: (ast.Mult,),
    ast.FloorDiv: (ast.Div,),
    ast.Pow: (ast.Mult,),
    ast.Mod: (ast.FloorDiv,),
}
BITWISE_SWAPS: dict[type[ast.operator], tuple[type[ast.operator], ...]] = {
    ast.BitAnd: (ast.BitOr,),
    ast.BitOr: (ast.BitAnd,),
}
OP_TEXT: dict[type[ast.AST], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Pow: "**",
    ast.Mod: "%",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.MatMult: "@",
    ast.BitXor: "^",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
}
COMPARE_SWAPS: dict[type[ast.cmpop], tuple[type[ast.cmpop], ...]] = {
    ast.Lt: (ast.LtE, ast.Gt),
    ast.LtE: (ast.Lt, ast.GtE),
    ast.Gt: (ast.GtE, ast.Lt),
    ast.GtE: (ast.Gt, ast.LtE),
    ast.Eq: (ast.NotEq,),
    ast.NotEq: (ast.Eq,),
    ast.Is: (ast.IsNot,),
    ast.IsNot: (ast.Is,),
    ast.In: (ast.NotIn,),
    ast.NotIn: (ast.In,),
}

OPERATORS = (
    "arith",
    "compare",
    "boolean",
    "not_removal",
    "number",
    "unary_minus",
    "bool_swap",
    "kwarg_drop",
    "axis_swap",
    "stmt_delete",
    "transpose_drop",
    "slice",
    "early_return",
)


# --------------------------------------------------------------------------- mutants


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One textual edit of one module: ``source[start:end]`` becomes ``replacement``."""

    module: str
    line: int
    col: int
    operator: str
    index: int
    start: int
    end: int
    replacement: str
    description: str

    @property
    def id(self) -> str:
        return f"{self.module}:{self.line}:{self.col}:{self.operator}:{self.index}"

    def apply(self, source: str) -> str:
        return source[: self.start] + self.replacement + source[self.end :]

    def diff(self, source: str) -> str:
        mutated = self.apply(source)
        lines = difflib.unified_diff(
            source.splitlines(keepends=True),
            mutated.splitlines(keepends=True),
            fromfile=f"a/{self.module}",
            tofile=f"b/{self.module}",
            n=2,
        )
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


@dataclasses.dataclass(frozen=True)
class _Edit:
    line: int
    col: int
    operator: str
    start: int
    end: int
    replacement: str
    description: str


class _Located(Protocol):
    """An AST node with a source position (statements, expressions, keywords)."""

    @property
    def lineno(self) -> int: ...
    @property
    def col_offset(self) -> int: ...
    @property
    def end_lineno(self) -> int | None: ...
    @property
    def end_col_offset(self) -> int | None: ...


class _Source:
    """Offsets into a module's text from AST (line, UTF-8 byte column) positions."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines = text.splitlines(keepends=True)
        self.starts: list[int] = []
        offset = 0
        for line in self.lines:
            self.starts.append(offset)
            offset += len(line)
        self.starts.append(offset)
        self.pragma_lines = {i + 1 for i, line in enumerate(self.lines) if PRAGMA in line}

    def offset(self, lineno: int, byte_col: int) -> int:
        if lineno > len(self.lines):
            return len(self.text)
        prefix = self.lines[lineno - 1].encode("utf-8")[:byte_col]
        return self.starts[lineno - 1] + len(prefix.decode("utf-8", errors="replace"))

    def position(self, offset: int) -> tuple[int, int]:
        """(1-based line, 0-based character column) of a character offset."""
        lo, hi = 0, len(self.lines) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1, offset - self.starts[lo]

    def span(self, node: _Located) -> tuple[int, int]:
        start = self.offset(node.lineno, node.col_offset)
        end_line = node.lineno if node.end_lineno is None else node.end_lineno
        end_col = node.col_offset if node.end_col_offset is None else node.end_col_offset
        return start, self.offset(end_line, end_col)

    def segment(self, node: _Located) -> str:
        start, end = self.span(node)
        return self.text[start:end]


def _find_token(text: str, start: int, end: int, token: str) -> tuple[int, int] | None:
    """Offsets (start, end) of ``token`` (a keyword or operator) in ``text[start:end]``,
    outside comments, or None."""
    gap = text[start:end]
    words = token.split()
    pattern = r"\s+".join(re.escape(w) for w in words)
    if token[0].isalpha():
        pattern = rf"(?<![\w.]){pattern}(?!\w)"
    else:
        # an operator not part of a longer one (``*`` must not match inside ``**``)
        pattern = rf"(?<![*/<>=!]){pattern}(?![*/=])"
    cleaned = re.sub(r"#[^\n]*", lambda m: " " * len(m.group()), gap)
    match = re.search(pattern, cleaned)
    return None if match is None else (start + match.start(), start + match.end())


def _is_docstring(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def _simple_expr(node: ast.expr) -> bool:
    return isinstance(node, ast.Name | ast.Attribute | ast.Call | ast.Subscript | ast.Constant)


def _negative_int(node: ast.expr) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Constant)
        and type(node.operand.value) is int
    ):
        return -node.operand.value
    return None


def _number_variants(value: float) -> list[float]:
    if value == 0:
        return [type(value)(1)]
    if value == 1:
        return [type(value)(0), type(value)(2)]
    if value == 0.5:
        return [1.0]
    return [value + 1, -value]


def _returns_value(func: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    stack: list[ast.AST] = list(func.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Return) and node.value is not None:
            return True
        if isinstance(node, ast.Yield | ast.YieldFrom):
            return True
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        stack.extend(ast.iter_child_nodes(node))
    return False


class _Generator:
    """Walks a module's AST and collects candidate edits."""

    def __init__(self, source: _Source) -> None:
        self.src = source
        self.edits: list[_Edit] = []
        self.axis_values: set[int] = set()  # ids of constants that axis_swap covers

    # helpers -------------------------------------------------------------------
    def _pragma(self, node: ast.AST) -> bool:
        lineno = getattr(node, "lineno", None)
        return lineno in self.src.pragma_lines

    def _add(self, at: int, operator: str, start: int, end: int, new: str, what: str) -> None:
        line, col = self.src.position(at)
        if line in self.src.pragma_lines:
            return
        self.edits.append(_Edit(line, col, operator, start, end, new, what))

    def _replace_node(self, node: _Located, new: str, operator: str, what: str) -> None:
        start, end = self.src.span(node)
        self._add(start, operator, start, end, new, what)

    def _replace_expr(self, node: ast.expr, inner: ast.expr, operator: str, what: str) -> None:
        """Replace ``node`` by its sub-expression ``inner`` (parenthesised if needed)."""
        text = self.src.segment(inner)
        if not _simple_expr(inner):
            text = f"({text})"
        self._replace_node(node, text, operator, what)

    # walk ----------------------------------------------------------------------
    def visit_body(self, body: Sequence[ast.stmt]) -> None:
        for i, stmt in enumerate(body):
            if i == 0 and _is_docstring(stmt):
                continue
            self.visit_stmt(stmt)

    def visit_stmt(self, stmt: ast.stmt) -> None:
        if self._pragma(stmt) and isinstance(
            stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
        ):
            return
        if isinstance(stmt, ast.Import | ast.ImportFrom | ast.Raise | ast.Global | ast.Nonlocal):
            return
        if isinstance(stmt, ast.Expr):
            if isinstance(stmt.value, ast.Constant):
                return
            if isinstance(stmt.value, ast.Call) and self._is_logging(stmt.value):
                return
            if isinstance(stmt.value, ast.Call):
                self._replace_node(stmt, "pass", "stmt_delete", "call statement -> pass")
            self.visit_expr(stmt.value)
            return
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            for default in [*stmt.args.defaults, *stmt.args.kw_defaults]:
                if default is not None:
                    self.visit_expr(default)
            self._early_return(stmt)
            self.visit_body(stmt.body)
            return
        if isinstance(stmt, ast.ClassDef):
            self.visit_body(stmt.body)
            return
        if isinstance(stmt, ast.Assign):
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in stmt.targets):
                return
            for target in stmt.targets:
                self._visit_target(target)
            self.visit_expr(stmt.value)
            return
        if isinstance(stmt, ast.AnnAssign):
            if isinstance(stmt.target, ast.Name) and stmt.target.id == "__all__":
                return
            if stmt.value is not None:
                self.visit_expr(stmt.value)
            return
        if isinstance(stmt, ast.AugAssign):
            if isinstance(stmt.target, ast.Name) and stmt.target.id == "__all__":
                return
            self._replace_node(stmt, "pass", "stmt_delete", "augmented assignment -> pass")
            self._binop_token(stmt.target, stmt.value, stmt.op, suffix="=")
            self._visit_target(stmt.target)
            self.visit_expr(stmt.value)
            return
        if isinstance(stmt, ast.If):
            test = stmt.test
            if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
                return
            if isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING":
                return
        for field, value in ast.iter_fields(stmt):
            if field in ("annotation", "returns", "type_comment"):
                continue
            if isinstance(value, list):
                if value and isinstance(value[0], ast.stmt):
                    self.visit_body(value)
                    continue
                for item in value:
                    self._visit_any(item)
            elif isinstance(value, ast.AST):
                self._visit_any(value)

    def _visit_any(self, node: ast.AST) -> None:
        if isinstance(node, ast.expr):
            self.visit_expr(node)
        elif isinstance(node, ast.stmt):
            self.visit_stmt(node)
        else:  # withitem, excepthandler, comprehension, match_case, ...
            for field, value in ast.iter_fields(node):
                if field in ("annotation", "type"):
                    continue
                if isinstance(value, list):
                    if value and isinstance(value[0], ast.stmt):
                        self.visit_body(value)
                        continue
                    for item in value:
                        if isinstance(item, ast.AST):
                            self._visit_any(item)
                elif isinstance(value, ast.AST):
                    self._visit_any(value)

    def _visit_target(self, target: ast.expr) -> None:
        """Assignment targets: only the index expressions inside them are mutated."""
        if isinstance(target, ast.Subscript):
            self.visit_expr(target.value)
            self.visit_expr(target.slice)
        elif isinstance(target, ast.Attribute):
            self.visit_expr(target.value)
        elif isinstance(target, ast.Tuple | ast.List):
            for elt in target.elts:
                self._visit_target(elt)
        elif isinstance(target, ast.Starred):
            self._visit_target(target.value)

    @staticmethod
    def _is_logging(call: ast.Call) -> bool:
        func = call.func
        while isinstance(func, ast.Attribute):
            if isinstance(func.value, ast.Name) and func.value.id in LOGGING_NAMES:
                return True
            func = func.value
        return False

    def visit_expr(self, node: ast.expr, parent: ast.AST | None = None) -> None:
        if self._pragma(node):
            return
        if isinstance(node, ast.JoinedStr):
            return
        if isinstance(node, ast.Call) and self._is_logging(node):
            return
        self._mutate_expr(node, parent)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self.visit_expr(child, node)
            elif isinstance(child, ast.keyword):
                self.visit_expr(child.value, child)
            elif not isinstance(child, ast.expr_context | ast.operator | ast.cmpop):
                self._visit_any(child)

    # operators -------------------------------------------------------------------
    def _binop_token(
        self,
        left: ast.expr,
        right: ast.expr,
        op: ast.operator,
        suffix: str = "",
        table: dict[type[ast.operator], tuple[type[ast.operator], ...]] | None = None,
        operator: str = "arith",
    ) -> None:
        swaps = (ARITH_SWAPS if table is None else table).get(type(op))
        if not swaps:
            return
        lo = self.src.span(left)[1]
        hi = self.src.span(right)[0]
        token = OP_TEXT[type(op)] + suffix
        found = _find_token(self.src.text, lo, hi, token)
        if found is None:
            return
        for new_op in swaps:
            new_token = OP_TEXT[new_op] + suffix
            self._add(found[0], operator, *found, new_token, f"{token} -> {new_token}")

    def _mutate_expr(self, node: ast.expr, parent: ast.AST | None) -> None:
        if isinstance(node, ast.BinOp):
            self._binop_token(node.left, node.right, node.op)
            self._binop_token(
                node.left, node.right, node.op, table=BITWISE_SWAPS, operator="boolean"
            )
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for i, op in enumerate(node.ops):
                lo = self.src.span(operands[i])[1]
                hi = self.src.span(operands[i + 1])[0]
                token = OP_TEXT[type(op)]
                found = _find_token(self.src.text, lo, hi, token)
                if found is None:
                    continue
                for new_op in COMPARE_SWAPS[type(op)]:
                    new_token = OP_TEXT[new_op]
                    self._add(found[0], "compare", *found, new_token, f"{token} -> {new_token}")
        elif isinstance(node, ast.BoolOp):
            token = "and" if isinstance(node.op, ast.And) else "or"
            new_token = "or" if token == "and" else "and"
            positions = []
            for a, b in zip(node.values, node.values[1:], strict=False):
                found = _find_token(self.src.text, self.src.span(a)[1], self.src.span(b)[0], token)
                if found is None:
                    return
                positions.append(found[0])
            start, end = self.src.span(node)
            text = self.src.text[start:end]
            for at in reversed(positions):
                rel = at - start
                text = text[:rel] + new_token + text[rel + len(token) :]
            self._add(positions[0], "boolean", start, end, text, f"{token} -> {new_token}")
        elif isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not | ast.Invert):
                what = "drop not" if isinstance(node.op, ast.Not) else "drop ~"
                self._replace_expr(node, node.operand, "not_removal", what)
            elif isinstance(node.op, ast.USub):
                self._replace_expr(node, node.operand, "unary_minus", "drop unary minus")
        elif isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool):
                self._replace_node(node, str(not value), "bool_swap", f"{value} -> {not value}")
            elif isinstance(value, int | float) and id(node) not in self.axis_values:
                negated = isinstance(parent, ast.UnaryOp) and isinstance(parent.op, ast.USub)
                for new in _number_variants(value):
                    if negated and new == -value:
                        continue
                    self._replace_node(node, repr(new), "number", f"{value!r} -> {new!r}")
        elif isinstance(node, ast.Attribute):
            if node.attr in ("T", "mT"):
                self._replace_expr(node, node.value, "transpose_drop", f"drop .{node.attr}")
        elif isinstance(node, ast.Call):
            self._mutate_call(node)
        elif isinstance(node, ast.Slice):
            self._mutate_slice(node)

    def _mutate_call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else None
        if name in TRANSPOSE_FUNCS and isinstance(func, ast.Attribute):
            is_np = isinstance(func.value, ast.Name) and func.value.id in ("np", "numpy")
            if is_np and node.args:
                self._replace_expr(node, node.args[0], "transpose_drop", f"drop np.{name}")
            elif not is_np and name in ("swapaxes", "transpose"):
                self._replace_expr(node, func.value, "transpose_drop", f"drop .{name}()")
        arguments: list[ast.expr | ast.keyword] = [*node.args, *node.keywords]
        arguments.sort(key=lambda a: self.src.span(a)[0])
        for i, kw in enumerate(arguments):
            if not isinstance(kw, ast.keyword) or kw.arg is None:
                continue
            value = kw.value
            if isinstance(value, ast.Constant) and isinstance(value.value, bool):
                start, end = self.src.span(kw)
                if i > 0:
                    start = self.src.span(arguments[i - 1])[1]
                elif i + 1 < len(arguments):
                    end = self.src.span(arguments[i + 1])[0]
                self._add(self.src.span(kw)[0], "kwarg_drop", start, end, "", f"drop {kw.arg}=")
            axis = _negative_int(value)
            if kw.arg in AXIS_KEYWORDS and axis in AXIS_VALUES:
                self.axis_values.add(id(value))
                if isinstance(value, ast.UnaryOp):
                    self.axis_values.add(id(value.operand))
                for new in AXIS_VALUES:
                    if new != axis:
                        self._replace_node(value, str(new), "axis_swap", f"{axis} -> {new}")

    def _mutate_slice(self, node: ast.Slice) -> None:
        if node.step is not None:
            return
        start, end = self.src.span(node)
        lower = self.src.segment(node.lower) if node.lower is not None else ""
        upper = self.src.segment(node.upper) if node.upper is not None else ""
        old = self.src.text[start:end]
        if lower and upper:
            variants = [f"{lower}:", f":{upper}"]
        elif upper:
            variants = [f"{upper}:", ":"]
        elif lower:
            variants = [f":{lower}", ":"]
        else:
            return
        for new in variants:
            self._add(start, "slice", start, end, new, f"[{old}] -> [{new}]")

    def _early_return(self, func: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if _returns_value(func):
            return
        if any(
            (isinstance(d, ast.Name) and d.id == "abstractmethod")
            or (isinstance(d, ast.Attribute) and d.attr == "abstractmethod")
            for d in func.decorator_list
        ):
            return
        body = func.body
        has_doc = _is_docstring(body[0])
        rest = body[1:] if has_doc else body
        if not rest or all(isinstance(s, ast.Pass | ast.Raise) for s in rest):
            return
        first = rest[0]
        if has_doc:
            at = self.src.span(body[0])[1]
            new = "; return"
            start = end = at
        else:
            start = end = self.src.span(first)[0]
            compound = hasattr(first, "body")
            indent = " " * first.col_offset
            new = f"return\n{indent}" if compound else "return; "
        line, col = self.src.position(self.src.span(first)[0])
        if line in self.src.pragma_lines:
            return
        self.edits.append(_Edit(line, col, "early_return", start, end, new, "return at entry"))


def _pad_lines(old: str, new: str, statement: bool) -> str:
    """Keep the line count of a replaced multi-line segment."""
    missing = old.count("\n") - new.count("\n")
    if missing <= 0:
        return new
    if statement:
        return new + "\n" * missing
    return f"({new}" + "\n" * missing + ")"


def generate_mutants(module: str, text: str) -> list[Mutant]:
    """All mutants of ``text`` (the source of ``module``), in source order."""
    tree = ast.parse(text)
    src = _Source(text)
    gen = _Generator(src)
    gen.visit_body(tree.body)
    edits = sorted(gen.edits, key=lambda e: (e.line, e.col, OPERATORS.index(e.operator)))
    seen = {text}
    counters: Counter[tuple[int, int, str]] = Counter()
    mutants: list[Mutant] = []
    for edit in edits:
        old = text[edit.start : edit.end]
        candidates = [edit.replacement]
        if "\n" in old:
            statement = edit.operator == "stmt_delete"
            candidates.insert(0, _pad_lines(old, edit.replacement, statement))
        for replacement in candidates:
            mutated = text[: edit.start] + replacement + text[edit.end :]
            if mutated in seen:
                break
            try:
                ast.parse(mutated)
            except SyntaxError:
                continue
            seen.add(mutated)
            key = (edit.line, edit.col, edit.operator)
            mutants.append(
                Mutant(
                    module,
                    edit.line,
                    edit.col,
                    edit.operator,
                    counters[key],
                    edit.start,
                    edit.end,
                    replacement,
                    edit.description,
                )
            )
            counters[key] += 1
            break
    return mutants


# --------------------------------------------------------------------------- running


@dataclasses.dataclass
class Result:
    id: str
    module: str
    operator: str
    line: int
    status: str  # killed | survived | timeout | error
    seconds: float
    source_sha: str
    tests: list[str]
    detail: str
    diff: str


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def make_snapshot(dest: Path, rev: str | None) -> None:
    """Copy the tree (working tree, or git revision ``rev``) into ``dest``."""
    if rev is None:
        shutil.copytree(REPO, dest, ignore=COPY_IGNORE)
        return
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", rev],
        check=True,
        capture_output=True,
    ).stdout
    with tempfile.TemporaryFile() as handle:
        handle.write(archive)
        handle.seek(0)
        with tarfile.open(fileobj=handle) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:  # Python < 3.10.12: the archive comes from our own repository
                tar.extractall(dest)


def pytest_command(tests: Sequence[str], profile: str, seed: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", *PYTEST_ARGS, f"--hypothesis-profile={profile}"]
    if seed is not None:
        cmd.append(f"--hypothesis-seed={seed}")
    return [*cmd, *tests]


def run_tests(
    root: Path, tests: Sequence[str], profile: str, seed: int | None, timeout: float | None
) -> tuple[str, float, str]:
    """Run ``tests`` in the copy ``root``; (status, seconds, last lines of output)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["HYPOTHESIS_PROFILE"] = profile
    shutil.rmtree(root / ".hypothesis", ignore_errors=True)
    began = time.monotonic()
    proc = subprocess.Popen(
        pytest_command(tests, profile, seed),
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return "timeout", time.monotonic() - began, f"no result after {timeout:.0f} s"
    seconds = time.monotonic() - began
    lines = [line for line in out.splitlines() if line.strip()]
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    detail = (failed[:1] or lines[-1:] or [""])[0][:300]
    if proc.returncode == 0:
        return "survived", seconds, detail
    if proc.returncode in (1, 2):  # test failure, or a collection error the mutant caused
        return "killed", seconds, detail
    return "error", seconds, f"pytest exit code {proc.returncode}: {detail}"


def check_import(root: Path) -> str:
    """The file ``import elbo_check`` resolves to inside the copy ``root``."""
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(
        [sys.executable, "-c", "import elbo_check; print(elbo_check.__file__)"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


# --------------------------------------------------------------------------- bookkeeping


def load_results(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by an interrupted run
                continue
    return records


def load_equivalents(path: Path) -> dict[str, str]:
    """``{mutant id: reason}`` from lines ``ID  reason`` (``#`` starts a comment line)."""
    if not path.exists():
        return {}
    found = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        ident, _, reason = line.partition(" ")
        found[ident] = reason.strip() or "(no reason given)"
    return found


def summarize(
    records: Iterable[dict[str, object]], equivalents: dict[str, str], show_diffs: bool = True
) -> str:
    """Killed / survived / timeout / total per module, the score, and the survivors."""
    latest: dict[str, dict[str, object]] = {}
    for rec in records:
        if rec.get("kind") == "mutant":
            latest[str(rec["id"])] = rec
    per_module: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: list[dict[str, object]] = []
    equivalent: list[dict[str, object]] = []
    for ident, rec in sorted(latest.items(), key=lambda kv: _id_key(kv[0])):
        module = str(rec["module"])
        status = str(rec["status"])
        if ident in equivalents:
            per_module[module]["equivalent"] += 1
            equivalent.append(rec)
            continue
        per_module[module][status] += 1
        if status == "survived":
            survivors.append(rec)
    out = []
    header = f"{'module':<32} {'killed':>6} {'timeout':>7} {'survived':>8} {'error':>5} "
    out.append(header + f"{'equiv':>5} {'total':>5} {'score':>6}")
    total: Counter[str] = Counter()
    for module in sorted(per_module):
        counts = per_module[module]
        total.update(counts)
        out.append(_summary_row(module, counts))
    out.append(_summary_row("overall", total))
    out.append("score = (killed + timeout) / (total - equivalent - error)")
    if equivalent:
        out.append(f"\nequivalent mutants (excluded from the score): {len(equivalent)}")
        for rec in equivalent:
            note = "" if rec["status"] == "survived" else f"  [now {rec['status']}!]"
            out.append(f"  {rec['id']}  {equivalents[str(rec['id'])]}{note}")
    errors = [rec for rec in latest.values() if rec["status"] == "error"]
    for rec in errors:
        out.append(f"error: {rec['id']}: {rec.get('detail', '')}")
    out.append(f"\nsurvivors: {len(survivors)}")
    for rec in survivors:
        out.append(f"--- {rec['id']}  ({rec.get('description', '')})")
        if show_diffs:
            out.append(str(rec.get("diff", "")).rstrip())
    return "\n".join(out)


def _summary_row(name: str, counts: Counter[str]) -> str:
    total = sum(counts.values())
    scored = total - counts["equivalent"] - counts["error"]
    caught = counts["killed"] + counts["timeout"]
    score = f"{100 * caught / scored:5.1f}%" if scored else "    -"
    return (
        f"{name:<32} {counts['killed']:>6} {counts['timeout']:>7} {counts['survived']:>8} "
        f"{counts['error']:>5} {counts['equivalent']:>5} {total:>5} {score:>6}"
    )


def _id_key(ident: str) -> tuple[str, int, int, str, int]:
    module, line, col, operator, index = ident.rsplit(":", 4)
    return module, int(line), int(col), operator, int(index)


# --------------------------------------------------------------------------- CLI


def tests_for(module: str, overrides: dict[str, list[str]], root: Path) -> list[str]:
    if module in overrides:
        return overrides[module]
    if "*" in overrides:
        return overrides["*"]
    if module in DEFAULT_TESTS:
        return [t for t in DEFAULT_TESTS[module] if (root / t).exists()]
    stem = Path(module).stem
    mentioning = sorted(
        str(p.relative_to(root))
        for p in (root / "tests").glob("test_*.py")
        if re.search(rf"\b{re.escape(stem)}\b", p.read_text())
    )
    return mentioning or ["tests"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python tools/mutation.py", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("modules", nargs="*", help="modules to mutate, e.g. elbo_check/_linalg.py")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--show", metavar="ID", action="append", default=[], help="print a diff")
    parser.add_argument("--operators", help="comma-separated operators to keep (default all)")
    parser.add_argument(
        "--ids", action="append", default=[], help="run only these mutant ids (comma-separated)"
    )
    parser.add_argument(
        "--tests",
        action="append",
        default=[],
        metavar="[MODULE=]FILE[,FILE...]",
        help="test files for MODULE (or for every module when MODULE= is left out)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="parallel workers (default 2)")
    parser.add_argument("--results", type=Path, default=Path("mutation-results.jsonl"))
    parser.add_argument("--resume", action="store_true", help="skip mutants already in results")
    parser.add_argument("--fresh", action="store_true", help="truncate an existing results file")
    parser.add_argument("--summary", action="store_true", help="only summarise --results")
    parser.add_argument("--sample", type=int, help="run a random sample of N mutants")
    parser.add_argument("--seed", type=int, default=0, help="seed for --sample (default 0)")
    parser.add_argument("--timeout-factor", type=float, default=5.0)
    parser.add_argument("--min-timeout", type=float, default=10.0, help="seconds")
    parser.add_argument("--profile", default="dev", help="hypothesis profile (default dev)")
    parser.add_argument(
        "--hypothesis-seed",
        type=int,
        default=0,
        help="fixed hypothesis seed for reproducible runs; -1 for random (default 0)",
    )
    parser.add_argument(
        "--rev", help="mutate a git revision (e.g. HEAD) instead of the working tree"
    )
    parser.add_argument("--equivalent", type=Path, default=EQUIVALENT_FILE)
    parser.add_argument("--no-diffs", action="store_true", help="summary without diffs")
    return parser.parse_args(argv)


def _overrides(specs: Sequence[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for spec in specs:
        module, sep, files = spec.rpartition("=")
        found[module if sep else "*"] = [f for f in files.split(",") if f]
    return found


def _read_module(root: Path, module: str) -> str:
    return (root / module).read_text(encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    equivalents = load_equivalents(args.equivalent)
    if args.summary:
        print(summarize(load_results(args.results), equivalents, not args.no_diffs))
        return 0
    modules = [Path(m).as_posix() for m in args.modules]
    if not modules:
        ids = [*args.show, *(i for spec in args.ids for i in spec.split(",") if i)]
        modules = sorted({_id_key(i)[0] for i in ids})
    if not modules:
        print("no modules given", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="elbo-mutation-") as tmp:
        snapshot = Path(tmp) / "snapshot"
        if args.rev is None and not (args.list or args.show):
            make_snapshot(snapshot, None)
            root = snapshot
        elif args.rev is not None:
            make_snapshot(snapshot, args.rev)
            root = snapshot
        else:
            root = REPO
        sources = {m: _read_module(root, m) for m in modules}
        mutants = [mu for m in modules for mu in generate_mutants(m, sources[m])]
        if args.operators:
            keep = set(args.operators.split(","))
            mutants = [mu for mu in mutants if mu.operator in keep]
        known_ids = {mu.id for mu in mutants}
        if args.ids:
            wanted = {i for spec in args.ids for i in spec.split(",") if i}
            missing = sorted(wanted - known_ids)
            if missing:
                print(f"no mutant {', '.join(missing)}", file=sys.stderr)
                return 1
            mutants = [mu for mu in mutants if mu.id in wanted]
        if args.show:
            by_id = {mu.id: mu for mu in mutants}
            for ident in args.show:
                if ident not in by_id:
                    print(f"no mutant {ident}", file=sys.stderr)
                    return 1
                mu = by_id[ident]
                print(f"# {ident}: {mu.description}")
                print(mu.diff(sources[mu.module]), end="")
            return 0
        if args.sample is not None and args.sample < len(mutants):
            chosen = set(random.Random(args.seed).sample(range(len(mutants)), args.sample))
            mutants = [mu for i, mu in enumerate(mutants) if i in chosen]
        if args.list:
            _print_list(mutants, sources)
            return 0
        return _run(args, root, Path(tmp), modules, sources, mutants, equivalents, known_ids)


def _print_list(mutants: Sequence[Mutant], sources: dict[str, str]) -> None:
    for mu in mutants:
        old = sources[mu.module][mu.start : mu.end]
        print(f"{mu.id}\t{mu.description}\t{_short(old)} -> {_short(mu.replacement)}")
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for mu in mutants:
        counts[mu.module][mu.operator] += 1
    for module, per_op in counts.items():
        print(f"\n{module}: {sum(per_op.values())} mutants")
        for op in OPERATORS:
            if per_op[op]:
                print(f"  {op:<15} {per_op[op]:>4}")


def _short(text: str, width: int = 50) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= width else flat[: width - 3] + "...")


def _run(
    args: argparse.Namespace,
    root: Path,
    tmp: Path,
    modules: Sequence[str],
    sources: dict[str, str],
    mutants: Sequence[Mutant],
    equivalents: dict[str, str],
    known_ids: set[str],
) -> int:
    results_path: Path = args.results
    if results_path.exists() and not (args.resume or args.fresh):
        print(f"{results_path} exists: pass --resume or --fresh", file=sys.stderr)
        return 2
    if args.fresh:
        results_path.write_text("")
    previous = load_results(results_path) if args.resume else []
    done = {(str(r["id"]), str(r["source_sha"])) for r in previous if r.get("kind") == "mutant"}
    shas = {m: sha(sources[m]) for m in modules}
    todo = [mu for mu in mutants if (mu.id, shas[mu.module]) not in done]
    overrides = _overrides(args.tests)
    tests = {m: tests_for(m, overrides, root) for m in modules}
    hyp_seed = None if args.hypothesis_seed < 0 else args.hypothesis_seed
    print(f"{len(mutants)} mutants selected, {len(mutants) - len(todo)} already done")
    imported = check_import(root)
    if not imported.startswith(str(root)):
        print(f"the copy imports {imported}, not its own elbo_check", file=sys.stderr)
        return 2

    # one baseline per distinct set of test files, in the unmutated snapshot
    baselines: dict[tuple[str, ...], float] = {}
    for module in modules:
        key = tuple(tests[module])
        if key in baselines or not any(mu.module == module for mu in todo):
            continue
        status, seconds, detail = run_tests(root, key, args.profile, hyp_seed, None)
        outcome = "passed" if status == "survived" else "FAILED"
        print(f"baseline {' '.join(key)}: {outcome} in {seconds:.1f} s", flush=True)
        if status != "survived":
            print(f"baseline fails, fix it first: {detail}", file=sys.stderr)
            return 2
        baselines[key] = seconds
        _append(results_path, {"kind": "baseline", "tests": list(key), "seconds": seconds})

    workers: queue.Queue[Path] = queue.Queue()
    for i in range(max(1, args.jobs) if todo else 0):
        copy = tmp / f"worker{i}"
        shutil.copytree(root, copy, ignore=COPY_IGNORE)
        workers.put(copy)
    lock = threading.Lock()
    counter = Counter[str]()

    def run_one(mu: Mutant) -> None:
        if stop.is_set():
            return
        key = tuple(tests[mu.module])
        limit = max(args.min_timeout, args.timeout_factor * baselines[key])
        copy = workers.get()
        target = copy / mu.module
        try:
            target.write_text(mu.apply(sources[mu.module]), encoding="utf-8")
            status, seconds, detail = run_tests(copy, key, args.profile, hyp_seed, limit)
        finally:
            target.write_text(sources[mu.module], encoding="utf-8")
            workers.put(copy)
        record: dict[str, object] = dataclasses.asdict(
            Result(
                mu.id,
                mu.module,
                mu.operator,
                mu.line,
                status,
                round(seconds, 2),
                shas[mu.module],
                list(key),
                detail,
                mu.diff(sources[mu.module]),
            )
        )
        record.update(kind="mutant", description=mu.description, timeout=round(limit, 1))
        with lock:
            _append(results_path, record)
            counter[status] += 1
            n = sum(counter.values())
            print(f"[{n}/{len(todo)}] {status:<8} {seconds:6.1f} s  {mu.id}", flush=True)

    stop = threading.Event()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs))
    try:
        futures = [pool.submit(run_one, mu) for mu in todo]
        for future in concurrent.futures.as_completed(futures):
            future.result()
    except KeyboardInterrupt:
        stop.set()
        print("interrupted: finishing the running mutants; --resume continues", file=sys.stderr)
        pool.shutdown(wait=True, cancel_futures=True)
        return 130
    pool.shutdown()
    wanted = {(mu.id, shas[mu.module]) for mu in mutants}
    records = [
        r
        for r in load_results(results_path)
        if r.get("kind") == "mutant" and (r["id"], r["source_sha"]) in wanted
    ]
    print()
    print(summarize(records, equivalents, not args.no_diffs))
    stale = sorted(i for i in equivalents if _id_key(i)[0] in modules and i not in known_ids)
    for ident in stale:
        print(f"warning: equivalent-mutant id {ident} matches no current mutant")
    return 0


def _append(path: Path, record: dict[str, object]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


if __name__ == "__main__":
    if hasattr(signal, "SIGPIPE"):  # `--list | head` ends quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
