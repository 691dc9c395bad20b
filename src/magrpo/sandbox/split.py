"""Split a HumanEval-style ``def check(candidate): ...`` into individual tests."""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass


@dataclass(frozen=True)
class SplitTest:
    assertion: str  # the test statement itself (what outcomes show)
    source: str  # self-contained: preamble + candidate binding + assertion


def _segment(source: str, node: ast.stmt) -> str:
    text = ast.get_source_segment(source, node, padded=True) or ""
    return textwrap.dedent(text).strip("\n")


def _holds_assert(node: ast.stmt) -> bool:
    """An assert anywhere in the statement, not counting nested function/class bodies."""
    if isinstance(node, ast.Assert):
        return True
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return False
    return any(_holds_assert(child) for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _calls_check(node: ast.stmt) -> bool:
    """A module-level ``check(...)`` call: the harness decides what runs, not the source."""
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name)
        and node.value.func.id == "check"
    )


def split_tests(check_source: str, entry_point: str) -> list[SplitTest]:
    """Each top-level assert (or compound statement holding asserts) of ``check`` is one test.

    Everything else runs before it as a preamble: the module-level code outside
    ``check`` (METADATA, imports, helpers), the binding of check's parameter to
    ``entry_point``, and check's other statements that come *before* the test
    in source order (so later reassignments cannot change an earlier test).
    """
    tree = ast.parse(check_source)
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if not checks:
        raise ValueError("no top-level `def check(...)` in the check source")
    check = checks[-1]
    module_pre = [
        _segment(check_source, n) for n in tree.body if n is not check and not _is_docstring(n) and not _calls_check(n)
    ]
    param = check.args.args[0].arg if check.args.args else "candidate"
    prefix = module_pre + [f"{param} = {entry_point}"]
    body_pre: list[str] = []
    tests: list[SplitTest] = []
    for node in check.body:
        text = _segment(check_source, node)
        if _holds_assert(node):
            tests.append(SplitTest(text, "\n".join(prefix + body_pre + [text]) + "\n"))
        elif not _is_docstring(node):
            body_pre.append(text)
    if not tests:  # no asserts at all: the whole check is a single test
        call = f"check({entry_point})"
        tests.append(SplitTest(call, "\n".join(module_pre + [_segment(check_source, check), call]) + "\n"))
    return tests


def split_check(check_source: str, entry_point: str) -> list[str]:
    """Self-contained test snippets, each runnable after the program in its namespace."""
    return [t.source for t in split_tests(check_source, entry_point)]
