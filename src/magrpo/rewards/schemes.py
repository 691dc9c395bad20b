"""How a coding team cooperates: the scheme by which the entry point uses the helper, read from
the main agent's syntax tree (the paper reports these schemes emerging with training).

- ``fallback``: the helper is called only on a failure or edge path (inside ``except``, or in a
  branch while another ``return`` does without it);
- ``strategy_filter``: the helper decides: it is called in a condition (``if``, ``while``, a
  conditional expression, a comprehension's ``if``, an ``assert``), validating or filtering;
- ``coordinator``: the main function splits the work over several helper calls (two call sites
  or more, or a call inside a loop or comprehension);
- ``decorator``: the helper post-processes or wraps what the main function computed (a call's
  arguments use values computed in the entry point, not only its parameters);
- ``delegation``: the main function hands its inputs to the helper and returns its result;
- ``ignored``: the helper is called but its result is thrown away or never reaches the return;
- ``none``: no call of agent 1's helper (none written, the main agent's own ``aux``, or code
  that does not parse).

The first that applies, in this order, names the scheme.
"""

from __future__ import annotations

import ast

from magrpo.rewards.coding import _binds_locally, _parse, helper_usage

SCHEMES = ("fallback", "strategy_filter", "coordinator", "decorator", "delegation", "ignored", "none")

_LOOPS = (ast.For, ast.AsyncFor, ast.While, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def cooperation_scheme(main_code: str, entry_point: str, helper_name: str = "aux", *, usage: str | None = None) -> str:
    """The scheme of :data:`SCHEMES` by which ``entry_point`` in ``main_code`` uses the helper.
    ``usage``: :func:`magrpo.rewards.coding.helper_usage` as the reward decided it (after the
    sandbox counted the helper's calls); read from the code when None."""
    usage = helper_usage(main_code, entry_point, helper_name) if usage is None else usage
    tree = _parse(main_code)
    func = (
        None
        if tree is None
        else next(
            (n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry_point),
            None,
        )
    )
    if usage == "absent" or func is None or _binds_locally(func, helper_name):
        return "none"
    if usage == "ignored":
        return "ignored"
    parents = {child: parent for parent in ast.walk(func) for child in ast.iter_child_nodes(parent)}
    calls = [
        n
        for n in ast.walk(func)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == helper_name
    ]

    def ancestors(node: ast.AST):
        while node in parents:
            child, node = node, parents[node]
            yield child, node

    def on_fallback_path(call: ast.Call) -> bool:
        return any(
            isinstance(p, ast.ExceptHandler) or (isinstance(p, ast.If) and c is not p.test) for c, p in ancestors(call)
        )

    def in_condition(call: ast.Call) -> bool:
        for child, parent in ancestors(call):
            if isinstance(parent, (ast.If, ast.While, ast.IfExp, ast.Assert)) and child is parent.test:
                return True
            if isinstance(parent, ast.comprehension) and child in parent.ifs:
                return True
        return False

    returns = [n for n in ast.walk(func) if isinstance(n, ast.Return) and n.value is not None]
    returns_without_helper = [r for r in returns if not any(c in calls for c in ast.walk(r))]
    if all(on_fallback_path(c) for c in calls) and returns_without_helper:
        return "fallback"
    if any(in_condition(c) for c in calls):
        return "strategy_filter"
    if len(calls) >= 2 or any(isinstance(p, _LOOPS) for c in calls for _, p in ancestors(c)):
        return "coordinator"
    parameters = {a.arg for a in ast.walk(func.args) if isinstance(a, ast.arg)}
    for call in calls:
        for arg in [*call.args, *(k.value for k in call.keywords)]:
            names = {n.id for n in ast.walk(arg) if isinstance(n, ast.Name)}
            plain = isinstance(arg, (ast.Name, ast.Constant, ast.Starred)) or (
                isinstance(arg, (ast.Attribute, ast.Subscript)) and names <= parameters
            )
            if not plain or names - parameters:
                return "decorator"  # the helper works on what the main function computed
    return "delegation"


def scheme_figures(scheme: str) -> dict[str, float]:
    """One 0/1 figure per scheme (``scheme/fallback``, ...): averaged over answers, the fraction of each."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown cooperation scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    return {f"scheme/{name}": float(name == scheme) for name in SCHEMES}


__all__ = ["SCHEMES", "cooperation_scheme", "scheme_figures"]
